//! The CRD in `k8s/` is the one the types generate, and the sample
//! OrderPipeline is a valid one. (Schema validation of the sample and of the
//! CRD itself runs in scripts/check-manifests, with kubernetes-validate.)

use kube::CustomResourceExt;
use orderflow_operator::crd::{OrderPipeline, OtlpProtocol, TopicDeletionPolicy};

fn repo_file(path: &str) -> String {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../");
    std::fs::read_to_string(format!("{root}{path}")).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn committed_crds_equal_the_generated_one() {
    let generated = orderflow_operator::crd::crd_yaml();
    for copy in ["k8s/crd.yaml", "charts/orderflow/crds/orderpipelines.yaml"] {
        assert_eq!(
            repo_file(copy),
            generated,
            "{copy} is stale: run `cargo run -p orderflow-operator --bin crdgen > {copy}`"
        );
    }
}

#[test]
fn committed_rbac_equals_the_generated_one() {
    assert_eq!(
        repo_file("k8s/rbac.yaml"),
        orderflow_operator::rbac::manifests_yaml("orderflow-system", &["orderflow"]),
        "k8s/rbac.yaml is stale: run `cargo run -p orderflow-operator --bin crdgen rbac > k8s/rbac.yaml`"
    );
}

#[test]
fn the_sample_pipeline_parses_with_every_field() {
    let sample: OrderPipeline =
        serde_yaml::from_str(&repo_file("k8s/sample-orderpipeline.yaml")).unwrap();
    let spec = &sample.spec;
    assert_eq!(spec.kafka.bootstrap_servers, "kafka:9092");
    assert_eq!(spec.topics.orders.partitions, 6);
    assert_eq!(spec.topics.orders.config["retention.ms"], "604800000");
    assert_eq!(spec.stages.payment.lag_per_replica, 500);
    assert!(spec.ingress.enabled);
    assert_eq!(spec.topic_deletion_policy, TopicDeletionPolicy::Retain);
    assert_eq!(spec.telemetry.otlp_protocol, Some(OtlpProtocol::Grpc));
}

#[test]
fn a_minimal_pipeline_gets_the_documented_defaults() {
    let minimal: OrderPipeline = serde_yaml::from_str(
        r#"
apiVersion: orderflow.dev/v1alpha1
kind: OrderPipeline
metadata: {name: tiny}
spec:
  image: {repository: orderflow, tag: "0.1.0"}
  kafka: {bootstrapServers: "kafka:9092"}
  mongodb: {uriSecretRef: {name: mongo, key: uri}}
  redis: {urlSecretRef: {name: redis, key: url}}
"#,
    )
    .unwrap();
    let spec = &minimal.spec;
    let partitions: Vec<(&str, i32)> = spec
        .topics
        .all()
        .iter()
        .map(|(topic, t)| (topic.name, t.partitions))
        .collect();
    assert_eq!(
        partitions,
        [
            ("orders", 6),
            ("orders.validated", 6),
            ("inventory.events", 6),
            ("payment.events", 6),
            ("notifications", 3),
            ("orders.dlq", 1)
        ]
    );
    assert_eq!(spec.mongodb.database, "orderflow");
    assert_eq!(spec.stages.persist.max_replicas, 12);
    assert_eq!(spec.services.producer.replicas, 2);
    assert_eq!(spec.autoscaling.scale_down_stabilization, "300s");
    assert_eq!(spec.topic_deletion_policy, TopicDeletionPolicy::Retain);
}

#[test]
fn the_schema_carries_the_cel_rules() {
    let crd = serde_json::to_string(&OrderPipeline::crd()).unwrap();
    assert!(crd.contains("self.minReplicas <= self.maxReplicas"));
    assert!(crd.contains("!self.enabled || self.host != ''"));
    assert!(
        crd.contains(r#""subresources":{"status":{}}"#),
        "status subresource"
    );
}
