//! The pipeline as the brokers see it, sampled every `PIPELINE_INTERVAL`
//! (SPEC §2, issue 15): for each stage of `platform::topology`, its consumer
//! group's lag per partition (the same measure as the operator's
//! autoscaler), throughput (committed offsets per second), members (the
//! replicas actually consuming), retries (the stages' own counters in
//! MongoDB's `stage_stats`) and dead letters (from the [`dlq::Index`]); for
//! each topic its partitions, size and write rate; and the flow diagram's
//! edges with their rates.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::doc;
use futures::TryStreamExt;
use orderflow_platform::config::{KafkaArgs, TopicArgs};
use orderflow_platform::kafka::offsets::{partition_offsets, PartitionOffsets};
use orderflow_platform::shutdown::CancellationToken;
use orderflow_platform::topology::{self, TopicRole, INTAKE, STAGES, TOPICS};
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::dlq;

const KAFKA_TIMEOUT: Duration = Duration::from_secs(5);
/// Rates are measured over about this long (commits come in bursts, once
/// a second per member).
pub const RATE_WINDOW: Duration = Duration::from_secs(5);
/// A stage process whose stats are older than this is not counted.
pub const STATS_FRESH: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Partition {
    pub partition: i32,
    pub low: i64,
    pub high: i64,
    pub committed: Option<i64>,
    pub lag: u64,
}

impl From<&PartitionOffsets> for Partition {
    fn from(p: &PartitionOffsets) -> Self {
        Partition {
            partition: p.partition,
            low: p.low,
            high: p.high,
            committed: p.committed,
            lag: p.lag(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    pub client_id: String,
    pub host: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StageView {
    pub name: &'static str,
    pub group: String,
    pub input: String,
    pub outputs: Vec<String>,
    pub lag: u64,
    pub partitions: Vec<Partition>,
    /// Messages per second the group committed since the last sample.
    pub throughput: f64,
    /// The group's members: the replicas consuming now.
    pub replicas: usize,
    pub members: Vec<Member>,
    pub group_state: String,
    /// Batches retried after a transient failure, summed over the stage's
    /// processes seen in the last minute (`null` when MongoDB could not
    /// be read).
    pub retries: Option<u64>,
    /// Messages this stage dead-lettered (the whole DLQ topic).
    pub dead_lettered: u64,
    /// Why the broker could not be read for this stage, if it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TopicView {
    pub key: &'static str,
    pub name: String,
    pub partitions: usize,
    /// Messages retained (Σ high − low watermark).
    pub messages: u64,
    /// Messages written per second since the last sample.
    pub rate: f64,
}

/// An edge of the flow diagram: a writer to a topic, or a topic to the
/// stage that consumes it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Edge {
    pub from: String,
    pub to: String,
    /// Messages per second: the topic's write rate on edges into a topic
    /// (shared by its writers), the stage's throughput on edges out.
    pub rate: f64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Pipeline {
    pub at: String,
    pub stages: Vec<StageView>,
    pub topics: Vec<TopicView>,
    pub edges: Vec<Edge>,
    pub dead_letters: u64,
    /// Whether the dead-letter count includes the whole topic yet.
    pub dead_letters_complete: bool,
}

/// The latest sample, shared by the handlers and the stream: a watch
/// holds it and tells the streams of each new one.
#[derive(Clone)]
pub struct Sampler(tokio::sync::watch::Sender<Option<Arc<Pipeline>>>);

impl Default for Sampler {
    fn default() -> Self {
        Sampler(tokio::sync::watch::channel(None).0)
    }
}

/// What the sampler reads.
pub struct Sources {
    pub kafka: KafkaArgs,
    /// Each stage's consumer group, in [`STAGES`] order ([`stage_groups`]).
    pub groups: Vec<String>,
    pub topics: TopicArgs,
    /// The stages' counters (`stage_stats`).
    pub stats: mongodb::Collection<bson::Document>,
    pub dlq: dlq::Index,
}

/// The clients one sample needs: a group reader per stage (committed
/// offsets are read as the group itself), one for everything else.
struct Readers {
    stages: Vec<BaseConsumer>,
    other: BaseConsumer,
}

/// What an earlier sample saw, for the rates.
#[derive(Default)]
struct Previous {
    at: Option<Instant>,
    committed: BTreeMap<&'static str, i64>,
    written: BTreeMap<&'static str, i64>,
}

impl Sampler {
    pub fn latest(&self) -> Option<Arc<Pipeline>> {
        self.0.borrow().clone()
    }

    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Option<Arc<Pipeline>>> {
        self.0.subscribe()
    }

    /// Samples `sources` every `every` until shutdown.
    pub async fn run(
        self,
        sources: Sources,
        every: Duration,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let Sources {
            kafka,
            groups,
            topics,
            stats,
            dlq,
        } = sources;
        let readers = Arc::new(Readers {
            stages: groups
                .iter()
                .map(|group| {
                    orderflow_platform::kafka::group_reader(
                        &kafka,
                        "orderflow-analytics-console",
                        group,
                    )
                })
                .collect::<anyhow::Result<_>>()?,
            other: orderflow_platform::kafka::group_reader(
                &kafka,
                "orderflow-analytics-console",
                "orderflow-analytics-console",
            )?,
        });
        let topics = Arc::new(topics);
        let groups = Arc::new(groups);
        // Recent samples' counters, oldest first: rates are taken against
        // the oldest one within RATE_WINDOW.
        let mut history: std::collections::VecDeque<Previous> = Default::default();
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = ticks.tick() => {}
            }
            let (r, t, g) = (readers.clone(), topics.clone(), groups.clone());
            let Ok(observed) = tokio::task::spawn_blocking(move || observe(&r, &t, &g)).await
            else {
                continue;
            };
            let retries = tokio::time::timeout(Duration::from_secs(2), retries(&stats))
                .await
                .ok()
                .and_then(|r| {
                    r.map_err(|e| tracing::debug!(error = %e, "stage stats"))
                        .ok()
                });
            while history.len() > 1
                && history[1]
                    .at
                    .is_some_and(|at| observed.at.duration_since(at) >= RATE_WINDOW)
            {
                history.pop_front();
            }
            let none = Previous::default();
            let base = history.front().unwrap_or(&none);
            let (sample, seen) = assemble(&topics, &groups, observed, retries, &dlq, base);
            history.push_back(seen);
            self.0.send_replace(Some(Arc::new(sample)));
        }
    }
}

struct StageObserved {
    offsets: Vec<PartitionOffsets>,
    group_state: String,
    members: Vec<Member>,
}

/// What the brokers said in one sample.
struct Observed {
    at: Instant,
    /// Per stage: its input's offsets and its group, or why not.
    stages: Vec<Result<StageObserved, String>>,
    /// Per topic of TOPICS: its partitions' offsets, or `None`.
    topics: Vec<Option<Vec<PartitionOffsets>>>,
}

fn observe(readers: &Readers, names: &TopicArgs, groups: &[String]) -> Observed {
    // Each topic once: a stage's input as its group (whose committed
    // offsets are the stage's), the others by any reader.
    let topics: Vec<Result<Vec<PartitionOffsets>, String>> = TOPICS
        .iter()
        .map(|t| {
            let reader = STAGES
                .iter()
                .position(|s| s.input == t.role)
                .map_or(&readers.other, |i| &readers.stages[i]);
            partition_offsets(reader, names.name(t.role), KAFKA_TIMEOUT)
                .map_err(|e| format!("{e:#}"))
        })
        .collect();
    let stages = STAGES
        .iter()
        .zip(groups)
        .map(|(stage, group)| {
            let input = TOPICS
                .iter()
                .position(|t| t.role == stage.input)
                .expect("every stage's input is in TOPICS");
            let offsets = topics[input].clone()?;
            let (state, members) = match readers.other.fetch_group_list(Some(group), KAFKA_TIMEOUT)
            {
                Ok(list) => list
                    .groups()
                    .iter()
                    .find(|g| g.name() == group)
                    .map(|g| {
                        let members = g
                            .members()
                            .iter()
                            .map(|m| Member {
                                client_id: m.client_id().to_owned(),
                                host: m.client_host().to_owned(),
                            })
                            .collect();
                        (g.state().to_owned(), members)
                    })
                    .unwrap_or_else(|| ("Dead".into(), Vec::new())),
                Err(e) => (format!("unknown: {e}"), Vec::new()),
            };
            Ok(StageObserved {
                offsets,
                group_state: state,
                members,
            })
        })
        .collect();
    Observed {
        at: Instant::now(),
        stages,
        topics: topics.into_iter().map(Result::ok).collect(),
    }
}

/// Σ retries per stage over the processes seen in the last [`STATS_FRESH`].
async fn retries(
    stats: &mongodb::Collection<bson::Document>,
) -> anyhow::Result<BTreeMap<String, u64>> {
    let since = bson::DateTime::from_millis(
        bson::DateTime::now().timestamp_millis() - STATS_FRESH.as_millis() as i64,
    );
    let docs: Vec<bson::Document> = stats
        .find(doc! {"seenAt": {"$gte": since}})
        .await?
        .try_collect()
        .await?;
    let mut out = BTreeMap::new();
    for d in docs {
        if let Ok(stage) = d.get_str("stage") {
            *out.entry(stage.to_owned()).or_default() +=
                orderflow_platform::mongo::number(d.get("retries")).max(0) as u64;
        }
    }
    Ok(out)
}

/// Each stage's consumer group, in [`STAGES`] order: the table's, unless
/// `overrides` (`stage=group,…`) names another.
pub fn stage_groups(overrides: &str) -> anyhow::Result<Vec<String>> {
    let mut groups: Vec<String> = STAGES.iter().map(|s| s.group.to_owned()).collect();
    for pair in overrides
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        let (stage, group) = pair
            .split_once('=')
            .filter(|(_, g)| !g.trim().is_empty())
            .ok_or_else(|| anyhow::anyhow!("STAGE_GROUPS entry '{pair}' is not stage=group"))?;
        let at = STAGES
            .iter()
            .position(|s| s.name == stage.trim())
            .ok_or_else(|| anyhow::anyhow!("STAGE_GROUPS names '{stage}', which is not a stage"))?;
        groups[at] = group.trim().to_owned();
    }
    Ok(groups)
}

fn rate(now: i64, before: Option<i64>, seconds: f64) -> f64 {
    match before {
        Some(b) if seconds > 0.0 && now >= b => ((now - b) as f64 / seconds * 10.0).round() / 10.0,
        _ => 0.0,
    }
}

fn assemble(
    names: &TopicArgs,
    groups: &[String],
    observed: Observed,
    retries: Option<BTreeMap<String, u64>>,
    dlq: &dlq::Index,
    previous: &Previous,
) -> (Pipeline, Previous) {
    let seconds = previous
        .at
        .map(|at| observed.at.duration_since(at).as_secs_f64())
        .unwrap_or(0.0);
    let dead = dlq.by_stage();
    let mut next = Previous {
        at: Some(observed.at),
        ..Previous::default()
    };
    let topics: Vec<TopicView> = TOPICS
        .iter()
        .zip(&observed.topics)
        .map(|(t, offsets)| {
            let offsets = offsets.as_deref().unwrap_or_default();
            let written: i64 = offsets.iter().map(|p| p.high).sum();
            next.written.insert(t.key, written);
            TopicView {
                key: t.key,
                name: names.name(t.role).to_owned(),
                partitions: offsets.len(),
                messages: offsets.iter().map(PartitionOffsets::size).sum(),
                rate: rate(written, previous.written.get(t.key).copied(), seconds),
            }
        })
        .collect();
    let stages: Vec<StageView> = STAGES
        .iter()
        .zip(observed.stages)
        .zip(groups)
        .map(|((s, observed), group)| {
            let (offsets, group_state, members, error) = match observed {
                Ok(o) => (o.offsets, o.group_state, o.members, None),
                Err(e) => (Vec::new(), "unknown".into(), Vec::new(), Some(e)),
            };
            let committed: i64 = offsets
                .iter()
                .map(|p| p.committed.unwrap_or(p.low).max(p.low))
                .sum();
            if error.is_none() {
                next.committed.insert(s.name, committed);
            }
            StageView {
                name: s.name,
                group: group.clone(),
                input: names.name(s.input).to_owned(),
                outputs: s
                    .outputs
                    .iter()
                    .map(|r| names.name(*r).to_owned())
                    .collect(),
                lag: offsets.iter().map(PartitionOffsets::lag).sum(),
                partitions: offsets.iter().map(Partition::from).collect(),
                throughput: rate(committed, previous.committed.get(s.name).copied(), seconds),
                replicas: members.len(),
                members,
                group_state,
                retries: retries
                    .as_ref()
                    .map(|r| r.get(s.name).copied().unwrap_or(0)),
                dead_lettered: dead.get(s.name).copied().unwrap_or(0),
                error,
            }
        })
        .collect();
    let topic_rate = |role: TopicRole| {
        topics
            .iter()
            .find(|t| t.key == topology::topic(role).key)
            .map(|t| t.rate)
            .unwrap_or(0.0)
    };
    let mut edges = vec![Edge {
        from: INTAKE.into(),
        to: names.name(TopicRole::Orders).to_owned(),
        rate: topic_rate(TopicRole::Orders),
    }];
    for s in &stages {
        edges.push(Edge {
            from: s.input.clone(),
            to: s.name.into(),
            rate: s.throughput,
        });
        let stage = topology::stage(s.name).expect("a stage of the table");
        for out in stage.outputs {
            edges.push(Edge {
                from: s.name.into(),
                to: names.name(*out).to_owned(),
                rate: topic_rate(*out),
            });
        }
    }
    let sample = Pipeline {
        at: OffsetDateTime::now_utc()
            .format(&Rfc3339)
            .unwrap_or_default(),
        stages,
        topics,
        edges,
        dead_letters: dlq.total(),
        dead_letters_complete: dlq.caught_up(),
    };
    (sample, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_groups_default_to_the_table_and_can_be_renamed() {
        assert_eq!(
            stage_groups("").unwrap(),
            [
                "orderflow-persist",
                "orderflow-inventory",
                "orderflow-payment",
                "orderflow-notify"
            ]
        );
        let g = stage_groups(" notify = n1 ,persist=p1").unwrap();
        assert_eq!(g, ["p1", "orderflow-inventory", "orderflow-payment", "n1"]);
        assert!(stage_groups("nothing=x").is_err());
        assert!(stage_groups("persist").is_err());
        assert!(stage_groups("persist=").is_err());
    }

    #[test]
    fn rates_are_per_second_and_never_negative() {
        assert_eq!(rate(110, Some(100), 2.0), 5.0);
        assert_eq!(rate(110, None, 2.0), 0.0);
        assert_eq!(rate(90, Some(100), 2.0), 0.0, "a recreated topic");
        assert_eq!(rate(110, Some(100), 0.0), 0.0);
    }
}
