//! The routing the operator writes, for real: Traefik (a real Ingress and
//! Gateway API controller) runs as a local process against the real control
//! plane and serves `orders.example.com` on port 443 with the certificate
//! from the pipeline's Secret. The pipeline's Services are pointed at
//! orderflow's services running as local processes: the pipeline asks for 0
//! replicas of them, so the EndpointSlices the test adds are their only
//! endpoints. Requests are the README's curl lines, run by the real curl.
//! `scripts/test real_ingress` and `scripts/test real_gateway` run them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use orderflow_platform::config::TopicArgs;
use orderflow_platform::topology::TOPICS;
use orderflow_testkit as kit;
use orderflow_testkit::cluster::{self, Kube};
use orderflow_testkit::stack::Stack;
use serde_json::{json, Value};

mod support;
use support::{install_crd, spawn_operator, Killed};

const README: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md");
const HOST: &str = "orders.example.com";
const TOKEN: &str = "change-me";

/// Both tests listen on port 443: one at a time.
static PORT_443: Mutex<()> = Mutex::new(());

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("running openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a certificate for the host, signed by it: (ca.crt, tls.crt,
/// tls.key).
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=orderflow-test-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &format!("/CN={HOST}"),
            "-keyout",
            "tls.key",
            "-out",
            "tls.csr",
        ],
    );
    std::fs::write(
        dir.join("tls.ext"),
        format!("subjectAltName=DNS:{HOST}\nextendedKeyUsage=serverAuth\n"),
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "tls.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "tls.ext",
            "-out",
            "tls.crt",
        ],
    );
    (dir.join("ca.crt"), dir.join("tls.crt"), dir.join("tls.key"))
}

/// One pipeline with orderflow running locally behind it, and Traefik.
struct Routed {
    kube: Kube,
    ns: String,
    dir: kit::TempDir,
    ca: PathBuf,
    stack: Stack,
    _operator: support::Operator,
    _traefik: Option<Killed>,
}

#[derive(Clone, Copy, PartialEq)]
enum Exposure {
    Ingress,
    Gateway,
}

fn pipeline(ns: &str, topics: &TopicArgs, exposure: Exposure) -> Value {
    let topic_spec: serde_json::Map<String, Value> = TOPICS
        .iter()
        .map(|t| {
            (
                t.key.to_owned(),
                json!({"name": topics.name(t.role), "partitions": t.partitions.min(3)}),
            )
        })
        .collect();
    json!({
        "apiVersion": "orderflow.dev/v1alpha1", "kind": "OrderPipeline",
        "metadata": {"name": "shop", "namespace": ns},
        "spec": {
            "image": {"repository": "orderflow", "tag": "0.1.0"},
            "kafka": {"bootstrapServers": kit::kafka()},
            "mongodb": {"uriSecretRef": {"name": "mongo", "key": "uri"}},
            "redis": {"urlSecretRef": {"name": "redis", "key": "url"}},
            "topics": topic_spec,
            // The services run as local processes, not as (fake) pods.
            "services": {"producer": {"replicas": 0}, "ordersApi": {"replicas": 0}, "analytics": {"replicas": 0}},
            "ingress": {"enabled": exposure == Exposure::Ingress, "host": HOST, "className": "traefik", "tlsSecretName": "orders-tls"},
            "gateway": {"enabled": exposure == Exposure::Gateway, "parentRef": {"name": "public"}, "hostnames": [HOST]},
        },
    })
}

/// This machine's first non-loopback IPv4 address: EndpointSlices refuse
/// loopback ones, so the local services listen here.
fn host_ip() -> String {
    let out = Command::new("hostname")
        .arg("-I")
        .output()
        .expect("hostname -I");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find(|a| {
            a.parse::<std::net::Ipv4Addr>()
                .is_ok_and(|ip| !ip.is_loopback() && !ip.is_link_local())
        })
        .unwrap_or_else(|| panic!("no non-loopback IPv4 address on this machine (hostname -I)"))
        .to_owned()
}

fn endpoint_slice(ns: &str, service: &str, ip: &str, port: u16) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{service}-local"), "namespace": ns, "labels": {
            "kubernetes.io/service-name": service,
            "endpointslice.kubernetes.io/managed-by": "orderflow-test",
        }},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip], "conditions": {"ready": true, "serving": true}}],
    })
}

/// Whether `url` answers with a 2xx.
fn answers(url: &str) -> bool {
    Command::new("curl")
        .args(["-fsS", "-o", "/dev/null", url])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Routed {
    fn start(exposure: Exposure) -> Routed {
        let kube = cluster::cluster();
        install_crd(&kube);
        let ns = kube.namespace("routed");
        let dir = kit::TempDir::new("routed");
        let (ca, crt, key) = certificates(&dir.0);
        kube.ok(&[
            "-n",
            &ns,
            "create",
            "secret",
            "tls",
            "orders-tls",
            "--cert",
            crt.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ]);
        for (name, key, value) in [
            ("mongo", "uri", "mongodb://unused"),
            ("redis", "url", "redis://unused"),
        ] {
            kube.ok(&[
                "-n",
                &ns,
                "create",
                "secret",
                "generic",
                name,
                "--from-literal",
                &format!("{key}={value}"),
            ]);
        }

        // orderflow itself, local, on this test's topics and database.
        let topics = kit::topics("routed");
        let db = kit::unique("routed");
        let ip = host_ip();
        let mut stack = Stack::new(&topics, &db, &[("BIND_ADDR", ip.as_str())]);
        let ports = [kit::free_port(), kit::free_port(), kit::free_port()];
        stack.spawn(
            "producer",
            "producer",
            &[("API_PORT", ports[0].to_string())],
        );
        let mut api_env = vec![
            ("ORDERS_API_PORT", ports[1].to_string()),
            ("API_TOKENS", TOKEN.to_owned()),
        ];
        if exposure == Exposure::Ingress {
            // A plain Ingress cannot route by method: POST /orders reaches
            // the producer through orders-api (ADR 0006). With the Gateway
            // route orders-api gets no producer, so an accepted order
            // proves the route sent it to the producer.
            api_env.push(("PRODUCER_URL", format!("http://{ip}:{}", ports[0])));
        }
        stack.spawn("orders-api", "orders-api", &api_env);
        stack.spawn(
            "analytics",
            "analytics",
            &[("ANALYTICS_PORT", ports[2].to_string())],
        );
        stack.spawn_stages();

        // The operator makes the topics and the objects; the test points
        // the Services at the local processes.
        let kubeconfig = kube.kubeconfig.clone();
        let operator = spawn_operator(
            &kubeconfig,
            "op-0",
            &[
                ("WATCH_NAMESPACES", ns.as_str()),
                ("POD_NAMESPACE", ns.as_str()),
            ],
            Some(&dir.0.join("operator.log")),
        );
        if exposure == Exposure::Gateway {
            ensure_gateway_api(&kube);
            kube.apply(&gateway(&ns).to_string()).expect("the Gateway");
        } else {
            kube.apply(
                &json!({
                    "apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
                    "metadata": {"name": "traefik"},
                    "spec": {"controller": "traefik.io/ingress-controller"},
                })
                .to_string(),
            )
            .expect("the IngressClass");
        }
        kube.apply(&pipeline(&ns, &topics, exposure).to_string())
            .expect("the pipeline");
        kube.wait_for(
            Duration::from_secs(60),
            "the topics and the Services",
            |k| {
                let p = k.get(&["-n", &ns, "opl", "shop"])?;
                let topics_ready = p["status"]["conditions"]
                    .as_array()?
                    .iter()
                    .any(|c| c["type"] == "TopicsReady" && c["status"] == "True");
                let services = k.get(&["-n", &ns, "services"])?["items"].as_array()?.len();
                (topics_ready && services == 3).then_some(())
            },
        );
        for (service, port) in [
            ("shop-producer", ports[0]),
            ("shop-orders-api", ports[1]),
            ("shop-analytics", ports[2]),
        ] {
            kube.apply(&endpoint_slice(&ns, service, &ip, port).to_string())
                .expect("an EndpointSlice");
        }
        for port in ports {
            let url = format!("http://{ip}:{port}/readyz");
            kube.wait_for(
                Duration::from_secs(60),
                &format!("a service at {url}"),
                |_| answers(&url).then_some(()),
            );
        }
        let mut routed = Routed {
            kube,
            ns,
            dir,
            ca,
            stack,
            _operator: operator,
            _traefik: None,
        };
        routed._traefik = Some(routed.spawn_traefik(exposure));
        routed
    }

    /// Traefik with both Kubernetes providers, as a ServiceAccount of this
    /// namespace bound to cluster-admin, on port 443.
    fn spawn_traefik(&self, exposure: Exposure) -> Killed {
        let kube = &self.kube;
        kube.ok(&["-n", &self.ns, "create", "serviceaccount", "traefik"]);
        kube.ok(&[
            "create",
            "clusterrolebinding",
            &format!("traefik-{}", self.ns),
            "--clusterrole",
            "cluster-admin",
            "--serviceaccount",
            &format!("{}:traefik", self.ns),
        ]);
        let token = kube.ok(&[
            "-n",
            &self.ns,
            "create",
            "token",
            "traefik",
            "--duration",
            "2h",
        ]);
        let server = kube.ok(&[
            "config",
            "view",
            "--minify",
            "-o",
            "jsonpath={.clusters[0].cluster.server}",
        ]);
        let ca = kube.ok(&[
            "config",
            "view",
            "--minify",
            "-o",
            "jsonpath={.clusters[0].cluster.certificate-authority}",
        ]);
        let token_file = self.dir.0.join("traefik.token");
        std::fs::write(&token_file, token.trim()).unwrap();
        let mut args = vec![
            "--entryPoints.websecure.address=127.0.0.1:443".to_owned(),
            // TLS on every router of the entrypoint (an Ingress's spec.tls
            // only gives Traefik the certificate).
            "--entryPoints.websecure.http.tls=true".to_owned(),
            "--log.level=INFO".to_owned(),
            // No network here, and none wanted from a test.
            "--global.checkNewVersion=false".to_owned(),
            "--global.sendAnonymousUsage=false".to_owned(),
        ];
        // Only the provider under test: the Gateway one stalls where its
        // CRDs are not installed.
        let provider = match exposure {
            Exposure::Ingress => "kubernetesingress",
            Exposure::Gateway => "kubernetesgateway",
        };
        {
            args.extend([
                format!("--providers.{provider}=true"),
                format!("--providers.{provider}.endpoint={server}"),
                format!("--providers.{provider}.token={}", token_file.display()),
                format!("--providers.{provider}.certAuthFilePath={ca}"),
                format!("--providers.{provider}.namespaces={}", self.ns),
            ]);
        }
        let log = std::fs::File::create(self.dir.0.join("traefik.log")).unwrap();
        let child =
            Command::new(std::env::var("ORDERFLOW_TEST_TRAEFIK").expect("ORDERFLOW_TEST_TRAEFIK"))
                .args(&args)
                .stdout(Stdio::from(log.try_clone().unwrap()))
                .stderr(Stdio::from(log))
                .spawn()
                .expect("starting traefik");
        let traefik = Killed(child);
        // Routed once the dashboard answers through it.
        let started = Instant::now();
        loop {
            let (status, body) = self.curl(&format!("curl https://{HOST}/"));
            if status == 200 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "traefik routed nothing (last answer {status}: {body}): {}",
                std::fs::read_to_string(self.dir.0.join("traefik.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        traefik
    }

    /// Runs one curl command line as the README shows it, resolving the
    /// host to this machine and trusting the test CA: (status, body).
    fn curl(&self, line: &str) -> (u16, String) {
        let body = self.dir.0.join("body");
        let command = format!(
            "{line} -sS -o '{}' -w '%{{http_code}}' --resolve {HOST}:443:127.0.0.1 --cacert '{}'",
            body.display(),
            self.ca.display()
        );
        let out = Command::new("sh")
            .args(["-c", &command])
            .output()
            .expect("running curl");
        let status = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        let mut text = std::fs::read_to_string(&body).unwrap_or_default();
        let _ = std::fs::remove_file(&body);
        if status == 0 {
            // No answer: what curl said instead.
            text = String::from_utf8_lossy(&out.stderr).into_owned();
        }
        (status, text)
    }
}

fn ensure_gateway_api(kube: &Kube) {
    let crds = std::env::var("ORDERFLOW_TEST_GATEWAY_CRDS").expect("ORDERFLOW_TEST_GATEWAY_CRDS");
    kube.ok(&["apply", "--server-side", "--force-conflicts", "-f", &crds]);
    kube.wait_for(Duration::from_secs(30), "the Gateway API CRDs", |k| {
        k.get(&["crd", "httproutes.gateway.networking.k8s.io"])?["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Established" && c["status"] == "True")
            .then_some(())
    });
    kube.apply(
        &json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
            "metadata": {"name": "traefik"},
            "spec": {"controllerName": "traefik.io/gateway-controller"},
        })
        .to_string(),
    )
    .expect("the GatewayClass");
}

/// The Gateway the pipeline's route attaches to: HTTPS on 443 for the host,
/// with the pipeline's certificate.
fn gateway(ns: &str) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "public", "namespace": ns},
        "spec": {
            "gatewayClassName": "traefik",
            "listeners": [{
                "name": "websecure", "protocol": "HTTPS", "port": 443, "hostname": HOST,
                "tls": {"mode": "Terminate", "certificateRefs": [{"kind": "Secret", "name": "orders-tls"}]},
                "allowedRoutes": {"namespaces": {"from": "Same"}},
            }],
        },
    })
}

/// The curl lines of the README's "Deploy to Kubernetes" section, without
/// their comments.
fn readme_curls() -> Vec<String> {
    let readme = std::fs::read_to_string(README).unwrap();
    let section = &readme[readme
        .find("Every endpoint is on the Ingress host")
        .expect("the README's routing section")..];
    let block = &section[section.find("```sh\n").unwrap() + 6..];
    let block = &block[..block.find("```").unwrap()];
    block
        .lines()
        .filter(|l| l.starts_with("curl "))
        .map(|l| match l.find("   #") {
            Some(at) => l[..at].trim_end().to_owned(),
            None => l.to_owned(),
        })
        .collect()
}

/// Every README line through the controller, then the operational endpoints
/// that must not be reachable.
fn every_endpoint_and_no_operational_one(routed: &mut Routed) {
    let lines = readme_curls();
    assert!(lines.len() >= 5, "{lines:?}");
    for line in &lines {
        let (mut status, mut body) = routed.curl(line);
        // The long-poll answers after 5 s with the order as it is; a client
        // that still sees it in flight asks again (the stages' consumer
        // groups may still be forming on a busy machine).
        let mut polls = 1;
        while line.contains("waitFor=final")
            && polls < 6
            && serde_json::from_str::<Value>(&body)
                .is_ok_and(|o| o["status"] == "placed" || o["status"] == "reserved")
        {
            (status, body) = routed.curl(line);
            polls += 1;
        }
        let expected = if line.contains("-X POST") && line.contains("/api/v1/") {
            201 // a compatibility route answers as the replaced system did
        } else if line.contains("-X POST") && line.contains("/orders ") {
            202
        } else {
            200
        };
        assert_eq!(status, expected, "{line}: {body}");
        if line.contains("waitFor=final") {
            let order: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(order["orderId"], "o-1001", "{body}");
            assert_eq!(order["status"], "confirmed", "{body}");
        }
        if line.ends_with(&format!("https://{HOST}/")) || line.ends_with("/pipeline") {
            assert!(body.contains("<html"), "a page: {body}");
        }
    }
    for path in ["/metrics", "/readyz", "/healthz", "/openapi.json", "/docs"] {
        let (status, body) = routed.curl(&format!("curl --path-as-is https://{HOST}{path}"));
        assert_eq!(status, 404, "{path} is public: {body}");
    }
    routed.stack.assert_running();
}

#[test]
fn real_ingress_routes_every_public_endpoint_over_tls_and_no_operational_one() {
    let _one = PORT_443.lock().unwrap_or_else(|e| e.into_inner());
    let mut routed = Routed::start(Exposure::Ingress);
    let ingress = routed
        .kube
        .get(&["-n", &routed.ns, "ingress", "shop-ingress"])
        .unwrap();
    assert_eq!(ingress["spec"]["tls"][0]["secretName"], "orders-tls");
    every_endpoint_and_no_operational_one(&mut routed);
}

#[test]
fn real_gateway_routes_post_orders_to_the_producer_and_switches_with_the_ingress() {
    let _one = PORT_443.lock().unwrap_or_else(|e| e.into_inner());
    let mut routed = Routed::start(Exposure::Gateway);
    let (kube, ns) = (&routed.kube, routed.ns.clone());
    assert!(kube.get(&["-n", &ns, "httproute", "shop-route"]).is_some());
    assert!(kube.get(&["-n", &ns, "ingress", "shop-ingress"]).is_none());
    // orders-api has no producer here: the accepted POST went straight to
    // the producer, matched by method.
    every_endpoint_and_no_operational_one(&mut routed);
    let (status, _) = routed.curl(&format!(
        "curl -X POST https://{HOST}/orders/o-1001 -H 'content-type: application/json' -d '{{}}'"
    ));
    assert!(
        status == 404 || status == 405,
        "only POST /orders itself goes to the producer: {status}"
    );

    // Switching to the Ingress and back removes what is no longer wanted.
    let kube = &routed.kube;
    let switch = |ingress: bool| {
        let patch =
            json!({"spec": {"ingress": {"enabled": ingress}, "gateway": {"enabled": !ingress}}});
        kube.merge_patch(&ns, "opl", "shop", &patch.to_string())
            .unwrap();
        kube.wait_for(Duration::from_secs(30), "the switch", |k| {
            let has_ingress = k.get(&["-n", &ns, "ingress", "shop-ingress"]).is_some();
            let has_route = k.get(&["-n", &ns, "httproute", "shop-route"]).is_some();
            (has_ingress == ingress && has_route != ingress).then_some(())
        });
    };
    switch(true);
    switch(false);
    // The route is back, and served once Traefik has seen it again.
    routed
        .kube
        .wait_for(Duration::from_secs(30), "the route to come back", |_| {
            (routed.curl(&format!("curl https://{HOST}/inventory")).0 == 200).then_some(())
        });
}
