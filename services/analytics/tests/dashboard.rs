//! The dashboard in a real browser: headless Chromium driven over the
//! WebDriver protocol (chromedriver, started by this test). The page must
//! load with no console error, and its live chart must change after orders
//! are posted. Screenshots are saved to `target/artifacts/`.

use std::time::{Duration, Instant};

use clap::Parser;
use kit::browser::{processes_naming, Driver};
use orderflow_platform::shutdown::CancellationToken;
use orderflow_testkit as kit;
use serde_json::{json, Value};

mod support;

#[tokio::test]
async fn the_dashboard_loads_cleanly_and_its_live_chart_moves_with_orders() {
    kit::telemetry();
    let brokers = kit::kafka();
    let topics = kit::topics("dashboard");
    kit::create_topics(&brokers, &topics).await;
    let shutdown = CancellationToken::new();
    // Ends the services on a failed assertion too (analytics' blocking
    // readers would otherwise keep the runtime from ending).
    let _stop = shutdown.clone().drop_guard();
    let mongo = kit::mongo_url(&kit::unique("dashboard"));
    let recent_key = format!("{}:recent", topics.orders);
    let producer = support::producer(&topics, &recent_key, shutdown.clone()).await;
    let analytics = orderflow_analytics::Args::try_parse_from([
        "analytics",
        "--port",
        "0",
        "--bind",
        "127.0.0.1",
        "--kafka-brokers",
        &brokers,
        "--topic-orders",
        &topics.orders,
        "--topic-payment",
        &topics.payment,
        "--mongo-url",
        &mongo,
        "--redis-url",
        &kit::redis_url(),
        "--recent-orders-key",
        &recent_key,
        "--group",
        &kit::unique("analytics"),
        "--stream-interval",
        "250ms",
    ])
    .unwrap();
    let analytics = orderflow_analytics::start(analytics, shutdown.clone())
        .await
        .unwrap();
    let page = format!("http://{}/", analytics.addr);

    let driver = Driver::start().await;
    driver.goto(&page).await;
    // The page gets live samples over SSE.
    let started = Instant::now();
    while driver
        .eval("return Number(document.body.dataset.samples || 0)")
        .await
        .as_i64()
        .unwrap()
        < 3
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no live samples reached the page"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let chart = "return document.getElementById('orders-chart').toDataURL()";
    let before = driver.eval(chart).await;
    assert_eq!(
        driver
            .eval("return document.getElementById('orders-rate').textContent")
            .await,
        "0.0"
    );
    driver.screenshot("dashboard-idle.png").await;

    // Post orders until the page shows a rate above zero (the first ones
    // may land before analytics' consumer has its partitions).
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut posted = 0;
    loop {
        for _ in 0..5 {
            posted += 1;
            let r = client
                .post(format!("http://{}/orders", producer.addr))
                .json(&json!({"orderId": format!("d-{posted}"), "customerId": "c-1",
                              "items": [{"productId": "coffee", "quantity": 1, "unitPrice": 4.50}]}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 202);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rate = driver
            .eval("return Number(document.body.dataset.ordersPerSecond || 0)")
            .await;
        if rate.as_f64().unwrap() > 0.0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the live rate never moved"
        );
    }
    let after = driver.eval(chart).await;
    assert_ne!(before, after, "the orders/s chart changed");
    let shown: f64 = driver
        .eval("return document.getElementById('orders-rate').textContent")
        .await
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(shown > 0.0);
    // The recent-orders table lists what was posted (refreshed every 2 s).
    let started = Instant::now();
    loop {
        let text = driver
            .eval("return document.getElementById('recent').textContent")
            .await;
        if text.as_str().unwrap().contains(&format!("d-{posted}")) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "recent orders not shown: {text}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let shot = driver.screenshot("dashboard-live.png").await;
    eprintln!("dashboard screenshot: {}", shot.display());

    let errors: Vec<Value> = driver
        .console()
        .await
        .into_iter()
        .filter(|e| e["level"] == "SEVERE")
        .collect();
    assert!(errors.is_empty(), "console errors: {errors:?}");
    shutdown.cancel();

    // Issue 14, defect 11: every process the test started ends with it.
    let profile = driver.profile.0.display().to_string();
    assert!(
        !processes_naming(&profile).is_empty(),
        "Chromium runs with the test's profile"
    );
    drop(driver);
    let started = Instant::now();
    loop {
        let left = processes_naming(&profile);
        if left.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "left running: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
