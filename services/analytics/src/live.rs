//! Live figures from the event stream: orders/second over the last
//! `orders_window` from `orders`, revenue/minute over the last minute from
//! approved payments on `payment.events`. Per-second buckets, summed over a
//! sliding window when asked.
//!
//! Every analytics replica reads every partition itself (assigned, never in
//! a group, never committing), from [`HISTORY_SECS`] ago: replicas agree,
//! and a restarted one has its window at once. Each order and each
//! approved payment is counted once, by orderId: a redelivered event and a
//! re-posted order are the same fact ([`Seen`]).

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use orderflow_domain::events::{types, OrderPlaced, PaymentProcessed};
use orderflow_domain::Money;
use orderflow_platform::kafka::headers;
use orderflow_platform::shutdown::CancellationToken;
use rdkafka::consumer::StreamConsumer;
use rdkafka::message::{BorrowedMessage, Message};
use serde::Serialize;
use time::OffsetDateTime;

/// How far back buckets are kept.
pub const HISTORY_SECS: i64 = 120;
/// How long an order already counted is remembered at least (a re-post
/// within it is not counted again), and how many facts at least.
pub const SEEN_SECS: i64 = 3600;
pub const SEEN_CAP: usize = 200_000;

/// The facts already counted, as fingerprints of (kind, orderId), in two
/// generations: `current` takes new facts until it holds [`SEEN_CAP`] or
/// began [`SEEN_SECS`] ago, then becomes `previous`, and the older
/// generation is dropped whole. A fact is so remembered for at least
/// `SEEN_SECS` (at most twice that), and at least the `SEEN_CAP` newest
/// facts are (at most twice as many).
///
/// Memory (issue 12: at most 30 MB a service): two sets of 8-byte
/// fingerprints, at most about 2.4 MB each at the cap, and nothing in
/// between. The earlier single map with a queue of expiry times churned
/// at the cap: removals left tombstones, and the map regrew to twice its
/// buckets with the old table still live, 18 MB at its peak for 200 000
/// facts (analytics' peak RSS 37.5 MB in a bench run); in a program that
/// keeps 3 million facts' worth of churn the generations peak at 6 MB.
///
/// A fingerprint is 8 bytes where the id was a string. Two facts sharing
/// one would count as one: with 64 bits and 400 000 facts that is about
/// one chance in 10⁸, for a display figure, and the same in every replica
/// (the hash's keys are fixed, so replicas agree).
#[derive(Debug, Default)]
pub struct Seen {
    current: HashSet<u64>,
    previous: HashSet<u64>,
    /// When `current` began (Unix s; 0, so the first fact starts one).
    started: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Order,
    Payment,
}

/// The same value in every process of one build: `DefaultHasher::new()`
/// is SipHash with fixed keys.
fn fingerprint(kind: Kind, id: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    (kind, id).hash(&mut h);
    h.finish()
}

impl Seen {
    /// True the first time (`kind`, `id`) is seen (within [`SEEN_SECS`]
    /// and the [`SEEN_CAP`] newest facts at least).
    pub fn first(&mut self, kind: Kind, id: &str, now: i64) -> bool {
        if self.current.len() >= SEEN_CAP || now - self.started >= SEEN_SECS {
            // The older generation goes before the new one is allocated:
            // never three tables at once.
            self.previous = std::mem::take(&mut self.current);
            self.current = HashSet::with_capacity(SEEN_CAP);
            self.started = now;
        }
        let key = fingerprint(kind, id);
        if self.previous.contains(&key) {
            return false;
        }
        self.current.insert(key)
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Bucket {
    second: i64,
    orders: u64,
    payments: u64,
    revenue_cents: i64,
}

/// Per-second counts of the last [`HISTORY_SECS`] seconds.
#[derive(Debug, Default)]
pub struct Window {
    buckets: VecDeque<Bucket>,
}

impl Window {
    fn bucket(&mut self, second: i64) -> Option<&mut Bucket> {
        let newest = self.buckets.back().map(|b| b.second).unwrap_or(i64::MIN);
        if second > newest {
            self.buckets.push_back(Bucket {
                second,
                ..Bucket::default()
            });
            while self
                .buckets
                .front()
                .is_some_and(|b| b.second <= second - HISTORY_SECS)
            {
                self.buckets.pop_front();
            }
            return self.buckets.back_mut();
        }
        if second <= newest - HISTORY_SECS {
            return None; // too old to matter
        }
        let at = self.buckets.partition_point(|b| b.second < second);
        if self.buckets.get(at).map(|b| b.second) != Some(second) {
            self.buckets.insert(
                at,
                Bucket {
                    second,
                    ..Bucket::default()
                },
            );
        }
        self.buckets.get_mut(at)
    }

    pub fn order(&mut self, second: i64) {
        if let Some(b) = self.bucket(second) {
            b.orders += 1;
        }
    }

    pub fn payment(&mut self, second: i64, amount: Money) {
        if let Some(b) = self.bucket(second) {
            b.payments += 1;
            b.revenue_cents += amount.minor();
        }
    }

    /// (orders, payments, revenue cents) in the `span` seconds up to and
    /// including `now`.
    pub fn sum(&self, now: i64, span: i64) -> (u64, u64, i64) {
        self.buckets
            .iter()
            .filter(|b| b.second > now - span && b.second <= now)
            .fold((0, 0, 0), |(o, p, r), b| {
                (o + b.orders, p + b.payments, r + b.revenue_cents)
            })
    }
}

#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Live {
    pub at: String,
    /// Orders per second over the last `ordersWindowSeconds`.
    pub orders_per_second: f64,
    pub orders_window_seconds: i64,
    /// Σ approved payments over the last 60 s.
    pub revenue_per_minute: Money,
    pub orders_last_minute: u64,
    pub payments_last_minute: u64,
}

#[derive(Clone)]
pub struct LiveMetrics {
    window: Arc<Mutex<(Window, Seen)>>,
    orders_window: i64,
}

impl LiveMetrics {
    pub fn new(orders_window: Duration) -> Self {
        LiveMetrics {
            window: Arc::default(),
            orders_window: (orders_window.as_secs() as i64).clamp(1, HISTORY_SECS),
        }
    }

    pub fn snapshot(&self) -> Live {
        let now = OffsetDateTime::now_utc();
        let second = now.unix_timestamp();
        let guard = self.window.lock().expect("window lock");
        let window = &guard.0;
        let (orders, _, _) = window.sum(second, self.orders_window);
        let (orders_minute, payments_minute, cents) = window.sum(second, 60);
        Live {
            at: now
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            orders_per_second: orders as f64 / self.orders_window as f64,
            orders_window_seconds: self.orders_window,
            revenue_per_minute: Money::from_minor(cents),
            orders_last_minute: orders_minute,
            payments_last_minute: payments_minute,
        }
    }

    fn record(&self, msg: &BorrowedMessage<'_>, orders_topic: &str) {
        // Event time: the broker timestamp (CreateTime), else now.
        let second = msg
            .timestamp()
            .to_millis()
            .map(|ms| ms.div_euclid(1000))
            .unwrap_or_else(|| OffsetDateTime::now_utc().unix_timestamp());
        let Some(payload) = msg.payload() else {
            return;
        };
        let ce_type = headers::get(msg, headers::TYPE);
        self.count(msg.topic() == orders_topic, ce_type, payload, second);
    }

    /// Counts one event of `orders` (`is_order`) or `payment.events`, once
    /// per orderId.
    pub fn count(&self, is_order: bool, ce_type: Option<&str>, payload: &[u8], second: i64) {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let mut guard = self.window.lock().expect("window lock");
        let (window, seen) = &mut *guard;
        if is_order {
            if let Ok(o) = serde_json::from_slice::<OrderPlaced>(payload) {
                if seen.first(Kind::Order, &o.order_id, now) {
                    window.order(second);
                }
            }
        } else if ce_type == Some(types::PAYMENT_APPROVED) {
            if let Ok(p) = serde_json::from_slice::<PaymentProcessed>(payload) {
                if p.approved && seen.first(Kind::Payment, &p.order_id, now) {
                    window.payment(second, p.amount);
                }
            }
        }
    }

    /// Assigns the partitions of `topics` not read yet, each from
    /// [`HISTORY_SECS`] ago (its end when nothing is that recent, see
    /// [`starts_since`](orderflow_platform::kafka::offsets::starts_since)).
    /// A partition without a start yet is left for the next round, never
    /// started at its end, which would skip what it already holds.
    /// Blocking.
    fn assign_new(
        consumer: &StreamConsumer,
        topics: &[String],
        assigned: &mut std::collections::HashSet<(String, i32)>,
    ) -> anyhow::Result<()> {
        use orderflow_platform::kafka::offsets;
        use rdkafka::consumer::Consumer;
        use rdkafka::{Offset, TopicPartitionList};
        let timeout = Duration::from_secs(5);
        let since = (OffsetDateTime::now_utc().unix_timestamp() - HISTORY_SECS) * 1000;
        let mut new = Vec::new();
        for topic in topics {
            for p in offsets::partitions(consumer, topic, timeout)? {
                if !assigned.contains(&(topic.clone(), p)) {
                    new.push((topic.clone(), p));
                }
            }
        }
        if new.is_empty() {
            return Ok(());
        }
        let mut assign = TopicPartitionList::new();
        let mut failed = Vec::new();
        for ((topic, p), start) in offsets::starts_since(consumer, &new, since, timeout)? {
            match start {
                Ok(o) => {
                    assign.add_partition_offset(&topic, p, Offset::Offset(o))?;
                }
                Err(e) => failed.push(format!("{topic}/{p}: {e}")),
            }
        }
        if assign.count() > 0 {
            consumer.incremental_assign(&assign)?;
        }
        for e in assign.elements() {
            assigned.insert((e.topic().to_owned(), e.partition()));
        }
        if failed.is_empty() {
            Ok(())
        } else {
            anyhow::bail!("no start offset yet for {}", failed.join(", "))
        }
    }

    /// Feeds the window from `topics` (orders first) until shutdown,
    /// picking up new partitions every 10 s (within a second after a failed
    /// round). Undecodable messages are
    /// skipped: live figures are best effort, the stages own the
    /// dead-letter queue.
    pub async fn run(
        self,
        consumer: std::sync::Arc<StreamConsumer>,
        topics: Vec<String>,
        shutdown: CancellationToken,
    ) {
        let orders_topic = topics[0].clone();
        let assigned = Arc::new(Mutex::new(std::collections::HashSet::new()));
        let refresh = {
            let (consumer, topics, assigned, shutdown) = (
                consumer.clone(),
                topics.clone(),
                assigned.clone(),
                shutdown.clone(),
            );
            async move {
                loop {
                    let (c, t, a) = (consumer.clone(), topics.clone(), assigned.clone());
                    let result = tokio::task::spawn_blocking(move || {
                        Self::assign_new(&c, &t, &mut a.lock().expect("assigned"))
                    })
                    .await;
                    // A failed round (a leader not elected yet, a broker
                    // away) is retried within a second: what is not
                    // assigned is not counted.
                    let pause = match result {
                        Ok(Ok(())) => Duration::from_secs(10),
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "assigning the live topics");
                            Duration::from_secs(1)
                        }
                        Err(_) => Duration::from_secs(1),
                    };
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
            }
        };
        tokio::spawn(refresh);
        let mut stream = consumer.stream();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                next = stream.next() => match next {
                    Some(Ok(msg)) => self.record(&msg, &orders_topic),
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "live stream");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    None => break,
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_slide_and_late_events_land_in_their_second() {
        let mut w = Window::default();
        w.order(100);
        w.order(100);
        w.order(105);
        w.order(103); // late, still within history
        w.payment(104, Money::from_minor(250));
        assert_eq!(w.sum(105, 10), (4, 1, 250));
        assert_eq!(w.sum(105, 2), (1, 1, 250));
        assert_eq!(w.sum(200, 10), (0, 0, 0));
        w.order(300); // evicts everything older than 120 s
        assert_eq!(w.sum(300, HISTORY_SECS), (1, 0, 0));
        w.order(100); // far too old: ignored
        assert_eq!(w.sum(300, 1000), (1, 0, 0));
    }

    #[test]
    fn each_order_and_payment_counts_once_however_often_it_arrives() {
        let live = LiveMetrics::new(Duration::from_secs(10));
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let order = |id: &str| {
            format!(
                r#"{{"orderId":"{id}","customerId":"c","currency":"USD","items":[{{"productId":"p","quantity":1}}],"placedAt":"2026-12-02T10:00:00Z"}}"#
            )
        };
        let payment = |id: &str, approved: bool| {
            format!(
                r#"{{"orderId":"{id}","customerId":"c","currency":"USD","amount":4.50,"approved":{approved},"processedAt":"2026-12-02T10:00:00Z"}}"#
            )
        };
        for _ in 0..3 {
            // a redelivery, and a re-post of the same orderId
            live.count(true, None, order("o-1").as_bytes(), now);
        }
        live.count(true, None, order("o-2").as_bytes(), now);
        live.count(true, None, b"not json", now);
        let approved = Some(types::PAYMENT_APPROVED);
        for _ in 0..2 {
            live.count(false, approved, payment("o-1", true).as_bytes(), now);
        }
        live.count(false, approved, payment("o-2", false).as_bytes(), now);
        let snapshot = live.snapshot();
        assert_eq!(snapshot.orders_last_minute, 2);
        assert_eq!(snapshot.payments_last_minute, 1);
        assert_eq!(snapshot.revenue_per_minute.minor(), 450);
    }

    #[test]
    fn what_was_seen_is_remembered_for_its_time_and_cap_and_forgotten_after_twice_that() {
        let mut seen = Seen::default();
        assert!(seen.first(Kind::Order, "a", 0));
        assert!(!seen.first(Kind::Order, "a", 10));
        assert!(seen.first(Kind::Payment, "a", 10), "kinds apart");
        assert!(
            !seen.first(Kind::Order, "a", SEEN_SECS + 1),
            "remembered for SEEN_SECS"
        );
        assert!(
            seen.first(Kind::Order, "a", 2 * SEEN_SECS + 2),
            "forgotten within twice SEEN_SECS"
        );

        let mut seen = Seen::default();
        for i in 0..SEEN_CAP + 10 {
            assert!(seen.first(Kind::Order, &i.to_string(), 5));
        }
        assert!(seen.current.len() <= SEEN_CAP && seen.previous.len() <= SEEN_CAP);
        assert!(
            !seen.first(Kind::Order, "0", 5),
            "the SEEN_CAP newest and more are remembered"
        );
        for i in SEEN_CAP + 10..2 * SEEN_CAP + 10 {
            assert!(seen.first(Kind::Order, &i.to_string(), 5));
        }
        assert!(
            seen.current.len() <= SEEN_CAP && seen.previous.len() <= SEEN_CAP,
            "never more than two generations"
        );
        assert!(seen.first(Kind::Order, "0", 5), "the oldest went first");
        assert!(
            !seen.first(Kind::Order, &(2 * SEEN_CAP + 9).to_string(), 5),
            "the newest stay"
        );
    }
}
