//! The Redis list of the most recent orders (`orders:recent`, newest first),
//! read by analytics. Best effort: Redis being down never fails an order.

use orderflow_domain::events::OrderPlaced;
use orderflow_platform::redis::LazyRedis;

/// One entry of the list: the OrderPlaced event plus an item count. Typed so
/// money stays an exact decimal literal.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct RecentOrder<'a> {
    #[serde(flatten)]
    order: &'a OrderPlaced,
    item_count: u64,
}

pub struct RecentOrders {
    redis: LazyRedis,
    key: String,
    limit: usize,
}

impl RecentOrders {
    pub fn new(redis: LazyRedis, key: String, limit: usize) -> Self {
        RecentOrders { redis, key, limit }
    }

    /// Pushes the order and trims the list in one MULTI/EXEC.
    pub async fn push(&self, order: &OrderPlaced) -> Result<(), String> {
        let entry = serde_json::to_string(&RecentOrder {
            item_count: order.items.iter().map(|i| u64::from(i.quantity)).sum(),
            order,
        })
        .map_err(|e| e.to_string())?;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .lpush(&self.key, entry)
            .ignore()
            .ltrim(&self.key, 0, self.limit.saturating_sub(1) as isize)
            .ignore();
        self.redis.run::<()>(&pipe).await
    }
}
