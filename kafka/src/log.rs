//! An internal topic used as an ordered log of messages of any size: the topic transport
//! of the scale-out protocol (docs/scale-out.md), where shards send progress and parts
//! to the coordinator and the coordinator sends the closes to every shard.
//!
//! Each log is the only partition of its topic, so its order is the order the broker
//! appended. A message larger than `fragment_bytes` (a window's part of a busy partition
//! can be) goes as consecutive fragments; several writers append to one log at once, so
//! fragments of different messages interleave and the reader puts each message together
//! by its key (`writer/message`) and the fragment header (`index/count`).
//!
//! A reader that stops and resumes must not lose a message whose first fragments it read:
//! [`LogReader::resume_offset`] is the offset to reopen at, the first fragment of the
//! oldest message still incomplete (or the next offset when none is);
//! [`LogReader::position`] is the exact position, incomplete fragments included, for a
//! checkpoint to reopen with [`LogReader::open_at`].
//!
//! Tansu and Kafka both take the records; nothing here needs transactions or idempotent
//! producers (one request in flight keeps a writer's order).

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::Message;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use shopstream_config::KafkaConfig;

use crate::client::{
    KafkaSetupError, LoggingContext, assigned_reader_config, ensure_internal_topic,
};
use crate::sink::producer_config;

/// The header naming a record's fragment: `index/count`, from `0/1` for a whole message.
pub const FRAGMENT_HEADER: &str = "shopstream-fragment";

/// Fragment size that fits the broker's default message limit (1 MB) with room for the
/// key, the header and the record overhead.
pub const DEFAULT_FRAGMENT_BYTES: usize = 900_000;

/// Why a log could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The client or the topic could not be set up.
    #[error(transparent)]
    Setup(#[from] KafkaSetupError),
    /// The broker did not take a fragment.
    #[error("appending fragment {index} of {count} to internal topic {topic}: {source}")]
    Append {
        /// The log's topic.
        topic: String,
        /// The fragment.
        index: usize,
        /// Fragments of the message.
        count: usize,
        /// What librdkafka said.
        source: KafkaError,
    },
    /// The log could not be read.
    #[error("reading internal topic {topic}: {source}")]
    Read {
        /// The log's topic.
        topic: String,
        /// What librdkafka said.
        source: KafkaError,
    },
    /// A record that no writer of this log would write (another program shares the topic).
    #[error(
        "internal topic {topic} offset {offset} is not a shopstream log record ({what}); \
         the topic must be used by shopstream alone"
    )]
    Foreign {
        /// The log's topic.
        topic: String,
        /// The record's offset.
        offset: i64,
        /// What is wrong with it.
        what: String,
    },
}

/// Where a log is and who writes to it.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// The log's topic (created with one partition when missing and `kafka.create_topics`
    /// is set).
    pub topic: String,
    /// This writer's name, unique to this process's lifetime (an instance that restarts
    /// takes a new one, so that fragments of a message it never finished are never taken
    /// for fragments of a new one).
    pub writer: String,
    /// Largest payload of one record; bigger messages are split.
    pub fragment_bytes: usize,
}

/// Appends messages to a log.
pub struct LogWriter {
    producer: FutureProducer<LoggingContext>,
    options: LogOptions,
    next_message: u64,
    timeout: Duration,
}

/// Settings of a log topic the job creates: it keeps every message. A reader that takes
/// a run over reads the log from its start (the closes decided, every answer), so a log
/// whose head was deleted would be taken over wrongly.
const LOG_TOPIC_CONFIGS: &[(&str, &str)] = &[("retention.ms", "-1"), ("retention.bytes", "-1")];

impl LogWriter {
    /// A writer of `options.topic` (created with one partition when missing).
    pub async fn create(kafka: &KafkaConfig, options: LogOptions) -> Result<Self, LogError> {
        ensure_internal_topic(kafka, &options.topic, LOG_TOPIC_CONFIGS).await?;
        let mut config = producer_config(kafka)?;
        // One request at a time keeps the log in the order messages were appended, also
        // when a request is retried.
        if !kafka
            .properties
            .contains_key("max.in.flight.requests.per.connection")
        {
            config.set("max.in.flight.requests.per.connection", "1");
        }
        let producer = config
            .create_with_context(LoggingContext)
            .map_err(KafkaSetupError::Client)?;
        Ok(Self {
            producer,
            options,
            next_message: 0,
            timeout: Duration::from_millis(kafka.produce_timeout_ms),
        })
    }

    /// Appends `payload` (in fragments when it is large) and returns once the broker has
    /// every fragment: the offset of the last one.
    pub async fn append(&mut self, payload: &[u8]) -> Result<i64, LogError> {
        let key = format!("{}/{}", self.options.writer, self.next_message);
        self.next_message += 1;
        let size = self.options.fragment_bytes.max(1);
        let count = payload.len().div_ceil(size).max(1);
        let mut last = -1;
        for index in 0..count {
            let start = index * size;
            let fragment = &payload[start.min(payload.len())..(start + size).min(payload.len())];
            let label = format!("{index}/{count}");
            let headers = OwnedHeaders::new().insert(Header {
                key: FRAGMENT_HEADER,
                value: Some(label.as_bytes()),
            });
            let record = FutureRecord::to(&self.options.topic)
                .key(key.as_bytes())
                .payload(fragment)
                .partition(0)
                .headers(headers);
            let delivered =
                self.producer
                    .send(record, self.timeout)
                    .await
                    .map_err(|(source, _)| LogError::Append {
                        topic: self.options.topic.clone(),
                        index,
                        count,
                        source,
                    })?;
            last = delivered.offset;
        }
        Ok(last)
    }
}

/// One message read back whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Who wrote it (its [`LogOptions::writer`]).
    pub writer: String,
    /// Offset of its last fragment.
    pub offset: i64,
    /// The message.
    pub payload: Vec<u8>,
}

/// A message whose fragments are still arriving.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Partial {
    first_offset: i64,
    fragments: Vec<Option<Vec<u8>>>,
    missing: usize,
}

/// Reads a log from an offset on, message by message, in the order of their last
/// fragments.
pub struct LogReader {
    consumer: StreamConsumer<LoggingContext>,
    topic: String,
    partial: BTreeMap<String, Partial>,
    next_offset: i64,
}

impl LogReader {
    /// A reader of `topic` from `offset` (0 for the whole log; the topic is created with
    /// one partition when missing).
    pub async fn open(kafka: &KafkaConfig, topic: &str, offset: i64) -> Result<Self, LogError> {
        ensure_internal_topic(kafka, topic, LOG_TOPIC_CONFIGS).await?;
        // Never joined nor committed: the reader is assigned its partition and keeps its
        // position in whatever checkpoint it belongs to.
        let config = assigned_reader_config(kafka, "log")?;
        let consumer: StreamConsumer<LoggingContext> = config
            .create_with_context(LoggingContext)
            .map_err(KafkaSetupError::Client)?;
        let offset = offset.max(0);
        // Some brokers (tansu 0.6) answer a fetch from inside a record batch with the next
        // batch: start `kafka.seek_back_messages` earlier and skip up to `offset`.
        let back = i64::try_from(kafka.seek_back_messages).unwrap_or(i64::MAX);
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(
                topic,
                0,
                rdkafka::Offset::Offset(offset.saturating_sub(back).max(0)),
            )
            .map_err(|source| LogError::Read {
                topic: topic.to_string(),
                source,
            })?;
        consumer
            .assign(&assignment)
            .map_err(|source| LogError::Read {
                topic: topic.to_string(),
                source,
            })?;
        Ok(Self {
            consumer,
            topic: topic.to_string(),
            partial: BTreeMap::new(),
            next_offset: offset,
        })
    }

    /// The next whole message (waits for it).
    pub async fn next(&mut self) -> Result<LogEntry, LogError> {
        loop {
            let message = self
                .consumer
                .recv()
                .await
                .map_err(|source| LogError::Read {
                    topic: self.topic.clone(),
                    source,
                })?;
            let offset = message.offset();
            if offset < self.next_offset {
                // Before where the reader was opened, or read already.
                continue;
            }
            self.next_offset = offset + 1;
            let foreign = |what: &str| LogError::Foreign {
                topic: self.topic.clone(),
                offset,
                what: what.to_string(),
            };
            let key = message
                .key()
                .and_then(|k| std::str::from_utf8(k).ok())
                .ok_or_else(|| foreign("no UTF-8 key"))?;
            let (writer, _) = key
                .rsplit_once('/')
                .ok_or_else(|| foreign("key is not writer/message"))?;
            let label = message
                .headers()
                .and_then(|h| {
                    h.iter()
                        .find(|h| h.key == FRAGMENT_HEADER)
                        .and_then(|h| h.value)
                })
                .and_then(|v| std::str::from_utf8(v).ok())
                .ok_or_else(|| foreign("no fragment header"))?;
            let (index, count) = parse_fragment(label).ok_or_else(|| foreign("bad fragment"))?;
            let payload = message.payload().unwrap_or_default().to_vec();
            if count == 1 {
                return Ok(LogEntry {
                    writer: writer.to_string(),
                    offset,
                    payload,
                });
            }
            let entry = self
                .partial
                .entry(key.to_string())
                .or_insert_with(|| Partial {
                    first_offset: offset,
                    fragments: vec![None; count],
                    missing: count,
                });
            if entry.fragments.len() != count {
                return Err(foreign("fragment count differs from the message's first"));
            }
            if entry.fragments[index].is_none() {
                entry.missing -= 1;
            }
            entry.fragments[index] = Some(payload);
            if entry.missing == 0
                && let Some(done) = self.partial.remove(key)
            {
                return Ok(LogEntry {
                    writer: writer.to_string(),
                    offset,
                    payload: done.fragments.into_iter().flatten().flatten().collect(),
                });
            }
        }
    }

    /// Where this reader stands: reopened there ([`LogReader::open_at`]) it returns the
    /// messages this one would return next, and no other. Unlike
    /// [`LogReader::resume_offset`] it carries the fragments of incomplete messages, so a
    /// writer that died mid-message (whose message never completes) does not hold the
    /// position back for good.
    pub fn position(&self) -> LogPosition {
        LogPosition {
            next_offset: self.next_offset,
            partial: self.partial.clone(),
        }
    }

    /// A reader of `topic` that goes on from `position` (of [`LogReader::position`]).
    pub async fn open_at(
        kafka: &KafkaConfig,
        topic: &str,
        position: LogPosition,
    ) -> Result<Self, LogError> {
        let mut reader = Self::open(kafka, topic, position.next_offset).await?;
        reader.partial = position.partial;
        Ok(reader)
    }

    /// Where to reopen the log to read every message not yet returned: the first fragment
    /// of the oldest incomplete message, or the offset after the last record read.
    /// Messages completed after that offset come again from there; the protocol's
    /// messages carry sequence numbers, so a reader recognises them.
    pub fn resume_offset(&self) -> i64 {
        self.partial
            .values()
            .map(|p| p.first_offset)
            .min()
            .unwrap_or(self.next_offset)
    }
}

/// Where a [`LogReader`] stands: the next offset to read and the fragments read of
/// messages not complete yet (serialisable, for checkpoints).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LogPosition {
    next_offset: i64,
    partial: BTreeMap<String, Partial>,
}

impl LogPosition {
    /// The next offset to read.
    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }
}

/// `index/count` with `index < count`.
fn parse_fragment(label: &str) -> Option<(usize, usize)> {
    let (index, count) = label.split_once('/')?;
    let (index, count) = (index.parse().ok()?, count.parse().ok()?);
    (index < count).then_some((index, count))
}

#[cfg(test)]
mod tests {
    use super::parse_fragment;

    #[test]
    fn fragment_labels_name_an_index_below_the_count() {
        assert_eq!(parse_fragment("0/1"), Some((0, 1)));
        assert_eq!(parse_fragment("2/3"), Some((2, 3)));
        assert_eq!(parse_fragment("3/3"), None);
        assert_eq!(parse_fragment("x/3"), None);
        assert_eq!(parse_fragment("3"), None);
    }
}
