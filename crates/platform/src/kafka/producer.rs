//! The services' Kafka producer: rdkafka's `BaseProducer` whose delivery
//! reports are served on the Tokio runtime, not on a polling thread.
//!
//! rdkafka's `FutureProducer` polls from a thread of its own in 100 ms
//! windows, and the end of each window is a busy loop: the time left is
//! handed to librdkafka in whole milliseconds, so under a millisecond it
//! polls without waiting, reading the clock each time, until the window
//! is over. Every idle service with a producer spent 9–10 ms of CPU a
//! second that way (orders-api, which has none, 1), and at the maximum
//! rate `clock_gettime` in that thread was 6 % of the producer's samples.
//! Each delivery report also crossed one thread more than it needed to:
//! broker thread, polling thread, then the task waiting for it.
//!
//! Here librdkafka calls [`on_report`] (on its broker thread) whenever it
//! queues a report; that wakes [`pump`], a task on the runtime, which
//! serves every queued report there. Each report completes the sender's
//! oneshot, so the waiting request is woken on the same worker. Nothing
//! runs while nothing is produced.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use rdkafka::bindings as rdsys;
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, FromClientConfig, FromClientConfigAndContext};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{Message as _, OwnedMessage, Timestamp, ToBytes};
use rdkafka::producer::future_producer::{Delivery, OwnedDeliveryResult};
use rdkafka::producer::{
    BaseProducer, DeliveryResult, FutureRecord, Producer as _, ProducerContext,
};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use tokio::sync::{oneshot, Notify};

use super::stats::ProducerStats;

/// How long a send waits between tries while librdkafka's queue is full.
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(10);

/// Reports served in one go before the pump lets other tasks run.
const REPORTS_PER_TURN: usize = 1024;

/// The pump also looks at the queue this often, whatever it was told
/// (nothing is expected to need it).
const PUMP_FALLBACK: Duration = Duration::from_secs(1);

/// A cheaply cloned handle to one producer; see the module's text.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<Inner>,
}

// Fields drop in order: the queue handle before the client it belongs to.
struct Inner {
    /// librdkafka's main queue, where the delivery reports arrive.
    queue: MainQueue,
    base: BaseProducer<Reports>,
    wake: Arc<Notify>,
}

/// Completes each message's oneshot with its delivery report, and keeps
/// librdkafka's statistics as gauges.
#[derive(Default)]
pub struct Reports {
    stats: ProducerStats,
}

impl ClientContext for Reports {
    // Statistics arrive on the main queue, served by the pump like reports.
    fn stats(&self, statistics: rdkafka::Statistics) {
        self.stats.record(&statistics);
    }
}

impl ProducerContext for Reports {
    type DeliveryOpaque = Box<oneshot::Sender<OwnedDeliveryResult>>;

    fn delivery(&self, result: &DeliveryResult<'_>, tx: Self::DeliveryOpaque) {
        let owned = match result {
            Ok(m) => Ok(Delivery {
                partition: m.partition(),
                offset: m.offset(),
                timestamp: m.timestamp(),
            }),
            Err((e, m)) => Err((e.clone(), m.detach())),
        };
        // The sender may have stopped waiting (its request was dropped).
        let _ = tx.send(owned);
    }
}

/// A handle to the client's main queue, released when dropped.
struct MainQueue(*mut rdsys::rd_kafka_queue_t);

// SAFETY: librdkafka's queue handles may be used from any thread.
unsafe impl Send for MainQueue {}
unsafe impl Sync for MainQueue {}

impl Drop for MainQueue {
    fn drop(&mut self) {
        // SAFETY: the handle came from rd_kafka_queue_get_main and is
        // released once, here.
        unsafe { rdsys::rd_kafka_queue_destroy(self.0) }
    }
}

/// librdkafka's callback when it queues an event on the main queue, on
/// the thread that queued it (under the queue's lock: it must not block).
unsafe extern "C" fn on_report(_: *mut rdsys::rd_kafka_t, opaque: *mut std::ffi::c_void) {
    // SAFETY: `opaque` is the `Notify` of the `Inner` that enabled this
    // callback, and `Inner` disables it before that `Notify` is released.
    let wake = unsafe { &*(opaque as *const Notify) };
    wake.notify_one();
}

impl FromClientConfig for Producer {
    /// Creates the producer from `config` and starts its pump on the
    /// current Tokio runtime.
    fn from_config(config: &ClientConfig) -> KafkaResult<Producer> {
        let base = BaseProducer::from_config_and_context(config, Reports::default())?;
        // SAFETY: the client pointer is valid while `base` lives; the
        // handle is released by `MainQueue` before `base` is dropped.
        let queue =
            MainQueue(unsafe { rdsys::rd_kafka_queue_get_main(base.client().native_ptr()) });
        let wake = Arc::new(Notify::new());
        // SAFETY: the opaque pointer stays valid until `Inner::drop`
        // disables the callback (this `Arc` is held by `Inner`).
        unsafe {
            rdsys::rd_kafka_queue_cb_event_enable(
                queue.0,
                Some(on_report),
                Arc::as_ptr(&wake) as *mut std::ffi::c_void,
            )
        };
        let inner = Arc::new(Inner { queue, base, wake });
        tokio::spawn(pump(Arc::downgrade(&inner), inner.wake.clone()));
        Ok(Producer { inner })
    }
}

impl Producer {
    /// Sends `record` and waits for the broker's acknowledgement (or
    /// librdkafka's final error). While librdkafka's queue is full it tries
    /// again for up to `queue_timeout`, then answers `QueueFull`; the same
    /// contract as rdkafka's `FutureProducer::send`.
    pub async fn send<K, P, T>(
        &self,
        record: FutureRecord<'_, K, P>,
        queue_timeout: T,
    ) -> OwnedDeliveryResult
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
        T: Into<Timeout>,
    {
        let queue_timeout = queue_timeout.into();
        let started = Instant::now();
        let (tx, rx) = oneshot::channel();
        let mut base = rdkafka::producer::BaseRecord::with_opaque_to(record.topic, Box::new(tx));
        base.partition = record.partition;
        base.payload = record.payload;
        base.key = record.key;
        base.timestamp = record.timestamp;
        base.headers = record.headers;
        loop {
            match self.inner.base.send(base) {
                Ok(()) => {
                    return match rx.await {
                        Ok(report) => report,
                        // Only if the report was dropped unserved.
                        Err(_) => Err((
                            KafkaError::Canceled,
                            OwnedMessage::new(
                                None,
                                None,
                                String::new(),
                                Timestamp::NotAvailable,
                                -1,
                                -1,
                                None,
                            ),
                        )),
                    };
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                    if match queue_timeout {
                        Timeout::Never => true,
                        Timeout::After(t) => started.elapsed() < t,
                    } =>
                {
                    base = back;
                    tokio::time::sleep(QUEUE_FULL_WAIT).await;
                }
                Err((e, back)) => {
                    let owned = OwnedMessage::new(
                        back.payload.map(|p| p.to_bytes().to_vec()),
                        back.key.map(|k| k.to_bytes().to_vec()),
                        back.topic.to_owned(),
                        back.timestamp
                            .map_or(Timestamp::NotAvailable, Timestamp::CreateTime),
                        back.partition.unwrap_or(-1),
                        0,
                        back.headers,
                    );
                    return Err((e, owned));
                }
            }
        }
    }

    /// Waits until every queued message is acknowledged or failed, for at
    /// most `timeout`. Blocking: call it from a blocking thread.
    pub fn flush<T: Into<Timeout>>(&self, timeout: T) -> KafkaResult<()> {
        self.inner.base.flush(timeout)
    }

    /// librdkafka's statistics of this producer, to register with the
    /// service's metrics.
    pub fn stats(&self) -> &ProducerStats {
        &self.inner.base.context().stats
    }

    /// The underlying client (metadata requests).
    pub fn client(&self) -> &rdkafka::client::Client<Reports> {
        self.inner.base.client()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // SAFETY: after this returns librdkafka no longer calls
        // `on_report` (it holds the queue's lock while calling it), so the
        // `Notify` may go. `BaseProducer`'s own drop then purges and
        // flushes, serving what is left itself.
        unsafe { rdsys::rd_kafka_queue_cb_event_enable(self.queue.0, None, std::ptr::null_mut()) };
        self.wake.notify_one();
    }
}

/// Serves the delivery reports whenever librdkafka says there are some,
/// until the producer is dropped.
async fn pump(inner: Weak<Inner>, wake: Arc<Notify>) {
    loop {
        // Registered before looking, so a report queued meanwhile leaves
        // a permit and is not missed.
        let woken = wake.notified();
        let Some(producer) = inner.upgrade() else {
            return;
        };
        let more = serve_turn(&producer);
        drop(producer);
        if more {
            tokio::task::yield_now().await;
        } else {
            let _ = tokio::time::timeout(PUMP_FALLBACK, woken).await;
        }
    }
}

/// Serves queued events, at most [`REPORTS_PER_TURN`]; whether it stopped
/// at that bound (there may be more).
fn serve_turn(inner: &Inner) -> bool {
    for _ in 0..REPORTS_PER_TURN {
        // SAFETY: the handle is valid while `inner` lives.
        if unsafe { rdsys::rd_kafka_queue_length(inner.queue.0) } == 0 {
            return false;
        }
        inner.base.poll(Duration::ZERO);
    }
    true
}
