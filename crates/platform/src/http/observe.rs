//! What every request to a route gets: a server span (not for the
//! operational endpoints), child of the caller's W3C trace context, with
//! the HTTP semantic-convention attributes, and the request metrics (count
//! and latency per method, route template and status).
//!
//! One hand-written layer with a concrete future, not two
//! `middleware::from_fn`s: each of those boxes its future and clones the
//! boxed inner service per request, which cost the producer about a tenth of
//! its CPU per order with the rest of the layering (docs/benchmarks.md).

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::response::Response;
use tracing::instrument::Instrumented;
use tracing::Instrument as _;

use crate::metrics::{method_label, HttpLabels, HttpMetrics};

/// The paths probes and scrapers call many times a minute: metrics, no span.
fn is_operational(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics")
}

/// Wraps each route of a router (`Router::layer`, so the matched route is
/// known).
#[derive(Clone)]
pub struct ObserveLayer {
    metrics: HttpMetrics,
}

impl ObserveLayer {
    pub fn new(metrics: HttpMetrics) -> Self {
        ObserveLayer { metrics }
    }
}

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observe<S>;
    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    metrics: HttpMetrics,
}

impl<S> tower::Service<Request> for Observe<S>
where
    S: tower::Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Observed<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let started = Instant::now();
        let method = request.method();
        let matched = request.extensions().get::<MatchedPath>();
        let labels = HttpLabels {
            method: method_label(method),
            route: matched.map_or("unmatched", MatchedPath::as_str).to_owned(),
            status: 0,
        };
        let path = request.uri().path();
        let span = if is_operational(path) {
            tracing::Span::none()
        } else {
            let method = method.as_str();
            let route = matched.map(MatchedPath::as_str);
            let span = tracing::info_span!(
                "http request",
                otel.name = match route {
                    Some(r) => format!("{method} {r}"),
                    None => method.to_owned(),
                },
                otel.kind = "server",
                http.request.method = method,
                http.route = route.unwrap_or_default(),
                url.path = path,
                http.response.status_code = tracing::field::Empty,
                otel.status_code = tracing::field::Empty,
            );
            crate::telemetry::set_parent(
                &span,
                crate::telemetry::extract(&super::HttpHeaderExtractor(request.headers())),
            );
            span
        };
        Observed {
            inner: self.inner.call(request).instrument(span),
            started,
            labels,
            metrics: self.metrics.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    /// The route's future inside the request span; records the outcome.
    pub struct Observed<F> {
        #[pin]
        inner: Instrumented<F>,
        started: Instant,
        labels: HttpLabels,
        metrics: HttpMetrics,
    }
}

impl<F, E> Future for Observed<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let result = ready!(this.inner.as_mut().poll(cx));
        if let Ok(response) = &result {
            let status = response.status();
            let span = this.inner.span();
            span.record("http.response.status_code", status.as_u16());
            if status.is_server_error() {
                span.record("otel.status_code", "ERROR");
            }
            this.labels.status = status.as_u16();
            this.metrics.record(this.labels, *this.started);
        }
        Poll::Ready(result)
    }
}
