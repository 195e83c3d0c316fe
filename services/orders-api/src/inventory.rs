//! `GET /inventory`, `GET|PUT /inventory/{productId}`, `POST /inventory/seed`:
//! the catalogue the persist stage prices from and the stock the inventory
//! stage reserves.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bson::doc;
use futures::TryStreamExt;
use mongodb::options::ReturnDocument;
use orderflow_domain::intake::FieldError;
use orderflow_domain::stock::{low_stock_threshold, MAX_STOCK};
use orderflow_domain::Money;
use orderflow_platform::http::Problem;
use orderflow_platform::mongo::documents::{bson_date, InventoryDocument};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use time::OffsetDateTime;

use crate::orders::internal;
use crate::view::rfc3339;
use crate::AppState;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProductView {
    product_id: String,
    name: String,
    unit_price: Money,
    stock: i64,
    capacity: i64,
    /// The effective threshold (50 % of capacity unless set).
    low_stock_threshold: i64,
    low_stock: bool,
    updated_at: String,
}

impl From<InventoryDocument> for ProductView {
    fn from(d: InventoryDocument) -> Self {
        let threshold = low_stock_threshold(d.capacity, d.low_stock_threshold);
        ProductView {
            low_stock: d.stock < threshold,
            low_stock_threshold: threshold,
            product_id: d.product_id,
            name: d.name,
            unit_price: Money::from_minor(d.unit_price_cents),
            stock: d.stock,
            capacity: d.capacity,
            updated_at: rfc3339(d.updated_at),
        }
    }
}

/// A list of products. Typed, not `json!`: a `Value` would turn the exact
/// prices into floats (ADR 0001).
#[derive(Serialize)]
struct Products {
    #[serde(skip_serializing_if = "Option::is_none")]
    created: Option<u32>,
    items: Vec<ProductView>,
}

/// The products matching `filter`, by productId.
async fn products(state: &AppState, filter: bson::Document) -> Result<Vec<ProductView>, Problem> {
    let found: Vec<InventoryDocument> = state
        .inventory
        .find(filter)
        .sort(doc! {"productId": 1})
        .await
        .map_err(internal)?
        .try_collect()
        .await
        .map_err(internal)?;
    Ok(found.into_iter().map(ProductView::from).collect())
}

pub(crate) async fn list(State(state): State<AppState>) -> Result<Response, Problem> {
    let items = products(&state, doc! {}).await?;
    Ok(Json(Products {
        created: None,
        items,
    })
    .into_response())
}

pub(crate) async fn get_one(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let product = state
        .inventory
        .find_one(doc! {"productId": &id})
        .await
        .map_err(internal)?
        .ok_or_else(|| Problem::not_found(format!("no product with id '{id}'")))?;
    Ok(Json(ProductView::from(product)).into_response())
}

/// The PUT body, read field by field so every violation is reported.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ProductInput {
    name: Option<Box<RawValue>>,
    stock: Option<Box<RawValue>>,
    capacity: Option<Box<RawValue>>,
    unit_price: Option<Box<RawValue>>,
    low_stock_threshold: Option<Box<RawValue>>,
}

/// A valid product, or every reason it is not.
pub fn validate(product_id: &str, body: &[u8]) -> Result<InventoryDocument, Problem> {
    let input: ProductInput = crate::parse_body(body)?;
    let mut errors = Vec::new();
    let mut fail = |field: &str, message: &str| {
        errors.push(FieldError {
            field: field.into(),
            message: message.into(),
        })
    };
    if product_id.is_empty() || product_id.len() > 64 {
        fail("productId", "must be 1–64 characters");
    }
    let name = match input
        .name
        .as_deref()
        .map(|r| serde_json::from_str::<String>(r.get()))
    {
        Some(Ok(n)) if !n.trim().is_empty() && n.chars().count() <= 200 => Some(n),
        Some(Ok(_)) => {
            fail("name", "must be 1–200 characters");
            None
        }
        Some(Err(_)) => {
            fail("name", "must be a string");
            None
        }
        None => {
            fail("name", "is required");
            None
        }
    };
    let mut integer = |field: &str, raw: &Option<Box<RawValue>>, required: bool| -> Option<i64> {
        match raw.as_deref().map(|r| serde_json::from_str::<i64>(r.get())) {
            Some(Ok(v)) if (0..=MAX_STOCK).contains(&v) => Some(v),
            Some(_) => {
                fail(
                    field,
                    &format!("must be a whole number from 0 to {MAX_STOCK}"),
                );
                None
            }
            None if required => {
                fail(field, "is required");
                None
            }
            None => None,
        }
    };
    let stock = integer("stock", &input.stock, true);
    let capacity = integer("capacity", &input.capacity, true);
    let threshold = integer("lowStockThreshold", &input.low_stock_threshold, false);
    let unit_price = match input.unit_price.as_deref().map(|r| Money::parse(r.get())) {
        Some(Ok(p)) if !p.is_negative() => Some(p),
        Some(_) => {
            fail("unitPrice", "must be a number ≥ 0 with at most 2 decimals");
            None
        }
        None => {
            fail("unitPrice", "is required");
            None
        }
    };
    if let (Some(s), Some(c)) = (stock, capacity) {
        if s > c {
            fail("stock", "must not exceed capacity");
        }
    }
    if let (Some(t), Some(c)) = (threshold, capacity) {
        if t > c {
            fail("lowStockThreshold", "must not exceed capacity");
        }
    }
    match (name, stock, capacity, unit_price) {
        (Some(name), Some(stock), Some(capacity), Some(price)) if errors.is_empty() => {
            Ok(InventoryDocument {
                product_id: product_id.to_owned(),
                name,
                unit_price_cents: price.minor(),
                stock,
                capacity,
                low_stock_threshold: threshold,
                updated_at: bson_date(OffsetDateTime::now_utc()),
            })
        }
        _ => Err(Problem::validation(errors)),
    }
}

pub(crate) async fn put_one(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, Problem> {
    let product = validate(&id, &body)?;
    let before = state
        .inventory
        .find_one_and_replace(doc! {"productId": &id}, &product)
        .upsert(true)
        .return_document(ReturnDocument::Before)
        .await
        .map_err(internal)?;
    tracing::info!(product_id = %id, stock = product.stock, "product saved");
    let status = if before.is_some() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(ProductView::from(product))).into_response())
}

/// The demo catalogue.
pub const DEMO: [(&str, &str, i64, i64); 6] = [
    ("coffee", "Coffee beans 250 g", 450, 200),
    ("tea", "Green tea, 20 bags", 375, 150),
    ("mug", "Enamel mug", 1200, 80),
    ("cookies", "Oat cookies", 299, 300),
    ("notebook", "Dotted notebook A5", 850, 100),
    ("beans", "Espresso beans 1 kg", 2400, 60),
];

/// Adds the demo products that are missing; existing ones keep their
/// stock and prices, so seeding twice changes nothing.
pub(crate) async fn seed(State(state): State<AppState>) -> Result<Response, Problem> {
    let now = bson_date(OffsetDateTime::now_utc());
    let mut created = 0;
    for (id, name, cents, capacity) in DEMO {
        let result = state
            .inventory
            .update_one(
                doc! {"productId": id},
                doc! {"$setOnInsert": {
                    "productId": id, "name": name, "unitPriceCents": cents,
                    "stock": capacity, "capacity": capacity, "updatedAt": now,
                }},
            )
            .upsert(true)
            .await
            .map_err(internal)?;
        if result.upserted_id.is_some() {
            created += 1;
        }
    }
    tracing::info!(created, "demo catalogue seeded");
    let items = products(
        &state,
        doc! {"productId": {"$in": DEMO.map(|d| d.0).to_vec()}},
    )
    .await?;
    Ok(Json(Products {
        created: Some(created),
        items,
    })
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_product_keeps_exact_money() {
        let p = validate(
            "mug",
            br#"{"name":"Mug","stock":5,"capacity":10,"unitPrice":12.10,"lowStockThreshold":3}"#,
        )
        .unwrap();
        assert_eq!(p.unit_price_cents, 1210);
        assert_eq!(p.low_stock_threshold, Some(3));
    }

    #[test]
    fn every_violation_is_listed() {
        let e = validate(
            "mug",
            br#"{"name":"","stock":-1,"capacity":"ten","unitPrice":1.234}"#,
        )
        .unwrap_err();
        let fields: Vec<&str> = e.errors.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, ["name", "stock", "capacity", "unitPrice"]);
        let e = validate(
            "mug",
            br#"{"name":"M","stock":11,"capacity":10,"unitPrice":1,"lowStockThreshold":12}"#,
        )
        .unwrap_err();
        let fields: Vec<&str> = e.errors.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, ["stock", "lowStockThreshold"]);
        assert_eq!(validate("mug", b"[").unwrap_err().status, 400);
        assert_eq!(validate("mug", br#"{"nope":1}"#).unwrap_err().status, 422);
    }
}
