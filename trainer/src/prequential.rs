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

#[cfg(test)]
mod tests {
    use shopstream_ingest::generator::world::WorldSize;
    use shopstream_ingest::generator::{Generator, GeneratorOptions};

    use super::*;

    /// Collects what the loop reports.
    #[derive(Default)]
    struct Record {
        noted: usize,
        admitted: usize,
        windows: Vec<(i64, usize, Vec<f64>)>,
    }

    impl Observer for Record {
        type Note = ();
        type Error = std::convert::Infallible;

        fn note(&mut self, _: &Event) -> Option<()> {
            self.noted += 1;
            Some(())
        }

        fn admitted(&mut self, (): ()) {
            self.admitted += 1;
        }

        fn window(&mut self, scored: ScoredWindow, _: &Trainer) -> Result<(), Self::Error> {
            let scores = scored.outputs.iter().map(|o| o.p_click).collect();
            self.windows
                .push((scored.window.start, scored.window.examples.len(), scores));
            Ok(())
        }
    }

    /// The shared loop must be exactly the features stage and the model driven by hand
    /// (what `model quality` and `drift bench` each did before it existed): same windows,
    /// same scores, same model bytes.
    #[test]
    fn the_loop_scores_and_trains_as_the_stages_driven_by_hand() {
        let generator = GeneratorOptions {
            seed: 5,
            max_events: Some(6_000),
            size: WorldSize {
                users: 200,
                items: 300,
                categories: 8,
            },
            ..GeneratorOptions::default()
        };
        let model = ModelConfig {
            embedding_bits: 10,
            ..ModelConfig::default()
        };
        let pipeline = PipelineConfig::default();

        let mut looped = Prequential::new(&pipeline, &model);
        let mut record = Record::default();
        let Ok(()) = looped.run(Generator::new(generator.clone()).decoded(), &mut record);

        let mut features = FeaturePipeline::new(&pipeline);
        let mut trainer = Trainer::new(&model);
        let mut by_hand = Vec::new();
        let mut events = 0;
        let mut admitted = 0;
        let mut score = |w: WindowOutput, trainer: &mut Trainer| {
            let (_, outputs) = trainer.train_window_scored(&w.examples);
            let scores = outputs.iter().map(|o| o.p_click).collect();
            by_hand.push((w.start, w.examples.len(), scores));
        };
        for (meta, event) in Generator::new(generator).decoded() {
            events += 1;
            if features.ingest(meta, event).is_ok() {
                admitted += 1;
            }
            for w in features.close_ready() {
                score(w, &mut trainer);
            }
        }
        for w in features.finish() {
            score(w, &mut trainer);
        }

        assert!(record.windows.iter().any(|w| w.1 > 0), "examples matured");
        assert_eq!((record.noted, record.admitted), (events, admitted));
        assert_eq!(record.windows, by_hand);
        let dir = tempfile::tempdir().expect("temp dir");
        let (a, b) = (
            dir.path().join("looped.model"),
            dir.path().join("by-hand.model"),
        );
        looped.trainer().save(&a).expect("save");
        trainer.save(&b).expect("save");
        assert_eq!(
            std::fs::read(a).expect("read"),
            std::fs::read(b).expect("read")
        );
    }
}
