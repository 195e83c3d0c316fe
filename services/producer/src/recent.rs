//! The Redis list of the most recent orders (`orders:recent`, newest first),
//! read by analytics. Best effort: Redis being down never fails an order.

use orderflow_domain::events::OrderPlaced;
use orderflow_platform::coalesce::Coalescer;
use orderflow_platform::redis::LazyRedis;
use prometheus_client::metrics::counter::Counter;
use tracing::Instrument as _;

/// One entry of the list: the OrderPlaced event plus an item count. Typed so
/// money stays an exact decimal literal.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct RecentOrder<'a> {
    #[serde(flatten)]
    order: &'a OrderPlaced,
    item_count: u64,
}

/// The list's writer. A request queues its entry once the broker has
/// acknowledged the order and does not wait for Redis (SPEC: pushed after
/// the acknowledgement, Redis never holds an order up): the 202 costs no
/// Redis round trip, and one MULTI/EXEC of LPUSH and LTRIM carries every
/// entry queued meanwhile. An entry that cannot be queued (the writer is a
/// full queue behind) or written is counted and logged, never retried: the
/// list is a view of the newest orders, not a record of them.
pub struct RecentOrders {
    writer: Coalescer<(String, tracing::Span), String>,
    failures: Counter,
}

/// Entries one round trip carries at most, and how many wait behind it.
const ENTRIES_PER_WRITE: usize = 256;

impl RecentOrders {
    /// Starts the writer on the current runtime. Its task ends once the
    /// last handle is dropped and the entries queued are written: an owner
    /// waits for it on the way out. `failures` counts entries not written.
    pub fn start(
        redis: LazyRedis,
        key: String,
        limit: usize,
        failures: Counter,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let redis = std::sync::Arc::new(redis);
        let failed = failures.clone();
        let (writer, task) = Coalescer::spawn_joined(
            ENTRIES_PER_WRITE,
            move |entries: Vec<(String, tracing::Span)>| {
                let mut pipe = redis::pipe();
                let count = entries.len();
                // The span of the first request the write carries.
                let span = entries
                    .first()
                    .map(|(_, span)| span.clone())
                    .unwrap_or_else(tracing::Span::none);
                // LPUSH puts each value at the head in turn: the newest
                // ends up first.
                let values: Vec<String> = entries.into_iter().map(|(entry, _)| entry).collect();
                pipe.atomic()
                    .lpush(&key, values)
                    .ignore()
                    .ltrim(&key, 0, limit.saturating_sub(1) as isize)
                    .ignore();
                let redis = redis.clone();
                let failed = failed.clone();
                async move {
                    let written = redis.run::<()>(&pipe).await;
                    if let Err(e) = &written {
                        failed.inc_by(count as u64);
                        tracing::warn!(entries = count, error = %e, "recent-orders list not updated");
                    }
                    written
                }
                .instrument(span)
            },
        );
        (RecentOrders { writer, failures }, task)
    }

    /// Queues the order for the list (newest first, trimmed) and returns at
    /// once.
    pub fn push(&self, order: &OrderPlaced) {
        let entry = serde_json::to_string(&RecentOrder {
            item_count: order.items.iter().map(|i| u64::from(i.quantity)).sum(),
            order,
        });
        let queued = match entry {
            Ok(entry) => self
                .writer
                .offer((entry, tracing::Span::current()))
                .map_err(|_| "the writer is a full queue behind or has stopped".to_owned()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = queued {
            self.failures.inc();
            tracing::warn!(order_id = %order.order_id, error = %e, "recent-orders list not updated");
        }
    }
}
