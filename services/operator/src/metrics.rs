//! The operator's own Prometheus metrics, served at `/metrics` beside the
//! platform's HTTP metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    pub namespace: String,
    pub pipeline: String,
    pub stage: String,
}

#[derive(Clone)]
pub struct Metrics {
    pub reconciles: Counter,
    pub failures: Family<FailureLabels, Counter>,
    pub duration: Histogram,
    pub lag: Family<StageLabels, Gauge>,
    pub replicas: Family<StageLabels, Gauge>,
    pub desired_replicas: Family<StageLabels, Gauge>,
    pub leader: Gauge,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Metrics {
            reconciles: Counter::default(),
            failures: Family::default(),
            duration: Histogram::new(exponential_buckets(0.005, 2.0, 12)),
            lag: Family::default(),
            replicas: Family::default(),
            desired_replicas: Family::default(),
            leader: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("orderflow_operator");
        r.register("reconciles", "Reconciles started", m.reconciles.clone());
        r.register(
            "reconcile_failures",
            "Reconciles or reconcile steps that failed, by reason",
            m.failures.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Time one reconcile took",
            m.duration.clone(),
        );
        r.register(
            "stage_lag",
            "Consumer lag of a stage (messages)",
            m.lag.clone(),
        );
        r.register(
            "stage_replicas",
            "Replicas a stage runs",
            m.replicas.clone(),
        );
        r.register(
            "stage_desired_replicas",
            "Replicas the lag of a stage asks for",
            m.desired_replicas.clone(),
        );
        r.register(
            "leader",
            "1 while this replica holds the leader Lease",
            m.leader.clone(),
        );
        m
    }

    pub fn failed(&self, reason: &str) {
        self.failures
            .get_or_create(&FailureLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::register(&mut Registry::default())
    }
}
