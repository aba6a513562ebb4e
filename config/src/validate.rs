//! Semantic validation: values that have the right type but make no sense.

use std::collections::BTreeSet;
use std::fmt;

use crate::sections::Config;

/// One problem in a configuration: the dotted key and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key, for example `pipeline.window_secs`.
    pub key: String,
    /// What is wrong and, where possible, what would be right.
    pub message: String,
}

impl Problem {
    pub(crate) fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Librdkafka properties that shopstream sets itself; a pass-through value would silently
/// break offset handling or group membership.
const MANAGED_PROPERTIES: [(&str, &str); 4] = [
    ("bootstrap.servers", "set kafka.brokers instead"),
    ("group.id", "set kafka.group_id instead"),
    (
        "enable.auto.commit",
        "shopstream commits offsets itself after data is durable",
    ),
    (
        "enable.auto.offset.store",
        "shopstream stores offsets itself",
    ),
];

/// Returns every semantic problem of `config` (empty when valid).
pub(crate) fn validate(config: &Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut bad = |key: &str, message: String| problems.push(Problem::new(key, message));

    for broker in config.kafka.brokers.split(',').map(str::trim) {
        if broker.is_empty() {
            if !config.kafka.brokers.trim().is_empty() {
                bad(
                    "kafka.brokers",
                    "contains an empty entry; use host:port,host:port".into(),
                );
            }
            continue;
        }
        let port_ok = broker
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !port_ok {
            bad(
                "kafka.brokers",
                format!("`{broker}` is not host:port (for example 127.0.0.1:9092)"),
            );
        }
    }
    if config.kafka.group_id.trim().is_empty() {
        bad("kafka.group_id", "must not be empty".into());
    }
    if !(1..=10_000).contains(&config.kafka.topic_partitions) {
        bad(
            "kafka.topic_partitions",
            format!("{} is outside 1..=10000", config.kafka.topic_partitions),
        );
    }
    if config.kafka.produce_timeout_ms == 0 {
        bad("kafka.produce_timeout_ms", "must be at least 1".into());
    }
    if config.kafka.connect_timeout_ms == 0 {
        bad("kafka.connect_timeout_ms", "must be at least 1".into());
    }
    for key in config.kafka.properties.keys() {
        if let Some((_, hint)) = MANAGED_PROPERTIES.iter().find(|(k, _)| k == key) {
            bad(
                &format!("kafka.properties.\"{key}\""),
                format!("is managed by shopstream: {hint}"),
            );
        }
    }

    let topics = &config.topics;
    let all = [
        ("topics.clicks", &topics.clicks),
        ("topics.orders", &topics.orders),
        ("topics.inventory", &topics.inventory),
        ("topics.predictions", &topics.predictions),
        ("topics.dead_letter", &topics.dead_letter),
        ("topics.alerts", &topics.alerts),
    ];
    let mut seen = BTreeSet::new();
    for (key, name) in all {
        let valid_chars = name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if name.is_empty() || name.len() > 249 || !valid_chars {
            bad(
                key,
                format!("`{name}` is not a valid Kafka topic name ([a-zA-Z0-9._-], 1..249 chars)"),
            );
        } else if !seen.insert(name.as_str()) {
            bad(key, format!("`{name}` is used for two different topics"));
        }
    }

    let p = &config.pipeline;
    if p.window_secs == 0 || 3600 % p.window_secs != 0 {
        bad(
            "pipeline.window_secs",
            format!(
                "{} must be positive and divide 3600 so windows never straddle an hour",
                p.window_secs
            ),
        );
    }
    if p.click_window_secs == 0 {
        bad("pipeline.click_window_secs", "must be at least 1".into());
    }
    if p.attribution_window_secs == 0 {
        bad(
            "pipeline.attribution_window_secs",
            "must be at least 1".into(),
        );
    }
    if p.feature_ttl_secs < 7 * 86_400 {
        bad(
            "pipeline.feature_ttl_secs",
            format!(
                "{} is shorter than the 7-day horizon of the rolling features (604800)",
                p.feature_ttl_secs
            ),
        );
    }
    if p.max_message_bytes < 64 {
        bad(
            "pipeline.max_message_bytes",
            format!("{} is below the 64-byte minimum", p.max_message_bytes),
        );
    }
    if p.dedupe_max_keys == 0 {
        bad("pipeline.dedupe_max_keys", "must be at least 1".into());
    }
    if p.max_future_skew_secs == 0 {
        bad("pipeline.max_future_skew_secs", "must be at least 1".into());
    }
    if p.idle_partition_timeout_secs == 0 {
        bad(
            "pipeline.idle_partition_timeout_secs",
            "must be at least 1".into(),
        );
    }
    if p.channel_capacity == 0 {
        bad("pipeline.channel_capacity", "must be at least 1".into());
    }

    if config.store.path.as_os_str().is_empty() {
        bad("store.path", "must not be empty".into());
    }
    if config.store.row_group_rows == 0 {
        bad("store.row_group_rows", "must be at least 1".into());
    }
    if !(1..=22).contains(&config.store.zstd_level) {
        bad(
            "store.zstd_level",
            format!("{} is outside 1..=22", config.store.zstd_level),
        );
    }

    if config.http.listen.parse::<std::net::SocketAddr>().is_err() {
        bad(
            "http.listen",
            format!(
                "`{}` is not ip:port (for example 127.0.0.1:9464)",
                config.http.listen
            ),
        );
    }

    let m = &config.model;
    if !(m.learning_rate > 0.0 && m.learning_rate <= 1.0) {
        bad(
            "model.learning_rate",
            format!("{} is outside (0, 1]", m.learning_rate),
        );
    }
    if !(1..=65_536).contains(&m.batch_size) {
        bad(
            "model.batch_size",
            format!("{} is outside 1..=65536", m.batch_size),
        );
    }
    if !(8..=24).contains(&m.embedding_bits) {
        bad(
            "model.embedding_bits",
            format!("{} is outside 8..=24", m.embedding_bits),
        );
    }
    for (key, value) in [
        ("model.embedding_dim", m.embedding_dim),
        ("model.hidden1", m.hidden1),
        ("model.hidden2", m.hidden2),
    ] {
        if !(1..=1024).contains(&value) {
            bad(key, format!("{value} is outside 1..=1024"));
        }
    }
    if !(m.value_weight >= 0.0 && m.value_weight.is_finite()) {
        bad(
            "model.value_weight",
            format!("{} must be a finite number >= 0", m.value_weight),
        );
    }
    problems
}
