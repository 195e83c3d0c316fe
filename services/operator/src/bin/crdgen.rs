//! Prints the OrderPipeline CRD as YAML: `cargo run -p orderflow-operator --bin crdgen > k8s/crd.yaml`.

fn main() {
    print!("{}", orderflow_operator::crd::crd_yaml());
}
