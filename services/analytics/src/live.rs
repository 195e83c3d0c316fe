//! Live figures from analytics' own consumer group: orders/second over the
//! last `orders_window` from `orders`, revenue/minute over the last minute
//! from approved payments on `payment.events`. Per-second buckets, summed
//! over a sliding window when asked.

use std::collections::VecDeque;
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
    window: Arc<Mutex<Window>>,
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
        let window = self.window.lock().expect("window lock");
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
        let ce_type = headers::get(msg.headers(), headers::TYPE);
        let mut window = self.window.lock().expect("window lock");
        if msg.topic() == orders_topic {
            if serde_json::from_slice::<OrderPlaced>(payload).is_ok() {
                window.order(second);
            }
        } else if ce_type == Some(types::PAYMENT_APPROVED) {
            if let Ok(p) = serde_json::from_slice::<PaymentProcessed>(payload) {
                if p.approved {
                    window.payment(second, p.amount);
                }
            }
        }
    }

    /// Feeds the window from the stream until shutdown. Undecodable
    /// messages are skipped: live figures are best effort, the stages own
    /// the dead-letter queue.
    pub async fn run(
        self,
        consumer: std::sync::Arc<StreamConsumer>,
        orders_topic: String,
        shutdown: CancellationToken,
    ) {
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
}
