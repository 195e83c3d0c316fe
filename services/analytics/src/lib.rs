//! analytics: daily figures (MongoDB aggregation), the recent orders (the
//! producer's Redis list), live orders/s and revenue/min (its own consumer
//! group on the event stream), as JSON, as Server-Sent Events, and as a
//! self-contained dashboard page.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Parser;
use futures::{Stream, StreamExt};
use orderflow_platform::config::{HttpArgs, KafkaArgs, MongoArgs, RedisArgs, TopicArgs};
use orderflow_platform::http::auth::TokenArgs;
pub use orderflow_platform::http::Running;
use orderflow_platform::http::{self, Ops, Problem};
use orderflow_platform::redis::LazyRedis;
use orderflow_platform::shutdown::CancellationToken;
use prometheus_client::registry::Registry;

pub mod cli;
pub mod console;
pub mod daily;
pub mod dlq;
pub mod live;
pub mod pipeline;
pub mod timeline;

pub const SERVICE: &str = "analytics";

#[derive(Parser, Debug, Clone)]
#[command(name = "analytics", about = "orderflow analytics and dashboard")]
pub struct Args {
    #[arg(long, env = "ANALYTICS_PORT", default_value_t = 3001)]
    pub port: u16,
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub mongo: MongoArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub topics: TopicArgs,
    /// The producer's Redis list of recent orders.
    #[arg(
        long = "recent-orders-key",
        env = "RECENT_ORDERS_KEY",
        default_value = "orders:recent"
    )]
    pub recent_key: String,
    /// The live reader's `group.id` (librdkafka requires one; no group
    /// forms on the broker: the partitions are assigned, ADR 0005).
    #[arg(long, env = "ANALYTICS_GROUP", default_value = "orderflow-analytics")]
    pub group: String,
    /// Window of the orders/second figure.
    #[arg(long, env = "LIVE_ORDERS_WINDOW", default_value = "10s", value_parser = humantime::parse_duration)]
    pub orders_window: Duration,
    /// How often `/analytics/stream` sends the live figures.
    #[arg(long, env = "STREAM_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub stream_interval: Duration,
    /// How often the pipeline console samples lag, groups and topics.
    #[arg(long, env = "PIPELINE_INTERVAL", default_value = "2s", value_parser = humantime::parse_duration)]
    pub pipeline_interval: Duration,
    /// Most Server-Sent Event streams open at once (both streams); past it,
    /// 503 with Retry-After.
    #[arg(long, env = "STREAM_CLIENTS", default_value_t = 256)]
    pub stream_clients: usize,
    /// The stages' consumer groups where they are not `orderflow-<stage>`
    /// (a stage run with `CONSUMER_GROUP`): `persist=g1,notify=g2`.
    #[arg(long = "stage-groups", env = "STAGE_GROUPS", default_value = "")]
    pub stage_groups: String,
    /// Tokens for the dead-letter re-drive.
    #[command(flatten)]
    pub tokens: TokenArgs,
    #[command(subcommand)]
    pub command: Option<cli::Command>,
}

#[derive(Clone)]
pub(crate) struct AppState {
    orders: mongodb::Collection<bson::Document>,
    redis: std::sync::Arc<LazyRedis>,
    recent_key: String,
    live: live::LiveMetrics,
    stream_interval: Duration,
    streams: std::sync::Arc<tokio::sync::Semaphore>,
    console: std::sync::Arc<console::Console>,
    shutdown: CancellationToken,
}

impl AppState {
    /// A place among the open streams, or 503 when they are all taken.
    pub(crate) fn stream_permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Problem> {
        self.streams.clone().try_acquire_owned().map_err(|_| {
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too-many-streams",
                "every event stream is taken; retry shortly",
            )
            .with_retry_after(Duration::from_secs(5))
        })
    }
}

pub(crate) fn unavailable(e: impl std::fmt::Display) -> Problem {
    tracing::error!(error = %e, "analytics query failed");
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "storage-unavailable",
        "the figures cannot be read right now",
    )
    .with_retry_after(Duration::from_secs(1))
}

async fn recent_orders(State(state): State<AppState>) -> Result<Response, Problem> {
    let entries: Vec<String> = state
        .redis
        .run(redis::pipe().lrange(&state.recent_key, 0, -1))
        .await
        .map(|(v,): (Vec<String>,)| v)
        .map_err(unavailable)?;
    // Entries are JSON written by the producer; pass them through as they
    // are (exact money literals included), skipping anything that is not.
    let items: Vec<Box<serde_json::value::RawValue>> = entries
        .into_iter()
        .filter_map(|e| serde_json::value::RawValue::from_string(e).ok())
        .collect();
    // Typed, not `json!`: a `Value` would re-parse the entries and turn
    // their exact amounts into floats (ADR 0001).
    #[derive(serde::Serialize)]
    struct Recent {
        items: Vec<Box<serde_json::value::RawValue>>,
    }
    Ok(Json(Recent { items }).into_response())
}

async fn live_now(State(state): State<AppState>) -> Json<live::Live> {
    Json(state.live.snapshot())
}

async fn stream(
    State(state): State<AppState>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Problem> {
    let permit = state.stream_permit()?;
    let ticks = tokio::time::interval(state.stream_interval);
    let live = state.live.clone();
    let events = futures::stream::unfold((ticks, live), |(mut ticks, live)| async move {
        ticks.tick().await;
        let event = Event::default()
            .event("live")
            .json_data(live.snapshot())
            .unwrap_or_else(|_| Event::default().comment("encoding failed"));
        Some((Ok(event), (ticks, live)))
    })
    .take_until(state.shutdown.clone().cancelled_owned())
    .map(move |e| {
        let _held = &permit;
        e
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

async fn dashboard() -> Response {
    (
        [(header::CACHE_CONTROL, "no-cache")],
        Html(include_str!("dashboard.html")),
    )
        .into_response()
}

pub async fn start(args: Args, shutdown: CancellationToken) -> anyhow::Result<Running> {
    let db = orderflow_platform::mongo::connect(&args.mongo, SERVICE).await?;
    let indexes = orderflow_platform::mongo::Indexes::ensure(&db, &shutdown).await;
    let redis = std::sync::Arc::new(LazyRedis::new(&args.redis, Duration::from_millis(500))?);
    let live = live::LiveMetrics::new(args.orders_window);
    let client_id = format!("orderflow-analytics-{}", std::process::id());
    let consumer = orderflow_platform::kafka::observer(&args.kafka, &client_id, &args.group)?;
    // One client for the live stream and the readiness check.
    let consumer = std::sync::Arc::new(consumer);
    tokio::spawn(live.clone().run(
        consumer.clone(),
        vec![args.topics.orders.clone(), args.topics.payment.clone()],
        shutdown.clone(),
    ));

    let tokens = args.tokens.load()?;
    if tokens.is_empty() {
        tracing::warn!("no API tokens configured: every re-drive will be refused");
    }
    let console = std::sync::Arc::new(console::Console::new(&args, &db)?);
    let mut registry = Registry::with_prefix("orderflow_analytics");
    // The re-drive's producer: librdkafka's view of the broker.
    console.redriver.producer.stats().register(&mut registry);
    tokio::task::spawn_blocking({
        let (index, shutdown) = (console.index.clone(), shutdown.clone());
        let reader = orderflow_platform::kafka::group_reader(
            &args.kafka,
            "orderflow-analytics-dlq",
            "orderflow-analytics-dlq",
        )?;
        let topic = args.topics.dlq.clone();
        move || index.follow(reader, &topic, shutdown)
    });
    tokio::spawn({
        let sampler = console.sampler.clone().run(
            pipeline::Sources {
                kafka: args.kafka.clone(),
                groups: pipeline::stage_groups(&args.stage_groups)?,
                topics: args.topics.clone(),
                stats: db.collection(orderflow_platform::mongo::STAGE_STATS),
                dlq: console.index.clone(),
            },
            args.pipeline_interval.max(Duration::from_millis(200)),
            shutdown.clone(),
        );
        async move {
            if let Err(e) = sampler.await {
                tracing::error!(error = %format!("{e:#}"), "the pipeline sampler stopped");
            }
        }
    });
    let state = AppState {
        orders: db.collection(orderflow_platform::mongo::ORDERS),
        redis: redis.clone(),
        recent_key: args.recent_key.clone(),
        live,
        stream_interval: args.stream_interval.max(Duration::from_millis(100)),
        streams: std::sync::Arc::new(tokio::sync::Semaphore::new(args.stream_clients.max(1))),
        console,
        shutdown: shutdown.clone(),
    };
    let redis_check: http::ReadinessCheck = (
        "redis",
        std::sync::Arc::new(move || {
            let redis = redis.clone();
            Box::pin(async move { redis.ping().await })
        }),
    );
    let checks = vec![
        orderflow_platform::mongo::readiness(&db),
        indexes.readiness(),
        orderflow_platform::kafka::readiness(consumer),
        redis_check,
    ];
    let app = Router::new()
        .route("/", get(dashboard))
        .route("/analytics/daily", get(daily::daily))
        .route("/analytics/recent-orders", get(recent_orders))
        .route("/analytics/live", get(live_now))
        .route("/analytics/stream", get(stream))
        .route("/pipeline", get(console::page))
        .route("/pipeline/orders/{id}", get(console::timeline_page))
        .route("/analytics/pipeline", get(console::pipeline))
        .route("/analytics/pipeline/stream", get(console::pipeline_stream))
        .route("/analytics/dlq", get(console::list))
        .route("/analytics/dlq/{partition}/{offset}", get(console::show))
        .route(
            "/analytics/orders/{id}/timeline",
            get(console::order_timeline),
        )
        .merge(
            Router::new()
                .route("/analytics/dlq/redrive", post(console::redrive_handler))
                .route_layer(axum::middleware::from_fn_with_state(
                    tokens,
                    orderflow_platform::http::auth::require_token,
                )),
        )
        .with_state(state);
    let app = http::with_ops(
        app,
        Ops {
            service: SERVICE,
            openapi: include_str!("../openapi.json"),
            checks,
            registry,
        },
    );
    let running = http::launch(SERVICE, &args.http, args.port, app, shutdown).await?;
    Ok(orderflow_platform::mongo::close_when_stopped(running, db))
}
