//! The source loop's side of the shard workers: routing partition ends to them, taking
//! their batches, and the round trips every worker answers (a close, resolving held
//! events, a snapshot for a checkpoint).

use std::sync::Arc;

use shopstream_features::{Close, WindowOutput};
use shopstream_ingest::event::InputTopic;

use super::PipelineError;
use super::shard_workers::{FromShard, ToShard};
use super::source_loop::Processor;
use super::stages::{self, Stages};

impl Processor<'_> {
    /// A worker's message that answers no request: effects and reports, a partition's end.
    pub(super) async fn on_reply(&mut self, reply: FromShard) -> Result<(), PipelineError> {
        match reply {
            FromShard::Batch {
                handled,
                mut effects,
                report,
                ..
            } => {
                for (topic, count) in handled {
                    *self
                        .summary
                        .consumed
                        .entry(topic.as_str().to_string())
                        .or_default() += count;
                }
                let applied = self.apply(&mut effects).await;
                if let Some(coordinator) = self.stages.coordinator() {
                    coordinator.observe(&report);
                }
                applied
            }
            FromShard::Ended(topic, partition) => {
                if let Some(coordinator) = self.stages.coordinator() {
                    coordinator.partition_at_end(topic, partition);
                }
                Ok(())
            }
            FromShard::Failed(e) => Err(e),
            FromShard::Resolved | FromShard::Parts(_) | FromShard::Snapshot(_) => Err(
                PipelineError::Internal("a shard worker answered a request never made".into()),
            ),
        }
    }

    /// Sends `make()` to every worker and waits for each one's answer, taking their other
    /// messages on the way; the answers in worker order.
    pub(super) async fn ask_workers(
        &mut self,
        make: impl Fn() -> ToShard,
    ) -> Result<Vec<FromShard>, PipelineError> {
        let request = make();
        let Some(workers) = self.stages.workers() else {
            return Ok(Vec::new());
        };
        workers.broadcast(&make).await?;
        let mut answers: Vec<Option<FromShard>> = (0..workers.count()).map(|_| None).collect();
        while answers.iter().any(Option::is_none) {
            let Some(workers) = self.stages.workers() else {
                return Err(PipelineError::Internal("shard workers vanished".into()));
            };
            let Some((index, reply)) = workers.recv().await else {
                return Err(PipelineError::Internal(
                    "every shard worker stopped while the job ran".into(),
                ));
            };
            if stages::is_answer(&request, &reply) {
                answers[index] = Some(reply);
            } else {
                self.on_reply(reply).await?;
            }
        }
        Ok(answers.into_iter().flatten().collect())
    }

    /// `close` applied by every worker's shards and merged.
    pub(super) async fn apply_close(
        &mut self,
        close: Close,
    ) -> Result<Vec<WindowOutput>, PipelineError> {
        let close = Arc::new(close);
        if close.windows.is_empty() && !close.is_final() {
            // Only the closed bound moved; no worker answers.
            if let Some(workers) = self.stages.workers() {
                workers
                    .broadcast(|| ToShard::Close(Arc::clone(&close)))
                    .await?;
            }
            return Ok(Vec::new());
        }
        let answers = self
            .ask_workers(|| ToShard::Close(Arc::clone(&close)))
            .await?;
        match self.stages.coordinator() {
            Some(coordinator) => Ok(stages::merge(coordinator, &close, answers)),
            None => Err(PipelineError::Internal("no coordinator to merge".into())),
        }
    }

    /// A partition stops holding the watermark back (its end in bounded mode, idle,
    /// revoked); with `resolve_held` its held event is decided first. With shard workers
    /// the partition's worker does both and answers, and the coordinator releases it then.
    pub(super) async fn release(
        &mut self,
        topic: InputTopic,
        partition: i32,
        resolve_held: bool,
    ) -> Result<(), PipelineError> {
        if let Some(worker) = self.stages.worker_for(topic, partition)
            && let Some(workers) = self.stages.workers()
        {
            return workers
                .send(worker, ToShard::End(topic, partition, resolve_held))
                .await;
        }
        if resolve_held {
            self.resolve_all_held(Some((topic, partition))).await?;
        }
        match &mut self.stages {
            Stages::Whole(stage) => stage.partition_at_end(topic, partition),
            Stages::Split { coordinator, .. } => coordinator
                .windowing_mut()
                .partition_at_end(topic, partition),
        }
        self.close_ready().await
    }
}
