//! Trainer: the joint multi-task, multi-scenario model, trained window by window, and the
//! predictions it serves.
//!
//! - [`joint`]: the network (shared embeddings and layers, scenario scaling, CTR, CVR
//!   (ESMM) and value heads), its losses, Adam, gradient checks.
//! - `kernels`: the network's dot products, dense layers, axpy and Adam, each adding in
//!   the same order as the plain loop it stands for (models stay byte-identical).
//! - [`metrics`]: AUC, log loss, calibration.
//! - [`evaluate`]: the same prequential scoring over a store's examples (real logs).
//! - [`prequential`]: the in-process loop events -> features -> score, then train, per
//!   closed window (`model quality`, `drift bench`).
//! - [`Trainer`]: turns feature rows into model inputs, predicts serving rows on arrival,
//!   and on each closed window predicts first, then trains (prequential evaluation).
//!
//! Ids are hashed with FNV-1a (not the std hasher, whose seed changes per process), so two
//! runs over the same examples give bit-identical models.

pub mod baselines;
pub mod evaluate;
pub mod explain;
mod f64_bytes;
pub mod joint;
mod kernels;
pub mod metrics;
pub mod model_file;
pub mod prequential;
pub mod quality;
mod scoring;

pub use scoring::VwLabel;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use shopstream_config::ModelConfig;
use shopstream_features::{DemandFeatures, DemandRow, Example, Features, ServingRow};
use shopstream_ingest::event::{Scenario, Text};
use shopstream_ingest::hash::Fnv1a;

use joint::{DEMAND_DENSE, DENSE, FIELDS, Input, JointConfig, JointModel, Targets};
use metrics::BinaryMetrics;

/// One prediction, as published to `shop.predictions` (JSON), keyed by `event_id`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    /// The impression's event id.
    pub event_id: Text,
    /// Event time of the impression, epoch milliseconds.
    pub ts: i64,
    /// The user.
    pub user_id: Text,
    /// The item.
    pub item_id: Text,
    /// The scenario.
    pub scenario: &'static str,
    /// P(click | impression).
    pub p_click: f64,
    /// P(order | click).
    pub p_cvr: f64,
    /// P(click and order | impression) = p_click x p_cvr.
    pub p_ctcvr: f64,
    /// Expected revenue of the impression: p_ctcvr x predicted order value.
    pub expected_revenue: f64,
    /// Number of windows the model had been trained on.
    pub model_version: u64,
    /// Watermark of the job when the prediction was made, epoch milliseconds.
    pub watermark_ms: Option<i64>,
    /// With `serving.explain`: the inputs that moved `p_click` most, largest first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub top_features: Vec<explain::Contribution>,
}

/// A forecast of one item's sales in the next window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DemandForecast {
    /// The item (shared with the features' demand row: a window's forecasts copy no ids).
    pub item_id: Arc<str>,
    /// Start of the window forecast (epoch ms).
    pub window_start: i64,
    /// Expected units sold in that window.
    pub units: f64,
    /// Units on hand at its start, if known.
    pub on_hand: Option<i64>,
    /// Forecast demand exceeds the stock on hand.
    pub stockout_risk: bool,
    /// Model version that made the forecast.
    pub model_version: u64,
}

/// Prequential metrics of the demand head on one window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct DemandMetrics {
    /// Item rows scored.
    pub n: usize,
    /// Units actually sold.
    pub units: f64,
    /// Units forecast.
    pub forecast: f64,
    /// Mean Poisson deviance.
    pub poisson_deviance: f64,
    /// Mean absolute error in units.
    pub mae: f64,
}

/// Prequential metrics of one training window: predictions made *before* training on it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct WindowMetrics {
    /// Examples trained on.
    pub examples: usize,
    /// Clicks among them.
    pub positives: usize,
    /// CTR log loss (kept for summaries).
    pub log_loss: f64,
    /// Mean predicted click probability.
    pub mean_prediction: f64,
    /// CTR over all impressions.
    pub ctr: BinaryMetrics,
    /// CVR over clicked impressions.
    pub cvr: BinaryMetrics,
    /// CTCVR (click and order) over all impressions.
    pub ctcvr: BinaryMetrics,
    /// RMSE of ln(1 + revenue) over converted impressions.
    pub value_rmse: Option<f64>,
    /// CTR per scenario.
    pub ctr_by_scenario: BTreeMap<String, BinaryMetrics>,
    /// Mean training loss over the window's minibatches.
    pub train_loss: f64,
    /// The item-demand head on the window's demand rows.
    pub demand: Option<DemandMetrics>,
}

/// The model and its training state (serializable: a checkpoint holds it).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Trainer {
    model: JointModel,
    batch_size: usize,
    version: u64,
    trained_examples: u64,
    /// Prequential metrics of the last window that had examples. Part of the trainer (and
    /// so of every checkpoint) because the model file carries them: a job restarted from
    /// a checkpoint taken after its last window must write the same model file as a job
    /// never stopped.
    #[serde(default)]
    last_window: Option<WindowMetrics>,
}

/// FNV-1a keyed by the field, over the parts, each followed by a 0xff separator.
fn fnv(field: u8, parts: &[&[u8]]) -> u64 {
    let mut h = Fnv1a::keyed(field);
    for part in parts {
        h.write(part).write(&[0xff]);
    }
    h.finish()
}

fn scenario_index(s: Scenario) -> usize {
    Scenario::ALL.iter().position(|x| *x == s).unwrap_or(0)
}

/// The embedding row of field `field` (0..FIELDS) with no known value: what a new user or
/// item (the shared row of [`MIN_IMPRESSIONS_FOR_OWN_ROW`]), or an absent category or
/// device, reads (the baseline of [`explain::top_contributions`]).
pub fn absent_row(field: usize, rows: usize) -> usize {
    let value: &[u8] = if field <= 1 { NEW_ID } else { b"" };
    (fnv(u8::try_from(field).unwrap_or(u8::MAX), &[value]) % rows as u64) as usize
}

/// A user or item with fewer impressions than this over the last 7 days (before the
/// event) takes the shared row of new ids of its field instead of its own: a row seen
/// once or twice is still near its random start and adds noise, while the shared row
/// learns how new users and items behave (frequency-filtered ids; BENCHMARKS.md).
pub const MIN_IMPRESSIONS_FOR_OWN_ROW: i64 = 3;

/// What the id fields hash for a new id (no id hashes to it: ids are UTF-8, this is not).
const NEW_ID: &[u8] = b"\xff new";

/// Model inputs of a feature row.
pub fn input_of(user_id: &str, item_id: &str, f: &Features, rows: usize) -> Input {
    let scenario = f.scenario.as_str().as_bytes();
    let position = [f.position.map_or(255, |p| p.min(30) as u8)];
    let slot = |field: u8, parts: &[&[u8]]| (fnv(field, parts) % rows as u64) as usize;
    let ids: [usize; FIELDS] = [
        slot(0, &[own_or_new(user_id, f.user[2].impressions)]),
        slot(1, &[own_or_new(item_id, f.item[2].impressions)]),
        slot(2, &[f.item_category.as_deref().unwrap_or("").as_bytes()]),
        slot(3, &[scenario]),
        slot(4, &[f.device.as_deref().unwrap_or("").as_bytes()]),
        slot(5, &[&[f.hour_of_day]]),
        slot(6, &[&position]),
        slot(7, &[scenario, &position]),
    ];
    Input {
        ids,
        dense: dense_inputs(f),
        scenario: scenario_index(f.scenario),
    }
}

/// The bytes an id field hashes: the id, or [`NEW_ID`] when it was seen fewer than
/// [`MIN_IMPRESSIONS_FOR_OWN_ROW`] times.
fn own_or_new(id: &str, impressions_7d: i64) -> &[u8] {
    if impressions_7d >= MIN_IMPRESSIONS_FOR_OWN_ROW {
        id.as_bytes()
    } else {
        NEW_ID
    }
}

/// The dense (numeric) model inputs of a feature row, before normalisation.
pub fn dense_inputs(f: &Features) -> [f64; DENSE] {
    let ln1p = |x: f64| x.max(0.0).ln_1p();
    [
        ln1p(f.user[2].impressions as f64),
        f.user_ctr_7d(),
        ln1p(f.user[1].clicks as f64),
        f.item_ctr_24h(),
        f.item_cvr_7d(),
        ln1p(f.item[1].impressions as f64),
        f.user_category_affinity,
        f.user_category_exposure,
        f.price.map_or(0.0, ln1p),
        f.item_on_hand
            .map_or(0.0, |h| if h > 0 { 1.0 } else { -1.0 }),
        f.user_recency_secs.map_or(16.0, |r| ln1p(r.min(1e7))),
    ]
}

/// Demand-head inputs of an item: its embedding row (shared with the CTR/CVR towers) and
/// log-scaled sales, stock and price.
pub fn demand_input(f: &DemandFeatures, rows: usize) -> (usize, [f64; DEMAND_DENSE]) {
    let ln1p = |x: f64| x.max(0.0).ln_1p();
    let row = (fnv(1, &[f.item_id.as_bytes()]) % rows as u64) as usize;
    let dense = [
        ln1p(f.sales[0].units as f64),
        ln1p(f.sales[1].units as f64),
        ln1p(f.sales[2].units as f64),
        f.on_hand.map_or(0.0, |h| ln1p(h as f64)),
        f.price.map_or(0.0, ln1p),
    ];
    (row, dense)
}

/// Model targets of an example.
pub fn targets_of(e: &Example) -> Targets {
    // An order cancelled before the label matured is not a conversion.
    let converted = e.labels.converted && !e.labels.cancelled;
    Targets {
        clicked: e.labels.clicked,
        converted,
        log_revenue: if converted {
            e.labels.revenue.max(0.0).ln_1p()
        } else {
            0.0
        },
    }
}

impl Trainer {
    /// A fresh model for `config`.
    pub fn new(config: &ModelConfig) -> Self {
        let model = JointModel::new(JointConfig {
            embedding_bits: config.embedding_bits,
            embedding_dim: config.embedding_dim,
            hidden1: config.hidden1,
            hidden2: config.hidden2,
            learning_rate: config.learning_rate,
            batch_size: config.batch_size,
            value_weight: config.value_weight,
            seed: config.seed,
        });
        Self {
            model,
            batch_size: config.batch_size.max(1),
            version: 0,
            trained_examples: 0,
            last_window: None,
        }
    }

    /// A trainer around a loaded model.
    pub fn from_model(
        model: JointModel,
        version: u64,
        trained_examples: u64,
        last_window: Option<WindowMetrics>,
    ) -> Self {
        let batch_size = model.config().batch_size.max(1);
        Self {
            model,
            batch_size,
            version,
            trained_examples,
            last_window,
        }
    }

    /// A copy for serving: predicts exactly like this trainer (same version), without the
    /// optimiser state. Share it immutably (`Arc`): training it would be wrong.
    pub fn serving_copy(&self) -> Self {
        self.serving_copy_around(self.model.serving_copy())
    }

    /// A new [`Trainer::serving_copy`] made from `copy`, an earlier one that nothing else
    /// holds, reusing its model's memory ([`JointModel::serving_copy_into`]).
    pub fn serving_copy_into(&self, copy: Self) -> Self {
        let mut model = copy.model;
        self.model.serving_copy_into(&mut model);
        self.serving_copy_around(model)
    }

    /// A serving copy of this trainer around `model`, a serving copy of its model.
    fn serving_copy_around(&self, model: JointModel) -> Self {
        Self {
            model,
            batch_size: self.batch_size,
            version: self.version,
            trained_examples: self.trained_examples,
            last_window: self.last_window.clone(),
        }
    }

    /// The model version: the number of windows trained on.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Examples trained on so far.
    pub fn trained_examples(&self) -> u64 {
        self.trained_examples
    }

    /// Prequential metrics of the last window that had examples (demand included, once
    /// [`Trainer::record_window`] has been called for it).
    pub fn last_window(&self) -> Option<&WindowMetrics> {
        self.last_window.as_ref()
    }

    /// Keeps `metrics` as the last window's (the caller completes them, e.g. with the
    /// demand head's figures, after [`Trainer::train_window_scored`]).
    pub fn record_window(&mut self, metrics: WindowMetrics) {
        self.last_window = Some(metrics);
    }

    /// The model.
    pub fn model(&self) -> &JointModel {
        &self.model
    }

    /// Predictions for a serving row, from the current model.
    pub fn predict(&self, row: &ServingRow, watermark_ms: Option<i64>) -> Prediction {
        self.predict_explained(row, watermark_ms, 0)
    }

    /// Like [`Trainer::predict`], with the `top` inputs that moved `p_click` most
    /// ([`explain::top_contributions`]; none for 0).
    pub fn predict_explained(
        &self,
        row: &ServingRow,
        watermark_ms: Option<i64>,
        top: usize,
    ) -> Prediction {
        let input = input_of(
            &row.user_id,
            &row.item_id,
            &row.features,
            self.model.embedding_rows(),
        );
        let out = self.model.predict(&input);
        let top_features = match top {
            0 => Vec::new(),
            k => explain::top_contributions(&self.model, &input, out.p_click, k),
        };
        Prediction {
            event_id: row.event_id.clone(),
            ts: row.ts,
            user_id: row.user_id.clone(),
            item_id: row.item_id.clone(),
            scenario: row.features.scenario.as_str(),
            p_click: out.p_click,
            p_cvr: out.p_cvr,
            p_ctcvr: out.p_ctcvr,
            expected_revenue: out.p_ctcvr * out.log_value.max(0.0).exp_m1(),
            model_version: self.version,
            watermark_ms,
            top_features,
        }
    }

    /// Trains on a closed window's examples in minibatches, in order, each example
    /// predicted just before the step that learns from it (test-then-train: the forward
    /// pass of its gradient); returns the metrics of those predictions and bumps the
    /// version when anything was trained.
    pub fn train_window(&mut self, examples: &[Example]) -> WindowMetrics {
        self.train_window_scored(examples).0
    }

    /// Like [`Trainer::train_window`], also returning the prequential predictions.
    pub fn train_window_scored(
        &mut self,
        examples: &[Example],
    ) -> (WindowMetrics, Vec<joint::Output>) {
        if examples.is_empty() {
            return (WindowMetrics::default(), Vec::new());
        }
        let data = self.model_data(examples);
        let mut outputs = Vec::with_capacity(data.len());
        let mut loss = 0.0;
        let mut batches = 0;
        for batch in data.chunks(self.batch_size) {
            loss += self.model.train_batch_scored(batch, &mut outputs);
            batches += 1;
        }
        let metrics = evaluate(examples, &data, &outputs);
        self.trained_examples += examples.len() as u64;
        self.version += 1;
        let metrics = WindowMetrics {
            train_loss: loss / f64::from(batches.max(1)),
            ..metrics
        };
        (metrics, outputs)
    }

    /// The model's inputs and targets of `examples`, in their order.
    fn model_data(&self, examples: &[Example]) -> Vec<(Input, Targets)> {
        let rows = self.model.embedding_rows();
        examples
            .iter()
            .map(|e| {
                (
                    input_of(&e.user_id, &e.item_id, &e.features, rows),
                    targets_of(e),
                )
            })
            .collect()
    }

    /// Scores a window's demand rows with the current head, then trains on them.
    pub fn train_demand(&mut self, rows: &[DemandRow]) -> Option<DemandMetrics> {
        if rows.is_empty() {
            return None;
        }
        let n_rows = self.model.embedding_rows();
        let data: Vec<(usize, [f64; DEMAND_DENSE], f64)> = rows
            .iter()
            .map(|r| {
                let (row, dense) = demand_input(&r.features, n_rows);
                (row, dense, r.units as f64)
            })
            .collect();
        let mut m = DemandMetrics {
            n: rows.len(),
            ..DemandMetrics::default()
        };
        for (row, dense, y) in &data {
            let mu = self.model.predict_demand(*row, dense).max(1e-12);
            m.units += y;
            m.forecast += mu;
            m.mae += (y - mu).abs();
            let term = if *y > 0.0 { y * (y / mu).ln() } else { 0.0 };
            m.poisson_deviance += 2.0 * (term - (y - mu));
        }
        m.mae /= m.n as f64;
        m.poisson_deviance /= m.n as f64;
        for batch in data.chunks(self.batch_size) {
            self.model.train_demand_batch(batch);
        }
        Some(m)
    }

    /// Forecasts for the next window from its items' demand features.
    pub fn forecast(&self, items: &[DemandFeatures]) -> Vec<DemandForecast> {
        let rows = self.model.embedding_rows();
        items
            .iter()
            .map(|f| {
                let (row, dense) = demand_input(f, rows);
                let units = self.model.predict_demand(row, &dense);
                DemandForecast {
                    item_id: Arc::clone(&f.item_id),
                    window_start: f.at,
                    units,
                    on_hand: f.on_hand,
                    stockout_risk: f.on_hand.is_some_and(|h| units > h as f64),
                    model_version: self.version,
                }
            })
            .collect()
    }

    /// The model's parameters and optimiser state as bytes.
    pub fn model_bytes(&self) -> Vec<u8> {
        self.model.to_bytes()
    }
}

fn evaluate(
    examples: &[Example],
    data: &[(Input, Targets)],
    out: &[joint::Output],
) -> WindowMetrics {
    let clicked: Vec<bool> = data.iter().map(|(_, y)| y.clicked).collect();
    let converted: Vec<bool> = data.iter().map(|(_, y)| y.converted).collect();
    let p_click: Vec<f64> = out.iter().map(|o| o.p_click).collect();
    let p_ctcvr: Vec<f64> = out.iter().map(|o| o.p_ctcvr).collect();
    let (cvr_p, cvr_y): (Vec<f64>, Vec<bool>) = out
        .iter()
        .zip(data)
        .filter(|(_, (_, y))| y.clicked)
        .map(|(o, (_, y))| (o.p_cvr, y.converted))
        .unzip();
    let squared: Vec<f64> = out
        .iter()
        .zip(data)
        .filter(|(_, (_, y))| y.converted)
        .map(|(o, (_, y))| (o.log_value - y.log_revenue).powi(2))
        .collect();
    let mut ctr_by_scenario = BTreeMap::new();
    for scenario in Scenario::ALL {
        let (p, y): (Vec<f64>, Vec<bool>) = examples
            .iter()
            .zip(out)
            .filter(|(e, _)| e.features.scenario == scenario)
            .map(|(e, o)| (o.p_click, e.labels.clicked))
            .unzip();
        if !p.is_empty() {
            ctr_by_scenario.insert(scenario.as_str().to_string(), BinaryMetrics::of(&p, &y));
        }
    }
    let ctr = BinaryMetrics::of(&p_click, &clicked);
    WindowMetrics {
        examples: examples.len(),
        positives: ctr.positives,
        log_loss: ctr.log_loss,
        mean_prediction: p_click.iter().sum::<f64>() / p_click.len().max(1) as f64,
        ctr,
        cvr: BinaryMetrics::of(&cvr_p, &cvr_y),
        ctcvr: BinaryMetrics::of(&p_ctcvr, &converted),
        value_rmse: (!squared.is_empty())
            .then(|| (squared.iter().sum::<f64>() / squared.len() as f64).sqrt()),
        ctr_by_scenario,
        train_loss: 0.0,
        demand: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shopstream_features::Labels;

    /// Counters of a user or item seen often enough for its own embedding row.
    fn seen() -> shopstream_features::rolling::Horizons {
        [shopstream_features::rolling::Totals {
            impressions: MIN_IMPRESSIONS_FOR_OWN_ROW,
            ..Default::default()
        }; 3]
    }

    fn example(user: &str, clicked: bool) -> Example {
        Example {
            event_id: format!("e-{user}").into(),
            ts: 1,
            user_id: user.into(),
            item_id: "sku".into(),
            features: Features {
                scenario: Scenario::HomeFeed,
                device: Some("ios".into()),
                position: Some(0),
                price: Some(10.0),
                hour_of_day: 10,
                day_of_week: 2,
                user: seen(),
                user_recency_secs: None,
                user_category_affinity: 0.0,
                user_category_exposure: 0.0,
                item: seen(),
                item_category: Some("c1".into()),
                item_price: Some(10.0),
                item_on_hand: Some(3),
            },
            labels: Labels {
                clicked,
                converted: clicked && user == "buyer",
                revenue: if user == "buyer" { 30.0 } else { 0.0 },
                ..Labels::default()
            },
        }
    }

    /// An impression of `user` on the `example` item, to predict.
    fn serving_row(user: &str) -> ServingRow {
        ServingRow {
            event_id: "x".into(),
            ts: 2,
            user_id: user.into(),
            item_id: "sku".into(),
            features: example(user, false).features,
        }
    }

    fn small() -> ModelConfig {
        ModelConfig {
            embedding_bits: 10,
            learning_rate: 0.01,
            batch_size: 16,
            ..ModelConfig::default()
        }
    }

    /// Guards the frequency filter: users and items seen fewer than
    /// MIN_IMPRESSIONS_FOR_OWN_ROW times share their field's row of new ids (the explain
    /// baseline), and from then on each has its own.
    #[test]
    fn new_users_and_items_share_a_row_until_seen_often_enough() {
        let rows = 1 << 10;
        let mut f = example("u1", false).features;
        let own = input_of("u1", "sku", &f, rows).ids;
        assert_ne!(input_of("u2", "sku", &f, rows).ids[0], own[0]);
        for seen in [0, MIN_IMPRESSIONS_FOR_OWN_ROW - 1] {
            f.user[2].impressions = seen;
            f.item[2].impressions = seen;
            let a = input_of("u1", "sku", &f, rows).ids;
            let b = input_of("u2", "other", &f, rows).ids;
            assert_eq!(
                (a[0], a[1]),
                (b[0], b[1]),
                "new ids share one row per field"
            );
            assert_eq!((a[0], a[1]), (absent_row(0, rows), absent_row(1, rows)));
            assert_ne!((a[0], a[1]), (own[0], own[1]));
            assert_eq!(a[2..], own[2..], "other fields are untouched");
        }
    }

    #[test]
    fn learns_users_tastes_and_is_deterministic() {
        let data: Vec<Example> = (0..300)
            .flat_map(|_| {
                [
                    example("clicker", true),
                    example("ignorer", false),
                    example("buyer", true),
                ]
            })
            .collect();
        let mut a = Trainer::new(&small());
        let mut b = Trainer::new(&small());
        for chunk in data.chunks(90) {
            a.train_window(chunk);
            b.train_window(chunk);
        }
        assert_eq!(a.model_bytes(), b.model_bytes());
        assert_eq!(a.version(), 10);
        let clicker = a.predict(&serving_row("clicker"), None);
        let ignorer = a.predict(&serving_row("ignorer"), None);
        let buyer = a.predict(&serving_row("buyer"), None);
        assert!(
            clicker.p_click > 0.8 && ignorer.p_click < 0.2,
            "{clicker:?} {ignorer:?}"
        );
        assert!(
            buyer.p_cvr > 0.8 && clicker.p_cvr < 0.2,
            "{buyer:?} {clicker:?}"
        );
        assert!((buyer.expected_revenue - 30.0).abs() < 10.0, "{buyer:?}");
    }

    #[test]
    fn a_serving_copy_predicts_exactly_like_its_trainer() {
        let mut trainer = Trainer::new(&small());
        let data: Vec<Example> = (0..100)
            .flat_map(|_| [example("clicker", true), example("buyer", true)])
            .collect();
        trainer.train_window(&data);
        let copy = trainer.serving_copy();
        for user in ["clicker", "buyer", "stranger"] {
            let row = serving_row(user);
            assert_eq!(copy.predict(&row, Some(7)), trainer.predict(&row, Some(7)));
        }
        assert_eq!(copy.version(), trainer.version());
    }

    /// Guards the prequential protocol: every example of a window is scored before the
    /// model learns from it, by the parameters of the step that does (test-then-train),
    /// and the window's metrics are those scores'.
    #[test]
    fn prequential_metrics_score_each_example_before_the_step_that_learns_from_it() {
        let config = small();
        let mut t = Trainer::new(&config);
        let window: Vec<Example> = (0..50)
            .flat_map(|_| [example("clicker", true), example("ignorer", false)])
            .collect();
        let mut model = t.model().clone();
        let data = t.model_data(&window);
        let mut p = Vec::new();
        for batch in data.chunks(config.batch_size) {
            let mut before = model.clone();
            before.observe_inputs(batch);
            p.extend(batch.iter().map(|(x, _)| before.predict(x).p_click));
            model.train_batch(batch);
        }
        let first = t.train_window(&window);
        let y: Vec<bool> = window.iter().map(|e| e.labels.clicked).collect();
        assert_eq!(first.ctr, BinaryMetrics::of(&p, &y));
        assert_eq!(t.model().to_bytes(), model.to_bytes());
        let second = t.train_window(&window);
        assert!(second.ctr.auc.expect("both classes") > 0.95);
        assert!(second.ctr.log_loss < first.ctr.log_loss);
    }
}
