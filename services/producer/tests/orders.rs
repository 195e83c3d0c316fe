//! POST /orders against the real broker and Redis (started by scripts/test).

use std::time::{Duration, Instant};

use clap::Parser;
use orderflow_domain::events::OrderPlaced;
use orderflow_platform::config::TopicArgs;
use orderflow_platform::kafka::headers;
use orderflow_platform::shutdown::CancellationToken;
use orderflow_producer::{start, Args, Running};
use orderflow_testkit as kit;
use rdkafka::Message;
use reqwest::StatusCode;
use serde_json::{json, Value};

struct Producer {
    running: Running,
    base: String,
    topics: TopicArgs,
    client: reqwest::Client,
}

impl Producer {
    async fn start(brokers: &str, redis: &str, extra: &[&str]) -> Producer {
        kit::telemetry();
        let topics = kit::topics("producer");
        kit::create_topics(brokers, &topics).await;
        let mut argv = vec![
            "producer",
            "--port",
            "0",
            "--bind",
            "127.0.0.1",
            "--kafka-brokers",
            brokers,
            "--topic-orders",
            &topics.orders,
            "--redis-url",
            redis,
            "--recent-orders-key",
        ];
        let key = format!("{}:recent", topics.orders);
        argv.push(&key);
        argv.extend_from_slice(extra);
        let args = Args::try_parse_from(argv).unwrap();
        let running = start(args, CancellationToken::new()).await.unwrap();
        let base = format!("http://{}", running.addr);
        Producer {
            running,
            base,
            topics,
            client: reqwest::Client::new(),
        }
    }

    async fn post(&self, body: &str) -> reqwest::Response {
        self.client
            .post(format!("{}/orders", self.base))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap()
    }

    fn recent_key(&self) -> String {
        format!("{}:recent", self.topics.orders)
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.running.shutdown.cancel();
    }
}

/// The list once it holds `len` entries: the producer writes it after the
/// 202, in the background.
async fn recent_list_of(url: &str, key: &str, len: usize) -> Vec<String> {
    kit::eventually(
        Duration::from_secs(10),
        &format!("{len} entries in {key}"),
        || async {
            let list = recent_list(url, key).await;
            (list.len() == len).then_some(list)
        },
    )
    .await
}

async fn recent_list(url: &str, key: &str) -> Vec<String> {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("LRANGE")
        .arg(key)
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap()
}

/// Sends `request` as written over a fresh connection, closes the writing
/// half, and returns the answer's status and body (the producer answers
/// with Content-Length).
async fn raw_exchange(base: &str, request: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut conn = tokio::net::TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap();
    conn.write_all(request.as_bytes()).await.unwrap();
    conn.shutdown().await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer))
        .await
        .expect("an answer within 10 s")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

/// The producer's count of requests refused as malformed.
async fn malformed(p: &Producer) -> f64 {
    let text = kit::scrape(&p.client, &p.base).await;
    kit::metric(
        &text,
        "orderflow_producer_orders_total",
        &["outcome=\"malformed\""],
    )
    .unwrap_or(0.0)
}

async fn problem(resp: reqwest::Response, status: StatusCode) -> Value {
    assert_eq!(resp.status(), status);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], status.as_u16());
    assert!(body["type"].as_str().unwrap().starts_with("https://"));
    assert!(!body["title"].as_str().unwrap().is_empty());
    assert!(!body["detail"].as_str().unwrap().is_empty());
    body
}

#[tokio::test]
async fn every_request_shape_is_accepted_and_published_exactly() {
    let brokers = kit::kafka();
    let p = Producer::start(&brokers, &kit::redis_url(), &[]).await;
    let shapes = [
        (
            r#"{"orderId":"c-1","customerId":"u-42","currency":"USD","items":[{"productId":"coffee","name":"Coffee","quantity":3,"unitPrice":0.1}],"totalAmount":0.3}"#,
            Some("0.30"),
        ),
        (
            r#"{"orderId":"r0-1","userId":"u-42","price":29.99,"items":["coffee","mug"]}"#,
            None,
        ),
        (
            r#"{"orderId":"r1-1","userId":"user123","products":[{"id":"prod-1","name":"Product 1","price":19.99,"quantity":2}],"totalAmount":39.98}"#,
            Some("39.98"),
        ),
        (
            r#"{"orderId":"r2-1","customerId":"customer-123","productId":"product-A","quantity":2}"#,
            None,
        ),
    ];
    for (body, total) in shapes {
        let resp = p.post(body).await;
        assert_eq!(resp.status(), StatusCode::ACCEPTED, "{body}");
        let location = resp.headers()["location"].to_str().unwrap().to_owned();
        let text = resp.text().await.unwrap();
        let accepted: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(accepted["status"], "queued");
        assert_eq!(
            location,
            format!("/orders/{}", accepted["orderId"].as_str().unwrap())
        );
        match total {
            // The literal text, not a float: 0.30 stays 0.30.
            Some(t) => assert!(text.contains(&format!(r#""totalAmount":{t}"#)), "{text}"),
            None => assert_eq!(accepted["totalAmount"], Value::Null),
        }
    }
    let msgs = kit::consume(&brokers, &p.topics.orders, 4, Duration::from_secs(20)).await;
    assert_eq!(msgs.len(), 4);
    let mut events: Vec<OrderPlaced> = Vec::new();
    for m in &msgs {
        assert_eq!(
            kit::header(m, headers::TYPE),
            Some("dev.orderflow.order.placed")
        );
        assert_eq!(kit::header(m, headers::SPECVERSION), Some("1.0"));
        assert_eq!(kit::header(m, headers::SCHEMA_VERSION), Some("1"));
        assert!(kit::header(m, headers::ID).is_some_and(|id| !id.is_empty()));
        assert!(kit::header(m, headers::TIME).is_some());
        let tp = kit::header(m, "traceparent").expect("traceparent header");
        assert_eq!(tp.split('-').count(), 4, "{tp}");
        let ev: OrderPlaced = serde_json::from_slice(m.payload().unwrap()).unwrap();
        assert_eq!(m.key(), Some(ev.order_id.as_bytes()), "keyed by orderId");
        assert_eq!(kit::header(m, headers::SUBJECT), Some(ev.order_id.as_str()));
        events.push(ev);
    }
    events.sort_by(|a, b| a.order_id.cmp(&b.order_id));
    let c = &events[0];
    assert_eq!(c.order_id, "c-1");
    assert_eq!(c.total_amount.unwrap().minor(), 30);
    assert_eq!(c.items[0].unit_price.unwrap().minor(), 10);
    let r0 = &events[1];
    assert_eq!(r0.customer_id, "u-42");
    assert_eq!(
        r0.items
            .iter()
            .map(|i| i.product_id.as_str())
            .collect::<Vec<_>>(),
        ["coffee", "mug"]
    );
    assert_eq!(r0.client_total.unwrap().minor(), 2999);
    let r1 = &events[2];
    assert_eq!(
        (r1.items[0].product_id.as_str(), r1.items[0].quantity),
        ("prod-1", 2)
    );
    let r2 = &events[3];
    assert_eq!(
        (r2.items[0].product_id.as_str(), r2.items[0].quantity),
        ("product-A", 2)
    );
}

#[tokio::test]
async fn server_assigns_a_uuid_v7_when_no_order_id_is_given() {
    let p = Producer::start(&kit::kafka(), &kit::redis_url(), &[]).await;
    let resp = p.post(r#"{"customerId":"c","productId":"p"}"#).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let body: Value = resp.json().await.unwrap();
    let id = uuid::Uuid::parse_str(body["orderId"].as_str().unwrap()).unwrap();
    assert_eq!(id.get_version_num(), 7);
}

#[tokio::test]
async fn bad_input_gets_a_problem_and_publishes_nothing() {
    let brokers = kit::kafka();
    let p = Producer::start(&brokers, &kit::redis_url(), &["--body-limit", "1024"]).await;

    problem(
        p.post(r#"{"customerId": "c", "items": ["#).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    problem(p.post("not json").await, StatusCode::BAD_REQUEST).await;

    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let mut req = p
            .client
            .post(format!("{}/orders", p.base))
            .body(r#"{"customerId":"c","productId":"p"}"#);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        problem(
            req.send().await.unwrap(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        )
        .await;
    }

    let big = format!(r#"{{"customerId":"{}","productId":"p"}}"#, "x".repeat(2000));
    problem(p.post(&big).await, StatusCode::PAYLOAD_TOO_LARGE).await;

    let invalid: [(&str, &[&str]); 12] = [
        (r#"{"productId":"p"}"#, &["customerId"]),
        (r#"{"customerId":"c"}"#, &["items"]),
        (r#"{"customerId":"c","items":[]}"#, &["items"]),
        (
            r#"{"orderId":"has space","customerId":"c","productId":"p"}"#,
            &["orderId"],
        ),
        (
            r#"{"customerId":"c","currency":"dollars","productId":"p"}"#,
            &["currency"],
        ),
        (
            r#"{"customerId":"c","items":[{"name":"no id"}]}"#,
            &["items[0].productId"],
        ),
        (
            r#"{"customerId":"c","items":[{"id":"p","quantity":0}]}"#,
            &["items[0].quantity"],
        ),
        (
            r#"{"customerId":"c","items":[{"id":"p","quantity":1.5}]}"#,
            &["items[0].quantity"],
        ),
        (
            r#"{"customerId":"c","items":[{"id":"p","unitPrice":-1}]}"#,
            &["items[0].unitPrice"],
        ),
        (
            r#"{"customerId":"c","items":[{"id":"p","unitPrice":1.999}]}"#,
            &["items[0].unitPrice"],
        ),
        (
            r#"{"customerId":"c","items":[{"id":"p","quantity":2,"unitPrice":1}],"totalAmount":3}"#,
            &["totalAmount"],
        ),
        (
            r#"{"customerId":7,"items":[{"id":"p","quantity":"x"}],"totalAmount":"1"}"#,
            &["customerId", "items[0].quantity", "totalAmount"],
        ),
    ];
    for (body, fields) in invalid {
        let problem = problem(p.post(body).await, StatusCode::UNPROCESSABLE_ENTITY).await;
        let got: Vec<&str> = problem["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                assert!(!e["message"].as_str().unwrap().is_empty());
                e["field"].as_str().unwrap()
            })
            .collect();
        assert_eq!(got, fields, "{body}");
    }
    // A body that cannot be read at all (not the size limit): the chunked
    // encoding broken, or the client's half of the connection closed before
    // the Content-Length it announced. Each is a 400 `bad-request`, counted
    // as malformed.
    let before = malformed(&p).await;
    let head = "POST /orders HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n";
    for (what, request) in [
        (
            "a broken chunk size",
            format!("{head}transfer-encoding: chunked\r\n\r\nzz\r\n{{}}\r\n0\r\n\r\n"),
        ),
        (
            "a body cut short",
            format!("{head}content-length: 100\r\n\r\n{{\"customerId\":\"c\""),
        ),
    ] {
        let (status, body) = raw_exchange(&p.base, &request).await;
        assert_eq!(status, 400, "{what}: {body}");
        let problem: Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{what}: {e}: {body}"));
        assert!(
            problem["type"].as_str().unwrap().ends_with("/bad-request"),
            "{what}: {problem}"
        );
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .starts_with("the request body could not be read"),
            "{what}: {problem}"
        );
    }
    assert_eq!(malformed(&p).await, before + 2.0);
    assert_eq!(
        kit::message_count(&brokers, &p.topics.orders),
        0,
        "nothing may be published"
    );
}

#[tokio::test]
async fn broker_down_answers_503_within_the_publish_timeout() {
    let mut broker = kit::spawn_broker();
    let brokers = format!("127.0.0.1:{}", broker.port);
    let p = Producer::start(&brokers, &kit::redis_url(), &["--publish-timeout", "2s"]).await;
    assert_eq!(
        p.post(r#"{"customerId":"c","productId":"p"}"#)
            .await
            .status(),
        StatusCode::ACCEPTED
    );

    broker.kill();
    let started = Instant::now();
    let resp = p
        .post(r#"{"orderId":"while-down","customerId":"c","productId":"p"}"#)
        .await;
    let elapsed = started.elapsed();
    assert!(resp.headers().contains_key("retry-after"));
    assert_eq!(resp.headers()["location"], "/orders/while-down");
    let body = problem(resp, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(body["orderId"], "while-down");
    assert!(
        elapsed < Duration::from_millis(2500),
        "answered after {elapsed:?}"
    );
    // A server-assigned id is named too: the advised retry must reuse it,
    // since the broker may still have queued the order.
    let resp = p.post(r#"{"customerId":"c","productId":"p"}"#).await;
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    let body = problem(resp, StatusCode::SERVICE_UNAVAILABLE).await;
    let assigned = body["orderId"].as_str().expect("the 503 names the orderId");
    assert!(uuid::Uuid::parse_str(assigned).is_ok(), "{assigned}");
    assert_eq!(location, format!("/orders/{assigned}"));
    assert!(
        elapsed >= Duration::from_millis(1900),
        "503 must not come before the timeout: {elapsed:?}"
    );

    let ready = p
        .client
        .get(format!("{}/readyz", p.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn redis_down_still_accepts_orders() {
    let mut redis = kit::spawn_redis();
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let p = Producer::start(&kit::kafka(), &url, &[]).await;
    assert_eq!(
        p.post(r#"{"orderId":"r-up","customerId":"c","productId":"p"}"#)
            .await
            .status(),
        StatusCode::ACCEPTED
    );
    let list = recent_list_of(&url, &p.recent_key(), 1).await;
    assert!(list[0].contains(r#""orderId":"r-up""#), "{list:?}");

    redis.kill();
    let started = Instant::now();
    let resp = p
        .post(r#"{"orderId":"r-down","customerId":"c","productId":"p"}"#)
        .await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "Redis must not hold the request up"
    );
    // The entry Redis did not get is counted.
    kit::eventually(
        Duration::from_secs(10),
        "the failed write counted",
        || async {
            let metrics = kit::scrape(&p.client, &p.base).await;
            (kit::metric(
                &metrics,
                "orderflow_producer_recent_orders_failures_total",
                &[],
            ) == Some(1.0))
            .then_some(())
        },
    )
    .await;

    // And with Redis never reachable at all.
    let unreachable = format!("redis://127.0.0.1:{}", kit::free_port());
    let p2 = Producer::start(&kit::kafka(), &unreachable, &[]).await;
    assert_eq!(
        p2.post(r#"{"customerId":"c","productId":"p"}"#)
            .await
            .status(),
        StatusCode::ACCEPTED
    );
}

#[tokio::test]
async fn recent_orders_list_keeps_the_newest_ten() {
    let p = Producer::start(&kit::kafka(), &kit::redis_url(), &[]).await;
    for i in 0..12 {
        let body = json!({"orderId": format!("recent-{i}"), "customerId": "c", "items": [{"id": "p", "quantity": 3, "price": 0.1}]});
        assert_eq!(
            p.post(&body.to_string()).await.status(),
            StatusCode::ACCEPTED
        );
    }
    // Trimmed to ten once the twelfth is in.
    let list = kit::eventually(
        Duration::from_secs(10),
        "recent-11 at the head of the list",
        || async {
            let list = recent_list(&kit::redis_url(), &p.recent_key()).await;
            list.first()?
                .contains(r#""orderId":"recent-11""#)
                .then_some(list)
        },
    )
    .await;
    assert_eq!(list.len(), 10);
    let first: Value = serde_json::from_str(&list[0]).unwrap();
    assert_eq!(first["orderId"], "recent-11", "newest first");
    assert_eq!(first["itemCount"], 3);
    assert!(list[0].contains(r#""totalAmount":0.30"#), "{}", list[0]);
    let last: Value = serde_json::from_str(&list[9]).unwrap();
    assert_eq!(last["orderId"], "recent-2");
}

#[tokio::test]
async fn operational_endpoints() {
    let p = Producer::start(&kit::kafka(), &kit::redis_url(), &[]).await;
    let get = |path: &str| p.client.get(format!("{}{path}", p.base)).send();
    assert_eq!(get("/healthz").await.unwrap().status(), StatusCode::OK);
    let ready = get("/readyz").await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    assert_eq!(
        ready.json::<Value>().await.unwrap()["checks"]["kafka"],
        "ok"
    );
    let spec: Value = get("/openapi.json").await.unwrap().json().await.unwrap();
    assert!(spec["paths"]["/orders"]["post"]["responses"]["503"].is_object());
    let docs = get("/docs").await.unwrap().text().await.unwrap();
    assert!(docs.contains("/openapi.json"));
    assert_eq!(
        p.post(r#"{"customerId":"c","productId":"p"}"#)
            .await
            .status(),
        StatusCode::ACCEPTED
    );
    let metrics = get("/metrics").await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains(r#"orderflow_producer_orders_total{outcome="accepted"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("http_requests_total"), "{metrics}");
    // Made-up methods do not grow the method label (defect 8 of issue 14).
    for made_up in ["PURGE", "X-SCAN-1", "X-SCAN-2"] {
        let method = reqwest::Method::from_bytes(made_up.as_bytes()).unwrap();
        let r = p
            .client
            .request(method, format!("{}/orders", p.base))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_client_error(), "{made_up}: {}", r.status());
    }
    let metrics = get("/metrics").await.unwrap().text().await.unwrap();
    assert!(
        !metrics.contains("X-SCAN") && !metrics.contains("PURGE"),
        "{metrics}"
    );
    assert!(metrics.contains(r#"method="other""#), "{metrics}");
    problem(get("/nope").await.unwrap(), StatusCode::NOT_FOUND).await;
    problem(
        p.client
            .delete(format!("{}/orders", p.base))
            .send()
            .await
            .unwrap(),
        StatusCode::METHOD_NOT_ALLOWED,
    )
    .await;
}

/// The intake paths of the systems orderflow replaces (SPEC §2, issue 15),
/// with the bodies their READMEs document: each is published like
/// `POST /orders` and answered in the shape that system's clients read.
#[tokio::test]
async fn compatibility_routes_accept_the_replaced_systems_bodies() {
    let brokers = kit::kafka();
    let p = Producer::start(&brokers, &kit::redis_url(), &[]).await;
    let post = |path: &'static str, body: &'static str| {
        p.client
            .post(format!("{}{path}", p.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    // Reference 002 (Express): its README's request, verbatim.
    let express = r#"{"customerId": "customer-123", "productId": "product-A", "quantity": 2}"#;
    let mut ids = Vec::new();
    for path in ["/api/v1/orders", "/api/v1/order"] {
        let resp = post(path, express).await.unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED, "{path}");
        let location = resp.headers()["location"].to_str().unwrap().to_owned();
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["message"], "Order event sent", "{body}");
        let event = &body["event"];
        let id = event["id"].as_str().unwrap().to_owned();
        assert_eq!(location, format!("/orders/{id}"));
        assert_eq!(event["customerId"], "customer-123");
        assert_eq!(event["productId"], "product-A");
        assert_eq!(event["quantity"], 2);
        assert_eq!(event["status"], "pending");
        time::OffsetDateTime::parse(
            event["createdAt"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .expect("createdAt is RFC 3339");
        ids.push(id);
    }
    // Reference 004 (NestJS): POST /order answers 201 with the Order.
    let resp = post(
        "/order",
        r#"{"orderId":"nest-1","userId":"u-7","products":[{"id":"beans","name":"Beans","price":24.00,"quantity":1}],"totalAmount":24.00}"#,
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let text = resp.text().await.unwrap();
    let order: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(order["id"], "nest-1");
    assert_eq!(order["customerId"], "u-7");
    assert_eq!(order["items"][0]["productId"], "beans");
    assert!(text.contains(r#""totalAmount":24.00"#), "{text}");
    ids.push("nest-1".into());

    // Bad input is orderflow's problem on every path, and nothing is sent.
    for path in ["/api/v1/orders", "/order"] {
        problem(post(path, "{").await.unwrap(), StatusCode::BAD_REQUEST).await;
        let invalid = problem(
            post(path, r#"{"customerId":"","productId":"x","quantity":0}"#)
                .await
                .unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
        assert!(!invalid["errors"].as_array().unwrap().is_empty());
    }

    let msgs = kit::consume(&brokers, &p.topics.orders, 3, Duration::from_secs(20)).await;
    let mut published: Vec<String> = msgs
        .iter()
        .map(|m| {
            serde_json::from_slice::<OrderPlaced>(m.payload().unwrap())
                .unwrap()
                .order_id
        })
        .collect();
    published.sort();
    ids.sort();
    assert_eq!(published, ids, "exactly the accepted orders were published");
    assert_eq!(kit::message_count(&brokers, &p.topics.orders), 3);
}

/// librdkafka's statistics reach /metrics: the client's queueing and the
/// broker's round trip, per broker, from the real broker's answers.
#[tokio::test]
async fn the_clients_view_of_the_broker_is_in_the_metrics() {
    let p = Producer::start(
        &kit::kafka(),
        &kit::redis_url(),
        &["--kafka-config", "statistics.interval.ms=200"],
    )
    .await;
    let metric_line = |text: &str, name: &str, quantile: &str| -> Option<f64> {
        kit::metric(
            text,
            &format!("orderflow_producer_{name}"),
            &[&format!("quantile=\"{quantile}\"")],
        )
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let (queue, rtt, text) = loop {
        // Orders keep coming, so each interval's windows have samples.
        let body =
            json!({"customerId": "stats", "items": [{"id": "p", "quantity": 1, "price": 1.0}]});
        assert_eq!(
            p.post(&body.to_string()).await.status(),
            StatusCode::ACCEPTED
        );
        let text = kit::scrape(&p.client, &p.base).await;
        if let (Some(q), Some(r)) = (
            metric_line(&text, "kafka_producer_queue_latency_seconds", "0.99"),
            metric_line(&text, "kafka_producer_rtt_seconds", "0.99"),
        ) {
            break (q, r, text);
        }
        assert!(
            Instant::now() < deadline,
            "no librdkafka statistics in /metrics:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // A real round trip on loopback takes more than nothing and far less
    // than a second; the queue time includes the linger (INTAKE_LINGER_MS).
    assert!(rtt > 0.0 && rtt < 1.0, "rtt p99 {rtt}\n{text}");
    let linger = f64::from(orderflow_platform::kafka::INTAKE_LINGER_MS) / 1000.0;
    assert!(
        (linger * 0.8..1.0).contains(&queue),
        "queue p99 {queue} with a {linger} s linger\n{text}"
    );
    // The broker's label is librdkafka's name of it, host:port/id.
    assert!(
        text.contains("kafka_producer_rtt_seconds{broker=\""),
        "{text}"
    );
    assert!(!text.contains("bootstrap"), "{text}");
}

/// The entries still queued when the producer stops are written before it
/// exits: a 202 answered just before a shutdown still reaches the list.
#[tokio::test]
async fn entries_queued_at_shutdown_are_written_before_the_exit() {
    let redis = kit::spawn_redis();
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let mut p = Producer::start(&kit::kafka(), &url, &["--redis-timeout", "20s"]).await;
    // Redis answers nothing: every entry stays queued (or in the write in
    // progress), and the 202s do not wait for it.
    redis.pause();
    let posts = (0..20).map(|i| {
        let body = json!({"orderId": format!("last-{i}"), "customerId": "c", "productId": "p"});
        let p = &p;
        async move { p.post(&body.to_string()).await.status() }
    });
    let answered = tokio::time::timeout(Duration::from_secs(10), futures::future::join_all(posts))
        .await
        .expect("a stopped Redis holds no request up");
    assert!(
        answered.iter().all(|s| *s == StatusCode::ACCEPTED),
        "{answered:?}"
    );
    p.running.shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !p.running.task.is_finished(),
        "the producer exited with entries still queued"
    );
    redis.resume();
    tokio::time::timeout(Duration::from_secs(15), &mut p.running.task)
        .await
        .expect("the producer stops once the entries are written")
        .unwrap()
        .unwrap();
    let list = recent_list(&url, &p.recent_key()).await;
    assert_eq!(list.len(), 10, "{list:?}");
}
