//! The consumer binary: runs one pipeline stage per process, each stage its
//! own consumer group (`orderflow-<stage>`), on the shared [`runner`].

use std::time::Duration;

use axum::Router;
use clap::{Parser, ValueEnum};
use orderflow_platform::config::{HttpArgs, KafkaArgs, MongoArgs, TopicArgs};
pub use orderflow_platform::http::Running;
use orderflow_platform::http::{self, Ops};
use orderflow_platform::shutdown::CancellationToken;
use prometheus_client::registry::Registry;
use rdkafka::consumer::Consumer;

pub mod persist;
pub mod runner;

use runner::{Runner, RunnerConfig, RunnerMetrics};

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum StageName {
    Persist,
}

impl StageName {
    pub fn as_str(self) -> &'static str {
        match self {
            StageName::Persist => "persist",
        }
    }
}

#[derive(Parser, Debug, Clone)]
#[command(name = "consumer", about = "orderflow pipeline stage")]
pub struct Args {
    /// The stage this process runs.
    #[arg(long, env = "STAGE", value_enum)]
    pub stage: StageName,
    /// Port of the health, readiness and metrics endpoints.
    #[arg(long, env = "CONSUMER_PORT", default_value_t = 3010)]
    pub port: u16,
    /// Consumer group; `orderflow-<stage>` when empty.
    #[arg(long, env = "CONSUMER_GROUP", default_value = "")]
    pub group: String,
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub topics: TopicArgs,
    #[command(flatten)]
    pub mongo: MongoArgs,
    /// Largest batch of messages made durable together.
    #[arg(long, env = "BATCH_SIZE", default_value_t = 500)]
    pub batch_size: usize,
    /// How long to wait for a batch to fill once its first message arrived.
    #[arg(long, env = "BATCH_WAIT", default_value = "20ms", value_parser = humantime::parse_duration)]
    pub batch_wait: Duration,
    /// Longest pause between retries of a transient failure.
    #[arg(long, env = "MAX_BACKOFF", default_value = "30s", value_parser = humantime::parse_duration)]
    pub max_backoff: Duration,
    /// Longest a stage may spend on one batch before retrying it.
    #[arg(long, env = "BATCH_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub batch_timeout: Duration,
    /// Reject products the catalogue does not know (persist).
    #[arg(long, env = "STRICT_CATALOGUE", default_value_t = false, action = clap::ArgAction::Set)]
    pub strict_catalogue: bool,
}

pub async fn start(args: Args, shutdown: CancellationToken) -> anyhow::Result<Running> {
    let stage = args.stage.as_str();
    let group = if args.group.is_empty() {
        format!("orderflow-{stage}")
    } else {
        args.group.clone()
    };
    let client_id = format!("orderflow-{stage}-{}", std::process::id());
    let db = orderflow_platform::mongo::connect(&args.mongo, &client_id).await?;
    let producer =
        orderflow_platform::kafka::producer(&args.kafka, &client_id, Duration::from_secs(30))?;
    let consumer = orderflow_platform::kafka::consumer(&args.kafka, &client_id, &group)?;
    let mut registry = Registry::with_prefix(format!("orderflow_{stage}"));
    let metrics = RunnerMetrics::register(&mut registry);
    let config = RunnerConfig {
        stage,
        dlq_topic: args.topics.dlq.clone(),
        batch_size: args.batch_size.max(1),
        batch_wait: args.batch_wait,
        max_backoff: args.max_backoff,
        batch_timeout: args.batch_timeout,
    };

    let checks = vec![
        orderflow_platform::mongo::readiness(&db),
        orderflow_platform::kafka::readiness(&producer),
    ];
    let app = http::with_ops(
        Router::new(),
        Ops {
            service: "consumer",
            openapi: include_str!("../openapi.json"),
            checks,
            registry,
        },
    );
    let listener = http::bind(&args.http.bind, args.port).await?;
    let addr = listener.local_addr()?;
    let grace = args.http.shutdown_grace;

    let worker = match args.stage {
        StageName::Persist => {
            if let Err(e) = orderflow_platform::mongo::ensure_order_indexes(&db).await {
                // Keep going: the server may come up later; writes retry.
                tracing::warn!(error = %e, "indexes not ensured at start-up");
            }
            consumer.subscribe(&[args.topics.orders.as_str()])?;
            let stage = persist::Persist::new(
                &db,
                args.topics.validated.clone(),
                args.topics.notifications.clone(),
                args.strict_catalogue,
            );
            let runner = Runner {
                stage,
                consumer,
                producer,
                config,
                metrics,
            };
            let token = shutdown.clone();
            tokio::spawn(async move { runner.run(token).await })
        }
    };
    tracing::info!(%addr, stage, %group, "stage running");

    let token = shutdown.clone();
    let task = tokio::spawn(async move {
        let http_task = tokio::spawn(http::serve(listener, app, token.clone(), grace));
        let worked = worker.await?;
        // The worker only ends on shutdown or a fatal error; stop HTTP too.
        token.cancel();
        http_task.await??;
        worked
    });
    Ok(Running {
        addr,
        shutdown,
        task,
    })
}
