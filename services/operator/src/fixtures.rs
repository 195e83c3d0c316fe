//! Test fixtures: a mock Kubernetes API server that asserts each request in
//! order (kube-rs controller-rs style) and an in-memory broker. The broker
//! stand-in serves only these scenarios, which test the Kubernetes side of
//! the reconcile; the broker side is tested against the real broker
//! (`tests/broker.rs`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};
use tower_test::mock::{Handle, SendResponse};

use crate::broker::{BoxFuture, Brokers, Connection};
use crate::controller::Context;
use crate::crd::OrderPipeline;
use crate::metrics::Metrics;
use crate::scaling::PartitionOffsets;
use crate::topics::{ObservedTopic, TopicAction};

#[derive(Default)]
pub struct FakeBrokers {
    pub topics: Mutex<BTreeMap<String, ObservedTopic>>,
    /// Per consumer group: the offsets of its input topic.
    pub offsets: Mutex<BTreeMap<String, Vec<PartitionOffsets>>>,
    pub applied: Mutex<Vec<TopicAction>>,
    pub deleted: Mutex<Vec<String>>,
    /// Every connection the reconciler asked for topics with.
    pub connections: Mutex<Vec<Connection>>,
    pub down: AtomicBool,
}

impl FakeBrokers {
    /// A broker that already has every default topic.
    pub fn with_default_topics() -> Self {
        let fake = FakeBrokers::default();
        for (name, partitions) in [
            ("orders", 6),
            ("orders.validated", 6),
            ("inventory.events", 6),
            ("payment.events", 6),
            ("notifications", 3),
            ("orders.dlq", 1),
        ] {
            fake.set_topic(name, partitions);
        }
        fake
    }

    pub fn set_topic(&self, name: &str, partitions: i32) {
        self.topics.lock().unwrap().insert(
            name.into(),
            ObservedTopic {
                partitions,
                config: None,
            },
        );
    }

    /// `lags[i]` messages waiting on partition i of `group`'s topic.
    pub fn set_lag(&self, group: &str, lags: &[i64]) {
        let offsets = lags
            .iter()
            .enumerate()
            .map(|(i, lag)| PartitionOffsets {
                partition: i as i32,
                low: 0,
                high: 1000 + lag,
                committed: Some(1000),
            })
            .collect();
        self.offsets.lock().unwrap().insert(group.into(), offsets);
    }

    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.down.load(Ordering::SeqCst), "broker unreachable");
        Ok(())
    }
}

impl Brokers for FakeBrokers {
    fn topics<'a>(
        &'a self,
        conn: &'a Connection,
        _describe: &'a [String],
    ) -> BoxFuture<'a, anyhow::Result<BTreeMap<String, ObservedTopic>>> {
        Box::pin(async move {
            self.connections.lock().unwrap().push(conn.clone());
            self.check()?;
            Ok(self.topics.lock().unwrap().clone())
        })
    }

    fn apply<'a>(
        &'a self,
        _: &'a Connection,
        action: &'a TopicAction,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            self.check()?;
            match action {
                TopicAction::Create(t) => self.set_topic(&t.name, t.partitions),
                TopicAction::AddPartitions { name, total } => self.set_topic(name, *total),
                _ => {}
            }
            self.applied.lock().unwrap().push(action.clone());
            Ok(())
        })
    }

    fn delete<'a>(
        &'a self,
        _: &'a Connection,
        names: &'a [String],
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            self.check()?;
            self.deleted.lock().unwrap().extend(names.iter().cloned());
            Ok(())
        })
    }

    fn offsets<'a>(
        &'a self,
        _: &'a Connection,
        group: &'a str,
        topic: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<Vec<PartitionOffsets>>> {
        Box::pin(async move {
            self.check()?;
            if let Some(o) = self.offsets.lock().unwrap().get(group) {
                return Ok(o.clone());
            }
            let partitions = self
                .topics
                .lock()
                .unwrap()
                .get(topic)
                .map(|t| t.partitions)
                .ok_or_else(|| anyhow::anyhow!("no topic {topic}"))?;
            Ok((0..partitions)
                .map(|partition| PartitionOffsets {
                    partition,
                    low: 0,
                    high: 0,
                    committed: None,
                })
                .collect())
        })
    }
}

/// One request the mock API server received.
pub struct Received {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: Value,
    send: SendResponse<Response<Body>>,
}

impl Received {
    pub fn respond(self, status: StatusCode, body: &Value) {
        self.send.send_response(
            Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(body).unwrap()))
                .unwrap(),
        );
    }

    /// Answers a write with the object written.
    pub fn echo(self) {
        let body = self.body.clone();
        self.respond(StatusCode::OK, &body);
    }

    /// Answers a patch of the pipeline with the pipeline it makes.
    pub fn echo_pipeline(self) {
        let mut object = serde_json::to_value(pipeline(json!({}))).unwrap();
        merge(&mut object, &self.body);
        self.respond(StatusCode::OK, &object);
    }

    pub fn fail(self, code: u16, reason: &str) {
        let status = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": format!("injected {reason}"),
            "reason": reason, "code": code,
        });
        self.respond(StatusCode::from_u16(code).unwrap(), &status);
    }

    /// A server-side apply by the operator's field manager.
    pub fn assert_apply(&self) {
        assert_eq!(self.method, "PATCH", "{}", self.path);
        assert_eq!(
            self.content_type, "application/apply-patch+yaml",
            "{}",
            self.path
        );
        assert!(
            self.query.contains("fieldManager=orderflow-operator")
                && self.query.contains("force=true"),
            "{}?{}",
            self.path,
            self.query
        );
    }
}

pub struct ApiServer {
    handle: Handle<Request<Body>, Response<Body>>,
    /// The RBAC rules every request must be allowed by.
    rules: &'static [crate::rbac::Rule],
}

/// A client on a mock API server (default namespace `namespace`) whose
/// requests must be allowed by `rules`.
pub fn mock_api(rules: &'static [crate::rbac::Rule], namespace: &str) -> (Client, ApiServer) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, namespace), ApiServer { handle, rules })
}

impl ApiServer {
    /// The next request; it must be `method path`.
    pub async fn expect(&mut self, method: &str, path: &str) -> Received {
        let (request, send) =
            tokio::time::timeout(Duration::from_secs(5), self.handle.next_request())
                .await
                .unwrap_or_else(|_| panic!("expected {method} {path}, got no request"))
                .expect("the client is gone");
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("request bodies are JSON")
        };
        let received = Received {
            method: parts.method.to_string(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().unwrap_or_default().to_owned(),
            content_type: parts
                .headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned(),
            body,
            send,
        };
        assert_eq!(
            (received.method.as_str(), received.path.as_str()),
            (method, path),
            "request out of order"
        );
        let (group, resource, verb) =
            crate::rbac::request_attributes(&received.method, &received.path, &received.query);
        assert!(
            crate::rbac::allows(self.rules, &group, &resource, &verb),
            "the operator's RBAC does not allow {verb} {group}/{resource}"
        );
        received
    }

    /// An Event about the pipeline, with this reason; returns its note.
    pub async fn expect_event(&mut self, reason: &str) -> String {
        let r = self
            .expect("POST", "/apis/events.k8s.io/v1/namespaces/default/events")
            .await;
        assert_eq!(r.body["reason"], reason, "{}", r.body);
        assert_eq!(r.body["regarding"]["kind"], "OrderPipeline");
        let note = r.body["note"].as_str().unwrap_or_default().to_owned();
        r.echo();
        note
    }

    /// The owned objects applied in order: the ConfigMap, the Deployments
    /// (answered as rolled out, stages at `stage_replicas`), the Services,
    /// then the Ingress and HTTPRoute applied (`exposed`) or deleted
    /// (absent: 404).
    pub async fn expect_owned_objects(&mut self, stage_replicas: i32, exposed: bool) {
        let ns = "/namespaces/default";
        let r = self
            .expect("PATCH", &format!("/api/v1{ns}/configmaps/shop-config"))
            .await;
        r.assert_apply();
        r.echo();
        for c in [
            "producer",
            "orders-api",
            "analytics",
            "persist",
            "inventory",
            "payment",
            "notify",
        ] {
            let r = self
                .expect("PATCH", &format!("/apis/apps/v1{ns}/deployments/shop-{c}"))
                .await;
            r.assert_apply();
            let mut d = r.body.clone();
            let replicas = d["spec"]["replicas"]
                .as_i64()
                .unwrap_or(i64::from(stage_replicas));
            d["spec"]["replicas"] = json!(replicas);
            d["metadata"]["generation"] = json!(1);
            d["status"] = json!({
                "observedGeneration": 1, "replicas": replicas,
                "updatedReplicas": replicas, "availableReplicas": replicas, "readyReplicas": replicas,
            });
            r.respond(StatusCode::OK, &d);
        }
        for c in ["producer", "orders-api", "analytics"] {
            let r = self
                .expect("PATCH", &format!("/api/v1{ns}/services/shop-{c}"))
                .await;
            r.assert_apply();
            r.echo();
        }
        for path in [ingress_path_of(ns), route_path_of(ns)] {
            if exposed {
                let r = self.expect("PATCH", &path).await;
                r.assert_apply();
                r.echo();
            } else {
                self.expect("DELETE", &path).await.fail(404, "NotFound");
            }
        }
    }

    /// A patch of `deployment`'s scale subresource to `replicas`.
    pub async fn expect_scale(&mut self, deployment: &str, replicas: i32) {
        let path = format!("/apis/apps/v1/namespaces/default/deployments/{deployment}/scale");
        let r = self.expect("PATCH", &path).await;
        assert_eq!(r.body, json!({"spec": {"replicas": replicas}}));
        let scale = json!({"apiVersion": "autoscaling/v1", "kind": "Scale", "spec": {"replicas": replicas}});
        r.respond(StatusCode::OK, &scale);
    }

    /// The status the reconcile writes (server-side apply).
    pub async fn expect_status(&mut self) -> Value {
        let r = self
            .expect(
                "PATCH",
                "/apis/orderflow.dev/v1alpha1/namespaces/default/orderpipelines/shop/status",
            )
            .await;
        r.assert_apply();
        let status = r.body["status"].clone();
        r.echo_pipeline();
        status
    }

    /// No request follows.
    pub async fn expect_nothing_more(mut self) {
        if let Ok(Some((request, _))) =
            tokio::time::timeout(Duration::from_millis(200), self.handle.next_request()).await
        {
            panic!("unexpected {} {}", request.method(), request.uri());
        }
    }
}

fn ingress_path_of(ns: &str) -> String {
    format!("/apis/networking.k8s.io/v1{ns}/ingresses/shop-ingress")
}

fn route_path_of(ns: &str) -> String {
    format!("/apis/gateway.networking.k8s.io/v1{ns}/httproutes/shop-route")
}

/// A context over the mock API server and the fake broker.
pub fn context(brokers: Arc<FakeBrokers>) -> (Arc<Context>, ApiServer) {
    let (client, api) = mock_api(crate::rbac::PIPELINE_RULES, "default");
    let ctx = Context::new(
        client,
        brokers,
        Metrics::default(),
        Some("operator-0".into()),
    );
    (Arc::new(ctx), api)
}

/// The pipeline `default/shop`, all defaults, with `extra` merged into its
/// spec.
pub fn pipeline(extra: Value) -> OrderPipeline {
    let mut spec = json!({
        "image": {"repository": "orderflow", "tag": "0.1.0"},
        "kafka": {"bootstrapServers": "kafka:9092"},
        "mongodb": {"uriSecretRef": {"name": "mongo", "key": "uri"}},
        "redis": {"urlSecretRef": {"name": "redis", "key": "url"}},
    });
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        spec[k] = v;
    }
    serde_json::from_value(json!({
        "apiVersion": "orderflow.dev/v1alpha1",
        "kind": "OrderPipeline",
        "metadata": {"name": "shop", "namespace": "default", "uid": "uid-shop", "generation": 1, "resourceVersion": "41"},
        "spec": spec,
    }))
    .unwrap()
}

/// The condition of this type in a written status.
pub fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
}

fn merge(into: &mut Value, patch: &Value) {
    match (into, patch) {
        (Value::Object(into), Value::Object(patch)) => {
            for (k, v) in patch {
                merge(into.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (into, patch) => *into = patch.clone(),
    }
}
