//! Replays: rebuilding the store for a historical range from the input topics.

use std::collections::BTreeSet;

use shopstream_config::Config;
use shopstream_ingest::event::InputTopic;

/// A replay: the input topics are read from their beginning by a throw-away consumer
/// group (nothing is committed, nothing is published), every event before `to_ms` is
/// processed exactly as the live job processes it (features, labels, model training), and
/// only the windows starting in `[from_ms, to_ms)` are written to the store. Reading from
/// the beginning is what makes the files byte-identical to the live run's: the model and
/// the rolling features of a window depend on everything before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayRange {
    /// First window start written, epoch ms (inclusive).
    pub from_ms: i64,
    /// End of the range, epoch ms (exclusive).
    pub to_ms: i64,
    /// Events before this time are skipped (warm-up bound). `None`: process everything
    /// from the beginning of the topics (the default, needed for identical files).
    pub warmup_from_ms: Option<i64>,
}

impl ReplayRange {
    /// Whether the window starting at `start_ms` is written.
    pub(super) fn writes(&self, start_ms: i64) -> bool {
        (self.from_ms..self.to_ms).contains(&start_ms)
    }
}

/// Where a replay stands.
pub(super) struct ReplayState {
    pub(super) range: ReplayRange,
    /// A partition is finished once it delivers an event at or after this time: by then
    /// every window before `range.to_ms` has closed with matured labels.
    pub(super) stop_ms: i64,
    /// Partitions finished.
    pub(super) done: BTreeSet<(InputTopic, i32)>,
}

/// What a replay event is to the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReplayStep {
    /// Process it.
    Process,
    /// Drop it silently: its partition is finished.
    Ignore,
    /// Skip it and count it as skipped (before the warm-up bound).
    Skip,
    /// Skip it and count it; its partition is finished from now on.
    Finish,
}

impl ReplayState {
    /// The state at the start of a replay of `range`.
    pub(super) fn new(range: ReplayRange, config: &Config) -> Self {
        Self {
            range,
            stop_ms: range.to_ms
                + config.pipeline.allowed_lateness_ms()
                + 2 * config.pipeline.window_ms(),
            done: BTreeSet::new(),
        }
    }

    /// What to do with an event at `ts` on `partition`.
    pub(super) fn step(&mut self, partition: (InputTopic, i32), ts: i64) -> ReplayStep {
        if self.done.contains(&partition) {
            return ReplayStep::Ignore;
        }
        if self.range.warmup_from_ms.is_some_and(|from| ts < from) {
            return ReplayStep::Skip;
        }
        if ts >= self.stop_ms {
            self.done.insert(partition);
            return ReplayStep::Finish;
        }
        ReplayStep::Process
    }
}
