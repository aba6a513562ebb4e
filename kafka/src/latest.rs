//! A compacted one-partition internal topic that holds the latest value of one key: the
//! model broadcast of a group (docs/scale-out.md, "The model broadcast").
//!
//! The writer publishes each new value under the same key; compaction (`cleanup.policy
//! = compact`) keeps the newest, so a reader that starts late reads little to reach it. A
//! broker that does not compact (tansu keeps every record) only costs a longer read:
//! values are small references, never the model itself.
//!
//! A reader reads the topic from its start and returns every value in order; the caller
//! keeps the newest it can use.

use std::time::Duration;

use rdkafka::Message;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use shopstream_config::KafkaConfig;

use crate::client::{
    KafkaSetupError, LoggingContext, assigned_reader_config, ensure_internal_topic,
};
use crate::sink::producer_config;

/// Why a latest-value topic could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum LatestError {
    /// The client or the topic could not be set up.
    #[error(transparent)]
    Setup(#[from] KafkaSetupError),
    /// The broker did not take a value.
    #[error("publishing to internal topic {topic}: {source}")]
    Publish {
        /// The topic.
        topic: String,
        /// The client's error.
        #[source]
        source: KafkaError,
    },
    /// The topic could not be read.
    #[error("reading internal topic {topic}: {source}")]
    Read {
        /// The topic.
        topic: String,
        /// The client's error.
        #[source]
        source: KafkaError,
    },
}

/// Creates `topic` with one partition and `cleanup.policy=compact` when it is missing.
async fn ensure_compacted_topic(kafka: &KafkaConfig, topic: &str) -> Result<(), LatestError> {
    ensure_internal_topic(kafka, topic, &[("cleanup.policy", "compact")]).await?;
    Ok(())
}

/// Publishes values of one key.
pub struct LatestWriter {
    producer: FutureProducer<LoggingContext>,
    topic: String,
    key: String,
    timeout: Duration,
}

impl LatestWriter {
    /// A writer of `key` on `topic` (created compacted when missing).
    pub async fn create(kafka: &KafkaConfig, topic: &str, key: &str) -> Result<Self, LatestError> {
        ensure_compacted_topic(kafka, topic).await?;
        let producer = producer_config(kafka)?
            .create_with_context(LoggingContext)
            .map_err(KafkaSetupError::Client)?;
        Ok(Self {
            producer,
            topic: topic.to_string(),
            key: key.to_string(),
            timeout: Duration::from_millis(kafka.produce_timeout_ms),
        })
    }

    /// Publishes `value` and returns once the broker has it: its offset.
    pub async fn publish(&self, value: &[u8]) -> Result<i64, LatestError> {
        let record = FutureRecord::to(&self.topic)
            .key(self.key.as_bytes())
            .payload(value)
            .partition(0);
        let delivered = self
            .producer
            .send(record, self.timeout)
            .await
            .map_err(|(source, _)| LatestError::Publish {
                topic: self.topic.clone(),
                source,
            })?;
        Ok(delivered.offset)
    }
}

/// Reads every value of a latest-value topic from its start, in order.
pub struct LatestReader {
    consumer: StreamConsumer<LoggingContext>,
    topic: String,
}

impl LatestReader {
    /// A reader of `topic` from its start (created compacted when missing).
    pub async fn open(kafka: &KafkaConfig, topic: &str) -> Result<Self, LatestError> {
        ensure_compacted_topic(kafka, topic).await?;
        // Assigned, never joined nor committed: every reader reads the whole topic.
        let config = assigned_reader_config(kafka, "latest")?;
        let consumer: StreamConsumer<LoggingContext> = config
            .create_with_context(LoggingContext)
            .map_err(KafkaSetupError::Client)?;
        let read = |source| LatestError::Read {
            topic: topic.to_string(),
            source,
        };
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(topic, 0, rdkafka::Offset::Beginning)
            .map_err(read)?;
        consumer.assign(&assignment).map_err(read)?;
        Ok(Self {
            consumer,
            topic: topic.to_string(),
        })
    }

    /// The next value (waits for it); records without a value are skipped.
    pub async fn next(&mut self) -> Result<Vec<u8>, LatestError> {
        loop {
            let message = self
                .consumer
                .recv()
                .await
                .map_err(|source| LatestError::Read {
                    topic: self.topic.clone(),
                    source,
                })?;
            if let Some(value) = message.payload() {
                return Ok(value.to_vec());
            }
        }
    }
}
