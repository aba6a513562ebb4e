//! Why the model scores what it scores: permutation importance (`shopstream model
//! explain`). Each model input (an id field or a dense input) is shuffled across a held-out
//! sample of examples, with a seeded shuffle, and the AUC the model loses on each task and
//! scenario is its importance: what the model would lose without that input's
//! information, in the units `model quality` and `model evaluate` report.
//!
//! Shuffling `scenario` shuffles both the scenario id and the scenario scaling of the
//! shared layer (the multi-scenario conditioning): its drop is what the conditioning on
//! the scenario is worth.

use serde::Serialize;
use shopstream_features::Example;
use shopstream_ingest::generator::rng::Rng;

use crate::joint::{DENSE, FIELDS, Input};
use crate::scoring::{TASKS, slices};
use crate::{Trainer, input_of, targets_of};

/// Names of the id fields, in the model's order.
pub const FIELD_NAMES: [&str; FIELDS] = [
    "user",
    "item",
    "category",
    "scenario",
    "device",
    "hour_of_day",
    "position",
    "scenario_x_position",
];

/// Names of the dense inputs, in the model's order (see [`crate::dense_inputs`]).
pub const DENSE_NAMES: [&str; DENSE] = [
    "user_impressions_7d",
    "user_ctr_7d",
    "user_clicks_24h",
    "item_ctr_24h",
    "item_cvr_7d",
    "item_impressions_24h",
    "user_category_affinity",
    "user_category_exposure",
    "price",
    "item_in_stock",
    "user_recency",
];

/// One input's importance on one task and slice.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Importance {
    /// The input.
    pub feature: &'static str,
    /// ctr, cvr (clicked impressions) or ctcvr.
    pub task: &'static str,
    /// A scenario, or `all`.
    pub scenario: &'static str,
    /// Examples in the slice.
    pub n: usize,
    /// The model's AUC on the slice as it is.
    pub auc: Option<f64>,
    /// How much AUC the model loses when the input is shuffled (positive: it matters).
    pub drop: Option<f64>,
}

/// An input to shuffle.
#[derive(Debug, Clone, Copy)]
enum Column {
    Field(usize),
    Dense(usize),
}

/// One input's part in one prediction: how much `p_click` changes when the input is set
/// to its baseline (an id to the row of no value, a dense input to its running mean).
/// Positive: the input raised the click probability.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Contribution {
    /// The input ([`FIELD_NAMES`] or [`DENSE_NAMES`]).
    pub feature: &'static str,
    /// `p_click` minus `p_click` with the input at its baseline.
    pub effect: f64,
}

/// The `k` inputs of `input` whose baseline changes `p_click` (which is `p_click`) most,
/// largest change first (ties: model order); inputs already at their baseline change
/// nothing and are left out. One forward pass per input.
pub fn top_contributions(
    model: &crate::joint::JointModel,
    input: &Input,
    p_click: f64,
    k: usize,
) -> Vec<Contribution> {
    let rows = model.embedding_rows();
    let means = model.dense_means();
    let mut all = Vec::with_capacity(FIELDS + DENSE);
    let mut probe = input.clone();
    for (f, name) in FIELD_NAMES.iter().enumerate() {
        let absent = crate::absent_row(f, rows);
        if input.ids[f] == absent {
            continue;
        }
        probe.ids[f] = absent;
        all.push(Contribution {
            feature: name,
            effect: p_click - model.predict(&probe).p_click,
        });
        probe.ids[f] = input.ids[f];
    }
    for (d, mean) in means.iter().enumerate() {
        probe.dense[d] = *mean;
        all.push(Contribution {
            feature: DENSE_NAMES[d],
            effect: p_click - model.predict(&probe).p_click,
        });
        probe.dense[d] = input.dense[d];
    }
    // Stable: equal changes keep the model's order.
    all.sort_by(|a, b| b.effect.abs().total_cmp(&a.effect.abs()));
    all.truncate(k);
    all
}

fn predict(trainer: &Trainer, inputs: &[Input]) -> Vec<[f64; 3]> {
    trainer
        .model()
        .predict_all(inputs)
        .into_iter()
        .map(|o| [o.p_click, o.p_cvr, o.p_ctcvr])
        .collect()
}

/// The importance of every input of `trainer`'s model on `examples` (which it has not
/// trained on), per task and slice; the shuffles follow `seed`. Rows are ordered by input
/// (ids, then dense), task and slice.
pub fn permutation_importance(
    trainer: &Trainer,
    examples: &[Example],
    seed: u64,
) -> Vec<Importance> {
    let rows = trainer.model().embedding_rows();
    let inputs: Vec<Input> = examples
        .iter()
        .map(|e| input_of(&e.user_id, &e.item_id, &e.features, rows))
        .collect();
    let slices = slices(examples, |e| {
        let t = targets_of(e);
        (e.features.scenario, t.clicked, t.converted)
    });
    let aucs = |p: &[[f64; 3]]| -> Vec<Option<f64>> {
        slices.iter().map(|s| s.auc(|i| p[i][s.task])).collect()
    };
    let base = aucs(&predict(trainer, &inputs));
    let columns = (0..FIELDS)
        .map(|f| (FIELD_NAMES[f], Column::Field(f)))
        .chain((0..DENSE).map(|k| (DENSE_NAMES[k], Column::Dense(k))));
    let mut out = Vec::new();
    for (index, (name, column)) in columns.enumerate() {
        // A seeded Fisher-Yates shuffle per input: the same seed, the same figures.
        let mut rng = Rng::new(seed, 1_000 + index as u64);
        let mut order: Vec<usize> = (0..inputs.len()).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i + 1));
        }
        let shuffled: Vec<Input> = inputs
            .iter()
            .zip(&order)
            .map(|(input, &from)| {
                let mut input = input.clone();
                match column {
                    Column::Field(f) => {
                        input.ids[f] = inputs[from].ids[f];
                        if FIELD_NAMES[f] == "scenario" {
                            input.scenario = inputs[from].scenario;
                        }
                    }
                    Column::Dense(k) => input.dense[k] = inputs[from].dense[k],
                }
                input
            })
            .collect();
        let permuted = aucs(&predict(trainer, &shuffled));
        for ((slice, auc), after) in slices.iter().zip(&base).zip(permuted) {
            out.push(Importance {
                feature: name,
                task: TASKS[slice.task],
                scenario: slice.scenario,
                n: slice.members.len(),
                auc: *auc,
                drop: auc.zip(after).map(|(a, b)| a - b),
            });
        }
    }
    out
}

/// The importances of one task and slice as a table for people, largest drop first.
pub fn render(rows: &[Importance], task: &str, scenario: &str) -> String {
    use std::fmt::Write;
    let mut picked: Vec<&Importance> = rows
        .iter()
        .filter(|r| r.task == task && r.scenario == scenario)
        .collect();
    picked.sort_by(|a, b| {
        b.drop
            .unwrap_or(f64::MIN)
            .total_cmp(&a.drop.unwrap_or(f64::MIN))
            .then(a.feature.cmp(b.feature))
    });
    let mut s = String::new();
    if let Some(first) = picked.first() {
        let _ = writeln!(
            s,
            "{task} on {scenario}: n {}, AUC {} ; AUC lost when the input is shuffled:",
            first.n,
            first.auc.map_or("-".to_string(), |a| format!("{a:.4}"))
        );
    }
    for r in picked {
        let _ = writeln!(
            s,
            "  {:<24} {}",
            r.feature,
            r.drop.map_or("     -".to_string(), |d| format!("{d:+.4}"))
        );
    }
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use shopstream_config::{ModelConfig, PipelineConfig};
    use shopstream_features::FeaturePipeline;
    use shopstream_ingest::generator::world::WorldSize;
    use shopstream_ingest::generator::{Generator, GeneratorOptions};

    use super::*;
    use crate::Prediction;

    /// The examples of each window the feature pipeline closes over `max_events` of
    /// generated traffic (half a session a second) in a shop of `size`.
    fn generated_windows(seed: u64, max_events: u64, size: WorldSize) -> Vec<Vec<Example>> {
        let options = GeneratorOptions {
            seed,
            max_events: Some(max_events),
            sessions_per_sec: 0.5,
            size,
            ..GeneratorOptions::default()
        };
        let mut features = FeaturePipeline::new(&PipelineConfig::default());
        let mut windows = Vec::new();
        for (meta, event) in Generator::new(options).decoded() {
            if features.ingest(meta, event).is_ok() {
                windows.extend(features.close_ready().into_iter().map(|w| w.examples));
            }
        }
        windows
    }

    /// `serving.explain`: each prediction keeps its probabilities and gets the 3 inputs
    /// whose baseline moves `p_click` most, each effect exactly the change one more
    /// forward pass shows.
    #[test]
    fn a_prediction_explains_itself_with_its_three_largest_input_effects() {
        let world = WorldSize {
            users: 200,
            items: 300,
            categories: 8,
        };
        let examples = generated_windows(11, 20_000, world).concat();
        let mut trainer = Trainer::new(&ModelConfig {
            embedding_bits: 10,
            ..ModelConfig::default()
        });
        let (train, sample) = examples.split_at(examples.len() - 200);
        for window in train.chunks(500) {
            trainer.train_window(window);
        }
        let mut top_ones = std::collections::BTreeSet::new();
        for e in sample {
            let row = shopstream_features::ServingRow {
                event_id: e.event_id.clone(),
                ts: e.ts,
                user_id: e.user_id.clone(),
                item_id: e.item_id.clone(),
                features: e.features.clone(),
            };
            let plain = trainer.predict(&row, None);
            let explained = trainer.predict_explained(&row, None, 3);
            assert!(plain.top_features.is_empty());
            assert_eq!(
                Prediction {
                    top_features: Vec::new(),
                    ..explained.clone()
                },
                plain,
                "explaining changes no probability"
            );
            let top = &explained.top_features;
            assert_eq!(top.len(), 3);
            assert!(
                top.windows(2)
                    .all(|w| w[0].effect.abs() >= w[1].effect.abs())
            );
            top_ones.insert(top[0].feature);
            // Each effect is the change of one input to its baseline.
            let rows = trainer.model().embedding_rows();
            let input = input_of(&e.user_id, &e.item_id, &e.features, rows);
            for c in top {
                let mut probe = input.clone();
                if let Some(f) = FIELD_NAMES.iter().position(|n| *n == c.feature) {
                    probe.ids[f] = crate::absent_row(f, rows);
                } else {
                    let d = DENSE_NAMES.iter().position(|n| *n == c.feature).unwrap();
                    probe.dense[d] = trainer.model().dense_means()[d];
                }
                let p = trainer.model().predict(&probe).p_click;
                assert_eq!(c.effect, plain.p_click - p, "{}", c.feature);
            }
            let json = serde_json::to_string(&explained).unwrap();
            assert!(json.contains("\"top_features\":[{\"feature\":"), "{json}");
            assert!(
                !serde_json::to_string(&plain)
                    .unwrap()
                    .contains("top_features")
            );
        }
        assert!(
            top_ones.len() > 1,
            "the largest input differs between impressions: {top_ones:?}"
        );
    }

    /// On generator traffic the inputs that carry the true click probability matter and
    /// the hour of day, which does not, does not; the figures are the same for the same
    /// seed.
    #[test]
    fn the_generators_true_inputs_matter_and_an_unused_one_does_not() {
        let world = WorldSize {
            users: 400,
            items: 600,
            categories: 12,
        };
        let windows = generated_windows(7, 60_000, world);
        let held_out = windows.len() * 4 / 5;
        let mut trainer = Trainer::new(&ModelConfig {
            embedding_bits: 12,
            ..ModelConfig::default()
        });
        for window in &windows[..held_out] {
            trainer.train_window(window);
        }
        let sample: Vec<Example> = windows[held_out..].concat();
        assert!(sample.len() > 2_000, "{}", sample.len());
        let rows = permutation_importance(&trainer, &sample, 1);
        assert_eq!(rows.len(), (FIELDS + DENSE) * 3 * 6);
        let drop = |feature: &str| {
            rows.iter()
                .find(|r| r.feature == feature && r.task == "ctr" && r.scenario == "all")
                .and_then(|r| r.drop)
                .unwrap()
        };
        eprintln!("{}", render(&rows, "ctr", "all"));
        // The generator's click logit: scenario + user's category affinity + item quality +
        // user bias + device - position decay. Not the hour. The user's tastes reach the
        // model through two inputs: the categories the shop shows them (it picks from their
        // tastes) and the categories they click.
        assert!(drop("user_category_exposure") > 0.02);
        assert!(drop("user_category_affinity") > 0.005);
        assert!(drop("scenario") > 0.02);
        assert!(drop("position") > 0.005);
        assert!(drop("hour_of_day").abs() < 0.002);
        assert_eq!(permutation_importance(&trainer, &sample, 1), rows);
    }
}
