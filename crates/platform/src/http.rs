//! HTTP plumbing every service shares: RFC 9457 problems, the operational
//! endpoints (`/healthz`, `/readyz`, `/metrics`, `/openapi.json`, `/docs`),
//! request metrics, and serving with graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use orderflow_domain::intake::FieldError;
use prometheus_client::registry::Registry;
use serde::Serialize;

pub mod auth;
pub mod observe;

use crate::metrics::HttpMetrics;
use crate::shutdown::CancellationToken;

/// An RFC 9457 problem document.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_uri: Box<str>,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// The order a problem is about, where the client needs its id to
    /// retry (a 503 after an order the server named itself).
    #[serde(rename = "orderId", skip_serializing_if = "Option::is_none")]
    /// Also sent as `Location: /orders/{orderId}`.
    pub order_id: Option<Box<str>>,
    #[serde(skip)]
    pub retry_after: Option<Duration>,
}

impl Problem {
    /// `kind` becomes the type URI `https://orderflow.dev/problems/<kind>`.
    pub fn new(status: StatusCode, kind: &str, detail: impl Into<String>) -> Self {
        Problem {
            type_uri: format!("https://orderflow.dev/problems/{kind}").into(),
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            detail: detail.into(),
            errors: Vec::new(),
            order_id: None,
            retry_after: None,
        }
    }

    pub fn validation(errors: Vec<FieldError>) -> Self {
        let mut p = Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
            "the request has invalid fields",
        );
        p.errors = errors;
        p
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::NOT_FOUND, "not-found", detail)
    }

    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// Names the order (an `orderId` member and `Location: /orders/{id}`).
    pub fn for_order(mut self, order_id: &str) -> Self {
        self.order_id = Some(order_id.into());
        self
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let retry_after = self.retry_after;
        let location = self.order_id.as_ref().map(|id| format!("/orders/{id}"));
        let mut response = (status, Json(self)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(after) = retry_after {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(after.as_secs().max(1)),
            );
        }
        if let Some(value) = location.and_then(|l| HeaderValue::try_from(l).ok()) {
            headers.insert(header::LOCATION, value);
        }
        response
    }
}

pub type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
/// A named readiness check: a dependency the service cannot work without.
pub type ReadinessCheck = (&'static str, Arc<dyn Fn() -> CheckFuture + Send + Sync>);

/// Everything the operational endpoints need.
pub struct Ops {
    pub service: &'static str,
    pub openapi: &'static str,
    pub checks: Vec<ReadinessCheck>,
    pub registry: Registry,
}

/// Adds the operational endpoints, request metrics, and problem fallbacks to
/// a service's router.
pub fn with_ops(app: Router, mut ops: Ops) -> Router {
    let http_metrics = HttpMetrics::register(&mut ops.registry);
    let registry = Arc::new(ops.registry);
    let checks = Arc::new(ops.checks);
    let openapi = ops.openapi;
    let service = ops.service;
    app.route(
        "/healthz",
        get(|| async { Json(serde_json::json!({"status": "ok"})) }),
    )
    .route("/readyz", get(move || readiness(service, checks.clone())))
    .route(
        "/metrics",
        get(move || {
            let registry = registry.clone();
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    crate::metrics::encode(&registry),
                )
            }
        }),
    )
    .route(
        "/openapi.json",
        get(move || async move { ([(header::CONTENT_TYPE, "application/json")], openapi) }),
    )
    .route(
        "/docs",
        get(|| async { Html(include_str!("http/docs.html")) }),
    )
    .fallback(|| async { Problem::not_found("no such endpoint") })
    .method_not_allowed_fallback(|| async {
        Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "this endpoint does not support that method",
        )
    })
    .layer(observe::ObserveLayer::new(http_metrics))
}

async fn readiness(service: &'static str, checks: Arc<Vec<ReadinessCheck>>) -> Response {
    let results = futures::future::join_all(checks.iter().map(|(name, check)| {
        let fut = check();
        async move {
            let outcome = tokio::time::timeout(Duration::from_secs(3), fut)
                .await
                .unwrap_or_else(|_| Err("timed out".into()));
            (*name, outcome)
        }
    }))
    .await;
    let ready = results.iter().all(|(_, r)| r.is_ok());
    let body = serde_json::json!({
        "service": service,
        "status": if ready { "ready" } else { "unavailable" },
        "checks": results.iter().map(|(name, r)| (name.to_string(), match r {
            Ok(()) => serde_json::json!("ok"),
            Err(e) => serde_json::json!(e),
        })).collect::<serde_json::Map<_, _>>(),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// A started service: where it listens, how to stop it, and its task.
pub struct Running {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Binds `addr`; returns the listener so callers (and tests) learn the port.
/// Binds `args.bind:port` and serves `app` until `shutdown`: the whole
/// life of a service that has nothing else to run.
pub async fn launch(
    service: &'static str,
    args: &crate::config::HttpArgs,
    port: u16,
    app: Router,
    shutdown: CancellationToken,
) -> anyhow::Result<Running> {
    let listener = bind(&args.bind, port).await?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "{service} listening");
    let token = shutdown.clone();
    let args = args.clone();
    let task = tokio::spawn(async move { serve(listener, app, token, &args).await });
    Ok(Running {
        addr,
        shutdown,
        task,
    })
}

pub async fn bind(bind: &str, port: u16) -> anyhow::Result<tokio::net::TcpListener> {
    let addr: SocketAddr = format!("{bind}:{port}").parse()?;
    Ok(tokio::net::TcpListener::bind(addr).await?)
}

/// Bounds every service (issue 14, defect 4): at most `MAX_CONCURRENCY`
/// requests at once, the rest shed at once with 503 and `Retry-After`
/// (tower's load-shed and concurrency limit), and each answered within
/// `REQUEST_TIMEOUT` (tower-http's timeout), else 503. Both are problem
/// documents.
pub fn with_limits(app: Router, args: &crate::config::HttpArgs) -> Router {
    // One `Router::layer` call for the whole stack: each call wraps every
    // route in a boxed service of its own, cloned and boxed again per
    // request. The layers' futures are concrete but axum's HandleError's,
    // which boxes one and clones the route for every request (tower's
    // `map_result` cannot turn the shedder's error into `Infallible`). The
    // concurrency limit is global because Router::layer wraps each route on
    // its own, and a plain one would then be one per route.
    app.layer(
        tower::ServiceBuilder::new()
            .map_response(timeout_problem)
            .layer(tower_http::timeout::TimeoutLayer::with_status_code(
                StatusCode::SERVICE_UNAVAILABLE,
                args.request_timeout,
            ))
            .layer(axum::error_handling::HandleErrorLayer::new(overloaded))
            .load_shed()
            .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
                args.max_concurrency.max(1),
            )),
    )
}

/// The load shedder's refusal as a problem.
async fn overloaded(_: tower::BoxError) -> Problem {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
        "the service is serving as many requests as it may; retry shortly",
    )
    .with_retry_after(Duration::from_secs(1))
}

/// tower-http's timeout answers with an empty 503; make it a problem.
fn timeout_problem(response: Response) -> Response {
    if response.status() == StatusCode::SERVICE_UNAVAILABLE
        && !response.headers().contains_key(header::CONTENT_TYPE)
    {
        return Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            "the request took longer than the service allows",
        )
        .with_retry_after(Duration::from_secs(1))
        .into_response();
    }
    response
}

/// Serves `app` within [`with_limits`] until `shutdown` trips, then lets
/// in-flight requests finish for at most `SHUTDOWN_GRACE`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: CancellationToken,
    args: &crate::config::HttpArgs,
) -> anyhow::Result<()> {
    let app = with_limits(app, args);
    let grace = args.shutdown_grace;
    let stop = shutdown.clone();
    let server =
        axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await });
    tokio::select! {
        r = server => r?,
        _ = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::warn!("in-flight requests did not finish within the shutdown grace period");
        }
    }
    Ok(())
}

/// Reads a W3C trace context from incoming HTTP headers.
pub struct HttpHeaderExtractor<'a>(pub &'a axum::http::HeaderMap);

impl opentelemetry::propagation::Extractor for HttpHeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tower::ServiceExt as _;
    use tracing_subscriber::layer::{Context, SubscriberExt as _};

    /// A span's fields as (name, value), values as text.
    type Recorded = Vec<(String, String)>;

    /// The fields of every span opened, by span name.
    #[derive(Clone, Default)]
    struct Spans(Arc<Mutex<Vec<(String, Recorded)>>>);

    struct Fields<'a>(&'a mut Recorded);

    impl tracing::field::Visit for Fields<'_> {
        fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
            self.0.push((field.name().to_owned(), value.to_owned()));
        }
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            self.0.push((field.name().to_owned(), format!("{value:?}")));
        }
    }

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Spans {
        fn on_new_span(
            &self,
            attrs: &tracing::span::Attributes<'_>,
            _: &tracing::span::Id,
            _: Context<'_, S>,
        ) {
            let mut fields = Vec::new();
            attrs.record(&mut Fields(&mut fields));
            let name = attrs.metadata().name().to_owned();
            self.0.lock().unwrap().push((name, fields));
        }

        // Fields recorded later (the status) go to the newest span.
        fn on_record(
            &self,
            _: &tracing::span::Id,
            values: &tracing::span::Record<'_>,
            _: Context<'_, S>,
        ) {
            if let Some((_, fields)) = self.0.lock().unwrap().last_mut() {
                values.record(&mut Fields(fields));
            }
        }
    }

    /// The request span's attributes for one request to a route that
    /// answers any method.
    async fn request_span(method: &str, uri: &str) -> Recorded {
        let spans = Spans::default();
        let _default =
            tracing::subscriber::set_default(tracing_subscriber::registry().with(spans.clone()));
        let app = Router::new()
            .route("/orders/{id}", axum::routing::any(|| async { "ok" }))
            .layer(observe::ObserveLayer::new(HttpMetrics::register(
                &mut Registry::default(),
            )));
        let request = axum::extract::Request::builder()
            .method(axum::http::Method::from_bytes(method.as_bytes()).unwrap())
            .uri(uri)
            .body(axum::body::Body::empty())
            .unwrap();
        let response = app.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let spans = spans.0.lock().unwrap();
        let (_, fields) = spans
            .iter()
            .find(|(name, _)| name == "http request")
            .expect("a request span");
        fields.clone()
    }

    fn field<'f>(fields: &'f [(String, String)], name: &str) -> &'f str {
        fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {name} in {fields:?}"))
    }

    #[tokio::test]
    async fn the_request_span_names_the_method_the_client_sent_even_an_unusual_one() {
        for method in ["GET", "PROPFIND", "PURGE"] {
            let fields = request_span(method, "/orders/o-1").await;
            assert_eq!(field(&fields, "http.request.method"), method);
            assert_eq!(
                field(&fields, "otel.name"),
                format!("{method} /orders/{{id}}")
            );
            assert_eq!(field(&fields, "http.route"), "/orders/{id}");
            assert_eq!(field(&fields, "url.path"), "/orders/o-1");
            assert_eq!(field(&fields, "otel.kind"), "server");
        }
    }

    /// Every request is counted and timed by method, route template and
    /// status; the routes' requests get a span with the answer's status
    /// (an error status for a 5xx), the operational endpoints none.
    #[tokio::test]
    async fn each_request_is_counted_and_a_failed_one_marks_its_span() {
        let spans = Spans::default();
        let _default =
            tracing::subscriber::set_default(tracing_subscriber::registry().with(spans.clone()));
        let mut registry = Registry::default();
        let app = Router::new()
            .route("/orders/{id}", get(|| async { StatusCode::BAD_GATEWAY }))
            .route("/healthz", get(|| async { "ok" }))
            .layer(observe::ObserveLayer::new(HttpMetrics::register(
                &mut registry,
            )));
        for uri in ["/orders/o-1", "/orders/o-2", "/healthz"] {
            let request = axum::extract::Request::builder()
                .uri(uri)
                .body(axum::body::Body::empty())
                .unwrap();
            app.clone().oneshot(request).await.unwrap();
        }
        let spans = spans.0.lock().unwrap();
        assert_eq!(spans.len(), 2, "one span per /orders request: {spans:?}");
        for (name, fields) in spans.iter() {
            assert_eq!(name, "http request");
            assert_eq!(field(fields, "http.response.status_code"), "502");
            assert_eq!(field(fields, "otel.status_code"), "ERROR");
        }
        let metrics = crate::metrics::encode(&Arc::new(registry));
        for line in [
            r#"http_requests_total{method="GET",route="/orders/{id}",status="502"} 2"#,
            r#"http_requests_total{method="GET",route="/healthz",status="200"} 1"#,
            r#"http_request_duration_seconds_count{method="GET",route="/orders/{id}",status="502"} 2"#,
        ] {
            assert!(metrics.contains(line), "no {line} in {metrics}");
        }
    }
}
