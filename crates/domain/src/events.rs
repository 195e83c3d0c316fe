//! Event payloads that travel between stages, and their CloudEvents types.
//!
//! Payloads are JSON; the envelope (type, id, time, schema version, trace
//! context) travels in Kafka headers, following the CloudEvents Kafka
//! protocol binding in binary mode (see `orderflow_platform::kafka::headers`).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::intake::OrderSubmission;
use crate::money::Money;

/// Version of every payload schema below; bumped on incompatible change.
pub const SCHEMA_VERSION: &str = "1";

/// CloudEvents `type` values.
pub mod types {
    pub const ORDER_PLACED: &str = "dev.orderflow.order.placed";
    pub const ORDER_VALIDATED: &str = "dev.orderflow.order.validated";
    pub const ORDER_REJECTED: &str = "dev.orderflow.order.rejected";
    pub const ORDER_CONFIRMED: &str = "dev.orderflow.order.confirmed";
    pub const STOCK_RESERVED: &str = "dev.orderflow.inventory.reserved";
    pub const LOW_STOCK: &str = "dev.orderflow.inventory.low_stock";
    pub const PAYMENT_APPROVED: &str = "dev.orderflow.payment.approved";
    pub const PAYMENT_DECLINED: &str = "dev.orderflow.payment.declined";
}

/// Published by the producer to `orders` once a request passed validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderPlaced {
    pub order_id: String,
    pub customer_id: String,
    pub currency: String,
    pub items: Vec<PlacedItem>,
    #[serde(default)]
    pub total_amount: Option<Money>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_total: Option<Money>,
    #[serde(with = "time::serde::rfc3339")]
    pub placed_at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlacedItem {
    pub product_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub quantity: u32,
    #[serde(default)]
    pub unit_price: Option<Money>,
}

impl OrderPlaced {
    pub fn from_submission(
        submission: OrderSubmission,
        order_id: String,
        placed_at: OffsetDateTime,
    ) -> Self {
        let total_amount = submission.items_total();
        OrderPlaced {
            order_id,
            customer_id: submission.customer_id,
            currency: submission.currency,
            items: submission
                .items
                .into_iter()
                .map(|i| PlacedItem {
                    product_id: i.product_id,
                    name: i.name,
                    quantity: i.quantity,
                    unit_price: i.unit_price,
                })
                .collect(),
            total_amount,
            client_total: submission.client_total,
            placed_at,
        }
    }
}

/// Published by the persist stage to `orders.validated`: the order as
/// stored, priced by the catalogue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderValidated {
    pub order_id: String,
    pub customer_id: String,
    pub currency: String,
    pub items: Vec<PricedItem>,
    pub total_amount: Money,
    #[serde(with = "time::serde::rfc3339")]
    pub placed_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub validated_at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PricedItem {
    pub product_id: String,
    pub name: String,
    pub quantity: u32,
    pub unit_price: Money,
    pub line_total: Money,
    /// The client's differing price, kept for audit when the catalogue won.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_unit_price: Option<Money>,
    /// Whether the inventory stage tracks stock for this product.
    pub tracked: bool,
}

/// Published to `notifications` when a stage rejects an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderRejected {
    pub order_id: String,
    pub customer_id: String,
    pub reason: String,
    pub detail: String,
    #[serde(with = "time::serde::rfc3339")]
    pub rejected_at: OffsetDateTime,
}

/// Published by the inventory stage to `inventory.events` (key `orderId`)
/// once every tracked item of the order is reserved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StockReserved {
    pub order_id: String,
    pub customer_id: String,
    pub currency: String,
    /// Tracked products only, one entry per product.
    pub items: Vec<ReservedItem>,
    pub total_amount: Money,
    #[serde(with = "time::serde::rfc3339")]
    pub reserved_at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReservedItem {
    pub product_id: String,
    pub quantity: i64,
}

/// Published by the inventory stage to `notifications` (key `productId`)
/// when a reservation takes a product's stock below its threshold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LowStock {
    pub product_id: String,
    pub name: String,
    pub stock: i64,
    pub capacity: i64,
    pub threshold: i64,
    /// The order whose reservation crossed the threshold; with the product
    /// it names the crossing, so each crossing is notified once.
    pub order_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// Published by the payment stage to `payment.events` (key `orderId`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentProcessed {
    pub order_id: String,
    pub customer_id: String,
    pub currency: String,
    pub amount: Money,
    pub approved: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub processed_at: OffsetDateTime,
}

/// Published by the payment stage to `notifications` once an order is paid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderConfirmed {
    pub order_id: String,
    pub customer_id: String,
    pub currency: String,
    pub total_amount: Money,
    #[serde(with = "time::serde::rfc3339")]
    pub confirmed_at: OffsetDateTime,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placed_event_round_trips_exact_money() {
        let json = r#"{"orderId":"o","customerId":"c","currency":"USD",
            "items":[{"productId":"p","quantity":3,"unitPrice":0.10}],
            "totalAmount":0.30,"placedAt":"2026-11-22T10:00:00Z"}"#;
        let ev: OrderPlaced = serde_json::from_str(json).unwrap();
        assert_eq!(ev.total_amount, Some(Money::from_minor(30)));
        let out = serde_json::to_string(&ev).unwrap();
        assert!(out.contains(r#""totalAmount":0.30"#), "{out}");
        assert!(out.contains(r#""unitPrice":0.10"#), "{out}");
        assert_eq!(serde_json::from_str::<OrderPlaced>(&out).unwrap(), ev);
    }

    #[test]
    fn missing_prices_are_null() {
        let json = r#"{"orderId":"o","customerId":"c","currency":"USD",
            "items":[{"productId":"p","quantity":1,"unitPrice":null}],
            "totalAmount":null,"placedAt":"2026-11-22T10:00:00Z"}"#;
        let ev: OrderPlaced = serde_json::from_str(json).unwrap();
        assert_eq!(ev.items[0].unit_price, None);
        assert_eq!(ev.total_amount, None);
    }
}
