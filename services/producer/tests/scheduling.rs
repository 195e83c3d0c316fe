//! The producer's threads run with a short scheduler slice (ADR 0014): the
//! binary as `scripts/up` and the chart run it, every thread of it,
//! including librdkafka's and the runtime's, read from /proc; `SCHED_SLICE`
//! changes it, `0` leaves the kernel's own, and a bad value stops the
//! service with an error that names the variable. Needs Linux 6.12 or later
//! (custom slices), as the bench machine has.

use std::time::Duration;

use orderflow_producer::SCHED_SLICE;
use orderflow_testkit::{self as kit, stack::Stack};

async fn spawn(stack: &mut Stack, service: &str, slice: Option<&str>) -> String {
    let env: Vec<_> = slice
        .map(|s| ("SCHED_SLICE", s.to_owned()))
        .into_iter()
        .collect();
    let url = stack.spawn_producer_as(service, &env);
    kit::ready(&url).await;
    url
}

#[tokio::test]
async fn every_thread_of_the_producer_has_its_slice() {
    let topics = kit::topics("slice");
    kit::create_topics(&kit::kafka(), &topics).await;
    let mut stack = Stack::new(&topics, &kit::unique("slice"), &[]);

    // The default, after an order went through (librdkafka's threads and
    // the runtime's all exist by then).
    let url = spawn(&mut stack, "producer", None).await;
    let accepted = reqwest::Client::new()
        .post(format!("{url}/orders"))
        .json(&serde_json::json!({"customerId": "c", "productId": "p"}))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), reqwest::StatusCode::ACCEPTED);
    let threads = kit::thread_slices(stack.pid("producer"));
    assert!(threads.len() >= 5, "{threads:?}");
    let want = SCHED_SLICE.as_nanos() as u64;
    assert!(
        threads.iter().all(|(_, slice)| *slice == want),
        "every thread at {want} ns: {threads:?}"
    );
    assert!(
        threads.iter().any(|(name, _)| name.starts_with("rdk:")),
        "librdkafka's threads are among them: {threads:?}"
    );
    assert!(
        stack.log("producer").contains("scheduler slice set"),
        "{}",
        stack.log("producer")
    );

    // Another slice, and none.
    spawn(&mut stack, "producer-2ms", Some("2ms")).await;
    let threads = kit::thread_slices(stack.pid("producer-2ms"));
    assert!(
        threads.iter().all(|(_, slice)| *slice == 2_000_000),
        "{threads:?}"
    );
    spawn(&mut stack, "producer-kernel", Some("0")).await;
    let threads = kit::thread_slices(stack.pid("producer-kernel"));
    assert!(
        threads.iter().all(|(_, slice)| *slice != want),
        "the kernel's own slice: {threads:?}"
    );
    stack.terminate().await;

    // A value that is not a slice: the service does not start, and says why.
    let mut bad = Stack::new(&topics, &kit::unique("slice"), &[]);
    bad.spawn_producer_as("producer-bad", &[("SCHED_SLICE", "fast".to_owned())]);
    let mut log = String::new();
    for _ in 0..100 {
        log = bad.log("producer-bad");
        if log.contains("SCHED_SLICE") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(log.contains("SCHED_SLICE=\"fast\""), "{log}");
}
