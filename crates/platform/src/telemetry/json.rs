//! JSON log lines, one object per event: `timestamp`, `level`, `message`,
//! the event's fields, `target`, and — inside a span — the W3C `trace_id`
//! and `span_id` of that span, so every line of an order's processing can be
//! found from its trace and back.

use std::fmt;

use opentelemetry::trace::TraceContextExt as _;
use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_opentelemetry::OtelData;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

pub struct JsonWithTrace;

struct Fields<'a>(&'a mut Map<String, Value>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0
            .insert(field.name().to_owned(), Value::from(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), Value::from(format!("{value:?}")));
    }
}

/// The trace and span ids of the innermost span around `event` that has
/// OpenTelemetry data (explicit `parent:` spans included).
fn ids<S, N>(ctx: &FmtContext<'_, S, N>) -> Option<(String, String)>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    let scope = ctx.event_scope()?;
    for span in scope {
        let built = span
            .extensions()
            .get::<OtelData>()
            .map(|d| (d.trace_id(), d.span_id()));
        match built {
            Some((Some(trace), Some(id))) => return Some((trace.to_string(), id.to_string())),
            Some(_) => {
                // Not started yet (a span only used as an explicit parent):
                // build its context now.
                let cx = tracing::dispatcher::get_default(|dispatch| {
                    tracing_opentelemetry::get_otel_context(&mut span.extensions_mut(), dispatch)
                })?;
                let sc = cx.span().span_context().clone();
                return sc
                    .is_valid()
                    .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()));
            }
            None => continue,
        }
    }
    None
}

impl<S, N> FormatEvent<S, N> for JsonWithTrace
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut line = Map::new();
        let now = time::OffsetDateTime::now_utc()
            .format(&Rfc3339)
            .unwrap_or_default();
        line.insert("timestamp".into(), Value::from(now));
        line.insert("level".into(), Value::from(meta.level().as_str()));
        event.record(&mut Fields(&mut line));
        line.insert("target".into(), Value::from(meta.target()));
        if let Some((trace, span)) = ids(ctx) {
            line.entry("trace_id").or_insert(Value::from(trace));
            line.entry("span_id").or_insert(Value::from(span));
        }
        writeln!(writer, "{}", Value::Object(line))
    }
}
