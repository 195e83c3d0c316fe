//! Event envelopes in Kafka headers, after the CloudEvents Kafka protocol
//! binding (binary content mode): `ce_specversion`, `ce_id`, `ce_source`,
//! `ce_type`, `ce_time`, `ce_subject`, `content-type`, plus the extension
//! `ce_schemaversion` and the W3C trace context (`traceparent`, `tracestate`)
//! that OpenTelemetry's messaging instrumentation reads.

use opentelemetry::propagation::{Extractor, Injector};
use rdkafka::message::{BorrowedHeaders, Header, Headers, OwnedHeaders};
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
    let id = uuid::Uuid::now_v7().to_string();
    let time = envelope.time.format(&Rfc3339).unwrap_or_default();
    let mut builder = HeaderBuilder(OwnedHeaders::new_with_capacity(10));
    builder.add(SPECVERSION, "1.0");
    builder.add(ID, &id);
    builder.add(SOURCE, envelope.source);
    builder.add(TYPE, envelope.event_type);
    builder.add(TIME, &time);
    builder.add(SUBJECT, envelope.subject);
    builder.add(SCHEMA_VERSION, orderflow_domain::events::SCHEMA_VERSION);
    builder.add(CONTENT_TYPE, "application/json");
    crate::telemetry::inject(span, &mut builder);
    builder.0
}

/// Appends string headers to an [`OwnedHeaders`].
pub struct HeaderBuilder(pub OwnedHeaders);

impl HeaderBuilder {
    pub fn add(&mut self, key: &str, value: &str) {
        self.add_raw(key, Some(value.as_bytes()));
    }

    /// A header as it came (bytes, or none): for copying another message's.
    pub fn add_raw(&mut self, key: &str, value: Option<&[u8]>) {
        let headers = std::mem::take(&mut self.0);
        self.0 = headers.insert(Header { key, value });
    }
}

impl Injector for HeaderBuilder {
    fn set(&mut self, key: &str, value: String) {
        self.add(key, &value);
    }
}

/// The first header named `key`, as UTF-8.
pub fn get<'a>(headers: Option<&'a BorrowedHeaders>, key: &str) -> Option<&'a str> {
    headers?
        .iter()
        .find(|h| h.key == key)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// Reads trace context out of a received message's headers.
pub struct HeaderExtractor<'a>(pub Option<&'a BorrowedHeaders>);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        get(self.0, key)
    }
    fn keys(&self) -> Vec<&str> {
        self.0
            .map(|h| h.iter().map(|h| h.key).collect())
            .unwrap_or_default()
    }
}

pub fn parent_context(headers: Option<&BorrowedHeaders>) -> opentelemetry::Context {
    crate::telemetry::extract(&HeaderExtractor(headers))
}
