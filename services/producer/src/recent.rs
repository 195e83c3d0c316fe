//! The Redis list of the most recent orders (`orders:recent`, newest first),
//! read by analytics. Best effort: Redis being down never fails an order.

use orderflow_domain::events::OrderPlaced;
use orderflow_platform::coalesce::Coalescer;
use orderflow_platform::redis::LazyRedis;
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

/// The list's writer: the requests in flight share its round trips (one
/// MULTI/EXEC of LPUSH and LTRIM carries every entry queued meanwhile), and
/// each request still waits for its own entry, so a 202 means the order is
/// in the list.
pub struct RecentOrders {
    writer: Coalescer<(String, tracing::Span), String>,
}

/// Entries one round trip carries at most.
const ENTRIES_PER_WRITE: usize = 256;

impl RecentOrders {
    /// Starts the writer on the current runtime.
    pub fn new(redis: LazyRedis, key: String, limit: usize) -> Self {
        let redis = std::sync::Arc::new(redis);
        let writer = Coalescer::spawn(
            ENTRIES_PER_WRITE,
            move |entries: Vec<(String, tracing::Span)>| {
                let mut pipe = redis::pipe();
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
                async move { redis.run::<()>(&pipe).instrument(span).await }
            },
        );
        RecentOrders { writer }
    }

    /// Pushes the order (newest first) and trims the list; returns once the
    /// write that carried it is done.
    pub async fn push(&self, order: &OrderPlaced) -> Result<(), String> {
        let entry = serde_json::to_string(&RecentOrder {
            item_count: order.items.iter().map(|i| u64::from(i.quantity)).sum(),
            order,
        })
        .map_err(|e| e.to_string())?;
        self.writer
            .submit((entry, tracing::Span::current()))
            .await
            .map_err(|e| e.to_string())
    }
}
