//! Every instance's part of a group run: the click and order partitions the group assigns
//! it, one [`Follower`] per partition number, talking to the coordinator only through the
//! internal topics.
//!
//! A partition number's stage starts from its newest checkpoint whenever it is assigned
//! (this instance at start, or a new owner after a rebalance), or from scratch when it has
//! none ([`partition_checkpoint`](super::partition_checkpoint)). It skips what the
//! checkpoint holds, reads the rest of the partition and applies the closes read so far
//! as they come due, then every close once both of its topics are read to their end (in a
//! live run, to where they are: the closes come from reports of no more than that). Its
//! answers are the first owner's (the property test
//! `a_partition_replayed_with_the_closes_log_answers_every_close_the_same`); the
//! coordinator keeps the first copy. Predictions and dead letters of what it reads again
//! are published again (at least once, as after a crash).
//!
//! A partition is checkpointed every `checkpoint.every_windows` closes applied (at most
//! once per `checkpoint.min_interval_secs`), when it is revoked, and when the instance
//! stops, each time once what the checkpoint covers has been sent to the coordinator.
//! The side keeps the closes from the oldest checkpoint of the partitions it holds on
//! ([`KeptCloses`]); a stage that needs older ones reads the closes log again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use shopstream_config::Config;
use shopstream_features::protocol::{
    self, CurrentCoordinator, SequencedClose, ToCoordinator, ToShards,
};
use shopstream_features::{Coordinator, FeaturePipeline, Follower, Report, ShardSet};
use shopstream_ingest::event::InputTopic;
use shopstream_kafka::log::{LogReader, LogWriter};
use shopstream_kafka::source::{
    AssignmentStarts, KafkaSource, OffsetCommitter, Positions, SourceMessage,
};
use shopstream_trainer::Trainer;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::super::outputs::Outputs;
use super::super::shard::{Consumed, Effect, ShardStage};
use super::super::source_loop::bump;
use super::super::{PipelineError, Progress, RunSummary};
use super::kept_closes::{KeptCloses, Reread};
use super::partition_checkpoint::{
    PartitionCheckpoints, PartitionStateRef, ResumePoints, STATE_VERSION,
};
use super::{Arrivals, GroupRun, ShardMessage, SharedStatus, log_options, now_ms, update_status};

/// Source messages handled before progress is sent even if more are queued.
const PROGRESS_EVERY: usize = 1_024;

/// The endpoints' copy of the counters is refreshed at most this often: the endpoints
/// refresh every 500 ms, and progress goes out far more often than that.
const STATUS_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

/// One partition number held: its stage and what it has sent.
struct Held {
    stage: ShardStage<Follower>,
    /// Drift arrivals produced so far (the number of the next one).
    arrivals: u64,
    /// Arrivals not sent yet.
    unsent: Vec<shopstream_drift::stage::Arrival>,
    /// Its topics read to their end.
    at_end: BTreeSet<InputTopic>,
    /// Next offset per topic of the messages handled (a checkpoint's positions).
    positions: BTreeMap<InputTopic, i64>,
    /// The positions of the checkpoint the stage started from: a message below them is in
    /// the checkpoint, and skipped. (Only those: skipping whatever is below the messages
    /// handled would lose messages a consumer delivers out of order.)
    resume_from: BTreeMap<InputTopic, i64>,
    /// Closes applied when the stage was last checkpointed (or started), and when.
    checkpointed: (u64, Option<std::time::Instant>),
}

struct ShardSide<'a> {
    config: &'a Config,
    /// A bounded run: the end of a partition is the end of its input (held events are
    /// decided, and the partition no longer holds closes back). In a live run it is only
    /// where the partition stands now.
    bounded: bool,
    /// The features stage as a run starts: every new stage starts from it.
    initial: Coordinator,
    held: BTreeMap<i32, Held>,
    /// The closes read that a stage starting later may need, with who published each
    /// (for the answers).
    kept: KeptCloses,
    /// The closes log (`<prefix>.closes`), read again for the closes `kept` dropped.
    closes_topic: String,
    /// Partitions read to their end since the last progress.
    released: Vec<(InputTopic, i32)>,
    /// Answers not sent yet, in order.
    answers: Vec<ShardMessage>,
    outputs: Outputs,
    log: LogWriter,
    /// Per-partition checkpoints, with those the source started each assignment from
    /// (none when `checkpoint.enabled` is off).
    resume_points: Option<Arc<ResumePoints>>,
    /// Erasures recorded in the store: applied to the stages held at each checkpoint and
    /// to a stage loaded from a checkpoint.
    erasures: super::super::erasures::Erasures,
    /// Commits a partition checkpoint's offsets to the group once it is written, for
    /// lag monitoring (a new owner starts at the checkpoint's, never the committed ones).
    committer: OffsetCommitter,
    /// The coordinator has merged the final close (a bounded run is over): only then is
    /// this side done. (Done when every partition held had answered the final close was
    /// wrong: a rebalance as another instance left could revoke them all just before, and
    /// the partitions handed back were never answered.)
    merged: bool,
    models: watch::Receiver<Arc<Trainer>>,
    serving: Arc<Trainer>,
    effects: Vec<Effect>,
    summary: RunSummary,
    /// The instance's live counters.
    progress: Arc<watch::Sender<Progress>>,
    /// What the instance's endpoints show, and when its copy of the counters was last
    /// updated.
    status: SharedStatus,
    status_at: Option<std::time::Instant>,
}

/// How long the shard side waits for the commit of a checkpoint's offsets.
const COMMIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs the shard side until the coordinator says the final close is merged (bounded), or
/// until `cancel`.
pub(super) async fn run(
    run: &GroupRun<'_>,
    partitions: &BTreeMap<String, i32>,
    mut models: watch::Receiver<Arc<Trainer>>,
    progress: Arc<watch::Sender<Progress>>,
    status: SharedStatus,
    cancel: CancellationToken,
) -> Result<RunSummary, PipelineError> {
    let GroupRun {
        config,
        topics,
        source_options,
    } = *run;
    let bounded = source_options.stop_at_end;
    let mut pipeline = FeaturePipeline::new(&config.pipeline);
    for topic in [InputTopic::Clicks, InputTopic::Orders] {
        let name = shopstream_kafka::client::input_topic_name(&config.topics, topic);
        for p in 0..partitions.get(name).copied().unwrap_or(0) {
            pipeline.register_partition(topic, p);
        }
    }
    let (initial, _) = pipeline.into_parts();
    let log = LogWriter::create(&config.kafka, log_options(&topics.shards, "shards")).await?;
    let mut closes = LogReader::open(&config.kafka, &topics.closes, 0).await?;
    // The source starts a partition number it is assigned where its checkpoint stands,
    // and the stage resumes from that same checkpoint.
    let resume_points = PartitionCheckpoints::of(config)?
        .map(|checkpoints| Arc::new(ResumePoints::new(checkpoints)));
    let starts = resume_points
        .clone()
        .map(|points| points as Arc<dyn AssignmentStarts>);
    let (source, committer) =
        KafkaSource::connect_group(&config.kafka, &config.topics, starts).await?;
    // Not stopped by the run's cancellation: at shutdown the partitions held are
    // checkpointed first, and only then does the source leave the group (which moves
    // them). A side dropped without that (its task aborted) drops the receiver, and the
    // source leaves then.
    let (mut rx, source_task, source_cancel) =
        super::start_source(config, source, source_options, &CancellationToken::new());
    let serving = Arc::clone(&models.borrow_and_update());
    let mut side = ShardSide {
        config,
        bounded,
        initial,
        held: BTreeMap::new(),
        kept: KeptCloses::default(),
        closes_topic: topics.closes.clone(),
        released: Vec::new(),
        answers: Vec::new(),
        outputs: Outputs::new(config, false)?,
        log,
        resume_points,
        erasures: super::super::erasures::Erasures::open(config)?,
        committer,
        merged: false,
        models,
        serving,
        effects: Vec::new(),
        summary: RunSummary::default(),
        progress,
        status,
        status_at: None,
    };
    let mut since_progress = 0usize;
    // Whose closes count: the coordinator that started last on the closes log (a new
    // lease holder takes over the run from there, docs/scale-out.md).
    let mut current = CurrentCoordinator::default();
    let outcome = loop {
        if side.merged {
            break side.send().await;
        }
        tokio::select! {
            // Shutdown, or this instance's coordinator failed (its error is the run's):
            // what this side did so far is its summary.
            () = cancel.cancelled() => break Ok(()),
            entry = closes.next() => {
                let step = match entry {
                    Ok(entry) => match protocol::decode::<ToShards>(&entry.payload) {
                        // A lease holder that lost the lease and has not noticed yet:
                        // its successor numbers on from the closes before its start.
                        Ok(message) if !current.counts(&entry.writer, &message) => Ok(()),
                        Ok(ToShards::Start { .. } | ToShards::Alive) => {
                            side.coordinator_seen();
                            Ok(())
                        }
                        Ok(ToShards::Close(close)) => {
                            side.coordinator_seen();
                            side.on_close(close, entry.writer, entry.offset);
                            Ok(())
                        }
                        Ok(ToShards::Merged) => {
                            side.merged = true;
                            Ok(())
                        }
                        // A live run goes on under the next lease holder, which meets the
                        // error again if it lasts.
                        Ok(ToShards::Stop { reason }) if !side.bounded => {
                            tracing::warn!(
                                %reason,
                                "the coordinating instance stopped with an error; waiting for \
                                 the next lease holder"
                            );
                            Ok(())
                        }
                        Ok(ToShards::Stop { reason }) => Err(PipelineError::Unsupported(format!(
                            "the coordinating instance stopped the group run: {reason}"
                        ))),
                        Err(e) => Err(e.into()),
                    },
                    Err(e) => Err(e.into()),
                };
                if let Err(e) = step {
                    break Err(e);
                }
                if let Err(e) = side.send().await {
                    break Err(e);
                }
            }
            message = rx.recv() => {
                let Some(message) = message else {
                    if cancel.is_cancelled() {
                        // The source ended with the run, maybe before this loop saw it.
                        break Ok(());
                    }
                    break Err(PipelineError::Internal("the group source stopped".into()));
                };
                if let Err(e) = side.on_message(message).await {
                    break Err(e);
                }
                since_progress += 1;
                if rx.is_empty() || since_progress >= PROGRESS_EVERY {
                    since_progress = 0;
                    if let Err(e) = side.send().await {
                        break Err(e);
                    }
                }
            }
        }
    };
    // Stopped (or done): what it holds goes on from here wherever it moves.
    let outcome = match outcome {
        Ok(()) if !side.merged => side.checkpoint_all().await,
        other => other,
    };
    source_cancel.cancel();
    // Dropped first: a source blocked on a full channel then ends too.
    drop(rx);
    let _ = source_task.await;
    outcome?;
    side.outputs.flush().await?;
    side.summary.predictions_published = side.outputs.predictions_delivered();
    side.summary.dead_letters_published = side.outputs.dead_letters_delivered();
    Ok(side.summary)
}

impl Held {
    /// A partition number's stage, from its start or (`resumed`: the drift arrivals sent
    /// and the positions read) from a checkpoint, which counts as its last one.
    fn new(stage: ShardStage<Follower>, resumed: Option<(u64, BTreeMap<InputTopic, i64>)>) -> Self {
        let applied = stage.windowing().next_seq();
        let at = resumed.is_some().then(std::time::Instant::now);
        let (arrivals, positions) = resumed.unwrap_or_default();
        Self {
            stage,
            arrivals,
            unsent: Vec::new(),
            at_end: BTreeSet::new(),
            resume_from: positions.clone(),
            positions,
            checkpointed: (applied, at),
        }
    }

    /// Whether the message at `meta` is to be handled: not in the checkpoint the stage
    /// started from. It is then noted as read (the next checkpoint's position).
    fn handles(&mut self, meta: shopstream_kafka::source::RecordMeta) -> bool {
        if self
            .resume_from
            .get(&meta.topic)
            .is_some_and(|from| meta.offset < *from)
        {
            return false;
        }
        let next = self.positions.entry(meta.topic).or_insert(0);
        *next = (*next).max(meta.offset + 1);
        true
    }
}

impl ShardSide<'_> {
    /// A stage for partition number `p`, from its newest checkpoint if it has one, with
    /// every close read so far from that checkpoint's on (those no longer kept are read
    /// again from the closes log).
    async fn stage_of(&mut self, p: i32) -> Result<Held, PipelineError> {
        // The checkpoint the source started this assignment's reading at; one the
        // source did not ask for (it read from the start) may be any.
        let loaded = match &self.resume_points {
            Some(points) => match points.take(p) {
                Some(state) => state,
                None => points.checkpoints.load(p).await,
            },
            None => None,
        };
        let mut held = match loaded {
            Some(state) => {
                self.summary.partitions_resumed += 1;
                let mut follower = state.follower;
                let erased = self.erasures.applied_users();
                super::super::erasures::report(erased, follower.set_mut().forget_users(erased));
                let mut stage = ShardStage::with(self.config, follower);
                stage.resume_cleaning(state.cleaner, state.held);
                Held::new(stage, Some((state.arrivals, state.positions)))
            }
            None => {
                let set = ShardSet::new(&self.initial, BTreeMap::new(), move |_, q| q == p);
                let follower = Follower::new(set, 0, false);
                Held::new(ShardStage::with(self.config, follower), None)
            }
        };
        let from = held.stage.windowing().next_seq();
        if let Some(reread) = self.kept.reread_for(from) {
            let closes = self.reread_closes(p, reread).await?;
            self.summary.closes_reread += closes.len() as u64;
            for (close, author) in closes {
                self.kept.note_author(close.seq, author);
                held.stage.windowing_mut().push_close(close);
            }
        }
        for close in self.kept.iter() {
            held.stage.windowing_mut().push_close(close.clone());
        }
        Ok(held)
    }

    /// Reads the closes log from its start again for the closes partition number `p`'s
    /// new stage needs and the side no longer keeps.
    async fn reread_closes(
        &self,
        p: i32,
        mut reread: Reread,
    ) -> Result<Vec<(SequencedClose, String)>, PipelineError> {
        let range = reread.range();
        tracing::info!(
            partition = p,
            from = range.start,
            to = range.end,
            "reading the closes log again for closes no longer kept"
        );
        let mut log = LogReader::open(&self.config.kafka, &self.closes_topic, 0).await?;
        while !reread.take(&log.next().await?)? {}
        reread.finish().map_err(|missing| {
            PipelineError::Internal(format!(
                "partition {p} needs close {missing} of {}, which reading the log again \
                 did not find (closes {}..{} were read there before)",
                self.closes_topic, range.start, range.end
            ))
        })
    }

    /// Drops the closes no stage held can need again: those before the oldest
    /// checkpoint of the partitions held.
    fn drop_unneeded_closes(&mut self) {
        let floor = self.held.values().map(|h| h.checkpointed.0).min();
        self.kept.drop_below(floor);
        tracing::debug!(
            kept = self.kept.len(),
            from = self.kept.first(),
            "closes kept for stages that start later"
        );
    }

    /// Writes partition number `p`'s checkpoint (once [`ShardSide::send`] has sent what
    /// it covers).
    async fn checkpoint(&mut self, p: i32) -> Result<(), PipelineError> {
        if self.resume_points.is_some() {
            // Users erased since the last checkpoint leave every stage held before any is
            // written.
            let erased = self.erasures.take_new()?;
            if !erased.is_empty() {
                let dropped = self
                    .held
                    .values_mut()
                    .map(|h| h.stage.windowing_mut().set_mut().forget_users(&erased))
                    .sum();
                super::super::erasures::report(&erased, dropped);
            }
        }
        let (Some(points), Some(held)) = (&self.resume_points, self.held.get_mut(&p)) else {
            return Ok(());
        };
        let applied = held.stage.windowing().next_seq();
        let state = PartitionStateRef {
            version: STATE_VERSION,
            partition: p,
            follower: held.stage.windowing(),
            cleaner: held.stage.cleaner(),
            held: held.stage.held_events(),
            arrivals: held.arrivals,
            positions: &held.positions,
        };
        points.checkpoints.write(&state, applied).await?;
        held.checkpointed = (applied, Some(std::time::Instant::now()));
        self.summary.partition_checkpoints += 1;
        let positions: Positions = held
            .positions
            .iter()
            .map(|(topic, next)| ((*topic, p), *next))
            .collect();
        // Monitoring only, so a failed commit (the partition moved meanwhile, say) is
        // reported, not fatal, and never waited for long: the next checkpoint commits
        // again.
        match tokio::time::timeout(COMMIT_TIMEOUT, self.committer.commit(&positions)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(partition = p, error = %e, "could not commit a partition checkpoint's offsets");
            }
            Err(_) => tracing::warn!(
                partition = p,
                timeout_secs = COMMIT_TIMEOUT.as_secs(),
                "committing a partition checkpoint's offsets took too long; going on without"
            ),
        }
        self.drop_unneeded_closes();
        Ok(())
    }

    /// Sends what is pending, then checkpoints every partition held (at shutdown, before
    /// the source leaves the group).
    async fn checkpoint_all(&mut self) -> Result<(), PipelineError> {
        self.send_pending().await?;
        let numbers: Vec<i32> = self.held.keys().copied().collect();
        for p in numbers {
            self.checkpoint(p).await?;
        }
        Ok(())
    }

    /// Checkpoints the partitions due for one (after [`ShardSide::send`]; none once the
    /// run is merged, when the lease holder deletes them).
    async fn checkpoint_due(&mut self) -> Result<(), PipelineError> {
        let Some(points) = self.resume_points.as_ref().filter(|_| !self.merged) else {
            return Ok(());
        };
        let due: Vec<i32> = self
            .held
            .iter()
            .filter(|(_, held)| {
                let (last, at) = held.checkpointed;
                points
                    .checkpoints
                    .due(held.stage.windowing().next_seq(), last, at)
            })
            .map(|(p, _)| *p)
            .collect();
        for p in due {
            self.checkpoint(p).await?;
        }
        Ok(())
    }

    fn on_close(&mut self, close: SequencedClose, author: String, offset: i64) {
        for held in self.held.values_mut() {
            held.stage.windowing_mut().push_close(close.clone());
        }
        // Kept before the answers, which name its author.
        self.kept.push(close, author, offset);
        let numbers: Vec<i32> = self.held.keys().copied().collect();
        for p in numbers {
            self.answer(p);
        }
    }

    /// Applies the closes partition number `p` can apply now and queues its answers.
    fn answer(&mut self, p: i32) {
        let Some(held) = self.held.get_mut(&p) else {
            return;
        };
        for (seq, parts) in held.stage.windowing_mut().apply_due() {
            let author = self.kept.author(seq).unwrap_or_default().to_string();
            self.answers.push(ToCoordinator::Parts {
                seq,
                author,
                covers: vec![p],
                parts,
            });
        }
    }

    /// Shows the partitions held and whether each is read to its end on the endpoints
    /// (called when either changes: an assignment, a revocation, a partition caught up).
    fn show_ownership(&self) {
        let owned = self
            .held
            .keys()
            .flat_map(|p| [(InputTopic::Clicks, *p), (InputTopic::Orders, *p)])
            .collect();
        let ready = !self.held.is_empty() && self.held.values().all(|h| h.at_end.len() == 2);
        update_status(&self.status, |s| {
            s.owned = owned;
            s.shard_ready = ready;
        });
    }

    /// Notes, for the lease watchdog, that a message of the coordinator was just read.
    fn coordinator_seen(&self) {
        let now = now_ms();
        update_status(&self.status, |s| s.coordinator_seen_ms = now);
    }

    /// Serves with the newest model this instance holds.
    fn take_newest_model(&mut self) {
        if self.models.has_changed().unwrap_or(false) {
            self.serving = Arc::clone(&self.models.borrow_and_update());
        }
    }

    async fn on_message(&mut self, message: SourceMessage) -> Result<(), PipelineError> {
        self.take_newest_model();
        match message {
            SourceMessage::Assigned(partitions) => {
                for (topic, p) in partitions {
                    if !self.held.contains_key(&p) {
                        let held = self.stage_of(p).await?;
                        self.held.insert(p, held);
                    }
                    if let Some(held) = self.held.get_mut(&p) {
                        held.at_end.remove(&topic);
                    }
                }
                self.show_ownership();
            }
            SourceMessage::Revoked(partitions) => {
                // The new owner goes on from their checkpoints (written here once what
                // they cover is sent: it may load an older one if it is quicker, which
                // only costs it more reading); what this instance sent stays valid.
                self.send_pending().await?;
                let numbers: BTreeSet<i32> = partitions.iter().map(|(_, p)| *p).collect();
                for p in numbers {
                    self.checkpoint(p).await?;
                    self.held.remove(&p);
                }
                self.drop_unneeded_closes();
                self.show_ownership();
            }
            SourceMessage::Event {
                meta,
                event,
                key,
                payload,
                received,
            } => {
                let Some(held) = self.held.get_mut(&meta.partition) else {
                    // Read just before its revocation reached this loop: its new owner
                    // reads it.
                    bump(&mut self.summary.consumed, meta.topic.as_str());
                    return Ok(());
                };
                if !held.handles(meta) {
                    self.summary.checkpoint_skipped += 1;
                    return Ok(());
                }
                bump(&mut self.summary.consumed, meta.topic.as_str());
                let consumed = Consumed {
                    meta,
                    event,
                    key,
                    payload,
                    received,
                };
                let mut effects = std::mem::take(&mut self.effects);
                let handled = held.stage.on_event(consumed, &self.serving, &mut effects);
                let applied = self.apply(meta.partition, &mut effects).await;
                self.effects = effects;
                handled?;
                applied?;
                self.answer(meta.partition);
            }
            SourceMessage::Rejected {
                meta,
                key,
                payload,
                rejection,
            } => {
                let handled = self.held.get_mut(&meta.partition).map(|h| h.handles(meta));
                if handled == Some(false) {
                    self.summary.checkpoint_skipped += 1;
                    return Ok(());
                }
                bump(&mut self.summary.consumed, meta.topic.as_str());
                if handled == Some(true) {
                    self.dead_letter(meta, key.as_deref(), &payload, &rejection)
                        .await?;
                }
            }
            SourceMessage::PartitionEof { topic, partition } => {
                let Some(held) = self.held.get_mut(&partition) else {
                    return Ok(());
                };
                if !self.bounded {
                    // Only where the partition stands now, which proves nothing about an
                    // earlier owner: one that has not seen its revocation yet may still
                    // read (and report) what is written after. So closes keep applying as
                    // the partition's own watermark passes them (`ShardSet::is_due`),
                    // which holds for every close decided from its reports, whoever sent
                    // them; the end only makes the shard role ready.
                    if held.at_end.insert(topic) && held.at_end.len() == 2 {
                        self.show_ownership();
                    }
                    return Ok(());
                }
                let mut effects = std::mem::take(&mut self.effects);
                let handled = held.stage.resolve_all_held(
                    Some((topic, partition)),
                    &self.serving,
                    &mut effects,
                );
                held.stage
                    .windowing_mut()
                    .set_mut()
                    .release(topic, partition);
                held.at_end.insert(topic);
                if held.at_end.len() == 2 {
                    // Read as far as any earlier owner: every close read so far applies.
                    held.stage.windowing_mut().caught_up();
                    self.show_ownership();
                }
                let applied = self.apply(partition, &mut effects).await;
                self.effects = effects;
                handled?;
                applied?;
                self.released.push((topic, partition));
                self.answer(partition);
            }
            SourceMessage::CaughtUp => {}
        }
        Ok(())
    }

    /// Carries out a stage's effects: outputs now, arrivals with the next progress.
    async fn apply(&mut self, p: i32, effects: &mut Vec<Effect>) -> Result<(), PipelineError> {
        let mut none = Vec::new();
        let arrivals = match self.held.get_mut(&p) {
            Some(held) => &mut held.unsent,
            // (Not reached: effects come from a held stage.)
            None => &mut none,
        };
        self.outputs
            .apply_effects(&mut self.summary, effects, None, arrivals)
            .await
    }

    async fn dead_letter(
        &mut self,
        meta: shopstream_kafka::source::RecordMeta,
        key: Option<&[u8]>,
        payload: &[u8],
        rejection: &shopstream_ingest::decode::Rejection,
    ) -> Result<(), PipelineError> {
        self.outputs
            .counted_dead_letter(&mut self.summary, meta, key, payload, rejection)
            .await
    }

    /// [`ShardSide::send_pending`], then the partitions due for a checkpoint.
    async fn send(&mut self) -> Result<(), PipelineError> {
        self.send_pending().await?;
        // Everything the checkpoints cover has reached the coordinator.
        self.checkpoint_due().await
    }

    /// Sends the progress since the last one, then the answers queued after it.
    async fn send_pending(&mut self) -> Result<(), PipelineError> {
        let mut report = Report::default();
        let mut arrivals = Vec::new();
        for (p, held) in &mut self.held {
            let own = held.stage.windowing_mut().set_mut().take_report();
            report.newest.extend(own.newest);
            report.starts.extend(own.starts);
            if !held.unsent.is_empty() {
                let sent = std::mem::take(&mut held.unsent);
                let first = held.arrivals;
                held.arrivals += sent.len() as u64;
                arrivals.push(Arrivals {
                    partition: *p,
                    first,
                    arrivals: sent,
                });
            }
        }
        // (Also when no message came: a side waiting for closes reports what it serves.)
        self.take_newest_model();
        let consumed = self.summary.consumed.values().sum();
        let impressions = self.summary.impressions;
        let serving = self.serving.version();
        self.progress.send_modify(|p| {
            p.consumed = consumed;
            p.impressions = impressions;
            p.serving_model_version = serving;
        });
        if self.status_at.is_none_or(|at| at.elapsed() >= STATUS_EVERY) {
            self.status_at = Some(std::time::Instant::now());
            update_status(&self.status, |s| s.shard.clone_from(&self.summary));
        }
        let released = std::mem::take(&mut self.released);
        if !report.is_empty() || !released.is_empty() || !arrivals.is_empty() {
            let progress: ShardMessage = ToCoordinator::Progress {
                report,
                released,
                arrivals,
            };
            self.log.append(&protocol::encode(&progress)?).await?;
        }
        for answer in std::mem::take(&mut self.answers) {
            self.log.append(&protocol::encode(&answer)?).await?;
        }
        Ok(())
    }
}
