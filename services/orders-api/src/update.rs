//! `PATCH /orders/{id}`: the status changes a client may make, with
//! optimistic concurrency (`ETag` = `"<version>"`, `If-Match`), and
//! cancellation giving reserved stock back in the same transaction (ADR 0004).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bson::doc;
use orderflow_domain::intake::FieldError;
use orderflow_domain::status::TransitionError;
use orderflow_domain::OrderStatus;
use orderflow_platform::http::Problem;
use orderflow_platform::in_transaction;
use orderflow_platform::mongo::documents::{bson_date, status_change, OrderDocument};
use orderflow_platform::mongo::{stock, Tx};
use serde::Deserialize;
use time::OffsetDateTime;

use crate::orders::{etag, internal};
use crate::view::OrderView;
use crate::AppState;

pub const CANCELLED_BY_CLIENT: &str = "cancelled_by_client";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Patch {
    status: Option<serde_json::Value>,
}

/// What `If-Match` asks for: any version, or one of these.
#[derive(Debug, PartialEq, Eq)]
pub enum IfMatch {
    Any,
    Versions(Vec<i64>),
}

/// Parses `If-Match: "3"`, `W/"3"`, `"3", "4"` or `*`; `None` when absent,
/// `Err` when unreadable.
pub fn parse_if_match(headers: &HeaderMap) -> Result<Option<IfMatch>, ()> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value.to_str().map_err(|_| ())?.trim();
    if text == "*" {
        return Ok(Some(IfMatch::Any));
    }
    let versions = text
        .split(',')
        .map(|tag| {
            let tag = tag.trim();
            let tag = tag.strip_prefix("W/").unwrap_or(tag);
            tag.strip_prefix('"')
                .and_then(|t| t.strip_suffix('"'))
                .and_then(|t| t.parse::<i64>().ok())
                .ok_or(())
        })
        .collect::<Result<Vec<_>, ()>>()?;
    Ok(Some(IfMatch::Versions(versions)))
}

fn precondition_failed(current: i64) -> Problem {
    Problem::new(
        StatusCode::PRECONDITION_FAILED,
        "precondition-failed",
        format!("the order changed: its current version is {current}; GET it again"),
    )
}

fn parse_patch(body: &[u8]) -> Result<OrderStatus, Problem> {
    let patch: Patch = crate::parse_body(body)?;
    let field = |message: String| {
        Problem::validation(vec![FieldError {
            field: "status".into(),
            message,
        }])
    };
    match patch.status {
        None => Err(field("is required".into())),
        Some(serde_json::Value::String(s)) => OrderStatus::parse(&s).ok_or_else(|| {
            field(format!(
                "'{s}' is not a status (one of: {})",
                OrderStatus::ALL.map(OrderStatus::as_str).join(", ")
            ))
        }),
        Some(_) => Err(field("must be a string".into())),
    }
}

pub(crate) async fn patch_one(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            let v = v.split(';').next().unwrap_or_default().trim();
            v == "application/json" || v == "application/merge-patch+json"
        });
    if !is_json {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "send application/json (or application/merge-patch+json)",
        ));
    }
    let if_match = parse_if_match(&headers).map_err(|()| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "bad-if-match",
            "If-Match must be * or a list of ETags such as \"3\"",
        )
    })?;
    let to = parse_patch(&body)?;
    let current = state
        .orders
        .find_one(doc! {"orderId": &id})
        .await
        .map_err(internal)?
        .ok_or_else(|| Problem::not_found(format!("no order with id '{id}'")))?;
    if let Some(IfMatch::Versions(v)) = &if_match {
        if !v.contains(&current.version) {
            return Err(precondition_failed(current.version));
        }
    }
    match current.status.check_manual_change(to) {
        Ok(()) => {}
        // Asking for the status it already has changes nothing.
        Err(TransitionError::Unchanged) => return Ok(respond(current)),
        Err(TransitionError::Illegal) => {
            let allowed = current.status.manual_successors();
            return Err(Problem::new(
                StatusCode::CONFLICT,
                "illegal-transition",
                format!(
                    "an order that is {} cannot become {to}{}",
                    current.status,
                    if allowed.is_empty() {
                        String::new()
                    } else {
                        format!(
                            " (it may become: {})",
                            allowed
                                .iter()
                                .map(|s| s.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    }
                ),
            ));
        }
    }

    let now = bson_date(OffsetDateTime::now_utc());
    let reason = (to == OrderStatus::Cancelled).then_some(CANCELLED_BY_CLIENT);
    // Only the version we read may change: anything in between (a stage or
    // another client) makes the update match nothing.
    let filter = doc! {"orderId": &id, "version": current.version};
    let db = state.db.clone();
    let applied = in_transaction!(db.client(), |session| {
        async {
            let moved = state
                .orders
                .update_one(filter.clone(), status_change(to, reason, now))
                .session(&mut *session)
                .await?;
            if moved.matched_count == 0 {
                return Ok(Tx::Abort(false));
            }
            if to == OrderStatus::Cancelled {
                stock::release(&db, session, &id, CANCELLED_BY_CLIENT, now).await?;
            }
            Ok(Tx::Commit(true))
        }
        .await
    })
    .map_err(internal)?;
    let updated = state
        .orders
        .find_one(doc! {"orderId": &id})
        .await
        .map_err(internal)?
        .ok_or_else(|| Problem::not_found(format!("no order with id '{id}'")))?;
    if !applied {
        if if_match.is_some() {
            return Err(precondition_failed(updated.version));
        }
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "concurrent-change",
            format!(
                "the order changed while this request ran (now {}); GET it and try again",
                updated.status
            ),
        ));
    }
    tracing::info!(order_id = %id, from = %current.status, to = %to, "order status changed");
    Ok(respond(updated))
}

fn respond(order: OrderDocument) -> Response {
    let tag = etag(order.version);
    ([(header::ETAG, tag)], Json(OrderView::from(order))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::IF_MATCH, v.parse().unwrap());
        h
    }

    #[test]
    fn if_match_forms() {
        assert_eq!(parse_if_match(&HeaderMap::new()), Ok(None));
        assert_eq!(parse_if_match(&headers("*")), Ok(Some(IfMatch::Any)));
        assert_eq!(
            parse_if_match(&headers("\"3\"")),
            Ok(Some(IfMatch::Versions(vec![3])))
        );
        assert_eq!(
            parse_if_match(&headers("W/\"3\", \"4\"")),
            Ok(Some(IfMatch::Versions(vec![3, 4])))
        );
        assert_eq!(parse_if_match(&headers("3")), Err(()));
    }

    #[test]
    fn patch_bodies() {
        assert_eq!(
            parse_patch(br#"{"status":"shipped"}"#).unwrap(),
            OrderStatus::Shipped
        );
        assert_eq!(parse_patch(b"{").unwrap_err().status, 400);
        assert_eq!(
            parse_patch(br#"{"status":"lost"}"#).unwrap_err().status,
            422
        );
        assert_eq!(parse_patch(br#"{"status":3}"#).unwrap_err().status, 422);
        assert_eq!(parse_patch(br#"{}"#).unwrap_err().status, 422);
        assert_eq!(
            parse_patch(br#"{"status":"shipped","x":1}"#)
                .unwrap_err()
                .status,
            422
        );
    }
}
