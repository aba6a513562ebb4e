//! The source loop's side of the shard workers: routing partition ends to them, taking
//! their batches, and the round trips every worker answers (a close, resolving held
//! events, a snapshot for a checkpoint).

use std::sync::Arc;

use shopstream_features::{Buffered, Close, WindowOutput};
use shopstream_ingest::decode::{Reason, Rejection};
use shopstream_ingest::event::InputTopic;

use super::PipelineError;
use super::shard_workers::{FromShard, ToShard};
use super::source_loop::{Processor, bump_by};
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
                    bump_by(&mut self.summary.consumed, topic.as_str(), count);
                }
                let applied = self.apply(&mut effects).await;
                if let Some(coordinator) = self.stages.coordinator() {
                    coordinator.observe(&report);
                }
                applied
            }
            FromShard::Ended(topic, partition) => {
                let reassigned = self.ending.remove(&(topic, partition)) == Some(true);
                if let Some(coordinator) = self.stages.coordinator() {
                    coordinator.partition_at_end(topic, partition);
                    if reassigned {
                        // Assigned again while its end was on the way: it holds the
                        // watermark back again, as one task would have it.
                        coordinator.register_partition(topic, partition);
                    }
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
        if close.is_empty() {
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
        let Some(coordinator) = self.stages.coordinator() else {
            return Err(PipelineError::Internal("no coordinator to merge".into()));
        };
        let (outputs, refused) = stages::merge(coordinator, &close, answers);
        for late in refused {
            self.refused_late(late, &close).await?;
        }
        Ok(outputs)
    }

    /// An event a shard admitted into a window the coordinator had closed before it
    /// learned of it: no longer valid, dead-lettered as late. Its original bytes are gone
    /// with the shard's buffer; the dead letter carries the event re-encoded as JSON.
    async fn refused_late(&mut self, late: Buffered, close: &Close) -> Result<(), PipelineError> {
        let topic = late.meta.topic.as_str();
        if let Some(valid) = self.summary.valid.get_mut(topic) {
            *valid = valid.saturating_sub(1);
        }
        let payload = serde_json::to_vec(&late.event)
            .map_err(|e| PipelineError::Internal(format!("re-encoding a late event: {e}")))?;
        let rejection = Rejection {
            reason: Reason::Late,
            field: Some("ts".to_string()),
            message: format!(
                "event time {} fell in a window closed while its partition held nothing back \
                 (closed up to {:?})",
                late.event.ts(),
                close.boundary
            ),
        };
        self.dead_letter(late.meta, None, &payload, &rejection)
            .await
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
            workers
                .send(worker, ToShard::End(topic, partition, resolve_held))
                .await?;
            self.ending.insert((topic, partition), false);
            return Ok(());
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
