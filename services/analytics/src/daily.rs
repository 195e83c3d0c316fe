//! `GET /analytics/daily?from=YYYY-MM-DD&to=YYYY-MM-DD`: per UTC day, the
//! orders received, revenue (paid orders), average order value and the
//! count by status — grouped by a MongoDB aggregation pipeline; Rust only
//! reshapes the per-(day, status) rows.

use std::collections::{BTreeMap, HashMap};

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bson::{doc, DateTime, Document};
use futures::TryStreamExt;
use orderflow_domain::intake::FieldError;
use orderflow_domain::{Money, OrderStatus};
use orderflow_platform::http::Problem;
use orderflow_platform::mongo::number;
use serde::Serialize;
use time::macros::format_description;
use time::{Date, Duration, OffsetDateTime};

use crate::{unavailable, AppState};

/// Longest range one request may ask for.
pub const MAX_DAYS: i64 = 366;
/// Days shown when no range is given (today and the 6 before).
pub const DEFAULT_DAYS: i64 = 7;

#[derive(Debug, PartialEq, Eq)]
pub struct Range {
    pub from: Date,
    pub to: Date,
}

/// The dates a range may name: from the Unix epoch to the year 9999 less a
/// day (the range's end is the midnight after its last day).
const EARLIEST: Date = time::macros::date!(1970 - 01 - 01);
const LATEST: Date = time::macros::date!(9999 - 12 - 30);

pub fn parse_range(
    params: &HashMap<String, String>,
    today: Date,
) -> Result<Range, Vec<FieldError>> {
    let format = format_description!("[year]-[month]-[day]");
    let mut errors = Vec::new();
    let mut date = |name: &str| match params.get(name) {
        None => None,
        Some(v) => match Date::parse(v, &format) {
            Ok(d) if (EARLIEST..=LATEST).contains(&d) => Some(d),
            Ok(_) => {
                errors.push(FieldError {
                    field: name.into(),
                    message: format!("'{v}' is outside {EARLIEST} to {LATEST}"),
                });
                None
            }
            Err(_) => {
                errors.push(FieldError {
                    field: name.into(),
                    message: format!("'{v}' is not a date (YYYY-MM-DD)"),
                });
                None
            }
        },
    };
    let from = date("from");
    let to = date("to");
    if !errors.is_empty() {
        return Err(errors);
    }
    let to = to.unwrap_or(today);
    let from = from.unwrap_or_else(|| (to - Duration::days(DEFAULT_DAYS - 1)).max(EARLIEST));
    if from > to {
        errors.push(FieldError {
            field: "from".into(),
            message: "must not be after 'to'".into(),
        });
    } else if (to - from).whole_days() >= MAX_DAYS {
        errors.push(FieldError {
            field: "to".into(),
            message: format!("the range may span at most {MAX_DAYS} days"),
        });
    }
    if errors.is_empty() {
        Ok(Range { from, to })
    } else {
        Err(errors)
    }
}

#[derive(Serialize, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Day {
    pub date: String,
    pub orders: i64,
    /// Σ totals of paid orders (confirmed, shipped, delivered).
    pub revenue: Money,
    pub paid_orders: i64,
    pub average_order_value: Option<Money>,
    pub count_by_status: BTreeMap<String, i64>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Daily {
    from: String,
    to: String,
    days: Vec<Day>,
}

fn midnight(d: Date) -> DateTime {
    DateTime::from_millis(d.midnight().assume_utc().unix_timestamp() * 1000)
}

/// Folds (day, status, count, cents) rows into one entry per day of the
/// range, days without orders included.
pub fn fold(range: &Range, rows: &[(String, String, i64, i64)]) -> Vec<Day> {
    let mut days: BTreeMap<String, Day> = BTreeMap::new();
    let mut d = range.from;
    while d <= range.to {
        let key = d.to_string();
        days.insert(
            key.clone(),
            Day {
                date: key,
                orders: 0,
                revenue: Money::ZERO,
                paid_orders: 0,
                average_order_value: None,
                count_by_status: BTreeMap::new(),
            },
        );
        let Some(next) = d.next_day() else { break };
        d = next;
    }
    let mut paid_cents: HashMap<String, i64> = HashMap::new();
    for (day, status, count, cents) in rows {
        let Some(entry) = days.get_mut(day) else {
            continue;
        };
        entry.orders += count;
        *entry.count_by_status.entry(status.clone()).or_default() += count;
        if OrderStatus::parse(status).is_some_and(OrderStatus::is_paid) {
            entry.paid_orders += count;
            *paid_cents.entry(day.clone()).or_default() += cents;
        }
    }
    for (day, entry) in days.iter_mut() {
        let cents = paid_cents.get(day).copied().unwrap_or(0);
        entry.revenue = Money::from_minor(cents);
        entry.average_order_value = Money::average(entry.revenue, entry.paid_orders);
    }
    days.into_values().collect()
}

pub(crate) async fn daily(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, Problem> {
    let range =
        parse_range(&params, OffsetDateTime::now_utc().date()).map_err(Problem::validation)?;
    let end = range.to.next_day().unwrap_or(Date::MAX);
    let pipeline = [
        doc! {"$match": {"receivedAt": {"$gte": midnight(range.from), "$lt": midnight(end)}}},
        doc! {"$group": {
            "_id": {
                "day": {"$dateToString": {"format": "%Y-%m-%d", "date": "$receivedAt"}},
                "status": "$status",
            },
            "count": {"$sum": 1},
            "cents": {"$sum": "$totalCents"},
        }},
    ];
    let rows: Vec<Document> = state
        .orders
        .aggregate(pipeline)
        .await
        .map_err(unavailable)?
        .try_collect()
        .await
        .map_err(unavailable)?;
    let rows: Vec<(String, String, i64, i64)> = rows
        .iter()
        .filter_map(|r| {
            let id = r.get_document("_id").ok()?;
            Some((
                id.get_str("day").ok()?.to_owned(),
                id.get_str("status").ok()?.to_owned(),
                number(r.get("count")),
                number(r.get("cents")),
            ))
        })
        .collect();
    Ok(Json(Daily {
        from: range.from.to_string(),
        to: range.to.to_string(),
        days: fold(&range, &rows),
    })
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn ranges_default_and_are_checked() {
        let today = date!(2026 - 11 - 22);
        assert_eq!(
            parse_range(&params(&[]), today),
            Ok(Range {
                from: date!(2026 - 11 - 16),
                to: today
            })
        );
        let e = parse_range(&params(&[("from", "2026-13-01"), ("to", "x")]), today).unwrap_err();
        assert_eq!(e.len(), 2);
        let e = parse_range(
            &params(&[("from", "2026-11-23"), ("to", "2026-11-22")]),
            today,
        )
        .unwrap_err();
        assert_eq!(e[0].field, "from");
        let e = parse_range(&params(&[("from", "2020-01-01")]), today).unwrap_err();
        assert_eq!(e[0].field, "to");
        // Extreme dates are a client error, not a failed query.
        for (field, v) in [
            ("to", "9999-12-31"),
            ("from", "1969-12-31"),
            ("from", "0001-01-01"),
        ] {
            let e = parse_range(&params(&[(field, v)]), today).unwrap_err();
            assert_eq!(e[0].field, field, "{v}");
        }
        let last = parse_range(
            &params(&[("from", "9999-12-01"), ("to", "9999-12-30")]),
            today,
        );
        assert!(last.is_ok(), "{last:?}");
    }

    #[test]
    fn rows_fold_into_every_day_of_the_range() {
        let range = Range {
            from: date!(2026 - 11 - 20),
            to: date!(2026 - 11 - 22),
        };
        let rows = vec![
            ("2026-11-20".into(), "confirmed".into(), 2, 1000),
            ("2026-11-20".into(), "rejected".into(), 1, 999),
            ("2026-11-20".into(), "delivered".into(), 1, 1),
            ("2026-11-22".into(), "placed".into(), 4, 400),
        ];
        let days = fold(&range, &rows);
        assert_eq!(days.len(), 3);
        assert_eq!(days[0].orders, 4);
        assert_eq!(days[0].revenue, Money::from_minor(1001));
        assert_eq!(days[0].average_order_value, Some(Money::from_minor(334)));
        assert_eq!(days[0].count_by_status["rejected"], 1);
        assert_eq!(days[1].orders, 0);
        assert_eq!(days[1].average_order_value, None);
        assert_eq!(days[2].revenue, Money::ZERO);
    }
}
