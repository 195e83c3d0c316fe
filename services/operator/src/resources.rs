//! The Kubernetes objects one pipeline owns, built from its spec alone (pure,
//! so `render` can print them and tests can read them): a ConfigMap, a
//! Deployment per service and per stage, Services for the HTTP services, and
//! the Ingress. The reconciler applies them with server-side apply.
//!
//! Stage Deployments carry no `replicas`: the autoscaler owns that field
//! through the scale subresource, and applying a value here would fight it.

use std::collections::BTreeMap;

use kube::{Resource, ResourceExt};
use orderflow_platform::topology::STAGES;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::crd::{OrderPipeline, SecretKeyRef};

pub const MANAGER: &str = "orderflow-operator";
pub const CONFIG_HASH: &str = "orderflow.dev/config-hash";

/// One HTTP service of the pipeline.
pub struct Component {
    /// `producer`, `orders-api`, … — the object name's suffix and the binary.
    pub name: &'static str,
    pub binary: &'static str,
    pub port: u16,
    /// `Some(stage)` for a consumer stage.
    pub stage: Option<&'static str>,
    pub redis: bool,
    pub mongo: bool,
}

pub const COMPONENTS: [Component; 7] = [
    Component {
        name: "producer",
        binary: "producer",
        port: 3000,
        stage: None,
        redis: true,
        mongo: false,
    },
    Component {
        name: "orders-api",
        binary: "orders-api",
        port: 3003,
        stage: None,
        redis: false,
        mongo: true,
    },
    Component {
        name: "analytics",
        binary: "analytics",
        port: 3001,
        stage: None,
        redis: true,
        mongo: true,
    },
    Component {
        name: STAGES[0].name,
        binary: "consumer",
        port: 3010,
        stage: Some(STAGES[0].name),
        redis: false,
        mongo: true,
    },
    Component {
        name: STAGES[1].name,
        binary: "consumer",
        port: 3010,
        stage: Some(STAGES[1].name),
        redis: false,
        mongo: true,
    },
    Component {
        name: STAGES[2].name,
        binary: "consumer",
        port: 3010,
        stage: Some(STAGES[2].name),
        redis: false,
        mongo: true,
    },
    Component {
        name: STAGES[3].name,
        binary: "consumer",
        port: 3010,
        stage: Some(STAGES[3].name),
        redis: false,
        mongo: true,
    },
];

/// `<pipeline>-<component>`.
pub fn object_name(pipeline: &OrderPipeline, component: &str) -> String {
    format!("{}-{component}", pipeline.name_any())
}

fn selector(pipeline: &OrderPipeline, component: &str) -> Value {
    json!({
        "app.kubernetes.io/instance": pipeline.name_any(),
        "app.kubernetes.io/component": component,
    })
}

fn labels(pipeline: &OrderPipeline, component: &str) -> Value {
    json!({
        "app.kubernetes.io/name": "orderflow",
        "app.kubernetes.io/instance": pipeline.name_any(),
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "orderflow",
        "app.kubernetes.io/managed-by": MANAGER,
    })
}

fn metadata(pipeline: &OrderPipeline, name: &str, component: &str) -> Value {
    let owner = pipeline
        .controller_owner_ref(&())
        .map(|o| serde_json::to_value(o).expect("owner reference serializes"));
    json!({
        "name": name,
        "namespace": pipeline.namespace(),
        "labels": labels(pipeline, component),
        "ownerReferences": owner.into_iter().collect::<Vec<_>>(),
    })
}

/// Non-secret settings every service reads (the same variables as SPEC §6).
pub fn config_data(pipeline: &OrderPipeline) -> BTreeMap<String, String> {
    let spec = &pipeline.spec;
    let mut data = BTreeMap::new();
    data.insert("KAFKA_BROKERS".into(), spec.kafka.bootstrap_servers.clone());
    for (topic, _) in spec.topics.all() {
        data.insert(topic.env.into(), spec.topics.name(topic.role).to_owned());
    }
    data.insert("MONGO_DATABASE".into(), spec.mongodb.database.clone());
    if let Some(endpoint) = &spec.telemetry.otlp_endpoint {
        // The services export OTLP over HTTP (the collector's port 4318).
        data.insert("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint.clone());
        data.insert("OTEL_EXPORTER_OTLP_PROTOCOL".into(), "http/protobuf".into());
    }
    if let Some(ratio) = spec.telemetry.sampling_ratio {
        data.insert(
            "OTEL_TRACES_SAMPLER".into(),
            "parentbased_traceidratio".into(),
        );
        data.insert("OTEL_TRACES_SAMPLER_ARG".into(), ratio.to_string());
    }
    data
}

pub fn config_map(pipeline: &OrderPipeline) -> Value {
    let name = object_name(pipeline, "config");
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(pipeline, &name, "config"),
        "data": config_data(pipeline),
    })
}

/// A hash of everything in the ConfigMap, put on each pod template so that a
/// configuration change rolls the pods (env from a ConfigMap is read at start).
pub fn config_hash(pipeline: &OrderPipeline) -> String {
    let mut hasher = Sha256::new();
    for (k, v) in config_data(pipeline) {
        hasher.update(k.as_bytes());
        hasher.update([0]);
        hasher.update(v.as_bytes());
        hasher.update([0]);
    }
    hex::encode(&hasher.finalize()[..8])
}

fn secret_env(name: &str, secret: &SecretKeyRef) -> Value {
    json!({"name": name, "valueFrom": {"secretKeyRef": {"name": secret.name, "key": secret.key}}})
}

pub fn deployment(pipeline: &OrderPipeline, c: &Component) -> Value {
    let spec = &pipeline.spec;
    let name = object_name(pipeline, c.name);
    let mut env = vec![json!({"name": "OTEL_SERVICE_NAME", "value": c.name})];
    if let Some(stage) = c.stage {
        env.push(json!({"name": "STAGE", "value": stage}));
    }
    if c.name == "orders-api" {
        // The Ingress sends every /orders request here; intake goes on to
        // the producer (ADR 0006).
        let producer = object_name(pipeline, "producer");
        env.push(json!({"name": "PRODUCER_URL", "value": format!("http://{producer}")}));
    }
    if c.mongo {
        env.push(secret_env("MONGO_URL", &spec.mongodb.uri_secret_ref));
    }
    if c.redis {
        env.push(secret_env("REDIS_URL", &spec.redis.url_secret_ref));
    }
    if let Some(secret) = &spec.kafka.config_secret_ref {
        env.push(secret_env("KAFKA_CONFIG", secret));
    }
    let mut env_from = vec![json!({"configMapRef": {"name": object_name(pipeline, "config")}})];
    if let Some(secret) = &spec.env_secret_name {
        env_from.push(json!({"secretRef": {"name": secret}}));
    }
    let mut container = json!({
        "name": c.name,
        "image": format!("{}:{}", spec.image.repository, spec.image.tag),
        "command": [c.binary],
        "ports": [{"name": "http", "containerPort": c.port, "protocol": "TCP"}],
        "env": env,
        "envFrom": env_from,
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10, "failureThreshold": 6},
        "resources": {
            "requests": {"cpu": "100m", "memory": "64Mi"},
            "limits": {"cpu": "1", "memory": "256Mi"},
        },
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "runAsNonRoot": true,
            "capabilities": {"drop": ["ALL"]},
        },
    });
    if let Some(policy) = &spec.image.pull_policy {
        container["imagePullPolicy"] = json!(policy);
    }
    let mut deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(pipeline, &name, c.name),
        "spec": {
            "selector": {"matchLabels": selector(pipeline, c.name)},
            "template": {
                "metadata": {
                    "labels": labels(pipeline, c.name),
                    "annotations": {CONFIG_HASH: config_hash(pipeline)},
                },
                "spec": {
                    "automountServiceAccountToken": false,
                    "terminationGracePeriodSeconds": 30,
                    "securityContext": {
                        "runAsNonRoot": true,
                        "runAsUser": 65532,
                        "runAsGroup": 65532,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [container],
                },
            },
        },
    });
    let replicas = match c.name {
        "producer" => Some(spec.services.producer.replicas),
        "orders-api" => Some(spec.services.orders_api.replicas),
        "analytics" => Some(spec.services.analytics.replicas),
        _ => None,
    };
    if let Some(replicas) = replicas {
        deployment["spec"]["replicas"] = json!(replicas);
    }
    deployment
}

/// The Services of the HTTP components (stages have no clients).
pub fn service(pipeline: &OrderPipeline, c: &Component) -> Value {
    let name = object_name(pipeline, c.name);
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(pipeline, &name, c.name),
        "spec": {
            "selector": selector(pipeline, c.name),
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
        },
    })
}

/// One host for every endpoint (SPEC §2): `/orders` and `/inventory` go to
/// orders-api, which hands `POST /orders` to the producer (a plain Ingress
/// cannot route by method, ADR 0006); `/analytics` and the dashboard at `/`
/// go to analytics.
pub fn ingress(pipeline: &OrderPipeline) -> Option<Value> {
    let spec = &pipeline.spec.ingress;
    if !spec.enabled {
        return None;
    }
    let name = object_name(pipeline, "ingress");
    let path = |path: &str, component: &str| {
        json!({
            "path": path,
            "pathType": "Prefix",
            "backend": {"service": {"name": object_name(pipeline, component), "port": {"name": "http"}}},
        })
    };
    let mut ingress = json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": metadata(pipeline, &name, "ingress"),
        "spec": {
            "rules": [{
                "host": spec.host,
                "http": {"paths": [
                    path("/orders", "orders-api"),
                    path("/inventory", "orders-api"),
                    path("/analytics", "analytics"),
                    path("/", "analytics"),
                ]},
            }],
        },
    });
    if let Some(class) = &spec.class_name {
        ingress["spec"]["ingressClassName"] = json!(class);
    }
    if let Some(secret) = spec.tls_secret_name.as_ref().filter(|s| !s.is_empty()) {
        ingress["spec"]["tls"] = json!([{"hosts": [spec.host], "secretName": secret}]);
    }
    Some(ingress)
}

/// The Gateway API route, when enabled: the same paths as the Ingress, and
/// `POST /orders` matched by method to the producer (an exact path with a
/// method outranks the `/orders` prefix).
pub fn http_route(pipeline: &OrderPipeline) -> Option<Value> {
    let spec = &pipeline.spec.gateway;
    let parent = spec.parent_ref.as_ref().filter(|_| spec.enabled)?;
    let name = object_name(pipeline, "route");
    let backend = |component: &str| json!([{"name": object_name(pipeline, component), "port": 80}]);
    let prefix = |path: &str| json!({"path": {"type": "PathPrefix", "value": path}});
    let mut parent_ref = json!({"name": parent.name});
    if let Some(ns) = &parent.namespace {
        parent_ref["namespace"] = json!(ns);
    }
    if let Some(section) = &parent.section_name {
        parent_ref["sectionName"] = json!(section);
    }
    let mut route = json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": metadata(pipeline, &name, "route"),
        "spec": {
            "parentRefs": [parent_ref],
            "rules": [
                {"matches": [{"path": {"type": "Exact", "value": "/orders"}, "method": "POST"}], "backendRefs": backend("producer")},
                {"matches": [prefix("/orders"), prefix("/inventory")], "backendRefs": backend("orders-api")},
                {"matches": [prefix("/analytics"), prefix("/")], "backendRefs": backend("analytics")},
            ],
        },
    });
    if !spec.hostnames.is_empty() {
        route["spec"]["hostnames"] = json!(spec.hostnames);
    }
    Some(route)
}

/// Everything the pipeline owns, in the order it is applied.
pub fn owned(pipeline: &OrderPipeline) -> Vec<Value> {
    let mut objects = vec![config_map(pipeline)];
    objects.extend(COMPONENTS.iter().map(|c| deployment(pipeline, c)));
    objects.extend(
        COMPONENTS
            .iter()
            .filter(|c| c.stage.is_none())
            .map(|c| service(pipeline, c)),
    );
    objects.extend(ingress(pipeline));
    objects.extend(http_route(pipeline));
    objects
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline(yaml: &str) -> OrderPipeline {
        let mut p: OrderPipeline = serde_yaml::from_str(yaml).unwrap();
        p.metadata.namespace = Some("shop".into());
        p.metadata.uid = Some("uid-1".into());
        p
    }

    const MINIMAL: &str = r#"
apiVersion: orderflow.dev/v1alpha1
kind: OrderPipeline
metadata: {name: main}
spec:
  image: {repository: ghcr.io/orderflow/orderflow, tag: "0.1.0"}
  kafka: {bootstrapServers: "kafka:9092", configSecretRef: {name: kafka, key: config}}
  mongodb: {uriSecretRef: {name: mongo, key: uri}, database: shop}
  redis: {urlSecretRef: {name: redis, key: url}}
  topics:
    orders: {name: shop.orders, partitions: 12}
  envSecretName: orderflow-env
"#;

    fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
        objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    }

    #[test]
    fn every_object_is_owned_by_the_pipeline_and_labelled() {
        let p = pipeline(MINIMAL);
        let objects = owned(&p);
        // ConfigMap, 7 Deployments, 3 Services; the ingress is off.
        assert_eq!(objects.len(), 11);
        for o in &objects {
            let owner = &o["metadata"]["ownerReferences"][0];
            assert_eq!(owner["kind"], "OrderPipeline");
            assert_eq!(owner["uid"], "uid-1");
            assert_eq!(owner["controller"], true);
            assert_eq!(o["metadata"]["namespace"], "shop");
            assert_eq!(
                o["metadata"]["labels"]["app.kubernetes.io/instance"],
                "main"
            );
        }
    }

    #[test]
    fn stages_leave_replicas_to_the_autoscaler_and_services_take_theirs() {
        let objects = owned(&pipeline(MINIMAL));
        let persist = find(&objects, "Deployment", "main-persist");
        assert!(persist["spec"].get("replicas").is_none());
        let container = &persist["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container["command"], json!(["consumer"]));
        assert!(container["env"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "STAGE", "value": "persist"})));
        let producer = find(&objects, "Deployment", "main-producer");
        assert_eq!(producer["spec"]["replicas"], 2);
        let api = find(&objects, "Deployment", "main-orders-api");
        assert!(api["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "PRODUCER_URL", "value": "http://main-producer"})));
    }

    #[test]
    fn secrets_are_referenced_never_copied() {
        let objects = owned(&pipeline(MINIMAL));
        let analytics = find(&objects, "Deployment", "main-analytics");
        let container = &analytics["spec"]["template"]["spec"]["containers"][0];
        let env = container["env"].as_array().unwrap();
        assert!(env.contains(&json!({"name": "MONGO_URL", "valueFrom": {"secretKeyRef": {"name": "mongo", "key": "uri"}}})));
        assert!(env.contains(&json!({"name": "REDIS_URL", "valueFrom": {"secretKeyRef": {"name": "redis", "key": "url"}}})));
        assert!(env.contains(&json!({"name": "KAFKA_CONFIG", "valueFrom": {"secretKeyRef": {"name": "kafka", "key": "config"}}})));
        assert_eq!(
            container["envFrom"][1],
            json!({"secretRef": {"name": "orderflow-env"}})
        );
        let config = find(&objects, "ConfigMap", "main-config");
        assert_eq!(config["data"]["KAFKA_TOPIC"], "shop.orders");
        assert_eq!(config["data"]["KAFKA_TOPIC_VALIDATED"], "orders.validated");
        assert_eq!(config["data"]["MONGO_DATABASE"], "shop");
        assert!(!config.to_string().contains("mongodb://"));
    }

    #[test]
    fn containers_are_locked_down_and_probed() {
        for o in owned(&pipeline(MINIMAL))
            .iter()
            .filter(|o| o["kind"] == "Deployment")
        {
            let pod = &o["spec"]["template"]["spec"];
            assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
            let c = &pod["containers"][0];
            assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
            assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
            assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
            assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
            assert!(c["resources"]["limits"]["memory"].is_string());
        }
    }

    #[test]
    fn a_config_change_changes_the_pod_template() {
        let before = pipeline(MINIMAL);
        let mut after = before.clone();
        after.spec.kafka.bootstrap_servers = "kafka-2:9092".into();
        let hash = |p: &OrderPipeline| {
            deployment(p, &COMPONENTS[0])["spec"]["template"]["metadata"]["annotations"]
                [CONFIG_HASH]
                .clone()
        };
        assert_ne!(hash(&before), hash(&after));
        assert_eq!(hash(&before), hash(&before.clone()));
    }

    #[test]
    fn the_gateway_route_sends_post_orders_to_the_producer_by_method() {
        let mut p = pipeline(MINIMAL);
        assert!(http_route(&p).is_none(), "off by default");
        p.spec.gateway.enabled = true;
        p.spec.gateway.parent_ref = Some(crate::crd::GatewayParentRef {
            name: "public".into(),
            namespace: Some("gateways".into()),
            section_name: None,
        });
        p.spec.gateway.hostnames = vec!["orders.example.com".into()];
        let route = http_route(&p).unwrap();
        assert_eq!(
            route["spec"]["parentRefs"],
            json!([{"name": "public", "namespace": "gateways"}])
        );
        assert_eq!(route["spec"]["hostnames"], json!(["orders.example.com"]));
        let rules = route["spec"]["rules"].as_array().unwrap();
        assert_eq!(
            rules[0]["matches"],
            json!([{"path": {"type": "Exact", "value": "/orders"}, "method": "POST"}])
        );
        assert_eq!(
            rules[0]["backendRefs"],
            json!([{"name": "main-producer", "port": 80}])
        );
        assert_eq!(rules[1]["backendRefs"][0]["name"], "main-orders-api");
        assert_eq!(rules[2]["backendRefs"][0]["name"], "main-analytics");
        assert_eq!(owned(&p).last().unwrap()["kind"], "HTTPRoute");
    }

    #[test]
    fn the_ingress_routes_every_endpoint_on_one_host_with_tls() {
        let mut p = pipeline(MINIMAL);
        p.spec.ingress.enabled = true;
        p.spec.ingress.host = "orders.example.com".into();
        p.spec.ingress.class_name = Some("nginx".into());
        p.spec.ingress.tls_secret_name = Some("orders-tls".into());
        let ingress = ingress(&p).unwrap();
        let paths: Vec<(String, String)> = ingress["spec"]["rules"][0]["http"]["paths"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["path"].as_str().unwrap().to_owned(),
                    p["backend"]["service"]["name"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert_eq!(
            paths,
            [
                ("/orders".to_string(), "main-orders-api".to_string()),
                ("/inventory".into(), "main-orders-api".into()),
                ("/analytics".into(), "main-analytics".into()),
                ("/".into(), "main-analytics".into()),
            ]
        );
        assert_eq!(ingress["spec"]["tls"][0]["secretName"], "orders-tls");
        assert_eq!(ingress["spec"]["ingressClassName"], "nginx");
        // An empty TLS secret name means no TLS.
        p.spec.ingress.tls_secret_name = Some(String::new());
        assert!(super::ingress(&p).unwrap()["spec"].get("tls").is_none());
    }
}
