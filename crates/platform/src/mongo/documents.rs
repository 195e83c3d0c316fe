//! The documents orderflow keeps in MongoDB. Amounts are integer minor units
//! (`…Cents`), so aggregations over them are exact.

use bson::DateTime;
use orderflow_domain::events::{OrderValidated, PricedItem};
use orderflow_domain::{Money, OrderStatus};
use serde::{Deserialize, Serialize};

/// One order in the `orders` collection (unique `orderId`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderDocument {
    pub order_id: String,
    pub customer_id: String,
    pub currency: String,
    pub status: OrderStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    pub items: Vec<ItemDocument>,
    pub total_cents: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_total_cents: Option<i64>,
    /// When the producer accepted the order.
    pub received_at: DateTime,
    /// When the persist stage stored it.
    pub processed_at: DateTime,
    pub updated_at: DateTime,
    /// Incremented on every change; the basis of ETag / If-Match.
    pub version: i64,
    pub history: Vec<StatusChange>,
    /// What the persist stage decided, so a replay emits the same event.
    pub validation: Validation,
    pub source: SourceRef,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ItemDocument {
    pub product_id: String,
    pub name: String,
    pub quantity: i64,
    /// `None` only on a rejected order whose item carried no price.
    pub unit_price_cents: Option<i64>,
    pub line_total_cents: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_unit_price_cents: Option<i64>,
    pub tracked: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusChange {
    pub status: OrderStatus,
    pub at: DateTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Validation {
    pub accepted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Where the order came from in Kafka.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceRef {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

impl From<&PricedItem> for ItemDocument {
    fn from(i: &PricedItem) -> Self {
        ItemDocument {
            product_id: i.product_id.clone(),
            name: i.name.clone(),
            quantity: i64::from(i.quantity),
            unit_price_cents: Some(i.unit_price.minor()),
            line_total_cents: Some(i.line_total.minor()),
            client_unit_price_cents: i.client_unit_price.map(Money::minor),
            tracked: i.tracked,
        }
    }
}

pub fn offset_date_time(dt: DateTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(dt.timestamp_millis()) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

pub fn bson_date(t: time::OffsetDateTime) -> DateTime {
    DateTime::from_millis((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

impl OrderDocument {
    /// An accepted order as stored without the pipeline (the read
    /// benchmarks' data set, tests): `status` since `at`, its only history
    /// entry; received, processed and updated at `at`; version 1; the total
    /// its items' line totals.
    pub fn accepted(
        order_id: impl Into<String>,
        customer_id: impl Into<String>,
        currency: &str,
        items: Vec<ItemDocument>,
        status: OrderStatus,
        at: DateTime,
        source: SourceRef,
    ) -> Self {
        OrderDocument {
            order_id: order_id.into(),
            customer_id: customer_id.into(),
            currency: currency.to_owned(),
            status,
            status_reason: None,
            total_cents: items.iter().filter_map(|i| i.line_total_cents).sum(),
            items,
            client_total_cents: None,
            received_at: at,
            processed_at: at,
            updated_at: at,
            version: 1,
            history: vec![StatusChange {
                status,
                at,
                reason: None,
            }],
            validation: Validation {
                accepted: true,
                reason: None,
                detail: None,
            },
            source,
        }
    }

    /// The OrderValidated event of an accepted order, rebuilt from what is
    /// stored, so a redelivered message re-emits exactly the same facts.
    pub fn to_validated(&self) -> Option<OrderValidated> {
        if !self.validation.accepted {
            return None;
        }
        let items = self
            .items
            .iter()
            .map(|i| {
                Some(PricedItem {
                    product_id: i.product_id.clone(),
                    name: i.name.clone(),
                    quantity: u32::try_from(i.quantity).ok()?,
                    unit_price: Money::from_minor(i.unit_price_cents?),
                    line_total: Money::from_minor(i.line_total_cents?),
                    client_unit_price: i.client_unit_price_cents.map(Money::from_minor),
                    tracked: i.tracked,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(OrderValidated {
            order_id: self.order_id.clone(),
            customer_id: self.customer_id.clone(),
            currency: self.currency.clone(),
            items,
            total_amount: Money::from_minor(self.total_cents),
            placed_at: offset_date_time(self.received_at),
            validated_at: offset_date_time(self.processed_at),
        })
    }
}

/// One product in the `inventory` collection (unique `productId`): the
/// catalogue entry and its stock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InventoryDocument {
    pub product_id: String,
    pub name: String,
    pub unit_price_cents: i64,
    pub stock: i64,
    pub capacity: i64,
    /// Stock below this is low; 50 % of capacity when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_stock_threshold: Option<i64>,
    pub updated_at: DateTime,
}

/// Where an order's stock reservation stands.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReservationState {
    /// Stock taken, payment pending.
    Reserved,
    /// Paid: the stock is sold.
    Committed,
    /// Given back (payment declined or order cancelled).
    Released,
    /// Not enough stock; nothing was taken.
    Rejected,
    /// The order had left `placed` (cancelled) before the stage saw it.
    Skipped,
}

/// The inventory stage's decision for one order (`reservations`, `_id` =
/// orderId): written in the same transaction as the stock it took, so a
/// redelivered order finds it and takes nothing twice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReservationDocument {
    #[serde(rename = "_id")]
    pub order_id: String,
    pub customer_id: String,
    pub currency: String,
    pub total_cents: i64,
    pub state: ReservationState,
    pub items: Vec<ReservedItemDocument>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Low-stock thresholds this reservation crossed.
    #[serde(default)]
    pub low_stock: Vec<LowStockCrossing>,
    pub created_at: DateTime,
    pub updated_at: DateTime,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReservedItemDocument {
    pub product_id: String,
    pub quantity: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LowStockCrossing {
    pub product_id: String,
    pub name: String,
    pub stock: i64,
    pub capacity: i64,
    pub threshold: i64,
}

/// The payment stage's decision for one order (`payments`, `_id` = orderId).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentDocument {
    #[serde(rename = "_id")]
    pub order_id: String,
    pub customer_id: String,
    pub currency: String,
    pub amount_cents: i64,
    pub outcome: PaymentOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub processed_at: DateTime,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PaymentOutcome {
    Approved,
    Declined,
    /// The reservation was gone (order cancelled) before payment ran.
    Skipped,
}

/// One notification delivered (or given up on) over one channel
/// (`notifications`, `_id` = `<notification key>/<channel>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryDocument {
    #[serde(rename = "_id")]
    pub id: String,
    pub key: String,
    pub kind: String,
    pub channel: String,
    pub recipient: String,
    pub subject: String,
    pub status: DeliveryStatus,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub at: DateTime,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    Delivered,
    Failed,
}

/// The update moving an order to `to` (with a reason) and recording it: use
/// with a filter on the status it must be in, so a concurrent change makes
/// the update match nothing instead of overwriting it.
pub fn status_change(to: OrderStatus, reason: Option<&str>, at: DateTime) -> bson::Document {
    let mut change = bson::doc! {"status": to.as_str(), "at": at};
    let mut set = bson::doc! {"status": to.as_str(), "updatedAt": at};
    match reason {
        Some(r) => {
            change.insert("reason", r);
            set.insert("statusReason", r);
        }
        None => {
            set.insert("statusReason", bson::Bson::Null);
        }
    }
    bson::doc! {
        "$set": set,
        "$inc": {"version": 1},
        "$push": {"history": change},
    }
}
