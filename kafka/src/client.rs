//! Kafka client set-up shared by every stage: client properties from the configuration,
//! reachability checks with a clear error, and topic creation.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::types::RDKafkaErrorCode;
use shopstream_config::{
    KafkaConfig, ManagedProperty, PropertyPolicy, TopicsConfig, managed_property,
};

use shopstream_ingest::event::InputTopic;

/// Why Kafka could not be set up. `NoBrokers` is a user error, `Unreachable` and
/// `CreateTopic` are external (the cluster), `Client` is usually a bad pass-through property.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    /// `kafka.brokers` is empty.
    #[error(
        "no Kafka brokers configured: set kafka.brokers in the config file or SHOPSTREAM__KAFKA__BROKERS \
         (for a try-out without a cluster use `shopstream demo`, which embeds one)"
    )]
    NoBrokers,
    /// The cluster did not answer a metadata request in time.
    #[error(
        "cannot reach Kafka at {brokers} within {timeout_ms} ms ({source}); check kafka.brokers, \
         that the broker is running, and the security properties"
    )]
    Unreachable {
        /// The configured bootstrap servers.
        brokers: String,
        /// How long we waited.
        timeout_ms: u64,
        /// librdkafka's error.
        source: KafkaError,
    },
    /// librdkafka refused the client configuration.
    #[error("cannot create a Kafka client: {0}; check the kafka.properties pass-through values")]
    Client(#[source] KafkaError),
    /// A topic is missing and could not be created.
    #[error("topic {topic} is missing on {brokers} and could not be created: {message}")]
    CreateTopic {
        /// The topic.
        topic: String,
        /// The configured bootstrap servers.
        brokers: String,
        /// What the broker said.
        message: String,
    },
    /// A topic is missing and `kafka.create_topics` is false.
    #[error(
        "topic {topic} does not exist on {brokers}; create it, or set kafka.create_topics = true"
    )]
    MissingTopic {
        /// The topic.
        topic: String,
        /// The configured bootstrap servers.
        brokers: String,
    },
    /// `[kafka.properties]` sets a property shopstream must set itself. Validation refuses
    /// such a configuration, so this is reached only when it was bypassed.
    #[error(
        "kafka.properties sets `{name}`, which shopstream sets itself: {reason}. Instead: {instead}"
    )]
    ManagedProperty {
        /// The name the user set (the key or an alias).
        name: String,
        /// Why it cannot be honoured.
        reason: &'static str,
        /// What to set instead.
        instead: &'static str,
    },
    /// Code set a property that the table in `shopstream_config::kafka_properties` does not
    /// list, or set it through the wrong helper (internal).
    #[error(
        "internal error: librdkafka property `{0}` is set without a matching entry in the managed-property table"
    )]
    UnlistedProperty(String),
    /// A blocking metadata task panicked or was cancelled (internal).
    #[error("internal error while talking to Kafka: {0}")]
    Internal(String),
}

/// Sends librdkafka's log lines and client errors to `tracing` (librdkafka otherwise logs
/// through the `log` crate, which nothing here listens to, so a broker outage would pass
/// in silence). librdkafka retries connections itself, with `reconnect.backoff.ms`
/// growing to `reconnect.backoff.max.ms`; these lines say that it is doing so.
pub fn log_client_message(level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
    use rdkafka::config::RDKafkaLogLevel as L;
    match level {
        L::Emerg | L::Alert | L::Critical | L::Error => {
            tracing::error!(target: "shopstream::kafka", facility, "{message}");
        }
        L::Warning => tracing::warn!(target: "shopstream::kafka", facility, "{message}"),
        L::Notice | L::Info => tracing::info!(target: "shopstream::kafka", facility, "{message}"),
        L::Debug => tracing::debug!(target: "shopstream::kafka", facility, "{message}"),
    }
}

/// Reports a client-level error (broker down, authentication, ...); the client keeps
/// retrying, so these are warnings unless they are fatal.
pub fn log_client_error(error: &KafkaError, reason: &str) {
    match error {
        // The end of a partition is news for the bounded source, not a problem.
        KafkaError::Global(RDKafkaErrorCode::PartitionEOF) => {
            tracing::trace!(target: "shopstream::kafka", "{reason}");
        }
        KafkaError::Global(RDKafkaErrorCode::AllBrokersDown) => tracing::warn!(
            target: "shopstream::kafka",
            "all Kafka brokers are unreachable ({reason}); retrying with backoff, nothing is lost meanwhile"
        ),
        KafkaError::Global(RDKafkaErrorCode::BrokerTransportFailure) => tracing::warn!(
            target: "shopstream::kafka",
            "lost the connection to a Kafka broker ({reason}); reconnecting with backoff"
        ),
        _ => tracing::error!(target: "shopstream::kafka", %error, "Kafka client error: {reason}"),
    }
}

/// A client context that only routes librdkafka's logs and errors to `tracing`.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoggingContext;

impl rdkafka::ClientContext for LoggingContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        log_client_message(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        log_client_error(&error, reason);
    }
}

/// For consumers that are assigned their partitions (no group rebalances to handle).
impl rdkafka::consumer::ConsumerContext for LoggingContext {}

/// The configured name of an input topic.
pub fn input_topic_name(topics: &TopicsConfig, topic: InputTopic) -> &str {
    match topic {
        InputTopic::Clicks => &topics.clicks,
        InputTopic::Orders => &topics.orders,
        InputTopic::Inventory => &topics.inventory,
    }
}

/// librdkafka settings for `kafka`: bootstrap servers plus the pass-through properties.
pub fn client_config(kafka: &KafkaConfig) -> Result<ClientConfig, KafkaSetupError> {
    if kafka.brokers.trim().is_empty() {
        return Err(KafkaSetupError::NoBrokers);
    }
    let mut config = ClientConfig::new();
    for (key, value) in &kafka.properties {
        config.set(key, value);
    }
    set_managed(
        &mut config,
        kafka,
        "bootstrap.servers",
        kafka.brokers.trim(),
    )?;
    Ok(config)
}

/// Sets `key`, a [`PropertyPolicy::Default`] property of the managed-property table, to
/// shopstream's value from the table, unless `[kafka.properties]` sets it (under its name
/// or an alias): then the user's value, already in `config` from [`client_config`], stands.
pub fn set_default(
    config: &mut ClientConfig,
    kafka: &KafkaConfig,
    key: &str,
) -> Result<(), KafkaSetupError> {
    let (property, value) = listed_default(key)?;
    if kafka.user_sets(property).is_none() {
        config.set(key, value);
    }
    Ok(())
}

/// The value the clients use for `key`, a [`PropertyPolicy::Default`] property of the
/// managed-property table: the user's (under any of its names), else shopstream's default.
pub fn default_property_value(kafka: &KafkaConfig, key: &str) -> Result<String, KafkaSetupError> {
    let (property, value) = listed_default(key)?;
    Ok(kafka
        .user_sets(property)
        .and_then(|name| kafka.properties.get(name))
        .map_or(value, String::as_str)
        .to_string())
}

/// The table entry of `key`, a [`PropertyPolicy::Default`] property, and shopstream's
/// value for it.
fn listed_default(key: &str) -> Result<(&'static ManagedProperty, &'static str), KafkaSetupError> {
    let property = listed(key)?;
    match property.policy {
        PropertyPolicy::Default { value, .. } => Ok((property, value)),
        _ => Err(KafkaSetupError::UnlistedProperty(key.to_string())),
    }
}

/// Sets `key`, a [`PropertyPolicy::Rejected`] property of the managed-property table, to
/// `value`. Validation refuses these in `[kafka.properties]`; should one be there anyway
/// (a configuration built without validation) this fails rather than replace it.
pub fn set_managed(
    config: &mut ClientConfig,
    kafka: &KafkaConfig,
    key: &str,
    value: &str,
) -> Result<(), KafkaSetupError> {
    let property = listed(key)?;
    let PropertyPolicy::Rejected { reason, instead } = property.policy else {
        return Err(KafkaSetupError::UnlistedProperty(key.to_string()));
    };
    if let Some(name) = kafka.user_sets(property) {
        return Err(KafkaSetupError::ManagedProperty {
            name: name.to_string(),
            reason,
            instead,
        });
    }
    config.set(key, value);
    Ok(())
}

/// The table entry of `key`, which must be the entry's own name (not an alias), so the
/// built configurations use one spelling per setting.
fn listed(key: &str) -> Result<&'static ManagedProperty, KafkaSetupError> {
    managed_property(key)
        .filter(|p| p.key == key)
        .ok_or_else(|| KafkaSetupError::UnlistedProperty(key.to_string()))
}

/// Partition counts of `topics` as the cluster reports them; missing topics are absent.
pub async fn partition_counts(
    kafka: &KafkaConfig,
    topics: &[String],
) -> Result<BTreeMap<String, i32>, KafkaSetupError> {
    let config = client_config(kafka)?;
    let brokers = kafka.brokers.clone();
    let timeout_ms = kafka.connect_timeout_ms;
    let topics = topics.to_vec();
    tokio::task::spawn_blocking(move || {
        let producer: BaseProducer = config.create().map_err(KafkaSetupError::Client)?;
        let metadata = producer
            .client()
            .fetch_metadata(None, Duration::from_millis(timeout_ms))
            .map_err(|source| KafkaSetupError::Unreachable {
                brokers: brokers.clone(),
                timeout_ms,
                source,
            })?;
        let mut counts = BTreeMap::new();
        for topic in metadata.topics() {
            let exists = topic.error().is_none() && !topic.partitions().is_empty();
            if exists && topics.iter().any(|t| t == topic.name()) {
                counts.insert(topic.name().to_string(), topic.partitions().len() as i32);
            }
        }
        Ok(counts)
    })
    .await
    .map_err(|e| KafkaSetupError::Internal(e.to_string()))?
}

/// Client settings of a consumer that is assigned its partitions and never joins nor
/// commits: a group id of its own (`<group_id>-<role>`, so it never touches the job's
/// group) and no automatic commits. Set through the managed-property table.
pub fn assigned_reader_config(
    kafka: &KafkaConfig,
    role: &str,
) -> Result<ClientConfig, KafkaSetupError> {
    let mut config = client_config(kafka)?;
    set_managed(
        &mut config,
        kafka,
        "group.id",
        &format!("{}-{role}", kafka.group_id),
    )?;
    set_managed(&mut config, kafka, "enable.auto.commit", "false")?;
    // Internal logs are read as they grow: see `consumer_config`.
    set_default(&mut config, kafka, "fetch.wait.max.ms")?;
    Ok(config)
}

/// Makes sure every topic in `topics` exists, creating missing ones with
/// `kafka.topic_partitions` partitions when `kafka.create_topics` is set. Returns the
/// partition count of each topic.
pub async fn ensure_topics(
    kafka: &KafkaConfig,
    topics: &[String],
) -> Result<BTreeMap<String, i32>, KafkaSetupError> {
    ensure_topics_with(kafka, topics, kafka.topic_partitions, &[]).await
}

/// Makes sure the internal topic `topic` exists, creating it with one partition (its
/// order is the log's) and the topic settings `configs` when missing and
/// `kafka.create_topics` is set.
pub async fn ensure_internal_topic(
    kafka: &KafkaConfig,
    topic: &str,
    configs: &[(&str, &str)],
) -> Result<(), KafkaSetupError> {
    ensure_topics_with(kafka, &[topic.to_string()], 1, configs).await?;
    Ok(())
}

/// [`ensure_topics`] with the partition count and topic settings of missing topics.
async fn ensure_topics_with(
    kafka: &KafkaConfig,
    topics: &[String],
    partitions: i32,
    configs: &[(&str, &str)],
) -> Result<BTreeMap<String, i32>, KafkaSetupError> {
    let existing = partition_counts(kafka, topics).await?;
    let missing: Vec<&String> = topics
        .iter()
        .filter(|t| !existing.contains_key(*t))
        .collect();
    if missing.is_empty() {
        return Ok(existing);
    }
    if !kafka.create_topics {
        return Err(KafkaSetupError::MissingTopic {
            topic: missing[0].clone(),
            brokers: kafka.brokers.clone(),
        });
    }
    let admin: AdminClient<DefaultClientContext> = client_config(kafka)?
        .create()
        .map_err(KafkaSetupError::Client)?;
    let new_topics: Vec<NewTopic<'_>> = missing
        .iter()
        .map(|t| {
            configs.iter().fold(
                NewTopic::new(t.as_str(), partitions, TopicReplication::Fixed(1)),
                |topic, (key, value)| topic.set(key, value),
            )
        })
        .collect();
    let options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_millis(kafka.connect_timeout_ms)));
    let results = admin
        .create_topics(new_topics.iter(), &options)
        .await
        .map_err(|e| KafkaSetupError::CreateTopic {
            topic: missing
                .iter()
                .map(|t| t.as_str())
                .collect::<Vec<_>>()
                .join(","),
            brokers: kafka.brokers.clone(),
            message: e.to_string(),
        })?;
    for result in results {
        if let Err((topic, code)) = result
            && code != RDKafkaErrorCode::TopicAlreadyExists
        {
            return Err(KafkaSetupError::CreateTopic {
                topic,
                brokers: kafka.brokers.clone(),
                message: code.to_string(),
            });
        }
    }
    // Metadata propagates asynchronously; wait until every topic is visible.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(kafka.connect_timeout_ms);
    loop {
        let counts = partition_counts(kafka, topics).await?;
        if let Some(topic) = topics.iter().find(|t| !counts.contains_key(*t)) {
            if tokio::time::Instant::now() >= deadline {
                return Err(KafkaSetupError::CreateTopic {
                    topic: topic.clone(),
                    brokers: kafka.brokers.clone(),
                    message: "created, but not visible in metadata in time".to_string(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        } else {
            return Ok(counts);
        }
    }
}
