//! The lease holder's part of a group run: the inventory, which windows close, the merge
//! of every partition's answers, and the global stage that writes the store and trains
//! the model (docs/scale-out.md, "Rules that keep the bytes").
//!
//! It learns about clicks and orders only from the shards topic: each instance's
//! progress (newest event times, windows holding events, partitions read to their end,
//! drift arrivals) and its answers to the closes. It decides closes as the whole stage of
//! one instance would, from the same rules, and publishes each on the closes topic with
//! its number; it merges close `n` once every partition number has answered it
//! ([`MergeQueue`]) and hands the windows to the global stage in order.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use shopstream_config::Config;
use shopstream_features::protocol::{
    self, CurrentCoordinator, SequencedClose, ToCoordinator, ToShards,
};
use shopstream_features::{Close, Coordinator, FeaturePipeline, MergeQueue, WindowOutput};
use shopstream_ingest::decode::{Reason, Rejection};
use shopstream_ingest::event::InputTopic;
use shopstream_kafka::client::{ensure_topics, input_topic_name};
use shopstream_kafka::log::{LogPosition, LogReader, LogWriter};
use shopstream_kafka::source::{KafkaSource, Positions, SourceMessage};
use shopstream_trainer::Trainer;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::super::checkpoint::CheckpointPlan;
use super::super::global::GlobalStage;
use super::super::global_worker::{GlobalHandle, GlobalView, GlobalWorker, PUBLISH_EVERY};
use super::super::outputs::Outputs;
use super::super::shard::{Consumed, Effect, ShardStage};
use super::super::source_loop::{bump, commit_offsets};
use super::super::{PipelineError, Progress, RunSummary};
use super::coordinator_checkpoint::{self, CoordinatorParts};
use super::{
    GroupRun, GroupTopics, ShardMessage, SharedStatus, log_options, model_broadcast, update_status,
};

/// What the coordinator adds to the instance's run summary.
pub(super) struct CoordinatorSummary {
    view: GlobalView,
    windows_closed: u64,
    inventory: RunSummary,
}

impl CoordinatorSummary {
    /// Adds the global stage's figures and the inventory's counts to `summary`.
    pub(super) fn add_to(self, summary: &mut RunSummary) {
        summary.absorb_global(&self.view.counters);
        summary.windows_closed = self.windows_closed;
        summary.coordinator_resumed_windows = self.inventory.coordinator_resumed_windows;
        summary.model_version = self.view.model_version;
        summary.trained_examples = self.view.trained_examples;
        summary.last_window_metrics = self.view.last_window;
        summary.drift = self.view.drift.summary();
        summary.window_processing = self.view.window_time.percentiles();
        let inventory = self.inventory;
        for (from, to) in [
            (inventory.consumed, &mut summary.consumed),
            (inventory.valid, &mut summary.valid),
            (inventory.dead_lettered, &mut summary.dead_lettered),
            (
                inventory.dead_lettered_per_topic,
                &mut summary.dead_lettered_per_topic,
            ),
            (inventory.duplicates, &mut summary.duplicates),
        ] {
            for (key, n) in from {
                *to.entry(key).or_default() += n;
            }
        }
        summary.dead_letters_published += inventory.dead_letters_published;
    }
}

struct CoordinatorSide<'a> {
    config: &'a Config,
    /// A bounded run: the final close follows once every input is read to its end. A
    /// live run has none; windows close only as the watermark passes them.
    bounded: bool,
    /// The inventory's cleaning and the coordinator.
    stage: ShardStage<Coordinator>,
    global: GlobalHandle,
    /// This coordinator's writer name on the closes log.
    me: String,
    /// The inventory's dead letters.
    outputs: Outputs,
    closes: LogWriter,
    queue: MergeQueue,
    /// Closes published and not merged yet.
    decided: BTreeMap<u64, Close>,
    /// Who published each close this coordinator knows (its own and those it adopted):
    /// only answers to these are merged.
    authors: BTreeMap<u64, String>,
    next_seq: u64,
    /// Arrivals taken per partition number (the number of the next one).
    arrivals: BTreeMap<i32, u64>,
    /// Click and order partitions that have reported their end.
    released: BTreeSet<(InputTopic, i32)>,
    /// Every click and order partition.
    inputs: BTreeSet<(InputTopic, i32)>,
    inventory_done: bool,
    /// Each inventory partition, and whether it has been read to where it stands (a live
    /// run's readiness).
    inventory_caught_up: BTreeMap<i32, bool>,
    /// The final close's number, once published.
    final_seq: Option<u64>,
    /// Next offset per inventory partition (the commit records' offsets).
    positions: Positions,
    /// When coordinator checkpoints are taken (`None`: checkpoints are off).
    checkpoints: Option<CheckpointPlan>,
    /// Windows closed at the last checkpoint (or where this turn resumed).
    last_checkpoint: u64,
    windows_closed: u64,
    effects: Vec<Effect>,
    summary: RunSummary,
    /// The instance's live counters.
    progress: Arc<watch::Sender<Progress>>,
    /// The models this instance serves with (and broadcasts): with the global stage
    /// inline, this side publishes them, at most every [`PUBLISH_EVERY`].
    models: watch::Sender<Arc<Trainer>>,
    /// When the model and the endpoints' view were last published.
    published: Option<std::time::Instant>,
    /// What the instance's endpoints show.
    status: SharedStatus,
}

/// What a coordinator side works with, besides its state.
struct Wiring {
    global: GlobalHandle,
    closes: LogWriter,
    me: String,
    inputs: BTreeSet<(InputTopic, i32)>,
    progress: Arc<watch::Sender<Progress>>,
    models: watch::Sender<Arc<Trainer>>,
    status: SharedStatus,
}

/// How a coordinator's turn ended without an error.
pub(super) enum Turn {
    /// The final close is merged and the store and model are written.
    Finished(Box<CoordinatorSummary>),
    /// A live run's coordinator shut down: every window merged is written, and so is the
    /// model as it stands; the next lease holder takes over from the closes log.
    Stopped(Box<CoordinatorSummary>),
    /// This instance stopped coordinating before the end (shutdown, or the lease moved):
    /// the next lease holder takes over from the closes log.
    HandedOver,
}

/// Runs the coordinator until the final close is merged and the store and model are
/// written (bounded), or until this instance no longer holds the lease or shuts down (a
/// live run's coordinator that shuts down writes the model as it stands first). A coordinator
/// that takes over a run under way adopts the closes its predecessors published
/// ([`take_over_closes_log`]) and reads the inventory and the shards topic again from
/// their start, so it merges and writes every window again (the same bytes).
pub(super) async fn run(
    run: &GroupRun<'_>,
    mut held: watch::Receiver<bool>,
    models_tx: watch::Sender<Arc<Trainer>>,
    progress: Arc<watch::Sender<Progress>>,
    status: SharedStatus,
    cancel: CancellationToken,
) -> Result<Turn, PipelineError> {
    let GroupRun {
        config,
        topics,
        source_options,
    } = *run;
    let bounded = source_options.stop_at_end;
    let store = super::super::open_store(config)?;
    let names: Vec<String> = config
        .topics
        .inputs()
        .into_iter()
        .map(str::to_string)
        .collect();
    let counts = ensure_topics(&config.kafka, &names).await?;
    let count_of = |topic| {
        counts
            .get(input_topic_name(&config.topics, topic))
            .copied()
            .unwrap_or(0)
    };
    let options = log_options(&topics.closes, "closes");
    let me = options.writer.clone();
    let mut closes = LogWriter::create(&config.kafka, options).await?;
    let (adopted, mut closes_read) =
        match take_over_closes_log(config, bounded, topics, &mut closes, &me).await {
            Ok(taken) => taken,
            Err(e) => {
                stop_run(&mut closes, &e).await;
                return Err(e);
            }
        };
    // Where this turn starts: a checkpoint of an earlier turn on the same closes log, or
    // the start of the topics.
    let (resumed, adopted) = coordinator_checkpoint::load(config, adopted).await;
    // The inventory only: the shards read clicks and orders.
    let inventory_only: BTreeMap<String, i32> = [(
        config.topics.inventory.clone(),
        count_of(InputTopic::Inventory),
    )]
    .into();
    let start = resumed
        .as_ref()
        .map(|state| state.side.positions.clone())
        .unwrap_or_default();
    let (source, committer) = KafkaSource::connect(
        &config.kafka,
        &config.topics,
        &inventory_only,
        Arc::new(std::sync::Mutex::new(start)),
        true,
    )
    .await?;
    let (mut rx, source_task, source_cancel) =
        super::start_source(config, source, source_options, &cancel);

    let mut global_stage = GlobalStage::new(config, store, true)?;
    global_stage.stop_on_store_failure(cancel.clone());
    let (side_state, resumed_windows) = match resumed {
        Some(state) => {
            global_stage.resume(config, state.trainer, state.drift, state.store_rows);
            let windows = state.side.windows_closed;
            (Some(state.side), windows)
        }
        None => (None, 0),
    };
    let worker = GlobalWorker::new(
        config,
        global_stage,
        coordinator_checkpoint::plan(config)?,
        committer,
        false,
    )?;
    let global = GlobalHandle::start(
        worker,
        config.pipeline.worker_threads(),
        tokio::runtime::Handle::current(),
        cancel.clone(),
    )?;
    let mode = global.mode();
    update_status(&status, |s| s.global_stage_threads = Some(mode));
    if let Some(mut models) = global.models() {
        // This instance's shards serve with each model the global stage publishes.
        let models_tx = models_tx.clone();
        tokio::spawn(async move {
            while models.changed().await.is_ok() {
                let newest = Arc::clone(&models.borrow_and_update());
                if models_tx.send(newest).is_err() {
                    return;
                }
            }
        });
    }
    // Every other instance gets them through the broadcast; it ends with this side.
    let broadcast = cancel.child_token();
    let _stop_broadcast = broadcast.clone().drop_guard();
    tokio::spawn({
        let publish = model_broadcast::publish(
            config.clone(),
            topics.model.clone(),
            models_tx.subscribe(),
            broadcast,
        );
        async move {
            if let Err(e) = publish.await {
                tracing::error!(error = %e, "model broadcast: cannot publish; the other instances serve with the models they have");
            }
        }
    });
    let mut inputs = BTreeSet::new();
    for topic in [InputTopic::Clicks, InputTopic::Orders] {
        for p in 0..count_of(topic) {
            inputs.insert((topic, p));
        }
    }
    let from_checkpoint = side_state.is_some();
    let mut parts = match side_state {
        Some(parts) => parts,
        None => {
            let mut pipeline = FeaturePipeline::new(&config.pipeline);
            for &(topic, p) in &inputs {
                pipeline.register_partition(topic, p);
            }
            let (coordinator, _) = pipeline.into_parts();
            CoordinatorParts::fresh(config, coordinator, count_of(InputTopic::Clicks))
        }
    };
    // Where `<group>.shards` goes on: only this turn's reader needs it.
    let shards_position = std::mem::take(&mut parts.shards);
    let mut side = CoordinatorSide::new(
        config,
        bounded,
        parts,
        Wiring {
            global,
            closes,
            me: me.clone(),
            inputs,
            progress,
            models: models_tx,
            status,
        },
    )?;
    side.summary.coordinator_resumed_windows = resumed_windows;
    side.adopt(
        adopted,
        from_checkpoint.then(|| shards_position.next_offset()),
    );
    let mut shards = LogReader::open_at(&config.kafka, &topics.shards, shards_position).await?;
    let mut alive = tokio::time::interval(super::ALIVE_EVERY);
    alive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Ok(true): the final close is merged; Ok(false): handed over.
    let outcome = loop {
        if side.merged_final() {
            break Ok(true);
        }
        let step = tokio::select! {
            () = cancel.cancelled() => break Ok(false),
            // A newer start than this coordinator's: a holder that lost the lease started
            // late. Shards follow it, not this one, so this turn ends; while this instance
            // still holds the lease, its next turn starts after it and adopts its closes.
            entry = closes_read.next() => match entry {
                // Its own messages (closes with their inventory events) need no decoding.
                Ok(entry) if entry.writer == me => Ok(()),
                Ok(entry) => match protocol::decode::<ToShards>(&entry.payload) {
                    Ok(ToShards::Start { coordinator }) => {
                        tracing::warn!(
                            %coordinator,
                            "another coordinator started on the closes topic after this one: \
                             ending this turn"
                        );
                        break Ok(false);
                    }
                    Ok(_) => Ok(()),
                    Err(e) => Err(e.into()),
                },
                Err(e) => Err(e.into()),
            },
            _ = alive.tick() => match protocol::encode(&ToShards::Alive) {
                Ok(bytes) => side.closes.append(&bytes).await.map(|_| ()).map_err(Into::into),
                Err(e) => Err(e.into()),
            },
            changed = held.changed() => match changed {
                Ok(()) if *held.borrow_and_update() => Ok(()),
                _ => {
                    tracing::warn!(
                        "this instance lost the trainer lease: it stops coordinating; the \
                         next lease holder takes over from the closes log"
                    );
                    break Ok(false);
                }
            },
            entry = shards.next() => match entry {
                Ok(entry) => match protocol::decode::<ShardMessage>(&entry.payload) {
                    Ok(message) => side.on_shards(message).await,
                    Err(e) => Err(e.into()),
                },
                Err(e) => Err(e.into()),
            },
            message = rx.recv(), if !side.inventory_done => match message {
                Some(message) => side.on_inventory(message).await,
                // Ended with the run, maybe before this loop saw the cancellation.
                None if cancel.is_cancelled() => break Ok(false),
                None => Err(PipelineError::Internal("the inventory source stopped".into())),
            },
        };
        if let Err(e) = step {
            break Err(e);
        }
        if let Err(e) = side.decide_and_merge().await {
            break Err(e);
        }
        if let Err(e) = side.checkpoint(shards.position(), false).await {
            break Err(e);
        }
    };
    source_cancel.cancel();
    // Dropped first: a source blocked on a full channel then ends too.
    drop(rx);
    let _ = source_task.await;
    // A turn that ends early first waits for the windows its global stage has queued,
    // and for their store writes and compaction: nothing of this turn is written after it
    // (a next turn in this process may write the same files), and a global stage that
    // failed (which cancels the run) stops the run with its error instead of handing it
    // over.
    let outcome = match outcome {
        Ok(false) => {
            // A holder that shuts down leaves a checkpoint for the next one (one that
            // lost the lease does not: the holder now goes on from where it is).
            let checkpointed = if cancel.is_cancelled() && *held.borrow() {
                side.checkpoint(shards.position(), true).await
            } else {
                Ok(())
            };
            match checkpointed {
                Ok(()) => side.settle_global().await.map(|()| false),
                Err(e) => Err(e),
            }
        }
        other => other,
    };
    match outcome {
        Ok(true) => {}
        // A live run's coordinator that shuts down leaves the model as it stands, as the
        // job of one instance does at shutdown: trained on every window merged so far.
        // (One that lost the lease does not: the holder now writes it.)
        Ok(false) if !bounded && cancel.is_cancelled() && *held.borrow() => {
            return side
                .finish(false)
                .await
                .map(|summary| Turn::Stopped(Box::new(summary)));
        }
        // Nothing to tell the others: the closes log is the next coordinator's to go on.
        Ok(false) => return Ok(Turn::HandedOver),
        Err(e) => {
            stop_run(&mut side.closes, &e).await;
            return Err(e);
        }
    }
    // Every instance's shard side ends now (none ends before: see `ToShards::Merged`).
    if let Err(e) = side
        .closes
        .append(&protocol::encode(&ToShards::Merged)?)
        .await
    {
        let e = PipelineError::from(e);
        stop_run(&mut side.closes, &e).await;
        return Err(e);
    }
    side.finish(true)
        .await
        .map(|summary| Turn::Finished(Box::new(summary)))
}

/// How long a new coordinator waits for the next message while it reads the closes log
/// back to its own start.
const TAKE_OVER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Starts this coordinator's turn on the closes log and returns the closes its
/// predecessors published (none when it is the run's first), in order.
///
/// The log is read from its start up to this coordinator's `Start`. Each `Start` names the
/// coordinator whose messages count from there on; messages of any other writer (a lease
/// holder that lost the lease and has not noticed yet) are ignored, by the shards as here.
/// A predecessor's `Merged`, or in a bounded run its `Stop`, means the run is over (or the
/// group id is an earlier run's): that is an error, not something to take over. A live
/// run goes on after a `Stop` (its coordinator failed; this one meets the error again if it
/// lasts).
async fn take_over_closes_log(
    config: &Config,
    bounded: bool,
    topics: &GroupTopics,
    closes: &mut LogWriter,
    me: &str,
) -> Result<(Vec<(String, SequencedClose)>, LogReader), PipelineError> {
    let start = ToShards::Start {
        coordinator: me.to_string(),
    };
    closes.append(&protocol::encode(&start)?).await?;
    let mut reader = LogReader::open(&config.kafka, &topics.closes, 0).await?;
    let mut log = ClosesLog::default();
    // (The timeout is per message: a long log takes as long as it takes.)
    loop {
        let entry = tokio::time::timeout(TAKE_OVER_TIMEOUT, reader.next())
            .await
            .map_err(|_| {
                PipelineError::Internal(format!(
                    "reading internal topic {} back to this coordinator's start: no message \
                     for {} s",
                    topics.closes,
                    TAKE_OVER_TIMEOUT.as_secs()
                ))
            })??;
        let message = protocol::decode::<ToShards>(&entry.payload)?;
        if log.take(&entry.writer, message) == Some(me) {
            break;
        }
    }
    if let Some(end) = log.over(bounded) {
        return Err(PipelineError::Unsupported(format!(
            "internal topic {} holds a group run that has ended ({end}): a bounded group run \
             needs a kafka.group_id of its own; run again with a new one",
            topics.closes
        )));
    }
    if let Some(reason) = &log.stopped {
        tracing::warn!(
            %reason,
            "a coordinator of this live run stopped with an error; taking the run over"
        );
    }
    Ok((log.closes, reader))
}

/// The closes log as read up to a new coordinator's start.
#[derive(Debug, Default)]
struct ClosesLog {
    /// Whose messages count.
    current: CurrentCoordinator,
    /// The closes that count, in order, each with its author.
    closes: Vec<(String, SequencedClose)>,
    /// Why the run is over, when a coordinator ended it (`Merged`).
    ended: Option<String>,
    /// Why a coordinator stopped the run (`Stop`): the end of a bounded run, not of a live
    /// one.
    stopped: Option<String>,
}

impl ClosesLog {
    /// Why the run cannot be taken over: it ended (`Merged`), or, bounded, a coordinator
    /// stopped it.
    fn over(&self, bounded: bool) -> Option<String> {
        self.ended
            .clone()
            .or_else(|| self.stopped.clone().filter(|_| bounded))
    }

    /// Takes one message of `writer`; returns the coordinator a `Start` names.
    fn take(&mut self, writer: &str, message: ToShards) -> Option<&str> {
        if !self.current.counts(writer, &message) {
            return None;
        }
        match message {
            ToShards::Start { .. } => return self.current.writer(),
            ToShards::Close(close) => {
                // A coordinator numbers on from the closes it adopted, so these are
                // consecutive; one that is not is dropped rather than merged twice.
                if close.seq == self.closes.len() as u64 {
                    self.closes.push((writer.to_string(), close));
                }
            }
            ToShards::Stop { reason } => self.stopped = Some(format!("stopped: {reason}")),
            ToShards::Merged => self.ended = Some("its final close was merged".into()),
            ToShards::Alive => {}
        }
        None
    }
}

/// Tells every instance that the run stopped, so none waits for closes (best effort: the
/// error that stopped it is what this instance reports).
async fn stop_run(closes: &mut LogWriter, error: &PipelineError) {
    let stop = ToShards::Stop {
        reason: error.to_string(),
    };
    if let Ok(bytes) = protocol::encode(&stop)
        && let Err(e) = closes.append(&bytes).await
    {
        tracing::warn!(error = %e, "could not tell the other instances that the run stopped");
    }
}

impl<'a> CoordinatorSide<'a> {
    /// A side that goes on from `parts` (a checkpoint's, or a run's start).
    fn new(
        config: &'a Config,
        bounded: bool,
        parts: CoordinatorParts,
        wiring: Wiring,
    ) -> Result<Self, PipelineError> {
        let mut stage = ShardStage::with(config, parts.coordinator);
        stage.resume_cleaning(parts.cleaner, parts.held);
        Ok(Self {
            config,
            bounded,
            stage,
            global: wiring.global,
            outputs: Outputs::new(config, false)?,
            closes: wiring.closes,
            queue: parts.queue,
            decided: parts.decided,
            authors: parts.authors,
            me: wiring.me,
            next_seq: parts.next_seq,
            arrivals: parts.arrivals,
            released: parts.released,
            inputs: wiring.inputs,
            inventory_done: false,
            inventory_caught_up: BTreeMap::new(),
            final_seq: parts.final_seq,
            positions: parts.positions,
            checkpoints: coordinator_checkpoint::plan(config)?,
            last_checkpoint: parts.windows_closed,
            windows_closed: parts.windows_closed,
            effects: Vec::new(),
            summary: RunSummary::default(),
            progress: wiring.progress,
            models: wiring.models,
            published: None,
            status: wiring.status,
        })
    }

    /// Adopts the closes of the log after those this side's state already follows:
    /// published by its predecessors, to be merged by this one. `resumed_at`: the offset
    /// of `<group>.shards` a checkpoint goes on from, when this turn has one.
    fn adopt(&mut self, adopted: Vec<(String, SequencedClose)>, resumed_at: Option<i64>) {
        let known = self.next_seq;
        for (author, close) in adopted {
            if close.seq < known {
                continue;
            }
            self.stage.windowing_mut().adopt(&close.close);
            if close.close.is_final() {
                self.final_seq = Some(close.seq);
            }
            self.next_seq = close.seq + 1;
            self.decided.insert(close.seq, close.close);
            self.authors.insert(close.seq, author);
        }
        if let Some(shards_offset) = resumed_at {
            tracing::info!(
                windows_closed = self.windows_closed,
                closes_in_checkpoint = known,
                adopted = self.next_seq - known,
                shards_offset,
                "taking over a group run under way from the coordinator's checkpoint: \
                 adopted the closes published after it"
            );
        } else if self.next_seq > 0 {
            tracing::info!(
                adopted = self.next_seq,
                "taking over a group run under way: adopted the closes published so far; \
                 reading the inventory and the shards topic again from their start"
            );
        }
    }

    /// Takes a checkpoint when `checkpoint.every_windows` windows have closed since the
    /// last one (and `min_interval_secs` have passed), or with `now`; `shards` is where
    /// `<group>.shards` stands.
    async fn checkpoint(&mut self, shards: LogPosition, now: bool) -> Result<(), PipelineError> {
        let Some(plan) = &mut self.checkpoints else {
            return Ok(());
        };
        let due = plan.due_since(self.windows_closed, self.last_checkpoint);
        if !(due || now && self.windows_closed > self.last_checkpoint) {
            return Ok(());
        }
        plan.requested();
        self.last_checkpoint = self.windows_closed;
        // The inventory's dead letters before the checkpoint's positions are durable first.
        self.outputs.flush().await?;
        let parts = CoordinatorParts {
            group: self.config.kafka.group_id.clone(),
            windows_closed: self.windows_closed,
            shards,
            positions: self.positions.clone(),
            coordinator: self.stage.windowing().clone(),
            cleaner: self.stage.cleaner().clone(),
            held: self.stage.held_events(),
            queue: self.queue.clone(),
            decided: self.decided.clone(),
            authors: self.authors.clone(),
            next_seq: self.next_seq,
            arrivals: self.arrivals.clone(),
            released: self.released.clone(),
            final_seq: self.final_seq,
        };
        self.global.checkpoint_coordinator(parts).await
    }
}

impl CoordinatorSide<'_> {
    /// Whether the final close has been merged.
    fn merged_final(&self) -> bool {
        self.final_seq
            .is_some_and(|last| self.queue.next_seq() > last)
    }

    async fn on_inventory(&mut self, message: SourceMessage) -> Result<(), PipelineError> {
        match message {
            SourceMessage::Assigned(partitions) => {
                for (topic, p) in partitions {
                    self.stage.windowing_mut().register_partition(topic, p);
                    self.inventory_caught_up.entry(p).or_insert(false);
                }
            }
            SourceMessage::Event {
                meta,
                event,
                key,
                payload,
                received,
            } => {
                bump(&mut self.summary.consumed, meta.topic.as_str());
                self.positions
                    .insert((meta.topic, meta.partition), meta.offset + 1);
                let consumed = Consumed {
                    meta,
                    event,
                    key,
                    payload,
                    received,
                };
                let mut effects = std::mem::take(&mut self.effects);
                // The inventory has no impressions: the model is never used here.
                let model = self.global.serving_model();
                let handled = self.stage.on_event(consumed, model, &mut effects);
                let applied = self.apply(&mut effects).await;
                self.effects = effects;
                handled?;
                applied?;
            }
            SourceMessage::Rejected {
                meta,
                key,
                payload,
                rejection,
            } => {
                bump(&mut self.summary.consumed, meta.topic.as_str());
                // Read: a checkpoint after it does not dead-letter it again.
                self.positions
                    .insert((meta.topic, meta.partition), meta.offset + 1);
                self.dead_letter(meta, key.as_deref(), &payload, &rejection)
                    .await?;
            }
            SourceMessage::PartitionEof { partition, .. } if !self.bounded => {
                // Only where the partition stands: it still holds the watermark back.
                self.inventory_caught_up.insert(partition, true);
                if self.inventory_caught_up.values().all(|read| *read) {
                    update_status(&self.status, |s| s.coordinator_ready = true);
                }
            }
            SourceMessage::PartitionEof { topic, partition } => {
                let mut effects = std::mem::take(&mut self.effects);
                let handled = self.stage.resolve_all_held(
                    Some((topic, partition)),
                    self.global.serving_model(),
                    &mut effects,
                );
                let applied = self.apply(&mut effects).await;
                self.effects = effects;
                handled?;
                applied?;
                self.stage
                    .windowing_mut()
                    .partition_at_end(topic, partition);
            }
            SourceMessage::CaughtUp => {
                self.inventory_done = true;
                update_status(&self.status, |s| s.coordinator_ready = true);
            }
            SourceMessage::Revoked(_) => {}
        }
        Ok(())
    }

    /// Carries out the inventory's effects (it has no impressions, so no arrivals).
    async fn apply(&mut self, effects: &mut Vec<Effect>) -> Result<(), PipelineError> {
        let mut none = Vec::new();
        self.outputs
            .apply_effects(&mut self.summary, effects, None, &mut none)
            .await
    }

    async fn dead_letter(
        &mut self,
        meta: shopstream_kafka::source::RecordMeta,
        key: Option<&[u8]>,
        payload: &[u8],
        rejection: &Rejection,
    ) -> Result<(), PipelineError> {
        self.outputs
            .counted_dead_letter(&mut self.summary, meta, key, payload, rejection)
            .await
    }

    async fn on_shards(&mut self, message: ShardMessage) -> Result<(), PipelineError> {
        match message {
            ToCoordinator::Progress {
                report,
                released,
                arrivals,
            } => {
                for batch in arrivals {
                    let taken = self.arrivals.entry(batch.partition).or_default();
                    for (number, arrival) in (batch.first..).zip(batch.arrivals) {
                        // A replayed partition sends its arrivals again: each once.
                        if number == *taken {
                            self.global.arrival(arrival).await?;
                            *taken += 1;
                        }
                    }
                }
                self.stage.windowing_mut().observe(&report);
                for (topic, p) in released {
                    self.stage.windowing_mut().partition_at_end(topic, p);
                    self.released.insert((topic, p));
                }
            }
            ToCoordinator::Parts {
                seq,
                author,
                covers,
                parts,
            } => {
                // An answer to another coordinator's close of this number (one that lost
                // the lease unnoticed, or its successor) is not this close's.
                if self.authors.get(&seq).is_some_and(|known| *known != author) {
                    tracing::debug!(seq, %author, "an answer to another coordinator's close: ignored");
                } else {
                    self.queue.offer(seq, &covers, parts)?;
                }
            }
        }
        Ok(())
    }

    /// Publishes the closes the watermark allows (the final one once every input is
    /// read), then merges every close all partitions have answered.
    async fn decide_and_merge(&mut self) -> Result<(), PipelineError> {
        if self.final_seq.is_none() {
            while let Some(close) = self.stage.windowing_mut().close_ready() {
                self.publish(close).await?;
            }
            if self.inventory_done && self.inputs.is_subset(&self.released) {
                let close = self.stage.windowing_mut().finish();
                self.final_seq = Some(self.next_seq);
                self.publish(close).await?;
            }
        }
        while let Some((seq, parts)) = self.queue.pop_ready() {
            let close = self.decided.remove(&seq).ok_or_else(|| {
                PipelineError::Unsupported(format!(
                    "the shards answered close {seq}, which this coordinator never published: \
                     the internal topics hold an earlier run's messages; a bounded group run \
                     needs a kafka.group_id of its own"
                ))
            })?;
            if !close.is_empty() {
                let mut parts = parts;
                let refused: Vec<_> = parts
                    .iter_mut()
                    .flat_map(|part| std::mem::take(&mut part.refused))
                    .collect();
                for late in refused {
                    // Not met in bounded runs (see `Part::refused`); dead-lettered, not lost.
                    let payload = serde_json::to_vec(&late.event).map_err(|e| {
                        PipelineError::Internal(format!("re-encoding a late event: {e}"))
                    })?;
                    let rejection = Rejection {
                        reason: Reason::Late,
                        field: Some("ts".to_string()),
                        message: "event time fell in a window the coordinator had closed"
                            .to_string(),
                    };
                    self.dead_letter(late.meta, None, &payload, &rejection)
                        .await?;
                }
                let outputs = self.stage.windowing_mut().merge(&close, parts);
                for output in outputs {
                    self.window_closed(output).await?;
                }
            }
        }
        Ok(())
    }

    async fn publish(&mut self, close: Close) -> Result<(), PipelineError> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let message = ToShards::Close(SequencedClose {
            seq,
            close: close.clone(),
        });
        self.closes.append(&protocol::encode(&message)?).await?;
        self.decided.insert(seq, close);
        self.authors.insert(seq, self.me.clone());
        Ok(())
    }

    async fn window_closed(&mut self, output: WindowOutput) -> Result<(), PipelineError> {
        self.windows_closed += 1;
        let windows = self.windows_closed;
        self.progress.send_modify(|p| p.windows_closed = windows);
        let offsets = Arc::new(commit_offsets(&self.config.topics, &self.positions));
        self.global.window(output, true, offsets).await?;
        let due = self
            .published
            .is_none_or(|at| at.elapsed() >= PUBLISH_EVERY);
        if due {
            self.published = Some(std::time::Instant::now());
            // What the endpoints show of the global stage (as of its last window).
            let view = self.global.view();
            update_status(&self.status, |s| s.global = Some(view));
            if let Some(worker) = self.global.inline() {
                // Inline: no thread publishes the model, so this side does (a copy per
                // interval, not per window).
                let model = &worker.stage.trainer;
                if model.version() > self.models.borrow().version() {
                    self.models.send_replace(Arc::new(model.serving_copy()));
                }
            }
        }
        Ok(())
    }

    /// Waits for the global stage's queued windows, then for every store write,
    /// compaction and checkpoint it started.
    async fn settle_global(&mut self) -> Result<(), PipelineError> {
        self.global.join().await?;
        match self.global.inline() {
            Some(worker) => worker.flush().await,
            None => Ok(()),
        }
    }

    /// The end of a turn that writes the model: with `compact` (the end of a bounded run)
    /// the store compacted, then every write durable and the model written.
    async fn finish(mut self, compact: bool) -> Result<CoordinatorSummary, PipelineError> {
        if compact {
            self.global.compact_all().await?;
        }
        self.outputs.flush().await?;
        self.global.join().await?;
        let Some(worker) = self.global.inline() else {
            return Err(PipelineError::Internal(
                "the global stage did not come back from its thread".into(),
            ));
        };
        let grace = std::time::Duration::from_millis(self.config.drift.webhook_timeout_ms)
            .saturating_mul(2)
            .min(std::time::Duration::from_secs(10));
        worker.stage.close_webhook(grace).await;
        worker.flush().await?;
        crate::pipeline::save_model(self.config, &worker.stage.trainer)?;
        let view = worker.view();
        self.summary.dead_letters_published = self.outputs.dead_letters_delivered();
        Ok(CoordinatorSummary {
            view,
            windows_closed: self.windows_closed,
            inventory: self.summary,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(seq: u64, boundary: Option<i64>) -> ToShards {
        ToShards::Close(SequencedClose {
            seq,
            close: Close {
                boundary,
                windows: Vec::new(),
            },
        })
    }

    fn start(coordinator: &str) -> ToShards {
        ToShards::Start {
            coordinator: coordinator.into(),
        }
    }

    #[test]
    fn a_new_coordinator_adopts_the_closes_of_each_coordinator_after_its_start() {
        let mut log = ClosesLog::default();
        assert_eq!(log.take("a", start("a")), Some("a"));
        assert_eq!(log.take("a", close(0, Some(60_000))), None);
        assert_eq!(log.take("a", ToShards::Alive), None);
        assert_eq!(log.take("a", close(1, Some(120_000))), None);
        // b took over after close 1 and numbers on; a, which lost the lease without
        // noticing, still writes a close 2 of its own: ignored.
        log.take("b", start("b"));
        log.take("a", close(2, Some(999_000)));
        log.take("b", close(2, Some(180_000)));
        // A copy of a number already taken is not adopted twice.
        log.take("b", close(2, Some(180_000)));
        assert_eq!(log.take("c", start("c")), Some("c"));
        let boundaries: Vec<_> = log.closes.iter().map(|(_, c)| c.close.boundary).collect();
        let authors: Vec<_> = log.closes.iter().map(|(a, _)| a.as_str()).collect();
        assert_eq!(authors, ["a", "a", "b"]);
        assert_eq!(boundaries, [Some(60_000), Some(120_000), Some(180_000)]);
        assert!(log.ended.is_none());
    }

    #[test]
    fn a_log_whose_run_was_stopped_or_merged_is_not_taken_over() {
        let mut stopped = ClosesLog::default();
        stopped.take("a", start("a"));
        stopped.take(
            "a",
            ToShards::Stop {
                reason: "disk full".into(),
            },
        );
        assert!(stopped.over(true).is_some_and(|e| e.contains("disk full")));
        let mut merged = ClosesLog::default();
        merged.take("a", start("a"));
        merged.take("a", close(0, None));
        // Another writer's end does not count.
        merged.take("z", ToShards::Merged);
        assert!(merged.over(true).is_none());
        merged.take("a", ToShards::Merged);
        assert!(merged.over(true).is_some() && merged.over(false).is_some());
    }

    /// Guards "a live group keeps its group id": a coordinator that stopped with an error
    /// (a full disk, say) does not end a live run; the next lease holder takes it over.
    #[test]
    fn a_live_run_whose_coordinator_stopped_is_taken_over() {
        let mut log = ClosesLog::default();
        log.take("a", start("a"));
        log.take("a", close(0, Some(60_000)));
        log.take(
            "a",
            ToShards::Stop {
                reason: "disk full".into(),
            },
        );
        assert_eq!(log.take("b", start("b")), Some("b"));
        assert_eq!(log.over(false), None);
        assert!(log.over(true).is_some());
        assert_eq!(log.closes.len(), 1);
    }
}
