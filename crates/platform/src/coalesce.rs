//! Group commit: callers each hand in one item and wait for it to be
//! written (or, with [`Coalescer::offer`], do not wait), and one writer task
//! writes whatever has queued up meanwhile in a single round trip. Under
//! load a round trip carries many callers' items; alone, a caller waits no
//! longer than for its own write.

use std::future::Future;

use tokio::sync::{mpsc, oneshot};

/// Why an item was not written.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommitError<E> {
    /// The write that carried it failed (every item of that write gets the
    /// same error).
    #[error("{0}")]
    Failed(E),
    /// The writer has stopped (its task ended).
    #[error("the writer has stopped")]
    Stopped,
}

/// An item and, if its caller waits, where its outcome goes.
type Pending<T, E> = (T, Option<oneshot::Sender<Result<(), E>>>);

/// The handle callers submit through; cheap to clone.
pub struct Coalescer<T, E> {
    queue: mpsc::Sender<Pending<T, E>>,
}

impl<T, E> Clone for Coalescer<T, E> {
    fn clone(&self) -> Self {
        Coalescer {
            queue: self.queue.clone(),
        }
    }
}

impl<T: Send + 'static, E: Clone + Send + 'static> Coalescer<T, E> {
    /// Starts the writer on the current runtime: `write` gets up to `max`
    /// items at a time, in the order they were submitted. At most `max`
    /// more wait behind the write in progress; further callers wait for
    /// room. The writer ends when the last handle is dropped.
    pub fn spawn<F, Fut>(max: usize, write: F) -> Self
    where
        F: FnMut(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send,
    {
        Self::spawn_joined(max, write).0
    }

    /// [`spawn`](Self::spawn), also returning the writer's task: it ends
    /// once every handle is dropped and what was queued is written, so an
    /// owner can wait for the last items on the way out.
    pub fn spawn_joined<F, Fut>(max: usize, mut write: F) -> (Self, tokio::task::JoinHandle<()>)
    where
        F: FnMut(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send,
    {
        let max = max.max(1);
        let (queue, mut pending) = mpsc::channel::<Pending<T, E>>(max);
        let task = tokio::spawn(async move {
            let mut batch = Vec::with_capacity(max);
            while pending.recv_many(&mut batch, max).await > 0 {
                let (items, replies): (Vec<T>, Vec<_>) = batch.drain(..).unzip();
                let result = write(items).await;
                for reply in replies.into_iter().flatten() {
                    // A caller that gave up waiting is fine.
                    let _ = reply.send(result.clone());
                }
            }
        });
        (Coalescer { queue }, task)
    }

    /// Queues one item without waiting for its write (whose outcome only
    /// `write` sees); gives it back when the queue is full or the writer
    /// has stopped.
    pub fn offer(&self, item: T) -> Result<(), T> {
        self.queue
            .try_send((item, None))
            .map_err(|e| e.into_inner().0)
    }

    /// Submits one item and waits until the write that carries it is done.
    pub async fn submit(&self, item: T) -> Result<(), CommitError<E>> {
        let (reply, done) = oneshot::channel();
        self.queue
            .send((item, Some(reply)))
            .await
            .map_err(|_| CommitError::Stopped)?;
        done.await
            .map_err(|_| CommitError::Stopped)?
            .map_err(CommitError::Failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_items_share_writes_and_each_caller_gets_its_outcome() {
        let writes: Arc<Mutex<Vec<Vec<u32>>>> = Arc::default();
        let seen = writes.clone();
        let c = Coalescer::spawn(8, move |items: Vec<u32>| {
            let seen = seen.clone();
            async move {
                // A slow round trip, so that callers queue up behind it.
                tokio::time::sleep(Duration::from_millis(20)).await;
                let failed = items.contains(&13);
                seen.lock().unwrap().push(items);
                if failed {
                    Err("refused".to_string())
                } else {
                    Ok(())
                }
            }
        });
        let results = futures::future::join_all((0..20u32).map(|i| {
            let c = c.clone();
            async move { (i, c.submit(i).await) }
        }))
        .await;
        let writes = writes.lock().unwrap().clone();
        // Every item written exactly once, in submission order, at most 8
        // a write, and fewer writes than items.
        let flat: Vec<u32> = writes.iter().flatten().copied().collect();
        assert_eq!(flat, (0..20).collect::<Vec<_>>());
        assert!(writes.iter().all(|w| w.len() <= 8), "{writes:?}");
        assert!(writes.len() < 20, "{writes:?}");
        // The write that carried 13 failed for each of its items, and only
        // for those.
        let failed_write = writes.iter().find(|w| w.contains(&13)).unwrap();
        for (i, r) in results {
            if failed_write.contains(&i) {
                assert!(
                    matches!(r, Err(CommitError::Failed(ref e)) if e == "refused"),
                    "{i}: {r:?}"
                );
            } else {
                assert!(r.is_ok(), "{i}: {r:?}");
            }
        }
    }

    #[tokio::test]
    async fn a_stopped_writer_is_reported() {
        let c = Coalescer::spawn(4, |_: Vec<u32>| async { Ok::<(), String>(()) });
        assert!(c.submit(1).await.is_ok());
        // A writer whose task panicked: its queue is closed.
        let broken = Coalescer::spawn(4, |_: Vec<u32>| async {
            panic!("writer crashed");
            #[allow(unreachable_code)]
            Ok::<(), String>(())
        });
        assert!(matches!(broken.submit(1).await, Err(CommitError::Stopped)));
    }

    #[tokio::test]
    async fn offered_items_are_written_in_order_and_drained_before_the_writer_ends() {
        let writes: Arc<Mutex<Vec<Vec<u32>>>> = Arc::default();
        let seen = writes.clone();
        let (gate_tx, gate) = tokio::sync::watch::channel(false);
        let (c, task) = Coalescer::spawn_joined(4, move |items: Vec<u32>| {
            let seen = seen.clone();
            let mut gate = gate.clone();
            async move {
                // Held until the test opens the gate, so the queue fills.
                let _ = gate.wait_for(|open| *open).await;
                seen.lock().unwrap().push(items);
                Ok::<(), String>(())
            }
        });
        // The writer takes the first item and waits at the gate; four
        // more fill the queue; the next is given back.
        assert_eq!(c.offer(0), Ok(()));
        tokio::time::sleep(Duration::from_millis(50)).await;
        for i in 1..=4 {
            assert_eq!(c.offer(i), Ok(()), "{i}");
        }
        assert_eq!(c.offer(5), Err(5), "a full queue gives the item back");
        // Dropping the last handle still writes what was queued.
        drop(c);
        gate_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the writer ends once its handles are gone")
            .unwrap();
        let flat: Vec<u32> = writes.lock().unwrap().iter().flatten().copied().collect();
        assert_eq!(flat, vec![0, 1, 2, 3, 4]);
    }
}
