//! Gathering the lanes' batches into fewer, fuller stage calls.
//!
//! Each partition's lane takes its own batch, but when orders arrive
//! slowly over many partitions each lane's batch holds a few orders, and
//! every one of them costs the stage a MongoDB round trip or transaction
//! of its own. A stage whose pace is MongoDB's hands its lanes' batches to
//! a [`Gather`] instead: at most `calls` stage calls run at once, and the
//! batches that arrive while they run go into the next call together, up
//! to `max` messages. Alone, a batch waits for no one; under load, one
//! call carries many partitions' batches. Order within a partition is
//! kept by its lane, which hands in its next batch only once this one is
//! published.

use std::sync::Arc;
use std::time::Duration;

use orderflow_platform::kafka::Received;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::runner::Transient;
use crate::stage::{self, Outcome, Prepared, Stage};

type Reply = oneshot::Sender<Result<Vec<Outcome>, Transient>>;

struct Request<P> {
    batch: Arc<[Received]>,
    prepared: Prepared<P>,
    reply: Reply,
}

/// The handle the lanes hand their batches in through.
pub struct Gather<S: Stage> {
    queue: mpsc::UnboundedSender<Request<S::Prepared>>,
}

/// How many batches and messages each gathered call carried.
pub type Observe = Box<dyn Fn(usize, usize) + Send + Sync>;

impl<S: Stage + 'static> Gather<S> {
    /// Starts the gatherer on the current runtime. Each call is bounded by
    /// `timeout` (a dependency that hangs is a transient failure of every
    /// batch it carries), and a call that panics fails its batches the
    /// same way. The gatherer ends when its handle is dropped.
    pub fn spawn(
        stage: Arc<S>,
        group: String,
        calls: usize,
        max: usize,
        timeout: Duration,
        observe: Observe,
    ) -> Self {
        let (queue, requests) = mpsc::unbounded_channel();
        tokio::spawn(gather(
            stage,
            Arc::from(group),
            calls.max(1),
            max.max(1),
            timeout,
            Arc::new(observe),
            requests,
        ));
        Gather { queue }
    }
}

impl<S: Stage> Gather<S> {
    /// One outcome per message of `batch`, in order, from the call that
    /// carried it, given what the lane prepared for it.
    pub async fn outcomes(
        &self,
        batch: Arc<[Received]>,
        prepared: Prepared<S::Prepared>,
    ) -> Result<Vec<Outcome>, Transient> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Request {
                batch,
                prepared,
                reply,
            })
            .map_err(|_| Transient("the stage's gatherer has stopped".into()))?;
        answer
            .await
            .map_err(|_| Transient("the stage call carrying this batch failed".into()))?
    }
}

async fn gather<S: Stage + 'static>(
    stage: Arc<S>,
    group: Arc<str>,
    calls: usize,
    max: usize,
    timeout: Duration,
    observe: Arc<Observe>,
    mut requests: mpsc::UnboundedReceiver<Request<S::Prepared>>,
) {
    let slots = Arc::new(Semaphore::new(calls));
    // A batch that did not fit the last call opens the next.
    let mut carried: Option<Request<S::Prepared>> = None;
    loop {
        let slot = slots
            .clone()
            .acquire_owned()
            .await
            .expect("the slots are never closed");
        let first = match carried.take() {
            Some(request) => request,
            None => match requests.recv().await {
                Some(request) => request,
                None => return,
            },
        };
        let mut size = first.batch.len();
        let mut taken = vec![first];
        while size < max {
            match requests.try_recv() {
                Ok(request) if size + request.batch.len() > max => {
                    carried = Some(request);
                    break;
                }
                Ok(request) => {
                    size += request.batch.len();
                    taken.push(request);
                }
                Err(_) => break,
            }
        }
        observe(taken.len(), size);
        let (stage, group) = (stage.clone(), group.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let mut prepared = Prepared::new();
            for request in &mut taken {
                prepared.extend(std::mem::take(&mut request.prepared));
            }
            let messages: Vec<&Received> = taken.iter().flat_map(|r| r.batch.iter()).collect();
            match stage::outcomes_within(&*stage, &group, &messages, &prepared, timeout).await {
                Ok(outcomes) => {
                    let mut outcomes = outcomes.into_iter();
                    for request in taken {
                        let own = outcomes.by_ref().take(request.batch.len()).collect();
                        // A lane that stopped waiting is fine.
                        let _ = request.reply.send(Ok(own));
                    }
                }
                Err(Transient(e)) => {
                    for request in taken {
                        let _ = request.reply.send(Err(Transient(e.clone())));
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::Outgoing;
    use crate::stage::tests::{emitted, messages};
    use crate::stage::{Fresh, Refusal, Verdicts};
    use rdkafka::message::Message;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::Mutex;

    /// Decides each key as itself after a pause, so that batches queue up
    /// behind a call; a key "fail" fails the call, "panic" panics it.
    #[derive(Default)]
    struct Slow {
        calls: Mutex<Vec<Vec<String>>>,
        /// Calls in progress, and the most there ever were at once.
        active: AtomicUsize,
        peak: AtomicUsize,
    }

    impl Slow {
        /// Returns once `n` calls have started.
        async fn started(&self, n: usize) {
            while self.calls.lock().unwrap().len() < n {
                tokio::task::yield_now().await;
            }
        }
    }

    impl Stage for Slow {
        type Input = String;
        type Decision = String;
        type Prepared = String;

        fn decode(&self, message: &Received) -> Result<String, Refusal> {
            Ok(String::from_utf8(message.payload().unwrap_or_default().to_vec()).unwrap())
        }

        fn key<'i>(&self, input: &'i String) -> &'i str {
            input
        }

        async fn decided(&self, _: Vec<String>) -> Result<HashMap<String, String>, Transient> {
            Ok(HashMap::new())
        }

        async fn decide(
            &self,
            fresh: &[Fresh<'_, String, String>],
        ) -> Result<Verdicts<String>, Transient> {
            let keys: Vec<String> = fresh.iter().map(|f| f.input.clone()).collect();
            let prepared: Vec<Option<String>> = fresh.iter().map(|f| f.prepared.cloned()).collect();
            self.calls.lock().unwrap().push(keys.clone());
            let now = self.active.fetch_add(1, SeqCst) + 1;
            self.peak.fetch_max(now, SeqCst);
            tokio::time::sleep(Duration::from_millis(30)).await;
            self.active.fetch_sub(1, SeqCst);
            if keys.iter().any(|k| k == "fail") {
                return Err(Transient("refused".into()));
            }
            if keys.iter().any(|k| k == "panic") {
                panic!("the stage crashed");
            }
            // A key decides as itself, with what was prepared for it.
            Ok(keys
                .into_iter()
                .zip(prepared)
                .map(|(k, p)| {
                    let decision = p.map_or_else(|| k.clone(), |p| format!("{k}+{p}"));
                    (k, Ok(decision))
                })
                .collect())
        }

        fn emit(&self, decision: &String, _: &tracing::Span) -> Result<Vec<Outgoing>, Transient> {
            Ok(emitted(decision))
        }
    }

    fn batch(partition: i32, keys: &[&str]) -> Arc<[Received]> {
        messages(partition, keys).into()
    }

    /// Hands in a batch of "a", and once its call started, `rest` (one
    /// batch each, on partitions 1, 2, …) behind it: every batch's result,
    /// the first's first.
    async fn behind_a_call(
        stage: &Slow,
        gather: Gather<Slow>,
        rest: &[&[&str]],
    ) -> Vec<Result<Vec<Outcome>, Transient>> {
        let gather = Arc::new(gather);
        let first = {
            let gather = gather.clone();
            tokio::spawn(async move { gather.outcomes(batch(0, &["a"]), Prepared::new()).await })
        };
        stage.started(1).await;
        let rest = futures::future::join_all(
            (1..)
                .zip(rest)
                .map(|(partition, keys)| gather.outcomes(batch(partition, keys), Prepared::new())),
        )
        .await;
        std::iter::once(first.await.unwrap()).chain(rest).collect()
    }

    fn payloads(outcomes: Result<Vec<Outcome>, Transient>) -> Result<Vec<String>, String> {
        let outcomes = outcomes.map_err(|e| e.0)?;
        Ok(outcomes
            .into_iter()
            .map(|o| match o {
                Outcome::Done(out) => String::from_utf8(out[0].payload.clone()).unwrap(),
                Outcome::DeadLetter { reason, .. } => format!("dlq:{reason}"),
            })
            .collect())
    }

    type Seen = Arc<Mutex<Vec<(usize, usize)>>>;

    fn spawn(stage: &Arc<Slow>, calls: usize, max: usize) -> (Gather<Slow>, Seen) {
        let seen: Seen = Arc::default();
        let observed = seen.clone();
        let gather = Gather::spawn(
            stage.clone(),
            "g".into(),
            calls,
            max,
            Duration::from_secs(5),
            Box::new(move |batches, messages| observed.lock().unwrap().push((batches, messages))),
        );
        (gather, seen)
    }

    #[tokio::test]
    async fn batches_that_wait_behind_a_call_share_the_next_and_each_gets_its_own_outcomes() {
        let stage = Arc::new(Slow::default());
        let (gather, seen) = spawn(&stage, 1, 100);
        let all = behind_a_call(&stage, gather, &[&["b", "c"], &["d"], &["e", "f", "g"]]).await;
        let all: Vec<_> = all.into_iter().map(payloads).collect();
        assert_eq!(
            all,
            [
                Ok(vec!["a".to_string()]),
                Ok(vec!["b".to_string(), "c".into()]),
                Ok(vec!["d".to_string()]),
                Ok(vec!["e".to_string(), "f".into(), "g".into()]),
            ]
        );
        // Two calls: the first batch alone, the three that waited together.
        assert_eq!(
            *stage.calls.lock().unwrap(),
            [vec!["a"], vec!["b", "c", "d", "e", "f", "g"]]
        );
        assert_eq!(*seen.lock().unwrap(), [(1, 1), (3, 6)]);
    }

    #[tokio::test]
    async fn a_batch_that_would_overflow_a_call_opens_the_next() {
        let stage = Arc::new(Slow::default());
        let (gather, _) = spawn(&stage, 1, 3);
        let all = behind_a_call(
            &stage,
            gather,
            &[&["b", "c"], &["d", "e"], &["f", "g", "h", "i"]],
        )
        .await;
        assert!(all.iter().all(Result::is_ok));
        // At most three messages a call, but a batch bigger than that is
        // never split: it gets a call of its own.
        assert_eq!(
            *stage.calls.lock().unwrap(),
            [
                vec!["a"],
                vec!["b", "c"],
                vec!["d", "e"],
                vec!["f", "g", "h", "i"]
            ]
        );
    }

    #[tokio::test]
    async fn a_failed_or_panicking_call_fails_only_its_own_batches() {
        let stage = Arc::new(Slow::default());
        let (gather, _) = spawn(&stage, 2, 100);
        let failed = gather
            .outcomes(batch(0, &["x", "fail"]), Prepared::new())
            .await;
        assert_eq!(payloads(failed), Err("refused".into()));
        let crashed = gather.outcomes(batch(1, &["panic"]), Prepared::new()).await;
        assert!(payloads(crashed).is_err());
        // The gatherer goes on.
        assert_eq!(
            payloads(gather.outcomes(batch(2, &["y"]), Prepared::new()).await),
            Ok(vec!["y".into()])
        );
    }

    #[tokio::test]
    async fn two_calls_may_run_at_once() {
        let stage = Arc::new(Slow::default());
        let (gather, seen) = spawn(&stage, 2, 100);
        let both =
            futures::future::join(gather.outcomes(batch(0, &["a"]), Prepared::new()), async {
                tokio::time::sleep(Duration::from_millis(5)).await;
                gather.outcomes(batch(1, &["b"]), Prepared::new()).await
            })
            .await;
        assert!(both.0.is_ok() && both.1.is_ok());
        // Each went in its own call, and the calls overlapped.
        assert_eq!(*seen.lock().unwrap(), [(1, 1), (1, 1)]);
        assert_eq!(stage.peak.load(SeqCst), 2);
    }

    #[tokio::test]
    async fn one_call_at_a_time_when_so_configured() {
        let stage = Arc::new(Slow::default());
        let (gather, _) = spawn(&stage, 1, 100);
        let all = futures::future::join_all((0..5).map(|p| {
            let gather = &gather;
            async move {
                tokio::time::sleep(Duration::from_millis(p as u64 * 7)).await;
                gather.outcomes(batch(p, &["k"]), Prepared::new()).await
            }
        }))
        .await;
        assert!(all.iter().all(Result::is_ok));
        assert_eq!(stage.peak.load(SeqCst), 1);
    }

    #[tokio::test]
    async fn what_each_lane_prepared_reaches_the_gathered_call() {
        let stage = Arc::new(Slow::default());
        let (gather, seen) = spawn(&stage, 1, 100);
        let gather = Arc::new(gather);
        let first = {
            let gather = gather.clone();
            tokio::spawn(async move { gather.outcomes(batch(0, &["a"]), Prepared::new()).await })
        };
        stage.started(1).await;
        let prepared = |key: &str, p: &str| Prepared::from([(key.to_string(), p.to_string())]);
        let (b, c) = futures::future::join(
            gather.outcomes(batch(1, &["b"]), prepared("b", "pb")),
            gather.outcomes(batch(2, &["c", "d"]), prepared("c", "pc")),
        )
        .await;
        assert_eq!(payloads(first.await.unwrap()), Ok(vec!["a".into()]));
        assert_eq!(payloads(b), Ok(vec!["b+pb".into()]));
        assert_eq!(payloads(c), Ok(vec!["c+pc".into(), "d".into()]));
        // The two lanes' batches went in one call.
        assert_eq!(*seen.lock().unwrap(), [(1, 1), (2, 3)]);
    }
}
