//! `--seed-orders N`: the read benchmarks' data set, straight into MongoDB.

use std::time::Instant;

use crate::synthetic::{synthetic_order, Rng};

/// Stores `n` synthetic orders (statuses and amounts varied, received over
/// the last 30 days) in batches of 1 000.
pub async fn seed(db: &mongodb::Database, n: u64) -> anyhow::Result<()> {
    use orderflow_domain::OrderStatus;
    use orderflow_platform::mongo::documents::OrderDocument;
    orderflow_platform::mongo::ensure_order_indexes(db).await?;
    let orders = db.collection::<OrderDocument>("orders");
    let now = bson::DateTime::now().timestamp_millis();
    let month = 30 * 24 * 3600 * 1000;
    let mut rng = Rng(0x5EED);
    let started = Instant::now();
    let mut i = 0;
    while i < n {
        let batch: Vec<OrderDocument> = (i..(i + 1000).min(n))
            .map(|k| {
                let at = bson::DateTime::from_millis(now - (rng.below(month)) as i64);
                let status = OrderStatus::ALL[rng.below(OrderStatus::ALL.len() as u64) as usize];
                synthetic_order(format!("seed-{k:07}"), status, at, k as i64, 1, &mut rng)
            })
            .collect();
        i += batch.len() as u64;
        orders.insert_many(batch).ordered(false).await?;
    }
    println!(
        "seeded {n} orders in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
