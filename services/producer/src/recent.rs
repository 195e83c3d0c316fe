//! The Redis list of the most recent orders (`orders:recent`, newest first),
//! read by analytics. Best effort: Redis being down never fails an order.

use orderflow_domain::events::OrderPlaced;
use orderflow_platform::coalesce::Coalescer;
use orderflow_platform::redis::LazyRedis;
use orderflow_platform::telemetry::Parent;
use prometheus_client::metrics::counter::Counter;
use tracing::Instrument as _;

/// One entry of the list: the OrderPlaced event as published (`event_json`,
/// a JSON object) with `itemCount`, the sum of its quantities, added as the
/// last member. Spliced into the published bytes rather than serialised a
/// second time (the tests compare it with serde's flattened struct).
fn entry(event_json: &[u8], order: &OrderPlaced) -> Result<String, String> {
    let item_count: u64 = order.items.iter().map(|i| u64::from(i.quantity)).sum();
    let object = std::str::from_utf8(event_json)
        .ok()
        .and_then(|json| json.strip_suffix('}'))
        .filter(|head| head.starts_with('{'))
        .ok_or("the published event is not a JSON object")?;
    let separator = if object.len() > 1 { "," } else { "" };
    Ok(format!("{object}{separator}\"itemCount\":{item_count}}}"))
}

/// The list's writer. A request queues its entry once the broker has
/// acknowledged the order and does not wait for Redis (SPEC: pushed after
/// the acknowledgement, Redis never holds an order up): the 202 costs no
/// Redis round trip, and one MULTI/EXEC of LPUSH and LTRIM carries every
/// entry queued meanwhile. An entry that cannot be queued (the writer is a
/// full queue behind) or written is counted and logged, never retried: the
/// list is a view of the newest orders, not a record of them.
pub struct RecentOrders {
    writer: Coalescer<(String, Parent), String>,
    failures: Counter,
}

/// Entries one round trip takes at most, and how many wait behind it.
const ENTRIES_PER_WRITE: usize = 256;

/// The writer's pause after each write, while entries gather for the next:
/// the list keeps only the newest, so one write every few milliseconds
/// shows the same orders as one per request for a fraction of the round
/// trips. Nobody waits for it.
const WRITE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(5);

impl RecentOrders {
    /// Starts the writer on the current runtime. Its task ends once the
    /// last handle is dropped and the entries queued are written: an owner
    /// waits for it on the way out. `failures` counts entries not written.
    pub fn start(
        redis: LazyRedis,
        key: String,
        limit: usize,
        failures: Counter,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let redis = std::sync::Arc::new(redis);
        let failed = failures.clone();
        let (writer, task) = Coalescer::spawn_joined(
            ENTRIES_PER_WRITE,
            move |mut entries: Vec<(String, Parent)>| {
                let mut pipe = redis::pipe();
                // Older entries than the newest `limit` would be trimmed
                // at once: they are not sent.
                let count = entries.len();
                let kept = entries.split_off(count.saturating_sub(limit.max(1)));
                // A child of the first request the write carries (of its
                // trace context: the request's span itself ended with the
                // answer).
                let span = tracing::info_span!("recent orders write", entries = kept.len());
                if let Some((_, parent)) = kept.first() {
                    parent.adopt(&span);
                }
                // LPUSH puts each value at the head in turn: the newest
                // ends up first.
                let values: Vec<String> = kept.into_iter().map(|(entry, _)| entry).collect();
                pipe.atomic()
                    .lpush(&key, values)
                    .ignore()
                    .ltrim(&key, 0, limit.saturating_sub(1) as isize)
                    .ignore();
                let redis = redis.clone();
                let failed = failed.clone();
                async move {
                    let written = redis.run::<()>(&pipe).instrument(span).await;
                    if let Err(e) = &written {
                        failed.inc_by(count as u64);
                        tracing::warn!(entries = count, error = %e, "recent-orders list not updated");
                    }
                    tokio::time::sleep(WRITE_INTERVAL).await;
                    written
                }
            },
        );
        (RecentOrders { writer, failures }, task)
    }

    /// Queues the order (`event_json`: its event as published) for the
    /// list, newest first, and returns at once.
    pub fn push(&self, order: &OrderPlaced, event_json: &[u8]) {
        let queued = entry(event_json, order).and_then(|entry| {
            self.writer
                .offer((entry, Parent::of(&tracing::Span::current())))
                .map_err(|_| "the writer is a full queue behind or has stopped".to_owned())
        });
        if let Err(e) = queued {
            self.failures.inc();
            tracing::warn!(order_id = %order.order_id, error = %e, "recent-orders list not updated");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orderflow_domain::intake::parse_submission;

    /// What the list held before the splice: serde's own serialisation.
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Flattened<'a> {
        #[serde(flatten)]
        order: &'a OrderPlaced,
        item_count: u64,
    }

    #[test]
    fn the_spliced_entry_is_the_event_with_its_item_count() {
        for body in [
            r#"{"orderId":"o-1","customerId":"c","items":[{"id":"p","quantity":3,"price":0.1},{"id":"q","quantity":2,"name":"Q \"x\" }"}]}"#,
            r#"{"customerId":"c","productId":"p"}"#,
            r#"{"orderId":"o-3","customerId":"c","productId":"p","quantity":7,"totalAmount":12.30,"currency":"EUR"}"#,
        ] {
            let mut submission = parse_submission(body.as_bytes()).unwrap();
            let id = submission
                .order_id
                .take()
                .unwrap_or_else(|| "server-id".into());
            let order =
                OrderPlaced::from_submission(submission, id, time::OffsetDateTime::now_utc());
            let published = serde_json::to_vec(&order).unwrap();
            let expected = serde_json::to_string(&Flattened {
                order: &order,
                item_count: order.items.iter().map(|i| u64::from(i.quantity)).sum(),
            })
            .unwrap();
            assert_eq!(entry(&published, &order).unwrap(), expected, "{body}");
        }
    }

    #[test]
    fn what_is_not_a_json_object_is_refused() {
        let mut submission = parse_submission(br#"{"customerId":"c","productId":"p"}"#).unwrap();
        submission.order_id = None;
        let order =
            OrderPlaced::from_submission(submission, "x".into(), time::OffsetDateTime::now_utc());
        for bad in [&b"[1]"[..], b"", b"{", b"\xff}"] {
            assert!(entry(bad, &order).is_err(), "{bad:?}");
        }
        assert_eq!(entry(b"{}", &order).unwrap(), r#"{"itemCount":1}"#);
    }
}
