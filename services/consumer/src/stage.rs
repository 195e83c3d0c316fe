//! What a pipeline stage states about its messages, and how the runner
//! pairs every message of a batch with what became of it.
//!
//! A stage says how to decode a message, under which key its decision is
//! recorded (the orderId; a notification's key), how to look up decisions
//! made before (a redelivery, a replay), how to decide the new ones — all of
//! a batch at once, so it can write them together — and what a decision
//! emits. The runner does the rest: it opens each message's process span,
//! asks for past decisions once per batch, hands each new key to `decide`
//! once (the first message carrying it), and pairs every message with its
//! outcome by key, so a stage never keeps indexes into the batch.

use std::borrow::Borrow;
use std::collections::{HashMap, HashSet};
use std::future::Future;

use orderflow_platform::kafka::Received;

use crate::event::process_span;
use crate::runner::{Outgoing, Transient};

/// Why a message can never be handled — undecodable, refused for good by
/// the store or a receiver: (reason, detail) for the dead-letter topic.
pub type Refusal = (&'static str, String);

/// A key decided for the first time in this batch: the first message that
/// carries it, decoded, the span it is processed in, and what the stage's
/// `prepare` found out about it, if it did.
pub struct Fresh<'a, I, P = ()> {
    pub input: &'a I,
    pub message: &'a Received,
    pub span: &'a tracing::Span,
    pub prepared: Option<&'a P>,
}

/// What a stage's `prepare` found out before a batch's call, by key.
pub type Prepared<P> = HashMap<String, P>;

/// What `decide` came to, by key: a decision, or a refusal that
/// dead-letters every message of the batch carrying the key.
pub type Verdicts<D> = HashMap<String, Result<D, Refusal>>;

pub trait Stage: Send + Sync {
    /// A message, decoded.
    type Input: Send + Sync;
    /// What the stage decided for one key, as it is recorded.
    type Decision: Send + Sync;
    /// What `prepare` finds out about a key (most stages: nothing, `()`).
    type Prepared: Send + Sync + 'static;

    /// Decodes a message, or says why it can never be one of this stage's.
    fn decode(&self, message: &Received) -> Result<Self::Input, Refusal>;

    /// The key the input's decision is recorded under.
    fn key<'i>(&self, input: &'i Self::Input) -> &'i str;

    /// Work on one lane's batch before the call that decides it, for a
    /// stage that waits on something other than the store (payment's
    /// gateway): each lane prepares its own batch, so that while one
    /// gathered call runs, the next batches' waiting is already under way
    /// instead of inside their call. By key; a key left out is `decide`'s
    /// to do. Bounded by the batch timeout; retried with the batch.
    fn prepare(
        &self,
        _batch: &[Received],
    ) -> impl Future<Output = Result<Prepared<Self::Prepared>, Transient>> + Send {
        async { Ok(Prepared::new()) }
    }

    /// Decisions recorded before for these keys (distinct, not empty).
    /// A stage whose `prepare` or `decide` finds them itself answers none.
    fn decided(
        &self,
        keys: Vec<String>,
    ) -> impl Future<Output = Result<HashMap<String, Self::Decision>, Transient>> + Send;

    /// Decides the keys not decided before (each once, in batch order) and
    /// makes the decisions durable. A key left without a verdict is a
    /// transient failure of the batch.
    fn decide(
        &self,
        fresh: &[Fresh<'_, Self::Input, Self::Prepared>],
    ) -> impl Future<Output = Result<Verdicts<Self::Decision>, Transient>> + Send;

    /// The messages a decision stands for: the same every time it is
    /// emitted, so a redelivery repeats the same facts.
    fn emit(
        &self,
        decision: &Self::Decision,
        span: &tracing::Span,
    ) -> Result<Vec<Outgoing>, Transient>;
}

/// What became of one input message.
#[derive(Debug)]
pub enum Outcome {
    /// Handled; publish these.
    Done(Vec<Outgoing>),
    /// Can never be handled: park it in the dead-letter topic with the
    /// reason, and move on.
    DeadLetter { reason: &'static str, error: String },
}

/// One outcome per message of `batch`, in order; any transient failure
/// fails the whole batch (the runner retries it, and every step is
/// idempotent).
///
/// The batch is one lane's, or several lanes' gathered into one call
/// ([`crate::gather`]): the messages themselves or references to them,
/// with what `prepare` found out about their keys.
pub async fn outcomes<S: Stage, M: Borrow<Received> + Sync>(
    stage: &S,
    group: &str,
    batch: &[M],
    prepared: &Prepared<S::Prepared>,
) -> Result<Vec<Outcome>, Transient> {
    let decoded: Vec<Result<(S::Input, tracing::Span), Refusal>> = batch
        .iter()
        .map(|message| {
            let message = message.borrow();
            let input = stage.decode(message)?;
            let span = process_span(message, group, stage.key(&input));
            Ok((input, span))
        })
        .collect();
    let keys: Vec<String> = {
        let mut seen = HashSet::new();
        decoded
            .iter()
            .filter_map(|d| d.as_ref().ok())
            .map(|(input, _)| stage.key(input))
            .filter(|key| seen.insert(*key))
            .map(str::to_owned)
            .collect()
    };
    let decided = if keys.is_empty() {
        HashMap::new()
    } else {
        stage.decided(keys).await?
    };
    let fresh: Vec<Fresh<'_, S::Input, S::Prepared>> = {
        let mut seen = HashSet::new();
        batch
            .iter()
            .zip(&decoded)
            .filter_map(|(message, d)| {
                let message = message.borrow();
                let (input, span) = d.as_ref().ok()?;
                let key = stage.key(input);
                (!decided.contains_key(key) && seen.insert(key)).then(|| Fresh {
                    input,
                    message,
                    span,
                    prepared: prepared.get(key),
                })
            })
            .collect()
    };
    let verdicts = if fresh.is_empty() {
        Verdicts::new()
    } else {
        stage.decide(&fresh).await?
    };
    decoded
        .iter()
        .map(|d| {
            let (input, span) = match d {
                Err((reason, error)) => {
                    return Ok(Outcome::DeadLetter {
                        reason,
                        error: error.clone(),
                    })
                }
                Ok(decoded) => decoded,
            };
            let key = stage.key(input);
            let decision = match (decided.get(key), verdicts.get(key)) {
                (Some(decision), _) | (None, Some(Ok(decision))) => decision,
                (None, Some(Err((reason, error)))) => {
                    return Ok(Outcome::DeadLetter {
                        reason,
                        error: error.clone(),
                    })
                }
                (None, None) => return Err(Transient(format!("{key} was not decided"))),
            };
            Ok(Outcome::Done(stage.emit(decision, span)?))
        })
        .collect()
}

/// [`outcomes`], bounded by `timeout`: a stage that hangs instead of
/// failing is a transient failure of the batch.
pub async fn outcomes_within<S: Stage, M: Borrow<Received> + Sync>(
    stage: &S,
    group: &str,
    batch: &[M],
    prepared: &Prepared<S::Prepared>,
    timeout: std::time::Duration,
) -> Result<Vec<Outcome>, Transient> {
    within(timeout, outcomes(stage, group, batch, prepared)).await
}

/// The stage's `prepare` of one lane's batch, bounded by `timeout`.
pub async fn prepare_within<S: Stage>(
    stage: &S,
    batch: &[Received],
    timeout: std::time::Duration,
) -> Result<Prepared<S::Prepared>, Transient> {
    within(timeout, stage.prepare(batch)).await
}

async fn within<T>(
    timeout: std::time::Duration,
    work: impl Future<Output = Result<T, Transient>>,
) -> Result<T, Transient> {
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or_else(|_| Err(Transient(format!("batch not handled within {timeout:?}"))))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use orderflow_platform::kafka::headers::RecordHeaders;
    use rdkafka::message::{Message, Timestamp};
    use std::sync::Mutex;

    /// Messages are `key` or `key:refuse`; anything empty is undecodable.
    /// `before` holds past decisions; every decision emits one message
    /// keyed by its key, whose payload says when it was decided.
    struct Fake {
        before: HashMap<String, String>,
        asked: Mutex<Vec<Vec<String>>>,
        forget: Option<&'static str>,
    }

    impl Fake {
        fn new(before: &[&str]) -> Self {
            Fake {
                before: before
                    .iter()
                    .map(|k| (k.to_string(), "before".to_string()))
                    .collect(),
                asked: Mutex::default(),
                forget: None,
            }
        }
    }

    impl Stage for Fake {
        type Input = (String, bool);
        type Decision = String;
        type Prepared = String;

        fn decode(&self, message: &Received) -> Result<Self::Input, Refusal> {
            let text = std::str::from_utf8(message.payload().unwrap_or_default()).unwrap();
            match text.split_once(':') {
                _ if text.is_empty() => Err(("undecodable", "empty".into())),
                Some((key, _)) => Ok((key.to_owned(), true)),
                None => Ok((text.to_owned(), false)),
            }
        }

        fn key<'i>(&self, input: &'i Self::Input) -> &'i str {
            &input.0
        }

        async fn decided(&self, keys: Vec<String>) -> Result<HashMap<String, String>, Transient> {
            Ok(keys
                .into_iter()
                .filter_map(|k| Some((k.clone(), self.before.get(&k)?.clone())))
                .collect())
        }

        async fn decide(
            &self,
            fresh: &[Fresh<'_, Self::Input, String>],
        ) -> Result<Verdicts<String>, Transient> {
            self.asked
                .lock()
                .unwrap()
                .push(fresh.iter().map(|f| f.input.0.clone()).collect());
            Ok(fresh
                .iter()
                .filter(|f| Some(f.input.0.as_str()) != self.forget)
                .map(|f| {
                    let (key, refuse) = f.input.clone();
                    let verdict = if refuse {
                        Err(("refused", format!("{key} refused")))
                    } else {
                        let prepared = f.prepared.map(|p| format!("+{p}")).unwrap_or_default();
                        Ok(format!("now@{}{prepared}", f.message.offset()))
                    };
                    (key, verdict)
                })
                .collect())
        }

        fn emit(&self, decision: &String, _: &tracing::Span) -> Result<Vec<Outgoing>, Transient> {
            Ok(emitted(decision))
        }
    }

    /// One partition's messages with these payloads, from offset 0.
    pub(crate) fn messages(partition: i32, payloads: &[&str]) -> Vec<Received> {
        payloads
            .iter()
            .enumerate()
            .map(|(offset, p)| {
                Received::new(
                    Some(p.as_bytes()),
                    None,
                    None,
                    "in",
                    partition,
                    offset as i64,
                    Timestamp::NotAvailable,
                )
            })
            .collect()
    }

    /// What a test stage emits for a decision: one message carrying it.
    pub(crate) fn emitted(decision: &str) -> Vec<Outgoing> {
        vec![Outgoing {
            topic: "out".into(),
            key: Vec::new(),
            payload: decision.as_bytes().to_vec(),
            headers: RecordHeaders::default(),
        }]
    }

    fn batch(payloads: &[&str]) -> Vec<Received> {
        messages(0, payloads)
    }

    /// Each outcome as text: the emitted payload, or `dlq:<reason>`.
    fn described(outcomes: Vec<Outcome>) -> Vec<String> {
        outcomes
            .into_iter()
            .map(|o| match o {
                Outcome::Done(out) => out
                    .iter()
                    .map(|m| String::from_utf8(m.payload.clone()).unwrap())
                    .collect::<Vec<_>>()
                    .join(","),
                Outcome::DeadLetter { reason, .. } => format!("dlq:{reason}"),
            })
            .collect()
    }

    #[tokio::test]
    async fn every_message_gets_its_keys_outcome_and_each_new_key_is_decided_once() {
        let stage = Fake::new(&["b"]);
        let messages = batch(&["a", "", "b", "a", "c:refuse", "c:refuse", "d"]);
        let outcomes = outcomes(&stage, "g", &messages, &Prepared::new())
            .await
            .unwrap();
        assert_eq!(
            described(outcomes),
            [
                "now@0",
                "dlq:undecodable",
                "before",
                "now@0",
                "dlq:refused",
                "dlq:refused",
                "now@6"
            ]
        );
        // Only the new keys, once each, in batch order.
        assert_eq!(*stage.asked.lock().unwrap(), [vec!["a", "c", "d"]]);
    }

    #[tokio::test]
    async fn nothing_new_asks_for_no_decision() {
        let stage = Fake::new(&["b"]);
        let outcomes = outcomes(&stage, "g", &batch(&["b", "", "b"]), &Prepared::new())
            .await
            .unwrap();
        assert_eq!(described(outcomes), ["before", "dlq:undecodable", "before"]);
        assert!(stage.asked.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_key_left_undecided_fails_the_batch() {
        let stage = Fake {
            forget: Some("x"),
            ..Fake::new(&[])
        };
        let failed = outcomes(&stage, "g", &batch(&["a", "x"]), &Prepared::new())
            .await
            .unwrap_err();
        assert_eq!(failed.0, "x was not decided");
    }

    #[tokio::test]
    async fn what_was_prepared_for_a_key_reaches_its_decision() {
        let stage = Fake::new(&["b"]);
        let prepared: Prepared<String> = [("a", "charged"), ("b", "charged")]
            .into_iter()
            .map(|(k, p)| (k.to_string(), p.to_string()))
            .collect();
        let outcomes = outcomes(&stage, "g", &batch(&["a", "b", "c", "a"]), &prepared)
            .await
            .unwrap();
        // "b" was decided before; "c" was not prepared.
        assert_eq!(
            described(outcomes),
            ["now@0+charged", "before", "now@2", "now@0+charged"]
        );
    }
}
