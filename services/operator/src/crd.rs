//! The `OrderPipeline` custom resource (SPEC §5), `orderflow.dev/v1alpha1`.
//! The CRD YAML is generated from these types (`crdgen`); the copies in
//! `k8s/` must equal its output (a test checks).

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use orderflow_platform::topology::{self, TopicRole};
use serde::{Deserialize, Serialize};

#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "orderflow.dev",
    version = "v1alpha1",
    kind = "OrderPipeline",
    plural = "orderpipelines",
    shortname = "opl",
    category = "orderflow",
    namespaced,
    status = "OrderPipelineStatus",
    doc = "An order-processing pipeline: its Kafka topics, services, stages and their autoscaling.",
    printcolumn = r#"{"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name": "Lag", "type": "integer", "jsonPath": ".status.totalLag"}"#,
    printcolumn = r#"{"name": "Replicas", "type": "integer", "jsonPath": ".status.consumerReplicas"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct OrderPipelineSpec {
    pub image: ImageSpec,
    pub kafka: KafkaSpec,
    pub mongodb: MongoSpec,
    pub redis: RedisSpec,
    #[serde(default)]
    pub topics: TopicsSpec,
    #[serde(default)]
    pub services: ServicesSpec,
    #[serde(default)]
    pub stages: StagesSpec,
    #[serde(default)]
    pub autoscaling: AutoscalingSpec,
    #[serde(default)]
    pub ingress: IngressSpec,
    #[serde(default)]
    pub gateway: GatewaySpec,
    #[serde(default)]
    pub telemetry: TelemetrySpec,
    #[serde(default)]
    pub topic_deletion_policy: TopicDeletionPolicy,
    /// A Secret whose keys become environment variables of every service
    /// (`API_TOKENS`, `SMTP_URL`, `WEBHOOK_URL`, `WEBHOOK_SECRET`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_secret_name: Option<String>,
}

impl TopicSpec {
    /// The topic's name: its own, else `default`.
    pub fn name_or<'a>(&'a self, default: &'a str) -> &'a str {
        self.name.as_deref().unwrap_or(default)
    }
}

impl OrderPipelineSpec {
    /// (stage, its bounds, the topic it consumes) of every stage, in
    /// pipeline order ([`topology::STAGES`]).
    pub fn stages(&self) -> [(&'static topology::Stage, &StageSpec, &str); 4] {
        let s = &self.stages;
        let bounds = [&s.persist, &s.inventory, &s.payment, &s.notify];
        std::array::from_fn(|i| {
            let stage = &topology::STAGES[i];
            (stage, bounds[i], self.topics.name(stage.input))
        })
    }
}

#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ImageSpec {
    #[x_kube(validation = Rule::new("self != ''").message("repository must not be empty"))]
    pub repository: String,
    pub tag: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_policy: Option<String>,
}

/// A key of a Secret in the pipeline's namespace.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
}

#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KafkaSpec {
    #[x_kube(validation = Rule::new("self != ''").message("bootstrapServers must not be empty"))]
    pub bootstrap_servers: String,
    /// Extra librdkafka settings (`security.protocol`, `sasl.mechanism`, …)
    /// from a Secret key holding `key=value,…`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_secret_ref: Option<SecretKeyRef>,
}

#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MongoSpec {
    pub uri_secret_ref: SecretKeyRef,
    #[serde(default = "default_database")]
    pub database: String,
}

fn default_database() -> String {
    "orderflow".into()
}

#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RedisSpec {
    pub url_secret_ref: SecretKeyRef,
}

#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TopicSpec {
    /// The topic's name; the default name of its role when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[schemars(range(min = 1, max = 1000))]
    pub partitions: i32,
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 10))]
    pub replication_factor: i32,
    /// Topic configuration (`retention.ms`, `cleanup.policy`, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,
}

fn one() -> i32 {
    1
}

impl TopicSpec {
    fn with(partitions: i32) -> Self {
        TopicSpec {
            name: None,
            partitions,
            replication_factor: 1,
            config: BTreeMap::new(),
        }
    }
}

/// The six topics ([`topology::TOPICS`]: default names and partitions).
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TopicsSpec {
    #[serde(default = "orders_topic")]
    pub orders: TopicSpec,
    #[serde(default = "validated_topic")]
    pub validated: TopicSpec,
    #[serde(default = "inventory_topic")]
    pub inventory: TopicSpec,
    #[serde(default = "payment_topic")]
    pub payment: TopicSpec,
    #[serde(default = "notifications_topic")]
    pub notifications: TopicSpec,
    #[serde(default = "dlq_topic")]
    pub dlq: TopicSpec,
}

fn default_topic(role: TopicRole) -> TopicSpec {
    TopicSpec::with(topology::topic(role).partitions)
}
fn orders_topic() -> TopicSpec {
    default_topic(TopicRole::Orders)
}
fn validated_topic() -> TopicSpec {
    default_topic(TopicRole::Validated)
}
fn inventory_topic() -> TopicSpec {
    default_topic(TopicRole::Inventory)
}
fn payment_topic() -> TopicSpec {
    default_topic(TopicRole::Payment)
}
fn notifications_topic() -> TopicSpec {
    default_topic(TopicRole::Notifications)
}
fn dlq_topic() -> TopicSpec {
    default_topic(TopicRole::Dlq)
}

impl Default for TopicsSpec {
    fn default() -> Self {
        TopicsSpec {
            orders: orders_topic(),
            validated: validated_topic(),
            inventory: inventory_topic(),
            payment: payment_topic(),
            notifications: notifications_topic(),
            dlq: dlq_topic(),
        }
    }
}

impl TopicsSpec {
    pub fn get(&self, role: TopicRole) -> &TopicSpec {
        match role {
            TopicRole::Orders => &self.orders,
            TopicRole::Validated => &self.validated,
            TopicRole::Inventory => &self.inventory,
            TopicRole::Payment => &self.payment,
            TopicRole::Notifications => &self.notifications,
            TopicRole::Dlq => &self.dlq,
        }
    }

    /// The topic's name: the spec's, else the default.
    pub fn name(&self, role: TopicRole) -> &str {
        self.get(role).name_or(topology::topic(role).name)
    }

    /// (table entry, spec) of every topic.
    pub fn all(&self) -> [(&'static topology::Topic, &TopicSpec); 6] {
        std::array::from_fn(|i| {
            let t = &topology::TOPICS[i];
            (t, self.get(t.role))
        })
    }
}

#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    #[schemars(range(min = 0, max = 100))]
    pub replicas: i32,
}

#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServicesSpec {
    #[serde(default = "two_replicas")]
    pub producer: ServiceSpec,
    #[serde(default = "two_replicas")]
    pub orders_api: ServiceSpec,
    #[serde(default = "one_replica")]
    pub analytics: ServiceSpec,
}

fn two_replicas() -> ServiceSpec {
    ServiceSpec { replicas: 2 }
}
fn one_replica() -> ServiceSpec {
    ServiceSpec { replicas: 1 }
}

impl Default for ServicesSpec {
    fn default() -> Self {
        ServicesSpec {
            producer: two_replicas(),
            orders_api: two_replicas(),
            analytics: one_replica(),
        }
    }
}

/// Autoscaling bounds of one stage.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("minReplicas must not exceed maxReplicas"))]
pub struct StageSpec {
    #[schemars(range(min = 0, max = 1000))]
    pub min_replicas: i32,
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// Lag one replica is expected to keep up with.
    #[schemars(range(min = 1))]
    pub lag_per_replica: i64,
}

fn stage_default() -> StageSpec {
    StageSpec {
        min_replicas: 1,
        max_replicas: 12,
        lag_per_replica: 1000,
    }
}

#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StagesSpec {
    #[serde(default = "stage_default")]
    pub persist: StageSpec,
    #[serde(default = "stage_default")]
    pub inventory: StageSpec,
    #[serde(default = "stage_default")]
    pub payment: StageSpec,
    #[serde(default = "stage_default")]
    pub notify: StageSpec,
}

impl Default for StagesSpec {
    fn default() -> Self {
        StagesSpec {
            persist: stage_default(),
            inventory: stage_default(),
            payment: stage_default(),
            notify: stage_default(),
        }
    }
}

#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingSpec {
    /// How often lag is measured (a duration such as `15s`).
    #[serde(default = "poll_interval")]
    pub poll_interval: String,
    /// How long lag must stay low before a stage scales down.
    #[serde(default = "stabilization")]
    pub scale_down_stabilization: String,
}

fn poll_interval() -> String {
    "15s".into()
}
fn stabilization() -> String {
    "300s".into()
}

impl Default for AutoscalingSpec {
    fn default() -> Self {
        AutoscalingSpec {
            poll_interval: poll_interval(),
            scale_down_stabilization: stabilization(),
        }
    }
}

#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!self.enabled || self.host != ''").message("an enabled ingress needs a host"))]
pub struct IngressSpec {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default)]
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    /// TLS from this Secret when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret_name: Option<String>,
}

/// Exposure through the Gateway API (an HTTPRoute), where a Gateway is
/// installed: it routes by method, so `POST /orders` goes straight to the
/// producer.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!self.enabled || has(self.parentRef)").message("an enabled gateway route needs a parentRef"))]
pub struct GatewaySpec {
    #[serde(default)]
    pub enabled: bool,
    /// The Gateway (and optionally its listener) the route attaches to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_ref: Option<GatewayParentRef>,
    /// Host names the route answers; the Gateway's when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
}

#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GatewayParentRef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
}

#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TelemetrySpec {
    /// The collector's OTLP endpoint, e.g. `http://otel-collector:4317`
    /// (gRPC) or `http://otel-collector:4318` (HTTP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    /// How the services export to it. Unset: gRPC when the endpoint's port
    /// is 4317 (the OTLP/gRPC port), HTTP (protobuf) otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp_protocol: Option<OtlpProtocol>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub sampling_ratio: Option<f64>,
}

#[derive(schemars::JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OtlpProtocol {
    #[serde(rename = "grpc")]
    Grpc,
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

impl OtlpProtocol {
    /// The value of `OTEL_EXPORTER_OTLP_PROTOCOL`.
    pub fn as_env(self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::HttpProtobuf => "http/protobuf",
        }
    }
}

impl TelemetrySpec {
    /// The protocol the services use: the one named, else gRPC for an
    /// endpoint on port 4317 and HTTP (protobuf) for any other.
    pub fn protocol(&self) -> OtlpProtocol {
        if let Some(p) = self.otlp_protocol {
            return p;
        }
        // The authority's port: after the scheme, before any path.
        let port = self.otlp_endpoint.as_deref().and_then(|e| {
            let authority = e.split_once("://").map_or(e, |(_, rest)| rest);
            let authority = authority.split('/').next()?;
            authority.rsplit_once(':')?.1.parse::<u16>().ok()
        });
        if port == Some(4317) {
            OtlpProtocol::Grpc
        } else {
            OtlpProtocol::HttpProtobuf
        }
    }
}

#[derive(
    schemars::JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum TopicDeletionPolicy {
    /// Deleting the pipeline keeps its topics (and their data).
    #[default]
    Retain,
    /// Deleting the pipeline deletes its topics (through a finalizer).
    Delete,
}

#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct OrderPipelineStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub topics: Vec<TopicStatus>,
    #[serde(default)]
    pub stages: Vec<StageStatus>,
    #[serde(default)]
    pub total_lag: i64,
    #[serde(default)]
    pub consumer_replicas: i32,
}

/// A condition as Kubernetes APIs report them.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    pub reason: String,
    #[serde(default)]
    pub message: String,
    pub last_transition_time: String,
}

#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TopicStatus {
    pub name: String,
    pub partitions: i32,
    pub ready: bool,
}

#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StageStatus {
    pub name: String,
    pub replicas: i32,
    pub desired_replicas: i32,
    pub lag: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<String>,
    #[serde(default)]
    pub reason: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stuck_partitions: Vec<i32>,
}

/// The CRD as YAML, keys sorted, so the output is the same whichever
/// features of `serde_json` the build unified (`preserve_order` or not).
pub fn crd_yaml() -> String {
    fn sorted(v: serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(map) => {
                let mut entries: Vec<(String, serde_json::Value)> = map.into_iter().collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                serde_json::Value::Object(
                    entries.into_iter().map(|(k, v)| (k, sorted(v))).collect(),
                )
            }
            serde_json::Value::Array(items) => {
                serde_json::Value::Array(items.into_iter().map(sorted).collect())
            }
            other => other,
        }
    }
    let crd = serde_json::to_value(<OrderPipeline as kube::CustomResourceExt>::crd())
        .expect("the CRD serializes");
    serde_yaml::to_string(&sorted(crd)).expect("the CRD serializes")
}

#[cfg(test)]
mod telemetry_tests {
    use super::{OtlpProtocol, TelemetrySpec};

    fn spec(endpoint: &str, protocol: Option<OtlpProtocol>) -> TelemetrySpec {
        TelemetrySpec {
            otlp_endpoint: Some(endpoint.into()),
            otlp_protocol: protocol,
            sampling_ratio: None,
        }
    }

    #[test]
    fn the_protocol_is_the_one_named_or_follows_the_port() {
        use OtlpProtocol::*;
        assert_eq!(spec("http://otel-collector:4317", None).protocol(), Grpc);
        assert_eq!(spec("otel-collector:4317", None).protocol(), Grpc);
        assert_eq!(
            spec("http://otel-collector:4318", None).protocol(),
            HttpProtobuf
        );
        assert_eq!(spec("http://otel-collector", None).protocol(), HttpProtobuf);
        assert_eq!(spec("http://c:4317/x:1", None).protocol(), Grpc);
        assert_eq!(spec("http://c:9000", Some(Grpc)).protocol(), Grpc);
        assert_eq!(
            spec("http://c:4317", Some(HttpProtobuf)).protocol(),
            HttpProtobuf
        );
        let yaml: TelemetrySpec =
            serde_json::from_str(r#"{"otlpEndpoint":"http://c:1","otlpProtocol":"grpc"}"#).unwrap();
        assert_eq!(yaml.protocol(), Grpc);
        assert!(serde_json::from_str::<TelemetrySpec>(r#"{"otlpProtocol":"http/json"}"#).is_err());
    }
}
