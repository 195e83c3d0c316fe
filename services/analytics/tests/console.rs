//! The pipeline console's API and command line against the real broker
//! (issue 15): the built binaries of producer, the four stages and
//! analytics run as processes on this test's topics, database and groups.
//! A poison message is dead-lettered by the real persist stage; it is
//! listed, shown with its original bytes, re-driven once over HTTP and once
//! from `analytics dlq`, each asked twice, and every re-drive is recorded.
//! A valid order's timeline shows every event with one trace id, and the
//! pipeline sample shows each stage's group, lag and dead letters.

use std::collections::BTreeSet;
use std::time::Duration;

use base64::Engine;
use orderflow_platform::kafka::headers::dlq;
use orderflow_testkit as kit;
use rdkafka::Message;
use reqwest::StatusCode;
use serde_json::json;

mod support;

use support::{Console, TOKEN};

#[tokio::test]
async fn dead_letters_are_listed_shown_and_redriven_once_over_http_and_the_command_line() {
    let c = Console::start("console", &[]).await;
    let brokers = kit::kafka();
    let poison = b"{not json at all";
    // With a header whose name is not UTF-8, as any librdkafka producer
    // may send: it is carried along (with U+FFFD for what is not UTF-8)
    // through persist's dead-lettering and analytics' reads, and stops
    // neither (rdkafka's own header reader panics on it).
    kit::produce_with_raw_header(
        &kit::producer(&brokers),
        &c.topics.orders,
        "poison-1",
        poison,
        (b"x-\xff\xfe", b"kept"),
    )
    .await;

    // Dead-lettered by the real persist stage, listed with its headers.
    let letters = c.letters(1).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let first = &letters[0];
    assert_eq!(first["stage"], "persist");
    assert_eq!(first["key"], "poison-1");
    assert_eq!(first["sourceTopic"], c.topics.orders.as_str());
    assert!(first["reason"].as_str().is_some_and(|r| !r.is_empty()));
    assert!(first["redrive"].is_null());
    let (p, o) = (
        first["partition"].as_i64().unwrap(),
        first["offset"].as_i64().unwrap(),
    );

    // One dead letter: the original bytes and every header.
    let (status, shown) = c.get(&format!("/analytics/dlq/{p}/{o}")).await;
    assert_eq!(status, StatusCode::OK, "{shown}");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(shown["payloadBase64"].as_str().unwrap())
        .unwrap();
    assert_eq!(bytes, poison);
    let header_keys: BTreeSet<&str> = shown["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["key"].as_str().unwrap())
        .collect();
    for k in [
        dlq::STAGE,
        dlq::REASON,
        dlq::TOPIC,
        dlq::PARTITION,
        dlq::OFFSET,
        "x-\u{FFFD}\u{FFFD}",
    ] {
        assert!(header_keys.contains(k), "{k}: {header_keys:?}");
    }

    // Client mistakes are 4xx.
    assert_eq!(
        c.get(&format!("/analytics/dlq/{p}/{}", o + 1000)).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(c.get("/analytics/dlq/x/y").await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        c.get("/analytics/dlq?limit=0").await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        c.get("/analytics/dlq?cursor=zz").await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        c.get("/analytics/dlq?stage=nope").await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let one = json!({"partition": p, "offset": o, "actor": "alice"}).to_string();
    assert_eq!(c.redrive(None, &one).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        c.redrive(Some("wrong"), &one).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(c.redrive(Some(TOKEN), "{").await.0, StatusCode::BAD_REQUEST);
    assert_eq!(
        c.redrive(Some(TOKEN), r#"{"bogus":1}"#).await.0,
        StatusCode::BAD_REQUEST
    );
    for body in [
        "{}",
        r#"{"partition":0}"#,
        r#"{"partition":0,"offset":0,"stage":"persist"}"#,
        r#"{"stage":"persist","limit":0}"#,
        r#"{"stage":"nope"}"#,
    ] {
        let (status, problem) = c.redrive(Some(TOKEN), body).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {problem}"
        );
        assert!(
            !problem["errors"].as_array().unwrap().is_empty(),
            "{problem}"
        );
    }
    assert_eq!(
        c.redrive(Some(TOKEN), r#"{"partition":0,"offset":999999}"#)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        kit::message_count(&brokers, &c.topics.orders),
        1,
        "nothing was sent"
    );

    // Re-driven once: back on its source topic, bytes and key unchanged,
    // the dlq_* headers gone and the dead letter named.
    let (status, report) = c.redrive(Some(TOKEN), &one).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["redriven"], 1, "{report}");
    assert_eq!(report["outcomes"][0]["outcome"], "redriven");
    assert_eq!(report["outcomes"][0]["topic"], c.topics.orders.as_str());
    let (status, again) = c.redrive(Some(TOKEN), &one).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["redriven"], 0, "{again}");
    assert_eq!(again["outcomes"][0]["reason"], "already-redriven");
    assert!(again["outcomes"][0]["redrivenBy"]
        .as_str()
        .unwrap()
        .starts_with("alice (token:"));
    assert_eq!(
        kit::message_count(&brokers, &c.topics.orders),
        2,
        "sent once"
    );
    let back = kit::consume(&brokers, &c.topics.orders, 2, Duration::from_secs(20)).await;
    let resent = back
        .iter()
        .find(|m| kit::header(m, "orderflow_redrive").is_some())
        .expect("the re-driven record");
    assert_eq!(resent.payload(), Some(&poison[..]));
    assert_eq!(resent.key(), Some(&b"poison-1"[..]));
    assert!(kit::header(resent, dlq::STAGE).is_none());
    assert_eq!(
        kit::header(resent, "orderflow_redrive"),
        Some(format!("{}/{p}/{o}", c.topics.dlq).as_str())
    );

    // Still poison: persist dead-letters it again, a new dead letter that
    // names the first. The list shows who re-drove the first.
    let letters = c.letters(2).await;
    let second = &letters[0];
    assert_eq!(letters[1]["redrive"]["state"], "done", "{letters:?}");
    assert!(letters[1]["redrive"]["by"]
        .as_str()
        .unwrap()
        .starts_with("alice"));
    let (p2, o2) = (
        second["partition"].as_i64().unwrap(),
        second["offset"].as_i64().unwrap(),
    );
    assert_ne!((p2, o2), (p, o));

    // The command line: the same list, and a re-drive asked twice.
    let listed = c.cli(&["list", "--stage", "persist"]);
    assert_eq!(listed["items"].as_array().unwrap().len(), 2, "{listed}");
    let (p2s, o2s) = (p2.to_string(), o2.to_string());
    let by_cli = c.cli(&["redrive", "--partition", &p2s, "--offset", &o2s]);
    assert_eq!(by_cli["redriven"], 1, "{by_cli}");
    let by_cli = c.cli(&["redrive", "--partition", &p2s, "--offset", &o2s]);
    assert_eq!(by_cli["redriven"], 0, "{by_cli}");
    assert_eq!(by_cli["outcomes"][0]["redrivenBy"], "cli:ci");
    assert_eq!(kit::message_count(&brokers, &c.topics.orders), 3);
    let shown = c.cli(&["show", &p2s, &o2s]);
    assert_eq!(shown["payloadText"], "{not json at all");

    // Every re-drive is recorded: who, when, what.
    let records: Vec<bson::Document> = {
        use futures::TryStreamExt;
        kit::mongo_db(&c.db)
            .await
            .collection::<bson::Document>("redrives")
            .find(bson::doc! {})
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap()
    };
    assert_eq!(records.len(), 2, "{records:?}");
    for r in &records {
        assert_eq!(r.get_str("state").unwrap(), "done");
        assert!(r.get_datetime("redrivenAt").is_ok());
        assert_eq!(r.get_str("sourceTopic").unwrap(), c.topics.orders);
        assert_eq!(r.get_str("stage").unwrap(), "persist");
    }

    // A valid order: its timeline has every event, each stage's, with one
    // trace id.
    let r = c
        .http
        .post(format!("{}/orders", c.producer))
        .json(&json!({"orderId": "t-1", "customerId": "c-1",
                      "items": [{"productId": "coffee", "quantity": 1, "unitPrice": 4.50}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let timeline = kit::eventually(Duration::from_secs(60), "the whole timeline", || async {
        let (status, t) = c.get("/analytics/orders/t-1/timeline").await;
        let stages: BTreeSet<String> = t["events"]
            .as_array()?
            .iter()
            .filter_map(|e| e["stage"].as_str().map(str::to_owned))
            .collect();
        (status == StatusCode::OK && stages.len() >= 4).then_some(t)
    })
    .await;
    let events = timeline["events"].as_array().unwrap();
    let stages: Vec<&str> = events
        .iter()
        .map(|e| e["stage"].as_str().unwrap())
        .collect();
    for s in ["producer", "persist", "inventory", "payment"] {
        assert!(stages.contains(&s), "{stages:?}");
    }
    assert_eq!(events[0]["stage"], "producer", "in time order: {stages:?}");
    assert_eq!(events[0]["topic"], c.topics.orders.as_str());
    let traces: BTreeSet<&str> = events
        .iter()
        .filter_map(|e| e["traceId"].as_str())
        .collect();
    assert_eq!(traces.len(), 1, "one trace follows the order: {traces:?}");
    let timestamps: Vec<i64> = events
        .iter()
        .map(|e| e["timestamp"].as_i64().unwrap())
        .collect();
    assert!(
        timestamps.windows(2).all(|w| w[0] <= w[1]),
        "{timestamps:?}"
    );
    assert_eq!(
        c.get("/analytics/orders/nothing-here/timeline").await.0,
        StatusCode::NOT_FOUND
    );
    // The poison's timeline: its dead letters, without a stored order.
    let (status, poison_timeline) = c.get("/analytics/orders/poison-1/timeline").await;
    assert_eq!(status, StatusCode::OK);
    assert!(poison_timeline["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["deadLetterReason"].is_string()));

    // The pipeline sample: every stage's group, its partitions, its
    // members, and persist's dead letters.
    let sample = kit::eventually(
        Duration::from_secs(30),
        "a sample with every member",
        || async {
            let (status, p) = c.get("/analytics/pipeline").await;
            let all_in = p["stages"].as_array()?.iter().all(|s| s["replicas"] == 1);
            (status == StatusCode::OK && all_in && p["deadLettersComplete"] == true).then_some(p)
        },
    )
    .await;
    let stages = sample["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 4);
    for s in stages {
        let name = s["name"].as_str().unwrap();
        assert_eq!(s["group"], c.stack.group(name), "{s}");
        assert!(
            s["retries"].is_u64(),
            "{name}: retries from stage_stats: {s}"
        );
        assert!(s["error"].is_null(), "{s}");
    }
    let persist = &stages[0];
    assert_eq!(persist["name"], "persist");
    assert_eq!(persist["partitions"].as_array().unwrap().len(), 6);
    assert!(persist["deadLettered"].as_u64().unwrap() >= 2, "{persist}");
    assert_eq!(sample["topics"].as_array().unwrap().len(), 6);
    assert!(sample["edges"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["from"] == "producer"));
    let mut stack = c.stack;
    stack.assert_running();
}

/// Each dead letter a re-drive sends is read at its own position. Reading
/// one used to wait out the previous read's fetch at the partition's end
/// (about 0.6 s a letter: 14 letters took 8 s), so a re-drive of a few
/// dozen outlived the request timeout and answered 503 half-done. Thirty
/// letters within a 4 s request timeout, every one sent.
#[tokio::test]
async fn a_redrive_of_thirty_dead_letters_is_answered_within_the_request_timeout() {
    let c = Console::start("console-many", &[("REQUEST_TIMEOUT", "4s")]).await;
    let brokers = kit::kafka();
    let producer = kit::producer(&brokers);
    for i in 0..30 {
        kit::produce(
            &producer,
            &c.topics.orders,
            &format!("poison-{i}"),
            b"{nope",
        )
        .await;
    }
    let letters = c.letters(30).await;
    assert_eq!(letters.len(), 30, "{letters:?}");

    let (status, report) = c
        .redrive(Some(TOKEN), r#"{"stage":"persist","actor":"bulk"}"#)
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["matched"], 30, "{report}");
    assert_eq!(report["redriven"], 30, "{report}");
    assert_eq!(kit::message_count(&brokers, &c.topics.orders), 60);
    // One at a time, too: each shown within the timeout.
    for l in letters.iter().take(5) {
        let (status, shown) = c
            .get(&format!(
                "/analytics/dlq/{}/{}",
                l["partition"], l["offset"]
            ))
            .await;
        assert_eq!(status, StatusCode::OK, "{shown}");
        assert_eq!(shown["payloadText"], "{nope");
    }
    let mut stack = c.stack;
    stack.assert_running();
}
