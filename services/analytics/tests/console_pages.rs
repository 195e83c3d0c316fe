//! The pipeline console in a real browser (issue 15): headless Chromium
//! over WebDriver against the built binaries on the real broker. The page
//! shows a stopped stage's lag rising and falling once it is back; a
//! notification dead-lettered while the SMTP server was down is re-driven
//! from the page and its e-mail arrives exactly once. Screenshots are saved
//! to `target/artifacts/` (one is in the README).

use std::time::Duration;

use kit::browser::Driver;
use orderflow_testkit as kit;
use reqwest::StatusCode;
use serde_json::json;

mod support;

use support::{Console, TOKEN};

async fn post_orders(c: &Console, prefix: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let id = format!("{prefix}-{i}");
        let r = c
            .http
            .post(format!("{}/orders", c.producer))
            .json(&json!({"orderId": id, "customerId": "c-1",
                          "items": [{"productId": "coffee", "quantity": 1, "unitPrice": 4.50}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        ids.push(id);
    }
    ids
}

/// Chromium on the console page of `c`, once it has had `ready` (a
/// script) true.
async fn open_console(c: &Console, what: &str, ready: &str) -> Driver {
    let driver = Driver::start().await;
    driver.resize(1280, 1000).await;
    driver.goto(&format!("{}/pipeline", c.analytics)).await;
    driver.wait_for(Duration::from_secs(30), what, ready).await;
    driver
}

fn stage_lag(stage: &str) -> String {
    format!("const r = document.querySelector('tr[data-stage={stage}]'); return r ? Number(r.dataset.lag) : null")
}

#[tokio::test]
async fn the_pipeline_page_shows_lag_rising_while_a_stage_is_stopped_and_falling_after_it_restarts()
{
    let mut c = Console::start("lagpage", &[]).await;
    let driver = open_console(
        &c,
        "live samples",
        "return Number(document.body.dataset.samples || 0) >= 2",
    )
    .await;
    assert_eq!(driver.eval(&stage_lag("inventory")).await, 0);

    c.stack.stop("inventory").await;
    post_orders(&c, "lag", 40).await;
    let rising = format!(
        "const v = (() => {{ {} }})(); return v >= 40 ? v : null",
        stage_lag("inventory")
    );
    let lag = driver
        .wait_for(
            Duration::from_secs(60),
            "inventory's lag on the page",
            &rising,
        )
        .await;
    // Every order persisted waits for inventory (more only if persist
    // re-emitted one after a rebalance: delivery is at-least-once).
    let lag = lag.as_i64().unwrap();
    assert!(lag >= 40, "{lag}");
    // Persist commits once a second: it shows caught up, while inventory
    // still waits for all 40.
    let persist_done = format!(
        "const v = (() => {{ {} }})(); return v === 0",
        stage_lag("persist")
    );
    driver
        .wait_for(Duration::from_secs(30), "persist caught up", &persist_done)
        .await;
    let lag = driver.eval(&stage_lag("inventory")).await.as_i64().unwrap();
    assert!(lag >= 40, "inventory still waits: {lag}");
    // The flow diagram names the stopped stage with its lag and no replica.
    let flow = driver
        .eval("return document.getElementById('flow').textContent")
        .await;
    assert!(
        flow.as_str().unwrap().contains(&format!("lag {lag} · ×0")),
        "{flow}"
    );
    let shot = driver.screenshot("pipeline-lagging.png").await;
    eprintln!("pipeline screenshot: {}", shot.display());

    c.stack.spawn_stage("inventory", &[]);
    let falling = format!(
        "const v = (() => {{ {} }})(); return v === 0 ? 'caught up' : null",
        stage_lag("inventory")
    );
    driver
        .wait_for(Duration::from_secs(90), "inventory catching up", &falling)
        .await;
    driver.screenshot("pipeline-caught-up.png").await;
    let errors = driver.errors().await;
    assert!(errors.is_empty(), "console errors: {errors:?}");
    c.stack.assert_running();
}

#[tokio::test]
async fn a_notification_dead_lettered_in_an_smtp_outage_is_redriven_from_the_page_and_mailed_once()
{
    let mut smtp = kit::spawn_smtp();
    smtp.stop();
    let smtp_url = smtp.url();
    let c = Console::start(
        "redrivepage",
        &[
            ("NOTIFY_CHANNELS", "smtp"),
            ("SMTP_URL", &smtp_url),
            ("NOTIFY_ATTEMPTS", "2"),
            ("NOTIFY_BACKOFF", "50ms"),
        ],
    )
    .await;
    let ids = post_orders(&c, "mail", 1).await;
    let subject = format!("order {} ", ids[0]);
    let letters = c.letters(1).await;
    assert_eq!(letters[0]["stage"], "notify", "{letters:?}");
    smtp.restart();

    let driver = open_console(
        &c,
        "the dead letter listed",
        "return document.querySelector('#dlq button.redrive') !== null",
    )
    .await;
    let row = driver
        .eval("return document.querySelector('#dlq tr[data-offset]').textContent")
        .await;
    assert!(row.as_str().unwrap().contains("notify"), "{row}");
    driver.screenshot("pipeline-dead-letter.png").await;
    driver
        .eval(&format!(
            "document.getElementById('token').value = '{TOKEN}'; document.querySelector('#dlq button.redrive').click(); return true"
        ))
        .await;
    let result = driver
        .wait_for(
            Duration::from_secs(20),
            "the re-drive's answer",
            "const t = document.getElementById('dlq-result').textContent; return t ? t : null",
        )
        .await;
    assert!(
        result.as_str().unwrap().starts_with("re-driven to"),
        "{result}"
    );
    let mails = |smtp: &kit::SmtpSink| {
        smtp.mails()
            .iter()
            .filter(|m| m.subject.contains(&subject))
            .count()
    };
    kit::eventually(Duration::from_secs(60), "the e-mail", || async {
        (mails(&smtp) == 1).then_some(())
    })
    .await;
    // The page now shows it re-driven, with no button.
    driver
        .wait_for(
            Duration::from_secs(20),
            "the row marked re-driven",
            "return document.querySelector('#dlq .redriven') !== null && document.querySelector('#dlq button.redrive') === null",
        )
        .await;
    driver.screenshot("pipeline-redriven.png").await;
    // Asked again: nothing is sent, and no second e-mail comes.
    let (p, o) = (
        letters[0]["partition"].as_i64().unwrap(),
        letters[0]["offset"].as_i64().unwrap(),
    );
    let (status, again) = c
        .redrive(
            Some(TOKEN),
            &json!({"partition": p, "offset": o}).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        again["outcomes"][0]["reason"], "already-redriven",
        "{again}"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(mails(&smtp), 1, "exactly once: {:?}", smtp.mails());
    let errors = driver.errors().await;
    assert!(errors.is_empty(), "console errors: {errors:?}");
}
