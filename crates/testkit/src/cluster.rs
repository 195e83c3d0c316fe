//! The real Kubernetes control plane (`scripts/cluster`): the shared one
//! `scripts/test` starts (etcd, kube-apiserver, controller-manager,
//! scheduler, kwok with fake nodes), and private ones for a test that stops
//! its API server. Tests drive it with the real `kubectl` and `helm`, each in
//! namespaces of its own.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{free_port_run, required, unique, TempDir};

/// A control plane and the admin credentials to it.
pub struct Kube {
    pub kubeconfig: PathBuf,
    kubectl: String,
}

/// The shared control plane scripts/test started.
pub fn cluster() -> Kube {
    Kube {
        kubeconfig: required("ORDERFLOW_TEST_KUBECONFIG").into(),
        kubectl: required("ORDERFLOW_TEST_KUBECTL"),
    }
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/cluster")
}

impl Kube {
    /// The same cluster through other credentials (a ServiceAccount's
    /// kubeconfig), so that RBAC checks what it runs.
    pub fn as_account(&self, kubeconfig: &Path) -> Kube {
        Kube {
            kubeconfig: kubeconfig.to_owned(),
            kubectl: self.kubectl.clone(),
        }
    }

    /// `kubectl ARGS` with this cluster's admin kubeconfig.
    pub fn run(&self, args: &[&str]) -> Output {
        self.run_with(args, None)
    }

    fn run_with(&self, args: &[&str], stdin: Option<&str>) -> Output {
        use std::io::Write;
        let mut child = Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running kubectl");
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        child.wait_with_output().expect("running kubectl")
    }

    /// `kubectl ARGS`, which must succeed; what it printed.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `kubectl apply -f -` of `yaml`: what it printed, or its error.
    pub fn apply(&self, yaml: &str) -> Result<String, String> {
        let out = self.run_with(&["apply", "-f", "-"], Some(yaml));
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// A JSON merge patch of `resource`/`name` in `ns`: Ok, or the API
    /// server's refusal.
    pub fn merge_patch(
        &self,
        ns: &str,
        resource: &str,
        name: &str,
        patch: &str,
    ) -> Result<(), String> {
        let out = self.run(&[
            "-n", ns, "patch", resource, name, "--type", "merge", "-p", patch,
        ]);
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// `kubectl get ARGS -o json`, or `None` when it is not found.
    pub fn get(&self, args: &[&str]) -> Option<Value> {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-o", "json"]);
        let out = self.run(&all);
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("NotFound"), "kubectl {all:?} failed: {err}");
            return None;
        }
        Some(serde_json::from_slice(&out.stdout).unwrap())
    }

    /// A new namespace with a unique name.
    pub fn namespace(&self, prefix: &str) -> String {
        let ns = unique(prefix);
        self.ok(&["create", "namespace", &ns]);
        ns
    }

    /// A kubeconfig in `dir` that authenticates as ServiceAccount `sa` of
    /// `ns` with a token the API server issued (TokenRequest), so that RBAC
    /// checks every request made with it.
    pub fn service_account_kubeconfig(&self, ns: &str, sa: &str, dir: &Path) -> PathBuf {
        let token = self.ok(&["-n", ns, "create", "token", sa, "--duration", "2h"]);
        let server = self.ok(&[
            "config",
            "view",
            "--minify",
            "-o",
            "jsonpath={.clusters[0].cluster.server}",
        ]);
        let ca = self.ok(&[
            "config",
            "view",
            "--minify",
            "-o",
            "jsonpath={.clusters[0].cluster.certificate-authority}",
        ]);
        let path = dir.join(format!("{ns}-{sa}.kubeconfig"));
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: \"{server}\", certificate-authority: \"{ca}\"}}\n\
                 users:\n- name: {sa}\n  user: {{token: \"{}\"}}\ncontexts:\n- name: c\n  context: {{cluster: c, user: {sa}, namespace: {ns}}}\ncurrent-context: c\n",
                token.trim()
            ),
        )
        .unwrap();
        path
    }

    /// Until `check` returns `Some`, for at most `timeout`.
    pub fn wait_for<T>(
        &self,
        timeout: Duration,
        what: &str,
        mut check: impl FnMut(&Kube) -> Option<T>,
    ) -> T {
        let started = Instant::now();
        loop {
            if let Some(v) = check(self) {
                return v;
            }
            assert!(started.elapsed() < timeout, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

/// A private control plane of one test (etcd and kube-apiserver, plus the
/// controllers and kwok unless `api_only`), in a temporary directory;
/// stopped when dropped.
pub struct ControlPlane {
    pub kube: Kube,
    /// Its certificates, logs, pids and kubeconfig.
    pub dir: TempDir,
    port: u16,
    api_only: bool,
}

pub fn spawn_control_plane(api_only: bool) -> ControlPlane {
    let dir = TempDir::new("cluster");
    let cp = ControlPlane {
        kube: Kube {
            kubeconfig: dir.0.join("kubeconfig"),
            kubectl: required("ORDERFLOW_TEST_KUBECTL"),
        },
        // scripts/cluster: etcd listens on the two ports after the API's.
        port: free_port_run(3),
        api_only,
        dir,
    };
    cp.up();
    cp
}

impl ControlPlane {
    fn script(&self, command: &str) -> Output {
        Command::new(script())
            .arg(command)
            .env("ORDERFLOW_CLUSTER_DIR", &self.dir.0)
            .env("ORDERFLOW_CLUSTER_PORT", self.port.to_string())
            .env(
                "ORDERFLOW_CLUSTER_API_ONLY",
                if self.api_only { "1" } else { "0" },
            )
            .output()
            .expect("running scripts/cluster")
    }

    /// `scripts/cluster up`: starts whatever of it is not running.
    pub fn up(&self) {
        let out = self.script("up");
        assert!(
            out.status.success(),
            "scripts/cluster up failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// SIGKILLs one component (`apiserver`, `etcd`, …).
    pub fn kill(&self, component: &str) {
        let pid = std::fs::read_to_string(self.dir.0.join(format!("{component}.pid")))
            .expect("the component's pid file");
        let status = Command::new("kill")
            .args(["-9", pid.trim()])
            .status()
            .unwrap();
        assert!(status.success(), "killing {component}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.script("down");
    }
}
