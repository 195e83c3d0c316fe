//! The one Kafka client setup shared by every binary.

use std::time::Duration;

use anyhow::Context as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::StreamConsumer;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::FutureProducer;
use rdkafka::ClientConfig;

use crate::config::KafkaArgs;

pub mod headers;

/// Base configuration: brokers, client id, and any `KAFKA_CONFIG` extras
/// (security settings, tuning) layered on top.
pub fn client_config(args: &KafkaArgs, client_id: &str) -> anyhow::Result<ClientConfig> {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &args.brokers)
        .set("client.id", client_id)
        .set("log_level", "4");
    for pair in args
        .extra
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair
            .split_once('=')
            .with_context(|| format!("KAFKA_CONFIG entry '{pair}' is not key=value"))?;
        cfg.set(k.trim(), v.trim());
    }
    Ok(cfg)
}

/// An idempotent producer that waits for every in-sync replica (acks=all).
/// `delivery_timeout` bounds how long librdkafka keeps retrying a message.
pub fn producer(
    args: &KafkaArgs,
    client_id: &str,
    delivery_timeout: Duration,
) -> anyhow::Result<FutureProducer> {
    let mut cfg = client_config(args, client_id)?;
    cfg.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "2")
        .set(
            "message.timeout.ms",
            delivery_timeout.as_millis().to_string(),
        );
    cfg.create().context("creating Kafka producer")
}

/// A group consumer for at-least-once processing: offsets are *stored* by the
/// application only after a message's effects are durable, and auto-commit
/// flushes what was stored.
pub fn consumer(args: &KafkaArgs, client_id: &str, group: &str) -> anyhow::Result<StreamConsumer> {
    let mut cfg = client_config(args, client_id)?;
    cfg.set("group.id", group)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "2000")
        .set("enable.partition.eof", "false");
    cfg.create().context("creating Kafka consumer")
}

pub fn admin(
    args: &KafkaArgs,
    client_id: &str,
) -> anyhow::Result<AdminClient<DefaultClientContext>> {
    client_config(args, client_id)?
        .create()
        .context("creating Kafka admin client")
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

/// Asks the cluster for metadata: proves the brokers answer. Blocking
/// librdkafka call, so it runs off the async threads.
pub async fn check_reachable(client: FutureProducer, timeout: Duration) -> Result<(), String> {
    use rdkafka::producer::Producer as _;
    tokio::task::spawn_blocking(move || {
        client
            .client()
            .fetch_metadata(None, timeout)
            .map(|_| ())
            .map_err(|e| format!("kafka: {e}"))
    })
    .await
    .map_err(|e| e.to_string())?
}
