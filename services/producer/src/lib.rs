//! The producer: `POST /orders` validates a request, publishes OrderPlaced to
//! Kafka and answers 202 only after the broker acknowledged it (acks=all).

use std::sync::Arc;
use std::time::Duration;

use axum::routing::post;
use axum::Router;
use clap::Parser;
use orderflow_platform::config::{HttpArgs, KafkaArgs, RedisArgs, TopicArgs};
pub use orderflow_platform::http::Running;
use orderflow_platform::http::{self, Ops};
use orderflow_platform::kafka::Producer;
use orderflow_platform::redis::LazyRedis;
use orderflow_platform::shutdown::CancellationToken;
use prometheus_client::registry::Registry;

mod compat;
mod orders;
mod recent;

use recent::RecentOrders;

pub const SERVICE: &str = "producer";

/// The scheduler slice of the producer's threads unless `SCHED_SLICE` says
/// otherwise: Linux's shortest, so a request's wake-ups preempt the back
/// end's tasks on the same cores instead of waiting out their slices
/// (ADR 0014; `POST /orders` p99 at half rate 16.4–18.6 ms against
/// 19.4–21.3 with the kernel's 1.4 ms, docs/benchmarks.md).
pub const SCHED_SLICE: std::time::Duration = std::time::Duration::from_micros(100);

#[derive(Parser, Debug, Clone)]
#[command(name = "producer", about = "orderflow producer: POST /orders → Kafka")]
pub struct Args {
    #[arg(long, env = "API_PORT", default_value_t = 3000)]
    pub port: u16,
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub topics: TopicArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "BODY_LIMIT", default_value_t = 64 * 1024)]
    pub body_limit: usize,
    /// How long a request waits for the broker's acknowledgement before 503.
    #[arg(long, env = "PUBLISH_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub publish_timeout: Duration,
    /// Redis list holding the most recent orders.
    #[arg(
        long = "recent-orders-key",
        env = "RECENT_ORDERS_KEY",
        default_value = "orders:recent"
    )]
    pub recent_key: String,
    /// How many recent orders the Redis list keeps.
    #[arg(
        long = "recent-orders-limit",
        env = "RECENT_ORDERS_LIMIT",
        default_value_t = 10
    )]
    pub recent_limit: usize,
    /// Time limit of each Redis call; Redis never holds up a request longer.
    #[arg(long, env = "REDIS_TIMEOUT", default_value = "250ms", value_parser = humantime::parse_duration)]
    pub redis_timeout: Duration,
}

/// Shared by every request as one `Arc`.
pub(crate) struct AppState {
    producer: Producer,
    topic: Arc<str>,
    /// The publish span's name, `"<topic> publish"`, made once.
    publish_span: Arc<str>,
    publish_timeout: Duration,
    /// Largest accepted request body (`BODY_LIMIT`).
    body_limit: usize,
    recent: RecentOrders,
    metrics: orders::Metrics,
}

/// Binds, builds the app and serves it in a task until `shutdown` trips;
/// on the way out the Kafka producer is flushed.
pub async fn start(args: Args, shutdown: CancellationToken) -> anyhow::Result<Running> {
    let producer =
        orderflow_platform::kafka::intake_producer(&args.kafka, SERVICE, args.publish_timeout)?;
    let mut registry = Registry::with_prefix("orderflow_producer");
    producer.stats().register(&mut registry);
    let metrics = orders::Metrics::register(&mut registry);
    let (recent, recent_writer) = RecentOrders::start(
        LazyRedis::new(&args.redis, args.redis_timeout)?,
        args.recent_key.clone(),
        args.recent_limit,
        metrics.recent_failures.clone(),
    );
    let state = AppState {
        producer: producer.clone(),
        topic: args.topics.orders.as_str().into(),
        publish_span: format!("{} publish", args.topics.orders).into(),
        publish_timeout: args.publish_timeout,
        body_limit: args.body_limit,
        recent,
        metrics,
    };
    let checks = vec![orderflow_platform::kafka::readiness(std::sync::Arc::new(
        producer.clone(),
    ))];
    let app = Router::new()
        .route("/orders", post(orders::create_order))
        .route("/api/v1/orders", post(compat::express))
        .route("/api/v1/order", post(compat::express))
        .route("/order", post(compat::nest))
        .with_state(Arc::new(state));
    let app = http::with_ops(
        app,
        Ops {
            service: SERVICE,
            openapi: include_str!("../openapi.json"),
            checks,
            registry,
        },
    );
    let listener = http::bind(&args.http.bind, args.port).await?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, topic = %args.topics.orders, "producer listening");
    let http_args = args.http.clone();
    let redis_timeout = args.redis_timeout;
    let token = shutdown.clone();
    let task = tokio::spawn(async move {
        let served = http::serve(listener, app, token, &http_args).await;
        // The app held the recent-orders list's last handle: its writer
        // ends once the entries still queued are written (one write, and
        // the one in progress, each bounded by REDIS_TIMEOUT).
        if tokio::time::timeout(redis_timeout * 3, recent_writer)
            .await
            .is_err()
        {
            tracing::warn!("the last recent-orders entries were not written before the exit");
        }
        // Whatever was acknowledged is already durable; flush the rest.
        let flushed =
            tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(5))).await;
        if let Ok(Err(e)) = flushed {
            tracing::warn!(error = %e, "flushing the Kafka producer");
        }
        served
    });
    Ok(Running {
        addr,
        shutdown,
        task,
    })
}
