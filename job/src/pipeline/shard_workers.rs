//! Shard workers: the partition-scoped work on `pipeline.workers` threads.
//!
//! Worker `i` holds the partition numbers `p` with `p % workers == i` of clicks and
//! orders: their cleaner state and held events, and their shards of the features stage
//! (a [`ShardSet`]). For its events it cleans, serves a prediction per impression, and
//! buffers them in their windows. The source loop keeps the rest, the coordinator side:
//! the inventory, which windows close, and the merge.
//!
//! The two sides exchange the messages of docs/scale-out.md through channels: events and
//! [`Close`]s go to a worker in order; effects with a [`Report`] (newest event times and
//! window starts), [`Part`]s and snapshots come back on one channel. A worker sends its
//! report before anything that depends on it, so the coordinator always knows every
//! event a part or snapshot covers.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use shopstream_config::Config;
use shopstream_features::{Close, Coordinator, Part, Report, Shard, ShardSet};
use shopstream_ingest::clean::Cleaner;
use shopstream_ingest::event::InputTopic;
use shopstream_trainer::Trainer;
use tokio::sync::{mpsc, watch};

use super::PipelineError;
use super::shard::{Consumed, Effect, ShardStage};
use crate::recovery::HeldEvent;

/// Messages a worker takes, carried out in order.
#[allow(
    clippy::large_enum_variant,
    reason = "events are nearly every message: boxing them would allocate per event"
)]
pub(super) enum ToShard {
    /// A consumed event of one of the worker's partitions.
    Event(Consumed),
    /// The partition has nothing more for now (bounded end, idle, revoked): decide its held
    /// event (when the flag says so), stop letting it hold the watermark back, and answer
    /// [`FromShard::Ended`].
    End(InputTopic, i32, bool),
    /// Decide every held event, then answer [`FromShard::Resolved`].
    ResolveAll,
    /// Apply the close; answer [`FromShard::Parts`] unless it closes no window.
    Close(Arc<Close>),
    /// Drop the keyed state of these users (erasures, often none), then answer
    /// [`FromShard::Snapshot`] with a copy of the state.
    Snapshot(Arc<BTreeSet<String>>),
}

/// A worker's copy of its state for a checkpoint.
pub(super) struct WorkerSnapshot {
    pub(super) shards: BTreeMap<i32, Shard>,
    pub(super) cleaner: Cleaner,
    pub(super) held: Vec<HeldEvent>,
}

/// What workers send back.
pub(super) enum FromShard {
    /// Effects of the events handled since the last batch, in order, and what the
    /// coordinator learns from them.
    Batch {
        /// Events handled per topic (the job counts them as consumed now).
        handled: BTreeMap<InputTopic, u64>,
        effects: Vec<Effect>,
        report: Report,
        pending_examples: usize,
    },
    /// Answer to [`ToShard::End`] (after the batch with its held event).
    Ended(InputTopic, i32),
    /// Answer to [`ToShard::ResolveAll`].
    Resolved,
    /// Answer to [`ToShard::Close`].
    Parts(Vec<Part>),
    /// Answer to [`ToShard::Snapshot`].
    Snapshot(Box<WorkerSnapshot>),
    /// The worker failed and stopped.
    Failed(PipelineError),
}

/// Events handled before a worker sends their effects even if more are queued (bounds
/// the delay of predictions in a backlog).
const BATCH_EVENTS: usize = 256;

/// Messages queued for each worker.
const QUEUED: usize = 512;

/// The worker threads and their channels.
pub(super) struct ShardWorkers {
    senders: Vec<mpsc::Sender<ToShard>>,
    /// (worker, message) from every worker.
    replies: mpsc::UnboundedReceiver<(usize, FromShard)>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// Each worker's pending examples at its last batch.
    pending: Vec<usize>,
}

impl ShardWorkers {
    /// Starts `count` workers with the shards and cleaning state of `features`' partitions
    /// (split by partition number), serving with the newest model of `models`.
    pub(super) fn start(
        config: &Config,
        count: usize,
        coordinator: &Coordinator,
        shards: BTreeMap<i32, Shard>,
        cleaner: &mut Cleaner,
        held: Vec<HeldEvent>,
        models: watch::Receiver<Arc<Trainer>>,
    ) -> Result<Self, PipelineError> {
        let count = count.max(1);
        let (reply_tx, replies) = mpsc::unbounded_channel();
        let mut held_by_worker: Vec<Vec<HeldEvent>> = (0..count).map(|_| Vec::new()).collect();
        for h in held {
            held_by_worker[worker_of(h.meta.partition, count)].push(h);
        }
        let mut shards_by_worker: Vec<BTreeMap<i32, Shard>> = vec![BTreeMap::new(); count];
        for (partition, shard) in shards {
            shards_by_worker[worker_of(partition, count)].insert(partition, shard);
        }
        let mut senders = Vec::with_capacity(count);
        let mut threads = Vec::with_capacity(count);
        let by_worker = held_by_worker.into_iter().zip(shards_by_worker);
        for (index, (held, mine)) in by_worker.enumerate() {
            let owns = |topic: InputTopic, partition: i32| {
                topic != InputTopic::Inventory && worker_of(partition, count) == index
            };
            let mut stage = ShardStage::with(config, ShardSet::new(coordinator, mine, owns));
            let own_cleaner = cleaner.split_off(owns);
            stage.resume_cleaning(own_cleaner, held);
            let (tx, rx) = mpsc::channel(QUEUED);
            let worker = Worker {
                index,
                stage,
                rx,
                replies: reply_tx.clone(),
                models: models.clone(),
                handled: BTreeMap::new(),
                pending_sent: 0,
            };
            let thread = std::thread::Builder::new()
                .name(format!("shopstream-shard-{index}"))
                .spawn(move || worker.run())
                .map_err(|e| PipelineError::Internal(format!("starting shard worker: {e}")))?;
            senders.push(tx);
            threads.push(thread);
        }
        Ok(Self {
            senders,
            replies,
            threads,
            pending: vec![0; count],
        })
    }

    /// How many workers there are.
    pub(super) fn count(&self) -> usize {
        self.senders.len()
    }

    /// The worker of partition number `partition`.
    pub(super) fn worker_of(&self, partition: i32) -> usize {
        worker_of(partition, self.count())
    }

    /// Sends `message` to worker `index`.
    pub(super) async fn send(
        &mut self,
        index: usize,
        message: ToShard,
    ) -> Result<(), PipelineError> {
        if self.senders[index].send(message).await.is_ok() {
            return Ok(());
        }
        // The worker stopped, so it failed: its own error says why.
        while let Ok((from, reply)) = self.replies.try_recv() {
            if let (true, FromShard::Failed(e)) = (from == index, reply) {
                return Err(e);
            }
        }
        Err(PipelineError::Internal(format!(
            "shard worker {index} stopped"
        )))
    }

    /// Sends a copy of `make()` to every worker.
    pub(super) async fn broadcast(
        &mut self,
        make: impl Fn() -> ToShard,
    ) -> Result<(), PipelineError> {
        for index in 0..self.count() {
            self.send(index, make()).await?;
        }
        Ok(())
    }

    /// The next message of any worker (`None` once every worker has stopped).
    pub(super) async fn recv(&mut self) -> Option<(usize, FromShard)> {
        let message = self.replies.recv().await;
        if let Some((
            index,
            FromShard::Batch {
                pending_examples, ..
            },
        )) = &message
        {
            self.pending[*index] = *pending_examples;
        }
        message
    }

    /// Impressions waiting for labels, as of each worker's last batch.
    pub(super) fn pending_examples(&self) -> usize {
        self.pending.iter().sum()
    }

    /// Stops the workers (their queues close) and waits for their threads.
    pub(super) async fn stop(&mut self) {
        self.senders.clear();
        let threads = std::mem::take(&mut self.threads);
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
    }
}

fn worker_of(partition: i32, count: usize) -> usize {
    usize::try_from(partition).unwrap_or(0) % count
}

/// One worker thread.
struct Worker {
    index: usize,
    stage: ShardStage<ShardSet>,
    rx: mpsc::Receiver<ToShard>,
    replies: mpsc::UnboundedSender<(usize, FromShard)>,
    models: watch::Receiver<Arc<Trainer>>,
    /// Events handled since the last batch, per topic.
    handled: BTreeMap<InputTopic, u64>,
    /// Pending examples as last sent.
    pending_sent: usize,
}

impl Worker {
    fn run(mut self) {
        let mut serving = Arc::clone(&self.models.borrow_and_update());
        let mut effects = Vec::new();
        let mut handled = 0usize;
        while let Some(message) = self.rx.blocking_recv() {
            let mut next = Some(message);
            while let Some(message) = next.take() {
                if self.models.has_changed().unwrap_or(false) {
                    serving = Arc::clone(&self.models.borrow_and_update());
                }
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    self.handle(message, &serving, &mut effects)
                }));
                let result = match outcome {
                    Ok(result) => result,
                    Err(panic) => {
                        let what = panic
                            .downcast_ref::<&str>()
                            .map(|s| (*s).to_string())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_default();
                        Err(PipelineError::Internal(format!(
                            "shard worker {} panicked: {what}",
                            self.index
                        )))
                    }
                };
                if let Err(e) = result {
                    let _ = self.replies.send((self.index, FromShard::Failed(e)));
                    return;
                }
                handled += 1;
                if handled >= BATCH_EVENTS {
                    self.flush(&mut effects);
                    handled = 0;
                }
                next = self.rx.try_recv().ok();
            }
            self.flush(&mut effects);
            handled = 0;
        }
    }

    /// Sends the effects and report gathered so far, if any.
    fn flush(&mut self, effects: &mut Vec<Effect>) {
        let report = self.stage.windowing_mut().take_report();
        let pending = self.stage.windowing().pending_examples();
        let unchanged = pending == self.pending_sent;
        if effects.is_empty() && report.is_empty() && self.handled.is_empty() && unchanged {
            return;
        }
        self.pending_sent = pending;
        let batch = FromShard::Batch {
            handled: std::mem::take(&mut self.handled),
            effects: std::mem::take(effects),
            report,
            pending_examples: pending,
        };
        let _ = self.replies.send((self.index, batch));
    }

    fn reply(&mut self, effects: &mut Vec<Effect>, message: FromShard) {
        // Whatever the answer covers reaches the coordinator first.
        self.flush(effects);
        let _ = self.replies.send((self.index, message));
    }

    fn handle(
        &mut self,
        message: ToShard,
        model: &Trainer,
        effects: &mut Vec<Effect>,
    ) -> Result<(), PipelineError> {
        match message {
            ToShard::Event(consumed) => {
                *self.handled.entry(consumed.meta.topic).or_default() += 1;
                self.stage.on_event(consumed, model, effects)?;
            }
            ToShard::End(topic, partition, resolve_held) => {
                if resolve_held {
                    self.stage
                        .resolve_all_held(Some((topic, partition)), model, effects)?;
                }
                self.stage.windowing_mut().release(topic, partition);
                self.reply(effects, FromShard::Ended(topic, partition));
            }
            ToShard::ResolveAll => {
                self.stage.resolve_all_held(None, model, effects)?;
                self.reply(effects, FromShard::Resolved);
            }
            ToShard::Close(close) => {
                let parts = self.stage.windowing_mut().on_close(&close);
                if !close.is_empty() {
                    // (The batch before the parts carries the pending examples it left.)
                    self.reply(effects, FromShard::Parts(parts));
                }
            }
            ToShard::Snapshot(erased) => {
                let dropped = self.stage.windowing_mut().forget_users(&erased);
                super::erasures::report(&erased, dropped);
                let snapshot = WorkerSnapshot {
                    shards: self.stage.windowing().shards().clone(),
                    cleaner: self.stage.cleaner().clone(),
                    held: self.stage.held_events(),
                };
                self.reply(effects, FromShard::Snapshot(Box::new(snapshot)));
            }
        }
        Ok(())
    }
}
