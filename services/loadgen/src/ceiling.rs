//! The MongoDB ceiling of `scripts/bench`: the writes the four stages make
//! for each order, batched as they batch them, sent straight to MongoDB with
//! the same driver and no Kafka, HTTP or decoding in between. Four tasks,
//! one per stage, each taking the batches in turn from the one before (as
//! the stages do through their topics), so the stages' writes overlap as in
//! the pipeline and one stage never races itself. The orders/s it reaches
//! is what the database allows the pipeline at best.
//!
//! The documents are the stages' own, with orders of 1 to 4 lines as
//! loadgen posts them (until 2026-12-06 every order had one line and the
//! later records carried placeholders: 1 618 bytes sent per order against
//! the pipeline's 2 074, by the server's counters).
//!
//! Per batch: persist inserts the orders (`insertMany`); inventory looks
//! up past decisions, then in one transaction moves the orders to
//! `reserved`, takes each product's quantity and inserts the reservations;
//! payment looks up past decisions, then in one transaction commits the
//! reservations, confirms the orders and inserts the payments; notify looks
//! up past deliveries (one per channel and order) and inserts the new ones,
//! one write after another, each carrying as many as notify's inserts did
//! on average in the run compared (`--ceiling-records-per-write`; scripts/bench
//! reads it from notify's `records_per_write` metric).

use std::time::Instant;

use bson::{doc, Document};
use futures::StreamExt;
use mongodb::{ClientSession, Database};
use orderflow_domain::OrderStatus;
use orderflow_platform::mongo::documents::{status_change, OrderDocument};
use orderflow_platform::mongo::{stock, INVENTORY, NOTIFICATIONS, ORDERS, PAYMENTS, RESERVATIONS};
use tokio::sync::mpsc;

use crate::synthetic::{synthetic_order, Rng, PRODUCTS};

/// One order on its way through the stages: what the stages' later
/// writes carry.
struct Passing {
    id: String,
    customer: String,
    total_cents: i64,
    /// Product and quantity of each line.
    lines: Vec<(&'static str, i64)>,
}

type Batch = Vec<Passing>;

/// Lines per order: 1 to 4, as loadgen posts them.
const MAX_LINES: u64 = 4;

/// What notify writes per order: a delivery record per channel, grouped.
pub struct Notify {
    pub channels: Vec<String>,
    pub records_per_write: usize,
}

pub async fn run(db: &Database, orders: u64, batch: usize, notify: &Notify) -> anyhow::Result<()> {
    db.drop().await?;
    orderflow_platform::mongo::ensure_order_indexes(db).await?;
    let inventory = db.collection::<Document>(INVENTORY);
    for (id, name, _) in PRODUCTS {
        inventory
            .insert_one(doc! {"productId": id, "name": name, "stock": i64::MAX / 4,
            "capacity": i64::MAX / 4, "unitPriceCents": 100_i64,
            "updatedAt": bson::DateTime::now()})
            .await?;
    }

    let started = Instant::now();
    let (to_inventory, at_inventory) = mpsc::channel::<Batch>(4);
    let (to_payment, at_payment) = mpsc::channel::<Batch>(4);
    let (to_notify, mut at_notify) = mpsc::channel::<Batch>(4);
    let persist = {
        let db = db.clone();
        tokio::spawn(async move {
            let mut rng = Rng(0xCE11);
            let now = bson::DateTime::now();
            let mut next = 0;
            while next < orders {
                let docs: Vec<OrderDocument> = (next..(next + batch as u64).min(orders))
                    .map(|k| {
                        let lines = 1 + rng.below(MAX_LINES);
                        // As long as the bench's ids (bench-PID-max-N).
                        synthetic_order(
                            format!("ceiling-{k:012}"),
                            OrderStatus::Placed,
                            now,
                            k as i64,
                            lines,
                            &mut rng,
                        )
                    })
                    .collect();
                next += docs.len() as u64;
                let passing: Batch = docs
                    .iter()
                    .map(|o| Passing {
                        id: o.order_id.clone(),
                        customer: o.customer_id.clone(),
                        total_cents: o.total_cents,
                        lines: o
                            .items
                            .iter()
                            .map(|i| {
                                let product = PRODUCTS
                                    .iter()
                                    .find(|p| p.0 == i.product_id)
                                    .expect("a catalogue product")
                                    .0;
                                (product, i.quantity)
                            })
                            .collect(),
                    })
                    .collect();
                db.collection::<OrderDocument>(ORDERS)
                    .insert_many(docs)
                    .ordered(false)
                    .await?;
                if to_inventory.send(passing).await.is_err() {
                    break;
                }
            }
            anyhow::Ok(())
        })
    };
    let inventory_stage = deciding(db.clone(), Decision::Reserve, at_inventory, to_payment);
    let payment_stage = deciding(db.clone(), Decision::Settle, at_payment, to_notify);
    let notify_stage = {
        let db = db.clone();
        let channels = notify.channels.clone();
        let per_write = notify.records_per_write;
        tokio::spawn(async move {
            let deliveries = db.collection::<Document>(NOTIFICATIONS);
            let mut done = 0u64;
            while let Some(batch) = at_notify.recv().await {
                let records: Vec<Document> = batch
                    .iter()
                    .flat_map(|o| {
                        channels.iter().map(move |channel| {
                            let id = &o.id;
                            doc! {"_id": format!("order_confirmed:{id}/{channel}"),
                            "key": format!("order_confirmed:{id}"), "kind": "order_confirmed",
                            "channel": channel,
                            "recipient": format!("{}@customers.orderflow.local", o.customer),
                            "subject": format!("Your order {id} is confirmed"), "status": "delivered",
                            "attempts": 1, "at": bson::DateTime::now()}
                        })
                    })
                    .collect();
                let ids: Vec<&str> = records
                    .iter()
                    .filter_map(|r| r.get_str("_id").ok())
                    .collect();
                find_ids(&db, NOTIFICATIONS, ids).await?;
                for write in records.chunks(per_write) {
                    deliveries.insert_many(write).ordered(false).await?;
                }
                done += batch.len() as u64;
            }
            anyhow::Ok(done)
        })
    };
    persist.await??;
    inventory_stage.await??;
    payment_stage.await??;
    let done = notify_stage.await??;
    let seconds = started.elapsed().as_secs_f64();
    println!("results");
    println!("  orders   {done} through the four stages' writes, in batches of {batch}");
    println!(
        "  rate     {:.0} orders/s ({seconds:.1} s)",
        done as f64 / seconds
    );
    db.drop().await?;
    Ok(())
}

/// The two stages that decide in a transaction.
#[derive(Clone, Copy)]
enum Decision {
    Reserve,
    Settle,
}

/// Inventory or payment: for each batch in turn, the look-up of past
/// decisions and one transaction; then the batch moves on.
fn deciding(
    db: Database,
    decision: Decision,
    mut input: mpsc::Receiver<Batch>,
    output: mpsc::Sender<Batch>,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    tokio::spawn(async move {
        while let Some(batch) = input.recv().await {
            let past = match decision {
                Decision::Reserve => RESERVATIONS,
                Decision::Settle => PAYMENTS,
            };
            lookup(&db, past, &batch).await?;
            let mut session = begin(&db).await?;
            match decision {
                Decision::Reserve => reserve(&db, &mut session, &batch).await?,
                Decision::Settle => settle(&db, &mut session, &batch).await?,
            }
            session.commit_transaction().await?;
            if output.send(batch).await.is_err() {
                break;
            }
        }
        Ok(())
    })
}

/// A stage's look-up of past decisions for the batch.
async fn lookup(db: &Database, collection: &str, batch: &Batch) -> mongodb::error::Result<()> {
    find_ids(
        db,
        collection,
        batch.iter().map(|o| o.id.as_str()).collect(),
    )
    .await
}

async fn find_ids(db: &Database, collection: &str, ids: Vec<&str>) -> mongodb::error::Result<()> {
    let mut found = db
        .collection::<Document>(collection)
        .find(doc! {"_id": {"$in": ids}})
        .await?;
    while let Some(d) = found.next().await {
        d?;
    }
    Ok(())
}

async fn begin(db: &Database) -> mongodb::error::Result<ClientSession> {
    let mut session = db.client().start_session().await?;
    session.start_transaction().await?;
    Ok(session)
}

async fn reserve(
    db: &Database,
    session: &mut ClientSession,
    batch: &Batch,
) -> mongodb::error::Result<()> {
    let now = bson::DateTime::now();
    let ids: Vec<&str> = batch.iter().map(|o| o.id.as_str()).collect();
    db.collection::<Document>(ORDERS)
        .update_many(
            doc! {"orderId": {"$in": &ids}, "status": OrderStatus::Placed.as_str()},
            status_change(OrderStatus::Reserved, None, now),
        )
        .session(&mut *session)
        .await?;
    let mut totals = std::collections::BTreeMap::<&str, i64>::new();
    for (product, quantity) in batch.iter().flat_map(|o| &o.lines) {
        *totals.entry(product).or_default() += quantity;
    }
    for (product, total) in totals {
        db.collection::<Document>(INVENTORY)
            .find_one_and_update(
                doc! {"productId": product, "stock": {"$gte": total}},
                doc! {"$inc": {"stock": -total}, "$set": {"updatedAt": now}},
            )
            .session(&mut *session)
            .await?;
    }
    let reservations: Vec<Document> = batch
        .iter()
        .map(|o| {
            let items: Vec<Document> = o
                .lines
                .iter()
                .map(|(product, quantity)| doc! {"productId": *product, "quantity": quantity})
                .collect();
            doc! {"_id": &o.id, "customerId": &o.customer, "currency": "USD",
            "totalCents": o.total_cents, "state": "reserved", "items": items,
            "lowStock": [], "createdAt": now, "updatedAt": now}
        })
        .collect();
    db.collection::<Document>(RESERVATIONS)
        .insert_many(reservations)
        .session(&mut *session)
        .await?;
    Ok(())
}

async fn settle(
    db: &Database,
    session: &mut ClientSession,
    batch: &Batch,
) -> mongodb::error::Result<()> {
    let now = bson::DateTime::now();
    let ids: Vec<&str> = batch.iter().map(|o| o.id.as_str()).collect();
    stock::commit_reservations(db, session, &ids, now).await?;
    db.collection::<Document>(ORDERS)
        .update_many(
            doc! {"orderId": {"$in": &ids}, "status": OrderStatus::Reserved.as_str()},
            status_change(OrderStatus::Confirmed, None, now),
        )
        .session(&mut *session)
        .await?;
    let payments: Vec<Document> = batch
        .iter()
        .map(|o| {
            doc! {"_id": &o.id, "customerId": &o.customer, "currency": "USD",
            "amountCents": o.total_cents, "outcome": "approved", "processedAt": now}
        })
        .collect();
    db.collection::<Document>(PAYMENTS)
        .insert_many(payments)
        .session(&mut *session)
        .await?;
    Ok(())
}
