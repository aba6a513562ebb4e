//! Where the global stage runs.
//!
//! [`GlobalWorker`] owns the global stage and what it writes with: a producer for alert
//! events, the checkpoint plan and the offset committer. It takes [`ToGlobal`] messages in
//! the order the shard side produced them. [`GlobalHandle`] is how the source loop reaches
//! it:
//! - inline, on the job's task (`pipeline.workers = 1`);
//! - on a thread of its own behind a bounded channel (2 or more), so that training, drift
//!   and the store writes of one window overlap the shard stage's work on the next.
//!
//! The worker sees the same messages in the same order either way, so the store, the
//! checkpoints and the model are the same. What differs is serving: on its own thread the
//! worker publishes the model after each window, and the shard predicts with the newest
//! one it has received: behind by the windows queued (at most [`QUEUED_MESSAGES`]) and by
//! at most [`PUBLISH_EVERY`] of wall time. The lag is a metric.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use shopstream_config::Config;
use shopstream_drift::stage::{Arrival, DriftGauges};
use shopstream_features::{FeaturePipeline, WindowOutput};
use shopstream_ingest::clean::Cleaner;
use shopstream_kafka::source::{OffsetCommitter, Positions};
use shopstream_trainer::{Trainer, WindowMetrics};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::PipelineError;
use super::checkpoint::CheckpointPlan;
use super::global::{GlobalStage, WindowContext};
use super::group::coordinator_checkpoint::{
    CoordinatorParts, CoordinatorStateRef, STATE_VERSION as COORDINATOR_STATE_VERSION,
};
use super::outputs::Outputs;
use crate::latency::{Histogram, WINDOW_PROCESSING_BOUNDS};
use crate::recovery::{HeldEvent, JobStateRef, STATE_VERSION};
use crate::summary::GlobalCounters;

/// Messages queued between the shard side and a global stage on its own thread. Windows
/// are the large ones; arrivals travel in batches of [`ARRIVAL_BATCH`].
pub(super) const QUEUED_MESSAGES: usize = 8;

/// The model is published for serving (and the view refreshed) after a window, at most
/// this often.
pub(super) const PUBLISH_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Drift evidence of this many admitted events goes to the global thread in one message.
const ARRIVAL_BATCH: usize = 4_096;

/// What the shard side hands the global stage, in the order it happened.
pub(super) enum ToGlobal {
    /// Admitted events' evidence for the arrival monitor.
    Arrivals(Vec<Arrival>),
    /// A closed window.
    Window {
        output: WindowOutput,
        /// Whether its tables are written (a replay writes only its range).
        write: bool,
        /// Input offsets consumed when it closed, for the commit records.
        offsets: Arc<BTreeMap<String, i64>>,
    },
    /// The shard side's state at a checkpoint: the global stage adds its own and writes it.
    Checkpoint(Box<ShardParts<'static>>),
    /// A group coordinator's state at a checkpoint: likewise.
    CoordinatorCheckpoint(Box<CoordinatorParts>),
    /// The end of a bounded run: merge whatever remains in the store.
    CompactAll,
}

/// The shard side's part of a checkpoint: borrowed when the global stage runs inline,
/// owned (`'static`) when it crosses to the global thread or comes from a restored
/// checkpoint.
pub(super) struct ShardParts<'a> {
    pub(super) windows_closed: u64,
    pub(super) positions: Cow<'a, Positions>,
    pub(super) features: Cow<'a, FeaturePipeline>,
    pub(super) cleaner: Cow<'a, Cleaner>,
    pub(super) held: Vec<HeldEvent>,
}

impl ShardParts<'_> {
    /// The same parts, owned.
    fn into_owned(self) -> ShardParts<'static> {
        ShardParts {
            windows_closed: self.windows_closed,
            positions: Cow::Owned(self.positions.into_owned()),
            features: Cow::Owned(self.features.into_owned()),
            cleaner: Cow::Owned(self.cleaner.into_owned()),
            held: self.held,
        }
    }
}

/// What the reporter shows of the global stage.
#[derive(Debug, Clone)]
pub(super) struct GlobalView {
    /// The counters the global stage moves.
    pub(super) counters: GlobalCounters,
    pub(super) model_version: u64,
    pub(super) trained_examples: u64,
    pub(super) last_window: Option<WindowMetrics>,
    pub(super) drift: DriftGauges,
    /// Time spent on each closed window (training, drift, store writes).
    pub(super) window_time: Histogram,
}

/// The global stage and what it writes with.
pub(super) struct GlobalWorker {
    pub(super) stage: GlobalStage,
    /// Alert events (its own producer: the shard side's carries predictions).
    outputs: Outputs,
    checkpoints: Option<CheckpointPlan>,
    committer: OffsetCommitter,
    /// The checkpoint being compressed and written on the blocking pool, then its
    /// positions committed; the next checkpoint and the end of the run wait for it.
    persisting: Option<tokio::task::JoinHandle<Result<(), PipelineError>>>,
    counters: GlobalCounters,
    window_time: Histogram,
}

impl GlobalWorker {
    /// A worker over `stage`, checkpointing with `checkpoints`.
    pub(super) fn new(
        config: &Config,
        stage: GlobalStage,
        checkpoints: Option<CheckpointPlan>,
        committer: OffsetCommitter,
        replay: bool,
    ) -> Result<Self, PipelineError> {
        Ok(Self {
            stage,
            outputs: Outputs::new(config, replay)?,
            checkpoints,
            committer,
            persisting: None,
            counters: GlobalCounters::default(),
            window_time: Histogram::new(WINDOW_PROCESSING_BOUNDS),
        })
    }

    /// Carries out one message.
    pub(super) async fn handle(&mut self, message: ToGlobal) -> Result<(), PipelineError> {
        match message {
            ToGlobal::Arrivals(arrivals) => {
                for arrival in &arrivals {
                    self.stage.on_arrival(arrival);
                }
                Ok(())
            }
            ToGlobal::Window {
                output,
                write,
                offsets,
            } => self.window(output, write, offsets).await,
            ToGlobal::Checkpoint(shard) => self.checkpoint(*shard).await,
            ToGlobal::CoordinatorCheckpoint(side) => self.checkpoint_coordinator(*side).await,
            ToGlobal::CompactAll => self.compact_all().await,
        }
    }

    /// One closed window, timed.
    async fn window(
        &mut self,
        output: WindowOutput,
        write: bool,
        offsets: Arc<BTreeMap<String, i64>>,
    ) -> Result<(), PipelineError> {
        let started = std::time::Instant::now();
        let cx = WindowContext {
            write,
            offsets,
            counters: &mut self.counters,
            outputs: &mut self.outputs,
        };
        let result = self.stage.window_closed(output, cx).await;
        self.window_time.record(started.elapsed());
        result
    }

    /// Takes a checkpoint of the shard side's `shard` and the global stage as they are,
    /// then commits its positions (for lag monitoring: restarts seek to the checkpoint's).
    /// The shard side flushed its outputs before; the alert events are flushed here.
    ///
    /// The state is encoded here, as it is now; compressing and writing the file, then
    /// the commit, run on the blocking pool while the next windows train. They are
    /// settled before the next checkpoint and at the end of the run, so checkpoints are
    /// written, and offsets committed, in order and only once durable.
    pub(super) async fn checkpoint(&mut self, shard: ShardParts<'_>) -> Result<(), PipelineError> {
        if !self.ready_to_checkpoint().await? {
            return Ok(());
        }
        let state = JobStateRef {
            version: STATE_VERSION,
            windows_closed: shard.windows_closed,
            positions: &shard.positions,
            features: &shard.features,
            cleaner: &shard.cleaner,
            held: shard.held,
            trainer: &self.stage.trainer,
            drift: self.stage.drift.as_ref(),
            store_rows: self.stage.held_rows(),
        };
        let packed = shopstream_sinks::checkpoint::encode(&state)?;
        let positions = shard.positions.into_owned();
        self.persist(packed, shard.windows_closed, Some(positions))
            .await
    }

    /// Takes a checkpoint of a group coordinator's `side` and the global stage as they
    /// are (group/coordinator_checkpoint.rs). Nothing is committed: the coordinator reads
    /// the inventory by assignment, outside the group, and resumes from the checkpoint's
    /// positions.
    pub(super) async fn checkpoint_coordinator(
        &mut self,
        side: CoordinatorParts,
    ) -> Result<(), PipelineError> {
        if !self.ready_to_checkpoint().await? {
            return Ok(());
        }
        let state = CoordinatorStateRef {
            version: COORDINATOR_STATE_VERSION,
            side: &side,
            trainer: &self.stage.trainer,
            drift: self.stage.drift.as_ref(),
            store_rows: self.stage.held_rows(),
        };
        let packed = shopstream_sinks::checkpoint::encode(&state)?;
        self.persist(packed, side.windows_closed, None).await
    }

    /// Makes the files of every window a checkpoint covers durable before it is, then,
    /// when checkpoints are on, the alert events sent so far; whether they are on.
    async fn ready_to_checkpoint(&mut self) -> Result<bool, PipelineError> {
        self.stage.settle_writes(&mut self.counters).await?;
        if self.checkpoints.is_none() {
            return Ok(false);
        }
        self.outputs.flush().await?;
        Ok(true)
    }

    /// Writes `packed` as checkpoint `seq` on the blocking pool once the checkpoint before
    /// it is settled, then commits `positions` (when given), while the next windows train.
    async fn persist(
        &mut self,
        packed: Vec<u8>,
        seq: u64,
        positions: Option<Positions>,
    ) -> Result<(), PipelineError> {
        let Some(plan) = &self.checkpoints else {
            return Ok(());
        };
        let write = plan.write_job(packed, seq);
        self.settle_checkpoint().await?;
        let committer = self.committer.clone();
        self.persisting = Some(tokio::spawn(async move {
            tokio::task::spawn_blocking(write)
                .await
                .map_err(|e| PipelineError::Internal(format!("checkpoint write task: {e}")))??;
            if let Some(positions) = positions {
                committer.commit(&positions).await?;
            }
            Ok(())
        }));
        Ok(())
    }

    /// Waits for the checkpoint being written, if any, and its commit.
    async fn settle_checkpoint(&mut self) -> Result<(), PipelineError> {
        let Some(task) = self.persisting.take() else {
            return Ok(());
        };
        task.await
            .map_err(|e| PipelineError::Internal(format!("checkpoint task: {e}")))??;
        self.counters.checkpoints += 1;
        Ok(())
    }

    /// Merges whatever remains in the store (end of a bounded run).
    pub(super) async fn compact_all(&mut self) -> Result<(), PipelineError> {
        self.stage.compact(None, &mut self.counters).await
    }

    /// Waits until every store write started is durable and every alert event sent is
    /// acknowledged.
    pub(super) async fn flush(&mut self) -> Result<(), PipelineError> {
        self.stage.settle_writes(&mut self.counters).await?;
        self.settle_checkpoint().await?;
        self.outputs.flush().await
    }

    /// What the reporter shows of the global stage now.
    pub(super) fn view(&self) -> GlobalView {
        let trainer = &self.stage.trainer;
        GlobalView {
            counters: self.counters.clone(),
            model_version: trainer.version(),
            trained_examples: trainer.trained_examples(),
            last_window: trainer.last_window().cloned(),
            drift: self.stage.drift_gauges(self.outputs.alerts_delivered()),
            window_time: self.window_time.clone(),
        }
    }
}

/// A global stage on a thread of its own.
pub(super) struct GlobalThread {
    /// Dropped to tell the thread no more messages come.
    tx: Option<mpsc::Sender<ToGlobal>>,
    /// Taken when joined early (after the thread failed).
    thread: Option<std::thread::JoinHandle<Result<GlobalWorker, PipelineError>>>,
    /// The newest model the thread published, for serving.
    models: watch::Receiver<Arc<Trainer>>,
    serving: Arc<Trainer>,
    /// The thread's view, refreshed after each message.
    view: Arc<Mutex<GlobalView>>,
    /// Arrivals not yet sent.
    arrivals: Vec<Arrival>,
}

/// How the source loop reaches the global stage.
pub(super) enum GlobalHandle {
    Inline(Box<GlobalWorker>),
    Thread(Box<GlobalThread>),
}

impl GlobalHandle {
    /// Runs `worker` inline (`threads` = 1) or on a thread of its own. The thread carries
    /// out messages through `runtime`; when one fails it cancels `cancel` and ends with the
    /// error, which the next send (or [`GlobalHandle::join`]) returns.
    pub(super) fn start(
        worker: GlobalWorker,
        threads: usize,
        runtime: tokio::runtime::Handle,
        cancel: CancellationToken,
    ) -> Result<Self, PipelineError> {
        if threads <= 1 {
            return Ok(Self::Inline(Box::new(worker)));
        }
        let serving = Arc::new(worker.stage.trainer.serving_copy());
        let (models_tx, models) = watch::channel(Arc::clone(&serving));
        let view = Arc::new(Mutex::new(worker.view()));
        let (tx, mut rx) = mpsc::channel::<ToGlobal>(QUEUED_MESSAGES);
        let thread_view = Arc::clone(&view);
        let thread = std::thread::Builder::new()
            .name("shopstream-global".to_string())
            .spawn(move || {
                let mut worker = worker;
                // The model (16 MB of embedding table even without the optimiser state)
                // and the view are copied after a window at most every PUBLISH_EVERY (a
                // backfill closes windows far faster than that, a live job with 60 s
                // windows far slower), and at the latest PUBLISH_EVERY after the last one.
                let mut published: Option<std::time::Instant> = None;
                let mut unpublished = false;
                let mut spare = None;
                loop {
                    let message = if unpublished {
                        let since = published.map_or(PUBLISH_EVERY, |at| at.elapsed());
                        let wait = PUBLISH_EVERY.saturating_sub(since);
                        // (The timer is made inside the runtime's context.)
                        let next = async { tokio::time::timeout(wait, rx.recv()).await };
                        match runtime.block_on(next) {
                            Ok(message) => message,
                            Err(_) => {
                                publish(&worker, &models_tx, &thread_view, &mut spare);
                                published = Some(std::time::Instant::now());
                                unpublished = false;
                                continue;
                            }
                        }
                    } else {
                        rx.blocking_recv()
                    };
                    let Some(message) = message else { break };
                    unpublished |= matches!(message, ToGlobal::Window { .. });
                    if let Err(e) = runtime.block_on(worker.handle(message)) {
                        cancel.cancel();
                        return Err(e);
                    }
                    let due = published.is_none_or(|at| at.elapsed() >= PUBLISH_EVERY);
                    if unpublished && due {
                        publish(&worker, &models_tx, &thread_view, &mut spare);
                        published = Some(std::time::Instant::now());
                        unpublished = false;
                    }
                }
                Ok(worker)
            })
            .map_err(|e| PipelineError::Internal(format!("starting the global thread: {e}")))?;
        Ok(Self::Thread(Box::new(GlobalThread {
            tx: Some(tx),
            thread: Some(thread),
            models,
            serving,
            view,
            arrivals: Vec::new(),
        })))
    }

    /// The model predictions are served with: the global stage's own (inline), or the
    /// newest one its thread published.
    pub(super) fn serving_model(&mut self) -> &Trainer {
        match self {
            Self::Inline(worker) => &worker.stage.trainer,
            Self::Thread(thread) => {
                if thread.models.has_changed().unwrap_or(false) {
                    thread.serving = Arc::clone(&thread.models.borrow_and_update());
                }
                &thread.serving
            }
        }
    }

    /// The models the global thread publishes for serving (none when it runs inline).
    pub(super) fn models(&self) -> Option<watch::Receiver<Arc<Trainer>>> {
        match self {
            Self::Inline(_) => None,
            Self::Thread(thread) => Some(thread.models.clone()),
        }
    }

    /// An admitted event's drift evidence.
    pub(super) async fn arrival(&mut self, arrival: Arrival) -> Result<(), PipelineError> {
        match self {
            Self::Inline(worker) => {
                worker.stage.on_arrival(&arrival);
                Ok(())
            }
            Self::Thread(thread) => {
                thread.arrivals.push(arrival);
                if thread.arrivals.len() >= ARRIVAL_BATCH {
                    self.send_arrivals().await?;
                }
                Ok(())
            }
        }
    }

    /// A closed window.
    pub(super) async fn window(
        &mut self,
        output: WindowOutput,
        write: bool,
        offsets: Arc<BTreeMap<String, i64>>,
    ) -> Result<(), PipelineError> {
        match self {
            Self::Inline(worker) => worker.window(output, write, offsets).await,
            Self::Thread(_) => {
                self.send_arrivals().await?;
                self.send(ToGlobal::Window {
                    output,
                    write,
                    offsets,
                })
                .await
            }
        }
    }

    /// A checkpoint of the shard side's `shard` with the global stage as it will be once
    /// every message before this one is carried out.
    pub(super) async fn checkpoint(&mut self, shard: ShardParts<'_>) -> Result<(), PipelineError> {
        match self {
            Self::Inline(worker) => worker.checkpoint(shard).await,
            Self::Thread(_) => {
                let owned = Box::new(shard.into_owned());
                self.send_arrivals().await?;
                self.send(ToGlobal::Checkpoint(owned)).await
            }
        }
    }

    /// A checkpoint of a group coordinator's `side` with the global stage as it will be
    /// once every message before this one is carried out.
    pub(super) async fn checkpoint_coordinator(
        &mut self,
        side: CoordinatorParts,
    ) -> Result<(), PipelineError> {
        match self {
            Self::Inline(worker) => worker.checkpoint_coordinator(side).await,
            Self::Thread(_) => {
                self.send_arrivals().await?;
                self.send(ToGlobal::CoordinatorCheckpoint(Box::new(side)))
                    .await
            }
        }
    }

    /// What the reporter shows of the global stage (as of its last window on a thread).
    pub(super) fn view(&self) -> GlobalView {
        match self {
            Self::Inline(worker) => worker.view(),
            Self::Thread(thread) => match thread.view.lock() {
                Ok(view) => view.clone(),
                Err(poisoned) => poisoned.into_inner().clone(),
            },
        }
    }

    /// How the global stage runs: `inline` or `own` (its own thread).
    pub(super) fn mode(&self) -> &'static str {
        match self {
            Self::Inline(_) => "inline",
            Self::Thread(_) => "own",
        }
    }

    /// Version of the model predictions are served with: the newest the thread published
    /// (shard workers take it up with their next event).
    pub(super) fn serving_version(&self) -> u64 {
        match self {
            Self::Inline(worker) => worker.stage.trainer.version(),
            Self::Thread(thread) => thread.models.borrow().version(),
        }
    }

    /// Merges whatever remains in the store, after every window sent (end of a bounded
    /// run).
    pub(super) async fn compact_all(&mut self) -> Result<(), PipelineError> {
        match self {
            Self::Inline(worker) => worker.compact_all().await,
            Self::Thread(_) => {
                self.send_arrivals().await?;
                self.send(ToGlobal::CompactAll).await
            }
        }
    }

    /// Waits for every message sent to be carried out and brings the worker back to the
    /// job's task (the thread ends), so the end of the run reaches it inline. Returns the
    /// thread's error if it failed.
    pub(super) async fn join(&mut self) -> Result<(), PipelineError> {
        // A failed send joins the thread already and returns its error.
        self.send_arrivals().await?;
        let Self::Thread(thread) = self else {
            return Ok(());
        };
        thread.tx = None;
        let worker = join(thread.thread.take()).await?;
        *self = Self::Inline(Box::new(worker));
        Ok(())
    }

    /// The worker, once it runs inline (always with one worker thread; after
    /// [`GlobalHandle::join`] otherwise).
    pub(super) fn inline(&mut self) -> Option<&mut GlobalWorker> {
        match self {
            Self::Inline(worker) => Some(worker),
            Self::Thread(_) => None,
        }
    }

    async fn send_arrivals(&mut self) -> Result<(), PipelineError> {
        let Self::Thread(thread) = self else {
            return Ok(());
        };
        if thread.arrivals.is_empty() {
            return Ok(());
        }
        let arrivals = std::mem::take(&mut thread.arrivals);
        self.send(ToGlobal::Arrivals(arrivals)).await
    }

    async fn send(&mut self, message: ToGlobal) -> Result<(), PipelineError> {
        let Self::Thread(thread) = self else {
            return Err(PipelineError::Internal(
                "a message for the global thread, which does not run".into(),
            ));
        };
        if let Some(tx) = &thread.tx
            && tx.send(message).await.is_ok()
        {
            return Ok(());
        }
        // The thread ended early, so it failed: its error is the one to report.
        match join(thread.thread.take()).await {
            Err(e) => Err(e),
            Ok(_) => Err(PipelineError::Internal(
                "the global thread ended while the job still ran".into(),
            )),
        }
    }
}

/// Publishes the worker's model for serving (when it changed) and its view. The copy it
/// replaces is kept as `spare`: once serving has moved on from it (by the next publish,
/// a second later, unless serving was idle), the next copy is made into its memory.
fn publish(
    worker: &GlobalWorker,
    models: &watch::Sender<Arc<Trainer>>,
    view: &Mutex<GlobalView>,
    spare: &mut Option<Arc<Trainer>>,
) {
    let trainer = &worker.stage.trainer;
    if models.borrow().version() != trainer.version() {
        let copy = match spare.take().and_then(|old| Arc::try_unwrap(old).ok()) {
            Some(old) => trainer.serving_copy_into(old),
            None => trainer.serving_copy(),
        };
        *spare = Some(models.send_replace(Arc::new(copy)));
    }
    if let Ok(mut shown) = view.lock() {
        *shown = worker.view();
    }
}

/// Waits for the global thread to end (off the runtime's threads) and takes its result.
async fn join(
    thread: Option<std::thread::JoinHandle<Result<GlobalWorker, PipelineError>>>,
) -> Result<GlobalWorker, PipelineError> {
    let Some(thread) = thread else {
        return Err(PipelineError::Internal(
            "the global thread failed earlier in this run".into(),
        ));
    };
    tokio::task::spawn_blocking(move || thread.join())
        .await
        .map_err(|e| PipelineError::Internal(format!("global thread: {e}")))?
        .map_err(|_| PipelineError::Internal("the global thread panicked".into()))?
}
