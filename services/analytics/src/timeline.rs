//! One order's timeline (issue 15): every event keyed by its orderId on
//! every topic of the pipeline, dead letters included, in time order, with
//! the stage that wrote it and its trace id. The window comes from the
//! order's stored times (received − 10 s to last update + 2 min), or the
//! last [`LOOKBACK`] when the order never reached MongoDB; each topic's
//! partitions are read from that time (`offsets_for_times`) to their end or
//! the window's end. Reads are bounded by [`SCAN_CAP`] messages.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use orderflow_platform::kafka::headers::{self, dlq};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// How far back an order MongoDB does not know is looked for.
pub const LOOKBACK: Duration = Duration::from_secs(15 * 60);
/// Most messages one timeline reads.
pub const SCAN_CAP: u64 = 200_000;
const KAFKA_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TimelineEvent {
    pub at: String,
    pub timestamp: i64,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    /// Who wrote it: `producer`, a stage, or for a dead letter the stage
    /// that gave it up.
    pub stage: Option<String>,
    pub event_id: Option<String>,
    pub trace_id: Option<String>,
    /// For a dead letter: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_letter_reason: Option<String>,
    pub payload: Option<serde_json::Value>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Timeline {
    pub order_id: String,
    pub from: String,
    pub to: String,
    pub events: Vec<TimelineEvent>,
    /// Set when [`SCAN_CAP`] or the time limit stopped the read early.
    pub truncated: bool,
}

/// `/orderflow/consumer/persist` → `persist`, `/orderflow/producer` →
/// `producer`.
fn writer(source: &str) -> String {
    source.rsplit('/').next().unwrap_or(source).to_owned()
}

fn header(msg: &BorrowedMessage<'_>, key: &str) -> Option<String> {
    headers::get(msg, key).map(str::to_owned)
}

fn event(msg: &BorrowedMessage<'_>, dlq_topic: &str) -> TimelineEvent {
    let timestamp = msg.timestamp().to_millis().unwrap_or_default();
    let is_dead = msg.topic() == dlq_topic;
    TimelineEvent {
        at: OffsetDateTime::from_unix_timestamp_nanos(timestamp as i128 * 1_000_000)
            .ok()
            .and_then(|t| t.format(&Rfc3339).ok())
            .unwrap_or_default(),
        timestamp,
        topic: msg.topic().to_owned(),
        partition: msg.partition(),
        offset: msg.offset(),
        event_type: header(msg, headers::TYPE),
        stage: if is_dead {
            header(msg, dlq::STAGE)
        } else {
            header(msg, headers::SOURCE).map(|s| writer(&s))
        },
        event_id: header(msg, headers::ID),
        trace_id: header(msg, "traceparent").and_then(|tp| tp.split('-').nth(1).map(str::to_owned)),
        dead_letter_reason: is_dead.then(|| header(msg, dlq::REASON)).flatten(),
        payload: msg.payload().and_then(|p| serde_json::from_slice(p).ok()),
    }
}

/// Reads the events keyed `order_id` on `topics` between `from` and `to`
/// (Unix ms). Blocking.
pub fn read(
    reader: &BaseConsumer,
    topics: &[String],
    dlq_topic: &str,
    order_id: &str,
    from: i64,
    to: i64,
) -> anyhow::Result<Timeline> {
    let mut query = TopicPartitionList::new();
    let mut ends = std::collections::BTreeMap::new();
    for topic in topics {
        for p in orderflow_platform::kafka::offsets::partitions(reader, topic, KAFKA_TIMEOUT)? {
            let (_, high) = reader
                .fetch_watermarks(topic, p, KAFKA_TIMEOUT)
                .context("reading watermarks")?;
            if high > 0 {
                ends.insert((topic.clone(), p), high);
                query.add_partition_offset(topic, p, Offset::Offset(from))?;
            }
        }
    }
    let mut events = Vec::new();
    let mut truncated = false;
    if query.count() > 0 {
        let starts = reader
            .offsets_for_times(query, KAFKA_TIMEOUT)
            .context("looking up offsets by time")?;
        let mut assign = TopicPartitionList::new();
        let mut open: BTreeSet<(String, i32)> = BTreeSet::new();
        for e in starts.elements() {
            let key = (e.topic().to_owned(), e.partition());
            let end = ends.get(&key).copied().unwrap_or(0);
            if let Offset::Offset(o) = e.offset() {
                if o < end {
                    assign.add_partition_offset(e.topic(), e.partition(), Offset::Offset(o))?;
                    open.insert(key);
                }
            }
        }
        if !open.is_empty() {
            reader.assign(&assign).context("assigning partitions")?;
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut scanned = 0u64;
        while !open.is_empty() {
            if scanned >= SCAN_CAP || Instant::now() > deadline {
                truncated = true;
                break;
            }
            let Some(next) = reader.poll(Duration::from_millis(250)) else {
                continue;
            };
            let msg = next.context("reading the topics")?;
            scanned += 1;
            let key = (msg.topic().to_owned(), msg.partition());
            let ts = msg.timestamp().to_millis().unwrap_or_default();
            if msg.offset() + 1 >= ends.get(&key).copied().unwrap_or(0) || ts > to {
                open.remove(&key);
            }
            if ts <= to && msg.key() == Some(order_id.as_bytes()) {
                events.push(event(&msg, dlq_topic));
            }
        }
        let _ = reader.unassign();
    }
    events.sort_by_key(|e| (e.timestamp, e.topic.clone(), e.offset));
    let fmt = |ms: i64| {
        OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
            .ok()
            .and_then(|t| t.format(&Rfc3339).ok())
            .unwrap_or_default()
    };
    Ok(Timeline {
        order_id: order_id.to_owned(),
        from: fmt(from),
        to: fmt(to),
        events,
        truncated,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_writer_is_the_last_segment_of_the_source() {
        assert_eq!(super::writer("/orderflow/consumer/persist"), "persist");
        assert_eq!(super::writer("/orderflow/producer"), "producer");
        assert_eq!(super::writer("x"), "x");
    }
}
