//! orderflow's own services as local processes of one test, on its topics
//! and its database, against the shared servers: the built binaries run
//! exactly as `scripts/up` runs them. Every process is killed when the
//! stack is dropped, on failure too.

use std::process::{Child, Command, Stdio};

use orderflow_platform::config::TopicArgs;
use orderflow_platform::topology::TOPICS;

use crate::{binary, free_port, kafka, mongo_url, redis_url, TempDir};

pub struct Stack {
    common: Vec<(String, String)>,
    logs: TempDir,
    processes: Vec<(String, Child)>,
    /// Each stage's consumer group, this stack's own.
    groups: Vec<(&'static str, String)>,
    /// The HTTP port each stage was last started with.
    stage_ports: Vec<(String, u16)>,
}

impl Stack {
    /// The producer alone, ready, on topics and a database of its own
    /// named after `name`: what a client's test posts to. Its stack, its
    /// topics and its URL.
    pub async fn with_producer(name: &str) -> (Stack, TopicArgs, String) {
        let topics = crate::topics(name);
        crate::create_topics(&kafka(), &topics).await;
        let mut stack = Stack::new(&topics, &crate::unique(name), &[]);
        let url = stack.spawn_producer();
        crate::ready(&url).await;
        (stack, topics, url)
    }

    /// A stack on `topics` and database `db`; `extra` is added to every
    /// process's environment.
    pub fn new(topics: &TopicArgs, db: &str, extra: &[(&str, &str)]) -> Stack {
        let mut common: Vec<(String, String)> = vec![
            ("KAFKA_BROKERS".into(), kafka()),
            ("MONGO_URL".into(), mongo_url(db)),
            ("REDIS_URL".into(), redis_url()),
            ("RECENT_ORDERS_KEY".into(), format!("{db}:recent")),
            ("BIND_ADDR".into(), "127.0.0.1".into()),
            ("NOTIFY_CHANNELS".into(), "log".into()),
            ("PAYMENT_LATENCY".into(), "1ms".into()),
            ("RUST_LOG".into(), "info".into()),
        ];
        common.extend(
            TOPICS
                .iter()
                .map(|t| (t.env.to_owned(), topics.name(t.role).to_owned())),
        );
        common.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Stack {
            common,
            logs: TempDir::new("stack-logs"),
            processes: Vec::new(),
            groups: orderflow_platform::topology::STAGES
                .iter()
                .map(|s| (s.name, crate::unique(s.name)))
                .collect(),
            stage_ports: Vec::new(),
        }
    }

    /// Starts `binary` as `service` with `extra` environment; its output
    /// goes to a log file ([`Stack::log`]).
    pub fn spawn(&mut self, binary_name: &str, service: &str, extra: &[(&str, String)]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.0.join(format!("{service}.log")))
            .unwrap();
        let mut cmd = Command::new(binary(binary_name));
        // No exporter unless the stack's environment names one.
        cmd.env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_PROTOCOL")
            .envs(self.common.iter().map(|(k, v)| (k, v)))
            .env("OTEL_SERVICE_NAME", service)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log));
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {service}: {e}"));
        self.processes.push((service.to_owned(), child));
    }

    /// The producer service on a free port; its base URL.
    pub fn spawn_producer(&mut self) -> String {
        self.spawn_producer_as("producer", &[])
    }

    /// The producer binary as `service`, on a free port, with `extra`
    /// environment; its base URL.
    pub fn spawn_producer_as(&mut self, service: &str, extra: &[(&str, String)]) -> String {
        let port = free_port();
        let mut env = vec![("API_PORT", port.to_string())];
        env.extend_from_slice(extra);
        self.spawn("producer", service, &env);
        format!("http://127.0.0.1:{port}")
    }

    /// The four stages, each in a consumer group of this test's own.
    pub fn spawn_stages(&mut self) {
        for stage in orderflow_platform::topology::STAGES.iter().map(|s| s.name) {
            self.spawn_stage(stage, &[]);
        }
    }

    /// One stage in this stack's group for it (the same on a restart), on
    /// a free port ([`Stack::stage_url`]).
    pub fn spawn_stage(&mut self, stage: &str, extra: &[(&str, String)]) {
        let port = free_port();
        let mut env = vec![
            ("STAGE", stage.to_owned()),
            ("CONSUMER_PORT", port.to_string()),
            ("CONSUMER_GROUP", self.group(stage).to_owned()),
        ];
        env.extend(extra.iter().cloned());
        self.spawn("consumer", stage, &env);
        self.stage_ports.retain(|(s, _)| s != stage);
        self.stage_ports.push((stage.to_owned(), port));
    }

    /// The base URL of `stage`'s HTTP server (health, `/metrics`).
    pub fn stage_url(&self, stage: &str) -> String {
        let port = self
            .stage_ports
            .iter()
            .find(|(s, _)| s == stage)
            .unwrap_or_else(|| panic!("{stage} was not started"))
            .1;
        format!("http://127.0.0.1:{port}")
    }

    /// The process id of `service`.
    pub fn pid(&self, service: &str) -> u32 {
        self.processes
            .iter()
            .find(|(s, _)| s == service)
            .unwrap_or_else(|| panic!("{service} does not run"))
            .1
            .id()
    }

    /// The stage's consumer group in this stack.
    pub fn group(&self, stage: &str) -> &str {
        &self
            .groups
            .iter()
            .find(|(s, _)| *s == stage)
            .unwrap_or_else(|| panic!("{stage} is not a stage"))
            .1
    }

    /// `STAGE_GROUPS` for analytics: this stack's groups.
    pub fn stage_groups(&self) -> String {
        self.groups
            .iter()
            .map(|(s, g)| format!("{s}={g}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// SIGTERM to `service` and its exit; it can be spawned again (its log
    /// carries on).
    pub async fn stop(&mut self, service: &str) {
        let at = self
            .processes
            .iter()
            .position(|(s, _)| s == service)
            .unwrap_or_else(|| panic!("{service} does not run"));
        let (_, mut child) = self.processes.remove(at);
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        for _ in 0..300 {
            if child.try_wait().unwrap().is_some() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("{service} did not stop within 15 s of SIGTERM");
    }

    /// SIGTERM to every process, then a clean exit from each (which
    /// includes their telemetry's flush) within 15 s.
    pub async fn terminate(&mut self) {
        for (service, child) in &mut self.processes {
            let pid = child.id().to_string();
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            let mut exited = None;
            for _ in 0..300 {
                exited = child.try_wait().unwrap();
                if exited.is_some() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            let status =
                exited.unwrap_or_else(|| panic!("{service} did not stop within 15 s of SIGTERM"));
            assert!(status.success(), "{service} exited with {status}");
        }
    }

    /// The last lines each service printed, newest first, for a failure's
    /// diagnosis.
    pub fn print_log_tails(&self) {
        for (service, _) in &self.processes {
            let log = self.log(service);
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            eprintln!(
                "--- {service} (last lines, newest first):\n{}",
                tail.join("\n")
            );
        }
    }

    /// What `service` printed so far.
    pub fn log(&self, service: &str) -> String {
        std::fs::read_to_string(self.logs.0.join(format!("{service}.log"))).unwrap_or_default()
    }

    /// Every process still runs (else: which one exited, and its log).
    pub fn assert_running(&mut self) {
        for (service, child) in &mut self.processes {
            if let Some(status) = child.try_wait().unwrap() {
                let log = std::fs::read_to_string(self.logs.0.join(format!("{service}.log")))
                    .unwrap_or_default();
                panic!("{service} exited ({status}): {log}");
            }
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        for (service, child) in &mut self.processes {
            // Whether each process still ran when the test failed, and as
            // which pid (a CI run once found analytics' log empty while
            // something answered on its port).
            if panicking {
                let state = match child.try_wait() {
                    Ok(Some(status)) => format!("had exited ({status})"),
                    Ok(None) => "was running".to_owned(),
                    Err(e) => format!("unknown ({e})"),
                };
                eprintln!("--- {service} (pid {}) {state}", child.id());
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // A failing test's stack: what each service said last, before the
        // logs' directory goes (a flake seen once is otherwise unexplained).
        if panicking {
            let mut logs: Vec<_> = std::fs::read_dir(&self.logs.0)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .collect();
            logs.sort();
            for path in logs {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = &lines[lines.len().saturating_sub(LOG_TAIL)..];
                eprintln!(
                    "--- {} (last {} of {} lines)\n{}",
                    path.display(),
                    tail.len(),
                    lines.len(),
                    tail.join("\n")
                );
            }
        }
    }
}

/// Lines of each service's log a failing test prints.
const LOG_TAIL: usize = 40;
