//! The pipeline console's HTTP side (SPEC §2, issue 15): the page at
//! `/pipeline` and its data, the dead-letter list, one dead letter, the
//! re-drive (bearer token), and one order's timeline with its page.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::{Extension, Json};
use futures::{Stream, StreamExt};
use orderflow_domain::intake::FieldError;
use orderflow_platform::http::auth::Caller;
use orderflow_platform::http::Problem;
use serde::{Deserialize, Serialize};

use crate::dlq::{self, Filter, Letter, Outcome};
use crate::{timeline, unavailable, AppState};

/// What the console needs besides the dashboard's state.
pub struct Console {
    pub sampler: crate::pipeline::Sampler,
    pub index: dlq::Index,
    pub fetcher: Mutex<dlq::Fetcher>,
    pub redriver: dlq::Redriver,
    pub timeline_reader: Mutex<rdkafka::consumer::BaseConsumer>,
    /// Every topic of the pipeline, the DLQ included (timeline order).
    pub topics: Vec<String>,
    pub dlq_topic: String,
}

impl Console {
    pub fn new(args: &crate::Args, db: &mongodb::Database) -> anyhow::Result<Console> {
        let topics: Vec<String> = orderflow_platform::topology::TOPICS
            .iter()
            .map(|t| args.topics.name(t.role).to_owned())
            .collect();
        Ok(Console {
            sampler: crate::pipeline::Sampler::default(),
            index: dlq::Index::default(),
            fetcher: Mutex::new(dlq::Fetcher::new(&args.kafka, &args.topics.dlq)?),
            redriver: dlq::Redriver {
                producer: orderflow_platform::kafka::producer(
                    &args.kafka,
                    "orderflow-analytics-redrive",
                    Duration::from_secs(10),
                )?,
                redrives: db.collection(orderflow_platform::mongo::REDRIVES),
                dlq_topic: args.topics.dlq.clone(),
                topics: topics.clone(),
            },
            timeline_reader: Mutex::new(orderflow_platform::kafka::position_reader(
                &args.kafka,
                "orderflow-analytics-timeline",
                "orderflow-analytics-timeline",
            )?),
            topics,
            dlq_topic: args.topics.dlq.clone(),
        })
    }
}

pub(crate) async fn page() -> Response {
    (
        [(header::CACHE_CONTROL, "no-cache")],
        Html(include_str!("pipeline.html")),
    )
        .into_response()
}

pub(crate) async fn timeline_page() -> Response {
    (
        [(header::CACHE_CONTROL, "no-cache")],
        Html(include_str!("timeline.html")),
    )
        .into_response()
}

fn not_sampled() -> Problem {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "pipeline-not-sampled",
        "the pipeline has not been sampled yet",
    )
    .with_retry_after(Duration::from_secs(1))
}

pub(crate) async fn pipeline(State(state): State<AppState>) -> Result<Response, Problem> {
    let latest = state.console.sampler.latest().ok_or_else(not_sampled)?;
    Ok(Json(latest.as_ref()).into_response())
}

/// Each new sample as a `pipeline` event.
pub(crate) async fn pipeline_stream(
    State(state): State<AppState>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Problem> {
    let permit = state.stream_permit()?;
    let sampler = state.console.sampler.clone();
    // Every change of the watch, starting with the sample there is now.
    let samples =
        futures::stream::unfold((sampler.subscribe(), true), |(mut rx, first)| async move {
            if !first {
                rx.changed().await.ok()?;
            }
            let sample = rx.borrow_and_update().clone();
            Some((sample, (rx, false)))
        });
    let events = samples
        .filter_map(|sample| async move {
            let sample = sample?;
            Some(Ok(Event::default()
                .event("pipeline")
                .json_data(sample.as_ref())
                .unwrap_or_else(|_| {
                    Event::default().comment("encoding failed")
                })))
        })
        .take_until(state.shutdown.clone().cancelled_owned())
        .map(move |e| {
            let _held = &permit;
            e
        });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

fn bad_field(field: &str, message: impl Into<String>) -> Problem {
    Problem::validation(vec![FieldError {
        field: field.into(),
        message: message.into(),
    }])
}

fn known_stage(field: &str, stage: &Option<String>) -> Result<(), Problem> {
    match stage.as_deref() {
        Some(s) if !s.is_empty() && orderflow_platform::topology::stage(s).is_none() => {
            Err(bad_field(
                field,
                format!("'{s}' is not a stage (persist, inventory, payment, notify)"),
            ))
        }
        _ => Ok(()),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ListItem {
    #[serde(flatten)]
    entry: dlq::Entry,
    redrive: Option<dlq::Record>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct List {
    items: Vec<ListItem>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
    matched: usize,
    total: u64,
    /// False while the index is still reading the topic from its start.
    complete: bool,
}

/// `GET /analytics/dlq?stage=&reason=&limit=&cursor=`: newest first.
pub(crate) async fn list(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, Problem> {
    let filter = Filter {
        stage: params.get("stage").cloned(),
        reason: params.get("reason").cloned(),
    };
    known_stage("stage", &filter.stage)?;
    let limit = match params.get("limit") {
        None => 50,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=500).contains(&n) => n,
            _ => {
                return Err(bad_field(
                    "limit",
                    format!("'{v}' is not an integer from 1 to 500"),
                ))
            }
        },
    };
    let cursor = match params.get("cursor") {
        None => None,
        Some(c) => Some(
            c.parse::<dlq::Cursor>()
                .map_err(|_| bad_field("cursor", "not a cursor this API returned"))?,
        ),
    };
    let console = &state.console;
    let page = console.index.page(&filter, limit, cursor);
    let records = console
        .redriver
        .records(&page.items)
        .await
        .map_err(unavailable)?;
    let items = page
        .items
        .into_iter()
        .map(|entry| ListItem {
            redrive: records
                .get(&(entry.partition, entry.offset))
                .map(dlq::Record::of),
            entry,
        })
        .collect();
    Ok(Json(List {
        items,
        next_cursor: page.next_cursor,
        matched: page.matched,
        total: console.index.total(),
        complete: console.index.caught_up(),
    })
    .into_response())
}

fn broker_unavailable(e: impl std::fmt::Display) -> Problem {
    tracing::warn!(error = %e, "console: the broker could not be read");
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "broker-unavailable",
        "the dead-letter topic cannot be read right now",
    )
    .with_retry_after(Duration::from_secs(1))
}

impl Console {
    /// The dead letter at (`partition`, `offset`), read off the async
    /// threads (the HTTP handlers and the command line).
    pub async fn fetch(
        self: &Arc<Self>,
        partition: i32,
        offset: i64,
    ) -> anyhow::Result<Option<Letter>> {
        let console = self.clone();
        tokio::task::spawn_blocking(move || {
            console
                .fetcher
                .lock()
                .expect("dlq fetcher")
                .fetch(partition, offset)
        })
        .await?
    }
}

#[derive(Serialize)]
struct Shown {
    #[serde(flatten)]
    letter: Letter,
    redrive: Option<dlq::Record>,
}

/// `GET /analytics/dlq/{partition}/{offset}`: the original bytes and headers.
pub(crate) async fn show(
    State(state): State<AppState>,
    Path((partition, offset)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let (Ok(partition), Ok(offset)) = (partition.parse::<i32>(), offset.parse::<i64>()) else {
        return Err(Problem::not_found("no dead letter at that position"));
    };
    let letter = state
        .console
        .fetch(partition, offset)
        .await
        .map_err(broker_unavailable)?
        .ok_or_else(|| Problem::not_found("no dead letter at that position"))?;
    let records = state
        .console
        .redriver
        .records(std::slice::from_ref(&letter.entry))
        .await
        .map_err(unavailable)?;
    let redrive = records.get(&(partition, offset)).map(dlq::Record::of);
    Ok(Json(Shown { letter, redrive }).into_response())
}

/// The re-drive request: one dead letter by position, or a filter.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct RedriveRequest {
    pub partition: Option<i32>,
    pub offset: Option<i64>,
    pub stage: Option<String>,
    pub reason: Option<String>,
    /// For a filter: at most this many (default 100, at most 1000).
    pub limit: Option<usize>,
    /// Who is asking, recorded beside the token's fingerprint.
    pub actor: Option<String>,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct RedriveReport {
    pub matched: usize,
    pub redriven: usize,
    pub skipped: usize,
    pub outcomes: Vec<Outcome>,
}

/// What a re-drive names, checked.
pub enum Selection {
    One(i32, i64),
    Filtered(Filter, usize),
}

impl RedriveRequest {
    pub fn selection(&self) -> Result<Selection, Problem> {
        known_stage("stage", &self.stage)?;
        if let Some(a) = &self.actor {
            if a.is_empty() || a.len() > 64 || a.chars().any(char::is_control) {
                return Err(bad_field("actor", "1 to 64 printable characters"));
            }
        }
        match (self.partition, self.offset) {
            (Some(p), Some(o)) => {
                if self.stage.is_some() || self.reason.is_some() || self.limit.is_some() {
                    return Err(bad_field(
                        "partition",
                        "name one dead letter (partition, offset) or a filter (stage, reason, limit), not both",
                    ));
                }
                Ok(Selection::One(p, o))
            }
            (Some(_), None) => Err(bad_field("offset", "required with partition")),
            (None, Some(_)) => Err(bad_field("partition", "required with offset")),
            (None, None) => {
                if self.stage.as_deref().unwrap_or("").is_empty()
                    && self.reason.as_deref().unwrap_or("").is_empty()
                {
                    return Err(bad_field(
                        "stage",
                        "name one dead letter (partition, offset) or a filter (stage and/or reason)",
                    ));
                }
                let limit = self.limit.unwrap_or(100);
                if !(1..=dlq::MAX_REDRIVE).contains(&limit) {
                    return Err(bad_field(
                        "limit",
                        format!("an integer from 1 to {}", dlq::MAX_REDRIVE),
                    ));
                }
                Ok(Selection::Filtered(
                    Filter {
                        stage: self.stage.clone(),
                        reason: self.reason.clone(),
                    },
                    limit,
                ))
            }
        }
    }
}

/// Re-drives what `selection` names on behalf of `who`: shared by the
/// HTTP handler and the command line.
pub async fn redrive(
    console: &Arc<Console>,
    selection: Selection,
    who: &str,
) -> Result<RedriveReport, Problem> {
    let positions: Vec<(i32, i64)> = match selection {
        Selection::One(p, o) => vec![(p, o)],
        Selection::Filtered(filter, limit) => {
            let matching = console.index.matching(&filter);
            let records = console
                .redriver
                .records(&matching)
                .await
                .map_err(unavailable)?;
            // Those already re-driven are reported without fetching them.
            matching
                .iter()
                .filter(|e| {
                    records
                        .get(&(e.partition, e.offset))
                        .is_none_or(|r| r.get_str("state") != Ok("done"))
                })
                .take(limit)
                .map(|e| (e.partition, e.offset))
                .collect()
        }
    };
    let single = positions.len() == 1;
    let mut outcomes = Vec::new();
    for (partition, offset) in positions.iter().copied() {
        let letter = console
            .fetch(partition, offset)
            .await
            .map_err(broker_unavailable)?;
        let Some(letter) = letter else {
            if single {
                return Err(Problem::not_found("no dead letter at that position"));
            }
            continue;
        };
        let outcome = console
            .redriver
            .redrive(&letter, who)
            .await
            .map_err(|e| {
                tracing::warn!(error = %format!("{e:#}"), "re-drive failed");
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "redrive-unavailable",
                    "the dead letter could not be sent back or recorded right now; nothing was recorded as re-driven, retry",
                )
                .with_retry_after(Duration::from_secs(1))
            })?;
        outcomes.push(outcome);
    }
    let redriven = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Redriven { .. }))
        .count();
    Ok(RedriveReport {
        matched: positions.len(),
        redriven,
        skipped: outcomes.len() - redriven,
        outcomes,
    })
}

/// `POST /analytics/dlq/redrive` (bearer token).
pub(crate) async fn redrive_handler(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<RedriveRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, Problem> {
    let Json(request) = body.map_err(|e| {
        let status = e.status();
        let kind = if status == StatusCode::UNSUPPORTED_MEDIA_TYPE {
            "unsupported-media-type"
        } else {
            "malformed-json"
        };
        // A well-formed body with wrong fields is a 422 like any other.
        let status = if status == StatusCode::UNPROCESSABLE_ENTITY {
            StatusCode::BAD_REQUEST
        } else {
            status
        };
        Problem::new(status, kind, e.body_text())
    })?;
    let selection = request.selection()?;
    let who = match &request.actor {
        Some(actor) => format!("{actor} ({})", caller.0),
        None => caller.0.clone(),
    };
    let report = redrive(&state.console, selection, &who).await?;
    Ok(Json(report).into_response())
}

/// `GET /analytics/orders/{id}/timeline`.
pub(crate) async fn order_timeline(
    State(state): State<AppState>,
    Path(order_id): Path<String>,
) -> Result<Response, Problem> {
    if !orderflow_domain::intake::is_order_id(&order_id) {
        return Err(Problem::not_found("no such order"));
    }
    let stored = state
        .orders
        .find_one(bson::doc! {"orderId": &order_id})
        .projection(bson::doc! {"receivedAt": 1, "updatedAt": 1})
        .await
        .map_err(unavailable)?;
    let now = bson::DateTime::now().timestamp_millis();
    let (from, to) = match &stored {
        Some(d) => {
            let at = |k: &str| d.get_datetime(k).ok().map(|t| t.timestamp_millis());
            let received = at("receivedAt").unwrap_or(now - timeline::LOOKBACK.as_millis() as i64);
            let updated = at("updatedAt").unwrap_or(now);
            (received - 10_000, updated.max(received) + 120_000)
        }
        None => (now - timeline::LOOKBACK.as_millis() as i64, now),
    };
    let console = state.console.clone();
    let id = order_id.clone();
    let found = tokio::task::spawn_blocking(move || {
        let reader = console.timeline_reader.lock().expect("timeline reader");
        timeline::read(&reader, &console.topics, &console.dlq_topic, &id, from, to)
    })
    .await
    .map_err(broker_unavailable)?
    .map_err(broker_unavailable)?;
    if stored.is_none() && found.events.is_empty() {
        return Err(Problem::not_found(format!("no order '{order_id}'")));
    }
    Ok(Json(found).into_response())
}
