//! The stack the console tests run: producer, the four stages and
//! analytics as the built binaries, on this test's topics, database and
//! consumer groups.
#![allow(dead_code)]

use std::time::Duration;

use orderflow_testkit as kit;
use orderflow_testkit::stack::Stack;
use reqwest::StatusCode;
use serde_json::Value;

pub const TOKEN: &str = "console-token";

pub struct Console {
    pub stack: Stack,
    pub topics: orderflow_platform::config::TopicArgs,
    pub db: String,
    pub env: Vec<(String, String)>,
    pub producer: String,
    pub analytics: String,
    pub http: reqwest::Client,
}

impl Console {
    /// The stack on topics, a database and groups of its own; `extra` is
    /// every process's environment too.
    pub async fn start(name: &str, extra: &[(&str, &str)]) -> Console {
        kit::telemetry();
        let topics = kit::topics(name);
        kit::create_topics(&kit::kafka(), &topics).await;
        let db = kit::unique(name);
        let mut env_all = vec![("API_TOKENS", TOKEN)];
        env_all.extend_from_slice(extra);
        let mut stack = Stack::new(&topics, &db, &env_all);
        stack.spawn_stages();
        let producer = stack.spawn_producer();
        let analytics_port = kit::free_port();
        let env = vec![
            ("ANALYTICS_PORT".to_string(), analytics_port.to_string()),
            ("STAGE_GROUPS".into(), stack.stage_groups()),
            ("ANALYTICS_GROUP".into(), kit::unique("analytics")),
            ("PIPELINE_INTERVAL".into(), "500ms".into()),
        ];
        let as_ref: Vec<(&str, String)> =
            env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        stack.spawn("analytics", "analytics", &as_ref);
        let analytics = format!("http://127.0.0.1:{analytics_port}");
        kit::ready_as(&producer, "producer").await;
        kit::ready_as(&analytics, "analytics").await;
        Console {
            stack,
            topics,
            db,
            env,
            producer,
            analytics,
            http: reqwest::Client::new(),
        }
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.analytics))
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn redrive(&self, token: Option<&str>, body: &str) -> (StatusCode, Value) {
        let mut req = self
            .http
            .post(format!("{}/analytics/dlq/redrive", self.analytics))
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// `analytics dlq …` with the stack's settings; its JSON answer.
    pub fn cli(&self, args: &[&str]) -> Value {
        let mut cmd = std::process::Command::new(kit::binary("analytics"));
        cmd.env("KAFKA_BROKERS", kit::kafka())
            .env("MONGO_URL", kit::mongo_url(&self.db))
            .env("KAFKA_TOPIC_DLQ", &self.topics.dlq)
            .env("RUST_LOG", "warn")
            .env("USER", "ci");
        for t in orderflow_platform::topology::TOPICS.iter() {
            cmd.env(t.env, self.topics.name(t.role));
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let out = cmd.arg("dlq").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "analytics dlq {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("{e}: {}", String::from_utf8_lossy(&out.stdout));
        })
    }

    /// The dead letters listed now (newest first), once there are `n`.
    pub async fn letters(&self, n: usize) -> Vec<Value> {
        kit::eventually(Duration::from_secs(60), "dead letters listed", || async {
            let (status, page) = self.get("/analytics/dlq").await;
            let items = page["items"].as_array()?.clone();
            (status == StatusCode::OK && items.len() >= n).then_some(items)
        })
        .await
    }
}

/// A producer in this process on `topics.orders`, pushing to `recent_key`.
pub async fn producer(
    topics: &orderflow_platform::config::TopicArgs,
    recent_key: &str,
    shutdown: orderflow_platform::shutdown::CancellationToken,
) -> orderflow_producer::Running {
    use clap::Parser;
    let brokers = kit::kafka();
    let redis = kit::redis_url();
    let args = orderflow_producer::Args::try_parse_from([
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
        &redis,
        "--recent-orders-key",
        recent_key,
    ])
    .unwrap();
    orderflow_producer::start(args, shutdown).await.unwrap()
}
