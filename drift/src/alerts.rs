//! Alert lifecycle: turns one statistic per key per window into firing and resolved
//! events, so that a person is paged once for a sustained problem and not for noise.
//!
//! - **Firing** after `fire_after_windows` consecutive windows in breach of the warning
//!   threshold; severity critical if the latest of them also breaches the critical one.
//! - **Resolved** after `resolve_after_windows` consecutive windows back within the warning
//!   threshold (hysteresis: a value hovering around the threshold does not flap).
//! - **Deduplicated**: at most one open alert per key; further windows in breach emit
//!   nothing, except an escalation from warning to critical, which re-emits the firing
//!   event with the same id and the new severity (de-escalation emits nothing). A window
//!   start at or before the last one seen for a key is ignored, so a replayed window
//!   cannot count twice.
//! - A window in which a key is not observed (no data) neither extends nor breaks its
//!   streaks; a NaN value counts as not observed.
//!
//! Alert ids are `<kind>/<subject>/<scenario or ->/<first_window_ms>` where
//! `first_window_ms` is the start of the streak that opened the alert: the same input
//! always produces the same ids, and the resolved event carries the id of the firing one.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What drifted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftKind {
    /// An input feature's distribution moved.
    DataDrift,
    /// A label rate (click, conversion) moved.
    LabelDrift,
    /// Predictions and outcomes disagree (calibration gap).
    PredictionDrift,
    /// The model's loss got worse.
    ModelQuality,
}

impl DriftKind {
    /// Snake-case name, as serialised.
    pub fn as_str(self) -> &'static str {
        match self {
            DriftKind::DataDrift => "data_drift",
            DriftKind::LabelDrift => "label_drift",
            DriftKind::PredictionDrift => "prediction_drift",
            DriftKind::ModelQuality => "model_quality",
        }
    }
}

/// The identity of an alert: at most one is open per key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AlertKey {
    /// What drifted.
    pub kind: DriftKind,
    /// The feature (`price`) or task/label (`ctr`).
    pub subject: String,
    /// The scenario, for per-scenario statistics.
    pub scenario: Option<String>,
}

impl AlertKey {
    /// A key.
    pub fn new(kind: DriftKind, subject: impl Into<String>, scenario: Option<String>) -> Self {
        Self {
            kind,
            subject: subject.into(),
            scenario,
        }
    }

    fn id(&self, first_window_ms: i64) -> String {
        format!(
            "{}/{}/{}/{}",
            self.kind.as_str(),
            self.subject,
            self.scenario.as_deref().unwrap_or("-"),
            first_window_ms
        )
    }
}

/// Which side of the thresholds is bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Values above the thresholds breach (PSI, JS, |z|).
    Above,
    /// Values below the thresholds breach (p-values).
    Below,
}

/// One window's value of a statistic, with its thresholds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    /// Name of the statistic: `psi`, `ks`, `js`, `chi2`, `rate_z`, `ctr_gap_z`, `adwin`,
    /// `page_hinkley`.
    pub statistic: &'static str,
    /// Its value in this window.
    pub value: f64,
    /// Breaching this (strictly) counts towards firing.
    pub warning_threshold: f64,
    /// Breaching this (strictly) in the latest window makes the alert critical.
    pub critical_threshold: f64,
    /// Which side is bad.
    pub direction: Direction,
    /// False when a significance test says the window's value may be sampling noise: it
    /// then breaches nothing (see [`Observation::if_significant`]).
    pub significant: bool,
    /// Side of a two-sided statistic compared by its magnitude (-1, +1; 0: one-sided):
    /// a breach streak only builds up on one side (see [`Observation::signed`]).
    pub sign: i8,
}

impl Observation {
    /// A statistic where larger is worse.
    pub fn above(statistic: &'static str, value: f64, warning: f64, critical: f64) -> Self {
        Self {
            statistic,
            value,
            warning_threshold: warning,
            critical_threshold: critical,
            direction: Direction::Above,
            significant: true,
            sign: 0,
        }
    }

    /// This observation of `|z|`, remembering the side of `z`. A drift moves a rate one
    /// way; windows that breach on alternating sides are noise (a stationary run at 4
    /// sessions/s fired on calibration z of 3.9, -3.3, 3.1).
    pub fn signed(self, z: f64) -> Self {
        let sign = if z > 0.0 {
            1
        } else if z < 0.0 {
            -1
        } else {
            0
        };
        Self { sign, ..self }
    }

    /// This observation, breaching only if `significant`: an effect size (PSI, JS) on a
    /// large window is measured with a noise floor of its own, which with many categories
    /// and clustered draws reaches the threshold (JS of `item_category`, 50 categories,
    /// about 1 700 impressions a window: 0.10 to 0.13 in stationary traffic).
    pub fn if_significant(self, significant: bool) -> Self {
        Self {
            significant,
            ..self
        }
    }

    /// A statistic where smaller is worse (a p-value).
    pub fn below(statistic: &'static str, value: f64, warning: f64, critical: f64) -> Self {
        Self {
            direction: Direction::Below,
            ..Self::above(statistic, value, warning, critical)
        }
    }

    fn breaches(&self, threshold: f64) -> bool {
        if !self.significant {
            return false;
        }
        match self.direction {
            Direction::Above => self.value > threshold,
            Direction::Below => self.value < threshold,
        }
    }

    /// Whether the value breaches the warning threshold.
    pub fn is_warning(&self) -> bool {
        self.breaches(self.warning_threshold)
    }

    /// Whether the value breaches the critical threshold.
    pub fn is_critical(&self) -> bool {
        self.breaches(self.critical_threshold)
    }
}

/// How many consecutive windows open and close an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertPolicy {
    /// Consecutive windows in breach before firing (K). 3.
    pub fire_after_windows: u32,
    /// Consecutive windows within threshold before resolving. 3.
    pub resolve_after_windows: u32,
}

impl Default for AlertPolicy {
    fn default() -> Self {
        Self {
            fire_after_windows: 3,
            resolve_after_windows: 3,
        }
    }
}

/// Alert severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Over the warning threshold.
    Warning,
    /// Over the critical threshold.
    Critical,
}

impl Severity {
    /// `warning` or `critical`, as serialised.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// Lifecycle state carried by an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    /// The alert opened (or escalated).
    Firing,
    /// The alert closed.
    Resolved,
}

impl AlertState {
    /// `firing` or `resolved`, as serialised.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        }
    }
}

/// An alert event, as published to `shop.alerts` (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertEvent {
    /// Deterministic id, the same for the firing and the resolved event.
    pub id: String,
    /// Firing or resolved.
    pub state: AlertState,
    /// Warning or critical (for a resolved event, the severity it had).
    pub severity: Severity,
    /// What drifted.
    pub kind: DriftKind,
    /// The feature or task.
    pub subject: String,
    /// The scenario, if per scenario.
    pub scenario: Option<String>,
    /// The statistic compared.
    pub statistic: String,
    /// Its value in this window.
    pub value: f64,
    /// The threshold it breached (firing) or the warning threshold it is back within
    /// (resolved).
    pub threshold: f64,
    /// Start of the window that produced this event (epoch ms).
    pub window_start_ms: i64,
    /// Start of the first window of the breach streak that opened the alert (epoch ms).
    pub first_window_ms: i64,
}

/// Per-key state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct KeyState {
    last_window_ms: Option<i64>,
    over: u32,
    under: u32,
    streak_start_ms: i64,
    /// Side of the breaches of the current streak (see [`Observation::sign`]).
    #[serde(default)]
    streak_sign: i8,
    open: Option<AlertEvent>,
}

/// Tracks streaks and open alerts for any number of keys.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AlertTracker {
    policy: AlertPolicy,
    // Written as a list of pairs so the state serialises to JSON too.
    #[serde(with = "shopstream_ingest::serde_entries")]
    keys: BTreeMap<AlertKey, KeyState>,
}

impl AlertTracker {
    /// Takes a new lifecycle policy, keeping streaks and open alerts.
    pub fn set_policy(&mut self, policy: AlertPolicy) {
        self.policy = policy;
    }

    /// An empty tracker.
    pub fn new(policy: AlertPolicy) -> Self {
        Self {
            policy,
            keys: BTreeMap::new(),
        }
    }

    fn state(&mut self, key: &AlertKey) -> &mut KeyState {
        if !self.keys.contains_key(key) {
            self.keys.insert(key.clone(), KeyState::default());
        }
        self.keys.get_mut(key).expect("inserted above")
    }

    /// Feeds one window's value for `key`; returns the event this causes, if any.
    pub fn observe(
        &mut self,
        window_start_ms: i64,
        key: &AlertKey,
        obs: Observation,
    ) -> Option<AlertEvent> {
        if obs.value.is_nan() {
            return None;
        }
        let policy = self.policy;
        let state = self.state(key);
        if state
            .last_window_ms
            .is_some_and(|last| window_start_ms <= last)
        {
            return None;
        }
        state.last_window_ms = Some(window_start_ms);
        let critical = obs.is_critical();
        if obs.is_warning() || critical {
            if state.over > 0 && obs.sign != 0 && obs.sign == -state.streak_sign {
                // A breach on the other side starts a streak of its own.
                state.over = 0;
            }
            if state.over == 0 || state.streak_sign == 0 {
                // (A streak restored from a checkpoint of a version without sides takes
                // the side of its next breach.)
                if state.over == 0 {
                    state.streak_start_ms = window_start_ms;
                }
                state.streak_sign = obs.sign;
            }
            state.over = state.over.saturating_add(1);
            state.under = 0;
            let severity = if critical {
                Severity::Critical
            } else {
                Severity::Warning
            };
            let threshold = if critical {
                obs.critical_threshold
            } else {
                obs.warning_threshold
            };
            match &mut state.open {
                Some(open) => {
                    open.value = obs.value;
                    open.window_start_ms = window_start_ms;
                    if severity > open.severity {
                        open.severity = severity;
                        open.threshold = threshold;
                        return Some(open.clone());
                    }
                    None
                }
                None if state.over >= policy.fire_after_windows.max(1) => {
                    let event = AlertEvent {
                        id: key.id(state.streak_start_ms),
                        state: AlertState::Firing,
                        severity,
                        kind: key.kind,
                        subject: key.subject.clone(),
                        scenario: key.scenario.clone(),
                        statistic: obs.statistic.to_string(),
                        value: obs.value,
                        threshold,
                        window_start_ms,
                        first_window_ms: state.streak_start_ms,
                    };
                    state.open = Some(event.clone());
                    Some(event)
                }
                None => None,
            }
        } else {
            state.under = state.under.saturating_add(1);
            state.over = 0;
            if let Some(open) = &mut state.open {
                open.value = obs.value;
                open.window_start_ms = window_start_ms;
            }
            if state.under >= policy.resolve_after_windows.max(1) {
                let open = state.open.take()?;
                return Some(AlertEvent {
                    state: AlertState::Resolved,
                    statistic: obs.statistic.to_string(),
                    value: obs.value,
                    threshold: obs.warning_threshold,
                    window_start_ms,
                    ..open
                });
            }
            None
        }
    }

    /// The open alerts, with their latest values (for a `shopstream_alerts_firing` gauge
    /// and for listing).
    pub fn firing(&self) -> Vec<AlertEvent> {
        self.keys.values().filter_map(|s| s.open.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> AlertKey {
        AlertKey::new(DriftKind::DataDrift, "price", None)
    }

    fn psi(v: f64) -> Observation {
        Observation::above("psi", v, 0.1, 0.2)
    }

    fn run(values: &[f64]) -> (AlertTracker, Vec<(usize, AlertEvent)>) {
        let mut t = AlertTracker::new(AlertPolicy::default());
        let mut events = Vec::new();
        for (i, v) in values.iter().enumerate() {
            if let Some(e) = t.observe(i as i64 * 60_000, &key(), psi(*v)) {
                events.push((i, e));
            }
        }
        (t, events)
    }

    #[test]
    fn flapping_values_do_not_fire() {
        let values: Vec<f64> = (0..60)
            .map(|i| if i % 3 == 2 { 0.05 } else { 0.15 })
            .collect();
        let (t, events) = run(&values);
        assert!(events.is_empty(), "{events:?}");
        assert!(t.firing().is_empty());
    }

    #[test]
    fn k_windows_over_fire_exactly_once_and_k_under_resolve_once() {
        let mut values = vec![0.01; 5];
        values.extend([0.15; 10]);
        values.extend([0.01, 0.15, 0.01, 0.01, 0.01, 0.01, 0.01]);
        let (t, events) = run(&values);
        assert_eq!(events.len(), 2, "{events:?}");
        let (i, fire) = &events[0];
        assert_eq!(*i, 7);
        assert_eq!(fire.state, AlertState::Firing);
        assert_eq!(fire.severity, Severity::Warning);
        assert_eq!(fire.first_window_ms, 5 * 60_000);
        assert_eq!(fire.window_start_ms, 7 * 60_000);
        assert_eq!(fire.id, "data_drift/price/-/300000");
        assert_eq!(fire.threshold, 0.1);
        // Under at 15, over at 16 (resets the under streak), under from 17: resolves at 19.
        let (i, resolved) = &events[1];
        assert_eq!(*i, 19);
        assert_eq!(resolved.state, AlertState::Resolved);
        assert_eq!(resolved.id, fire.id);
        assert_eq!(resolved.first_window_ms, fire.first_window_ms);
        assert!(t.firing().is_empty());
    }

    #[test]
    fn escalation_re_emits_with_the_same_id_and_firing_lists_open_alerts() {
        let (t, events) = run(&[0.15, 0.15, 0.15, 0.15, 0.3, 0.3, 0.15]);
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(events[0].1.severity, Severity::Warning);
        assert_eq!(events[1].1.severity, Severity::Critical);
        assert_eq!(events[1].1.threshold, 0.2);
        assert_eq!(events[0].1.id, events[1].1.id);
        let open = t.firing();
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].value, 0.15);
        assert_eq!(open[0].severity, Severity::Critical);
        assert_eq!(open[0].window_start_ms, 6 * 60_000);
    }

    fn observe_z(zs: &[f64]) -> Vec<(usize, AlertEvent)> {
        let mut t = AlertTracker::new(AlertPolicy::default());
        let k = AlertKey::new(DriftKind::LabelDrift, "ctr", Some("home_feed".into()));
        let mut events = Vec::new();
        for (i, z) in zs.iter().enumerate() {
            let obs = Observation::above("rate_z", z.abs(), 3.0, 5.0).signed(*z);
            events.extend(t.observe(i as i64 * 60_000, &k, obs).map(|e| (i, e)));
        }
        events
    }

    #[test]
    fn z_breaches_on_alternating_sides_do_not_fire() {
        // The stationary calibration gap that fired before the side was remembered.
        assert!(observe_z(&[0.3, 3.94, -3.28, 3.13, -0.3]).is_empty());
        assert!(observe_z(&[4.0, -4.0, 4.0, -4.0, 4.0, -4.0]).is_empty());
    }

    #[test]
    fn z_breaches_on_one_side_fire_from_the_first_of_them() {
        let events = observe_z(&[0.1, -3.5, 3.2, 3.3, 6.0, -0.2]);
        assert_eq!(events.len(), 1, "{events:?}");
        let (i, fire) = &events[0];
        assert_eq!((*i, fire.severity), (4, Severity::Critical));
        assert_eq!(
            fire.first_window_ms,
            2 * 60_000,
            "the streak restarted at the flip"
        );
        let events = observe_z(&[-3.1, -3.2, -3.3]);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].1.first_window_ms, 0);
    }

    #[test]
    fn an_insignificant_effect_size_breaches_nothing() {
        let mut t = AlertTracker::new(AlertPolicy::default());
        let k = AlertKey::new(DriftKind::DataDrift, "item_category", None);
        for w in 0..6 {
            let obs = Observation::above("js", 0.12, 0.1, 0.2).if_significant(false);
            assert!(!obs.is_warning());
            assert_eq!(t.observe(w * 60_000, &k, obs), None);
        }
        assert!(t.firing().is_empty());
    }

    #[test]
    fn critical_from_the_start_and_p_values_below() {
        let mut t = AlertTracker::new(AlertPolicy::default());
        let k = AlertKey::new(DriftKind::DataDrift, "price", Some("search".into()));
        let mut events = Vec::new();
        for w in 0..3 {
            events.extend(t.observe(w, &k, Observation::below("ks", 1e-5, 0.01, 0.001)));
        }
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].severity, Severity::Critical);
        assert_eq!(events[0].id, "data_drift/price/search/0");
    }

    #[test]
    fn replayed_windows_and_nan_values_do_not_count() {
        let mut t = AlertTracker::new(AlertPolicy::default());
        assert!(t.observe(0, &key(), psi(0.5)).is_none());
        assert!(t.observe(0, &key(), psi(0.5)).is_none());
        assert!(t.observe(0, &key(), psi(0.5)).is_none());
        assert!(t.observe(1, &key(), psi(f64::NAN)).is_none());
        assert!(t.observe(2, &key(), psi(0.5)).is_none());
        let e = t
            .observe(3, &key(), psi(0.5))
            .expect("third distinct window fires");
        assert_eq!(e.first_window_ms, 0);
    }

    #[test]
    fn keys_are_independent_and_events_serialise() {
        let mut t = AlertTracker::new(AlertPolicy {
            fire_after_windows: 1,
            resolve_after_windows: 1,
        });
        let a = AlertKey::new(DriftKind::LabelDrift, "ctr", Some("home_feed".into()));
        let b = AlertKey::new(DriftKind::ModelQuality, "ctr", None);
        let e = t
            .observe(10, &a, Observation::above("rate_z", 4.0, 3.0, 5.0))
            .expect("fires at once with K = 1");
        assert!(
            t.observe(10, &b, Observation::above("adwin", 0.0, 0.1, 0.3))
                .is_none()
        );
        assert_eq!(t.firing().len(), 1);
        let json = serde_json::to_value(&e).expect("serialise");
        assert_eq!(json["state"], "firing");
        assert_eq!(json["kind"], "label_drift");
        assert_eq!(json["severity"], "warning");
        assert_eq!(json["scenario"], "home_feed");
        assert_eq!(json["statistic"], "rate_z");
        assert_eq!(json["id"], "label_drift/ctr/home_feed/10");
        let back: AlertTracker =
            serde_json::from_str(&serde_json::to_string(&t).expect("state")).expect("restore");
        assert_eq!(back, t);
    }
}
