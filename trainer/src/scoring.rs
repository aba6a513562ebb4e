//! What `model quality` and `model evaluate` share: scoring each window with the joint
//! model and the smartcore baselines before either learns from it, the AUC table per task
//! and scenario, and the same examples in Vowpal Wabbit's text format.

use std::io::Write;

use serde::Serialize;
use shopstream_features::Example;
use shopstream_ingest::event::{Scenario, Text};

use crate::baselines::{BaselineConfig, Baselines};
use crate::joint::Output;
use crate::metrics::{auc, auc_standard_error};
use crate::quality::QualityReport;
use crate::{dense_inputs, targets_of};

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
    /// Its standard error (Hanley-McNeil): AUC differences well below about twice this
    /// are noise of the sample's size.
    pub joint_se: Option<f64>,
    /// Single-task smartcore baseline AUC.
    pub baseline: Option<f64>,
    /// Oracle AUC (the generator's true probabilities; absent for a real log).
    pub oracle: Option<f64>,
}

/// Which label the Vowpal Wabbit stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VwLabel {
    /// Clicked (CTR).
    #[default]
    Click,
    /// Converted and not cancelled, over every impression (CTCVR; on clicked impressions
    /// alone, CVR).
    Conversion,
}

/// One scored impression.
pub(crate) struct Scored {
    pub(crate) event_id: Text,
    pub(crate) scenario: Scenario,
    pub(crate) clicked: bool,
    pub(crate) converted: bool,
    /// p_click, p_cvr, p_ctcvr of the joint model ...
    pub(crate) joint: [f64; 3],
    /// ... and of the baselines.
    pub(crate) baseline: [f64; 3],
}

/// Scores windows, in order, with the baselines next to the joint model's scores.
pub(crate) struct Scoring<'p> {
    baselines: Baselines,
    vw: Option<(std::io::BufWriter<std::fs::File>, VwLabel)>,
    scored: Vec<Scored>,
    joint_secs: f64,
    /// Windows scored so far.
    windows: u64,
    progress: &'p mut dyn FnMut(u64),
}

impl<'p> Scoring<'p> {
    /// Scoring with fresh baselines; the examples also go to `vw` when set.
    pub(crate) fn new(
        baselines: BaselineConfig,
        vw: Option<(&std::path::Path, VwLabel)>,
        progress: &'p mut dyn FnMut(u64),
    ) -> std::io::Result<Self> {
        let vw = match vw {
            Some((path, label)) => {
                Some((std::io::BufWriter::new(std::fs::File::create(path)?), label))
            }
            None => None,
        };
        Ok(Self {
            baselines: Baselines::new(baselines),
            vw,
            scored: Vec::new(),
            joint_secs: 0.0,
            windows: 0,
            progress,
        })
    }

    /// A window's examples with the joint model's scores of them (made before it trained
    /// on them): the baselines score them, then learn from them.
    pub(crate) fn window(
        &mut self,
        examples: &[Example],
        outputs: &[Output],
        model_secs: f64,
    ) -> std::io::Result<()> {
        if examples.is_empty() {
            return Ok(());
        }
        let base: Vec<_> = examples.iter().map(|e| self.baselines.predict(e)).collect();
        self.joint_secs += model_secs;
        self.baselines.observe(examples);
        for ((e, o), b) in examples.iter().zip(outputs).zip(&base) {
            let t = targets_of(e);
            self.scored.push(Scored {
                event_id: e.event_id.clone(),
                scenario: e.features.scenario,
                clicked: t.clicked,
                converted: t.converted,
                joint: [o.p_click, o.p_cvr, o.p_ctcvr],
                baseline: [b.p_click, b.p_cvr, b.p_click * b.p_cvr],
            });
            if let Some((out, label)) = self.vw.as_mut() {
                write_vw(out, e, *label, self.windows)?;
            }
        }
        self.windows += 1;
        (self.progress)(self.scored.len() as u64);
        Ok(())
    }

    /// Flushes the VW stream; the report over every impression scored, with `oracle`'s
    /// AUCs when given.
    pub(crate) fn finish(self, oracle: Option<Oracle<'_>>) -> std::io::Result<QualityReport> {
        if let Some((mut out, _)) = self.vw {
            out.flush()?;
        }
        let examples = self.scored.len();
        Ok(QualityReport {
            examples,
            rows: task_rows(&self.scored, oracle),
            joint_secs: self.joint_secs,
            joint_examples_per_sec: examples as f64 / self.joint_secs.max(1e-9),
            baseline_failed_fits: self.baselines.failed_fits,
        })
    }
}

/// An impression's true probability of a task (0 ctr, 1 cvr, 2 ctcvr), when known.
pub(crate) type Oracle<'a> = &'a dyn Fn(&Scored, usize) -> f64;

/// The tasks, in report order: ctr over impressions, cvr over clicked impressions, ctcvr
/// over impressions.
pub(crate) const TASKS: [&str; 3] = ["ctr", "cvr", "ctcvr"];

/// The impressions of one task and slice: those a report row is computed over.
pub(crate) struct Slice {
    /// Index into [`TASKS`].
    pub(crate) task: usize,
    /// A scenario, or `all`.
    pub(crate) scenario: &'static str,
    /// Indices of the impressions in it ...
    pub(crate) members: Vec<usize>,
    /// ... and their labels for the task.
    pub(crate) labels: Vec<bool>,
}

impl Slice {
    /// AUC of `score` (of an impression's index) over the slice.
    pub(crate) fn auc(&self, score: impl Fn(usize) -> f64) -> Option<f64> {
        let scores: Vec<f64> = self.members.iter().map(|&i| score(i)).collect();
        auc(&scores, &self.labels)
    }

    pub(crate) fn positives(&self) -> usize {
        self.labels.iter().filter(|y| **y).count()
    }
}

/// Every task's slices (all, then each scenario) of impressions whose `outcome` is
/// (scenario, clicked, converted), in report order.
pub(crate) fn slices<T>(items: &[T], outcome: impl Fn(&T) -> (Scenario, bool, bool)) -> Vec<Slice> {
    let outcomes: Vec<(Scenario, bool, bool)> = items.iter().map(outcome).collect();
    let scenarios: Vec<(&'static str, Option<Scenario>)> = std::iter::once(("all", None))
        .chain(Scenario::ALL.iter().map(|s| (s.as_str(), Some(*s))))
        .collect();
    let mut out = Vec::new();
    for task in 0..TASKS.len() {
        for (name, scenario) in &scenarios {
            let (mut members, mut labels) = (Vec::new(), Vec::new());
            for (i, (at, clicked, converted)) in outcomes.iter().enumerate() {
                if scenario.is_some_and(|s| s != *at) || (task == 1 && !clicked) {
                    continue;
                }
                members.push(i);
                labels.push(if task == 0 { *clicked } else { *converted });
            }
            out.push(Slice {
                task,
                scenario: name,
                members,
                labels,
            });
        }
    }
    out
}

/// AUCs per task and slice; `oracle` gives an impression's true probability of a task,
/// when known.
pub(crate) fn task_rows(scored: &[Scored], oracle: Option<Oracle<'_>>) -> Vec<TaskRow> {
    slices(scored, |s| (s.scenario, s.clicked, s.converted))
        .into_iter()
        .map(|slice| {
            let task = slice.task;
            let (n, positives) = (slice.members.len(), slice.positives());
            let joint = slice.auc(|i| scored[i].joint[task]);
            TaskRow {
                task: TASKS[task],
                scenario: slice.scenario,
                n,
                positives,
                joint,
                joint_se: joint.and_then(|a| auc_standard_error(a, positives, n - positives)),
                baseline: slice.auc(|i| scored[i].baseline[task]),
                oracle: oracle.and_then(|o| slice.auc(|i| o(&scored[i], task))),
            }
        })
        .collect()
}

/// One example in Vowpal Wabbit's text format: the same ids as namespaces and the same
/// dense inputs as numeric features, the label as 1 / -1. The tag is
/// `SCENARIO/CLICKED/WINDOW` (clicked 0 or 1; the window's number in the run), so that the
/// comparison script can slice as [`task_rows`] does, and can also learn a window at a
/// time as the joint model does.
fn write_vw(out: &mut impl Write, e: &Example, label: VwLabel, window: u64) -> std::io::Result<()> {
    let f = &e.features;
    let t = targets_of(e);
    let positive = match label {
        VwLabel::Click => t.clicked,
        VwLabel::Conversion => t.converted,
    };
    let clean = |s: &str| s.replace([' ', '|', ':'], "_");
    write!(
        out,
        "{} '{}/{}/{} |u u{} |i i{} |c c{} |s {} |d d{} |p p{} |n",
        if positive { 1 } else { -1 },
        f.scenario.as_str(),
        u8::from(t.clicked),
        window,
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

/// The AUC table for people.
pub(crate) fn render_rows(rows: &[TaskRow], out: &mut String) {
    use std::fmt::Write;
    let f = |x: Option<f64>| x.map_or("   -  ".to_string(), |v| format!("{v:.4}"));
    let _ = writeln!(
        out,
        "{:<6} {:<15} {:>9} {:>8} {:>7} {:>7} {:>8} {:>7} {:>10} {:>11}",
        "task",
        "scenario",
        "n",
        "pos",
        "joint",
        "+-se",
        "baseline",
        "oracle",
        "joint-base",
        "oracle-joint"
    );
    for r in rows {
        let diff = |a: Option<f64>, b: Option<f64>| {
            a.zip(b)
                .map_or("    -".to_string(), |(a, b)| format!("{:+.4}", a - b))
        };
        let _ = writeln!(
            out,
            "{:<6} {:<15} {:>9} {:>8} {:>7} {:>7} {:>8} {:>7} {:>10} {:>11}",
            r.task,
            r.scenario,
            r.n,
            r.positives,
            f(r.joint),
            r.joint_se
                .map_or("   -".to_string(), |se| format!("{se:.4}")),
            f(r.baseline),
            f(r.oracle),
            diff(r.joint, r.baseline),
            diff(r.oracle, r.joint)
        );
    }
}
