//! The payment stage (SPEC §4): charges each reserved order at a simulated
//! gateway (configurable decline rule and latency, deterministic per
//! orderId), then in one transaction confirms the order and marks its stock
//! sold, or rejects it (`payment_declined`) and gives the stock back. The
//! decision is recorded in `payments` (`_id` = orderId); a redelivered
//! order finds it and only re-emits it.
//!
//! Each partition's lane charges its own batch (`Stage::prepare`; the
//! charges overlap up to the gateway's concurrency, across the lanes)
//! before handing it to the gathered call that settles it, so the gateway's
//! waiting for the next batches goes on while one call settles. An order
//! settled before is found then and never charged again. A call's new
//! orders are settled together in one transaction of bulk writes; when one
//! of them cannot be (cancelled meanwhile, a conflict that persists),
//! nothing of it is kept and each order is settled in its own transaction.

use std::collections::HashMap;
use std::time::Duration;
use tracing::Instrument as _;

use bson::{doc, DateTime};
use mongodb::{ClientSession, Collection, Database};
use orderflow_domain::events::{
    types, OrderConfirmed, OrderRejected, PaymentProcessed, StockReserved,
};
use orderflow_domain::payment::{decline, DeclineRule, PAYMENT_DECLINED};
use orderflow_domain::{Money, OrderStatus};
use orderflow_platform::in_transaction;
use orderflow_platform::kafka::Received;
use orderflow_platform::mongo::documents::{
    bson_date, offset_date_time, status_change, OrderDocument, PaymentDocument, PaymentOutcome,
};
use orderflow_platform::mongo::{stock, Tx, ORDERS, PAYMENTS};
use time::OffsetDateTime;

use crate::event::{batch_span, decode, find_by_ids, together, transient, NewEvent};
use crate::runner::{Outgoing, Transient};
use crate::stage::{Fresh, Prepared, Refusal, Stage, Verdicts};

pub const SOURCE: &str = "/orderflow/consumer/payment";

#[derive(Debug, Clone)]
pub struct Gateway {
    pub rule: DeclineRule,
    /// How long one (simulated) charge takes.
    pub latency: Duration,
    /// Charges in flight at once.
    pub concurrency: usize,
}

/// What a lane found out about an order before the call that settles it.
pub enum Charge {
    /// Settled before (a redelivery, a replay): re-emitted, not charged.
    Settled(PaymentDocument),
    /// The gateway's answer: `Some(detail)` when declined.
    Answered(Option<String>),
}

pub struct Payment {
    db: Database,
    gateway: Gateway,
    /// The gateway's concurrency, shared by the partitions' lanes.
    charging: tokio::sync::Semaphore,
    /// One settlement at a time in this process: the lanes' transactions
    /// would otherwise conflict over the same stock documents.
    settling: tokio::sync::Mutex<()>,
    payment_topic: String,
    notifications_topic: String,
}

impl Payment {
    pub fn new(
        db: &Database,
        gateway: Gateway,
        payment_topic: String,
        notifications_topic: String,
    ) -> Self {
        Payment {
            db: db.clone(),
            charging: tokio::sync::Semaphore::new(gateway.concurrency.max(1)),
            settling: tokio::sync::Mutex::new(()),
            gateway,
            payment_topic,
            notifications_topic,
        }
    }

    fn payments(&self) -> Collection<PaymentDocument> {
        self.db.collection(PAYMENTS)
    }

    /// The gateway's answer for an order: `Some(detail)` when declined.
    async fn charge(&self, order: &StockReserved) -> Option<String> {
        if !self.gateway.latency.is_zero() {
            // The semaphore is never closed.
            let _slot = self.charging.acquire().await;
            tokio::time::sleep(self.gateway.latency).await;
        }
        decline(&self.gateway.rule, &order.order_id, order.total_amount)
    }

    /// The orders' charges, by orderId: the record of those settled
    /// before, and the gateway's answer for the others, asked concurrently.
    async fn charges(&self, orders: &[&StockReserved]) -> Result<Prepared<Charge>, Transient> {
        let ids = orders.iter().map(|o| o.order_id.clone()).collect();
        let settled =
            find_by_ids(&self.payments(), ids, |p| p.order_id.clone(), "payments").await?;
        let new: Vec<&StockReserved> = orders
            .iter()
            .filter(|o| !settled.contains_key(&o.order_id))
            .copied()
            .collect();
        let answers = futures::future::join_all(new.iter().map(|o| self.charge(o))).await;
        let mut charges: Prepared<Charge> = settled
            .into_iter()
            .map(|(id, record)| (id, Charge::Settled(record)))
            .collect();
        charges.extend(
            new.iter()
                .zip(answers)
                .map(|(o, answer)| (o.order_id.clone(), Charge::Answered(answer))),
        );
        Ok(charges)
    }

    async fn settle(
        &self,
        session: &mut ClientSession,
        order: &StockReserved,
        declined: Option<&str>,
        now: DateTime,
    ) -> mongodb::error::Result<Tx<PaymentDocument>> {
        let mut record = payment_document(order, None, now);
        let orders = self.db.collection::<OrderDocument>(ORDERS);
        let reserved = doc! {"orderId": &order.order_id, "status": OrderStatus::Reserved.as_str()};
        let moved = match declined {
            None => {
                let sold =
                    stock::commit_reservation(&self.db, session, &order.order_id, now).await?;
                sold && orders
                    .update_one(reserved, status_change(OrderStatus::Confirmed, None, now))
                    .session(&mut *session)
                    .await?
                    .matched_count
                    == 1
            }
            Some(detail) => {
                record = payment_document(order, Some(detail), now);
                let released =
                    stock::release(&self.db, session, &order.order_id, PAYMENT_DECLINED, now)
                        .await?;
                released
                    && orders
                        .update_one(
                            reserved,
                            status_change(OrderStatus::Rejected, Some(PAYMENT_DECLINED), now),
                        )
                        .session(&mut *session)
                        .await?
                        .matched_count
                        == 1
            }
        };
        if !moved {
            // Cancelled while waiting for payment: nothing to charge. Roll
            // back whatever half of the move happened, record the skip.
            return Ok(Tx::Abort(PaymentDocument {
                outcome: PaymentOutcome::Skipped,
                reason: Some("order_not_reserved".into()),
                detail: None,
                ..record
            }));
        }
        self.payments()
            .insert_one(&record)
            .session(&mut *session)
            .await?;
        Ok(Tx::Commit(record))
    }

    /// Settles `orders` (new, distinct orders, each with the gateway's
    /// answer) in one transaction; `None`, with nothing written, when one
    /// of them is no longer reserved or the transaction failed.
    async fn settle_together(
        &self,
        orders: &[(&StockReserved, Option<&str>)],
    ) -> Option<Vec<PaymentDocument>> {
        let now = bson_date(OffsetDateTime::now_utc());
        let settled = in_transaction!(self.db.client(), |session| {
            self.try_settle_together(session, orders, now).await
        });
        together(settled, orders.len())
    }

    async fn try_settle_together(
        &self,
        session: &mut ClientSession,
        orders: &[(&StockReserved, Option<&str>)],
        now: DateTime,
    ) -> mongodb::error::Result<Tx<Option<Vec<PaymentDocument>>>> {
        let approved: Vec<&str> = orders
            .iter()
            .filter(|(_, declined)| declined.is_none())
            .map(|(o, _)| o.order_id.as_str())
            .collect();
        if !approved.is_empty() {
            let n = approved.len() as u64;
            let sold = stock::commit_reservations(&self.db, session, &approved, now).await?;
            if sold != n {
                return Ok(Tx::Abort(None));
            }
            let confirmed = self
                .db
                .collection::<OrderDocument>(ORDERS)
                .update_many(
                    doc! {"orderId": {"$in": &approved}, "status": OrderStatus::Reserved.as_str()},
                    status_change(OrderStatus::Confirmed, None, now),
                )
                .session(&mut *session)
                .await?;
            if confirmed.matched_count != n {
                return Ok(Tx::Abort(None));
            }
        }
        let mut records = Vec::with_capacity(orders.len());
        for (order, declined) in orders {
            match declined {
                None => records.push(payment_document(order, None, now)),
                // Declines are few: each gives its stock back as settle does.
                Some(_) => match self.settle(session, order, *declined, now).await? {
                    Tx::Commit(record) => records.push(record),
                    Tx::Abort(_) => return Ok(Tx::Abort(None)),
                },
            }
        }
        let approved: Vec<&PaymentDocument> = records
            .iter()
            .filter(|r| r.outcome == PaymentOutcome::Approved)
            .collect();
        if !approved.is_empty() {
            self.payments()
                .insert_many(approved)
                .session(&mut *session)
                .await?;
        }
        Ok(Tx::Commit(Some(records)))
    }

    async fn record_skip(&self, record: &PaymentDocument) -> Result<(), Transient> {
        match self.payments().insert_one(record).await {
            Ok(_) => Ok(()),
            Err(e) if orderflow_platform::mongo::is_duplicate_key(&e) => Ok(()),
            Err(e) => Err(transient("recording a skipped payment")(e)),
        }
    }

    fn events(
        &self,
        p: &PaymentDocument,
        span: &tracing::Span,
    ) -> Result<Vec<Outgoing>, Transient> {
        if p.outcome == PaymentOutcome::Skipped {
            return Ok(Vec::new());
        }
        let approved = p.outcome == PaymentOutcome::Approved;
        let at = offset_date_time(p.processed_at);
        let processed = PaymentProcessed {
            order_id: p.order_id.clone(),
            customer_id: p.customer_id.clone(),
            currency: p.currency.clone(),
            amount: Money::from_minor(p.amount_cents),
            approved,
            reason: p.reason.clone(),
            processed_at: at,
        };
        let mut out = vec![NewEvent {
            topic: &self.payment_topic,
            key: &p.order_id,
            event_type: if approved {
                types::PAYMENT_APPROVED
            } else {
                types::PAYMENT_DECLINED
            },
            source: SOURCE,
            payload: &processed,
        }
        .build(span)?];
        let notice = if approved {
            NewEvent {
                topic: &self.notifications_topic,
                key: &p.order_id,
                event_type: types::ORDER_CONFIRMED,
                source: SOURCE,
                payload: &OrderConfirmed {
                    order_id: p.order_id.clone(),
                    customer_id: p.customer_id.clone(),
                    currency: p.currency.clone(),
                    total_amount: Money::from_minor(p.amount_cents),
                    confirmed_at: at,
                },
            }
            .build(span)?
        } else {
            NewEvent {
                topic: &self.notifications_topic,
                key: &p.order_id,
                event_type: types::ORDER_REJECTED,
                source: SOURCE,
                payload: &OrderRejected {
                    order_id: p.order_id.clone(),
                    customer_id: p.customer_id.clone(),
                    reason: p.reason.clone().unwrap_or_default(),
                    detail: p.detail.clone().unwrap_or_default(),
                    rejected_at: at,
                },
            }
            .build(span)?
        };
        out.push(notice);
        Ok(out)
    }
}

/// The record of a charge: approved, or declined with the gateway's detail.
fn payment_document(
    order: &StockReserved,
    declined: Option<&str>,
    now: DateTime,
) -> PaymentDocument {
    PaymentDocument {
        order_id: order.order_id.clone(),
        customer_id: order.customer_id.clone(),
        currency: order.currency.clone(),
        amount_cents: order.total_amount.minor(),
        outcome: if declined.is_some() {
            PaymentOutcome::Declined
        } else {
            PaymentOutcome::Approved
        },
        reason: declined.map(|_| PAYMENT_DECLINED.to_owned()),
        detail: declined.map(str::to_owned),
        processed_at: now,
    }
}

fn decode_reserved(msg: &Received) -> Result<StockReserved, Refusal> {
    let order: StockReserved = decode(msg, types::STOCK_RESERVED)?;
    if order.order_id.is_empty() || order.total_amount.is_negative() {
        return Err((
            "invalid_event",
            "orderId and a non-negative total are required".into(),
        ));
    }
    Ok(order)
}

impl Stage for Payment {
    type Input = StockReserved;
    type Decision = PaymentDocument;
    type Prepared = Charge;

    fn decode(&self, message: &Received) -> Result<StockReserved, Refusal> {
        decode_reserved(message)
    }

    fn key<'i>(&self, order: &'i StockReserved) -> &'i str {
        &order.order_id
    }

    /// Charges the lane's orders (an undecodable message is the call's to
    /// dead-letter).
    async fn prepare(&self, batch: &[Received]) -> Result<Prepared<Charge>, Transient> {
        let decoded: Vec<StockReserved> = batch
            .iter()
            .filter_map(|m| decode_reserved(m).ok())
            .collect();
        let mut seen = std::collections::HashSet::new();
        let orders: Vec<&StockReserved> = decoded
            .iter()
            .filter(|o| seen.insert(o.order_id.as_str()))
            .collect();
        if orders.is_empty() {
            return Ok(Prepared::new());
        }
        self.charges(&orders).await
    }

    /// None: `prepare` (or, for an order it did not see, `decide`) finds
    /// the payments settled before.
    async fn decided(&self, _: Vec<String>) -> Result<HashMap<String, PaymentDocument>, Transient> {
        Ok(HashMap::new())
    }

    async fn decide(
        &self,
        fresh: &[Fresh<'_, StockReserved, Charge>],
    ) -> Result<Verdicts<PaymentDocument>, Transient> {
        let unprepared: Vec<&StockReserved> = fresh
            .iter()
            .filter(|f| f.prepared.is_none())
            .map(|f| f.input)
            .collect();
        let late = if unprepared.is_empty() {
            Prepared::new()
        } else {
            self.charges(&unprepared).await?
        };
        let mut verdicts = Verdicts::with_capacity(fresh.len());
        let mut new: Vec<(&Fresh<'_, StockReserved, Charge>, Option<&str>)> = Vec::new();
        for f in fresh {
            match f.prepared.or_else(|| late.get(&f.input.order_id)) {
                Some(Charge::Settled(record)) => {
                    verdicts.insert(record.order_id.clone(), Ok(record.clone()));
                }
                Some(Charge::Answered(answer)) => new.push((f, answer.as_deref())),
                None => return Err(Transient(format!("{} was not charged", f.input.order_id))),
            }
        }
        if new.is_empty() {
            return Ok(verdicts);
        }
        let _settling = self.settling.lock().await;
        // Settled together when there are several.
        if new.len() > 1 {
            let orders: Vec<(&StockReserved, Option<&str>)> =
                new.iter().map(|(f, answer)| (f.input, *answer)).collect();
            let span = batch_span(new.iter().map(|(f, _)| f.span));
            if let Some(records) = self.settle_together(&orders).instrument(span).await {
                for (record, (f, _)) in records.into_iter().zip(&new) {
                    log_settled(&record, f.span);
                    verdicts.insert(record.order_id.clone(), Ok(record));
                }
                return Ok(verdicts);
            }
        }
        for (f, declined) in new {
            let now = bson_date(OffsetDateTime::now_utc());
            let p = async {
                in_transaction!(self.db.client(), |session| {
                    self.settle(session, f.input, declined, now).await
                })
            }
            .instrument(f.span.clone())
            .await
            .map_err(transient("settling a payment"))?;
            if p.outcome == PaymentOutcome::Skipped {
                self.record_skip(&p).await?;
            }
            log_settled(&p, f.span);
            verdicts.insert(p.order_id.clone(), Ok(p));
        }
        Ok(verdicts)
    }

    fn emit(&self, p: &PaymentDocument, span: &tracing::Span) -> Result<Vec<Outgoing>, Transient> {
        self.events(p, span)
    }
}

fn log_settled(p: &PaymentDocument, span: &tracing::Span) {
    tracing::info!(
        parent: span,
        order_id = %p.order_id,
        outcome = ?p.outcome,
        "payment settled"
    );
}
