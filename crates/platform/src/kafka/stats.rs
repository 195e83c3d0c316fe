//! librdkafka's own view of a producer, as Prometheus gauges: how long
//! messages wait in the client before they are sent, how long requests
//! wait for the socket, and the broker's round trip, per broker.
//!
//! librdkafka emits its statistics every `statistics.interval.ms`
//! (5 s by default here, [`STATS_INTERVAL_MS`]); its latency windows cover
//! that interval only, so each gauge is a quantile of the last interval, not
//! of the process's life. A window that saw nothing is removed, not shown
//! as zero. Together they split a slow publish into the client's share
//! (`queue`, including the linger, and `request_queue`) and the broker's
//! (`rtt`, which includes the broker's queueing and the network).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rdkafka::statistics::{Statistics, Window};
use std::sync::atomic::AtomicU64;

/// How often librdkafka reports, unless `KAFKA_CONFIG` says otherwise.
pub const STATS_INTERVAL_MS: u32 = 5_000;

/// A quantile's label and where a window keeps it.
type Quantile = (&'static str, fn(&Window) -> i64);

/// The quantiles kept of each window.
const QUANTILES: [Quantile; 3] = [("0.5", |w| w.p50), ("0.99", |w| w.p99), ("1", |w| w.max)];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BrokerQuantile {
    /// librdkafka's name of the broker: `host:port/id`.
    pub broker: String,
    /// `0.5`, `0.99`, or `1` (the window's largest value).
    pub quantile: &'static str,
}

type Seconds = Family<BrokerQuantile, Gauge<f64, AtomicU64>>;

/// The gauges one producer fills from its statistics; clones share them.
#[derive(Clone, Default)]
pub struct ProducerStats {
    queue: Seconds,
    request_queue: Seconds,
    rtt: Seconds,
    queued: Gauge,
}

impl ProducerStats {
    /// Adds the gauges to `registry` (under its prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "kafka_producer_queue_latency_seconds",
            "Time messages waited in the client before being sent, over the last statistics interval (librdkafka int_latency; includes linger.ms)",
            self.queue.clone(),
        );
        registry.register(
            "kafka_producer_request_queue_latency_seconds",
            "Time produce requests waited to be written to the broker's socket, over the last statistics interval (librdkafka outbuf_latency)",
            self.request_queue.clone(),
        );
        registry.register(
            "kafka_producer_rtt_seconds",
            "Broker round trip of requests, over the last statistics interval (librdkafka rtt)",
            self.rtt.clone(),
        );
        registry.register(
            "kafka_producer_messages_queued",
            "Messages in the client not yet acknowledged or failed (librdkafka msg_cnt)",
            self.queued.clone(),
        );
    }

    /// Takes one report of librdkafka's.
    pub fn record(&self, stats: &Statistics) {
        self.queued.set(stats.msg_cnt as i64);
        // Bootstrap entries (id -1) and the internal broker carry no traffic
        // of their own.
        for broker in stats.brokers.values().filter(|b| b.nodeid >= 0) {
            for (family, window) in [
                (&self.queue, &broker.int_latency),
                (&self.request_queue, &broker.outbuf_latency),
                (&self.rtt, &broker.rtt),
            ] {
                set_window(family, &broker.name, window.as_ref());
            }
        }
    }
}

/// A window's quantiles in seconds (librdkafka counts microseconds), or
/// none if the window saw nothing.
fn set_window(family: &Seconds, broker: &str, window: Option<&Window>) {
    for (quantile, value) in QUANTILES {
        let labels = BrokerQuantile {
            broker: broker.to_owned(),
            quantile,
        };
        match window.filter(|w| w.cnt > 0) {
            Some(w) => {
                family.get_or_create(&labels).set(value(w) as f64 / 1e6);
            }
            None => {
                family.remove(&labels);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::statistics::Broker;

    fn window(cnt: i64, p50: i64, p99: i64, max: i64) -> Window {
        Window {
            cnt,
            p50,
            p99,
            max,
            ..Window::default()
        }
    }

    fn exposition(stats: &ProducerStats) -> String {
        let mut registry = Registry::default();
        stats.register(&mut registry);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        out
    }

    #[test]
    fn a_report_becomes_seconds_per_broker_and_an_empty_window_disappears() {
        let mut report = Statistics {
            msg_cnt: 7,
            ..Statistics::default()
        };
        report.brokers.insert(
            "b1".into(),
            Broker {
                name: "127.0.0.1:9092/1".into(),
                nodeid: 1,
                int_latency: Some(window(100, 5_000, 12_000, 20_000)),
                rtt: Some(window(40, 1_500, 9_000, 11_000)),
                outbuf_latency: Some(window(0, 0, 0, 0)),
                ..Broker::default()
            },
        );
        report.brokers.insert(
            "boot".into(),
            Broker {
                name: "127.0.0.1:9092/bootstrap".into(),
                nodeid: -1,
                rtt: Some(window(3, 1, 1, 1)),
                ..Broker::default()
            },
        );
        let stats = ProducerStats::default();
        stats.record(&report);
        let text = exposition(&stats);
        let line = |metric: &str, q: &str| {
            format!("{metric}{{broker=\"127.0.0.1:9092/1\",quantile=\"{q}\"}} ")
        };
        assert!(
            text.contains(&format!(
                "{}0.012",
                line("kafka_producer_queue_latency_seconds", "0.99")
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "{}0.005",
                line("kafka_producer_queue_latency_seconds", "0.5")
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "{}0.009",
                line("kafka_producer_rtt_seconds", "0.99")
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!("{}0.011", line("kafka_producer_rtt_seconds", "1"))),
            "{text}"
        );
        assert!(text.contains("kafka_producer_messages_queued 7"), "{text}");
        assert!(!text.contains("bootstrap"), "{text}");
        assert!(
            !text.contains("kafka_producer_request_queue_latency_seconds{"),
            "{text}"
        );

        // The next interval saw no round trips: the old figure goes.
        report.brokers.get_mut("b1").unwrap().rtt = Some(window(0, 0, 0, 0));
        stats.record(&report);
        let text = exposition(&stats);
        assert!(!text.contains("kafka_producer_rtt_seconds{"), "{text}");
        assert!(
            text.contains(&format!(
                "{}0.012",
                line("kafka_producer_queue_latency_seconds", "0.99")
            )),
            "{text}"
        );
    }
}
