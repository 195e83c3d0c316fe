//! MongoDB connection and error classification shared by the services.

use std::time::Duration;

use anyhow::Context as _;
use bson::doc;
use mongodb::options::{Acknowledgment, ClientOptions, IndexOptions, WriteConcern};
use mongodb::{Client, Database, IndexModel};

use crate::config::MongoArgs;

pub mod documents;
pub mod stock;

pub const DEFAULT_DATABASE: &str = "orders";
/// Collection names (SPEC §4).
pub const ORDERS: &str = "orders";
pub const INVENTORY: &str = "inventory";
/// The inventory stage's decision per order (`_id` = orderId).
pub const RESERVATIONS: &str = "reservations";
/// The payment stage's decision per order (`_id` = orderId).
pub const PAYMENTS: &str = "payments";
/// Notification deliveries (`_id` = notification key / channel).
pub const NOTIFICATIONS: &str = "notifications";
/// One document per running stage process: its counters, refreshed every
/// few seconds (the console's retries).
pub const STAGE_STATS: &str = "stage_stats";
/// One document per re-driven dead letter: who, when, what.
pub const REDRIVES: &str = "redrives";

/// Server error code of a unique-index violation: the document is already there.
pub const DUPLICATE_KEY: i32 = 11000;

/// A single write refused because the document is already there.
pub fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    matches!(
        e.kind.as_ref(),
        mongodb::error::ErrorKind::Write(mongodb::error::WriteFailure::WriteError(we))
            if we.code == DUPLICATE_KEY
    )
}

/// Connects lazily (the driver retries in the background); the database is
/// `MONGO_DATABASE` if set, else the one named in the URL path, `orders` if
/// none.
pub async fn connect(args: &MongoArgs, app_name: &str) -> anyhow::Result<Database> {
    let opts = client_options(&args.url, app_name).await?;
    let name = args
        .database
        .clone()
        .filter(|d| !d.is_empty())
        .or_else(|| opts.default_database.clone())
        .unwrap_or_else(|| DEFAULT_DATABASE.to_owned());
    let client = Client::with_options(opts).context("creating MongoDB client")?;
    Ok(client.database(&name))
}

/// The options every orderflow client connects with, `url`'s own first.
/// Offsets are committed once a write is acknowledged, so the
/// acknowledgement must mean durable: journaled, on a majority, unless
/// the URL's `w`/`journal` say otherwise. Also what loadgen's MongoDB
/// ceiling writes with, so the bench compares like with like.
pub async fn client_options(url: &str, app_name: &str) -> anyhow::Result<ClientOptions> {
    let mut opts = ClientOptions::parse(url)
        .await
        .with_context(|| "parsing MONGO_URL".to_string())?;
    opts.app_name = Some(app_name.to_owned());
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
    Ok(opts)
}

/// `running`, whose task also closes `db`'s client once the service has
/// stopped: the client ends its server sessions and its pool while the
/// runtime still runs. Left to the last handle's drop, the driver spawns
/// that work as the process exits, where it can race the runtime's
/// shutdown (mongodb 3.9 then panics in `cmap/connection_requester.rs`,
/// as loadgen did). Immediate: a background task that still holds a
/// cursor does not hold up the exit (its next operation fails).
pub fn close_when_stopped(running: crate::http::Running, db: Database) -> crate::http::Running {
    let crate::http::Running {
        addr,
        shutdown,
        task,
    } = running;
    let task = tokio::spawn(async move {
        let stopped = task.await;
        close(&db).await;
        stopped?
    });
    crate::http::Running {
        addr,
        shutdown,
        task,
    }
}

/// Closes `db`'s client now (see [`close_when_stopped`]): every handle to
/// it fails from here on.
pub async fn close(db: &Database) {
    db.client().clone().shutdown().immediate(true).await;
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

/// Whether [`ensure_order_indexes`] has succeeded in this process; a
/// readiness check until it has.
#[derive(Clone, Default)]
pub struct Indexes(std::sync::Arc<tokio::sync::watch::Sender<bool>>);

impl Indexes {
    pub fn ready(&self) -> bool {
        *self.0.borrow()
    }

    /// `indexes`: fails until the indexes exist.
    pub fn readiness(&self) -> crate::http::ReadinessCheck {
        let this = self.clone();
        (
            "indexes",
            std::sync::Arc::new(move || {
                let ready = this.ready();
                Box::pin(async move {
                    if ready {
                        Ok(())
                    } else {
                        Err("the unique indexes are not created yet (MongoDB unreachable?)".into())
                    }
                })
            }),
        )
    }

    /// Until the indexes exist (`true`), or `shutdown` (`false`).
    pub async fn wait(&self, shutdown: &crate::shutdown::CancellationToken) -> bool {
        let mut rx = self.0.subscribe();
        tokio::select! {
            r = rx.wait_for(|ready| *ready) => r.is_ok(),
            _ = shutdown.cancelled() => false,
        }
    }

    /// Creates the indexes: one attempt now (so that, with MongoDB up, they
    /// exist before the service serves or consumes anything), then retries
    /// in the background with backoff (0.5 s doubling to 30 s) until they
    /// exist or `shutdown`. A cold start on Kubernetes often finds MongoDB
    /// not up yet: without the unique `orderId` index a re-post would store
    /// a second order.
    pub async fn ensure(db: &Database, shutdown: &crate::shutdown::CancellationToken) -> Indexes {
        let indexes = Indexes::default();
        match ensure_order_indexes(db).await {
            Ok(()) => {
                indexes.0.send_replace(true);
                return indexes;
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "indexes not ensured yet; not ready until they are");
            }
        }
        let (this, db, shutdown) = (indexes.clone(), db.clone(), shutdown.clone());
        tokio::spawn(async move {
            let mut wait = Duration::from_millis(500);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                match ensure_order_indexes(&db).await {
                    Ok(()) => {
                        this.0.send_replace(true);
                        tracing::info!("indexes ensured");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), retry_in = ?wait, "indexes not ensured yet; not ready");
                    }
                }
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        });
        indexes
    }
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
            // The list's order (newest first), the daily aggregation's
            // range, and the list filtered by status or customer.
            IndexModel::builder()
                .keys(doc! {"receivedAt": -1, "orderId": -1})
                .build(),
            IndexModel::builder()
                .keys(doc! {"status": 1, "receivedAt": -1, "orderId": -1})
                .build(),
            IndexModel::builder()
                .keys(doc! {"customerId": 1, "receivedAt": -1, "orderId": -1})
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

/// How a transaction body ends.
pub enum Tx<T> {
    Commit(T),
    /// Roll back whatever the body wrote, and return this.
    Abort(T),
}

/// Attempts of a transaction that keeps meeting write conflicts.
pub const TRANSACTION_ATTEMPTS: u32 = 8;

/// Whether the whole transaction may simply be run again (a write conflict
/// with a concurrent transaction, a primary that changed).
pub fn is_transient_transaction_error(e: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    // MongoDB labels these; some compatible servers only send the code.
    const WRITE_CONFLICT: i32 = 112;
    e.contains_label(mongodb::error::TRANSIENT_TRANSACTION_ERROR)
        || match e.kind.as_ref() {
            ErrorKind::Command(c) => c.code == WRITE_CONFLICT,
            ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == WRITE_CONFLICT,
            _ => false,
        }
}

/// Commits, repeating the commit while its result is unknown (the commit is
/// idempotent on the server).
pub async fn commit(session: &mut mongodb::ClientSession) -> mongodb::error::Result<()> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match session.commit_transaction().await {
            Err(e)
                if attempt < TRANSACTION_ATTEMPTS
                    && e.contains_label(mongodb::error::UNKNOWN_TRANSACTION_COMMIT_RESULT) =>
            {
                continue
            }
            other => return other,
        }
    }
}

/// A client span for a MongoDB call, child of the current span.
pub fn span(operation: &'static str, collection: &str) -> tracing::Span {
    tracing::info_span!(
        "mongodb",
        otel.name = if collection.is_empty() {
            operation.to_owned()
        } else {
            format!("{operation} {collection}")
        },
        otel.kind = "client",
        db.system.name = "mongodb",
        db.operation.name = operation,
        db.collection.name = collection,
    )
}

/// Runs `$body` (an expression awaiting on `$session: &mut ClientSession`
/// and yielding `mongodb::error::Result<Tx<T>>`) in a transaction, again
/// from the start on a transient transaction error (write conflict), with a
/// short randomised pause between attempts. The transaction runs in a
/// MongoDB client span, a child of the caller's.
#[macro_export]
macro_rules! in_transaction {
    ($client:expr, |$session:ident| $body:expr) => {{
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let result: ::mongodb::error::Result<_> = ::tracing::Instrument::instrument(
                async {
                    let mut owned = $client.start_session().await?;
                    owned.start_transaction().await?;
                    let outcome = {
                        let $session = &mut owned;
                        $body
                    };
                    match outcome {
                        Ok($crate::mongo::Tx::Commit(value)) => {
                            $crate::mongo::commit(&mut owned).await?;
                            Ok(value)
                        }
                        Ok($crate::mongo::Tx::Abort(value)) => {
                            owned.abort_transaction().await?;
                            Ok(value)
                        }
                        Err(e) => {
                            let _ = owned.abort_transaction().await;
                            Err(e)
                        }
                    }
                },
                $crate::mongo::span("transaction", ""),
            )
            .await;
            match result {
                Err(e)
                    if attempt < $crate::mongo::TRANSACTION_ATTEMPTS
                        && $crate::mongo::is_transient_transaction_error(&e) =>
                {
                    let jitter = u64::from(::std::process::id() ^ attempt) % 20;
                    ::tokio::time::sleep(::std::time::Duration::from_millis(
                        5 * u64::from(attempt) + jitter,
                    ))
                    .await;
                }
                other => break other,
            }
        }
    }};
}

/// An integer field of an aggregation result (`$sum` yields Int32, Int64
/// or Double depending on the server and the values); 0 when absent.
pub fn number(value: Option<&bson::Bson>) -> i64 {
    match value {
        Some(bson::Bson::Int32(v)) => i64::from(*v),
        Some(bson::Bson::Int64(v)) => *v,
        Some(bson::Bson::Double(v)) => *v as i64,
        _ => 0,
    }
}
