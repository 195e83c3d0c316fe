//! MongoDB connection and error classification shared by the services.

use std::time::Duration;

use anyhow::Context as _;
use bson::doc;
use mongodb::options::{Acknowledgment, ClientOptions, IndexOptions, WriteConcern};
use mongodb::{Client, Database, IndexModel};

use crate::config::MongoArgs;

pub mod documents;

pub const DEFAULT_DATABASE: &str = "orders";
/// Collection names (SPEC §4).
pub const ORDERS: &str = "orders";
pub const INVENTORY: &str = "inventory";

/// Server error code of a unique-index violation: the document is already there.
pub const DUPLICATE_KEY: i32 = 11000;

/// Connects lazily (the driver retries in the background); the database is
/// the one named in the URL path, `orders` if none.
pub async fn connect(args: &MongoArgs, app_name: &str) -> anyhow::Result<Database> {
    let mut opts = ClientOptions::parse(&args.url)
        .await
        .with_context(|| "parsing MONGO_URL".to_string())?;
    opts.app_name = Some(app_name.to_owned());
    // Offsets are committed once a write is acknowledged, so the
    // acknowledgement must mean durable: journaled, on a majority. A
    // `w`/`journal` in the URL overrides this.
    if opts.write_concern.is_none() {
        opts.write_concern = Some(
            WriteConcern::builder()
                .w(Acknowledgment::Majority)
                .journal(true)
                .build(),
        );
    }
    opts.server_selection_timeout = Some(Duration::from_secs(5));
    opts.connect_timeout = Some(Duration::from_secs(3));
    let name = opts
        .default_database
        .clone()
        .unwrap_or_else(|| DEFAULT_DATABASE.to_owned());
    let client = Client::with_options(opts).context("creating MongoDB client")?;
    Ok(client.database(&name))
}

/// The `/readyz` check for a service that needs MongoDB.
pub fn readiness(db: &Database) -> crate::http::ReadinessCheck {
    let db = db.clone();
    (
        "mongodb",
        std::sync::Arc::new(move || {
            let db = db.clone();
            Box::pin(async move { ping(&db).await })
        }),
    )
}

pub async fn ping(db: &Database) -> Result<(), String> {
    db.run_command(doc! {"ping": 1})
        .await
        .map(|_| ())
        .map_err(|e| format!("mongodb: {e}"))
}

/// The indexes every reader and writer of `orders` relies on.
pub async fn ensure_order_indexes(db: &Database) -> anyhow::Result<()> {
    let unique = IndexOptions::builder().unique(true).build();
    db.collection::<bson::Document>(ORDERS)
        .create_indexes([
            IndexModel::builder()
                .keys(doc! {"orderId": 1})
                .options(unique.clone())
                .build(),
            IndexModel::builder()
                .keys(doc! {"receivedAt": -1, "orderId": -1})
                .build(),
        ])
        .await
        .context("creating indexes on orders")?;
    db.collection::<bson::Document>(INVENTORY)
        .create_index(
            IndexModel::builder()
                .keys(doc! {"productId": 1})
                .options(unique)
                .build(),
        )
        .await
        .context("creating indexes on inventory")?;
    Ok(())
}
