use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use orderflow_operator::broker::KafkaBrokers;
use orderflow_operator::controller::{self, Context};
use orderflow_operator::leader::{self, LeaseLock};
use orderflow_operator::metrics::Metrics;
use orderflow_platform::config::HttpArgs;
use orderflow_platform::http::{self, Ops};

#[derive(Parser, Debug)]
#[command(name = "operator", about = "The OrderPipeline operator")]
struct Args {
    /// Port of `/healthz`, `/readyz` and `/metrics`.
    #[arg(long, env = "OPERATOR_PORT", default_value_t = 8080)]
    port: u16,
    /// Namespace of the leader Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    #[arg(long, env = "LEASE_NAME", default_value = "orderflow-operator")]
    lease_name: String,
    #[arg(long, env = "LEASE_DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    lease_duration: Duration,
    /// This replica's name in the Lease and in Events (the pod name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    #[command(flatten)]
    http: HttpArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let telemetry = orderflow_platform::telemetry::init("operator");
    let shutdown = orderflow_platform::shutdown::on_signal();
    let client = kube::Client::try_default().await?;
    let identity = args.identity.clone().unwrap_or_else(|| {
        std::env::var("HOSTNAME").unwrap_or_else(|_| format!("operator-{}", std::process::id()))
    });

    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Metrics::register(&mut registry);
    let api_client = client.clone();
    let check: http::ReadinessCheck = (
        "kubernetes",
        Arc::new(move || {
            let client = api_client.clone();
            Box::pin(async move {
                client
                    .apiserver_version()
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
        }),
    );
    let app = http::with_ops(
        axum::Router::new(),
        Ops {
            service: "operator",
            openapi: include_str!("openapi.json"),
            checks: vec![check],
            registry,
        },
    );
    let server = http::launch("operator", &args.http, args.port, app, shutdown.clone()).await?;

    let ctx = Arc::new(Context::new(
        client.clone(),
        Arc::new(KafkaBrokers::default()),
        metrics.clone(),
        Some(identity.clone()),
    ));
    let lock = LeaseLock::new(
        kube::Api::namespaced(client, &args.lease_namespace),
        &args.lease_name,
        &identity,
        args.lease_duration,
    );
    leader::run(lock, metrics, shutdown.clone(), |stop| {
        controller::run(ctx.clone(), stop.cancelled_owned())
    })
    .await;
    shutdown.cancel();
    let served = server.task.await?;
    telemetry.shutdown();
    served
}
