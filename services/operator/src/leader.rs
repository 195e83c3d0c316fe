//! Leader election with a `coordination.k8s.io` Lease, as client-go does
//! it: the holder renews the Lease every third of its duration; another
//! replica takes it over only once it has expired. Writes are conditional
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

pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

impl LeaseLock {
    pub fn new(api: Api<Lease>, name: &str, identity: &str, duration: Duration) -> Self {
        LeaseLock {
            api,
            name: name.into(),
            identity: identity.into(),
            duration,
        }
    }

    /// Takes or renews the Lease; `Ok(false)` while another replica holds it.
    pub async fn try_acquire(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let seconds = self.duration.as_secs().max(1) as i32;
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

    /// Renews every third of the duration; returns when leadership is lost
    /// (another holder, or no successful renewal for a whole duration) or
    /// `stop` is cancelled.
    async fn hold(&self, stop: &CancellationToken) -> bool {
        let mut last_renewed = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return false,
                _ = tokio::time::sleep(self.duration / 3) => {}
            }
            match self.try_acquire().await {
                Ok(true) => last_renewed = tokio::time::Instant::now(),
                Ok(false) => return true,
                Err(e) => {
                    tracing::warn!(error = %e, "renewing the leader Lease");
                    if last_renewed.elapsed() >= self.duration {
                        return true;
                    }
                }
            }
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
    let retry = lock.duration / 3;
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
            Duration::from_secs(15),
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
}
