//! The long-running job, split by role:
//!
//! ```text
//! KafkaSource --(bounded channel)--> source loop
//!    source_loop.rs      message by message; checkpoints when due
//!      -> shard.rs       partition-scoped: clean (dedupe, skew holds), windows,
//!                        features, a prediction per impression on arrival
//!         stages.rs      on the loop's task (pipeline.workers = 1), or the clicks and
//!         shard_workers.rs  orders of partition p on shard worker p % workers, with
//!         coordinate.rs  the loop as coordinator (inventory, closes, merge)
//!      -> outputs.rs     shop.predictions, shop.dead-letter, shop.alerts
//!      -> global.rs      per closed window, in order: demand, score then train, drift,
//!                        the window's store tables (examples, metrics, item_demand,
//!                        drift, alerts), compaction
//!         global_worker.rs  where the global stage runs: inline (pipeline.workers = 1)
//!                        or on a thread of its own, fed in order through a channel
//!    group/              pipeline.instances = "group": a run (live or bounded) shared by
//!                        the instances of a consumer group through internal topics
//!    replay.rs           rebuilding a range of the store from the topics
//!    checkpoint.rs       when to checkpoint, what goes in, how a restart resumes
//!    telemetry.rs        progress, /metrics and the run summary
//! ```
//!
//! The source runs as its own task; the processor runs in the caller's task, and the global
//! stage in it too or on a thread of its own (`pipeline.workers`). All share a
//! `CancellationToken`: the shutdown future, a failure of either side, or (with
//! `stop_at_end`) the end of the input stops both. Offsets are committed only after the
//! examples they produced are durable in the store and every output message is
//! acknowledged by the broker.

mod checkpoint;
mod coordinate;
mod erasures;
mod error;
mod global;
mod global_worker;
mod group;
pub(crate) mod held_rows;
mod outputs;
mod replay;
mod shard;
mod shard_workers;
mod source_loop;
mod stages;
mod telemetry;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use shopstream_config::Config;
use shopstream_ingest::decode::DecodeLimits;
use shopstream_ingest::event::InputTopic;
use shopstream_ingest::mapping::{LiveMapping, MappingError};
use shopstream_kafka::client::ensure_topics;
use shopstream_kafka::source::{KafkaSource, Positions, SharedPositions, SourceOptions};
use shopstream_sinks::store::ParquetStore;
use shopstream_sinks::tables;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::summary::{Quality, RunSummary};
pub use error::PipelineError;
pub use replay::ReplayRange;

use crate::http::Telemetry;
use checkpoint::CheckpointPlan;
use global::GlobalStage;
use global_worker::{GlobalHandle, GlobalWorker};
use outputs::Outputs;
use replay::ReplayState;
use source_loop::Processor;
use stages::{Resumed, Stages};
use telemetry::Reporter;

/// Options of one run.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Stop once all input present at start has been processed (demo, tests, backfills).
    pub stop_at_end: bool,
    /// Rebuild the store for a historical range instead of running the live job.
    pub replay: Option<ReplayRange>,
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
    /// Version of the model predictions are served with (group runs; 0: the initial).
    pub serving_model_version: u64,
}

/// Serves `/metrics`, `/healthz` and `/readyz` from `telemetry` until `cancel`, when
/// `http.enabled`: the bound address.
async fn serve_endpoints(
    config: &Config,
    telemetry: tokio::sync::watch::Receiver<Arc<Telemetry>>,
    cancel: &CancellationToken,
) -> Result<Option<std::net::SocketAddr>, PipelineError> {
    if !config.http.enabled {
        return Ok(None);
    }
    let (addr, _task) = crate::http::serve(&config.http.listen, telemetry, cancel.clone())
        .await
        .map_err(|source| PipelineError::Http {
            listen: config.http.listen.clone(),
            source,
        })?;
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    Ok(Some(addr))
}

/// The mappings of `[input.mapping]`, read and validated (every problem of every file at
/// once).
pub fn input_mappings(
    config: &Config,
) -> Result<std::collections::BTreeMap<InputTopic, LiveMapping>, MappingError> {
    let mapped = &config.input.mapping;
    let files: Vec<(InputTopic, &std::path::Path)> = [
        (InputTopic::Clicks, &mapped.clicks),
        (InputTopic::Orders, &mapped.orders),
    ]
    .into_iter()
    .filter_map(|(topic, path)| Some((topic, path.as_deref()?)))
    .collect();
    shopstream_ingest::mapping::load_live_mappings(&files)
}

/// The source's options: bounded or not, the decoding limits, and the input mappings.
fn source_options(config: &Config, stop_at_end: bool) -> Result<SourceOptions, PipelineError> {
    Ok(SourceOptions {
        stop_at_end,
        limits: DecodeLimits {
            max_message_bytes: config.pipeline.max_message_bytes,
        },
        mappings: Arc::new(input_mappings(config)?),
        privacy: privacy(&config.privacy)?.map(Arc::new),
    })
}

/// `[privacy]`, its key read from the environment; `None` when off.
pub fn privacy(
    config: &shopstream_config::PrivacyConfig,
) -> Result<Option<shopstream_ingest::privacy::Privacy>, PipelineError> {
    use shopstream_config::DroppedField;
    if !config.enabled {
        return Ok(None);
    }
    let key = std::env::var_os(&config.key_env).unwrap_or_default();
    if key.is_empty() {
        return Err(PipelineError::Unsupported(format!(
            "privacy.enabled is true but ${} is empty or unset; export a random secret of at \
             least 32 bytes there (keep it: a new key gives every user a new pseudonym)",
            config.key_env
        )));
    }
    let minimise = shopstream_ingest::privacy::Minimise {
        sessions: config.pseudonymize_session_id,
        query: config.drop_fields.contains(&DroppedField::Query),
        device: config.drop_fields.contains(&DroppedField::Device),
        price_step: config.price_step,
    };
    shopstream_ingest::privacy::Privacy::new(key.as_encoded_bytes(), minimise)
        .map(Some)
        .map_err(|e| PipelineError::Unsupported(format!("${}: {e}", config.key_env)))
}

/// Like [`run`], publishing [`Progress`] to `progress` as the job goes.
pub async fn run_observed(
    config: &Config,
    options: RunOptions,
    shutdown: impl Future<Output = ()>,
    progress: tokio::sync::watch::Sender<Progress>,
) -> Result<RunSummary, PipelineError> {
    // Read once, before connecting to anything: a bad mapping is a user error.
    let stop_at_end = options.stop_at_end || options.replay.is_some();
    let source_options = source_options(config, stop_at_end)?;
    if config.pipeline.instances == shopstream_config::Instances::Group {
        // The instances of the group share the run (docs/scale-out.md).
        return group::run(config, options, &source_options, shutdown, progress).await;
    }
    let started = std::time::Instant::now();
    let store = open_store(config)?;
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
    let checkpoints = CheckpointPlan::of(config, options.replay.is_some())?;
    let restored = match &checkpoints {
        Some(plan) => plan.restore()?,
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
    let (source, committer) =
        KafkaSource::connect(kafka, topics, &partitions, start, stop_at_end).await?;

    let cancel = CancellationToken::new();
    // A run dropped without a shutdown (its task aborted) still stops what it spawned.
    let _stop_on_drop = cancel.clone().drop_guard();
    let tracker = TaskTracker::new();
    let (telemetry_tx, telemetry_rx) = tokio::sync::watch::channel(Arc::new(Telemetry::default()));
    let http_addr = serve_endpoints(config, telemetry_rx, &cancel).await?;
    let (tx, rx) = mpsc::channel(config.pipeline.channel_capacity);
    let consumer_lag = source.lag();
    let read_progress = source.progress();
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

    // The global stage takes its part of the checkpoint before it may move to its thread.
    let mut global = GlobalStage::new(config, store, options.replay.is_none())?;
    global.stop_on_store_failure(cancel.clone());
    let mut resumed = None;
    let mut resumed_counters = None;
    // Erasures recorded while the job was stopped apply before any event.
    let mut erasures = erasures::Erasures::open(config)?;
    let erased = erasures.take_new()?;
    if let Some(state) = restored {
        global.resume(config, state.trainer, state.drift, state.store_rows);
        resumed_counters = Some((state.windows_closed, state.positions));
        let mut features = state.features;
        erasures::report(&erased, features.forget_users(&erased));
        resumed = Some(Resumed {
            features,
            cleaner: state.cleaner,
            held: state.held,
        });
    }
    let worker = GlobalWorker::new(
        config,
        global,
        checkpoints.clone(),
        committer.clone(),
        options.replay.is_some(),
    )?;
    let threads = config.pipeline.worker_threads();
    let global = GlobalHandle::start(
        worker,
        threads,
        tokio::runtime::Handle::current(),
        cancel.clone(),
    )?;
    let stages = Stages::new(config, resumed, global.models())?;
    tracing::info!(
        workers = threads,
        global_stage = global.mode(),
        shards = stages.mode(),
        "processing path"
    );
    let mut processor = Processor {
        config,
        stages,
        global,
        outputs: Outputs::new(config, options.replay.is_some())?,
        checkpoints,
        erasures,
        consumer_lag,
        read_progress,
        positions: Positions::new(),
        windows_total: 0,
        checkpoint_due: false,
        bounded: stop_at_end,
        replay: options.replay.map(|range| ReplayState::new(range, config)),
        owned: Default::default(),
        last_seen: BTreeMap::new(),
        summary: RunSummary::default(),
        reporter: Reporter::new(progress, telemetry_tx, http_addr, started),
        effects: Vec::new(),
        arrivals: Vec::new(),
        ending: BTreeMap::new(),
    };
    if let Some((windows_closed, positions)) = resumed_counters {
        processor.resume(windows_closed, positions);
    }
    let outcome = processor.process(rx, &cancel, shutdown).await;
    // The shard workers (if any) hand nothing more on.
    processor.stages.stop().await;
    // Every window and checkpoint handed to the global stage carried out (its thread, if
    // any, ends); its own error counts when the processor had none.
    let joined = processor.global.join().await;
    let outcome = outcome.and(joined);
    let Some(worker) = processor.global.inline() else {
        return Err(outcome.err().unwrap_or_else(|| {
            PipelineError::Internal("the global stage did not come back from its thread".into())
        }));
    };
    // Queued alert events get a bounded grace period; the rest are counted as failed.
    let grace = std::time::Duration::from_millis(config.drift.webhook_timeout_ms)
        .saturating_mul(2)
        .min(std::time::Duration::from_secs(10));
    worker.stage.close_webhook(grace).await;
    let outcome = match outcome {
        Ok(()) => worker.flush().await,
        Err(e) => Err(e),
    };
    if outcome.is_ok() {
        shopstream_sinks::failpoint::hit("pipeline.model_saving");
        save_model(config, &worker.stage.trainer)?;
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

/// The store of `config`, with the uncommitted files an earlier run left deleted.
pub(super) fn open_store(config: &Config) -> Result<ParquetStore, PipelineError> {
    let store = ParquetStore::open(&config.store)?;
    shopstream_sinks::schema_version::check_schema_version(
        store.storage(),
        tables::EXAMPLES,
        shopstream_features::SCHEMA_VERSION_KEY,
        shopstream_features::EXAMPLES_SCHEMA_VERSION,
    )?;
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
    Ok(store)
}

/// Writes the model file to `model.path` when it is set: a local path (temporary name,
/// fsync, rename), or a bucket URL such as `s3://bucket/models/shop.ssm` (one upload,
/// through `store.options` and the environment's credentials).
pub(crate) fn save_model(
    config: &Config,
    trainer: &shopstream_trainer::Trainer,
) -> Result<(), PipelineError> {
    use shopstream_sinks::storage::{Location, Storage};
    let Some(path) = &config.model.path else {
        return Ok(());
    };
    let internal = |e: &dyn std::fmt::Display| PipelineError::Internal(format!("model file: {e}"));
    match Location::parse(path).map_err(|e| internal(&e))? {
        Location::Local(path) => trainer.save(&path).map_err(|e| internal(&e))?,
        Location::Bucket(url) => {
            let Some((parent, name)) = url.rsplit_once('/') else {
                return Err(internal(&format!("{url} names no object")));
            };
            let dir = Storage::open(
                std::path::Path::new(parent),
                &config.store.options,
                std::time::Duration::from_secs(config.store.retry_timeout_secs),
            )
            .map_err(|e| internal(&e))?;
            let bytes = trainer.model_file_bytes().map_err(|e| internal(&e))?;
            dir.put(name, bytes.into(), None)
                .map_err(|e| internal(&e))?;
        }
    }
    tracing::info!(path = %path.display(), version = trainer.version(), "model written");
    Ok(())
}
