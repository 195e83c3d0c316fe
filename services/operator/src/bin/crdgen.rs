//! Prints the OrderPipeline CRD as YAML: `cargo run --bin crdgen > k8s/crd.yaml`.
use kube::CustomResourceExt;

fn main() {
    print!(
        "{}",
        serde_yaml::to_string(&orderflow_operator::crd::OrderPipeline::crd())
            .expect("the CRD serializes")
    );
}
