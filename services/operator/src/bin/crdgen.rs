//! Prints the generated manifests the repository keeps copies of (a test
//! checks the copies):
//! - `crdgen` — the OrderPipeline CRD (`k8s/crd.yaml`, `charts/orderflow/crds/`);
//! - `crdgen rbac [NAMESPACE [SERVED…]]` — the operator's ServiceAccount and
//!   RBAC (`k8s/rbac.yaml`: namespace `orderflow-system`, serving the
//!   pipelines of namespace `orderflow`; `-` for SERVED: every namespace).

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None | Some("crd") => print!("{}", orderflow_operator::crd::crd_yaml()),
        Some("rbac") => {
            let namespace = args
                .get(1)
                .map(String::as_str)
                .unwrap_or("orderflow-system");
            let mut served: Vec<&str> = args.iter().skip(2).map(String::as_str).collect();
            if served.is_empty() {
                served.push("orderflow");
            }
            served.retain(|n| *n != "-");
            print!(
                "{}",
                orderflow_operator::rbac::manifests_yaml(namespace, &served)
            )
        }
        Some(other) => {
            eprintln!("usage: crdgen [crd | rbac [NAMESPACE [SERVED...]]] (not {other:?})");
            std::process::exit(2);
        }
    }
}
