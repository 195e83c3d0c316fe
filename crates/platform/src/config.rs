//! Configuration shared by the binaries: every value is a CLI flag and an
//! environment variable. The reference systems' variable names
//! (`KAFKA_BROKERS`, `KAFKA_TOPIC`, `MONGO_URL`, `REDIS_URL`, …) keep working.

use std::time::Duration;

use clap::Args;
pub use secrecy::{ExposeSecret, SecretString};

use crate::topology::{TopicRole, TOPICS};

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
    /// It may hold a password: it never prints (Debug shows `[REDACTED]`,
    /// `--help` hides the variable's value).
    #[arg(long = "kafka-config", env = "KAFKA_CONFIG", default_value = "", hide_env_values = true, value_parser = secret)]
    pub extra: SecretString,
}

fn secret(value: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(value.to_owned()))
}

/// The topics' names; their defaults and variables are [`TOPICS`]'s, in its order.
#[derive(Args, Debug, Clone)]
pub struct TopicArgs {
    #[arg(long = "topic-orders", env = TOPICS[0].env, default_value = TOPICS[0].name)]
    pub orders: String,
    #[arg(long = "topic-validated", env = TOPICS[1].env, default_value = TOPICS[1].name)]
    pub validated: String,
    #[arg(long = "topic-inventory", env = TOPICS[2].env, default_value = TOPICS[2].name)]
    pub inventory: String,
    #[arg(long = "topic-payment", env = TOPICS[3].env, default_value = TOPICS[3].name)]
    pub payment: String,
    #[arg(long = "topic-notifications", env = TOPICS[4].env, default_value = TOPICS[4].name)]
    pub notifications: String,
    #[arg(long = "topic-dlq", env = TOPICS[5].env, default_value = TOPICS[5].name)]
    pub dlq: String,
}

impl TopicArgs {
    /// The name of the topic for `role`.
    pub fn name(&self, role: TopicRole) -> &str {
        match role {
            TopicRole::Orders => &self.orders,
            TopicRole::Validated => &self.validated,
            TopicRole::Inventory => &self.inventory,
            TopicRole::Payment => &self.payment,
            TopicRole::Notifications => &self.notifications,
            TopicRole::Dlq => &self.dlq,
        }
    }

    /// Every topic with its default partition count (SPEC §3, §5).
    pub fn all(&self) -> Vec<(&str, i32)> {
        TOPICS
            .iter()
            .map(|t| (self.name(t.role), t.partitions))
            .collect()
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
    /// Longest a request may take to get its answer (an event stream's
    /// body is not limited); past it, 503. Above the longest `waitFor`
    /// (30 s).
    #[arg(long = "request-timeout", env = "REQUEST_TIMEOUT", default_value = "35s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
    /// Most requests served at once; past it, 503 with Retry-After at once.
    #[arg(
        long = "max-concurrency",
        env = "MAX_CONCURRENCY",
        default_value_t = 1024
    )]
    pub max_concurrency: usize,
}
