//! The prequential loop, in process: events -> features stage -> for each closed window,
//! the model scores the window's examples and then trains on them. `model quality` and
//! `drift bench` run it over generator traffic; the job runs the same two steps
//! ([`FeaturePipeline::ingest`] / `close_ready`, then [`Trainer::train_window_scored`])
//! from Kafka, with the shard and global stages in between.
//!
//! An [`Observer`] sees what it needs: a note of each event before the features stage
//! takes it (kept only if the stage admits the event), and every scored window in order.

use std::time::Instant;

use shopstream_config::{ModelConfig, PipelineConfig};
use shopstream_features::{FeaturePipeline, WindowOutput};
use shopstream_ingest::event::Event;
use shopstream_ingest::record::RecordMeta;

use crate::joint::Output;
use crate::{Trainer, WindowMetrics};

/// A closed window after the model scored its examples and trained on them.
#[derive(Debug)]
pub struct ScoredWindow {
    /// The features stage's output for the window (examples, users, demand rows).
    pub window: WindowOutput,
    /// Prequential metrics of the window (scores made before training).
    pub metrics: WindowMetrics,
    /// The model's scores of `window.examples`, in their order, made before training.
    pub outputs: Vec<Output>,
    /// Seconds the model spent scoring and training on the window (for throughput
    /// figures; nothing deterministic depends on it).
    pub model_secs: f64,
}

/// What a run of the loop reports to its caller.
pub trait Observer {
    /// What is taken from an event before the features stage consumes it.
    type Note;
    /// Why the observer stopped the run.
    type Error;

    /// A note of `event`, taken before the features stage sees it (`None`: nothing).
    fn note(&mut self, event: &Event) -> Option<Self::Note>;

    /// The features stage admitted the event `note` was taken from.
    fn admitted(&mut self, note: Self::Note);

    /// A window closed and was scored, then trained on; `trainer` is the model after it.
    fn window(&mut self, scored: ScoredWindow, trainer: &Trainer) -> Result<(), Self::Error>;
}

/// The features stage and the model, driven together.
pub struct Prequential {
    features: FeaturePipeline,
    trainer: Trainer,
}

impl Prequential {
    /// A fresh features stage and model.
    pub fn new(pipeline: &PipelineConfig, model: &ModelConfig) -> Self {
        Self {
            features: FeaturePipeline::new(pipeline),
            trainer: Trainer::new(model),
        }
    }

    /// The model.
    pub fn trainer(&self) -> &Trainer {
        &self.trainer
    }

    /// Runs `events` through to the end: every window closes (the last ones when the
    /// input ends), in event-time order. Events the features stage refuses are skipped.
    pub fn run<O: Observer>(
        &mut self,
        events: impl IntoIterator<Item = (RecordMeta, Event)>,
        observer: &mut O,
    ) -> Result<(), O::Error> {
        for (meta, event) in events {
            let note = observer.note(&event);
            if self.features.ingest(meta, event).is_err() {
                continue;
            }
            if let Some(note) = note {
                observer.admitted(note);
            }
            for window in self.features.close_ready() {
                self.score_and_train(window, observer)?;
            }
        }
        for window in self.features.finish() {
            self.score_and_train(window, observer)?;
        }
        Ok(())
    }

    fn score_and_train<O: Observer>(
        &mut self,
        window: WindowOutput,
        observer: &mut O,
    ) -> Result<(), O::Error> {
        let started = Instant::now();
        let (metrics, outputs) = self.trainer.train_window_scored(&window.examples);
        let model_secs = started.elapsed().as_secs_f64();
        observer.window(
            ScoredWindow {
                window,
                metrics,
                outputs,
                model_secs,
            },
            &self.trainer,
        )
    }
}
