//! Prints the objects the operator would own for an OrderPipeline (a YAML
//! file, `-` for stdin), as one YAML stream: what `scripts/check-manifests`
//! validates with kubernetes-validate.

use std::io::Read;

use orderflow_operator::crd::OrderPipeline;

fn main() -> anyhow::Result<()> {
    let path = std::env::args().nth(1).unwrap_or_else(|| "-".into());
    let mut text = String::new();
    if path == "-" {
        std::io::stdin().read_to_string(&mut text)?;
    } else {
        text = std::fs::read_to_string(&path)?;
    }
    let mut pipeline: OrderPipeline = serde_yaml::from_str(&text)?;
    pipeline
        .metadata
        .namespace
        .get_or_insert_with(|| "default".into());
    pipeline
        .metadata
        .uid
        .get_or_insert_with(|| "00000000-0000-0000-0000-000000000000".into());
    for object in orderflow_operator::resources::owned(&pipeline) {
        print!("---\n{}", serde_yaml::to_string(&object)?);
    }
    Ok(())
}
