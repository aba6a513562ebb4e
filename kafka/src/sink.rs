//! Producing to Kafka with delivery tracking.
//!
//! [`Publisher::send`] enqueues without waiting for the broker; the delivery futures are
//! collected and [`Publisher::flush`] awaits them all. A message counts as published only
//! when the broker acknowledged it; a failed delivery is an error, never a silent loss.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::client::{KafkaSetupError, LoggingContext, client_config, set_default, set_managed};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use shopstream_config::KafkaConfig;
use shopstream_ingest::decode::Rejection;
use shopstream_ingest::record::RecordMeta;

/// Why publishing failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Producer set-up failed.
    #[error(transparent)]
    Setup(#[from] KafkaSetupError),
    /// The broker did not acknowledge a message (external).
    #[error(
        "delivery to topic {topic} failed: {source}; is the broker up and does the topic exist?"
    )]
    Delivery {
        /// Target topic.
        topic: String,
        /// librdkafka's error.
        source: KafkaError,
    },
    /// The local queue stayed full past the produce timeout.
    #[error("producer queue for topic {topic} stayed full: {source}")]
    Enqueue {
        /// Target topic.
        topic: String,
        /// librdkafka's error.
        source: KafkaError,
    },
}

/// Headers of a dead-letter record, beside the original key and bytes.
pub mod dead_letter_headers {
    /// Reason code, for example `malformed_json`.
    pub const REASON: &str = "shopstream.reason";
    /// Offending field, when known.
    pub const FIELD: &str = "shopstream.field";
    /// Human-readable explanation.
    pub const MESSAGE: &str = "shopstream.message";
    /// Topic the message was read from.
    pub const SOURCE_TOPIC: &str = "shopstream.source.topic";
    /// Partition it was read from.
    pub const SOURCE_PARTITION: &str = "shopstream.source.partition";
    /// Offset it was read at.
    pub const SOURCE_OFFSET: &str = "shopstream.source.offset";
}

/// A delivery acknowledgement, awaited together with the counter (`tag`) and topic it
/// belongs to.
struct TaggedDelivery {
    future: DeliveryFuture,
    tag: &'static str,
    topic: Arc<str>,
}

impl Future for TaggedDelivery {
    type Output = (&'static str, Arc<str>, Result<(), KafkaError>);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let outcome = match Pin::new(&mut this.future).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(Ok(_))) => Ok(()),
            Poll::Ready(Ok(Err((e, _)))) => Err(e),
            Poll::Ready(Err(_)) => Err(KafkaError::Canceled),
        };
        Poll::Ready((this.tag, Arc::clone(&this.topic), outcome))
    }
}

/// librdkafka settings of the producer. Every property is set through the managed-property
/// table (`shopstream_config::kafka_properties`): `acks`, `linger.ms` and
/// `message.max.bytes` take the user's value when `[kafka.properties]` has one.
pub fn producer_config(kafka: &KafkaConfig) -> Result<ClientConfig, KafkaSetupError> {
    let mut config = client_config(kafka)?;
    set_default(&mut config, kafka, "acks")?;
    set_default(&mut config, kafka, "linger.ms")?;
    // Dead letters carry the original bytes, which may exceed the input size limit (that
    // is why they were rejected), hence a default far above librdkafka's; the broker's
    // own limit still applies.
    set_default(&mut config, kafka, "message.max.bytes")?;
    // The publisher's own deadlines (queue full, flush) use the same number.
    set_managed(
        &mut config,
        kafka,
        "message.timeout.ms",
        &kafka.produce_timeout_ms.to_string(),
    )?;
    Ok(config)
}

/// An asynchronous producer that counts acknowledged messages per tag.
pub struct Publisher {
    producer: FutureProducer<LoggingContext>,
    in_flight: FuturesUnordered<TaggedDelivery>,
    delivered: BTreeMap<&'static str, u64>,
    /// Topic names shared by their in-flight deliveries (one allocation per topic).
    topics: HashMap<String, Arc<str>>,
    timeout: Duration,
}

impl Publisher {
    /// A producer for `kafka`.
    pub fn new(kafka: &KafkaConfig) -> Result<Self, PublishError> {
        let producer: FutureProducer<LoggingContext> = producer_config(kafka)?
            .create_with_context(LoggingContext)
            .map_err(KafkaSetupError::Client)?;
        Ok(Self {
            producer,
            in_flight: FuturesUnordered::new(),
            delivered: BTreeMap::new(),
            topics: HashMap::new(),
            timeout: Duration::from_millis(kafka.produce_timeout_ms),
        })
    }

    /// Enqueues one message; `tag` names the counter it is delivered under.
    pub async fn send(
        &mut self,
        tag: &'static str,
        topic: &str,
        key: &[u8],
        payload: &[u8],
        timestamp_ms: Option<i64>,
        headers: Option<OwnedHeaders>,
    ) -> Result<(), PublishError> {
        let started = tokio::time::Instant::now();
        let mut headers = headers;
        loop {
            let mut record = FutureRecord::to(topic).key(key).payload(payload);
            if let Some(ts) = timestamp_ms {
                record = record.timestamp(ts);
            }
            if let Some(h) = headers.take() {
                record = record.headers(h);
            }
            match self.producer.send_result(record) {
                Ok(future) => {
                    let topic = self.topic_name(topic);
                    self.in_flight.push(TaggedDelivery { future, tag, topic });
                    if self.in_flight.len() >= 50_000 {
                        self.settle_some().await?;
                    }
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), record))
                    if started.elapsed() < self.timeout =>
                {
                    // Backpressure: wait for acknowledgements, then retry (the headers come
                    // back with the refused record).
                    headers = record.headers;
                    if self.in_flight.is_empty() {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    } else {
                        self.settle_some().await?;
                    }
                }
                Err((source, _)) => {
                    return Err(PublishError::Enqueue {
                        topic: topic.to_string(),
                        source,
                    });
                }
            }
        }
    }

    fn topic_name(&mut self, topic: &str) -> Arc<str> {
        if let Some(name) = self.topics.get(topic) {
            return Arc::clone(name);
        }
        let name: Arc<str> = Arc::from(topic);
        self.topics.insert(topic.to_string(), Arc::clone(&name));
        name
    }

    async fn settle_some(&mut self) -> Result<(), PublishError> {
        if let Some((tag, topic, outcome)) = self.in_flight.next().await {
            self.record(tag, topic, outcome)?;
        }
        while let Some(Some((tag, topic, outcome))) =
            futures::FutureExt::now_or_never(self.in_flight.next())
        {
            self.record(tag, topic, outcome)?;
        }
        Ok(())
    }

    fn record(
        &mut self,
        tag: &'static str,
        topic: Arc<str>,
        outcome: Result<(), KafkaError>,
    ) -> Result<(), PublishError> {
        match outcome {
            Ok(()) => {
                *self.delivered.entry(tag).or_default() += 1;
                Ok(())
            }
            Err(source) => Err(PublishError::Delivery {
                topic: topic.to_string(),
                source,
            }),
        }
    }

    /// Waits until every enqueued message is acknowledged (or one fails).
    pub async fn flush(&mut self) -> Result<(), PublishError> {
        while let Some((tag, topic, outcome)) = self.in_flight.next().await {
            self.record(tag, topic, outcome)?;
        }
        let _ = self.producer.flush(self.timeout);
        Ok(())
    }

    /// Acknowledged messages per tag so far.
    pub fn delivered(&self) -> &BTreeMap<&'static str, u64> {
        &self.delivered
    }

    /// Messages not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}

/// Headers of a dead-letter record for a message read at `meta` from `topic_name`.
pub fn dead_letter_headers(
    topic_name: &str,
    meta: &RecordMeta,
    rejection: &Rejection,
) -> OwnedHeaders {
    use dead_letter_headers as h;
    let partition = meta.partition.to_string();
    let offset = meta.offset.to_string();
    let mut headers = OwnedHeaders::new()
        .insert(Header {
            key: h::REASON,
            value: Some(rejection.reason.as_str()),
        })
        .insert(Header {
            key: h::MESSAGE,
            value: Some(rejection.message.as_str()),
        })
        .insert(Header {
            key: h::SOURCE_TOPIC,
            value: Some(topic_name),
        })
        .insert(Header {
            key: h::SOURCE_PARTITION,
            value: Some(partition.as_str()),
        })
        .insert(Header {
            key: h::SOURCE_OFFSET,
            value: Some(offset.as_str()),
        });
    if let Some(field) = &rejection.field {
        headers = headers.insert(Header {
            key: h::FIELD,
            value: Some(field.as_str()),
        });
    }
    headers
}

#[cfg(test)]
mod property_tests {
    //! Every Kafka client configuration shopstream builds against the managed-property
    //! table (`shopstream_config::kafka_properties`): the clients set exactly the table's
    //! keys, honoured keys keep the user's value, and refused keys are never replaced.

    #![allow(clippy::unwrap_used)]

    use std::collections::{BTreeMap, BTreeSet};

    use crate::client::{KafkaSetupError, client_config};
    use crate::seek::seek_config;
    use crate::source::consumer_config;
    use rdkafka::ClientConfig;
    use shopstream_config::{Config, KafkaConfig, MANAGED_PROPERTIES, PropertyPolicy};

    use super::producer_config;

    type Built = Result<ClientConfig, KafkaSetupError>;

    /// Every client configuration, by name.
    fn build_all(kafka: &KafkaConfig) -> Vec<(&'static str, Built)> {
        vec![
            ("admin and metadata", client_config(kafka)),
            (
                "bounded and inventory consumer",
                consumer_config(kafka, true),
            ),
            ("live group consumer", consumer_config(kafka, false)),
            ("seek consumer", seek_config(kafka)),
            ("producer", producer_config(kafka)),
        ]
    }

    fn kafka_with(properties: &[(&str, &str)]) -> KafkaConfig {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            properties: properties
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..KafkaConfig::default()
        }
    }

    fn table_keys() -> BTreeSet<&'static str> {
        MANAGED_PROPERTIES.iter().map(|p| p.key).collect()
    }

    #[test]
    fn the_clients_set_exactly_the_keys_of_the_table() {
        let mut set = BTreeSet::new();
        for (client, built) in build_all(&kafka_with(&[])) {
            let built = built.unwrap();
            for key in built.config_map().keys() {
                assert!(
                    table_keys().contains(key),
                    "the {client} sets `{key}`, which the managed-property table does not list"
                );
                set.insert(key.to_string());
            }
        }
        let listed: BTreeSet<String> = table_keys().iter().map(|k| k.to_string()).collect();
        assert_eq!(set, listed, "table entries no client sets");
    }

    #[test]
    fn honoured_keys_keep_the_user_value_from_the_file_and_the_environment() {
        let chosen: Vec<(&str, &str)> = MANAGED_PROPERTIES
            .iter()
            .filter_map(|p| match p.policy {
                PropertyPolicy::Default { example, .. } => Some((p.key, example)),
                PropertyPolicy::Rejected { .. } => None,
            })
            .collect();
        assert_eq!(chosen.len(), 5, "{chosen:?}");
        // The same choices from the environment, through validation.
        let mut env: Vec<(String, String)> = chosen
            .iter()
            .map(|(k, v)| {
                let name = k.replace('.', "_").to_ascii_uppercase();
                (
                    format!("SHOPSTREAM__KAFKA__PROPERTIES__{name}"),
                    v.to_string(),
                )
            })
            .collect();
        env.push(("SHOPSTREAM__KAFKA__BROKERS".into(), "127.0.0.1:9092".into()));
        let from_env = Config::load_with_env(None, env).unwrap().kafka;
        assert_eq!(from_env, kafka_with(&chosen));
        for kafka in [kafka_with(&chosen), from_env] {
            // Pass-through reaches every client; the ones that set a default must not
            // replace it.
            for (client, built) in build_all(&kafka) {
                let built = built.unwrap();
                for (key, value) in &chosen {
                    assert_eq!(built.get(key), Some(*value), "{client}: {key}");
                }
            }
        }
        // Under an alias: the user's name is kept and shopstream's is not added beside it
        // (librdkafka would apply the two in hash-map order).
        let aliased = kafka_with(&[
            ("queue.buffering.max.ms", "20"),
            ("request.required.acks", "all"),
        ]);
        let producer = producer_config(&aliased).unwrap();
        assert_eq!(producer.get("queue.buffering.max.ms"), Some("20"));
        assert_eq!(producer.get("request.required.acks"), Some("all"));
        assert_eq!(producer.get("linger.ms"), None);
        assert_eq!(producer.get("acks"), None);
    }

    #[test]
    fn every_consumer_bounds_the_fetch_wait_and_the_producer_is_not_given_it() {
        // One value for every consumer, the operator's to change (see docs/operations.md).
        for (client, built) in build_all(&kafka_with(&[])) {
            let expected = match client {
                "admin and metadata" | "producer" => None,
                _ => Some("25"),
            };
            assert_eq!(
                built.unwrap().get("fetch.wait.max.ms"),
                expected,
                "{client}"
            );
        }
    }

    #[test]
    fn refused_keys_are_never_replaced_even_without_validation() {
        for property in MANAGED_PROPERTIES {
            if !matches!(property.policy, PropertyPolicy::Rejected { .. }) {
                continue;
            }
            for name in property.names() {
                let refused = build_all(&kafka_with(&[(name, "user-value")]));
                let mut failed = 0;
                for (client, built) in refused {
                    match built {
                        Err(KafkaSetupError::ManagedProperty { name: named, .. }) => {
                            assert_eq!(named, name);
                            failed += 1;
                        }
                        Err(other) => panic!("{client} with {name}: {other}"),
                        Ok(config) => {
                            let others: BTreeMap<&str, &str> = property
                                .names()
                                .filter_map(|n| config.get(n).map(|v| (n, v)))
                                .collect();
                            assert_eq!(
                                others,
                                BTreeMap::from([(name, "user-value")]),
                                "the {client} replaced {name}"
                            );
                        }
                    }
                }
                assert!(failed > 0, "no client refuses {name}");
            }
        }
    }
}
