//! A paced run (`loadgen --rate`) against the real producer and broker: it
//! sends every order at about the rate asked, each one reaches the topic,
//! and it reports the latency from each arrival's due time beside the one
//! from the send (never below it, request by request).

use std::process::Command;

use orderflow_testkit::{self as kit, stack::Stack};

/// The value after `label` on the report line starting with `line`.
fn figure(report: &str, line: &str, label: &str) -> f64 {
    let row = report
        .lines()
        .find(|l| l.trim_start().starts_with(line))
        .unwrap_or_else(|| panic!("no {line:?} line in:\n{report}"));
    let after = row
        .split_once(label)
        .unwrap_or_else(|| panic!("no {label:?} in {row:?}"))
        .1;
    after.split_whitespace().next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_paced_run_sends_every_order_at_the_rate_and_times_it_from_its_arrival() {
    let (mut stack, topics, url) = Stack::with_producer("paced").await;

    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--url", &url, "--rate", "1000", "--count", "1500"])
        .args(["--connections", "8", "--prefix", &kit::unique("paced")])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{report}", out.status);
    assert_eq!(figure(&report, "accepted", "accepted"), 1500.0, "{report}");
    // 1 500 arrivals at 1 000/s take about 1.5 s (a Poisson process's sum
    // of gaps wanders by a few percent); a faster run did not pace.
    let rate = figure(&report, "rate", "rate");
    assert!((800.0..=1100.0).contains(&rate), "rate {rate}:\n{report}");
    // Each request's time from its due time includes its time from the send.
    for q in ["p50", "p99", "max"] {
        let sent = figure(&report, "latency", q);
        let due = figure(&report, "from due", q);
        assert!(
            due >= sent,
            "{q}: from due {due} < from send {sent}:\n{report}"
        );
    }
    kit::eventually(
        std::time::Duration::from_secs(30),
        "every paced order on the topic",
        || async { (kit::message_count(&kit::kafka(), &topics.orders) == 1500).then_some(()) },
    )
    .await;
    stack.terminate().await;
}
