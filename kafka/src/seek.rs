//! Start offsets by time, for replays: the broker's time index (`offsets_for_times`)
//! answers where a partition's first message at or after a time is, and every answer is
//! checked by reading the message before it and the message at it. An answer that cannot
//! be confirmed (a broker with an unreliable index, as the development broker tansu 0.6
//! is; an error; a timeout) falls back to the partition's beginning, so the replay scans
//! and skips instead: slower, never wrong.
//!
//! Message timestamps are the events' own times (the contract: producers set them, the
//! generator and the importer do), so "first message at or after T" means every earlier
//! offset holds an event before T.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use shopstream_config::{KafkaConfig, TopicsConfig};

use crate::client::{KafkaSetupError, assigned_reader_config, input_topic_name, set_managed};
use crate::source::Positions;
use shopstream_ingest::event::InputTopic;

/// How each partition's start was found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeekReport {
    /// Partitions whose index answer was confirmed by reading around it.
    pub confirmed: u64,
    /// Partitions that start at their beginning instead (answer refused, wrong, or none).
    pub scanned: u64,
    /// Why the first few answers were not used.
    pub reasons: Vec<String>,
}

/// Start offsets for every partition of the input topics: the first offset whose message
/// is at or after `at_ms`, confirmed, else 0 (scan). `partitions` maps topic name to
/// partition count.
pub async fn offsets_at(
    kafka: &KafkaConfig,
    topics: &TopicsConfig,
    partitions: &BTreeMap<String, i32>,
    at_ms: i64,
) -> Result<(Positions, SeekReport), KafkaSetupError> {
    let config = seek_config(kafka)?;
    let timeout = Duration::from_millis(kafka.connect_timeout_ms);
    let mut wanted = Vec::new();
    for topic in InputTopic::ALL {
        let name = input_topic_name(topics, topic).to_string();
        for partition in 0..partitions.get(&name).copied().unwrap_or(0) {
            wanted.push((topic, name.clone(), partition));
        }
    }
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config.create().map_err(KafkaSetupError::Client)?;
        let mut query = TopicPartitionList::new();
        for (_, name, partition) in &wanted {
            query
                .add_partition_offset(name, *partition, Offset::Offset(at_ms))
                .map_err(KafkaSetupError::Client)?;
        }
        let answers = consumer.offsets_for_times(query, timeout).ok();
        let mut positions = Positions::new();
        let mut report = SeekReport::default();
        for (topic, name, partition) in wanted {
            let answer = answers
                .as_ref()
                .and_then(|a| a.find_partition(&name, partition))
                .map(|e| e.offset());
            let checked = match answer {
                Some(Offset::Offset(offset)) => {
                    confirm(&consumer, &name, partition, offset, at_ms, timeout)
                }
                Some(other) => Err(format!("the index answered {other:?}")),
                None => Err("the index did not answer".to_string()),
            };
            match checked {
                Ok(offset) => {
                    report.confirmed += 1;
                    positions.insert((topic, partition), offset);
                }
                Err(reason) => {
                    report.scanned += 1;
                    if report.reasons.len() < 5 {
                        report.reasons.push(format!("{name}/{partition}: {reason}"));
                    }
                    positions.insert((topic, partition), 0);
                }
            }
        }
        Ok((positions, report))
    })
    .await
    .map_err(|e| KafkaSetupError::Internal(e.to_string()))?
}

/// librdkafka settings of the seek consumer: a group of its own, so reading around the
/// index answers never touches the job's group, and end-of-partition events, since the
/// answer for a time after the last message is the partition's end. Set through the
/// managed-property table (`shopstream_config::kafka_properties`).
pub fn seek_config(kafka: &KafkaConfig) -> Result<ClientConfig, KafkaSetupError> {
    let mut config = assigned_reader_config(kafka, "seek")?;
    set_managed(&mut config, kafka, "enable.partition.eof", "true")?;
    Ok(config)
}

/// Confirms that `offset` is the first message at or after `at_ms`: the message before it
/// (if any) is earlier, the message at it (if any) is not.
fn confirm(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    offset: i64,
    at_ms: i64,
    timeout: Duration,
) -> Result<i64, String> {
    if offset > 0 {
        match read_at(consumer, topic, partition, offset - 1, timeout)? {
            Some(ts) if ts < at_ms => {}
            Some(ts) => {
                return Err(format!(
                    "offset {} holds time {ts}, not before {at_ms}",
                    offset - 1
                ));
            }
            None => return Err(format!("offset {} could not be read", offset - 1)),
        }
    }
    match read_at(consumer, topic, partition, offset, timeout)? {
        Some(ts) if ts < at_ms => Err(format!("offset {offset} holds time {ts}, before {at_ms}")),
        // At or after the time, or the partition's end.
        _ => Ok(offset),
    }
}

/// The timestamp of the message at `offset`, or `None` at the partition's end.
fn read_at(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    offset: i64,
    timeout: Duration,
) -> Result<Option<i64>, String> {
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, partition, Offset::Offset(offset))
        .map_err(|e| e.to_string())?;
    consumer.assign(&assignment).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) if message.partition() == partition => {
                if message.offset() != offset {
                    return Err(format!(
                        "asked for offset {offset}, the broker returned {}",
                        message.offset()
                    ));
                }
                return message
                    .timestamp()
                    .to_millis()
                    .map(Some)
                    .ok_or_else(|| format!("offset {offset} has no timestamp"));
            }
            Some(Ok(_)) => {}
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) if p == partition => {
                return Ok(None);
            }
            Some(Err(e)) => return Err(e.to_string()),
            None => {}
        }
    }
    Err(format!("no answer for offset {offset} within {timeout:?}"))
}
