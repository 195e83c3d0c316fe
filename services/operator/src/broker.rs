//! What the operator asks the Kafka brokers: each partition's watermarks
//! and a group's committed offsets (the lag), the topics that exist, and
//! the topic changes of [`crate::topics::plan`]. librdkafka calls block, so
//! callers run these on a blocking thread.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use orderflow_platform::kafka::offsets::PartitionOffsets;
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, ConfigSource, NewPartitions, NewTopic,
    ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::topics::{ObservedTopic, TopicAction};

pub use orderflow_platform::kafka::offsets::partition_offsets;

/// The topics that exist, with their partition counts; their configs are
/// filled in by [`describe_configs`].
pub fn existing_topics(
    reader: &BaseConsumer,
    timeout: Duration,
) -> anyhow::Result<BTreeMap<String, ObservedTopic>> {
    let metadata = reader
        .fetch_metadata(None, timeout)
        .context("reading metadata")?;
    Ok(metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| {
            (
                t.name().to_owned(),
                ObservedTopic {
                    partitions: t.partitions().len() as i32,
                    config: None,
                },
            )
        })
        .collect())
}

/// Which entries of a topic's described configuration to keep.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ConfigEntries {
    /// Every value in force, defaults included (what the plan compares).
    Effective,
    /// Only the topic's own overrides (what AlterConfigs must send again,
    /// since it resets every key it is not given).
    Overrides,
}

/// DescribeConfigs for these topics: name → key → value. Sensitive entries
/// are left out.
pub async fn describe_configs(
    admin: &AdminClient<DefaultClientContext>,
    names: &[&str],
    entries: ConfigEntries,
) -> anyhow::Result<BTreeMap<String, BTreeMap<String, String>>> {
    if names.is_empty() {
        return Ok(BTreeMap::new());
    }
    let opts = AdminOptions::new().request_timeout(Some(TIMEOUT));
    let specs: Vec<ResourceSpecifier> = names.iter().map(|n| ResourceSpecifier::Topic(n)).collect();
    let mut out = BTreeMap::new();
    for (name, result) in names
        .iter()
        .zip(admin.describe_configs(&specs, &opts).await?)
    {
        let resource = result.map_err(|e| anyhow::anyhow!("describing {name}: {e}"))?;
        let config = resource
            .entries
            .into_iter()
            .filter(|e| !e.is_sensitive)
            .filter(|e| {
                entries == ConfigEntries::Effective || e.source == ConfigSource::DynamicTopic
            })
            .filter_map(|e| Some((e.name, e.value?)))
            .collect();
        out.insert((*name).to_owned(), config);
    }
    Ok(out)
}

/// Applies one topic action; a refused decrease is not an API call.
pub async fn apply(
    admin: &AdminClient<DefaultClientContext>,
    action: &TopicAction,
) -> anyhow::Result<()> {
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = match action {
        TopicAction::Create(t) => {
            let mut topic = NewTopic::new(
                &t.name,
                t.partitions,
                TopicReplication::Fixed(t.replication_factor),
            );
            for (k, v) in &t.config {
                topic = topic.set(k, v);
            }
            admin.create_topics([&topic], &opts).await?
        }
        TopicAction::AddPartitions { name, total } => {
            admin
                .create_partitions([&NewPartitions::new(name, *total as usize)], &opts)
                .await?
        }
        TopicAction::AlterConfig { name, set } => {
            // AlterConfigs replaces the topic's overrides as a whole: send
            // the ones it has with these changes on top.
            let mut config = describe_configs(admin, &[name], ConfigEntries::Overrides)
                .await?
                .remove(name)
                .unwrap_or_default();
            config.extend(set.iter().map(|(k, v)| (k.clone(), v.clone())));
            let mut change = AlterConfig::new(ResourceSpecifier::Topic(name));
            for (k, v) in &config {
                change = change.set(k, v);
            }
            return admin
                .alter_configs([&change], &opts)
                .await?
                .into_iter()
                .try_for_each(|r| {
                    r.map(|_| ())
                        .map_err(|(_, e)| anyhow::anyhow!("altering {name}: {e}"))
                });
        }
        TopicAction::RefuseDecrease { .. } => return Ok(()),
    };
    for r in results {
        r.map_err(|(name, e)| anyhow::anyhow!("{name}: {e}"))?;
    }
    Ok(())
}

/// Deletes these topics; a topic that is already gone is not an error.
pub async fn delete_topics(
    admin: &AdminClient<DefaultClientContext>,
    names: &[String],
) -> anyhow::Result<()> {
    if names.is_empty() {
        return Ok(());
    }
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    for r in admin.delete_topics(&refs, &opts).await? {
        match r {
            Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((name, e)) => anyhow::bail!("deleting {name}: {e}"),
        }
    }
    Ok(())
}

/// Where a pipeline's brokers are: bootstrap servers and extra librdkafka
/// settings (`key=value,…`, from the pipeline's config Secret). A key of
/// the operator's client cache, hence a plain string; its Debug never
/// shows the settings, which may hold a password.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Connection {
    pub bootstrap_servers: String,
    pub extra: String,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field(
                "extra",
                &if self.extra.is_empty() {
                    ""
                } else {
                    "[REDACTED]"
                },
            )
            .finish()
    }
}

pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// What the reconciler needs from Kafka. [`KafkaBrokers`] is the real one;
/// the reconcile scenarios (which test the Kubernetes side against a mock
/// API server) use an in-memory stand-in.
pub trait Brokers: Send + Sync + 'static {
    /// Every topic with its partition count, and the configuration of
    /// those named in `describe` that exist.
    fn topics<'a>(
        &'a self,
        conn: &'a Connection,
        describe: &'a [String],
    ) -> BoxFuture<'a, anyhow::Result<BTreeMap<String, ObservedTopic>>>;
    fn apply<'a>(
        &'a self,
        conn: &'a Connection,
        action: &'a TopicAction,
    ) -> BoxFuture<'a, anyhow::Result<()>>;
    fn delete<'a>(
        &'a self,
        conn: &'a Connection,
        names: &'a [String],
    ) -> BoxFuture<'a, anyhow::Result<()>>;
    /// Watermarks and `group`'s committed offsets of `topic`'s partitions.
    fn offsets<'a>(
        &'a self,
        conn: &'a Connection,
        group: &'a str,
        topic: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<Vec<PartitionOffsets>>>;
}

/// The real brokers, one set of clients per connection, kept between
/// reconciles (librdkafka clients are expensive to create).
#[derive(Default)]
pub struct KafkaBrokers {
    admins: Cache<Connection, AdminClient<DefaultClientContext>>,
    readers: Cache<(Connection, String), BaseConsumer>,
}

type Cache<K, V> = std::sync::Mutex<std::collections::HashMap<K, std::sync::Arc<V>>>;

/// The client cached under `key`, made by `make` the first time.
fn cached<K: std::hash::Hash + Eq, V>(
    cache: &Cache<K, V>,
    key: K,
    make: impl FnOnce() -> anyhow::Result<V>,
) -> anyhow::Result<std::sync::Arc<V>> {
    use std::collections::hash_map::Entry;
    Ok(match cache.lock().expect("client cache").entry(key) {
        Entry::Occupied(e) => e.get().clone(),
        Entry::Vacant(e) => e.insert(std::sync::Arc::new(make()?)).clone(),
    })
}

const CLIENT_ID: &str = "orderflow-operator";
const TIMEOUT: Duration = Duration::from_secs(10);

impl KafkaBrokers {
    fn args(conn: &Connection) -> orderflow_platform::config::KafkaArgs {
        orderflow_platform::config::KafkaArgs {
            brokers: conn.bootstrap_servers.clone(),
            extra: conn.extra.clone().into(),
        }
    }

    fn admin(
        &self,
        conn: &Connection,
    ) -> anyhow::Result<std::sync::Arc<AdminClient<DefaultClientContext>>> {
        cached(&self.admins, conn.clone(), || {
            orderflow_platform::kafka::admin(&Self::args(conn), CLIENT_ID)
        })
    }

    /// A reader of `group`'s offsets; it never joins the group (no
    /// subscription), so it does not disturb the stage's consumers.
    fn reader(
        &self,
        conn: &Connection,
        group: &str,
    ) -> anyhow::Result<std::sync::Arc<BaseConsumer>> {
        cached(&self.readers, (conn.clone(), group.to_owned()), || {
            orderflow_platform::kafka::group_reader(&Self::args(conn), CLIENT_ID, group)
        })
    }

    /// The topics the brokers' metadata shows, without their configs.
    async fn metadata(&self, conn: &Connection) -> anyhow::Result<BTreeMap<String, ObservedTopic>> {
        let reader = self.reader(conn, CLIENT_ID)?;
        blocking(move || existing_topics(&reader, TIMEOUT)).await
    }

    /// Waits until the metadata shows `name` with at least `partitions`
    /// partitions. A broker takes a new topic or partitions into its
    /// metadata after the controller has answered the request (Kafka's
    /// Admin API says so of CreatePartitions), so a reconcile right after
    /// could still observe the topic as it was and ask for the same change
    /// again, to be refused. The change is done when it can be read back.
    async fn visible(&self, conn: &Connection, name: &str, partitions: i32) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + TIMEOUT;
        loop {
            let topics = self.metadata(conn).await?;
            if topics.get(name).is_some_and(|t| t.partitions >= partitions) {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                anyhow::bail!(
                    "{name}: the brokers' metadata does not show {partitions} partitions {TIMEOUT:?} after the change"
                );
            }
            tokio::time::sleep(METADATA_POLL).await;
        }
    }
}

/// How often [`KafkaBrokers::visible`] asks for the metadata again.
const METADATA_POLL: Duration = Duration::from_millis(50);

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f).await?
}

impl Brokers for KafkaBrokers {
    fn topics<'a>(
        &'a self,
        conn: &'a Connection,
        describe: &'a [String],
    ) -> BoxFuture<'a, anyhow::Result<BTreeMap<String, ObservedTopic>>> {
        Box::pin(async move {
            let mut topics = self.metadata(conn).await?;
            let present: Vec<&str> = describe
                .iter()
                .map(String::as_str)
                .filter(|n| topics.contains_key(*n))
                .collect();
            let configs =
                describe_configs(&*self.admin(conn)?, &present, ConfigEntries::Effective).await?;
            for (name, config) in configs {
                if let Some(t) = topics.get_mut(&name) {
                    t.config = Some(config);
                }
            }
            Ok(topics)
        })
    }

    fn apply<'a>(
        &'a self,
        conn: &'a Connection,
        action: &'a TopicAction,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            apply(&*self.admin(conn)?, action).await?;
            let created = match action {
                TopicAction::Create(t) => Some((&t.name, t.partitions)),
                TopicAction::AddPartitions { name, total } => Some((name, *total)),
                _ => None,
            };
            match created {
                Some((name, partitions)) => self.visible(conn, name, partitions).await,
                None => Ok(()),
            }
        })
    }

    fn delete<'a>(
        &'a self,
        conn: &'a Connection,
        names: &'a [String],
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move { delete_topics(&*self.admin(conn)?, names).await })
    }

    fn offsets<'a>(
        &'a self,
        conn: &'a Connection,
        group: &'a str,
        topic: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<Vec<PartitionOffsets>>> {
        Box::pin(async move {
            let reader = self.reader(conn, group)?;
            let topic = topic.to_owned();
            blocking(move || partition_offsets(&reader, &topic, TIMEOUT)).await
        })
    }
}
