//! What every stage does with messages: decode the one event type it
//! expects, open the processing span under the message's trace, and build
//! the events it emits.

use bson::Document;
use futures::TryStreamExt;
use mongodb::Collection;
use orderflow_platform::kafka::headers::{self, Envelope, RecordHeaders};
use orderflow_platform::kafka::Received;
use orderflow_platform::telemetry;
use rdkafka::message::Message;
use serde::de::DeserializeOwned;
use serde::Serialize;
use time::OffsetDateTime;

use crate::runner::{Outgoing, Transient};
use crate::stage::Refusal;

/// The message's `ce_type`, if it carries one.
pub fn event_type(msg: &Received) -> Option<&str> {
    msg.header(headers::TYPE)
}

/// Decodes a payload of type `T`, refusing a message whose `ce_type` names
/// another event.
pub fn decode<T: DeserializeOwned>(msg: &Received, expected: &str) -> Result<T, Refusal> {
    if let Some(t) = event_type(msg) {
        if t != expected {
            return Err(("unexpected_event_type", format!("ce_type {t}")));
        }
    }
    decode_payload(msg)
}

pub fn decode_payload<T: DeserializeOwned>(msg: &Received) -> Result<T, Refusal> {
    let payload = msg
        .payload()
        .ok_or(("undecodable", "empty payload".to_string()))?;
    serde_json::from_slice(payload).map_err(|e| ("undecodable", e.to_string()))
}

/// The span a stage processes one order's message in, child of the trace
/// the message carries.
pub fn process_span(msg: &Received, group: &str, order_id: &str) -> tracing::Span {
    let span = tracing::info_span!(
        "process",
        otel.name = format!("{} process", msg.topic()),
        otel.kind = "consumer",
        messaging.system = "kafka",
        messaging.operation.name = "process",
        messaging.consumer.group.name = group,
        messaging.destination.name = msg.topic(),
        messaging.destination.partition.id = msg.partition(),
        messaging.kafka.offset = msg.offset(),
        order_id = %order_id,
    );
    telemetry::set_parent(&span, headers::parent_context(msg));
    span
}

/// The span of work done once for several orders (one transaction for a
/// batch): linked to each order's process span, OpenTelemetry's model of a
/// batch, rather than the child of one of them.
pub fn batch_span<'a>(orders: impl Iterator<Item = &'a tracing::Span>) -> tracing::Span {
    let span = tracing::info_span!(parent: None, "batch", otel.name = "decide batch");
    for order in orders {
        span.follows_from(order);
    }
    span
}

/// What trying a batch's orders in one transaction came to: their records,
/// or `None` (the transaction failed; nothing of it was kept) to decide
/// them one order at a time.
pub fn together<T>(attempt: mongodb::error::Result<Option<T>>, orders: usize) -> Option<T> {
    attempt.unwrap_or_else(|e| {
        tracing::debug!(error = %e, orders, "batch transaction failed; one order at a time");
        None
    })
}

/// One event to publish, with its CloudEvents headers and the trace of
/// `span`.
pub struct NewEvent<'a, T> {
    pub topic: &'a str,
    pub key: &'a str,
    pub event_type: &'a str,
    pub source: &'a str,
    pub payload: &'a T,
}

impl<T: Serialize> NewEvent<'_, T> {
    pub fn build(self, span: &tracing::Span) -> Result<Outgoing, Transient> {
        let payload = serde_json::to_vec(self.payload).map_err(|e| Transient(e.to_string()))?;
        // Ten CloudEvents and trace headers, about 300 bytes.
        let mut headers = RecordHeaders::with_capacity(10, 320);
        headers::write_event(
            &mut headers,
            &Envelope {
                event_type: self.event_type,
                source: self.source,
                subject: self.key,
                time: OffsetDateTime::now_utc(),
            },
            span,
        );
        Ok(Outgoing {
            topic: self.topic.to_owned(),
            key: self.key.as_bytes().to_vec(),
            payload,
            headers,
        })
    }
}

/// Every document matching `filter`; any failure is worth a retry.
pub async fn find_all<T>(
    coll: &Collection<T>,
    filter: Document,
    what: &str,
) -> Result<Vec<T>, Transient>
where
    T: serde::de::DeserializeOwned + Send + Sync,
{
    let fail = |e: mongodb::error::Error| Transient(format!("reading {what}: {e}"));
    coll.find(filter)
        .await
        .map_err(fail)?
        .try_collect()
        .await
        .map_err(fail)
}

/// The documents whose `_id` is one of `ids` (a stage's earlier decisions
/// for a batch), keyed by `_id`.
pub async fn find_by_ids<T>(
    coll: &mongodb::Collection<T>,
    ids: Vec<String>,
    id: impl Fn(&T) -> String,
    what: &str,
) -> Result<std::collections::HashMap<String, T>, Transient>
where
    T: serde::de::DeserializeOwned + Send + Sync,
{
    if ids.is_empty() {
        return Ok(std::collections::HashMap::new());
    }
    let found = find_all(coll, bson::doc! {"_id": {"$in": ids}}, what).await?;
    Ok(found.into_iter().map(|d| (id(&d), d)).collect())
}

/// A MongoDB failure inside a stage: worth a retry of the batch.
pub fn transient(what: &str) -> impl Fn(mongodb::error::Error) -> Transient + '_ {
    move |e| Transient(format!("{what}: {e}"))
}
