//! Drift detection inside the job: feeds the drift monitors ([`crate::DriftMonitor`])
//! once per closed window and turns what they measure into store rows, alert events and
//! gauges. Kafka and the store writes themselves stay in the job's global stage
//! (`shopstream-job`); the webhook is [`crate::webhook`].
//!
//! Two monitors, because two kinds of evidence become known at different times:
//!
//! - **Arrival** (data drift on what an impression carries itself, `price`, `position`,
//!   `scenario`, and once per user `device` and `new_user`; the early click rate, click
//!   events per impression per scenario): collected as impressions and clicks are admitted to their event-time
//!   window and compared when that window closes. A price shock is visible in the window
//!   it starts in, and a click-rate shift a few seconds later, as the clicks come in;
//!   there is no reason to wait 40 minutes for labels.
//! - **Matured** (label drift, prediction drift, model quality, and the features that come
//!   from the item's state, `item_price` and `item_category`): computed from the training
//!   examples, which are released only once their labels mature (click window plus
//!   attribution window after the impression, 40 minutes by default), scored by the model
//!   before it trains on them (prequential). These statistics are keyed by the window of
//!   the impressions they describe (`close - maturity`), so every row and alert names the
//!   event time of its evidence; they are *reported* a maturity later.
//!
//! Both monitors see the same windows in the same order however the input was
//! interleaved (impressions of a window form a set; values are sorted before the monitor
//! sees them; the users of a window come from the features stage, which applies a window's
//! events in event-time order), so
//! the `drift` and `alerts` tables are as deterministic as the examples.

use crate::{
    AlertEvent, DriftError, DriftKind, DriftMonitor, FeatureDrift, FeatureSelection, MonitorConfig,
    ScenarioDrift, TaskQuality, WindowDrift, WindowObservation,
};
use shopstream_config::{DriftConfig as DriftSettings, PipelineConfig};
use shopstream_features::{Example, UserArrival, WindowGrid};
use shopstream_ingest::event::{ClickEvent, ClickKind, Event, Scenario};
use shopstream_trainer::joint::Output;
use std::collections::BTreeMap;

use crate::tables::DriftRow;
pub use crate::tables::Evidence;

/// The features taken from matured examples: those that come from the item's state. The
/// others are measured on arrival (`price`, `position`, `scenario` per impression;
/// `device` and `new_user` once per user and window, see [`DriftStage::window_closed`]).
pub const MATURED_FEATURES: FeatureSelection<'static> = FeatureSelection {
    continuous: &["item_price"],
    categorical: &["item_category"],
};

/// What the arrival monitor takes from an impression or a click (taken before the event
/// moves into the features stage, counted once the stage accepted it).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Arrival {
    /// An impression.
    Impression(Impression),
    /// A click on an impression: counted by its own event time for the early click rate.
    Click {
        /// Event time of the click.
        ts: i64,
        /// Scenario of the clicked impression.
        scenario: Scenario,
    },
}

impl Arrival {
    /// What `event` brings to the arrival monitor, if anything.
    pub fn of(event: &Event) -> Option<Self> {
        match event {
            Event::Click(c) if c.kind == ClickKind::Impression => {
                Some(Self::Impression(Impression::of_click(c)))
            }
            Event::Click(c) if c.kind == ClickKind::Click => Some(Self::Click {
                ts: c.ts,
                scenario: c.scenario,
            }),
            _ => None,
        }
    }
}

/// What the arrival monitor takes from an impression.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Impression {
    /// Event time.
    pub ts: i64,
    /// Price shown.
    pub price: Option<f64>,
    /// Slot in the list.
    pub position: Option<u32>,
    /// Scenario.
    pub scenario: Scenario,
}

impl Impression {
    /// The fields of an impression's click event.
    pub fn of_click(c: &ClickEvent) -> Self {
        Self {
            ts: c.ts,
            price: c.price,
            position: c.position,
            scenario: c.scenario,
        }
    }
}

/// What one closed window produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WindowDrifts {
    /// Start of the window that closed (epoch ms): when all this became known.
    pub closed_window_ms: i64,
    /// The monitors' per-window results, each keyed by the window of its evidence
    /// (`WindowDrift::window_start_ms`), arrival first (their alert events are moved to
    /// `alerts`).
    pub windows: Vec<(Evidence, WindowDrift)>,
    /// Alert events, in the order they were raised.
    pub alerts: Vec<AlertEvent>,
}

/// Latest drift values for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DriftGauges {
    /// PSI per continuous feature.
    pub feature_psi: BTreeMap<String, f64>,
    /// Jensen-Shannon distance per categorical feature.
    pub feature_js: BTreeMap<String, f64>,
    /// Design-effect corrected p-value per (feature, `ks` | `chi2`): the decision on
    /// small windows, the significance gate of PSI and JS on large ones.
    pub feature_pvalue: BTreeMap<(String, String), f64>,
    /// z of a label rate per (scenario, `ctr` | `cvr` | `early_ctr`).
    pub label_rate_z: BTreeMap<(String, String), f64>,
    /// z of the calibration gap (clicks minus predicted clicks) per (scenario, `ctr`; only
    /// matured examples are tested for calibration).
    pub prediction_gap_z: BTreeMap<(String, String), f64>,
    /// Per (task, detector): ADWIN's relative loss increase, Page-Hinkley's statistic over
    /// its threshold (1 = detection).
    pub model_loss_drift: BTreeMap<(String, String), f64>,
    /// Open alerts with their latest values.
    pub firing: Vec<AlertEvent>,
    /// Alert events raised per state (`firing` includes escalations to critical).
    pub alerts_total: BTreeMap<String, u64>,
    /// Alert events acknowledged by the broker on the alerts topic.
    pub alerts_published: u64,
    /// Alert events the webhook accepted (2xx).
    pub webhook_delivered: u64,
    /// Alert events the webhook never accepted (retries exhausted, final 4xx, queue full,
    /// still queued at shutdown).
    pub webhook_failures: u64,
    /// Windows observed by the monitors.
    pub windows: u64,
}

/// Drift figures of a run, for its summary.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct DriftSummary {
    /// Windows observed by the monitors (arrival and matured).
    pub windows: u64,
    /// Firing alert events raised (escalations included).
    pub alerts_fired: u64,
    /// Resolved alert events raised.
    pub alerts_resolved: u64,
    /// Alerts still open at the end.
    pub open_at_end: usize,
    /// Alert events acknowledged on the alerts topic.
    pub published: u64,
    /// Alert events the webhook accepted.
    pub webhook_delivered: u64,
    /// Alert events the webhook did not accept.
    pub webhook_failures: u64,
}

impl DriftGauges {
    /// The run-summary view.
    pub fn summary(&self) -> DriftSummary {
        DriftSummary {
            windows: self.windows,
            alerts_fired: self.alerts_total.get("firing").copied().unwrap_or(0),
            alerts_resolved: self.alerts_total.get("resolved").copied().unwrap_or(0),
            open_at_end: self.firing.len(),
            published: self.alerts_published,
            webhook_delivered: self.webhook_delivered,
            webhook_failures: self.webhook_failures,
        }
    }
}

/// The job's drift stage: the two monitors, the arrival observations of open windows, and
/// the gauges.
///
/// Serializable: checkpoints hold it (the gauges are not part of the state; they are
/// filled again by the next window).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DriftStage {
    #[serde(rename = "window_ms")]
    grid: WindowGrid,
    maturity_ms: i64,
    arrival: DriftMonitor,
    matured: DriftMonitor,
    /// Arrival observations of windows not closed yet, by window start.
    pending: BTreeMap<i64, WindowObservation>,
    #[serde(skip)]
    gauges: DriftGauges,
}

impl DriftStage {
    /// A stage for the job's `[drift]` and `[pipeline]` settings.
    pub fn new(settings: &DriftSettings, pipeline: &PipelineConfig) -> Self {
        let config = MonitorConfig::from_settings(settings);
        Self {
            grid: WindowGrid::of(pipeline),
            maturity_ms: pipeline.label_maturity_ms(),
            arrival: DriftMonitor::new(config.clone()),
            matured: DriftMonitor::new(config),
            pending: BTreeMap::new(),
            gauges: DriftGauges::default(),
        }
    }

    /// Applies the job's current `[drift]` settings to a stage restored from a checkpoint
    /// (see [`DriftMonitor::reconfigure`]); the window grid stays the checkpoint's.
    pub fn reconfigure(&mut self, settings: &DriftSettings) {
        let config = MonitorConfig::from_settings(settings);
        self.arrival.reconfigure(config.clone());
        self.matured.reconfigure(config);
    }

    /// The monitors' configuration.
    pub fn config(&self) -> &MonitorConfig {
        self.arrival.config()
    }

    /// How long after an impression its example (labels, prediction) is released: the
    /// matured statistics of a window are reported this much later.
    pub fn maturity_ms(&self) -> i64 {
        self.maturity_ms
    }

    /// The latest values, for `/metrics`.
    pub fn gauges(&self) -> &DriftGauges {
        &self.gauges
    }

    /// Mutable gauges, for the counters kept by the pipeline (broker acknowledgements,
    /// webhook outcomes).
    pub fn gauges_mut(&mut self) -> &mut DriftGauges {
        &mut self.gauges
    }

    /// Counts an impression or click admitted to its event-time window (call it only once
    /// the window accepted the event: late events are not part of any window): `price`,
    /// `position`, `scenario` per impression, and the early click rate (impressions and
    /// click events per scenario).
    pub fn on_arrival(&mut self, arrival: &Arrival) {
        let ts = match arrival {
            Arrival::Impression(i) => i.ts,
            Arrival::Click { ts, .. } => *ts,
        };
        let window = self.grid.start_of(ts);
        let w = self
            .pending
            .entry(window)
            .or_insert_with(|| WindowObservation::new(window));
        let i = match arrival {
            Arrival::Click { scenario, .. } => {
                w.add_click_on_arrival(scenario.as_str());
                return;
            }
            Arrival::Impression(i) => i,
        };
        if let Some(price) = i.price {
            w.add_continuous("price", price);
        }
        if let Some(position) = i.position {
            w.add_continuous("position", f64::from(position));
        }
        w.add_category("scenario", i.scenario.as_str());
        w.add_impression_on_arrival(i.scenario.as_str());
    }

    /// The window starting at `start_ms` closed with `users` (each at its first
    /// impression in it, as the features stage found them), releasing `examples` scored
    /// (before training) as `outputs` (same order; both empty when nothing matured).
    /// Observes the arrival window(s) up to `start_ms`, then the matured examples grouped
    /// by the window of their impressions.
    ///
    /// `device` and `new_user` count once per user: a user's impressions share both, so
    /// counted per impression a window of 600 impressions carries the evidence of its 90
    /// sessions only, and the clustering correction had to discount the device test
    /// sixfold (`design_effect` near 6 in generated traffic). They are taken from the
    /// features stage, which applies a window's events in event-time order, rather than
    /// on arrival, where what the state knows depends on how the partitions interleaved:
    /// a replay must write the same rows.
    pub fn window_closed(
        &mut self,
        start_ms: i64,
        users: &[UserArrival],
        examples: &[Example],
        outputs: &[Output],
    ) -> Result<WindowDrifts, DriftError> {
        if examples.len() != outputs.len() {
            return Err(DriftError::LengthMismatch(examples.len(), outputs.len()));
        }
        if !users.is_empty() {
            let w = self
                .pending
                .entry(start_ms)
                .or_insert_with(|| WindowObservation::new(start_ms));
            for u in users {
                w.add_category("device", u.device.as_deref().unwrap_or("unknown"));
                w.add_category("new_user", if u.new_user { "yes" } else { "no" });
            }
        }
        let mut out = WindowDrifts {
            closed_window_ms: start_ms,
            ..WindowDrifts::default()
        };
        // Windows at or before this one (earlier ones only if they never closed on their
        // own, which the features stage does not do; observed in order anyway).
        let later = self.pending.split_off(&(start_ms.saturating_add(1)));
        let ready = std::mem::replace(&mut self.pending, later);
        // (Arrival order differs between a live run and a replay; the monitor sorts each
        // feature's values, so it sees the same sample either way.)
        for (_, observation) in ready {
            let drift = self.arrival.observe_window(&observation);
            out.push(Evidence::Arrival, drift);
        }
        // Examples are in event-time order: contiguous runs share a window.
        let mut from = 0;
        while from < examples.len() {
            let window = self.evidence_window(examples[from].ts);
            let len = examples[from..]
                .iter()
                .take_while(|e| self.evidence_window(e.ts) == window)
                .count();
            let to = from + len;
            let observation = WindowObservation::from_outputs_with(
                window,
                &examples[from..to],
                &outputs[from..to],
                &MATURED_FEATURES,
            )?;
            let drift = self.matured.observe_window(&observation);
            out.push(Evidence::Matured, drift);
            from = to;
        }
        self.update_gauges(&out);
        Ok(out)
    }

    /// The window of impressions at `ts`, on the grid of released batches: examples
    /// released when window `s` closes have `ts` in `[s - maturity, s - maturity + window)`.
    fn evidence_window(&self, ts: i64) -> i64 {
        self.grid.start_of_shifted(ts, -self.maturity_ms)
    }

    fn update_gauges(&mut self, out: &WindowDrifts) {
        let ph_threshold = self.config().page_hinkley.threshold.max(f64::MIN_POSITIVE);
        let g = &mut self.gauges;
        for (_, drift) in &out.windows {
            if drift.replayed {
                continue;
            }
            g.windows += 1;
            for f in &drift.features {
                if let Some(psi) = f.psi {
                    g.feature_psi.insert(f.feature.clone(), psi);
                }
                if let Some(js) = f.js {
                    g.feature_js.insert(f.feature.clone(), js);
                }
                if let Some(p) = f.p_corrected {
                    let test = if f.categorical { "chi2" } else { "ks" };
                    g.feature_pvalue
                        .insert((f.feature.clone(), test.to_string()), p);
                }
            }
            for s in &drift.scenarios {
                for (label, z) in [(s.label, s.ctr_z), ("cvr", s.cvr_z)] {
                    if let Some(z) = z {
                        g.label_rate_z
                            .insert((s.scenario.clone(), label.to_string()), z);
                    }
                }
                if let Some(z) = s.ctr_gap_z {
                    g.prediction_gap_z
                        .insert((s.scenario.clone(), s.label.to_string()), z);
                }
            }
            for t in &drift.tasks {
                g.model_loss_drift
                    .insert((t.task.clone(), "adwin".into()), t.adwin_increase);
                g.model_loss_drift.insert(
                    (t.task.clone(), "page_hinkley".into()),
                    t.page_hinkley_statistic / ph_threshold,
                );
            }
        }
        for alert in &out.alerts {
            *g.alerts_total
                .entry(alert.state.as_str().to_string())
                .or_default() += 1;
        }
        g.firing = self.arrival.firing();
        g.firing.extend(self.matured.firing());
    }

    /// Rows of the `drift` table for what one closed window produced.
    pub fn rows(&self, drifts: &WindowDrifts) -> Vec<DriftRow> {
        let c = self.config();
        let mut rows = Vec::new();
        for (evidence, drift) in &drifts.windows {
            if drift.replayed {
                continue;
            }
            let mut add = RowSink {
                rows: &mut rows,
                ts_ms: drift.window_start_ms,
                reported_ms: drifts.closed_window_ms,
                evidence: *evidence,
            };
            for f in &drift.features {
                feature_rows(&mut add, f, c);
            }
            for s in &drift.scenarios {
                scenario_rows(&mut add, s, c);
            }
            for t in &drift.tasks {
                task_rows(&mut add, t, c);
            }
        }
        rows
    }
}

impl WindowDrifts {
    fn push(&mut self, evidence: Evidence, mut drift: WindowDrift) {
        self.alerts.append(&mut drift.alerts);
        self.windows.push((evidence, drift));
    }
}

struct RowSink<'a> {
    rows: &'a mut Vec<DriftRow>,
    ts_ms: i64,
    reported_ms: i64,
    evidence: Evidence,
}

/// One statistic of a subject: name, value (`None`: no row), warning and critical bands.
type Stat = (&'static str, Option<f64>, Option<(f64, f64)>);

impl RowSink<'_> {
    /// Rows of `stats` about `subject` (in `scenario`), each resting on `n` values.
    fn add(
        &mut self,
        kind: DriftKind,
        subject: &str,
        scenario: Option<&str>,
        n: u64,
        stats: &[Stat],
    ) {
        for &(statistic, value, bands) in stats {
            let Some(value) = value else { continue };
            self.rows.push(DriftRow {
                ts_ms: self.ts_ms,
                reported_ms: self.reported_ms,
                evidence: self.evidence,
                kind,
                subject: subject.to_string(),
                scenario: scenario.map(str::to_string),
                statistic,
                value,
                threshold: bands.map(|t| t.0),
                critical: bands.map(|t| t.1),
                n: i64::try_from(n).unwrap_or(i64::MAX),
            });
        }
    }
}

fn feature_rows(add: &mut RowSink<'_>, f: &FeatureDrift, c: &MonitorConfig) {
    let n = f.n_current as u64;
    let p_bands = Some((c.p_value_warning, c.p_value_critical));
    // The corrected p-value: the decision on small windows, the significance gate of
    // the effect size on large ones.
    let deff = ("design_effect", Some(f.design_effect), None);
    let stats: &[Stat] = if f.categorical {
        &[
            ("js", f.js, Some((c.js_warning, c.js_critical))),
            ("chi2_p_value", f.chi2_p_value, None),
            ("chi2_p_corrected", f.p_corrected, p_bands),
            deff,
        ]
    } else {
        &[
            ("psi", f.psi, Some((c.psi_warning, c.psi_critical))),
            ("ks_statistic", f.ks_statistic, None),
            ("ks_p_value", f.ks_p_value, None),
            ("wasserstein_norm", f.wasserstein_norm, None),
            ("ks_p_corrected", f.p_corrected, p_bands),
            deff,
        ]
    };
    add.add(DriftKind::DataDrift, &f.feature, None, n, stats);
}

fn scenario_rows(add: &mut RowSink<'_>, s: &ScenarioDrift, c: &MonitorConfig) {
    let o = &s.outcomes;
    let sc = Some(s.scenario.as_str());
    let rate_bands = Some((c.rate_z_warning, c.rate_z_critical));
    let label = DriftKind::LabelDrift;
    add.add(
        label,
        s.label,
        sc,
        o.impressions,
        &[
            ("rate", s.ctr, None),
            ("reference_rate", s.reference_ctr, None),
            ("rate_z", s.ctr_z, rate_bands),
        ],
    );
    add.add(
        label,
        "cvr",
        sc,
        o.clicks,
        &[
            ("rate", s.cvr, None),
            ("reference_rate", s.reference_cvr, None),
            ("rate_z", s.cvr_z, rate_bands),
        ],
    );
    add.add(
        DriftKind::PredictionDrift,
        s.label,
        sc,
        o.scored,
        &[
            ("mean_p_click", s.mean_p_click, None),
            ("ctr_gap", s.ctr_gap, None),
            (
                "ctr_gap_z",
                s.ctr_gap_z,
                Some((c.gap_z_warning, c.gap_z_critical)),
            ),
        ],
    );
}

fn task_rows(add: &mut RowSink<'_>, t: &TaskQuality, c: &MonitorConfig) {
    let ph = c.page_hinkley.threshold;
    add.add(
        DriftKind::ModelQuality,
        &t.task,
        None,
        t.examples as u64,
        &[
            ("mean_loss", t.mean_loss, None),
            (
                "adwin_increase",
                Some(t.adwin_increase),
                Some((c.loss_increase_warning, c.loss_increase_critical)),
            ),
            ("adwin_estimation", Some(t.adwin_estimation), None),
            (
                "page_hinkley_statistic",
                Some(t.page_hinkley_statistic),
                Some((ph, ph)),
            ),
            (
                "page_hinkley_detections",
                Some(t.page_hinkley_detections as f64),
                None,
            ),
        ],
    );
}

#[cfg(test)]
mod tests {
    use arrow::array::TimestampMicrosecondArray;

    use super::*;
    use crate::EARLY_CTR;
    use crate::tables::{alerts_batch, drift_batch};

    const T0: i64 = 1_767_571_200_000;

    fn impression(ts: i64, price: f64, device: &str) -> ClickEvent {
        ClickEvent {
            event_id: format!("e{ts}").into(),
            ts,
            user_id: "u".into(),
            session_id: "s".into(),
            kind: ClickKind::Impression,
            item_id: Some("i".into()),
            scenario: Scenario::Search,
            position: Some((ts % 7) as u32),
            device: Some(device.into()),
            price: Some(price),
            query: None,
        }
    }

    fn arrive(stage: &mut DriftStage, event: ClickEvent) {
        let arrival = Arrival::of(&Event::Click(event)).expect("an arrival");
        stage.on_arrival(&arrival);
    }

    /// 200 impressions per minute whose price is `level` plus a deterministic spread.
    fn minute(stage: &mut DriftStage, minute: i64, level: f64) {
        for i in 0..200 {
            let ts = T0 + minute * 60_000 + i * 300;
            let spread = ((i * 37) % 100) as f64 / 10.0;
            arrive(stage, impression(ts, level + spread, "ios"));
        }
    }

    /// 100 users of a window, a third on each device, one in ten new.
    fn users() -> Vec<UserArrival> {
        (0..100)
            .map(|u| UserArrival {
                user_id: format!("u{u}").into(),
                device: Some(["ios", "android", "web"][u % 3].into()),
                new_user: u % 10 == 0,
            })
            .collect()
    }

    /// 300 home-feed impressions and `clicks` click events in one minute.
    fn feed_minute(stage: &mut DriftStage, minute: i64, clicks: i64) {
        let start = T0 + minute * 60_000;
        for i in 0..300 {
            let mut e = impression(start + i * 150, 10.0, "ios");
            e.scenario = Scenario::HomeFeed;
            arrive(stage, e);
        }
        for c in 0..clicks {
            let mut e = impression(start + 20_000 + c * 100, 10.0, "ios");
            e.kind = ClickKind::Click;
            e.scenario = Scenario::HomeFeed;
            arrive(stage, e);
        }
    }

    #[test]
    fn device_and_new_user_count_once_per_user_of_the_window() {
        let mut stage = DriftStage::new(&DriftSettings::default(), &PipelineConfig::default());
        feed_minute(&mut stage, 0, 12);
        let w = &stage.pending[&T0];
        assert_eq!(w.categorical["scenario"]["home_feed"], 300);
        assert!(!w.categorical.contains_key("device"), "not per impression");
        let o = &w.scenarios["home_feed"];
        assert_eq!((o.impressions, o.clicks, o.scored), (300, 12, 0));
        assert!(w.clicks_on_arrival);
        // The users come with the window's close; every statistic of device and new_user
        // rests on the 100 users, not on the 300 impressions.
        let mut last = WindowDrifts::default();
        for m in 0..5 {
            if m > 0 {
                feed_minute(&mut stage, m, 12);
            }
            last = stage
                .window_closed(T0 + m * 60_000, &users(), &[], &[])
                .expect("closed");
        }
        assert!(stage.pending.is_empty());
        let rows = stage.rows(&last);
        for feature in ["device", "new_user"] {
            let js = rows
                .iter()
                .find(|r| r.subject == feature && r.statistic == "js")
                .expect("a js row");
            assert_eq!((js.n, js.value), (100, 0.0), "{feature}");
        }
    }

    #[test]
    fn a_click_rate_jump_fires_early_ctr_on_arrival_without_waiting_for_labels() {
        let mut stage = DriftStage::new(&DriftSettings::default(), &PipelineConfig::default());
        let mut events = Vec::new();
        let mut last = WindowDrifts::default();
        // 30 clicks per 300 impressions, then 60 from minute 24.
        for m in 0..30 {
            feed_minute(&mut stage, m, if m >= 24 { 60 } else { 30 });
            last = stage
                .window_closed(T0 + m * 60_000, &[], &[], &[])
                .expect("ok");
            events.extend(last.alerts.iter().cloned().map(|a| (m, a)));
        }
        let (m, first) = events.first().expect("an alert");
        assert_eq!(
            *m, 26,
            "reported at the close of the third window: {events:?}"
        );
        assert_eq!(
            (
                first.kind,
                first.subject.as_str(),
                first.scenario.as_deref()
            ),
            (DriftKind::LabelDrift, EARLY_CTR, Some("home_feed"))
        );
        assert_eq!(first.first_window_ms, T0 + 24 * 60_000);
        let rows = stage.rows(&last);
        let find = |statistic: &str| {
            rows.iter()
                .find(|r| r.subject == EARLY_CTR && r.statistic == statistic)
                .map(|r| r.value)
        };
        assert_eq!(find("rate"), Some(0.2));
        // Not known on arrival: conversions and predictions.
        assert_eq!(find("ctr_gap_z"), None);
        assert_eq!(find("mean_p_click"), None);
        assert!(
            !rows
                .iter()
                .any(|r| r.evidence == Evidence::Arrival && r.subject == "cvr")
        );
        let g = stage.gauges();
        let gauge = g.label_rate_z[&("home_feed".to_string(), EARLY_CTR.to_string())];
        assert_eq!(Some(gauge), find("rate_z"));
        assert!(
            gauge > 0.0,
            "the reference is absorbing the jump, z still positive"
        );
    }

    #[test]
    fn a_price_jump_fires_on_its_third_window_naming_price() {
        let mut stage = DriftStage::new(&DriftSettings::default(), &PipelineConfig::default());
        let mut events = Vec::new();
        // From minute 24: the KS test alerts once its clustering correction is estimable.
        for m in 0..30 {
            minute(&mut stage, m, if m >= 24 { 30.0 } else { 20.0 });
            let out = stage
                .window_closed(T0 + m * 60_000, &[], &[], &[])
                .expect("no examples");
            assert_eq!(out.windows.len(), 1, "one arrival window per close");
            assert_eq!(out.windows[0].1.window_start_ms, T0 + m * 60_000);
            events.extend(out.alerts.into_iter().map(|a| (m, a)));
        }
        let (m, first) = events.first().expect("an alert");
        assert_eq!(*m, 26, "{events:?}");
        assert_eq!(first.subject, "price");
        assert_eq!(first.first_window_ms, T0 + 24 * 60_000);
        assert!(
            events.iter().all(|(_, a)| a.subject == "price"),
            "{events:?}"
        );
        let g = stage.gauges();
        assert_eq!(g.alerts_total.get("firing"), Some(&1));
        assert_eq!(g.firing.len(), 1);
        assert!(g.feature_psi["price"] > 0.2, "{g:?}");
        assert!(g.feature_pvalue[&("price".to_string(), "ks".to_string())] < 0.001);
    }

    #[test]
    fn matured_examples_are_keyed_by_the_window_of_their_impressions() {
        let stage = DriftStage::new(&DriftSettings::default(), &PipelineConfig::default());
        assert_eq!(stage.maturity_ms(), 2_400_000);
        let closed = T0 + 3_600_000;
        let w = stage.evidence_window(closed - 2_400_000 + 59_999);
        assert_eq!(w, closed - 2_400_000);
        // A window length that does not divide the maturity: the grid shifts with it.
        let pipeline = PipelineConfig {
            window_secs: 45,
            ..PipelineConfig::default()
        };
        let stage = DriftStage::new(&DriftSettings::default(), &pipeline);
        let closed = T0 + 45_000 * 100;
        assert_eq!(
            stage.evidence_window(closed - 2_400_000),
            closed - 2_400_000
        );
        assert_eq!(
            stage.evidence_window(closed - 2_400_000 - 1),
            closed - 2_400_000 - 45_000
        );
    }

    #[test]
    fn misaligned_outputs_are_an_error_not_a_panic() {
        let mut stage = DriftStage::new(&DriftSettings::default(), &PipelineConfig::default());
        let out = Output {
            p_click: 0.1,
            p_cvr: 0.1,
            p_ctcvr: 0.01,
            log_value: 0.0,
        };
        assert!(matches!(
            stage.window_closed(T0, &[], &[], &[out]),
            Err(DriftError::LengthMismatch(0, 1))
        ));
    }

    #[test]
    fn rows_and_batches_carry_thresholds_and_timestamps() {
        let mut stage = DriftStage::new(&DriftSettings::default(), &PipelineConfig::default());
        let mut last = WindowDrifts::default();
        for m in 0..28 {
            minute(&mut stage, m, if m >= 24 { 30.0 } else { 20.0 });
            last = stage
                .window_closed(T0 + m * 60_000, &users(), &[], &[])
                .expect("ok");
        }
        let rows = stage.rows(&last);
        let psi = rows
            .iter()
            .find(|r| r.subject == "price" && r.statistic == "psi")
            .expect("psi row");
        assert_eq!((psi.threshold, psi.critical), (Some(0.1), Some(0.2)));
        assert_eq!(psi.ts_ms, T0 + 27 * 60_000);
        assert_eq!(psi.evidence, Evidence::Arrival);
        assert!(
            rows.iter()
                .any(|r| r.subject == "device" && r.statistic == "chi2_p_corrected")
        );
        let batch = drift_batch(&rows).expect("batch");
        assert_eq!(batch.num_rows(), rows.len());
        let ts = batch
            .column_by_name("ts")
            .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>())
            .expect("ts column");
        assert_eq!(ts.value(0), (T0 + 27 * 60_000) * 1000);
        let alerts = alerts_batch(T0, &stage.gauges().firing).expect("alerts batch");
        assert_eq!(alerts.num_rows(), 1);
        assert_eq!(alerts.schema().field(0).name(), "ts");
    }
}
