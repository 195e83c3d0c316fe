//! The operator against a real Kubernetes control plane (scripts/cluster:
//! etcd, kube-apiserver, controller-manager, scheduler, kwok's fake nodes)
//! and the real Kafka broker, driven with the real `helm` and `kubectl`.
//! The operator runs as a local process; where it matters, with the chart's
//! ServiceAccount token, so the real RBAC checks every request it makes.
//! Each test has namespaces, a Helm release and topics of its own.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use orderflow_domain::events::{OrderPlaced, PlacedItem};
use orderflow_domain::Money;
use orderflow_operator::rbac::{Rule, NAMESPACE_RULES, PIPELINE_RULES};
use orderflow_testkit as kit;
use orderflow_testkit::cluster::{self, Kube};
use serde_json::{json, Value};

mod support;
use support::{install_crd, leading, spawn_operator, Killed, Operator};

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../charts/orderflow");
const SAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../k8s/sample-orderpipeline.yaml"
);

fn helm(kube: &Kube, args: &[&str]) -> String {
    let out = Command::new(kit::helm())
        .arg("--kubeconfig")
        .arg(&kube.kubeconfig)
        .args(args)
        .output()
        .expect("running helm");
    assert!(
        out.status.success(),
        "helm {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The chart installed in a namespace of its own, serving another one.
struct Release {
    name: String,
    /// The release's (and the operator's) namespace.
    system: String,
    /// The namespace whose pipelines it serves.
    app: String,
    /// The operator's ServiceAccount.
    account: String,
    dir: kit::TempDir,
}

fn install(kube: &Kube) -> Release {
    let system = kube.namespace("of-sys");
    let app = kube.namespace("of-app");
    // The release name holds the chart's, so the objects are named after it
    // (cluster-scoped ones too: unique per test).
    let name = kit::unique("orderflow");
    helm(
        kube,
        &[
            "install",
            &name,
            CHART,
            "--namespace",
            &system,
            "--set",
            &format!("operator.watchNamespaces={{{app}}}"),
            "--wait",
            "--timeout",
            "120s",
        ],
    );
    Release {
        account: format!("{name}-operator"),
        name,
        system,
        app,
        dir: kit::TempDir::new("release"),
    }
}

impl Release {
    /// A kubeconfig with a token of the operator's ServiceAccount.
    fn operator_kubeconfig(&self, kube: &Kube) -> PathBuf {
        kube.service_account_kubeconfig(&self.system, &self.account, &self.dir.0)
    }

    /// The operator binary as the chart's ServiceAccount, serving `app`,
    /// with its Lease where the chart puts it.
    fn spawn_operator(&self, kube: &Kube, identity: &str, env: &[(&str, &str)]) -> Operator {
        let kubeconfig = self.operator_kubeconfig(kube);
        let mut all = vec![
            ("WATCH_NAMESPACES", self.app.as_str()),
            ("POD_NAMESPACE", self.system.as_str()),
            ("LEASE_NAME", self.account.as_str()),
            ("RUST_LOG", "info,kube=warn"),
        ];
        all.extend_from_slice(env);
        let log = self.dir.0.join(format!("{identity}.log"));
        spawn_operator(&kubeconfig, identity, &all, Some(&log))
    }

    fn log(&self, identity: &str) -> String {
        std::fs::read_to_string(self.dir.0.join(format!("{identity}.log"))).unwrap_or_default()
    }

    /// `helm uninstall`; then nothing of the release is left.
    fn uninstall(self, kube: &Kube) {
        helm(
            kube,
            &[
                "uninstall",
                &self.name,
                "--namespace",
                &self.system,
                "--wait",
            ],
        );
        let label = format!("app.kubernetes.io/instance={}", self.name);
        for (ns, kinds) in [
            (
                self.system.as_str(),
                "deployments,pods,services,serviceaccounts,roles,rolebindings,networkpolicies",
            ),
            (self.app.as_str(), "rolebindings"),
        ] {
            let left = kube.wait_for(
                Duration::from_secs(60),
                "the release's objects to go",
                |k| {
                    let items = k.get(&["-n", ns, kinds, "-l", &label]).unwrap();
                    let items = items["items"].as_array().unwrap().clone();
                    items.is_empty().then_some(items)
                },
            );
            assert!(left.is_empty());
        }
        let cluster_wide = kube
            .get(&["clusterroles,clusterrolebindings", "-l", &label])
            .unwrap();
        assert_eq!(
            cluster_wide["items"],
            json!([]),
            "cluster-scoped objects left"
        );
        for ns in [&self.system, &self.app] {
            kube.ok(&["delete", "namespace", ns, "--wait=false"]);
        }
    }
}

/// (resource.group, verbs) of `kubectl auth can-i --list` in `ns`, as
/// `account` sees them (resource rules only).
fn can_i_list(account: &Kube, ns: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut rules: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in account
        .ok(&["auth", "can-i", "--list", "-n", ns])
        .lines()
        .skip(1)
    {
        // Non-resource URLs are indented (no resource).
        if line.starts_with(' ') {
            continue;
        }
        let resource = line.split_whitespace().next().unwrap().to_owned();
        let verbs = &line[line.rfind('[').unwrap() + 1..line.rfind(']').unwrap()];
        rules
            .entry(resource)
            .or_default()
            .extend(verbs.split_whitespace().map(str::to_owned));
    }
    rules
}

/// rbac.rs's rules in can-i's notation (`deployments.apps`, `configmaps`).
fn expected(rules: &[Rule]) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for rule in rules {
        for resource in rule.resources {
            let (base, sub) = match resource.split_once('/') {
                Some((b, s)) => (b, format!("/{s}")),
                None => (*resource, String::new()),
            };
            let name = if rule.group.is_empty() {
                format!("{base}{sub}")
            } else {
                format!("{base}.{}{sub}", rule.group)
            };
            out.entry(name)
                .or_default()
                .extend(rule.verbs.iter().map(|v| v.to_string()));
        }
    }
    out
}

/// What `account` may do in `ns` beyond what every authenticated account
/// may (`baseline`, a ServiceAccount without bindings).
fn granted(account: &Kube, baseline: &Kube, ns: &str) -> BTreeMap<String, BTreeSet<String>> {
    let base = can_i_list(baseline, ns);
    can_i_list(account, ns)
        .into_iter()
        .filter_map(|(resource, verbs)| {
            let extra: BTreeSet<String> = match base.get(&resource) {
                Some(b) => verbs.difference(b).cloned().collect(),
                None => verbs,
            };
            (!extra.is_empty()).then_some((resource, extra))
        })
        .collect()
}

/// The Secrets the sample pipeline names, in `ns`.
fn sample_secrets(kube: &Kube, ns: &str) {
    for args in [
        vec![
            "create",
            "secret",
            "generic",
            "mongo",
            "--from-literal",
            "uri=mongodb://127.0.0.1:1/orderflow",
        ],
        vec![
            "create",
            "secret",
            "generic",
            "redis",
            "--from-literal",
            "url=redis://127.0.0.1:1",
        ],
        vec![
            "create",
            "secret",
            "generic",
            "orderflow-env",
            "--from-literal",
            "API_TOKENS=test-token",
        ],
        vec![
            "create",
            "secret",
            "generic",
            "orders-tls",
            "--type",
            "kubernetes.io/tls",
            "--from-literal",
            "tls.crt=certificate",
            "--from-literal",
            "tls.key=key",
        ],
    ] {
        let mut all = vec!["-n", ns];
        all.extend(args);
        kube.ok(&all);
    }
}

fn pipeline(kube: &Kube, ns: &str, name: &str) -> Option<Value> {
    kube.get(&["-n", ns, "orderpipeline", name])
}

fn condition<'a>(pipeline: &'a Value, kind: &str) -> &'a Value {
    pipeline["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == kind))
        .unwrap_or(&Value::Null)
}

/// The pipeline's Events: (reason, note).
fn events(kube: &Kube, ns: &str, name: &str) -> Vec<(String, String)> {
    let list = kube
        .get(&[
            "-n",
            ns,
            "events.v1.events.k8s.io",
            "--field-selector",
            &format!("regarding.name={name},regarding.kind=OrderPipeline"),
        ])
        .unwrap();
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["reason"].as_str().unwrap_or_default().to_owned(),
                e["note"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// `kubectl delete` of the pipeline, waiting until it is gone (its
/// finalizer done).
fn delete_pipeline(kube: &Kube, ns: &str) {
    kube.ok(&[
        "-n",
        ns,
        "delete",
        "opl",
        "shop",
        "--wait=true",
        "--timeout=60s",
    ]);
}

fn topic_exists(brokers: &str, topic: &str) -> bool {
    kit::kafka_tool(&[
        "org.apache.kafka.tools.TopicCommand",
        "--bootstrap-server",
        brokers,
        "--list",
    ])
    .lines()
    .any(|l| l.trim() == topic)
}

#[test]
fn helm_install_runs_the_operator_under_kwok_and_uninstall_leaves_nothing() {
    let kube = cluster::cluster();
    let release = install(&kube);
    let crd = kube.get(&["crd", "orderpipelines.orderflow.dev"]).unwrap();
    assert!(
        crd["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "Established" && c["status"] == "True"),
        "the CRD is Established: {}",
        crd["status"]
    );
    let deployment = kube
        .get(&["-n", &release.system, "deployment", &release.account])
        .unwrap();
    assert_eq!(
        deployment["status"]["readyReplicas"], 2,
        "{}",
        deployment["status"]
    );
    let pods = kube
        .get(&[
            "-n",
            &release.system,
            "pods",
            "-l",
            &format!("app.kubernetes.io/instance={}", release.name),
        ])
        .unwrap();
    let pods = pods["items"].as_array().unwrap();
    assert_eq!(pods.len(), 2);
    for pod in pods {
        assert_eq!(pod["spec"]["serviceAccountName"], release.account.as_str());
        assert!(pod["spec"]["nodeName"]
            .as_str()
            .unwrap()
            .starts_with("kwok-node-"));
        assert!(pod["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True"));
    }
    for (kind, ns) in [
        ("serviceaccount", Some(&release.system)),
        ("role", Some(&release.system)),
        ("rolebinding", Some(&release.system)),
        ("clusterrole", None),
    ] {
        let mut args = vec![kind, release.account.as_str()];
        if let Some(ns) = ns {
            args.extend(["-n", ns.as_str()]);
        }
        assert!(kube.get(&args).is_some(), "{kind} {}", release.account);
    }
    let pipelines_binding = format!("{}-pipelines", release.account);
    assert!(kube
        .get(&["-n", &release.app, "rolebinding", &pipelines_binding])
        .is_some());
    assert!(
        kube.get(&["clusterrolebinding", &release.account])
            .is_none(),
        "serving one namespace binds nothing cluster-wide"
    );
    release.uninstall(&kube);
    // Helm keeps CRDs of crds/ on uninstall (so no pipeline is lost); the
    // CRD is the one thing left, by design.
    assert!(kube.get(&["crd", "orderpipelines.orderflow.dev"]).is_some());
}

#[test]
fn the_service_account_is_granted_exactly_the_rules_of_rbac_rs() {
    let kube = cluster::cluster();
    let release = install(&kube);
    let operator = kube.as_account(&release.operator_kubeconfig(&kube));
    kube.ok(&["-n", &release.app, "create", "serviceaccount", "nobody"]);
    let baseline =
        kube.as_account(&kube.service_account_kubeconfig(&release.app, "nobody", &release.dir.0));
    assert_eq!(
        granted(&operator, &baseline, &release.app),
        expected(PIPELINE_RULES),
        "in the served namespace"
    );
    assert_eq!(
        granted(&operator, &baseline, &release.system),
        expected(NAMESPACE_RULES),
        "in its own namespace: the leader Lease only"
    );
    let elsewhere = kube.namespace("of-other");
    assert_eq!(
        granted(&operator, &baseline, &elsewhere),
        BTreeMap::new(),
        "nothing in a namespace it does not serve"
    );
    for (ns, allowed) in [
        (&release.app, "yes"),
        (&elsewhere, "no"),
        (&"default".to_owned(), "no"),
    ] {
        let out = operator.run(&["auth", "can-i", "get", "secrets", "-n", ns]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            allowed,
            "secrets in {ns}"
        );
    }
    kube.ok(&["delete", "namespace", &elsewhere, "--wait=false"]);
    release.uninstall(&kube);
}

#[test]
fn the_sample_pipeline_reconciles_under_the_charts_service_account() {
    let kube = cluster::cluster();
    let brokers = kit::kafka();
    let release = install(&kube);
    let app = release.app.clone();
    let mut operator = release.spawn_operator(&kube, "op-0", &[]);
    sample_secrets(&kube, &app);
    let sample = std::fs::read_to_string(SAMPLE)
        .unwrap()
        .replace("namespace: orderflow\n", &format!("namespace: {app}\n"))
        .replace("kafka:9092", &brokers);
    kube.apply(&sample).expect("the sample is accepted");

    // kubectl get opl: READY True, the lag and the consumer replicas, once
    // kwok has made the pods Ready.
    let row = kube.wait_for(Duration::from_secs(90), "the pipeline to be Ready", |k| {
        let out = k.ok(&["-n", &app, "get", "opl", "shop"]);
        let row: Vec<String> = out
            .lines()
            .nth(1)?
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        (row.get(1).map(String::as_str) == Some("True"))
            .then_some((out.lines().next().unwrap().to_owned(), row))
    });
    let (header, row) = row;
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>(),
        ["NAME", "READY", "LAG", "REPLICAS", "AGE"]
    );
    assert_eq!(row[2], "0", "no lag");
    assert_eq!(row[3], "4", "one replica per stage");

    // Topics in the real Kafka, as specified.
    for (topic, partitions, config) in [
        ("orders", 6, Some(("retention.ms", "604800000"))),
        ("orders.validated", 6, None),
        ("inventory.events", 6, None),
        ("payment.events", 6, None),
        ("notifications", 3, None),
        ("orders.dlq", 1, Some(("retention.ms", "2592000000"))),
    ] {
        let (count, overrides) = kit::kafka_topic_describe(&brokers, topic);
        assert_eq!(count, partitions, "{topic}");
        if let Some((k, v)) = config {
            assert_eq!(
                overrides.get(k).map(String::as_str),
                Some(v),
                "{topic}: {overrides:?}"
            );
        }
    }

    // Owned objects, each with the pipeline as its controller.
    let owned = kube
        .get(&[
            "-n",
            &app,
            "configmaps,deployments,services,ingresses",
            "-l",
            "app.kubernetes.io/instance=shop",
        ])
        .unwrap();
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    let uid = pipeline(&kube, &app, "shop").unwrap()["metadata"]["uid"].clone();
    for object in owned["items"].as_array().unwrap() {
        *kinds
            .entry(object["kind"].as_str().unwrap().to_owned())
            .or_default() += 1;
        let owner = &object["metadata"]["ownerReferences"][0];
        assert_eq!(
            owner["kind"], "OrderPipeline",
            "{}",
            object["metadata"]["name"]
        );
        assert_eq!(owner["uid"], uid);
        assert_eq!(owner["controller"], true);
    }
    assert_eq!(
        kinds,
        BTreeMap::from([
            ("ConfigMap".into(), 1),
            ("Deployment".into(), 7),
            ("Ingress".into(), 1),
            ("Service".into(), 3),
        ])
    );

    // Status conditions (SPEC §5) and the Events of every change.
    let p = pipeline(&kube, &app, "shop").unwrap();
    for (kind, status) in [
        ("Ready", "True"),
        ("TopicsReady", "True"),
        ("DeploymentsReady", "True"),
        ("Scaling", "False"),
    ] {
        assert_eq!(
            condition(&p, kind)["status"],
            status,
            "{kind}: {}",
            p["status"]
        );
    }
    assert_eq!(
        p["status"]["observedGeneration"],
        p["metadata"]["generation"]
    );
    let seen = events(&kube, &app, "shop");
    let count = |reason: &str| seen.iter().filter(|(r, _)| r == reason).count();
    assert_eq!(count("TopicCreated"), 6, "{seen:?}");
    assert_eq!(count("DeploymentCreated"), 7, "{seen:?}");
    assert_eq!(count("ServiceCreated"), 3, "{seen:?}");
    assert_eq!(count("ConfigMapCreated"), 1, "{seen:?}");
    assert_eq!(count("IngressCreated"), 1, "{seen:?}");
    // kubectl get events shows them, from the real API server.
    let listed = kube.ok(&["-n", &app, "get", "events"]);
    assert!(
        listed.contains("TopicCreated") && listed.contains("orderpipeline/shop"),
        "{listed}"
    );

    // A workload change is an Event too, once.
    kube.merge_patch(
        &app,
        "opl",
        "shop",
        r#"{"spec":{"services":{"producer":{"replicas":3}}}}"#,
    )
    .unwrap();
    kube.wait_for(Duration::from_secs(30), "the producer at 3 replicas", |k| {
        let d = k.get(&["-n", &app, "deployment", "shop-producer"])?;
        (d["spec"]["replicas"] == 3).then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    let updated: Vec<_> = events(&kube, &app, "shop")
        .into_iter()
        .filter(|(r, n)| r == "DeploymentUpdated" && n.contains("shop-producer"))
        .collect();
    assert_eq!(updated.len(), 1, "{updated:?}");

    // The API server rejects invalid specs through the CRD's CEL rules.
    for (patch, message) in [
        (
            r#"{"spec":{"stages":{"persist":{"minReplicas":5,"maxReplicas":2}}}}"#,
            "minReplicas must not exceed maxReplicas",
        ),
        (
            r#"{"spec":{"kafka":{"bootstrapServers":""}}}"#,
            "bootstrapServers must not be empty",
        ),
    ] {
        let err = kube
            .merge_patch(&app, "opl", "shop", patch)
            .expect_err("an invalid spec is refused");
        assert!(err.contains(message), "{patch}: {err}");
    }

    // A partition decrease is reported as NotSupported and left alone.
    kube.merge_patch(
        &app,
        "opl",
        "shop",
        r#"{"spec":{"topics":{"orders":{"partitions":3}}}}"#,
    )
    .unwrap();
    let refused = kube.wait_for(Duration::from_secs(30), "NotSupported", |k| {
        let p = pipeline(k, &app, "shop")?;
        let c = condition(&p, "TopicsReady").clone();
        (c["reason"] == "NotSupported").then_some(c)
    });
    assert_eq!(refused["status"], "False");
    assert!(
        refused["message"].as_str().unwrap().contains("orders"),
        "{refused}"
    );
    assert_eq!(kit::kafka_topic_describe(&brokers, "orders").0, 6);
    assert!(events(&kube, &app, "shop")
        .iter()
        .any(|(r, _)| r == "PartitionDecreaseRefused"));

    // Deleting it: the garbage collector removes the owned objects; with
    // topicDeletionPolicy Retain the topics stay.
    delete_pipeline(&kube, &app);
    kube.wait_for(
        Duration::from_secs(90),
        "the owned objects to be collected",
        |k| {
            let left = k.get(&[
                "-n",
                &app,
                "configmaps,deployments,services,ingresses",
                "-l",
                "app.kubernetes.io/instance=shop",
            ])?;
            left["items"].as_array().unwrap().is_empty().then_some(())
        },
    );
    assert!(topic_exists(&brokers, "orders"), "Retain keeps the topics");
    assert!(operator.alive(), "{}", release.log("op-0"));
    let log = release.log("op-0");
    let forbidden: Vec<&str> = log
        .lines()
        // kube's error for a refusal: `reason: "Forbidden", code: 403`
        // (a bare "403" also matches a timestamp's digits).
        .filter(|l| l.contains("Forbidden") || l.contains("forbidden") || l.contains("code: 403"))
        .collect();
    assert!(
        forbidden.is_empty(),
        "requests the RBAC refused: {forbidden:?}"
    );
    drop(operator);
    release.uninstall(&kube);
}

/// The chart installed, its operator running under its ServiceAccount, and
/// the Secrets a pipeline names in the served namespace.
fn served() -> (Kube, String, Release, Operator) {
    let kube = cluster::cluster();
    let release = install(&kube);
    let operator = release.spawn_operator(&kube, "op-0", &[]);
    sample_secrets(&kube, &release.app);
    (kube, kit::kafka(), release, operator)
}

/// A pipeline of the test's own: unique topic names, fast autoscaling.
fn own_pipeline(
    ns: &str,
    brokers: &str,
    prefix: &str,
    extra: Value,
) -> (Value, BTreeMap<&'static str, String>) {
    let names: BTreeMap<&'static str, String> = [
        ("orders", format!("{prefix}.orders")),
        ("validated", format!("{prefix}.orders.validated")),
        ("inventory", format!("{prefix}.inventory.events")),
        ("payment", format!("{prefix}.payment.events")),
        ("notifications", format!("{prefix}.notifications")),
        ("dlq", format!("{prefix}.orders.dlq")),
    ]
    .into_iter()
    .collect();
    let topics: serde_json::Map<String, Value> = names
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                json!({"name": v, "partitions": if *k == "dlq" { 1 } else { 4 }}),
            )
        })
        .collect();
    let mut spec = json!({
        "image": {"repository": "orderflow", "tag": "0.1.0"},
        "kafka": {"bootstrapServers": brokers},
        "mongodb": {"uriSecretRef": {"name": "mongo", "key": "uri"}},
        "redis": {"urlSecretRef": {"name": "redis", "key": "url"}},
        "topics": topics,
        "ingress": {"enabled": false},
        "autoscaling": {"pollInterval": "1s", "scaleDownStabilization": "8s"},
    });
    merge(&mut spec, extra);
    (
        json!({
            "apiVersion": "orderflow.dev/v1alpha1", "kind": "OrderPipeline",
            "metadata": {"name": "shop", "namespace": ns},
            "spec": spec,
        }),
        names,
    )
}

fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (slot, v) => *slot = v,
    }
}

#[test]
fn topic_deletion_policy_delete_removes_the_pipelines_topics_and_no_other() {
    let (kube, brokers, release, _operator) = served();
    let app = release.app.clone();
    let prefix = kit::unique("deleted");
    let (object, names) = own_pipeline(
        &app,
        &brokers,
        &prefix,
        json!({"topicDeletionPolicy": "Delete"}),
    );
    // A topic of someone else, named like the pipeline's.
    let bystander = format!("{prefix}.orders.archive");
    kit::kafka_tool(&[
        "org.apache.kafka.tools.TopicCommand",
        "--bootstrap-server",
        &brokers,
        "--create",
        "--topic",
        &bystander,
        "--partitions",
        "1",
    ]);
    kube.apply(&object.to_string()).unwrap();
    kube.wait_for(
        Duration::from_secs(60),
        "the finalizer and the topics",
        |k| {
            let p = pipeline(k, &app, "shop")?;
            let has = p["metadata"]["finalizers"]
                .as_array()?
                .iter()
                .any(|f| f == "orderflow.dev/topics");
            (has && condition(&p, "TopicsReady")["status"] == "True").then_some(())
        },
    );
    for topic in names.values() {
        assert!(topic_exists(&brokers, topic), "{topic}");
    }
    delete_pipeline(&kube, &app);
    assert!(
        pipeline(&kube, &app, "shop").is_none(),
        "the finalizer was removed"
    );
    for topic in names.values() {
        assert!(
            !topic_exists(&brokers, topic),
            "{topic} was deleted with the pipeline"
        );
    }
    assert!(
        topic_exists(&brokers, &bystander),
        "no other topic is touched"
    );
    release.uninstall(&kube);
}

fn order(i: usize) -> Vec<u8> {
    serde_json::to_vec(&OrderPlaced {
        order_id: format!("scale-{i}"),
        customer_id: format!("c-{}", i % 10),
        currency: "USD".into(),
        items: vec![PlacedItem {
            product_id: "coffee".into(),
            name: None,
            quantity: 1,
            unit_price: Some(Money::from_minor(450)),
        }],
        total_amount: None,
        client_total: None,
        placed_at: time::OffsetDateTime::now_utc(),
    })
    .unwrap()
}

/// A real persist stage outside the cluster, in the stage's consumer group.
fn spawn_persist(brokers: &str, topics: &BTreeMap<&'static str, String>, db: &str) -> Killed {
    Killed(
        Command::new(kit::binary("consumer"))
            .args(["--stage", "persist", "--port", "0", "--bind", "127.0.0.1"])
            .args([
                "--kafka-brokers",
                brokers,
                "--mongo-url",
                &kit::mongo_url(db),
            ])
            .args([
                "--topic-orders",
                &topics["orders"],
                "--topic-validated",
                &topics["validated"],
            ])
            .args([
                "--topic-notifications",
                &topics["notifications"],
                "--topic-dlq",
                &topics["dlq"],
            ])
            .env("RUST_LOG", "warn")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting the persist stage"),
    )
}

fn persist_replicas(kube: &Kube, ns: &str) -> i64 {
    kube.get(&["-n", ns, "deployment", "shop-persist"])
        .and_then(|d| d["spec"]["replicas"].as_i64())
        .unwrap_or(-1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persist_scales_on_real_lag_capped_by_partitions_and_back_without_flapping() {
    let (kube, brokers, release, _operator) = served();
    let app = release.app.clone();
    let prefix = kit::unique("scaled");
    let (object, topics) = own_pipeline(
        &app,
        &brokers,
        &prefix,
        json!({"stages": {"persist": {"minReplicas": 1, "maxReplicas": 12, "lagPerReplica": 100}}}),
    );
    kube.apply(&object.to_string()).unwrap();
    kube.wait_for(Duration::from_secs(60), "the pipeline to be Ready", |k| {
        (condition(&pipeline(k, &app, "shop")?, "Ready")["status"] == "True").then_some(())
    });
    assert_eq!(persist_replicas(&kube, &app), 1);

    // A backlog of 2 000 orders and nobody consuming: 20 replicas' worth,
    // capped by the 4 partitions.
    let producer = kit::producer(&brokers);
    let payloads: Vec<(String, Vec<u8>)> = (0..2000)
        .map(|i| (format!("scale-{i}"), order(i)))
        .collect();
    futures::future::join_all(
        payloads
            .iter()
            .map(|(key, payload)| kit::produce(&producer, &topics["orders"], key, payload)),
    )
    .await;
    kube.wait_for(
        Duration::from_secs(60),
        "persist scaled to the partition count",
        |k| (persist_replicas(k, &app) == 4).then_some(()),
    );
    let p = pipeline(&kube, &app, "shop").unwrap();
    let stage = p["status"]["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "persist")
        .unwrap()
        .clone();
    assert!(stage["lag"].as_i64().unwrap() >= 1000, "{stage}");
    assert!(
        stage["reason"].as_str().unwrap().contains("lag"),
        "the status says why: {stage}"
    );
    let seen = events(&kube, &app, "shop");
    let ups: Vec<&String> = seen
        .iter()
        .filter(|(r, _)| r == "ScaledUp")
        .map(|(_, n)| n)
        .collect();
    assert!(
        ups.last()
            .is_some_and(|n| n.contains("→ 4 replicas") && n.contains("lag")),
        "the Event says why: {seen:?}"
    );

    // The real stage drains it; after the stabilization window persist goes
    // back to its minimum.
    // The window counts from the operator's last poll that wanted more
    // than one replica (its status's desiredReplicas, before
    // stabilization), which may come well before the group reaches the
    // end: the last time the test saw the operator report that, a little
    // after that poll. Not the lag: a lag still above 3 × lagPerReplica
    // wants only as many replicas as partitions still lag, so once the
    // partitions drain unevenly it may already want one.
    let db = kit::unique("scaled");
    let stage_process = spawn_persist(&brokers, &topics, &db);
    let mut last_high = Instant::now();
    let mut track = |k: &Kube| {
        let desired = pipeline(k, &app, "shop").and_then(|p| {
            p["status"]["stages"]
                .as_array()?
                .iter()
                .find(|s| s["name"] == "persist")?["desiredReplicas"]
                .as_i64()
        });
        if desired.is_none_or(|desired| desired > 1) {
            last_high = Instant::now();
        }
    };
    kube.wait_for(Duration::from_secs(90), "the backlog to drain", |k| {
        track(k);
        let (position, end) = kit::group_position(&brokers, "orderflow-persist", &topics["orders"]);
        (position == end && end == 2000).then_some(())
    });
    kube.wait_for(Duration::from_secs(60), "persist back at 1 replica", |k| {
        track(k);
        (persist_replicas(k, &app) == 1).then_some(())
    });
    assert!(
        last_high.elapsed() >= Duration::from_secs(5),
        "scaled down {:?} after the operator last reported wanting more than one replica, within the 8 s stabilization window",
        last_high.elapsed()
    );
    assert!(events(&kube, &app, "shop")
        .iter()
        .any(|(r, n)| r == "ScaledDown" && n.contains("→ 1")));

    // A sawtooth: a burst of 250 every 2 s, drained in between. The replica
    // count may rise at once; it falls only to the most the operator wanted
    // over the last 8 s, so never sooner than that after it last changed
    // (the operator may catch a smaller peak of a later burst, since
    // persist drains one between two polls). 5 s leaves the test's own
    // delay in seeing each change.
    let mut observed = vec![(Instant::now(), persist_replicas(&kube, &app))];
    let mut i = 2000;
    let until = Instant::now() + Duration::from_secs(16);
    while Instant::now() < until {
        let burst: Vec<(String, Vec<u8>)> = (i..i + 250)
            .map(|n| (format!("scale-{n}"), order(n)))
            .collect();
        i += 250;
        futures::future::join_all(
            burst
                .iter()
                .map(|(key, payload)| kit::produce(&producer, &topics["orders"], key, payload)),
        )
        .await;
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let r = persist_replicas(&kube, &app);
            if observed.last().map(|(_, last)| *last) != Some(r) {
                observed.push((Instant::now(), r));
            }
        }
    }
    let started = observed[0].0;
    let changes: Vec<(Duration, i64)> = observed.iter().map(|(t, r)| (*t - started, *r)).collect();
    let early_falls = changes
        .windows(2)
        .filter(|w| w[1].1 < w[0].1 && w[1].0 - w[0].0 < Duration::from_secs(5))
        .count();
    assert_eq!(
        early_falls, 0,
        "flapping under a sawtooth, (time, replicas): {changes:?}"
    );
    drop(stage_process);
    release.uninstall(&kube);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_operators_one_leader_and_the_standby_takes_over_from_a_sigkilled_one() {
    let kube = cluster::cluster();
    let release = install(&kube);
    let timings = [
        ("LEASE_DURATION", "4s"),
        ("LEASE_RENEW_DEADLINE", "3s"),
        ("LEASE_RETRY_PERIOD", "500ms"),
    ];
    let mut ops = [
        release.spawn_operator(&kube, "op-a", &timings),
        release.spawn_operator(&kube, "op-b", &timings),
    ];
    let client = reqwest::Client::new();
    let holder = |kube: &Kube| -> Option<String> {
        kube.get(&["-n", &release.system, "lease", &release.account])?["spec"]["holderIdentity"]
            .as_str()
            .map(str::to_owned)
    };
    let leader = kit::eventually(Duration::from_secs(30), "a leader", || async {
        match (
            leading(&client, ops[0].port).await,
            leading(&client, ops[1].port).await,
        ) {
            (Some(true), Some(false)) => Some(0),
            (Some(false), Some(true)) => Some(1),
            _ => None,
        }
    })
    .await;
    let names = ["op-a", "op-b"];
    // Only one leads at any moment, over several renewals, and the Lease in
    // the real API server names it.
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        let states = (
            leading(&client, ops[0].port).await,
            leading(&client, ops[1].port).await,
        );
        assert!(
            states.0 != Some(true) || states.1 != Some(true),
            "two leaders: {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(holder(&kube).as_deref(), Some(names[leader]));

    // SIGKILL: no goodbye, the Lease stays until it expires; then the
    // standby takes over.
    let killed = Instant::now();
    ops[leader].child.kill().unwrap();
    ops[leader].child.wait().unwrap();
    let standby = 1 - leader;
    let port = ops[standby].port;
    kit::eventually(Duration::from_secs(20), "the standby to lead", || async {
        (leading(&client, port).await == Some(true)).then_some(())
    })
    .await;
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(10), "took over after {took:?}");
    assert_eq!(holder(&kube).as_deref(), Some(names[standby]));
    drop(ops);
    release.uninstall(&kube);
}

#[test]
fn the_operator_rides_out_an_api_server_outage_and_reconciles_after_it() {
    let brokers = kit::kafka();
    // A control plane of this test's own: its API server goes away.
    let plane = cluster::spawn_control_plane(true);
    let kube = &plane.kube;
    install_crd(kube);
    kube.ok(&["create", "namespace", "shop"]);
    sample_secrets(kube, "shop");
    let prefix = kit::unique("outage");
    let (object, _) = own_pipeline("shop", &brokers, &prefix, json!({}));
    kube.apply(&object.to_string()).unwrap();
    let dir = kit::TempDir::new("outage");
    let log = dir.0.join("operator.log");
    let mut operator = spawn_operator(
        &kube.kubeconfig,
        "op-0",
        &[
            ("POD_NAMESPACE", "default"),
            ("WATCH_NAMESPACES", "shop"),
            ("RUST_LOG", "info,kube=warn"),
        ],
        Some(&log),
    );
    let replicas = |k: &Kube| {
        k.get(&["-n", "shop", "deployment", "shop-producer"])
            .and_then(|d| d["spec"]["replicas"].as_i64())
    };
    kube.wait_for(Duration::from_secs(60), "the producer Deployment", |k| {
        replicas(k).filter(|r| *r == 2)
    });

    plane.kill("apiserver");
    std::thread::sleep(Duration::from_secs(20));
    assert!(
        operator.alive(),
        "the operator crashed without its API server: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    plane.up();
    kube.merge_patch(
        "shop",
        "opl",
        "shop",
        r#"{"spec":{"services":{"producer":{"replicas":3}}}}"#,
    )
    .unwrap();
    kube.wait_for(
        Duration::from_secs(90),
        "the change reconciled after the outage",
        |k| replicas(k).filter(|r| *r == 3),
    );
    assert!(operator.alive());
    // It gave leadership up when it could not renew, backed off, and led
    // again once the API server was back.
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("not renewed within the renew deadline"),
        "{text}"
    );
    assert!(
        text.matches(r#""message":"leading""#).count() >= 2,
        "{text}"
    );
}
