//! `POST /orders`.

use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use orderflow_domain::events::{types, OrderPlaced};
use orderflow_domain::intake::{parse_submission, IntakeError};
use orderflow_platform::http::Problem;
use orderflow_platform::kafka::headers::{self, Envelope};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;
use time::OffsetDateTime;
use tracing::Instrument;

use crate::AppState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone)]
pub(crate) struct Metrics {
    orders: Family<OutcomeLabels, Counter>,
    publish_seconds: Histogram,
    /// Entries the recent-orders list did not get (crate::recent).
    pub(crate) recent_failures: Counter,
}

impl Metrics {
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let m = Metrics {
            orders: Family::default(),
            publish_seconds: orderflow_platform::metrics::latency_histogram(),
            recent_failures: Counter::default(),
        };
        registry.register(
            "orders",
            "Order requests by outcome (accepted, invalid, malformed, unavailable)",
            m.orders.clone(),
        );
        registry.register(
            "publish_duration_seconds",
            "Time from send to broker acknowledgement",
            m.publish_seconds.clone(),
        );
        registry.register(
            "recent_orders_failures",
            "Failed writes to the Redis recent-orders list",
            m.recent_failures.clone(),
        );
        m
    }

    fn count(&self, outcome: &'static str) {
        self.orders.get_or_create(&OutcomeLabels { outcome }).inc();
    }
}

/// The 202 body. A typed struct, not `json!`, so money stays an exact
/// decimal literal (a `serde_json::Value` would turn it into a float).
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Accepted<'a> {
    status: &'static str,
    order_id: &'a str,
    total_amount: Option<orderflow_domain::Money>,
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

pub(crate) async fn create_order(
    State(state): State<Arc<AppState>>,
    request_headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let event = accept(&state, &request_headers, body).await?;
    let body = Accepted {
        status: "queued",
        order_id: &event.order_id,
        total_amount: event.total_amount,
    };
    Ok((StatusCode::ACCEPTED, location(&event), Json(body)).into_response())
}

pub(crate) fn location(event: &OrderPlaced) -> [(header::HeaderName, String); 1] {
    [(header::LOCATION, format!("/orders/{}", event.order_id))]
}

/// Validates, publishes (waiting for the broker's acknowledgement) and
/// records one order: what every intake route shares. The routes differ
/// only in the answer's shape.
pub(crate) async fn accept(
    state: &AppState,
    request_headers: &HeaderMap,
    body: Body,
) -> Result<OrderPlaced, Problem> {
    if !is_json(request_headers) {
        state.metrics.count("unsupported_media_type");
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "send the order as application/json",
        ));
    }
    let body = read_body(state, body).await?;
    let mut submission = parse_submission(&body).map_err(|e| match e {
        IntakeError::Malformed(detail) => {
            state.metrics.count("malformed");
            Problem::new(StatusCode::BAD_REQUEST, "malformed-json", detail)
        }
        IntakeError::Invalid(errors) => {
            state.metrics.count("invalid");
            Problem::validation(errors)
        }
    })?;

    let order_id = submission
        .order_id
        .take()
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let event = OrderPlaced::from_submission(submission, order_id, OffsetDateTime::now_utc());
    let order_id = event.order_id.as_str();

    // The request's server span (platform::http::observe), the current
    // one here, continues the caller's trace; publishing is its child, and
    // so is the Redis write (recent.rs), by trace context only.
    let span = tracing::info_span!(
        "orders publish",
        otel.name = &*state.publish_span,
        otel.kind = "producer",
        messaging.system = "kafka",
        messaging.operation.name = "publish",
        messaging.operation.type = "send",
        messaging.destination.name = &*state.topic,
        messaging.kafka.message.key = order_id,
        order_id,
    );
    let published = publish(state, &event, &span)
        .instrument(span.clone())
        .await?;

    state.recent.push(&event, &published);
    state.metrics.count("accepted");
    Ok(event)
}

/// Reads the body, at most `BODY_LIMIT` bytes of it (413 beyond). Here
/// rather than in axum's `DefaultBodyLimit` layer, which would wrap each
/// route in one more boxed service per request.
async fn read_body(state: &AppState, body: Body) -> Result<Bytes, Problem> {
    use http_body_util::BodyExt as _;
    match http_body_util::Limited::new(body, state.body_limit)
        .collect()
        .await
    {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            state.metrics.count("too_large");
            Err(Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "the request body exceeds the size limit",
            ))
        }
        Err(e) => {
            state.metrics.count("malformed");
            Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "bad-request",
                format!("the request body could not be read: {e}"),
            ))
        }
    }
}

/// Sends the event (its trace context that of `span`, the publish span it
/// runs in) and waits for the broker's acknowledgement, for at most the
/// publish timeout. Returns the event's JSON as published.
async fn publish(
    state: &AppState,
    event: &OrderPlaced,
    span: &tracing::Span,
) -> Result<Vec<u8>, Problem> {
    let payload = serde_json::to_vec(event).map_err(|e| {
        tracing::error!(error = %e, "serializing OrderPlaced");
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "could not encode the order",
        )
    })?;
    let envelope = Envelope {
        event_type: types::ORDER_PLACED,
        source: "/orderflow/producer",
        subject: &event.order_id,
        time: event.placed_at,
    };
    let record = FutureRecord::to(&state.topic)
        .key(event.order_id.as_bytes())
        .payload(&payload)
        .headers(headers::for_event(&envelope, span));
    let started = Instant::now();
    let outcome = tokio::time::timeout(
        state.publish_timeout,
        state
            .producer
            .send(record, Timeout::After(state.publish_timeout)),
    )
    .await;
    state
        .metrics
        .publish_seconds
        .observe(started.elapsed().as_secs_f64());
    let unavailable = |detail: String| {
        state.metrics.count("unavailable");
        tracing::warn!(order_id = %event.order_id, %detail, "order not acknowledged by the broker");
        // The broker may still have the order: the retry must carry the
        // same orderId, also when the server chose it.
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "broker-unavailable",
            "the order was not acknowledged in time and may still be queued; retry with the same orderId",
        )
        .for_order(&event.order_id)
        .with_retry_after(std::time::Duration::from_secs(1))
    };
    match outcome {
        Ok(Ok(delivery)) => {
            tracing::debug!(
                partition = delivery.partition,
                offset = delivery.offset,
                "order acknowledged"
            );
            Ok(payload)
        }
        Ok(Err((e, _))) => Err(unavailable(e.to_string())),
        Err(_) => Err(unavailable("timed out waiting for acknowledgement".into())),
    }
}
