//! Event envelopes in Kafka headers, after the CloudEvents Kafka protocol
//! binding (binary content mode): `ce_specversion`, `ce_id`, `ce_source`,
//! `ce_type`, `ce_time`, `ce_subject`, `content-type`, plus the extension
//! `ce_schemaversion` and the W3C trace context (`traceparent`, `tracestate`)
//! that OpenTelemetry's messaging instrumentation reads.

use opentelemetry::propagation::{Extractor, Injector};
use std::ops::Range;

use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};

use super::Received;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

pub const SPECVERSION: &str = "ce_specversion";
pub const ID: &str = "ce_id";
pub const SOURCE: &str = "ce_source";
pub const TYPE: &str = "ce_type";
pub const TIME: &str = "ce_time";
pub const SUBJECT: &str = "ce_subject";
pub const SCHEMA_VERSION: &str = "ce_schemaversion";
pub const CONTENT_TYPE: &str = "content-type";

/// Headers that a dead-lettered message carries in addition to its own.
pub mod dlq {
    /// What every one of them starts with (a re-drive leaves them out).
    pub const PREFIX: &str = "dlq_";
    pub const STAGE: &str = "dlq_stage";
    pub const REASON: &str = "dlq_reason";
    pub const ERROR: &str = "dlq_error";
    pub const TOPIC: &str = "dlq_source_topic";
    pub const PARTITION: &str = "dlq_source_partition";
    pub const OFFSET: &str = "dlq_source_offset";
    pub const TIME: &str = "dlq_time";
}

/// What the envelope says about one event.
pub struct Envelope<'a> {
    pub event_type: &'a str,
    pub source: &'a str,
    pub subject: &'a str,
    pub time: OffsetDateTime,
}

/// Builds the headers of a new event whose trace parent is `span`.
pub fn for_event(envelope: &Envelope<'_>, span: &tracing::Span) -> OwnedHeaders {
    let mut builder = HeaderBuilder(OwnedHeaders::new_with_capacity(10));
    write_event(&mut builder, envelope, span);
    builder.0
}

/// Adds the headers of a new event whose trace parent is `span`.
pub fn write_event<H: AddHeader + Injector>(
    to: &mut H,
    envelope: &Envelope<'_>,
    span: &tracing::Span,
) {
    let id = uuid::Uuid::now_v7().to_string();
    let time = envelope.time.format(&Rfc3339).unwrap_or_default();
    to.add(SPECVERSION, "1.0");
    to.add(ID, &id);
    to.add(SOURCE, envelope.source);
    to.add(TYPE, envelope.event_type);
    to.add(TIME, &time);
    to.add(SUBJECT, envelope.subject);
    to.add(SCHEMA_VERSION, orderflow_domain::events::SCHEMA_VERSION);
    to.add(CONTENT_TYPE, "application/json");
    crate::telemetry::inject(span, to);
}

/// Something headers are appended to.
pub trait AddHeader {
    /// A header as it came (bytes, or none): for copying another message's.
    fn add_raw(&mut self, key: &str, value: Option<&[u8]>);

    fn add(&mut self, key: &str, value: &str) {
        self.add_raw(key, Some(value.as_bytes()));
    }
}

/// Appends string headers to an [`OwnedHeaders`].
pub struct HeaderBuilder(pub OwnedHeaders);

impl AddHeader for HeaderBuilder {
    fn add_raw(&mut self, key: &str, value: Option<&[u8]>) {
        let headers = std::mem::take(&mut self.0);
        self.0 = headers.insert(Header { key, value });
    }
}

impl Injector for HeaderBuilder {
    fn set(&mut self, key: &str, value: String) {
        self.add(key, &value);
    }
}

/// The headers of a record waiting to be published, names (UTF-8) and
/// values in one buffer; a [`Received`] message keeps its payload and key
/// in the same buffer, ahead of its headers. librdkafka takes a list of
/// its own with each send ([`RecordHeaders::to_owned_headers`]) and keeps
/// it until the record is acknowledged; a stage keeps the record itself
/// for a retry. Kept as an [`OwnedHeaders`], as it was, a record being
/// published had two librdkafka lists of ten allocations each (0.81 MB of
/// persist's heap at its peak for the copies alone; docs/benchmarks.md).
#[derive(Clone, Debug, Default)]
pub struct RecordHeaders {
    bytes: Vec<u8>,
    at: Vec<Placed>,
}

impl RecordHeaders {
    /// Room for `count` headers of `bytes` bytes of names and values.
    pub fn with_capacity(count: usize, bytes: usize) -> Self {
        RecordHeaders {
            bytes: Vec::with_capacity(bytes),
            at: Vec::with_capacity(count),
        }
    }

    /// Every header as (name, value), in order.
    pub fn pairs(&self) -> impl Iterator<Item = Pair<'_>> + '_ {
        self.at.iter().map(|p| self.read(p))
    }

    fn read(&self, p: &Placed) -> Pair<'_> {
        (
            self.slice(p.name.clone()),
            p.value.clone().map(|v| self.slice(v)),
        )
    }

    /// The value of the first header named `key`, as UTF-8.
    pub fn get(&self, key: &str) -> Option<&str> {
        find(self.pairs(), key)
    }

    /// A list for librdkafka to send and keep.
    pub fn to_owned_headers(&self) -> OwnedHeaders {
        let mut list = HeaderBuilder(OwnedHeaders::new_with_capacity(self.at.len()));
        for h in self.iter() {
            list.add_raw(h.key, h.value);
        }
        list.0
    }

    /// Appends bytes that are not a header (a received message's payload
    /// or key); they are where the returned range says.
    pub(super) fn append(&mut self, part: &[u8]) -> Range<u32> {
        let start = self.bytes.len() as u32;
        self.bytes.extend_from_slice(part);
        start..self.bytes.len() as u32
    }

    pub(super) fn slice(&self, range: Range<u32>) -> &[u8] {
        &self.bytes[range.start as usize..range.end as usize]
    }

    pub(super) fn slice_mut(&mut self, range: Range<u32>) -> &mut [u8] {
        &mut self.bytes[range.start as usize..range.end as usize]
    }
}

impl Headers for RecordHeaders {
    fn count(&self) -> usize {
        self.at.len()
    }

    fn try_get(&self, idx: usize) -> Option<Header<'_, &[u8]>> {
        self.at.get(idx).map(|p| {
            let (name, value) = self.read(p);
            Header {
                // Names are only ever added as `&str`.
                key: std::str::from_utf8(name).expect("names are stored as UTF-8"),
                value,
            }
        })
    }
}

impl AddHeader for RecordHeaders {
    fn add_raw(&mut self, key: &str, value: Option<&[u8]>) {
        let name = self.append(key.as_bytes());
        let value = value.map(|v| self.append(v));
        self.at.push(Placed { name, value });
    }
}

impl Injector for RecordHeaders {
    fn set(&mut self, key: &str, value: String) {
        self.add(key, &value);
    }
}

/// Where one header's name and value are in a [`RecordHeaders`]' buffer.
#[derive(Clone, Debug)]
struct Placed {
    name: Range<u32>,
    value: Option<Range<u32>>,
}

/// A received header as (name, value): the name's bytes as they came.
pub type Pair<'a> = (&'a [u8], Option<&'a [u8]>);

/// The value of the first header named `key`, as UTF-8.
pub fn find<'a>(pairs: impl IntoIterator<Item = Pair<'a>>, key: &str) -> Option<&'a str> {
    pairs
        .into_iter()
        .find(|(name, _)| *name == key.as_bytes())
        .and_then(|(_, value)| value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// The value of the first header of a consumed message named `key`, as UTF-8.
pub fn get<'a>(msg: &'a BorrowedMessage<'_>, key: &str) -> Option<&'a str> {
    find(pairs(msg), key)
}

/// A consumed message's headers, in order; none if it has no header list.
/// Read from librdkafka itself: rdkafka's `BorrowedHeaders` panics on a
/// name that is not UTF-8, which any librdkafka producer may send.
pub fn pairs<'a>(msg: &'a BorrowedMessage<'_>) -> impl Iterator<Item = Pair<'a>> + Clone + 'a {
    list(msg).into_iter().flatten()
}

/// A consumed message's headers, or `None` when it carries no header list.
pub fn list<'a>(
    msg: &'a BorrowedMessage<'_>,
) -> Option<impl Iterator<Item = Pair<'a>> + Clone + 'a> {
    use rdkafka::bindings as rd;
    let mut native: *mut rd::rd_kafka_headers_t = std::ptr::null_mut();
    // SAFETY: `msg.ptr()` is the live message `msg` borrows; librdkafka
    // parses its headers into a list the message owns, or says there are none.
    let err = unsafe { rd::rd_kafka_message_headers(msg.ptr(), &mut native) };
    if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || native.is_null() {
        return None;
    }
    let native = native as *const rd::rd_kafka_headers_t;
    // SAFETY: the list lives as long as the message (`'a`).
    let count = unsafe { rd::rd_kafka_header_cnt(native) };
    Some((0..count).filter_map(move |idx| {
        let mut name: *const std::os::raw::c_char = std::ptr::null();
        let mut value: *const std::os::raw::c_void = std::ptr::null();
        let mut size = 0usize;
        // SAFETY: `idx` is below the list's count; librdkafka hands out
        // pointers into the list, which lives as long as the message.
        let err =
            unsafe { rd::rd_kafka_header_get_all(native, idx, &mut name, &mut value, &mut size) };
        if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
            return None;
        }
        // SAFETY: librdkafka stores each name NUL-terminated and each value
        // as `size` bytes, both for the message's lifetime.
        let name: &'a [u8] = unsafe { std::ffi::CStr::from_ptr(name) }.to_bytes();
        let value: Option<&'a [u8]> = (!value.is_null()).then(|| {
            if size == 0 {
                &[][..]
            } else {
                // SAFETY: as above.
                unsafe { std::slice::from_raw_parts(value.cast::<u8>(), size) }
            }
        });
        Some((name, value))
    }))
}

/// Reads trace context out of a received message's headers.
pub struct HeaderExtractor<'a>(pub &'a Received);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.header(key)
    }
    fn keys(&self) -> Vec<&str> {
        self.0
            .header_pairs()
            .filter_map(|(name, _)| std::str::from_utf8(name).ok())
            .collect()
    }
}

pub fn parent_context(msg: &Received) -> opentelemetry::Context {
    crate::telemetry::extract(&HeaderExtractor(msg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_headers_hand_librdkafka_the_list_they_were_given() {
        let mut h = RecordHeaders::default();
        h.add(TYPE, "orderflow.order.placed.v1");
        h.add_raw("empty", Some(b""));
        h.add_raw("none", None);
        h.add(TYPE, "second");
        assert_eq!(h.get(TYPE), Some("orderflow.order.placed.v1"));
        assert_eq!(h.get("none"), None);
        let owned = h.to_owned_headers();
        let listed: Vec<(String, Option<Vec<u8>>)> = owned
            .iter()
            .map(|x| (x.key.to_owned(), x.value.map(<[u8]>::to_vec)))
            .collect();
        assert_eq!(
            listed,
            vec![
                (TYPE.into(), Some(b"orderflow.order.placed.v1".to_vec())),
                ("empty".into(), Some(Vec::new())),
                ("none".into(), None),
                (TYPE.into(), Some(b"second".to_vec())),
            ]
        );
    }

    #[test]
    fn an_event_has_its_cloudevents_headers_in_either_form() {
        let envelope = Envelope {
            event_type: "orderflow.order.placed.v1",
            source: "/orderflow/producer",
            subject: "o-1",
            time: OffsetDateTime::UNIX_EPOCH,
        };
        let span = tracing::Span::none();
        let mut kept = RecordHeaders::default();
        write_event(&mut kept, &envelope, &span);
        let owned = for_event(&envelope, &span);
        for (key, value) in [
            (SPECVERSION, "1.0"),
            (SOURCE, "/orderflow/producer"),
            (TYPE, "orderflow.order.placed.v1"),
            (TIME, "1970-01-01T00:00:00Z"),
            (SUBJECT, "o-1"),
            (CONTENT_TYPE, "application/json"),
        ] {
            assert_eq!(kept.get(key), Some(value), "{key}");
            let in_owned = owned.iter().find(|h| h.key == key).and_then(|h| h.value);
            assert_eq!(in_owned, Some(value.as_bytes()), "{key}");
        }
        assert_eq!(kept.get(ID).map(str::len), Some(36));
    }
}
