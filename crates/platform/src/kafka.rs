//! The one Kafka client setup shared by every binary.

use std::time::Duration;

use anyhow::Context as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::ClientConfig;
use secrecy::ExposeSecret;

use crate::config::KafkaArgs;

pub mod headers;
pub mod offsets;
mod producer;
mod received;
pub mod stats;

pub use producer::Producer;
pub use received::{Received, TopicNames};

/// A client configuration: brokers and client id, then the role's
/// `defaults`, then the `KAFKA_CONFIG` extras (security, tuning), which win.
fn config(
    args: &KafkaArgs,
    client_id: &str,
    defaults: &[(&str, String)],
) -> anyhow::Result<ClientConfig> {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &args.brokers)
        .set("client.id", client_id)
        .set("log_level", "4");
    for (k, v) in defaults {
        cfg.set(*k, v);
    }
    for (n, pair) in args
        .extra
        .expose_secret()
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .enumerate()
    {
        // Never echo the entry: it may be a password with its `=` mistyped.
        let (k, v) = pair.split_once('=').with_context(|| {
            format!("KAFKA_CONFIG entry {} is not key=value (its text is not shown: it may hold a credential)", n + 1)
        })?;
        cfg.set(k.trim(), v.trim());
    }
    // Kafka 4's group protocol (KIP-848) keeps session and heartbeat on the
    // broker; librdkafka refuses these classic settings with it.
    if cfg.get("group.protocol") == Some("consumer") {
        cfg.remove("session.timeout.ms");
        cfg.remove("heartbeat.interval.ms");
    }
    // Only producers read librdkafka's statistics (`stats::ProducerStats`;
    // their defaults name the interval). Any other client would hand each
    // report to rdkafka's default handler, which logs it whole at INFO, so a
    // `KAFKA_CONFIG` interval meant for the producers' gauges stays theirs.
    if !defaults.iter().any(|(k, _)| *k == STATISTICS_INTERVAL) {
        cfg.remove(STATISTICS_INTERVAL);
    }
    Ok(cfg)
}

const STATISTICS_INTERVAL: &str = "statistics.interval.ms";

fn build_with<
    C: rdkafka::client::ClientContext,
    T: rdkafka::config::FromClientConfigAndContext<C>,
>(
    args: &KafkaArgs,
    client_id: &str,
    defaults: &[(&str, String)],
    context: C,
) -> anyhow::Result<T> {
    config(args, client_id, defaults)?
        .create_with_context(context)
        .context("creating a Kafka client")
}

fn build<T: rdkafka::config::FromClientConfig>(
    args: &KafkaArgs,
    client_id: &str,
    defaults: &[(&str, String)],
) -> anyhow::Result<T> {
    config(args, client_id, defaults)?
        .create()
        .context("creating a Kafka client")
}

/// How long librdkafka lets a partition's messages gather before it sends
/// them: 2 ms since 2026-12-07, 5 before (ADR 0008; scripts/bench reads
/// this line for its ProducerPerformance ceiling). The pipeline's
/// producers' linger; the intake's is [`INTAKE_LINGER_MS`].
pub const LINGER_MS: u32 = 2;

/// The producer service's linger: 1 ms since the evening of 2026-12-07.
/// With the bench's back end in the idle class (ADR 0018) the linger is
/// the largest part of a `POST /orders`'s wait in librdkafka; a stage
/// produces a whole batch at once and keeps [`LINGER_MS`] (ADR 0008).
pub const INTAKE_LINGER_MS: u32 = 1;

/// An idempotent producer that waits for every in-sync replica (acks=all),
/// with a [`LINGER_MS`] linger (measured against 0, 1 and 5: ADR 0008).
/// `delivery_timeout` bounds how long librdkafka keeps retrying a message.
/// Its delivery reports are served on the Tokio runtime ([`Producer`]):
/// call it from within one.
pub fn producer(
    args: &KafkaArgs,
    client_id: &str,
    delivery_timeout: Duration,
) -> anyhow::Result<Producer> {
    producer_with_linger(args, client_id, LINGER_MS, delivery_timeout)
}

/// [`producer`] with the intake's linger, [`INTAKE_LINGER_MS`]: the
/// producer service's.
pub fn intake_producer(
    args: &KafkaArgs,
    client_id: &str,
    delivery_timeout: Duration,
) -> anyhow::Result<Producer> {
    producer_with_linger(args, client_id, INTAKE_LINGER_MS, delivery_timeout)
}

fn producer_with_linger(
    args: &KafkaArgs,
    client_id: &str,
    linger_ms: u32,
    delivery_timeout: Duration,
) -> anyhow::Result<Producer> {
    build(
        args,
        client_id,
        &[
            ("enable.idempotence", "true".into()),
            ("acks", "all".into()),
            ("linger.ms", linger_ms.to_string()),
            (STATISTICS_INTERVAL, stats::STATS_INTERVAL_MS.to_string()),
            (
                "message.timeout.ms",
                delivery_timeout.as_millis().to_string(),
            ),
        ],
    )
}

/// The pipeline stages' consumer: a [`StreamConsumer`] with a
/// [`StageContext`].
pub type StageConsumer = StreamConsumer<StageContext>;

/// Called with the partitions about to be revoked, on the thread that polls
/// the consumer; returns once their work in hand is finished (see
/// [`StageContext::on_revoke`]).
pub type RevokeHook = Box<dyn Fn(&rdkafka::TopicPartitionList) + Send + Sync>;

/// What a stage's consumer does around a rebalance. Before partitions are
/// revoked it lets the runner finish (or give up) the batches of those
/// partitions it has in hand ([`StageContext::on_revoke`]), then commits
/// the offsets stored so far, so the next owner starts exactly after what
/// this member made durable. It reports commit failures, which auto-commit would otherwise drop silently.
#[derive(Default)]
pub struct StageContext {
    on_revoke: std::sync::OnceLock<RevokeHook>,
    /// Failed offset commits (a metric the stage registers).
    pub commit_failures: prometheus_client::metrics::counter::Counter,
}

impl StageContext {
    /// Sets what runs before partitions are revoked, before the commit
    /// (once; a second hook is refused). It blocks the polling thread, so
    /// the partitions' owner must be polled from a thread of its own.
    pub fn on_revoke(&self, hook: RevokeHook) -> Result<(), RevokeHook> {
        self.on_revoke.set(hook)
    }
}

impl rdkafka::client::ClientContext for StageContext {}

/// "Nothing to commit" is not a failure.
fn is_no_offset(e: &rdkafka::error::KafkaError) -> bool {
    e.rdkafka_error_code() == Some(RDKafkaErrorCode::NoOffset)
}

impl ConsumerContext for StageContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            if let Some(hook) = self.on_revoke.get() {
                hook(partitions);
            }
            // librdkafka keeps an application's pause across reassignment: a
            // partition paused here must not come back paused (a no-op for
            // those that are not).
            if let Err(e) = consumer.resume(partitions) {
                tracing::warn!(error = %e, "resuming revoked partitions failed");
            }
            if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
                if !is_no_offset(&e) {
                    self.commit_failures.inc();
                    tracing::warn!(error = %e, "committing before the revocation failed; the next owner redelivers");
                }
            }
            tracing::info!(partitions = partitions.count(), "partitions revoked");
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                tracing::info!(partitions = partitions.count(), "partitions assigned")
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance failed"),
            Rebalance::Revoke(_) => {}
        }
    }

    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        _offsets: &rdkafka::TopicPartitionList,
    ) {
        if let Err(e) = result {
            if !is_no_offset(&e) {
                self.commit_failures.inc();
                tracing::warn!(error = %e, "offset commit failed; uncommitted messages will be redelivered");
            }
        }
    }
}

/// How much a consumer fetches ahead of what it has handed out. The runner
/// holds its own bounded share (`MAX_IN_FLIGHT` messages), so librdkafka's
/// only needs to cover a fetch's round trip: 256 kB of records, fetched at
/// most 128 kB a partition and 512 kB a response. librdkafka's defaults
/// (64 MB queued, 50 MB a fetch, which the queue limit may overshoot) are
/// resident memory a consumer with a backlog fills whatever its rate, and
/// the raw responses stay allocated while any of their records is queued,
/// so a counted kilobyte costs several (issue 12: at most 30 MB a
/// service; docs/benchmarks.md). With 1 MB responses (256 kB a partition)
/// a stage's response buffers were its largest allocation at its peak,
/// 2.1 MB of persist's 9.6 MB of heap (heaptrack, 2026-12-07).
///
/// A queue this small is over its limit after every fetch while a
/// consumer is behind, and librdkafka then postpones that partition's next
/// fetch by `fetch.queue.backoff.ms`: 1 s by default, which held a
/// partition to about 256 kB (some 365 order events) a second and one
/// payment replica with a backlog to 1 535–1 933 orders/s. 20 ms, a
/// lane's `BATCH_WAIT`, gave 2 626–2 953/s (ADR 0002).
fn prefetch() -> [(&'static str, String); 5] {
    [
        ("queued.max.messages.kbytes", "256".into()),
        (
            "max.partition.fetch.bytes",
            FETCH_PARTITION_BYTES.to_string(),
        ),
        ("fetch.max.bytes", FETCH_RESPONSE_BYTES.to_string()),
        // librdkafka raises fetch.max.bytes to at least this (1 000 000 by
        // default). A consumer sends no records, and a record larger than
        // a fetch still arrives (a fetch returns at least one batch).
        ("message.max.bytes", FETCH_RESPONSE_BYTES.to_string()),
        ("fetch.queue.backoff.ms", "20".into()),
    ]
}

/// The most a consumer's fetch asks for of one partition ([`prefetch`]).
pub const FETCH_PARTITION_BYTES: usize = 128 * 1024;
/// The most a consumer's fetch asks for in all ([`prefetch`]).
pub const FETCH_RESPONSE_BYTES: usize = 512 * 1024;

/// A consumer role's `settings` followed by [`prefetch`].
fn with_prefetch<const N: usize>(
    settings: [(&'static str, String); N],
) -> Vec<(&'static str, String)> {
    settings.into_iter().chain(prefetch()).collect()
}

/// A group consumer for at-least-once processing: offsets are *stored* by the
/// application only after a message's effects are durable, and auto-commit
/// flushes what was stored.
///
/// The group protocol is the classic one (ADR 0008). `KAFKA_CONFIG` may pick
/// Kafka 4's `group.protocol=consumer`; its session and heartbeat are then
/// the broker's, so [`config`] leaves the classic-only settings out.
pub fn consumer(args: &KafkaArgs, client_id: &str, group: &str) -> anyhow::Result<StageConsumer> {
    build_with(
        args,
        client_id,
        &with_prefetch([
            ("group.id", group.into()),
            ("enable.auto.commit", "true".into()),
            ("auto.commit.interval.ms", "1000".into()),
            ("enable.auto.offset.store", "false".into()),
            ("auto.offset.reset", "earliest".into()),
            // A SIGKILLed member's partitions wait this long for a new owner.
            ("session.timeout.ms", "10000".into()),
            // Also the rebalance timeout: a member that has not polled for 2
            // minutes (a batch is bounded by BATCH_TIMEOUT, 60 s) leaves, so
            // its partitions move to healthy replicas, and a restarted member
            // never waits longer than this for a dead one to rejoin.
            ("max.poll.interval.ms", "120000".into()),
            ("heartbeat.interval.ms", "2000".into()),
            ("enable.partition.eof", "false".into()),
        ]),
        StageContext::default(),
    )
}

/// A consumer that only watches the live stream (analytics): it is given
/// its partitions (`assign`), never joins a group and never commits, so
/// every replica reads the whole stream. `group` is librdkafka's required
/// `group.id`, unused on the broker.
pub fn observer(args: &KafkaArgs, client_id: &str, group: &str) -> anyhow::Result<StreamConsumer> {
    build(
        args,
        client_id,
        &with_prefetch([
            ("group.id", group.into()),
            ("enable.auto.commit", "false".into()),
            ("enable.auto.offset.store", "false".into()),
            ("auto.offset.reset", "latest".into()),
            ("enable.partition.eof", "false".into()),
            // Live figures in per-second buckets can wait a tenth of a
            // second for a fuller fetch: at the tail of a busy stream the
            // broker would otherwise answer after every produce request.
            ("fetch.wait.max.ms", "100".into()),
            ("fetch.min.bytes", "65536".into()),
        ]),
    )
}

/// A consumer that never joins or commits: reads a group's committed
/// offsets and the watermarks (the operator's lag measurement).
pub fn group_reader(
    args: &KafkaArgs,
    client_id: &str,
    group: &str,
) -> anyhow::Result<rdkafka::consumer::BaseConsumer> {
    build(args, client_id, &reader_defaults(group))
}

fn reader_defaults(group: &str) -> Vec<(&'static str, String)> {
    vec![
        ("group.id", group.into()),
        ("enable.auto.commit", "false".into()),
        ("enable.auto.offset.store", "false".into()),
    ]
}

/// Longest a [`position_reader`]'s fetch waits at the end of a partition.
pub const POSITION_FETCH_WAIT_MS: u32 = 10;

/// A [`group_reader`] for reads at given positions, each its own
/// assignment (a dead letter, an order's timeline). A broker answers one
/// connection's requests in order, so the fetch left waiting at a
/// partition's end by the previous read (500 ms by default) held up the
/// next one: a re-drive of 14 dead letters took 8 s. Its fetches wait at
/// most [`POSITION_FETCH_WAIT_MS`]; unassign it between reads so it does
/// not keep asking.
pub fn position_reader(
    args: &KafkaArgs,
    client_id: &str,
    group: &str,
) -> anyhow::Result<rdkafka::consumer::BaseConsumer> {
    let mut defaults = reader_defaults(group);
    defaults.push(("fetch.wait.max.ms", POSITION_FETCH_WAIT_MS.to_string()));
    build(args, client_id, &defaults)
}

pub fn admin(
    args: &KafkaArgs,
    client_id: &str,
) -> anyhow::Result<AdminClient<DefaultClientContext>> {
    build(args, client_id, &[])
}

/// Creates each topic that does not exist yet; existing topics are left alone.
pub async fn ensure_topics(
    admin: &AdminClient<DefaultClientContext>,
    topics: &[(&str, i32)],
    replication: i32,
) -> anyhow::Result<()> {
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|(name, partitions)| {
            NewTopic::new(name, *partitions, TopicReplication::Fixed(replication))
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(&new, &opts)
        .await
        .context("CreateTopics")?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => anyhow::bail!("creating topic {name}: {code}"),
        }
    }
    Ok(())
}

/// A Kafka client the readiness check can ask for metadata: a service
/// uses the client it already has instead of opening another.
pub trait MetadataClient: Send + Sync + 'static {
    fn fetch_any_metadata(&self, timeout: Duration) -> rdkafka::error::KafkaResult<()>;
}

impl MetadataClient for Producer {
    fn fetch_any_metadata(&self, timeout: Duration) -> rdkafka::error::KafkaResult<()> {
        self.client().fetch_metadata(None, timeout).map(|_| ())
    }
}

impl<C: ConsumerContext + 'static> MetadataClient for StreamConsumer<C> {
    fn fetch_any_metadata(&self, timeout: Duration) -> rdkafka::error::KafkaResult<()> {
        self.fetch_metadata(None, timeout).map(|_| ())
    }
}

/// The `/readyz` check for a service that needs the brokers.
pub fn readiness<T: MetadataClient>(client: std::sync::Arc<T>) -> crate::http::ReadinessCheck {
    (
        "kafka",
        std::sync::Arc::new(move || {
            Box::pin(check_reachable(client.clone(), Duration::from_secs(2)))
        }),
    )
}

/// Asks the cluster for metadata: proves the brokers answer. Blocking
/// librdkafka call, so it runs off the async threads.
pub async fn check_reachable<T: MetadataClient>(
    client: std::sync::Arc<T>,
    timeout: Duration,
) -> Result<(), String> {
    tokio::task::spawn_blocking(move || {
        client
            .fetch_any_metadata(timeout)
            .map_err(|e| format!("kafka: {e}"))
    })
    .await
    .map_err(|e| e.to_string())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_settings_override_the_defaults() {
        let args = KafkaArgs {
            brokers: "b:9092".into(),
            extra: "linger.ms=50, security.protocol=SASL_SSL".to_owned().into(),
        };
        let cfg = config(
            &args,
            "id",
            &[("linger.ms", "5".into()), ("acks", "all".into())],
        )
        .unwrap();
        assert_eq!(cfg.get("linger.ms"), Some("50"));
        assert_eq!(cfg.get("acks"), Some("all"));
        assert_eq!(cfg.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(cfg.get("bootstrap.servers"), Some("b:9092"));
    }

    /// scripts/up joins `KAFKA_CONFIG` and `INTAKE_KAFKA_CONFIG` with a
    /// comma, either of them possibly empty.
    #[test]
    fn empty_entries_are_skipped_and_a_later_entry_wins() {
        let args = |extra: &str| KafkaArgs {
            brokers: "b".into(),
            extra: extra.to_owned().into(),
        };
        let cfg = config(&args(","), "id", &[("linger.ms", "5".into())]).unwrap();
        assert_eq!(cfg.get("linger.ms"), Some("5"));
        let cfg = config(&args("linger.ms=1,,linger.ms=0,"), "id", &[]).unwrap();
        assert_eq!(cfg.get("linger.ms"), Some("0"));
        let cfg = config(&args(",linger.ms=0"), "id", &[("acks", "all".into())]).unwrap();
        assert_eq!(cfg.get("linger.ms"), Some("0"));
        assert_eq!(cfg.get("acks"), Some("all"));
    }

    #[tokio::test]
    async fn the_consumer_group_protocol_drops_the_classic_session_settings() {
        let classic = [
            ("session.timeout.ms", "10000".into()),
            ("heartbeat.interval.ms", "2000".into()),
        ];
        let args = |extra: &str| KafkaArgs {
            brokers: "b".into(),
            extra: extra.to_owned().into(),
        };
        let cfg = config(&args(""), "id", &classic).unwrap();
        assert_eq!(cfg.get("session.timeout.ms"), Some("10000"));
        let cfg = config(&args("group.protocol = consumer"), "id", &classic).unwrap();
        assert_eq!(cfg.get("session.timeout.ms"), None);
        assert_eq!(cfg.get("heartbeat.interval.ms"), None);
        // Librdkafka accepts the consumer it configures.
        let made: anyhow::Result<StageConsumer> = build_with(
            &args("group.protocol=consumer"),
            "id",
            &[("group.id", "g".into())],
            StageContext::default(),
        );
        assert!(made.is_ok());
    }

    #[test]
    fn a_statistics_interval_reaches_only_the_producers() {
        let args = KafkaArgs {
            brokers: "b".into(),
            extra: "statistics.interval.ms=200".to_owned().into(),
        };
        let producer = [(STATISTICS_INTERVAL, "5000".into()), ("acks", "all".into())];
        let cfg = config(&args, "id", &producer).unwrap();
        assert_eq!(cfg.get(STATISTICS_INTERVAL), Some("200"));
        for other in [&[][..], &[("group.id", "g".into())][..]] {
            let cfg = config(&args, "id", other).unwrap();
            assert_eq!(cfg.get(STATISTICS_INTERVAL), None);
        }
    }

    #[test]
    fn malformed_extras_are_refused_without_echoing_them() {
        let args = KafkaArgs {
            brokers: "b".into(),
            extra: "linger.ms=5,sasl.password:hunter2".to_owned().into(),
        };
        let err = format!("{:#}", config(&args, "id", &[]).unwrap_err());
        assert!(err.contains("entry 2"), "{err}");
        assert!(!err.contains("hunter2"), "the credential is echoed: {err}");
        assert!(!format!("{args:?}").contains("hunter2"), "Debug prints it");
    }
}
