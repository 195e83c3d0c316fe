//! What the operator asks the Kafka brokers: each partition's watermarks
//! and a group's committed offsets (the lag), the topics that exist, and
//! the topic changes of [`crate::topics::plan`]. librdkafka calls block, so
//! callers run these on a blocking thread.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewPartitions, NewTopic, ResourceSpecifier,
    TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::scaling::PartitionOffsets;
use crate::topics::{ObservedTopic, TopicAction};

/// Watermarks and `reader`'s group's committed offsets of every partition
/// of `topic`.
pub fn partition_offsets(
    reader: &BaseConsumer,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<Vec<PartitionOffsets>> {
    let metadata = reader
        .fetch_metadata(Some(topic), timeout)
        .context("reading topic metadata")?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    anyhow::ensure!(!partitions.is_empty(), "topic {topic} has no partitions");
    let mut wanted = TopicPartitionList::new();
    for p in &partitions {
        wanted.add_partition(topic, *p);
    }
    let committed = reader
        .committed_offsets(wanted, timeout)
        .context("reading committed offsets")?;
    partitions
        .iter()
        .map(|p| {
            let (low, high) = reader
                .fetch_watermarks(topic, *p, timeout)
                .context("reading watermarks")?;
            let committed = match committed.find_partition(topic, *p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => Some(o),
                _ => None,
            };
            Ok(PartitionOffsets {
                partition: *p,
                low,
                high,
                committed,
            })
        })
        .collect()
}

/// The topics that exist, with their partition counts (configs are not
/// described: see [`ObservedTopic::config`]).
pub fn existing_topics(
    reader: &BaseConsumer,
    timeout: Duration,
) -> anyhow::Result<BTreeMap<String, ObservedTopic>> {
    let metadata = reader
        .fetch_metadata(None, timeout)
        .context("reading metadata")?;
    Ok(metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| {
            (
                t.name().to_owned(),
                ObservedTopic {
                    partitions: t.partitions().len() as i32,
                    config: None,
                },
            )
        })
        .collect())
}

/// Applies one topic action; a refused decrease is not an API call.
pub async fn apply(
    admin: &AdminClient<DefaultClientContext>,
    action: &TopicAction,
) -> anyhow::Result<()> {
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = match action {
        TopicAction::Create(t) => {
            let mut topic = NewTopic::new(
                &t.name,
                t.partitions,
                TopicReplication::Fixed(t.replication_factor),
            );
            for (k, v) in &t.config {
                topic = topic.set(k, v);
            }
            admin.create_topics([&topic], &opts).await?
        }
        TopicAction::AddPartitions { name, total } => {
            admin
                .create_partitions([&NewPartitions::new(name, *total as usize)], &opts)
                .await?
        }
        TopicAction::AlterConfig { name, set } => {
            let mut change = AlterConfig::new(ResourceSpecifier::Topic(name));
            for (k, v) in set {
                change = change.set(k, v);
            }
            return admin
                .alter_configs([&change], &opts)
                .await?
                .into_iter()
                .try_for_each(|r| {
                    r.map(|_| ())
                        .map_err(|(_, e)| anyhow::anyhow!("altering {name}: {e}"))
                });
        }
        TopicAction::RefuseDecrease { .. } => return Ok(()),
    };
    for r in results {
        r.map_err(|(name, e)| anyhow::anyhow!("{name}: {e}"))?;
    }
    Ok(())
}
