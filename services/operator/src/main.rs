use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use orderflow_operator::broker::KafkaBrokers;
use orderflow_operator::controller::{self, Context};
use orderflow_operator::leader::{self, LeaseLock, Timings};
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
    /// How long the Lease holds without renewal.
    #[arg(long, env = "LEASE_DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    lease_duration: Duration,
    /// The leader stops when it could not renew for this long (shorter
    /// than the lease, so no standby takes over while it still works).
    #[arg(long, env = "LEASE_RENEW_DEADLINE", default_value = "10s", value_parser = humantime::parse_duration)]
    renew_deadline: Duration,
    /// Between renewals, and between a standby's attempts.
    #[arg(long, env = "LEASE_RETRY_PERIOD", default_value = "2s", value_parser = humantime::parse_duration)]
    retry_period: Duration,
    /// The namespaces whose pipelines this operator serves (comma-separated);
    /// empty: every namespace.
    #[arg(long, env = "WATCH_NAMESPACES", value_delimiter = ',', num_args = 0..)]
    watch_namespaces: Vec<String>,
    /// This replica's name in the Lease and in Events (the pod name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    #[command(flatten)]
    http: HttpArgs,
}

fn main() -> anyhow::Result<()> {
    orderflow_platform::runtime::run(async_main())
}

async fn async_main() -> anyhow::Result<()> {
    let args = Args::parse();
    let timings = Timings {
        duration: args.lease_duration,
        renew_deadline: args.renew_deadline,
        retry_period: args.retry_period,
    };
    timings.check().map_err(anyhow::Error::msg)?;
    let namespaces: Vec<String> = args
        .watch_namespaces
        .iter()
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
        .collect();
    let telemetry = orderflow_platform::telemetry::init("operator")?;
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
        timings,
    );
    leader::run(lock, metrics, shutdown.clone(), |stop| {
        controller::run(ctx.clone(), namespaces.clone(), stop.cancelled_owned())
    })
    .await;
    shutdown.cancel();
    let served = server.task.await?;
    telemetry.shutdown();
    served
}
