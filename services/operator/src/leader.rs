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
    use http::{Request, Response, StatusCode};
    use kube::client::Body;
    use serde_json::{json, Value};
    use tower_test::mock::Handle;

    type ApiHandle = Handle<Request<Body>, Response<Body>>;

    const PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/ops/leases/orderflow-operator";

    fn lock() -> (LeaseLock, ApiHandle) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(service, "ops");
        let lock = LeaseLock::new(
            Api::namespaced(client, "ops"),
            "orderflow-operator",
            "me",
            Duration::from_secs(15),
        );
        (lock, handle)
    }

    async fn next(
        handle: &mut ApiHandle,
        method: &str,
        path: &str,
    ) -> (Value, tower_test::mock::SendResponse<Response<Body>>) {
        let (request, send) = handle.next_request().await.expect("a request");
        assert_eq!(
            (request.method().as_str(), request.uri().path()),
            (method, path)
        );
        let (g, r, v) = crate::rbac::request_attributes(
            method,
            path,
            request.uri().query().unwrap_or_default(),
        );
        assert!(
            crate::rbac::allows(crate::rbac::NAMESPACE_RULES, &g, &r, &v),
            "RBAC lacks {v} {g}/{r}"
        );
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        (body, send)
    }

    fn respond(send: tower_test::mock::SendResponse<Response<Body>>, status: u16, body: &Value) {
        send.send_response(
            Response::builder()
                .status(StatusCode::from_u16(status).unwrap())
                .body(Body::from(serde_json::to_vec(body).unwrap()))
                .unwrap(),
        );
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

    fn not_found() -> Value {
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"})
    }

    #[tokio::test]
    async fn an_absent_lease_is_created_and_won() {
        let (lock, mut api) = lock();
        let run = tokio::spawn(async move { lock.try_acquire().await });
        let (_, send) = next(&mut api, "GET", PATH).await;
        respond(send, 404, &not_found());
        let (body, send) = next(
            &mut api,
            "POST",
            "/apis/coordination.k8s.io/v1/namespaces/ops/leases",
        )
        .await;
        assert_eq!(body["spec"]["holderIdentity"], "me");
        assert_eq!(body["spec"]["leaseDurationSeconds"], 15);
        respond(send, 201, &body);
        assert!(run.await.unwrap().unwrap());
    }

    #[tokio::test]
    async fn a_fresh_lease_of_another_replica_is_left_alone() {
        let (lock, mut api) = lock();
        let run = tokio::spawn(async move { lock.try_acquire().await });
        let (_, send) = next(&mut api, "GET", PATH).await;
        respond(send, 200, &lease("other", 3));
        assert!(!run.await.unwrap().unwrap());
        // No write: the client was dropped with no further request.
        assert!(api.next_request().await.is_none());
    }

    #[tokio::test]
    async fn an_expired_lease_is_taken_over_conditionally() {
        let (lock, mut api) = lock();
        let run = tokio::spawn(async move { lock.try_acquire().await });
        let (_, send) = next(&mut api, "GET", PATH).await;
        respond(send, 200, &lease("other", 20));
        let (body, send) = next(&mut api, "PUT", PATH).await;
        assert_eq!(body["spec"]["holderIdentity"], "me");
        assert_eq!(body["spec"]["leaseTransitions"], 3);
        assert_eq!(
            body["metadata"]["resourceVersion"], "7",
            "the write is conditional"
        );
        respond(send, 200, &body);
        assert!(run.await.unwrap().unwrap());
    }

    #[tokio::test]
    async fn losing_the_race_for_an_expired_lease_is_not_winning() {
        let (lock, mut api) = lock();
        let run = tokio::spawn(async move { lock.try_acquire().await });
        let (_, send) = next(&mut api, "GET", PATH).await;
        respond(send, 200, &lease("other", 20));
        let (_, send) = next(&mut api, "PUT", PATH).await;
        respond(
            send,
            409,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409, "message": "conflict"}),
        );
        assert!(!run.await.unwrap().unwrap());
    }

    #[tokio::test]
    async fn the_holder_renews_without_a_transition() {
        let (lock, mut api) = lock();
        let run = tokio::spawn(async move { lock.try_acquire().await });
        let (_, send) = next(&mut api, "GET", PATH).await;
        respond(send, 200, &lease("me", 5));
        let (body, send) = next(&mut api, "PUT", PATH).await;
        assert_eq!(body["spec"]["leaseTransitions"], 2);
        respond(send, 200, &body);
        assert!(run.await.unwrap().unwrap());
    }
}
