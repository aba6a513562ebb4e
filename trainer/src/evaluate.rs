//! Prequential evaluation on stored examples (`shopstream model evaluate`): the examples
//! of a store (an imported real log, say) replayed through a fresh joint model and the
//! smartcore baselines in the groups the job trained them in: the joint model scores each
//! example just before the minibatch step that learns from it, the baselines score each
//! group before they are fitted to it.
//!
//! The job trains on the examples that mature when a window closes: an impression at `ts`
//! matures at the first window end after `ts + click window + attribution window`. So the
//! examples of one training window are those with the same
//! `(ts + horizon) div window length`, and the stored order (event time) is the order the
//! job trained them in.

use std::path::PathBuf;
use std::time::Instant;

use shopstream_config::{ModelConfig, PipelineConfig};
use shopstream_features::Example;
use shopstream_ingest::event::Millis;

use crate::Trainer;
use crate::baselines::BaselineConfig;
use crate::quality::QualityReport;
use crate::scoring::{Scoring, VwLabel};

/// What to run.
#[derive(Debug, Clone)]
pub struct EvaluateOptions {
    /// The joint model.
    pub model: ModelConfig,
    /// Window length and label horizon (how the examples group into training windows).
    pub pipeline: PipelineConfig,
    /// The baselines.
    pub baselines: BaselineConfig,
    /// Also write the examples in Vowpal Wabbit's text format here, with this label.
    pub vw_out: Option<(PathBuf, VwLabel)>,
}

/// How the job groups matured examples into training windows: an example of time `ts`
/// trains at the first window end after `ts + horizon`.
#[derive(Debug, Clone, Copy)]
struct TrainingWindows {
    /// Click window + attribution window.
    horizon: Millis,
    /// Window length.
    length: Millis,
}

impl TrainingWindows {
    fn of(pipeline: &PipelineConfig) -> Self {
        Self {
            horizon: pipeline.click_window_ms() + pipeline.attribution_window_ms(),
            length: pipeline.window_ms().max(1),
        }
    }

    /// The training window of an example of time `ts`.
    fn of_ts(self, ts: Millis) -> Millis {
        ts.saturating_add(self.horizon).div_euclid(self.length)
    }
}

/// Runs the evaluation over `examples` in their stored order; `progress` is called with
/// the examples scored so far after each window.
pub fn evaluate<E: From<std::io::Error>>(
    examples: impl IntoIterator<Item = Result<Example, E>>,
    options: &EvaluateOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<QualityReport, E> {
    let windows = TrainingWindows::of(&options.pipeline);
    let vw = options.vw_out.as_ref().map(|(p, l)| (p.as_path(), *l));
    let mut scoring = Scoring::new(options.baselines, vw, progress)?;
    let mut trainer = Trainer::new(&options.model);
    let mut window: Vec<Example> = Vec::new();
    let mut current = None;
    let mut train = |window: &mut Vec<Example>, scoring: &mut Scoring| -> std::io::Result<()> {
        let started = Instant::now();
        let (_, outputs) = trainer.train_window_scored(window);
        scoring.window(window, &outputs, started.elapsed().as_secs_f64())?;
        window.clear();
        Ok(())
    };
    for example in examples {
        let example = example?;
        let key = windows.of_ts(example.ts);
        if current.is_some_and(|c| c != key) {
            train(&mut window, &mut scoring)?;
        }
        current = Some(key);
        window.push(example);
    }
    train(&mut window, &mut scoring)?;
    Ok(scoring.finish(None)?)
}

/// Trains a fresh model on `examples` (in stored order) in the job's training windows,
/// except the last `held_out` windows, which it returns unseen: the sample `model explain`
/// measures on.
pub fn train_holding_out<E>(
    examples: impl IntoIterator<Item = Result<Example, E>>,
    options: &EvaluateOptions,
    held_out: usize,
) -> Result<(Trainer, Vec<Example>), E> {
    let grid = TrainingWindows::of(&options.pipeline);
    let examples = examples.into_iter().collect::<Result<Vec<_>, E>>()?;
    let mut windows: Vec<&[Example]> = examples
        .chunk_by(|a, b| grid.of_ts(a.ts) == grid.of_ts(b.ts))
        .collect();
    let sample = windows
        .split_off(windows.len().saturating_sub(held_out))
        .concat();
    let mut trainer = Trainer::new(&options.model);
    for window in windows {
        trainer.train_window(window);
    }
    Ok((trainer, sample))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {

    use shopstream_features::FeaturePipeline;
    use shopstream_ingest::generator::world::WorldSize;
    use shopstream_ingest::generator::{Generator, GeneratorOptions};

    use super::*;

    fn generator() -> GeneratorOptions {
        GeneratorOptions {
            seed: 5,
            max_events: Some(15_000),
            // About 3 hours of event time, past the label horizon.
            sessions_per_sec: 0.2,
            size: WorldSize {
                users: 200,
                items: 300,
                categories: 8,
            },
            ..GeneratorOptions::default()
        }
    }

    fn model() -> ModelConfig {
        ModelConfig {
            embedding_bits: 12,
            ..ModelConfig::default()
        }
    }

    /// The grouping rule is what the job does: the examples of the windows the features
    /// stage closed, flattened, are scored exactly as scoring them window by window does
    /// (same AUCs to the last bit, so the same model after every window). The end of
    /// input is left out: there the job trains everything still pending at once.
    #[test]
    fn flattened_examples_are_regrouped_into_the_windows_the_job_trained() {
        let pipeline = PipelineConfig::default();
        let baselines = BaselineConfig {
            trailing: 2_000,
            refit_every: 2_000,
        };
        let mut features = FeaturePipeline::new(&pipeline);
        let mut windows = Vec::new();
        for (meta, event) in Generator::new(generator()).decoded() {
            if features.ingest(meta, event).is_ok() {
                windows.extend(features.close_ready().into_iter().map(|w| w.examples));
            }
        }
        let mut quiet = |_| {};
        let mut by_window = Scoring::new(baselines, None, &mut quiet).unwrap();
        let mut trainer = Trainer::new(&model());
        for examples in &windows {
            let (_, outputs) = trainer.train_window_scored(examples);
            by_window.window(examples, &outputs, 0.0).unwrap();
        }
        let expected = by_window.finish(None).unwrap().rows;
        let options = EvaluateOptions {
            model: model(),
            pipeline,
            baselines,
            vw_out: None,
        };
        let flat = windows.into_iter().flatten().map(Ok::<_, std::io::Error>);
        let report = evaluate(flat, &options, &mut |_| {}).unwrap();
        assert!(report.examples > 1_000, "{}", report.examples);
        assert_eq!(report.rows.len(), expected.len());
        for (a, b) in report.rows.iter().zip(&expected) {
            assert_eq!((a.task, a.scenario, a.n), (b.task, b.scenario, b.n));
            assert_eq!(
                a.joint.map(f64::to_bits),
                b.joint.map(f64::to_bits),
                "{a:?}"
            );
            assert_eq!(a.baseline.map(f64::to_bits), b.baseline.map(f64::to_bits));
            assert!(a.oracle.is_none());
        }
    }

    /// A store's rows may have any ids: a window boundary falls between two examples
    /// exactly where the horizon moves them into the next window.
    #[test]
    fn training_windows_split_where_the_horizon_crosses_a_window_end() {
        let (h, w) = (90_000, 60_000);
        let windows = TrainingWindows {
            horizon: h,
            length: w,
        };
        assert_eq!(windows.of_ts(29_999), 1);
        assert_eq!(windows.of_ts(30_000), 2);
        assert_eq!(windows.of_ts(-h - 1), -1);
    }
}
