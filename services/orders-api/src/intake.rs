//! `POST /orders` handed to the producer. A plain Ingress routes by path,
//! not method, so with one host for every endpoint (SPEC §2) all of
//! `/orders…` reaches orders-api, which passes order intake on unchanged:
//! the producer's status, problem documents and `Location`/`Retry-After`
//! reach the client as the producer sent them (ADR 0006).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use orderflow_platform::http::Problem;

#[derive(Clone)]
pub(crate) struct Intake {
    pub client: reqwest::Client,
    /// `http://producer/orders`.
    pub url: String,
}

/// Request headers the producer needs: the body's type, trace context, and
/// the caller's identity for its logs.
const FORWARDED: [HeaderName; 5] = [
    header::CONTENT_TYPE,
    header::ACCEPT,
    HeaderName::from_static("traceparent"),
    HeaderName::from_static("tracestate"),
    HeaderName::from_static("x-request-id"),
];
const RETURNED: [HeaderName; 3] = [header::CONTENT_TYPE, header::LOCATION, header::RETRY_AFTER];

pub(crate) async fn forward(
    State(intake): State<Intake>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut request = intake.client.post(&intake.url).body(body);
    for name in &FORWARDED {
        if let Some(value) = headers.get(name) {
            request = request.header(name, value);
        }
    }
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, url = %intake.url, "the producer is unreachable");
            return Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "producer-unavailable",
                "order intake is unavailable right now; nothing was queued",
            )
            .with_retry_after(std::time::Duration::from_secs(1))
            .into_response();
        }
    };
    let status =
        StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut out = HeaderMap::new();
    for name in &RETURNED {
        if let Some(value) = response.headers().get(name.as_str()) {
            if let Ok(value) = axum::http::HeaderValue::from_bytes(value.as_bytes()) {
                out.insert(name, value);
            }
        }
    }
    match response.bytes().await {
        Ok(body) => (status, out, body).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "reading the producer's answer");
            Problem::new(
                StatusCode::BAD_GATEWAY,
                "producer-answer-lost",
                "the producer's answer was cut off; the order may have been queued (re-post with the same orderId: it is never created twice)",
            )
            .into_response()
        }
    }
}
