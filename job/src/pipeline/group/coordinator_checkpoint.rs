//! Checkpoints of a group run's coordinator: the lease holder's state at a point between
//! two messages, so that the next lease holder (a takeover, or the first one when a
//! stopped live group starts again) goes on from there instead of reading the inventory
//! and `<group>.shards` from their start and writing every window again
//! (docs/scale-out.md, "The coordinator's checkpoints").
//!
//! The coordinator side hands its part ([`CoordinatorParts`]) to the global stage, in
//! order with the windows before it; the global stage waits for their store files, adds
//! the model and the drift monitors, and writes
//! `<checkpoint dir>/coordinator/<group id>/checkpoint-<windows closed>.ckpt` in the
//! job's checkpoint format (atomic, checksummed, the newest `checkpoint.keep` kept).
//!
//! A checkpoint counts only for the closes log it was taken on: a new coordinator uses
//! one only when every close it records is the close, by the same author, that the log
//! counts ([`CoordinatorParts::check_against`]). A lease holder that lost the lease
//! without noticing may still write one; its closes are not the log's, so it is passed
//! over and the run replayed from the start of the topics instead (the same bytes, more
//! work).

use crate::pipeline::PipelineError;
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use shopstream_config::Config;
use shopstream_drift::stage::DriftStage;
use shopstream_features::protocol::SequencedClose;
use shopstream_features::{Close, Coordinator, MergeQueue};
use shopstream_ingest::clean::Cleaner;
use shopstream_ingest::event::InputTopic;
use shopstream_kafka::log::LogPosition;
use shopstream_kafka::source::Positions;
use shopstream_trainer::Trainer;

use super::super::checkpoint::{CheckpointPlan, warn_skipped};
use super::super::held_rows::HeldState;
use crate::recovery::HeldEvent;

/// Version of the state inside a coordinator checkpoint (the file format has its own).
pub(in crate::pipeline) const STATE_VERSION: u32 = 3;

/// Directory of the coordinator checkpoints under the checkpoint directory.
const COORDINATOR_DIR: &str = "coordinator";

/// The coordinator side's state at a checkpoint (the global stage adds its own).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(in crate::pipeline) struct CoordinatorParts {
    /// The group it belongs to (`kafka.group_id`).
    pub(in crate::pipeline) group: String,
    /// Windows merged and handed to the global stage: names the checkpoint.
    pub(in crate::pipeline) windows_closed: u64,
    /// Where `<group>.shards` goes on (`LogReader::position`: the next offset, with the
    /// fragments of messages not complete yet): every message returned before it is in
    /// this state.
    pub(in crate::pipeline) shards: LogPosition,
    /// Next offset per inventory partition.
    pub(in crate::pipeline) positions: Positions,
    /// Watermarks, open windows' global parts, the inventory and what closes next.
    pub(in crate::pipeline) coordinator: Coordinator,
    /// The inventory's dedupe and clock-skew state.
    pub(in crate::pipeline) cleaner: Cleaner,
    /// Inventory events held for a clock-skew decision.
    pub(in crate::pipeline) held: Vec<HeldEvent>,
    /// Answers to closes not merged yet.
    pub(in crate::pipeline) queue: MergeQueue,
    /// Closes published and not merged yet.
    pub(in crate::pipeline) decided: BTreeMap<u64, Close>,
    /// The author of every close so far.
    pub(in crate::pipeline) authors: BTreeMap<u64, String>,
    /// The number of the next close.
    pub(in crate::pipeline) next_seq: u64,
    /// Drift arrivals taken per partition number (the number of the next one).
    pub(in crate::pipeline) arrivals: BTreeMap<i32, u64>,
    /// Click and order partitions reported read to their end.
    pub(in crate::pipeline) released: BTreeSet<(InputTopic, i32)>,
    /// The final close's number, once published.
    pub(in crate::pipeline) final_seq: Option<u64>,
}

impl CoordinatorParts {
    /// The state of a run's start: `coordinator` as registered, nothing read yet,
    /// answers expected from partition numbers `0..partitions`.
    pub(in crate::pipeline) fn fresh(
        config: &Config,
        coordinator: Coordinator,
        partitions: i32,
    ) -> Self {
        Self {
            group: config.kafka.group_id.clone(),
            windows_closed: 0,
            shards: LogPosition::default(),
            positions: Positions::new(),
            coordinator,
            cleaner: Cleaner::new(super::super::shard::clean_limits(config)),
            held: Vec::new(),
            queue: MergeQueue::new(0..partitions, 0),
            decided: BTreeMap::new(),
            authors: BTreeMap::new(),
            next_seq: 0,
            arrivals: BTreeMap::new(),
            released: BTreeSet::new(),
            final_seq: None,
        }
    }

    /// Why this state does not belong to the closes log whose counted closes are
    /// `adopted`, if it does not: each close it knows must be the log's close of that
    /// number by the same author, and the log must hold all of them.
    pub(in crate::pipeline) fn check_against(
        &self,
        adopted: &[(String, SequencedClose)],
    ) -> Result<(), String> {
        if (adopted.len() as u64) < self.next_seq {
            return Err(format!(
                "it follows {} closes, the closes log counts {}",
                self.next_seq,
                adopted.len()
            ));
        }
        for (seq, author) in &self.authors {
            let counted = usize::try_from(*seq).ok().and_then(|i| adopted.get(i));
            if counted.is_none_or(|(by, _)| by != author) {
                return Err(format!(
                    "its close {seq} is {author}'s, the closes log counts another's"
                ));
            }
        }
        for (seq, close) in &self.decided {
            let counted = usize::try_from(*seq).ok().and_then(|i| adopted.get(i));
            if counted.is_none_or(|(_, c)| c.close != *close) {
                return Err(format!("its close {seq} differs from the closes log's"));
            }
        }
        Ok(())
    }
}

/// A coordinator checkpoint, borrowed for writing.
#[derive(Serialize)]
pub(in crate::pipeline) struct CoordinatorStateRef<'a> {
    pub(in crate::pipeline) version: u32,
    pub(in crate::pipeline) side: &'a CoordinatorParts,
    pub(in crate::pipeline) trainer: &'a Trainer,
    pub(in crate::pipeline) drift: Option<&'a DriftStage>,
    pub(in crate::pipeline) store_rows: &'a HeldState,
}

/// A coordinator checkpoint, as read back (the fields of [`CoordinatorStateRef`]).
#[derive(Deserialize)]
pub(in crate::pipeline) struct CoordinatorState {
    version: u32,
    /// The coordinator side's part.
    pub(in crate::pipeline) side: CoordinatorParts,
    /// The model and its optimiser.
    pub(in crate::pipeline) trainer: Trainer,
    /// The drift monitors.
    pub(in crate::pipeline) drift: Option<DriftStage>,
    /// The rows of closed windows the store has not been written yet.
    pub(in crate::pipeline) store_rows: HeldState,
}

/// The plan of the coordinator checkpoints of `config`'s group, or `None` when
/// checkpoints are off.
pub(in crate::pipeline) fn plan(config: &Config) -> Result<Option<CheckpointPlan>, PipelineError> {
    let group = super::model_broadcast::path_component(&config.kafka.group_id);
    Ok(CheckpointPlan::of(config, false)?
        .map(|plan| plan.under(&format!("{COORDINATOR_DIR}/{group}"))))
}

/// At the end of a bounded run, by the lease holder that finished it: deletes the
/// group's coordinator checkpoints (a bounded run's group is never run again).
pub(super) fn remove_all(config: &Config) {
    match plan(config) {
        Ok(Some(plan)) => plan.remove_dir("coordinator"),
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(error = %e, "could not delete the coordinator checkpoints of a finished run")
        }
    }
}

/// The newest coordinator checkpoint of `config`'s group that belongs to the closes log
/// whose counted closes are `adopted`, if any: newer ones that cannot be used (unreadable,
/// another version or group, closes the log does not count) are reported and passed
/// over. Without one the run is taken over from the start of the topics (the same
/// outputs, more work). `adopted` comes back as it went in (checked on the blocking pool,
/// not copied there).
pub(super) async fn load(
    config: &Config,
    adopted: Vec<(String, SequencedClose)>,
) -> (Option<CoordinatorState>, Vec<(String, SequencedClose)>) {
    let Ok(Some(plan)) = plan(config) else {
        return (None, adopted);
    };
    let dir = plan.dir().clone();
    let group = config.kafka.group_id.clone();
    let shared = std::sync::Arc::new(adopted);
    let closes = std::sync::Arc::clone(&shared);
    let loaded = tokio::task::spawn_blocking(move || {
        shopstream_sinks::checkpoint::load_latest_accepted(&dir, |state: &CoordinatorState| {
            if state.version != STATE_VERSION {
                Err(format!(
                    "state version {}, this build reads {STATE_VERSION}",
                    state.version
                ))
            } else if state.side.group != group {
                Err(format!("it is group {}'s", state.side.group))
            } else {
                state
                    .side
                    .check_against(&closes)
                    .map_err(|why| format!("not of this closes log: {why}"))
            }
        })
    })
    .await;
    // The task has ended (its copy of the handle with it), so this is the only one left.
    let adopted = std::sync::Arc::try_unwrap(shared).unwrap_or_else(|shared| (*shared).clone());
    let replay = "taking the run over from the start of the topics";
    let loaded = match loaded {
        Ok(Ok(Some(loaded))) => loaded,
        Ok(Ok(None)) => return (None, adopted),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "no usable coordinator checkpoint; {replay}");
            return (None, adopted);
        }
        Err(e) => {
            tracing::warn!(error = %e, "loading a coordinator checkpoint failed; {replay}");
            return (None, adopted);
        }
    };
    warn_skipped("coordinator checkpoint", &loaded.skipped);
    let state = loaded.state;
    tracing::info!(
        path = %loaded.path.display(),
        windows_closed = state.side.windows_closed,
        closes = state.side.next_seq,
        shards_offset = state.side.shards.next_offset(),
        "resuming the coordinator from its checkpoint"
    );
    (Some(state), adopted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(boundary: i64) -> Close {
        Close {
            boundary: Some(boundary),
            windows: Vec::new(),
        }
    }

    fn log(entries: &[(&str, i64)]) -> Vec<(String, SequencedClose)> {
        entries
            .iter()
            .enumerate()
            .map(|(seq, (author, boundary))| {
                (
                    (*author).to_string(),
                    SequencedClose {
                        seq: seq as u64,
                        close: close(*boundary),
                    },
                )
            })
            .collect()
    }

    fn parts(authors: &[&str], decided: &[(u64, i64)]) -> CoordinatorParts {
        let config = Config::default();
        let (coordinator, _) =
            shopstream_features::FeaturePipeline::new(&config.pipeline).into_parts();
        CoordinatorParts {
            decided: decided.iter().map(|(seq, b)| (*seq, close(*b))).collect(),
            authors: (0..)
                .zip(authors)
                .map(|(seq, a)| (seq, (*a).to_string()))
                .collect(),
            next_seq: authors.len() as u64,
            ..CoordinatorParts::fresh(&config, coordinator, 1)
        }
    }

    /// Guards "a takeover goes on from the log's closes, not a stale holder's": a
    /// checkpoint of a holder that lost the lease unnoticed names closes the log does not
    /// count, and is refused.
    #[test]
    fn a_checkpoint_whose_closes_are_not_the_logs_is_refused() {
        let counted = log(&[("a", 60_000), ("a", 120_000), ("b", 180_000)]);
        // a's own checkpoint after its two closes, the second not merged yet: usable.
        assert!(
            parts(&["a", "a"], &[(1, 120_000)])
                .check_against(&counted)
                .is_ok()
        );
        // a wrote a close 2 of its own after b took over: not the log's.
        let stale = parts(&["a", "a", "a"], &[]);
        assert!(
            stale
                .check_against(&counted)
                .expect_err("refused")
                .contains("close 2")
        );
        // Same authors, another boundary for a close not merged yet.
        let differs = parts(&["a", "a"], &[(1, 999_000)]);
        assert!(
            differs
                .check_against(&counted)
                .expect_err("refused")
                .contains("differs")
        );
        // More closes than the log holds.
        let ahead = parts(&["a", "a", "b", "b"], &[]);
        assert!(
            ahead
                .check_against(&counted)
                .expect_err("refused")
                .contains("counts 3")
        );
    }
}
