//! orders-api: the read side of orders over MongoDB — list with filters and
//! cursor pagination, get one, and stats computed by MongoDB aggregations.

use axum::routing::{get, patch, post, put};
use axum::Router;
use clap::Parser;
use orderflow_platform::config::{HttpArgs, MongoArgs};
use orderflow_platform::http::auth::TokenArgs;
pub use orderflow_platform::http::Running;
use orderflow_platform::http::{self, Ops};
use orderflow_platform::shutdown::CancellationToken;
use prometheus_client::registry::Registry;

mod intake;
mod inventory;
mod orders;
mod update;
mod view;
pub mod watch;

pub const SERVICE: &str = "orders-api";

/// Decodes a JSON request body: 400 when it is not JSON, 422 when it is
/// JSON of the wrong shape.
pub(crate) fn parse_body<T: serde::de::DeserializeOwned>(
    body: &[u8],
) -> Result<T, orderflow_platform::http::Problem> {
    use orderflow_platform::http::Problem;
    serde_json::from_slice(body).map_err(|e| {
        if e.is_data() {
            Problem::validation(vec![orderflow_domain::intake::FieldError {
                field: "body".into(),
                message: e.to_string(),
            }])
        } else {
            Problem::new(
                axum::http::StatusCode::BAD_REQUEST,
                "malformed-json",
                e.to_string(),
            )
        }
    })
}

#[derive(Parser, Debug, Clone)]
#[command(name = "orders-api", about = "orderflow orders API over MongoDB")]
pub struct Args {
    #[arg(long, env = "ORDERS_API_PORT", default_value_t = 3003)]
    pub port: u16,
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub mongo: MongoArgs,
    #[command(flatten)]
    pub tokens: TokenArgs,
    /// Most `waitFor` long-polls waiting at once; past it, 503 with
    /// Retry-After.
    #[arg(long = "wait-clients", env = "WAIT_CLIENTS", default_value_t = 1024)]
    pub wait_clients: usize,
    /// How long the `waitFor` watcher keeps its change stream on `orders`
    /// open after the last long-poll ended (none is open while nobody
    /// waits: an open one costs the database an event per write).
    #[arg(long = "wait-stream-linger", env = "WAIT_STREAM_LINGER", default_value = "10s", value_parser = humantime::parse_duration)]
    pub wait_stream_linger: std::time::Duration,
    /// The producer's base URL: `POST /orders` is handed to it (for an
    /// Ingress that cannot route by method). Unset: POST /orders is 405.
    #[arg(long = "producer-url", env = "PRODUCER_URL")]
    pub producer_url: Option<String>,
}

#[derive(Clone)]
pub(crate) struct AppState {
    db: mongodb::Database,
    orders: mongodb::Collection<orderflow_platform::mongo::documents::OrderDocument>,
    inventory: mongodb::Collection<orderflow_platform::mongo::documents::InventoryDocument>,
    watcher: std::sync::Arc<watch::Watcher>,
}

pub async fn start(args: Args, shutdown: CancellationToken) -> anyhow::Result<Running> {
    let tokens = args.tokens.load()?;
    if tokens.is_empty() {
        tracing::warn!("no API tokens configured: every mutating request will be refused");
    }
    let db = orderflow_platform::mongo::connect(&args.mongo, SERVICE).await?;
    // Not ready (and no re-post is safe) until the unique indexes exist.
    let indexes = orderflow_platform::mongo::Indexes::ensure(&db, &shutdown).await;
    let mut registry = Registry::with_prefix("orderflow_orders_api");
    let watcher = watch::Watcher::new(args.wait_clients, args.wait_stream_linger, &mut registry);
    tokio::spawn(watcher.clone().run(
        db.collection(orderflow_platform::mongo::ORDERS),
        shutdown.clone(),
    ));
    let state = AppState {
        db: db.clone(),
        orders: db.collection(orderflow_platform::mongo::ORDERS),
        inventory: db.collection(orderflow_platform::mongo::INVENTORY),
        watcher,
    };
    let checks = vec![
        orderflow_platform::mongo::readiness(&db),
        indexes.readiness(),
    ];
    // Mutations (PATCH, DELETE, PUT, POST seed) need a bearer token.
    let mutations = Router::new()
        .route(
            "/orders/{id}",
            patch(update::patch_one).delete(orders::delete_one),
        )
        .route("/inventory/{id}", put(inventory::put_one))
        .route("/inventory/seed", post(inventory::seed))
        // Compatibility route of reference 004 (docs/compatibility.md).
        .route("/order/seed", post(inventory::seed))
        .route_layer(axum::middleware::from_fn_with_state(
            tokens,
            orderflow_platform::http::auth::require_token,
        ));
    let reads = Router::new()
        .route("/orders", get(orders::list))
        .route("/orders/stats", get(orders::stats))
        .route("/orders/{id}", get(orders::get_one))
        .route("/inventory", get(inventory::list))
        .route("/inventory/{id}", get(inventory::get_one));
    let mut app = reads.merge(mutations).with_state(state);
    if let Some(base) = args.producer_url.as_deref().filter(|u| !u.is_empty()) {
        let intake = intake::Intake {
            client: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(15))
                .build()?,
            url: format!("{}/orders", base.trim_end_matches('/')),
        };
        app = app.merge(
            Router::new()
                .route("/orders", post(intake::forward))
                .with_state(intake),
        );
    }
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
