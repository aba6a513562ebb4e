//! What a checkpoint of the running job holds, and how a restart uses it.
//!
//! A checkpoint is taken between two messages, after the one that closed the
//! `checkpoint.every_windows`-th window since the last checkpoint was fully handled: its
//! window's files are committed in the store, the producer has flushed (every prediction
//! and dead letter so far acknowledged), and then the state is written through
//! [`shopstream_sinks::checkpoint`] (atomic, checksummed, last K kept). After that the
//! consumed offsets are committed to Kafka, for lag monitoring only: a restart seeks every
//! partition to the checkpoint's positions, not to the committed offsets.
//!
//! Everything that decides what the job writes from then on is in the checkpoint: the
//! source positions, the feature stage (open windows with their buffered events, the
//! watermark, keyed state, pending labels, demand snapshots), the dedupe and clock-skew
//! state with the events held for a decision, the model with its optimiser, and the drift
//! monitors. So a job killed at any point and restarted from its last checkpoint rewrites
//! the windows after it byte for byte (deterministic file names, same contents), and the
//! store ends up as if nothing happened. Predictions of the messages after the checkpoint
//! are published again: at least once, keyed by the impression's event id.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use shopstream_features::FeaturePipeline;
use shopstream_ingest::clean::Cleaner;
use shopstream_ingest::event::{Event, InputTopic};
use shopstream_kafka::source::{Positions, RecordMeta};
use shopstream_trainer::Trainer;

use crate::pipeline::held_rows::HeldState;

/// Version of the checkpoint contents (the file format has its own, in the sinks crate).
/// 5 since shards join a shared inventory table: a shard's own table is empty between
/// closes, which a build of version 4 would read as an empty inventory.
pub const STATE_VERSION: u32 = 5;

/// Versions this build reads: version 4's shards each hold a full copy of the inventory,
/// which reads correctly as the rows they changed (the same as the table they join).
pub const READS_STATE_VERSIONS: [u32; 2] = [4, STATE_VERSION];

/// An event held for a clock-skew decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldEvent {
    /// Where it came from.
    pub meta: RecordMeta,
    /// The event.
    pub event: Event,
    /// Its key.
    pub key: Option<Vec<u8>>,
    /// Its original bytes (for the dead-letter topic if it is rejected).
    pub payload: Vec<u8>,
}

/// The job's state, borrowed for writing.
#[derive(Debug, Serialize)]
pub struct JobStateRef<'a, D: Serialize> {
    /// [`STATE_VERSION`].
    pub version: u32,
    /// Windows closed since the job's first start: names the checkpoint.
    pub windows_closed: u64,
    /// Next offset to read per input partition.
    pub positions: &'a Positions,
    /// The feature stage.
    pub features: &'a FeaturePipeline,
    /// Dedupe and clock-skew state.
    pub cleaner: &'a Cleaner,
    /// Events held for a clock-skew decision.
    pub held: Vec<HeldEvent>,
    /// The model and its optimiser.
    pub trainer: &'a Trainer,
    /// The drift monitors (absent when drift detection is off).
    pub drift: Option<&'a D>,
    /// The rows of closed windows the store has not been written yet.
    pub(crate) store_rows: &'a HeldState,
}

/// The job's state, as read back.
#[derive(Debug, Deserialize)]
pub struct JobState<D> {
    /// [`STATE_VERSION`].
    pub version: u32,
    /// Windows closed since the job's first start.
    pub windows_closed: u64,
    /// Next offset to read per input partition.
    pub positions: Positions,
    /// The feature stage.
    pub features: FeaturePipeline,
    /// Dedupe and clock-skew state.
    pub cleaner: Cleaner,
    /// Events held for a clock-skew decision.
    pub held: Vec<HeldEvent>,
    /// The model and its optimiser.
    pub trainer: Trainer,
    /// The drift monitors.
    pub drift: Option<D>,
    /// The rows of closed windows the store has not been written yet.
    pub(crate) store_rows: HeldState,
}

/// Positions as the `topic/partition -> offset` map logged and reported.
pub fn describe(positions: &Positions) -> BTreeMap<String, i64> {
    positions
        .iter()
        .map(|((topic, partition), offset)| (format!("{}/{partition}", topic.as_str()), *offset))
        .collect()
}

/// Held events keyed by partition, from their checkpoint list.
pub fn held_by_partition(held: Vec<HeldEvent>) -> BTreeMap<(InputTopic, i32), HeldEvent> {
    held.into_iter()
        .map(|h| ((h.meta.topic, h.meta.partition), h))
        .collect()
}
