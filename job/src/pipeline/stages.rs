//! How the source loop holds the partition-scoped stages: all of them on its own task
//! (one worker), or the coordinator side there and the shards on worker threads
//! ([`super::shard_workers`]). Both give the same windows, in the same order.

use std::collections::BTreeMap;
use std::sync::Arc;

use shopstream_config::Config;
use shopstream_features::{Buffered, Coordinator, FeaturePipeline, Part, WindowOutput};
use shopstream_ingest::clean::Cleaner;
use shopstream_ingest::event::{InputTopic, Millis};
use shopstream_trainer::Trainer;
use tokio::sync::watch;

use super::PipelineError;
use super::shard::{Consumed, Effect, ShardStage, clean_limits};
use super::shard_workers::{FromShard, ShardWorkers, ToShard, WorkerSnapshot};
use crate::recovery::HeldEvent;

/// The partition-scoped stages of a run.
pub(super) enum Stages {
    /// Everything on the source loop's task.
    Whole(ShardStage),
    /// The inventory's cleaning and the coordinator on the source loop's task; the shards
    /// of clicks and orders on worker threads.
    Split {
        coordinator: ShardStage<Coordinator>,
        workers: ShardWorkers,
    },
}

/// The shard side's state taken over from a checkpoint.
pub(super) struct Resumed {
    pub(super) features: FeaturePipeline,
    pub(super) cleaner: Cleaner,
    pub(super) held: Vec<HeldEvent>,
}

impl Stages {
    /// The stages of `config` (`pipeline.workers` threads for the shards when more than
    /// one), from `resumed` when restarting; shard workers serve with `models`' newest.
    pub(super) fn new(
        config: &Config,
        resumed: Option<Resumed>,
        models: Option<watch::Receiver<Arc<Trainer>>>,
    ) -> Result<Self, PipelineError> {
        let threads = config.pipeline.worker_threads();
        // The global stage publishes models from a thread of its own exactly when there
        // is more than one worker.
        let Some(models) = models else {
            let mut stage = ShardStage::new(config);
            if let Some(r) = resumed {
                stage.resume(r.features, r.cleaner, r.held);
            }
            return Ok(Self::Whole(stage));
        };
        let (features, mut cleaner, held) = match resumed {
            Some(r) => (r.features, r.cleaner, r.held),
            None => (
                FeaturePipeline::new(&config.pipeline),
                Cleaner::new(clean_limits(config)),
                Vec::new(),
            ),
        };
        let (coordinator, shards) = features.into_parts();
        let (held_shards, held_inventory): (Vec<HeldEvent>, Vec<HeldEvent>) = held
            .into_iter()
            .partition(|h| h.meta.topic != InputTopic::Inventory);
        let workers = ShardWorkers::start(
            config,
            threads,
            &coordinator,
            shards,
            &mut cleaner,
            held_shards,
            models,
        )?;
        let mut stage = ShardStage::with(config, coordinator);
        stage.resume_cleaning(cleaner, held_inventory);
        Ok(Self::Split {
            coordinator: stage,
            workers,
        })
    }

    /// The watermark windows close by.
    pub(super) fn watermark(&self) -> Option<Millis> {
        match self {
            Self::Whole(stage) => stage.watermark(),
            Self::Split { coordinator, .. } => coordinator.watermark(),
        }
    }

    /// Impressions waiting for their labels (as of each worker's last batch).
    pub(super) fn pending_examples(&self) -> usize {
        match self {
            Self::Whole(stage) => stage.pending_examples(),
            Self::Split { workers, .. } => workers.pending_examples(),
        }
    }

    /// A partition was assigned: it holds the watermark back until it delivers or ends.
    pub(super) fn register_partition(&mut self, topic: InputTopic, partition: i32) {
        match self {
            Self::Whole(stage) => stage.register_partition(topic, partition),
            Self::Split { coordinator, .. } => coordinator
                .windowing_mut()
                .register_partition(topic, partition),
        }
    }

    /// Where an event goes: the shard worker of its partition, or this task.
    pub(super) fn worker_for(&self, topic: InputTopic, partition: i32) -> Option<usize> {
        match self {
            Self::Split { workers, .. } if topic != InputTopic::Inventory => {
                Some(workers.worker_of(partition))
            }
            _ => None,
        }
    }

    /// The stage events of this task go through (all of them, or the inventory's).
    pub(super) fn local(&mut self) -> LocalStage<'_> {
        match self {
            Self::Whole(stage) => LocalStage::Whole(stage),
            Self::Split { coordinator, .. } => LocalStage::Coordinator(coordinator),
        }
    }

    /// The shard workers, when the shards run on threads.
    pub(super) fn workers(&mut self) -> Option<&mut ShardWorkers> {
        match self {
            Self::Whole(_) => None,
            Self::Split { workers, .. } => Some(workers),
        }
    }

    /// The coordinator, when the shards run on threads.
    pub(super) fn coordinator(&mut self) -> Option<&mut Coordinator> {
        match self {
            Self::Whole(_) => None,
            Self::Split { coordinator, .. } => Some(coordinator.windowing_mut()),
        }
    }

    /// Stops the worker threads, if any (what they last reported stays readable).
    pub(super) async fn stop(&mut self) {
        if let Self::Split { workers, .. } = self {
            workers.stop().await;
        }
    }

    /// Where the shards run: `inline` or `threads`.
    pub(super) fn mode(&self) -> &'static str {
        match self {
            Self::Whole(_) => "inline",
            Self::Split { .. } => "threads",
        }
    }
}

/// The stage of the events the source loop handles itself.
pub(super) enum LocalStage<'a> {
    Whole(&'a mut ShardStage),
    Coordinator(&'a mut ShardStage<Coordinator>),
}

impl LocalStage<'_> {
    /// See [`ShardStage::on_event`].
    pub(super) fn on_event(
        self,
        m: Consumed,
        model: &Trainer,
        fx: &mut Vec<Effect>,
    ) -> Result<(), PipelineError> {
        match self {
            Self::Whole(stage) => stage.on_event(m, model, fx),
            Self::Coordinator(stage) => stage.on_event(m, model, fx),
        }
    }

    /// See [`ShardStage::resolve_all_held`].
    pub(super) fn resolve_all_held(
        self,
        only: Option<(InputTopic, i32)>,
        model: &Trainer,
        fx: &mut Vec<Effect>,
    ) -> Result<(), PipelineError> {
        match self {
            Self::Whole(stage) => stage.resolve_all_held(only, model, fx),
            Self::Coordinator(stage) => stage.resolve_all_held(only, model, fx),
        }
    }
}

/// The whole features stage, cleaner and held events of a split run, for a checkpoint:
/// the coordinator's side with every worker's snapshot.
pub(super) fn assemble(
    coordinator: &ShardStage<Coordinator>,
    snapshots: Vec<WorkerSnapshot>,
) -> (FeaturePipeline, Cleaner, Vec<HeldEvent>) {
    let mut shards = BTreeMap::new();
    let mut cleaner = coordinator.cleaner().clone();
    let mut held = coordinator.held_events();
    for snapshot in snapshots {
        shards.extend(snapshot.shards);
        cleaner.absorb(snapshot.cleaner);
        held.extend(snapshot.held);
    }
    held.sort_by_key(|h| (h.meta.topic, h.meta.partition));
    let features = FeaturePipeline::from_parts(coordinator.windowing().clone(), shards);
    (features, cleaner, held)
}

/// The merged windows of a close the workers answered, and the events their shards
/// refused as late (see `Part::refused`).
pub(super) fn merge(
    coordinator: &mut Coordinator,
    close: &shopstream_features::Close,
    answers: Vec<FromShard>,
) -> (Vec<WindowOutput>, Vec<Buffered>) {
    let mut parts: Vec<Part> = answers
        .into_iter()
        .flat_map(|answer| match answer {
            FromShard::Parts(parts) => parts,
            _ => Vec::new(),
        })
        .collect();
    parts.sort_by_key(|p| p.partition);
    let refused = parts
        .iter_mut()
        .flat_map(|part| std::mem::take(&mut part.refused))
        .collect();
    (coordinator.merge(close, parts), refused)
}

/// A request every worker answers, and how to recognise the answer.
pub(super) fn is_answer(request: &ToShard, reply: &FromShard) -> bool {
    matches!(
        (request, reply),
        (ToShard::ResolveAll, FromShard::Resolved)
            | (ToShard::Close(_), FromShard::Parts(_))
            | (ToShard::Snapshot(_), FromShard::Snapshot(_))
    )
}
