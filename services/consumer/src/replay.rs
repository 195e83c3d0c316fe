//! Replay (reference system 003): moves one stage's consumer group back to
//! the start of its input topic (or to a point in time), so the stage
//! re-derives its state from the log. The stages are idempotent, so a replay
//! re-emits the same facts and changes nothing that was already done.
//!
//! Run it with the stage stopped (scaled to 0): Kafka refuses offset commits
//! from outside an active group's generation.

use std::time::Duration;

use anyhow::Context as _;
use orderflow_platform::config::KafkaArgs;
use orderflow_platform::kafka::offsets;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Where a replay starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayFrom {
    Earliest,
    Time(OffsetDateTime),
}

impl std::str::FromStr for ReplayFrom {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "earliest" {
            return Ok(ReplayFrom::Earliest);
        }
        OffsetDateTime::parse(s, &Rfc3339)
            .map(ReplayFrom::Time)
            .map_err(|_| format!("'{s}' is neither 'earliest' nor an RFC 3339 time"))
    }
}

/// Commits, for every partition of `topic`, the offset `from` names as
/// `group`'s position. Returns the (partition, offset) pairs committed.
pub async fn reset_group(
    kafka: &KafkaArgs,
    group: &str,
    topic: &str,
    from: ReplayFrom,
) -> anyhow::Result<Vec<(i32, i64)>> {
    let consumer = orderflow_platform::kafka::consumer(kafka, "orderflow-replay", group)?;
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let timeout = Duration::from_secs(10);
        let metadata = consumer
            .fetch_metadata(Some(&topic), timeout)
            .context("reading topic metadata")?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic)
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        anyhow::ensure!(!partitions.is_empty(), "topic {topic} has no partitions");
        let mut positions = TopicPartitionList::new();
        match from {
            ReplayFrom::Earliest => {
                for p in &partitions {
                    let (low, _) = consumer
                        .fetch_watermarks(&topic, *p, timeout)
                        .context("reading watermarks")?;
                    positions.add_partition_offset(&topic, *p, Offset::Offset(low))?;
                }
            }
            ReplayFrom::Time(t) => {
                let wanted: Vec<_> = partitions.iter().map(|p| (topic.clone(), *p)).collect();
                let ms = (t.unix_timestamp_nanos() / 1_000_000) as i64;
                for ((_, p), start) in offsets::starts_since(&consumer, &wanted, ms, timeout)? {
                    let start = start
                        .map_err(|e| anyhow::anyhow!("looking up partition {p}'s offset: {e}"))?;
                    positions.add_partition_offset(&topic, p, Offset::Offset(start))?;
                }
            }
        }
        consumer
            .commit(&positions, CommitMode::Sync)
            .context("committing the new positions (is the stage stopped?)")?;
        Ok(positions
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((e.partition(), o)),
                _ => None,
            })
            .collect())
    })
    .await?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_earliest_and_times() {
        assert_eq!("earliest".parse::<ReplayFrom>(), Ok(ReplayFrom::Earliest));
        assert!(matches!(
            "2026-11-22T10:00:00Z".parse::<ReplayFrom>(),
            Ok(ReplayFrom::Time(_))
        ));
        assert!("yesterday".parse::<ReplayFrom>().is_err());
    }
}
