//! What the services tell an operator, from the real binaries.
//!
//! One order's trace, end to end and over the wire: the producer and the
//! four stages run as separate processes exporting over OTLP/HTTP to a
//! receiver in this test. The order is posted with a known W3C
//! `traceparent`; every service must report spans in that trace, each
//! stage's span a child of the previous service's, and the MongoDB and
//! Redis calls as child spans. The batch exporter is set to wait a minute,
//! so the spans arrive only because each process flushes on SIGTERM.
//!
//! Every stage's `/metrics`: its messages by outcome, and librdkafka's view
//! of the broker from the producer it publishes its decisions with.

use std::time::Duration;

use orderflow_platform::topology::STAGES;
use orderflow_testkit as kit;
use orderflow_testkit::otlp::{ReceivedSpan, Receiver};
use orderflow_testkit::stack::Stack;

// Multi-threaded: the receiver must answer while the test waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_order_is_one_trace_across_every_service() {
    let receiver = Receiver::start().await;

    let brokers = kit::kafka();
    let topics = kit::topics("trace");
    kit::create_topics(&brokers, &topics).await;
    let db_name = kit::unique("trace");
    let mut stack = Stack::new(
        &topics,
        &db_name,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.as_str()),
            // Nothing is exported before shutdown: the flush on SIGTERM is
            // what delivers the spans.
            ("OTEL_BSP_SCHEDULE_DELAY", "60000"),
        ],
    );
    let producer = stack.spawn_producer();
    stack.spawn_stages();
    let client = reqwest::Client::new();
    kit::ready(&producer).await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let order_id = kit::unique("traced");
    let r = client
        .post(format!("{producer}/orders"))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .json(&serde_json::json!({"orderId": order_id, "customerId": "c-1",
                                  "items": [{"productId": "tea", "quantity": 1, "unitPrice": 3.20}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::ACCEPTED);

    // Wait until notify recorded the delivery (the database is this test's
    // own, so any delivery is this order's): the order went all the way.
    let db = kit::mongo_db(&db_name).await;
    let delivered = tokio::time::timeout(Duration::from_secs(90), async {
        loop {
            let n = db
                .collection::<bson::Document>("notifications")
                .count_documents(bson::doc! {})
                .await
                .unwrap_or(0);
            if n > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    if delivered.is_err() {
        stack.print_log_tails();
        panic!("the order's confirmation was not delivered within 90 s");
    }
    assert!(
        receiver.spans().is_empty(),
        "spans arrived before shutdown: the schedule delay did not apply"
    );
    stack.terminate().await;

    let everything = receiver.spans();
    if everything.is_empty() {
        stack.print_log_tails();
        panic!("no span arrived at all");
    }
    let spans: Vec<ReceivedSpan> = everything
        .iter()
        .filter(|s| s.trace_id == trace_id)
        .cloned()
        .collect();
    let of = |service: &str| -> Vec<&ReceivedSpan> {
        spans.iter().filter(|s| s.service == service).collect()
    };
    let describe = || {
        spans
            .iter()
            .map(|s| {
                format!(
                    "{} {} {}←{}",
                    s.service, s.name, s.span_id, s.parent_span_id
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    // The producer's span continues the caller's trace.
    let producer_spans = of("producer");
    assert!(
        producer_spans
            .iter()
            .any(|s| s.parent_span_id == "00f067aa0ba902b7"),
        "no producer span under the caller's span:\n{}",
        describe()
    );
    // Each stage processes the order in a child of the previous service's
    // span, with messaging attributes.
    let mut previous = producer_spans;
    for stage in ["persist", "inventory", "payment", "notify"] {
        let mine = of(stage);
        let process = mine
            .iter()
            .find(|s| {
                s.attributes
                    .get("messaging.operation.name")
                    .map(String::as_str)
                    == Some("process")
            })
            .unwrap_or_else(|| panic!("no {stage} process span:\n{}", describe()));
        assert!(
            previous.iter().any(|p| p.span_id == process.parent_span_id),
            "{stage}'s process span is not a child of the previous service's spans:\n{}",
            describe()
        );
        assert_eq!(process.attributes["messaging.system"], "kafka");
        assert!(process
            .attributes
            .contains_key("messaging.destination.name"));
        previous = mine;
    }
    // The log lines about the order carry its trace id.
    for (service, message) in [
        ("persist", "order saved"),
        ("inventory", "stock decided"),
        ("payment", "payment settled"),
        ("notify", "notification"),
    ] {
        let log = stack.log(service);
        let line: serde_json::Value = log
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|l| l["message"] == message)
            .unwrap_or_else(|| panic!("no {message:?} line from {service}:\n{log}"));
        assert_eq!(line["trace_id"], trace_id, "{service}: {line}");
        assert_eq!(
            line["span_id"].as_str().map(str::len),
            Some(16),
            "{service}: {line}"
        );
    }
    // Annotations of the order's processing are span events; the log
    // channel's notification is a delivery and stays out of the trace
    // (it would copy the recipient into the trace store).
    let events = |service: &str| -> Vec<(String, Vec<String>)> {
        of(service)
            .into_iter()
            .flat_map(|s| s.events.clone())
            .collect()
    };
    assert!(
        events("inventory")
            .iter()
            .any(|(name, _)| name == "stock decided"),
        "no \"stock decided\" event in inventory's spans: {:?}",
        events("inventory")
    );
    assert!(
        !events("notify")
            .iter()
            .any(|(name, keys)| name == "notification" || keys.iter().any(|k| k == "recipient")),
        "the log channel's delivery became a span event: {:?}",
        events("notify")
    );
    // Database calls are child spans within the trace.
    let child_of = |child: &ReceivedSpan, service: &str| {
        spans
            .iter()
            .any(|p| p.service == service && p.span_id == child.parent_span_id)
    };
    let redis = spans
        .iter()
        .find(|s| s.db_system() == Some("redis"))
        .unwrap_or_else(|| panic!("no Redis span:\n{}", describe()));
    assert!(child_of(redis, "producer"), "{}", describe());
    // persist writes a whole batch at once: its insert is linked to the
    // order's process span instead of being its child.
    let process = of("persist")
        .into_iter()
        .find(|s| {
            s.attributes
                .get("messaging.operation.name")
                .map(String::as_str)
                == Some("process")
        })
        .unwrap();
    assert!(
        everything.iter().any(|s| s.service == "persist"
            && s.attributes.get("db.operation.name").map(String::as_str) == Some("insertMany")
            && s.links
                .contains(&(trace_id.to_string(), process.span_id.clone()))),
        "no insertMany span linked to persist's process span"
    );
    for stage in ["inventory", "payment"] {
        assert!(
            spans.iter().any(|s| s.service == stage
                && s.db_system() == Some("mongodb")
                && child_of(s, stage)),
            "no MongoDB child span in {stage}:\n{}",
            describe()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stage_reports_its_messages_and_its_producers_view_of_the_broker() {
    let topics = kit::topics("stagemetrics");
    kit::create_topics(&kit::kafka(), &topics).await;
    let db_name = kit::unique("stagemetrics");
    // Fresh statistics windows every 200 ms instead of 5 s.
    let mut stack = Stack::new(
        &topics,
        &db_name,
        &[("KAFKA_CONFIG", "statistics.interval.ms=200")],
    );
    let producer = stack.spawn_producer();
    stack.spawn_stages();
    let client = reqwest::Client::new();
    kit::ready(&producer).await;
    for stage in &STAGES {
        kit::ready(&stack.stage_url(stage.name)).await;
    }

    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let mut missing;
    loop {
        // Orders keep coming, so each statistics window has requests.
        let r = client
            .post(format!("{producer}/orders"))
            .json(&serde_json::json!({"customerId": "c-metrics",
                                      "items": [{"productId": "tea", "quantity": 1, "unitPrice": 3.20}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), reqwest::StatusCode::ACCEPTED);
        missing = Vec::new();
        for stage in &STAGES {
            let text = kit::scrape(&client, &stack.stage_url(stage.name)).await;
            let prefix = format!("orderflow_{}", stage.name);
            let done = kit::metric(
                &text,
                &format!("{prefix}_messages_total"),
                &["outcome=\"done\""],
            );
            if done.unwrap_or(0.0) < 1.0 {
                missing.push(format!("{}: no message done\n{text}", stage.name));
            }
            assert!(
                kit::metric(
                    &text,
                    &format!("{prefix}_kafka_producer_messages_queued"),
                    &[]
                )
                .is_some(),
                "{} does not export its producer's gauges:\n{text}",
                stage.name
            );
            // The stages that publish decisions report their producer's
            // round trip to the broker; notify publishes nothing, but its
            // gauges are there.
            if !stage.outputs.is_empty() {
                match kit::metric(
                    &text,
                    &format!("{prefix}_kafka_producer_rtt_seconds"),
                    &["quantile=\"0.99\"", "broker=\""],
                ) {
                    // A real round trip on loopback: more than nothing, far
                    // less than a second.
                    Some(rtt) => assert!(
                        rtt > 0.0 && rtt < 1.0,
                        "{}: rtt p99 {rtt}\n{text}",
                        stage.name
                    ),
                    None => missing.push(format!("{}: no broker round trip\n{text}", stage.name)),
                }
            }
        }
        if missing.is_empty() {
            break;
        }
        if std::time::Instant::now() > deadline {
            stack.print_log_tails();
            panic!("after 90 s:\n{}", missing.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The consumers got no statistics interval: rdkafka's default handler
    // would have logged every report.
    for stage in STAGES.iter().map(|s| s.name) {
        let log = stack.log(stage);
        assert!(
            !log.contains("Client stats"),
            "{stage} logged librdkafka's statistics:\n{log}"
        );
    }
    stack.terminate().await;
}
