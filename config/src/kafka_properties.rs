//! The librdkafka properties shopstream sets itself, and what a user may do with each of
//! them in `[kafka.properties]`.
//!
//! Every property the Kafka clients set (in `shopstream-ingest` and `shopstream-sinks`)
//! has one entry in [`MANAGED_PROPERTIES`], and the clients set them only through that
//! table (`shopstream_kafka::client::set_default` and `set_managed`), so a user's value is
//! never replaced without a word: either it is honoured, or validation refuses it and
//! says why and what to set instead. Aliases count as the same property: librdkafka maps
//! `linger.ms` and `queue.buffering.max.ms` to one setting, and when both reach it the
//! one applied last wins, in hash-map order.

use crate::sections::{Config, KafkaConfig};

/// What a user may do with a property shopstream sets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PropertyPolicy {
    /// shopstream must set it itself; `[kafka.properties]` may not (validation refuses it).
    Rejected {
        /// Why a user's value cannot be honoured.
        reason: &'static str,
        /// What to set instead.
        instead: &'static str,
    },
    /// shopstream's value unless the user sets the property; a user's value is honoured
    /// once it passes `allowed`.
    Default {
        /// shopstream's value.
        value: &'static str,
        /// Which values a user may set.
        allowed: Allowed,
        /// Another valid value, as a user might choose it (tests set it to check that
        /// the user's value reaches the client).
        example: &'static str,
    },
}

/// The values a user may give a [`PropertyPolicy::Default`] property.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Allowed {
    /// One of these spellings.
    OneOf {
        /// The accepted values.
        values: &'static [&'static str],
        /// Why other values are refused.
        reason: &'static str,
    },
    /// A whole number in `min..=max`.
    Integer {
        /// Smallest accepted value.
        min: i64,
        /// Largest accepted value.
        max: i64,
        /// Why values outside the range are refused.
        reason: &'static str,
    },
    /// A number (fractions allowed) in `min..=max`.
    Number {
        /// Smallest accepted value.
        min: f64,
        /// Largest accepted value.
        max: f64,
        /// Why values outside the range are refused.
        reason: &'static str,
    },
}

impl Allowed {
    /// Checks a user's value; the error says what is accepted and why.
    pub fn check(&self, value: &str) -> Result<(), String> {
        let value = value.trim();
        match *self {
            Allowed::OneOf { values, reason } => {
                if values.contains(&value) {
                    Ok(())
                } else {
                    let listed: Vec<String> = values.iter().map(|v| format!("`{v}`")).collect();
                    Err(format!(
                        "`{value}` is not accepted, only {} ({reason})",
                        listed.join(" or ")
                    ))
                }
            }
            Allowed::Integer { min, max, reason } => match value.parse::<i64>() {
                Ok(n) if (min..=max).contains(&n) => Ok(()),
                Ok(_) => Err(format!("`{value}` is outside {min}..={max} ({reason})")),
                Err(_) => Err(format!(
                    "`{value}` is not a whole number; {min}..={max} is accepted ({reason})"
                )),
            },
            Allowed::Number { min, max, reason } => match value.parse::<f64>() {
                Ok(n) if n.is_finite() && n >= min && n <= max => Ok(()),
                Ok(_) => Err(format!("`{value}` is outside {min}..={max} ({reason})")),
                Err(_) => Err(format!(
                    "`{value}` is not a number; {min}..={max} is accepted ({reason})"
                )),
            },
        }
    }
}

/// One librdkafka property that shopstream sets itself.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ManagedProperty {
    /// The name shopstream sets.
    pub key: &'static str,
    /// Other names librdkafka accepts for the same setting.
    pub aliases: &'static [&'static str],
    /// Which clients shopstream sets it on, and to what.
    pub set_on: &'static str,
    /// What a user may do with it.
    pub policy: PropertyPolicy,
}

impl ManagedProperty {
    /// The key and its aliases.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + use<> {
        std::iter::once(self.key).chain(self.aliases.iter().copied())
    }
}

/// Room a dead letter needs beside the original payload: its key and the reason headers.
pub const DEAD_LETTER_HEADROOM_BYTES: u64 = 65_536;

/// Every librdkafka property shopstream sets itself, with its policy. The clients set
/// properties only through this table; a test builds every client configuration and
/// checks that it sets exactly these keys.
pub const MANAGED_PROPERTIES: &[ManagedProperty] = &[
    ManagedProperty {
        key: "bootstrap.servers",
        aliases: &["metadata.broker.list"],
        set_on: "every client: kafka.brokers",
        policy: PropertyPolicy::Rejected {
            reason: "shopstream sets it from kafka.brokers",
            instead: "set kafka.brokers (or SHOPSTREAM__KAFKA__BROKERS)",
        },
    },
    ManagedProperty {
        key: "group.id",
        aliases: &[],
        set_on: "the source's consumers: kafka.group_id; the replay's seek consumer: \
                 `<kafka.group_id>-seek`",
        policy: PropertyPolicy::Rejected {
            reason: "shopstream derives every consumer's group from kafka.group_id",
            instead: "set kafka.group_id",
        },
    },
    ManagedProperty {
        key: "group.protocol",
        aliases: &[],
        set_on: "the source's consumers: `classic`",
        policy: PropertyPolicy::Rejected {
            reason: "the source rebalances with the classic protocol (eager assignment with \
                     the range assignor, which keeps co-partitioned clicks and orders \
                     together); under `consumer` (KIP-848) the broker chooses the assignor \
                     and assignments are incremental. librdkafka's default is to change to \
                     `consumer`, so shopstream pins it",
            instead: "scale out by starting more instances with the same kafka.group_id",
        },
    },
    ManagedProperty {
        key: "enable.auto.commit",
        aliases: &[],
        set_on: "every consumer: `false`",
        policy: PropertyPolicy::Rejected {
            reason: "shopstream commits offsets itself once what depends on them is durable \
                     (store files, checkpoint, acknowledged predictions and dead letters); \
                     an automatic commit would cover messages not yet processed",
            instead: "nothing is needed: offsets are committed after every checkpoint",
        },
    },
    ManagedProperty {
        key: "enable.auto.offset.store",
        aliases: &[],
        set_on: "the source's consumers: `false`",
        policy: PropertyPolicy::Rejected {
            reason: "shopstream stores and commits offsets itself once they are durable",
            instead: "nothing is needed: offsets are committed after every checkpoint",
        },
    },
    ManagedProperty {
        key: "enable.partition.eof",
        aliases: &[],
        set_on: "per consumer: `true` where shopstream must see a partition's end (bounded \
                 runs, the inventory table, the replay's seek), `false` on the live group \
                 consumer",
        policy: PropertyPolicy::Rejected {
            reason: "`--stop-at-end` runs (demo, replay, backfills) stop when every partition \
                     has reported its end, and the replay's seek reads a partition's end from \
                     it; the value differs per consumer",
            instead: "pass --stop-at-end to stop at the end of the input",
        },
    },
    ManagedProperty {
        key: "partition.assignment.strategy",
        aliases: &[],
        set_on: "the source's consumers: `range`; the trainer lease: `cooperative-sticky`",
        policy: PropertyPolicy::Rejected {
            reason: "clicks and orders are co-partitioned by user and the state of partition \
                     i holds both topics (click labels, order attribution); `range` gives \
                     partition i of both topics to the same instance, `roundrobin` would \
                     split them and `cooperative-sticky` needs incremental rebalancing, \
                     which the source does not do",
            instead: "scale out by starting more instances with the same kafka.group_id",
        },
    },
    ManagedProperty {
        key: "auto.offset.reset",
        aliases: &[],
        set_on: "the source's consumers: `earliest`",
        policy: PropertyPolicy::Rejected {
            reason: "shopstream positions every partition itself (checkpoint, else the \
                     group's committed offset, else the beginning) and relies on `earliest` \
                     when a position is no longer in the log (retention, \
                     kafka.seek_back_messages): `latest` would skip the retained messages \
                     without a trace and `error` would stall the partition",
            instead: "to start a new deployment at the end of the topics, commit the \
                      group's offsets first (kafka-consumer-groups.sh --group \
                      <kafka.group_id> --reset-offsets --to-latest --execute): without a \
                      checkpoint shopstream starts at the committed offsets",
        },
    },
    ManagedProperty {
        key: "statistics.interval.ms",
        aliases: &[],
        set_on: "the source's consumers: `5000`",
        policy: PropertyPolicy::Default {
            value: "5000",
            example: "1000",
            allowed: Allowed::Integer {
                min: 1,
                max: 86_400_000,
                reason: "the consumer lag on /metrics and /readyz comes from these \
                         statistics; 0 turns them off, and /readyz would report ready at \
                         any lag",
            },
        },
    },
    ManagedProperty {
        key: "fetch.wait.max.ms",
        aliases: &[],
        set_on: "every consumer: `25` (librdkafka's own default is 500)",
        policy: PropertyPolicy::Default {
            value: "25",
            example: "500",
            allowed: Allowed::Integer {
                min: 0,
                max: 300_000,
                reason: "librdkafka's range",
            },
        },
    },
    ManagedProperty {
        key: "acks",
        aliases: &["request.required.acks"],
        set_on: "the producer: `all`",
        policy: PropertyPolicy::Default {
            value: "all",
            example: "-1",
            allowed: Allowed::OneOf {
                values: &["all", "-1"],
                reason: "predictions and dead letters count as published once acknowledged, \
                         and offsets are committed and checkpoints written after that; with \
                         fewer acknowledgements an acknowledged message can be lost when the \
                         partition leader fails",
            },
        },
    },
    ManagedProperty {
        key: "linger.ms",
        aliases: &["queue.buffering.max.ms"],
        set_on: "the producer: `5`",
        policy: PropertyPolicy::Default {
            value: "5",
            example: "20",
            allowed: Allowed::Number {
                min: 0.0,
                max: 900_000.0,
                reason: "librdkafka's range",
            },
        },
    },
    ManagedProperty {
        key: "message.max.bytes",
        aliases: &[],
        set_on: "the producer: `104857600`",
        policy: PropertyPolicy::Default {
            value: "104857600",
            example: "2000000",
            allowed: Allowed::Integer {
                min: 1000,
                max: 1_000_000_000,
                reason: "librdkafka's range",
            },
        },
    },
    ManagedProperty {
        key: "message.timeout.ms",
        aliases: &["delivery.timeout.ms"],
        set_on: "the producer: kafka.produce_timeout_ms",
        policy: PropertyPolicy::Rejected {
            reason: "the publisher uses kafka.produce_timeout_ms for its own deadlines too \
                     (a full producer queue, the final flush), so the two must be one number",
            instead: "set kafka.produce_timeout_ms",
        },
    },
];

/// The table entry of `name` (a key or an alias), if shopstream sets it.
pub fn managed_property(name: &str) -> Option<&'static ManagedProperty> {
    MANAGED_PROPERTIES
        .iter()
        .find(|p| p.names().any(|n| n == name))
}

impl KafkaConfig {
    /// The name (key or alias) under which `[kafka.properties]` sets `property`, if it does.
    pub fn user_sets(&self, property: &ManagedProperty) -> Option<&'static str> {
        property.names().find(|n| self.properties.contains_key(*n))
    }
}

/// Problems with `[kafka.properties]` against the table, each as (dotted key, message).
pub(crate) fn problems(config: &Config) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let properties = &config.kafka.properties;
    for (name, value) in properties {
        let Some(property) = managed_property(name) else {
            continue;
        };
        let key = format!("kafka.properties.\"{name}\"");
        match property.policy {
            PropertyPolicy::Rejected { reason, instead } => out.push((
                key,
                format!(
                    "is set by shopstream and cannot be overridden: {reason}. Instead: {instead}"
                ),
            )),
            PropertyPolicy::Default { allowed, .. } => {
                // Two names of one setting reach librdkafka in hash-map order, so either
                // could win; reported once, on the later name.
                if let Some(other) = property
                    .names()
                    .filter(|n| *n < name.as_str() && properties.contains_key(*n))
                    .min()
                {
                    out.push((
                        key.clone(),
                        format!(
                            "is the same librdkafka setting as `{other}`, which is set too; \
                             set only one of them"
                        ),
                    ));
                }
                if let Err(why) = allowed.check(value) {
                    out.push((key, why));
                } else if property.key == "message.max.bytes" {
                    let bytes = value.trim().parse::<u64>().unwrap_or(0);
                    let needed = u64::try_from(config.pipeline.max_message_bytes)
                        .unwrap_or(u64::MAX)
                        .saturating_add(DEAD_LETTER_HEADROOM_BYTES);
                    if bytes < needed {
                        out.push((
                            key,
                            format!(
                                "{bytes} is below {needed}: a rejected message of up to \
                                 pipeline.max_message_bytes ({}) goes to the dead-letter \
                                 topic with its key and reason headers ({} bytes of room), \
                                 and a dead letter the producer refuses stops the job; \
                                 raise it or lower pipeline.max_message_bytes",
                                config.pipeline.max_message_bytes, DEAD_LETTER_HEADROOM_BYTES
                            ),
                        ));
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ConfigError;

    /// The problems of `text` as (key, message) pairs.
    fn problems_of(text: &str) -> Vec<(String, String)> {
        match Config::from_toml_str(text) {
            Ok(_) => Vec::new(),
            Err(ConfigError::Invalid { problems }) => {
                problems.into_iter().map(|p| (p.key, p.message)).collect()
            }
            Err(other) => panic!("unexpected error: {other}"),
        }
    }

    /// A `[kafka.properties]` table with `entries`.
    fn with_properties(entries: &[(&str, &str)]) -> String {
        let mut text = String::from("[kafka.properties]\n");
        for (key, value) in entries {
            text.push_str(&format!("\"{key}\" = \"{value}\"\n"));
        }
        text
    }

    #[test]
    fn every_rejected_name_is_refused_with_its_reason_and_the_rest_still_reported() {
        let rejected: Vec<(&str, &str, &str)> = MANAGED_PROPERTIES
            .iter()
            .filter_map(|p| match p.policy {
                PropertyPolicy::Rejected { reason, instead } => Some((p, reason, instead)),
                PropertyPolicy::Default { .. } => None,
            })
            .flat_map(|(p, reason, instead)| p.names().map(move |n| (n, reason, instead)))
            .collect();
        assert!(rejected.len() >= 11, "{rejected:?}");
        let entries: Vec<(&str, &str)> = rejected.iter().map(|(n, _, _)| (*n, "x")).collect();
        let text = format!("{}[pipeline]\nwindow_secs = 7\n", with_properties(&entries));
        let problems = problems_of(&text);
        for (name, reason, instead) in &rejected {
            let key = format!("kafka.properties.\"{name}\"");
            let found = problems
                .iter()
                .find(|(k, _)| *k == key)
                .unwrap_or_else(|| panic!("{key} not refused: {problems:?}"));
            assert!(found.1.contains(reason), "{found:?}");
            assert!(found.1.contains(instead), "{found:?}");
        }
        assert!(problems.iter().any(|(k, _)| k == "pipeline.window_secs"));
        assert_eq!(problems.len(), rejected.len() + 1, "{problems:?}");
    }

    #[test]
    fn honoured_properties_take_user_values_within_their_limits() {
        for property in MANAGED_PROPERTIES {
            if let PropertyPolicy::Default { value, example, .. } = property.policy {
                for name in property.names() {
                    for v in [value, example] {
                        let problems = problems_of(&with_properties(&[(name, v)]));
                        assert!(problems.is_empty(), "{name} = {v}: {problems:?}");
                    }
                }
            }
        }
        assert!(problems_of(&with_properties(&[("acks", "all")])).is_empty());
        assert!(problems_of(&with_properties(&[("linger.ms", "0.5")])).is_empty());
    }

    #[test]
    fn values_that_would_break_a_guarantee_are_refused_with_the_reason() {
        let cases = [
            ("acks", "1", "acknowledged message can be lost"),
            ("acks", "0", "only `all` or `-1`"),
            (
                "request.required.acks",
                "1",
                "acknowledged message can be lost",
            ),
            (
                "statistics.interval.ms",
                "0",
                "/readyz would report ready at any lag",
            ),
            ("statistics.interval.ms", "soon", "whole number"),
            ("linger.ms", "-1", "0..=900000"),
            ("queue.buffering.max.ms", "1e9", "0..=900000"),
            ("message.max.bytes", "999", "1000..=1000000000"),
            ("message.max.bytes", "1048576", "below 1114112"),
        ];
        for (name, value, expected) in cases {
            let problems = problems_of(&with_properties(&[(name, value)]));
            assert_eq!(problems.len(), 1, "{name} = {value}: {problems:?}");
            assert_eq!(problems[0].0, format!("kafka.properties.\"{name}\""));
            assert!(problems[0].1.contains(expected), "{problems:?}");
        }
        // A smaller input limit makes room for a smaller producer limit.
        let text = format!(
            "{}[pipeline]\nmax_message_bytes = 900000\n",
            with_properties(&[("message.max.bytes", "1000000")])
        );
        assert!(problems_of(&text).is_empty());
    }

    #[test]
    fn a_setting_under_two_names_is_refused() {
        let problems = problems_of(&with_properties(&[
            ("linger.ms", "10"),
            ("queue.buffering.max.ms", "20"),
        ]));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, "kafka.properties.\"queue.buffering.max.ms\"");
        assert!(problems[0].1.contains("`linger.ms`"), "{problems:?}");
    }

    #[test]
    fn honoured_properties_are_read_from_the_environment() {
        let mut env = Vec::new();
        let mut expected = Vec::new();
        for property in MANAGED_PROPERTIES {
            if let PropertyPolicy::Default { example, .. } = property.policy {
                let name = format!(
                    "SHOPSTREAM__KAFKA__PROPERTIES__{}",
                    property.key.replace('.', "_").to_ascii_uppercase()
                );
                env.push((name, example.to_string()));
                expected.push((property.key, example));
            }
        }
        assert!(
            env.iter()
                .any(|(n, _)| n == "SHOPSTREAM__KAFKA__PROPERTIES__LINGER_MS")
        );
        let config = Config::load_with_env(None, env).expect("honoured values validate");
        for (key, value) in expected {
            assert_eq!(
                config.kafka.properties.get(key).map(String::as_str),
                Some(value),
                "{key}"
            );
        }
        let refused = vec![(
            "SHOPSTREAM__KAFKA__PROPERTIES__AUTO_OFFSET_RESET".to_string(),
            "latest".to_string(),
        )];
        let err = Config::load_with_env(None, refused).expect_err("refused from env too");
        assert!(err.to_string().contains("auto.offset.reset"), "{err}");
    }

    #[test]
    fn the_example_config_and_the_operations_guide_name_every_property() {
        let example = include_str!("../shopstream.example.toml");
        let guide = include_str!("../../docs/operations.md");
        for property in MANAGED_PROPERTIES {
            for name in property.names() {
                assert!(
                    example.contains(&format!("\"{name}\"")),
                    "config/shopstream.example.toml does not mention \"{name}\""
                );
                assert!(
                    guide.contains(&format!("`{name}`")),
                    "docs/operations.md does not mention `{name}`"
                );
            }
        }
    }

    #[test]
    fn names_are_unique_across_the_table() {
        let mut seen = std::collections::BTreeSet::new();
        for property in MANAGED_PROPERTIES {
            for name in property.names() {
                assert!(seen.insert(name), "{name} appears twice");
            }
        }
    }

    #[test]
    fn defaults_pass_their_own_checks() {
        for property in MANAGED_PROPERTIES {
            if let PropertyPolicy::Default { value, allowed, .. } = property.policy {
                assert_eq!(allowed.check(value), Ok(()), "{}", property.key);
            }
        }
    }
}
