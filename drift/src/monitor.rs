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
//!   Page-Hinkley (mode up). ADWIN sees the losses clipped and scaled into [0, 1] (its
//!   bound assumes that range, see [`ADWIN_LOSS_SCALE`]). ADWIN's value is the relative
//!   increase of its current mean loss over the level before its last upward change (0
//!   when none is pending);
//!   Page-Hinkley's value is its number of detections in the window. One alert per task
//!   takes whichever is more alarmed; it fires after one window (the detectors have their
//!   own false-alarm control) and resolves after K.
//!
//! **Significance tests are corrected for clustering.** Clickstream windows are
//! clustered: the impressions of one session share its scenario, device, often its
//! category and price range, and heavy users bring many sessions, so a window of 450
//! impressions carries the evidence of perhaps 90 independent draws, and tests that assume
//! independent samples (KS, chi-squared, z) page on noise. Each test therefore keeps a
//! history of its own uncorrected results, one per window (every window of a trailing
//! reference, the first windows of a pinned one), and calibrates against it:
//!
//! - KS and chi-squared: the history holds `-log2(p)`, whose median is 1 for independent
//!   samples. Its median `c` (at least 1) is the calibration factor, and the corrected
//!   p-value is `p^(1/c)`, which brings the history's median p back to 1/2. This works on
//!   the p-value scale, the same for every test and any number of categories.
//! - The rate z (label drift): the history holds `(z / 0.6745)^2`, whose median is 1 for
//!   independent samples; its median is the design effect `deff` and `z / sqrt(deff)` is
//!   compared (the Rao-Scott scaling).
//!
//! The thresholds stay the textbook ones. PSI and JS are effect sizes, compared as they
//! are, but on large windows a breach also needs the corrected test (KS, chi-squared) to
//! be significant at the warning p-value: an effect size measured on a finite clustered
//! sample has a noise floor of its own (the JS distance of 50 categories over 1 700
//! clustered values sits near 0.1). The factor is reported in
//! `FeatureDrift::design_effect`.
//!
//! Three things matter, all found on the generator's traffic (figures in `docs/drift.md`):
//! - Scale, not just location. A first version rescaled the test statistic (chi-squared
//!   divided by `deff`, the KS effective size divided by `deff`) with `deff` matched at
//!   the statistic's median. The clustered statistics have heavier tails than a rescaled
//!   chi-squared or Kolmogorov law (cluster sizes vary), so stationary windows still
//!   breached p < 0.01 in 2 to 8 % of windows (item_category worst) and three in a row
//!   paged about once per 6.5-hour run. On the `-log2(p)` scale the same traffic breaches
//!   0 to 2 % per test and no run paged.
//! - The estimate needs many windows. Taken over just the 12 reference windows (each
//!   against the other 11) the factor wandered between 2.4 and 10 within half an hour;
//!   the history keeps four references' worth (48 windows) and one reference's worth (12)
//!   is required; until then the tests report their uncorrected values but raise no
//!   alert.
//! - The newest `K - 1` entries of a trailing history are left out: they may be the start
//!   of a breach streak, which would otherwise raise the factor and correct itself away.
//!   (With leave-one-out comparisons it was worse: one shifted window in the pool inflates
//!   every comparison; the device test's factor went 8.7, 11.9, 17.6, 28.8 over the
//!   windows after the new-cohort onset and the alert never fired.)
//!
//! The calibration gap takes its design effect from its own z values after warm-up (up to
//! four references' worth, less the newest `K - 1`), and is neither reported nor tested
//! until there are one reference's worth (at least `2K - 1`) of them. Two-sided z
//! statistics (rates, gap) build a breach streak on one side only. The
//! unit test `clustered_sessions_page_only_without_...` keeps clustered noise quiet with
//! the correction and paging without it.
//!
//! Nothing is compared before the reference holds `min_reference_windows` windows; the
//! significance tests raise no alert before their design effect can be estimated (with
//! the defaults, from the 18th window on: 3 to fill the reference, 12 history entries, 2
//! left out); prediction drift and model quality raise no alert during the first
//! `model_warmup_windows` windows (a model fresh from initialisation is neither calibrated
//! nor stable); the detectors are fed from the start. PSI and Jensen-Shannon wait for
//! the design effect too, since their significance gate needs it.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::adwin::{Adwin, AdwinConfig};
use super::alerts::{AlertEvent, AlertKey, AlertPolicy, AlertTracker, DriftKind, Observation};
use super::observation::{EARLY_CTR, ScenarioOutcomes, WindowObservation};
use super::page_hinkley::{PageHinkley, PageHinkleyConfig};
use shopstream_config::{CalibrationHistory, DriftReference};

use super::held_reference::{HeldReference, WindowSummary};
use super::reference::{ReferenceMode, thin_sorted};
use super::stats::{
    aligned_counts, chi2_homogeneity, finite_sorted, jensen_shannon, ks_and_wasserstein_sorted,
    psi_sorted,
};

/// Median of `|N(0, 1)|`.
const HALF_NORMAL_MEDIAN: f64 = 0.674_489_750_196_081_7;

/// Everything the monitor needs to be told; `Default` gives the documented defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MonitorConfig {
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
    /// logit CTR shift is flagged within about 450 examples. The generator's clustered
    /// losses are noisier: at 4 sessions/s (1 700 examples a window) a stationary run
    /// crossed 50; the default is 80 (none in 10 such runs).
    pub page_hinkley: PageHinkleyConfig,
    /// Lifecycle of window statistics (K = 3 to fire, 3 to resolve).
    pub alerts: AlertPolicy,
    /// Lifecycle of the model-quality detectors (fire after 1, resolve after 3).
    pub detector_alerts: AlertPolicy,
    /// Correct the significance tests for the design effect measured on the reference
    /// (see the module docs). True.
    pub design_effect_correction: bool,
}

impl Default for MonitorConfig {
    /// The monitor of the job's default `[drift]` section: the defaults are written once,
    /// in `shopstream_config`, and the settings no user tunes in [`MonitorConfig::from_settings`].
    fn default() -> Self {
        Self::from_settings(&shopstream_config::DriftConfig::default())
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
    /// Calibration factor of the significance test: the p-value was corrected to
    /// `p^(1/c)` (1 = none; see the module docs).
    pub design_effect: f64,
    /// The test's p-value after that correction (KS or chi-squared), whichever statistic
    /// decides: on large windows the effect size only breaches when this is significant.
    pub p_corrected: Option<f64>,
    /// The statistic the alert decision used: `ks`, `psi`, `chi2` or `js`.
    pub statistic: &'static str,
    /// Its value (for `ks` and `chi2`, the p-value after the clustering correction).
    pub value: f64,
    /// Whether the value breaches the warning threshold.
    pub breach: bool,
}

/// Label and prediction drift of one scenario in one window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScenarioDrift {
    /// Scenario.
    pub scenario: String,
    /// What the click rate and the calibration gap are about, the subject of their rows
    /// and alerts: `ctr` (labels of matured examples, predictions made before training on
    /// them) or `early_ctr` (click events per impression as they arrived in the window,
    /// see [`WindowObservation::clicks_on_arrival`]; no conversion rate, no gap).
    pub label: &'static str,
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
    /// ADWIN's mean loss (of the losses clipped at [`ADWIN_LOSS_SCALE`]).
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct TaskDetectors {
    adwin: Adwin,
    page_hinkley: PageHinkley,
    baseline: Option<f64>,
    /// The level before ADWIN's latest decrease: an increase back to it is a recovery.
    #[serde(default)]
    recovery: Option<f64>,
}

/// The drift monitor. Serialisable, so it can be checkpointed with the rest of the state
/// (through serde_json without its `float_roundtrip` feature, floats may move by an ulp).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftMonitor {
    config: MonitorConfig,
    reference: HeldReference,
    tasks: BTreeMap<String, TaskDetectors>,
    alerts: AlertTracker,
    detector_alerts: AlertTracker,
    // Calibration z of recent post-warm-up windows per scenario: the design effect of the
    // gap comes from the model's recent behaviour, not from the (possibly pinned, possibly
    // warm-up) data reference.
    gap_history: BTreeMap<String, VecDeque<f64>>,
    // Per significance test (`ks/price`, `chi2/device`, `ctr/home_feed`, ...): each
    // reference window's own statistic over what independent samples would give, newest
    // last; their median is the test's design effect.
    #[serde(default)]
    ratio_history: BTreeMap<String, VecDeque<f64>>,
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

/// What [`DriftMonitor::feature_decision`] found for one feature in one window.
struct FeatureDecision {
    statistic: &'static str,
    value: f64,
    obs: Observation,
    deff: Option<f64>,
    p_corrected: Option<f64>,
    ratio: Option<f64>,
}

/// A scenario's drift, its alert observations and its tests' history entries.
type ScenarioResult = (
    ScenarioDrift,
    Vec<(AlertKey, Observation)>,
    Vec<(String, f64)>,
);

/// Picks (successes, trials) of one rate out of a scenario's counts.
type RateOf = fn(&ScenarioOutcomes) -> (u64, u64);

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

/// `-log2(p)`: 1 at the median of a p-value that is uniform (independent samples); for
/// clustered samples the p-values are too small and its median is larger.
fn fisher_ratio(p: f64) -> Option<f64> {
    (p >= 0.0).then(|| -p.clamp(f64::MIN_POSITIVE, 1.0).log2())
}

/// The p-value corrected by the calibration factor `c`: `p^(1/c)`, i.e. `-log2(p)` divided
/// by `c`, so the history's median `-log2(p)` comes back to 1.
fn p_corrected(p: f64, c: f64) -> f64 {
    p.clamp(0.0, 1.0).powf(1.0 / c.max(1.0))
}

/// Appends `value` to a history, dropping the oldest beyond `cap`.
fn push_capped(history: &mut VecDeque<f64>, value: f64, cap: usize) {
    history.push_back(value);
    while history.len() > cap {
        history.pop_front();
    }
}

fn z_ratio(z: f64) -> f64 {
    (z / HALF_NORMAL_MEDIAN).powi(2)
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

/// A significance test whose design effect cannot be estimated yet neither breaches nor
/// clears: its value goes to the alert tracker as NaN, which counts as not observed (an
/// uncorrected test would page on ordinary clustered noise).
fn untrusted_if_none(obs: Observation, deff: Option<f64>) -> Observation {
    match deff {
        Some(_) => obs,
        None => Observation {
            value: f64::NAN,
            ..obs
        },
    }
}

/// Per-example losses are clipped here and divided by it before ADWIN sees them:
/// `-ln(1e-4)`, the loss of a 1-in-10 000 prediction that came true. ADWIN's cut test
/// (`eps = sqrt(2 m s^2 d) + 2/3 d m`) is Bernstein's bound for values in [0, 1]; log
/// losses run to 34 (probabilities clamped at 1e-15), and on raw conversion losses (mostly
/// 0.02, a few 4 to 7 in bursts, since one session's orders convert several impressions)
/// it took single-window bursts for changes: a 6.5-hour stationary generator run raised
/// four model-quality alerts (ctcvr, cvr). Scaled into [0, 1] the bound holds again; the
/// relative increase the alert compares is unaffected by the scale.
pub const ADWIN_LOSS_SCALE: f64 = 9.210_340_371_976_184;

/// Values ADWIN's fresh window needs before its mean is taken as the current loss level
/// (the relative standard error of a mean of CTR log losses is about 3 / sqrt(n): 17 %
/// at 300).
const ADWIN_LEVEL_MIN_VALUES: u64 = 300;

impl DriftMonitor {
    /// A monitor with an empty reference.
    pub fn new(config: MonitorConfig) -> Self {
        Self {
            reference: HeldReference::new(config.reference),
            tasks: BTreeMap::new(),
            alerts: AlertTracker::new(config.alerts),
            detector_alerts: AlertTracker::new(config.detector_alerts),
            gap_history: BTreeMap::new(),
            ratio_history: BTreeMap::new(),
            windows_seen: 0,
            last_window_ms: None,
            config,
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &MonitorConfig {
        &self.config
    }

    /// Takes a new configuration, keeping what has been learnt where it still applies (a
    /// job restarted from a checkpoint with a changed `[drift]` section): thresholds,
    /// lifecycle and detector settings apply from the next window on. A changed reference
    /// (mode or length) starts a new reference and a new calibration history, since the
    /// old ones answer another question.
    pub fn reconfigure(&mut self, config: MonitorConfig) {
        if config == self.config {
            return;
        }
        if config.reference != self.config.reference {
            self.reference = HeldReference::new(config.reference);
            self.ratio_history.clear();
            self.gap_history.clear();
        }
        self.alerts.set_policy(config.alerts);
        self.detector_alerts.set_policy(config.detector_alerts);
        for d in self.tasks.values_mut() {
            d.adwin.set_config(config.adwin);
            d.page_hinkley.set_config(config.page_hinkley);
        }
        self.config = config;
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

    /// The design effect from ratios that are 1 on average for independent samples:
    /// their median, at least 1; 1 when the correction is off; `None` (the test cannot be
    /// trusted yet) when there are fewer than `needed` of them.
    fn design_effect(&self, ratios: &[f64], needed: usize) -> Option<f64> {
        if !self.config.design_effect_correction {
            return Some(1.0);
        }
        let mut finite: Vec<f64> = ratios.iter().copied().filter(|r| r.is_finite()).collect();
        if finite.len() < needed.max(2) {
            return None;
        }
        median(&mut finite).map(|m| m.max(1.0))
    }

    /// The design effect from a history of ratios under rule `h`: the newest `h.lag`
    /// entries are left out (see [`CalibrationHistory`]), `h.needed` are required.
    fn calibrated(
        &self,
        history: Option<&VecDeque<f64>>,
        h: CalibrationHistory,
        ratio: impl Fn(f64) -> f64,
    ) -> Option<f64> {
        let ratios: Vec<f64> = history
            .map(|entries| {
                let keep = entries.len().saturating_sub(h.lag);
                entries.iter().take(keep).map(|r| ratio(*r)).collect()
            })
            .unwrap_or_default();
        self.design_effect(&ratios, h.needed)
    }

    /// The design effect of the significance test `key`, from the normalised statistics
    /// of the windows that entered the reference before (see the module docs).
    fn history_design_effect(&self, key: &str) -> Option<f64> {
        // A trailing history holds up to four references' worth; one reference's worth
        // is asked for, so the median rests on a dozen windows or more. A pinned history
        // is frozen with the reference and holds fewer.
        let h = self
            .config
            .reference
            .calibration_history(self.config.alerts.fire_after_windows);
        self.calibrated(self.ratio_history.get(key), h, |r| r)
    }

    /// Records the window's own normalised statistics, if the window enters the reference
    /// (every window of a trailing one; the first windows of a pinned one).
    fn record_ratios(&mut self, ratios: Vec<(String, f64)>) {
        let reference = self.config.reference;
        if matches!(reference, ReferenceMode::Pinned { .. })
            && self.reference.len() >= reference.windows().max(1)
        {
            return;
        }
        let cap = reference
            .calibration_history(self.config.alerts.fire_after_windows)
            .capacity;
        for (key, ratio) in ratios {
            if ratio.is_finite() {
                push_capped(self.ratio_history.entry(key).or_default(), ratio, cap);
            }
        }
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
        let mut ratios: Vec<(String, f64)> = Vec::new();
        // Each feature's finite values, sorted once: compared, then thinned into the
        // reference.
        let sorted: BTreeMap<&str, Vec<f64>> = window
            .continuous
            .iter()
            .map(|(k, v)| (k.as_str(), finite_sorted(v)))
            .collect();
        if compare {
            for (&feature, current) in &sorted {
                let history_key = format!("ks/{feature}");
                if let Some((drift, obs, ratio)) =
                    self.continuous_drift(feature, &history_key, current)
                {
                    observations.push((AlertKey::new(DriftKind::DataDrift, feature, None), obs));
                    out.features.push(drift);
                    ratios.extend(ratio.map(|r| (history_key, r)));
                }
            }
            for (feature, counts) in &window.categorical {
                let history_key = format!("chi2/{feature}");
                if let Some((drift, obs, ratio)) =
                    self.categorical_drift(feature, &history_key, counts)
                {
                    observations.push((AlertKey::new(DriftKind::DataDrift, feature, None), obs));
                    out.features.push(drift);
                    ratios.extend(ratio.map(|r| (history_key, r)));
                }
            }
        }
        for (scenario, outcomes) in &window.scenarios {
            let (drift, obs, rate_ratios) =
                self.scenario_drift(scenario, outcomes, window.clicks_on_arrival, compare, warm);
            observations.extend(obs);
            out.scenarios.push(drift);
            ratios.extend(rate_ratios);
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
        self.record_ratios(ratios);
        self.reference.push(self.summarise(window, sorted));
        out.firing = self.firing().len();
        out
    }

    /// The calibration history of the gap: always trailing, since it follows the model's
    /// recent behaviour, not the data reference (as long as the significance tests' with
    /// a trailing reference: a median of a dozen squared z wandered enough to let a
    /// stationary window through).
    fn gap_calibration(&self) -> CalibrationHistory {
        DriftReference::Trailing.calibration_history(
            self.config.reference.windows().max(1),
            self.config.alerts.fire_after_windows,
        )
    }

    fn record_gaps(&mut self, window: &WindowObservation) {
        let cap = self.gap_calibration().capacity;
        for (scenario, o) in &window.scenarios {
            if o.scored < self.config.min_trials {
                continue;
            }
            if let Some(z) = o.gap_z().filter(|_| !window.clicks_on_arrival) {
                push_capped(
                    self.gap_history.entry(scenario.clone()).or_default(),
                    z,
                    cap,
                );
            }
        }
    }

    fn summarise(
        &self,
        window: &WindowObservation,
        sorted: BTreeMap<&str, Vec<f64>>,
    ) -> WindowSummary {
        let per_window = self.config.reference.windows().max(1);
        let cap = (self.config.max_reference_sample / per_window).max(1);
        WindowSummary {
            continuous: sorted
                .into_iter()
                .map(|(k, v)| (k.to_string(), thin_sorted(v, cap)))
                .collect(),
            categorical: window.categorical.clone(),
            scenarios: window.scenarios.clone(),
        }
    }

    /// How a feature's window is decided (see the module docs). Small windows: the test
    /// (`test` = name and uncorrected p-value) after the clustering correction. Large
    /// windows: the effect size (`effect` = name, value, warning and critical bands), which
    /// breaches only if the corrected test is significant too. Either way the window is
    /// not observed (neither breach nor clear) until the test's correction is calibrated.
    /// `None` when the deciding statistic could not be computed.
    fn feature_decision(
        &self,
        history_key: &str,
        small: bool,
        test: (&'static str, Option<f64>),
        effect: (&'static str, Option<f64>, f64, f64),
    ) -> Option<FeatureDecision> {
        let c = &self.config;
        let (test_name, raw_p) = test;
        let deff = self.history_design_effect(history_key);
        let p = raw_p.map(|p| p_corrected(p, deff.unwrap_or(1.0)));
        let (statistic, value, obs) = if small {
            let p = p?;
            let obs = Observation::below(test_name, p, c.p_value_warning, c.p_value_critical);
            (test_name, p, obs)
        } else {
            let (effect_name, effect, warning, critical) = effect;
            let effect = effect?;
            let significant = p.is_some_and(|p| p < c.p_value_warning);
            let obs = Observation::above(effect_name, effect, warning, critical)
                .if_significant(significant);
            (effect_name, effect, obs)
        };
        Some(FeatureDecision {
            statistic,
            value,
            obs: untrusted_if_none(obs, deff),
            deff,
            // Published once the correction is calibrated: an uncorrected p-value of
            // clustered data is far too small and would mislead a dashboard or rule.
            p_corrected: p.filter(|_| deff.is_some()),
            // This window's -log2(p), its entry in the calibration history.
            ratio: raw_p.and_then(fisher_ratio),
        })
    }

    /// `current`: the window's finite values, sorted; `history_key`: the test's entry in
    /// the calibration history (`ks/<feature>`).
    fn continuous_drift(
        &self,
        feature: &str,
        history_key: &str,
        current: &[f64],
    ) -> Option<(FeatureDrift, Observation, Option<f64>)> {
        let c = &self.config;
        let pool = self.reference.pooled(feature)?;
        if current.len() < c.min_samples || pool.windows < c.min_reference_windows.max(1) {
            return None;
        }
        let reference = &pool.sorted;
        if reference.len() < c.min_samples {
            return None;
        }
        let psi = psi_sorted(reference, current, c.bins).ok();
        let (ks, wasserstein) = ks_and_wasserstein_sorted(reference, current).ok().unzip();
        let scale = std_dev(reference);
        let wasserstein_norm = wasserstein.map(|w| if scale > 0.0 { w / scale } else { w });
        let d = self.feature_decision(
            history_key,
            current.len() < c.small_sample,
            ("ks", ks.map(|k| k.p_value)),
            ("psi", psi, c.psi_warning, c.psi_critical),
        )?;
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
            design_effect: d.deff.unwrap_or(1.0),
            p_corrected: d.p_corrected,
            statistic: d.statistic,
            value: d.value,
            breach: d.obs.is_warning() || d.obs.is_critical(),
        };
        Some((drift, d.obs, d.ratio))
    }

    fn categorical_drift(
        &self,
        feature: &str,
        history_key: &str,
        counts: &BTreeMap<String, u64>,
    ) -> Option<(FeatureDrift, Observation, Option<f64>)> {
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
        let (_, rv, qv) = aligned_counts(&reference, counts);
        let js = jensen_shannon(&rv, &qv).ok();
        let chi2 = chi2_homogeneity(&rv, &qv).ok();
        let d = self.feature_decision(
            history_key,
            n_current < c.small_sample as u64,
            ("chi2", chi2.map(|x| x.p_value)),
            ("js", js, c.js_warning, c.js_critical),
        )?;
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
            design_effect: d.deff.unwrap_or(1.0),
            p_corrected: d.p_corrected,
            statistic: d.statistic,
            value: d.value,
            breach: d.obs.is_warning() || d.obs.is_critical(),
        };
        Some((drift, d.obs, d.ratio))
    }

    fn scenario_drift(
        &self,
        scenario: &str,
        o: &ScenarioOutcomes,
        on_arrival: bool,
        compare: bool,
        warm: bool,
    ) -> ScenarioResult {
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
        // Conversions of clicks that just arrived are not known: no conversion rate.
        let label = if on_arrival { EARLY_CTR } else { "ctr" };
        let mut drift = ScenarioDrift {
            scenario: scenario.to_string(),
            label,
            outcomes: *o,
            ctr: rate(o.clicks, o.impressions),
            reference_ctr: None,
            ctr_z: None,
            cvr: rate(o.conversions, o.clicks).filter(|_| !on_arrival),
            reference_cvr: None,
            cvr_z: None,
            mean_p_click: (o.scored > 0).then(|| o.sum_p_click / o.scored as f64),
            ctr_gap: None,
            ctr_gap_z: None,
        };
        drift.ctr_gap = drift
            .mean_p_click
            .filter(|_| !on_arrival)
            .map(|p| p - o.scored_clicks as f64 / o.scored as f64);
        let mut obs = Vec::new();
        let mut ratios = Vec::new();
        let key = |subject: &str, kind| AlertKey::new(kind, subject, Some(scenario.to_string()));
        if compare && windows.len() >= c.min_reference_windows.max(1) {
            drift.reference_ctr = rate(reference.clicks, reference.impressions);
            drift.reference_cvr =
                rate(reference.conversions, reference.clicks).filter(|_| !on_arrival);
            // (successes, trials) of the click rate and of the conversion rate.
            let parts: [(&str, RateOf); 2] = [
                (label, |s| (s.clicks, s.impressions)),
                ("cvr", |s| (s.conversions, s.clicks)),
            ];
            for (subject, get) in parts.into_iter().take(if on_arrival { 1 } else { 2 }) {
                let (x, n) = get(o);
                let (rx, rn) = get(&reference);
                if n < c.min_trials || rn < c.min_trials {
                    continue;
                }
                let Some(z) = two_proportion_z(x, n, rx, rn) else {
                    continue;
                };
                let history_key = format!("{subject}/{scenario}");
                let deff = self.history_design_effect(&history_key);
                ratios.push((history_key, z_ratio(z)));
                let z = z / deff.unwrap_or(1.0).sqrt();
                if subject == label {
                    drift.ctr_z = Some(z);
                } else {
                    drift.cvr_z = Some(z);
                }
                let o = Observation::above("rate_z", z.abs(), c.rate_z_warning, c.rate_z_critical)
                    .signed(z);
                obs.push((
                    key(subject, DriftKind::LabelDrift),
                    untrusted_if_none(o, deff),
                ));
            }
        }
        // Not on arrival: clicks arriving in a window against the predictions of the
        // impressions arriving in it move with the click lag and with every window the
        // model trains on; tried, it paged in a stationary run (z 3.3 and 4.2 at 6
        // sessions/s). The pipeline hands no predictions on arrival; this is the guard.
        if let Some(z) = o.gap_z().filter(|_| !on_arrival) {
            // The latest K - 1 gaps may be a breach streak: left out like the latest
            // entries of the tests' histories. Each gap is its window's own z,
            // so a streak only adds outliers the median resists; the lag keeps it out all
            // the same. Until the history after warm-up holds one reference's worth of
            // gaps (and at least 2K - 1) the value is recorded uncorrected and raises
            // nothing: a model a few windows old is miscalibrated as a rule (tested on
            // arrival, where the model had trained on 12 windows at the end of the
            // warm-up, it paged in a stationary run).
            // Published and tested once calibrated (an uncorrected z of clustered clicks
            // would mislead a dashboard or a rule on the gauge).
            let z = self
                .calibrated(
                    self.gap_history.get(scenario),
                    self.gap_calibration(),
                    z_ratio,
                )
                .map(|deff| z / deff.sqrt());
            drift.ctr_gap_z = z;
            if let Some(z) = z
                && warm
                && o.scored >= c.min_trials
            {
                let o = Observation::above("ctr_gap_z", z.abs(), c.gap_z_warning, c.gap_z_critical)
                    .signed(z);
                obs.push((key(label, DriftKind::PredictionDrift), o));
            }
        }
        (drift, obs, ratios)
    }

    fn task_quality(
        &mut self,
        task: &str,
        losses: &[f64],
        warm: bool,
    ) -> (TaskQuality, Option<(AlertKey, Observation)>) {
        let c = &self.config;
        let d = self
            .tasks
            .entry(task.to_string())
            .or_insert_with(|| TaskDetectors {
                adwin: Adwin::new(c.adwin),
                page_hinkley: PageHinkley::new(c.page_hinkley),
                baseline: None,
                recovery: None,
            });
        let (mut adwin_hits, mut ph_hits) = (0, 0);
        let (mut sum, mut n) = (0.0, 0usize);
        for x in losses.iter().copied().filter(|x| x.is_finite()) {
            sum += x;
            n += 1;
            if d.adwin.update(x.min(ADWIN_LOSS_SCALE) / ADWIN_LOSS_SCALE) {
                adwin_hits += 1;
                if let Some(change) = d.adwin.last_change() {
                    if change.after_mean > change.before_mean {
                        // Keep the earliest pre-change level while a degradation is pending.
                        // Ignored during warm-up, when the loss of a fresh model moves anyway.
                        // Measured from the level before the latest decrease if that was
                        // higher: clustered losses dip and come back (a stationary run's
                        // conversion loss sat 10 % low for an hour, then returned), and the
                        // return is a recovery, not a degradation.
                        if warm && d.baseline.is_none() {
                            let before = change.before_mean.max(d.recovery.unwrap_or(0.0));
                            d.baseline = Some(before);
                        }
                        d.recovery = None;
                    } else if d
                        .baseline
                        .is_some_and(|b| change.after_mean <= b * (1.0 + c.loss_increase_warning))
                    {
                        d.baseline = None;
                    }
                    if change.after_mean < change.before_mean {
                        // The latest step down only: after a lasting improvement in steps,
                        // a fall back past the previous step still counts as degradation.
                        d.recovery = Some(change.before_mean);
                    }
                }
            }
            if d.page_hinkley.update(x) {
                ph_hits += 1;
            }
        }
        // ADWIN restarts with an empty window after a detection, so right after one its
        // estimate may rest on a handful of values (mostly small losses: a detection late
        // in a window left 8), which read as "back below the old level" and dropped a
        // degradation found a moment before. Until the fresh window holds enough values,
        // the level is the post-change mean measured at the detection.
        let level = match d.adwin.last_change() {
            Some(change) if d.adwin.width() < ADWIN_LEVEL_MIN_VALUES => change.after_mean,
            _ => d.adwin.estimation(),
        };
        let increase = d.baseline.map_or(0.0, |b| (level - b) / b.max(1e-6));
        if increase <= 0.0 {
            // Back at (or below) the old level: nothing pending any more.
            d.baseline = None;
        }
        let quality = TaskQuality {
            task: task.to_string(),
            examples: n,
            mean_loss: (n > 0).then(|| sum / n as f64),
            adwin_width: d.adwin.width(),
            adwin_estimation: d.adwin.estimation() * ADWIN_LOSS_SCALE,
            adwin_detections: adwin_hits,
            adwin_baseline: d.baseline.map(|b| b * ADWIN_LOSS_SCALE),
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
    use crate::DriftError;
    use crate::alerts::AlertState;
    use crate::observation::log_loss;
    use crate::test_rng::SplitMix;
    use shopstream_features::Example;
    use shopstream_trainer::joint::Output;

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
    fn run(
        config: MonitorConfig,
        windows: usize,
        t: Traffic,
        seed: u64,
    ) -> Vec<(usize, AlertEvent)> {
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
            let events = run(MonitorConfig::default(), 30, Traffic::default(), seed);
            assert!(events.is_empty(), "seed {seed}: {events:?}");
        }
        // Large windows take the PSI / JS branch; still quiet.
        let big = Traffic {
            n: 2_000,
            ..Traffic::default()
        };
        assert!(run(MonitorConfig::default(), 30, big, 7).is_empty());
    }

    #[test]
    fn values_are_reported_once_the_reference_has_three_windows() {
        let mut rng = SplitMix(1);
        let mut m = DriftMonitor::new(MonitorConfig::default());
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
    fn a_feature_shift_from_window_24_fires_at_window_26_naming_the_feature() {
        // From window 24: the KS test's design effect is estimable from window 17 on.
        for (n, statistic) in [(500, "ks"), (2_000, "psi")] {
            let t = Traffic {
                n,
                price_shift: 5.0,
                shift_from: 24,
                ..Traffic::default()
            };
            let events = run(MonitorConfig::default(), 34, t, 3);
            let (i, e) = events.first().expect("an alert");
            assert_eq!(*i, 26, "{events:?}");
            assert_eq!(e.kind, DriftKind::DataDrift);
            assert_eq!(e.subject, "price");
            assert_eq!(e.statistic, statistic);
            assert_eq!(e.state, AlertState::Firing);
            assert_eq!(e.first_window_ms, 24 * MINUTE);
            assert_eq!(e.id, format!("data_drift/price/-/{}", 24 * MINUTE));
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
            shift_from: 24,
            ..Traffic::default()
        };
        let events = run(MonitorConfig::default(), 60, t, 3);
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
        assert!(resolved.0 > 28 && resolved.0 < 44, "{states:?}");
        // A pinned reference keeps it open.
        let pinned = MonitorConfig {
            reference: ReferenceMode::Pinned { windows: 8 },
            ..MonitorConfig::default()
        };
        let events = run(pinned, 60, t, 3);
        assert_eq!(events.len(), 1, "{events:?}");
    }

    #[test]
    fn a_ctr_jump_in_one_scenario_raises_label_drift_naming_it() {
        let t = Traffic {
            shift_from: 24,
            home_ctr_after: 0.10,
            ..Traffic::default()
        };
        let events = run(MonitorConfig::default(), 34, t, 5);
        let label: Vec<&(usize, AlertEvent)> = events
            .iter()
            .filter(|(_, e)| e.kind == DriftKind::LabelDrift)
            .collect();
        let (i, e) = label.first().expect("label drift");
        assert_eq!(*i, 26, "{events:?}");
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
                .any(|(i, e)| e.kind == DriftKind::ModelQuality && *i >= 24)
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
        let mut m = DriftMonitor::new(MonitorConfig::default());
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
        // It stays open while the loss stays high: one alert, no repeats (at most one
        // re-emission, when it escalates to critical as the evidence grows).
        assert!(fired.len() <= 2, "{fired:?}");
        assert!(
            fired
                .iter()
                .all(|(_, f)| f.id == e.id && f.state == AlertState::Firing),
            "{fired:?}"
        );
        assert_eq!(m.firing().len(), 1);
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
            let mut m = DriftMonitor::new(MonitorConfig {
                design_effect_correction: correct,
                ..MonitorConfig::default()
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
    fn a_restored_monitor_takes_the_settings_it_is_restarted_with() {
        let mut rng = SplitMix(5);
        let mut m = DriftMonitor::new(MonitorConfig::default());
        for i in 0..20 {
            m.observe_window(&window(&mut rng, i, Traffic::default()));
        }
        let json = serde_json::to_string(&m).expect("serialise");
        let mut back: DriftMonitor = serde_json::from_str(&json).expect("deserialise");
        let changed = MonitorConfig {
            page_hinkley: PageHinkleyConfig {
                threshold: 123.0,
                ..MonitorConfig::default().page_hinkley
            },
            psi_warning: 0.15,
            ..MonitorConfig::default()
        };
        back.reconfigure(changed.clone());
        assert_eq!(back.config(), &changed);
        assert_eq!(
            back.reference.len(),
            m.reference.len(),
            "same reference kept"
        );
        let ph = &back.tasks["ctr"].page_hinkley;
        assert_eq!(
            serde_json::to_value(ph).expect("json")["config"]["threshold"],
            123.0
        );
        // Another reference mode is another question: a new reference.
        back.reconfigure(MonitorConfig {
            reference: ReferenceMode::Pinned { windows: 6 },
            ..changed
        });
        assert_eq!(back.reference.len(), 0);
        assert!(back.ratio_history.is_empty());
    }

    #[test]
    fn an_arrival_window_reports_early_ctr_without_conversions_or_calibration() {
        let mut m = DriftMonitor::new(MonitorConfig {
            model_warmup_windows: 0,
            ..MonitorConfig::default()
        });
        let mut last = None;
        for i in 0..30 {
            let mut w = WindowObservation::new(i * MINUTE);
            w.clicks_on_arrival = true;
            // As a pipeline that did hand predictions and conversions would: ignored.
            for k in 0..400 {
                w.add_outcome("home_feed", k % 10 == 0, k % 20 == 0, 0.5);
            }
            last = Some(m.observe_window(&w));
        }
        let s = &last.expect("windows").scenarios[0];
        assert_eq!(s.label, EARLY_CTR);
        assert!(s.ctr_z.is_some());
        assert_eq!(
            (s.cvr, s.cvr_z, s.ctr_gap, s.ctr_gap_z),
            (None, None, None, None)
        );
        assert!(
            m.firing().is_empty(),
            "a calibration gap of 0.1 vs 0.5 is not tested"
        );
    }

    #[test]
    fn js_noise_of_many_clustered_categories_on_large_windows_does_not_page() {
        // 50 categories, sessions of six impressions sharing one, 2 400 a window: the JS
        // distance of stationary windows sits around the 0.1 band, as item_category's
        // did at 4 sessions/s. Without the significance gate it pages.
        let window = |rng: &mut SplitMix, i: usize| {
            let mut w = WindowObservation::new(i as i64 * MINUTE);
            for _ in 0..400 {
                let category = format!("c{}", rng.below(50));
                for _ in 0..6 {
                    w.add_category("item_category", &category);
                }
            }
            w
        };
        let mut rng = SplitMix(4);
        let mut m = DriftMonitor::new(MonitorConfig::default());
        let mut js = Vec::new();
        let mut alerts = 0;
        for i in 0..80 {
            let out = m.observe_window(&window(&mut rng, i));
            js.extend(out.features.iter().filter_map(|f| f.js));
            alerts += out.alerts.len();
        }
        let over = js.iter().filter(|v| **v > 0.1).count();
        assert!(
            over > 10,
            "the noise floor reaches the band: {over} of {}",
            js.len()
        );
        assert_eq!(alerts, 0);
        // A real shift on a large window still fires: half the sessions in one category.
        let mut fired = Vec::new();
        for i in 80..86 {
            let mut w = window(&mut rng, i);
            for _ in 0..400 {
                for _ in 0..6 {
                    w.add_category("item_category", "c0");
                }
            }
            fired.extend(m.observe_window(&w).alerts.into_iter().map(|e| (i, e)));
        }
        let (i, e) = fired.first().expect("the shift fires");
        assert_eq!(
            (*i, e.subject.as_str(), e.statistic.as_str()),
            (82, "item_category", "js")
        );
    }

    #[test]
    fn a_device_shift_in_clustered_traffic_fires_and_does_not_correct_itself_away() {
        // Sessions of five impressions sharing a device (design effect near 5); from
        // window 30 half the sessions are on ios.
        let mut rng = SplitMix(9);
        let mut m = DriftMonitor::new(MonitorConfig::default());
        let mut deff = Vec::new();
        let mut fired = Vec::new();
        for i in 0..36 {
            let mut w = WindowObservation::new(i as i64 * MINUTE);
            for _ in 0..120 {
                let device = if i >= 30 && rng.uniform() < 0.5 {
                    "ios"
                } else {
                    ["ios", "android", "web"][rng.below(3)]
                };
                for _ in 0..5 {
                    w.add_category("device", device);
                }
            }
            let out = m.observe_window(&w);
            if let Some(f) = out.features.first() {
                deff.push((i, f.design_effect, f.value));
            }
            fired.extend(out.alerts.into_iter().map(|e| (i, e)));
        }
        let (i, e) = fired.first().expect("an alert");
        assert_eq!((*i, e.subject.as_str()), (32, "device"), "{fired:?}");
        let at = |w: usize| deff.iter().find(|d| d.0 == w).map_or(f64::NAN, |d| d.1);
        // The streak's own windows stay out of the estimate while it builds up.
        assert!((at(32) / at(30) - 1.0).abs() < 0.15, "{deff:?}");
        assert!((3.0..8.0).contains(&at(30)), "{deff:?}");
        // No alert could be raised before the design effect was estimable.
        assert!(
            deff.iter().filter(|d| d.0 < 17).all(|d| d.1 == 1.0),
            "{deff:?}"
        );
    }

    #[test]
    fn replays_are_ignored_and_the_state_survives_a_checkpoint() {
        let t = Traffic {
            price_shift: 5.0,
            shift_from: 22,
            ..Traffic::default()
        };
        let mut rng = SplitMix(4);
        let windows: Vec<WindowObservation> = (0..28).map(|i| window(&mut rng, i, t)).collect();
        let mut a = DriftMonitor::new(MonitorConfig::default());
        for w in &windows[..23] {
            a.observe_window(w);
        }
        let replay = a.observe_window(&windows[5]);
        assert!(replay.replayed && replay.alerts.is_empty() && replay.features.is_empty());
        assert_eq!(a.windows_seen(), 23);
        let saved = serde_json::to_string(&a).expect("serialise");
        let mut b: DriftMonitor = serde_json::from_str(&saved).expect("restore");
        for w in &windows[23..] {
            let (x, y) = (a.observe_window(w), b.observe_window(w));
            assert_eq!(x.alerts, y.alerts);
            // The restored reference compares continuous features too (its pools are
            // rebuilt from the windows read back).
            let continuous = |d: &WindowDrift| d.features.iter().filter(|f| !f.categorical).count();
            assert_eq!((continuous(&x), continuous(&y)), (2, 2));
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
        let mut m = DriftMonitor::new(MonitorConfig::default());
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
                user_category_exposure: 0.0,
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
