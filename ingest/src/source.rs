//! The Kafka source: consumes the three input topics, decodes each message and hands it on
//! through a bounded channel (a full channel pauses consumption), with its topic, partition
//! and offset so the next stage can order events deterministically and reconcile counts.
//!
//! There is one consumer per input topic, so that librdkafka's end-of-partition events,
//! which name only a partition number, are unambiguous. (The end offsets that ListOffsets
//! reports cannot be used for this: the development broker answers them wrongly.)
//!
//! Offsets are never auto-committed: the pipeline commits through [`OffsetCommitter`] only
//! after what depends on them is durable. The start position of each partition comes from
//! a [`StartPositions`] answer (the checkpoint, once one exists) and otherwise from the
//! group's committed offset or the beginning of the partition.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use shopstream_config::{KafkaConfig, TopicsConfig};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::decode::{DecodeLimits, Rejection, decode};
use crate::event::{Event, InputTopic};
use crate::kafka::{KafkaSetupError, client_config};

/// Where a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordMeta {
    /// Input topic.
    pub topic: InputTopic,
    /// Partition.
    pub partition: i32,
    /// Offset within the partition.
    pub offset: i64,
}

/// What the source hands to the processor.
#[derive(Debug)]
pub enum SourceMessage {
    /// A valid event.
    Event {
        /// Origin.
        meta: RecordMeta,
        /// The decoded event.
        event: Event,
        /// Original key, kept so a late event can be dead-lettered as it arrived.
        key: Option<Vec<u8>>,
        /// Original bytes, likewise.
        payload: Vec<u8>,
    },
    /// A message that failed decoding or validation; to be dead-lettered.
    Rejected {
        /// Origin.
        meta: RecordMeta,
        /// Original key.
        key: Option<Vec<u8>>,
        /// Original bytes.
        payload: Vec<u8>,
        /// Why.
        rejection: Rejection,
    },
    /// A partition has been read to its current end (sent again each time it catches up
    /// after new messages).
    PartitionEof {
        /// Input topic.
        topic: InputTopic,
        /// Partition.
        partition: i32,
    },
    /// Every assigned partition is at its end (only sent when `stop_at_end` is set; the
    /// source stops afterwards).
    CaughtUp,
}

/// Why the source failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Set-up failed (no brokers, unreachable cluster, bad properties).
    #[error(transparent)]
    Setup(#[from] KafkaSetupError),
    /// The consumer hit an error it cannot recover from.
    #[error("Kafka consumer failed on {what}: {source}")]
    Consumer {
        /// What it was doing.
        what: String,
        /// librdkafka's error.
        source: KafkaError,
    },
}

/// Per-partition next offsets: (topic, partition) -> the offset of the next message to read.
pub type Positions = BTreeMap<(InputTopic, i32), i64>;

/// Options of a source run.
#[derive(Debug, Clone, Copy)]
pub struct SourceOptions {
    /// Stop once every partition has been read to its end (batch runs, demo, tests).
    pub stop_at_end: bool,
    /// Decoding limits.
    pub limits: DecodeLimits,
}

/// Counters of a source run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceStats {
    /// Messages consumed per topic.
    pub consumed: BTreeMap<InputTopic, u64>,
}

/// One consumer per input topic.
struct TopicConsumer {
    topic: InputTopic,
    name: String,
    consumer: Arc<StreamConsumer>,
}

/// The consuming side of the pipeline.
pub struct KafkaSource {
    clicks: TopicConsumer,
    orders: TopicConsumer,
    inventory: TopicConsumer,
    /// Assigned partitions and whether each is at its end.
    at_end: BTreeMap<(InputTopic, i32), bool>,
}

/// Commits consumed positions to the consumer group once they are durable downstream.
#[derive(Clone)]
pub struct OffsetCommitter {
    consumers: BTreeMap<InputTopic, (String, Arc<StreamConsumer>)>,
}

impl OffsetCommitter {
    /// Commits `positions` (next offsets) synchronously.
    pub async fn commit(&self, positions: &Positions) -> Result<(), SourceError> {
        for (topic, (name, consumer)) in &self.consumers {
            let mut list = TopicPartitionList::new();
            for ((t, partition), next) in positions {
                if t == topic {
                    list.add_partition_offset(name, *partition, Offset::Offset(*next))
                        .map_err(|source| SourceError::Consumer {
                            what: "building the commit list".into(),
                            source,
                        })?;
                }
            }
            if list.count() == 0 {
                continue;
            }
            let consumer = Arc::clone(consumer);
            tokio::task::spawn_blocking(move || consumer.commit(&list, CommitMode::Sync))
                .await
                .map_err(|e| SourceError::Setup(KafkaSetupError::Internal(e.to_string())))?
                .map_err(|source| SourceError::Consumer {
                    what: format!("committing offsets of {topic:?}"),
                    source,
                })?;
        }
        Ok(())
    }
}

impl KafkaSource {
    /// Connects one consumer per input topic and assigns every partition (`partitions`
    /// gives their counts by topic name). Each partition starts at `start` if given there,
    /// else at the group's committed offset, else at the beginning.
    pub async fn connect(
        kafka: &KafkaConfig,
        topics: &TopicsConfig,
        partitions: &BTreeMap<String, i32>,
        start: &Positions,
    ) -> Result<(KafkaSource, OffsetCommitter), SourceError> {
        let mut consumers = Vec::new();
        let mut at_end = BTreeMap::new();
        for (topic, name) in [
            (InputTopic::Clicks, &topics.clicks),
            (InputTopic::Orders, &topics.orders),
            (InputTopic::Inventory, &topics.inventory),
        ] {
            let count = partitions.get(name).copied().unwrap_or(0);
            let consumer = assign_topic(kafka, topic, name, count, start).await?;
            for p in 0..count {
                at_end.insert((topic, p), false);
            }
            consumers.push(TopicConsumer {
                topic,
                name: name.clone(),
                consumer,
            });
        }
        let committer = OffsetCommitter {
            consumers: consumers
                .iter()
                .map(|c| (c.topic, (c.name.clone(), Arc::clone(&c.consumer))))
                .collect(),
        };
        let mut it = consumers.into_iter();
        let (Some(clicks), Some(orders), Some(inventory)) = (it.next(), it.next(), it.next())
        else {
            return Err(SourceError::Setup(KafkaSetupError::Internal(
                "three consumers expected".into(),
            )));
        };
        tracing::info!(partitions = at_end.len(), "kafka source assigned");
        Ok((
            KafkaSource {
                clicks,
                orders,
                inventory,
                at_end,
            },
            committer,
        ))
    }

    /// Every assigned (topic, partition).
    pub fn assigned(&self) -> Vec<(InputTopic, i32)> {
        self.at_end.keys().copied().collect()
    }

    /// Name of an input topic.
    pub fn topic_name(&self, topic: InputTopic) -> &str {
        match topic {
            InputTopic::Clicks => &self.clicks.name,
            InputTopic::Orders => &self.orders.name,
            InputTopic::Inventory => &self.inventory.name,
        }
    }

    /// Consumes until cancelled (or, with `stop_at_end`, until every partition is at its
    /// end), sending every message, decoded or rejected, to `tx`.
    pub async fn run(
        mut self,
        tx: mpsc::Sender<SourceMessage>,
        cancel: CancellationToken,
        options: SourceOptions,
    ) -> Result<SourceStats, SourceError> {
        let mut stats = SourceStats::default();
        loop {
            if options.stop_at_end && self.at_end.values().all(|e| *e) {
                let _ = tx.send(SourceMessage::CaughtUp).await;
                return Ok(stats);
            }
            let (topic, received) = tokio::select! {
                _ = cancel.cancelled() => return Ok(stats),
                m = self.clicks.consumer.recv() => (self.clicks.topic, m),
                m = self.orders.consumer.recv() => (self.orders.topic, m),
                m = self.inventory.consumer.recv() => (self.inventory.topic, m),
            };
            let out = match received {
                Ok(message) => {
                    let meta = RecordMeta {
                        topic,
                        partition: message.partition(),
                        offset: message.offset(),
                    };
                    *stats.consumed.entry(topic).or_default() += 1;
                    self.at_end.insert((topic, meta.partition), false);
                    let payload = message.payload().unwrap_or_default();
                    let key = message.key().map(<[u8]>::to_vec);
                    match decode(topic, payload, options.limits) {
                        Ok(event) => SourceMessage::Event {
                            meta,
                            event,
                            key,
                            payload: payload.to_vec(),
                        },
                        Err(rejection) => SourceMessage::Rejected {
                            meta,
                            key,
                            payload: payload.to_vec(),
                            rejection,
                        },
                    }
                }
                Err(KafkaError::PartitionEOF(partition)) => {
                    self.at_end.insert((topic, partition), true);
                    SourceMessage::PartitionEof { topic, partition }
                }
                Err(e) => {
                    // librdkafka retries transport errors itself; report and go on.
                    tracing::warn!(topic = topic.as_str(), error = %e, "kafka consumer error; retrying");
                    continue;
                }
            };
            if tx.send(out).await.is_err() {
                // The processor stopped; its own error is what matters.
                return Ok(stats);
            }
        }
    }
}

/// A consumer for one topic with every partition assigned at its start position.
async fn assign_topic(
    kafka: &KafkaConfig,
    topic: InputTopic,
    name: &str,
    partitions: i32,
    start: &Positions,
) -> Result<Arc<StreamConsumer>, SourceError> {
    let mut config = client_config(kafka)?;
    config
        .set("group.id", &kafka.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest");
    let consumer: StreamConsumer = config.create().map_err(KafkaSetupError::Client)?;
    let consumer = Arc::new(consumer);
    let timeout = Duration::from_millis(kafka.connect_timeout_ms);
    let blocking = Arc::clone(&consumer);
    let name = name.to_string();
    let start = start.clone();
    let list = tokio::task::spawn_blocking(move || {
        let mut wanted = TopicPartitionList::new();
        for p in 0..partitions {
            wanted.add_partition(&name, p);
        }
        let committed = blocking
            .committed_offsets(wanted, timeout)
            .map_err(|source| SourceError::Consumer {
                what: format!("reading committed offsets of {name}"),
                source,
            })?;
        let mut list = TopicPartitionList::new();
        for p in 0..partitions {
            let committed_offset =
                committed
                    .find_partition(&name, p)
                    .and_then(|e| match e.offset() {
                        Offset::Offset(o) if o >= 0 => Some(o),
                        _ => None,
                    });
            let from = match start.get(&(topic, p)).copied().or(committed_offset) {
                Some(offset) => Offset::Offset(offset),
                None => Offset::Beginning,
            };
            list.add_partition_offset(&name, p, from)
                .map_err(|source| SourceError::Consumer {
                    what: "building the assignment".into(),
                    source,
                })?;
        }
        Ok::<_, SourceError>(list)
    })
    .await
    .map_err(|e| SourceError::Setup(KafkaSetupError::Internal(e.to_string())))??;
    consumer
        .assign(&list)
        .map_err(|source| SourceError::Consumer {
            what: "assigning partitions".into(),
            source,
        })?;
    Ok(consumer)
}
