//! A Redis connection that is made on first use and never blocks a caller
//! for long: Redis is an optional dependency for every service that uses it.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;

use crate::config::RedisArgs;

pub struct LazyRedis {
    client: redis::Client,
    manager: OnceCell<ConnectionManager>,
    timeout: Duration,
}

impl LazyRedis {
    pub fn new(args: &RedisArgs, timeout: Duration) -> anyhow::Result<Self> {
        Ok(LazyRedis {
            client: redis::Client::open(args.url.as_str())?,
            manager: OnceCell::new(),
            timeout,
        })
    }

    /// A shared, auto-reconnecting connection; errors when Redis cannot be
    /// reached within the timeout.
    pub async fn connection(&self) -> Result<ConnectionManager, String> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1);
        let fut = self
            .manager
            .get_or_try_init(|| self.client.get_connection_manager_with_config(config));
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(m)) => Ok(m.clone()),
            Ok(Err(e)) => Err(format!("redis: {e}")),
            Err(_) => Err("redis: connection timed out".into()),
        }
    }

    /// Runs one command with the timeout applied, in a client span (a child
    /// of the caller's).
    pub async fn run<T: redis::FromRedisValue>(&self, cmd: &redis::Pipeline) -> Result<T, String> {
        use tracing::Instrument as _;
        let span = tracing::info_span!(
            "redis",
            otel.name = "redis pipeline",
            otel.kind = "client",
            db.system.name = "redis",
            db.operation.name = "pipeline",
        );
        async {
            let mut conn = self.connection().await?;
            match tokio::time::timeout(self.timeout, cmd.query_async::<T>(&mut conn)).await {
                Ok(r) => r.map_err(|e| format!("redis: {e}")),
                Err(_) => Err("redis: command timed out".into()),
            }
        }
        .instrument(span)
        .await
    }

    pub async fn ping(&self) -> Result<(), String> {
        self.run::<(String,)>(redis::pipe().cmd("PING"))
            .await
            .map(|_| ())
    }
}
