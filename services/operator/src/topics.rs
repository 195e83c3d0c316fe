//! The topic decision (SPEC §5), pure: what the spec asks for against what
//! the broker has. The reconcile loop applies the actions through the Kafka
//! admin API and reports the refusals as conditions.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantedTopic {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i32,
    pub config: BTreeMap<String, String>,
}

/// What the broker reports for an existing topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedTopic {
    pub partitions: i32,
    /// The topic's configuration in force (DescribeConfigs); `None` when
    /// it was not described (then no config change is attempted).
    pub config: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicAction {
    Create(WantedTopic),
    /// Raise the partition count to this total.
    AddPartitions {
        name: String,
        total: i32,
    },
    /// Set these config keys.
    AlterConfig {
        name: String,
        set: BTreeMap<String, String>,
    },
    /// Kafka cannot remove partitions: left alone, reported `NotSupported`.
    RefuseDecrease {
        name: String,
        have: i32,
        want: i32,
    },
}

/// The actions that bring the broker to the spec, topic by topic, in the
/// spec's order.
pub fn plan(
    wanted: &[WantedTopic],
    observed: &BTreeMap<String, ObservedTopic>,
) -> Vec<TopicAction> {
    let mut actions = Vec::new();
    for w in wanted {
        let Some(have) = observed.get(&w.name) else {
            actions.push(TopicAction::Create(w.clone()));
            continue;
        };
        if w.partitions > have.partitions {
            actions.push(TopicAction::AddPartitions {
                name: w.name.clone(),
                total: w.partitions,
            });
        } else if w.partitions < have.partitions {
            actions.push(TopicAction::RefuseDecrease {
                name: w.name.clone(),
                have: have.partitions,
                want: w.partitions,
            });
        }
        let Some(have_config) = &have.config else {
            continue;
        };
        let set: BTreeMap<String, String> = w
            .config
            .iter()
            .filter(|(k, v)| have_config.get(*k) != Some(*v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !set.is_empty() {
            actions.push(TopicAction::AlterConfig {
                name: w.name.clone(),
                set,
            });
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted(name: &str, partitions: i32, config: &[(&str, &str)]) -> WantedTopic {
        WantedTopic {
            name: name.into(),
            partitions,
            replication_factor: 1,
            config: config
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn observed(partitions: i32, config: &[(&str, &str)]) -> ObservedTopic {
        ObservedTopic {
            partitions,
            config: Some(
                config
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
        }
    }

    #[test]
    fn creates_raises_refuses_and_reconfigures() {
        let spec = vec![
            wanted("orders", 6, &[("retention.ms", "604800000")]),
            wanted("orders.validated", 12, &[]),
            wanted("payment.events", 3, &[]),
            wanted("notifications", 3, &[("retention.ms", "86400000")]),
            wanted("orders.dlq", 1, &[]),
        ];
        let have: BTreeMap<String, ObservedTopic> = [
            ("orders.validated", observed(6, &[])),
            ("payment.events", observed(6, &[])),
            (
                "notifications",
                observed(3, &[("retention.ms", "604800000")]),
            ),
            ("orders.dlq", observed(1, &[])),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        assert_eq!(
            plan(&spec, &have),
            vec![
                TopicAction::Create(spec[0].clone()),
                TopicAction::AddPartitions {
                    name: "orders.validated".into(),
                    total: 12
                },
                TopicAction::RefuseDecrease {
                    name: "payment.events".into(),
                    have: 6,
                    want: 3
                },
                TopicAction::AlterConfig {
                    name: "notifications".into(),
                    set: [("retention.ms".to_string(), "86400000".to_string())].into(),
                },
            ]
        );
    }

    #[test]
    fn an_undescribed_config_is_left_alone() {
        let spec = vec![wanted("orders", 6, &[("retention.ms", "1")])];
        let have = [(
            "orders".to_string(),
            ObservedTopic {
                partitions: 6,
                config: None,
            },
        )]
        .into();
        assert!(plan(&spec, &have).is_empty());
    }

    #[test]
    fn a_matching_broker_needs_nothing() {
        let spec = vec![wanted("orders", 6, &[("cleanup.policy", "delete")])];
        let have = [(
            "orders".to_string(),
            observed(6, &[("cleanup.policy", "delete")]),
        )]
        .into();
        assert!(plan(&spec, &have).is_empty());
    }
}
