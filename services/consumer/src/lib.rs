//! The consumer binary: runs one pipeline stage per process, each stage its
//! own consumer group (`orderflow-<stage>`), on the shared [`runner`].

use std::time::Duration;

use axum::Router;
use clap::{Parser, ValueEnum};
use orderflow_domain::payment::DeclineRule;
use orderflow_domain::Money;
use orderflow_platform::config::{HttpArgs, KafkaArgs, MongoArgs, TopicArgs};
pub use orderflow_platform::http::Running;
use orderflow_platform::http::{self, Ops};
use orderflow_platform::shutdown::CancellationToken;
use orderflow_platform::topology;
use prometheus_client::registry::Registry;
use rdkafka::consumer::Consumer;

pub mod event;
pub mod gather;
pub mod inventory;
pub mod notify;
pub mod payment;
pub mod persist;
pub mod replay;
pub mod runner;
pub mod stage;

use runner::{Runner, RunnerConfig, RunnerMetrics};

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum StageName {
    Persist,
    Inventory,
    Payment,
    Notify,
}

impl StageName {
    /// The stage's entry in the pipeline's table.
    pub fn stage(self) -> &'static topology::Stage {
        &topology::STAGES[self as usize]
    }

    pub fn as_str(self) -> &'static str {
        self.stage().name
    }

    /// The topic the stage consumes.
    pub fn input(self, topics: &TopicArgs) -> &str {
        topics.name(self.stage().input)
    }

    /// `MAX_IN_FLIGHT` when it is not set: four batches for the stages
    /// whose pace is MongoDB's (a deeper queue lets the next batch fill
    /// while one is written), two for notify, whose pace is its deliveries
    /// (`NOTIFY_CONCURRENCY` at once): what it holds beyond them waits for
    /// a connection in memory. Two pairs of full-pipeline runs with notify
    /// at two batches: its peak RSS 26.6 MB against 29.6–30.5, its CPU per
    /// order 268–321 µs against 376–444, notifications handled 476–529/s
    /// against 386–448 (docs/benchmarks.md).
    pub fn default_in_flight(self, batch_size: usize) -> usize {
        let batches = match self {
            StageName::Notify => 2,
            StageName::Persist | StageName::Inventory | StageName::Payment => 4,
        };
        batches * batch_size.max(1)
    }

    /// `GATHER_CALLS` when it is not set. Inventory and payment wrote one
    /// lane's batch at a time anyway (their decisions are serialised), and
    /// persist's writes share MongoDB's two cores: one gathered call makes
    /// fewer, fuller transactions and round trips when orders arrive
    /// slowly over many partitions. Notify's pace is its deliveries, which
    /// a partition that hangs must not hold up for the others.
    pub fn default_gather_calls(self) -> usize {
        match self {
            StageName::Notify => 0,
            StageName::Persist | StageName::Inventory | StageName::Payment => 1,
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
    /// Messages this process holds at once, queued or in a batch, over all
    /// its partitions (the memory bound); when 0, 4 × BATCH_SIZE (notify:
    /// 2 ×, `StageName::default_in_flight`). A partition never holds more
    /// than two batches of it (and the message that found its queue full),
    /// so one that hangs leaves the rest to the others.
    #[arg(long, env = "MAX_IN_FLIGHT", default_value_t = 0)]
    pub max_in_flight: usize,
    /// Stage calls at once, each gathering the batches of every partition
    /// that were waiting (at most BATCH_SIZE messages a call); 0: each
    /// partition calls the stage on its own. Unset: 1 for the stages whose
    /// pace is MongoDB's, 0 for notify (`StageName::default_gather_calls`).
    #[arg(long, env = "GATHER_CALLS")]
    pub gather_calls: Option<usize>,
    /// How long to wait for a batch to fill once its first message arrived.
    #[arg(long, env = "BATCH_WAIT", default_value = "20ms", value_parser = humantime::parse_duration)]
    pub batch_wait: Duration,
    /// Longest pause between retries of a transient failure.
    #[arg(long, env = "MAX_BACKOFF", default_value = "30s", value_parser = humantime::parse_duration)]
    pub max_backoff: Duration,
    /// Longest a stage may spend on one batch before retrying it.
    #[arg(long, env = "BATCH_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub batch_timeout: Duration,
    /// How often the stage writes its counters to MongoDB (`stage_stats`,
    /// read by the pipeline console).
    #[arg(long, env = "STATS_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub stats_interval: Duration,
    /// Reject products the catalogue does not know (persist).
    #[arg(long, env = "STRICT_CATALOGUE", default_value_t = false, action = clap::ArgAction::Set)]
    pub strict_catalogue: bool,
    /// Share of payments the simulated gateway declines, 0–1, chosen by a
    /// hash of the orderId (payment).
    #[arg(long, env = "PAYMENT_DECLINE_RATE", default_value_t = 0.0)]
    pub payment_decline_rate: f64,
    /// Decline every payment above this amount (payment).
    #[arg(long, env = "PAYMENT_DECLINE_OVER")]
    pub payment_decline_over: Option<String>,
    /// How long one simulated charge takes (payment).
    #[arg(long, env = "PAYMENT_LATENCY", default_value = "20ms", value_parser = humantime::parse_duration)]
    pub payment_latency: Duration,
    /// Charges in flight at once (payment): with the 20-ms gateway, at
    /// most this many per 20 ms. 64 (3 200/s) held the whole pipeline's
    /// drain back while the machine idled (docs/benchmarks.md, 2026-12-06).
    #[arg(long, env = "PAYMENT_CONCURRENCY", default_value_t = 256)]
    pub payment_concurrency: usize,
    /// Delivery channels, comma-separated: log, smtp, webhook (notify).
    #[arg(
        long,
        env = "NOTIFY_CHANNELS",
        value_enum,
        value_delimiter = ',',
        default_value = "log"
    )]
    pub notify_channels: Vec<notify::Channel>,
    /// SMTP server, e.g. smtp://mail:25 or smtps://user:pass@mail:465 (notify).
    #[arg(long, env = "SMTP_URL", default_value = "smtp://127.0.0.1:2525")]
    pub smtp_url: String,
    /// Sender of the e-mails (notify).
    #[arg(
        long,
        env = "MAIL_FROM",
        default_value = "orderflow <orders@orderflow.local>"
    )]
    pub mail_from: String,
    /// Who gets low-stock alerts (notify).
    #[arg(long, env = "STAFF_EMAIL", default_value = "staff@orderflow.local")]
    pub staff_email: String,
    /// Customers are mailed at `<customerId>@<domain>` unless their id is an
    /// address (notify).
    #[arg(
        long,
        env = "CUSTOMER_EMAIL_DOMAIN",
        default_value = "customers.orderflow.local"
    )]
    pub customer_email_domain: String,
    /// Where webhook notifications are POSTed (notify).
    #[arg(long, env = "WEBHOOK_URL", default_value = "")]
    pub webhook_url: String,
    /// Key of the webhook's HMAC-SHA256 signature (notify).
    #[arg(
        long,
        env = "WEBHOOK_SECRET",
        default_value = "",
        hide_env_values = true
    )]
    pub webhook_secret: String,
    /// Delivery attempts per channel before the notification goes to the DLQ (notify).
    #[arg(long, env = "NOTIFY_ATTEMPTS", default_value_t = 5)]
    pub notify_attempts: u32,
    /// First pause between delivery attempts; doubles each time (notify).
    #[arg(long, env = "NOTIFY_BACKOFF", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub notify_backoff: Duration,
    /// Longest one SMTP or webhook delivery may take (notify).
    #[arg(long, env = "NOTIFY_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub notify_timeout: Duration,
    /// Notifications delivered at once (notify).
    #[arg(long, env = "NOTIFY_CONCURRENCY", default_value_t = 16)]
    pub notify_concurrency: usize,
    /// Instead of running: move the stage's consumer group to `earliest` or
    /// an RFC 3339 time on its input topic, then exit (replay; stop the
    /// stage first).
    #[arg(long)]
    pub replay_from: Option<replay::ReplayFrom>,
}

impl Args {
    /// The consumer group: the stage's (`orderflow-<stage>`) unless set.
    pub fn group(&self) -> String {
        if self.group.is_empty() {
            self.stage.stage().group.to_owned()
        } else {
            self.group.clone()
        }
    }

    fn decline_rule(&self) -> anyhow::Result<DeclineRule> {
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.payment_decline_rate),
            "PAYMENT_DECLINE_RATE must be between 0 and 1"
        );
        let over = match self.payment_decline_over.as_deref() {
            None | Some("") => None,
            Some(s) => {
                Some(Money::parse(s).map_err(|e| anyhow::anyhow!("PAYMENT_DECLINE_OVER: {e}"))?)
            }
        };
        Ok(DeclineRule {
            rate: self.payment_decline_rate,
            over,
        })
    }

    fn notify_config(&self) -> notify::NotifyConfig {
        notify::NotifyConfig {
            channels: self.notify_channels.clone(),
            smtp_url: self.smtp_url.clone(),
            mail_from: self.mail_from.clone(),
            staff_email: self.staff_email.clone(),
            customer_email_domain: self.customer_email_domain.clone(),
            webhook_url: self.webhook_url.clone(),
            webhook_secret: self.webhook_secret.clone(),
            attempts: self.notify_attempts,
            backoff: self.notify_backoff,
            timeout: self.notify_timeout,
            concurrency: self.notify_concurrency,
        }
    }
}

/// The `--replay-from` command: resets the group and reports where.
pub async fn replay(args: &Args, from: replay::ReplayFrom) -> anyhow::Result<()> {
    let group = args.group();
    let topic = args.stage.input(&args.topics);
    let positions = replay::reset_group(&args.kafka, &group, topic, from).await?;
    for (partition, offset) in positions {
        println!("{group} {topic}[{partition}] -> {offset}");
    }
    Ok(())
}

pub async fn start(args: Args, shutdown: CancellationToken) -> anyhow::Result<Running> {
    let stage = args.stage.as_str();
    let group = args.group();
    let client_id = format!("orderflow-{stage}-{}", std::process::id());
    let db = orderflow_platform::mongo::connect(&args.mongo, &client_id).await?;
    let producer =
        orderflow_platform::kafka::producer(&args.kafka, &client_id, Duration::from_secs(30))?;
    let consumer = orderflow_platform::kafka::consumer(&args.kafka, &client_id, &group)?;
    let mut registry = Registry::with_prefix(format!("orderflow_{stage}"));
    let metrics = RunnerMetrics::register(&mut registry, &consumer);
    producer.stats().register(&mut registry);
    let records_per_write = notify::records_per_write();
    if args.stage == StageName::Notify {
        registry.register(
            "records_per_write",
            "Delivery records each insert carried (the deliveries in flight share one)",
            records_per_write.clone(),
        );
    }
    // One stats document per process: the pod name where there is one.
    let member = format!(
        "{stage}/{}/{}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into()),
        std::process::id()
    );
    tokio::spawn(metrics.clone().report(
        db.clone(),
        stage,
        member,
        consumer.context().commit_failures.clone(),
        args.stats_interval,
        shutdown.clone(),
    ));
    let config = RunnerConfig {
        stage,
        group: group.clone(),
        dlq_topic: args.topics.dlq.clone(),
        batch_size: args.batch_size.max(1),
        max_in_flight: match args.max_in_flight {
            0 => args.stage.default_in_flight(args.batch_size),
            n => n,
        },
        batch_wait: args.batch_wait,
        max_backoff: args.max_backoff,
        batch_timeout: args.batch_timeout,
        gather_calls: args
            .gather_calls
            .unwrap_or_else(|| args.stage.default_gather_calls()),
    };

    // The stage consumes nothing, and is not ready, until the indexes it
    // relies on (the unique orderId above all) exist.
    let indexes = orderflow_platform::mongo::Indexes::ensure(&db, &shutdown).await;
    let checks = vec![
        orderflow_platform::mongo::readiness(&db),
        indexes.readiness(),
        orderflow_platform::kafka::readiness(std::sync::Arc::new(producer.clone())),
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

    let input = args.stage.input(&args.topics).to_owned();
    let topics = &args.topics;
    let token = shutdown.clone();
    macro_rules! run {
        ($stage:expr) => {{
            let runner = Runner {
                stage: $stage,
                consumer,
                producer,
                config,
                metrics,
            };
            tokio::spawn(async move {
                if !indexes.wait(&token).await {
                    return Ok(());
                }
                runner.consumer.subscribe(&[input.as_str()])?;
                runner.run(token).await
            })
        }};
    }
    let worker = match args.stage {
        StageName::Persist => run!(persist::Persist::new(
            &db,
            topics.validated.clone(),
            topics.notifications.clone(),
            args.strict_catalogue,
        )),
        StageName::Inventory => run!(inventory::Inventory::new(
            &db,
            topics.inventory.clone(),
            topics.notifications.clone(),
        )),
        StageName::Payment => run!(payment::Payment::new(
            &db,
            payment::Gateway {
                rule: args.decline_rule()?,
                latency: args.payment_latency,
                concurrency: args.payment_concurrency,
            },
            topics.payment.clone(),
            topics.notifications.clone(),
        )),
        StageName::Notify => run!(notify::Notify::new(
            &db,
            args.notify_config(),
            records_per_write
        )?),
    };
    tracing::info!(%addr, stage, %group, "stage running");

    let token = shutdown.clone();
    let task = tokio::spawn(async move {
        let (http_args, http_token) = (args.http.clone(), token.clone());
        let http_task =
            tokio::spawn(async move { http::serve(listener, app, http_token, &http_args).await });
        let worked = worker.await?;
        // The worker only ends on shutdown or a fatal error; stop HTTP too.
        token.cancel();
        http_task.await??;
        worked
    });
    let running = Running {
        addr,
        shutdown,
        task,
    };
    Ok(orderflow_platform::mongo::close_when_stopped(running, db))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stage_flag_names_its_entry_in_the_table() {
        let variants = StageName::value_variants();
        assert_eq!(variants.len(), topology::STAGES.len());
        for v in variants {
            assert_eq!(v.to_possible_value().unwrap().get_name(), v.as_str());
        }
    }

    #[test]
    fn notify_holds_two_batches_by_default_and_the_others_four() {
        assert_eq!(StageName::Notify.default_in_flight(500), 1000);
        for s in [StageName::Persist, StageName::Inventory, StageName::Payment] {
            assert_eq!(s.default_in_flight(500), 2000);
        }
        assert_eq!(
            StageName::Notify.default_in_flight(0),
            2,
            "a batch is at least one message"
        );
    }
}
