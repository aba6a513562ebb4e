//! Checkpoints of the job: when they are taken, what goes in (the shard's cleaner,
//! windows and held events, the global stage's model and drift monitors, the input
//! positions), and how a restart takes them over. The format is [`crate::recovery`]'s.

use shopstream_config::Config;
use shopstream_drift::stage::DriftStage;
use shopstream_sinks::storage::Storage;

use super::PipelineError;
use crate::recovery::READS_STATE_VERSIONS;

/// Where and how often checkpoints are taken. The source loop keeps a copy to decide when
/// one is due; the global stage's copy writes them.
#[derive(Clone)]
pub(super) struct CheckpointPlan {
    /// The checkpoint directory: local, or below a bucket prefix.
    dir: Storage,
    every: u64,
    min_interval: std::time::Duration,
    keep: usize,
    /// When a checkpoint was last asked for (the source loop's copy decides from it
    /// whether the next one is due).
    last: Option<std::time::Instant>,
}

/// The job state of a checkpoint, as read back.
pub(super) type JobState = crate::recovery::JobState<DriftStage>;

impl CheckpointPlan {
    /// The plan of `[checkpoint]`, or `None` when checkpoints are off (and in replays,
    /// which never checkpoint). The directory may be a bucket URL (by default it is
    /// `_checkpoints` below `store.path`); it is reached with `store.options`.
    pub(super) fn of(config: &Config, replay: bool) -> Result<Option<Self>, PipelineError> {
        if !config.checkpoint.enabled || replay {
            return Ok(None);
        }
        let dir = Storage::open(
            &config.checkpoint.dir_for(&config.store.path),
            &config.store.options,
            std::time::Duration::from_secs(config.store.retry_timeout_secs),
        )
        .map_err(shopstream_sinks::checkpoint::CheckpointError::from)?;
        Ok(Some(Self {
            dir,
            every: config.checkpoint.every_windows.max(1),
            min_interval: std::time::Duration::from_secs(config.checkpoint.min_interval_secs),
            keep: config.checkpoint.keep.max(1),
            last: None,
        }))
    }

    /// The same plan writing into `sub` (`/`-separated) under its directory (a group
    /// coordinator's own checkpoints).
    pub(super) fn under(mut self, sub: &str) -> Self {
        self.dir = self.dir.child(sub);
        self
    }

    /// Where the checkpoints go.
    pub(super) fn dir(&self) -> &Storage {
        &self.dir
    }

    /// How many checkpoints are kept.
    pub(super) fn keep(&self) -> usize {
        self.keep
    }

    /// Whether a checkpoint is due with `windows_total` windows closed, the last one taken
    /// at `last_windows`: `every_windows` windows later, unless one was written less than
    /// `min_interval_secs` ago (for closes that come several windows at a time).
    pub(super) fn due_since(&self, windows_total: u64, last_windows: u64) -> bool {
        self.due_at(windows_total, last_windows, self.last)
    }

    /// Whether a checkpoint is due after `done` windows (or closes), the last one taken
    /// after `last_done` of them at `at`: `every_windows` later, and not within
    /// `min_interval_secs` of the last (checkpoints that keep their own time, as each
    /// partition of a group run does).
    pub(super) fn due_at(&self, done: u64, last_done: u64, at: Option<std::time::Instant>) -> bool {
        done >= last_done.saturating_add(self.every)
            && at.is_none_or(|at| at.elapsed() >= self.min_interval)
    }

    /// Deletes the directory with every checkpoint in it (the `what` checkpoints of a
    /// finished run), reporting a failure other than its being gone already.
    pub(super) fn remove_dir(&self, what: &str) {
        if let Err(e) = self.dir.delete_all() {
            tracing::warn!(
                error = %e,
                dir = %self.dir.root_display(),
                "could not delete the {what} checkpoints of a finished run"
            );
        }
    }

    /// Whether the `windows_total`-th closed window calls for a checkpoint (every
    /// `every_windows`, unless one was written less than `min_interval_secs` ago).
    pub(super) fn due_after(&self, windows_total: u64) -> bool {
        let recent = self.last.is_some_and(|at| at.elapsed() < self.min_interval);
        windows_total.is_multiple_of(self.every) && !recent
    }

    /// Windows from the `windows_total`-th closed window to the next one a checkpoint may
    /// be due after.
    pub(super) fn windows_until_due(&self, windows_total: u64) -> usize {
        let left = self.every - windows_total % self.every;
        usize::try_from(left).unwrap_or(usize::MAX)
    }

    /// Notes that a checkpoint was asked for now (the copy that decides when one is due).
    pub(super) fn requested(&mut self) {
        self.last = Some(std::time::Instant::now());
    }

    /// The write of an encoded state as the checkpoint of the `windows_total`-th window
    /// (named after it, so a restarted job's checkpoint of the same point replaces, rather
    /// than sits beside, the one taken before the crash), keeping the last `keep`; to run
    /// on the blocking pool.
    pub(super) fn write_job(
        &self,
        packed: Vec<u8>,
        windows_total: u64,
    ) -> impl FnOnce() -> Result<(), PipelineError> + Send + 'static {
        let (dir, keep) = (self.dir.clone(), self.keep);
        move || {
            write_timed(&dir, windows_total, &packed, keep)?;
            shopstream_sinks::failpoint::hit("checkpoint.written");
            Ok(())
        }
    }

    /// Loads the newest usable checkpoint, saying which one and what was skipped.
    pub(super) fn restore(&self) -> Result<Option<JobState>, PipelineError> {
        let Some(loaded) = shopstream_sinks::checkpoint::load_latest::<JobState>(&self.dir)? else {
            tracing::info!(dir = %self.dir.root_display(), "no checkpoint: starting with empty state");
            return Ok(None);
        };
        warn_skipped("checkpoint", &loaded.skipped);
        if !READS_STATE_VERSIONS.contains(&loaded.state.version) {
            return Err(PipelineError::Internal(format!(
                "checkpoint {} holds state version {}, this build reads {:?}; move {} away to start from the committed offsets",
                loaded.path.display(),
                loaded.state.version,
                READS_STATE_VERSIONS,
                self.dir.root_display()
            )));
        }
        tracing::info!(
            path = %loaded.path.display(),
            windows_closed = loaded.state.windows_closed,
            positions = ?crate::recovery::describe(&loaded.state.positions),
            "resuming from checkpoint"
        );
        Ok(Some(loaded.state))
    }
}

/// Reports each `kind` checkpoint (the job's, a partition's, the coordinator's) that a
/// load passed over, and why.
pub(super) fn warn_skipped(kind: &str, skipped: &[shopstream_sinks::checkpoint::Skipped]) {
    for skipped in skipped {
        tracing::warn!(
            path = %skipped.path.display(),
            reason = %skipped.reason,
            "{kind} unusable; falling back to the one before"
        );
    }
}

/// Writes checkpoint `seq` of an encoded state into `dir`, keeping the newest `keep`, and
/// logs where, how large and how long it took (the job's and the group's partition
/// checkpoints alike; blocking).
pub(super) fn write_timed(
    dir: &Storage,
    seq: u64,
    packed: &[u8],
    keep: usize,
) -> Result<(), PipelineError> {
    let started = std::time::Instant::now();
    let (path, bytes) = shopstream_sinks::checkpoint::write_encoded(dir, seq, packed, keep)?;
    tracing::debug!(
        path = %path.display(),
        bytes,
        millis = started.elapsed().as_millis() as u64,
        "checkpoint written"
    );
    Ok(())
}
