//! The `operator` binary as a test runs it: a local process with a
//! kubeconfig of the test's choosing (a fake API, or the real control plane
//! under a ServiceAccount's token), short leader-election timings, its
//! metrics on a free port. Killed when dropped.

#![allow(dead_code)] // each test binary uses a part of it

use std::path::Path;
use std::process::{Child, Command, Stdio};

use orderflow_testkit as kit;
use orderflow_testkit::cluster::Kube;

pub struct Operator {
    pub child: Child,
    pub port: u16,
}

impl Operator {
    /// Still running?
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A process a test started, killed when dropped: also when an assertion
/// fails first, so a failed test leaves nothing running.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the operator as replica `name` with `kubeconfig`; `env` adds to
/// or overrides the defaults (Lease in namespace `ops`, lease 3 s, renew
/// deadline 2 s, retry 500 ms). Its output goes to `log` when given.
pub fn spawn_operator(
    kubeconfig: &Path,
    name: &str,
    env: &[(&str, &str)],
    log: Option<&Path>,
) -> Operator {
    let port = kit::free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_operator"));
    cmd.env("KUBECONFIG", kubeconfig)
        .env("POD_NAME", name)
        .env("POD_NAMESPACE", "ops")
        .env("OPERATOR_PORT", port.to_string())
        .env("BIND_ADDR", "127.0.0.1")
        .env("LEASE_DURATION", "3s")
        .env("LEASE_RENEW_DEADLINE", "2s")
        .env("LEASE_RETRY_PERIOD", "500ms")
        .env("SHUTDOWN_GRACE", "2s")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
    for (k, v) in env {
        cmd.env(k, v);
    }
    // The logs (JSON, on stdout) and any panic (stderr), in one file.
    match log {
        Some(path) => {
            let file = std::fs::File::create(path).unwrap();
            cmd.stdout(file.try_clone().unwrap()).stderr(file)
        }
        None => cmd.stdout(Stdio::null()).stderr(Stdio::null()),
    };
    let child = cmd.spawn().expect("starting the operator");
    Operator { child, port }
}

/// Whether the replica on `port` leads, from its metrics; `None` while it
/// does not answer.
pub async fn leading(client: &reqwest::Client, port: u16) -> Option<bool> {
    let text = client
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    Some(kit::metric(&text, "orderflow_operator_leader", &[])? == 1.0)
}

/// Applies k8s/crd.yaml (server-side, so repeating it is harmless) and
/// waits until the API server serves OrderPipelines.
pub fn install_crd(kube: &Kube) {
    let crd = concat!(env!("CARGO_MANIFEST_DIR"), "/../../k8s/crd.yaml");
    kube.ok(&["apply", "--server-side", "--force-conflicts", "-f", crd]);
    kube.wait_for(
        std::time::Duration::from_secs(30),
        "the CRD to be Established",
        |k| {
            let crd = k.get(&["crd", "orderpipelines.orderflow.dev"])?;
            crd["status"]["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["type"] == "Established" && c["status"] == "True")
                .then_some(())
        },
    );
}
