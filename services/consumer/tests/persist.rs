//! The persist stage end to end, against the real broker and MongoDB started
//! by scripts/test: producer → `orders` → persist → MongoDB + `orders.validated`.

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::time::Duration;

use bson::{doc, Document};
use clap::Parser;
use futures::stream::{self, StreamExt};
use orderflow_domain::events::{OrderPlaced, OrderRejected, OrderValidated, PlacedItem};
use orderflow_domain::Money;
use orderflow_platform::config::TopicArgs;
use orderflow_platform::kafka::{
    self,
    headers::{self, dlq},
};
use orderflow_platform::mongo::documents::OrderDocument;
use orderflow_platform::shutdown::CancellationToken;
use orderflow_testkit as kit;
use rdkafka::Message;
use reqwest::StatusCode;
use serde_json::json;

mod support;
use support::{one_at_a_time, spawn_stage};

fn persist_args(topics: &TopicArgs, mongo_url: &str, brokers: &str, extra: &[&str]) -> Vec<String> {
    let mut argv: Vec<String> = [
        "consumer",
        "--stage",
        "persist",
        "--port",
        "0",
        "--bind",
        "127.0.0.1",
        "--kafka-brokers",
        brokers,
        "--mongo-url",
        mongo_url,
        "--topic-orders",
        &topics.orders,
        "--topic-validated",
        &topics.validated,
        "--topic-notifications",
        &topics.notifications,
        "--topic-dlq",
        &topics.dlq,
        "--group",
        &kit::unique("persist"),
        "--max-backoff",
        "1s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    argv.extend(extra.iter().map(|s| s.to_string()));
    argv
}

/// Producer and persist stage in this process, on private topics and a
/// private database.
struct Pipeline {
    topics: TopicArgs,
    brokers: String,
    db: mongodb::Database,
    base: String,
    client: reqwest::Client,
    shutdown: CancellationToken,
}

impl Pipeline {
    async fn start(extra: &[&str]) -> Pipeline {
        Self::start_with_mongo(None, extra).await
    }

    async fn start_with_mongo(mongo_url: Option<String>, extra: &[&str]) -> Pipeline {
        kit::telemetry();
        let brokers = kit::kafka();
        let topics = kit::topics("persist");
        kit::create_topics(&brokers, &topics).await;
        let db_name = kit::unique("persist");
        let mongo_url = mongo_url.unwrap_or_else(|| kit::mongo_url(&db_name));
        let db = mongodb::Client::with_uri_str(&mongo_url)
            .await
            .unwrap()
            .default_database()
            .unwrap();
        let shutdown = CancellationToken::new();
        let producer = orderflow_producer::Args::try_parse_from([
            "producer",
            "--port",
            "0",
            "--bind",
            "127.0.0.1",
            "--kafka-brokers",
            &brokers,
            "--topic-orders",
            &topics.orders,
            "--redis-url",
            &kit::redis_url(),
            "--recent-orders-key",
            &format!("{}:recent", topics.orders),
        ])
        .unwrap();
        let producer = orderflow_producer::start(producer, shutdown.clone())
            .await
            .unwrap();
        let persist = orderflow_consumer::Args::try_parse_from(persist_args(
            &topics, &mongo_url, &brokers, extra,
        ))
        .unwrap();
        orderflow_consumer::start(persist, shutdown.clone())
            .await
            .unwrap();
        Pipeline {
            topics,
            brokers,
            db,
            base: format!("http://{}", producer.addr),
            client: reqwest::Client::new(),
            shutdown,
        }
    }

    async fn post(&self, body: &serde_json::Value) -> StatusCode {
        self.client
            .post(format!("{}/orders", self.base))
            .json(body)
            .send()
            .await
            .unwrap()
            .status()
    }

    async fn count(&self) -> u64 {
        self.db
            .collection::<Document>("orders")
            .count_documents(doc! {})
            .await
            .unwrap()
    }

    async fn wait_count(&self, n: u64, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        while self.count().await < n {
            if std::time::Instant::now() > deadline {
                let (count, ids) = stored_ids(&self.db).await;
                let mut ids: Vec<_> = ids.into_iter().collect();
                ids.sort();
                panic!("timed out waiting for {n} orders in MongoDB; {count} stored: {ids:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(self.count().await, n);
    }

    async fn order(&self, id: &str) -> OrderDocument {
        self.db
            .collection::<OrderDocument>("orders")
            .find_one(doc! {"orderId": id})
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("order {id} not stored"))
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn seed_catalogue(db: &mongodb::Database) {
    db.collection::<Document>("inventory")
        .insert_many([
            doc! {"productId": "coffee", "name": "Coffee", "unitPriceCents": 450_i64, "stock": 100_i64, "capacity": 100_i64},
            doc! {"productId": "mug", "name": "Mug", "unitPriceCents": 1200_i64, "stock": 100_i64, "capacity": 100_i64},
        ])
        .await
        .unwrap();
}

fn trace_id(msg: &orderflow_platform::kafka::Received) -> String {
    kit::header(msg, "traceparent")
        .expect("traceparent")
        .split('-')
        .nth(1)
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn every_shape_lands_in_mongodb_priced_and_exact() {
    let _turn = one_at_a_time().await;
    let p = Pipeline::start(&[]).await;
    seed_catalogue(&p.db).await;
    let orders = [
        json!({"orderId": "canonical", "customerId": "u-42", "currency": "USD",
               "items": [{"productId": "tea", "name": "Tea", "quantity": 3, "unitPrice": 0.1}], "totalAmount": 0.3}),
        json!({"orderId": "ref000", "userId": "u-42", "price": 29.99, "items": ["coffee", "mug"]}),
        json!({"orderId": "ref001", "userId": "user123",
               "products": [{"id": "prod-1", "name": "Product 1", "price": 19.99, "quantity": 2}], "totalAmount": 39.98}),
        json!({"orderId": "ref002", "customerId": "customer-123", "productId": "coffee", "quantity": 2}),
        json!({"orderId": "client-price", "customerId": "c", "items": [{"productId": "coffee", "quantity": 2, "unitPrice": 4.00}]}),
        json!({"orderId": "unknown-unpriced", "customerId": "c", "productId": "ghost", "quantity": 1}),
    ];
    for o in &orders {
        assert_eq!(p.post(o).await, StatusCode::ACCEPTED, "{o}");
    }
    p.wait_count(6, Duration::from_secs(60)).await;

    let canonical = p.order("canonical").await;
    assert_eq!(canonical.total_cents, 30, "0.1 × 3 is exactly 0.30");
    assert_eq!(canonical.status.as_str(), "placed");
    assert_eq!(
        (
            canonical.items[0].product_id.as_str(),
            canonical.items[0].quantity
        ),
        ("tea", 3)
    );
    assert!(
        !canonical.items[0].tracked,
        "unknown products are not stock-tracked"
    );

    let r0 = p.order("ref000").await;
    assert_eq!(r0.customer_id, "u-42");
    assert_eq!(
        r0.items.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
        ["Coffee", "Mug"]
    );
    assert_eq!(r0.total_cents, 1650, "catalogue prices");
    assert_eq!(
        r0.client_total_cents,
        Some(2999),
        "client total kept for audit"
    );

    let r1 = p.order("ref001").await;
    assert_eq!(r1.total_cents, 3998);
    assert_eq!(r1.items[0].unit_price_cents, Some(1999));

    let r2 = p.order("ref002").await;
    assert_eq!(r2.total_cents, 900);
    assert!(r2.items[0].tracked);

    let cp = p.order("client-price").await;
    assert_eq!(
        cp.items[0].unit_price_cents,
        Some(450),
        "the catalogue is authoritative"
    );
    assert_eq!(cp.items[0].client_unit_price_cents, Some(400));
    assert_eq!(cp.total_cents, 900);

    let unknown = p.order("unknown-unpriced").await;
    assert_eq!(unknown.status.as_str(), "rejected");
    assert_eq!(unknown.status_reason.as_deref(), Some("unknown_product"));

    // Five OrderValidated events, one OrderRejected notification, each in
    // the trace its order started in.
    let placed = kit::consume(&p.brokers, &p.topics.orders, 6, Duration::from_secs(20)).await;
    let traces: HashMap<String, String> = placed
        .iter()
        .map(|m| {
            (
                String::from_utf8(m.key().unwrap().to_vec()).unwrap(),
                trace_id(m),
            )
        })
        .collect();
    let validated = kit::consume(&p.brokers, &p.topics.validated, 5, Duration::from_secs(20)).await;
    assert_eq!(validated.len(), 5);
    for m in &validated {
        assert_eq!(
            kit::header(m, headers::TYPE),
            Some("dev.orderflow.order.validated")
        );
        let ev: OrderValidated = serde_json::from_slice(m.payload().unwrap()).unwrap();
        assert_eq!(
            traces[&ev.order_id],
            trace_id(m),
            "trace continues through persist"
        );
        if ev.order_id == "canonical" {
            assert_eq!(ev.total_amount, Money::from_minor(30));
            assert!(std::str::from_utf8(m.payload().unwrap())
                .unwrap()
                .contains(r#""totalAmount":0.30"#));
        }
    }
    let rejected = kit::consume(
        &p.brokers,
        &p.topics.notifications,
        1,
        Duration::from_secs(20),
    )
    .await;
    let ev: OrderRejected = serde_json::from_slice(rejected[0].payload().unwrap()).unwrap();
    assert_eq!(
        (ev.order_id.as_str(), ev.reason.as_str()),
        ("unknown-unpriced", "unknown_product")
    );
}

#[tokio::test]
async fn strict_catalogue_rejects_unknown_products() {
    let _turn = one_at_a_time().await;
    let p = Pipeline::start(&["--strict-catalogue", "true"]).await;
    seed_catalogue(&p.db).await;
    p.post(
        &json!({"orderId": "strict-1", "customerId": "c", "items": [{"id": "tea", "price": 1}]}),
    )
    .await;
    p.post(
        &json!({"orderId": "strict-2", "customerId": "c", "items": [{"id": "coffee", "price": 1}]}),
    )
    .await;
    p.wait_count(2, Duration::from_secs(60)).await;
    assert_eq!(
        p.order("strict-1").await.status_reason.as_deref(),
        Some("unknown_product")
    );
    assert_eq!(p.order("strict-2").await.status.as_str(), "placed");
}

#[tokio::test]
async fn a_thousand_concurrent_orders_are_stored_once_and_reposts_add_none() {
    let _turn = one_at_a_time().await;
    let p = Pipeline::start(&[]).await;
    let body = |i: usize| {
        json!({"orderId": format!("bulk-{i}"), "customerId": format!("c-{}", i % 17),
        "items": [{"productId": "p", "quantity": 1 + i % 3, "unitPrice": 0.1}]})
    };
    let statuses: Vec<StatusCode> = stream::iter(0..1000)
        .map(|i| p.post_owned(body(i)))
        .buffer_unordered(64)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == StatusCode::ACCEPTED));
    p.wait_count(1000, Duration::from_secs(120)).await;

    let statuses: Vec<StatusCode> = stream::iter(0..100)
        .map(|i| p.post_owned(body(i * 7)))
        .buffer_unordered(32)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == StatusCode::ACCEPTED));
    // Every re-post was processed (each input emits one OrderValidated)...
    let validated = kit::consume(
        &p.brokers,
        &p.topics.validated,
        1100,
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(validated.len(), 1100);
    // ...and none created a second order.
    assert_eq!(p.count().await, 1000);
    let total: i64 = (0..1000).map(|i| 10 * (1 + i as i64 % 3)).sum();
    let stored: Vec<Document> =
        p.db.collection::<Document>("orders")
            .aggregate([doc! {"$group": {"_id": null, "sum": {"$sum": "$totalCents"}}}])
            .await
            .unwrap()
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
    assert_eq!(stored[0].get_i64("sum").unwrap(), total);
}

impl Pipeline {
    async fn post_owned(&self, body: serde_json::Value) -> StatusCode {
        self.post(&body).await
    }
}

#[tokio::test]
async fn poison_messages_go_to_the_dlq_and_the_partition_keeps_flowing() {
    let _turn = one_at_a_time().await;
    let p = Pipeline::start(&[]).await;
    let producer = kit::producer(&p.brokers);
    // A record larger than a whole fetch (the stage's consumer asks for at
    // most FETCH_RESPONSE_BYTES): it still arrives, and is dead-lettered whole.
    let large = vec![b'x'; kafka::FETCH_RESPONSE_BYTES + 100 * 1024];
    let poisons: [(&str, &[u8], &str); 4] = [
        ("poison-bytes", b"\x00\xffnot json {", "undecodable"),
        ("poison-shape", br#"{"orderId":"x"}"#, "undecodable"),
        ("poison-empty", br#"{"orderId":"e","customerId":"c","currency":"USD","items":[],"placedAt":"2026-11-22T10:00:00Z"}"#, "invalid_event"),
        ("poison-large", &large, "undecodable"),
    ];
    for (key, payload, _) in &poisons {
        kit::produce(&producer, &p.topics.orders, key, payload).await;
    }
    // A valid order with a header whose name is not UTF-8 (any librdkafka
    // producer may send one): an unknown header, not a poison; it is stored.
    let valid = |id: &str| OrderPlaced {
        order_id: id.into(),
        customer_id: "c".into(),
        currency: "USD".into(),
        items: vec![PlacedItem {
            product_id: "p".into(),
            name: None,
            quantity: 1,
            unit_price: Some(Money::from_minor(100)),
        }],
        total_amount: Some(Money::from_minor(100)),
        client_total: None,
        placed_at: time::OffsetDateTime::now_utc(),
    };
    kit::produce_with_raw_header(
        &producer,
        &p.topics.orders,
        "poison-bytes",
        &serde_json::to_vec(&valid("odd-header-name")).unwrap(),
        (b"x-\xff\xfe", b"v"),
    )
    .await;
    // Same key, so the same partition as a poison message: it must not block.
    kit::produce(
        &producer,
        &p.topics.orders,
        "poison-bytes",
        &serde_json::to_vec(&valid("after-poison")).unwrap(),
    )
    .await;
    p.wait_count(2, Duration::from_secs(60)).await;
    p.order("after-poison").await;
    p.order("odd-header-name").await;

    let dead = kit::consume(
        &p.brokers,
        &p.topics.dlq,
        poisons.len(),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(dead.len(), poisons.len());
    for (key, payload, reason) in poisons {
        let m = dead
            .iter()
            .find(|m| m.key() == Some(key.as_bytes()))
            .unwrap_or_else(|| panic!("{key} not in the DLQ"));
        assert_eq!(m.payload(), Some(payload), "original bytes kept");
        assert_eq!(kit::header(m, dlq::STAGE), Some("persist"));
        assert_eq!(kit::header(m, dlq::REASON), Some(reason), "{key}");
        assert!(kit::header(m, dlq::ERROR).is_some_and(|e| !e.is_empty()));
        assert_eq!(kit::header(m, dlq::TOPIC), Some(p.topics.orders.as_str()));
        assert!(kit::header(m, dlq::PARTITION)
            .unwrap()
            .parse::<i32>()
            .is_ok());
        assert!(kit::header(m, dlq::OFFSET).unwrap().parse::<i64>().is_ok());
    }
}

fn placed(i: usize) -> Vec<u8> {
    serde_json::to_vec(&OrderPlaced {
        order_id: format!("stream-{i}"),
        customer_id: format!("c-{}", i % 50),
        currency: "USD".into(),
        items: vec![PlacedItem {
            product_id: format!("p-{}", i % 20),
            name: None,
            quantity: 1 + (i % 4) as u32,
            unit_price: Some(Money::from_minor(199)),
        }],
        total_amount: None,
        client_total: None,
        placed_at: time::OffsetDateTime::now_utc(),
    })
    .unwrap()
}

async fn stored_ids(db: &mongodb::Database) -> (u64, HashSet<String>) {
    let coll = db.collection::<Document>("orders");
    let n = coll.count_documents(doc! {}).await.unwrap();
    let ids = coll.distinct("orderId", doc! {}).await.unwrap();
    (
        n,
        ids.into_iter()
            .map(|b| b.as_str().unwrap().to_owned())
            .collect(),
    )
}

#[tokio::test]
async fn sigkill_mid_stream_loses_nothing_and_duplicates_nothing() {
    let _turn = one_at_a_time().await;
    const N: usize = 5000;
    let brokers = kit::kafka();
    let topics = kit::topics("sigkill");
    kit::create_topics(&brokers, &topics).await;
    let db_name = kit::unique("sigkill");
    let db = kit::mongo_db(&db_name).await;
    let argv = persist_args(
        &topics,
        &kit::mongo_url(&db_name),
        &brokers,
        &["--batch-size", "200"],
    );

    let producer = kit::producer(&brokers);
    let payloads: Vec<(String, Vec<u8>)> =
        (0..N).map(|i| (format!("stream-{i}"), placed(i))).collect();
    stream::iter(&payloads)
        .for_each_concurrent(256, |(k, v)| kit::produce(&producer, &topics.orders, k, v))
        .await;

    let log_dir = kit::TempDir::new("sigkill-logs");
    let log = log_dir.0.join("persist.log");
    let t0 = std::time::Instant::now();
    let mut child = spawn_stage(&argv, &log);
    let progressed = kit::eventually(
        Duration::from_secs(120),
        "persist to make progress",
        || async {
            let n = db
                .collection::<Document>("orders")
                .count_documents(doc! {})
                .await
                .unwrap();
            (n >= 1000).then_some(n)
        },
    )
    .await;
    child.0.kill().unwrap(); // SIGKILL
    child.0.wait().unwrap();
    let (at_kill, _) = stored_ids(&db).await;
    eprintln!(
        "sigkill test: killed after {:?} with {at_kill} stored",
        t0.elapsed()
    );
    assert!(
        at_kill < N as u64,
        "the kill must land mid-stream (had {progressed}, then {at_kill})"
    );

    // Restarted at once, with no wait: the new member joins while the
    // broker still counts the killed one.
    let mut child = spawn_stage(&argv, &log);
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    while stored_ids(&db).await.0 < N as u64 {
        if std::time::Instant::now() > deadline {
            let logged = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = logged
                .lines()
                .filter(|l| !l.contains("order saved"))
                .collect();
            panic!(
                "only {} of {N} orders after the restart; stage log:\n{}",
                stored_ids(&db).await.0,
                tail.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (n, ids) = stored_ids(&db).await;
    eprintln!("sigkill test: all stored after {:?}", t0.elapsed());
    assert_eq!(n, N as u64, "each order exactly once");
    let expected: HashSet<String> = (0..N).map(|i| format!("stream-{i}")).collect();
    assert_eq!(ids, expected);

    // Every order was also passed on (at least once: redelivery after the
    // kill may repeat some) downstream.
    let published = kit::message_count(&brokers, &topics.validated) as usize;
    assert!(published >= N, "{published} OrderValidated events");
    let validated = kit::consume(
        &brokers,
        &topics.validated,
        published,
        Duration::from_secs(120),
    )
    .await;
    let passed_on: HashSet<String> = validated
        .iter()
        .map(|m| String::from_utf8(m.key().unwrap().to_vec()).unwrap())
        .collect();
    assert_eq!(passed_on, expected);

    // SIGTERM: a graceful stop, exit status 0.
    let pid = child.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = kit::eventually(Duration::from_secs(30), "graceful exit", || {
        let s = child.0.try_wait().unwrap();
        async move { s }
    })
    .await;
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn mongodb_outage_pauses_the_stage_and_nothing_is_skipped() {
    let _turn = one_at_a_time().await;
    let port = kit::free_port();
    let dir = kit::TempDir::new("mongo-outage");
    let mut mongo = kit::spawn_mongo(port, &dir.0);
    let url = format!("mongodb://127.0.0.1:{port}/outage");
    let p = Pipeline::start_with_mongo(Some(url), &[]).await;
    for i in 0..20 {
        assert_eq!(p.post(&json!({"orderId": format!("before-{i}"), "customerId": "c", "items": [{"id": "p", "price": 1}]})).await, StatusCode::ACCEPTED);
    }
    p.wait_count(20, Duration::from_secs(60)).await;

    mongo.kill();
    for i in 0..20 {
        // Intake does not depend on MongoDB.
        assert_eq!(p.post(&json!({"orderId": format!("during-{i}"), "customerId": "c", "items": [{"id": "p", "price": 1}]})).await, StatusCode::ACCEPTED);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _mongo = kit::spawn_mongo(port, &dir.0);
    p.wait_count(40, Duration::from_secs(120)).await;
    for i in 0..20 {
        p.order(&format!("during-{i}")).await;
    }
}

/// Orders flow at a steady rate while a second member of the same group
/// joins (a scale-up) and later leaves with SIGTERM (a scale-down): both
/// rebalances hand partitions over at the committed offsets, so every order
/// is stored once and passed on once.
#[tokio::test]
async fn a_member_joining_and_leaving_mid_stream_loses_and_doubles_nothing() {
    let _turn = one_at_a_time().await;
    const N: usize = 3000;
    let brokers = kit::kafka();
    let topics = kit::topics("members");
    kit::create_topics(&brokers, &topics).await;
    let db_name = kit::unique("members");
    let db = kit::mongo_db(&db_name).await;
    // One argv, so both members share one group.
    let argv = persist_args(
        &topics,
        &kit::mongo_url(&db_name),
        &brokers,
        &["--batch-size", "50"],
    );
    let log_dir = kit::TempDir::new("members-logs");
    let (log_a, log_b) = (log_dir.0.join("a.log"), log_dir.0.join("b.log"));
    let _a = spawn_stage(&argv, &log_a);

    // About 150 orders/s for 20 s.
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sender = {
        let (brokers, topic, sent) = (brokers.clone(), topics.orders.clone(), sent.clone());
        tokio::spawn(async move {
            let producer = kit::producer(&brokers);
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            for chunk in (0..N).collect::<Vec<_>>().chunks(15) {
                tick.tick().await;
                stream::iter(chunk)
                    .for_each_concurrent(15, |i| {
                        let (producer, topic) = (&producer, &topic);
                        async move {
                            kit::produce(producer, topic, &format!("stream-{i}"), &placed(*i)).await
                        }
                    })
                    .await;
                sent.fetch_add(chunk.len(), std::sync::atomic::Ordering::SeqCst);
            }
        })
    };
    let sent_at_least = |n: usize| {
        let sent = sent.clone();
        move || {
            let now = sent.load(std::sync::atomic::Ordering::SeqCst);
            async move { (now >= n).then_some(now) }
        }
    };
    kit::eventually(
        Duration::from_secs(60),
        "a quarter sent",
        sent_at_least(N / 4),
    )
    .await;
    let mut b = spawn_stage(&argv, &log_b);
    // B took part: it saved orders of its own.
    kit::eventually(
        Duration::from_secs(60),
        "the second member to save orders",
        || {
            let saved = std::fs::read_to_string(&log_b)
                .unwrap_or_default()
                .contains("order saved");
            async move { saved.then_some(()) }
        },
    )
    .await;
    kit::eventually(
        Duration::from_secs(60),
        "three quarters sent",
        sent_at_least(3 * N / 4),
    )
    .await;
    assert!(
        sent.load(std::sync::atomic::Ordering::SeqCst) < N,
        "the second member must leave while orders still flow"
    );
    assert!(b.terminate(), "the second member exits cleanly on SIGTERM");
    sender.await.unwrap();

    let expected: HashSet<String> = (0..N).map(|i| format!("stream-{i}")).collect();
    kit::eventually(Duration::from_secs(120), "every order stored", || async {
        (stored_ids(&db).await.0 >= N as u64).then_some(())
    })
    .await;
    let (n, ids) = stored_ids(&db).await;
    assert_eq!(n, N as u64, "each order stored once");
    assert_eq!(ids.symmetric_difference(&expected).count(), 0, "stored ids");
    // Passed on exactly once: no message was handled by two members.
    kit::eventually(Duration::from_secs(60), "every order passed on", || {
        let published = kit::message_count(&brokers, &topics.validated) as usize;
        async move { (published >= N).then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let published = kit::message_count(&brokers, &topics.validated) as usize;
    let validated = kit::consume(
        &brokers,
        &topics.validated,
        published,
        Duration::from_secs(60),
    )
    .await;
    let keys: Vec<String> = validated
        .iter()
        .map(|m| String::from_utf8(m.key().unwrap().to_vec()).unwrap())
        .collect();
    let distinct: HashSet<String> = keys.iter().cloned().collect();
    assert_eq!(
        distinct.symmetric_difference(&expected).count(),
        0,
        "passed-on ids"
    );
    assert_eq!(
        keys.len(),
        N,
        "{} OrderValidated events for {N} orders",
        keys.len()
    );
}

/// Issue 14, defect 2: MongoDB is not up when the stage starts (a cold
/// start on Kubernetes). The stage is not ready and consumes nothing until
/// its indexes exist; once MongoDB is there it creates them (the unique
/// `orderId` among them), so an order posted twice is stored once.
#[tokio::test]
async fn a_stage_started_before_mongodb_waits_for_its_indexes_then_stores_each_order_once() {
    let _turn = one_at_a_time().await;
    kit::telemetry();
    let brokers = kit::kafka();
    let topics = kit::topics("cold");
    kit::create_topics(&brokers, &topics).await;
    let port = kit::free_port();
    let url = format!("mongodb://127.0.0.1:{port}/cold");
    let argv = persist_args(&topics, &url, &brokers, &[]);
    let group = argv[argv.iter().position(|a| a == "--group").unwrap() + 1].clone();
    let shutdown = CancellationToken::new();
    let stage = orderflow_consumer::start(
        orderflow_consumer::Args::try_parse_from(argv).unwrap(),
        shutdown.clone(),
    )
    .await
    .expect("the stage starts without MongoDB");
    let ready = format!("http://{}/readyz", stage.addr);
    let producer = kit::producer(&brokers);
    let payload = placed(0);
    for _ in 0..2 {
        kit::produce(&producer, &topics.orders, "stream-0", &payload).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let r = reqwest::get(&ready).await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let checks: serde_json::Value = r.json().await.unwrap();
    assert!(
        checks["checks"]["indexes"]
            .as_str()
            .is_some_and(|c| c != "ok"),
        "{checks}"
    );
    let (committed, _) = kit::group_position(&brokers, &group, &topics.orders);
    assert!(
        committed <= 0,
        "consumed before its indexes existed: {committed}"
    );

    let dir = kit::TempDir::new("cold-mongo");
    let _mongo = kit::spawn_mongo(port, &dir.0);
    kit::eventually(Duration::from_secs(60), "the stage to be ready", || async {
        let r = reqwest::get(&ready).await.ok()?;
        (r.status() == StatusCode::OK).then_some(())
    })
    .await;
    kit::eventually(
        Duration::from_secs(60),
        "both messages consumed",
        || async {
            let (committed, end) = kit::group_position(&brokers, &group, &topics.orders);
            (committed == end && end == 2).then_some(())
        },
    )
    .await;
    let db = mongodb::Client::with_uri_str(&url)
        .await
        .unwrap()
        .default_database()
        .unwrap();
    let stored = db
        .collection::<Document>("orders")
        .count_documents(doc! {"orderId": "stream-0"})
        .await
        .unwrap();
    assert_eq!(stored, 1, "the unique index makes the second copy harmless");
    let indexes = db
        .collection::<Document>("orders")
        .list_index_names()
        .await
        .unwrap();
    assert!(indexes.iter().any(|i| i.contains("orderId")), "{indexes:?}");
    shutdown.cancel();
}

/// `--replay-from <time>` moves the group to the first record at or after
/// that time in each partition, and to the partition's end where nothing is
/// that recent (it never skips a record written after the time).
#[tokio::test]
async fn a_replay_from_a_time_starts_each_partition_at_its_first_later_record() {
    use orderflow_consumer::replay::{reset_group, ReplayFrom};
    use rdkafka::producer::FutureRecord;
    let brokers = kit::kafka();
    let topics = kit::topics("replaytime");
    kit::create_topics(&brokers, &topics).await;
    let producer = kit::producer(&brokers);
    let send = |key: String| {
        let producer = producer.clone();
        let topic = topics.orders.clone();
        async move {
            producer
                .send(
                    FutureRecord::to(&topic).key(&key).payload("{}"),
                    Duration::from_secs(10),
                )
                .await
                .map(|d| (d.partition, d.offset))
                .map_err(|(e, _)| e)
                .expect("producing")
        }
    };
    // (partition, offset) of each record, before and after the time.
    let mut before = Vec::new();
    for i in 0..8 {
        before.push(send(format!("before-{i}")).await);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let at = time::OffsetDateTime::now_utc();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut after = Vec::new();
    for i in 0..2 {
        after.push(send(format!("after-{i}")).await);
    }
    let group = kit::unique("replaytime");
    let positions = reset_group(
        &kit::kafka_args(&brokers),
        &group,
        &topics.orders,
        ReplayFrom::Time(at),
    )
    .await
    .unwrap();
    assert!(!positions.is_empty());
    for (p, start) in &positions {
        let first_after = after.iter().filter(|(q, _)| q == p).map(|(_, o)| *o).min();
        let end = before.iter().filter(|(q, _)| q == p).count() as i64;
        assert_eq!(
            *start,
            first_after.unwrap_or(end),
            "partition {p}: the first record after the time, else its end"
        );
    }
    let (committed, end) = kit::group_position(&brokers, &group, &topics.orders);
    assert_eq!(end, 10);
    assert_eq!(committed, positions.iter().map(|(_, o)| o).sum::<i64>());
    // What the group still has to read is exactly what came after the time.
    let behind: i64 = positions
        .iter()
        .map(|(p, start)| {
            let in_p = (before.iter().chain(&after))
                .filter(|(q, _)| q == p)
                .count() as i64;
            in_p - start
        })
        .sum();
    assert_eq!(behind, 2);
}
