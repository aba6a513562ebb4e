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
use shopstream_features::protocol::{self, SequencedClose, ToCoordinator, ToShards};
use shopstream_features::{Close, Coordinator, FeaturePipeline, MergeQueue, WindowOutput};
use shopstream_ingest::decode::{Reason, Rejection};
use shopstream_ingest::event::InputTopic;
use shopstream_kafka::client::{ensure_topics, input_topic_name};
use shopstream_kafka::log::{LogReader, LogWriter};
use shopstream_kafka::source::{KafkaSource, Positions, SourceMessage};
use shopstream_trainer::Trainer;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::super::global::GlobalStage;
use super::super::global_worker::{GlobalHandle, GlobalView, GlobalWorker, PUBLISH_EVERY};
use super::super::outputs::Outputs;
use super::super::shard::{Consumed, Effect, ShardStage};
use super::super::source_loop::{bump, commit_offsets};
use super::super::{PipelineError, Progress, RunSummary};
use super::{GroupTopics, ShardMessage, SharedStatus, log_options, model_broadcast, update_status};

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
    /// The inventory's cleaning and the coordinator.
    stage: ShardStage<Coordinator>,
    global: GlobalHandle,
    /// The inventory's dead letters.
    outputs: Outputs,
    closes: LogWriter,
    queue: MergeQueue,
    /// Closes published and not merged yet.
    decided: BTreeMap<u64, Close>,
    next_seq: u64,
    /// Arrivals taken per partition number (the number of the next one).
    arrivals: BTreeMap<i32, u64>,
    /// Click and order partitions that have reported their end.
    released: BTreeSet<(InputTopic, i32)>,
    /// Every click and order partition.
    inputs: BTreeSet<(InputTopic, i32)>,
    inventory_done: bool,
    /// The final close's number, once published.
    final_seq: Option<u64>,
    /// Next offset per inventory partition (the commit records' offsets).
    positions: Positions,
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

/// Runs the coordinator until the final close is merged and the store and model are
/// written; fails when the lease is lost (failover is not built yet).
pub(super) async fn run(
    config: &Config,
    topics: &GroupTopics,
    mut held: watch::Receiver<bool>,
    models_tx: watch::Sender<Arc<Trainer>>,
    progress: Arc<watch::Sender<Progress>>,
    status: SharedStatus,
    cancel: CancellationToken,
) -> Result<CoordinatorSummary, PipelineError> {
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
    // The inventory only: the shards read clicks and orders.
    let inventory_only: BTreeMap<String, i32> = [(
        config.topics.inventory.clone(),
        count_of(InputTopic::Inventory),
    )]
    .into();
    let (source, committer) = KafkaSource::connect(
        &config.kafka,
        &config.topics,
        &inventory_only,
        Default::default(),
        true,
    )
    .await?;
    let (mut rx, source_task, source_cancel) = super::start_source(config, source, &cancel);

    let global_stage = GlobalStage::new(config, store, true)?;
    let worker = GlobalWorker::new(config, global_stage, None, committer, false)?;
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
    let mut pipeline = FeaturePipeline::new(&config.pipeline);
    let mut inputs = BTreeSet::new();
    for topic in [InputTopic::Clicks, InputTopic::Orders] {
        for p in 0..count_of(topic) {
            pipeline.register_partition(topic, p);
            inputs.insert((topic, p));
        }
    }
    let (coordinator, _) = pipeline.into_parts();
    let options = log_options(&topics.closes, "closes");
    let me = options.writer.clone();
    let mut closes = LogWriter::create(&config.kafka, options).await?;
    if let Err(e) = start_closes_log(config, topics, &mut closes, &me).await {
        stop_run(&mut closes, &e).await;
        return Err(e);
    }
    let mut shards = LogReader::open(&config.kafka, &topics.shards, 0).await?;
    let mut side = CoordinatorSide {
        config,
        stage: ShardStage::with(config, coordinator),
        global,
        outputs: Outputs::new(config, false)?,
        closes,
        queue: MergeQueue::new(0..count_of(InputTopic::Clicks), 0),
        decided: BTreeMap::new(),
        next_seq: 0,
        arrivals: BTreeMap::new(),
        released: BTreeSet::new(),
        inputs,
        inventory_done: false,
        final_seq: None,
        positions: Positions::new(),
        windows_closed: 0,
        effects: Vec::new(),
        summary: RunSummary::default(),
        progress,
        models: models_tx,
        published: None,
        status,
    };
    let outcome = loop {
        if side.merged_final() {
            break Ok(());
        }
        let step = tokio::select! {
            () = cancel.cancelled() => Err(stopped()),
            changed = held.changed() => match changed {
                Ok(()) if *held.borrow_and_update() => Ok(()),
                _ => Err(PipelineError::Unsupported(
                    "this instance lost the trainer lease during a bounded group run; \
                     failover is not built yet (docs/scale-out.md step 3): rerun with a new \
                     kafka.group_id".into(),
                )),
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
                None if cancel.is_cancelled() => Err(stopped()),
                None => Err(PipelineError::Internal("the inventory source stopped".into())),
            },
        };
        if let Err(e) = step {
            break Err(e);
        }
        if let Err(e) = side.decide_and_merge().await {
            break Err(e);
        }
    };
    source_cancel.cancel();
    // Dropped first: a source blocked on a full channel then ends too.
    drop(rx);
    let _ = source_task.await;
    if let Err(e) = outcome {
        stop_run(&mut side.closes, &e).await;
        return Err(e);
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
    side.finish().await
}

/// Why a coordinator that was cancelled stopped.
fn stopped() -> PipelineError {
    PipelineError::Unsupported(
        "the coordinating instance was stopped before the end of the bounded group run \
         (failover is not built yet); run it again with a new kafka.group_id"
            .into(),
    )
}

/// Starts the closes log of this coordinator: its start must be the log's first message.
/// Anything before it is an earlier coordinator's (a run already under way whose lease
/// moved, or an earlier run of the same group), whose closes this one would contradict.
async fn start_closes_log(
    config: &Config,
    topics: &GroupTopics,
    closes: &mut LogWriter,
    me: &str,
) -> Result<(), PipelineError> {
    let start = ToShards::Start {
        coordinator: me.to_string(),
    };
    closes.append(&protocol::encode(&start)?).await?;
    let mut reader = LogReader::open(&config.kafka, &topics.closes, 0).await?;
    let first = tokio::time::timeout(std::time::Duration::from_secs(60), reader.next())
        .await
        .map_err(|_| {
            PipelineError::Internal(format!(
                "reading back the start of internal topic {} timed out after 60 s",
                topics.closes
            ))
        })??;
    match protocol::decode::<ToShards>(&first.payload)? {
        ToShards::Start { coordinator } if coordinator == me => Ok(()),
        _ => Err(PipelineError::Unsupported(format!(
            "internal topic {} already holds another coordinator's messages: the trainer              lease moved during the run (failover is not built yet, docs/scale-out.md              step 3) or an earlier run used this group; run again with a new kafka.group_id",
            topics.closes
        ))),
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
                self.dead_letter(meta, key.as_deref(), &payload, &rejection)
                    .await?;
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
            ToCoordinator::Parts { seq, covers, parts } => {
                self.queue.offer(seq, &covers, parts)?;
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

    /// The end of the run: the store compacted, every write durable, the model written.
    async fn finish(mut self) -> Result<CoordinatorSummary, PipelineError> {
        self.global.compact_all().await?;
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
        if let Some(path) = &self.config.model.path {
            let trainer = &worker.stage.trainer;
            trainer
                .save(path)
                .map_err(|e| PipelineError::Internal(e.to_string()))?;
            tracing::info!(path = %path.display(), version = trainer.version(), "model written");
        }
        let view = worker.view();
        self.summary.dead_letters_published = self.outputs.dead_letters_delivered();
        Ok(CoordinatorSummary {
            view,
            windows_closed: self.windows_closed,
            inventory: self.summary,
        })
    }
}
