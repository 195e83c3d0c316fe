//! `platform::kafka::Producer` against the real broker: every send gets
//! its own acknowledgement, a full queue is waited out, a message the
//! broker cannot take is reported, and an idle producer costs nothing
//! (rdkafka's `FutureProducer` spent 9–10 ms of CPU a second polling).
//! One test, in steps: the last one measures this process's CPU.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures::future::join_all;
use orderflow_platform::kafka::producer;
use orderflow_testkit as kit;
use rdkafka::producer::FutureRecord;

#[tokio::test]
async fn sends_are_acknowledged_each_once_failures_are_reported_and_an_idle_producer_costs_nothing()
{
    let brokers = kit::kafka();
    let topics = kit::topics("producer");
    kit::create_topics(&brokers, &topics).await;
    let p = producer(
        &kit::kafka_args(&brokers),
        "producer-test",
        Duration::from_secs(10),
    )
    .unwrap();

    // 500 at once: each acknowledged, at a position of its own.
    let keys: Vec<String> = (0..500).map(|i| format!("k-{i}")).collect();
    let sends = keys.iter().map(|k| {
        p.send(
            FutureRecord::to(&topics.orders).key(k).payload(k),
            Duration::from_secs(5),
        )
    });
    let acks: Vec<(i32, i64)> = join_all(sends)
        .await
        .into_iter()
        .map(|r| {
            let d = r.map_err(|(e, _)| e).expect("acknowledged");
            (d.partition, d.offset)
        })
        .collect();
    assert_eq!(acks.iter().collect::<BTreeSet<_>>().len(), 500);
    assert_eq!(kit::message_count(&brokers, &topics.orders), 500);

    // A queue of one message: the others wait their turn, none is lost.
    let mut args = kit::kafka_args(&brokers);
    args.extra = "queue.buffering.max.messages=1,linger.ms=20"
        .to_string()
        .into();
    let narrow = producer(&args, "producer-narrow", Duration::from_secs(10)).unwrap();
    let sends = keys[..20].iter().map(|k| {
        narrow.send(
            FutureRecord::to(&topics.validated).key(k).payload(k),
            Duration::from_secs(20),
        )
    });
    for r in join_all(sends).await {
        r.map_err(|(e, _)| e).expect("acknowledged after waiting");
    }
    assert_eq!(kit::message_count(&brokers, &topics.validated), 20);

    // A topic that does not exist (the broker creates none): reported
    // once the delivery timeout is over, with the message handed back.
    let short = producer(
        &kit::kafka_args(&brokers),
        "producer-short",
        Duration::from_secs(2),
    )
    .unwrap();
    let missing = kit::unique("no-such-topic");
    let started = Instant::now();
    let failed = tokio::time::timeout(
        Duration::from_secs(30),
        short.send(
            FutureRecord::to(&missing).key("k").payload("lost?"),
            Duration::from_secs(1),
        ),
    )
    .await
    .expect("a failure is reported, not waited for forever");
    let (error, message) = failed.expect_err("nothing can take it");
    assert_eq!(
        rdkafka::message::Message::payload(&message),
        Some(&b"lost?"[..]),
        "{error}"
    );
    assert!(started.elapsed() < Duration::from_secs(20), "{error}");
    drop((short, narrow));

    // Idle: three producers, nothing sent for three seconds.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = cpu_of_this_process();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let spent = cpu_of_this_process().saturating_sub(before);
    assert!(
        spent < Duration::from_millis(6),
        "an idle producer used {spent:?} of CPU in 3 s (FutureProducer: about 30 ms)"
    );
    drop(p);
}

/// CPU time of every thread of this process so far (schedstat, in ns).
fn cpu_of_this_process() -> Duration {
    let mut ns = 0u64;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        if let Ok(s) = std::fs::read_to_string(task.path().join("schedstat")) {
            ns += s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Duration::from_nanos(ns)
}
