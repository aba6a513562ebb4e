//! The source loop: takes the source's messages one by one, hands events to the shard
//! stage, carries out its effects through the outputs and the global stage, closes the
//! windows the watermark passed, and takes checkpoints when they are due.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;

use shopstream_config::{Config, TopicsConfig};
use shopstream_features::WindowOutput;
use shopstream_ingest::decode::Rejection;
use shopstream_ingest::event::InputTopic;
use shopstream_kafka::client::input_topic_name;
use shopstream_kafka::read_progress::ReadProgress;
use shopstream_kafka::source::{Positions, RecordMeta, SharedLag, SourceMessage};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::PipelineError;
use super::checkpoint::CheckpointPlan;
use super::global_worker::{GlobalHandle, ShardParts};
use super::outputs::Outputs;
use super::replay::{ReplayState, ReplayStep};
use super::shard::{Consumed, Effect};
use super::shard_workers::{FromShard, ToShard, WorkerSnapshot};
use super::stages::{self, Stages};
use super::telemetry::{JobView, Reporter};
use crate::summary::RunSummary;

/// What the loop waits for next.
enum Next {
    Shutdown,
    IdleCheck,
    Source(Option<SourceMessage>),
    Worker(Option<(usize, FromShard)>),
}

/// Whether the processor goes on after a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

/// Counts one more under `key`, allocating the key only the first time it is seen
/// (these counters are bumped for every consumed message).
pub(super) fn bump(counts: &mut BTreeMap<String, u64>, key: &str) {
    bump_by(counts, key, 1);
}

/// Counts `n` more under `key` (see [`bump`]).
pub(super) fn bump_by(counts: &mut BTreeMap<String, u64>, key: &str, n: u64) {
    match counts.get_mut(key) {
        Some(count) => *count += n,
        None => {
            counts.insert(key.to_string(), n);
        }
    }
}

/// The job between its source and its outputs.
pub(super) struct Processor<'a> {
    pub(super) config: &'a Config,
    /// The partition-scoped stages: on this task, or the shards on worker threads.
    pub(super) stages: Stages,
    /// The global stage, inline or on its own thread.
    pub(super) global: GlobalHandle,
    /// Predictions and dead letters.
    pub(super) outputs: Outputs,
    /// When checkpoints are due (off in replays and when disabled); the global stage
    /// writes them.
    pub(super) checkpoints: Option<CheckpointPlan>,
    /// Erasures recorded in the store: applied to the keyed state at each checkpoint.
    pub(super) erasures: super::erasures::Erasures,
    /// Consumer lag per partition, from the source.
    pub(super) consumer_lag: SharedLag,
    /// How far the source read each partition: a silent partition is only idle once
    /// nothing of it waits to be read.
    pub(super) read_progress: ReadProgress,
    /// Next offset to read per input partition.
    pub(super) positions: Positions,
    /// Windows closed since the job's first start (checkpoints carry it on).
    pub(super) windows_total: u64,
    /// A checkpoint is due once the current message is handled.
    pub(super) checkpoint_due: bool,
    /// Bounded mode: partitions release the watermark at their end, not by idleness.
    pub(super) bounded: bool,
    /// Replay mode: the range and its progress.
    pub(super) replay: Option<ReplayState>,
    /// Input partitions assigned to this instance now.
    pub(super) owned: BTreeSet<(InputTopic, i32)>,
    /// Live mode: when each assigned partition last delivered something.
    pub(super) last_seen: BTreeMap<(InputTopic, i32), tokio::time::Instant>,
    pub(super) summary: RunSummary,
    pub(super) reporter: Reporter,
    /// The shard's effects of the message at hand (kept to reuse the allocation).
    pub(super) effects: Vec<Effect>,
    /// Drift arrivals of the effects at hand (kept to reuse the allocation).
    pub(super) arrivals: Vec<shopstream_drift::stage::Arrival>,
    /// Partitions whose end a shard worker has not confirmed yet, and whether they were
    /// assigned again meanwhile.
    pub(super) ending: BTreeMap<(InputTopic, i32), bool>,
}

impl Processor<'_> {
    /// Handles messages until the input ends, `shutdown` completes or `cancel` fires; then
    /// either checkpoints the open state (a job that checkpoints) or flushes it as final.
    pub(super) async fn process(
        &mut self,
        mut rx: mpsc::Receiver<SourceMessage>,
        cancel: &CancellationToken,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), PipelineError> {
        tokio::pin!(shutdown);
        let idle_timeout =
            std::time::Duration::from_secs(self.config.pipeline.idle_partition_timeout_secs);
        let mut idle_check = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            let split = self.stages.workers().is_some();
            let next = {
                let workers = self.stages.workers();
                // In this order: the workers' answers come before more input, so what is in
                // flight stays within their queues (their answers travel unbounded).
                tokio::select! {
                    biased;
                    _ = &mut shutdown => Next::Shutdown,
                    _ = cancel.cancelled() => Next::Source(None),
                    reply = async { match workers { Some(w) => w.recv().await, None => None } }, if split => {
                        Next::Worker(reply)
                    }
                    _ = idle_check.tick(), if !self.bounded => Next::IdleCheck,
                    m = rx.recv() => Next::Source(m),
                }
            };
            let result = match next {
                Next::Shutdown => {
                    tracing::info!("shutdown requested; draining");
                    break;
                }
                Next::IdleCheck => {
                    self.release_idle(idle_timeout).await?;
                    // Also shows what the global stage finished since the last message.
                    self.publish_progress(rx.is_empty());
                    continue;
                }
                Next::Worker(None) => {
                    return Err(PipelineError::Internal(
                        "every shard worker stopped while the job ran".into(),
                    ));
                }
                Next::Worker(Some((_, reply))) => {
                    self.on_reply(reply).await?;
                    self.close_ready().await?;
                    Flow::Continue
                }
                Next::Source(None) => break,
                Next::Source(Some(message)) => self.handle(message).await?,
            };
            shopstream_sinks::failpoint::hit("pipeline.message_handled");
            if self.checkpoint_due {
                self.checkpoint().await?;
            }
            self.publish_progress(rx.is_empty());
            if result == Flow::Stop {
                break;
            }
        }
        if self.checkpoints.is_some() && !self.summary.reached_end && self.replay.is_none() {
            // Shutdown of a job that checkpoints: the open windows and pending labels go
            // into the checkpoint and continue after the restart; flushing them as final
            // would write immature labels the restart could not take back. Events held for
            // a clock-skew decision are accepted now, as at any end of input: left held,
            // the windows after them could close before the restart decides.
            self.resolve_all_held(None).await?;
            self.outputs.flush().await?;
            return self.checkpoint().await;
        }
        self.resolve_all_held(None).await?;
        // Every event handed to a worker is reported: what they allow closes first.
        self.close_ready().await?;
        // Input exhausted or shutdown: emit what remains. Until checkpoints exist, pending
        // state is flushed as final rather than lost.
        self.finish().await?;
        // Nothing more will be written this run: merge what remains.
        self.global.compact_all().await?;
        self.outputs.flush().await?;
        if self.checkpoints.is_some() {
            // The end of a bounded run: what follows continues after everything above.
            self.checkpoint().await?;
        }
        Ok(())
    }

    /// Takes over a checkpoint's counters and positions (the stages took the state).
    pub(super) fn resume(&mut self, windows_closed: u64, positions: Positions) {
        self.windows_total = windows_closed;
        self.positions = positions;
    }

    /// Checkpoints everything consumed so far; the global stage writes it with its own
    /// state once it has carried out every window before, then commits those offsets.
    /// Callers make sure the outputs that depend on them are durable first: windows are
    /// written before the checkpoint, and the producer is flushed here.
    pub(super) async fn checkpoint(&mut self) -> Result<(), PipelineError> {
        self.checkpoint_due = false;
        let Some(plan) = self.checkpoints.as_mut() else {
            return Ok(());
        };
        plan.requested();
        // Users erased since the last checkpoint leave the state before it is written.
        let erased = Arc::new(self.erasures.take_new()?);
        if let Stages::Whole(stage) = &mut self.stages {
            super::erasures::report(&erased, stage.windowing_mut().forget_users(&erased));
        }
        // The workers' copies come after their batches before them, whose outputs are then
        // in flight too.
        let snapshots: Vec<WorkerSnapshot> = self
            .ask_workers(|| ToShard::Snapshot(Arc::clone(&erased)))
            .await?
            .into_iter()
            .filter_map(|answer| match answer {
                FromShard::Snapshot(snapshot) => Some(*snapshot),
                _ => None,
            })
            .collect();
        // Every prediction and dead letter so far acknowledged: a restart from here does
        // not need to publish them again.
        self.outputs.flush().await?;
        let (features, cleaner, held) = match &self.stages {
            Stages::Whole(stage) => (
                Cow::Borrowed(stage.features()),
                Cow::Borrowed(stage.cleaner()),
                stage.held_events(),
            ),
            Stages::Split { coordinator, .. } => {
                let (features, cleaner, held) = stages::assemble(coordinator, snapshots);
                (Cow::Owned(features), Cow::Owned(cleaner), held)
            }
        };
        let shard = ShardParts {
            windows_closed: self.windows_total,
            positions: Cow::Borrowed(&self.positions),
            features,
            cleaner,
            held,
        };
        self.global.checkpoint(shard).await
    }

    /// Publishes progress and telemetry every 1024 consumed messages and whenever the
    /// input is drained.
    fn publish_progress(&mut self, drained: bool) {
        let consumed: u64 = self.summary.consumed.values().sum();
        if self.reporter.due(drained, consumed) {
            let view = self.view();
            self.reporter.publish(
                consumed,
                view,
                &self.consumer_lag,
                self.config.http.ready_max_lag,
            );
        }
    }

    /// The run summary as of now.
    pub(super) fn snapshot(&self) -> RunSummary {
        self.reporter.snapshot(&self.view())
    }

    /// What the reporter sees of the job now.
    fn view(&self) -> JobView<'_> {
        JobView {
            summary: &self.summary,
            global: self.global.view(),
            serving_model_version: self.global.serving_version(),
            owned_partitions: self.owned.iter().copied().collect(),
            global_stage_threads: self.global.mode(),
            predictions_delivered: self.outputs.predictions_delivered(),
            dead_letters_delivered: self.outputs.dead_letters_delivered(),
            watermark_ms: self.stages.watermark(),
            pending_examples: self.stages.pending_examples(),
        }
    }

    /// Handles one message from the source.
    async fn handle(&mut self, message: SourceMessage) -> Result<Flow, PipelineError> {
        match message {
            SourceMessage::Assigned(partitions) => {
                for (topic, partition) in partitions {
                    self.owned.insert((topic, partition));
                    self.stages.register_partition(topic, partition);
                    if let Some(reassigned) = self.ending.get_mut(&(topic, partition)) {
                        *reassigned = true;
                    }
                    self.last_seen
                        .insert((topic, partition), tokio::time::Instant::now());
                }
                shopstream_sinks::failpoint::hit("pipeline.partitions_assigned");
            }
            SourceMessage::Revoked(partitions) => {
                // Their state stays until checkpoints can hand it over; they no longer
                // hold the watermark back.
                for (topic, partition) in partitions {
                    self.owned.remove(&(topic, partition));
                    self.release(topic, partition, false).await?;
                    self.last_seen.remove(&(topic, partition));
                }
                self.close_ready().await?;
            }
            SourceMessage::PartitionEof { topic, partition } => {
                if self.bounded {
                    self.release(topic, partition, true).await?;
                }
            }
            SourceMessage::CaughtUp => {
                self.summary.reached_end = true;
                return Ok(Flow::Stop);
            }
            SourceMessage::Rejected {
                meta,
                key,
                payload,
                rejection,
            } => {
                self.consumed(meta);
                self.dead_letter(meta, key.as_deref(), &payload, &rejection)
                    .await?;
            }
            SourceMessage::Event {
                meta,
                event,
                key,
                payload,
                received,
            } => {
                let routed = self.stages.worker_for(meta.topic, meta.partition);
                self.read(meta);
                if self.replay_skips(meta, event.ts()).await? {
                    bump(&mut self.summary.consumed, meta.topic.as_str());
                    return Ok(Flow::Continue);
                }
                if routed.is_none() {
                    bump(&mut self.summary.consumed, meta.topic.as_str());
                }
                let message = Consumed {
                    meta,
                    event,
                    key,
                    payload,
                    received,
                };
                if let Some(worker) = routed
                    && let Some(workers) = self.stages.workers()
                {
                    // Its effects and report come back in a batch.
                    workers.send(worker, ToShard::Event(message)).await?;
                    return Ok(Flow::Continue);
                }
                let mut effects = std::mem::take(&mut self.effects);
                let shard = self.stages.local().on_event(
                    message,
                    self.global.serving_model(),
                    &mut effects,
                );
                let applied = self.apply(&mut effects).await;
                self.effects = effects;
                shard?;
                applied?;
                self.close_ready().await?;
            }
        }
        Ok(Flow::Continue)
    }

    /// Carries out the shard's effects, in the order it produced them.
    pub(super) async fn apply(&mut self, effects: &mut Vec<Effect>) -> Result<(), PipelineError> {
        let mut arrivals = std::mem::take(&mut self.arrivals);
        let applied = self
            .outputs
            .apply_effects(
                &mut self.summary,
                effects,
                Some(&mut self.reporter.latency),
                &mut arrivals,
            )
            .await;
        let mut handed = Ok(());
        for arrival in arrivals.drain(..) {
            if handed.is_ok() {
                handed = self.global.arrival(arrival).await;
            }
        }
        self.arrivals = arrivals;
        applied.and(handed)
    }

    /// Decides the held events of one partition (`None`: of all) and carries out what
    /// that produced.
    pub(super) async fn resolve_all_held(
        &mut self,
        only: Option<(InputTopic, i32)>,
    ) -> Result<(), PipelineError> {
        let mut effects = std::mem::take(&mut self.effects);
        let shard =
            self.stages
                .local()
                .resolve_all_held(only, self.global.serving_model(), &mut effects);
        let applied = self.apply(&mut effects).await;
        self.effects = effects;
        shard?;
        applied?;
        if only.is_none() && self.stages.workers().is_some() {
            self.ask_workers(|| ToShard::ResolveAll).await?;
        }
        Ok(())
    }

    /// Replay: whether this event lies outside what the replay processes (before the
    /// warm-up bound, or on a partition past the end bound, which it then finishes).
    async fn replay_skips(&mut self, meta: RecordMeta, ts: i64) -> Result<bool, PipelineError> {
        let Some(replay) = &mut self.replay else {
            return Ok(false);
        };
        match replay.step((meta.topic, meta.partition), ts) {
            ReplayStep::Process => Ok(false),
            ReplayStep::Ignore => Ok(true),
            ReplayStep::Skip => {
                bump(&mut self.summary.replay_skipped, meta.topic.as_str());
                Ok(true)
            }
            ReplayStep::Finish => {
                bump(&mut self.summary.replay_skipped, meta.topic.as_str());
                self.release(meta.topic, meta.partition, true).await?;
                Ok(true)
            }
        }
    }

    /// A message was read: counted as consumed, and its position noted.
    fn consumed(&mut self, meta: RecordMeta) {
        bump(&mut self.summary.consumed, meta.topic.as_str());
        self.read(meta);
    }

    /// A message was read: its position noted (a shard worker counts it as consumed once
    /// it has handled it, so that the count never runs ahead of the effects).
    fn read(&mut self, meta: RecordMeta) {
        self.positions
            .insert((meta.topic, meta.partition), meta.offset + 1);
        if !self.bounded {
            self.last_seen
                .insert((meta.topic, meta.partition), tokio::time::Instant::now());
        }
    }

    /// Live mode: partitions silent for longer than `timeout` with nothing of them left to
    /// read (fetched to their end and all of it handled) stop holding the watermark. A
    /// silent partition whose messages still wait behind other partitions' holds it: its
    /// events would otherwise be late when they come.
    async fn release_idle(&mut self, timeout: std::time::Duration) -> Result<(), PipelineError> {
        let now = tokio::time::Instant::now();
        let idle: Vec<(InputTopic, i32)> = self
            .last_seen
            .iter()
            .filter(|(key, seen)| {
                now.duration_since(**seen) >= timeout
                    && self.read_progress.drained(
                        **key,
                        self.positions.get(*key).copied(),
                        seen.into_std(),
                    )
            })
            .map(|(key, _)| *key)
            .collect();
        if idle.is_empty() {
            return Ok(());
        }
        for (topic, partition) in idle {
            tracing::info!(
                topic = topic.as_str(),
                partition,
                silent_secs = timeout.as_secs(),
                "partition idle with nothing left to read; it no longer holds the watermark back"
            );
            self.release(topic, partition, false).await?;
            self.last_seen.remove(&(topic, partition));
        }
        Ok(())
    }

    /// Counts a refused message and sends it to the dead-letter topic.
    pub(super) async fn dead_letter(
        &mut self,
        meta: RecordMeta,
        key: Option<&[u8]>,
        payload: &[u8],
        rejection: &Rejection,
    ) -> Result<(), PipelineError> {
        self.outputs
            .counted_dead_letter(&mut self.summary, meta, key, payload, rejection)
            .await
    }

    /// Windows the watermark passed, closed and handed on.
    pub(super) async fn close_ready(&mut self) -> Result<(), PipelineError> {
        self.close_windows(false).await
    }

    /// Every open window, closed as final and handed on (end of input).
    async fn finish(&mut self) -> Result<(), PipelineError> {
        self.close_windows(true).await
    }

    /// Closes the windows the watermark passed, or at the `end_of_input` every open one,
    /// a checkpoint's span at a time: each step ends at the window a checkpoint is due
    /// after, and the checkpoint is taken there (the state is then the state as of that
    /// window). So checkpoints fall at the same windows however much of the input was
    /// read before its end. Answers to a close may carry reports that let more windows
    /// close.
    async fn close_windows(&mut self, end_of_input: bool) -> Result<(), PipelineError> {
        loop {
            let max_windows = self.windows_until_checkpoint();
            let (outputs, last) = match &mut self.stages {
                Stages::Whole(stage) if end_of_input => stage.finish_at_most(max_windows),
                Stages::Whole(stage) => {
                    let outputs = stage.close_ready_at_most(max_windows);
                    let none = outputs.is_empty();
                    (outputs, none)
                }
                Stages::Split { coordinator, .. } => {
                    let windowing = coordinator.windowing_mut();
                    let close = if end_of_input {
                        Some(windowing.finish_at_most(max_windows))
                    } else {
                        windowing.close_ready_at_most(max_windows)
                    };
                    let Some(close) = close else {
                        break;
                    };
                    let last = close.is_final();
                    (self.apply_close(close).await?, last)
                }
            };
            for output in outputs {
                self.window_closed(output).await?;
            }
            if last {
                break;
            }
            if self.checkpoint_due {
                self.checkpoint().await?;
            }
        }
        Ok(())
    }

    /// Windows from the last one closed to the next one a checkpoint may be due after
    /// (no limit without checkpoints).
    fn windows_until_checkpoint(&self) -> usize {
        self.checkpoints.as_ref().map_or(usize::MAX, |plan| {
            plan.windows_until_due(self.windows_total)
        })
    }

    /// Hands a closed window to the global stage; counts it and decides whether a
    /// checkpoint is due.
    async fn window_closed(&mut self, output: WindowOutput) -> Result<(), PipelineError> {
        self.summary.windows_closed += 1;
        self.windows_total += 1;
        if let Some(plan) = &self.checkpoints {
            self.checkpoint_due |= plan.due_after(self.windows_total);
        }
        // Replay: windows outside the range still train the model (later windows depend
        // on it) but write nothing.
        let write = self
            .replay
            .as_ref()
            .is_none_or(|r| r.range.writes(output.start));
        // Offsets go into the commit records of the files written (none outside a
        // replay's range); shared by the window's tables.
        let offsets = if write {
            commit_offsets(&self.config.topics, &self.positions)
        } else {
            BTreeMap::new()
        };
        self.global.window(output, write, Arc::new(offsets)).await
    }
}

/// `positions` as the commit records of a window's files name them: `topic/partition`.
pub(super) fn commit_offsets(
    topics: &TopicsConfig,
    positions: &Positions,
) -> BTreeMap<String, i64> {
    positions
        .iter()
        .map(|((topic, partition), offset)| {
            (
                format!("{}/{partition}", input_topic_name(topics, *topic)),
                *offset,
            )
        })
        .collect()
}
