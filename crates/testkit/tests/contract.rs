//! Contract fuzzing (issue 14): schemathesis (PyPI) against every
//! service's `/openapi.json` on a running stack — the built binaries of
//! producer, the four stages, orders-api (handing `POST /orders` to the
//! producer) and analytics, on this test's topics and database, with the
//! demo catalogue seeded and a bearer token for the mutations. For every
//! generated request: no 5xx, and no status, content type or body that
//! the document does not list.

use std::process::Command;

use orderflow_testkit as kit;
use orderflow_testkit::stack::Stack;

const TOKEN: &str = "contract-token";

#[tokio::test]
async fn every_service_answers_within_its_openapi_document() {
    kit::telemetry();
    let st = std::env::var("ORDERFLOW_TEST_SCHEMATHESIS")
        .expect("ORDERFLOW_TEST_SCHEMATHESIS (set by scripts/test)");
    let topics = kit::topics("contract");
    kit::create_topics(&kit::kafka(), &topics).await;
    let db = kit::unique("contract");
    let mut stack = Stack::new(&topics, &db, &[("API_TOKENS", TOKEN)]);
    let ports: Vec<u16> = (0..2).map(|_| kit::free_port()).collect();
    let producer = stack.spawn_producer();
    stack.spawn_stages();
    stack.spawn(
        "orders-api",
        "orders-api",
        &[
            ("ORDERS_API_PORT", ports[0].to_string()),
            ("PRODUCER_URL", producer.clone()),
        ],
    );
    stack.spawn(
        "analytics",
        "analytics",
        &[
            ("ANALYTICS_PORT", ports[1].to_string()),
            ("STAGE_GROUPS", stack.stage_groups()),
        ],
    );
    let services = [
        ("producer", producer),
        ("orders-api", format!("http://127.0.0.1:{}", ports[0])),
        ("analytics", format!("http://127.0.0.1:{}", ports[1])),
        ("consumer", stack.stage_url("persist")),
    ];
    for (_, url) in &services {
        kit::ready(url).await;
    }
    let seeded = reqwest::Client::new()
        .post(format!("{}/inventory/seed", services[1].1))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert!(seeded.status().is_success());

    let mut failed = Vec::new();
    for (name, url) in &services {
        let out = tokio::task::spawn_blocking({
            let (st, url) = (st.clone(), url.clone());
            move || {
                Command::new(st)
                    .args([
                        "run",
                        &format!("{url}/openapi.json"),
                        "--checks",
                        "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
                        "--max-examples",
                        "25",
                        // One worker: with two threads, hypothesis's
                        // lambda descriptions call ast.parse at once, and
                        // Debian's Python 3.11 then fails a request at
                        // random with "AST constructor recursion depth
                        // mismatch" (CPython gh-106905), an ERROR that is
                        // schemathesis's, not the service's.
                        "--workers",
                        "1",
                        "--seed",
                        "20261202",
                        "--max-response-time",
                        "40",
                        "--header",
                        &format!("Authorization: Bearer {TOKEN}"),
                        // /metrics and the streams never end a body the
                        // way a JSON answer does; their shapes are not JSON.
                        "--exclude-path-regex",
                        "^/(metrics|analytics/stream|analytics/pipeline/stream)$",
                    ])
                    .env("NO_COLOR", "1")
                    // Its cache goes to a scratch directory, not the tree.
                    .current_dir(std::env::temp_dir())
                    .output()
                    .expect("running schemathesis")
            }
        })
        .await
        .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            eprintln!(
                "--- schemathesis against {name} ({url}):\n{text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            failed.push(format!("{name}:\n{}", failures(&text)));
        }
    }
    // The failures themselves in the panic message: a CI excerpt keeps
    // its end, past the stack's log tails.
    assert!(
        failed.is_empty(),
        "contract failures (whole output above):\n{}",
        failed.join("\n")
    );
    stack.assert_running();
}

/// Schemathesis's FAILURES and ERRORS sections (each up to the next
/// section), at most 3 000 characters; the output's tail when it has
/// neither.
fn failures(output: &str) -> String {
    let section = |l: &str| l.starts_with("====") && l.ends_with("====");
    let mut keep = false;
    let mut picked: Vec<&str> = Vec::new();
    for l in output.lines() {
        if section(l) {
            keep = l.contains(" FAILURES ") || l.contains(" ERRORS ");
        }
        if keep {
            picked.push(l);
        }
    }
    if picked.is_empty() {
        let lines: Vec<&str> = output.lines().collect();
        picked = lines[lines.len().saturating_sub(30)..].to_vec();
    }
    let text = picked.join("\n");
    match text.char_indices().nth(3000) {
        Some((cut, _)) => format!("{}\n[…]", &text[..cut]),
        None => text,
    }
}

#[test]
fn the_failures_and_errors_sections_are_what_the_panic_message_carries() {
    let out = "Schemathesis v4\n ✅ Coverage\n\
        =================================== FAILURES ===================================\n\
        ___ POST /analytics/dlq/redrive ___\n\
        1. Server error\n\
        =================================== WARNINGS ===================================\n\
        Missing test data\n\
        ==== ERRORS ====\n\
        Timeout\n";
    let picked = failures(out);
    assert!(picked.contains(" FAILURES "), "{picked}");
    assert!(picked.contains("1. Server error"), "{picked}");
    assert!(!picked.contains("Missing test data"), "{picked}");
    assert!(picked.contains("Timeout"), "{picked}");
    assert_eq!(failures("a\nb"), "a\nb");
}
