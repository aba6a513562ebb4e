//! Group mode (`pipeline.instances = "group"`): instances of one `kafka.group_id` share
//! a bounded run (docs/scale-out.md).
//!
//! Every instance runs a [`shard_side`]: it holds the click and order partitions the
//! group assigns it, cleans, windows and serves their events, reports its progress and
//! answers the closes. The instance that holds the trainer lease also runs the
//! [`coordinator_side`]: it reads the inventory, decides the closes, merges the answers of
//! every partition and runs the global stage (training, demand, drift, the store, the
//! model). The two talk only through the internal topics `<group>.shards` and
//! `<group>.closes`, also inside one instance, so that an instance's own partitions are
//! treated like any other's.
//!
//! Shutdown (SIGTERM) of an instance that does not coordinate leaves the run: it stops,
//! leaves the group (its partitions move to the others) and exits 0. Shutdown of the
//! coordinating instance stops the run on every instance.
//!
//! Not built yet (steps 3 and 4 of docs/scale-out.md): live runs, checkpoints and offset
//! commits (a bounded group run starts from the beginning of the topics, so each needs a
//! group id of its own), failover of the lease, the model broadcast (instances other than
//! the lease holder serve with the initial model), and the HTTP endpoints.

mod coordinator_side;
mod shard_side;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};
use shopstream_config::{Config, KafkaConfig};
use shopstream_drift::stage::Arrival;
use shopstream_features::protocol::ToCoordinator;
use shopstream_ingest::decode::DecodeLimits;
use shopstream_kafka::client::ensure_topics;
use shopstream_kafka::lease::{Lease, LeaseOptions};
use shopstream_kafka::log::{DEFAULT_FRAGMENT_BYTES, LogOptions};
use shopstream_kafka::source::{
    KafkaSource, SourceError, SourceMessage, SourceOptions, SourceStats,
};
use shopstream_trainer::Trainer;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::{PipelineError, Progress, RunOptions, RunSummary};

/// Drift arrivals of partition number `partition`, numbered from `first` in the order the
/// partition's owner admitted them. A new owner that replays the partition sends them
/// again with the same numbers; the coordinator takes each number once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Arrivals {
    partition: i32,
    first: u64,
    arrivals: Vec<Arrival>,
}

/// What the shard side sends the coordinator.
pub(super) type ShardMessage = ToCoordinator<Arrivals>;

/// The internal topics of a group.
#[derive(Debug, Clone)]
pub(super) struct GroupTopics {
    /// Progress and parts, shards to coordinator.
    shards: String,
    /// Closes, coordinator to shards.
    closes: String,
    /// The trainer lease.
    lease: String,
}

impl GroupTopics {
    fn of(kafka: &KafkaConfig) -> Self {
        let group = &kafka.group_id;
        Self {
            shards: format!("{group}.shards"),
            closes: format!("{group}.closes"),
            lease: format!("{group}.lease"),
        }
    }
}

/// A writer's options on `topic`: named after this process, so that a restarted
/// instance never continues a message it did not finish.
fn log_options(topic: &str, role: &str) -> LogOptions {
    LogOptions {
        topic: topic.to_string(),
        writer: format!(
            "{role}-{}-{}",
            std::process::id(),
            chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
        ),
        fragment_bytes: DEFAULT_FRAGMENT_BYTES,
    }
}

/// Runs `source` on a task of its own until `cancel` (or the child token returned) fires:
/// its messages, the task, the token that stops it.
fn start_source(
    config: &Config,
    source: KafkaSource,
    cancel: &CancellationToken,
) -> (
    mpsc::Receiver<SourceMessage>,
    tokio::task::JoinHandle<Result<SourceStats, SourceError>>,
    CancellationToken,
) {
    let (tx, rx) = mpsc::channel(config.pipeline.channel_capacity);
    let options = SourceOptions {
        stop_at_end: true,
        limits: DecodeLimits {
            max_message_bytes: config.pipeline.max_message_bytes,
        },
    };
    let stop = cancel.child_token();
    let task = tokio::spawn(source.run(tx, stop.clone(), options));
    (rx, task, stop)
}

/// Runs this instance's share of a bounded group run until the coordinator's final close
/// is answered (and, in the lease holder, merged and written).
pub(super) async fn run(
    config: &Config,
    options: RunOptions,
    shutdown: impl Future<Output = ()>,
    progress: watch::Sender<Progress>,
) -> Result<RunSummary, PipelineError> {
    if !options.stop_at_end || options.replay.is_some() {
        return Err(PipelineError::Unsupported(
            "pipeline.instances = \"group\" runs only with `run --stop-at-end` so far (live \
             group runs need per-partition checkpoints, docs/scale-out.md step 3); use \
             pipeline.instances = \"one\""
                .to_string(),
        ));
    }
    let started = std::time::Instant::now();
    let topics = GroupTopics::of(&config.kafka);
    let all: Vec<String> = config
        .topics
        .inputs()
        .into_iter()
        .chain(config.topics.outputs())
        .map(str::to_string)
        .collect();
    let partitions = ensure_topics(&config.kafka, &all).await?;
    let lease = Lease::join(
        &config.kafka,
        &LeaseOptions {
            topic: topics.lease.clone(),
            group: format!("{}.trainer", config.kafka.group_id),
            session_timeout_ms: 10_000,
        },
    )
    .await?;
    tracing::info!(group = %config.kafka.group_id, "group run: joined the trainer lease");

    let cancel = CancellationToken::new();
    // A run dropped without a shutdown (its task aborted) still stops the tasks it
    // spawned: a source left running would keep its partitions in the group forever.
    let _stop_on_drop = cancel.clone().drop_guard();
    // Both sides count into it: the messages this instance consumed, the windows it wrote.
    let progress = Arc::new(progress);
    // Every instance serves with the initial model; the lease holder's shard side takes
    // each model its global stage publishes.
    let (models_tx, models) = watch::channel(Arc::new(Trainer::new(&config.model)));
    let shard_done = CancellationToken::new();
    let shard = {
        let cancel = cancel.clone();
        let shard_done = shard_done.clone();
        let topics = topics.clone();
        let progress = Arc::clone(&progress);
        async move {
            let result = shard_side::run(
                config,
                &topics,
                &partitions,
                models,
                progress,
                cancel.clone(),
            )
            .await;
            if result.is_err() {
                cancel.cancel();
            }
            shard_done.cancel();
            result
        }
    };
    let coordinating = Arc::new(AtomicBool::new(false));
    let coordinator = {
        let coordinating = Arc::clone(&coordinating);
        let cancel = cancel.clone();
        let topics = topics.clone();
        let progress = Arc::clone(&progress);
        let mut held = lease.held();
        async move {
            loop {
                if *held.borrow_and_update() {
                    break;
                }
                tokio::select! {
                    changed = held.changed() => {
                        if changed.is_err() {
                            return Ok(None);
                        }
                    }
                    // Not the trainer: nothing to do once this instance's part is done.
                    _ = shard_done.cancelled() => return Ok(None),
                    _ = cancel.cancelled() => return Ok(None),
                }
            }
            tracing::info!("this instance holds the trainer lease: coordinating the group");
            coordinating.store(true, Ordering::SeqCst);
            let result =
                coordinator_side::run(config, &topics, held, models_tx, progress, cancel.clone())
                    .await;
            if result.is_err() {
                cancel.cancel();
            }
            result.map(Some)
        }
    };
    let work = async { tokio::join!(shard, coordinator) };
    tokio::pin!(work);
    let mut stopped = false;
    let (shard, coordinator) = tokio::select! {
        both = &mut work => both,
        () = shutdown => {
            stopped = true;
            if coordinating.load(Ordering::SeqCst) {
                tracing::warn!(
                    "shutdown of the coordinating instance: the group run stops on every instance \
                     (failover is not built yet)"
                );
            } else {
                tracing::info!(
                    "shutdown: leaving the group run; the other instances take over this \
                     instance's partitions"
                );
            }
            cancel.cancel();
            work.await
        }
    };
    lease.leave().await;
    let mut summary = shard?;
    if let Some(global) = coordinator? {
        global.add_to(&mut summary);
    }
    summary.reached_end = !stopped;
    summary.elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    Ok(summary)
}
