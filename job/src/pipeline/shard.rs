//! The shard stage: the part of the job whose state belongs to the input partitions it
//! reads. Cleaning (dedupe, clock-skew holds), event-time windows and the features
//! stage, and serving a prediction for each impression on arrival.
//!
//! It does no I/O and never waits: [`ShardStage::on_event`] returns what should happen
//! outside it as [`Effect`]s, in order, and closed windows come out of
//! [`ShardStage::close_ready`] for the global stage. That is the seam scale-out needs: a
//! shard can run on another thread or in another instance as long as its effects and
//! windows reach the outputs and the global stage in the order it produced them. The
//! model it serves from is only read.

use std::collections::BTreeMap;

use shopstream_config::Config;
use shopstream_drift::stage::Arrival;
use shopstream_features::{
    Buffered, Coordinator, FeaturePipeline, Follower, ServingRow, ShardSet, WindowOutput,
};
use shopstream_ingest::clean::{Admission, CleanLimits, Cleaner, Resolution};
use shopstream_ingest::decode::{Reason, Rejection};
use shopstream_ingest::event::{Event, InputTopic, Millis};
use shopstream_kafka::source::RecordMeta;
use shopstream_trainer::{Prediction, Trainer};

use super::PipelineError;
use crate::recovery::HeldEvent;

/// A consumed event on its way through the shard.
#[derive(Debug)]
pub(super) struct Consumed {
    pub(super) meta: RecordMeta,
    pub(super) event: Event,
    pub(super) key: Option<Vec<u8>>,
    pub(super) payload: Vec<u8>,
    /// When the source received it (prediction latency).
    pub(super) received: std::time::Instant,
}

/// What the shard decided about an event, for the outputs and the global stage.
#[derive(Debug)]
pub(super) enum Effect {
    /// A duplicate of an event already admitted: counted, nothing else.
    Duplicate(InputTopic),
    /// Refused (bad clock, late for its window): to the dead-letter topic with the reason.
    DeadLetter {
        meta: RecordMeta,
        key: Option<Vec<u8>>,
        payload: Vec<u8>,
        rejection: Rejection,
    },
    /// A prediction served for an impression, to the predictions topic.
    Predicted {
        prediction: Prediction,
        received: std::time::Instant,
    },
    /// Admitted into its window; `arrival` is what the drift stage takes from it.
    Admitted {
        topic: InputTopic,
        arrival: Option<Arrival>,
    },
}

/// Where admitted events go: the whole features stage (one thread), the shards of some
/// partitions (a shard worker), or the coordinator (the inventory, when the shards run on
/// worker threads).
pub(super) trait Windowing {
    /// Buffers `event` in its window, or gives it back when it is late.
    fn ingest(&mut self, meta: RecordMeta, event: Event) -> Result<(), Box<Buffered>>;
    /// Features for an impression (`None` for other events).
    fn serving_row(&self, meta: &RecordMeta, event: &Event) -> Option<ServingRow>;
    /// The event-time watermark these events are judged by.
    fn watermark(&self) -> Option<Millis>;
}

impl Windowing for FeaturePipeline {
    fn ingest(&mut self, meta: RecordMeta, event: Event) -> Result<(), Box<Buffered>> {
        FeaturePipeline::ingest(self, meta, event)
    }
    fn serving_row(&self, meta: &RecordMeta, event: &Event) -> Option<ServingRow> {
        FeaturePipeline::serving_row(self, meta, event)
    }
    fn watermark(&self) -> Option<Millis> {
        FeaturePipeline::watermark(self)
    }
}

impl Windowing for ShardSet {
    fn ingest(&mut self, meta: RecordMeta, event: Event) -> Result<(), Box<Buffered>> {
        self.admit(meta, event)
    }
    fn serving_row(&self, meta: &RecordMeta, event: &Event) -> Option<ServingRow> {
        ShardSet::serving_row(self, meta, event)
    }
    fn watermark(&self) -> Option<Millis> {
        ShardSet::watermark(self)
    }
}

/// The shards of one partition number in group mode, following the closes log.
impl Windowing for Follower {
    fn ingest(&mut self, meta: RecordMeta, event: Event) -> Result<(), Box<Buffered>> {
        self.admit(meta, event)
    }
    fn serving_row(&self, meta: &RecordMeta, event: &Event) -> Option<ServingRow> {
        self.set().serving_row(meta, event)
    }
    fn watermark(&self) -> Option<Millis> {
        self.set().watermark()
    }
}

/// The coordinator admits only the inventory's events here: the processor sends clicks
/// and orders to the shard workers.
impl Windowing for Coordinator {
    fn ingest(&mut self, meta: RecordMeta, event: Event) -> Result<(), Box<Buffered>> {
        match self.admit(meta, event)? {
            None => Ok(()),
            // Not reached (see above); refused rather than lost if it ever were.
            Some(own) => Err(Box::new(own)),
        }
    }
    fn serving_row(&self, _: &RecordMeta, _: &Event) -> Option<ServingRow> {
        None
    }
    fn watermark(&self) -> Option<Millis> {
        Coordinator::watermark(self)
    }
}

/// Cleaner, held events and features stage of the partitions a job reads.
pub(super) struct ShardStage<F = FeaturePipeline> {
    cleaner: Cleaner,
    features: F,
    /// Events held for a clock-skew decision, per partition.
    held: BTreeMap<(InputTopic, i32), Consumed>,
    /// Whether admitted events carry their [`Arrival`] (drift detection is on).
    arrivals: bool,
    /// Inputs explained per prediction (`serving.explain`: 3; off: 0).
    explain_top: usize,
}

pub(super) fn clean_limits(config: &Config) -> CleanLimits {
    CleanLimits {
        dedupe_horizon_ms: config.pipeline.dedupe_horizon_ms(),
        max_keys: config.pipeline.dedupe_max_keys,
        max_future_skew_ms: config.pipeline.max_future_skew_ms(),
    }
}

impl ShardStage {
    /// An empty shard for the job's configuration (one worker: with more, the shards run
    /// on shard workers instead).
    pub(super) fn new(config: &Config) -> Self {
        Self::with(config, FeaturePipeline::new(&config.pipeline))
    }

    /// Takes over a checkpoint's shard state.
    pub(super) fn resume(
        &mut self,
        features: FeaturePipeline,
        cleaner: Cleaner,
        held: Vec<HeldEvent>,
    ) {
        self.features = features;
        self.resume_cleaning(cleaner, held);
    }

    /// The features stage (for checkpoints).
    pub(super) fn features(&self) -> &FeaturePipeline {
        &self.features
    }

    /// Examples waiting for their labels to mature.
    pub(super) fn pending_examples(&self) -> usize {
        self.features.pending_examples()
    }

    /// A partition was assigned: it holds the watermark back until it delivers or ends.
    pub(super) fn register_partition(&mut self, topic: InputTopic, partition: i32) {
        self.features.register_partition(topic, partition);
    }

    /// A partition ended (or went idle, or was revoked): it no longer holds the
    /// watermark back.
    pub(super) fn partition_at_end(&mut self, topic: InputTopic, partition: i32) {
        self.features.partition_at_end(topic, partition);
    }

    /// Windows the watermark has passed, in order, at most `max_windows` of them.
    pub(super) fn close_ready_at_most(&mut self, max_windows: usize) -> Vec<WindowOutput> {
        self.features.close_ready_at_most(max_windows)
    }

    /// The end of input, at most `max_windows` windows at a time, and whether this was
    /// its last step.
    pub(super) fn finish_at_most(&mut self, max_windows: usize) -> (Vec<WindowOutput>, bool) {
        self.features.finish_at_most(max_windows)
    }
}

impl<F: Windowing> ShardStage<F> {
    /// A stage of `features` with an empty cleaner.
    pub(super) fn with(config: &Config, features: F) -> Self {
        Self {
            cleaner: Cleaner::new(clean_limits(config)),
            features,
            held: BTreeMap::new(),
            arrivals: config.drift.enabled,
            explain_top: if config.serving.explain { 3 } else { 0 },
        }
    }

    /// The windowing side.
    pub(super) fn windowing(&self) -> &F {
        &self.features
    }

    /// The windowing side, to change.
    pub(super) fn windowing_mut(&mut self) -> &mut F {
        &mut self.features
    }

    /// Takes over a cleaner and held events (of a checkpoint, or split from one).
    pub(super) fn resume_cleaning(&mut self, cleaner: Cleaner, held: Vec<HeldEvent>) {
        self.cleaner = cleaner;
        self.held = crate::recovery::held_by_partition(held)
            .into_iter()
            .map(|(key, h)| {
                (
                    key,
                    Consumed {
                        meta: h.meta,
                        event: h.event,
                        key: h.key,
                        payload: h.payload,
                        received: std::time::Instant::now(),
                    },
                )
            })
            .collect();
    }

    /// The event-time watermark.
    pub(super) fn watermark(&self) -> Option<Millis> {
        self.features.watermark()
    }

    /// The cleaner (for checkpoints).
    pub(super) fn cleaner(&self) -> &Cleaner {
        &self.cleaner
    }

    /// The held events, in partition order (for checkpoints).
    pub(super) fn held_events(&self) -> Vec<HeldEvent> {
        self.held
            .values()
            .map(|c| HeldEvent {
                meta: c.meta,
                event: c.event.clone(),
                key: c.key.clone(),
                payload: c.payload.clone(),
            })
            .collect()
    }

    /// One consumed event: first decides the event held on its partition (this one's
    /// time confirms or contradicts the jump), then admits it.
    pub(super) fn on_event(
        &mut self,
        m: Consumed,
        model: &Trainer,
        fx: &mut Vec<Effect>,
    ) -> Result<(), PipelineError> {
        let partition = (m.meta.topic, m.meta.partition);
        if let Some(held) = self.held.remove(&partition) {
            self.resolve_held(held, Some(m.event.ts()), model, fx)?;
        }
        self.admit(m, model, fx);
        Ok(())
    }

    /// Dedupe and skew checks, then prediction and windowing of one consumed event.
    fn admit(&mut self, m: Consumed, model: &Trainer, fx: &mut Vec<Effect>) {
        let Consumed {
            meta,
            event,
            key,
            payload,
            received,
        } = m;
        match self.cleaner.admit(meta.topic, meta.partition, &event) {
            Admission::Accept => {}
            Admission::Duplicate => {
                fx.push(Effect::Duplicate(meta.topic));
                return;
            }
            Admission::Reject(rejection) => {
                fx.push(Effect::DeadLetter {
                    meta,
                    key,
                    payload,
                    rejection,
                });
                return;
            }
            Admission::Hold => {
                let held = Consumed {
                    meta,
                    event,
                    key,
                    payload,
                    received,
                };
                self.held.insert((meta.topic, meta.partition), held);
                return;
            }
        }
        if let Some(row) = self.features.serving_row(&meta, &event) {
            let prediction =
                model.predict_explained(&row, self.features.watermark(), self.explain_top);
            fx.push(Effect::Predicted {
                prediction,
                received,
            });
        }
        // Taken before the event moves into the features stage; counted once it is in.
        let arrival = if self.arrivals {
            Arrival::of(&event)
        } else {
            None
        };
        if let Err(late) = self.features.ingest(meta, event) {
            let rejection = Rejection {
                reason: Reason::Late,
                field: Some("ts".to_string()),
                message: format!(
                    "event time {} is behind the closed windows (watermark {:?})",
                    late.event.ts(),
                    self.features.watermark()
                ),
            };
            fx.push(Effect::DeadLetter {
                meta,
                key,
                payload,
                rejection,
            });
        } else {
            fx.push(Effect::Admitted {
                topic: meta.topic,
                arrival,
            });
        }
    }

    /// Decides about a held event: admitted when `next_ts` confirms the jump (or there is
    /// no next event), dead-lettered when it contradicts it.
    fn resolve_held(
        &mut self,
        held: Consumed,
        next_ts: Option<i64>,
        model: &Trainer,
        fx: &mut Vec<Effect>,
    ) -> Result<(), PipelineError> {
        let (topic, partition) = (held.meta.topic, held.meta.partition);
        match self.cleaner.resolve_held(topic, partition, next_ts) {
            Some(Resolution::Confirm) => {
                self.admit(held, model, fx);
                Ok(())
            }
            Some(Resolution::Reject(rejection)) => {
                fx.push(Effect::DeadLetter {
                    meta: held.meta,
                    key: held.key,
                    payload: held.payload,
                    rejection,
                });
                Ok(())
            }
            None => Err(PipelineError::Internal(format!(
                "held event of {topic:?}/{partition} unknown to the cleaner"
            ))),
        }
    }

    /// Decides every held event whose partition has no next event (end of input, or of a
    /// partition in bounded mode): nothing contradicts them, so they are admitted.
    pub(super) fn resolve_all_held(
        &mut self,
        only: Option<(InputTopic, i32)>,
        model: &Trainer,
        fx: &mut Vec<Effect>,
    ) -> Result<(), PipelineError> {
        let keys: Vec<(InputTopic, i32)> = self
            .held
            .keys()
            .copied()
            .filter(|k| only.is_none_or(|o| o == *k))
            .collect();
        for key in keys {
            if let Some(held) = self.held.remove(&key) {
                self.resolve_held(held, None, model, fx)?;
            }
        }
        Ok(())
    }
}
