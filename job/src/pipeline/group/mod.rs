//! Group mode (`pipeline.instances = "group"`): instances of one `kafka.group_id` share
//! a run (docs/scale-out.md): bounded (`run --stop-at-end`) or live.
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
//! Shutdown (SIGTERM) of an instance leaves the run: it stops, leaves the group (its
//! partitions move to the others) and exits 0. When it held the trainer lease, the lease
//! moves too, and the next holder takes the run over from the closes log (adopting the
//! closes published, reading the inventory and the shards topic again from their start).
//!
//! Every instance serves with the newest model the coordinator broadcasts
//! ([`model_broadcast`]) and serves `/metrics` and `/readyz` for its roles.
//!
//! A live group run never ends by itself: windows close as every partition's watermark
//! passes them, and the run goes on until every instance has stopped. Starting instances
//! of that group again takes the run over where it stood (the closes log says which
//! windows closed; the store and model are written again, the same bytes).
//!
//! A partition that moves goes on from its checkpoint ([`partition_checkpoint`]).
//!
//! Not built yet (step 3 of docs/scale-out.md): a checkpoint of the coordinator and offset
//! commits (a run taken over is read again from the beginning of the topics, so a bounded
//! run needs a group id of its own), and the release of idle partitions in live runs (a
//! silent partition holds every close back).

pub(super) mod coordinator_checkpoint;
mod coordinator_side;
mod kept_closes;
mod model_broadcast;
mod partition_checkpoint;
mod shard_side;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use serde::{Deserialize, Serialize};
use shopstream_config::{Config, KafkaConfig};
use shopstream_drift::stage::Arrival;
use shopstream_features::protocol::ToCoordinator;
use shopstream_ingest::event::InputTopic;
use shopstream_kafka::client::ensure_topics;
use shopstream_kafka::lease::{Lease, LeaseOptions};
use shopstream_kafka::log::{DEFAULT_FRAGMENT_BYTES, LogOptions};
use shopstream_kafka::source::{
    KafkaSource, SourceError, SourceMessage, SourceOptions, SourceStats,
};
use shopstream_trainer::Trainer;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::global_worker::GlobalView;
use super::{PipelineError, Progress, RunOptions, RunSummary};
use crate::http::Telemetry;
use partition_checkpoint::PartitionCheckpoints;

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

/// What an instance's endpoints show in a group run, kept up to date by both sides.
#[derive(Debug, Default)]
pub(super) struct Status {
    /// The click and order partitions this instance holds.
    owned: Vec<(InputTopic, i32)>,
    /// The shard role is ready: it holds partitions and has read each to its end since
    /// it was assigned (a partition that moves here is replayed first).
    shard_ready: bool,
    /// The coordinator role is ready: it has read the inventory to its end.
    coordinator_ready: bool,
    /// The shard side's counters.
    shard: RunSummary,
    /// The global stage's figures, on the lease holder.
    global: Option<GlobalView>,
    /// How the lease holder's global stage runs (`GlobalHandle::mode`).
    global_stage_threads: Option<&'static str>,
    /// When this instance last read a message of the coordinator (its start, closes or
    /// `Alive`) or joined the lease group, in ms since the epoch.
    coordinator_seen_ms: i64,
}

/// [`Status`], shared by the sides and the telemetry task.
pub(super) type SharedStatus = Arc<std::sync::Mutex<Status>>;

/// Runs `f` on the shared status (a poisoned lock only means a panicked side; its run
/// fails on its own).
pub(super) fn update_status(status: &SharedStatus, f: impl FnOnce(&mut Status)) {
    if let Ok(mut status) = status.lock() {
        f(&mut status);
    }
}

/// The trainer lease's session: a holder that dies loses it after this long.
const LEASE_SESSION_MS: u64 = 10_000;

/// How often the coordinator says it is at work on the closes topic (`ToShards::Alive`),
/// and how often a waiting instance checks.
pub(super) const ALIVE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// An instance that has read nothing of a coordinator for this long while it waits for
/// the lease joins the lease group again (3 sessions: a dead holder's lease has moved
/// long before).
const LEASE_STALL_MS: i64 = 30_000;

/// Now, in ms since the epoch.
pub(super) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// How often the endpoints' telemetry is refreshed in a group run.
const TELEMETRY_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// What feeds an instance's endpoints in a group run.
struct TelemetrySources {
    status: SharedStatus,
    progress: watch::Receiver<Progress>,
    models: watch::Receiver<Arc<Trainer>>,
    coordinating: Arc<AtomicBool>,
    broadcast_delay_ms: Arc<AtomicI64>,
}

impl TelemetrySources {
    /// The telemetry as of now. Ready: the shard role is, and so is the coordinator role
    /// when this instance holds it.
    fn snapshot(&self) -> Telemetry {
        let coordinating = self.coordinating.load(Ordering::SeqCst);
        let (owned, shard_ready, coordinator_ready, mut summary, global, threads) =
            match self.status.lock() {
                Ok(s) => (
                    s.owned.clone(),
                    s.shard_ready,
                    s.coordinator_ready,
                    s.shard.clone(),
                    s.global.clone(),
                    s.global_stage_threads,
                ),
                Err(_) => Default::default(),
            };
        let progress = *self.progress.borrow();
        let serving = self.models.borrow().version();
        summary.windows_closed = progress.windows_closed;
        // An instance that does not train knows only the model it serves.
        summary.model_version = serving;
        let mut telemetry = Telemetry::default();
        if let Some(threads) = threads {
            telemetry.global_stage_threads = threads;
        }
        if let Some(view) = global.filter(|_| coordinating) {
            summary.absorb_global(&view.counters);
            summary.model_version = view.model_version;
            summary.trained_examples = view.trained_examples;
            summary.last_window_metrics = view.last_window;
            telemetry.drift = view.drift;
            telemetry.window_processing = view.window_time;
        }
        let delay = self.broadcast_delay_ms.load(Ordering::Relaxed);
        Telemetry {
            summary,
            ready: shard_ready && (!coordinating || coordinator_ready),
            serving_model_version: serving,
            owned_partitions: owned,
            global_role: coordinating,
            model_broadcast_delay_ms: (delay >= 0).then_some(delay),
            ..telemetry
        }
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` for this instance (when `http.enabled`)
/// until `cancel`, refreshing the telemetry every [`TELEMETRY_EVERY`].
async fn serve_http(
    config: &Config,
    sources: TelemetrySources,
    cancel: &CancellationToken,
) -> Result<Option<std::net::SocketAddr>, PipelineError> {
    let (tx, rx) = watch::channel(Arc::new(sources.snapshot()));
    let Some(addr) = super::serve_endpoints(config, rx, cancel).await? else {
        return Ok(None);
    };
    let cancel = cancel.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(TELEMETRY_EVERY) => {}
            }
            tx.send_replace(Arc::new(sources.snapshot()));
        }
    });
    Ok(Some(addr))
}

/// The internal topics of a group.
#[derive(Debug, Clone)]
pub(super) struct GroupTopics {
    /// Progress and parts, shards to coordinator.
    shards: String,
    /// Closes, coordinator to shards.
    closes: String,
    /// The trainer lease.
    lease: String,
    /// The model broadcast (compacted): references to the newest model.
    model: String,
}

impl GroupTopics {
    fn of(kafka: &KafkaConfig) -> Self {
        let group = &kafka.group_id;
        Self {
            shards: format!("{group}.shards"),
            closes: format!("{group}.closes"),
            lease: format!("{group}.lease"),
            model: format!("{group}.model"),
        }
    }
}

/// What both sides of an instance run for: the job's configuration, the group's
/// internal topics, and how their sources read: bounded (`run --stop-at-end`) or live,
/// decoding limits, input mappings.
#[derive(Debug, Clone, Copy)]
pub(super) struct GroupRun<'a> {
    config: &'a Config,
    topics: &'a GroupTopics,
    source_options: &'a SourceOptions,
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

/// Runs `source` on a task of its own until `cancel` (or the child token returned) fires,
/// or (a bounded run, an assigning source) its partitions are read to their end: its
/// messages, the task, the token that stops it.
fn start_source(
    config: &Config,
    source: KafkaSource,
    options: &SourceOptions,
    cancel: &CancellationToken,
) -> (
    mpsc::Receiver<SourceMessage>,
    tokio::task::JoinHandle<Result<SourceStats, SourceError>>,
    CancellationToken,
) {
    let (tx, rx) = mpsc::channel(config.pipeline.channel_capacity);
    let stop = cancel.child_token();
    let task = tokio::spawn(source.run(tx, stop.clone(), options.clone()));
    (rx, task, stop)
}

/// Runs this instance's share of a group run: a bounded one until the coordinator's final
/// close is merged (and, in the lease holder, written), a live one until `shutdown`.
pub(super) async fn run(
    config: &Config,
    options: RunOptions,
    source_options: &SourceOptions,
    shutdown: impl Future<Output = ()>,
    progress: watch::Sender<Progress>,
) -> Result<RunSummary, PipelineError> {
    if options.replay.is_some() {
        return Err(PipelineError::Unsupported(
            "pipeline.instances = \"group\" does not replay yet (docs/scale-out.md); run \
             `replay` with pipeline.instances = \"one\""
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
    let count = |topic| {
        partitions
            .get(shopstream_kafka::client::input_topic_name(
                &config.topics,
                topic,
            ))
            .copied()
            .unwrap_or(0)
    };
    let (clicks, orders) = (count(InputTopic::Clicks), count(InputTopic::Orders));
    if clicks != orders {
        // Partition p of both topics moves as one (its state and checkpoint are one).
        return Err(PipelineError::Unsupported(format!(
            "pipeline.instances = \"group\" needs the click and order topics co-partitioned: \
             {} has {clicks} partitions, {} has {orders}; give both the same number",
            config.topics.clicks, config.topics.orders
        )));
    }

    let cancel = CancellationToken::new();
    // A run dropped without a shutdown (its task aborted) still stops the tasks it
    // spawned: a source left running would keep its partitions in the group forever.
    let _stop_on_drop = cancel.clone().drop_guard();
    // Both sides count into it: the messages this instance consumed, the windows it wrote.
    let progress = Arc::new(progress);
    // Every instance serves with the newest model it has: the lease holder's shard side
    // takes each model its global stage publishes, every instance each model broadcast.
    let (models_tx, models) = watch::channel(Arc::new(Trainer::new(&config.model)));
    let broadcast_delay_ms = Arc::new(AtomicI64::new(-1));
    tokio::spawn({
        let follow = model_broadcast::follow(
            config.clone(),
            topics.model.clone(),
            models_tx.clone(),
            Arc::clone(&broadcast_delay_ms),
            cancel.child_token(),
        );
        async move {
            if let Err(e) = follow.await {
                // Serving goes on with the model this instance has; the outputs do not
                // depend on it.
                tracing::error!(error = %e, "model broadcast: cannot follow; serving with the model held");
            }
        }
    });
    let status = SharedStatus::default();
    let coordinating = Arc::new(AtomicBool::new(false));
    let http_addr = serve_http(
        config,
        TelemetrySources {
            status: Arc::clone(&status),
            progress: progress.subscribe(),
            models: models.clone(),
            coordinating: Arc::clone(&coordinating),
            broadcast_delay_ms: Arc::clone(&broadcast_delay_ms),
        },
        &cancel,
    )
    .await?;
    progress.send_modify(|p| p.http_addr = http_addr);
    // (After the endpoints: /healthz answers while the group is joined.)
    let lease_options = LeaseOptions {
        topic: topics.lease.clone(),
        group: format!("{}.trainer", config.kafka.group_id),
        session_timeout_ms: LEASE_SESSION_MS,
    };
    let mut lease = Lease::join(&config.kafka, &lease_options).await?;
    tracing::info!(group = %config.kafka.group_id, "group run: joined the trainer lease");
    update_status(&status, |s| s.coordinator_seen_ms = now_ms());
    let shard_done = CancellationToken::new();
    // What both sides run for (a copy each: the sides borrow it, they do not outlive it).
    let group_run = GroupRun {
        config,
        topics: &topics,
        source_options,
    };
    let shard = {
        let cancel = cancel.clone();
        let shard_done = shard_done.clone();
        let progress = Arc::clone(&progress);
        let status = Arc::clone(&status);
        async move {
            let result = shard_side::run(
                &group_run,
                &partitions,
                models,
                progress,
                status,
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
    let coordinator = {
        let coordinating = Arc::clone(&coordinating);
        let cancel = cancel.clone();
        let progress = Arc::clone(&progress);
        let status = Arc::clone(&status);
        async move {
            let mut held = lease.held();
            // A turn per time this instance holds the lease: one that loses it goes back to
            // waiting, and may take over again later.
            let outcome = loop {
                let mut check = tokio::time::interval(ALIVE_EVERY);
                check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let waited = loop {
                    if *held.borrow_and_update() {
                        break true;
                    }
                    tokio::select! {
                        changed = held.changed() => {
                            if changed.is_err() {
                                break false;
                            }
                        }
                        // Not the trainer: nothing to do once this instance's part is done.
                        _ = shard_done.cancelled() => break false,
                        _ = cancel.cancelled() => break false,
                        _ = check.tick() => {
                            let seen = status.lock().map_or(i64::MAX, |s| s.coordinator_seen_ms);
                            let silent_ms = now_ms().saturating_sub(seen);
                            // (The lease may have come just now: then it is taken.)
                            if silent_ms >= LEASE_STALL_MS && !*held.borrow() {
                                // No coordinator for that long: the election may have
                                // left nobody holding the lease (tansu can, when the
                                // member that was to assign it dies mid-rebalance:
                                // docs/operations.md, "Against tansu"). Joining again
                                // as a new member makes the group assign it again.
                                tracing::warn!(
                                    silent_secs = silent_ms / 1000,
                                    "no coordinator message on the closes topic for that long: \
                                     joining the trainer lease group again"
                                );
                                lease.leave().await;
                                update_status(&status, |s| s.coordinator_seen_ms = now_ms());
                                let joined = tokio::select! {
                                    joined = Lease::join(&config.kafka, &lease_options) => joined,
                                    _ = cancel.cancelled() => return Ok(None),
                                };
                                match joined {
                                    Ok(joined) => {
                                        lease = joined;
                                        held = lease.held();
                                    }
                                    Err(e) => {
                                        cancel.cancel();
                                        return Err(PipelineError::from(e));
                                    }
                                }
                            }
                        }
                    }
                };
                if !waited {
                    break Ok(None);
                }
                tracing::info!("this instance holds the trainer lease: coordinating the group");
                coordinating.store(true, Ordering::SeqCst);
                let turn = coordinator_side::run(
                    &group_run,
                    held.clone(),
                    models_tx.clone(),
                    Arc::clone(&progress),
                    Arc::clone(&status),
                    cancel.clone(),
                )
                .await;
                coordinating.store(false, Ordering::SeqCst);
                match turn {
                    Ok(coordinator_side::Turn::Finished(summary)) => {
                        model_broadcast::remove_leftovers(config);
                        if let Ok(Some(checkpoints)) = PartitionCheckpoints::of(config) {
                            checkpoints.remove_all();
                        }
                        coordinator_checkpoint::remove_all(config);
                        break Ok(Some(*summary));
                    }
                    // (Its broadcast models stay: the run goes on when instances start.)
                    Ok(coordinator_side::Turn::Stopped(summary)) => break Ok(Some(*summary)),
                    Ok(coordinator_side::Turn::HandedOver) if cancel.is_cancelled() => {
                        break Ok(None);
                    }
                    Ok(coordinator_side::Turn::HandedOver) => {
                        update_status(&status, |s| {
                            s.global = None;
                            s.global_stage_threads = None;
                            s.coordinator_ready = false;
                            s.coordinator_seen_ms = now_ms();
                        });
                    }
                    Err(e) => {
                        cancel.cancel();
                        break Err(e);
                    }
                }
            };
            lease.leave().await;
            outcome
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
                tracing::info!(
                    "shutdown of the coordinating instance: leaving the group run; the next \
                     lease holder takes over from the closes log"
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
    let mut summary = shard?;
    if let Some(global) = coordinator? {
        global.add_to(&mut summary);
    }
    summary.reached_end = !stopped;
    summary.elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(status: Status, coordinating: bool) -> TelemetrySources {
        let (_progress_tx, progress) = watch::channel(Progress::default());
        let model = Trainer::new(&shopstream_config::ModelConfig {
            embedding_bits: 4,
            ..Default::default()
        });
        let (_models_tx, models) = watch::channel(Arc::new(model));
        TelemetrySources {
            status: Arc::new(std::sync::Mutex::new(status)),
            progress,
            models,
            coordinating: Arc::new(AtomicBool::new(coordinating)),
            broadcast_delay_ms: Arc::new(AtomicI64::new(-1)),
        }
    }

    #[test]
    fn readiness_is_per_role_and_the_global_role_shows_only_on_the_lease_holder() {
        let shard_ready = || Status {
            owned: vec![(InputTopic::Clicks, 0), (InputTopic::Orders, 0)],
            shard_ready: true,
            ..Status::default()
        };
        let shard = sources(shard_ready(), false).snapshot();
        assert!(shard.ready && !shard.global_role);
        assert_eq!(shard.owned_partitions.len(), 2);
        assert_eq!(shard.model_broadcast_delay_ms, None);
        // The lease holder also waits for the inventory.
        let coordinator = sources(shard_ready(), true).snapshot();
        assert!(!coordinator.ready && coordinator.global_role);
        let both = Status {
            coordinator_ready: true,
            ..shard_ready()
        };
        assert!(sources(both, true).snapshot().ready);
        // Partitions still replaying (or none held yet): not ready.
        assert!(!sources(Status::default(), false).snapshot().ready);
    }
}
