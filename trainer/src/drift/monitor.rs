//! The drift monitor: called once per closed window with what the window held, it
//! compares the window with the reference, feeds the model-quality detectors, runs the
//! alert lifecycle and returns every value (for gauges and reports) plus the alert events
//! (for `shop.alerts`).
//!
//! Per window it measures:
//!
//! - **Data drift** per feature against the reference (see [`super::reference`]):
//!   continuous features by KS on small windows (p-value, fewer than `small_sample`
//!   values) and PSI on large ones, categorical features by chi-squared on small windows
//!   and Jensen-Shannon distance on large ones (Evidently's split). PSI, KS, normalised
//!   Wasserstein and JS are all reported whatever the size.
//! - **Label drift** per scenario: click rate (clicks / impressions) and conversion rate
//!   (conversions / clicks) against the reference's pooled rates, as a two-proportion z
//!   score. A z score, rather than a rate difference or a PSI of two-bin histograms, because
//!   it scales with the evidence: a 2-point move is noise on 50 impressions and a real
//!   shift on 5000.
//! - **Prediction drift** per scenario: the calibration gap between the mean predicted
//!   click probability and the observed click rate, as the z score
//!   `(clicks - sum p) / sqrt(sum p (1 - p))` (the clicks' mean and variance if the model is
//!   calibrated).
//! - **Model quality** per task: the per-example prequential losses go through ADWIN and
//!   Page-Hinkley (mode up). ADWIN's value is the relative increase of its current mean
//!   loss over the level before its last upward change (0 when none is pending);
//!   Page-Hinkley's value is its number of detections in the window. One alert per task
//!   takes whichever is more alarmed; it fires after one window (the detectors have their
//!   own false-alarm control) and resolves after K.
//!
//! **Significance tests are corrected for the design effect.** Clickstream windows are
//! clustered: the impressions of one session share its scenario, device, often its
//! category and price range, so a window of 450 impressions carries the evidence of
//! perhaps 90 independent draws, and tests that assume independent samples (KS,
//! chi-squared, z) page on noise. Each such statistic is therefore also computed for every
//! reference window against the other reference windows, and the median of those values
//! over what independent samples would give is the design effect `deff` (at least 1,
//! estimated only from `2K - 1` windows or more, so the K drifted windows that can enter a
//! trailing reference before an alert fires cannot be a majority). The current window's
//! statistic is then rescaled, as in the Rao-Scott correction: chi-squared divided by
//! `deff`, the KS effective size divided by `deff`, z divided by `sqrt(deff)`, and the
//! thresholds stay the textbook ones. PSI and JS are effect sizes, compared as they are.
//! The calibration gap takes its design effect from the last `reference` windows' gaps
//! after warm-up. Measured on simulated windows of 90 sessions x 5 impressions sharing a
//! device and a price level (5 seeds x 200 windows, KS on price, chi-squared on device):
//! uncorrected, 42 % of the window tests breach and 77 alerts fire; corrected, 3 % breach
//! and none fires (the unit test `clustered_sessions_page_only_without_...` keeps this).
//!
//! Nothing is compared before the reference holds `min_reference_windows` windows, and
//! prediction drift and model quality raise no alert during the first
//! `model_warmup_windows` windows (a model fresh from initialisation is neither calibrated
//! nor stable); the detectors are fed from the start.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::adwin::{Adwin, AdwinConfig};
use super::alerts::{AlertEvent, AlertKey, AlertPolicy, AlertTracker, DriftKind, Observation};
use super::kolmogorov::kolmogorov_sf;
use super::observation::{ScenarioOutcomes, WindowObservation};
use super::page_hinkley::{PageHinkley, PageHinkleyConfig, PageHinkleyMode};
use super::reference::{ReferenceMode, ReferenceWindows, thin_sorted};
use super::special::chi2_sf;
use super::stats::{
    ChiSquareResult, KsResult, aligned_counts, chi2_homogeneity, finite_sorted, jensen_shannon,
    ks_sorted, psi_sorted, wasserstein_sorted,
};

/// Median of the Kolmogorov distribution (`sqrt(n) D` of independent samples).
const KOLMOGOROV_MEDIAN: f64 = 0.827_573_555_189_907_7;

/// Median of `|N(0, 1)|`.
const HALF_NORMAL_MEDIAN: f64 = 0.674_489_750_196_081_7;

/// Everything the monitor needs to be told; `Default` gives the documented defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DriftConfig {
    /// The reference: trailing 12 windows (default) or the first N pinned.
    pub reference: ReferenceMode,
    /// Windows the reference must hold before anything is compared. 3.
    pub min_reference_windows: usize,
    /// PSI bins. 10.
    pub bins: usize,
    /// PSI warning / critical thresholds (the usual bands). 0.1 / 0.2.
    pub psi_warning: f64,
    /// See `psi_warning`.
    pub psi_critical: f64,
    /// Jensen-Shannon distance warning / critical thresholds. 0.1 / 0.2.
    pub js_warning: f64,
    /// See `js_warning`.
    pub js_critical: f64,
    /// p-value thresholds of the small-sample tests (KS, chi-squared). 0.01 / 0.001.
    pub p_value_warning: f64,
    /// See `p_value_warning`.
    pub p_value_critical: f64,
    /// Windows with fewer values than this use the p-value tests, larger ones PSI / JS.
    /// 1000.
    pub small_sample: usize,
    /// Fewer values than this in the window (or the reference) and a feature is not
    /// compared. 30.
    pub min_samples: usize,
    /// Cap on the reference sample of one continuous feature, over all its windows.
    /// 20 000.
    pub max_reference_sample: usize,
    /// |z| thresholds of label drift (click and conversion rates). 3 / 5.
    pub rate_z_warning: f64,
    /// See `rate_z_warning`.
    pub rate_z_critical: f64,
    /// |z| thresholds of the calibration gap (prediction drift). 3 / 5.
    pub gap_z_warning: f64,
    /// See `gap_z_warning`.
    pub gap_z_critical: f64,
    /// Denominators (impressions, clicks) smaller than this are not compared. 30.
    pub min_trials: u64,
    /// Windows before prediction drift and model quality may raise alerts. 12.
    pub model_warmup_windows: u64,
    /// ADWIN on each task's losses (River's defaults).
    pub adwin: AdwinConfig,
    /// Relative loss increase (ADWIN) that warns / is critical. 0.1 / 0.5.
    pub loss_increase_warning: f64,
    /// See `loss_increase_warning`.
    pub loss_increase_critical: f64,
    /// Page-Hinkley on each task's losses. Not River's defaults: per-example log losses
    /// have a standard deviation near 0.6 with jumps of 5 and more, on which River's
    /// `delta = 0.005` with forgetting `alpha = 0.9999` flags about one false change per
    /// 10 000 examples (simulated CTR losses, mean 0.22). With `delta = 0.05`, no
    /// forgetting, `threshold = 50`: no false change in 400 000 such examples, and a +1
    /// logit CTR shift is flagged within about 450 examples.
    pub page_hinkley: PageHinkleyConfig,
    /// Lifecycle of window statistics (K = 3 to fire, 3 to resolve).
    pub alerts: AlertPolicy,
    /// Lifecycle of the model-quality detectors (fire after 1, resolve after 3).
    pub detector_alerts: AlertPolicy,
    /// Correct the significance tests for the design effect measured on the reference
    /// (see the module docs). True.
    pub design_effect_correction: bool,
}

impl Default for DriftConfig {
    fn default() -> Self {
        Self {
            reference: ReferenceMode::default(),
            min_reference_windows: 3,
            bins: 10,
            psi_warning: 0.1,
            psi_critical: 0.2,
            js_warning: 0.1,
            js_critical: 0.2,
            p_value_warning: 0.01,
            p_value_critical: 0.001,
            small_sample: 1000,
            min_samples: 30,
            max_reference_sample: 20_000,
            rate_z_warning: 3.0,
            rate_z_critical: 5.0,
            gap_z_warning: 3.0,
            gap_z_critical: 5.0,
            min_trials: 30,
            model_warmup_windows: 12,
            adwin: AdwinConfig::default(),
            loss_increase_warning: 0.1,
            loss_increase_critical: 0.5,
            page_hinkley: PageHinkleyConfig {
                min_instances: 30,
                delta: 0.05,
                threshold: 50.0,
                alpha: 1.0,
                mode: PageHinkleyMode::Up,
            },
            alerts: AlertPolicy::default(),
            detector_alerts: AlertPolicy {
                fire_after_windows: 1,
                resolve_after_windows: 3,
            },
            design_effect_correction: true,
        }
    }
}

/// Drift of one feature in one window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeatureDrift {
    /// Feature name.
    pub feature: String,
    /// Categorical (JS / chi-squared) or continuous (PSI / KS / Wasserstein).
    pub categorical: bool,
    /// Values in the window.
    pub n_current: usize,
    /// Values in the reference.
    pub n_reference: usize,
    /// PSI (continuous).
    pub psi: Option<f64>,
    /// KS statistic D (continuous).
    pub ks_statistic: Option<f64>,
    /// KS p-value, as for independent samples (continuous).
    pub ks_p_value: Option<f64>,
    /// Wasserstein distance over the reference's standard deviation (continuous).
    pub wasserstein_norm: Option<f64>,
    /// Jensen-Shannon distance (categorical).
    pub js: Option<f64>,
    /// Chi-squared p-value, as for independent samples (categorical).
    pub chi2_p_value: Option<f64>,
    /// Design effect applied to the significance test (1 = none).
    pub design_effect: f64,
    /// The statistic the alert decision used: `ks`, `psi`, `chi2` or `js`.
    pub statistic: &'static str,
    /// Its value (for `ks` and `chi2`, the p-value after the design-effect correction).
    pub value: f64,
    /// Whether the value breaches the warning threshold.
    pub breach: bool,
}

/// Label and prediction drift of one scenario in one window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScenarioDrift {
    /// Scenario.
    pub scenario: String,
    /// The window's counts.
    pub outcomes: ScenarioOutcomes,
    /// Click rate in the window.
    pub ctr: Option<f64>,
    /// Pooled click rate of the reference.
    pub reference_ctr: Option<f64>,
    /// Two-proportion z of the click rate (window vs reference), after the design effect.
    pub ctr_z: Option<f64>,
    /// Conversion rate (per click) in the window.
    pub cvr: Option<f64>,
    /// Pooled conversion rate of the reference.
    pub reference_cvr: Option<f64>,
    /// Two-proportion z of the conversion rate, after the design effect.
    pub cvr_z: Option<f64>,
    /// Mean predicted click probability.
    pub mean_p_click: Option<f64>,
    /// Mean predicted click probability minus the observed click rate (scored impressions).
    pub ctr_gap: Option<f64>,
    /// Calibration z `(clicks - sum p) / sqrt(sum p (1 - p))`, after the design effect of
    /// the recent windows.
    pub ctr_gap_z: Option<f64>,
}

/// Model-quality detectors of one task after one window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskQuality {
    /// Task.
    pub task: String,
    /// Losses fed in this window.
    pub examples: usize,
    /// Their mean.
    pub mean_loss: Option<f64>,
    /// ADWIN's window length.
    pub adwin_width: u64,
    /// ADWIN's mean loss.
    pub adwin_estimation: f64,
    /// ADWIN detections in this window (either direction).
    pub adwin_detections: u64,
    /// Loss level before the pending upward change, if any.
    pub adwin_baseline: Option<f64>,
    /// Relative increase of ADWIN's mean over that level (0 if none pending).
    pub adwin_increase: f64,
    /// Page-Hinkley (mode up) detections in this window.
    pub page_hinkley_detections: u64,
    /// Page-Hinkley's statistic at the end of the window (compare with its threshold).
    pub page_hinkley_statistic: f64,
}

/// Everything measured in one window.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct WindowDrift {
    /// Window start, epoch milliseconds.
    pub window_start_ms: i64,
    /// The window started at or before one already observed and was ignored.
    pub replayed: bool,
    /// Windows in the reference it was compared with.
    pub reference_windows: usize,
    /// Per feature (only those with enough data).
    pub features: Vec<FeatureDrift>,
    /// Per scenario.
    pub scenarios: Vec<ScenarioDrift>,
    /// Per task.
    pub tasks: Vec<TaskQuality>,
    /// Alert events caused by this window.
    pub alerts: Vec<AlertEvent>,
    /// Open alerts after this window.
    pub firing: usize,
}

/// What the reference keeps of a window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct WindowSummary {
    continuous: BTreeMap<String, Vec<f64>>,
    categorical: BTreeMap<String, BTreeMap<String, u64>>,
    scenarios: BTreeMap<String, ScenarioOutcomes>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct TaskDetectors {
    adwin: Adwin,
    page_hinkley: PageHinkley,
    baseline: Option<f64>,
}

/// The drift monitor. Serialisable, so it can be checkpointed with the rest of the state
/// (through serde_json without its `float_roundtrip` feature, floats may move by an ulp).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftMonitor {
    config: DriftConfig,
    reference: ReferenceWindows<WindowSummary>,
    tasks: BTreeMap<String, TaskDetectors>,
    alerts: AlertTracker,
    detector_alerts: AlertTracker,
    // Calibration z of recent post-warm-up windows per scenario: the design effect of the
    // gap comes from the model's recent behaviour, not from the (possibly pinned, possibly
    // warm-up) data reference.
    gap_history: BTreeMap<String, VecDeque<f64>>,
    windows_seen: u64,
    last_window_ms: Option<i64>,
}

fn median(values: &mut [f64]) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

/// Picks (successes, trials) of one rate out of a scenario's counts.
type RateOf = fn(&ScenarioOutcomes) -> (u64, u64);

/// Median of chi2(dof) by Wilson-Hilferty (within 0.3 % for dof >= 1).
fn chi2_median(dof: u64) -> f64 {
    let k = dof as f64;
    k * (1.0 - 2.0 / (9.0 * k)).powi(3)
}

fn two_proportion_z(x1: u64, n1: u64, x2: u64, n2: u64) -> Option<f64> {
    if n1 == 0 || n2 == 0 {
        return None;
    }
    let (n1f, n2f) = (n1 as f64, n2 as f64);
    let pooled = (x1 as f64 + x2 as f64) / (n1f + n2f);
    let se = (pooled * (1.0 - pooled) * (1.0 / n1f + 1.0 / n2f)).sqrt();
    if se.is_nan() || se <= 0.0 {
        return Some(0.0);
    }
    Some((x1 as f64 / n1f - x2 as f64 / n2f) / se)
}

/// KS p-value with the effective size divided by `deff`.
fn ks_p_corrected(ks: KsResult, n: usize, m: usize, deff: f64) -> f64 {
    let (n, m) = (n as f64, m as f64);
    let en = (n * m / (n + m) / deff).round_ties_even();
    if en < 1.0 {
        1.0
    } else {
        kolmogorov_sf(en as u64, ks.statistic)
    }
}

/// `n m / (n + m) D^2` over its median for independent samples: 1 on average without
/// clustering, `deff` with it.
fn ks_ratio(ks: KsResult, n: usize, m: usize) -> f64 {
    let (n, m) = (n as f64, m as f64);
    n * m / (n + m) * ks.statistic * ks.statistic / (KOLMOGOROV_MEDIAN * KOLMOGOROV_MEDIAN)
}

fn chi2_ratio(c: ChiSquareResult) -> Option<f64> {
    (c.dof > 0).then(|| c.statistic / chi2_median(c.dof))
}

fn z_ratio(z: f64) -> f64 {
    (z / HALF_NORMAL_MEDIAN).powi(2)
}

fn merged_sorted<'a>(parts: impl Iterator<Item = &'a Vec<f64>>) -> Vec<f64> {
    let mut all: Vec<f64> = parts.flatten().copied().collect();
    all.sort_by(f64::total_cmp);
    all
}

fn summed_counts<'a>(
    parts: impl Iterator<Item = &'a BTreeMap<String, u64>>,
) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for part in parts {
        for (k, v) in part {
            let e: &mut u64 = out.entry(k.clone()).or_insert(0);
            *e = e.saturating_add(*v);
        }
    }
    out
}

/// Sum of counts (saturating: counts come from callers).
fn total(counts: &BTreeMap<String, u64>) -> u64 {
    counts.values().fold(0u64, |a, b| a.saturating_add(*b))
}

fn std_dev(values: &[f64]) -> f64 {
    let n = values.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let mean = values.iter().sum::<f64>() / n;
    (values.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt()
}

/// Everything but the `i`-th element.
fn others<T: Copy>(items: &[T], i: usize) -> impl Iterator<Item = T> + '_ {
    items
        .iter()
        .enumerate()
        .filter(move |(j, _)| *j != i)
        .map(|(_, x)| *x)
}

impl DriftMonitor {
    /// A monitor with an empty reference.
    pub fn new(config: DriftConfig) -> Self {
        Self {
            reference: ReferenceWindows::new(config.reference),
            tasks: BTreeMap::new(),
            alerts: AlertTracker::new(config.alerts),
            detector_alerts: AlertTracker::new(config.detector_alerts),
            gap_history: BTreeMap::new(),
            windows_seen: 0,
            last_window_ms: None,
            config,
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &DriftConfig {
        &self.config
    }

    /// Windows observed so far (replays excluded).
    pub fn windows_seen(&self) -> u64 {
        self.windows_seen
    }

    /// The open alerts (for the `shopstream_alerts_firing` gauge).
    pub fn firing(&self) -> Vec<AlertEvent> {
        let mut all = self.alerts.firing();
        all.extend(self.detector_alerts.firing());
        all
    }

    /// The design effect from per-reference-window ratios (each 1 on average for
    /// independent samples): their median, at least 1, or 1 when there are fewer than
    /// `2K - 1` of them or the correction is off.
    fn design_effect(&self, ratios: &[f64]) -> f64 {
        let k = self.config.alerts.fire_after_windows.max(1) as usize;
        let needed = k.saturating_mul(2) - 1;
        let mut finite: Vec<f64> = ratios.iter().copied().filter(|r| r.is_finite()).collect();
        if !self.config.design_effect_correction || finite.len() < needed.max(2) {
            return 1.0;
        }
        median(&mut finite).map_or(1.0, |m| m.max(1.0))
    }

    /// Observes one closed window: compares it, updates the detectors and alerts, then
    /// adds it to the reference. Windows must come in order of start time; a window
    /// starting at or before the last one observed is a replay and is ignored.
    pub fn observe_window(&mut self, window: &WindowObservation) -> WindowDrift {
        let start = window.window_start_ms;
        if self.last_window_ms.is_some_and(|last| start <= last) {
            return WindowDrift {
                window_start_ms: start,
                replayed: true,
                firing: self.firing().len(),
                ..WindowDrift::default()
            };
        }
        self.last_window_ms = Some(start);
        self.windows_seen += 1;
        let compare = self.reference.len() >= self.config.min_reference_windows.max(1);
        let warm = self.windows_seen > self.config.model_warmup_windows;

        let mut out = WindowDrift {
            window_start_ms: start,
            reference_windows: self.reference.len(),
            ..WindowDrift::default()
        };
        let mut observations: Vec<(AlertKey, Observation)> = Vec::new();
        if compare {
            for (feature, values) in &window.continuous {
                if let Some((drift, obs)) = self.continuous_drift(feature, values) {
                    observations.push((AlertKey::new(DriftKind::DataDrift, feature, None), obs));
                    out.features.push(drift);
                }
            }
            for (feature, counts) in &window.categorical {
                if let Some((drift, obs)) = self.categorical_drift(feature, counts) {
                    observations.push((AlertKey::new(DriftKind::DataDrift, feature, None), obs));
                    out.features.push(drift);
                }
            }
        }
        for (scenario, outcomes) in &window.scenarios {
            let (drift, obs) = self.scenario_drift(scenario, outcomes, compare, warm);
            observations.extend(obs);
            out.scenarios.push(drift);
        }
        for (key, obs) in observations {
            out.alerts.extend(self.alerts.observe(start, &key, obs));
        }
        for (task, losses) in &window.losses {
            let (quality, obs) = self.task_quality(task, losses, warm);
            if let Some((key, obs)) = obs {
                out.alerts
                    .extend(self.detector_alerts.observe(start, &key, obs));
            }
            out.tasks.push(quality);
        }
        if warm {
            self.record_gaps(window);
        }
        self.reference.push(self.summarise(window));
        out.firing = self.firing().len();
        out
    }

    fn record_gaps(&mut self, window: &WindowObservation) {
        let keep = self.config.reference.windows().max(1);
        for (scenario, o) in &window.scenarios {
            if o.scored < self.config.min_trials {
                continue;
            }
            if let Some(z) = o.gap_z() {
                let h = self.gap_history.entry(scenario.clone()).or_default();
                h.push_back(z);
                while h.len() > keep {
                    h.pop_front();
                }
            }
        }
    }

    fn summarise(&self, window: &WindowObservation) -> WindowSummary {
        let per_window = self.config.reference.windows().max(1);
        let cap = (self.config.max_reference_sample / per_window).max(1);
        WindowSummary {
            continuous: window
                .continuous
                .iter()
                .map(|(k, v)| (k.clone(), thin_sorted(finite_sorted(v), cap)))
                .collect(),
            categorical: window.categorical.clone(),
            scenarios: window.scenarios.clone(),
        }
    }

    fn continuous_drift(
        &self,
        feature: &str,
        values: &[f64],
    ) -> Option<(FeatureDrift, Observation)> {
        let c = &self.config;
        let current = finite_sorted(values);
        let windows: Vec<&Vec<f64>> = self
            .reference
            .iter()
            .filter_map(|w| w.continuous.get(feature))
            .filter(|v| !v.is_empty())
            .collect();
        if current.len() < c.min_samples || windows.len() < c.min_reference_windows.max(1) {
            return None;
        }
        let reference = merged_sorted(windows.iter().copied());
        if reference.len() < c.min_samples {
            return None;
        }
        let psi = psi_sorted(&reference, &current, c.bins).ok();
        let ks = ks_sorted(&reference, &current).ok();
        let scale = std_dev(&reference);
        let wasserstein_norm = wasserstein_sorted(&reference, &current)
            .ok()
            .map(|w| if scale > 0.0 { w / scale } else { w });
        let small = current.len() < c.small_sample;
        let (statistic, value, deff, obs) = if small {
            let ks = ks?;
            // KS of each reference window against the others, over its iid median.
            let ratios: Vec<f64> = (0..windows.len())
                .filter_map(|i| {
                    let rest = merged_sorted(others(&windows, i));
                    let w = windows[i];
                    ks_sorted(&rest, w)
                        .ok()
                        .map(|k| ks_ratio(k, rest.len(), w.len()))
                })
                .collect();
            let deff = self.design_effect(&ratios);
            let p = ks_p_corrected(ks, reference.len(), current.len(), deff);
            let obs = Observation::below("ks", p, c.p_value_warning, c.p_value_critical);
            ("ks", p, deff, obs)
        } else {
            let psi = psi?;
            let obs = Observation::above("psi", psi, c.psi_warning, c.psi_critical);
            ("psi", psi, 1.0, obs)
        };
        let drift = FeatureDrift {
            feature: feature.to_string(),
            categorical: false,
            n_current: current.len(),
            n_reference: reference.len(),
            psi,
            ks_statistic: ks.map(|k| k.statistic),
            ks_p_value: ks.map(|k| k.p_value),
            wasserstein_norm,
            js: None,
            chi2_p_value: None,
            design_effect: deff,
            statistic,
            value,
            breach: obs.is_warning() || obs.is_critical(),
        };
        Some((drift, obs))
    }

    fn categorical_drift(
        &self,
        feature: &str,
        counts: &BTreeMap<String, u64>,
    ) -> Option<(FeatureDrift, Observation)> {
        let c = &self.config;
        let n_current = total(counts);
        let windows: Vec<&BTreeMap<String, u64>> = self
            .reference
            .iter()
            .filter_map(|w| w.categorical.get(feature))
            .filter(|m| total(m) > 0)
            .collect();
        if n_current < c.min_samples as u64 || windows.len() < c.min_reference_windows.max(1) {
            return None;
        }
        let reference = summed_counts(windows.iter().copied());
        let n_reference = total(&reference);
        if n_reference < c.min_samples as u64 {
            return None;
        }
        let chi2_of = |r: &BTreeMap<String, u64>, q: &BTreeMap<String, u64>| {
            let (_, rv, qv) = aligned_counts(r, q);
            chi2_homogeneity(&rv, &qv).ok()
        };
        let (_, rv, qv) = aligned_counts(&reference, counts);
        let js = jensen_shannon(&rv, &qv).ok();
        let chi2 = chi2_homogeneity(&rv, &qv).ok();
        let small = n_current < c.small_sample as u64;
        let (statistic, value, deff, obs) = if small {
            let chi2 = chi2?;
            let ratios: Vec<f64> = (0..windows.len())
                .filter_map(|i| {
                    let rest = summed_counts(others(&windows, i));
                    chi2_of(&rest, windows[i]).and_then(chi2_ratio)
                })
                .collect();
            let deff = self.design_effect(&ratios);
            let p = chi2_sf(chi2.statistic / deff, chi2.dof);
            let obs = Observation::below("chi2", p, c.p_value_warning, c.p_value_critical);
            ("chi2", p, deff, obs)
        } else {
            let js = js?;
            let obs = Observation::above("js", js, c.js_warning, c.js_critical);
            ("js", js, 1.0, obs)
        };
        let drift = FeatureDrift {
            feature: feature.to_string(),
            categorical: true,
            n_current: n_current as usize,
            n_reference: n_reference as usize,
            psi: None,
            ks_statistic: None,
            ks_p_value: None,
            wasserstein_norm: None,
            js,
            chi2_p_value: chi2.map(|x| x.p_value),
            design_effect: deff,
            statistic,
            value,
            breach: obs.is_warning() || obs.is_critical(),
        };
        Some((drift, obs))
    }

    fn scenario_drift(
        &self,
        scenario: &str,
        o: &ScenarioOutcomes,
        compare: bool,
        warm: bool,
    ) -> (ScenarioDrift, Vec<(AlertKey, Observation)>) {
        let c = &self.config;
        let windows: Vec<&ScenarioOutcomes> = self
            .reference
            .iter()
            .filter_map(|w| w.scenarios.get(scenario))
            .collect();
        let mut reference = ScenarioOutcomes::default();
        for w in &windows {
            reference.merge(w);
        }
        let rate = |x: u64, n: u64| (n > 0).then(|| x as f64 / n as f64);
        let mut drift = ScenarioDrift {
            scenario: scenario.to_string(),
            outcomes: *o,
            ctr: rate(o.clicks, o.impressions),
            reference_ctr: None,
            ctr_z: None,
            cvr: rate(o.conversions, o.clicks),
            reference_cvr: None,
            cvr_z: None,
            mean_p_click: (o.scored > 0).then(|| o.sum_p_click / o.scored as f64),
            ctr_gap: None,
            ctr_gap_z: None,
        };
        drift.ctr_gap = drift
            .mean_p_click
            .map(|p| p - o.scored_clicks as f64 / o.scored as f64);
        let mut obs = Vec::new();
        let key = |subject: &str, kind| AlertKey::new(kind, subject, Some(scenario.to_string()));
        if compare && windows.len() >= c.min_reference_windows.max(1) {
            drift.reference_ctr = rate(reference.clicks, reference.impressions);
            drift.reference_cvr = rate(reference.conversions, reference.clicks);
            // (successes, trials) of the click rate and of the conversion rate.
            let parts: [(&str, RateOf); 2] = [
                ("ctr", |s| (s.clicks, s.impressions)),
                ("cvr", |s| (s.conversions, s.clicks)),
            ];
            for (subject, get) in parts {
                let (x, n) = get(o);
                let (rx, rn) = get(&reference);
                if n < c.min_trials || rn < c.min_trials {
                    continue;
                }
                let Some(z) = two_proportion_z(x, n, rx, rn) else {
                    continue;
                };
                // Each reference window against the rest of the reference.
                let ratios: Vec<f64> = windows
                    .iter()
                    .filter_map(|w| {
                        let (wx, wn) = get(w);
                        let (ox, on) = (rx.saturating_sub(wx), rn.saturating_sub(wn));
                        if wn < c.min_trials || on < c.min_trials {
                            return None;
                        }
                        two_proportion_z(wx, wn, ox, on).map(z_ratio)
                    })
                    .collect();
                let z = z / self.design_effect(&ratios).sqrt();
                if subject == "ctr" {
                    drift.ctr_z = Some(z);
                } else {
                    drift.cvr_z = Some(z);
                }
                obs.push((
                    key(subject, DriftKind::LabelDrift),
                    Observation::above("rate_z", z.abs(), c.rate_z_warning, c.rate_z_critical),
                ));
            }
        }
        if let Some(z) = o.gap_z() {
            let ratios: Vec<f64> = self
                .gap_history
                .get(scenario)
                .map(|h| h.iter().map(|z| z_ratio(*z)).collect())
                .unwrap_or_default();
            let z = z / self.design_effect(&ratios).sqrt();
            drift.ctr_gap_z = Some(z);
            if warm && o.scored >= c.min_trials {
                obs.push((
                    key("ctr", DriftKind::PredictionDrift),
                    Observation::above("ctr_gap_z", z.abs(), c.gap_z_warning, c.gap_z_critical),
                ));
            }
        }
        (drift, obs)
    }

    fn task_quality(
        &mut self,
        task: &str,
        losses: &[f64],
        warm: bool,
    ) -> (TaskQuality, Option<(AlertKey, Observation)>) {
        let c = self.config.clone();
        let d = self
            .tasks
            .entry(task.to_string())
            .or_insert_with(|| TaskDetectors {
                adwin: Adwin::new(c.adwin),
                page_hinkley: PageHinkley::new(c.page_hinkley),
                baseline: None,
            });
        let (mut adwin_hits, mut ph_hits) = (0, 0);
        let (mut sum, mut n) = (0.0, 0usize);
        for x in losses.iter().copied().filter(|x| x.is_finite()) {
            sum += x;
            n += 1;
            if d.adwin.update(x) {
                adwin_hits += 1;
                if let Some(change) = d.adwin.last_change() {
                    if change.after_mean > change.before_mean {
                        // Keep the earliest pre-change level while a degradation is pending.
                        // Ignored during warm-up, when the loss of a fresh model moves anyway.
                        if warm && d.baseline.is_none() {
                            d.baseline = Some(change.before_mean);
                        }
                    } else if d
                        .baseline
                        .is_some_and(|b| change.after_mean <= b * (1.0 + c.loss_increase_warning))
                    {
                        d.baseline = None;
                    }
                }
            }
            if d.page_hinkley.update(x) {
                ph_hits += 1;
            }
        }
        let increase = d
            .baseline
            .map_or(0.0, |b| (d.adwin.estimation() - b) / b.max(1e-6));
        if increase <= 0.0 {
            // Back at (or below) the old level: nothing pending any more.
            d.baseline = None;
        }
        let quality = TaskQuality {
            task: task.to_string(),
            examples: n,
            mean_loss: (n > 0).then(|| sum / n as f64),
            adwin_width: d.adwin.width(),
            adwin_estimation: d.adwin.estimation(),
            adwin_detections: adwin_hits,
            adwin_baseline: d.baseline,
            adwin_increase: increase.max(0.0),
            page_hinkley_detections: ph_hits,
            page_hinkley_statistic: d.page_hinkley.statistic(),
        };
        if !warm {
            return (quality, None);
        }
        // One alert per task, fed by whichever detector is more alarmed: ADWIN's relative
        // increase, or Page-Hinkley's detections in this window (two or more: critical).
        let adwin = Observation::above(
            "adwin",
            quality.adwin_increase,
            c.loss_increase_warning,
            c.loss_increase_critical,
        );
        let ph = Observation::above("page_hinkley", ph_hits as f64, 0.5, 1.5);
        let chosen = if (ph.is_critical() && !adwin.is_critical())
            || (ph.is_warning() && !adwin.is_warning())
        {
            ph
        } else {
            adwin
        };
        let key = AlertKey::new(DriftKind::ModelQuality, task, None);
        (quality, Some((key, chosen)))
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::drift::DriftError;
    use crate::drift::alerts::AlertState;
    use crate::drift::observation::log_loss;
    use crate::drift::test_rng::SplitMix;
    use crate::joint::Output;
    use shopstream_features::Example;

    const MINUTE: i64 = 60_000;

    /// What the synthetic traffic of window `i` looks like.
    #[derive(Clone, Copy)]
    struct Traffic {
        /// Values of `price` per window.
        n: usize,
        /// Added to the price from `shift_from` on.
        price_shift: f64,
        shift_from: usize,
        /// Click rate of home_feed from `shift_from` on (0.05 before; search stays 0.05).
        home_ctr_after: f64,
    }

    impl Default for Traffic {
        fn default() -> Self {
            Self {
                n: 500,
                price_shift: 0.0,
                shift_from: usize::MAX,
                home_ctr_after: 0.05,
            }
        }
    }

    /// One window of independent draws; predictions stay at the old click rate.
    fn window(rng: &mut SplitMix, i: usize, t: Traffic) -> WindowObservation {
        let mut w = WindowObservation::new(i as i64 * MINUTE);
        let after = i >= t.shift_from;
        for _ in 0..t.n {
            let shift = if after { t.price_shift } else { 0.0 };
            w.add_continuous("price", 50.0 + 10.0 * rng.normal() + shift);
            w.add_continuous("position", rng.below(20) as f64);
            let device = ["ios", "android", "web"][rng.below(3)];
            w.add_category("device", device);
        }
        for (scenario, ctr) in [
            ("home_feed", if after { t.home_ctr_after } else { 0.05 }),
            ("search", 0.05),
        ] {
            for _ in 0..1_000 {
                let clicked = rng.uniform() < ctr;
                let converted = clicked && rng.uniform() < 0.2;
                w.add_outcome(scenario, clicked, converted, 0.05);
                w.add_loss("ctr", log_loss(0.05, clicked));
            }
        }
        w
    }

    /// Runs `windows` windows; returns (window index, event) of every alert event.
    fn run(config: DriftConfig, windows: usize, t: Traffic, seed: u64) -> Vec<(usize, AlertEvent)> {
        let mut rng = SplitMix(seed);
        let mut m = DriftMonitor::new(config);
        let mut events = Vec::new();
        for i in 0..windows {
            let out = m.observe_window(&window(&mut rng, i, t));
            events.extend(out.alerts.into_iter().map(|e| (i, e)));
        }
        events
    }

    #[test]
    fn stationary_windows_raise_no_alert() {
        for seed in 1..=3 {
            let events = run(DriftConfig::default(), 30, Traffic::default(), seed);
            assert!(events.is_empty(), "seed {seed}: {events:?}");
        }
        // Large windows take the PSI / JS branch; still quiet.
        let big = Traffic {
            n: 2_000,
            ..Traffic::default()
        };
        assert!(run(DriftConfig::default(), 30, big, 7).is_empty());
    }

    #[test]
    fn values_are_reported_once_the_reference_has_three_windows() {
        let mut rng = SplitMix(1);
        let mut m = DriftMonitor::new(DriftConfig::default());
        let t = Traffic::default();
        for i in 0..3 {
            let out = m.observe_window(&window(&mut rng, i, t));
            assert!(out.features.is_empty());
            assert_eq!(out.reference_windows, i);
        }
        let out = m.observe_window(&window(&mut rng, 3, t));
        let names: Vec<&str> = out.features.iter().map(|f| f.feature.as_str()).collect();
        assert_eq!(names, ["position", "price", "device"]);
        let price = &out.features[1];
        assert_eq!((price.n_current, price.n_reference), (500, 1_500));
        assert_eq!(price.statistic, "ks");
        assert!(price.psi.is_some_and(|p| p < 0.1), "{price:?}");
        assert!(price.wasserstein_norm.is_some_and(|w| w < 0.2), "{price:?}");
        assert_eq!(out.features[2].statistic, "chi2");
        let home = &out.scenarios[0];
        assert_eq!(home.scenario, "home_feed");
        assert_eq!(home.outcomes.impressions, 1_000);
        assert!(home.ctr_z.is_some() && home.reference_ctr.is_some());
        assert_eq!(out.tasks[0].task, "ctr");
        assert_eq!(out.tasks[0].examples, 2_000);
        let json = serde_json::to_value(&out).expect("serialises");
        assert_eq!(json["features"][1]["feature"], "price");
    }

    #[test]
    fn a_feature_shift_from_window_10_fires_at_window_12_naming_the_feature() {
        for (n, statistic) in [(500, "ks"), (2_000, "psi")] {
            let t = Traffic {
                n,
                price_shift: 5.0,
                shift_from: 10,
                ..Traffic::default()
            };
            let events = run(DriftConfig::default(), 20, t, 3);
            let (i, e) = events.first().expect("an alert");
            assert_eq!(*i, 12, "{events:?}");
            assert_eq!(e.kind, DriftKind::DataDrift);
            assert_eq!(e.subject, "price");
            assert_eq!(e.statistic, statistic);
            assert_eq!(e.state, AlertState::Firing);
            assert_eq!(e.first_window_ms, 10 * MINUTE);
            assert_eq!(e.id, format!("data_drift/price/-/{}", 10 * MINUTE));
            assert!(
                events.iter().all(|(_, e)| e.subject == "price"),
                "only price moved: {events:?}"
            );
        }
    }

    #[test]
    fn a_trailing_reference_absorbs_a_lasting_shift_and_the_alert_resolves() {
        let t = Traffic {
            price_shift: 5.0,
            shift_from: 10,
            ..Traffic::default()
        };
        let events = run(DriftConfig::default(), 40, t, 3);
        let states: Vec<(usize, AlertState)> = events.iter().map(|(i, e)| (*i, e.state)).collect();
        assert_eq!(
            states.first().map(|s| s.1),
            Some(AlertState::Firing),
            "{states:?}"
        );
        let resolved = states
            .iter()
            .find(|s| s.1 == AlertState::Resolved)
            .expect("resolves once the reference holds the new regime");
        assert!(resolved.0 > 14 && resolved.0 < 30, "{states:?}");
        // A pinned reference keeps it open.
        let pinned = DriftConfig {
            reference: ReferenceMode::Pinned { windows: 8 },
            ..DriftConfig::default()
        };
        let events = run(pinned, 40, t, 3);
        assert_eq!(events.len(), 1, "{events:?}");
    }

    #[test]
    fn a_ctr_jump_in_one_scenario_raises_label_drift_naming_it() {
        let t = Traffic {
            shift_from: 14,
            home_ctr_after: 0.10,
            ..Traffic::default()
        };
        let events = run(DriftConfig::default(), 24, t, 5);
        let label: Vec<&(usize, AlertEvent)> = events
            .iter()
            .filter(|(_, e)| e.kind == DriftKind::LabelDrift)
            .collect();
        let (i, e) = label.first().expect("label drift");
        assert_eq!(*i, 16, "{events:?}");
        assert_eq!(e.subject, "ctr");
        assert_eq!(e.scenario.as_deref(), Some("home_feed"));
        assert_eq!(e.statistic, "rate_z");
        // The model kept predicting 5 %: its calibration gap fires too, and its loss rose.
        assert!(
            events
                .iter()
                .any(|(_, e)| e.kind == DriftKind::PredictionDrift
                    && e.scenario.as_deref() == Some("home_feed"))
        );
        assert!(
            events
                .iter()
                .any(|(i, e)| e.kind == DriftKind::ModelQuality && *i >= 14)
        );
        assert!(
            events
                .iter()
                .all(|(_, e)| e.scenario.as_deref() != Some("search")),
            "{events:?}"
        );
    }

    #[test]
    fn model_quality_fires_after_one_window_of_degradation() {
        let mut rng = SplitMix(11);
        let mut m = DriftMonitor::new(DriftConfig::default());
        let mut fired = Vec::new();
        for i in 0..40 {
            let mut w = WindowObservation::new(i as i64 * MINUTE);
            // A calibrated model on 5 % CTR; from window 25 the truth is 12 %.
            let ctr = if i >= 25 { 0.12 } else { 0.05 };
            for _ in 0..500 {
                w.add_loss("ctr", log_loss(0.05, rng.uniform() < ctr));
            }
            let out = m.observe_window(&w);
            let t = &out.tasks[0];
            if i < 25 {
                assert_eq!(t.page_hinkley_detections, 0, "window {i}: {t:?}");
                assert_eq!(t.adwin_baseline, None, "window {i}: {t:?}");
            }
            fired.extend(out.alerts.into_iter().map(|e| (i, e)));
        }
        let (i, e) = fired.first().expect("model quality alert");
        assert_eq!(*i, 25, "{fired:?}");
        assert_eq!(e.kind, DriftKind::ModelQuality);
        assert_eq!(e.subject, "ctr");
        assert_eq!(e.state, AlertState::Firing);
        // It stays open while the loss stays high: one event, no repeats.
        assert_eq!(fired.len(), 1, "{fired:?}");
    }

    /// Windows whose impressions come in sessions of five sharing a device, as real traffic
    /// does: 90 sessions, 450 impressions.
    fn clustered(rng: &mut SplitMix, i: usize) -> WindowObservation {
        let mut w = WindowObservation::new(i as i64 * MINUTE);
        for _ in 0..90 {
            let device = ["ios", "android", "web"][rng.below(3)];
            let price = 50.0 + 10.0 * rng.normal();
            for _ in 0..5 {
                w.add_category("device", device);
                w.add_continuous("price", price + rng.normal());
            }
        }
        w
    }

    #[test]
    fn clustered_sessions_page_only_without_the_design_effect_correction() {
        let count = |correct: bool| {
            let mut rng = SplitMix(2);
            let mut m = DriftMonitor::new(DriftConfig {
                design_effect_correction: correct,
                ..DriftConfig::default()
            });
            (0..60)
                .map(|i| m.observe_window(&clustered(&mut rng, i)).alerts.len())
                .sum::<usize>()
        };
        assert_eq!(count(true), 0);
        assert!(
            count(false) > 0,
            "iid-calibrated tests page on clustered noise"
        );
    }

    #[test]
    fn replays_are_ignored_and_the_state_survives_a_checkpoint() {
        let t = Traffic {
            price_shift: 5.0,
            shift_from: 8,
            ..Traffic::default()
        };
        let mut rng = SplitMix(4);
        let windows: Vec<WindowObservation> = (0..14).map(|i| window(&mut rng, i, t)).collect();
        let mut a = DriftMonitor::new(DriftConfig::default());
        for w in &windows[..9] {
            a.observe_window(w);
        }
        let replay = a.observe_window(&windows[5]);
        assert!(replay.replayed && replay.alerts.is_empty() && replay.features.is_empty());
        assert_eq!(a.windows_seen(), 9);
        let saved = serde_json::to_string(&a).expect("serialise");
        let mut b: DriftMonitor = serde_json::from_str(&saved).expect("restore");
        for w in &windows[9..] {
            let (x, y) = (a.observe_window(w), b.observe_window(w));
            assert_eq!(x.alerts, y.alerts);
            for (f, g) in x.features.iter().zip(&y.features) {
                assert!(
                    (f.value - g.value).abs() <= 1e-12 * f.value.abs().max(1e-300),
                    "{f:?} {g:?}"
                );
            }
        }
        assert_eq!(a.firing(), b.firing());
        assert_eq!(a.firing().len(), 1);
    }

    #[test]
    fn junk_input_gives_defined_results() {
        let mut m = DriftMonitor::new(DriftConfig::default());
        for i in 0..6 {
            let mut w = WindowObservation::new(i * MINUTE);
            for k in 0..100 {
                w.add_continuous("x", if k % 3 == 0 { f64::NAN } else { f64::INFINITY });
                w.add_continuous("y", k as f64);
                w.add_loss("ctr", f64::NAN);
                w.add_outcome("push", false, false, f64::NAN);
            }
            w.categorical.insert("empty".into(), BTreeMap::new());
            w.scenarios
                .insert("nothing".into(), ScenarioOutcomes::default());
            let out = m.observe_window(&w);
            assert!(out.alerts.is_empty());
            assert!(out.features.iter().all(|f| f.feature == "y"), "{out:?}");
            assert_eq!(out.tasks[0].examples, 0);
        }
        assert!(
            m.observe_window(&WindowObservation::new(10 * MINUTE))
                .alerts
                .is_empty()
        );
    }

    fn example(scenario: shopstream_ingest::event::Scenario, clicked: bool) -> Example {
        use shopstream_features::{Features, Labels};
        Example {
            event_id: "e".into(),
            ts: 1,
            user_id: "u".into(),
            item_id: "i".into(),
            features: Features {
                scenario,
                device: None,
                position: Some(3),
                price: Some(12.5),
                hour_of_day: 10,
                day_of_week: 2,
                user: Default::default(),
                user_recency_secs: None,
                user_category_affinity: 0.0,
                item: Default::default(),
                item_category: Some("c1".into()),
                item_price: None,
                item_on_hand: Some(3),
            },
            labels: Labels {
                clicked,
                converted: clicked,
                ..Labels::default()
            },
        }
    }

    #[test]
    fn observations_from_examples_and_outputs() {
        use shopstream_ingest::event::Scenario;
        let examples = [
            example(Scenario::Search, true),
            example(Scenario::Search, false),
            example(Scenario::Cart, false),
        ];
        assert!(matches!(
            WindowObservation::from_examples(0, &examples, &[0.5]),
            Err(DriftError::LengthMismatch(3, 1))
        ));
        let outputs: Vec<Output> = [0.5, 0.25, 0.1]
            .iter()
            .map(|p| Output {
                p_click: *p,
                p_cvr: 0.5,
                p_ctcvr: p * 0.5,
                log_value: 0.0,
            })
            .collect();
        let w = WindowObservation::from_outputs(7, &examples, &outputs).expect("aligned");
        assert_eq!(w.window_start_ms, 7);
        assert_eq!(w.continuous["price"], [12.5, 12.5, 12.5]);
        assert_eq!(w.continuous["position"], [3.0, 3.0, 3.0]);
        assert!(!w.continuous.contains_key("item_price"));
        assert_eq!(w.categorical["device"]["unknown"], 3);
        assert_eq!(w.categorical["scenario"]["search"], 2);
        assert_eq!(w.categorical["item_category"]["c1"], 3);
        let search = w.scenarios["search"];
        assert_eq!(
            (search.impressions, search.clicks, search.conversions),
            (2, 1, 1)
        );
        assert!((search.sum_p_click - 0.75).abs() < 1e-15);
        let ctr = &w.losses["ctr"];
        assert!((ctr[0] - 2f64.ln()).abs() < 1e-15);
        assert!((ctr[1] - (4.0f64 / 3.0).ln()).abs() < 1e-15);
        assert_eq!(w.losses["cvr"].len(), 1);
        assert_eq!(w.losses["ctcvr"].len(), 3);
    }
}
