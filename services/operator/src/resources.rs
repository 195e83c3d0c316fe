//! The Kubernetes objects one pipeline owns, built from its spec alone (pure,
//! so `render` can print them and tests can read them): a ConfigMap, a
//! Deployment per service and per stage, Services for the HTTP services, and
//! the Ingress. The reconciler applies them with server-side apply.
//!
//! Stage Deployments carry no `replicas`: the autoscaler owns that field
//! through the scale subresource, and applying a value here would fight it.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapEnvSource, Container, ContainerPort, EnvFromSource, EnvVar,
    EnvVarSource, HTTPGetAction, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, SecretEnvSource, SecretKeySelector, SecurityContext,
    Service, ServicePort, ServiceSpec,
};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{ApiResource, DynamicObject};
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
    /// Its CPU request, which is also its weight on a contended node.
    pub cpu_request: &'static str,
}

/// The intake path's CPU request (the producer, and orders-api, which
/// forwards `POST /orders` to it): three times the back end's, so on a
/// busy node it gets three times a back-end container's share of the CPU
/// (ADR 0014; `scripts/up` gives local processes the same weights with
/// `nice`).
pub const INTAKE_CPU: &str = "300m";
/// The asynchronous back end's: the four stages and analytics.
pub const BACKEND_CPU: &str = "100m";

pub const COMPONENTS: [Component; 7] = [
    Component {
        name: "producer",
        binary: "producer",
        port: 3000,
        stage: None,
        redis: true,
        mongo: false,
        cpu_request: INTAKE_CPU,
    },
    Component {
        name: "orders-api",
        binary: "orders-api",
        port: 3003,
        stage: None,
        redis: false,
        mongo: true,
        cpu_request: INTAKE_CPU,
    },
    Component {
        name: "analytics",
        binary: "analytics",
        port: 3001,
        stage: None,
        redis: true,
        mongo: true,
        cpu_request: BACKEND_CPU,
    },
    Component {
        name: STAGES[0].name,
        binary: "consumer",
        port: 3010,
        stage: Some(STAGES[0].name),
        redis: false,
        mongo: true,
        cpu_request: BACKEND_CPU,
    },
    Component {
        name: STAGES[1].name,
        binary: "consumer",
        port: 3010,
        stage: Some(STAGES[1].name),
        redis: false,
        mongo: true,
        cpu_request: BACKEND_CPU,
    },
    Component {
        name: STAGES[2].name,
        binary: "consumer",
        port: 3010,
        stage: Some(STAGES[2].name),
        redis: false,
        mongo: true,
        cpu_request: BACKEND_CPU,
    },
    Component {
        name: STAGES[3].name,
        binary: "consumer",
        port: 3010,
        stage: Some(STAGES[3].name),
        redis: false,
        mongo: true,
        cpu_request: BACKEND_CPU,
    },
];

/// `<pipeline>-<component>`.
pub fn object_name(pipeline: &OrderPipeline, component: &str) -> String {
    format!("{}-{component}", pipeline.name_any())
}

fn selector(pipeline: &OrderPipeline, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/instance".into(), pipeline.name_any()),
        ("app.kubernetes.io/component".into(), component.into()),
    ])
}

fn labels(pipeline: &OrderPipeline, component: &str) -> BTreeMap<String, String> {
    let mut labels = selector(pipeline, component);
    labels.extend([
        ("app.kubernetes.io/name".into(), "orderflow".into()),
        ("app.kubernetes.io/part-of".into(), "orderflow".into()),
        ("app.kubernetes.io/managed-by".into(), MANAGER.into()),
    ]);
    labels
}

fn metadata(pipeline: &OrderPipeline, name: &str, component: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: pipeline.namespace(),
        labels: Some(labels(pipeline, component)),
        owner_references: Some(pipeline.controller_owner_ref(&()).into_iter().collect()),
        ..ObjectMeta::default()
    }
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
        data.insert("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint.clone());
        data.insert(
            "OTEL_EXPORTER_OTLP_PROTOCOL".into(),
            spec.telemetry.protocol().as_env().into(),
        );
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

pub fn config_map(pipeline: &OrderPipeline) -> ConfigMap {
    let name = object_name(pipeline, "config");
    ConfigMap {
        metadata: metadata(pipeline, &name, "config"),
        data: Some(config_data(pipeline)),
        ..ConfigMap::default()
    }
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

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

fn secret_env(name: &str, secret: &SecretKeyRef) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.name.clone(),
                key: secret.key.clone(),
                ..SecretKeySelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

fn quantities(cpu: &str, memory: &str) -> BTreeMap<String, Quantity> {
    BTreeMap::from([
        ("cpu".into(), Quantity(cpu.into())),
        ("memory".into(), Quantity(memory.into())),
    ])
}

pub fn deployment(pipeline: &OrderPipeline, c: &Component) -> Deployment {
    let spec = &pipeline.spec;
    let name = object_name(pipeline, c.name);
    let mut vars = vec![env("OTEL_SERVICE_NAME", c.name)];
    if let Some(stage) = c.stage {
        vars.push(env("STAGE", stage));
    }
    if c.name == "orders-api" {
        // The Ingress sends every /orders request here; intake goes on to
        // the producer (ADR 0006).
        let producer = object_name(pipeline, "producer");
        vars.push(env("PRODUCER_URL", format!("http://{producer}")));
    }
    if c.mongo {
        vars.push(secret_env("MONGO_URL", &spec.mongodb.uri_secret_ref));
    }
    if c.redis {
        vars.push(secret_env("REDIS_URL", &spec.redis.url_secret_ref));
    }
    if let Some(secret) = &spec.kafka.config_secret_ref {
        vars.push(secret_env("KAFKA_CONFIG", secret));
    }
    let mut env_from = vec![EnvFromSource {
        config_map_ref: Some(ConfigMapEnvSource {
            name: object_name(pipeline, "config"),
            ..ConfigMapEnvSource::default()
        }),
        ..EnvFromSource::default()
    }];
    if let Some(secret) = &spec.env_secret_name {
        env_from.push(EnvFromSource {
            secret_ref: Some(SecretEnvSource {
                name: secret.clone(),
                ..SecretEnvSource::default()
            }),
            ..EnvFromSource::default()
        });
    }
    let container = Container {
        name: c.name.into(),
        image: Some(format!("{}:{}", spec.image.repository, spec.image.tag)),
        image_pull_policy: spec.image.pull_policy.clone(),
        command: Some(vec![c.binary.into()]),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: i32::from(c.port),
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        env: Some(vars),
        env_from: Some(env_from),
        readiness_probe: Some(probe("/readyz", 5, 3)),
        liveness_probe: Some(probe("/healthz", 10, 6)),
        resources: Some(ResourceRequirements {
            requests: Some(quantities(c.cpu_request, "64Mi")),
            limits: Some(quantities("1", "256Mi")),
            ..ResourceRequirements::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };
    // Stages: none (the autoscaler owns the field).
    let replicas = match c.name {
        "producer" => Some(spec.services.producer.replicas),
        "orders-api" => Some(spec.services.orders_api.replicas),
        "analytics" => Some(spec.services.analytics.replicas),
        _ => None,
    };
    Deployment {
        metadata: metadata(pipeline, &name, c.name),
        spec: DeploymentSpec {
            replicas,
            selector: LabelSelector {
                match_labels: Some(selector(pipeline, c.name)),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(pipeline, c.name)),
                    annotations: Some(BTreeMap::from([(
                        CONFIG_HASH.into(),
                        config_hash(pipeline),
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    automount_service_account_token: Some(false),
                    termination_grace_period_seconds: Some(30),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(65532),
                        run_as_group: Some(65532),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..SeccompProfile::default()
                        }),
                        ..PodSecurityContext::default()
                    }),
                    containers: vec![container],
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    }
}

/// The Services of the HTTP components (stages have no clients).
pub fn service(pipeline: &OrderPipeline, c: &Component) -> Service {
    let name = object_name(pipeline, c.name);
    Service {
        metadata: metadata(pipeline, &name, c.name),
        spec: Some(ServiceSpec {
            selector: Some(selector(pipeline, c.name)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// Every public route on the one host (SPEC §2): path, match, component.
/// `/orders` and `/inventory` go to orders-api, which hands `POST /orders`
/// to the producer (a plain Ingress cannot route by method, ADR 0006);
/// `/analytics`, the console under `/pipeline` and the dashboard at `/`
/// (exactly) go to analytics; the compatibility routes of the replaced
/// systems (docs/compatibility.md) go where their handlers are. Nothing else
/// is routed, so no service's operational endpoints are public.
pub const ROUTES: [(&str, PathMatch, &str); 8] = [
    ("/orders", PathMatch::Prefix, "orders-api"),
    ("/inventory", PathMatch::Prefix, "orders-api"),
    ("/analytics", PathMatch::Prefix, "analytics"),
    ("/pipeline", PathMatch::Prefix, "analytics"),
    ("/api/v1", PathMatch::Prefix, "producer"),
    ("/order", PathMatch::Exact, "producer"),
    ("/order/seed", PathMatch::Exact, "orders-api"),
    // `/` exactly: a `/` prefix would publish /metrics, /readyz and
    // /openapi.json too.
    ("/", PathMatch::Exact, "analytics"),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathMatch {
    Prefix,
    Exact,
}

pub fn ingress(pipeline: &OrderPipeline) -> Option<Ingress> {
    let spec = &pipeline.spec.ingress;
    if !spec.enabled {
        return None;
    }
    let name = object_name(pipeline, "ingress");
    let path = |(path, kind, component): &(&str, PathMatch, &str)| HTTPIngressPath {
        path: Some((*path).into()),
        path_type: match kind {
            PathMatch::Exact => "Exact",
            PathMatch::Prefix => "Prefix",
        }
        .into(),
        backend: IngressBackend {
            service: Some(IngressServiceBackend {
                name: object_name(pipeline, component),
                port: Some(ServiceBackendPort {
                    name: Some("http".into()),
                    ..ServiceBackendPort::default()
                }),
            }),
            ..IngressBackend::default()
        },
    };
    let tls = spec
        .tls_secret_name
        .as_ref()
        .filter(|s| !s.is_empty())
        .map(|secret| {
            vec![IngressTLS {
                hosts: Some(vec![spec.host.clone()]),
                secret_name: Some(secret.clone()),
            }]
        });
    Some(Ingress {
        metadata: metadata(pipeline, &name, "ingress"),
        spec: Some(IngressSpec {
            ingress_class_name: spec.class_name.clone(),
            rules: Some(vec![IngressRule {
                host: Some(spec.host.clone()),
                http: Some(HTTPIngressRuleValue {
                    paths: ROUTES.iter().map(path).collect(),
                }),
            }]),
            tls,
            ..IngressSpec::default()
        }),
        ..Ingress::default()
    })
}

/// The Gateway API's HTTPRoute (not in k8s-openapi).
pub fn http_route_resource() -> ApiResource {
    ApiResource {
        group: "gateway.networking.k8s.io".into(),
        version: "v1".into(),
        api_version: "gateway.networking.k8s.io/v1".into(),
        kind: "HTTPRoute".into(),
        plural: "httproutes".into(),
    }
}

/// The Gateway API route, when enabled: the same paths as the Ingress, and
/// `POST /orders` matched by method to the producer (an exact path with a
/// method outranks the `/orders` prefix).
pub fn http_route(pipeline: &OrderPipeline) -> Option<DynamicObject> {
    let spec = &pipeline.spec.gateway;
    let parent = spec.parent_ref.as_ref().filter(|_| spec.enabled)?;
    let name = object_name(pipeline, "route");
    let backend = |component: &str| json!([{"name": object_name(pipeline, component), "port": 80}]);
    let mut parent_ref = json!({"name": parent.name});
    if let Some(ns) = &parent.namespace {
        parent_ref["namespace"] = json!(ns);
    }
    if let Some(section) = &parent.section_name {
        parent_ref["sectionName"] = json!(section);
    }
    // `POST /orders` first, then one rule per route of [`ROUTES`].
    let mut rules = vec![json!({
        "matches": [{"path": {"type": "Exact", "value": "/orders"}, "method": "POST"}],
        "backendRefs": backend("producer"),
    })];
    rules.extend(ROUTES.iter().map(|(path, kind, component)| {
        let kind = match kind {
            PathMatch::Exact => "Exact",
            PathMatch::Prefix => "PathPrefix",
        };
        json!({
            "matches": [{"path": {"type": kind, "value": path}}],
            "backendRefs": backend(component),
        })
    }));
    let mut route_spec = json!({"parentRefs": [parent_ref], "rules": rules});
    if !spec.hostnames.is_empty() {
        route_spec["hostnames"] = json!(spec.hostnames);
    }
    let mut route =
        DynamicObject::new(&name, &http_route_resource()).data(json!({"spec": route_spec}));
    route.metadata = metadata(pipeline, &name, "route");
    Some(route)
}

/// One object a pipeline owns; serializes as the object itself.
// A dozen per reconcile: boxing the larger variants would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, serde::Serialize)]
#[serde(untagged)]
pub enum Owned {
    ConfigMap(ConfigMap),
    Deployment(Deployment),
    Service(Service),
    Ingress(Ingress),
    HttpRoute(DynamicObject),
}

impl Owned {
    /// As it is sent to the API server (and printed by `render`).
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).expect("Kubernetes objects serialize")
    }
}

/// Everything the pipeline owns, in the order it is applied.
pub fn owned(pipeline: &OrderPipeline) -> Vec<Owned> {
    let mut objects = vec![Owned::ConfigMap(config_map(pipeline))];
    objects.extend(
        COMPONENTS
            .iter()
            .map(|c| Owned::Deployment(deployment(pipeline, c))),
    );
    objects.extend(
        COMPONENTS
            .iter()
            .filter(|c| c.stage.is_none())
            .map(|c| Owned::Service(service(pipeline, c))),
    );
    objects.extend(ingress(pipeline).map(Owned::Ingress));
    objects.extend(http_route(pipeline).map(Owned::HttpRoute));
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

    #[test]
    fn the_config_map_names_the_otlp_protocol_beside_the_endpoint() {
        let none = config_data(&pipeline(MINIMAL));
        assert!(!none.contains_key("OTEL_EXPORTER_OTLP_ENDPOINT"));
        assert!(!none.contains_key("OTEL_EXPORTER_OTLP_PROTOCOL"));
        for (telemetry, protocol) in [
            (r#"{otlpEndpoint: "http://c:4317"}"#, "grpc"),
            (r#"{otlpEndpoint: "http://c:4318"}"#, "http/protobuf"),
            (
                r#"{otlpEndpoint: "http://c:4318", otlpProtocol: grpc}"#,
                "grpc",
            ),
        ] {
            let data = config_data(&pipeline(&format!("{MINIMAL}  telemetry: {telemetry}\n")));
            assert_eq!(data["OTEL_EXPORTER_OTLP_PROTOCOL"], protocol, "{telemetry}");
        }
    }

    fn owned_json(p: &OrderPipeline) -> Vec<Value> {
        owned(p).iter().map(Owned::to_value).collect()
    }

    fn json_of<T: serde::Serialize>(object: T) -> Value {
        serde_json::to_value(object).unwrap()
    }

    fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
        objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    }

    #[test]
    fn every_object_is_owned_by_the_pipeline_and_labelled() {
        let p = pipeline(MINIMAL);
        let objects = owned_json(&p);
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
        let objects = owned_json(&pipeline(MINIMAL));
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
        let objects = owned_json(&pipeline(MINIMAL));
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
        for o in owned_json(&pipeline(MINIMAL))
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
    fn the_intake_path_outweighs_the_back_end_three_to_one() {
        let objects = owned_json(&pipeline(MINIMAL));
        let cpu = |name: &str| {
            let d = find(&objects, "Deployment", &format!("main-{name}"));
            let c = &d["spec"]["template"]["spec"]["containers"][0]["resources"];
            assert_eq!(c["limits"]["cpu"], "1", "{name}");
            c["requests"]["cpu"].as_str().unwrap().to_owned()
        };
        for intake in ["producer", "orders-api"] {
            assert_eq!(cpu(intake), "300m");
        }
        for back_end in std::iter::once("analytics").chain(STAGES.iter().map(|s| s.name)) {
            assert_eq!(cpu(back_end), "100m");
        }
    }

    #[test]
    fn a_config_change_changes_the_pod_template() {
        let before = pipeline(MINIMAL);
        let mut after = before.clone();
        after.spec.kafka.bootstrap_servers = "kafka-2:9092".into();
        let hash = |p: &OrderPipeline| {
            json_of(deployment(p, &COMPONENTS[0]))["spec"]["template"]["metadata"]["annotations"]
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
        let route = json_of(http_route(&p).unwrap());
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
        assert_eq!(rules.len(), 1 + ROUTES.len());
        let find = |path: &str| {
            rules
                .iter()
                .find(|r| {
                    r["matches"][0]["path"]["value"] == path
                        && r["matches"][0].get("method").is_none()
                })
                .unwrap_or_else(|| panic!("no rule for {path}"))
        };
        assert_eq!(
            find("/analytics")["backendRefs"][0]["name"],
            "main-analytics"
        );
        assert_eq!(
            find("/pipeline")["backendRefs"][0]["name"],
            "main-analytics"
        );
        assert_eq!(find("/api/v1")["backendRefs"][0]["name"], "main-producer");
        assert_eq!(find("/order")["matches"][0]["path"]["type"], "Exact");
        assert_eq!(
            find("/order/seed")["backendRefs"][0]["name"],
            "main-orders-api"
        );
        assert_eq!(find("/")["matches"][0]["path"]["type"], "Exact");
        assert_eq!(owned_json(&p).last().unwrap()["kind"], "HTTPRoute");
    }

    #[test]
    fn the_ingress_routes_every_endpoint_on_one_host_with_tls() {
        let mut p = pipeline(MINIMAL);
        p.spec.ingress.enabled = true;
        p.spec.ingress.host = "orders.example.com".into();
        p.spec.ingress.class_name = Some("nginx".into());
        p.spec.ingress.tls_secret_name = Some("orders-tls".into());
        let ingress = json_of(ingress(&p).unwrap());
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
                ("/pipeline".into(), "main-analytics".into()),
                ("/api/v1".into(), "main-producer".into()),
                ("/order".into(), "main-producer".into()),
                ("/order/seed".into(), "main-orders-api".into()),
                ("/".into(), "main-analytics".into()),
            ]
        );
        let types: Vec<&str> = ingress["spec"]["rules"][0]["http"]["paths"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["pathType"].as_str().unwrap())
            .collect();
        assert_eq!(
            types,
            ["Prefix", "Prefix", "Prefix", "Prefix", "Prefix", "Exact", "Exact", "Exact"],
            "/ exactly: /metrics stays private"
        );
        assert_eq!(ingress["spec"]["tls"][0]["secretName"], "orders-tls");
        assert_eq!(ingress["spec"]["ingressClassName"], "nginx");
        // An empty TLS secret name means no TLS.
        p.spec.ingress.tls_secret_name = Some(String::new());
        assert!(json_of(super::ingress(&p).unwrap())["spec"]
            .get("tls")
            .is_none());
    }
}
