//! What the pipeline tells the drift monitor about one closed window: feature values,
//! category counts, per-scenario outcomes with the predictions made for them, and the
//! per-example prequential losses of each task. Kept apart from the monitor so the
//! pipeline can build it however it likes; [`WindowObservation::from_examples`] and
//! [`WindowObservation::from_outputs`] build it from the trainer's own types.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use shopstream_features::{Example, Features};

use super::DriftError;
use shopstream_trainer::joint::{Output, Targets};
use shopstream_trainer::metrics::example_log_loss;
use shopstream_trainer::targets_of;

/// Continuous features [`WindowObservation::from_examples`] extracts: ones whose
/// distribution is stationary under stationary traffic from the first window on. The
/// rolling aggregates (user and item counts and rates over 1 h / 24 h / 7 d, recency,
/// stock on hand) are left out on purpose: they trend for as long as their horizons are
/// filling (up to 7 days of event time), so any reference would flag the warm-up itself.
/// Add them with [`WindowObservation::add_continuous`] on a job that has run its horizons.
pub const DEFAULT_CONTINUOUS_FEATURES: [&str; 3] = ["price", "item_price", "position"];

/// Categorical features [`WindowObservation::from_examples`] extracts (missing values
/// count as the category `unknown`).
pub const DEFAULT_CATEGORICAL_FEATURES: [&str; 3] = ["scenario", "device", "item_category"];

/// Which features of an example a window observation takes, by name.
#[derive(Debug, Clone, Copy)]
pub struct FeatureSelection<'a> {
    /// Continuous features: `price`, `item_price`, `position`.
    pub continuous: &'a [&'a str],
    /// Categorical features: `scenario`, `device`, `item_category`.
    pub categorical: &'a [&'a str],
}

impl FeatureSelection<'static> {
    /// [`DEFAULT_CONTINUOUS_FEATURES`] and [`DEFAULT_CATEGORICAL_FEATURES`].
    pub const DEFAULT: Self = Self {
        continuous: &DEFAULT_CONTINUOUS_FEATURES,
        categorical: &DEFAULT_CATEGORICAL_FEATURES,
    };
}

/// Outcome counts of one scenario in one window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ScenarioOutcomes {
    /// Impressions.
    pub impressions: u64,
    /// Clicked impressions.
    pub clicks: u64,
    /// Clicked impressions that converted (order attributed, not cancelled).
    pub conversions: u64,
    /// Impressions with a finite predicted click probability.
    pub scored: u64,
    /// Clicks among the scored impressions.
    pub scored_clicks: u64,
    /// Sum of the predicted click probabilities.
    pub sum_p_click: f64,
    /// Sum of their squares (for the variance `sum p (1 - p)`).
    pub sum_p_click_sq: f64,
}

impl ScenarioOutcomes {
    /// Counts one impression. `p_click` outside [0, 1] is clamped; NaN leaves it unscored.
    pub fn add(&mut self, clicked: bool, converted: bool, p_click: f64) {
        self.impressions = self.impressions.saturating_add(1);
        self.clicks = self.clicks.saturating_add(u64::from(clicked));
        self.conversions = self
            .conversions
            .saturating_add(u64::from(clicked && converted));
        if !p_click.is_nan() {
            let p = p_click.clamp(0.0, 1.0);
            self.scored = self.scored.saturating_add(1);
            self.scored_clicks = self.scored_clicks.saturating_add(u64::from(clicked));
            self.sum_p_click += p;
            self.sum_p_click_sq += p * p;
        }
    }

    /// Counts one impression as it arrives. Its click, if any, is counted by
    /// [`ScenarioOutcomes::add_click_on_arrival`] in the window the click arrives in.
    pub fn add_impression_on_arrival(&mut self) {
        self.impressions = self.impressions.saturating_add(1);
    }

    /// Counts one click event as it arrives (by the click's own event time). Clicks
    /// follow their impressions by seconds, so clicks per impression of a window is an
    /// early estimate of its click rate, known when the window closes.
    pub fn add_click_on_arrival(&mut self) {
        self.clicks = self.clicks.saturating_add(1);
    }

    pub(crate) fn merge(&mut self, o: &ScenarioOutcomes) {
        self.impressions = self.impressions.saturating_add(o.impressions);
        self.clicks = self.clicks.saturating_add(o.clicks);
        self.conversions = self.conversions.saturating_add(o.conversions);
        self.scored = self.scored.saturating_add(o.scored);
        self.scored_clicks = self.scored_clicks.saturating_add(o.scored_clicks);
        self.sum_p_click += o.sum_p_click;
        self.sum_p_click_sq += o.sum_p_click_sq;
    }

    /// Calibration z: `(clicks - sum p) / sqrt(sum p (1 - p))` over the scored impressions.
    pub(crate) fn gap_z(&self) -> Option<f64> {
        if self.scored == 0 {
            return None;
        }
        let variance = (self.sum_p_click - self.sum_p_click_sq).max(1e-9);
        Some((self.scored_clicks as f64 - self.sum_p_click) / variance.sqrt())
    }
}

/// What one closed window held, as the monitor needs it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WindowObservation {
    /// Window start, epoch milliseconds.
    pub window_start_ms: i64,
    /// Values of continuous features (non-finite values are ignored by the statistics).
    pub continuous: BTreeMap<String, Vec<f64>>,
    /// Category counts of categorical features.
    pub categorical: BTreeMap<String, BTreeMap<String, u64>>,
    /// Outcomes per scenario.
    pub scenarios: BTreeMap<String, ScenarioOutcomes>,
    /// Per-example prequential losses per task (`ctr`, `cvr`, `ctcvr`), in example order.
    pub losses: BTreeMap<String, Vec<f64>>,
    /// The scenarios' clicks are click events that arrived in the window, not labels of
    /// its impressions ([`ScenarioOutcomes::add_click_on_arrival`]): the monitor reports
    /// them as the early click rate (`early_ctr`) and leaves conversions and calibration
    /// out (not known yet).
    #[serde(default)]
    pub clicks_on_arrival: bool,
}

/// The subject of the click rate measured from impressions and click events as they
/// arrive, before labels mature (label drift `early_ctr`).
pub const EARLY_CTR: &str = "early_ctr";

/// Log loss of one prediction, as `metrics::log_loss` counts it; NaN counts as 0.5.
pub(crate) fn log_loss(p: f64, y: bool) -> f64 {
    example_log_loss(if p.is_nan() { 0.5 } else { p }, y)
}

/// The entry of `key`, inserted empty if missing. The key is copied only then: the
/// arrival monitor calls this for every impression, and after the window's first event
/// every key is there.
fn slot<'a, V: Default>(map: &'a mut BTreeMap<String, V>, key: &str) -> &'a mut V {
    if !map.contains_key(key) {
        map.insert(key.to_owned(), V::default());
    }
    map.get_mut(key).expect("inserted above")
}

/// A continuous feature of an example by name (`price`, `item_price`, `position`).
fn continuous_of(f: &Features, name: &str) -> Option<f64> {
    match name {
        "price" => f.price,
        "item_price" => f.item_price,
        "position" => f.position.map(f64::from),
        _ => None,
    }
}

/// A categorical feature of an example by name (`scenario`, `device`, `item_category`);
/// a missing value is the category `unknown`.
fn category_of<'a>(f: &'a Features, name: &str) -> Option<&'a str> {
    match name {
        "scenario" => Some(f.scenario.as_str()),
        "device" => Some(f.device.as_deref().unwrap_or("unknown")),
        "item_category" => Some(f.item_category.as_deref().unwrap_or("unknown")),
        _ => None,
    }
}

impl WindowObservation {
    /// An empty window.
    pub fn new(window_start_ms: i64) -> Self {
        Self {
            window_start_ms,
            ..Self::default()
        }
    }

    /// Adds one value of a continuous feature.
    pub fn add_continuous(&mut self, feature: &str, value: f64) {
        slot(&mut self.continuous, feature).push(value);
    }

    /// Adds one value of a categorical feature.
    pub fn add_category(&mut self, feature: &str, value: &str) {
        let count = slot(slot(&mut self.categorical, feature), value);
        *count = count.saturating_add(1);
    }

    /// Counts one impression of `scenario` (see [`ScenarioOutcomes::add`]).
    pub fn add_outcome(&mut self, scenario: &str, clicked: bool, converted: bool, p_click: f64) {
        slot(&mut self.scenarios, scenario).add(clicked, converted, p_click);
    }

    /// The outcomes of `scenario` counted on arrival; marks the window as
    /// [`WindowObservation::clicks_on_arrival`].
    fn on_arrival(&mut self, scenario: &str) -> &mut ScenarioOutcomes {
        self.clicks_on_arrival = true;
        slot(&mut self.scenarios, scenario)
    }

    /// Counts one arriving impression of `scenario` (see
    /// [`ScenarioOutcomes::add_impression_on_arrival`]).
    pub fn add_impression_on_arrival(&mut self, scenario: &str) {
        self.on_arrival(scenario).add_impression_on_arrival();
    }

    /// Counts one arriving click event of `scenario` (see
    /// [`ScenarioOutcomes::add_click_on_arrival`]).
    pub fn add_click_on_arrival(&mut self, scenario: &str) {
        self.on_arrival(scenario).add_click_on_arrival();
    }

    /// Adds one per-example loss of `task`.
    pub fn add_loss(&mut self, task: &str, loss: f64) {
        slot(&mut self.losses, task).push(loss);
    }

    /// Adds the named features of one example (see [`continuous_of`], [`category_of`]).
    fn add_example_features(&mut self, e: &Example, features: &FeatureSelection<'_>) {
        let f = &e.features;
        for name in features.continuous {
            if let Some(v) = continuous_of(f, name) {
                self.add_continuous(name, v);
            }
        }
        for name in features.categorical {
            if let Some(v) = category_of(f, name) {
                self.add_category(name, v);
            }
        }
    }

    /// Adds one example with its click probability and the `ctr` loss.
    fn add_example(
        &mut self,
        e: &Example,
        t: &Targets,
        p_click: f64,
        features: &FeatureSelection<'_>,
    ) {
        self.add_example_features(e, features);
        self.add_outcome(
            e.features.scenario.as_str(),
            t.clicked,
            t.converted,
            p_click,
        );
        self.add_loss("ctr", log_loss(p_click, t.clicked));
    }

    /// A window from its examples and the click probabilities predicted for them before
    /// training (same order): the default features, per-scenario outcomes and the `ctr`
    /// task's losses. Errors if the lengths differ.
    pub fn from_examples(
        window_start_ms: i64,
        examples: &[Example],
        p_click: &[f64],
    ) -> Result<Self, DriftError> {
        if examples.len() != p_click.len() {
            return Err(DriftError::LengthMismatch(examples.len(), p_click.len()));
        }
        let mut w = Self::new(window_start_ms);
        for (e, p) in examples.iter().zip(p_click) {
            w.add_example(e, &targets_of(e), *p, &FeatureSelection::DEFAULT);
        }
        Ok(w)
    }

    /// Like [`WindowObservation::from_examples`] from the joint model's prequential
    /// outputs, with the losses of all three tasks: `ctr` (every impression), `cvr`
    /// (clicked impressions) and `ctcvr` (every impression).
    pub fn from_outputs(
        window_start_ms: i64,
        examples: &[Example],
        outputs: &[Output],
    ) -> Result<Self, DriftError> {
        Self::from_outputs_with(
            window_start_ms,
            examples,
            outputs,
            &FeatureSelection::DEFAULT,
        )
    }

    /// Like [`WindowObservation::from_outputs`] with only the `features` named.
    pub fn from_outputs_with(
        window_start_ms: i64,
        examples: &[Example],
        outputs: &[Output],
        features: &FeatureSelection<'_>,
    ) -> Result<Self, DriftError> {
        if examples.len() != outputs.len() {
            return Err(DriftError::LengthMismatch(examples.len(), outputs.len()));
        }
        let mut w = Self::new(window_start_ms);
        for (e, o) in examples.iter().zip(outputs) {
            let t = targets_of(e);
            w.add_example(e, &t, o.p_click, features);
            if t.clicked {
                w.add_loss("cvr", log_loss(o.p_cvr, t.converted));
            }
            w.add_loss("ctcvr", log_loss(o.p_ctcvr, t.converted));
        }
        Ok(w)
    }
}
