//! Configuration shared by the binaries: every value is a CLI flag and an
//! environment variable. The reference systems' variable names
//! (`KAFKA_BROKERS`, `KAFKA_TOPIC`, `MONGO_URL`, `REDIS_URL`, …) keep working.

use std::time::Duration;

use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct KafkaArgs {
    /// Comma-separated bootstrap servers.
    #[arg(
        long = "kafka-brokers",
        env = "KAFKA_BROKERS",
        default_value = "localhost:9092"
    )]
    pub brokers: String,
    /// Extra librdkafka properties, `key=value` comma-separated (SASL, TLS…).
    #[arg(long = "kafka-config", env = "KAFKA_CONFIG", default_value = "")]
    pub extra: String,
}

#[derive(Args, Debug, Clone)]
pub struct TopicArgs {
    #[arg(long = "topic-orders", env = "KAFKA_TOPIC", default_value = "orders")]
    pub orders: String,
    #[arg(
        long = "topic-validated",
        env = "KAFKA_TOPIC_VALIDATED",
        default_value = "orders.validated"
    )]
    pub validated: String,
    #[arg(
        long = "topic-inventory",
        env = "KAFKA_TOPIC_INVENTORY",
        default_value = "inventory.events"
    )]
    pub inventory: String,
    #[arg(
        long = "topic-payment",
        env = "KAFKA_TOPIC_PAYMENT",
        default_value = "payment.events"
    )]
    pub payment: String,
    #[arg(
        long = "topic-notifications",
        env = "KAFKA_TOPIC_NOTIFICATIONS",
        default_value = "notifications"
    )]
    pub notifications: String,
    #[arg(
        long = "topic-dlq",
        env = "KAFKA_TOPIC_DLQ",
        default_value = "orders.dlq"
    )]
    pub dlq: String,
}

impl TopicArgs {
    /// Every topic with its default partition count (SPEC §3, §5).
    pub fn all(&self) -> Vec<(&str, i32)> {
        vec![
            (self.orders.as_str(), 6),
            (self.validated.as_str(), 6),
            (self.inventory.as_str(), 6),
            (self.payment.as_str(), 6),
            (self.notifications.as_str(), 3),
            (self.dlq.as_str(), 1),
        ]
    }
}

#[derive(Args, Debug, Clone)]
pub struct MongoArgs {
    /// Connection string; its path names the database (default `orders`).
    #[arg(
        id = "mongo_url",
        long = "mongo-url",
        env = "MONGO_URL",
        default_value = "mongodb://localhost:27017/orders"
    )]
    pub url: String,
    /// The database, overriding the one in the URL path (the operator sets
    /// it from the pipeline's spec; the URL itself comes from a Secret).
    #[arg(id = "mongo_database", long = "mongo-database", env = "MONGO_DATABASE")]
    pub database: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct RedisArgs {
    #[arg(
        id = "redis_url",
        long = "redis-url",
        env = "REDIS_URL",
        default_value = "redis://localhost:6379"
    )]
    pub url: String,
}

#[derive(Args, Debug, Clone)]
pub struct HttpArgs {
    /// Address to bind the HTTP listener to.
    #[arg(long = "bind", env = "BIND_ADDR", default_value = "0.0.0.0")]
    pub bind: String,
    /// Time given to in-flight requests after SIGTERM.
    #[arg(long = "shutdown-grace", env = "SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
}
