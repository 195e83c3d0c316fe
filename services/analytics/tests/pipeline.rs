//! The read side fed by the real pipeline: orders posted to the producer go
//! through persist, inventory and payment (in this process, on private
//! topics and a private database) and must show up in orders-api's list,
//! get and stats and in analytics' daily, recent and live figures — checked
//! against figures the test computes from its own input. Then the dashboard
//! in headless Chromium.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use clap::Parser;
use orderflow_domain::Money;
use orderflow_platform::config::TopicArgs;
use orderflow_platform::mongo::documents::InventoryDocument;
use orderflow_platform::shutdown::CancellationToken;
use orderflow_testkit as kit;
use reqwest::StatusCode;
use serde_json::{json, Value};

mod support;

const TOKEN: &str = "test-token";

fn topic_args(t: &TopicArgs) -> Vec<String> {
    [
        ("--topic-orders", &t.orders),
        ("--topic-validated", &t.validated),
        ("--topic-inventory", &t.inventory),
        ("--topic-payment", &t.payment),
        ("--topic-notifications", &t.notifications),
        ("--topic-dlq", &t.dlq),
    ]
    .iter()
    .flat_map(|(k, v)| [k.to_string(), v.to_string()])
    .collect()
}

struct Stack {
    producer: String,
    orders_api: String,
    analytics: String,
    db: mongodb::Database,
    client: reqwest::Client,
    shutdown: CancellationToken,
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn argv(head: &[&str], tail: &[String]) -> Vec<String> {
    head.iter()
        .map(|s| s.to_string())
        .chain(tail.iter().cloned())
        .collect()
}

impl Stack {
    async fn start() -> Stack {
        kit::telemetry();
        let brokers = kit::kafka();
        let topics = kit::topics("readside");
        kit::create_topics(&brokers, &topics).await;
        let db_name = kit::unique("readside");
        let mongo = kit::mongo_url(&db_name);
        let redis = kit::redis_url();
        let recent_key = format!("{}:recent", topics.orders);
        let shutdown = CancellationToken::new();
        let common: Vec<String> = argv(&["--port", "0", "--bind", "127.0.0.1"], &[]);
        let kafka = vec!["--kafka-brokers".to_string(), brokers.clone()];
        let mongo_arg = vec!["--mongo-url".to_string(), mongo.clone()];

        let producer = orderflow_producer::Args::try_parse_from(argv(
            &["producer"],
            &[
                common.clone(),
                kafka.clone(),
                vec!["--topic-orders".into(), topics.orders.clone()],
                vec!["--redis-url".into(), redis.clone()],
                vec!["--recent-orders-key".into(), recent_key.clone()],
            ]
            .concat(),
        ))
        .unwrap();
        let producer = orderflow_producer::start(producer, shutdown.clone())
            .await
            .unwrap();
        for stage in ["persist", "inventory", "payment"] {
            let args = orderflow_consumer::Args::try_parse_from(argv(
                &["consumer", "--stage", stage],
                &[
                    common.clone(),
                    kafka.clone(),
                    mongo_arg.clone(),
                    topic_args(&topics),
                    vec![
                        "--group".into(),
                        kit::unique(stage),
                        "--payment-decline-over".into(),
                        "50.00".into(),
                        "--payment-latency".into(),
                        "1ms".into(),
                    ],
                ]
                .concat(),
            ))
            .unwrap();
            orderflow_consumer::start(args, shutdown.clone())
                .await
                .unwrap();
        }
        let orders_api = orderflow_orders_api::Args::try_parse_from(argv(
            &["orders-api"],
            &[
                common.clone(),
                mongo_arg.clone(),
                vec!["--api-tokens".into(), TOKEN.into()],
            ]
            .concat(),
        ))
        .unwrap();
        let orders_api = orderflow_orders_api::start(orders_api, shutdown.clone())
            .await
            .unwrap();
        let analytics = orderflow_analytics::Args::try_parse_from(argv(
            &["analytics"],
            &[
                common.clone(),
                kafka.clone(),
                mongo_arg.clone(),
                topic_args(&topics),
                vec![
                    "--redis-url".into(),
                    redis.clone(),
                    "--recent-orders-key".into(),
                    recent_key,
                    "--group".into(),
                    kit::unique("analytics"),
                    "--stream-interval".into(),
                    "200ms".into(),
                ],
            ]
            .concat(),
        ))
        .unwrap();
        let analytics = orderflow_analytics::start(analytics, shutdown.clone())
            .await
            .unwrap();
        Stack {
            producer: format!("http://{}", producer.addr),
            orders_api: format!("http://{}", orders_api.addr),
            analytics: format!("http://{}", analytics.addr),
            db: kit::mongo_db(&db_name).await,
            client: reqwest::Client::new(),
            shutdown,
        }
    }

    async fn get(&self, url: String) -> reqwest::Response {
        self.client.get(url).send().await.unwrap()
    }

    /// The body as text: money fields must be read from the JSON text,
    /// since `serde_json::Value` turns `48.00` into the float `48.0`.
    async fn text(&self, url: String) -> String {
        let r = self.get(url.clone()).await;
        assert_eq!(r.status(), StatusCode::OK, "{url}");
        r.text().await.unwrap()
    }

    async fn json(&self, url: String) -> Value {
        let r = self.get(url.clone()).await;
        assert_eq!(r.status(), StatusCode::OK, "{url}");
        r.json().await.unwrap()
    }

    /// Posts probe orders (one coffee each) until the live figures count
    /// one: from then on analytics' consumer has its partitions and sees
    /// every new order. Returns the probes' ids.
    async fn live_ready(&self) -> Vec<String> {
        let mut probes = Vec::new();
        for k in 0..60 {
            let id = format!("probe-{k:02}");
            self.post(json!({"orderId": id, "customerId": "c-0", "items": [{"productId": "coffee", "quantity": 1}]}))
                .await;
            probes.push(id);
            tokio::time::sleep(Duration::from_millis(500)).await;
            let live = self
                .json(format!("{}/analytics/live", self.analytics))
                .await;
            if live["ordersLastMinute"].as_i64().unwrap() > 0 {
                return probes;
            }
        }
        panic!("analytics never saw a live order");
    }

    async fn post(&self, body: Value) {
        let r = self
            .client
            .post(format!("{}/orders", self.producer))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED, "{body}");
    }
}

/// Exact amounts, read from the response text.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct MoneyFields {
    total_revenue: Option<Money>,
    average_order_value: Option<Money>,
    revenue: Option<Money>,
    revenue_per_minute: Option<Money>,
}

#[derive(serde::Deserialize)]
struct DailyMoney {
    days: Vec<MoneyFields>,
}

/// Price of each product in the catalogue, in cents.
const CATALOGUE: [(&str, i64); 3] = [("coffee", 450), ("mug", 1200), ("beans", 2400)];

async fn seed(db: &mongodb::Database) {
    let now = bson::DateTime::now();
    let docs: Vec<InventoryDocument> = CATALOGUE
        .iter()
        .map(|(id, cents)| InventoryDocument {
            product_id: id.to_string(),
            name: id.to_string(),
            unit_price_cents: *cents,
            stock: 100_000,
            capacity: 100_000,
            low_stock_threshold: None,
            updated_at: now,
        })
        .collect();
    db.collection::<InventoryDocument>("inventory")
        .insert_many(docs)
        .await
        .unwrap();
}

/// The input: order i buys (product, quantity); totals over 50.00 are
/// declined by the payment rule the stack runs with.
fn input(n: usize) -> Vec<(String, &'static str, u32)> {
    (0..n)
        .map(|i| {
            let (product, _) = CATALOGUE[i % 3];
            (format!("rs-{i:03}"), product, 1 + (i % 4) as u32)
        })
        .collect()
}

fn cents(product: &str) -> i64 {
    CATALOGUE.iter().find(|(p, _)| *p == product).unwrap().1
}

#[tokio::test]
async fn pipeline_fed_orders_show_up_everywhere_with_the_right_figures() {
    let stack = Stack::start().await;
    seed(&stack.db).await;
    let probes = stack.live_ready().await;
    const N: usize = 40;
    let real = input(N);
    let orders: Vec<(String, &str, u32)> = probes
        .iter()
        .map(|id| (id.clone(), "coffee", 1))
        .chain(real.iter().cloned())
        .collect();
    for (id, product, quantity) in &real {
        stack
            .post(json!({"orderId": id, "customerId": "c-1", "items": [{"productId": product, "quantity": quantity}]}))
            .await;
    }
    // Read-your-write through the long-poll: every order reaches a final
    // status.
    for (id, _, _) in &orders {
        let r = stack
            .get(format!(
                "{}/orders/{id}?waitFor=final&timeout=30",
                stack.orders_api
            ))
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["preference-applied"], "wait", "{id}");
    }

    // Expected figures, from the input alone.
    let mut expected_status = BTreeMap::new();
    let (mut paid, mut revenue) = (0i64, 0i64);
    for (id, product, quantity) in &orders {
        let total = cents(product) * i64::from(*quantity);
        if total > 5000 {
            expected_status.insert(id.clone(), "rejected");
        } else {
            expected_status.insert(id.clone(), "confirmed");
            paid += 1;
            revenue += total;
        }
    }
    let total_orders = orders.len() as i64;
    let declined = total_orders - paid;
    assert!(paid > 0 && declined > 0);

    // orders-api: list (all, newest first), get, stats.
    let page = stack
        .json(format!("{}/orders?limit=500", stack.orders_api))
        .await;
    let listed: BTreeMap<String, String> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["orderId"].as_str().unwrap().to_owned(),
                o["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want: BTreeMap<String, String> = expected_status
        .iter()
        .map(|(k, v)| (k.clone(), v.to_string()))
        .collect();
    assert_eq!(listed, want);
    let one = stack
        .text(format!("{}/orders/rs-005", stack.orders_api))
        .await;
    assert!(one.contains(r#""totalAmount":48.00"#), "{one}");
    let stats = stack
        .json(format!("{}/orders/stats", stack.orders_api))
        .await;
    assert_eq!(stats["totalOrders"], total_orders);
    assert_eq!(stats["countByStatus"]["confirmed"], paid);
    assert_eq!(stats["countByStatus"]["rejected"], declined);
    let money: MoneyFields = serde_json::from_str(
        &stack
            .text(format!("{}/orders/stats", stack.orders_api))
            .await,
    )
    .unwrap();
    assert_eq!(money.total_revenue, Some(Money::from_minor(revenue)));
    let average = Money::average(Money::from_minor(revenue), paid).unwrap();
    assert_eq!(money.average_order_value, Some(average));

    // analytics: today's row of the daily figures.
    let daily = stack
        .json(format!("{}/analytics/daily", stack.analytics))
        .await;
    let today = daily["days"].as_array().unwrap().last().unwrap();
    assert_eq!(
        today["date"],
        time::OffsetDateTime::now_utc().date().to_string()
    );
    assert_eq!(today["orders"], total_orders);
    assert_eq!(today["paidOrders"], paid);
    let days: DailyMoney = serde_json::from_str(
        &stack
            .text(format!("{}/analytics/daily", stack.analytics))
            .await,
    )
    .unwrap();
    let today_money = days.days.last().unwrap();
    assert_eq!(today_money.revenue, Some(Money::from_minor(revenue)));
    assert_eq!(today_money.average_order_value, Some(average));
    assert_eq!(today["countByStatus"]["rejected"], declined);

    // Recent orders: the last ten, newest first.
    let recent = stack
        .json(format!("{}/analytics/recent-orders", stack.analytics))
        .await;
    let ids: Vec<&str> = recent["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["orderId"].as_str().unwrap())
        .collect();
    let newest: Vec<String> = orders
        .iter()
        .rev()
        .take(10)
        .map(|(id, _, _)| id.clone())
        .collect();
    assert_eq!(ids, newest);

    // Live: every order posted since analytics had its partitions (all the
    // real ones, some of the probes) and their approved payments, within
    // the last minute.
    let real_paid: Vec<i64> = real
        .iter()
        .map(|(_, p, q)| cents(p) * i64::from(*q))
        .filter(|t| *t <= 5000)
        .collect();
    let real_revenue: i64 = real_paid.iter().sum();
    let probe_count = probes.len() as i64;
    let real_payments = real_paid.len() as i64;
    // The probes' payments count too, so the payments alone can reach the
    // real ones' number early: wait for the real revenue as well.
    let (live, seen_cents) = kit::eventually(
        Duration::from_secs(30),
        "live figures to count everything",
        || {
            let stack = &stack;
            async move {
                let text = stack
                    .text(format!("{}/analytics/live", stack.analytics))
                    .await;
                let live: serde_json::Value = serde_json::from_str(&text).unwrap();
                let money: MoneyFields = serde_json::from_str(&text).unwrap();
                let cents = money.revenue_per_minute.unwrap().minor();
                let orders = live["ordersLastMinute"].as_i64().unwrap();
                let payments = live["paymentsLastMinute"].as_i64().unwrap();
                let done = orders >= N as i64 && payments >= real_payments && cents >= real_revenue;
                done.then_some((live, cents))
            }
        },
    )
    .await;
    let orders_seen = live["ordersLastMinute"].as_i64().unwrap();
    assert!(orders_seen <= N as i64 + probe_count, "{live}");
    assert!(
        seen_cents >= real_revenue && seen_cents <= real_revenue + 450 * probe_count,
        "{live} vs {real_revenue}"
    );
    assert!(live["ordersPerSecond"].as_f64().unwrap() > 0.0);

    // The stream sends the same figures as Server-Sent Events.
    let mut sse = stack
        .get(format!("{}/analytics/stream", stack.analytics))
        .await;
    assert_eq!(sse.headers()["content-type"], "text/event-stream");
    let mut text = String::new();
    while !text.contains("\n\n") {
        let chunk = tokio::time::timeout(Duration::from_secs(5), sse.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.starts_with("event: live\ndata: {"), "{text}");
    assert!(text.contains("\"revenuePerMinute\""), "{text}");
}

#[tokio::test]
async fn bad_ranges_are_422_recent_orders_keep_exact_money_and_a_missing_redis_is_503() {
    let stack = Stack::start().await;
    for (query, field) in [
        ("from=2026-02-30", "from"),
        ("from=2026-11-22&to=2026-11-01", "from"),
        ("from=2020-01-01&to=2026-01-01", "to"),
        ("to=yesterday", "to"),
        // Extreme dates: a 422, not a failed MongoDB query (was a 503).
        ("to=9999-12-31", "to"),
        ("from=1900-01-01&to=1900-01-02", "from"),
    ] {
        let r = stack
            .get(format!("{}/analytics/daily?{query}", stack.analytics))
            .await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{query}");
        let p: Value = r.json().await.unwrap();
        assert_eq!(p["errors"][0]["field"], field, "{query}");
    }
    // Recent orders keep the producer's exact amounts.
    stack
        .post(json!({"orderId": "exact-1", "customerId": "c-9",
                     "items": [{"productId": "x", "quantity": 3, "unitPrice": 0.10}]}))
        .await;
    let recent = kit::eventually(
        Duration::from_secs(10),
        "the order in the recent list",
        || {
            let stack = &stack;
            async move {
                let text = stack
                    .text(format!("{}/analytics/recent-orders", stack.analytics))
                    .await;
                text.contains("exact-1").then_some(text)
            }
        },
    )
    .await;
    assert!(recent.contains(r#""totalAmount":0.30"#), "{recent}");
    let days = stack
        .json(format!(
            "{}/analytics/daily?from=2026-01-30&to=2026-02-02",
            stack.analytics
        ))
        .await;
    let dates: BTreeSet<&str> = days["days"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["date"].as_str().unwrap())
        .collect();
    assert_eq!(
        dates,
        BTreeSet::from(["2026-01-30", "2026-01-31", "2026-02-01", "2026-02-02"])
    );

    // analytics without a reachable Redis: recent orders are 503 with
    // Retry-After; everything else still answers.
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let dead_redis = format!("redis://127.0.0.1:{}", kit::free_port());
    let args = orderflow_analytics::Args::try_parse_from([
        "analytics",
        "--port",
        "0",
        "--bind",
        "127.0.0.1",
        "--kafka-brokers",
        &kit::kafka(),
        "--mongo-url",
        &kit::mongo_url(&kit::unique("noredis")),
        "--redis-url",
        &dead_redis,
    ])
    .unwrap();
    let running = orderflow_analytics::start(args, shutdown.clone())
        .await
        .unwrap();
    let r = stack
        .get(format!("http://{}/analytics/recent-orders", running.addr))
        .await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers().contains_key("retry-after"));
    let r = stack.get(format!("http://{}/readyz", running.addr)).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let r = stack
        .get(format!("http://{}/analytics/live", running.addr))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    // /metrics answers without Redis too, and carries the re-drive
    // producer's librdkafka gauges.
    let metrics = stack.text(format!("http://{}/metrics", running.addr)).await;
    assert!(
        metrics.contains("orderflow_analytics_kafka_producer_messages_queued"),
        "{metrics}"
    );
    shutdown.cancel();
}

/// Issue 14, defect 5: replicas in one `ANALYTICS_GROUP` each see the whole
/// stream, and count each order once however often its event arrives (a
/// re-post of the orderId, a redelivery of the same record). A replica
/// started later has the last minute's figures at once.
#[tokio::test]
async fn analytics_replicas_agree_and_count_each_order_once() {
    kit::telemetry();
    let brokers = kit::kafka();
    let topics = kit::topics("livecount");
    kit::create_topics(&brokers, &topics).await;
    let shutdown = CancellationToken::new();
    // Stops every replica on the way out, a failed assertion included (their
    // blocking readers would otherwise keep the runtime from ending).
    let _stop = shutdown.clone().drop_guard();
    let recent_key = format!("{}:recent", topics.orders);
    let producer = support::producer(&topics, &recent_key, shutdown.clone()).await;
    let group = kit::unique("analytics");
    let mongo = kit::mongo_url(&kit::unique("livecount"));
    let analytics = |shutdown: CancellationToken| {
        let args = orderflow_analytics::Args::try_parse_from(argv(
            &["analytics", "--port", "0", "--bind", "127.0.0.1"],
            &[
                vec!["--kafka-brokers".into(), brokers.clone()],
                vec!["--mongo-url".into(), mongo.clone()],
                topic_args(&topics),
                vec![
                    "--redis-url".into(),
                    kit::redis_url(),
                    "--group".into(),
                    group.clone(),
                ],
            ]
            .concat(),
        ))
        .unwrap();
        async move { orderflow_analytics::start(args, shutdown).await.unwrap() }
    };
    let replicas = [
        analytics(shutdown.clone()).await,
        analytics(shutdown.clone()).await,
    ];
    let client = reqwest::Client::new();
    let post = |id: String| {
        client
            .post(format!("http://{}/orders", producer.addr))
            .json(&json!({"orderId": id, "customerId": "c-1",
                          "items": [{"productId": "coffee", "quantity": 1, "unitPrice": 4.50}]}))
            .send()
    };
    for i in 1..=5 {
        assert_eq!(post(format!("live-{i}")).await.unwrap().status(), 202);
    }
    // Re-posts of one order, and a redelivery of the same record.
    for _ in 0..2 {
        assert_eq!(post("live-1".into()).await.unwrap().status(), 202);
    }
    // A redelivery: the record of live-1 once more, as the broker would
    // hand it to a reader again.
    let again = serde_json::to_vec(&orderflow_domain::events::OrderPlaced {
        order_id: "live-1".into(),
        customer_id: "c-1".into(),
        currency: "USD".into(),
        items: vec![orderflow_domain::events::PlacedItem {
            product_id: "coffee".into(),
            name: None,
            quantity: 1,
            unit_price: Some(Money::from_minor(450)),
        }],
        total_amount: Some(Money::from_minor(450)),
        client_total: None,
        placed_at: time::OffsetDateTime::now_utc(),
    })
    .unwrap();
    kit::produce(&kit::producer(&brokers), &topics.orders, "live-1", &again).await;
    assert_eq!(kit::message_count(&brokers, &topics.orders), 8);

    let seen = |addr: std::net::SocketAddr| {
        let client = client.clone();
        async move {
            let live: Value = client
                .get(format!("http://{addr}/analytics/live"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            live["ordersLastMinute"].as_i64().unwrap()
        }
    };
    for r in &replicas {
        kit::eventually(
            Duration::from_secs(30),
            "every order on every replica",
            || async { (seen(r.addr).await >= 5).then_some(()) },
        )
        .await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for r in &replicas {
        assert_eq!(seen(r.addr).await, 5, "each order once, on each replica");
    }
    // A replica started now reads the last minute from the log.
    let late = analytics(shutdown.clone()).await;
    kit::eventually(
        Duration::from_secs(15),
        "the late replica's window",
        || async { (seen(late.addr).await == 5).then_some(()) },
    )
    .await;
    shutdown.cancel();
}
