//! Producing to Kafka with delivery tracking.
//!
//! [`Publisher::send`] enqueues without waiting for the broker; librdkafka reports each
//! message's delivery to the producer's context on its polling thread, which counts it
//! under its tag. [`Publisher::flush`] waits until every message sent is reported. A
//! message counts as published only when the broker acknowledged it; a failed delivery is
//! an error (returned by the next `send` or `flush`), never a silent loss.
//!
//! The tag travels with the message as librdkafka's opaque (an index, not an allocation),
//! so tracking a message costs no future, channel or allocation of its own.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::client::{
    KafkaSetupError, client_config, log_client_error, log_client_message, set_default, set_managed,
};
use rdkafka::ClientConfig;
use rdkafka::config::FromClientConfigAndContext;
use rdkafka::error::KafkaError;
use rdkafka::message::{DeliveryResult, Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use shopstream_config::KafkaConfig;
use shopstream_ingest::decode::Rejection;
use shopstream_ingest::record::RecordMeta;
use tokio::sync::Notify;

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

/// What the delivery reports have said so far, shared between the publisher and the
/// producer's polling thread.
#[derive(Default)]
struct Deliveries {
    /// Messages enqueued and not yet reported.
    in_flight: AtomicUsize,
    /// Acknowledged messages, by tag index.
    delivered: Mutex<Vec<u64>>,
    /// Set with `failure`: the next `send` or `flush` returns it.
    failed: AtomicBool,
    /// The first delivery that failed: its topic and librdkafka's error.
    failure: Mutex<Option<(String, KafkaError)>>,
    /// Woken when `in_flight` reaches zero or a delivery fails.
    settled: Notify,
}

/// The producer's context: logs like every client, and records each delivery report.
struct DeliveryContext {
    deliveries: Arc<Deliveries>,
}

impl rdkafka::ClientContext for DeliveryContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        log_client_message(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        log_client_error(&error, reason);
    }
}

impl ProducerContext for DeliveryContext {
    /// The index of the message's tag in the publisher's tag list.
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, tag: usize) {
        let d = &self.deliveries;
        match result {
            Ok(_) => {
                let mut delivered = d.delivered.lock().unwrap_or_else(PoisonError::into_inner);
                if delivered.len() <= tag {
                    delivered.resize(tag + 1, 0);
                }
                delivered[tag] += 1;
            }
            Err((error, message)) => {
                let mut failure = d.failure.lock().unwrap_or_else(PoisonError::into_inner);
                if failure.is_none() {
                    *failure = Some((message.topic().to_string(), error.clone()));
                }
                d.failed.store(true, Ordering::Release);
            }
        }
        // After the count and the failure are recorded: whoever sees zero in flight sees
        // them too.
        let before = d.in_flight.fetch_sub(1, Ordering::AcqRel);
        if before == 1 || result.is_err() {
            d.settled.notify_waiters();
        }
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
    producer: ThreadedProducer<DeliveryContext>,
    deliveries: Arc<Deliveries>,
    /// Tags seen so far; a message carries its tag's index.
    tags: Vec<&'static str>,
    timeout: Duration,
}

impl Publisher {
    /// A producer for `kafka`.
    pub fn new(kafka: &KafkaConfig) -> Result<Self, PublishError> {
        let deliveries = Arc::new(Deliveries::default());
        let context = DeliveryContext {
            deliveries: Arc::clone(&deliveries),
        };
        let producer = ThreadedProducer::from_config_and_context(&producer_config(kafka)?, context)
            .map_err(KafkaSetupError::Client)?;
        Ok(Self {
            producer,
            deliveries,
            tags: Vec::new(),
            timeout: Duration::from_millis(kafka.produce_timeout_ms),
        })
    }

    /// Enqueues one message; `tag` names the counter it is delivered under. Returns the
    /// failure of an earlier delivery, if one failed.
    pub async fn send(
        &mut self,
        tag: &'static str,
        topic: &str,
        key: &[u8],
        payload: &[u8],
        timestamp_ms: Option<i64>,
        headers: Option<OwnedHeaders>,
    ) -> Result<(), PublishError> {
        self.check_failed()?;
        let tag = self.tag_index(tag);
        let started = tokio::time::Instant::now();
        let mut headers = headers;
        loop {
            let mut record = BaseRecord::with_opaque_to(topic, tag)
                .key(key)
                .payload(payload);
            if let Some(ts) = timestamp_ms {
                record = record.timestamp(ts);
            }
            if let Some(h) = headers.take() {
                record = record.headers(h);
            }
            // Counted before librdkafka can report it, so the count never goes below zero.
            self.deliveries.in_flight.fetch_add(1, Ordering::AcqRel);
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((error, record)) => {
                    self.deliveries.in_flight.fetch_sub(1, Ordering::AcqRel);
                    match error {
                        KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)
                            if started.elapsed() < self.timeout =>
                        {
                            // Backpressure: let deliveries drain, then retry (the headers
                            // come back with the refused record).
                            headers = record.headers;
                            tokio::time::sleep(Duration::from_millis(1)).await;
                            self.check_failed()?;
                        }
                        source => {
                            return Err(PublishError::Enqueue {
                                topic: topic.to_string(),
                                source,
                            });
                        }
                    }
                }
            }
        }
    }

    fn tag_index(&mut self, tag: &'static str) -> usize {
        match self.tags.iter().position(|t| *t == tag) {
            Some(index) => index,
            None => {
                self.tags.push(tag);
                self.tags.len() - 1
            }
        }
    }

    /// The first failed delivery, if any (taken: it is returned once).
    fn check_failed(&self) -> Result<(), PublishError> {
        // Cleared before the failure is taken: one recorded after this sets it again.
        if !self.deliveries.failed.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let failure = self
            .deliveries
            .failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        match failure {
            Some((topic, source)) => Err(PublishError::Delivery { topic, source }),
            None => Ok(()),
        }
    }

    /// Waits until every enqueued message is acknowledged (or one fails).
    pub async fn flush(&mut self) -> Result<(), PublishError> {
        loop {
            let mut settled = std::pin::pin!(self.deliveries.settled.notified());
            // Registered before the checks: a report between them still wakes this.
            settled.as_mut().enable();
            self.check_failed()?;
            if self.deliveries.in_flight.load(Ordering::Acquire) == 0 {
                return Ok(());
            }
            // librdkafka reports every message within `message.timeout.ms` (the produce
            // timeout); the bound only guards against a wake-up lost to a bug.
            let _ = tokio::time::timeout(Duration::from_millis(100), settled).await;
        }
    }

    /// Acknowledged messages per tag so far.
    pub fn delivered(&self) -> BTreeMap<&'static str, u64> {
        let delivered = self
            .deliveries
            .delivered
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.tags
            .iter()
            .zip(delivered.iter())
            .filter(|(_, n)| **n > 0)
            .map(|(tag, n)| (*tag, *n))
            .collect()
    }

    /// Messages not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.deliveries.in_flight.load(Ordering::Acquire)
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
mod delivery_tests {
    //! Delivery failures reach the caller: nothing listens at the broker address, so every
    //! message times out after the produce timeout (no broker needed).

    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use shopstream_config::KafkaConfig;

    use super::{PublishError, Publisher};

    fn unreachable() -> KafkaConfig {
        KafkaConfig {
            // The discard port: refused on a machine without that service.
            brokers: "127.0.0.1:9".into(),
            produce_timeout_ms: 300,
            ..KafkaConfig::default()
        }
    }

    #[tokio::test]
    async fn a_failed_delivery_is_an_error_of_flush_naming_its_topic() {
        let mut publisher = Publisher::new(&unreachable()).unwrap();
        for _ in 0..3 {
            publisher
                .send("t", "nowhere", b"k", b"v", None, None)
                .await
                .unwrap();
        }
        let error = publisher.flush().await.unwrap_err();
        assert!(
            matches!(&error, PublishError::Delivery { topic, .. } if topic == "nowhere"),
            "{error}"
        );
        // flush returns at the first failure; the others are reported too, and a flush
        // returns Ok only once nothing is left in flight (at most one failure a call).
        let mut failures = 1;
        while publisher.flush().await.is_err() {
            failures += 1;
            assert!(failures <= 3, "more failures than messages");
        }
        assert_eq!(publisher.in_flight(), 0);
        assert!(publisher.delivered().is_empty());
    }

    #[tokio::test]
    async fn a_failed_delivery_is_returned_by_the_next_send() {
        let mut publisher = Publisher::new(&unreachable()).unwrap();
        publisher
            .send("t", "nowhere", b"k", b"v", None, None)
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while publisher.in_flight() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let error = publisher
            .send("t", "elsewhere", b"k", b"v", None, None)
            .await
            .unwrap_err();
        assert!(
            matches!(&error, PublishError::Delivery { topic, .. } if topic == "nowhere"),
            "{error}"
        );
    }
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

#[cfg(test)]
mod drop_tests {
    /// Guards the `[patch]` of rdkafka (vendor/rdkafka/PATCHED.md): with crates.io's
    /// rdkafka (100 ms), this does not build, and every bounded run's end waits up to
    /// 0.5 s for its consumer's close and its producers' polling threads.
    #[test]
    fn rdkafka_is_the_build_whose_drops_wait_10_ms_at_a_time() {
        assert_eq!(
            rdkafka::DROP_POLL_INTERVAL,
            std::time::Duration::from_millis(10)
        );
    }

    /// Guards the other half of the patch: with crates.io's rdkafka (which truncates),
    /// this does not build, and each producer's polling thread spins through the last
    /// sub-millisecond of every poll, about 5 % of a core each at 10 ms polls.
    #[test]
    fn rdkafka_rounds_poll_timeouts_up_to_whole_milliseconds() {
        use rdkafka::util::millis_rounded_up;
        use std::time::Duration;
        assert_eq!(
            millis_rounded_up(Duration::ZERO),
            0,
            "zero stays a non-blocking poll"
        );
        assert_eq!(millis_rounded_up(Duration::from_nanos(1)), 1);
        assert_eq!(millis_rounded_up(Duration::from_micros(700)), 1);
        assert_eq!(millis_rounded_up(Duration::from_millis(10)), 10);
        assert_eq!(millis_rounded_up(Duration::from_micros(9_001)), 10);
        assert_eq!(millis_rounded_up(Duration::MAX), i32::MAX);
    }
}
