//! `GET /orders`, `GET /orders/{id}`, `GET /orders/stats`.

use std::collections::{BTreeMap, HashMap};

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bson::{doc, DateTime, Document};
use futures::TryStreamExt;
use orderflow_domain::intake::FieldError;
use orderflow_domain::{Money, OrderStatus};
use orderflow_platform::http::Problem;
use orderflow_platform::mongo::documents::OrderDocument;
use serde::Serialize;
use std::time::Duration;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Date, OffsetDateTime};

use crate::view::OrderView;
use crate::AppState;

pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 500;

pub(crate) fn etag(version: i64) -> String {
    format!("\"{version}\"")
}

pub(crate) fn internal(e: impl std::fmt::Display) -> Problem {
    tracing::error!(error = %e, "orders query failed");
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "storage-unavailable",
        "orders cannot be read right now",
    )
    .with_retry_after(std::time::Duration::from_secs(1))
}

/// Position after the last order of a page, in the list's sort order
/// (receivedAt desc, orderId desc). Opaque to clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub received_ms: i64,
    pub order_id: String,
}

impl Cursor {
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}|{}", self.received_ms, self.order_id))
    }

    pub fn decode(s: &str) -> Option<Cursor> {
        let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(s).ok()?).ok()?;
        let (ms, id) = raw.split_once('|')?;
        Some(Cursor {
            received_ms: ms.parse().ok()?,
            order_id: id.to_owned(),
        })
    }

    fn filter(&self) -> Document {
        let at = DateTime::from_millis(self.received_ms);
        doc! {"$or": [
            {"receivedAt": {"$lt": at}},
            {"receivedAt": at, "orderId": {"$lt": &self.order_id}},
        ]}
    }
}

/// `YYYY-MM-DD` (midnight UTC) or an RFC 3339 timestamp.
fn parse_instant(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).ok().or_else(|| {
        Date::parse(s, format_description!("[year]-[month]-[day]"))
            .ok()
            .map(|d| d.midnight().assume_utc())
    })
}

fn bson_at(t: OffsetDateTime) -> DateTime {
    orderflow_platform::mongo::documents::bson_date(t)
}

#[derive(Debug, PartialEq)]
pub struct ListQuery {
    pub filter: Document,
    pub limit: i64,
}

/// Validates the list parameters, reporting every violation.
pub fn parse_list_query(params: &HashMap<String, String>) -> Result<ListQuery, Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut err = |field: &str, message: &str| {
        errors.push(FieldError {
            field: field.into(),
            message: message.into(),
        })
    };
    let mut clauses: Vec<Document> = Vec::new();
    if let Some(s) = params.get("status") {
        match OrderStatus::parse(s) {
            Some(st) => clauses.push(doc! {"status": st.as_str()}),
            None => err("status", "must be one of placed, reserved, confirmed, rejected, shipped, delivered, cancelled"),
        }
    }
    if let Some(c) = params.get("customerId") {
        clauses.push(doc! {"customerId": c});
    }
    let mut range = Document::new();
    for (field, op) in [("from", "$gte"), ("to", "$lt")] {
        if let Some(v) = params.get(field) {
            match parse_instant(v) {
                Some(t) => {
                    range.insert(op, bson_at(t));
                }
                None => err(
                    field,
                    "must be a date (YYYY-MM-DD) or an RFC 3339 timestamp",
                ),
            }
        }
    }
    if !range.is_empty() {
        clauses.push(doc! {"receivedAt": range});
    }
    let limit = match params.get("limit").map(|l| l.parse::<i64>()) {
        None => DEFAULT_LIMIT,
        Some(Ok(l)) if (1..=MAX_LIMIT).contains(&l) => l,
        Some(_) => {
            err("limit", "must be an integer from 1 to 500");
            DEFAULT_LIMIT
        }
    };
    if let Some(c) = params.get("cursor") {
        match Cursor::decode(c) {
            Some(cursor) => clauses.push(cursor.filter()),
            None => err("cursor", "is not a cursor this API returned"),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let filter = match clauses.len() {
        0 => Document::new(),
        1 => clauses.pop().expect("one clause"),
        _ => doc! {"$and": clauses},
    };
    Ok(ListQuery { filter, limit })
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Page {
    items: Vec<OrderView>,
    next_cursor: Option<String>,
}

pub(crate) async fn list(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, Problem> {
    let query = parse_list_query(&params).map_err(Problem::validation)?;
    let mut docs: Vec<_> = state
        .orders
        .find(query.filter)
        .sort(doc! {"receivedAt": -1, "orderId": -1})
        .limit(query.limit + 1)
        .await
        .map_err(internal)?
        .try_collect()
        .await
        .map_err(internal)?;
    let next_cursor = if docs.len() as i64 > query.limit {
        docs.truncate(query.limit as usize);
        docs.last().map(|d| {
            Cursor {
                received_ms: d.received_at.timestamp_millis(),
                order_id: d.order_id.clone(),
            }
            .encode()
        })
    } else {
        None
    };
    let items = docs.into_iter().map(OrderView::from).collect();
    Ok(Json(Page { items, next_cursor }).into_response())
}

/// What `?waitFor=` waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitFor {
    Status(OrderStatus),
    /// The pipeline has decided (past placed / reserved).
    Settled,
}

impl WaitFor {
    fn reached(self, s: OrderStatus) -> bool {
        match self {
            WaitFor::Status(t) => s == t,
            WaitFor::Settled => s.is_settled(),
        }
    }

    /// Waiting longer cannot help.
    fn unreachable(self, s: OrderStatus) -> bool {
        match self {
            WaitFor::Status(t) => !s.can_reach(t),
            WaitFor::Settled => false,
        }
    }
}

pub const DEFAULT_WAIT: Duration = Duration::from_secs(5);
pub const MAX_WAIT: Duration = Duration::from_secs(30);

/// `waitFor` and `timeout` (seconds, or a duration such as `1500ms`).
pub fn parse_wait(
    params: &HashMap<String, String>,
) -> Result<Option<(WaitFor, Duration)>, Vec<FieldError>> {
    let mut errors = Vec::new();
    let wait = match params.get("waitFor").map(String::as_str) {
        None => None,
        Some("final") => Some(WaitFor::Settled),
        Some(s) => match OrderStatus::parse(s) {
            Some(st) => Some(WaitFor::Status(st)),
            None => {
                errors.push(FieldError {
                    field: "waitFor".into(),
                    message: format!("'{s}' is neither a status nor 'final'"),
                });
                None
            }
        },
    };
    let timeout = match params.get("timeout") {
        None => DEFAULT_WAIT,
        Some(t) => {
            let parsed = t
                .parse::<u64>()
                .map(Duration::from_secs)
                .or_else(|_| humantime::parse_duration(t));
            match parsed {
                Ok(d) if d <= MAX_WAIT => d,
                _ => {
                    errors.push(FieldError {
                        field: "timeout".into(),
                        message: "must be a duration of at most 30 s (e.g. 10 or 1500ms)".into(),
                    });
                    DEFAULT_WAIT
                }
            }
        }
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(wait.map(|w| (w, timeout)))
}

pub(crate) async fn get_one(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, Problem> {
    let wait = parse_wait(&params).map_err(Problem::validation)?;
    let find = || async {
        state
            .orders
            .find_one(doc! {"orderId": &id})
            .await
            .map_err(internal)
    };
    let not_found = || Problem::not_found(format!("no order with id '{id}'"));
    let Some((target, timeout)) = wait else {
        let doc = find().await?.ok_or_else(not_found)?;
        return Ok(respond(doc, false));
    };
    // Long-poll: the order may not even be stored yet right after the POST.
    // One look first; then the process's one watcher tells this waiter of
    // every change (watch.rs), and one last look at the deadline.
    let deadline = tokio::time::Instant::now() + timeout;
    let decided = |d: &OrderDocument| target.reached(d.status) || target.unreachable(d.status);
    if let Some(d) = find().await? {
        if decided(&d) {
            let reached = target.reached(d.status);
            return Ok(respond(d, reached));
        }
    }
    let mut waiter = state.watcher.wait_for(&id).map_err(|_| {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too-many-waiters",
            "every waitFor place is taken; retry shortly, or ask without waitFor",
        )
        .with_retry_after(Duration::from_secs(1))
    })?;
    while let Ok(Ok(())) = tokio::time::timeout_at(deadline, waiter.latest.changed()).await {
        let latest = waiter.latest.borrow_and_update().clone();
        if let Some(d) = latest.filter(|d| decided(d)) {
            let reached = target.reached(d.status);
            return Ok(respond(OrderDocument::clone(&d), reached));
        }
    }
    drop(waiter);
    match find().await? {
        Some(d) => {
            let reached = target.reached(d.status);
            Ok(respond(d, reached))
        }
        None => Err(not_found()),
    }
}

fn respond(doc: OrderDocument, wait_applied: bool) -> Response {
    let mut response = (
        [(header::ETAG, etag(doc.version))],
        Json(OrderView::from(doc)),
    )
        .into_response();
    if wait_applied {
        response.headers_mut().insert(
            header::HeaderName::from_static("preference-applied"),
            header::HeaderValue::from_static("wait"),
        );
    }
    response
}

/// Deletes an order the pipeline is done with. An order still in flight
/// (placed, or reserved with its payment pending) is refused with 409: the
/// stages would go on working on it, and the stock it holds would never be
/// released. The filter makes the check and the delete one step.
pub(crate) async fn delete_one(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let in_flight: Vec<&str> = OrderStatus::ALL
        .into_iter()
        .filter(|s| s.in_flight())
        .map(OrderStatus::as_str)
        .collect();
    let result = state
        .orders
        .delete_one(doc! {"orderId": &id, "status": {"$nin": &in_flight}})
        .await
        .map_err(internal)?;
    if result.deleted_count == 1 {
        tracing::info!(order_id = %id, "order deleted");
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    match state
        .orders
        .find_one(doc! {"orderId": &id})
        .await
        .map_err(internal)?
    {
        None => Err(Problem::not_found(format!("no order with id '{id}'"))),
        Some(order) => Err(Problem::new(
            StatusCode::CONFLICT,
            "order-in-flight",
            format!(
                "order '{id}' is {}: the pipeline is still working on it (its stock may be reserved); delete it once it is final (GET /orders/{id}?waitFor=final)",
                order.status.as_str()
            ),
        )),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Stats {
    total_orders: i64,
    count_by_status: BTreeMap<String, i64>,
    /// Σ totals of paid orders (confirmed, shipped, delivered).
    total_revenue: Money,
    average_order_value: Option<Money>,
    /// Σ totals of orders still on their way to payment (placed, reserved).
    pending_amount: Money,
    today: Today,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Today {
    date: String,
    orders: i64,
    revenue: Money,
}

/// Count and Σ totalCents per status, computed by MongoDB.
async fn by_status(
    state: &AppState,
    matcher: Document,
) -> Result<HashMap<String, (i64, i64)>, Problem> {
    let pipeline = [
        doc! {"$match": matcher},
        doc! {"$group": {"_id": "$status", "count": {"$sum": 1}, "cents": {"$sum": "$totalCents"}}},
    ];
    let rows: Vec<Document> = state
        .orders
        .clone_with_type::<Document>()
        .aggregate(pipeline)
        .await
        .map_err(internal)?
        .try_collect()
        .await
        .map_err(internal)?;
    let number = orderflow_platform::mongo::number;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let status = r.get_str("_id").ok()?.to_owned();
            Some((status, (number(r.get("count")), number(r.get("cents")))))
        })
        .collect())
}

fn revenue(rows: &HashMap<String, (i64, i64)>, counts: impl Fn(OrderStatus) -> bool) -> (i64, i64) {
    rows.iter()
        .filter(|(s, _)| OrderStatus::parse(s).is_some_and(&counts))
        .fold((0, 0), |(n, c), (_, (rn, rc))| (n + rn, c + rc))
}

pub(crate) async fn stats(State(state): State<AppState>) -> Result<Response, Problem> {
    let all = by_status(&state, doc! {}).await?;
    let today_start = OffsetDateTime::now_utc().date().midnight().assume_utc();
    let today = by_status(&state, doc! {"receivedAt": {"$gte": bson_at(today_start)}}).await?;

    let (paid_orders, paid_cents) = revenue(&all, OrderStatus::is_paid);
    let (_, pending_cents) = revenue(&all, |s| !s.is_settled());
    let average = Money::average(Money::from_minor(paid_cents), paid_orders);
    let stats = Stats {
        total_orders: all.values().map(|(n, _)| n).sum(),
        count_by_status: all.iter().map(|(k, (n, _))| (k.clone(), *n)).collect(),
        total_revenue: Money::from_minor(paid_cents),
        average_order_value: average,
        pending_amount: Money::from_minor(pending_cents),
        today: Today {
            date: today_start.date().to_string(),
            orders: today.values().map(|(n, _)| n).sum(),
            revenue: Money::from_minor(revenue(&today, OrderStatus::is_paid).1),
        },
    };
    Ok(Json(stats).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let c = Cursor {
            received_ms: 1_795_000_000_123,
            order_id: "o|with:odd.chars".into(),
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        assert_eq!(Cursor::decode("not-a-cursor!"), None);
        assert_eq!(Cursor::decode(&URL_SAFE_NO_PAD.encode("x|y")), None);
    }

    #[test]
    fn every_bad_parameter_is_reported() {
        let errs = parse_list_query(&params(&[
            ("status", "lost"),
            ("from", "yesterday"),
            ("limit", "501"),
            ("cursor", "zz"),
        ]))
        .unwrap_err();
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["status", "from", "limit", "cursor"]);
        assert!(parse_list_query(&params(&[("limit", "0")])).is_err());
        assert!(parse_list_query(&params(&[("limit", "ten")])).is_err());
    }

    #[test]
    fn wait_parameters() {
        assert_eq!(parse_wait(&params(&[])), Ok(None));
        assert_eq!(
            parse_wait(&params(&[("waitFor", "confirmed")])),
            Ok(Some((
                WaitFor::Status(OrderStatus::Confirmed),
                DEFAULT_WAIT
            )))
        );
        assert_eq!(
            parse_wait(&params(&[("waitFor", "final"), ("timeout", "1500ms")])),
            Ok(Some((WaitFor::Settled, Duration::from_millis(1500))))
        );
        let errors = parse_wait(&params(&[("waitFor", "paid"), ("timeout", "31")])).unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["waitFor", "timeout"]);
        assert!(WaitFor::Status(OrderStatus::Confirmed).unreachable(OrderStatus::Rejected));
        assert!(!WaitFor::Status(OrderStatus::Confirmed).unreachable(OrderStatus::Reserved));
    }

    #[test]
    fn filters_combine() {
        let q = parse_list_query(&params(&[
            ("status", "placed"),
            ("customerId", "c-1"),
            ("from", "2026-11-01"),
            ("to", "2026-11-22T10:00:00Z"),
            ("limit", "500"),
        ]))
        .unwrap();
        assert_eq!(q.limit, 500);
        let and = q.filter.get_array("$and").unwrap();
        assert_eq!(and.len(), 3);
        assert_eq!(parse_list_query(&params(&[])).unwrap().limit, DEFAULT_LIMIT);
    }
}
