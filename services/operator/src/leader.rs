//! Leader election with a `coordination.k8s.io` Lease, as client-go does
//! it: the holder renews the Lease every retry period and gives leadership
//! up when it could not renew within the renew deadline, which is shorter
//! than the lease; another replica takes the Lease over only once it has
//! expired, so the old leader has stopped before a new one starts. Writes are conditional
//! on the resourceVersion read, so two replicas never both win. Only the
//! leader runs the controller, so two operator replicas are safe.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::PostParams;
use kube::Api;
use orderflow_platform::shutdown::CancellationToken;

use crate::metrics::Metrics;

/// client-go's timings: lease 15 s, renew deadline 10 s, retry 2 s.
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    /// How long a Lease holds without renewal (`leaseDurationSeconds`).
    pub duration: Duration,
    /// The holder stops leading when it could not renew for this long.
    pub renew_deadline: Duration,
    /// Between renewals, and between attempts of a standby.
    pub retry_period: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

impl Timings {
    /// The renew deadline must end before the lease does (else a standby
    /// could take over while the old leader still works), and the retry
    /// period must leave room for more than one renewal in it.
    pub fn check(&self) -> Result<(), String> {
        if self.duration.as_secs() < 1 {
            return Err("the lease duration must be at least 1s".into());
        }
        if self.renew_deadline >= self.duration {
            return Err(format!(
                "the renew deadline ({:?}) must be shorter than the lease duration ({:?})",
                self.renew_deadline, self.duration
            ));
        }
        if self.retry_period.is_zero() || self.retry_period * 2 > self.renew_deadline {
            return Err(format!(
                "the retry period ({:?}) must be positive and at most half the renew deadline ({:?})",
                self.retry_period, self.renew_deadline
            ));
        }
        Ok(())
    }
}

pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    timings: Timings,
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

impl LeaseLock {
    pub fn new(api: Api<Lease>, name: &str, identity: &str, timings: Timings) -> Self {
        LeaseLock {
            api,
            name: name.into(),
            identity: identity.into(),
            timings,
        }
    }

    /// Takes or renews the Lease; `Ok(false)` while another replica holds it.
    pub async fn try_acquire(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let seconds = self.timings.duration.as_secs().max(1) as i32;
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if is_conflict(&e) => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let ours = holder.as_deref() == Some(self.identity.as_str());
        let expired = match (&spec.renew_time, spec.lease_duration_seconds) {
            (Some(renewed), Some(d)) => renewed.0 + SignedDuration::from_secs(i64::from(d)) < now,
            _ => true,
        };
        if holder.is_some() && !ours && !expired {
            return Ok(false);
        }
        if !ours {
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.holder_identity = Some(self.identity.clone());
        spec.lease_duration_seconds = Some(seconds);
        spec.renew_time = Some(MicroTime(now));
        // `lease` keeps the resourceVersion it was read at: if anyone wrote
        // in between, this is a 409 and we did not win.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up (on shutdown) so a standby takes over at once.
    pub async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_conflict(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Renews every retry period; returns `true` when leadership is lost
    /// (another holder, or no successful renewal within the renew deadline,
    /// counted from the last one, however long a request hangs), `false`
    /// when `stop` is cancelled.
    async fn hold(&self, stop: &CancellationToken) -> bool {
        let mut last_renewed = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return false,
                _ = tokio::time::sleep(self.timings.retry_period) => {}
            }
            let deadline = last_renewed + self.timings.renew_deadline;
            match tokio::time::timeout_at(deadline, self.try_acquire()).await {
                Ok(Ok(true)) => {
                    last_renewed = tokio::time::Instant::now();
                    continue;
                }
                Ok(Ok(false)) => return true,
                Ok(Err(e)) => tracing::warn!(error = %e, "renewing the leader Lease"),
                Err(_) => tracing::warn!("renewing the leader Lease: no answer"),
            }
            if tokio::time::Instant::now() < deadline {
                continue;
            }
            tracing::warn!(deadline = ?self.timings.renew_deadline, "not renewed within the renew deadline");
            return true;
        }
    }
}

/// Runs `work` while this replica leads, until `shutdown`. `work` gets a
/// token that is cancelled when leadership is lost or on shutdown, and must
/// return soon after.
pub async fn run<F, Fut>(lock: LeaseLock, metrics: Metrics, shutdown: CancellationToken, work: F)
where
    F: Fn(CancellationToken) -> Fut,
    Fut: Future<Output = ()>,
{
    let retry = lock.timings.retry_period;
    loop {
        // Standby until the Lease is ours.
        loop {
            match lock.try_acquire().await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "acquiring the leader Lease"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(retry) => {}
            }
        }
        tracing::info!(identity = %lock.identity, lease = %lock.name, "leading");
        metrics.leader.set(1);
        let token = shutdown.child_token();
        let mut working = std::pin::pin!(work(token.clone()));
        let finished = tokio::select! {
            _ = &mut working => true,
            lost = lock.hold(&token) => {
                if lost {
                    tracing::warn!("lost the leader Lease: stopping the controller");
                }
                false
            }
        };
        token.cancel();
        if !finished {
            working.await;
        }
        metrics.leader.set(0);
        if shutdown.is_cancelled() {
            if let Err(e) = lock.release().await {
                tracing::warn!(error = %e, "releasing the leader Lease");
            }
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{mock_api, ApiServer};
    use crate::rbac::NAMESPACE_RULES;
    use http::StatusCode;
    use serde_json::{json, Value};

    const PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/ops/leases/orderflow-operator";

    fn lock() -> (LeaseLock, ApiServer) {
        let (client, api) = mock_api(NAMESPACE_RULES, "ops");
        let lock = LeaseLock::new(
            Api::namespaced(client, "ops"),
            "orderflow-operator",
            "me",
            Timings::default(),
        );
        (lock, api)
    }

    fn lease(holder: &str, renewed_secs_ago: i64) -> Value {
        let renewed = Timestamp::now() - SignedDuration::from_secs(renewed_secs_ago);
        json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "orderflow-operator", "namespace": "ops", "resourceVersion": "7"},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                     "renewTime": renewed.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(), "leaseTransitions": 2},
        })
    }

    #[tokio::test]
    async fn an_absent_lease_is_created_and_won() {
        let (lock, mut api) = lock();
        let run = tokio::spawn(async move { lock.try_acquire().await });
        api.expect("GET", PATH).await.fail(404, "NotFound");
        let r = api
            .expect("POST", "/apis/coordination.k8s.io/v1/namespaces/ops/leases")
            .await;
        assert_eq!(r.body["spec"]["holderIdentity"], "me");
        assert_eq!(r.body["spec"]["leaseDurationSeconds"], 15);
        let body = r.body.clone();
        r.respond(StatusCode::CREATED, &body);
        assert!(run.await.unwrap().unwrap());
    }

    #[tokio::test]
    async fn a_fresh_lease_of_another_replica_is_left_alone() {
        let (lock, mut api) = lock();
        let run = tokio::spawn(async move { lock.try_acquire().await });
        api.expect("GET", PATH)
            .await
            .respond(StatusCode::OK, &lease("other", 3));
        assert!(!run.await.unwrap().unwrap());
        // No write follows.
        api.expect_nothing_more().await;
    }

    #[tokio::test]
    async fn an_expired_lease_is_taken_over_conditionally() {
        let (lock, mut api) = lock();
        let run = tokio::spawn(async move { lock.try_acquire().await });
        api.expect("GET", PATH)
            .await
            .respond(StatusCode::OK, &lease("other", 20));
        let r = api.expect("PUT", PATH).await;
        assert_eq!(r.body["spec"]["holderIdentity"], "me");
        assert_eq!(r.body["spec"]["leaseTransitions"], 3);
        assert_eq!(
            r.body["metadata"]["resourceVersion"], "7",
            "the write is conditional"
        );
        r.echo();
        assert!(run.await.unwrap().unwrap());
    }

    #[tokio::test]
    async fn losing_the_race_for_an_expired_lease_is_not_winning() {
        let (lock, mut api) = lock();
        let run = tokio::spawn(async move { lock.try_acquire().await });
        api.expect("GET", PATH)
            .await
            .respond(StatusCode::OK, &lease("other", 20));
        api.expect("PUT", PATH).await.fail(409, "Conflict");
        assert!(!run.await.unwrap().unwrap());
    }

    #[tokio::test]
    async fn the_holder_renews_without_a_transition() {
        let (lock, mut api) = lock();
        let run = tokio::spawn(async move { lock.try_acquire().await });
        api.expect("GET", PATH)
            .await
            .respond(StatusCode::OK, &lease("me", 5));
        let r = api.expect("PUT", PATH).await;
        assert_eq!(r.body["spec"]["leaseTransitions"], 2);
        r.echo();
        assert!(run.await.unwrap().unwrap());
    }

    #[test]
    fn the_renew_deadline_must_end_before_the_lease() {
        assert!(Timings::default().check().is_ok());
        let t = |d, r, p| Timings {
            duration: Duration::from_millis(d),
            renew_deadline: Duration::from_millis(r),
            retry_period: Duration::from_millis(p),
        };
        assert!(t(15_000, 15_000, 2_000)
            .check()
            .unwrap_err()
            .contains("renew deadline"));
        assert!(t(15_000, 20_000, 2_000).check().is_err());
        assert!(t(15_000, 10_000, 6_000)
            .check()
            .unwrap_err()
            .contains("retry period"));
        assert!(t(15_000, 10_000, 0).check().is_err());
        assert!(t(500, 200, 100).check().is_err(), "under a second");
    }

    #[tokio::test]
    async fn a_leader_that_cannot_renew_gives_up_within_the_renew_deadline() {
        let (client, mut api) = mock_api(NAMESPACE_RULES, "ops");
        let timings = Timings {
            duration: Duration::from_secs(3),
            renew_deadline: Duration::from_millis(1500),
            retry_period: Duration::from_millis(300),
        };
        let lock = LeaseLock::new(
            Api::namespaced(client, "ops"),
            "orderflow-operator",
            "me",
            timings,
        );
        let started = std::time::Instant::now();
        let hold = tokio::spawn(async move { lock.hold(&CancellationToken::new()).await });
        // Every renewal fails: the API server answers 500.
        let answering = tokio::spawn(async move {
            loop {
                api.expect("GET", PATH).await.fail(500, "InternalError");
            }
        });
        assert!(hold.await.unwrap(), "leadership is lost");
        let took = started.elapsed();
        answering.abort();
        assert!(
            took >= Duration::from_millis(1500) && took < Duration::from_secs(3),
            "gave up after {took:?}: within the renew deadline, before the lease ends"
        );
    }
}
