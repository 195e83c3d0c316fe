//! One watcher per process for every `waitFor` long-poll (issue 14, defect
//! 4). Each waiter registers the order it waits for; one loop asks MongoDB
//! for all of them in a single query and hands each waiter the order's
//! latest state. A change stream on `orders`, where the server has one,
//! wakes the loop as soon as an order changes, and the loop then polls
//! every second only as a safety net. Without a change stream it polls every
//! [`POLL`]. Waiters are capped: past the cap, the caller gets 503 with
//! `Retry-After` instead of one more query loop.
//!
//! The change stream is open only while someone waits, and for a linger
//! after the last waiter leaves (a burst of long-polls reuses it). An open
//! stream makes the server produce an event for every write to `orders`,
//! three per order, whether anyone waits or not: with one open, SecantusDB
//! spent 395–458 µs of CPU per order of the stages' writes instead of
//! 345–360 (issue 12, docs/benchmarks.md), and orders-api decoded them all.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bson::doc;
use futures::{StreamExt, TryStreamExt};
use orderflow_platform::mongo::documents::OrderDocument;
use orderflow_platform::shutdown::CancellationToken;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};

/// The poll interval without a change stream.
pub const POLL: Duration = Duration::from_millis(100);
/// The safety poll with a change stream.
pub const SAFETY_POLL: Duration = Duration::from_secs(1);

type Latest = watch::Sender<Option<Arc<OrderDocument>>>;

pub struct Watcher {
    /// orderId → (its latest state, how many wait for it).
    waiting: Mutex<HashMap<String, (Latest, usize)>>,
    wake: Notify,
    /// Told when a waiter registers: the change stream opens on demand.
    demand: Notify,
    permits: Arc<Semaphore>,
    polls: Counter,
    waiters: Gauge,
    /// 1 while the change stream is open: what [`Watcher::streaming`]
    /// reads.
    stream_open: Gauge,
    /// How long the stream stays open after the last waiter left.
    linger: Duration,
}

/// One registered waiter; unregisters when dropped.
pub struct Waiter {
    pub latest: watch::Receiver<Option<Arc<OrderDocument>>>,
    id: String,
    watcher: Arc<Watcher>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut waiting = self.watcher.waiting.lock().expect("waiters");
        if let Some((_, count)) = waiting.get_mut(&self.id) {
            *count -= 1;
            if *count == 0 {
                waiting.remove(&self.id);
            }
        }
        self.watcher.waiters.dec();
    }
}

/// Every waiter place is taken.
#[derive(Debug)]
pub struct Full;

impl Watcher {
    pub fn new(cap: usize, linger: Duration, registry: &mut Registry) -> Arc<Watcher> {
        let w = Watcher {
            waiting: Mutex::default(),
            wake: Notify::new(),
            demand: Notify::new(),
            permits: Arc::new(Semaphore::new(cap.max(1))),
            polls: Counter::default(),
            waiters: Gauge::default(),
            stream_open: Gauge::default(),
            linger,
        };
        registry.register(
            "wait_polls",
            "Queries of the one watcher serving every waitFor long-poll",
            w.polls.clone(),
        );
        registry.register(
            "waiters",
            "waitFor long-polls waiting now",
            w.waiters.clone(),
        );
        registry.register(
            "change_stream_open",
            "1 while the watcher's change stream on orders is open (only while someone waits, and a linger after)",
            w.stream_open.clone(),
        );
        Arc::new(w)
    }

    /// Registers a waiter for order `id`, or [`Full`] past the cap.
    pub fn wait_for(self: &Arc<Self>, id: &str) -> Result<Waiter, Full> {
        let permit = self.permits.clone().try_acquire_owned().map_err(|_| Full)?;
        let latest = {
            let mut waiting = self.waiting.lock().expect("waiters");
            let entry = waiting
                .entry(id.to_owned())
                .or_insert_with(|| (watch::channel(None).0, 0));
            entry.1 += 1;
            entry.0.subscribe()
        };
        self.waiters.inc();
        self.wake.notify_one();
        self.demand.notify_one();
        Ok(Waiter {
            latest,
            id: id.to_owned(),
            watcher: self.clone(),
            _permit: permit,
        })
    }

    /// Whether a change stream wakes the loop.
    pub fn streaming(&self) -> bool {
        self.stream_open.get() == 1
    }

    /// Serves every waiter until shutdown.
    pub async fn run(
        self: Arc<Self>,
        orders: mongodb::Collection<OrderDocument>,
        shutdown: CancellationToken,
    ) {
        tokio::spawn(
            self.clone()
                .follow_changes(orders.clone_with_type::<bson::Document>(), shutdown.clone()),
        );
        loop {
            let ids: Vec<String> = self
                .waiting
                .lock()
                .expect("waiters")
                .keys()
                .cloned()
                .collect();
            if ids.is_empty() {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = self.wake.notified() => continue,
                }
            }
            // Read before the query: a change the query cannot have seen
            // is then one the stream delivers.
            let streaming = self.streaming();
            self.polls.inc();
            match self.poll(&orders, ids).await {
                Ok(()) => {}
                Err(e) => tracing::warn!(error = %e, "waitFor watcher: MongoDB query failed"),
            }
            let pause = if streaming { SAFETY_POLL } else { POLL };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    async fn poll(
        &self,
        orders: &mongodb::Collection<OrderDocument>,
        ids: Vec<String>,
    ) -> mongodb::error::Result<()> {
        let docs: Vec<OrderDocument> = orders
            .find(doc! {"orderId": {"$in": ids}})
            .await?
            .try_collect()
            .await?;
        let waiting = self.waiting.lock().expect("waiters");
        for d in docs {
            if let Some((latest, _)) = waiting.get(&d.order_id) {
                latest.send_if_modified(|current| {
                    let changed = current.as_ref().is_none_or(|c| c.version != d.version);
                    if changed {
                        *current = Some(Arc::new(d));
                    }
                    changed
                });
            }
        }
        Ok(())
    }

    /// Wakes the loop on every change of `orders` while someone waits (and
    /// for the linger after), while the server offers a change stream;
    /// after a failed or broken stream, tries again after 30 s.
    async fn follow_changes(
        self: Arc<Self>,
        orders: mongodb::Collection<bson::Document>,
        shutdown: CancellationToken,
    ) {
        loop {
            while self.nobody_waits() {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = self.demand.notified() => {}
                }
            }
            let broken = match orders.watch().await {
                Ok(stream) => {
                    self.set_streaming(true);
                    let ended = self.stream_while_wanted(stream, &shutdown).await;
                    self.set_streaming(false);
                    match ended {
                        StreamEnd::Shutdown => return,
                        StreamEnd::Unwanted => false,
                        StreamEnd::Broken => true,
                    }
                }
                Err(e) => {
                    tracing::info!(error = %e, "no change stream on orders; polling every 100 ms");
                    true
                }
            };
            if broken {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(30)) => {}
                }
            }
        }
    }

    /// Passes on the stream's changes until nobody has waited for the
    /// linger, the stream ends, or shutdown.
    async fn stream_while_wanted(
        &self,
        mut stream: mongodb::change_stream::ChangeStream<
            mongodb::change_stream::event::ChangeStreamEvent<bson::Document>,
        >,
        shutdown: &CancellationToken,
    ) -> StreamEnd {
        let mut check = tokio::time::interval(
            (self.linger / 4).clamp(Duration::from_millis(50), Duration::from_secs(1)),
        );
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut idle_since: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return StreamEnd::Shutdown,
                next = stream.next() => match next {
                    Some(Ok(_)) => self.wake.notify_one(),
                    Some(Err(e)) => {
                        tracing::info!(error = %e, "orders change stream ended; polling");
                        return StreamEnd::Broken;
                    }
                    None => return StreamEnd::Broken,
                },
                _ = check.tick() => {
                    if !self.nobody_waits() {
                        idle_since = None;
                    } else if idle_since.get_or_insert_with(tokio::time::Instant::now).elapsed() >= self.linger {
                        return StreamEnd::Unwanted;
                    }
                }
            }
        }
    }

    fn nobody_waits(&self) -> bool {
        self.waiting.lock().expect("waiters").is_empty()
    }

    fn set_streaming(&self, open: bool) {
        self.stream_open.set(i64::from(open));
    }
}

/// Why the change stream was closed.
enum StreamEnd {
    Shutdown,
    /// Nobody waited for the linger.
    Unwanted,
    /// The server ended it or it failed.
    Broken,
}
