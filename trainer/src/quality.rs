//! The quality benchmark: generator traffic -> features -> the joint model and the
//! smartcore baselines, all prequential, compared with the oracle (the generator's true
//! probabilities), per task and per scenario. Runs in process, without Kafka, so it
//! measures the model and nothing else. `shopstream model quality` prints it.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;

use serde::Serialize;
use shopstream_config::{ModelConfig, PipelineConfig};
use shopstream_features::Example;
use shopstream_ingest::event::{Event, Scenario};
use shopstream_ingest::generator::{Generator, GeneratorOptions};

use crate::baselines::{BaselineConfig, Baselines};
use crate::metrics::auc;
use crate::prequential::{Observer, Prequential, ScoredWindow};
use crate::{Trainer, dense_inputs, targets_of};

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

/// AUC of one task on one slice.
#[derive(Debug, Clone, Serialize)]
pub struct TaskRow {
    /// ctr, cvr or ctcvr.
    pub task: &'static str,
    /// A scenario, or `all`.
    pub scenario: &'static str,
    /// Examples in the slice (clicked impressions for cvr).
    pub n: usize,
    /// Positives in the slice.
    pub positives: usize,
    /// Joint model AUC.
    pub joint: Option<f64>,
    /// Single-task smartcore baseline AUC.
    pub baseline: Option<f64>,
    /// Oracle AUC (the generator's true probabilities).
    pub oracle: Option<f64>,
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

struct Scored {
    event_id: String,
    scenario: Scenario,
    clicked: bool,
    converted: bool,
    joint: [f64; 3],
    baseline: [f64; 3],
}

/// The benchmark's side of the prequential loop: the baselines score each window before
/// they learn from it, as the joint model does.
struct Scoring<'p> {
    baselines: Baselines,
    vw: Option<std::io::BufWriter<std::fs::File>>,
    scored: Vec<Scored>,
    joint_secs: f64,
    progress: &'p mut dyn FnMut(u64),
}

impl Observer for Scoring<'_> {
    type Note = ();
    type Error = std::io::Error;

    fn note(&mut self, _: &Event) -> Option<()> {
        None
    }

    fn admitted(&mut self, (): ()) {}

    fn window(&mut self, scored: ScoredWindow, _: &Trainer) -> std::io::Result<()> {
        let examples = &scored.window.examples;
        if examples.is_empty() {
            return Ok(());
        }
        let base: Vec<_> = examples.iter().map(|e| self.baselines.predict(e)).collect();
        self.joint_secs += scored.model_secs;
        self.baselines.observe(examples);
        for ((e, o), b) in examples.iter().zip(&scored.outputs).zip(&base) {
            let t = targets_of(e);
            self.scored.push(Scored {
                event_id: e.event_id.clone(),
                scenario: e.features.scenario,
                clicked: t.clicked,
                converted: t.converted,
                joint: [o.p_click, o.p_cvr, o.p_ctcvr],
                baseline: [b.p_click, b.p_cvr, b.p_click * b.p_cvr],
            });
            if let Some(out) = self.vw.as_mut() {
                write_vw(out, e)?;
            }
        }
        (self.progress)(self.scored.len() as u64);
        Ok(())
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
    let vw = match &options.vw_out {
        Some(path) => Some(std::io::BufWriter::new(std::fs::File::create(path)?)),
        None => None,
    };
    let mut scoring = Scoring {
        baselines: Baselines::new(options.baselines),
        vw,
        scored: Vec::new(),
        joint_secs: 0.0,
        progress,
    };
    Prequential::new(&options.pipeline, &options.model).run(generator.decoded(), &mut scoring)?;
    let Scoring {
        baselines,
        vw,
        scored,
        joint_secs,
        ..
    } = scoring;
    if let Some(mut out) = vw {
        out.flush()?;
    }
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
    let mut rows = Vec::new();
    let slices: Vec<(&'static str, Option<Scenario>)> = std::iter::once(("all", None))
        .chain(Scenario::ALL.iter().map(|s| (s.as_str(), Some(*s))))
        .collect();
    for (task, name) in ["ctr", "cvr", "ctcvr"].into_iter().enumerate() {
        for (slice, scenario) in &slices {
            let members: Vec<&Scored> = scored
                .iter()
                .filter(|s| scenario.is_none_or(|sc| s.scenario == sc))
                .filter(|s| task != 1 || s.clicked)
                .collect();
            let label = |s: &&Scored| if task == 0 { s.clicked } else { s.converted };
            let labels: Vec<bool> = members.iter().map(label).collect();
            let column = |f: &dyn Fn(&Scored) -> f64| -> Option<f64> {
                let scores: Vec<f64> = members.iter().map(|s| f(s)).collect();
                auc(&scores, &labels)
            };
            rows.push(TaskRow {
                task: name,
                scenario: slice,
                n: members.len(),
                positives: labels.iter().filter(|y| **y).count(),
                joint: column(&|s| s.joint[task]),
                baseline: column(&|s| s.baseline[task]),
                oracle: column(&|s| oracle(s, task)),
            });
        }
    }
    Ok(QualityReport {
        examples: scored.len(),
        rows,
        joint_secs,
        joint_examples_per_sec: scored.len() as f64 / joint_secs.max(1e-9),
        baseline_failed_fits: baselines.failed_fits,
    })
}

/// One example in Vowpal Wabbit's text format: the same ids as namespaces and the same
/// dense inputs as numeric features, CTR label as 1 / -1.
fn write_vw(out: &mut impl Write, e: &Example) -> std::io::Result<()> {
    let f = &e.features;
    let clean = |s: &str| s.replace([' ', '|', ':'], "_");
    write!(
        out,
        "{} |u u{} |i i{} |c c{} |s {} |d d{} |p p{} |n",
        if e.labels.clicked { 1 } else { -1 },
        clean(&e.user_id),
        clean(&e.item_id),
        clean(f.item_category.as_deref().unwrap_or("none")),
        f.scenario.as_str(),
        clean(f.device.as_deref().unwrap_or("none")),
        f.position.map_or(99, |p| p.min(30)),
    )?;
    for (k, v) in dense_inputs(f).iter().enumerate() {
        write!(out, " x{k}:{v:.6}")?;
    }
    writeln!(out)
}

impl QualityReport {
    /// The report as a table for people.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let f = |x: Option<f64>| x.map_or("   -  ".to_string(), |v| format!("{v:.4}"));
        let _ = writeln!(
            s,
            "prequential AUC over {} impressions (joint model: {:.0} examples/s predict+train)",
            self.examples, self.joint_examples_per_sec
        );
        let _ = writeln!(
            s,
            "{:<6} {:<15} {:>9} {:>8} {:>7} {:>8} {:>7} {:>10} {:>11}",
            "task",
            "scenario",
            "n",
            "pos",
            "joint",
            "baseline",
            "oracle",
            "joint-base",
            "oracle-joint"
        );
        for r in &self.rows {
            let diff = |a: Option<f64>, b: Option<f64>| {
                a.zip(b)
                    .map_or("    -".to_string(), |(a, b)| format!("{:+.4}", a - b))
            };
            let _ = writeln!(
                s,
                "{:<6} {:<15} {:>9} {:>8} {:>7} {:>8} {:>7} {:>10} {:>11}",
                r.task,
                r.scenario,
                r.n,
                r.positives,
                f(r.joint),
                f(r.baseline),
                f(r.oracle),
                diff(r.joint, r.baseline),
                diff(r.oracle, r.joint)
            );
        }
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
