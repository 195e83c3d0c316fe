//! The pipeline's topology, declared once (SPEC §3, §4): its topics (role,
//! default name, default partition count, the variable that renames it) and
//! its stages (name, the topic each consumes, its consumer group). The
//! services' flags, the consumer's stages, the operator's CRD defaults,
//! ConfigMap and autoscaler all read these tables.

/// What a topic is for; its key in the CRD's `spec.topics` and in
/// `--topic-<key>`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum TopicRole {
    Orders,
    Validated,
    Inventory,
    Payment,
    Notifications,
    Dlq,
}

pub struct Topic {
    pub role: TopicRole,
    /// The key in `spec.topics` and the `--topic-<key>` flag.
    pub key: &'static str,
    /// The name when nothing renames it.
    pub name: &'static str,
    pub partitions: i32,
    /// The environment variable that renames it (SPEC §6).
    pub env: &'static str,
}

/// Every topic, in pipeline order.
pub const TOPICS: [Topic; 6] = [
    Topic {
        role: TopicRole::Orders,
        key: "orders",
        name: "orders",
        partitions: 6,
        env: "KAFKA_TOPIC",
    },
    Topic {
        role: TopicRole::Validated,
        key: "validated",
        name: "orders.validated",
        partitions: 6,
        env: "KAFKA_TOPIC_VALIDATED",
    },
    Topic {
        role: TopicRole::Inventory,
        key: "inventory",
        name: "inventory.events",
        partitions: 6,
        env: "KAFKA_TOPIC_INVENTORY",
    },
    Topic {
        role: TopicRole::Payment,
        key: "payment",
        name: "payment.events",
        partitions: 6,
        env: "KAFKA_TOPIC_PAYMENT",
    },
    Topic {
        role: TopicRole::Notifications,
        key: "notifications",
        name: "notifications",
        partitions: 3,
        env: "KAFKA_TOPIC_NOTIFICATIONS",
    },
    Topic {
        role: TopicRole::Dlq,
        key: "dlq",
        name: "orders.dlq",
        partitions: 1,
        env: "KAFKA_TOPIC_DLQ",
    },
];

pub fn topic(role: TopicRole) -> &'static Topic {
    TOPICS
        .iter()
        .find(|t| t.role == role)
        .expect("every role is in TOPICS")
}

pub struct Stage {
    pub name: &'static str,
    /// The topic it consumes.
    pub input: TopicRole,
    /// Its consumer group.
    pub group: &'static str,
    /// The topics it emits to (besides the dead-letter topic, which every
    /// stage may write): the edges of the console's flow diagram.
    pub outputs: &'static [TopicRole],
}

/// Who writes `orders`: the producer, outside any stage.
pub const INTAKE: &str = "producer";

/// Every stage, in pipeline order.
pub const STAGES: [Stage; 4] = [
    Stage {
        name: "persist",
        input: TopicRole::Orders,
        group: "orderflow-persist",
        outputs: &[TopicRole::Validated, TopicRole::Notifications],
    },
    Stage {
        name: "inventory",
        input: TopicRole::Validated,
        group: "orderflow-inventory",
        outputs: &[TopicRole::Inventory, TopicRole::Notifications],
    },
    Stage {
        name: "payment",
        input: TopicRole::Inventory,
        group: "orderflow-payment",
        outputs: &[TopicRole::Payment, TopicRole::Notifications],
    },
    Stage {
        name: "notify",
        input: TopicRole::Notifications,
        group: "orderflow-notify",
        outputs: &[],
    },
];

/// The stage called `name`.
pub fn stage(name: &str) -> Option<&'static Stage> {
    STAGES.iter().find(|s| s.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_every_stage_consumes_a_known_topic() {
        let mut names: Vec<&str> = TOPICS.iter().map(|t| t.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), TOPICS.len());
        for s in &STAGES {
            assert_eq!(s.group, format!("orderflow-{}", s.name), "SPEC §4");
            assert_eq!(stage(s.name).unwrap().input, s.input);
            assert_ne!(s.input, TopicRole::Dlq);
            assert!(!s.outputs.contains(&TopicRole::Dlq) && !s.outputs.contains(&s.input));
        }
        assert_eq!(topic(TopicRole::Notifications).partitions, 3);
    }

    #[test]
    fn the_scripts_list_the_same_stages_in_the_same_order() {
        let lib = include_str!("../../../scripts/lib.sh");
        let line = lib
            .lines()
            .find_map(|l| l.strip_prefix("STAGES=("))
            .and_then(|l| l.strip_suffix(')'))
            .expect("scripts/lib.sh declares STAGES=(...)");
        let names: Vec<&str> = STAGES.iter().map(|s| s.name).collect();
        assert_eq!(line.split_whitespace().collect::<Vec<_>>(), names);
    }

    #[test]
    fn the_flags_take_their_defaults_and_variables_from_the_table() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            topics: crate::config::TopicArgs,
        }
        let cli = Cli::try_parse_from(["x"]).unwrap();
        for t in &TOPICS {
            assert_eq!(cli.topics.name(t.role), t.name, "{}", t.key);
        }
        let renamed: Vec<String> = TOPICS
            .iter()
            .map(|t| format!("--topic-{}=x.{}", t.key, t.key))
            .collect();
        let cli = Cli::try_parse_from(std::iter::once("x".to_owned()).chain(renamed)).unwrap();
        for t in &TOPICS {
            assert_eq!(
                cli.topics.name(t.role),
                format!("x.{}", t.key),
                "the flag of {}",
                t.key
            );
        }
        let command = <Cli as clap::CommandFactory>::command();
        for (arg, t) in command
            .get_arguments()
            .filter(|a| a.get_long().is_some_and(|l| l.starts_with("topic-")))
            .zip(&TOPICS)
        {
            assert_eq!(arg.get_long(), Some(format!("topic-{}", t.key).as_str()));
            assert_eq!(arg.get_env().and_then(|e| e.to_str()), Some(t.env));
        }
    }
}
