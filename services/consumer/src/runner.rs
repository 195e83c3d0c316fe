//! The loop every pipeline stage runs, so each stage only says what a batch
//! of messages means:
//!
//! 1. take a batch of messages (up to `batch_size`, waiting `batch_wait`);
//! 2. let the stage make its effects durable (MongoDB) — a transient failure
//!    retries the whole batch with backoff, nothing is skipped;
//! 3. publish what the stage emits and dead-letter what it could not use,
//!    waiting for the broker's acknowledgements;
//! 4. only then store the offsets, which auto-commit flushes.
//!
//! A crash anywhere before step 4 means redelivery, which the stages absorb
//! because each of them is idempotent.

use std::future::Future;
use std::time::{Duration, Instant};

use futures::future::join_all;
use orderflow_platform::kafka::headers::{dlq, HeaderBuilder};
use orderflow_platform::kafka::StageConsumer;
use orderflow_platform::shutdown::CancellationToken;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::{Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// A message a stage publishes once its effects are durable.
pub struct Outgoing {
    pub topic: String,
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
    pub headers: OwnedHeaders,
}

/// What became of one input message.
pub enum Outcome {
    /// Handled; publish these.
    Done(Vec<Outgoing>),
    /// Can never be handled (undecodable, permanently refused): park it in
    /// the dead-letter topic with the reason, and move on.
    DeadLetter { reason: &'static str, error: String },
}

/// A failure worth retrying: the batch is attempted again after a backoff.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Transient(pub String);

pub trait Stage: Send + Sync {
    /// One outcome per message, in order.
    fn handle(
        &self,
        batch: &[OwnedMessage],
    ) -> impl Future<Output = Result<Vec<Outcome>, Transient>> + Send;
}

pub struct RunnerConfig {
    pub stage: &'static str,
    pub dlq_topic: String,
    pub batch_size: usize,
    pub batch_wait: Duration,
    pub max_backoff: Duration,
    /// Longest a stage may take over one batch before it counts as a
    /// transient failure (a dependency that hangs instead of failing).
    pub batch_timeout: Duration,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone)]
pub struct RunnerMetrics {
    messages: Family<OutcomeLabels, Counter>,
    retries: Counter,
    batch_seconds: Histogram,
}

impl RunnerMetrics {
    pub fn register(registry: &mut Registry, consumer: &StageConsumer) -> Self {
        let m = RunnerMetrics {
            messages: Family::default(),
            retries: Counter::default(),
            batch_seconds: orderflow_platform::metrics::latency_histogram(),
        };
        registry.register(
            "messages",
            "Input messages by outcome (done, dead_lettered)",
            m.messages.clone(),
        );
        registry.register(
            "retries",
            "Batches retried after a transient failure",
            m.retries.clone(),
        );
        registry.register(
            "batch_duration_seconds",
            "Time to make a batch durable and publish its results",
            m.batch_seconds.clone(),
        );
        registry.register(
            "commit_failures",
            "Offset commits the broker refused or that failed",
            consumer.context().commit_failures.clone(),
        );
        m
    }
}

impl RunnerMetrics {
    fn outcome(&self, outcome: &'static str) -> u64 {
        self.messages
            .get_or_create(&OutcomeLabels { outcome })
            .get()
    }

    /// Writes this process's counters to MongoDB's `stage_stats` every
    /// `every` until shutdown: the console sums them over the replicas seen
    /// recently (a Service in front of several replicas could not be
    /// scraped for a sum). A failed write is retried at the next tick.
    pub async fn report(
        self,
        db: mongodb::Database,
        stage: &'static str,
        member: String,
        consumer_failures: Counter,
        every: Duration,
        shutdown: CancellationToken,
    ) {
        let stats = db.collection::<bson::Document>(orderflow_platform::mongo::STAGE_STATS);
        let started = bson::DateTime::now();
        let mut ticks = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = ticks.tick() => {}
            }
            let update = bson::doc! {"$set": {
                "stage": stage,
                "startedAt": started,
                "seenAt": bson::DateTime::now(),
                "done": self.outcome("done") as i64,
                "deadLettered": self.outcome("dead_lettered") as i64,
                "retries": self.retries.get() as i64,
                "commitFailures": consumer_failures.get() as i64,
            }};
            if let Err(e) = stats
                .update_one(bson::doc! {"_id": &member}, update)
                .upsert(true)
                .await
            {
                tracing::debug!(error = %e, "stage stats not written");
            }
        }
    }
}

pub struct Runner<S> {
    pub stage: S,
    pub consumer: StageConsumer,
    pub producer: FutureProducer,
    pub config: RunnerConfig,
    pub metrics: RunnerMetrics,
}

impl<S: Stage> Runner<S> {
    /// Runs until `shutdown` trips; then finishes the batch in hand, commits
    /// the stored offsets and flushes the producer.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        loop {
            let Some(batch) = self.next_batch(&shutdown).await else {
                break;
            };
            let started = Instant::now();
            let Some(outcomes) = self.handle_with_retry(&batch, &shutdown).await else {
                break;
            };
            if !self.publish(&batch, outcomes, &shutdown).await {
                break;
            }
            for msg in &batch {
                if let Err(e) =
                    self.consumer
                        .store_offset(msg.topic(), msg.partition(), msg.offset())
                {
                    // The partition moved to another member in a rebalance:
                    // it will redeliver, and the stage is idempotent.
                    tracing::warn!(error = %e, topic = msg.topic(), partition = msg.partition(), "offset not stored");
                }
            }
            self.metrics
                .batch_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        tracing::info!(
            stage = self.config.stage,
            "stopping: committing offsets and flushing"
        );
        if let Err(e) = self.consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(error = %e, "final commit (nothing stored is fine)");
        }
        let producer = self.producer.clone();
        let _ = tokio::task::spawn_blocking(move || {
            use rdkafka::producer::Producer as _;
            producer.flush(Duration::from_secs(10))
        })
        .await;
        Ok(())
    }

    /// The next batch. Rebalances happen only while the consumer is polled,
    /// that is here, never while a batch is being handled. Messages
    /// gathered before a rebalance are dropped: their partitions may belong
    /// to another member now, which starts at the offsets committed just
    /// before the revocation (and if they came back to this member, it
    /// fetches them again from there).
    async fn next_batch(&self, shutdown: &CancellationToken) -> Option<Vec<OwnedMessage>> {
        let context = self.consumer.context();
        let mut batch = Vec::with_capacity(self.config.batch_size);
        let mut generation = context.rebalances();
        // Drops what was gathered under an older assignment.
        let mut current = |batch: &mut Vec<OwnedMessage>| {
            let now = context.rebalances();
            if now != generation {
                if !batch.is_empty() {
                    tracing::info!(
                        dropped = batch.len(),
                        "rebalance while gathering a batch: its messages are left to their partitions' owner"
                    );
                }
                batch.clear();
                generation = now;
            }
        };
        loop {
            while batch.is_empty() {
                let first = tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    m = self.consumer.recv() => m,
                };
                current(&mut batch);
                match first {
                    Ok(m) => batch.push(m.detach()),
                    Err(e) => {
                        tracing::warn!(error = %e, "consumer error");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
            let deadline = tokio::time::Instant::now() + self.config.batch_wait;
            while batch.len() < self.config.batch_size {
                let next = tokio::time::timeout_at(deadline, self.consumer.recv()).await;
                current(&mut batch);
                match next {
                    Ok(Ok(m)) => batch.push(m.detach()),
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "consumer error");
                        break;
                    }
                    Err(_) => break,
                }
            }
            current(&mut batch);
            if !batch.is_empty() {
                return Some(batch);
            }
        }
    }

    async fn handle_with_retry(
        &self,
        batch: &[OwnedMessage],
        shutdown: &CancellationToken,
    ) -> Option<Vec<Outcome>> {
        let mut backoff = Backoff::new(self.config.max_backoff);
        loop {
            let attempt = tokio::time::timeout(self.config.batch_timeout, self.stage.handle(batch))
                .await
                .unwrap_or_else(|_| {
                    Err(Transient(format!(
                        "batch not handled within {:?}",
                        self.config.batch_timeout
                    )))
                });
            match attempt {
                Ok(outcomes) => {
                    assert_eq!(
                        outcomes.len(),
                        batch.len(),
                        "a stage returns one outcome per message"
                    );
                    return Some(outcomes);
                }
                Err(Transient(e)) => {
                    self.metrics.retries.inc();
                    let wait = backoff.next_wait();
                    tracing::warn!(stage = self.config.stage, error = %e, retry_in = ?wait, "transient failure; retrying the batch");
                    tokio::select! {
                        _ = shutdown.cancelled() => return None,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    /// Publishes every emitted and dead-lettered message; true once all were
    /// acknowledged, false if shutdown came first.
    async fn publish(
        &self,
        batch: &[OwnedMessage],
        outcomes: Vec<Outcome>,
        shutdown: &CancellationToken,
    ) -> bool {
        let mut records: Vec<Outgoing> = Vec::new();
        for (msg, outcome) in batch.iter().zip(outcomes) {
            match outcome {
                Outcome::Done(out) => {
                    self.metrics
                        .messages
                        .get_or_create(&OutcomeLabels { outcome: "done" })
                        .inc();
                    records.extend(out);
                }
                Outcome::DeadLetter { reason, error } => {
                    self.metrics
                        .messages
                        .get_or_create(&OutcomeLabels {
                            outcome: "dead_lettered",
                        })
                        .inc();
                    tracing::warn!(
                        stage = self.config.stage,
                        topic = msg.topic(), partition = msg.partition(), offset = msg.offset(),
                        reason, %error, "message dead-lettered"
                    );
                    records.push(self.dead_letter(msg, reason, &error));
                }
            }
        }
        let mut backoff = Backoff::new(self.config.max_backoff);
        let mut pending: Vec<&Outgoing> = records.iter().collect();
        while !pending.is_empty() {
            let sends = pending.iter().map(|r| {
                let record = FutureRecord::to(&r.topic)
                    .key(&r.key)
                    .payload(&r.payload)
                    .headers(r.headers.clone());
                self.producer
                    .send(record, Timeout::After(Duration::from_secs(30)))
            });
            let results = join_all(sends).await;
            let failed: Vec<&Outgoing> = pending
                .iter()
                .zip(results)
                .filter_map(|(r, res)| match res {
                    Ok(_) => None,
                    Err((e, _)) => {
                        tracing::warn!(topic = %r.topic, error = %e, "publish failed; retrying");
                        Some(*r)
                    }
                })
                .collect();
            pending = failed;
            if !pending.is_empty() {
                self.metrics.retries.inc();
                tokio::select! {
                    _ = shutdown.cancelled() => return false,
                    _ = tokio::time::sleep(backoff.next_wait()) => {}
                }
            }
        }
        true
    }

    fn dead_letter(&self, msg: &OwnedMessage, reason: &str, error: &str) -> Outgoing {
        let mut headers = HeaderBuilder(OwnedHeaders::new());
        if let Some(original) = msg.headers() {
            for h in original.iter() {
                headers.add_raw(h.key, h.value);
            }
        }
        headers.add(dlq::STAGE, self.config.stage);
        headers.add(dlq::REASON, reason);
        headers.add(dlq::ERROR, error);
        headers.add(dlq::TOPIC, msg.topic());
        headers.add(dlq::PARTITION, &msg.partition().to_string());
        headers.add(dlq::OFFSET, &msg.offset().to_string());
        headers.add(
            dlq::TIME,
            &OffsetDateTime::now_utc()
                .format(&Rfc3339)
                .unwrap_or_default(),
        );
        Outgoing {
            topic: self.config.dlq_topic.clone(),
            key: msg.key().unwrap_or_default().to_vec(),
            payload: msg.payload().unwrap_or_default().to_vec(),
            headers: headers.0,
        }
    }
}

/// Exponential backoff, doubling up to `max`.
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// From 100 ms.
    pub fn new(max: Duration) -> Self {
        Self::starting_at(Duration::from_millis(100), max)
    }

    pub fn starting_at(first: Duration, max: Duration) -> Self {
        Backoff { next: first, max }
    }

    pub fn next_wait(&mut self) -> Duration {
        let now = self.next.min(self.max);
        self.next = (self.next * 2).min(self.max);
        now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(500));
        let waits: Vec<u64> = (0..5).map(|_| b.next_wait().as_millis() as u64).collect();
        assert_eq!(waits, [100, 200, 400, 500, 500]);
    }
}
