//! Compatibility routes: the intake paths of the systems orderflow
//! replaces, on the same handler as `POST /orders` (validation, the
//! broker's acknowledgement, the Redis list, idempotent re-posts), answering
//! in the shape each system's clients read. Errors stay orderflow's RFC 9457
//! problems. See `docs/compatibility.md`.
//!
//! - `POST /api/v1/orders`, `POST /api/v1/order`: the Express system
//!   (reference 002). `201 {"message": "Order event sent", "event": {...}}`.
//! - `POST /order`: the NestJS stock service (reference 004). `201` with the
//!   created `Order` object.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use orderflow_domain::events::{OrderPlaced, PlacedItem};
use orderflow_domain::Money;
use orderflow_platform::http::Problem;
use serde::Serialize;
use time::format_description::well_known::Rfc3339;

use crate::orders::{accept, location};
use crate::AppState;

/// The order as the replaced systems showed it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct LegacyOrder<'a> {
    id: &'a str,
    customer_id: &'a str,
    /// The first item's product and quantity: the one-product shape of
    /// reference 002 reads these.
    product_id: &'a str,
    quantity: u32,
    items: &'a [PlacedItem],
    total_amount: Option<Money>,
    currency: &'a str,
    status: &'static str,
    created_at: String,
}

impl<'a> LegacyOrder<'a> {
    fn of(event: &'a OrderPlaced, status: &'static str) -> Self {
        let first = event.items.first();
        LegacyOrder {
            id: &event.order_id,
            customer_id: &event.customer_id,
            product_id: first.map(|i| i.product_id.as_str()).unwrap_or_default(),
            quantity: first.map(|i| i.quantity).unwrap_or_default(),
            items: &event.items,
            total_amount: event.total_amount,
            currency: &event.currency,
            status,
            created_at: event.placed_at.format(&Rfc3339).unwrap_or_default(),
        }
    }
}

#[derive(Serialize)]
struct ExpressAnswer<'a> {
    message: &'static str,
    event: LegacyOrder<'a>,
}

/// `POST /api/v1/orders` and `POST /api/v1/order` (reference 002).
pub(crate) async fn express(
    State(state): State<Arc<AppState>>,
    request_headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, Problem> {
    let event = accept(&state, &request_headers, body).await?;
    let answer = ExpressAnswer {
        message: "Order event sent",
        event: LegacyOrder::of(&event, "pending"),
    };
    Ok((StatusCode::CREATED, location(&event), Json(answer)).into_response())
}

/// `POST /order` (reference 004): the created order.
pub(crate) async fn nest(
    State(state): State<Arc<AppState>>,
    request_headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, Problem> {
    let event = accept(&state, &request_headers, body).await?;
    Ok((
        StatusCode::CREATED,
        location(&event),
        Json(LegacyOrder::of(&event, "queued")),
    )
        .into_response())
}
