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

/// A topic's partition, by name and id.
pub type Partition = (String, i32);

/// Where reading `partitions` from `since_ms` (Unix ms) starts: for each,
/// the first offset whose timestamp is at or after it, or, when nothing is
/// that recent, the partition's end read *before* that question was asked.
/// Everything below that end is older, and whatever was written after it
/// is read; an end read afterwards would skip what was written in between
/// (seen in CI: analytics' live reader lost orders posted while it
/// started). Always an explicit offset: `Offset::End` would be resolved
/// later still.
///
/// A partition whose leader is not known yet (a topic just created) has
/// neither: its entry is the error, for the caller to retry.
pub fn starts_since<C: ConsumerContext + 'static, T: Consumer<C>>(
    client: &T,
    partitions: &[Partition],
    since_ms: i64,
    timeout: Duration,
) -> anyhow::Result<Vec<(Partition, Result<i64, String>)>> {
    let mut out = Vec::new();
    let mut ends = std::collections::HashMap::new();
    let mut query = TopicPartitionList::new();
    for (topic, p) in partitions {
        match client.fetch_watermarks(topic, *p, timeout) {
            Ok((_, high)) => {
                ends.insert((topic.clone(), *p), high);
                query.add_partition_offset(topic, *p, Offset::Offset(since_ms))?;
            }
            Err(e) => out.push(((topic.clone(), *p), Err(e.to_string()))),
        }
    }
    if query.count() > 0 {
        let found = client
            .offsets_for_times(query, timeout)
            .context("looking up offsets by time")?;
        for e in found.elements() {
            let key = (e.topic().to_owned(), e.partition());
            let start = match e.error() {
                Err(err) => Err(err.to_string()),
                Ok(()) => Ok(start_offset(e.offset(), ends[&key])),
            };
            out.push((key, start));
        }
    }
    Ok(out)
}

/// The first offset at or after a time (`found`, as the broker answered),
/// else `end_before`.
fn start_offset(found: Offset, end_before: i64) -> i64 {
    match found {
        Offset::Offset(o) => o,
        _ => end_before,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_with_nothing_that_recent_starts_at_its_end_read_before() {
        assert_eq!(start_offset(Offset::Offset(7), 12), 7);
        // Nothing that recent: the broker answers -1, which is End.
        assert_eq!(start_offset(Offset::End, 12), 12);
        assert_eq!(start_offset(Offset::Invalid, 0), 0);
    }
}
