//! Reconcile scenarios against the mock API server: each asserts every
//! request the operator makes, in order, and what it writes.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use kube::runtime::controller::Action;
use serde_json::json;

use crate::controller::{error_policy, reconcile, FINALIZER};
use crate::fixtures::{condition, context, pipeline, FakeBrokers};
use crate::topics::TopicAction;

#[tokio::test]
async fn first_creation_creates_topics_and_workloads_scales_and_reports_ready() {
    let brokers = Arc::new(FakeBrokers::default());
    // 2500 messages wait for persist, spread over 3 partitions: 3 replicas.
    brokers.set_lag("orderflow-persist", &[1000, 1000, 500, 0, 0, 0]);
    let (ctx, mut api) = context(brokers.clone());
    let p = Arc::new(pipeline(json!({
        "ingress": {"enabled": true, "host": "orders.example.com", "tlsSecretName": "tls"},
        "gateway": {"enabled": true, "parentRef": {"name": "public"}},
    })));
    let run = tokio::spawn(reconcile(p, ctx.clone()));

    for topic in [
        "orders",
        "orders.validated",
        "inventory.events",
        "payment.events",
        "notifications",
        "orders.dlq",
    ] {
        let note = api.expect_event("TopicCreated").await;
        assert!(note.contains(&format!("topic {topic} ")), "{note}");
    }
    api.expect_owned_objects(1, true).await;
    api.expect_scale("shop-persist", 3).await;
    let note = api.expect_event("ScaledUp").await;
    assert!(note.contains("persist: 1 → 3"), "{note}");
    let status = api.expect_status().await;
    api.expect_nothing_more().await;

    assert_eq!(
        run.await.unwrap().unwrap(),
        Action::requeue(Duration::from_secs(15))
    );
    assert_eq!(condition(&status, "Ready")["status"], "True");
    assert_eq!(condition(&status, "TopicsReady")["status"], "True");
    assert_eq!(condition(&status, "DeploymentsReady")["status"], "True");
    assert_eq!(condition(&status, "Scaling")["reason"], "Scaled");
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(status["topics"].as_array().unwrap().len(), 6);
    assert!(status["topics"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["ready"] == true));
    assert_eq!(
        status["topics"][0],
        json!({"name": "orders", "partitions": 6, "ready": true})
    );
    let persist = &status["stages"][0];
    assert_eq!(
        (
            persist["name"].as_str(),
            persist["replicas"].as_i64(),
            persist["lag"].as_i64()
        ),
        (Some("persist"), Some(3), Some(2500))
    );
    assert!(persist["lastScaleTime"].is_string());
    assert_eq!(status["totalLag"], 2500);
    assert_eq!(status["consumerReplicas"], 3 + 1 + 1 + 1);
    assert_eq!(brokers.applied.lock().unwrap().len(), 6);
}

#[tokio::test]
async fn a_partition_decrease_is_refused_with_not_supported_and_the_topic_left_alone() {
    let brokers = Arc::new(FakeBrokers::with_default_topics());
    brokers.set_topic("orders", 12);
    let (ctx, mut api) = context(brokers.clone());
    let p = Arc::new(pipeline(json!({})));
    let run = tokio::spawn(reconcile(p, ctx));

    let note = api.expect_event("PartitionDecreaseRefused").await;
    assert!(
        note.contains("orders has 12 partitions and the spec asks for 6"),
        "{note}"
    );
    api.expect_owned_objects(1, false).await;
    let status = api.expect_status().await;
    api.expect_nothing_more().await;
    run.await.unwrap().unwrap();

    let topics = condition(&status, "TopicsReady");
    assert_eq!(
        (topics["status"].as_str(), topics["reason"].as_str()),
        (Some("False"), Some("NotSupported"))
    );
    assert_eq!(condition(&status, "Ready")["reason"], "NotSupported");
    assert_eq!(
        status["topics"][0],
        json!({"name": "orders", "partitions": 12, "ready": true})
    );
    assert!(
        brokers.applied.lock().unwrap().is_empty(),
        "nothing was done to the topic"
    );
    assert_eq!(brokers.topics.lock().unwrap()["orders"].partitions, 12);
}

#[tokio::test]
async fn raised_partitions_are_added() {
    let brokers = Arc::new(FakeBrokers::with_default_topics());
    let (ctx, mut api) = context(brokers.clone());
    let p = Arc::new(pipeline(json!({"topics": {"orders": {"partitions": 12}}})));
    let run = tokio::spawn(reconcile(p, ctx));
    let note = api.expect_event("PartitionsAdded").await;
    assert_eq!(note, "raised topic orders to 12 partitions");
    api.expect_owned_objects(1, false).await;
    let status = api.expect_status().await;
    run.await.unwrap().unwrap();
    assert_eq!(
        *brokers.applied.lock().unwrap(),
        vec![TopicAction::AddPartitions {
            name: "orders".into(),
            total: 12
        }]
    );
    assert_eq!(status["topics"][0]["partitions"], 12);
    assert_eq!(condition(&status, "Ready")["status"], "True");
}

#[tokio::test]
async fn delete_policy_adds_the_finalizer_before_anything_else() {
    let brokers = Arc::new(FakeBrokers::with_default_topics());
    let (ctx, mut api) = context(brokers);
    let p = Arc::new(pipeline(json!({"topicDeletionPolicy": "Delete"})));
    let run = tokio::spawn(reconcile(p, ctx));
    let r = api
        .expect(
            "PATCH",
            "/apis/orderflow.dev/v1alpha1/namespaces/default/orderpipelines/shop",
        )
        .await;
    assert_eq!(r.content_type, "application/merge-patch+json");
    assert_eq!(
        r.body,
        json!({"metadata": {"finalizers": [FINALIZER], "resourceVersion": "41"}})
    );
    r.echo_pipeline();
    api.expect_owned_objects(1, false).await;
    api.expect_status().await;
    api.expect_nothing_more().await;
    run.await.unwrap().unwrap();
}

#[tokio::test]
async fn deletion_with_delete_policy_deletes_the_topics_then_releases_the_finalizer() {
    let brokers = Arc::new(FakeBrokers::with_default_topics());
    let (ctx, mut api) = context(brokers.clone());
    let mut p = pipeline(json!({"topicDeletionPolicy": "Delete"}));
    p.metadata.finalizers = Some(vec![FINALIZER.into(), "example.com/other".into()]);
    p.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    let run = tokio::spawn(reconcile(Arc::new(p), ctx));

    let note = api.expect_event("TopicsDeleted").await;
    assert!(note.contains("orders, orders.validated"), "{note}");
    let r = api
        .expect(
            "PATCH",
            "/apis/orderflow.dev/v1alpha1/namespaces/default/orderpipelines/shop",
        )
        .await;
    // Only our finalizer goes; another controller's stays.
    assert_eq!(
        r.body,
        json!({"metadata": {"finalizers": ["example.com/other"], "resourceVersion": "41"}})
    );
    r.echo_pipeline();
    api.expect_nothing_more().await;
    assert_eq!(run.await.unwrap().unwrap(), Action::await_change());
    assert_eq!(
        *brokers.deleted.lock().unwrap(),
        [
            "orders",
            "orders.validated",
            "inventory.events",
            "payment.events",
            "notifications",
            "orders.dlq"
        ]
    );
}

#[tokio::test]
async fn deletion_with_retain_policy_keeps_the_topics() {
    let brokers = Arc::new(FakeBrokers::with_default_topics());
    let (ctx, api) = context(brokers.clone());
    let mut p = pipeline(json!({}));
    p.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    let action = reconcile(Arc::new(p), ctx).await.unwrap();
    api.expect_nothing_more().await;
    assert_eq!(action, Action::await_change());
    assert!(brokers.deleted.lock().unwrap().is_empty());
}

#[tokio::test]
async fn an_api_error_backs_off_and_the_next_reconcile_recovers() {
    let brokers = Arc::new(FakeBrokers::with_default_topics());
    let (ctx, mut api) = context(brokers);
    let p = Arc::new(pipeline(json!({})));

    let run = tokio::spawn(reconcile(p.clone(), ctx.clone()));
    api.expect("PATCH", "/api/v1/namespaces/default/configmaps/shop-config")
        .await
        .fail(500, "InternalError");
    let error = run.await.unwrap().unwrap_err();
    assert_eq!(error.reason(), "api");
    assert_eq!(
        error_policy(p.clone(), &error, ctx.clone()),
        Action::requeue(Duration::from_secs(5))
    );
    assert_eq!(
        error_policy(p.clone(), &error, ctx.clone()),
        Action::requeue(Duration::from_secs(10))
    );

    let run = tokio::spawn(reconcile(p.clone(), ctx.clone()));
    api.expect_owned_objects(1, false).await;
    let status = api.expect_status().await;
    api.expect_nothing_more().await;
    run.await.unwrap().unwrap();
    assert_eq!(condition(&status, "Ready")["status"], "True");
    // Success resets the backoff.
    assert_eq!(
        error_policy(p, &error, ctx.clone()),
        Action::requeue(Duration::from_secs(5))
    );
    let failures = ctx
        .metrics
        .failures
        .get_or_create(&crate::metrics::FailureLabels {
            reason: "api".into(),
        })
        .get();
    assert_eq!(failures, 3, "every failed reconcile is counted");
}

#[tokio::test]
async fn kafka_unreachable_is_reported_while_workloads_are_still_applied() {
    let brokers = Arc::new(FakeBrokers::with_default_topics());
    brokers.down.store(true, Ordering::SeqCst);
    let (ctx, mut api) = context(brokers);
    let p = Arc::new(pipeline(
        json!({"stages": {"persist": {"minReplicas": 2, "maxReplicas": 4, "lagPerReplica": 100}}}),
    ));
    let run = tokio::spawn(reconcile(p, ctx));
    api.expect_owned_objects(1, false).await;
    // No lag to go by, but the bounds hold: persist goes to its minimum.
    api.expect_scale("shop-persist", 2).await;
    api.expect_event("ScaledUp").await;
    let status = api.expect_status().await;
    api.expect_nothing_more().await;
    assert_eq!(
        run.await.unwrap().unwrap(),
        Action::requeue(Duration::from_secs(10))
    );
    let topics = condition(&status, "TopicsReady");
    assert_eq!(
        (topics["status"].as_str(), topics["reason"].as_str()),
        (Some("False"), Some("KafkaUnavailable"))
    );
    assert_eq!(condition(&status, "Ready")["status"], "False");
}

#[tokio::test]
async fn an_unreadable_kafka_settings_secret_is_reported_not_fatal() {
    let brokers = Arc::new(FakeBrokers::with_default_topics());
    let (ctx, mut api) = context(brokers.clone());
    let p = Arc::new(pipeline(
        json!({"kafka": {"bootstrapServers": "kafka:9092", "configSecretRef": {"name": "kafka-sasl", "key": "config"}}}),
    ));
    let run = tokio::spawn(reconcile(p, ctx));
    api.expect("GET", "/api/v1/namespaces/default/secrets/kafka-sasl")
        .await
        .fail(404, "NotFound");
    api.expect_owned_objects(1, false).await;
    let status = api.expect_status().await;
    api.expect_nothing_more().await;
    assert_eq!(
        run.await.unwrap().unwrap(),
        Action::requeue(Duration::from_secs(10))
    );
    let topics = condition(&status, "TopicsReady");
    assert_eq!(topics["reason"], "KafkaConfigUnavailable");
    assert!(
        topics["message"].as_str().unwrap().contains("kafka-sasl"),
        "{topics}"
    );
    assert!(brokers.applied.lock().unwrap().is_empty());
}

#[tokio::test]
async fn the_kafka_settings_secret_reaches_the_broker_connection() {
    let brokers = Arc::new(FakeBrokers::with_default_topics());
    let (ctx, mut api) = context(brokers.clone());
    let p = Arc::new(pipeline(
        json!({"kafka": {"bootstrapServers": "kafka:9092", "configSecretRef": {"name": "kafka-sasl", "key": "config"}}}),
    ));
    let run = tokio::spawn(reconcile(p, ctx));
    api.expect("GET", "/api/v1/namespaces/default/secrets/kafka-sasl")
        .await
        .respond(
            http::StatusCode::OK,
            &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "kafka-sasl"},
                    // base64 of "security.protocol=SASL_SSL"
                    "data": {"config": "c2VjdXJpdHkucHJvdG9jb2w9U0FTTF9TU0w="}}),
        );
    api.expect_owned_objects(1, false).await;
    let status = api.expect_status().await;
    run.await.unwrap().unwrap();
    assert_eq!(condition(&status, "TopicsReady")["status"], "True");
    assert_eq!(
        brokers.connections.lock().unwrap().last().unwrap().extra,
        "security.protocol=SASL_SSL"
    );
}
