//! The operator's broker facts against the real broker started by
//! scripts/test: the lag it computes for a group that consumed part of a
//! topic equals the true figure exactly, and the topics it plans are created
//! with the right partitions.

use std::collections::BTreeMap;
use std::time::Duration;

use orderflow_operator::broker::{partition_offsets, Brokers, Connection, KafkaBrokers};
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

/// What Kafka's own `kafka-consumer-groups --describe` reports for `group`
/// on `topic`: partition → (current offset, log end offset, lag), with
/// `None` where the group has no committed offset ("-").
fn kafka_group_describe(
    brokers: &str,
    group: &str,
    topic: &str,
) -> BTreeMap<i32, (Option<i64>, i64, Option<i64>)> {
    let out = kit::kafka_tool(&[
        "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
        "--bootstrap-server",
        brokers,
        "--describe",
        "--group",
        group,
    ]);
    // GROUP TOPIC PARTITION CURRENT-OFFSET LOG-END-OFFSET LAG CONSUMER-ID HOST CLIENT-ID
    out.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() >= 6 && f[1] == topic)
        .map(|f| {
            (
                f[2].parse().unwrap(),
                (f[3].parse().ok(), f[4].parse().unwrap(), f[5].parse().ok()),
            )
        })
        .collect()
}

/// What Kafka's own `kafka-get-offsets` reports: partition → log end offset.
fn kafka_log_end_offsets(brokers: &str, topic: &str) -> BTreeMap<i32, i64> {
    let out = kit::kafka_tool(&[
        "org.apache.kafka.tools.GetOffsetShell",
        "--bootstrap-server",
        brokers,
        "--topic",
        topic,
    ]);
    // topic:partition:offset
    out.lines()
        .filter_map(|l| {
            let mut f = l.rsplitn(3, ':');
            let offset = f.next()?.parse().ok()?;
            let partition = f.next()?.parse().ok()?;
            Some((partition, offset))
        })
        .collect()
}

#[tokio::test]
async fn lag_per_partition_equals_what_kafka_reports() {
    let brokers = kit::kafka();
    let args = kit::kafka_args(&brokers);
    let topic = kit::unique("lag-cli");
    let admin = orderflow_platform::kafka::admin(&args, "operator-test").unwrap();
    orderflow_platform::kafka::ensure_topics(&admin, &[(topic.as_str(), 4)], 1)
        .await
        .unwrap();
    let producer = kit::producer(&brokers);
    for i in 0..200 {
        kit::produce(&producer, &topic, &format!("k-{i}"), b"x").await;
    }
    // A real member of the group consumes part of the topic and commits.
    let group = kit::unique("lag-cli-group");
    let consumed =
        kit::consume_in_group(&brokers, &topic, &group, 70, Duration::from_secs(60)).await;
    assert_eq!(consumed, 70);

    let reconciler = KafkaBrokers::default();
    let conn = Connection {
        bootstrap_servers: brokers.clone(),
        extra: String::new(),
    };
    let ours = reconciler.offsets(&conn, &group, &topic).await.unwrap();
    let (b, g, t) = (brokers.clone(), group.clone(), topic.clone());
    let theirs = tokio::task::spawn_blocking(move || kafka_group_describe(&b, &g, &t))
        .await
        .unwrap();
    let (b, t) = (brokers.clone(), topic.clone());
    let ends = tokio::task::spawn_blocking(move || kafka_log_end_offsets(&b, &t))
        .await
        .unwrap();
    assert_eq!(ours.len(), 4);
    assert_eq!(ends.len(), 4, "{ends:?}");
    assert!(!theirs.is_empty(), "the group committed somewhere");
    for p in &ours {
        assert_eq!(p.high, ends[&p.partition], "partition {}", p.partition);
        let our_lag = p.high - p.committed.unwrap_or(p.low);
        match theirs.get(&p.partition) {
            // The tool lists the partitions the group has committed on.
            Some(&(current, end, lag)) => {
                assert_eq!(p.high, end, "partition {}", p.partition);
                assert_eq!(p.committed, current, "partition {}", p.partition);
                assert_eq!(Some(our_lag), lag, "partition {}", p.partition);
            }
            // Not listed: no commit, so the whole partition is lag.
            None => {
                assert_eq!(p.committed, None, "partition {}", p.partition);
                assert_eq!(our_lag, p.high - p.low, "partition {}", p.partition);
            }
        }
    }
    assert_eq!(total_lag(&ours), 130);
}

fn wanted(name: &str, partitions: i32, config: &[(&str, &str)]) -> WantedTopic {
    WantedTopic {
        name: name.to_owned(),
        partitions,
        replication_factor: 1,
        config: config
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

/// One reconcile's topic step, as the controller runs it: observe (with
/// DescribeConfigs), plan, apply. Returns the actions.
async fn reconcile(
    reconciler: &KafkaBrokers,
    conn: &Connection,
    want: &[WantedTopic],
) -> Vec<TopicAction> {
    let names: Vec<String> = want.iter().map(|w| w.name.clone()).collect();
    let observed = reconciler.topics(conn, &names).await.unwrap();
    let actions = plan(want, &observed);
    for a in &actions {
        reconciler.apply(conn, a).await.unwrap();
    }
    actions
}

#[tokio::test]
async fn topic_actions_read_back_from_the_broker() {
    let brokers = kit::kafka();
    let conn = Connection {
        bootstrap_servers: brokers.clone(),
        extra: String::new(),
    };
    let reconciler = KafkaBrokers::default();
    let name = kit::unique("topic-actions");
    let other = kit::unique("topic-actions-other");
    let config = [
        ("retention.ms", "3600000"),
        ("cleanup.policy", "delete"),
        ("max.message.bytes", "2097152"),
    ];

    // Created with its partitions and config; DescribeConfigs returns it.
    let actions = reconcile(
        &reconciler,
        &conn,
        &[wanted(&name, 3, &config), wanted(&other, 1, &[])],
    )
    .await;
    assert!(
        matches!(
            &actions[..],
            [TopicAction::Create(_), TopicAction::Create(_)]
        ),
        "{actions:?}"
    );
    let observed = reconciler
        .topics(&conn, std::slice::from_ref(&name))
        .await
        .unwrap();
    assert_eq!(observed[&name].partitions, 3);
    let described = observed[&name].config.as_ref().expect("described");
    for (k, v) in config {
        assert_eq!(described.get(k).map(String::as_str), Some(v), "{k}");
    }
    let (b, n) = (brokers.clone(), name.clone());
    let (partitions, overrides) =
        tokio::task::spawn_blocking(move || kit::kafka_topic_describe(&b, &n))
            .await
            .unwrap();
    assert_eq!(partitions, 3);
    for (k, v) in config {
        assert_eq!(
            overrides.get(k).map(String::as_str),
            Some(v),
            "kafka-topics: {k}"
        );
    }
    // Reconciled again: nothing to do.
    assert!(reconcile(&reconciler, &conn, &[wanted(&name, 3, &config)])
        .await
        .is_empty());

    // Raised from 3 to 6 partitions.
    let actions = reconcile(&reconciler, &conn, &[wanted(&name, 6, &config)]).await;
    assert_eq!(
        actions,
        vec![TopicAction::AddPartitions {
            name: name.clone(),
            total: 6
        }]
    );
    assert_eq!(
        reconciler.topics(&conn, &[]).await.unwrap()[&name].partitions,
        6
    );

    // A decrease is refused and leaves the topic untouched.
    let actions = reconcile(&reconciler, &conn, &[wanted(&name, 2, &config)]).await;
    assert_eq!(
        actions,
        vec![TopicAction::RefuseDecrease {
            name: name.clone(),
            have: 6,
            want: 2
        }]
    );

    // A config change reads back changed, and the topic's other settings stay.
    let changed = [
        ("retention.ms", "7200000"),
        ("cleanup.policy", "delete"),
        ("max.message.bytes", "2097152"),
    ];
    let actions = reconcile(&reconciler, &conn, &[wanted(&name, 6, &changed)]).await;
    assert_eq!(
        actions,
        vec![TopicAction::AlterConfig {
            name: name.clone(),
            set: BTreeMap::from([("retention.ms".to_string(), "7200000".to_string())]),
        }]
    );
    let (b, n) = (brokers.clone(), name.clone());
    let (partitions, overrides) =
        tokio::task::spawn_blocking(move || kit::kafka_topic_describe(&b, &n))
            .await
            .unwrap();
    assert_eq!(partitions, 6, "the refused decrease changed nothing");
    for (k, v) in changed {
        assert_eq!(
            overrides.get(k).map(String::as_str),
            Some(v),
            "kafka-topics after the change: {k}"
        );
    }
    assert!(reconcile(&reconciler, &conn, &[wanted(&name, 6, &changed)])
        .await
        .is_empty());

    // Deleting this topic leaves the other one; deleting again is no error
    // (a retried finalizer).
    reconciler
        .delete(&conn, std::slice::from_ref(&name))
        .await
        .unwrap();
    reconciler
        .delete(&conn, std::slice::from_ref(&name))
        .await
        .unwrap();
    let mut gone = false;
    for _ in 0..50 {
        let topics = reconciler.topics(&conn, &[]).await.unwrap();
        assert!(topics.contains_key(&other), "another topic was deleted");
        if !topics.contains_key(&name) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "topic {name} still listed after deletion");
}
