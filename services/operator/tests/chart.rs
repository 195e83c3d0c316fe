//! The Helm chart as rendered by the real `helm template`, with default
//! values and with every option on: every workload is locked down (non-root,
//! read-only root filesystem, no capabilities, no privilege escalation),
//! probed and resourced; the RBAC is exactly the operator's rules, without
//! wildcards; the optional objects appear when asked for; the CRD copy in
//! `crds/` is checked by tests/crd.rs. (`helm lint` and kubernetes-validate
//! of the same renderings run in scripts/check-manifests.)

use std::process::Command;

use orderflow_operator::crd::OrderPipeline;
use orderflow_operator::rbac::{rules_json, NAMESPACE_RULES, PIPELINE_RULES};
use orderflow_testkit as kit;
use serde::Deserialize;
use serde_json::{json, Value};

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../charts/orderflow");

fn render(values: Option<&str>) -> Vec<Value> {
    let mut cmd = Command::new(kit::helm());
    cmd.args([
        "template",
        "orderflow",
        CHART,
        "--namespace",
        "orderflow-system",
    ]);
    if let Some(file) = values {
        cmd.args(["-f", &format!("{CHART}/{file}")]);
    }
    let out = cmd.output().expect("running helm");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .filter_map(|doc| {
            let v = Value::deserialize(doc).ok()?;
            (!v.is_null()).then_some(v)
        })
        .collect()
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn assert_locked_down(objects: &[Value]) {
    let deployments = of_kind(objects, "Deployment");
    assert!(!deployments.is_empty());
    for d in deployments {
        let name = &d["metadata"]["name"];
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
        for c in pod["containers"].as_array().unwrap() {
            let sc = &c["securityContext"];
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
            assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{name}");
            assert!(
                c["livenessProbe"]["httpGet"]["path"].is_string(),
                "{name}: liveness"
            );
            assert!(
                c["readinessProbe"]["httpGet"]["path"].is_string(),
                "{name}: readiness"
            );
            for kind in ["requests", "limits"] {
                for resource in ["cpu", "memory"] {
                    assert!(
                        c["resources"][kind][resource].is_string(),
                        "{name}: {kind}.{resource}"
                    );
                }
            }
        }
    }
}

/// The chart's RBAC is rbac.rs's: the pipeline rules bound in each served
/// namespace (`served`), or cluster-wide when `served` is empty, and the
/// leader-election Role in the release namespace.
fn assert_exact_rbac(objects: &[Value], served: &[&str]) {
    let text = serde_json::to_string(objects).unwrap();
    assert!(!text.contains(r#""*""#), "a wildcard in the chart");
    let cluster = of_kind(objects, "ClusterRole");
    assert_eq!(cluster.len(), 1);
    assert_eq!(cluster[0]["rules"], rules_json(PIPELINE_RULES));
    let role = of_kind(objects, "Role");
    assert_eq!(role.len(), 1);
    assert_eq!(role[0]["rules"], rules_json(NAMESPACE_RULES));
    let sa = of_kind(objects, "ServiceAccount")[0]["metadata"]["name"].clone();
    let bindings: Vec<&Value> = of_kind(objects, "ClusterRoleBinding")
        .into_iter()
        .chain(of_kind(objects, "RoleBinding"))
        .collect();
    for b in &bindings {
        assert_eq!(b["subjects"][0]["name"], sa);
        assert_eq!(b["subjects"][0]["namespace"], "orderflow-system");
    }
    let pipeline_bindings: Vec<(&str, Option<&str>)> = bindings
        .iter()
        .filter(|b| b["roleRef"]["kind"] == "ClusterRole")
        .map(|b| {
            (
                b["kind"].as_str().unwrap(),
                b["metadata"]["namespace"].as_str(),
            )
        })
        .collect();
    let expected: Vec<(&str, Option<&str>)> = if served.is_empty() {
        vec![("ClusterRoleBinding", None)]
    } else {
        served.iter().map(|ns| ("RoleBinding", Some(*ns))).collect()
    };
    assert_eq!(pipeline_bindings, expected);
    let deployment = of_kind(objects, "Deployment")[0];
    assert_eq!(
        deployment["spec"]["template"]["spec"]["serviceAccountName"],
        sa
    );
    let env = &deployment["spec"]["template"]["spec"]["containers"][0]["env"];
    assert!(env
        .as_array()
        .unwrap()
        .contains(&json!({"name": "WATCH_NAMESPACES", "value": served.join(",")})));
}

#[test]
fn default_values_render_a_locked_down_operator_with_exact_rbac() {
    let objects = render(None);
    assert_locked_down(&objects);
    assert_exact_rbac(&objects, &["orderflow-system"]);
    let deployment = of_kind(&objects, "Deployment")[0];
    assert_eq!(
        deployment["spec"]["replicas"], 2,
        "two replicas, one leader"
    );
    assert_eq!(
        deployment["spec"]["template"]["spec"]["containers"][0]["image"],
        "orderflow:0.1.0"
    );
    for optional in ["ServiceMonitor", "NetworkPolicy", "OrderPipeline"] {
        assert!(
            of_kind(&objects, optional).is_empty(),
            "{optional} is off by default"
        );
    }
}

#[test]
fn every_option_renders_its_objects() {
    let objects = render(Some("ci/all-on-values.yaml"));
    assert_locked_down(&objects);
    assert_exact_rbac(&objects, &[]);
    let monitor = of_kind(&objects, "ServiceMonitor");
    assert_eq!(monitor[0]["spec"]["endpoints"][0]["path"], "/metrics");
    assert_eq!(monitor[0]["metadata"]["labels"]["release"], "prometheus");
    let policy = of_kind(&objects, "NetworkPolicy");
    assert_eq!(policy[0]["spec"]["ingress"][0]["ports"][0]["port"], 8080);
    let env =
        &of_kind(&objects, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["env"];
    for var in [
        json!({"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": "http://otel-collector.observability:4317"}),
        json!({"name": "OTEL_EXPORTER_OTLP_PROTOCOL", "value": "grpc"}),
    ] {
        assert!(env.as_array().unwrap().contains(&var), "{var} in {env}");
    }
    // The pipeline from values is a valid OrderPipeline with the chart's
    // image filled in.
    let pipeline: OrderPipeline =
        serde_json::from_value(of_kind(&objects, "OrderPipeline")[0].clone()).unwrap();
    assert_eq!(
        pipeline.spec.image.repository,
        "registry.example.com/orderflow"
    );
    assert_eq!(pipeline.spec.image.tag, "0.1.0");
    assert_eq!(pipeline.spec.topics.orders.partitions, 12);
    assert!(pipeline.spec.ingress.enabled);
}
