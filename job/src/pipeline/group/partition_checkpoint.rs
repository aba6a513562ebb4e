//! Per-partition checkpoints of a group run: the shard side's state of one partition
//! number (its [`Follower`]: open windows, features, pending labels, the closes it has
//! applied; its cleaner's dedupe state; its events held for a clock-skew decision; the
//! number of drift arrivals it sent) with the offsets of clicks `p` and orders `p` it was
//! read to. A new owner of the partition loads the newest one and goes on from there
//! instead of replaying the partition from its start (docs/scale-out.md, "Checkpoints per
//! partition").
//!
//! Files: `<checkpoint dir>/shards/<group id>/<p>/checkpoint-<n>.ckpt`, in the format of
//! [`shopstream_sinks::checkpoint`] (atomic, checksummed, the newest `checkpoint.keep`
//! kept), `n` the number of closes the state has applied. A checkpoint is written only
//! once everything it covers has reached the coordinator (the progress, drift arrivals
//! and answers sent before it), so a new owner never needs to send any of that again.

use shopstream_sinks::storage::Storage;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use shopstream_config::Config;
use shopstream_features::Follower;
use shopstream_ingest::clean::Cleaner;
use shopstream_ingest::event::InputTopic;
use shopstream_kafka::source::AssignmentStarts;

use super::super::PipelineError;
use super::super::checkpoint::{CheckpointPlan, warn_skipped, write_timed};
use crate::recovery::HeldEvent;

/// Version of the state inside a partition checkpoint (the file format has its own). 3
/// since shards join their shard set's inventory template instead of holding a copy.
pub(super) const STATE_VERSION: u32 = 3;

/// Versions this build reads: version 2's shard holds a full copy of the inventory, which
/// reads correctly as the rows it changed (the same as the template it joins).
const READS_STATE_VERSIONS: [u32; 2] = [2, STATE_VERSION];

/// Directory of the partition checkpoints under the checkpoint directory.
const SHARDS_DIR: &str = "shards";

/// A partition number's state, borrowed for writing.
#[derive(Serialize)]
pub(super) struct PartitionStateRef<'a> {
    pub(super) version: u32,
    pub(super) partition: i32,
    pub(super) follower: &'a Follower,
    pub(super) cleaner: &'a Cleaner,
    pub(super) held: Vec<HeldEvent>,
    pub(super) arrivals: u64,
    pub(super) positions: &'a BTreeMap<InputTopic, i64>,
}

/// A partition number's state, as read back (the fields of [`PartitionStateRef`]).
#[derive(Deserialize)]
pub(super) struct PartitionState {
    version: u32,
    partition: i32,
    /// Its windows and features, and the closes it applied (`next_seq`).
    pub(super) follower: Follower,
    /// Its dedupe and skew state.
    pub(super) cleaner: Cleaner,
    /// Its events held for a clock-skew decision.
    pub(super) held: Vec<HeldEvent>,
    /// Drift arrivals sent so far (the number of the next one).
    pub(super) arrivals: u64,
    /// Next offset of clicks `p` and orders `p`: what is below is in the state.
    pub(super) positions: BTreeMap<InputTopic, i64>,
}

/// Where and how often the partition checkpoints of one group are taken: the job's
/// `[checkpoint]` plan, in a directory per partition number.
#[derive(Clone)]
pub(super) struct PartitionCheckpoints {
    plan: CheckpointPlan,
}

impl PartitionCheckpoints {
    /// The plan of `[checkpoint]` for the group of `config`, or `None` when checkpoints
    /// are off.
    pub(super) fn of(config: &Config) -> Result<Option<Self>, PipelineError> {
        let group = super::model_broadcast::path_component(&config.kafka.group_id);
        Ok(CheckpointPlan::of(config, false)?.map(|plan| Self {
            plan: plan.under(&format!("{SHARDS_DIR}/{group}")),
        }))
    }

    /// At the end of a bounded run, by the lease holder that finished it: deletes the
    /// group's partition checkpoints (a bounded run's group is never run again).
    pub(super) fn remove_all(&self) {
        self.plan.remove_dir("partition");
    }

    fn dir(&self, partition: i32) -> Storage {
        self.plan.dir().child(&partition.to_string())
    }

    /// Whether a partition that has applied `applied` closes, and was last checkpointed
    /// after `last` of them (at `at`), is due for one: every `checkpoint.every_windows`
    /// closes, at most once per `checkpoint.min_interval_secs`.
    pub(super) fn due(&self, applied: u64, last: u64, at: Option<Instant>) -> bool {
        self.plan.due_at(applied, last, at)
    }

    /// Writes `state` as the checkpoint of its partition after `applied` closes, then
    /// deletes all but the newest `keep`. Encoded here, written on the blocking pool.
    pub(super) async fn write(
        &self,
        state: &PartitionStateRef<'_>,
        applied: u64,
    ) -> Result<(), PipelineError> {
        let packed = shopstream_sinks::checkpoint::encode(state)?;
        let (dir, keep) = (self.dir(state.partition), self.plan.keep());
        tokio::task::spawn_blocking(move || write_timed(&dir, applied, &packed, keep))
            .await
            .map_err(|e| PipelineError::Internal(format!("partition checkpoint task: {e}")))?
    }

    /// [`PartitionCheckpoints::load_now`] on the blocking pool.
    pub(super) async fn load(&self, partition: i32) -> Option<PartitionState> {
        let this = self.clone();
        match tokio::task::spawn_blocking(move || this.load_now(partition)).await {
            Ok(state) => state,
            Err(e) => {
                tracing::warn!(partition, error = %e, "loading a partition checkpoint failed; replaying the partition from its start");
                None
            }
        }
    }

    /// The newest usable checkpoint of `partition`, if any (blocking: it reads the file).
    /// One that cannot be used is reported and the partition replayed from its start
    /// instead (the same outputs, more work).
    fn load_now(&self, partition: i32) -> Option<PartitionState> {
        let loaded = match shopstream_sinks::checkpoint::load_latest::<PartitionState>(
            &self.dir(partition),
        ) {
            Ok(Some(loaded)) => loaded,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(partition, error = %e, "no usable partition checkpoint; replaying the partition from its start");
                return None;
            }
        };
        warn_skipped("partition checkpoint", &loaded.skipped);
        let state = loaded.state;
        if !READS_STATE_VERSIONS.contains(&state.version) || state.partition != partition {
            tracing::warn!(
                path = %loaded.path.display(),
                version = state.version,
                partition = state.partition,
                "a partition checkpoint of another version or partition; replaying the partition from its start"
            );
            return None;
        }
        tracing::info!(
            path = %loaded.path.display(),
            partition,
            closes_applied = loaded.seq,
            positions = ?state.positions,
            "resuming a partition from its checkpoint"
        );
        Some(state)
    }
}

/// The partition checkpoints the source started newly assigned partition numbers from
/// ([`AssignmentStarts`]), kept in the order it asked, for the shard side to resume each
/// assignment from the very checkpoint its reading started at: a newer one, written by an
/// earlier owner in the meantime, may hold fewer messages of one topic.
pub(super) struct ResumePoints {
    /// The partition checkpoints (written and loaded through it).
    pub(super) checkpoints: PartitionCheckpoints,
    /// Per partition number, one entry per assignment not yet taken (`None`: no
    /// checkpoint, read from the start).
    loaded: Mutex<BTreeMap<i32, VecDeque<Option<PartitionState>>>>,
}

impl ResumePoints {
    pub(super) fn new(checkpoints: PartitionCheckpoints) -> Self {
        Self {
            checkpoints,
            loaded: Mutex::default(),
        }
    }

    /// The checkpoint the source started the oldest assignment of `partition` not yet
    /// taken from: `Some(None)` when it had none, `None` when the source did not ask (it
    /// then read from the start, and any checkpoint will do).
    pub(super) fn take(&self, partition: i32) -> Option<Option<PartitionState>> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        loaded.get_mut(&partition).and_then(VecDeque::pop_front)
    }
}

impl AssignmentStarts for ResumePoints {
    fn starts(&self, partition: i32) -> BTreeMap<InputTopic, i64> {
        let state = self.checkpoints.load_now(partition);
        let starts = state
            .as_ref()
            .map(|s| s.positions.clone())
            .unwrap_or_default();
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        loaded.entry(partition).or_default().push_back(state);
        starts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shopstream_features::{FeaturePipeline, ShardSet};

    fn written(checkpoints: &PartitionCheckpoints, applied: u64, clicks_at: i64) {
        let config = Config::default();
        let (coordinator, _) = FeaturePipeline::new(&config.pipeline).into_parts();
        let set = ShardSet::new(&coordinator, BTreeMap::new(), |_, q| q == 0);
        let follower = Follower::new(set, applied, true);
        let cleaner = Cleaner::new(super::super::super::shard::clean_limits(&config));
        let positions = BTreeMap::from([(InputTopic::Clicks, clicks_at)]);
        let state = PartitionStateRef {
            version: STATE_VERSION,
            partition: 0,
            follower: &follower,
            cleaner: &cleaner,
            held: Vec::new(),
            arrivals: 0,
            positions: &positions,
        };
        let packed = shopstream_sinks::checkpoint::encode(&state).expect("encode");
        write_timed(&checkpoints.dir(0), applied, &packed, 4).expect("write");
    }

    /// Guards "no gap between where the source starts and what the stage holds": each
    /// assignment resumes from the checkpoint the source started it at, even when an
    /// earlier owner has written a newer one since (which may hold fewer messages).
    #[test]
    fn each_assignment_resumes_from_the_checkpoint_its_reading_started_at() {
        let root = tempfile::tempdir().expect("temp dir");
        let mut config = Config::default();
        config.store.path = root.path().to_path_buf();
        let checkpoints = PartitionCheckpoints::of(&config)
            .expect("plan")
            .expect("checkpoints on");
        let points = ResumePoints::new(checkpoints.clone());
        // Not asked: any checkpoint will do.
        assert!(points.take(0).is_none());
        // No checkpoint yet: the source reads from the start.
        assert!(points.starts(0).is_empty());
        written(&checkpoints, 2, 700);
        assert_eq!(
            points.starts(0),
            BTreeMap::from([(InputTopic::Clicks, 700)])
        );
        // A newer checkpoint by closes applied, further back in clicks.
        written(&checkpoints, 3, 300);
        assert_eq!(
            points.starts(0),
            BTreeMap::from([(InputTopic::Clicks, 300)])
        );
        let positions = |taken: Option<Option<PartitionState>>| {
            taken
                .expect("asked")
                .map(|s| s.positions.get(&InputTopic::Clicks).copied())
        };
        assert_eq!(positions(points.take(0)), None);
        assert_eq!(positions(points.take(0)), Some(Some(700)));
        assert_eq!(positions(points.take(0)), Some(Some(300)));
        assert!(points.take(0).is_none());
    }
}
