//! The reconcile loop of `OrderPipeline`s: it gathers the facts (what the
//! broker has, what the cluster runs), asks the pure decisions
//! ([`crate::topics::plan`], [`crate::resources`], [`crate::scaling::decide`])
//! and applies them: topics through the Kafka admin API, owned objects and
//! status with server-side apply, replicas through the scale subresource,
//! every change as a Kubernetes Event.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::broker::{Brokers, Connection};
use crate::crd::{
    Condition, OrderPipeline, OrderPipelineSpec, OrderPipelineStatus, StageSpec, StageStatus,
    TopicDeletionPolicy, TopicStatus,
};
use crate::metrics::{Metrics, StageLabels};
use crate::resources::{self, Owned, MANAGER};
use crate::scaling::{self, Bounds, History};
use crate::topics::{self, TopicAction, WantedTopic};
use orderflow_platform::topology;

/// Held on a pipeline whose topics must be deleted with it.
pub const FINALIZER: &str = "orderflow.dev/topics";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("Kafka: {0:#}")]
    Kafka(anyhow::Error),
    #[error("invalid spec: {0}")]
    Spec(String),
}

impl Error {
    /// The `reason` label of the failure metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(s)) if s.code == 409 => "conflict",
            Error::Kube(kube::Error::Api(_)) => "api",
            Error::Kube(_) => "api_unreachable",
            Error::Kafka(_) => "kafka",
            Error::Spec(_) => "spec",
        }
    }
}

/// What the operator remembers of one pipeline between reconciles.
#[derive(Default)]
struct Memory {
    failures: u32,
    last_poll: Option<Instant>,
    /// Per stage: the autoscaler's history (in memory, as the HPA keeps it;
    /// a restarted operator starts fresh and `decide` never scales down on
    /// a fresh start).
    histories: BTreeMap<String, History>,
    /// Per stage: the status this operator last wrote.
    stages: BTreeMap<String, StageStatus>,
    /// Per owned object (`Kind/name`): when our apply last changed it.
    stamps: HashMap<String, Timestamp>,
}

pub struct Context {
    pub client: Client,
    pub brokers: Arc<dyn Brokers>,
    pub reporter: Reporter,
    pub metrics: Metrics,
    memory: Mutex<HashMap<String, Memory>>,
    /// Warning Events published lately (pipeline, reason, note → when).
    warned: Mutex<HashMap<String, Instant>>,
}

/// How soon the same Warning Event is published again.
const WARNING_REPEAT: Duration = Duration::from_secs(600);

impl Context {
    pub fn new(
        client: Client,
        brokers: Arc<dyn Brokers>,
        metrics: Metrics,
        instance: Option<String>,
    ) -> Self {
        Context {
            client,
            brokers,
            reporter: Reporter {
                controller: MANAGER.into(),
                instance,
            },
            metrics,
            memory: Mutex::new(HashMap::new()),
            warned: Mutex::new(HashMap::new()),
        }
    }

    fn remember<T>(&self, key: &str, f: impl FnOnce(&mut Memory) -> T) -> T {
        let mut memory = self.memory.lock().expect("operator memory");
        f(memory.entry(key.to_owned()).or_default())
    }

    fn forget(&self, key: &str) {
        self.memory.lock().expect("operator memory").remove(key);
    }

    async fn publish(
        &self,
        pipeline: &OrderPipeline,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        // A lasting problem (a refused partition decrease, say) is found
        // again on every poll: one Warning per ten minutes tells it.
        if type_ == EventType::Warning {
            let id = format!("{}\u{0}{reason}\u{0}{note}", key(pipeline));
            let mut warned = self.warned.lock().expect("operator memory");
            let now = Instant::now();
            warned.retain(|_, at| now.duration_since(*at) < WARNING_REPEAT);
            if warned.contains_key(&id) {
                return;
            }
            warned.insert(id, now);
        }
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        // A fresh recorder per event: kube's recorder folds events with the
        // same reason into one series keeping the first note, which would
        // show "1 → 3 replicas" for a later 3 → 6. Events here are only
        // published on changes, so there is no flood to fold.
        let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
        if let Err(e) = recorder.publish(&event, &pipeline.object_ref(&())).await {
            // An event is a record, not a step: failing to write it must not
            // fail the reconcile.
            self.metrics.failed("event");
            tracing::warn!(error = %e, reason, "publishing an event");
        }
    }
}

fn key(pipeline: &OrderPipeline) -> String {
    format!(
        "{}/{}",
        pipeline.namespace().unwrap_or_default(),
        pipeline.name_any()
    )
}

/// The reconcile entry point.
pub async fn reconcile(pipeline: Arc<OrderPipeline>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    ctx.metrics.reconciles.inc();
    let result = reconcile_pipeline(&pipeline, &ctx).await;
    ctx.metrics
        .duration
        .observe(started.elapsed().as_secs_f64());
    if result.is_ok() {
        ctx.remember(&key(&pipeline), |m| m.failures = 0);
    }
    result
}

/// On failure: count it, and retry with exponential backoff (5 s doubling
/// to 5 min) — never a crash, never a hot loop.
pub fn error_policy(pipeline: Arc<OrderPipeline>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.failed(error.reason());
    let failures = ctx.remember(&key(&pipeline), |m| {
        m.failures = m.failures.saturating_add(1);
        m.failures
    });
    let delay = backoff(failures);
    tracing::warn!(pipeline = %key(&pipeline), error = %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// 5 s, 10 s, 20 s, … capped at 5 minutes.
pub fn backoff(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(6);
    Duration::from_secs((5u64 << exponent).min(300))
}

fn parse_duration(field: &str, value: &str) -> Result<Duration, Error> {
    humantime::parse_duration(value).map_err(|e| Error::Spec(format!("{field} {value:?}: {e}")))
}

/// The topics the spec asks for.
pub fn wanted_topics(spec: &OrderPipelineSpec) -> Vec<WantedTopic> {
    spec.topics
        .all()
        .iter()
        .map(|(topic, t)| WantedTopic {
            name: t.name_or(topic.name).to_owned(),
            partitions: t.partitions,
            replication_factor: t.replication_factor,
            config: t.config.clone(),
        })
        .collect()
}

async fn connection(pipeline: &OrderPipeline, ctx: &Context) -> Result<Connection, Error> {
    let kafka = &pipeline.spec.kafka;
    let extra = match &kafka.config_secret_ref {
        None => String::new(),
        Some(r) => {
            let ns = pipeline.namespace().unwrap_or_default();
            let secret = Api::<Secret>::namespaced(ctx.client.clone(), &ns)
                .get(&r.name)
                .await
                .map_err(|e| match e {
                    kube::Error::Api(s) if s.code == 404 => {
                        Error::Spec(format!("Secret {} not found in {ns}", r.name))
                    }
                    other => Error::Kube(other),
                })?;
            let bytes = secret
                .data
                .and_then(|d| d.get(&r.key).cloned())
                .ok_or_else(|| Error::Spec(format!("Secret {} has no key {}", r.name, r.key)))?;
            String::from_utf8(bytes.0)
                .map_err(|_| Error::Spec(format!("Secret {} key {} is not UTF-8", r.name, r.key)))?
        }
    };
    Ok(Connection {
        bootstrap_servers: kafka.bootstrap_servers.clone(),
        extra,
    })
}

/// Sets the finalizers to `wanted`, conditional on the resourceVersion read
/// (a concurrent change makes this a 409 and the reconcile retries).
async fn set_finalizers(
    api: &Api<OrderPipeline>,
    pipeline: &OrderPipeline,
    wanted: Vec<String>,
) -> Result<(), Error> {
    let patch = json!({
        "metadata": {
            "finalizers": wanted,
            "resourceVersion": pipeline.resource_version(),
        }
    });
    api.patch(
        &pipeline.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

/// A condition, keeping the previous transition time when the status did
/// not change.
pub fn condition(
    previous: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    now: &str,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_owned();
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.to_owned());
    Condition {
        type_: type_.into(),
        status,
        reason: reason.into(),
        message,
        last_transition_time,
    }
}

/// Applies one owned object with server-side apply and returns what the API
/// server holds afterwards.
async fn apply<K>(api: Api<K>, object: &K) -> Result<K, Error>
where
    K: Resource + Clone + DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let name = object.meta().name.clone().unwrap_or_default();
    Ok(api
        .patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(object),
        )
        .await?)
}

/// HTTPRoutes (Gateway API types are not in k8s-openapi).
fn http_routes(client: &Client, ns: &str) -> Api<kube::api::DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &resources::http_route_resource())
}

struct TopicsOutcome {
    ready: bool,
    reason: &'static str,
    message: String,
    statuses: Vec<TopicStatus>,
}

async fn reconcile_topics(
    pipeline: &OrderPipeline,
    ctx: &Context,
    conn: &Connection,
) -> Result<TopicsOutcome, Error> {
    let wanted = wanted_topics(&pipeline.spec);
    let names: Vec<String> = wanted.iter().map(|t| t.name.clone()).collect();
    let observed = ctx
        .brokers
        .topics(conn, &names)
        .await
        .map_err(Error::Kafka)?;
    let actions = topics::plan(&wanted, &observed);
    let mut partitions: BTreeMap<&str, i32> = observed
        .iter()
        .map(|(n, t)| (n.as_str(), t.partitions))
        .collect();
    let mut refused = Vec::new();
    let mut failed = Vec::new();
    for action in &actions {
        let (reason, verb, note, name) = match action {
            TopicAction::Create(t) => (
                "TopicCreated",
                "CreateTopic",
                format!("created topic {} with {} partitions", t.name, t.partitions),
                &t.name,
            ),
            TopicAction::AddPartitions { name, total } => (
                "PartitionsAdded",
                "AddPartitions",
                format!("raised topic {name} to {total} partitions"),
                name,
            ),
            TopicAction::AlterConfig { name, set } => (
                "TopicConfigured",
                "AlterTopicConfig",
                format!("set {set:?} on topic {name}"),
                name,
            ),
            TopicAction::RefuseDecrease { name, have, want } => {
                let note = format!(
                    "topic {name} has {have} partitions and the spec asks for {want}: Kafka cannot remove partitions, the topic is left alone"
                );
                ctx.publish(
                    pipeline,
                    EventType::Warning,
                    "PartitionDecreaseRefused",
                    "ReconcileTopic",
                    note.clone(),
                )
                .await;
                refused.push(note);
                continue;
            }
        };
        match ctx.brokers.apply(conn, action).await {
            Ok(()) => {
                if let TopicAction::Create(t) = action {
                    partitions.insert(&t.name, t.partitions);
                }
                if let TopicAction::AddPartitions { total, .. } = action {
                    partitions.insert(name, *total);
                }
                ctx.publish(pipeline, EventType::Normal, reason, verb, note)
                    .await;
            }
            Err(e) => {
                ctx.metrics.failed("kafka");
                let note = format!("{verb} {name} failed: {e:#}");
                ctx.publish(
                    pipeline,
                    EventType::Warning,
                    "TopicChangeFailed",
                    verb,
                    note.clone(),
                )
                .await;
                failed.push((name.clone(), note));
            }
        }
    }
    let statuses = wanted
        .iter()
        .map(|w| TopicStatus {
            name: w.name.clone(),
            partitions: partitions.get(w.name.as_str()).copied().unwrap_or(0),
            ready: partitions.contains_key(w.name.as_str())
                && !failed.iter().any(|(n, _)| *n == w.name),
        })
        .collect();
    let outcome = if !failed.is_empty() {
        TopicsOutcome {
            ready: false,
            reason: "TopicChangeFailed",
            message: failed
                .into_iter()
                .map(|(_, m)| m)
                .collect::<Vec<_>>()
                .join("; "),
            statuses,
        }
    } else if !refused.is_empty() {
        TopicsOutcome {
            ready: false,
            reason: "NotSupported",
            message: refused.join("; "),
            statuses,
        }
    } else {
        TopicsOutcome {
            ready: true,
            reason: "TopicsReady",
            message: format!("{} topics as specified", wanted.len()),
            statuses,
        }
    };
    Ok(outcome)
}

fn deployment_ready(d: &Deployment) -> bool {
    let wanted = d.spec.replicas.unwrap_or(1);
    let Some(status) = &d.status else {
        return false;
    };
    status.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
        && status.updated_replicas.unwrap_or(0) >= wanted
        && status.available_replicas.unwrap_or(0) >= wanted
}

/// What a server-side apply did, read from the object it returned: the API
/// server stamps our field manager's entry only when one of our fields
/// changed (to the second, hence `since` is truncated). Returns the change
/// and the stamp.
fn change_of(meta: &ObjectMeta, since: Timestamp) -> Option<(&'static str, Timestamp)> {
    let since = Timestamp::from_second(since.as_second()).unwrap_or(since);
    let ours = meta.managed_fields.as_ref()?.iter().find(|f| {
        f.manager.as_deref() == Some(MANAGER) && f.operation.as_deref() == Some("Apply")
    })?;
    let stamp = ours.time.as_ref()?.0;
    if stamp < since {
        return None;
    }
    let created = meta
        .creation_timestamp
        .as_ref()
        .is_some_and(|t| t.0 >= since);
    Some((if created { "Created" } else { "Updated" }, stamp))
}

/// Deletes an owned object the spec no longer asks for, with an Event. A
/// 404 is the usual answer (nothing there, or no Gateway API installed).
async fn remove_unwanted<K>(
    pipeline: &OrderPipeline,
    ctx: &Context,
    api: Api<K>,
    kind: &str,
    name: &str,
    why: &str,
) -> Result<(), Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => {
            ctx.publish(
                pipeline,
                EventType::Normal,
                &format!("{kind}Deleted"),
                "Delete",
                format!("deleted {kind}/{name}: {why}"),
            )
            .await;
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Step: the owned ConfigMap, Deployments, Services and Ingress or
/// HTTPRoute, applied; the exposure no longer wanted, deleted. Each change
/// is an Event. Returns the Deployments as the API server holds them.
async fn apply_workloads(
    pipeline: &OrderPipeline,
    ctx: &Context,
    ns: &str,
) -> Result<BTreeMap<String, Deployment>, Error> {
    let key = key(pipeline);
    let mut deployments: BTreeMap<String, Deployment> = BTreeMap::new();
    for object in resources::owned(pipeline) {
        let started = Timestamp::now();
        let (kind, meta) = match &object {
            Owned::ConfigMap(o) => (
                "ConfigMap",
                apply(Api::namespaced(ctx.client.clone(), ns), o)
                    .await?
                    .metadata,
            ),
            Owned::Deployment(o) => {
                let d: Deployment = apply(Api::namespaced(ctx.client.clone(), ns), o).await?;
                let meta = d.metadata.clone();
                deployments.insert(d.name_any(), d);
                ("Deployment", meta)
            }
            Owned::Service(o) => (
                "Service",
                apply(Api::namespaced(ctx.client.clone(), ns), o)
                    .await?
                    .metadata,
            ),
            Owned::Ingress(o) => (
                "Ingress",
                apply(Api::namespaced(ctx.client.clone(), ns), o)
                    .await?
                    .metadata,
            ),
            Owned::HttpRoute(o) => (
                "HTTPRoute",
                apply(http_routes(&ctx.client, ns), o).await?.metadata,
            ),
        };
        let Some((change, stamp)) = change_of(&meta, started) else {
            continue;
        };
        // A reconcile in the same second (the watch saw our change) finds
        // the same stamp: one change, one Event.
        let object_key = format!("{kind}/{}", meta.name.as_deref().unwrap_or_default());
        let seen = ctx.remember(&key, |m| m.stamps.insert(object_key.clone(), stamp));
        if seen != Some(stamp) {
            ctx.publish(
                pipeline,
                EventType::Normal,
                &format!("{kind}{change}"),
                "Apply",
                format!("{} {object_key}", change.to_lowercase()),
            )
            .await;
        }
    }
    // Exposure switched off: remove what an earlier spec made.
    if resources::ingress(pipeline).is_none() {
        let api: Api<Ingress> = Api::namespaced(ctx.client.clone(), ns);
        let name = resources::object_name(pipeline, "ingress");
        remove_unwanted(pipeline, ctx, api, "Ingress", &name, "spec.ingress is off").await?;
    }
    if resources::http_route(pipeline).is_none() {
        let name = resources::object_name(pipeline, "route");
        let api = http_routes(&ctx.client, ns);
        remove_unwanted(
            pipeline,
            ctx,
            api,
            "HTTPRoute",
            &name,
            "spec.gateway is off",
        )
        .await?;
    }
    Ok(deployments)
}

/// What every step of one reconcile reads.
struct Pass<'a> {
    pipeline: &'a OrderPipeline,
    ctx: &'a Context,
    ns: String,
    name: String,
    key: String,
    previous: OrderPipelineStatus,
    now: Timestamp,
    now_text: String,
}

impl Pass<'_> {
    fn condition(&self, kind: &str, ok: bool, reason: &str, message: String) -> Condition {
        condition(
            &self.previous.conditions,
            kind,
            ok,
            reason,
            message,
            &self.now_text,
        )
    }
}

/// Step: a deleted pipeline gives its topics up (`topicDeletionPolicy:
/// Delete`) and releases its finalizer; a live one holds the finalizer
/// exactly when it will need it. `Some` ends the reconcile.
async fn finalize(pass: &Pass<'_>) -> Result<Option<Action>, Error> {
    let (pipeline, ctx) = (pass.pipeline, pass.ctx);
    let pipelines: Api<OrderPipeline> = Api::namespaced(ctx.client.clone(), &pass.ns);
    let delete_topics = pipeline.spec.topic_deletion_policy == TopicDeletionPolicy::Delete;
    let finalizers = pipeline.finalizers().to_vec();
    let has_finalizer = finalizers.iter().any(|f| f == FINALIZER);
    let without = || {
        finalizers
            .iter()
            .filter(|f| *f != FINALIZER)
            .cloned()
            .collect()
    };

    if pipeline.meta().deletion_timestamp.is_some() {
        if has_finalizer {
            if delete_topics {
                let conn = connection(pipeline, ctx).await?;
                let names: Vec<String> = wanted_topics(&pipeline.spec)
                    .into_iter()
                    .map(|t| t.name)
                    .collect();
                ctx.brokers
                    .delete(&conn, &names)
                    .await
                    .map_err(Error::Kafka)?;
                ctx.publish(
                    pipeline,
                    EventType::Normal,
                    "TopicsDeleted",
                    "DeleteTopics",
                    format!(
                        "deleted topics {} (topicDeletionPolicy: Delete)",
                        names.join(", ")
                    ),
                )
                .await;
            }
            set_finalizers(&pipelines, pipeline, without()).await?;
        }
        ctx.forget(&pass.key);
        return Ok(Some(Action::await_change()));
    }
    if delete_topics && !has_finalizer {
        let mut with = finalizers.clone();
        with.push(FINALIZER.into());
        set_finalizers(&pipelines, pipeline, with).await?;
    } else if !delete_topics && has_finalizer {
        set_finalizers(&pipelines, pipeline, without()).await?;
    }
    Ok(None)
}

struct TopicsStep {
    /// The broker connection, when its settings could be read.
    conn: Result<Connection, Error>,
    /// Whether the broker answered.
    reached: bool,
    condition: Condition,
    statuses: Vec<TopicStatus>,
}

/// Step: the topics. The broker being unreachable is reported, not fatal:
/// the workloads are applied all the same and the next poll tries again.
/// So is a Kafka settings Secret that cannot be read.
async fn topics_step(pass: &Pass<'_>) -> TopicsStep {
    let conn = connection(pass.pipeline, pass.ctx).await;
    let outcome = match &conn {
        Ok(c) => reconcile_topics(pass.pipeline, pass.ctx, c)
            .await
            .map_err(|e| {
                let message = format!("cannot reach Kafka at {}: {e}", c.bootstrap_servers);
                (e.reason(), "KafkaUnavailable", message)
            }),
        Err(e) => Err((
            e.reason(),
            "KafkaConfigUnavailable",
            format!("cannot read the Kafka settings Secret: {e}"),
        )),
    };
    match outcome {
        Ok(t) => TopicsStep {
            conn,
            reached: true,
            condition: pass.condition("TopicsReady", t.ready, t.reason, t.message),
            statuses: t.statuses,
        },
        Err((failure, reason, message)) => {
            pass.ctx.metrics.failed(failure);
            tracing::warn!(pipeline = %pass.key, error = %message, "topics not reconciled");
            TopicsStep {
                conn,
                reached: false,
                condition: pass.condition("TopicsReady", false, reason, message),
                statuses: pass.previous.topics.clone(),
            }
        }
    }
}

fn deployments_condition(pass: &Pass<'_>, deployments: &BTreeMap<String, Deployment>) -> Condition {
    let not_ready: Vec<String> = deployments
        .values()
        .filter(|d| !deployment_ready(d))
        .map(|d| d.name_any())
        .collect();
    if not_ready.is_empty() {
        pass.condition(
            "DeploymentsReady",
            true,
            "DeploymentsAvailable",
            format!("{} deployments available", deployments.len()),
        )
    } else {
        pass.condition(
            "DeploymentsReady",
            false,
            "DeploymentsProgressing",
            format!("not yet available: {}", not_ready.join(", ")),
        )
    }
}

/// What the autoscaler decided for one stage.
struct StageOutcome {
    status: StageStatus,
    /// `stage a→b` when it was scaled.
    scaled: Option<String>,
}

/// Step, per stage: measure the lag (when `measure`), decide, scale
/// through the scale subresource, tell it in an Event and the metrics.
async fn autoscale_stage(
    pass: &Pass<'_>,
    entry: &'static topology::Stage,
    stage_spec: &StageSpec,
    topic: &str,
    current: u32,
    measure: Option<&Connection>,
    stabilization: Duration,
) -> Result<StageOutcome, Error> {
    let (pipeline, ctx) = (pass.pipeline, pass.ctx);
    let stage = entry.name;
    let bounds = Bounds {
        min_replicas: stage_spec.min_replicas.max(0) as u32,
        max_replicas: stage_spec.max_replicas.max(1) as u32,
        lag_per_replica: stage_spec.lag_per_replica.max(1) as u64,
    };
    // What this operator last decided for the stage; the status read with
    // the pipeline only after a restart (a reconcile triggered by a
    // Deployment change may see a pipeline whose newest status is not in
    // the cache yet).
    let remembered = ctx.remember(&pass.key, |m| m.stages.get(stage).cloned());
    let before = remembered
        .as_ref()
        .or_else(|| pass.previous.stages.iter().find(|s| s.name == stage));
    let measured = match measure {
        Some(conn) => match ctx.brokers.offsets(conn, entry.group, topic).await {
            Ok(partitions) => Some(ctx.remember(&pass.key, |m| {
                let history = m.histories.entry(stage.to_owned()).or_default();
                scaling::decide(
                    &partitions,
                    current,
                    &bounds,
                    stabilization.as_secs() as i64,
                    pass.now.as_second(),
                    history,
                )
            })),
            Err(e) => {
                ctx.metrics.failed("kafka");
                tracing::warn!(pipeline = %pass.key, stage, error = %format!("{e:#}"), "reading lag");
                None
            }
        },
        None => None,
    };
    let (replicas, desired, lag, reason, stuck) = match measured {
        Some(d) => (
            d.replicas,
            d.desired,
            d.lag as i64,
            d.reason,
            d.stuck_partitions,
        ),
        None => {
            // No fresh measurement: keep what runs within the bounds.
            let held = current.clamp(
                bounds.min_replicas,
                bounds.max_replicas.max(bounds.min_replicas),
            );
            match before {
                Some(b) if held == current => (
                    held,
                    b.desired_replicas.max(0) as u32,
                    b.lag,
                    b.reason.clone(),
                    b.stuck_partitions.clone(),
                ),
                _ => (
                    held,
                    held,
                    0,
                    format!(
                        "holding {held} replicas within [{}, {}]",
                        bounds.min_replicas, bounds.max_replicas
                    ),
                    Vec::new(),
                ),
            }
        }
    };
    let mut last_scale_time = before.and_then(|b| b.last_scale_time.clone());
    let mut scaled = None;
    if replicas != current {
        let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &pass.ns);
        deployments
            .patch_scale(
                &resources::object_name(pipeline, stage),
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": replicas}})),
            )
            .await?;
        let (event_reason, verb) = if replicas > current {
            ("ScaledUp", "ScaleUp")
        } else {
            ("ScaledDown", "ScaleDown")
        };
        ctx.publish(
            pipeline,
            EventType::Normal,
            event_reason,
            verb,
            format!("stage {stage}: {current} → {replicas} replicas ({reason})"),
        )
        .await;
        last_scale_time = Some(pass.now_text.clone());
        scaled = Some(format!("{stage} {current}→{replicas}"));
    }
    let was_stuck = before
        .map(|b| b.stuck_partitions.clone())
        .unwrap_or_default();
    if !stuck.is_empty() && stuck != was_stuck {
        ctx.publish(
            pipeline,
            EventType::Warning,
            "PartitionsStuck",
            "Autoscale",
            format!("stage {stage}: partitions {stuck:?} of {topic} have not moved for {} polls while lagging; not scaling for them", scaling::STUCK_POLLS),
        )
        .await;
    }
    let labels = StageLabels {
        namespace: pass.ns.clone(),
        pipeline: pass.name.clone(),
        stage: stage.to_owned(),
    };
    ctx.metrics.lag.get_or_create(&labels).set(lag);
    ctx.metrics
        .replicas
        .get_or_create(&labels)
        .set(i64::from(replicas));
    ctx.metrics
        .desired_replicas
        .get_or_create(&labels)
        .set(i64::from(desired));
    let status = StageStatus {
        name: stage.to_owned(),
        replicas: replicas as i32,
        desired_replicas: desired as i32,
        lag,
        last_scale_time,
        reason,
        stuck_partitions: stuck,
    };
    ctx.remember(&pass.key, |m| {
        m.stages.insert(stage.to_owned(), status.clone())
    });
    Ok(StageOutcome { status, scaled })
}

fn scaling_condition(pass: &Pass<'_>, outcomes: &[StageOutcome]) -> Condition {
    let stuck: Vec<String> = outcomes
        .iter()
        .filter(|o| !o.status.stuck_partitions.is_empty())
        .map(|o| format!("{} {:?}", o.status.name, o.status.stuck_partitions))
        .collect();
    let scaled: Vec<&str> = outcomes
        .iter()
        .filter_map(|o| o.scaled.as_deref())
        .collect();
    if !stuck.is_empty() {
        pass.condition(
            "Scaling",
            false,
            "StuckPartitions",
            format!("stuck partitions: {}", stuck.join(", ")),
        )
    } else if !scaled.is_empty() {
        pass.condition("Scaling", true, "Scaled", scaled.join(", "))
    } else {
        pass.condition(
            "Scaling",
            false,
            "Stable",
            "every stage at its desired replicas".into(),
        )
    }
}

fn ready_condition(pass: &Pass<'_>, topics: &Condition, deployments: &Condition) -> Condition {
    if topics.status == "True" && deployments.status == "True" {
        return pass.condition(
            "Ready",
            true,
            "Ready",
            "topics and deployments are ready".into(),
        );
    }
    let failing = if topics.status != "True" {
        topics
    } else {
        deployments
    };
    pass.condition("Ready", false, &failing.reason, failing.message.clone())
}

/// One reconcile: finalizer, topics, workloads, autoscaling, status.
async fn reconcile_pipeline(pipeline: &OrderPipeline, ctx: &Context) -> Result<Action, Error> {
    let ns = pipeline
        .namespace()
        .ok_or_else(|| Error::Spec("an OrderPipeline is namespaced".into()))?;
    let now = Timestamp::now();
    let pass = Pass {
        pipeline,
        ctx,
        ns,
        name: pipeline.name_any(),
        key: key(pipeline),
        previous: pipeline.status.clone().unwrap_or_default(),
        now,
        now_text: now.to_string(),
    };
    if let Some(done) = finalize(&pass).await? {
        return Ok(done);
    }
    let spec = &pipeline.spec;
    let poll = parse_duration("autoscaling.pollInterval", &spec.autoscaling.poll_interval)?;
    let stabilization = parse_duration(
        "autoscaling.scaleDownStabilization",
        &spec.autoscaling.scale_down_stabilization,
    )?;

    let topics = topics_step(&pass).await;
    let deployments = apply_workloads(pipeline, ctx, &pass.ns).await?;
    let deployments_ready = deployments_condition(&pass, &deployments);

    // Autoscaling, once per poll interval (reconciles triggered by the
    // owned Deployments in between only hold the bounds).
    let due = ctx.remember(&pass.key, |m| {
        let due = topics.reached
            && m.last_poll
                .is_none_or(|at| at.elapsed() + Duration::from_millis(500) >= poll);
        if due {
            m.last_poll = Some(Instant::now());
        }
        due
    });
    let measure = topics.conn.as_ref().ok().filter(|_| due);
    let mut outcomes = Vec::new();
    for (entry, stage_spec, topic) in spec.stages() {
        let current = deployments
            .get(&resources::object_name(pipeline, entry.name))
            .and_then(|d| d.spec.replicas)
            .unwrap_or(1)
            .max(0) as u32;
        outcomes.push(
            autoscale_stage(
                &pass,
                entry,
                stage_spec,
                topic,
                current,
                measure,
                stabilization,
            )
            .await?,
        );
    }

    let scaling = scaling_condition(&pass, &outcomes);
    let ready = ready_condition(&pass, &topics.condition, &deployments_ready);
    let stages: Vec<StageStatus> = outcomes.into_iter().map(|o| o.status).collect();
    let status = OrderPipelineStatus {
        observed_generation: pipeline.metadata.generation,
        conditions: vec![ready, topics.condition, deployments_ready, scaling],
        topics: topics.statuses,
        total_lag: stages.iter().map(|s| s.lag).sum(),
        consumer_replicas: stages.iter().map(|s| s.replicas).sum(),
        stages,
    };
    write_status(&pass, status).await?;
    if !topics.reached {
        // Kafka was unreachable: look again sooner than a full poll.
        return Ok(Action::requeue(poll.min(Duration::from_secs(10))));
    }
    Ok(Action::requeue(poll))
}

/// Step: the status, with server-side apply of the status subresource.
async fn write_status(pass: &Pass<'_>, status: OrderPipelineStatus) -> Result<(), Error> {
    let pipelines: Api<OrderPipeline> = Api::namespaced(pass.ctx.client.clone(), &pass.ns);
    let patch = json!({
        "apiVersion": "orderflow.dev/v1alpha1",
        "kind": "OrderPipeline",
        "status": status,
    });
    pipelines
        .patch_status(
            &pass.name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    Ok(())
}

/// Runs the controller until `shutdown` resolves: one per served namespace
/// (`namespaces`), or one for every namespace when it is empty.
pub async fn run(
    ctx: Arc<Context>,
    namespaces: Vec<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let scopes: Vec<Option<String>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.into_iter().map(Some).collect()
    };
    let stop = orderflow_platform::shutdown::CancellationToken::new();
    let controllers = scopes.into_iter().map(|namespace| {
        let (pipelines, deployments) = match &namespace {
            None => (Api::all(client.clone()), Api::all(client.clone())),
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
            ),
        };
        serve(
            ctx.clone(),
            pipelines,
            deployments,
            stop.clone().cancelled_owned(),
        )
    });
    let all = futures::future::join_all(controllers);
    tokio::pin!(all);
    tokio::select! {
        _ = &mut all => {}
        _ = shutdown => {
            stop.cancel();
            all.await;
        }
    }
}

async fn serve(
    ctx: Arc<Context>,
    pipelines: Api<OrderPipeline>,
    deployments: Api<Deployment>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    if let Err(e) = pipelines
        .list(&kube::api::ListParams::default().limit(1))
        .await
    {
        tracing::error!(error = %e, "cannot list OrderPipelines: is the CRD installed (kubectl apply -f k8s/crd.yaml), and may this account list them?");
    }
    let owned =
        watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGER}"));
    Controller::new(pipelines, watcher::Config::default().any_semantic())
        .owns(deployments, owned)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(pipeline = %object, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile did not complete"),
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_five_seconds_to_five_minutes() {
        let delays: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
    }

    #[test]
    fn a_condition_keeps_its_transition_time_while_its_status_holds() {
        let first = condition(
            &[],
            "Ready",
            false,
            "DeploymentsProgressing",
            "x".into(),
            "t1",
        );
        assert_eq!(first.last_transition_time, "t1");
        let same = condition(
            std::slice::from_ref(&first),
            "Ready",
            false,
            "NotSupported",
            "y".into(),
            "t2",
        );
        assert_eq!(same.last_transition_time, "t1");
        let flipped = condition(&[same], "Ready", true, "Ready", "z".into(), "t3");
        assert_eq!(flipped.last_transition_time, "t3");
    }
}
