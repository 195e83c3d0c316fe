//! The inventory stage (SPEC §4): reserves each validated order's stock,
//! all or nothing, and notices low stock.
//!
//! One MongoDB transaction moves the order `placed → reserved`, takes every
//! item's quantity with a conditional decrement (`stock ≥ q`), and records
//! the decision in `reservations` (`_id` = orderId). A missing item aborts
//! the whole transaction, and a second one records the rejection. A
//! redelivered order finds its reservation and only re-emits what it
//! recorded, so stock is never taken twice.
//!
//! The new orders of a batch are first tried together, in one transaction
//! of a few bulk writes (one per collection, one per product): it commits
//! only when every order is still `placed` and every product has the
//! batch's whole quantity, so each order's all-or-nothing holds. Otherwise
//! nothing of it is kept and each order gets its own transaction, in batch
//! order, exactly as if the batch had never been tried together.

use std::collections::{BTreeMap, HashMap};
use tracing::Instrument as _;

use bson::{doc, DateTime};
use mongodb::options::ReturnDocument;
use mongodb::{ClientSession, Collection, Database};
use orderflow_domain::events::ReservedItem;
use orderflow_domain::events::{types, LowStock, OrderRejected, OrderValidated, StockReserved};
use orderflow_domain::stock::{crossed_low, low_stock_threshold, reservation};
use orderflow_domain::{Money, OrderStatus};
use orderflow_platform::in_transaction;
use orderflow_platform::kafka::Received;
use orderflow_platform::mongo::documents::{
    bson_date, offset_date_time, status_change, InventoryDocument, LowStockCrossing, OrderDocument,
    ReservationDocument, ReservationState, ReservedItemDocument,
};
use orderflow_platform::mongo::{Tx, INVENTORY, ORDERS, RESERVATIONS};
use time::OffsetDateTime;

use crate::event::{batch_span, decode, find_by_ids, together, transient, NewEvent};
use crate::runner::{Outgoing, Transient};
use crate::stage::{Fresh, Refusal, Stage, Verdicts};

pub const SOURCE: &str = "/orderflow/consumer/inventory";
pub const OUT_OF_STOCK: &str = "out_of_stock";

pub struct Inventory {
    db: Database,
    /// One reservation at a time in this process: the lanes' transactions
    /// would otherwise conflict over the same stock documents.
    deciding: tokio::sync::Mutex<()>,
    inventory_topic: String,
    notifications_topic: String,
}

impl Inventory {
    pub fn new(db: &Database, inventory_topic: String, notifications_topic: String) -> Self {
        Inventory {
            db: db.clone(),
            deciding: tokio::sync::Mutex::new(()),
            inventory_topic,
            notifications_topic,
        }
    }

    fn reservations(&self) -> Collection<ReservationDocument> {
        self.db.collection(RESERVATIONS)
    }

    /// Reserves the stock of `orders` (new, distinct orders) in one
    /// transaction; `None` when they cannot all be reserved together (one
    /// is no longer placed, a product is short, a conflict persisted), and
    /// nothing was written.
    async fn reserve_together(
        &self,
        orders: &[&OrderValidated],
    ) -> Option<Vec<ReservationDocument>> {
        let now = bson_date(OffsetDateTime::now_utc());
        let reserved = in_transaction!(self.db.client(), |session| {
            self.try_reserve_together(session, orders, now).await
        });
        together(reserved, orders.len())
    }

    async fn try_reserve_together(
        &self,
        session: &mut ClientSession,
        orders: &[&OrderValidated],
        now: DateTime,
    ) -> mongodb::error::Result<Tx<Option<Vec<ReservationDocument>>>> {
        let ids: Vec<&str> = orders.iter().map(|o| o.order_id.as_str()).collect();
        let moved = self
            .db
            .collection::<OrderDocument>(ORDERS)
            .update_many(
                doc! {"orderId": {"$in": &ids}, "status": OrderStatus::Placed.as_str()},
                status_change(OrderStatus::Reserved, None, now),
            )
            .session(&mut *session)
            .await?;
        if moved.matched_count != ids.len() as u64 {
            return Ok(Tx::Abort(None));
        }
        let mut records: Vec<ReservationDocument> = orders
            .iter()
            .map(|o| reservation_document(o, &reservation(&o.items), now))
            .collect();
        // Each product's quantity over the batch, taken at once (in product
        // order, so concurrent batches meet their locks in the same order).
        let mut totals: BTreeMap<String, i64> = BTreeMap::new();
        for record in &records {
            for item in &record.items {
                *totals.entry(item.product_id.clone()).or_default() += item.quantity;
            }
        }
        let inventory = self.db.collection::<InventoryDocument>(INVENTORY);
        let mut after: HashMap<String, InventoryDocument> = HashMap::new();
        for (product, total) in &totals {
            let taken = inventory
                .find_one_and_update(
                    doc! {"productId": product, "stock": {"$gte": total}},
                    doc! {"$inc": {"stock": -total}, "$set": {"updatedAt": now}},
                )
                .return_document(ReturnDocument::After)
                .session(&mut *session)
                .await?;
            let Some(taken) = taken else {
                return Ok(Tx::Abort(None));
            };
            after.insert(taken.product_id.clone(), taken);
        }
        // The low-stock crossings each order would have seen one by one:
        // walk the batch in order from each product's stock before it.
        let mut stock: HashMap<&str, i64> = totals
            .iter()
            .map(|(p, total)| (p.as_str(), after[p].stock + total))
            .collect();
        for record in &mut records {
            for item in &record.items {
                let product = &after[&item.product_id];
                let before = stock[item.product_id.as_str()];
                let now_left = before - item.quantity;
                stock.insert(item.product_id.as_str(), now_left);
                let threshold = low_stock_threshold(product.capacity, product.low_stock_threshold);
                if crossed_low(before, now_left, threshold) {
                    record.low_stock.push(LowStockCrossing {
                        product_id: product.product_id.clone(),
                        name: product.name.clone(),
                        stock: now_left,
                        capacity: product.capacity,
                        threshold,
                    });
                }
            }
        }
        self.reservations()
            .insert_many(&records)
            .session(&mut *session)
            .await?;
        Ok(Tx::Commit(Some(records)))
    }

    /// Decides one order for the first time and records the decision.
    async fn decide_one(&self, order: &OrderValidated) -> Result<ReservationDocument, Transient> {
        let items = reservation(&order.items);
        let now = bson_date(OffsetDateTime::now_utc());
        let attempt = in_transaction!(self.db.client(), |session| {
            self.try_reserve(session, order, &items, now).await
        })
        .map_err(transient("reserving stock"))?;
        match attempt {
            Reserve::Done(reservation) => Ok(reservation),
            Reserve::Short(detail) => {
                let rejected = in_transaction!(self.db.client(), |session| {
                    self.record_rejection(session, order, &items, &detail, now)
                        .await
                })
                .map_err(transient("recording an out-of-stock order"))?;
                Ok(rejected)
            }
        }
    }

    async fn try_reserve(
        &self,
        session: &mut ClientSession,
        order: &OrderValidated,
        items: &[ReservedItem],
        now: DateTime,
    ) -> mongodb::error::Result<Tx<Reserve>> {
        let mut record = reservation_document(order, items, now);
        let moved = self
            .move_placed(session, &order.order_id, OrderStatus::Reserved, None, now)
            .await?;
        if !moved {
            // Cancelled (or otherwise moved on) before we got here.
            record.state = ReservationState::Skipped;
            self.reservations()
                .insert_one(&record)
                .session(&mut *session)
                .await?;
            return Ok(Tx::Commit(Reserve::Done(record)));
        }
        let inventory = self.db.collection::<InventoryDocument>(INVENTORY);
        for item in items {
            let after = inventory
                .find_one_and_update(
                    doc! {"productId": &item.product_id, "stock": {"$gte": item.quantity}},
                    doc! {"$inc": {"stock": -item.quantity}, "$set": {"updatedAt": now}},
                )
                .return_document(ReturnDocument::After)
                .session(&mut *session)
                .await?;
            let Some(after) = after else {
                return Ok(Tx::Abort(Reserve::Short(format!(
                    "not enough '{}' in stock for {}",
                    item.product_id, item.quantity
                ))));
            };
            let threshold = low_stock_threshold(after.capacity, after.low_stock_threshold);
            if crossed_low(after.stock + item.quantity, after.stock, threshold) {
                record.low_stock.push(LowStockCrossing {
                    product_id: after.product_id.clone(),
                    name: after.name.clone(),
                    stock: after.stock,
                    capacity: after.capacity,
                    threshold,
                });
            }
        }
        self.reservations()
            .insert_one(&record)
            .session(&mut *session)
            .await?;
        Ok(Tx::Commit(Reserve::Done(record)))
    }

    /// Moves a `placed` order on; false when it is no longer placed.
    async fn move_placed(
        &self,
        session: &mut ClientSession,
        order_id: &str,
        to: OrderStatus,
        reason: Option<&str>,
        now: DateTime,
    ) -> mongodb::error::Result<bool> {
        let moved = self
            .db
            .collection::<OrderDocument>(ORDERS)
            .update_one(
                doc! {"orderId": order_id, "status": OrderStatus::Placed.as_str()},
                status_change(to, reason, now),
            )
            .session(session)
            .await?;
        Ok(moved.matched_count == 1)
    }

    async fn record_rejection(
        &self,
        session: &mut ClientSession,
        order: &OrderValidated,
        items: &[ReservedItem],
        detail: &str,
        now: DateTime,
    ) -> mongodb::error::Result<Tx<ReservationDocument>> {
        let mut record = reservation_document(order, items, now);
        let moved = self
            .move_placed(
                session,
                &order.order_id,
                OrderStatus::Rejected,
                Some(OUT_OF_STOCK),
                now,
            )
            .await?;
        if !moved {
            record.state = ReservationState::Skipped;
        } else {
            record.state = ReservationState::Rejected;
            record.reason = Some(OUT_OF_STOCK.to_owned());
            record.detail = Some(detail.to_owned());
        }
        self.reservations()
            .insert_one(&record)
            .session(&mut *session)
            .await?;
        Ok(Tx::Commit(record))
    }

    /// The events a decided reservation stands for; the same every time.
    fn events(
        &self,
        r: &ReservationDocument,
        span: &tracing::Span,
    ) -> Result<Vec<Outgoing>, Transient> {
        let mut out = Vec::new();
        if r.state.was_reserved() {
            let reserved = StockReserved {
                order_id: r.order_id.clone(),
                customer_id: r.customer_id.clone(),
                currency: r.currency.clone(),
                items: r
                    .items
                    .iter()
                    .map(|i| ReservedItem {
                        product_id: i.product_id.clone(),
                        quantity: i.quantity,
                    })
                    .collect(),
                total_amount: Money::from_minor(r.total_cents),
                reserved_at: offset_date_time(r.created_at),
            };
            out.push(
                NewEvent {
                    topic: &self.inventory_topic,
                    key: &r.order_id,
                    event_type: types::STOCK_RESERVED,
                    source: SOURCE,
                    payload: &reserved,
                }
                .build(span)?,
            );
            for crossing in &r.low_stock {
                let low = LowStock {
                    product_id: crossing.product_id.clone(),
                    name: crossing.name.clone(),
                    stock: crossing.stock,
                    capacity: crossing.capacity,
                    threshold: crossing.threshold,
                    order_id: r.order_id.clone(),
                    at: offset_date_time(r.created_at),
                };
                out.push(
                    NewEvent {
                        topic: &self.notifications_topic,
                        key: &crossing.product_id,
                        event_type: types::LOW_STOCK,
                        source: SOURCE,
                        payload: &low,
                    }
                    .build(span)?,
                );
            }
        } else if r.state == ReservationState::Rejected {
            let rejected = OrderRejected {
                order_id: r.order_id.clone(),
                customer_id: r.customer_id.clone(),
                reason: r.reason.clone().unwrap_or_default(),
                detail: r.detail.clone().unwrap_or_default(),
                rejected_at: offset_date_time(r.updated_at),
            };
            out.push(
                NewEvent {
                    topic: &self.notifications_topic,
                    key: &r.order_id,
                    event_type: types::ORDER_REJECTED,
                    source: SOURCE,
                    payload: &rejected,
                }
                .build(span)?,
            );
        }
        Ok(out)
    }
}

enum Reserve {
    Done(ReservationDocument),
    /// An item was short; the transaction was rolled back.
    Short(String),
}

fn reservation_document(
    order: &OrderValidated,
    items: &[ReservedItem],
    now: DateTime,
) -> ReservationDocument {
    ReservationDocument {
        order_id: order.order_id.clone(),
        customer_id: order.customer_id.clone(),
        currency: order.currency.clone(),
        total_cents: order.total_amount.minor(),
        state: ReservationState::Reserved,
        items: items
            .iter()
            .map(|i| ReservedItemDocument {
                product_id: i.product_id.clone(),
                quantity: i.quantity,
            })
            .collect(),
        reason: None,
        detail: None,
        low_stock: Vec::new(),
        created_at: now,
        updated_at: now,
    }
}

fn decode_validated(msg: &Received) -> Result<OrderValidated, Refusal> {
    let order: OrderValidated = decode(msg, types::ORDER_VALIDATED)?;
    if order.order_id.is_empty() || order.items.iter().any(|i| i.quantity == 0) {
        return Err((
            "invalid_event",
            "orderId and quantities ≥ 1 are required".into(),
        ));
    }
    Ok(order)
}

impl Stage for Inventory {
    type Input = OrderValidated;
    type Decision = ReservationDocument;
    type Prepared = ();

    fn decode(&self, message: &Received) -> Result<OrderValidated, Refusal> {
        decode_validated(message)
    }

    fn key<'i>(&self, order: &'i OrderValidated) -> &'i str {
        &order.order_id
    }

    async fn decided(
        &self,
        ids: Vec<String>,
    ) -> Result<HashMap<String, ReservationDocument>, Transient> {
        find_by_ids(
            &self.reservations(),
            ids,
            |r| r.order_id.clone(),
            "reservations",
        )
        .await
    }

    async fn decide(
        &self,
        fresh: &[Fresh<'_, OrderValidated>],
    ) -> Result<Verdicts<ReservationDocument>, Transient> {
        let _deciding = self.deciding.lock().await;
        let mut verdicts = Verdicts::with_capacity(fresh.len());
        // Tried together when there are several.
        if fresh.len() > 1 {
            let orders: Vec<&OrderValidated> = fresh.iter().map(|f| f.input).collect();
            let span = batch_span(fresh.iter().map(|f| f.span));
            if let Some(records) = self.reserve_together(&orders).instrument(span).await {
                for (record, f) in records.into_iter().zip(fresh) {
                    log_decided(&record, f.span);
                    verdicts.insert(record.order_id.clone(), Ok(record));
                }
                return Ok(verdicts);
            }
        }
        for f in fresh {
            let record = self.decide_one(f.input).instrument(f.span.clone()).await?;
            log_decided(&record, f.span);
            verdicts.insert(record.order_id.clone(), Ok(record));
        }
        Ok(verdicts)
    }

    fn emit(
        &self,
        r: &ReservationDocument,
        span: &tracing::Span,
    ) -> Result<Vec<Outgoing>, Transient> {
        self.events(r, span)
    }
}

fn log_decided(r: &ReservationDocument, span: &tracing::Span) {
    tracing::info!(
        parent: span,
        order_id = %r.order_id,
        state = r.state.as_str(),
        low_stock = r.low_stock.len(),
        "stock decided"
    );
}
