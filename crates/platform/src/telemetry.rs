//! One telemetry init for every binary: JSON logs on stdout and an
//! OpenTelemetry tracer whose context travels in Kafka headers (W3C
//! `traceparent`). Spans are exported over OTLP when the standard variables
//! name an endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), over gRPC or HTTP (protobuf) as
//! `OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL` says (`grpc`, `http/protobuf`; the
//! specification's default is `http/protobuf`). `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER(_ARG)` and
//! `OTEL_SDK_DISABLED` work as the specification says. A protocol or endpoint
//! that cannot be used stops the service at start-up with the reason.

mod json;
mod on_runtime;

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::Context;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// Keeps the tracer provider alive; call [`Telemetry::shutdown`] last.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("telemetry shutdown: {e}");
        }
    }
}

/// The OTLP transports a service can export spans over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    Grpc,
    HttpProtobuf,
}

impl OtlpProtocol {
    /// The variable's value (`grpc`, `http/protobuf`); unset means
    /// `http/protobuf`, as the specification says. `http/json` is refused:
    /// the services do not ship a JSON encoder.
    pub fn parse(value: Option<&str>) -> Result<Self, String> {
        match value.map(str::trim) {
            None | Some("") | Some("http/protobuf") => Ok(Self::HttpProtobuf),
            Some("grpc") => Ok(Self::Grpc),
            Some(other) => Err(format!(
                "{other:?} is not supported: use grpc or http/protobuf"
            )),
        }
    }
}

/// The target of the log lines that are a delivery in themselves (notify's
/// `log` channel). They go to the log only: as span events they would copy
/// each recipient into the trace store, and cost notify 2.7 % of its CPU
/// even when `RUST_LOG` drops them from the log (docs/benchmarks.md).
pub const DELIVERY_LOG: &str = "orderflow::notification";

/// Installs the global subscriber and propagator. Log level from `RUST_LOG`
/// (default `info`). Fails when the OTLP settings cannot be used.
pub fn init(service: &'static str) -> anyhow::Result<Telemetry> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    // OTEL_SERVICE_NAME (read by the resource builder) wins over the
    // binary's own name: the operator names each stage's pods.
    let resource = if env("OTEL_SERVICE_NAME").is_some() {
        Resource::builder().build()
    } else {
        Resource::builder().with_service_name(service).build()
    };
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    let disabled = env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let endpoint =
        env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"));
    if endpoint.is_some() && !disabled {
        // The error names the variable the value came from.
        let (variable, value) = [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ]
        .into_iter()
        .find_map(|k| Some((k, env(k)?)))
        .unzip();
        let protocol = OtlpProtocol::parse(value.as_deref())
            .map_err(|e| anyhow::anyhow!("{} {e}", variable.unwrap_or_default()))?;
        // Both builders read the endpoint, headers and timeout variables.
        let failed = |e| anyhow::anyhow!("the OTLP exporter ({protocol:?}) cannot start: {e}");
        builder = match protocol {
            OtlpProtocol::Grpc => {
                let exporter = on_runtime::OnRuntime::build(|| {
                    opentelemetry_otlp::SpanExporter::builder()
                        .with_tonic()
                        .with_protocol(opentelemetry_otlp::Protocol::Grpc)
                        .build()
                })?
                .map_err(failed)?;
                builder.with_batch_exporter(exporter)
            }
            OtlpProtocol::HttpProtobuf => {
                let exporter = opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                    .build()
                    .map_err(failed)?;
                builder.with_batch_exporter(exporter)
            }
        };
    }
    let provider = builder.build();
    let tracer = provider.tracer(service);
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    opentelemetry::global::set_tracer_provider(provider.clone());

    // RUST_LOG as `target=level` directives; it filters log output only.
    let filter: Targets = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            "info,rdkafka=warn,mongodb=warn,hyper=warn,h2=warn"
                .parse()
                .expect("valid default filter")
        });
    let fmt = tracing_subscriber::fmt::layer().event_format(json::JsonWithTrace);
    // The log level filters log output only: spans that carry trace context
    // across Kafka must exist whatever RUST_LOG says.
    //
    // Left out, because each costs every span on the hot path and tells an
    // operator little: busy/idle times (two clock reads per poll of an
    // instrumented future), the thread's id and name (an allocation per
    // span; one worker thread, ADR 0013), and activating the span's context
    // on entry (nothing here reads `Context::current`: the logs take the
    // trace id from the span, `inject` the context from the span).
    let traces = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_context_activation(false)
        .with_filter(
            Targets::new()
                .with_default(tracing::Level::INFO)
                .with_target(DELIVERY_LOG, tracing_subscriber::filter::LevelFilter::OFF),
        );
    // `try_init` so tests that start several services in one process work.
    let _ = tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(traces)
        .try_init();
    if let Some(slice) = crate::runtime::slice_outcome() {
        match &slice.result {
            Ok(got) if *got == slice.asked => {
                tracing::info!(slice = ?got, "scheduler slice set for every thread")
            }
            Ok(got) => tracing::warn!(
                asked = ?slice.asked, kernel = ?got,
                "the kernel keeps its own scheduler slice (custom slices need Linux 6.12)"
            ),
            Err(e) => tracing::warn!(asked = ?slice.asked, error = %e, "scheduler slice not set"),
        }
    }
    Ok(Telemetry { provider })
}

/// Makes `parent` (extracted from a message or request) the parent of `span`.
pub fn set_parent(span: &tracing::Span, parent: Context) {
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// A span's trace context, to parent work that runs after the span's own
/// is over (a write queued behind the answer). Running that work in a
/// clone of the span would parent it too, but enters the span again, and
/// tracing-opentelemetry ends a span at its last exit: its recorded end
/// would move to the later work's.
#[derive(Clone)]
pub struct Parent(Context);

impl Parent {
    pub fn of(span: &tracing::Span) -> Parent {
        Parent(span.context())
    }

    /// Makes this context the parent of `span` (if it is one: a context
    /// without a span, as when tracing is off, leaves `span` a root).
    pub fn adopt(&self, span: &tracing::Span) {
        set_parent(span, self.0.clone());
    }
}

/// Injects the context of `span` through the global propagator.
pub fn inject(span: &tracing::Span, carrier: &mut dyn opentelemetry::propagation::Injector) {
    let cx = span.context();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, carrier));
}

/// Extracts a remote parent context through the global propagator.
pub fn extract(carrier: &dyn opentelemetry::propagation::Extractor) -> Context {
    opentelemetry::global::get_text_map_propagator(|p| p.extract(carrier))
}

#[cfg(test)]
mod tests {
    use super::OtlpProtocol;

    #[test]
    fn the_protocol_variable_picks_the_transport() {
        assert_eq!(OtlpProtocol::parse(None), Ok(OtlpProtocol::HttpProtobuf));
        assert_eq!(
            OtlpProtocol::parse(Some(" ")),
            Ok(OtlpProtocol::HttpProtobuf)
        );
        assert_eq!(
            OtlpProtocol::parse(Some("http/protobuf")),
            Ok(OtlpProtocol::HttpProtobuf)
        );
        assert_eq!(OtlpProtocol::parse(Some("grpc")), Ok(OtlpProtocol::Grpc));
        let refused = OtlpProtocol::parse(Some("http/json")).unwrap_err();
        assert!(
            refused.contains("\"http/json\" is not supported"),
            "{refused}"
        );
        assert!(OtlpProtocol::parse(Some("GRPC ")).is_err());
    }
}
