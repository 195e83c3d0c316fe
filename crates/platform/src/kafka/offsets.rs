//! What the brokers say about a consumer group's position: each partition's
//! watermarks and the group's committed offset, hence its lag. The
//! operator's autoscaler and analytics' pipeline console read the same
//! figures. librdkafka calls block: run these on a blocking thread.

use std::time::Duration;

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::{Offset, TopicPartitionList};

/// What the broker says about one partition of a group's input topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PartitionOffsets {
    pub partition: i32,
    pub low: i64,
    pub high: i64,
    /// The group's committed offset; `None` before its first commit.
    pub committed: Option<i64>,
}

impl PartitionOffsets {
    /// Messages the group has still to process: from its committed offset
    /// (the low watermark before its first commit) to the high watermark.
    pub fn lag(&self) -> u64 {
        let from = self.committed.unwrap_or(self.low).max(self.low);
        (self.high - from).max(0) as u64
    }

    /// Messages retained in the partition.
    pub fn size(&self) -> u64 {
        (self.high - self.low).max(0) as u64
    }
}

/// Watermarks and `reader`'s group's committed offsets of every partition
/// of `topic`.
pub fn partition_offsets(
    reader: &BaseConsumer,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<Vec<PartitionOffsets>> {
    let partitions = partitions(reader, topic, timeout)?;
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

/// The partition ids of `topic` (none when it does not exist).
pub fn partitions<C: ConsumerContext + 'static, T: Consumer<C>>(
    client: &T,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<Vec<i32>> {
    let metadata = client
        .fetch_metadata(Some(topic), timeout)
        .with_context(|| format!("reading the metadata of {topic}"))?;
    Ok(metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect())
}
