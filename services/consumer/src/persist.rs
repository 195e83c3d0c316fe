//! The persist stage (SPEC §4): stores each OrderPlaced in MongoDB exactly
//! once, priced by the catalogue, and emits OrderValidated (or, for an order
//! the catalogue refuses, OrderRejected to `notifications`).
//!
//! Idempotence: `orderId` is unique, so a redelivered or re-posted order hits
//! a duplicate key and leaves the stored order untouched; the events are
//! always rebuilt from the *stored* document, so a crash between the write
//! and the publish re-emits the same facts on redelivery.

use std::collections::{HashMap, HashSet};
use tracing::Instrument as _;

use bson::{doc, Bson, Document};
use mongodb::{Collection, Database};
use orderflow_domain::events::{types, OrderPlaced, OrderRejected};
use orderflow_domain::pricing::{price_order, Catalogue, CatalogueEntry};
use orderflow_domain::{Money, OrderStatus};
use orderflow_platform::kafka::Received;
use orderflow_platform::mongo::documents::{
    bson_date, ItemDocument, OrderDocument, SourceRef, StatusChange, Validation,
};
use orderflow_platform::mongo::{DUPLICATE_KEY, INVENTORY, ORDERS};
use rdkafka::message::Message;
use time::OffsetDateTime;

use crate::event::{decode, find_all, NewEvent};
use crate::runner::{Outgoing, Transient};
use crate::stage::{Fresh, Refusal, Stage, Verdicts};

pub const SOURCE: &str = "/orderflow/consumer/persist";

pub struct Persist {
    orders: Collection<OrderDocument>,
    inventory: Collection<Document>,
    validated_topic: String,
    notifications_topic: String,
    strict_catalogue: bool,
}

impl Persist {
    pub fn new(
        db: &Database,
        validated_topic: String,
        notifications_topic: String,
        strict_catalogue: bool,
    ) -> Self {
        Persist {
            orders: db.collection(ORDERS),
            inventory: db.collection(INVENTORY),
            validated_topic,
            notifications_topic,
            strict_catalogue,
        }
    }

    async fn load_catalogue(&self, product_ids: Vec<&str>) -> Result<Catalogue, Transient> {
        if product_ids.is_empty() {
            return Ok(Catalogue::new());
        }
        let docs = find_all(
            &self.inventory,
            doc! {"productId": {"$in": product_ids}},
            "the catalogue",
        )
        .await?;
        let catalogue = docs
            .iter()
            .filter_map(catalogue_entry)
            .map(|entry| (entry.product_id.clone(), entry))
            .collect();
        Ok(catalogue)
    }

    /// Inserts the new documents; returns, by index, those the server
    /// did not take: `None` for a duplicate (stored before), the error for
    /// a refusal for good.
    async fn insert(
        &self,
        docs: &[OrderDocument],
    ) -> Result<HashMap<usize, Option<String>>, Transient> {
        let mut not_taken = HashMap::new();
        match self.orders.insert_many(docs).ordered(false).await {
            Ok(_) => {}
            Err(e) => match e.kind.as_ref() {
                mongodb::error::ErrorKind::InsertMany(ime) if ime.write_concern_error.is_none() => {
                    for we in ime.write_errors.iter().flatten() {
                        let refusal = (we.code != DUPLICATE_KEY)
                            .then(|| format!("{} ({})", we.message, we.code));
                        not_taken.insert(we.index, refusal);
                    }
                }
                // Not attributable to one document: retrying is all we can do.
                _ => return Err(Transient(format!("storing orders: {e}"))),
            },
        }
        Ok(not_taken)
    }

    async fn load_stored(
        &self,
        ids: Vec<&str>,
    ) -> Result<HashMap<String, OrderDocument>, Transient> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let docs = find_all(
            &self.orders,
            doc! {"orderId": {"$in": ids}},
            "stored orders",
        )
        .await?;
        let stored = docs.into_iter().map(|d| (d.order_id.clone(), d)).collect();
        Ok(stored)
    }

    fn emit_one(
        &self,
        stored: &OrderDocument,
        span: &tracing::Span,
    ) -> Result<Outgoing, Transient> {
        if let Some(validated) = stored.to_validated() {
            return NewEvent {
                topic: &self.validated_topic,
                key: &stored.order_id,
                event_type: types::ORDER_VALIDATED,
                source: SOURCE,
                payload: &validated,
            }
            .build(span);
        }
        if stored.validation.accepted {
            return Err(Transient(format!(
                "stored order {} is inconsistent",
                stored.order_id
            )));
        }
        let rejected = OrderRejected {
            order_id: stored.order_id.clone(),
            customer_id: stored.customer_id.clone(),
            reason: stored.validation.reason.clone().unwrap_or_default(),
            detail: stored.validation.detail.clone().unwrap_or_default(),
            rejected_at: OffsetDateTime::now_utc(),
        };
        NewEvent {
            topic: &self.notifications_topic,
            key: &stored.order_id,
            event_type: types::ORDER_REJECTED,
            source: SOURCE,
            payload: &rejected,
        }
        .build(span)
    }
}

fn catalogue_entry(d: &Document) -> Option<CatalogueEntry> {
    let product_id = d.get_str("productId").ok()?.to_owned();
    let cents = match d.get("unitPriceCents")? {
        Bson::Int64(v) => *v,
        Bson::Int32(v) => i64::from(*v),
        _ => return None,
    };
    Some(CatalogueEntry {
        name: d
            .get_str("name")
            .map(str::to_owned)
            .unwrap_or_else(|_| product_id.clone()),
        product_id,
        unit_price: Money::from_minor(cents),
    })
}

/// Decodes an OrderPlaced, or says why the message can never be one.
fn decode_placed(msg: &Received) -> Result<OrderPlaced, Refusal> {
    let order: OrderPlaced = decode(msg, types::ORDER_PLACED)?;
    let valid_id = !order.order_id.is_empty() && order.order_id.len() <= 64;
    if !valid_id
        || order.customer_id.is_empty()
        || order.items.is_empty()
        || order.items.iter().any(|i| i.quantity == 0)
    {
        return Err((
            "invalid_event",
            "orderId, customerId and items with quantity ≥ 1 are required".into(),
        ));
    }
    Ok(order)
}

fn document(
    order: &OrderPlaced,
    msg: &Received,
    catalogue: &Catalogue,
    strict: bool,
    now: OffsetDateTime,
) -> OrderDocument {
    let at = bson_date(now);
    let (status, items, total_cents, validation) =
        match price_order(&order.items, catalogue, strict) {
            Ok(priced) => (
                OrderStatus::Placed,
                priced.items.iter().map(ItemDocument::from).collect(),
                priced.total.minor(),
                Validation {
                    accepted: true,
                    reason: None,
                    detail: None,
                },
            ),
            Err(rejection) => (
                OrderStatus::Rejected,
                order
                    .items
                    .iter()
                    .map(|i| ItemDocument {
                        product_id: i.product_id.clone(),
                        name: i.name.clone().unwrap_or_else(|| i.product_id.clone()),
                        quantity: i64::from(i.quantity),
                        unit_price_cents: i.unit_price.map(Money::minor),
                        line_total_cents: i
                            .unit_price
                            .and_then(|p| p.checked_mul(i.quantity))
                            .map(Money::minor),
                        client_unit_price_cents: None,
                        tracked: false,
                    })
                    .collect(),
                order.total_amount.map(Money::minor).unwrap_or(0),
                Validation {
                    accepted: false,
                    reason: Some(rejection.reason.to_owned()),
                    detail: Some(rejection.detail),
                },
            ),
        };
    let client_total_cents = order
        .client_total
        .or(order.total_amount)
        .map(Money::minor)
        .filter(|c| *c != total_cents);
    OrderDocument {
        order_id: order.order_id.clone(),
        customer_id: order.customer_id.clone(),
        currency: order.currency.clone(),
        status,
        status_reason: validation.reason.clone(),
        items,
        total_cents,
        client_total_cents,
        received_at: bson_date(order.placed_at),
        processed_at: at,
        updated_at: at,
        version: 1,
        history: vec![StatusChange {
            status,
            at,
            reason: validation.reason.clone(),
        }],
        validation,
        source: SourceRef {
            topic: msg.topic().to_owned(),
            partition: msg.partition(),
            offset: msg.offset(),
        },
    }
}

impl Stage for Persist {
    type Input = OrderPlaced;
    type Decision = OrderDocument;
    type Prepared = ();

    fn decode(&self, message: &Received) -> Result<OrderPlaced, Refusal> {
        decode_placed(message)
    }

    fn key<'i>(&self, order: &'i OrderPlaced) -> &'i str {
        &order.order_id
    }

    /// None: `decide` inserts every order it is handed, and one stored
    /// before is a duplicate whose stored document it reads then (the
    /// events are always rebuilt from it). One round trip a batch fewer
    /// than looking them up first, and the same answer.
    async fn decided(&self, _: Vec<String>) -> Result<HashMap<String, OrderDocument>, Transient> {
        Ok(HashMap::new())
    }

    async fn decide(
        &self,
        fresh: &[Fresh<'_, OrderPlaced>],
    ) -> Result<Verdicts<OrderDocument>, Transient> {
        let product_ids: HashSet<&str> = fresh
            .iter()
            .flat_map(|f| f.input.items.iter().map(|i| i.product_id.as_str()))
            .collect();
        let catalogue = self
            .load_catalogue(product_ids.into_iter().collect())
            .await?;
        let now = OffsetDateTime::now_utc();
        let docs: Vec<OrderDocument> = fresh
            .iter()
            .map(|f| document(f.input, f.message, &catalogue, self.strict_catalogue, now))
            .collect();
        // The batch's MongoDB write serves every order's process span, so
        // it is linked to each (OpenTelemetry's way for batches) rather
        // than a child of one.
        let insert_span =
            orderflow_platform::mongo::span("insertMany", orderflow_platform::mongo::ORDERS);
        for f in fresh {
            insert_span.follows_from(f.span);
        }
        let not_taken = self.insert(&docs).instrument(insert_span).await?;
        // Stored meanwhile (an earlier attempt, another member): the stored
        // document is the decision.
        let duplicates = not_taken
            .iter()
            .filter(|(_, refusal)| refusal.is_none())
            .map(|(i, _)| docs[*i].order_id.as_str())
            .collect::<Vec<_>>();
        let mut stored = self.load_stored(duplicates).await?;
        let mut verdicts = Verdicts::with_capacity(docs.len());
        for (i, (f, doc)) in fresh.iter().zip(docs).enumerate() {
            let verdict = match not_taken.get(&i) {
                None => {
                    tracing::info!(
                        parent: f.span,
                        order_id = %doc.order_id,
                        status = %doc.status,
                        total = %Money::from_minor(doc.total_cents),
                        currency = %doc.currency,
                        "order saved"
                    );
                    Ok(doc)
                }
                Some(Some(error)) => Err(("store_refused", error.clone())),
                Some(None) => match stored.remove(&doc.order_id) {
                    Some(stored) => Ok(stored),
                    None => continue,
                },
            };
            verdicts.insert(f.input.order_id.clone(), verdict);
        }
        Ok(verdicts)
    }

    fn emit(
        &self,
        stored: &OrderDocument,
        span: &tracing::Span,
    ) -> Result<Vec<Outgoing>, Transient> {
        Ok(vec![self.emit_one(stored, span)?])
    }
}
