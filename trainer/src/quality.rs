//! The quality benchmark: generator traffic -> features -> the joint model and the
//! smartcore baselines, all prequential, compared with the oracle (the generator's true
//! probabilities), per task and per scenario. Runs in process, without Kafka, so it
//! measures the model and nothing else. `shopstream model quality` prints it.

use std::collections::HashMap;
use std::path::PathBuf;

use serde::Serialize;
use shopstream_config::{ModelConfig, PipelineConfig};
use shopstream_ingest::event::Event;
use shopstream_ingest::generator::{Generator, GeneratorOptions};

use crate::Trainer;
use crate::baselines::BaselineConfig;
use crate::prequential::{Observer, Prequential, ScoredWindow};
pub use crate::scoring::TaskRow;
use crate::scoring::{Scored, Scoring, VwLabel, render_rows};

/// What to run.
#[derive(Debug, Clone)]
pub struct QualityOptions {
    /// Traffic.
    pub generator: GeneratorOptions,
    /// The joint model.
    pub model: ModelConfig,
    /// Windows, joins.
    pub pipeline: PipelineConfig,
    /// The baselines.
    pub baselines: BaselineConfig,
    /// Also write the example stream in Vowpal Wabbit's text format here (CTR labels).
    pub vw_out: Option<PathBuf>,
}

/// The benchmark's result.
#[derive(Debug, Clone, Serialize)]
pub struct QualityReport {
    /// Impressions (examples) evaluated.
    pub examples: usize,
    /// Per task and scenario.
    pub rows: Vec<TaskRow>,
    /// Seconds spent in the joint model (predict + train).
    pub joint_secs: f64,
    /// Joint model examples per second (prequential predict + train).
    pub joint_examples_per_sec: f64,
    /// Baseline fits that failed.
    pub baseline_failed_fits: u64,
}

/// The benchmark's side of the prequential loop.
struct Observed<'p>(Scoring<'p>);

impl Observer for Observed<'_> {
    type Note = ();
    type Error = std::io::Error;

    fn note(&mut self, _: &Event) -> Option<()> {
        None
    }

    fn admitted(&mut self, (): ()) {}

    fn window(&mut self, scored: ScoredWindow, _: &Trainer) -> std::io::Result<()> {
        self.0
            .window(&scored.window.examples, &scored.outputs, scored.model_secs)
    }
}

/// Runs the benchmark.
pub fn run_quality(options: &QualityOptions) -> std::io::Result<QualityReport> {
    run_quality_with_progress(options, &mut |_| {})
}

/// Runs the benchmark, calling `progress` with the number of impressions scored after
/// each window.
pub fn run_quality_with_progress(
    options: &QualityOptions,
    progress: &mut dyn FnMut(u64),
) -> std::io::Result<QualityReport> {
    let mut generator = Generator::new(options.generator.clone());
    let vw = options.vw_out.as_deref().map(|p| (p, VwLabel::Click));
    let mut observed = Observed(Scoring::new(options.baselines, vw, progress)?);
    Prequential::new(&options.pipeline, &options.model).run(generator.decoded(), &mut observed)?;
    let truth: HashMap<&str, (f64, f64)> = generator
        .truth()
        .iter()
        .map(|t| (t.event_id.as_str(), (t.p_click, t.p_cvr)))
        .collect();
    let oracle = |s: &Scored, task: usize| {
        truth
            .get(s.event_id.as_str())
            .map_or(0.0, |(c, v)| match task {
                0 => *c,
                1 => *v,
                _ => c * v,
            })
    };
    observed.0.finish(Some(&oracle))
}

impl QualityReport {
    /// The report as a table for people.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "prequential AUC over {} impressions (joint model: {:.0} examples/s predict+train)",
            self.examples, self.joint_examples_per_sec
        );
        render_rows(&self.rows, &mut s);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shopstream_ingest::decode::{DecodeLimits, decode};
    use shopstream_ingest::generator::world::WorldSize;

    #[test]
    fn small_run_scores_every_impression_against_the_oracle() {
        let options = QualityOptions {
            generator: GeneratorOptions {
                seed: 3,
                max_events: Some(20_000),
                size: WorldSize {
                    users: 300,
                    items: 400,
                    categories: 10,
                },
                ..GeneratorOptions::default()
            },
            model: ModelConfig {
                embedding_bits: 12,
                ..ModelConfig::default()
            },
            pipeline: PipelineConfig::default(),
            baselines: BaselineConfig {
                trailing: 5_000,
                refit_every: 5_000,
            },
            vw_out: None,
        };
        let report = run_quality(&options).expect("in-memory run");
        let impressions = Generator::new(options.generator.clone())
            .filter(|m| {
                matches!(decode(m.topic, None, &m.payload, DecodeLimits::default()),
                    Ok(shopstream_ingest::event::Event::Click(c)) if c.kind == shopstream_ingest::event::ClickKind::Impression)
            })
            .count();
        assert_eq!(report.examples, impressions);
        assert_eq!(report.rows.len(), 18);
        let all_ctr = &report.rows[0];
        assert_eq!(
            (all_ctr.task, all_ctr.scenario, all_ctr.n),
            ("ctr", "all", impressions)
        );
        let (joint, oracle) = (all_ctr.joint.expect("auc"), all_ctr.oracle.expect("auc"));
        assert!(
            oracle > 0.65 && joint > 0.55,
            "joint {joint} oracle {oracle}"
        );
        assert!(
            report
                .rows
                .iter()
                .all(|r| r.task != "cvr" || r.n <= impressions / 2)
        );
    }
}
