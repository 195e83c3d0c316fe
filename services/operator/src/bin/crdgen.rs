//! Prints the generated manifests the repository keeps copies of (a test
//! checks the copies):
//! - `crdgen` — the OrderPipeline CRD (`k8s/crd.yaml`, `charts/orderflow/crds/`);
//! - `crdgen rbac [NAMESPACE]` — the operator's ServiceAccount and RBAC
//!   (`k8s/rbac.yaml`, namespace `orderflow-system` by default).

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None | Some("crd") => print!("{}", orderflow_operator::crd::crd_yaml()),
        Some("rbac") => print!(
            "{}",
            orderflow_operator::rbac::manifests_yaml(
                args.get(1)
                    .map(String::as_str)
                    .unwrap_or("orderflow-system")
            )
        ),
        Some(other) => {
            eprintln!("usage: crdgen [crd | rbac [NAMESPACE]] (not {other:?})");
            std::process::exit(2);
        }
    }
}
