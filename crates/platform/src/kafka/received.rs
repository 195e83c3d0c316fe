//! A consumed message held after librdkafka let go of it: what a stage
//! queues and batches.
//!
//! rdkafka's `OwnedMessage` copies a message into a dozen allocations: the
//! payload, the key, the topic's name, and librdkafka's copy of the
//! headers, one allocation for each of a CloudEvent's ten headers and one
//! for their list. A stage holds up to `MAX_IN_FLIGHT` messages, and in
//! persist's heap at its peak those header copies took 1.5 MB, twice the
//! payloads (heaptrack, docs/benchmarks.md). [`Received`] keeps the
//! payload, the key and every header's name and value in one buffer, the
//! headers' places in a second, and shares the topic's name.
//!
//! Header names are read from librdkafka itself: rdkafka's
//! `BorrowedHeaders` panics on a name that is not UTF-8, which any
//! librdkafka producer may send, so one such record stopped a stage's
//! partition for good. A name that is not UTF-8 is kept with U+FFFD in
//! place of what is not (`String::from_utf8_lossy`); a lookup by one of
//! orderflow's names can never match it.

use std::ops::Range;
use std::sync::Arc;

use rdkafka::message::{BorrowedMessage, Header, Headers, Message, Timestamp};

use super::headers::{self, AddHeader, Pair, RecordHeaders};

/// A consumed message, detached from the consumer.
#[derive(Clone)]
pub struct Received {
    /// The buffer (payload, then key, then the headers' names and values)
    /// and where each header is in it.
    parts: RecordHeaders,
    /// Whether the record came with a header list (`headers()` is `None`
    /// otherwise, as for a borrowed message).
    has_headers: bool,
    payload: Option<Range<u32>>,
    key: Option<Range<u32>>,
    topic: Arc<str>,
    partition: i32,
    offset: i64,
    timestamp: Timestamp,
}

impl Received {
    /// Copies `msg` out of librdkafka's buffers; `topic` is its topic's
    /// name, shared by the messages of a topic (see [`TopicNames`]).
    pub fn detach(msg: &BorrowedMessage<'_>, topic: Arc<str>) -> Received {
        Received::build(
            msg.payload(),
            msg.key(),
            headers::list(msg),
            topic,
            msg.partition(),
            msg.offset(),
            msg.timestamp(),
        )
    }

    /// A message as given (tests): `headers` in order, `None`
    /// for a message that carries no header list at all.
    #[allow(clippy::too_many_arguments)]
    pub fn new<'h>(
        payload: Option<&[u8]>,
        key: Option<&[u8]>,
        headers: Option<&[Header<'h, &'h [u8]>]>,
        topic: impl Into<Arc<str>>,
        partition: i32,
        offset: i64,
        timestamp: Timestamp,
    ) -> Received {
        Received::build(
            payload,
            key,
            headers.map(|h| h.iter().map(|h| (h.key.as_bytes(), h.value))),
            topic.into(),
            partition,
            offset,
            timestamp,
        )
    }

    /// `headers` as they came: sized from the raw bytes, so that each name
    /// is checked for UTF-8 once, when it is copied. A name that is not
    /// UTF-8 takes a few bytes more than counted, and the buffer grows.
    fn build<'h>(
        payload: Option<&[u8]>,
        key: Option<&[u8]>,
        headers: Option<impl Iterator<Item = Pair<'h>> + Clone>,
        topic: Arc<str>,
        partition: i32,
        offset: i64,
        timestamp: Timestamp,
    ) -> Received {
        let (count, header_bytes) = headers.clone().map_or((0, 0), |h| {
            h.fold((0, 0), |(count, len), (n, v)| {
                (count + 1, len + n.len() + v.map_or(0, <[u8]>::len))
            })
        });
        let len = payload.map_or(0, <[u8]>::len) + key.map_or(0, <[u8]>::len) + header_bytes;
        // Ranges are u32: Kafka's records are far smaller than 4 GiB (a
        // broker's `message.max.bytes` is an i32 and about 1 MB by default).
        assert!(u32::try_from(len).is_ok(), "a record of {len} bytes");
        let mut parts = RecordHeaders::with_capacity(count, len);
        let payload = payload.map(|p| parts.append(p));
        let key = key.map(|k| parts.append(k));
        let has_headers = headers.is_some();
        for (name, value) in headers.into_iter().flatten() {
            parts.add_raw(&String::from_utf8_lossy(name), value);
        }
        Received {
            parts,
            has_headers,
            payload,
            key,
            topic,
            partition,
            offset,
            timestamp,
        }
    }

    /// The value of the first header named `key`, as UTF-8.
    pub fn header(&self, key: &str) -> Option<&str> {
        self.parts.get(key)
    }

    /// Every header as (name, value), in order.
    pub fn header_pairs(&self) -> impl Iterator<Item = Pair<'_>> + '_ {
        self.parts.pairs()
    }
}

impl Message for Received {
    type Headers = RecordHeaders;

    fn key(&self) -> Option<&[u8]> {
        self.key.clone().map(|r| self.parts.slice(r))
    }

    fn payload(&self) -> Option<&[u8]> {
        self.payload.clone().map(|r| self.parts.slice(r))
    }

    unsafe fn payload_mut(&mut self) -> Option<&mut [u8]> {
        let range = self.payload.clone()?;
        Some(self.parts.slice_mut(range))
    }

    fn topic(&self) -> &str {
        &self.topic
    }

    fn partition(&self) -> i32 {
        self.partition
    }

    fn offset(&self) -> i64 {
        self.offset
    }

    fn timestamp(&self) -> Timestamp {
        self.timestamp
    }

    fn headers(&self) -> Option<&RecordHeaders> {
        self.has_headers.then_some(&self.parts)
    }
}

impl std::fmt::Debug for Received {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Received")
            .field("topic", &self.topic)
            .field("partition", &self.partition)
            .field("offset", &self.offset)
            .field("key", &self.key().map(String::from_utf8_lossy))
            .field("payload_len", &self.payload().map(<[u8]>::len))
            .field("headers", &self.headers().map(Headers::count))
            .finish()
    }
}

/// The topics' names a consumer has seen, one shared copy each: a
/// consumer reads one topic or a few, and every message it holds names one.
#[derive(Default)]
pub struct TopicNames(Vec<Arc<str>>);

impl TopicNames {
    pub fn of(&mut self, topic: &str) -> Arc<str> {
        if let Some(known) = self.0.iter().find(|t| ***t == *topic) {
            return known.clone();
        }
        let name: Arc<str> = Arc::from(topic);
        self.0.push(name.clone());
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> Received {
        Received::new(
            Some(b"{\"a\":1}"),
            Some(b"key-1"),
            Some(&[
                Header {
                    key: "ce_type",
                    value: Some(b"orderflow.order.placed.v1".as_slice()),
                },
                Header {
                    key: "empty",
                    value: Some(b"".as_slice()),
                },
                Header {
                    key: "none",
                    value: None,
                },
                Header {
                    key: "ce_type",
                    value: Some(b"second".as_slice()),
                },
            ]),
            "orders",
            3,
            42,
            Timestamp::CreateTime(7),
        )
    }

    #[test]
    fn payload_key_and_headers_come_back_as_given() {
        let m = message();
        assert_eq!(m.payload(), Some(b"{\"a\":1}".as_slice()));
        assert_eq!(m.key(), Some(b"key-1".as_slice()));
        assert_eq!((m.topic(), m.partition(), m.offset()), ("orders", 3, 42));
        assert_eq!(m.timestamp(), Timestamp::CreateTime(7));
        let h = m.headers().unwrap();
        assert_eq!(h.count(), 4);
        let all: Vec<_> = h.iter().collect();
        assert_eq!(
            all,
            vec![
                Header {
                    key: "ce_type",
                    value: Some(b"orderflow.order.placed.v1".as_slice())
                },
                Header {
                    key: "empty",
                    value: Some(b"".as_slice())
                },
                Header {
                    key: "none",
                    value: None
                },
                Header {
                    key: "ce_type",
                    value: Some(b"second".as_slice())
                },
            ]
        );
        assert!(h.try_get(4).is_none());
        // The first of two headers of one name, as the CloudEvents binding reads it.
        assert_eq!(m.header("ce_type"), Some("orderflow.order.placed.v1"));
        assert_eq!(m.header("none"), None);
        assert_eq!(m.header("missing"), None);
    }

    #[test]
    fn a_clone_reads_the_same() {
        let original = message();
        let clone = original.clone();
        drop(original);
        assert_eq!(clone.header("ce_type"), Some("orderflow.order.placed.v1"));
        assert_eq!(clone.header_pairs().count(), 4);
        assert_eq!(clone.payload(), Some(b"{\"a\":1}".as_slice()));
    }

    #[test]
    fn absent_and_empty_parts_differ() {
        let m = Received::new(None, Some(b""), None, "t", 0, 0, Timestamp::NotAvailable);
        assert_eq!(m.payload(), None);
        assert_eq!(m.key(), Some(b"".as_slice()));
        assert!(m.headers().is_none());
        assert_eq!(m.header_pairs().count(), 0);
        let m = Received::new(None, None, Some(&[]), "t", 0, 0, Timestamp::NotAvailable);
        assert_eq!(m.headers().map(Headers::count), Some(0));
    }

    #[test]
    fn a_name_that_is_not_utf8_is_kept_lossily_and_read_without_panic() {
        let raw: [Pair<'_>; 2] = [
            (b"x-\xff\xfe".as_slice(), Some(b"v".as_slice())),
            (b"ce_type".as_slice(), Some(b"t".as_slice())),
        ];
        // Sized from the raw names: the lossy one is longer, so the buffer grows.
        let m = Received::build(
            Some(b"payload"),
            None,
            Some(raw.iter().copied()),
            "t".into(),
            0,
            0,
            Timestamp::NotAvailable,
        );
        let names: Vec<_> = m.headers().unwrap().iter().map(|h| h.key).collect();
        assert_eq!(names, ["x-\u{FFFD}\u{FFFD}", "ce_type"]);
        assert_eq!(m.header("ce_type"), Some("t"));
        assert_eq!(m.payload(), Some(b"payload".as_slice()));
    }

    #[test]
    fn a_topic_name_is_shared() {
        let mut names = TopicNames::default();
        let a = names.of("orders");
        let b = names.of("orders");
        let c = names.of("payments");
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(&*c, "payments");
    }
}
