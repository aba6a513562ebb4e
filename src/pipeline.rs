//! The long-running job: wires the Kafka source, the features stage, the trainer and the
//! sinks together.
//!
//! ```text
//! KafkaSource --(bounded channel)--> processor: predict on arrival -> shop.predictions
//!                                              window close -> train -> examples (Parquet)
//!                                              window close -> drift -> drift, alerts
//!                                                (Parquet), shop.alerts, webhook, /metrics
//!                                              rejected / late -> shop.dead-letter
//! ```
//!
//! The source runs as its own task; the processor runs in the caller's task. Both share a
//! `CancellationToken`: the shutdown future, a failure of either side, or (with
//! `stop_at_end`) the end of the input stops both. Offsets are committed only after the
//! examples they produced are durable in the store and every output message is
//! acknowledged by the broker.

use std::collections::BTreeMap;
use std::future::Future;

use shopstream_config::Config;
use shopstream_features::{FeaturePipeline, WindowOutput, examples_batch, examples_metadata};
use shopstream_ingest::clean::{Admission, CleanLimits, Cleaner, Resolution};
use shopstream_ingest::decode::{DecodeLimits, Reason, Rejection};
use shopstream_ingest::event::InputTopic;
use shopstream_kafka::client::{KafkaSetupError, ensure_topics, input_topic_name};
use shopstream_kafka::source::{
    KafkaSource, Positions, RecordMeta, SharedPositions, SourceError, SourceMessage, SourceOptions,
};
use shopstream_sinks::kafka_out::{PublishError, Publisher, dead_letter_headers};
use shopstream_sinks::store::{ParquetStore, StoreError};
use shopstream_sinks::tables;
use shopstream_trainer::Trainer;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::drift::{Arrival, DriftStage, alerts_batch, drift_batch};
use crate::http::Telemetry;
pub use crate::summary::{Quality, RunSummary};
use crate::webhook::{Webhook, WebhookOptions};
use shopstream_trainer::drift::AlertState;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Tags under which the publisher counts acknowledged messages.
const TAG_PREDICTION: &str = "prediction";
const TAG_DEAD_LETTER: &str = "dead_letter";
const TAG_ALERT: &str = "alert";

/// Why the job stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// Kafka set-up failed (unreachable broker, missing topic, bad properties).
    #[error(transparent)]
    Kafka(#[from] KafkaSetupError),
    /// The source failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// Publishing predictions or dead letters failed.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// Writing the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Writing or reading a checkpoint failed.
    #[error(transparent)]
    Checkpoint(#[from] shopstream_sinks::checkpoint::CheckpointError),
    /// Building a record batch failed (internal).
    #[error("cannot build the examples batch: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// The alert webhook could not be set up.
    #[error(transparent)]
    Webhook(#[from] crate::webhook::WebhookError),
    /// The HTTP endpoints could not listen (user: http.listen; or the port is taken).
    #[error(
        "cannot serve HTTP on {listen}: {source}; change http.listen or set http.enabled = false"
    )]
    Http {
        /// The configured address.
        listen: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A task panicked (internal).
    #[error("internal error: {0}")]
    Internal(String),
}

/// Options of one run.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Stop once all input present at start has been processed (demo, tests, backfills).
    pub stop_at_end: bool,
    /// Rebuild the store for a historical range instead of running the live job.
    pub replay: Option<ReplayRange>,
}

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
    fn writes(&self, start_ms: i64) -> bool {
        (self.from_ms..self.to_ms).contains(&start_ms)
    }
}

/// Runs the job until `shutdown` completes, a stage fails, or (with
/// [`RunOptions::stop_at_end`]) the input is exhausted.
pub async fn run(
    config: &Config,
    options: RunOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<RunSummary, PipelineError> {
    let (progress, _) = tokio::sync::watch::channel(Progress::default());
    run_observed(config, options, shutdown, progress).await
}

/// Live counters of a run, published through a `watch` channel (tests and, later, the
/// metrics endpoint read them while the job runs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Messages consumed from all input topics.
    pub consumed: u64,
    /// Impressions predicted.
    pub impressions: u64,
    /// Windows closed.
    pub windows_closed: u64,
    /// Where the HTTP endpoints listen, when enabled.
    pub http_addr: Option<std::net::SocketAddr>,
}

/// Like [`run`], publishing [`Progress`] to `progress` as the job goes.
pub async fn run_observed(
    config: &Config,
    options: RunOptions,
    shutdown: impl Future<Output = ()>,
    progress: tokio::sync::watch::Sender<Progress>,
) -> Result<RunSummary, PipelineError> {
    let started = std::time::Instant::now();
    let store = ParquetStore::open(&config.store)?;
    for table in tables::ALL {
        let removed = store.vacuum(table)?;
        if removed > 0 {
            tracing::info!(
                table,
                removed,
                "deleted uncommitted files left by an earlier run"
            );
        }
    }
    let topics = &config.topics;
    let all_topics: Vec<String> = topics
        .inputs()
        .into_iter()
        .chain(topics.outputs())
        .map(str::to_string)
        .collect();
    let partitions = ensure_topics(&config.kafka, &all_topics).await?;
    // Start positions: the checkpoint's, when there is one (a replay never uses them);
    // partitions it does not name start at the group's committed offsets.
    let checkpoints =
        (config.checkpoint.enabled && options.replay.is_none()).then(|| CheckpointPlan {
            dir: config.checkpoint.dir_for(&config.store.path),
            every: config.checkpoint.every_windows.max(1),
            min_interval: std::time::Duration::from_secs(config.checkpoint.min_interval_secs),
            keep: config.checkpoint.keep.max(1),
            last: None,
        });
    let restored = match &checkpoints {
        Some(plan) => restore(plan)?,
        None => None,
    };
    let start: SharedPositions = Default::default();
    if let Some(state) = &restored
        && let Ok(mut start) = start.lock()
    {
        start.clone_from(&state.positions);
    }
    if let Some(range) = options.replay
        && let Some(warmup_from) = range.warmup_from_ms
    {
        // Start each partition at the warm-up bound when the broker's time index can be
        // trusted; events before it are skipped either way.
        let (positions, report) =
            shopstream_kafka::seek::offsets_at(&config.kafka, topics, &partitions, warmup_from)
                .await?;
        tracing::info!(
            confirmed = report.confirmed,
            scanned = report.scanned,
            reasons = ?report.reasons,
            "replay start offsets by time"
        );
        if let Ok(mut start) = start.lock() {
            *start = positions;
        }
    }
    let replay_kafka;
    let kafka = match options.replay {
        // A group of its own that never commits: the live job's offsets stay untouched and
        // every partition is read from its beginning.
        Some(_) => {
            let mut kafka = config.kafka.clone();
            kafka.group_id = format!(
                "{}-replay-{}-{}",
                config.kafka.group_id,
                std::process::id(),
                chrono::Utc::now().timestamp_millis()
            );
            replay_kafka = kafka;
            &replay_kafka
        }
        None => &config.kafka,
    };
    let stop_at_end = options.stop_at_end || options.replay.is_some();
    let (source, committer) =
        KafkaSource::connect(kafka, topics, &partitions, start, stop_at_end).await?;
    let features = FeaturePipeline::new(&config.pipeline);

    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let (telemetry_tx, telemetry_rx) = tokio::sync::watch::channel(Arc::new(Telemetry::default()));
    let http_addr = if config.http.enabled {
        let (addr, _task) = crate::http::serve(&config.http.listen, telemetry_rx, cancel.clone())
            .await
            .map_err(|source| PipelineError::Http {
                listen: config.http.listen.clone(),
                source,
            })?;
        tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
        Some(addr)
    } else {
        None
    };
    let (tx, rx) = mpsc::channel(config.pipeline.channel_capacity);
    let source_options = SourceOptions {
        stop_at_end,
        limits: DecodeLimits {
            max_message_bytes: config.pipeline.max_message_bytes,
        },
    };
    let consumer_lag = source.lag();
    let source_cancel = cancel.clone();
    let source_task = tracker.spawn(async move {
        let result = source.run(tx, source_cancel.clone(), source_options).await;
        if result.is_err() {
            // Any task failure stops the rest.
            source_cancel.cancel();
        }
        result
    });
    tracker.close();

    let mut processor = Processor {
        config,
        store,
        features,
        cleaner: Cleaner::new(clean_limits(config)),
        checkpoints,
        consumer_lag,
        window_time: crate::latency::Histogram::new(crate::latency::WINDOW_PROCESSING_BOUNDS),
        committer: &committer,
        windows_total: 0,
        checkpoint_due: false,
        bounded: stop_at_end,
        replay: options.replay.map(|range| ReplayState {
            range,
            stop_ms: range.to_ms
                + config.pipeline.allowed_lateness_ms()
                + 2 * config.pipeline.window_ms(),
            done: Default::default(),
        }),
        last_seen: BTreeMap::new(),
        trainer: Trainer::new(&config.model),
        drift: config
            .drift
            .enabled
            .then(|| DriftStage::new(&config.drift, &config.pipeline)),
        // A replay rebuilds tables: the live run posted its alerts already.
        webhook: match WebhookOptions::from_settings(&config.drift) {
            Some(hook) if config.drift.enabled && options.replay.is_none() => {
                Some(Webhook::spawn(hook)?)
            }
            _ => None,
        },
        publisher: Publisher::new(&config.kafka)?,
        positions: Positions::new(),
        summary: RunSummary::default(),
        progress,
        telemetry: telemetry_tx,
        http_addr,
        drained_once: false,
        compacted_hours: None,
        started,
        latency: crate::latency::Histogram::new(crate::latency::PREDICTION_LATENCY_BOUNDS),
        held: BTreeMap::new(),
    };
    if let Some(state) = restored {
        processor.resume(state);
    }
    let outcome = processor.process(rx, &cancel, shutdown).await;
    if let Some(webhook) = processor.webhook.take() {
        // Queued alert events get a bounded grace period; the rest are counted as failed.
        let grace = std::time::Duration::from_millis(config.drift.webhook_timeout_ms)
            .saturating_mul(2)
            .min(std::time::Duration::from_secs(10));
        let (delivered, failures) = webhook.close(grace).await;
        if let Some(stage) = processor.drift.as_mut() {
            let g = stage.gauges_mut();
            g.webhook_delivered = delivered;
            g.webhook_failures = failures;
        }
    }
    if outcome.is_ok() {
        shopstream_sinks::failpoint::hit("pipeline.model_saving");
        if let Some(path) = &config.model.path {
            processor
                .trainer
                .save(path)
                .map_err(|e| PipelineError::Internal(e.to_string()))?;
            tracing::info!(path = %path.display(), version = processor.trainer.version(), "model written");
        }
        // Everything consumed is now reflected in durable outputs (and the checkpoint):
        // commit, while the source still serves its consumers (a stopped group member may
        // be evicted). A replay's group is throw-away: it commits nothing.
        if options.replay.is_none() {
            committer.commit(&processor.positions).await?;
        }
    }
    cancel.cancel();
    tracker.wait().await;
    let source_result = source_task
        .await
        .map_err(|e| PipelineError::Internal(format!("source task: {e}")))?;
    outcome?;
    source_result?;
    let summary = processor.snapshot();
    Ok(summary)
}

/// Counts one more under `key`, allocating the key only the first time it is seen
/// (these counters are bumped for every consumed message).
fn bump(counts: &mut BTreeMap<String, u64>, key: &str) {
    match counts.get_mut(key) {
        Some(count) => *count += 1,
        None => {
            counts.insert(key.to_string(), 1);
        }
    }
}

fn clean_limits(config: &Config) -> CleanLimits {
    CleanLimits {
        dedupe_horizon_ms: config.pipeline.dedupe_horizon_ms(),
        max_keys: config.pipeline.dedupe_max_keys,
        max_future_skew_ms: config.pipeline.max_future_skew_ms(),
    }
}

/// A consumed event on its way through the processor.
struct Consumed {
    meta: RecordMeta,
    event: shopstream_ingest::event::Event,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    received: std::time::Instant,
}

/// Whether the processor goes on after a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

/// Where a replay stands.
struct ReplayState {
    range: ReplayRange,
    /// A partition is finished once it delivers an event at or after this time: by then
    /// every window before `range.to_ms` has closed with matured labels.
    stop_ms: i64,
    /// Partitions finished.
    done: std::collections::BTreeSet<(InputTopic, i32)>,
}

/// Where and how often checkpoints are taken.
struct CheckpointPlan {
    dir: std::path::PathBuf,
    every: u64,
    min_interval: std::time::Duration,
    keep: usize,
    /// When the last checkpoint was written.
    last: Option<std::time::Instant>,
}

/// The job state of a checkpoint, as read back.
type JobState = crate::recovery::JobState<DriftStage>;

/// Loads the newest usable checkpoint, saying which one and what was skipped.
fn restore(plan: &CheckpointPlan) -> Result<Option<JobState>, PipelineError> {
    let Some(loaded) = shopstream_sinks::checkpoint::load_latest::<JobState>(&plan.dir)? else {
        tracing::info!(dir = %plan.dir.display(), "no checkpoint: starting with empty state");
        return Ok(None);
    };
    for skipped in &loaded.skipped {
        tracing::warn!(
            path = %skipped.path.display(),
            reason = %skipped.reason,
            "checkpoint unusable; falling back to the one before"
        );
    }
    if loaded.state.version != crate::recovery::STATE_VERSION {
        return Err(PipelineError::Internal(format!(
            "checkpoint {} holds state version {}, this build reads {}; move {} away to start from the committed offsets",
            loaded.path.display(),
            loaded.state.version,
            crate::recovery::STATE_VERSION,
            plan.dir.display()
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

struct Processor<'a> {
    config: &'a Config,
    store: ParquetStore,
    features: FeaturePipeline,
    cleaner: Cleaner,
    /// Checkpointing (off in replays and when disabled).
    checkpoints: Option<CheckpointPlan>,
    /// Consumer lag per partition, from the source.
    consumer_lag: shopstream_kafka::source::SharedLag,
    /// Time spent on each closed window (features, training, store writes).
    window_time: crate::latency::Histogram,
    /// Commits offsets after each checkpoint (for lag monitoring).
    committer: &'a shopstream_kafka::source::OffsetCommitter,
    /// Windows closed since the job's first start (checkpoints carry it on).
    windows_total: u64,
    /// A checkpoint is due once the current message is handled.
    checkpoint_due: bool,
    /// Bounded mode: partitions release the watermark at their end, not by idleness.
    bounded: bool,
    /// Replay mode: the range and its progress.
    replay: Option<ReplayState>,
    /// Live mode: when each assigned partition last delivered something.
    last_seen: BTreeMap<(InputTopic, i32), tokio::time::Instant>,
    trainer: Trainer,
    /// Drift monitors (`drift.enabled`).
    drift: Option<DriftStage>,
    /// Alert webhook (`drift.webhook_url`, live runs only).
    webhook: Option<Webhook>,
    publisher: Publisher,
    positions: Positions,
    summary: RunSummary,
    progress: tokio::sync::watch::Sender<Progress>,
    telemetry: tokio::sync::watch::Sender<Arc<Telemetry>>,
    http_addr: Option<std::net::SocketAddr>,
    /// The input backlog has been drained at least once.
    drained_once: bool,
    /// Hour (since the epoch) of the last `settled` bound compacted up to.
    compacted_hours: Option<i64>,
    /// When the run started.
    started: std::time::Instant,
    latency: crate::latency::Histogram,
    /// Events held for a clock-skew decision, per partition.
    held: BTreeMap<(InputTopic, i32), Consumed>,
}

impl Processor<'_> {
    async fn process(
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
            let message = tokio::select! {
                _ = &mut shutdown => {
                    tracing::info!("shutdown requested; draining");
                    break;
                }
                _ = cancel.cancelled() => break,
                _ = idle_check.tick(), if !self.bounded => {
                    self.release_idle(idle_timeout).await?;
                    continue;
                }
                m = rx.recv() => m,
            };
            let Some(message) = message else { break };
            let result = self.handle(message).await?;
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
            self.publisher.flush().await?;
            return self.checkpoint().await;
        }
        self.resolve_all_held(None).await?;
        // Input exhausted or shutdown: emit what remains. Until checkpoints exist, pending
        // state is flushed as final rather than lost.
        for output in self.features.finish() {
            self.window_closed(output).await?;
        }
        // Nothing more will be written this run: merge what remains.
        self.compact(None).await?;
        self.publisher.flush().await?;
        if self.checkpoints.is_some() {
            // The end of a bounded run: what follows continues after everything above.
            self.checkpoint().await?;
        }
        Ok(())
    }

    /// Takes over a checkpoint's state.
    fn resume(&mut self, state: JobState) {
        self.windows_total = state.windows_closed;
        self.features = state.features;
        self.cleaner = state.cleaner;
        self.trainer = state.trainer;
        if self.drift.is_some() {
            // Drift detection switched on since the checkpoint starts fresh; a restored
            // stage takes the [drift] settings the job runs with now.
            self.drift = state.drift.or_else(|| self.drift.take());
            if let Some(stage) = self.drift.as_mut() {
                stage.reconfigure(&self.config.drift);
            }
        }
        self.held = crate::recovery::held_by_partition(state.held)
            .into_iter()
            .map(|(key, h)| {
                (
                    key,
                    Consumed {
                        meta: h.meta,
                        event: h.event,
                        key: h.key,
                        payload: h.payload,
                        received: std::time::Instant::now(),
                    },
                )
            })
            .collect();
        self.positions = state.positions;
    }

    /// Writes a checkpoint of everything consumed so far, then commits those offsets.
    /// Callers make sure the outputs that depend on them are durable first: windows are
    /// written before this runs, and the producer is flushed here.
    async fn checkpoint(&mut self) -> Result<(), PipelineError> {
        self.checkpoint_due = false;
        let Some(plan) = &self.checkpoints else {
            return Ok(());
        };
        // Every prediction and dead letter so far acknowledged: a restart from here does
        // not need to publish them again.
        self.publisher.flush().await?;
        let state = crate::recovery::JobStateRef {
            version: crate::recovery::STATE_VERSION,
            windows_closed: self.windows_total,
            positions: &self.positions,
            features: &self.features,
            cleaner: &self.cleaner,
            held: self
                .held
                .values()
                .map(|c| crate::recovery::HeldEvent {
                    meta: c.meta,
                    event: c.event.clone(),
                    key: c.key.clone(),
                    payload: c.payload.clone(),
                })
                .collect(),
            trainer: &self.trainer,
            drift: self.drift.as_ref(),
        };
        let started = std::time::Instant::now();
        // Named after the window count, so a restarted job's checkpoint of the same point
        // replaces, rather than sits beside, the one taken before the crash.
        let (path, bytes) =
            shopstream_sinks::checkpoint::write(&plan.dir, self.windows_total, &state, plan.keep)?;
        if let Some(plan) = self.checkpoints.as_mut() {
            plan.last = Some(std::time::Instant::now());
        }
        shopstream_sinks::failpoint::hit("checkpoint.written");
        self.summary.checkpoints += 1;
        tracing::debug!(
            path = %path.display(),
            bytes,
            millis = started.elapsed().as_millis() as u64,
            "checkpoint written"
        );
        // For lag monitoring only: restarts seek to the checkpoint's positions.
        self.committer.commit(&self.positions).await?;
        Ok(())
    }

    /// Dedupe and skew checks, then prediction and windowing of one consumed event.
    async fn admit(&mut self, m: Consumed) -> Result<(), PipelineError> {
        let Consumed {
            meta,
            event,
            key,
            payload,
            received,
        } = m;
        match self.cleaner.admit(meta.topic, meta.partition, &event) {
            Admission::Accept => {}
            Admission::Duplicate => {
                bump(&mut self.summary.duplicates, meta.topic.as_str());
                return Ok(());
            }
            Admission::Reject(rejection) => {
                self.dead_letter(meta, key.as_deref(), &payload, &rejection)
                    .await?;
                return Ok(());
            }
            Admission::Hold => {
                let held = Consumed {
                    meta,
                    event,
                    key,
                    payload,
                    received,
                };
                self.held.insert((meta.topic, meta.partition), held);
                return Ok(());
            }
        }
        if let Some(row) = self.features.serving_row(&meta, &event) {
            self.summary.impressions += 1;
            let prediction = self.trainer.predict(&row, self.features.watermark());
            let topic = &self.config.topics.predictions;
            self.publish_json(
                TAG_PREDICTION,
                topic,
                row.event_id.as_bytes(),
                &prediction,
                row.ts,
            )
            .await?;
            self.latency.record(received.elapsed());
        }
        // Taken before the event moves into the features stage; counted once it is in.
        let arrival = self.drift.as_ref().and_then(|_| Arrival::of(&event));
        if let Err(late) = self.features.ingest(meta, event) {
            let rejection = Rejection {
                reason: Reason::Late,
                field: Some("ts".to_string()),
                message: format!(
                    "event time {} is behind the closed windows (watermark {:?})",
                    late.event.ts(),
                    self.features.watermark()
                ),
            };
            self.dead_letter(meta, key.as_deref(), &payload, &rejection)
                .await?;
        } else {
            bump(&mut self.summary.valid, meta.topic.as_str());
            if let (Some(stage), Some(arrival)) = (self.drift.as_mut(), arrival) {
                stage.on_arrival(&arrival);
            }
        }
        Ok(())
    }

    /// Decides about a held event: admitted when `next_ts` confirms the jump (or there is
    /// no next event), dead-lettered when it contradicts it.
    async fn resolve_held(
        &mut self,
        held: Consumed,
        next_ts: Option<i64>,
    ) -> Result<(), PipelineError> {
        let (topic, partition) = (held.meta.topic, held.meta.partition);
        match self.cleaner.resolve_held(topic, partition, next_ts) {
            Some(Resolution::Confirm) => Box::pin(self.admit(held)).await,
            Some(Resolution::Reject(rejection)) => {
                self.dead_letter(held.meta, held.key.as_deref(), &held.payload, &rejection)
                    .await
            }
            None => Err(PipelineError::Internal(format!(
                "held event of {topic:?}/{partition} unknown to the cleaner"
            ))),
        }
    }

    /// Decides every held event whose partition has no next event (end of input, or of a
    /// partition in bounded mode): nothing contradicts them, so they are admitted.
    async fn resolve_all_held(
        &mut self,
        only: Option<(InputTopic, i32)>,
    ) -> Result<(), PipelineError> {
        let keys: Vec<(InputTopic, i32)> = self
            .held
            .keys()
            .copied()
            .filter(|k| only.is_none_or(|o| o == *k))
            .collect();
        for key in keys {
            if let Some(held) = self.held.remove(&key) {
                self.resolve_held(held, None).await?;
            }
        }
        Ok(())
    }

    /// Writes `batch` to `table` as the files of the window starting at `window_ms`
    /// (deterministic names), with `metadata` plus the window start in each file.
    async fn write_table(
        &mut self,
        table: &'static str,
        window_ms: i64,
        batch: arrow::record_batch::RecordBatch,
        mut metadata: BTreeMap<String, String>,
    ) -> Result<Vec<shopstream_sinks::store::WrittenFile>, PipelineError> {
        let store = self.store.clone();
        let stem = format!("window-{window_ms}");
        metadata.insert(
            "shopstream.window_start_ms".to_string(),
            window_ms.to_string(),
        );
        // Offsets go into the commit record, not the file: files must be byte-identical
        // however the input was interleaved (live run vs replay).
        let offsets: BTreeMap<String, i64> = self
            .positions
            .iter()
            .map(|((topic, partition), offset)| {
                (
                    format!(
                        "{}/{partition}",
                        input_topic_name(&self.config.topics, *topic)
                    ),
                    *offset,
                )
            })
            .collect();
        let written = tokio::task::spawn_blocking(move || {
            store.write(table, &stem, &batch, &metadata, &offsets)
        })
        .await
        .map_err(|e| PipelineError::Internal(format!("store writer: {e}")))??;
        Ok(written)
    }

    /// Handles one message from the source.
    async fn handle(&mut self, message: SourceMessage) -> Result<Flow, PipelineError> {
        match message {
            SourceMessage::Assigned(partitions) => {
                for (topic, partition) in partitions {
                    self.features.register_partition(topic, partition);
                    self.last_seen
                        .insert((topic, partition), tokio::time::Instant::now());
                }
            }
            SourceMessage::Revoked(partitions) => {
                // Their state stays until checkpoints can hand it over; they no longer
                // hold the watermark back.
                for (topic, partition) in partitions {
                    self.features.partition_at_end(topic, partition);
                    self.last_seen.remove(&(topic, partition));
                }
                self.close_ready().await?;
            }
            SourceMessage::PartitionEof { topic, partition } => {
                if self.bounded {
                    self.resolve_all_held(Some((topic, partition))).await?;
                    self.features.partition_at_end(topic, partition);
                    self.close_ready().await?;
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
                self.consumed(meta);
                if self.replay_skips(meta, event.ts()).await? {
                    return Ok(Flow::Continue);
                }
                // An event held for a clock-skew decision is decided by this next one.
                let partition = (meta.topic, meta.partition);
                if let Some(held) = self.held.remove(&partition) {
                    self.resolve_held(held, Some(event.ts())).await?;
                }
                let message = Consumed {
                    meta,
                    event,
                    key,
                    payload,
                    received,
                };
                self.admit(message).await?;
                self.close_ready().await?;
            }
        }
        Ok(Flow::Continue)
    }

    /// Publishes progress and telemetry every 1024 consumed messages and whenever the
    /// input is drained.
    fn publish_progress(&mut self, drained: bool) {
        let consumed: u64 = self.summary.consumed.values().sum();
        self.drained_once |= drained;
        if drained || consumed.is_multiple_of(1024) {
            let consumer_lag = self
                .consumer_lag
                .lock()
                .map(|lag| lag.clone())
                .unwrap_or_default();
            // Ready: the backlog has been drained once and the lag is within bounds (the
            // lag comes from the consumer's statistics every few seconds; none yet counts
            // as 0).
            let lag: i64 = consumer_lag.values().sum();
            let ready = self.drained_once
                && u64::try_from(lag).unwrap_or(0) <= self.config.http.ready_max_lag;
            let progress = Progress {
                consumed,
                impressions: self.summary.impressions,
                windows_closed: self.summary.windows_closed,
                http_addr: self.http_addr,
            };
            self.progress.send_if_modified(|p| {
                let changed = *p != progress;
                *p = progress;
                changed
            });
            let drift = self.drift_gauges();
            let summary = self.snapshot_with(&drift);
            let telemetry = Telemetry {
                watermark_ms: self.features.watermark(),
                acknowledged: (
                    summary.predictions_published,
                    summary.dead_letters_published,
                ),
                summary,
                pending_examples: self.features.pending_examples(),
                ready,
                drift,
                consumer_lag,
                prediction_latency: self.latency.clone(),
                window_processing: self.window_time.clone(),
            };
            let _ = self.telemetry.send(Arc::new(telemetry));
        }
    }

    /// Publishes `value` as JSON to `topic`, keyed by `key`, with timestamp `ts_ms`;
    /// nothing (not even the encoding) in a replay, which rebuilds the store: the live run
    /// published what the output topics hold.
    async fn publish_json(
        &mut self,
        tag: &'static str,
        topic: &str,
        key: &[u8],
        value: &impl serde::Serialize,
        ts_ms: i64,
    ) -> Result<(), PipelineError> {
        if self.replay.is_some() {
            return Ok(());
        }
        let json = serde_json::to_vec(value)
            .map_err(|e| PipelineError::Internal(format!("{tag} JSON: {e}")))?;
        self.publisher
            .send(tag, topic, key, &json, Some(ts_ms), None)
            .await?;
        Ok(())
    }

    /// The run summary as of now: the counters plus the figures kept elsewhere (latency,
    /// model, broker acknowledgements, elapsed time).
    fn snapshot(&self) -> RunSummary {
        self.snapshot_with(&self.drift_gauges())
    }

    /// [`Processor::snapshot`] with the drift gauges already at hand.
    fn snapshot_with(&self, drift: &crate::drift::DriftGauges) -> RunSummary {
        let delivered = self.publisher.delivered();
        let mut summary = self.summary.clone();
        summary.prediction_latency = self.latency.percentiles();
        summary.window_processing = self.window_time.percentiles();
        summary.elapsed_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        summary.model_version = self.trainer.version();
        summary.trained_examples = self.trainer.trained_examples();
        summary.last_window_metrics = self.trainer.last_window().cloned();
        summary.predictions_published = delivered.get(TAG_PREDICTION).copied().unwrap_or(0);
        summary.dead_letters_published = delivered.get(TAG_DEAD_LETTER).copied().unwrap_or(0);
        summary.drift = drift.summary();
        summary
    }

    /// The drift gauges with the counters kept outside the drift stage filled in.
    fn drift_gauges(&self) -> crate::drift::DriftGauges {
        let Some(stage) = &self.drift else {
            return Default::default();
        };
        let mut gauges = stage.gauges().clone();
        gauges.alerts_published = self
            .publisher
            .delivered()
            .get(TAG_ALERT)
            .copied()
            .unwrap_or(0);
        if let Some(webhook) = &self.webhook {
            gauges.webhook_delivered = webhook.delivered();
            gauges.webhook_failures = webhook.failures();
        }
        gauges
    }

    /// Replay: whether this event lies outside what the replay processes (before the
    /// warm-up bound, or on a partition past the end bound, which it then finishes).
    async fn replay_skips(&mut self, meta: RecordMeta, ts: i64) -> Result<bool, PipelineError> {
        let Some(replay) = &mut self.replay else {
            return Ok(false);
        };
        let partition = (meta.topic, meta.partition);
        if replay.done.contains(&partition) {
            return Ok(true);
        }
        if replay.range.warmup_from_ms.is_some_and(|from| ts < from) {
            bump(&mut self.summary.replay_skipped, meta.topic.as_str());
            return Ok(true);
        }
        if ts >= replay.stop_ms {
            replay.done.insert(partition);
            bump(&mut self.summary.replay_skipped, meta.topic.as_str());
            self.resolve_all_held(Some(partition)).await?;
            self.features.partition_at_end(meta.topic, meta.partition);
            self.close_ready().await?;
            return Ok(true);
        }
        Ok(false)
    }

    fn consumed(&mut self, meta: RecordMeta) {
        bump(&mut self.summary.consumed, meta.topic.as_str());
        self.positions
            .insert((meta.topic, meta.partition), meta.offset + 1);
        if !self.bounded {
            self.last_seen
                .insert((meta.topic, meta.partition), tokio::time::Instant::now());
        }
    }

    async fn close_ready(&mut self) -> Result<(), PipelineError> {
        for output in self.features.close_ready() {
            self.window_closed(output).await?;
        }
        Ok(())
    }

    /// Live mode: partitions silent for longer than `timeout` stop holding the watermark.
    async fn release_idle(&mut self, timeout: std::time::Duration) -> Result<(), PipelineError> {
        let now = tokio::time::Instant::now();
        let idle: Vec<(InputTopic, i32)> = self
            .last_seen
            .iter()
            .filter(|(_, seen)| now.duration_since(**seen) >= timeout)
            .map(|(key, _)| *key)
            .collect();
        if idle.is_empty() {
            return Ok(());
        }
        for (topic, partition) in idle {
            self.features.partition_at_end(topic, partition);
            self.last_seen.remove(&(topic, partition));
        }
        self.close_ready().await
    }

    async fn dead_letter(
        &mut self,
        meta: RecordMeta,
        key: Option<&[u8]>,
        payload: &[u8],
        rejection: &Rejection,
    ) -> Result<(), PipelineError> {
        bump(&mut self.summary.dead_lettered, rejection.reason.as_str());
        bump(
            &mut self.summary.dead_lettered_per_topic,
            meta.topic.as_str(),
        );
        tracing::debug!(topic = meta.topic.as_str(), partition = meta.partition, offset = meta.offset, %rejection, "dead-lettered");
        if self.replay.is_some() {
            // The live run dead-lettered it already.
            return Ok(());
        }
        let config = self.config;
        let headers = dead_letter_headers(
            input_topic_name(&config.topics, meta.topic),
            &meta,
            rejection,
        );
        self.publisher
            .send(
                TAG_DEAD_LETTER,
                &config.topics.dead_letter,
                key.unwrap_or_default(),
                payload,
                None,
                Some(headers),
            )
            .await?;
        Ok(())
    }

    async fn window_closed(&mut self, output: WindowOutput) -> Result<(), PipelineError> {
        let started = std::time::Instant::now();
        let result = self.window_closed_timed(output).await;
        self.window_time.record(started.elapsed());
        result
    }

    async fn window_closed_timed(&mut self, output: WindowOutput) -> Result<(), PipelineError> {
        self.summary.windows_closed += 1;
        self.windows_total += 1;
        if let Some(plan) = &self.checkpoints {
            let recent = plan.last.is_some_and(|at| at.elapsed() < plan.min_interval);
            self.checkpoint_due |= self.windows_total.is_multiple_of(plan.every) && !recent;
        }
        // Replay: windows outside the range still train the model (later windows depend
        // on it) but write nothing.
        let write = self
            .replay
            .as_ref()
            .is_none_or(|r| r.range.writes(output.start));
        // Item demand: score and train on what sold in this window, forecast the next.
        let demand = self.trainer.train_demand(&output.demand);
        let forecasts = self.trainer.forecast(&output.demand_next);
        if !forecasts.is_empty() {
            self.summary.demand_forecasts += forecasts.len() as u64;
            self.summary.stockout_risks +=
                forecasts.iter().filter(|f| f.stockout_risk).count() as u64;
            if write {
                let batch = shopstream_trainer::metrics::demand_batch(&forecasts)?;
                self.write_table(tables::ITEM_DEMAND, output.end, batch, BTreeMap::new())
                    .await?;
            }
        }
        // Prequential: the window's examples are scored before the model trains on them;
        // the drift monitors see those scores.
        let (mut metrics, outputs) = self.trainer.train_window_scored(&output.examples);
        self.observe_drift(&output, &outputs, write).await?;
        if output.examples.is_empty() {
            return Ok(());
        }
        metrics.demand = demand;
        self.summary.quality.add(&metrics);
        if !write {
            self.trainer.record_window(metrics);
            return Ok(());
        }
        let batch = examples_batch(&output.examples)?;
        let metadata = examples_metadata(output.start, output.end);
        let written = self
            .write_table(tables::EXAMPLES, output.start, batch, metadata)
            .await?;
        for file in written {
            self.summary.examples_written += file.rows as u64;
            self.summary.files_written += 1;
        }
        // The prequential metrics of the window go to the store's `metrics` table.
        let metrics_batch = shopstream_trainer::metrics::metrics_batch(
            output.start,
            output.end,
            self.trainer.version(),
            &metrics,
        )?;
        self.write_table(
            tables::METRICS,
            output.start,
            metrics_batch,
            BTreeMap::new(),
        )
        .await?;
        tracing::debug!(
            window_start = output.start,
            events = output.events,
            examples = metrics.examples,
            log_loss = metrics.log_loss,
            "window closed"
        );
        self.trainer.record_window(metrics);
        // Hours that no later window can add rows to (see `settled_before`). Partitions
        // end on whole hours, so the partitions settled change only when the bound passes
        // an hour; in between, compaction would re-read every commit record of every
        // table to find nothing to do.
        let settled_hours = output.settled_before.div_euclid(HOUR_MS);
        if self.compacted_hours != Some(settled_hours) {
            self.compact(Some(output.settled_before)).await?;
            self.compacted_hours = Some(settled_hours);
        }
        Ok(())
    }

    /// Feeds the drift monitors with a closed window; writes the `drift` and `alerts`
    /// rows (when the window is written), and, in a live run, publishes each alert event
    /// to the alerts topic and hands it to the webhook.
    async fn observe_drift(
        &mut self,
        output: &WindowOutput,
        outputs: &[shopstream_trainer::joint::Output],
        write: bool,
    ) -> Result<(), PipelineError> {
        let Some(stage) = self.drift.as_mut() else {
            return Ok(());
        };
        let drifts = stage
            .window_closed(output.start, &output.users, &output.examples, outputs)
            .map_err(|e| PipelineError::Internal(format!("drift monitor: {e}")))?;
        let rows = stage.rows(&drifts);
        if write && !rows.is_empty() {
            let batch = drift_batch(&rows)?;
            self.write_table(tables::DRIFT, output.start, batch, BTreeMap::new())
                .await?;
        }
        if drifts.alerts.is_empty() {
            return Ok(());
        }
        if write {
            let batch = alerts_batch(output.start, &drifts.alerts)?;
            self.write_table(tables::ALERTS, output.start, batch, BTreeMap::new())
                .await?;
        }
        for alert in &drifts.alerts {
            let scenario = alert.scenario.as_deref().unwrap_or("-");
            let (id, subject, statistic) = (&alert.id, &alert.subject, &alert.statistic);
            let (kind, value, threshold) = (alert.kind.as_str(), alert.value, alert.threshold);
            match alert.state {
                AlertState::Firing => tracing::warn!(
                    %id, severity = ?alert.severity, kind, %subject, scenario, %statistic,
                    value, threshold, "drift alert firing"
                ),
                AlertState::Resolved => tracing::info!(
                    %id, kind, %subject, scenario, %statistic, value, threshold,
                    "drift alert resolved"
                ),
            }
            let topic = &self.config.topics.alerts;
            self.publish_json(
                TAG_ALERT,
                topic,
                alert.id.as_bytes(),
                alert,
                alert.window_start_ms,
            )
            .await?;
            // (A replay has no webhook: the live run posted its alerts.)
            if let Some(webhook) = &self.webhook {
                webhook.post(alert);
            }
        }
        Ok(())
    }

    /// Compacts every table's hour partitions that end at or before `before_ms` (all with
    /// `None`), when `store.compact_closed_hours` is on.
    async fn compact(&mut self, before_ms: Option<i64>) -> Result<(), PipelineError> {
        if !self.store.compacts_closed_hours() {
            return Ok(());
        }
        let store = self.store.clone();
        let made = tokio::task::spawn_blocking(move || {
            let mut made = 0;
            for table in tables::ALL {
                made += store.compact(table, before_ms)?.len();
            }
            Ok::<_, StoreError>(made)
        })
        .await
        .map_err(|e| PipelineError::Internal(format!("store compaction: {e}")))??;
        self.summary.compactions += made as u64;
        Ok(())
    }
}

const HOUR_MS: i64 = 3_600_000;
