//! The request's span ends with its answer, not with the work queued behind
//! it: the recent-orders write, parented by the request's trace context, is
//! exported as a span of its own that may end much later.

use std::time::Duration;

use orderflow_testkit::otlp::{ReceivedSpan, Receiver};
use orderflow_testkit::{self as kit, stack::Stack};

fn is_redis(span: &ReceivedSpan) -> bool {
    span.db_system() == Some("redis")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_span_ends_with_the_answer_not_with_the_redis_write() {
    let receiver = Receiver::start().await;
    let redis = kit::spawn_redis();
    let redis_url = format!("redis://127.0.0.1:{}", redis.port);
    let topics = kit::topics("span-end");
    kit::create_topics(&kit::kafka(), &topics).await;
    let mut stack = Stack::new(
        &topics,
        &kit::unique("span-end"),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.as_str()),
            ("REDIS_URL", redis_url.as_str()),
            ("REDIS_TIMEOUT", "10s"),
        ],
    );
    let producer = stack.spawn_producer();
    kit::ready(&producer).await;

    let client = reqwest::Client::new();
    let post = |traceparent: Option<String>| {
        let mut request = client
            .post(format!("{producer}/orders"))
            .json(&serde_json::json!({"customerId": "c", "productId": "p"}));
        if let Some(tp) = traceparent {
            request = request.header("traceparent", tp);
        }
        async move {
            let asked = std::time::Instant::now();
            let status = request.send().await.unwrap().status();
            assert_eq!(status, reqwest::StatusCode::ACCEPTED);
            asked.elapsed()
        }
    };
    // The first order waits for the broker's producer id and metadata.
    post(None).await;

    // Redis answers nothing for a while: the write waits, the 202 does not.
    redis.pause();
    let trace_id = "5af92f3577b34da6a3ce929d0e0e4736";
    let answered_in = post(Some(format!("00-{trace_id}-00f067aa0ba902b7-01"))).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let resumed_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    redis.resume();
    let spans = kit::eventually(
        Duration::from_secs(30),
        "the Redis write exported",
        || async {
            let spans: Vec<ReceivedSpan> = receiver
                .spans()
                .into_iter()
                .filter(|s| s.trace_id == trace_id)
                .collect();
            spans.iter().any(is_redis).then_some(spans)
        },
    )
    .await;
    let ms = |s: &ReceivedSpan| (s.end_ns - s.start_ns) as f64 / 1e6;
    let described: Vec<String> = spans
        .iter()
        .map(|s| {
            format!(
                "{} {} <- {}: {:.1} ms",
                s.name,
                s.span_id,
                s.parent_span_id,
                ms(s)
            )
        })
        .collect();
    let server = spans
        .iter()
        .find(|s| s.attributes.contains_key("http.request.method"))
        .unwrap_or_else(|| panic!("no server span: {described:#?}"));
    let write = spans.iter().find(|s| is_redis(s)).unwrap();
    // The write waited for Redis to answer again; the request did not.
    assert!(write.end_ns >= resumed_ns, "{described:#?}");
    assert!(
        ms(server) <= answered_in.as_secs_f64() * 1e3,
        "the request's span outlasted its answer ({answered_in:?}): {described:#?}"
    );
    // The write is still in the request's trace, below its span.
    let mut parent = &write.parent_span_id;
    while parent != &server.span_id {
        parent = &spans
            .iter()
            .find(|s| &s.span_id == parent)
            .unwrap_or_else(|| panic!("the write is not below the request: {described:#?}"))
            .parent_span_id;
    }
    stack.terminate().await;
}
