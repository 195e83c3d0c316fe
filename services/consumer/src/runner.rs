//! The loop every pipeline stage runs, so each stage only says what its
//! messages mean ([`crate::stage`]). Each assigned partition has a lane,
//! and the lanes run concurrently; within one, a batch at a time:
//!
//! 1. take a batch of the partition's messages (up to `batch_size`, waiting
//!    `batch_wait`);
//! 2. pair each message with its outcome, the stage deciding what is new
//!    and making it durable (MongoDB) — a transient failure retries the
//!    whole batch with backoff, nothing is skipped;
//! 3. publish what the stage emits and dead-letter what it could not use,
//!    waiting for the broker's acknowledgements;
//! 4. only then store the offset, which auto-commit flushes (and the
//!    commit before a revocation, once the lane's batch is finished).
//!
//! A crash anywhere before step 4 means redelivery, which the stages absorb
//! because each of them is idempotent.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use orderflow_platform::kafka::headers::{dlq, AddHeader, RecordHeaders};
use orderflow_platform::kafka::Producer;
use orderflow_platform::kafka::StageConsumer;
use orderflow_platform::kafka::{Received, TopicNames};
use orderflow_platform::shutdown::CancellationToken;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::sync::mpsc;

use crate::gather::Gather;
use crate::stage::{self, Outcome, Stage};

/// A message a stage publishes once its effects are durable.
#[derive(Debug)]
pub struct Outgoing {
    pub topic: String,
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
    pub headers: RecordHeaders,
}

/// A failure worth retrying: the batch is attempted again after a backoff.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Transient(pub String);

pub struct RunnerConfig {
    pub stage: &'static str,
    /// The consumer group, named in each message's process span.
    pub group: String,
    pub dlq_topic: String,
    pub batch_size: usize,
    /// Messages held at once over every lane (queued or in a batch).
    pub max_in_flight: usize,
    pub batch_wait: Duration,
    pub max_backoff: Duration,
    /// Longest a stage may take over one batch before it counts as a
    /// transient failure (a dependency that hangs instead of failing).
    pub batch_timeout: Duration,
    /// Stage calls at once when the lanes' batches are gathered
    /// ([`crate::gather`]), each carrying up to `batch_size` messages;
    /// 0: each lane calls the stage on its own.
    pub gather_calls: usize,
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
    call_batches: Histogram,
    call_messages: Histogram,
}

impl RunnerMetrics {
    pub fn register(registry: &mut Registry, consumer: &StageConsumer) -> Self {
        let m = RunnerMetrics {
            messages: Family::default(),
            retries: Counter::default(),
            batch_seconds: orderflow_platform::metrics::latency_histogram(),
            call_batches: Histogram::new(exponential_buckets(1.0, 2.0, 8)),
            call_messages: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
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
            "call_batches",
            "Partitions' batches one gathered stage call carried",
            m.call_batches.clone(),
        );
        registry.register(
            "call_messages",
            "Messages one gathered stage call carried",
            m.call_messages.clone(),
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
    pub producer: Producer,
    pub config: RunnerConfig,
    pub metrics: RunnerMetrics,
}

/// What every lane shares: the stage, its clients and settings.
struct Work<S: Stage> {
    stage: Arc<S>,
    /// Where the lanes hand in their batches when they are gathered.
    gather: Option<Gather<S>>,
    consumer: Arc<StageConsumer>,
    producer: Producer,
    config: RunnerConfig,
    metrics: RunnerMetrics,
}

/// A partition, as the lanes are keyed.
type PartitionKey = (Arc<str>, i32);

/// A message on its way through a lane, holding its share of the
/// process's in-flight budget until its batch is done or dropped.
type Held = (Received, tokio::sync::OwnedSemaphorePermit);

/// One assigned partition's work: a queue its messages arrive on, in
/// order, and a task that takes them a batch at a time.
struct Lane {
    queue: mpsc::Sender<Held>,
    /// What arrived while the queue was full, in order; the partition is
    /// paused meanwhile, so the poller never waits for one lane.
    parked: std::collections::VecDeque<Held>,
    /// Cancelled when the partition is revoked, and on shutdown.
    stop: CancellationToken,
    state: Arc<LaneState>,
}

/// Whether a lane has a batch in hand, so that a revocation can wait for
/// it (on the polling thread, hence a blocking lock and condition).
#[derive(Default)]
struct LaneState {
    flags: std::sync::Mutex<LaneFlags>,
    idle: std::sync::Condvar,
    /// The partition is paused: the lane says when its queue has room.
    paused: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct LaneFlags {
    busy: bool,
    revoked: bool,
}

impl LaneState {
    fn flags(&self) -> std::sync::MutexGuard<'_, LaneFlags> {
        self.flags.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks a batch as in hand; false once the partition was revoked
    /// (the batch is then left to the partition's next owner).
    fn begin(&self) -> bool {
        let mut flags = self.flags();
        if flags.revoked {
            return false;
        }
        flags.busy = true;
        true
    }

    fn end(&self) {
        self.flags().busy = false;
        self.idle.notify_all();
    }

    /// Marks the partition revoked and waits until the batch in hand, if
    /// any, is finished; false when `until` came first.
    fn revoke(&self, until: Instant) -> bool {
        let mut flags = self.flags();
        flags.revoked = true;
        let left = until.saturating_duration_since(Instant::now());
        let (flags, _) = self
            .idle
            .wait_timeout_while(flags, left, |f| f.busy)
            .unwrap_or_else(|e| e.into_inner());
        !flags.busy
    }
}

/// Ends a lane's batch however its handling ends (a panic included).
struct InHand<'a>(&'a LaneState);

impl Drop for InHand<'_> {
    fn drop(&mut self) {
        self.0.end();
    }
}

#[derive(Default)]
struct Lanes {
    open: HashMap<PartitionKey, Lane>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Lanes {
    /// The lane of `key`'s partition, started on first use.
    fn lane<S: Stage + 'static>(
        &mut self,
        key: PartitionKey,
        work: &Arc<Work<S>>,
        room: &mpsc::UnboundedSender<PartitionKey>,
        shutdown: &CancellationToken,
        runtime: &tokio::runtime::Handle,
    ) -> &mut Lane {
        let tasks = &mut self.tasks;
        self.open.entry(key).or_insert_with_key(|key| {
            // Room for one batch besides the one in hand.
            let (queue, messages) = mpsc::channel(work.config.batch_size);
            let lane = Lane {
                queue,
                parked: Default::default(),
                stop: shutdown.child_token(),
                state: Arc::default(),
            };
            let room = Room {
                key: key.clone(),
                to: room.clone(),
            };
            tasks.push(runtime.spawn(work.clone().lane(
                messages,
                lane.stop.clone(),
                lane.state.clone(),
                room,
            )));
            tasks.retain(|t| !t.is_finished());
            lane
        })
    }
}

/// How a lane tells the poller its queue has room again.
struct Room {
    key: PartitionKey,
    to: mpsc::UnboundedSender<PartitionKey>,
}

impl Lane {
    /// Queues `held` behind what is parked; false when the queue is full
    /// and the partition must be paused (it was parked).
    fn offer(&mut self, held: Held) -> bool {
        if !self.parked.is_empty() {
            self.parked.push_back(held);
            return true;
        }
        match self.queue.try_send(held) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(held)) => {
                self.parked.push_back(held);
                self.state
                    .paused
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                false
            }
            // The lane stopped (revoked, shutting down): the partition's
            // next owner has the message.
            Err(mpsc::error::TrySendError::Closed(_)) => true,
        }
    }

    /// Moves parked messages into the queue while it has room; true once
    /// none is left and the partition may be resumed.
    fn unpark(&mut self) -> bool {
        while let Some(held) = self.parked.pop_front() {
            match self.queue.try_send(held) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(held)) => {
                    self.parked.push_front(held);
                    return false;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => self.parked.clear(),
            }
        }
        self.state
            .paused
            .swap(false, std::sync::atomic::Ordering::SeqCst)
    }
}

fn lock(lanes: &std::sync::Mutex<Lanes>) -> std::sync::MutexGuard<'_, Lanes> {
    lanes.lock().unwrap_or_else(|e| e.into_inner())
}

/// Before `partitions` are revoked (on the polling thread, before the
/// commit): their lanes stop taking batches, drop what is queued (the next
/// owner fetches it from the committed offset) and finish the batch in
/// hand, waiting at most `drain`.
fn revoke(
    lanes: &std::sync::Mutex<Lanes>,
    partitions: &rdkafka::TopicPartitionList,
    drain: Duration,
    stage: &str,
) {
    let revoked: Vec<Lane> = {
        let mut lanes = lock(lanes);
        partitions
            .elements()
            .iter()
            .filter_map(|e| lanes.open.remove(&(Arc::from(e.topic()), e.partition())))
            .collect()
    };
    let until = Instant::now() + drain;
    for lane in &revoked {
        lane.stop.cancel();
    }
    for lane in &revoked {
        if !lane.state.revoke(until) {
            tracing::warn!(
                stage,
                "a revoked partition's batch was not finished in time; its next owner redelivers it"
            );
        }
    }
}

impl<S: Stage + 'static> Runner<S> {
    /// Runs until `shutdown` trips; then finishes the batches in hand,
    /// commits the stored offsets and flushes the producer.
    ///
    /// One thread polls the consumer and hands each message to its
    /// partition's lane. The lanes run concurrently, each a batch at a
    /// time, so order holds within a partition and one slow batch holds up
    /// only its own partition. Rebalances are served on the polling
    /// thread: before partitions are revoked, their lanes finish the batch
    /// in hand and drop the rest, and the offsets stored so far are
    /// committed, so the next owner starts right after what this member
    /// made durable.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Runner {
            stage,
            consumer,
            producer,
            config,
            metrics,
        } = self;
        let consumer = Arc::new(consumer);
        let stage = Arc::new(stage);
        let gather = (config.gather_calls > 0).then(|| {
            let (batches, messages) = (metrics.call_batches.clone(), metrics.call_messages.clone());
            Gather::spawn(
                stage.clone(),
                config.group.clone(),
                config.gather_calls,
                config.batch_size,
                config.batch_timeout,
                Box::new(move |b, m| {
                    batches.observe(b as f64);
                    messages.observe(m as f64);
                }),
            )
        });
        let work = Arc::new(Work {
            stage,
            gather,
            consumer: consumer.clone(),
            producer: producer.clone(),
            config,
            metrics,
        });
        let lanes = Arc::new(std::sync::Mutex::new(Lanes::default()));
        {
            let (lanes, stage) = (lanes.clone(), work.config.stage);
            // A lane's batch is bounded by BATCH_TIMEOUT per attempt.
            let drain = work.config.batch_timeout + Duration::from_secs(5);
            if consumer
                .context()
                .on_revoke(Box::new(move |partitions| {
                    revoke(&lanes, partitions, drain, stage)
                }))
                .is_err()
            {
                anyhow::bail!("the stage's consumer is already run by another runner");
            }
        }
        let runtime = tokio::runtime::Handle::current();
        let poll = {
            let (work, lanes, shutdown) = (work.clone(), lanes.clone(), shutdown.clone());
            tokio::task::spawn_blocking(move || {
                runtime.block_on(dispatch(work, &lanes, &shutdown, &runtime))
            })
        };
        poll.await?;
        let tasks = {
            let mut lanes = lock(&lanes);
            lanes.open.clear();
            std::mem::take(&mut lanes.tasks)
        };
        for task in tasks {
            let _ = task.await;
        }
        tracing::info!(
            stage = work.config.stage,
            "stopping: committing offsets and flushing"
        );
        if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(error = %e, "final commit (nothing stored is fine)");
        }
        let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(10))).await;
        Ok(())
    }
}

/// The polling loop (on a thread of its own: a revocation blocks it while
/// lanes finish): each message to its partition's lane, until shutdown.
async fn dispatch<S: Stage + 'static>(
    work: Arc<Work<S>>,
    lanes: &std::sync::Mutex<Lanes>,
    shutdown: &CancellationToken,
    runtime: &tokio::runtime::Handle,
) {
    let budget = Arc::new(tokio::sync::Semaphore::new(
        work.config.max_in_flight.max(1),
    ));
    let (room, mut rooms) = mpsc::unbounded_channel::<PartitionKey>();
    let mut topics = TopicNames::default();
    loop {
        // Within budget first: what is not taken yet stays in librdkafka's
        // bounded prefetch.
        let taken = async {
            let permit = budget
                .clone()
                .acquire_owned()
                .await
                .expect("the budget is never closed");
            (permit, work.consumer.recv().await)
        };
        let (permit, next) = tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(key) = rooms.recv() => {
                unpark(lanes, &work.consumer, &key);
                continue;
            }
            taken = taken => taken,
        };
        match next {
            Ok(m) => {
                let topic = topics.of(m.topic());
                let key = (topic.clone(), m.partition());
                let m = Received::detach(&m, topic);
                let queued = lock(lanes)
                    .lane(key.clone(), &work, &room, shutdown, runtime)
                    .offer((m, permit));
                // A full queue: that lane has a whole batch waiting. Pause
                // the partition instead of waiting, so the others go on;
                // librdkafka drops what it prefetched of it and fetches
                // again from after this message on resume.
                if !queued {
                    pause_resume(&work.consumer, &key, true);
                    // The lane may have taken its batch between the full
                    // queue and the pause: then it will not say so.
                    unpark(lanes, &work.consumer, &key);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "consumer error");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        }
    }
}

/// Moves what the partition's lane has parked into its queue, and resumes
/// the partition once nothing is left parked.
fn unpark(lanes: &std::sync::Mutex<Lanes>, consumer: &StageConsumer, key: &PartitionKey) {
    if lock(lanes).open.get_mut(key).is_some_and(Lane::unpark) {
        pause_resume(consumer, key, false);
    }
}

/// Pauses or resumes one partition's fetching.
fn pause_resume(consumer: &StageConsumer, (topic, partition): &PartitionKey, pause: bool) {
    let topic: &str = topic;
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition(topic, *partition);
    let done = if pause {
        consumer.pause(&tpl)
    } else {
        consumer.resume(&tpl)
    };
    match done {
        Ok(()) => tracing::debug!(topic, partition, pause, "partition paused or resumed"),
        Err(e) => {
            tracing::warn!(topic, partition, pause, error = %e, "pausing or resuming a partition failed")
        }
    }
}

impl<S: Stage> Work<S> {
    /// One partition's batches, one at a time, until it is revoked or the
    /// process stops.
    async fn lane(
        self: Arc<Self>,
        mut messages: mpsc::Receiver<Held>,
        stop: CancellationToken,
        state: Arc<LaneState>,
        room: Room,
    ) {
        while let Some(held) = self.gather(&mut messages, &stop).await {
            if state.paused.load(std::sync::atomic::Ordering::SeqCst) {
                let _ = room.to.send(room.key.clone());
            }
            if !state.begin() {
                break;
            }
            let _in_hand = InHand(&state);
            // The budget is given back once the batch is done.
            let (batch, _permits): (Vec<Received>, Vec<_>) = held.into_iter().unzip();
            if !self.process(batch.into(), &stop).await {
                break;
            }
        }
    }

    /// The next batch of one partition: what is queued, up to
    /// `batch_size`, waiting at most `batch_wait` for more after the first.
    async fn gather(
        &self,
        messages: &mut mpsc::Receiver<Held>,
        stop: &CancellationToken,
    ) -> Option<Vec<Held>> {
        let size = self.config.batch_size;
        let mut batch = Vec::with_capacity(size.min(64));
        tokio::select! {
            biased;
            _ = stop.cancelled() => return None,
            n = messages.recv_many(&mut batch, size) => if n == 0 { return None },
        }
        let deadline = tokio::time::Instant::now() + self.config.batch_wait;
        while batch.len() < size {
            let room = size - batch.len();
            match tokio::time::timeout_at(deadline, messages.recv_many(&mut batch, room)).await {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
        (!stop.is_cancelled()).then_some(batch)
    }

    /// Handles, publishes and acknowledges one batch; false when `stop`
    /// came first (nothing is acknowledged then: the batch is redelivered).
    async fn process(&self, batch: Arc<[Received]>, stop: &CancellationToken) -> bool {
        let started = Instant::now();
        let Some(outcomes) = self.handle_with_retry(&batch, stop).await else {
            return false;
        };
        if !self.publish(&batch, outcomes, stop).await {
            return false;
        }
        // A batch is one partition's messages in order: its last offset
        // stands for all of them.
        if let Some(last) = batch.last() {
            if let Err(e) =
                self.consumer
                    .store_offset(last.topic(), last.partition(), last.offset())
            {
                // The partition moved to another member in a rebalance:
                // it will redeliver, and the stage is idempotent.
                tracing::warn!(error = %e, topic = last.topic(), partition = last.partition(), "offset not stored");
            }
        }
        self.metrics
            .batch_seconds
            .observe(started.elapsed().as_secs_f64());
        true
    }

    async fn handle_with_retry(
        &self,
        batch: &Arc<[Received]>,
        shutdown: &CancellationToken,
    ) -> Option<Vec<Outcome>> {
        let mut backoff = Backoff::new(self.config.max_backoff);
        loop {
            let attempt = self.attempt(batch).await;
            match attempt {
                Ok(outcomes) => return Some(outcomes),
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

    /// One try at a batch's outcomes: the lane prepares it, then the stage
    /// decides it, in a gathered call or on its own.
    async fn attempt(&self, batch: &Arc<[Received]>) -> Result<Vec<Outcome>, Transient> {
        let timeout = self.config.batch_timeout;
        let prepared = stage::prepare_within(&*self.stage, batch, timeout).await?;
        match &self.gather {
            // The gatherer bounds each call by BATCH_TIMEOUT.
            Some(gather) => gather.outcomes(batch.clone(), prepared).await,
            None => {
                let group = &self.config.group;
                stage::outcomes_within(&*self.stage, group, batch, &prepared, timeout).await
            }
        }
    }

    /// Publishes every emitted and dead-lettered message; true once all were
    /// acknowledged, false if shutdown came first.
    async fn publish(
        &self,
        batch: &[Received],
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
                    .headers(r.headers.to_owned_headers());
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

    fn dead_letter(&self, msg: &Received, reason: &str, error: &str) -> Outgoing {
        let mut headers = RecordHeaders::default();
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
            headers,
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
