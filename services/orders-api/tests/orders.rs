//! orders-api against the real MongoDB (started by scripts/test).

use std::collections::{BTreeMap, HashSet};

use bson::DateTime;
use clap::Parser;
use orderflow_domain::OrderStatus;
use orderflow_orders_api::{start, Args};
use orderflow_platform::mongo::documents::{ItemDocument, OrderDocument, SourceRef};
use orderflow_platform::shutdown::CancellationToken;
use orderflow_testkit as kit;
use reqwest::StatusCode;
use serde_json::Value;

struct Api {
    base: String,
    db: mongodb::Database,
    client: reqwest::Client,
    shutdown: CancellationToken,
}

impl Api {
    async fn start() -> Api {
        Self::start_with(&["--api-tokens", "token-one, token-two"]).await
    }

    async fn start_with(extra: &[&str]) -> Api {
        kit::telemetry();
        let name = kit::unique("ordersapi");
        let url = kit::mongo_url(&name);
        let mut argv = vec![
            "orders-api",
            "--port",
            "0",
            "--bind",
            "127.0.0.1",
            "--mongo-url",
            &url,
        ];
        argv.extend_from_slice(extra);
        let args = Args::try_parse_from(argv).unwrap();
        let shutdown = CancellationToken::new();
        let running = start(args, shutdown.clone()).await.unwrap();
        Api {
            base: format!("http://{}", running.addr),
            db: kit::mongo_db(&name).await,
            client: reqwest::Client::new(),
            shutdown,
        }
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
    }

    async fn insert(&self, docs: Vec<OrderDocument>) {
        self.db
            .collection::<OrderDocument>("orders")
            .insert_many(docs)
            .await
            .unwrap();
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Moves an order to `status` as a stage would (its version goes up).
async fn set_status(db: &mongodb::Database, order_id: &str, status: &str) {
    db.collection::<bson::Document>("orders")
        .update_one(
            bson::doc! {"orderId": order_id},
            bson::doc! {"$set": {"status": status}, "$inc": {"version": 1}},
        )
        .await
        .unwrap();
}

fn order(
    id: &str,
    customer: &str,
    status: OrderStatus,
    cents: i64,
    received_ms: i64,
) -> OrderDocument {
    OrderDocument::accepted(
        id,
        customer,
        "USD",
        vec![ItemDocument {
            product_id: "p".into(),
            name: "P".into(),
            quantity: 1,
            unit_price_cents: Some(cents),
            line_total_cents: Some(cents),
            client_unit_price_cents: None,
            tracked: false,
        }],
        status,
        DateTime::from_millis(received_ms),
        SourceRef {
            topic: "orders".into(),
            partition: 0,
            offset: 0,
        },
    )
}

/// The test's own definition of a paid order, independent of the service's.
fn is_paid(status: OrderStatus) -> bool {
    matches!(
        status,
        OrderStatus::Confirmed | OrderStatus::Shipped | OrderStatus::Delivered
    )
}

fn now_ms() -> i64 {
    DateTime::now().timestamp_millis()
}

async fn problem(resp: reqwest::Response, status: StatusCode) -> Value {
    assert_eq!(resp.status(), status);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    resp.json().await.unwrap()
}

#[tokio::test]
async fn get_returns_exact_amounts_and_an_etag_or_404() {
    let api = Api::start().await;
    api.insert(vec![order("o-1", "c-1", OrderStatus::Placed, 30, now_ms())])
        .await;
    let resp = api.get("/orders/o-1").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["etag"], "\"1\"");
    let text = resp.text().await.unwrap();
    assert!(text.contains(r#""totalAmount":0.30"#), "{text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["orderId"], "o-1");
    assert_eq!(body["status"], "placed");
    assert_eq!(body["items"][0]["unitPrice"], serde_json::json!(0.3));
    let p = problem(api.get("/orders/nope").await, StatusCode::NOT_FOUND).await;
    assert!(p["detail"].as_str().unwrap().contains("nope"));
}

#[tokio::test]
async fn list_filters_and_rejects_bad_parameters() {
    let api = Api::start().await;
    let t = now_ms();
    api.insert(vec![
        order("a", "c-1", OrderStatus::Placed, 100, t - 3_000),
        order("b", "c-2", OrderStatus::Confirmed, 200, t - 2_000),
        order("c", "c-1", OrderStatus::Confirmed, 300, t - 1_000),
        order("old", "c-1", OrderStatus::Confirmed, 400, 1_600_000_000_000),
    ])
    .await;
    let ids = |v: Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["orderId"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        ids(api.get("/orders").await.json().await.unwrap()),
        ["c", "b", "a", "old"],
        "newest first"
    );
    assert_eq!(
        ids(api
            .get("/orders?status=confirmed")
            .await
            .json()
            .await
            .unwrap()),
        ["c", "b", "old"]
    );
    assert_eq!(
        ids(api
            .get("/orders?customerId=c-1&status=confirmed")
            .await
            .json()
            .await
            .unwrap()),
        ["c", "old"]
    );
    assert_eq!(
        ids(api
            .get("/orders?from=2021-01-01")
            .await
            .json()
            .await
            .unwrap()),
        ["c", "b", "a"]
    );
    assert_eq!(
        ids(api.get("/orders?to=2021-01-01").await.json().await.unwrap()),
        ["old"]
    );
    let p = problem(
        api.get("/orders?status=lost&limit=0&from=x&cursor=%21")
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    let fields: HashSet<&str> = p["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, HashSet::from(["status", "limit", "from", "cursor"]));
}

#[tokio::test]
async fn walking_the_cursor_returns_each_order_once_newest_first_while_orders_arrive() {
    const N: usize = 1234;
    let api = Api::start().await;
    let base = now_ms() - 10_000_000;
    // Pairs share a millisecond so the orderId tie-break is exercised.
    let docs: Vec<OrderDocument> = (0..N)
        .map(|i| {
            order(
                &format!("o-{i:05}"),
                "c",
                OrderStatus::Placed,
                100,
                base + (i as i64 / 2) * 1000,
            )
        })
        .collect();
    api.insert(docs).await;

    let mut seen: Vec<(String, String)> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/orders?limit=100&cursor={c}"),
            None => "/orders?limit=100".to_string(),
        };
        let page: Value = api.get(&path).await.json().await.unwrap();
        for o in page["items"].as_array().unwrap() {
            seen.push((
                o["receivedAt"].as_str().unwrap().to_owned(),
                o["orderId"].as_str().unwrap().to_owned(),
            ));
        }
        pages += 1;
        // New orders keep arriving while the client pages.
        api.insert(vec![order(
            &format!("new-{pages}"),
            "c",
            OrderStatus::Placed,
            100,
            now_ms(),
        )])
        .await;
        match page["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let ids: Vec<&str> = seen.iter().map(|(_, id)| id.as_str()).collect();
    let unique: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "no order twice");
    let expected: HashSet<String> = (0..N).map(|i| format!("o-{i:05}")).collect();
    assert!(
        expected.iter().all(|id| unique.contains(id.as_str())),
        "every stored order once"
    );
    let mut sorted = seen.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(seen, sorted, "newest first");
    assert!(pages >= 13);
}

#[tokio::test]
async fn stats_match_an_independent_computation() {
    let api = Api::start().await;
    let t = now_ms();
    let yesterday = t - 2 * 86_400_000;
    let rows = [
        ("s1", OrderStatus::Confirmed, 1999, t),
        ("s2", OrderStatus::Confirmed, 1, t),
        ("s3", OrderStatus::Shipped, 1000, yesterday),
        ("s4", OrderStatus::Placed, 555, t),
        ("s5", OrderStatus::Rejected, 777, t),
        ("s6", OrderStatus::Delivered, 3, yesterday),
    ];
    api.insert(
        rows.iter()
            .map(|(id, st, c, at)| order(id, "c", *st, *c, *at))
            .collect(),
    )
    .await;

    let paid: Vec<i64> = rows.iter().filter(|r| is_paid(r.1)).map(|r| r.2).collect();
    let revenue: i64 = paid.iter().sum();
    // Rounded half up to the cent, like the service.
    let avg = (revenue as f64 / paid.len() as f64).round() / 100.0;
    let mut counts: BTreeMap<String, i64> = BTreeMap::new();
    for r in &rows {
        *counts.entry(r.1.as_str().to_string()).or_default() += 1;
    }
    let today_start = t - t.rem_euclid(86_400_000);
    let today: Vec<_> = rows.iter().filter(|r| r.3 >= today_start).collect();
    let today_revenue: i64 = today.iter().filter(|r| is_paid(r.1)).map(|r| r.2).sum();

    let resp = api.get("/orders/stats").await;
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.text().await.unwrap();
    let s: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(s["totalOrders"], 6);
    assert_eq!(serde_json::to_value(&counts).unwrap(), s["countByStatus"]);
    assert!(
        text.contains(&format!(
            r#""totalRevenue":{}.{:02}"#,
            revenue / 100,
            revenue % 100
        )),
        "{text}"
    );
    assert_eq!(s["averageOrderValue"].as_f64().unwrap(), avg);
    assert!(text.contains(r#""pendingAmount":5.55"#), "{text}");
    assert_eq!(s["today"]["orders"], today.len());
    assert!(
        text.contains(&format!(
            r#""revenue":{}.{:02}"#,
            today_revenue / 100,
            today_revenue % 100
        )),
        "{text}"
    );
}

#[tokio::test]
async fn delete_needs_a_valid_bearer_token() {
    let api = Api::start().await;
    api.insert(vec![order(
        "d-1",
        "c",
        OrderStatus::Confirmed,
        100,
        now_ms(),
    )])
    .await;
    let delete = |auth: Option<&'static str>| {
        let mut req = api.client.delete(format!("{}/orders/d-1", api.base));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        req.send()
    };
    let resp = delete(None).await.unwrap();
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    problem(resp, StatusCode::UNAUTHORIZED).await;
    problem(
        delete(Some("Basic dXNlcjpwYXNz")).await.unwrap(),
        StatusCode::UNAUTHORIZED,
    )
    .await;
    problem(
        delete(Some("Bearer wrong")).await.unwrap(),
        StatusCode::FORBIDDEN,
    )
    .await;
    problem(
        delete(Some("Bearer token-one-and-more")).await.unwrap(),
        StatusCode::FORBIDDEN,
    )
    .await;
    assert_eq!(
        api.get("/orders/d-1").await.status(),
        StatusCode::OK,
        "refused deletes change nothing"
    );

    assert_eq!(
        delete(Some("Bearer token-two")).await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    problem(api.get("/orders/d-1").await, StatusCode::NOT_FOUND).await;
    problem(
        delete(Some("Bearer token-one")).await.unwrap(),
        StatusCode::NOT_FOUND,
    )
    .await;
    // Reads need no token.
    assert_eq!(api.get("/orders").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn tokens_come_from_a_mounted_secret_file_and_none_means_closed() {
    let dir = kit::TempDir::new("tokens");
    let file = dir.0.join("tokens");
    std::fs::write(&file, "from-secret\n").unwrap();
    let api = Api::start_with(&["--api-tokens-file", file.to_str().unwrap()]).await;
    // A final order: only the token is under test here.
    api.insert(vec![order(
        "f-1",
        "c",
        OrderStatus::Confirmed,
        100,
        now_ms(),
    )])
    .await;
    let resp = api
        .client
        .delete(format!("{}/orders/f-1", api.base))
        .bearer_auth("from-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);

    let closed = Api::start_with(&[]).await;
    closed
        .insert(vec![order("g-1", "c", OrderStatus::Placed, 100, now_ms())])
        .await;
    let resp = closed
        .client
        .delete(format!("{}/orders/g-1", closed.base))
        .bearer_auth("anything")
        .send()
        .await
        .unwrap();
    problem(resp, StatusCode::FORBIDDEN).await;
}

impl Api {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> reqwest::Response {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_owned());
        }
        req.send().await.unwrap()
    }

    async fn patch(&self, id: &str, body: &str, if_match: Option<&str>) -> reqwest::Response {
        let headers: Vec<(&str, &str)> = if_match.map(|m| ("if-match", m)).into_iter().collect();
        self.send(
            reqwest::Method::PATCH,
            &format!("/orders/{id}"),
            Some("token-one"),
            &headers,
            Some(body),
        )
        .await
    }
}

#[tokio::test]
async fn patch_follows_the_life_cycle_with_etags() {
    let api = Api::start().await;
    api.insert(vec![
        order("paid", "c", OrderStatus::Confirmed, 900, now_ms()),
        order("gone", "c", OrderStatus::Rejected, 900, now_ms()),
    ])
    .await;

    // Without or with a wrong token: 401 / 403, and nothing changes.
    let r = api
        .send(
            reqwest::Method::PATCH,
            "/orders/paid",
            None,
            &[],
            Some(r#"{"status":"shipped"}"#),
        )
        .await;
    problem(r, StatusCode::UNAUTHORIZED).await;
    let r = api
        .send(
            reqwest::Method::PATCH,
            "/orders/paid",
            Some("nope"),
            &[],
            Some(r#"{"status":"shipped"}"#),
        )
        .await;
    problem(r, StatusCode::FORBIDDEN).await;

    // 400, 415, 422, 404, 409.
    problem(api.patch("paid", "{", None).await, StatusCode::BAD_REQUEST).await;
    let r = api
        .send(
            reqwest::Method::PATCH,
            "/orders/paid",
            Some("token-one"),
            &[("content-type", "text/plain")],
            None,
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let p = problem(
        api.patch("paid", r#"{"status":"lost"}"#, None).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(p["errors"][0]["field"], "status");
    problem(
        api.patch("nobody", r#"{"status":"shipped"}"#, None).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    let p = problem(
        api.patch("paid", r#"{"status":"delivered"}"#, None).await,
        StatusCode::CONFLICT,
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("shipped"), "{p}");
    problem(
        api.patch("gone", r#"{"status":"cancelled"}"#, None).await,
        StatusCode::CONFLICT,
    )
    .await;

    // The ETag of a GET guards the PATCH; a stale one gets 412.
    let r = api.get("/orders/paid").await;
    let tag = r.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(tag, "\"1\"");
    let r = api
        .patch("paid", r#"{"status":"shipped"}"#, Some(&tag))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["etag"], "\"2\"");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "shipped");
    assert_eq!(body["history"].as_array().unwrap().len(), 2);
    let p = problem(
        api.patch("paid", r#"{"status":"delivered"}"#, Some(&tag))
            .await,
        StatusCode::PRECONDITION_FAILED,
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains('2'));
    let r = api
        .patch("paid", r#"{"status":"delivered"}"#, Some("\"2\""))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    // Asking again for the status it has changes nothing.
    let r = api.patch("paid", r#"{"status":"delivered"}"#, None).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["etag"], "\"3\"");
    let stored: OrderDocument = api
        .db
        .collection("orders")
        .find_one(bson::doc! {"orderId": "paid"})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.status, OrderStatus::Delivered);
    assert_eq!(stored.version, 3);
}

#[tokio::test]
async fn inventory_endpoints_validate_and_seed_is_idempotent() {
    let api = Api::start().await;
    let put = |id: &'static str, body: &'static str, token: Option<&'static str>| {
        let api = &api;
        async move {
            api.send(
                reqwest::Method::PUT,
                &format!("/inventory/{id}"),
                token,
                &[],
                Some(body),
            )
            .await
        }
    };
    let good = r#"{"name":"Mug","stock":8,"capacity":10,"unitPrice":12.10}"#;
    problem(put("mug", good, None).await, StatusCode::UNAUTHORIZED).await;
    problem(put("mug", good, Some("bad")).await, StatusCode::FORBIDDEN).await;
    problem(
        put("mug", "{", Some("token-two")).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    let p = problem(
        put(
            "mug",
            r#"{"name":"","stock":-1,"capacity":10,"unitPrice":0.001}"#,
            Some("token-two"),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    let fields: Vec<&str> = p["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["name", "stock", "unitPrice"]);
    // Out of range is a 422 naming the field, never a panic (it was: the
    // low-stock threshold overflowed computing half of this capacity).
    let p = problem(
        put(
            "coffee",
            r#"{"name":"Coffee","stock":1,"capacity":4611686018427387903,"unitPrice":1}"#,
            Some("token-two"),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(p["errors"][0]["field"], "capacity", "{p}");

    let r = put("mug", good, Some("token-two")).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = put(
        "mug",
        r#"{"name":"Mug","stock":4,"capacity":10,"unitPrice":12.10,"lowStockThreshold":5}"#,
        Some("token-two"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let text = api.get("/inventory/mug").await.text().await.unwrap();
    assert!(text.contains(r#""unitPrice":12.10"#), "exact money: {text}");
    let mug: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(mug["stock"], 4);
    assert_eq!(mug["lowStockThreshold"], 5);
    assert_eq!(mug["lowStock"], true);
    problem(api.get("/inventory/nothing").await, StatusCode::NOT_FOUND).await;

    let seed = || {
        api.send(
            reqwest::Method::POST,
            "/inventory/seed",
            Some("token-one"),
            &[],
            None,
        )
    };
    problem(
        api.send(reqwest::Method::POST, "/inventory/seed", None, &[], None)
            .await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    // "mug" exists already (PUT above): the other five demo products are
    // added, and mug keeps the stock it was given.
    let seeded = seed().await.text().await.unwrap();
    assert!(
        seeded.contains(r#""unitPrice":4.50"#),
        "exact money: {seeded}"
    );
    let first: Value = serde_json::from_str(&seeded).unwrap();
    assert_eq!(first["created"], 5);
    let mug: Value = api.get("/inventory/mug").await.json().await.unwrap();
    assert_eq!(mug["stock"], 4);
    let again: Value = seed().await.json().await.unwrap();
    assert_eq!(again["created"], 0, "seeding twice adds nothing");
    // Reference 004's seed path reaches the same handler, token and all.
    problem(
        api.send(reqwest::Method::POST, "/order/seed", None, &[], None)
            .await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    let compat = api
        .send(
            reqwest::Method::POST,
            "/order/seed",
            Some("token-one"),
            &[],
            None,
        )
        .await;
    assert_eq!(compat.status(), StatusCode::OK);
    let compat: Value = compat.json().await.unwrap();
    assert_eq!(compat["created"], 0);
    assert_eq!(compat["items"], again["items"]);
    let listed = api.get("/inventory").await.text().await.unwrap();
    assert!(
        listed.contains(r#""unitPrice":12.10"#),
        "exact money: {listed}"
    );
    let all: Value = serde_json::from_str(&listed).unwrap();
    let ids: Vec<&str> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["productId"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["beans", "coffee", "cookies", "mug", "notebook", "tea"]
    );
}

#[tokio::test]
async fn wait_for_returns_when_the_status_is_reached_or_on_timeout() {
    let api = Api::start().await;
    problem(
        api.get("/orders/x?waitFor=paid&timeout=99").await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;

    // The order does not exist yet when the long-poll starts.
    let writer = {
        let db = api.db.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(400)).await;
            let coll = db.collection::<OrderDocument>("orders");
            coll.insert_one(order("slow", "c", OrderStatus::Placed, 100, now_ms()))
                .await
                .unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(400)).await;
            set_status(&db, "slow", "confirmed").await;
        })
    };
    let started = std::time::Instant::now();
    let r = api.get("/orders/slow?waitFor=confirmed&timeout=10").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["preference-applied"], "wait");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "confirmed");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    writer.await.unwrap();

    // Timeout: the current state, no Preference-Applied.
    api.insert(vec![order(
        "stuck",
        "c",
        OrderStatus::Reserved,
        100,
        now_ms(),
    )])
    .await;
    let started = std::time::Instant::now();
    let r = api.get("/orders/stuck?waitFor=final&timeout=1").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers().get("preference-applied").is_none());
    assert!(started.elapsed() >= std::time::Duration::from_millis(900));
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "reserved");

    // Unreachable: answers at once.
    api.insert(vec![order("no", "c", OrderStatus::Rejected, 100, now_ms())])
        .await;
    let started = std::time::Instant::now();
    let r = api.get("/orders/no?waitFor=confirmed&timeout=20").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers().get("preference-applied").is_none());
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    // Never appears: 404 after the timeout.
    problem(
        api.get("/orders/never?waitFor=final&timeout=1").await,
        StatusCode::NOT_FOUND,
    )
    .await;
}

#[tokio::test]
async fn cancelling_a_reserved_order_gives_its_stock_back_once() {
    use orderflow_platform::mongo::documents::{
        InventoryDocument, ReservationDocument, ReservationState, ReservedItemDocument,
    };
    let api = Api::start().await;
    let now = DateTime::now();
    api.db
        .collection::<InventoryDocument>("inventory")
        .insert_one(InventoryDocument {
            product_id: "a".into(),
            name: "A".into(),
            unit_price_cents: 100,
            stock: 7,
            capacity: 10,
            low_stock_threshold: None,
            updated_at: now,
        })
        .await
        .unwrap();
    // As the inventory stage leaves a reserved order: 3 taken.
    api.db
        .collection::<ReservationDocument>("reservations")
        .insert_one(ReservationDocument {
            order_id: "r-1".into(),
            customer_id: "c".into(),
            currency: "USD".into(),
            total_cents: 300,
            state: ReservationState::Reserved,
            items: vec![ReservedItemDocument {
                product_id: "a".into(),
                quantity: 3,
            }],
            reason: None,
            detail: None,
            low_stock: vec![],
            created_at: now,
            updated_at: now,
        })
        .await
        .unwrap();
    api.insert(vec![
        order("r-1", "c", OrderStatus::Reserved, 300, now_ms()),
        order("p-1", "c", OrderStatus::Placed, 300, now_ms()),
    ])
    .await;

    let stock = || async {
        api.db
            .collection::<InventoryDocument>("inventory")
            .find_one(bson::doc! {"productId": "a"})
            .await
            .unwrap()
            .unwrap()
            .stock
    };
    let r = api
        .patch("r-1", r#"{"status":"cancelled"}"#, Some("\"1\""))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "cancelled");
    assert_eq!(body["statusReason"], "cancelled_by_client");
    assert_eq!(stock().await, 10);
    let reservation = api
        .db
        .collection::<ReservationDocument>("reservations")
        .find_one(bson::doc! {"_id": "r-1"})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reservation.state, ReservationState::Released);
    // Again: nothing more is given back.
    assert_eq!(
        api.patch("r-1", r#"{"status":"cancelled"}"#, None)
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(stock().await, 10);
    // A placed order has no reservation yet: cancelled, stock untouched.
    assert_eq!(
        api.patch("p-1", r#"{"status":"cancelled"}"#, None)
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(stock().await, 10);
    // A cancelled order cannot be confirmed by hand.
    problem(
        api.patch("r-1", r#"{"status":"confirmed"}"#, None).await,
        StatusCode::CONFLICT,
    )
    .await;
}

/// With one Ingress host for everything, `POST /orders` arrives at
/// orders-api, which hands it to the (real) producer unchanged.
#[tokio::test]
async fn post_orders_reaches_the_producer_through_orders_api() {
    let brokers = kit::kafka();
    let topics = kit::topics("intake");
    kit::create_topics(&brokers, &topics).await;
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
    ])
    .unwrap();
    let producer = orderflow_producer::start(producer, shutdown.clone())
        .await
        .unwrap();
    let producer_url = format!("http://{}", producer.addr);
    let api = Api::start_with(&["--producer-url", &producer_url]).await;

    let id = kit::unique("via-api");
    let body = format!(
        r#"{{"orderId":"{id}","customerId":"c-1","items":[{{"productId":"coffee","quantity":2,"unitPrice":4.50}}],"totalAmount":9.00}}"#
    );
    let r = api
        .client
        .post(format!("{}/orders", api.base))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(r.headers()["location"], format!("/orders/{id}").as_str());
    let text = r.text().await.unwrap();
    assert!(
        text.contains(r#""status":"queued""#) && text.contains(r#""totalAmount":9.00"#),
        "{text}"
    );
    // The event is on the topic: the producer really took it.
    kit::eventually(
        std::time::Duration::from_secs(10),
        "the order on the topic",
        || async { (kit::message_count(&brokers, &topics.orders) >= 1).then_some(()) },
    )
    .await;

    // The producer's own errors come back as they are.
    let r = api
        .client
        .post(format!("{}/orders", api.base))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(r.headers()["content-type"], "application/problem+json");

    // The producer gone: 503 with Retry-After, never a hang.
    shutdown.cancel();
    producer.task.await.unwrap().unwrap();
    let r = api
        .client
        .post(format!("{}/orders", api.base))
        .header("content-type", "application/json")
        .body(r#"{"customerId":"c-1","items":[{"productId":"coffee"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers()["retry-after"], "1");
}

#[tokio::test]
async fn post_orders_without_a_producer_url_is_method_not_allowed() {
    let api = Api::start().await;
    let r = api
        .client
        .post(format!("{}/orders", api.base))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
}

/// Issue 14, defect 7: deleting an order in flight would leak the stock it
/// holds (and the stages would go on with it): 409 until it is final.
#[tokio::test]
async fn an_order_in_flight_is_not_deleted_until_it_is_final() {
    let api = Api::start().await;
    api.insert(vec![
        order("f-1", "c", OrderStatus::Reserved, 100, now_ms()),
        order("f-2", "c", OrderStatus::Placed, 100, now_ms()),
    ])
    .await;
    let delete = |id: &str| {
        api.client
            .delete(format!("{}/orders/{id}", api.base))
            .header("authorization", "Bearer token-one")
            .send()
    };
    for id in ["f-1", "f-2"] {
        let body = problem(delete(id).await.unwrap(), StatusCode::CONFLICT).await;
        assert!(
            body["detail"].as_str().unwrap().contains("waitFor=final"),
            "{body}"
        );
        assert_eq!(
            api.get(&format!("/orders/{id}")).await.status(),
            StatusCode::OK,
            "{id} is kept"
        );
    }
    // Once the pipeline is done with it (here: rejected, its stock released
    // by the saga), it goes.
    api.db
        .collection::<bson::Document>("orders")
        .update_one(
            bson::doc! {"orderId": "f-1"},
            bson::doc! {"$set": {"status": "rejected"}},
        )
        .await
        .unwrap();
    assert_eq!(
        delete("f-1").await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    problem(api.get("/orders/f-1").await, StatusCode::NOT_FOUND).await;
}

/// The `orderflow_orders_api_wait_polls_total` counter.
async fn wait_polls(api: &Api) -> u64 {
    let text = api.get("/metrics").await.text().await.unwrap();
    kit::metric(&text, "orderflow_orders_api_wait_polls_total", &[])
        .map(|v| v as u64)
        .unwrap_or_else(|| panic!("no wait_polls counter: {text}"))
}

/// Issue 14, defect 4: every waitFor long-poll is served by the process's
/// one watcher (one query per round for all of them, not one loop each),
/// the waiters are capped with 503 and Retry-After, and an update reaches
/// its waiters at once.
#[tokio::test]
async fn long_polls_share_one_watcher_and_are_capped() {
    let api = std::sync::Arc::new(Api::start_with(&["--wait-clients", "20"]).await);
    let docs: Vec<OrderDocument> = (0..20)
        .map(|i| order(&format!("w-{i}"), "c", OrderStatus::Placed, 100, now_ms()))
        .collect();
    api.insert(docs).await;
    let before = wait_polls(&api).await;
    let started = std::time::Instant::now();
    let waits: Vec<_> = (0..20)
        .map(|i| {
            let api = api.clone();
            tokio::spawn(async move {
                let r = api
                    .get(&format!("/orders/w-{i}?waitFor=confirmed&timeout=3"))
                    .await;
                let applied = r.headers().contains_key("preference-applied");
                let body: Value = r.json().await.unwrap();
                (applied, body["status"].as_str().unwrap().to_owned())
            })
        })
        .collect();
    // Every place is taken: one more waiter is refused at once.
    kit::eventually(std::time::Duration::from_secs(5), "20 waiters", || async {
        let text = api.get("/metrics").await.text().await.unwrap();
        text.lines()
            .any(|l| l == "orderflow_orders_api_waiters 20")
            .then_some(())
    })
    .await;
    let refused = api.get("/orders/w-0?waitFor=confirmed&timeout=3").await;
    assert!(refused.headers().contains_key("retry-after"));
    let p = problem(refused, StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(
        p["type"].as_str().unwrap().ends_with("too-many-waiters"),
        "{p}"
    );
    // A plain read is not a waiter.
    assert_eq!(api.get("/orders/w-0").await.status(), StatusCode::OK);

    // One order confirmed: its waiter answers at once.
    set_status(&api.db, "w-7", "confirmed").await;
    let mut answers = Vec::new();
    for w in waits {
        answers.push(w.await.unwrap());
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed >= std::time::Duration::from_secs(3),
        "the others waited"
    );
    for (i, (applied, status)) in answers.iter().enumerate() {
        if i == 7 {
            assert!(*applied && status == "confirmed", "{i}: {status}");
        } else {
            assert!(!*applied && status == "placed", "{i}: {status}");
        }
    }
    // One watcher: at most one query per 100 ms round over the whole wait
    // (20 loops of their own would have made ~20 times as many).
    let polls = wait_polls(&api).await - before;
    let rounds = elapsed.as_millis() as u64 / 100 + 5;
    assert!(
        polls <= rounds,
        "{polls} queries in {elapsed:?} for 20 waiters"
    );
    assert!(polls >= 1);
    // The places are free again: a waiter is taken, and times out.
    let r = api.get("/orders/w-0?waitFor=confirmed&timeout=1").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(!r.headers().contains_key("preference-applied"));
}

/// A gauge of orders-api's /metrics.
async fn gauge(api: &Api, name: &str) -> i64 {
    let text = api.get("/metrics").await.text().await.unwrap();
    text.lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name}: {text}"))
}

/// Issue 12: the waitFor watcher's change stream makes the database
/// produce an event for every write to `orders`, so it is open only while
/// someone waits (and a linger after): not while nobody does, reopened for
/// the next waiter, and an update still reaches that waiter through it.
#[tokio::test]
async fn the_change_stream_is_open_only_while_someone_waits() {
    const OPEN: &str = "orderflow_orders_api_change_stream_open";
    let api = std::sync::Arc::new(Api::start_with(&["--wait-stream-linger", "1s"]).await);
    api.insert(vec![order("cs-1", "c", OrderStatus::Placed, 100, now_ms())])
        .await;
    // Nobody waits: writes, and no stream for them.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(gauge(&api, OPEN).await, 0, "a stream with nobody waiting");

    for round in 0..2 {
        let waiter = {
            let api = api.clone();
            tokio::spawn(async move {
                let r = api.get("/orders/cs-1?waitFor=final&timeout=20").await;
                let applied = r.headers().contains_key("preference-applied");
                let body: Value = r.json().await.unwrap();
                (applied, body["status"].as_str().unwrap().to_owned())
            })
        };
        kit::eventually(
            std::time::Duration::from_secs(10),
            "the stream opened",
            || async { (gauge(&api, OPEN).await == 1).then_some(()) },
        )
        .await;
        // Streaming, the watcher polls only as a safety net (each 1 s),
        // not every 100 ms.
        let polls = wait_polls(&api).await;
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        let during = wait_polls(&api).await - polls;
        assert!(during <= 4, "round {round}: {during} polls in 1.5 s");
        let status = if round == 0 { "confirmed" } else { "cancelled" };
        set_status(&api.db, "cs-1", status).await;
        let (applied, got) = waiter.await.unwrap();
        assert!(applied && got == status, "round {round}: {got}");
        // The last waiter left: the stream closes after the linger (1 s).
        kit::eventually(
            std::time::Duration::from_secs(10),
            "the stream closed",
            || async { (gauge(&api, OPEN).await == 0).then_some(()) },
        )
        .await;
        if round == 0 {
            // Back to a placed order for the second waiter.
            set_status(&api.db, "cs-1", "placed").await;
        }
    }
}

/// Issue 14, defect 4: every service sheds requests past MAX_CONCURRENCY at
/// once (503, Retry-After) and answers 503 past REQUEST_TIMEOUT, both as
/// problems.
#[tokio::test]
async fn requests_past_the_concurrency_limit_or_the_timeout_get_503() {
    let api = std::sync::Arc::new(
        Api::start_with(&["--max-concurrency", "2", "--request-timeout", "3s"]).await,
    );
    api.insert(vec![order(
        "slow-1",
        "c",
        OrderStatus::Placed,
        100,
        now_ms(),
    )])
    .await;
    let started = std::time::Instant::now();
    let waits: Vec<_> = (0..2)
        .map(|_| {
            let api = api.clone();
            tokio::spawn(
                async move { api.get("/orders/slow-1?waitFor=confirmed&timeout=10").await },
            )
        })
        .collect();
    // While both long-polls hold the two places, a third request is shed at
    // once (asked until the two are in, on a busy machine).
    let shed = loop {
        let asked = std::time::Instant::now();
        let r = api.get("/orders").await;
        if r.status() == StatusCode::SERVICE_UNAVAILABLE {
            assert!(
                asked.elapsed() < std::time::Duration::from_millis(500),
                "shed at once, not queued: {:?}",
                asked.elapsed()
            );
            break r;
        }
        assert_eq!(r.status(), StatusCode::OK);
        assert!(
            started.elapsed() < std::time::Duration::from_millis(2500),
            "never shed while two requests were in flight"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(shed.headers().contains_key("retry-after"));
    let p = problem(shed, StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(p["type"].as_str().unwrap().ends_with("overloaded"), "{p}");
    // The long-polls (10 s) are cut at the request timeout (3 s).
    for w in waits {
        let r = w.await.unwrap();
        let p = problem(r, StatusCode::SERVICE_UNAVAILABLE).await;
        assert!(p["type"].as_str().unwrap().ends_with("timeout"), "{p}");
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed >= std::time::Duration::from_secs(3) && elapsed < std::time::Duration::from_secs(9),
        "cut at the request timeout: {elapsed:?}"
    );
    // Free again: served.
    assert_eq!(api.get("/orders").await.status(), StatusCode::OK);
}
