//! The dead-letter queue, seen and re-driven (SPEC §2, issue 15).
//!
//! - [`Index`]: every dead letter's coordinates and reason headers, read
//!   from the DLQ topic from its start and followed as it grows, by a
//!   consumer that never joins a group or commits. Payloads are not kept:
//!   one message is fetched from the broker when it is shown or re-driven.
//! - [`Redriver`]: sends a dead letter back to its source topic with its
//!   original key, bytes and headers (the `dlq_*` ones removed). Each
//!   re-drive is recorded in MongoDB's `redrives` (who, when, what, where it
//!   landed), keyed by the dead letter's coordinates, and a message already
//!   re-driven is not sent again: re-driving twice changes nothing. A claim
//!   is taken before sending, so two concurrent re-drives send once; a claim
//!   left by a crashed process is taken over after [`CLAIM_TIMEOUT`] (the
//!   stages are idempotent, so a rare second send is harmless too).
//!
//! The HTTP handlers are in `crate::console`; `analytics dlq …` runs the
//! same code from the command line.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use bson::{doc, Document};
use futures::TryStreamExt;
use orderflow_platform::config::KafkaArgs;
use orderflow_platform::kafka::headers::{self, dlq, AddHeader, HeaderBuilder};
use orderflow_platform::kafka::Producer;
use orderflow_platform::shutdown::CancellationToken;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Message, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

/// How long a claim on a re-drive holds before another process may take
/// it over (the claimant crashed between claiming and sending).
pub const CLAIM_TIMEOUT: Duration = Duration::from_secs(60);
/// Most dead letters one filtered re-drive sends.
pub const MAX_REDRIVE: usize = 1000;
/// Most entries the index keeps (the newest); older ones are still counted.
pub const INDEX_CAP: usize = 200_000;
const KAFKA_TIMEOUT: Duration = Duration::from_secs(5);

/// One dead letter, as listed.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    pub partition: i32,
    pub offset: i64,
    /// When it was dead-lettered (the DLQ record's timestamp, ms).
    pub timestamp: i64,
    pub key: Option<String>,
    pub stage: Option<String>,
    pub reason: Option<String>,
    pub error: Option<String>,
    pub source_topic: Option<String>,
    pub source_partition: Option<i32>,
    pub source_offset: Option<i64>,
    pub event_type: Option<String>,
}

impl Entry {
    fn of(msg: &BorrowedMessage<'_>) -> Entry {
        let get = |k: &str| headers::get(msg, k).map(str::to_owned);
        Entry {
            partition: msg.partition(),
            offset: msg.offset(),
            timestamp: msg.timestamp().to_millis().unwrap_or_default(),
            key: msg.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            stage: get(dlq::STAGE),
            reason: get(dlq::REASON),
            error: get(dlq::ERROR),
            source_topic: get(dlq::TOPIC),
            source_partition: get(dlq::PARTITION).and_then(|v| v.parse().ok()),
            source_offset: get(dlq::OFFSET).and_then(|v| v.parse().ok()),
            event_type: get(headers::TYPE),
        }
    }

    /// The `redrives` key of this dead letter.
    pub fn redrive_id(&self, dlq_topic: &str) -> String {
        format!("{dlq_topic}/{}/{}", self.partition, self.offset)
    }
}

/// Which dead letters a list or a re-drive is about.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct Filter {
    pub stage: Option<String>,
    pub reason: Option<String>,
}

impl Filter {
    fn matches(&self, e: &Entry) -> bool {
        let is = |want: &Option<String>, have: &Option<String>| {
            want.as_deref()
                .is_none_or(|w| w.is_empty() || have.as_deref() == Some(w))
        };
        is(&self.stage, &e.stage) && is(&self.reason, &e.reason)
    }
}

#[derive(Default)]
struct IndexState {
    entries: Vec<Entry>,
    /// Entries read in all, including those dropped past the cap.
    total: u64,
    by_stage: BTreeMap<String, u64>,
    /// Next offset to read, per partition.
    positions: BTreeMap<i32, i64>,
    /// High watermarks at the last check, per partition.
    highs: BTreeMap<i32, i64>,
}

/// Every dead letter read so far, newest last.
#[derive(Clone, Default)]
pub struct Index(Arc<RwLock<IndexState>>);

/// A page of the list: newest first.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Page {
    pub items: Vec<Entry>,
    /// Pass as `cursor` for the next (older) page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    /// Dead letters matching the filter.
    pub matched: usize,
}

impl Index {
    /// Dead letters per stage, all read so far.
    pub fn by_stage(&self) -> BTreeMap<String, u64> {
        self.0.read().expect("dlq index").by_stage.clone()
    }

    pub fn total(&self) -> u64 {
        self.0.read().expect("dlq index").total
    }

    /// Whether every partition has been read up to its last known high
    /// watermark.
    pub fn caught_up(&self) -> bool {
        let s = self.0.read().expect("dlq index");
        s.highs
            .iter()
            .all(|(p, high)| s.positions.get(p).copied().unwrap_or(0) >= *high)
    }

    pub fn get(&self, partition: i32, offset: i64) -> Option<Entry> {
        let s = self.0.read().expect("dlq index");
        s.entries
            .iter()
            .rev()
            .find(|e| e.partition == partition && e.offset == offset)
            .cloned()
    }

    /// Newest first; `cursor` is the `nextCursor` of the previous page.
    pub fn page(&self, filter: &Filter, limit: usize, cursor: Option<Cursor>) -> Page {
        let s = self.0.read().expect("dlq index");
        let mut matching: Vec<&Entry> = s.entries.iter().filter(|e| filter.matches(e)).collect();
        matching.sort_by_key(|e| std::cmp::Reverse(Cursor::of(e)));
        let matched = matching.len();
        let start = match cursor {
            Some(c) => matching.partition_point(|e| Cursor::of(e) >= c),
            None => 0,
        };
        let items: Vec<Entry> = matching[start..]
            .iter()
            .take(limit)
            .map(|e| (*e).clone())
            .collect();
        let next_cursor = (start + items.len() < matched)
            .then(|| items.last().map(|e| Cursor::of(e).to_string()))
            .flatten();
        Page {
            items,
            next_cursor,
            matched,
        }
    }

    /// Every entry matching `filter`, oldest first.
    pub fn matching(&self, filter: &Filter) -> Vec<Entry> {
        let s = self.0.read().expect("dlq index");
        s.entries
            .iter()
            .filter(|e| filter.matches(e))
            .cloned()
            .collect()
    }

    fn push(&self, entry: Entry) {
        let mut s = self.0.write().expect("dlq index");
        s.total += 1;
        *s.by_stage
            .entry(entry.stage.clone().unwrap_or_else(|| "unknown".into()))
            .or_default() += 1;
        s.positions.insert(entry.partition, entry.offset + 1);
        s.entries.push(entry);
        if s.entries.len() > INDEX_CAP {
            let drop = s.entries.len() - INDEX_CAP;
            s.entries.drain(..drop);
        }
    }

    /// Reads `topic` from its start, then follows it until `shutdown`. New
    /// partitions are picked up at the next metadata check. Blocking: run it
    /// on a thread of its own.
    pub fn follow(&self, reader: BaseConsumer, topic: &str, shutdown: CancellationToken) {
        let mut assigned: HashSet<i32> = HashSet::new();
        let mut checked = std::time::Instant::now() - Duration::from_secs(60);
        while !shutdown.is_cancelled() {
            if checked.elapsed() >= Duration::from_secs(5) {
                checked = std::time::Instant::now();
                if let Err(e) = self.refresh(&reader, topic, &mut assigned) {
                    tracing::warn!(error = %format!("{e:#}"), topic, "reading the dead-letter topic");
                }
            }
            if assigned.is_empty() {
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
            match reader.poll(Duration::from_millis(200)) {
                Some(Ok(msg)) => self.push(Entry::of(&msg)),
                Some(Err(e)) => tracing::debug!(error = %e, "dead-letter poll"),
                None => {}
            }
        }
    }

    /// Reads `topic` up to the high watermarks it has now, then returns
    /// (the command line's one-shot view).
    pub fn read_to_end(&self, reader: &BaseConsumer, topic: &str) -> anyhow::Result<()> {
        let mut assigned = HashSet::new();
        self.refresh(reader, topic, &mut assigned)?;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !self.caught_up() {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "the dead-letter topic was not read to its end within a minute"
            );
            if let Some(Ok(msg)) = reader.poll(Duration::from_millis(200)) {
                self.push(Entry::of(&msg));
            }
        }
        Ok(())
    }

    /// Updates the high watermarks and assigns partitions not read yet,
    /// from their low watermark.
    fn refresh(
        &self,
        reader: &BaseConsumer,
        topic: &str,
        assigned: &mut HashSet<i32>,
    ) -> anyhow::Result<()> {
        let partitions =
            orderflow_platform::kafka::offsets::partitions(reader, topic, KAFKA_TIMEOUT)?;
        let mut new = TopicPartitionList::new();
        for p in partitions {
            let (low, high) = reader
                .fetch_watermarks(topic, p, KAFKA_TIMEOUT)
                .context("reading the dead-letter topic's watermarks")?;
            let mut s = self.0.write().expect("dlq index");
            s.highs.insert(p, high);
            let position = s.positions.entry(p).or_insert(low);
            if *position < low {
                *position = low; // retention removed what was not read
            }
            if !assigned.contains(&p) {
                new.add_partition_offset(topic, p, Offset::Offset(*position))?;
            }
        }
        if new.count() > 0 {
            reader
                .incremental_assign(&new)
                .context("assigning the dead-letter partitions")?;
            for e in new.elements() {
                assigned.insert(e.partition());
            }
        }
        Ok(())
    }
}

/// A position in the newest-first list: (timestamp, partition, offset).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor(i64, i32, i64);

impl Cursor {
    fn of(e: &Entry) -> Cursor {
        Cursor(e.timestamp, e.partition, e.offset)
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

impl std::str::FromStr for Cursor {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let mut parts = s.split('.');
        let mut next = || parts.next().ok_or(());
        let c = Cursor(
            next()?.parse().map_err(|_| ())?,
            next()?.parse().map_err(|_| ())?,
            next()?.parse().map_err(|_| ())?,
        );
        if parts.next().is_some() {
            return Err(());
        }
        Ok(c)
    }
}

/// One dead letter with its original bytes and headers.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Letter {
    #[serde(flatten)]
    pub entry: Entry,
    /// The original payload, base64.
    pub payload_base64: String,
    /// The original payload as text, when it is UTF-8.
    pub payload_text: Option<String>,
    /// Every header, in order, the `dlq_*` ones included.
    pub headers: Vec<HeaderView>,
    #[serde(skip)]
    pub raw: Raw,
}

#[derive(Debug, Clone, Default)]
pub struct Raw {
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HeaderView {
    pub key: String,
    pub value: Option<String>,
}

/// Reads single messages of the DLQ by their coordinates.
pub struct Fetcher {
    reader: BaseConsumer,
    topic: String,
}

impl Fetcher {
    pub fn new(kafka: &KafkaArgs, topic: &str) -> anyhow::Result<Fetcher> {
        let reader = orderflow_platform::kafka::position_reader(
            kafka,
            "orderflow-analytics-dlq-fetch",
            "orderflow-analytics-dlq",
        )?;
        Ok(Fetcher {
            reader,
            topic: topic.to_owned(),
        })
    }

    /// The message at (`partition`, `offset`), or `None` when the topic has
    /// no such message (never written, or removed by retention). Blocking.
    pub fn fetch(&self, partition: i32, offset: i64) -> anyhow::Result<Option<Letter>> {
        let (low, high) = match self
            .reader
            .fetch_watermarks(&self.topic, partition, KAFKA_TIMEOUT)
        {
            Ok(w) => w,
            Err(e)
                if e.rdkafka_error_code()
                    == Some(rdkafka::types::RDKafkaErrorCode::UnknownPartition) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e).context("reading the dead-letter watermarks"),
        };
        if offset < low || offset >= high {
            return Ok(None);
        }
        let mut at = TopicPartitionList::new();
        at.add_partition_offset(&self.topic, partition, Offset::Offset(offset))?;
        self.reader.assign(&at)?;
        let read = self.read_at(offset);
        // Not left fetching between reads (see `position_reader`).
        let _ = self.reader.unassign();
        read
    }

    /// The assigned partition's message at `offset`.
    fn read_at(&self, offset: i64) -> anyhow::Result<Option<Letter>> {
        let deadline = std::time::Instant::now() + KAFKA_TIMEOUT;
        while std::time::Instant::now() < deadline {
            match self.reader.poll(Duration::from_millis(250)) {
                Some(Ok(msg)) if msg.offset() == offset => {
                    // A name that is not UTF-8 is re-driven with U+FFFD
                    // in place of what is not (headers::pairs reads them).
                    let headers: Vec<(String, Option<Vec<u8>>)> = headers::pairs(&msg)
                        .map(|(name, value)| {
                            (
                                String::from_utf8_lossy(name).into_owned(),
                                value.map(<[u8]>::to_vec),
                            )
                        })
                        .collect();
                    let payload = msg.payload().unwrap_or_default().to_vec();
                    return Ok(Some(Letter {
                        entry: Entry::of(&msg),
                        payload_base64: base64::engine::general_purpose::STANDARD.encode(&payload),
                        payload_text: String::from_utf8(payload.clone()).ok(),
                        headers: headers
                            .iter()
                            .map(|(k, v)| HeaderView {
                                key: k.clone(),
                                value: v.as_ref().map(|v| String::from_utf8_lossy(v).into_owned()),
                            })
                            .collect(),
                        raw: Raw {
                            key: msg.key().map(<[u8]>::to_vec),
                            payload,
                            headers,
                        },
                    }));
                }
                // Compacted away or a transaction marker: the next one is past it.
                Some(Ok(msg)) if msg.offset() > offset => return Ok(None),
                Some(Ok(_)) | None => {}
                Some(Err(e)) => return Err(e).context("fetching the dead letter"),
            }
        }
        anyhow::bail!("the broker did not return the dead letter in time")
    }
}

/// What happened to one dead letter asked to be re-driven.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    tag = "outcome"
)]
pub enum Outcome {
    /// Sent back to its source topic.
    Redriven {
        partition: i32,
        offset: i64,
        topic: String,
        target_partition: i32,
        target_offset: i64,
    },
    /// Not sent: why.
    Skipped {
        partition: i32,
        offset: i64,
        reason: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        redriven_at: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        redriven_by: Option<String>,
    },
}

/// Sends dead letters back and records it.
pub struct Redriver {
    pub producer: Producer,
    pub redrives: mongodb::Collection<Document>,
    pub dlq_topic: String,
    /// The topics a dead letter may go back to: the pipeline's own.
    pub topics: Vec<String>,
}

fn rfc3339(d: bson::DateTime) -> String {
    d.try_to_rfc3339_string().unwrap_or_default()
}

impl Redriver {
    /// Re-drives one fetched dead letter on behalf of `who`.
    pub async fn redrive(&self, letter: &Letter, who: &str) -> anyhow::Result<Outcome> {
        let e = &letter.entry;
        let skipped = |reason: &str, at: Option<String>, by: Option<String>| Outcome::Skipped {
            partition: e.partition,
            offset: e.offset,
            reason: reason.into(),
            redriven_at: at,
            redriven_by: by,
        };
        let Some(target) = e
            .source_topic
            .clone()
            .filter(|t| self.topics.contains(t) && *t != self.dlq_topic)
        else {
            return Ok(skipped("unknown-source-topic", None, None));
        };
        let id = e.redrive_id(&self.dlq_topic);
        let now = bson::DateTime::now();
        let claim = doc! {
            "_id": &id, "state": "claimed", "claimedAt": now, "by": who,
            "dlqTopic": &self.dlq_topic, "partition": e.partition, "offset": e.offset,
            "stage": e.stage.as_deref(), "reason": e.reason.as_deref(), "key": e.key.as_deref(),
            "sourceTopic": &target, "sourcePartition": e.source_partition,
            "sourceOffset": e.source_offset,
        };
        match self.redrives.insert_one(claim).await {
            Ok(_) => {}
            Err(err) if orderflow_platform::mongo::is_duplicate_key(&err) => {
                let existing = self
                    .redrives
                    .find_one(doc! {"_id": &id})
                    .await?
                    .unwrap_or_default();
                let by = existing.get_str("by").ok().map(str::to_owned);
                if existing.get_str("state") == Ok("done") {
                    let at = existing
                        .get_datetime("redrivenAt")
                        .ok()
                        .copied()
                        .map(rfc3339);
                    return Ok(skipped("already-redriven", at, by));
                }
                // A claim older than CLAIM_TIMEOUT was left by a crash.
                let stale = bson::DateTime::from_millis(
                    now.timestamp_millis() - CLAIM_TIMEOUT.as_millis() as i64,
                );
                let taken = self
                    .redrives
                    .update_one(
                        doc! {"_id": &id, "state": "claimed", "claimedAt": {"$lt": stale}},
                        doc! {"$set": {"claimedAt": now, "by": who}},
                    )
                    .await?;
                if taken.modified_count == 0 {
                    return Ok(skipped("redrive-in-progress", None, by));
                }
            }
            Err(err) => return Err(err).context("recording the re-drive"),
        }
        match self.send(letter, &target, &id).await {
            Ok((target_partition, target_offset)) => {
                self.redrives
                    .update_one(
                        doc! {"_id": &id},
                        doc! {"$set": {"state": "done", "redrivenAt": bson::DateTime::now(),
                        "targetPartition": target_partition, "targetOffset": target_offset}},
                    )
                    .await
                    .context("recording the re-drive as done")?;
                tracing::info!(%id, topic = %target, who, "dead letter re-driven");
                Ok(Outcome::Redriven {
                    partition: e.partition,
                    offset: e.offset,
                    topic: target,
                    target_partition,
                    target_offset,
                })
            }
            Err(err) => {
                // Not sent: release the claim so that it can be tried again.
                let _ = self
                    .redrives
                    .delete_one(doc! {"_id": &id, "state": "claimed"})
                    .await;
                Err(err)
            }
        }
    }

    /// Produces the original record to `topic`, acks=all; the `dlq_*`
    /// headers are left out and `orderflow_redrive` names the dead letter.
    async fn send(&self, letter: &Letter, topic: &str, id: &str) -> anyhow::Result<(i32, i64)> {
        let mut headers = HeaderBuilder(OwnedHeaders::new_with_capacity(letter.raw.headers.len()));
        for (k, v) in &letter.raw.headers {
            if k.starts_with(dlq::PREFIX) || k == REDRIVE_HEADER {
                continue;
            }
            headers.add_raw(k, v.as_deref());
        }
        headers.add(REDRIVE_HEADER, id);
        let mut record = FutureRecord::to(topic)
            .payload(&letter.raw.payload)
            .headers(headers.0);
        if let Some(key) = &letter.raw.key {
            record = record.key(key);
        }
        let delivery = self
            .producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| anyhow::anyhow!("sending the dead letter back: {e}"))?;
        Ok((delivery.partition, delivery.offset))
    }

    /// The re-drive records of these dead letters, by coordinates.
    pub async fn records(
        &self,
        entries: &[Entry],
    ) -> anyhow::Result<BTreeMap<(i32, i64), Document>> {
        if entries.is_empty() {
            return Ok(BTreeMap::new());
        }
        let ids: Vec<String> = entries
            .iter()
            .map(|e| e.redrive_id(&self.dlq_topic))
            .collect();
        let found: Vec<Document> = self
            .redrives
            .find(doc! {"_id": {"$in": ids}})
            .await?
            .try_collect()
            .await?;
        Ok(found
            .into_iter()
            .filter_map(|d| {
                let p = d.get_i32("partition").ok()?;
                let o = orderflow_platform::mongo::number(d.get("offset"));
                Some(((p, o), d))
            })
            .collect())
    }
}

/// The header a re-driven record carries: the dead letter it came from.
pub const REDRIVE_HEADER: &str = "orderflow_redrive";

/// A re-drive record as the API shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub state: String,
    pub by: Option<String>,
    pub claimed_at: Option<String>,
    pub redriven_at: Option<String>,
    pub target_partition: Option<i32>,
    pub target_offset: Option<i64>,
}

impl Record {
    pub fn of(d: &Document) -> Record {
        Record {
            state: d.get_str("state").unwrap_or_default().to_owned(),
            by: d.get_str("by").ok().map(str::to_owned),
            claimed_at: d.get_datetime("claimedAt").ok().copied().map(rfc3339),
            redriven_at: d.get_datetime("redrivenAt").ok().copied().map(rfc3339),
            target_partition: d.get_i32("targetPartition").ok(),
            target_offset: d
                .get("targetOffset")
                .map(|v| orderflow_platform::mongo::number(Some(v))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(partition: i32, offset: i64, timestamp: i64, stage: &str, reason: &str) -> Entry {
        Entry {
            partition,
            offset,
            timestamp,
            key: None,
            stage: Some(stage.into()),
            reason: Some(reason.into()),
            error: None,
            source_topic: None,
            source_partition: None,
            source_offset: None,
            event_type: None,
        }
    }

    #[test]
    fn pages_are_newest_first_filtered_and_continue_from_the_cursor() {
        let index = Index::default();
        for i in 0..7 {
            let stage = if i % 2 == 0 { "persist" } else { "notify" };
            index.push(entry(
                i % 2,
                i as i64,
                1000 + i as i64,
                stage,
                "undecodable",
            ));
        }
        index.push(entry(0, 100, 2000, "notify", "delivery_failed"));
        assert_eq!(index.total(), 8);
        assert_eq!(index.by_stage()["notify"], 4);
        let all = Filter::default();
        let first = index.page(&all, 3, None);
        assert_eq!(first.matched, 8);
        let offsets = |p: &Page| p.items.iter().map(|e| e.offset).collect::<Vec<_>>();
        assert_eq!(offsets(&first), [100, 6, 5]);
        let cursor: Cursor = first.next_cursor.as_deref().unwrap().parse().unwrap();
        let second = index.page(&all, 3, Some(cursor));
        assert_eq!(offsets(&second), [4, 3, 2]);
        let third = index.page(&all, 3, second.next_cursor.unwrap().parse().ok());
        assert_eq!(offsets(&third), [1, 0]);
        assert!(third.next_cursor.is_none());
        let notify = Filter {
            stage: Some("notify".into()),
            reason: Some("undecodable".into()),
        };
        assert_eq!(offsets(&index.page(&notify, 10, None)), [5, 3, 1]);
        assert_eq!(index.matching(&notify).len(), 3);
        assert!(index.get(0, 100).is_some() && index.get(1, 100).is_none());
        for bad in ["", "1.2", "a.b.c", "1.2.3.4"] {
            assert!(bad.parse::<Cursor>().is_err(), "{bad}");
        }
    }
}
