//! The payment stage (SPEC §4): charges each reserved order at a simulated
//! gateway (configurable decline rule and latency, deterministic per
//! orderId), then in one transaction confirms the order and marks its stock
//! sold, or rejects it (`payment_declined`) and gives the stock back. The
//! decision is recorded in `payments` (`_id` = orderId); a redelivered
//! order finds it and only re-emits it.
//!
//! The charges of a batch overlap (up to the gateway's concurrency), and its
//! new orders are settled together in one transaction of bulk writes; when
//! one of them cannot be (cancelled meanwhile, a conflict that persists),
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
use orderflow_platform::mongo::documents::{
    bson_date, offset_date_time, status_change, OrderDocument, PaymentDocument, PaymentOutcome,
};
use orderflow_platform::mongo::{stock, Tx, ORDERS, PAYMENTS};
use rdkafka::message::OwnedMessage;
use time::OffsetDateTime;

use crate::event::{batch_span, decode, find_by_ids, together, transient, NewEvent};
use crate::runner::{Outgoing, Transient};
use crate::stage::{Fresh, Refusal, Stage, Verdicts};

pub const SOURCE: &str = "/orderflow/consumer/payment";

#[derive(Debug, Clone)]
pub struct Gateway {
    pub rule: DeclineRule,
    /// How long one (simulated) charge takes.
    pub latency: Duration,
    /// Charges in flight at once.
    pub concurrency: usize,
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

fn decode_reserved(msg: &OwnedMessage) -> Result<StockReserved, Refusal> {
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

    fn decode(&self, message: &OwnedMessage) -> Result<StockReserved, Refusal> {
        decode_reserved(message)
    }

    fn key<'i>(&self, order: &'i StockReserved) -> &'i str {
        &order.order_id
    }

    async fn decided(
        &self,
        ids: Vec<String>,
    ) -> Result<HashMap<String, PaymentDocument>, Transient> {
        find_by_ids(&self.payments(), ids, |p| p.order_id.clone(), "payments").await
    }

    async fn decide(
        &self,
        fresh: &[Fresh<'_, StockReserved>],
    ) -> Result<Verdicts<PaymentDocument>, Transient> {
        // Charge concurrently, as a gateway client would (PAYMENT_CONCURRENCY
        // at once across the lanes), while other lanes settle theirs.
        let answers: Vec<Option<String>> =
            futures::future::join_all(fresh.iter().map(|f| self.charge(f.input))).await;
        let _settling = self.settling.lock().await;
        let mut verdicts = Verdicts::with_capacity(fresh.len());
        // Settled together when there are several.
        if fresh.len() > 1 {
            let orders: Vec<(&StockReserved, Option<&str>)> = fresh
                .iter()
                .zip(&answers)
                .map(|(f, answer)| (f.input, answer.as_deref()))
                .collect();
            let span = batch_span(fresh.iter().map(|f| f.span));
            if let Some(records) = self.settle_together(&orders).instrument(span).await {
                for (record, f) in records.into_iter().zip(fresh) {
                    log_settled(&record, f.span);
                    verdicts.insert(record.order_id.clone(), Ok(record));
                }
                return Ok(verdicts);
            }
        }
        for (f, declined) in fresh.iter().zip(&answers) {
            let now = bson_date(OffsetDateTime::now_utc());
            let p = async {
                in_transaction!(self.db.client(), |session| {
                    self.settle(session, f.input, declined.as_deref(), now)
                        .await
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
