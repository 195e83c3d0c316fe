//! The `operator` binary end to end against a small in-process fake of the
//! Kubernetes API (Leases with resourceVersion checks, empty pipeline and
//! Deployment lists, watches that stay open): two replicas elect exactly one
//! leader, the leader serves its metrics and readiness, and on SIGTERM it
//! exits cleanly and releases the Lease so the standby takes over.

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use orderflow_testkit as kit;
use serde_json::{json, Value};

mod support;
use support::{leading, spawn_operator, Operator};

#[derive(Default)]
struct Cluster {
    lease: Option<Value>,
    version: u64,
    /// Every holder the Lease has had.
    holders: BTreeSet<String>,
}

type Shared = Arc<Mutex<Cluster>>;

fn status(code: u16, reason: &str) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                      "reason": reason, "code": code, "message": reason});
    (StatusCode::from_u16(code).unwrap(), Json(body)).into_response()
}

async fn get_lease(State(c): State<Shared>) -> Response {
    match c.lock().unwrap().lease.clone() {
        Some(l) => Json(l).into_response(),
        None => status(404, "NotFound"),
    }
}

fn store(c: &mut Cluster, mut lease: Value) -> Value {
    c.version += 1;
    lease["metadata"]["resourceVersion"] = json!(c.version.to_string());
    if let Some(h) = lease["spec"]["holderIdentity"].as_str() {
        c.holders.insert(h.to_owned());
    }
    c.lease = Some(lease.clone());
    lease
}

async fn create_lease(State(c): State<Shared>, Json(lease): Json<Value>) -> Response {
    let mut c = c.lock().unwrap();
    if c.lease.is_some() {
        return status(409, "AlreadyExists");
    }
    let stored = store(&mut c, lease);
    (StatusCode::CREATED, Json(stored)).into_response()
}

async fn replace_lease(State(c): State<Shared>, Json(lease): Json<Value>) -> Response {
    let mut c = c.lock().unwrap();
    let current = c
        .lease
        .as_ref()
        .map(|l| l["metadata"]["resourceVersion"].clone());
    if current != Some(lease["metadata"]["resourceVersion"].clone()) {
        return status(409, "Conflict");
    }
    Json(store(&mut c, lease)).into_response()
}

/// A list, or (with `watch=true`) a watch that stays open with no events.
fn list_or_watch(
    query: &std::collections::HashMap<String, String>,
    kind: &str,
    api_version: &str,
) -> Response {
    if query.get("watch").map(String::as_str) == Some("true") {
        let pending = futures::stream::pending::<Result<axum::body::Bytes, std::io::Error>>();
        return Response::new(Body::from_stream(pending));
    }
    Json(json!({"apiVersion": api_version, "kind": kind, "metadata": {"resourceVersion": "1"}, "items": []}))
        .into_response()
}

async fn fake_api() -> (String, Shared) {
    let cluster = Shared::default();
    let lease = "/apis/coordination.k8s.io/v1/namespaces/ops/leases";
    let app = Router::new()
        .route(
            "/version",
            get(|| async {
                Json(
                    json!({"major": "1", "minor": "37", "gitVersion": "v1.37.0", "gitCommit": "x",
                            "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
                            "goVersion": "go1.25", "compiler": "gc", "platform": "linux/amd64"}),
                )
            }),
        )
        .route(lease, axum::routing::post(create_lease))
        .route(
            &format!("{lease}/orderflow-operator"),
            get(get_lease).put(replace_lease),
        )
        .route(
            "/apis/orderflow.dev/v1alpha1/orderpipelines",
            get(
                |Query(q): Query<std::collections::HashMap<String, String>>| async move {
                    list_or_watch(&q, "OrderPipelineList", "orderflow.dev/v1alpha1")
                },
            ),
        )
        .route(
            "/apis/apps/v1/deployments",
            get(
                |Query(q): Query<std::collections::HashMap<String, String>>| async move {
                    list_or_watch(&q, "DeploymentList", "apps/v1")
                },
            ),
        )
        .with_state(cluster.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), cluster)
}

#[tokio::test]
async fn two_replicas_elect_one_leader_which_hands_over_on_sigterm() {
    let (server, cluster) = fake_api().await;
    let dir = kit::TempDir::new("kubeconfig");
    let kubeconfig = dir.0.join("config");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: fake, cluster: {{server: \"{server}\"}}}}]\n\
             users: [{{name: fake, user: {{}}}}]\n\
             contexts: [{{name: fake, context: {{cluster: fake, user: fake, namespace: ops}}}}]\n\
             current-context: fake\n"
        ),
    )
    .unwrap();
    let client = reqwest::Client::new();
    let names = ["op-a", "op-b"];
    let mut ops = names.map(|n| spawn_operator(&kubeconfig, n, &[], None));

    // Exactly one leads (checked over a few renewals), and is ready.
    let roles = |ops: &[Operator; 2]| {
        let (a, b) = (ops[0].port, ops[1].port);
        let client = client.clone();
        async move { (leading(&client, a).await, leading(&client, b).await) }
    };
    let leader = kit::eventually(Duration::from_secs(20), "a leader", || async {
        match roles(&ops).await {
            (Some(true), Some(false)) => Some(0),
            (Some(false), Some(true)) => Some(1),
            _ => None,
        }
    })
    .await;
    let standby = 1 - leader;
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        let states = roles(&ops).await;
        assert!(
            states == (Some(true), Some(false)) || states == (Some(false), Some(true)),
            "{states:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let ready = client
        .get(format!("http://127.0.0.1:{}/readyz", ops[leader].port))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), reqwest::StatusCode::OK);

    // SIGTERM: the leader exits 0 and releases the Lease, and the standby
    // takes over.
    let pid = ops[leader].child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let mut exited = None;
    for _ in 0..150 {
        exited = ops[leader].child.try_wait().unwrap();
        if exited.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let exited = exited.expect("the leader exits within 15 s of SIGTERM");
    assert!(exited.success(), "{exited:?}");
    let released = cluster.lock().unwrap().lease.clone().unwrap();
    assert!(
        released["spec"]["holderIdentity"] != names[leader],
        "not released: {released}"
    );
    let standby_port = ops[standby].port;
    kit::eventually(Duration::from_secs(10), "the standby to lead", || async {
        (leading(&client, standby_port).await == Some(true)).then_some(())
    })
    .await;
    assert_eq!(
        cluster.lock().unwrap().holders,
        BTreeSet::from(["op-a".to_string(), "op-b".to_string()])
    );
}
