//! Creates the pipeline's Kafka topics with their default partition counts.
//! Used by the scripts until the operator manages topics; idempotent.

use clap::Parser;
use orderflow_platform::config::{KafkaArgs, TopicArgs};

#[derive(Parser)]
#[command(about = "Create any missing orderflow Kafka topics")]
struct Args {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    topics: TopicArgs,
    /// Replication factor of new topics.
    #[arg(long, env = "KAFKA_REPLICATION_FACTOR", default_value_t = 1)]
    replication: i32,
    /// Partitions of every topic instead of the per-topic defaults.
    #[arg(long, env = "KAFKA_PARTITIONS")]
    partitions: Option<i32>,
}

fn main() -> anyhow::Result<()> {
    orderflow_platform::runtime::run(async_main())
}

async fn async_main() -> anyhow::Result<()> {
    let args = Args::parse();
    let admin = orderflow_platform::kafka::admin(&args.kafka, "orderflow-topics")?;
    let topics: Vec<(&str, i32)> = args
        .topics
        .all()
        .into_iter()
        .map(|(name, p)| (name, args.partitions.unwrap_or(p)))
        .collect();
    orderflow_platform::kafka::ensure_topics(&admin, &topics, args.replication).await?;
    for (name, partitions) in &topics {
        println!("topic {name} ready ({partitions} partitions when created)");
    }
    Ok(())
}
