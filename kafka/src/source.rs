//! The Kafka source: consumes the three input topics, decodes each message and hands it on
//! through a bounded channel (a full channel pauses consumption), with its topic, partition
//! and offset so the next stage can order events deterministically and reconcile counts.
//!
//! Two modes:
//! - **Live** (the long-running job): one consumer-group member subscribes to clicks and
//!   orders together with the range assignor, so partition *i* of both co-partitioned
//!   topics lands on the same instance; on every assignment each partition is positioned at
//!   the start position the pipeline knows (its checkpoint), else at the group's committed
//!   offset. Inventory is a global table: a second consumer assigns itself every inventory
//!   partition on every instance.
//! - **Bounded** (`stop_at_end`: demo, tests, backfills): one consumer per input topic with
//!   all partitions assigned, so librdkafka's end-of-partition events, which name only a
//!   partition number, are unambiguous; the source stops when every partition is at its
//!   end. (ListOffsets end offsets cannot be used for this: the development broker answers
//!   them wrongly.)
//!
//! - **Group** (instances of one group sharing the work, docs/scale-out.md): a
//!   [`Membership`] of the group on clicks and orders (range) says which partitions this
//!   instance holds, and one consumer per topic is assigned exactly those, with
//!   end-of-partition events, so a bounded run knows when each one is read. It follows
//!   every assignment change (`Assigned`, `Revoked`) and never stops by itself: the
//!   instance decides when the run is over. The inventory is not read here.
//!
//! Offsets are never auto-committed: the pipeline commits through [`OffsetCommitter`] only
//! after what depends on them is durable (in group mode as the group's member). The
//! start position of each partition comes from the checkpoint's positions, once one
//! exists, and otherwise from the group's committed offset or the beginning of the
//! partition; in group mode from the job's [`AssignmentStarts`] answer, else the
//! beginning (a group run's commits are for monitoring only).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};
use shopstream_config::{KafkaConfig, TopicsConfig};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::client::{
    KafkaSetupError, client_config, default_property_value, input_topic_name, set_default,
    set_managed,
};
use crate::membership::{Assigned, MemberCommitter, Membership, MembershipOptions};
use crate::read_progress::ReadProgress;
use shopstream_ingest::decode::{DecodeLimits, Rejection, decode};
use shopstream_ingest::event::{Event, InputTopic};
use shopstream_ingest::mapping::LiveMapping;
use shopstream_ingest::privacy::Privacy;

/// Messages the source hands on before it lets the processor run (see `KafkaSource::run`).
const YIELD_EVERY: usize = 16;

pub use shopstream_ingest::record::RecordMeta;

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
        /// When the consumer handed the message over (for consume-to-publish latency).
        received: std::time::Instant,
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
    /// Partitions were assigned to this instance (live mode; also once at start in
    /// bounded mode).
    Assigned(Vec<(InputTopic, i32)>),
    /// Partitions were taken away from this instance (live mode).
    Revoked(Vec<(InputTopic, i32)>),
    /// Every assigned partition is at its end (only sent when `stop_at_end` is set; the
    /// source stops afterwards).
    CaughtUp,
}

/// Why the source failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Group mode: the group could not be joined or the membership ended.
    #[error("group membership of the source: {0}")]
    Group(String),
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

/// Consumer lag per partition (messages behind the partition's high watermark), as
/// librdkafka's statistics report it every few seconds; read by the metrics endpoint.
pub type SharedLag = Arc<std::sync::Mutex<BTreeMap<(InputTopic, i32), i64>>>;

/// Start positions shared with the pipeline, which updates them at every checkpoint; read
/// whenever partitions are assigned.
pub type SharedPositions = Arc<std::sync::Mutex<Positions>>;

/// Options of a source run.
#[derive(Debug, Clone)]
pub struct SourceOptions {
    /// Bounded mode: stop once every partition has been read to its end.
    pub stop_at_end: bool,
    /// Decoding limits.
    pub limits: DecodeLimits,
    /// Topics whose messages a mapping decodes (`[input.mapping]`); the others carry
    /// contract v1.
    pub mappings: Arc<BTreeMap<InputTopic, LiveMapping>>,
    /// `[privacy]`: pseudonyms and minimised fields, applied to every message as it is
    /// decoded (events, their payload and key, and rejected messages alike).
    pub privacy: Option<Arc<shopstream_ingest::privacy::Privacy>>,
}

/// Counters of a source run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceStats {
    /// Messages consumed per topic.
    pub consumed: BTreeMap<InputTopic, u64>,
}

/// Consumer context: positions newly assigned partitions and reports assignment changes.
pub struct SourceContext {
    names: BTreeMap<String, InputTopic>,
    /// Filled from librdkafka's statistics.
    lag: SharedLag,
    /// Also from the statistics: which partitions are fetched to their end.
    progress: ReadProgress,
    start: SharedPositions,
    /// `kafka.seek_back_messages`.
    seek_back: u64,
    changes: std::sync::Mutex<Vec<SourceMessage>>,
    /// Signalled on each change, so a source waiting for one wakes without a message.
    changed: tokio::sync::Notify,
}

impl SourceContext {
    /// A context for a consumer of the source; they share the lag and start positions.
    fn new(
        names: &BTreeMap<String, InputTopic>,
        lag: &SharedLag,
        progress: &ReadProgress,
        start: &SharedPositions,
        kafka: &KafkaConfig,
    ) -> Self {
        Self {
            names: names.clone(),
            lag: Arc::clone(lag),
            progress: progress.clone(),
            start: Arc::clone(start),
            seek_back: kafka.seek_back_messages,
            changes: std::sync::Mutex::new(Vec::new()),
            changed: tokio::sync::Notify::new(),
        }
    }

    fn partitions(&self, tpl: &TopicPartitionList) -> Vec<(InputTopic, i32)> {
        tpl.elements()
            .iter()
            .filter_map(|e| self.names.get(e.topic()).map(|t| (*t, e.partition())))
            .collect()
    }

    fn push(&self, change: SourceMessage) {
        if let Ok(mut changes) = self.changes.lock() {
            changes.push(change);
        }
        self.changed.notify_one();
    }

    fn take_changes(&self) -> Vec<SourceMessage> {
        self.changes
            .lock()
            .map(|mut c| std::mem::take(&mut *c))
            .unwrap_or_default()
    }
}

impl ClientContext for SourceContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        // The lag comes from the high watermark in fetch responses, which stays right
        // where a broker's ListOffsets answers are not (tansu).
        let Ok(mut lag) = self.lag.lock() else { return };
        for (name, topic) in &statistics.topics {
            let Some(input) = self.names.get(name) else {
                continue;
            };
            for (partition, stats) in &topic.partitions {
                if *partition < 0 {
                    continue;
                }
                if stats.consumer_lag >= 0 {
                    lag.insert((*input, *partition), stats.consumer_lag);
                }
                self.progress.record_statistics((*input, *partition), stats);
            }
        }
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        crate::client::log_client_message(level, fac, log_message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        crate::client::log_client_error(&error, reason);
    }
}

impl ConsumerContext for SourceContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let assigned = self.partitions(tpl);
                let start = self.start.lock().map(|s| s.clone()).unwrap_or_default();
                for (name, topic) in &self.names {
                    for (t, p) in &assigned {
                        if t == topic
                            && let Some(offset) = start.get(&(*t, *p))
                            && let Err(e) = tpl.set_partition_offset(
                                name,
                                *p,
                                Offset::Offset(seek_target(*offset, self.seek_back)),
                            )
                        {
                            tracing::error!(topic = %name, partition = p, error = %e, "cannot position assigned partition");
                        }
                    }
                }
                if let Err(e) = consumer.assign(tpl) {
                    tracing::error!(error = %e, "assigning partitions failed");
                }
                tracing::info!(partitions = ?assigned, "partitions assigned");
                self.progress.forget(&assigned);
                self.push(SourceMessage::Assigned(assigned));
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let revoked = self.partitions(tpl);
                tracing::info!(partitions = ?revoked, "partitions revoked");
                self.progress.forget(&revoked);
                if let Err(e) = consumer.unassign() {
                    tracing::error!(error = %e, "unassigning partitions failed");
                }
                self.push(SourceMessage::Revoked(revoked));
            }
            other => {
                tracing::error!(error = ?other, "rebalance error; dropping the assignment");
                let _ = consumer.unassign();
            }
        }
    }
}

type Inner = StreamConsumer<SourceContext>;

/// The topics one consumer reads, with their names.
type TopicNames = Vec<(InputTopic, String)>;

/// One consumer of the source and the topics it reads.
struct SourceConsumer {
    consumer: Arc<Inner>,
    /// Set when the consumer reads exactly one topic: its end-of-partition events are
    /// unambiguous.
    single_topic: Option<InputTopic>,
}

/// The consuming side of the pipeline.
pub struct KafkaSource {
    consumers: Vec<SourceConsumer>,
    names: BTreeMap<String, InputTopic>,
    /// Bounded mode: assigned partitions and whether each is at its end.
    at_end: BTreeMap<(InputTopic, i32), bool>,
    /// Resume positions: messages below them are skipped (they were read before; the
    /// consumer may start earlier, see `kafka.seek_back_messages`).
    resume_from: Positions,
    /// Consumer lag per partition.
    lag: SharedLag,
    /// How far each partition is read.
    progress: ReadProgress,
    /// Group mode: the membership and what it had assigned when last applied.
    group: Option<GroupShare>,
    /// Live mode before the group's first assignment: the index of the group consumer,
    /// the only one read meanwhile. The inventory waits unread: its partitions alone would
    /// make the watermark, and a backlog read before the click and order partitions are
    /// known would close windows their events still fall in.
    awaiting_group: Option<usize>,
}

/// Group mode's view of the partitions this instance holds.
struct GroupShare {
    /// Held for the source's lifetime: dropping it leaves the group.
    _membership: Membership,
    assigned: tokio::sync::watch::Receiver<Assigned>,
    kafka: KafkaConfig,
    /// Where newly assigned partition numbers start, when the job knows.
    starts: Option<Arc<dyn AssignmentStarts>>,
}

/// Group mode: where the source starts reading a partition number it is newly assigned.
/// The job answers from the partition's checkpoint, which it then resumes from, so the
/// source does not fetch again what that checkpoint holds.
pub trait AssignmentStarts: Send + Sync {
    /// Called once each time partition number `partition` is newly assigned, before its
    /// topics' partitions are (on the blocking pool: it may read a file). Returns the next
    /// offset to read per topic; a topic left out starts at the beginning (never at the
    /// group's committed offset: a group run commits for monitoring only). Each call's
    /// answer holds for the `Assigned` message the source sends next for that partition
    /// number.
    fn starts(&self, partition: i32) -> BTreeMap<InputTopic, i64>;
}

/// How often librdkafka reports statistics to the source's consumers
/// (`statistics.interval.ms`), which the idleness rule's freshness depends on.
fn statistics_interval(kafka: &KafkaConfig) -> Result<Duration, KafkaSetupError> {
    let value = default_property_value(kafka, "statistics.interval.ms")?;
    let ms: u64 = value.trim().parse().map_err(|_| {
        KafkaSetupError::Internal(format!(
            "statistics.interval.ms = {value:?} is not a whole number of milliseconds"
        ))
    })?;
    Ok(Duration::from_millis(ms))
}

/// Where to point the consumer to resume at `position`: `seek_back` messages earlier,
/// because some brokers (tansu 0.6) answer a fetch at an offset inside a record batch with
/// the *next* batch, silently skipping the rest of the batch; the messages before
/// `position` are then dropped again on arrival.
fn seek_target(position: i64, seek_back: u64) -> i64 {
    position
        .saturating_sub(i64::try_from(seek_back).unwrap_or(i64::MAX))
        .max(0)
}

/// Commits consumed positions to the consumer group once they are durable downstream.
#[derive(Clone)]
pub struct OffsetCommitter {
    consumers: Vec<(TopicNames, Arc<Inner>)>,
    /// Group mode: the topics whose offsets go through the group's member instead.
    member: Option<(TopicNames, MemberCommitter)>,
}

impl OffsetCommitter {
    /// Commits `positions` (next offsets) synchronously, each through the consumer that
    /// reads its topic (in group mode, through the group's member: nothing is committed
    /// once it has left).
    pub async fn commit(&self, positions: &Positions) -> Result<(), SourceError> {
        if let Some((topics, member)) = &self.member {
            let list = commit_list(topics, positions)?;
            if list.count() > 0 {
                let member = member.clone();
                tokio::task::spawn_blocking(move || member.commit(&list))
                    .await
                    .map_err(|e| SourceError::Setup(KafkaSetupError::Internal(e.to_string())))?
                    .map_err(|source| SourceError::Consumer {
                        what: "committing offsets as the group's member".into(),
                        source,
                    })?;
            }
        }
        for (topics, consumer) in &self.consumers {
            let list = commit_list(topics, positions)?;
            if list.count() == 0 {
                continue;
            }
            let consumer = Arc::clone(consumer);
            tokio::task::spawn_blocking(move || consumer.commit(&list, CommitMode::Sync))
                .await
                .map_err(|e| SourceError::Setup(KafkaSetupError::Internal(e.to_string())))?
                .map_err(|source| SourceError::Consumer {
                    what: "committing offsets".into(),
                    source,
                })?;
        }
        Ok(())
    }
}

/// The entries of `positions` whose topic is one of `topics`, by name.
fn commit_list(
    topics: &TopicNames,
    positions: &Positions,
) -> Result<TopicPartitionList, SourceError> {
    let mut list = TopicPartitionList::new();
    for ((t, partition), next) in positions {
        if let Some((_, name)) = topics.iter().find(|(topic, _)| topic == t) {
            list.add_partition_offset(name, *partition, Offset::Offset(*next))
                .map_err(|source| SourceError::Consumer {
                    what: "building the commit list".into(),
                    source,
                })?;
        }
    }
    Ok(list)
}

/// librdkafka settings of the source's consumers; `eof` asks for end-of-partition events.
/// Every property is set through the managed-property table
/// (`shopstream_config::kafka_properties`), so none replaces a user's value silently.
pub fn consumer_config(
    kafka: &KafkaConfig,
    eof: bool,
) -> Result<rdkafka::ClientConfig, KafkaSetupError> {
    let mut config = client_config(kafka)?;
    let c = &mut config;
    set_managed(c, kafka, "group.id", &kafka.group_id)?;
    set_managed(c, kafka, "group.protocol", "classic")?;
    set_managed(c, kafka, "enable.auto.commit", "false")?;
    set_managed(c, kafka, "enable.auto.offset.store", "false")?;
    set_managed(
        c,
        kafka,
        "enable.partition.eof",
        if eof { "true" } else { "false" },
    )?;
    set_managed(c, kafka, "partition.assignment.strategy", "range")?;
    set_managed(c, kafka, "auto.offset.reset", "earliest")?;
    set_default(c, kafka, "statistics.interval.ms")?;
    // Kafka answers a fetch as soon as data is there; tansu holds each one for about half
    // this wait, so there it bounds the bursts the job gets (docs/operations.md).
    set_default(c, kafka, "fetch.wait.max.ms")?;
    Ok(config)
}

impl KafkaSource {
    /// The consumer lag per partition, updated as the source runs.
    pub fn lag(&self) -> SharedLag {
        Arc::clone(&self.lag)
    }

    /// How far each partition is read, updated as the source runs (the live job's
    /// idleness rule).
    pub fn progress(&self) -> ReadProgress {
        self.progress.clone()
    }

    /// Connects to the input topics (`partitions` gives their partition counts by name).
    /// A partition starts at its entry in `start` if any, else at the group's committed
    /// offset, else at the beginning. `bounded` selects bounded mode (see the module doc).
    pub async fn connect(
        kafka: &KafkaConfig,
        topics: &TopicsConfig,
        partitions: &BTreeMap<String, i32>,
        start: SharedPositions,
        bounded: bool,
    ) -> Result<(KafkaSource, OffsetCommitter), SourceError> {
        let (named, names) = topic_names(topics);
        let resume_from = start.lock().map(|s| s.clone()).unwrap_or_default();
        let lag = SharedLag::default();
        let progress = ReadProgress::new(statistics_interval(kafka)?);
        let context = || SourceContext::new(&names, &lag, &progress, &start, kafka);
        let mut consumers = Vec::new();
        let mut committer = Vec::new();
        let mut at_end = BTreeMap::new();
        let mut initial = Vec::new();
        // Topics whose every partition this instance assigns itself.
        let assigned_topics: Vec<(InputTopic, String)> = if bounded {
            named.to_vec()
        } else {
            vec![(InputTopic::Inventory, topics.inventory.clone())]
        };
        for (topic, name) in &assigned_topics {
            let count = partitions.get(name).copied().unwrap_or(0);
            let consumer: Inner = consumer_config(kafka, true)?
                .create_with_context(context())
                .map_err(KafkaSetupError::Client)?;
            let consumer = Arc::new(consumer);
            let positions = start.lock().map(|s| s.clone()).unwrap_or_default();
            assign_all(&consumer, kafka, *topic, name, count, &positions).await?;
            for p in 0..count {
                at_end.insert((*topic, p), false);
                initial.push((*topic, p));
            }
            committer.push((vec![(*topic, name.clone())], Arc::clone(&consumer)));
            consumers.push(SourceConsumer {
                consumer,
                single_topic: Some(*topic),
            });
        }
        let mut awaiting_group = None;
        if !bounded {
            awaiting_group = Some(consumers.len());
            let group: Inner = consumer_config(kafka, false)?
                .create_with_context(context())
                .map_err(KafkaSetupError::Client)?;
            group
                .subscribe(&[topics.clicks.as_str(), topics.orders.as_str()])
                .map_err(|source| SourceError::Consumer {
                    what: "subscribing to the click and order topics".into(),
                    source,
                })?;
            let group = Arc::new(group);
            committer.push((named[..2].to_vec(), Arc::clone(&group)));
            consumers.push(SourceConsumer {
                consumer: group,
                single_topic: None,
            });
        }
        if let Some(first) = consumers.first() {
            first
                .consumer
                .context()
                .push(SourceMessage::Assigned(initial));
        }
        tracing::info!(bounded, assigned = at_end.len(), "kafka source connected");
        Ok((
            KafkaSource {
                consumers,
                names,
                at_end,
                resume_from,
                lag,
                progress,
                group: None,
                awaiting_group,
            },
            OffsetCommitter {
                consumers: committer,
                member: None,
            },
        ))
    }

    /// Connects in group mode (see the module doc): joins `kafka.group_id` on clicks and
    /// orders and reads the partitions it is assigned, each from where `starts` says, else
    /// from the beginning. The committer commits as the group's member.
    pub async fn connect_group(
        kafka: &KafkaConfig,
        topics: &TopicsConfig,
        starts: Option<Arc<dyn AssignmentStarts>>,
    ) -> Result<(KafkaSource, OffsetCommitter), SourceError> {
        let (named, names) = topic_names(topics);
        // Where each assignment starts is decided when it comes (`starts`); nothing
        // is skipped at the source.
        let start = SharedPositions::default();
        let resume_from = Positions::new();
        let lag = SharedLag::default();
        let progress = ReadProgress::new(statistics_interval(kafka)?);
        let mut consumers = Vec::new();
        for (topic, _) in &named[..2] {
            let consumer: Inner = consumer_config(kafka, true)?
                .create_with_context(SourceContext::new(&names, &lag, &progress, &start, kafka))
                .map_err(KafkaSetupError::Client)?;
            let consumer = Arc::new(consumer);
            consumers.push(SourceConsumer {
                consumer,
                single_topic: Some(*topic),
            });
        }
        let membership = Membership::join(
            kafka,
            &MembershipOptions {
                group: kafka.group_id.clone(),
                topics: named[..2].iter().map(|(_, n)| n.clone()).collect(),
                strategy: "range",
                // A joining instance is noticed at the next heartbeat: every second.
                session_timeout_ms: Some(10_000),
            },
        )
        .await
        .map_err(|e| SourceError::Group(e.to_string()))?;
        let assigned = membership.assigned();
        // The topic consumers read by assignment, outside the group: a broker refuses
        // their commits while the group has members, so offsets go through the member.
        let committer = OffsetCommitter {
            consumers: Vec::new(),
            member: Some((named[..2].to_vec(), membership.committer())),
        };
        tracing::info!(group = %kafka.group_id, "kafka source joined the group");
        Ok((
            KafkaSource {
                consumers,
                names,
                at_end: BTreeMap::new(),
                resume_from,
                lag,
                progress,
                group: Some(GroupShare {
                    _membership: membership,
                    assigned,
                    kafka: kafka.clone(),
                    starts,
                }),
                awaiting_group: None,
            },
            committer,
        ))
    }

    /// Group mode: makes the topic consumers read what the membership assigns now, and
    /// reports the changes.
    async fn follow_assignment(
        &mut self,
        tx: &mpsc::Sender<SourceMessage>,
    ) -> Result<(), SourceError> {
        let Some(group) = &mut self.group else {
            return Ok(());
        };
        let wanted: Vec<(InputTopic, i32)> = group
            .assigned
            .borrow_and_update()
            .iter()
            .filter_map(|(name, p)| self.names.get(name).map(|t| (*t, *p)))
            .collect();
        let held: Vec<(InputTopic, i32)> = self.at_end.keys().copied().collect();
        let revoked: Vec<(InputTopic, i32)> = held
            .iter()
            .filter(|k| !wanted.contains(k))
            .copied()
            .collect();
        let added: Vec<(InputTopic, i32)> = wanted
            .iter()
            .filter(|k| !held.contains(k))
            .copied()
            .collect();
        // Asked once per partition number newly assigned, before its partitions are.
        let numbers: BTreeSet<i32> = added.iter().map(|(_, p)| *p).collect();
        let positions = match &group.starts {
            Some(starts) if !numbers.is_empty() => {
                let starts = Arc::clone(starts);
                tokio::task::spawn_blocking(move || {
                    let mut positions = Positions::new();
                    for p in numbers {
                        for (topic, offset) in starts.starts(p) {
                            positions.insert((topic, p), offset);
                        }
                    }
                    positions
                })
                .await
                .map_err(|e| SourceError::Setup(KafkaSetupError::Internal(e.to_string())))?
            }
            _ => Positions::new(),
        };
        for consumer in &self.consumers {
            let Some(topic) = consumer.single_topic else {
                continue;
            };
            let name = self
                .names
                .iter()
                .find(|(_, t)| **t == topic)
                .map(|(n, _)| n.clone())
                .unwrap_or_default();
            let gone: Vec<i32> = revoked
                .iter()
                .filter(|(t, _)| *t == topic)
                .map(|(_, p)| *p)
                .collect();
            if !gone.is_empty() {
                let mut list = TopicPartitionList::new();
                for p in &gone {
                    list.add_partition(&name, *p);
                }
                consumer
                    .consumer
                    .incremental_unassign(&list)
                    .map_err(|source| SourceError::Consumer {
                        what: format!("giving up partitions {gone:?} of {name}"),
                        source,
                    })?;
            }
            let new: Vec<i32> = added
                .iter()
                .filter(|(t, _)| *t == topic)
                .map(|(_, p)| *p)
                .collect();
            if !new.is_empty() {
                // Never the group's committed offsets: a group run resumes from its
                // partition checkpoints (`starts`), and commits only for monitoring.
                let list = start_offsets(
                    &consumer.consumer,
                    &group.kafka,
                    topic,
                    &name,
                    &new,
                    &positions,
                    false,
                )
                .await?;
                consumer
                    .consumer
                    .incremental_assign(&list)
                    .map_err(|source| SourceError::Consumer {
                        what: format!("taking partitions {new:?} of {name}"),
                        source,
                    })?;
            }
        }
        self.progress.forget(&revoked);
        self.progress.forget(&added);
        for key in &revoked {
            self.at_end.remove(key);
        }
        for key in &added {
            self.at_end.insert(*key, false);
        }
        if !revoked.is_empty() {
            tracing::info!(partitions = ?revoked, "partitions revoked");
            let _ = tx.send(SourceMessage::Revoked(revoked)).await;
        }
        if !added.is_empty() {
            tracing::info!(partitions = ?added, "partitions assigned");
            let _ = tx.send(SourceMessage::Assigned(added)).await;
        }
        Ok(())
    }

    /// Consumes until cancelled (or, in bounded mode, until every partition is at its end),
    /// sending every message, decoded or rejected, and every assignment change to `tx`.
    pub async fn run(
        mut self,
        tx: mpsc::Sender<SourceMessage>,
        cancel: CancellationToken,
        options: SourceOptions,
    ) -> Result<SourceStats, SourceError> {
        let mut stats = SourceStats::default();
        let mut sent_since_yield = 0usize;
        let idle = || std::future::pending::<(usize, Result<_, KafkaError>)>();
        loop {
            for (index, consumer) in self.consumers.iter().enumerate() {
                for change in consumer.consumer.context().take_changes() {
                    if self.awaiting_group == Some(index)
                        && matches!(change, SourceMessage::Assigned(_))
                    {
                        self.awaiting_group = None;
                    }
                    if tx.send(change).await.is_err() {
                        return Ok(stats);
                    }
                }
            }
            if options.stop_at_end && self.group.is_none() && self.at_end.values().all(|e| *e) {
                let _ = tx.send(SourceMessage::CaughtUp).await;
                return Ok(stats);
            }
            let c = &self.consumers;
            // (The group consumer is always read: reading it is what joins the group.)
            let awaiting_group = self.awaiting_group;
            let readable = |i: usize| i < c.len() && awaiting_group.is_none_or(|g| g == i);
            // The first assignment may come with no message after it (idle topics, or no
            // partition for this instance): it wakes the loop by itself.
            let first_assignment = async {
                match awaiting_group {
                    Some(g) => c[g].consumer.context().changed.notified().await,
                    None => std::future::pending().await,
                }
            };
            let changed = async {
                match &mut self.group {
                    Some(group) => group.assigned.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            let (index, received) = tokio::select! {
                _ = cancel.cancelled() => return Ok(stats),
                // The processor is gone (stopped or dropped): so is the reason to hold
                // partitions. An idle source would otherwise never notice.
                () = tx.closed() => return Ok(stats),
                still = changed => {
                    if !still {
                        return Err(SourceError::Group("the group membership ended".into()));
                    }
                    self.follow_assignment(&tx).await?;
                    continue;
                }
                () = first_assignment => continue,
                m = async { (0, c[0].consumer.recv().await) }, if readable(0) => m,
                m = async { (1, c[1].consumer.recv().await) }, if readable(1) => m,
                m = async { (2, c[2].consumer.recv().await) }, if readable(2) => m,
                m = idle(), if c.is_empty() => m,
            };
            let out = match received {
                Ok(message) => {
                    let received = std::time::Instant::now();
                    // A single-topic consumer knows its topic without a name lookup.
                    let topic = self.consumers[index]
                        .single_topic
                        .or_else(|| self.names.get(message.topic()).copied());
                    let Some(topic) = topic else {
                        continue;
                    };
                    let meta = RecordMeta {
                        topic,
                        partition: message.partition(),
                        offset: message.offset(),
                    };
                    if self
                        .resume_from
                        .get(&(topic, meta.partition))
                        .is_some_and(|from| meta.offset < *from)
                    {
                        // Before the resume position: read already, see `seek_target`.
                        continue;
                    }
                    *stats.consumed.entry(topic).or_default() += 1;
                    self.progress
                        .handed_on((topic, meta.partition), meta.offset);
                    if let Some(end) = self.at_end.get_mut(&(topic, meta.partition)) {
                        *end = false;
                    }
                    let payload = message.payload().unwrap_or_default();
                    let key = message.key().map(<[u8]>::to_vec);
                    let mapping = options.mappings.get(&topic);
                    let decoded = match mapping {
                        Some(mapping) => mapping.decode(
                            meta.partition,
                            meta.offset,
                            key.as_deref(),
                            payload,
                            options.limits,
                        ),
                        None => decode(topic, key.as_deref(), payload, options.limits),
                    };
                    match (decoded, options.privacy.as_deref()) {
                        (Ok(event), None) => SourceMessage::Event {
                            meta,
                            event,
                            key,
                            payload: payload.to_vec(),
                            received,
                        },
                        (Ok(mut event), Some(privacy)) => {
                            privacy.apply(&mut event);
                            SourceMessage::Event {
                                meta,
                                key: privacy.key(&event, key),
                                payload: Privacy::payload(&event),
                                event,
                                received,
                            }
                        }
                        (Err(rejection), None) => SourceMessage::Rejected {
                            meta,
                            key,
                            payload: payload.to_vec(),
                            rejection,
                        },
                        (Err(mut rejection), Some(privacy)) => {
                            // A mapped topic's ids are under the shop's own field names:
                            // its payload is withheld whole.
                            let (key, payload) =
                                privacy.dead_letter(key.as_deref(), payload, mapping.is_none());
                            rejection.message = privacy.scrub_rejection(
                                &rejection.message,
                                message.key(),
                                message.payload(),
                            );
                            SourceMessage::Rejected {
                                meta,
                                key,
                                payload,
                                rejection,
                            }
                        }
                    }
                }
                Err(KafkaError::PartitionEOF(partition)) => {
                    let Some(topic) = self.consumers[index].single_topic else {
                        continue;
                    };
                    self.at_end.insert((topic, partition), true);
                    SourceMessage::PartitionEof { topic, partition }
                }
                Err(e) => {
                    // librdkafka retries transport errors itself; report and go on.
                    tracing::warn!(error = %e, "kafka consumer error; retrying");
                    continue;
                }
            };
            if tx.send(out).await.is_err() {
                // The processor stopped; its own error is what matters.
                return Ok(stats);
            }
            sent_since_yield += 1;
            if sent_since_yield >= YIELD_EVERY {
                // The processor woken by these sends waits in this thread's next-task slot,
                // which other threads cannot take: without a yield it would start only
                // after a whole fetch (often hundreds of messages), each message's
                // prediction delayed by the decoding of the ones after it.
                sent_since_yield = 0;
                tokio::task::yield_now().await;
            }
        }
    }
}

/// Each input topic with its name, and the topic of each name.
fn topic_names(topics: &TopicsConfig) -> ([(InputTopic, String); 3], BTreeMap<String, InputTopic>) {
    let named = InputTopic::ALL.map(|t| (t, input_topic_name(topics, t).to_string()));
    let names = named.iter().map(|(t, n)| (n.clone(), *t)).collect();
    (named, names)
}

/// Assigns every partition of one topic at its start position.
async fn assign_all(
    consumer: &Arc<Inner>,
    kafka: &KafkaConfig,
    topic: InputTopic,
    name: &str,
    partitions: i32,
    start: &Positions,
) -> Result<(), SourceError> {
    let all: Vec<i32> = (0..partitions).collect();
    let list = start_offsets(consumer, kafka, topic, name, &all, start, true).await?;
    consumer
        .assign(&list)
        .map_err(|source| SourceError::Consumer {
            what: "assigning partitions".into(),
            source,
        })
}

/// `partitions` of one topic, each at its start: its entry in `start` if any (moved back
/// by `kafka.seek_back_messages`), else (with `committed`) the group's committed offset,
/// else the beginning.
async fn start_offsets(
    consumer: &Arc<Inner>,
    kafka: &KafkaConfig,
    topic: InputTopic,
    name: &str,
    partitions: &[i32],
    start: &Positions,
    committed: bool,
) -> Result<TopicPartitionList, SourceError> {
    let timeout = Duration::from_millis(kafka.connect_timeout_ms);
    let blocking = Arc::clone(consumer);
    let name = name.to_string();
    let start = start.clone();
    let seek_back = kafka.seek_back_messages;
    let partitions = partitions.to_vec();
    tokio::task::spawn_blocking(move || {
        let committed = if committed {
            let mut wanted = TopicPartitionList::new();
            for p in &partitions {
                wanted.add_partition(&name, *p);
            }
            Some(
                blocking
                    .committed_offsets(wanted, timeout)
                    .map_err(|source| SourceError::Consumer {
                        what: format!("reading committed offsets of {name}"),
                        source,
                    })?,
            )
        } else {
            None
        };
        let mut list = TopicPartitionList::new();
        for p in partitions {
            let committed_offset = committed
                .as_ref()
                .and_then(|c| c.find_partition(&name, p))
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) if o >= 0 => Some(o),
                    _ => None,
                });
            let from = match (start.get(&(topic, p)).copied(), committed_offset) {
                (Some(position), _) => Offset::Offset(seek_target(position, seek_back)),
                (None, Some(offset)) => Offset::Offset(offset),
                (None, None) => Offset::Beginning,
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
    .map_err(|e| SourceError::Setup(KafkaSetupError::Internal(e.to_string())))?
}
