//! The JSON shape of an order. Typed, so money stays an exact decimal.

use orderflow_domain::{Money, OrderStatus};
use orderflow_platform::mongo::documents::{ItemDocument, OrderDocument, StatusChange};
use serde::Serialize;
use time::format_description::well_known::Rfc3339;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderView {
    order_id: String,
    customer_id: String,
    currency: String,
    status: OrderStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    status_reason: Option<String>,
    items: Vec<ItemView>,
    total_amount: Money,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_total: Option<Money>,
    received_at: String,
    processed_at: String,
    updated_at: String,
    version: i64,
    history: Vec<HistoryView>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ItemView {
    product_id: String,
    name: String,
    quantity: i64,
    unit_price: Option<Money>,
    line_total: Option<Money>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_unit_price: Option<Money>,
    tracked: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HistoryView {
    status: OrderStatus,
    at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

pub fn rfc3339(dt: bson::DateTime) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(dt.timestamp_millis()) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

impl From<OrderDocument> for OrderView {
    fn from(d: OrderDocument) -> Self {
        OrderView {
            order_id: d.order_id,
            customer_id: d.customer_id,
            currency: d.currency,
            status: d.status,
            status_reason: d.status_reason,
            items: d.items.into_iter().map(ItemView::from).collect(),
            total_amount: Money::from_minor(d.total_cents),
            client_total: d.client_total_cents.map(Money::from_minor),
            received_at: rfc3339(d.received_at),
            processed_at: rfc3339(d.processed_at),
            updated_at: rfc3339(d.updated_at),
            version: d.version,
            history: d.history.into_iter().map(HistoryView::from).collect(),
        }
    }
}

impl From<ItemDocument> for ItemView {
    fn from(i: ItemDocument) -> Self {
        ItemView {
            product_id: i.product_id,
            name: i.name,
            quantity: i.quantity,
            unit_price: i.unit_price_cents.map(Money::from_minor),
            line_total: i.line_total_cents.map(Money::from_minor),
            client_unit_price: i.client_unit_price_cents.map(Money::from_minor),
            tracked: i.tracked,
        }
    }
}

impl From<StatusChange> for HistoryView {
    fn from(h: StatusChange) -> Self {
        HistoryView {
            status: h.status,
            at: rfc3339(h.at),
            reason: h.reason,
        }
    }
}
