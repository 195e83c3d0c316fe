//! The operator's broker facts against the real broker started by
//! scripts/test: the lag it computes for a group that consumed part of a
//! topic equals the true figure exactly, and the topics it plans are created
//! with the right partitions.

use std::collections::BTreeMap;
use std::time::Duration;

use orderflow_operator::broker::{
    apply, existing_topics, partition_offsets, Brokers, Connection, KafkaBrokers,
};
use orderflow_operator::scaling::total_lag;
use orderflow_operator::topics::{plan, TopicAction, WantedTopic};
use orderflow_testkit as kit;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(15);

#[tokio::test]
async fn lag_of_a_group_that_consumed_part_of_a_topic_is_exact() {
    let brokers = kit::kafka();
    let args = kit::kafka_args(&brokers);
    let topic = kit::unique("lag");
    let admin = orderflow_platform::kafka::admin(&args, "operator-test").unwrap();
    orderflow_platform::kafka::ensure_topics(&admin, &[(topic.as_str(), 3)], 1)
        .await
        .unwrap();
    // 30 messages on partition 0, 20 on 1, 10 on 2 (explicit partitions).
    let producer = kit::producer(&brokers);
    for (partition, count) in [(0, 30), (1, 20), (2, 10)] {
        for i in 0..count {
            producer
                .send(
                    rdkafka::producer::FutureRecord::to(&topic)
                        .partition(partition)
                        .key("k")
                        .payload(&format!("m-{i}")),
                    TIMEOUT,
                )
                .await
                .map_err(|(e, _)| e)
                .unwrap();
        }
    }
    // The group has committed 12 on partition 0 and 20 (everything) on 1,
    // and nothing on 2.
    let group = kit::unique("lag-group");
    let reader = orderflow_platform::kafka::group_reader(&args, "operator-test", &group).unwrap();
    let mut commit = TopicPartitionList::new();
    commit
        .add_partition_offset(&topic, 0, Offset::Offset(12))
        .unwrap();
    commit
        .add_partition_offset(&topic, 1, Offset::Offset(20))
        .unwrap();
    let topic2 = topic.clone();
    let offsets = tokio::task::spawn_blocking(move || {
        reader.commit(&commit, CommitMode::Sync).unwrap();
        partition_offsets(&reader, &topic2, TIMEOUT).unwrap()
    })
    .await
    .unwrap();
    let by_partition: BTreeMap<i32, (i64, i64, Option<i64>)> = offsets
        .iter()
        .map(|p| (p.partition, (p.low, p.high, p.committed)))
        .collect();
    assert_eq!(
        by_partition,
        BTreeMap::from([
            (0, (0, 30, Some(12))),
            (1, (0, 20, Some(20))),
            (2, (0, 10, None)),
        ])
    );
    // (30 − 12) + (20 − 20) + (10 − 0): the uncommitted partition counts
    // from its low watermark.
    assert_eq!(total_lag(&offsets), 28);

    // The same through the clients the reconciler uses.
    let conn = Connection {
        bootstrap_servers: brokers.clone(),
        extra: String::new(),
    };
    let reconciler = KafkaBrokers::default();
    let seen = reconciler.offsets(&conn, &group, &topic).await.unwrap();
    assert_eq!(seen, offsets);
    assert_eq!(total_lag(&seen), 28);
}

#[tokio::test]
async fn the_reconcilers_broker_creates_and_deletes_topics() {
    // A private broker: deleting a topic on tansu makes concurrent
    // producers on other topics fail ("Unknown broker error"), which would
    // break the tests running beside this one.
    let server = kit::spawn_broker();
    let conn = Connection {
        bootstrap_servers: format!("127.0.0.1:{}", server.port),
        extra: String::new(),
    };
    let reconciler = KafkaBrokers::default();
    let name = kit::unique("deleted");
    let create = TopicAction::Create(WantedTopic {
        name: name.clone(),
        partitions: 2,
        replication_factor: 1,
        config: BTreeMap::from([("retention.ms".to_string(), "3600000".to_string())]),
    });
    reconciler.apply(&conn, &create).await.unwrap();
    let topics = reconciler.topics(&conn).await.unwrap();
    assert_eq!(topics[&name].partitions, 2);
    reconciler
        .delete(&conn, std::slice::from_ref(&name))
        .await
        .unwrap();
    // Deleting what is already gone is not an error (a retried finalizer).
    reconciler
        .delete(&conn, std::slice::from_ref(&name))
        .await
        .unwrap();
    let mut gone = false;
    for _ in 0..50 {
        if !reconciler.topics(&conn).await.unwrap().contains_key(&name) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "topic {name} still listed after deletion");
}

#[tokio::test]
async fn planned_topics_are_created_with_their_partitions() {
    let brokers = kit::kafka();
    let args = kit::kafka_args(&brokers);
    let prefix = kit::unique("plan");
    let wanted: Vec<WantedTopic> = [("orders", 6), ("orders.dlq", 1), ("notifications", 3)]
        .iter()
        .map(|(name, partitions)| WantedTopic {
            name: format!("{prefix}.{name}"),
            partitions: *partitions,
            replication_factor: 1,
            config: BTreeMap::from([("retention.ms".to_string(), "604800000".to_string())]),
        })
        .collect();
    let reader =
        orderflow_platform::kafka::group_reader(&args, "operator-test", "operator").unwrap();
    let admin = orderflow_platform::kafka::admin(&args, "operator-test").unwrap();
    let (reader, before) = tokio::task::spawn_blocking(move || {
        let before = existing_topics(&reader, TIMEOUT).unwrap();
        (reader, before)
    })
    .await
    .unwrap();
    let actions = plan(&wanted, &before);
    assert!(actions.iter().all(|a| matches!(a, TopicAction::Create(_))));
    assert_eq!(actions.len(), 3);
    for a in &actions {
        apply(&admin, a).await.unwrap();
    }
    let after = tokio::task::spawn_blocking(move || existing_topics(&reader, TIMEOUT).unwrap())
        .await
        .unwrap();
    for w in &wanted {
        assert_eq!(after[&w.name].partitions, w.partitions, "{}", w.name);
    }
    // Planned again: nothing left to do.
    assert!(plan(&wanted, &after).is_empty());
    // A decrease is refused, not attempted.
    let mut smaller = wanted.clone();
    smaller[0].partitions = 2;
    assert_eq!(
        plan(&smaller, &after),
        vec![TopicAction::RefuseDecrease {
            name: wanted[0].name.clone(),
            have: 6,
            want: 2
        }]
    );
}
