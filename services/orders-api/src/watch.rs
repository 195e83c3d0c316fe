//! One watcher per process for every `waitFor` long-poll (issue 14, defect
//! 4). Each waiter registers the order it waits for; one loop asks MongoDB
//! for all of them in a single query and hands each waiter the order's
//! latest state. A change stream on `orders`, where the server has one,
//! wakes the loop as soon as an order changes, and the loop then polls
//! every second only as a safety net. Without a change stream it polls every
//! [`POLL`]. Waiters are capped: past the cap, the caller gets 503 with
//! `Retry-After` instead of one more query loop.

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
    permits: Arc<Semaphore>,
    polls: Counter,
    waiters: Gauge,
    streaming: std::sync::atomic::AtomicBool,
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
    pub fn new(cap: usize, registry: &mut Registry) -> Arc<Watcher> {
        let w = Watcher {
            waiting: Mutex::default(),
            wake: Notify::new(),
            permits: Arc::new(Semaphore::new(cap.max(1))),
            polls: Counter::default(),
            waiters: Gauge::default(),
            streaming: Default::default(),
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
        Ok(Waiter {
            latest,
            id: id.to_owned(),
            watcher: self.clone(),
            _permit: permit,
        })
    }

    /// Whether a change stream wakes the loop.
    pub fn streaming(&self) -> bool {
        self.streaming.load(std::sync::atomic::Ordering::Relaxed)
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
            self.polls.inc();
            match self.poll(&orders, ids).await {
                Ok(()) => {}
                Err(e) => tracing::warn!(error = %e, "waitFor watcher: MongoDB query failed"),
            }
            let pause = if self.streaming() { SAFETY_POLL } else { POLL };
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

    /// Wakes the loop on every change of `orders`, while the server offers
    /// a change stream; tries to open one again every 30 s otherwise.
    async fn follow_changes(
        self: Arc<Self>,
        orders: mongodb::Collection<bson::Document>,
        shutdown: CancellationToken,
    ) {
        while !shutdown.is_cancelled() {
            match orders.watch().await {
                Ok(mut stream) => {
                    self.streaming
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    loop {
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            next = stream.next() => match next {
                                Some(Ok(_)) => self.wake.notify_one(),
                                Some(Err(e)) => {
                                    tracing::info!(error = %e, "orders change stream ended; polling");
                                    break;
                                }
                                None => break,
                            },
                        }
                    }
                    self.streaming
                        .store(false, std::sync::atomic::Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::info!(error = %e, "no change stream on orders; polling every 100 ms")
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(30)) => {}
            }
        }
    }
}
