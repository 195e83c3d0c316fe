//! OTLP export through a real OpenTelemetry Collector (scripts/otelcol),
//! over each transport `OTEL_EXPORTER_OTLP_PROTOCOL` offers: the producer's
//! binary sends its spans to the collector's gRPC or HTTP receiver, and the
//! collector passes them on to a receiver in this test. The producer knows
//! only the collector's address, so a span that arrives came through it.

use std::time::Duration;

use orderflow_testkit as kit;
use orderflow_testkit::otlp::{Collector, Receiver};
use orderflow_testkit::stack::Stack;

// Multi-threaded: the receiver must answer while the test waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_a_real_collector_over_grpc_and_over_http() {
    let receiver = Receiver::start().await;
    let collector = Collector::start(&receiver.endpoint);
    let topics = kit::topics("otelcol");
    kit::create_topics(&kit::kafka(), &topics).await;
    let db = kit::unique("otelcol");
    let client = reqwest::Client::new();

    for (n, (protocol, endpoint)) in [
        ("grpc", &collector.grpc_endpoint),
        ("http/protobuf", &collector.http_endpoint),
    ]
    .into_iter()
    .enumerate()
    {
        let mut stack = Stack::new(
            &topics,
            &db,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
                ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ],
        );
        let port = kit::free_port();
        stack.spawn("producer", "producer", &[("API_PORT", port.to_string())]);
        let producer = format!("http://127.0.0.1:{port}");
        kit::ready(&producer).await;

        // A trace of this transport's own.
        let trace_id = format!("4bf92f3577b34da6a3ce929d0e0e473{n}");
        let r = client
            .post(format!("{producer}/orders"))
            .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
            .json(&serde_json::json!({"orderId": kit::unique("otel"), "customerId": "c-1",
                                      "items": [{"productId": "tea", "quantity": 1, "unitPrice": 3.20}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), reqwest::StatusCode::ACCEPTED, "{protocol}");

        // Exported while the producer runs (every 100 ms), not only on exit.
        let arrived = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let spans = receiver.spans();
                if let Some(span) = spans
                    .iter()
                    .find(|s| s.trace_id == trace_id && s.parent_span_id == "00f067aa0ba902b7")
                {
                    break span.clone();
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        let Ok(span) = arrived else {
            stack.print_log_tails();
            panic!(
                "no producer span of trace {trace_id} came through the collector over {protocol}; \
                 the collector said:\n{}",
                collector.output()
            );
        };
        assert_eq!(span.service, "producer", "{protocol}: {span:?}");
        stack.terminate().await;
    }
}

#[test]
fn an_unsupported_protocol_stops_the_service_with_the_reason() {
    let out = std::process::Command::new(kit::binary("producer"))
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
        .env("API_PORT", kit::free_port().to_string())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the producer started: {stderr}");
    assert!(
        stderr.contains(
            "OTEL_EXPORTER_OTLP_PROTOCOL \"http/json\" is not supported: use grpc or http/protobuf"
        ),
        "{stderr}"
    );
}
