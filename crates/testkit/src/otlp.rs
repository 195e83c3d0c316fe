//! OpenTelemetry for the telemetry tests: an OTLP/HTTP receiver in the test
//! process that keeps every span it is sent, and a real OpenTelemetry
//! Collector (scripts/otelcol, built by scripts/lib.sh) that can stand
//! between the services and that receiver.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;

use crate::{free_port, required, wait_listening, Server, TempDir};

#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub service: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    /// (trace id, span id) of each linked span.
    pub links: Vec<(String, String)>,
    pub attributes: BTreeMap<String, String>,
    /// Each span event: its name and its attributes' keys.
    pub events: Vec<(String, Vec<String>)>,
    /// Its start and end, Unix nanoseconds.
    pub start_ns: u64,
    pub end_ns: u64,
}

impl ReceivedSpan {
    /// The database a client span called (`db.system.name`: "redis",
    /// "mongodb"), if it is one.
    pub fn db_system(&self) -> Option<&str> {
        self.attributes.get("db.system.name").map(String::as_str)
    }
}

type Spans = Arc<Mutex<Vec<ReceivedSpan>>>;

/// An OTLP/HTTP (protobuf) trace receiver on a free port. Call it from a
/// multi-threaded runtime: it must answer while the test waits.
pub struct Receiver {
    /// `http://127.0.0.1:<port>`, the value for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub endpoint: String,
    spans: Spans,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let spans = Spans::default();
        let app = Router::new()
            .route("/v1/traces", post(receive))
            .with_state(spans.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { endpoint, spans }
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap().clone()
    }
}

async fn receive(State(spans): State<Spans>, body: Bytes) -> &'static str {
    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf export");
    let mut spans = spans.lock().unwrap();
    for resource in request.resource_spans {
        let service = resource
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|a| a.key == "service.name")
            .and_then(|a| a.value.as_ref()?.value.clone())
            .map(text)
            .unwrap_or_default();
        for scope in resource.scope_spans {
            for span in scope.spans {
                spans.push(ReceivedSpan {
                    service: service.clone(),
                    name: span.name.clone(),
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    links: span
                        .links
                        .iter()
                        .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                        .collect(),
                    attributes: span
                        .attributes
                        .iter()
                        .map(|a| {
                            let v = a.value.as_ref().and_then(|v| v.value.clone());
                            (a.key.clone(), v.map(text).unwrap_or_default())
                        })
                        .collect(),
                    events: span
                        .events
                        .iter()
                        .map(|e| {
                            let keys = e.attributes.iter().map(|a| a.key.clone()).collect();
                            (e.name.clone(), keys)
                        })
                        .collect(),
                    start_ns: span.start_time_unix_nano,
                    end_ns: span.end_time_unix_nano,
                });
            }
        }
    }
    ""
}

fn text(value: AnyValue) -> String {
    match value {
        AnyValue::StringValue(s) => s,
        AnyValue::IntValue(i) => i.to_string(),
        other => format!("{other:?}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A real OpenTelemetry Collector accepting OTLP over gRPC and HTTP on free
/// ports and passing every span on, over OTLP/HTTP, to `forward_to`.
pub struct Collector {
    pub grpc_endpoint: String,
    pub http_endpoint: String,
    pub log: std::path::PathBuf,
    _server: Server,
}

impl Collector {
    pub fn start(forward_to: &str) -> Collector {
        let (grpc, http) = (free_port(), free_port());
        let dir = TempDir::new("otelcol");
        let config = dir.0.join("config.yaml");
        // No batching and no queue: a span is passed on when it arrives.
        std::fs::write(
            &config,
            format!(
                "receivers:
  otlp:
    protocols:
      grpc: {{endpoint: 127.0.0.1:{grpc}}}
      http: {{endpoint: 127.0.0.1:{http}}}
exporters:
  debug: {{verbosity: basic}}
  otlphttp:
    endpoint: {forward_to}
    compression: none
    sending_queue: {{enabled: false}}
service:
  pipelines:
    traces: {{receivers: [otlp], exporters: [otlphttp, debug]}}
  telemetry:
    metrics: {{level: none}}
"
            ),
        )
        .unwrap();
        let log = dir.0.join("otelcol.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(required("ORDERFLOW_TEST_OTELCOL"))
            .arg(format!("--config={}", config.display()))
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("starting the OpenTelemetry Collector");
        let server = Server {
            child,
            port: grpc,
            _dir: Some(dir),
        };
        wait_listening(grpc, "the collector's OTLP/gRPC receiver");
        wait_listening(http, "the collector's OTLP/HTTP receiver");
        Collector {
            grpc_endpoint: format!("http://127.0.0.1:{grpc}"),
            http_endpoint: format!("http://127.0.0.1:{http}"),
            log,
            _server: server,
        }
    }

    /// What the collector printed (its debug exporter counts the spans).
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}
