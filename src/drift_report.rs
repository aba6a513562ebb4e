//! The drift report (`shopstream drift report`): one self-contained HTML file, inline SVG
//! plots and inline CSS, no scripts, fonts or other files, so it opens anywhere and can be
//! mailed or attached to a ticket.
//!
//! It reads three store tables over a time range: `drift` (per-window statistics, see
//! [`crate::drift::drift_batch`]), `metrics` (per-window prequential AUC and log loss per
//! task, written by the job) and `alerts` (alert events), and shows
//!
//! - PSI over time per continuous feature and Jensen-Shannon distance per categorical
//!   feature, with their warning / critical bands, each window marked with the drift
//!   stage's decision ([`verdict`]: breached, over the line but the corrected test not
//!   significant, significant under the line, not judged yet), so a value over the line
//!   without an alert does not read as a missed one;
//! - click-rate z and calibration-gap z per scenario (label and prediction drift);
//! - AUC and log loss per task over time;
//! - alert markers on every time axis (firing red, resolved green; the plot of the alert's
//!   own feature or task gets a shaded span from the start of the breach streak to the
//!   resolution and full-height lines at the events), and a table of the alert events.
//!
//! The time axis is the event time of the impressions a statistic describes, fitted to
//! the data present in the requested range ([`TimeAxis`]). Statistics
//! from matured examples (labels, predictions, losses) become known one maturity (click
//! window + attribution window) later; the `metrics` table is keyed by the window in which
//! the examples matured, so its rows are drawn `metrics_shift_ms` earlier to line up.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use arrow::array::{Array, Float64Array, Int64Array, StringArray, TimestampMicrosecondArray};
use arrow::record_batch::RecordBatch;
use shopstream_sinks::store::{StoreError, partition_start_ms};
use shopstream_sinks::tables;
use shopstream_trainer::drift::EARLY_CTR;

/// What to read.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportOptions {
    /// Store root.
    pub root: PathBuf,
    /// Start of the range (epoch ms, inclusive), event time of the evidence.
    pub from_ms: i64,
    /// End of the range (epoch ms, exclusive).
    pub to_ms: i64,
    /// How much earlier than their `ts` the `metrics` rows are drawn (the label maturity:
    /// click window + attribution window).
    pub metrics_shift_ms: i64,
    /// `drift.small_sample`: windows of a feature with fewer values are decided by the
    /// corrected test alone, larger ones by the effect size gated by that test. The
    /// `drift` table does not record it, so the report takes it from the configuration.
    pub small_sample: usize,
}

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Reading the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A file lacks a column, or has it with another type.
    #[error(
        "{path}: column `{column}` is missing or is not {expected}; was it written by another shopstream version?"
    )]
    Column {
        /// The file.
        path: PathBuf,
        /// The column.
        column: &'static str,
        /// The type expected.
        expected: &'static str,
    },
    /// The range is empty or reversed.
    #[error("--to ({to}) must be after --from ({from})")]
    Range {
        /// --from, formatted.
        from: String,
        /// --to, formatted.
        to: String,
    },
    /// Nothing to show.
    #[error("the store {root} has no drift, metrics or alerts rows from {from} to {to}; {hint}")]
    Empty {
        /// The store root.
        root: PathBuf,
        /// --from, formatted.
        from: String,
        /// --to, formatted.
        to: String,
        /// Where data is, or why there is none.
        hint: String,
    },
}

/// One alert event as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRow {
    /// Window of the evidence (epoch ms).
    pub ts_ms: i64,
    /// Window whose close raised it.
    pub reported_ms: i64,
    /// Start of the breach streak.
    pub first_ms: i64,
    /// Alert id.
    pub id: String,
    /// firing / resolved.
    pub state: String,
    /// warning / critical.
    pub severity: String,
    /// data_drift, label_drift, prediction_drift, model_quality.
    pub kind: String,
    /// Feature or task.
    pub subject: String,
    /// Scenario, if any.
    pub scenario: Option<String>,
    /// Statistic compared.
    pub statistic: String,
    /// Its value.
    pub value: f64,
    /// Threshold breached (firing) or back within (resolved).
    pub threshold: f64,
}

/// A time series: (epoch ms, value), sorted by time.
pub type Series = Vec<(i64, f64)>;

/// What the drift stage knew about one window of a feature besides its effect size (PSI
/// or JS): the `drift` table records no breach flag, so the report rebuilds the decision
/// from the rows (see `trainer/src/drift/monitor.rs`, `feature_decision`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Judgement {
    /// Fewer values than `drift.small_sample`: the corrected test alone decides.
    pub small: bool,
    /// The corrected KS or chi-squared p-value (`ks_p_corrected` / `chi2_p_corrected`);
    /// absent until the test's clustering correction is calibrated, when the window is
    /// not judged at all.
    pub p_corrected: Option<f64>,
    /// The p-value under which the test is significant (the row's `threshold`).
    pub p_warning: Option<f64>,
}

/// How one window of an effect size is drawn: the drift stage's decision for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Counted towards an alert: the corrected test was significant and, on a large
    /// window, the value was over the warning line.
    Breach,
    /// Over the warning line, but the corrected test was not significant: no breach.
    NotSignificant,
    /// The test was significant, but on a large window the value stayed under the warning
    /// line: no breach.
    SignificantUnder,
    /// Over the warning line before the test's correction was calibrated: not judged.
    NotJudged,
    /// Under the line and not significant (or not judged): nothing to mark.
    Quiet,
}

impl Verdict {
    /// The marker's CSS class in the SVG (also its key in the legend).
    pub fn class(self) -> &'static str {
        match self {
            Verdict::Breach => "mark-breach",
            Verdict::NotSignificant => "mark-nosig",
            Verdict::SignificantUnder => "mark-under",
            Verdict::NotJudged => "mark-unjudged",
            Verdict::Quiet => "",
        }
    }

    /// What the marker means, for the legend.
    pub fn meaning(self) -> &'static str {
        match self {
            Verdict::Breach => "breached (test significant): counts towards an alert",
            Verdict::NotSignificant => "above the line but test not significant: no breach",
            Verdict::SignificantUnder => "test significant, under the line: no breach",
            Verdict::NotJudged => "test not calibrated yet: not judged",
            Verdict::Quiet => "",
        }
    }
}

/// The drift stage's decision for a window whose effect size is `value` against the
/// warning line `warning` (strictly above breaches, as in the alert tracker).
pub fn verdict(value: f64, warning: f64, judgement: Option<&Judgement>) -> Verdict {
    let above = value > warning;
    let Some((p, p_warning)) = judgement.and_then(|j| j.p_corrected.zip(j.p_warning)) else {
        return if above {
            Verdict::NotJudged
        } else {
            Verdict::Quiet
        };
    };
    let significant = p < p_warning;
    let small = judgement.is_some_and(|j| j.small);
    match (significant, above) {
        (true, _) if small => Verdict::Breach,
        (true, true) => Verdict::Breach,
        (true, false) => Verdict::SignificantUnder,
        (false, true) => Verdict::NotSignificant,
        (false, false) => Verdict::Quiet,
    }
}

/// Warning and critical bands of the plotted statistics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bands {
    /// PSI (warning, critical).
    pub psi: (f64, f64),
    /// Jensen-Shannon distance.
    pub js: (f64, f64),
    /// |z| of label rates.
    pub rate_z: (f64, f64),
    /// |z| of the calibration gap.
    pub gap_z: (f64, f64),
}

impl Default for Bands {
    /// The thresholds of the default `[drift]` configuration.
    fn default() -> Self {
        let c = shopstream_config::DriftConfig::default();
        Self {
            psi: (c.psi_warning, c.psi_critical),
            js: (c.js_warning, c.js_critical),
            rate_z: (c.rate_z_warning, c.rate_z_critical),
            gap_z: (c.gap_z_warning, c.gap_z_critical),
        }
    }
}

/// Everything the report shows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReportData {
    /// Range start (epoch ms).
    pub from_ms: i64,
    /// Range end (epoch ms, exclusive).
    pub to_ms: i64,
    /// See [`ReportOptions::metrics_shift_ms`].
    pub metrics_shift_ms: i64,
    /// PSI per continuous feature.
    pub psi: BTreeMap<String, Series>,
    /// Jensen-Shannon distance per categorical feature.
    pub js: BTreeMap<String, Series>,
    /// Per feature of `psi` and `js`, per window: how the drift stage judged it.
    pub judgements: BTreeMap<String, BTreeMap<i64, Judgement>>,
    /// Click-rate z per scenario (matured labels).
    pub ctr_z: BTreeMap<String, Series>,
    /// Early click-rate z per scenario (click events per impression on arrival).
    pub early_ctr_z: BTreeMap<String, Series>,
    /// Calibration-gap z per scenario.
    pub gap_z: BTreeMap<String, Series>,
    /// AUC per task (all scenarios), at the impressions' window.
    pub auc: BTreeMap<String, Series>,
    /// Log loss per task (all scenarios), at the impressions' window.
    pub log_loss: BTreeMap<String, Series>,
    /// Alert events whose evidence window is in the range, by report time.
    pub alerts: Vec<AlertRow>,
    /// Threshold bands, as stored with the statistics.
    pub bands: Bands,
    /// Distinct windows with drift rows.
    pub drift_windows: usize,
}

const HOUR_MS: i64 = 3_600_000;

/// Record batches with the file they came from.
type Batches = Vec<(PathBuf, RecordBatch)>;

/// The batches of `table`'s committed files whose hour overlaps `[lo, hi)`, with their
/// paths; and the (first, last) hour partition of the whole table.
fn read_range(
    root: &Path,
    table: &str,
    lo: i64,
    hi: i64,
) -> Result<(Batches, Option<(i64, i64)>), ReportError> {
    let mut out = Vec::new();
    let mut span: Option<(i64, i64)> = None;
    for file in shopstream_sinks::manifest::live_files(root, table)? {
        let start = partition_start_ms(&file.relative);
        if let Some(s) = start {
            span = Some(span.map_or((s, s), |(a, b)| (a.min(s), b.max(s))));
            if s + HOUR_MS <= lo || s >= hi {
                continue;
            }
        }
        let (_, batches) = shopstream_sinks::read::read_file(&file.path)?;
        out.extend(batches.into_iter().map(|b| (file.path.clone(), b)));
    }
    Ok((out, span))
}

/// Typed column access with an error naming the file.
struct Columns<'a> {
    path: &'a Path,
    batch: &'a RecordBatch,
}

impl<'a> Columns<'a> {
    fn get<T: 'static>(
        &self,
        column: &'static str,
        expected: &'static str,
    ) -> Result<&'a T, ReportError> {
        self.batch
            .column_by_name(column)
            .and_then(|c| c.as_any().downcast_ref::<T>())
            .ok_or_else(|| ReportError::Column {
                path: self.path.to_path_buf(),
                column,
                expected,
            })
    }
    fn ts(&self, column: &'static str) -> Result<&'a TimestampMicrosecondArray, ReportError> {
        self.get(column, "a UTC microsecond timestamp")
    }
    fn text(&self, column: &'static str) -> Result<&'a StringArray, ReportError> {
        self.get(column, "text")
    }
    fn float(&self, column: &'static str) -> Result<&'a Float64Array, ReportError> {
        self.get(column, "a 64-bit float")
    }
}

fn opt_text(a: &StringArray, row: usize) -> Option<String> {
    a.is_valid(row).then(|| a.value(row).to_string())
}

fn opt_float(a: &Float64Array, row: usize) -> Option<f64> {
    a.is_valid(row)
        .then(|| a.value(row))
        .filter(|v| v.is_finite())
}

/// UTC `YYYY-MM-DD HH:MM`.
pub fn format_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_else(|| ms.to_string())
}

/// Reads the range from the store.
pub fn load(options: &ReportOptions) -> Result<ReportData, ReportError> {
    let (from, to) = (options.from_ms, options.to_ms);
    if to <= from {
        return Err(ReportError::Range {
            from: format_ms(from),
            to: format_ms(to),
        });
    }
    let root = &options.root;
    let mut data = ReportData {
        from_ms: from,
        to_ms: to,
        metrics_shift_ms: options.metrics_shift_ms,
        ..ReportData::default()
    };
    let in_range = |ts: i64| (from..to).contains(&ts);
    let small_sample = i64::try_from(options.small_sample).unwrap_or(i64::MAX);

    let (drift, drift_span) = read_range(root, tables::DRIFT, from, to)?;
    let mut windows = BTreeSet::new();
    let mut bands_seen = BTreeSet::new();
    for (path, batch) in &drift {
        let c = Columns { path, batch };
        let (ts, kind, subject, scenario) = (
            c.ts("ts")?,
            c.text("kind")?,
            c.text("subject")?,
            c.text("scenario")?,
        );
        let (statistic, value) = (c.text("statistic")?, c.float("value")?);
        let (threshold, critical) = (c.float("threshold")?, c.float("critical")?);
        let n = c.get::<Int64Array>("n", "a 64-bit integer")?;
        for row in 0..batch.num_rows() {
            let at = ts.value(row) / 1000;
            if !in_range(at) {
                continue;
            }
            windows.insert(at);
            let v = value.value(row);
            if !v.is_finite() {
                continue;
            }
            let band = opt_float(threshold, row).zip(opt_float(critical, row));
            let test = matches!(statistic.value(row), "ks_p_corrected" | "chi2_p_corrected");
            let effect = matches!(statistic.value(row), "psi" | "js");
            if kind.value(row) == "data_drift" && (test || effect) {
                let j = data
                    .judgements
                    .entry(subject.value(row).to_string())
                    .or_default()
                    .entry(at)
                    .or_default();
                if effect {
                    // The effect size's row carries the window's number of values.
                    j.small = n.value(row) < small_sample;
                } else {
                    j.p_corrected = Some(v);
                    j.p_warning = opt_float(threshold, row);
                }
            }
            let scenario = opt_text(scenario, row).unwrap_or_default();
            let (target, name, band_slot) = match (kind.value(row), statistic.value(row)) {
                ("data_drift", "psi") => (&mut data.psi, subject.value(row).to_string(), 0),
                ("data_drift", "js") => (&mut data.js, subject.value(row).to_string(), 1),
                ("label_drift", "rate_z") if subject.value(row) == "ctr" => {
                    (&mut data.ctr_z, scenario, 2)
                }
                ("label_drift", "rate_z") if subject.value(row) == EARLY_CTR => {
                    (&mut data.early_ctr_z, scenario, 2)
                }
                ("prediction_drift", "ctr_gap_z") => (&mut data.gap_z, scenario, 3),
                _ => continue,
            };
            target.entry(name).or_default().push((at, v));
            if let Some(b) = band
                && bands_seen.insert(band_slot)
            {
                match band_slot {
                    0 => data.bands.psi = b,
                    1 => data.bands.js = b,
                    2 => data.bands.rate_z = b,
                    _ => data.bands.gap_z = b,
                }
            }
        }
    }
    data.drift_windows = windows.len();

    let shift = options.metrics_shift_ms;
    let (metrics, metrics_span) = read_range(root, tables::METRICS, from + shift, to + shift)?;
    for (path, batch) in &metrics {
        let c = Columns { path, batch };
        let (ts, task, scenario) = (c.ts("ts")?, c.text("task")?, c.text("scenario")?);
        let (auc, log_loss) = (c.float("auc")?, c.float("log_loss")?);
        let n = c.get::<Int64Array>("n", "a 64-bit integer")?;
        for row in 0..batch.num_rows() {
            let at = ts.value(row) / 1000 - shift;
            let t = task.value(row);
            if !in_range(at) || scenario.value(row) != "all" || t == "demand" || n.value(row) == 0 {
                continue;
            }
            if let Some(a) = opt_float(auc, row) {
                data.auc.entry(t.to_string()).or_default().push((at, a));
            }
            if let Some(l) = opt_float(log_loss, row) {
                data.log_loss
                    .entry(t.to_string())
                    .or_default()
                    .push((at, l));
            }
        }
    }

    let (alerts, alerts_span) = read_range(root, tables::ALERTS, from, to)?;
    for (path, batch) in &alerts {
        let c = Columns { path, batch };
        let (ts, reported, first) = (c.ts("ts")?, c.ts("reported_at")?, c.ts("first_window")?);
        let text = |name| c.text(name);
        let (id, state, severity, kind) = (
            text("id")?,
            text("state")?,
            text("severity")?,
            text("kind")?,
        );
        let (subject, scenario, statistic) =
            (text("subject")?, text("scenario")?, text("statistic")?);
        let (value, threshold) = (c.float("value")?, c.float("threshold")?);
        for row in 0..batch.num_rows() {
            let at = ts.value(row) / 1000;
            if !in_range(at) {
                continue;
            }
            data.alerts.push(AlertRow {
                ts_ms: at,
                reported_ms: reported.value(row) / 1000,
                first_ms: first.value(row) / 1000,
                id: id.value(row).to_string(),
                state: state.value(row).to_string(),
                severity: severity.value(row).to_string(),
                kind: kind.value(row).to_string(),
                subject: subject.value(row).to_string(),
                scenario: opt_text(scenario, row),
                statistic: statistic.value(row).to_string(),
                value: value.value(row),
                threshold: threshold.value(row),
            });
        }
    }
    // Files are read hour by hour and compaction merges windows: put time back in order.
    for series in [
        &mut data.psi,
        &mut data.js,
        &mut data.ctr_z,
        &mut data.early_ctr_z,
        &mut data.gap_z,
        &mut data.auc,
        &mut data.log_loss,
    ] {
        for points in series.values_mut() {
            points.sort_by_key(|p| p.0);
        }
    }
    data.alerts
        .sort_by(|a, b| (a.reported_ms, a.ts_ms, &a.id).cmp(&(b.reported_ms, b.ts_ms, &b.id)));

    let nothing = data.drift_windows == 0 && data.auc.is_empty() && data.log_loss.is_empty();
    if nothing && data.alerts.is_empty() {
        let spans: Vec<String> = [
            (tables::DRIFT, drift_span),
            (tables::METRICS, metrics_span),
            (tables::ALERTS, alerts_span),
        ]
        .into_iter()
        .filter_map(|(t, s)| {
            s.map(|(a, b)| format!("{t} from {} to {}", format_ms(a), format_ms(b + HOUR_MS)))
        })
        .collect();
        let hint = if spans.is_empty() {
            "the store has none of these tables: run the job (drift.enabled = true) with store.path pointing here, or pass --store".to_string()
        } else {
            format!("the store holds {}", spans.join(", "))
        };
        return Err(ReportError::Empty {
            root: root.clone(),
            from: format_ms(from),
            to: format_ms(to),
            hint,
        });
    }
    Ok(data)
}

/// HTML-escapes text.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A number for people: 4 significant digits, tiny p-values in scientific notation.
pub fn format_value(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    if v == 0.0 {
        return "0".to_string();
    }
    if v.abs() < 1e-3 {
        return format!("{v:.2e}");
    }
    let digits = (3 - v.abs().log10().floor() as i32).clamp(0, 6) as usize;
    let text = format!("{v:.digits$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

/// Time-axis ticks: a round step giving at most about `max_ticks` ticks.
pub fn time_ticks(from_ms: i64, to_ms: i64, max_ticks: i64) -> Vec<i64> {
    const MINUTE: i64 = 60_000;
    let steps = [
        MINUTE,
        2 * MINUTE,
        5 * MINUTE,
        10 * MINUTE,
        15 * MINUTE,
        30 * MINUTE,
        HOUR_MS,
        2 * HOUR_MS,
        3 * HOUR_MS,
        6 * HOUR_MS,
        12 * HOUR_MS,
        24 * HOUR_MS,
        2 * 24 * HOUR_MS,
        7 * 24 * HOUR_MS,
    ];
    let span = (to_ms - from_ms).max(1);
    let step = steps
        .iter()
        .copied()
        .find(|s| span / s <= max_ticks.max(1))
        .unwrap_or((span + max_ticks.max(1) - 1) / max_ticks.max(1));
    let first = from_ms.div_euclid(step) * step;
    let first = if first < from_ms { first + step } else { first };
    (0..)
        .map(|i| first + i * step)
        .take_while(|t| *t <= to_ms)
        .collect()
}

/// Value-axis ticks: a 1-2-5 step with about five ticks covering `[lo, hi]`.
pub fn value_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = (hi - lo).abs();
    if !(span.is_finite() && span > 0.0) {
        return vec![lo];
    }
    let raw = span / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| span / s <= 6.0)
        .unwrap_or(10.0 * magnitude);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|i| i as f64 * step).collect()
}

/// The time axis shared by every chart: the span of the data actually present (windows
/// with rows, alert streaks), clipped to the requested range. A week asked for over three
/// hours of data would otherwise squeeze every line into a sliver at the left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeAxis {
    /// Left edge (epoch ms).
    pub from_ms: i64,
    /// Right edge (epoch ms).
    pub to_ms: i64,
}

impl TimeAxis {
    /// The axis for `data`: from its first to its last window, within
    /// `[data.from_ms, data.to_ms)`; the requested range when there is no data.
    pub fn fit(data: &ReportData) -> Self {
        let (from, to) = (data.from_ms, data.to_ms);
        let series = [
            &data.psi,
            &data.js,
            &data.ctr_z,
            &data.early_ctr_z,
            &data.gap_z,
            &data.auc,
            &data.log_loss,
        ];
        let points = series
            .into_iter()
            .flat_map(|m| m.values())
            .flat_map(|s| s.iter().map(|p| p.0));
        // An alert's streak may start before its first plotted window.
        let alerts = data.alerts.iter().flat_map(|a| [a.first_ms, a.ts_ms]);
        let span = points
            .chain(alerts)
            .map(|t| t.clamp(from, (to - 1).max(from)))
            .fold(None, |span: Option<(i64, i64)>, t| {
                Some(span.map_or((t, t), |(a, b)| (a.min(t), b.max(t))))
            });
        match span {
            None => Self {
                from_ms: from,
                to_ms: to,
            },
            // One window: half an hour either side, so it is not a point on a line.
            Some((a, b)) if b - a < 60_000 => Self {
                from_ms: (a - HOUR_MS / 2).max(from),
                to_ms: (b + HOUR_MS / 2).min(to),
            },
            Some((a, b)) => Self {
                from_ms: a,
                to_ms: b,
            },
        }
    }

    /// Where `ms` falls across the axis, 0 (left edge) to 1 (right edge), clamped.
    pub fn fraction(&self, ms: i64) -> f64 {
        let span = (self.to_ms - self.from_ms).max(1) as f64;
        ((ms - self.from_ms) as f64 / span).clamp(0.0, 1.0)
    }
}

const PALETTE: [&str; 8] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f",
];
const FIRING: &str = "#d62728";
const RESOLVED: &str = "#2ca02c";

/// An alert shown on a chart.
#[derive(Clone)]
struct Marker<'a> {
    alert: &'a AlertRow,
    /// A full-height line (the alert concerns this chart) rather than a tick.
    own: bool,
}

/// One chart.
#[derive(Clone)]
struct Chart<'a> {
    title: String,
    note: String,
    series: Vec<(&'a str, &'a Series)>,
    /// Horizontal reference lines: value, label.
    bands: Vec<(f64, String)>,
    /// Mirror the bands below zero (z scores).
    symmetric: bool,
    /// Keep zero on the axis.
    from_zero: bool,
    markers: Vec<Marker<'a>>,
    /// Windows of an effect size marked with the drift stage's decision (feature charts).
    points: Vec<PointMark>,
    wide: bool,
}

/// A window of an effect size drawn with a marker saying how it was judged.
#[derive(Clone)]
struct PointMark {
    ts: i64,
    value: f64,
    verdict: Verdict,
    /// Tooltip: the value, the test and the decision.
    title: String,
}

/// The SVG shape of a verdict's marker at (`x`, `y`), with a tooltip. Shapes differ, not
/// only colours, so the picture reads in grey print and for colour-blind readers.
fn point_marker(out: &mut String, verdict: Verdict, x: f64, y: f64, title: &str) {
    let class = verdict.class();
    let title = esc(title);
    let _ = match verdict {
        Verdict::Breach => write!(
            out,
            "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3.6\" class=\"{class}\"><title>{title}</title></circle>"
        ),
        Verdict::NotSignificant => write!(
            out,
            "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3\" class=\"{class}\"><title>{title}</title></circle>"
        ),
        Verdict::SignificantUnder => write!(
            out,
            "<path d=\"M{x:.1},{:.1} L{:.1},{y:.1} L{x:.1},{:.1} L{:.1},{y:.1} Z\" class=\"{class}\"><title>{title}</title></path>",
            y - 4.0,
            x + 4.0,
            y + 4.0,
            x - 4.0
        ),
        Verdict::NotJudged => write!(
            out,
            "<path d=\"M{:.1},{:.1} L{:.1},{:.1} M{:.1},{:.1} L{:.1},{:.1}\" class=\"{class}\"><title>{title}</title></path>",
            x - 3.0,
            y - 3.0,
            x + 3.0,
            y + 3.0,
            x - 3.0,
            y + 3.0,
            x + 3.0,
            y - 3.0
        ),
        Verdict::Quiet => Ok(()),
    };
}

fn render_chart(out: &mut String, chart: &Chart<'_>, axis: &TimeAxis) {
    let width = if chart.wide { 1120.0 } else { 540.0 };
    let height = 240.0;
    let (left, right, top, bottom) = (58.0, 26.0, 12.0, 56.0);
    let plot_w = width - left - right;
    let plot_h = height - top - bottom;
    let values = chart
        .series
        .iter()
        .flat_map(|(_, s)| s.iter().map(|p| p.1))
        .filter(|v| v.is_finite());
    let (mut lo, mut hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    for (band, _) in &chart.bands {
        hi = hi.max(*band);
        if chart.symmetric {
            lo = lo.min(-band);
        }
    }
    if chart.from_zero || chart.symmetric {
        lo = lo.min(0.0);
        hi = hi.max(0.0);
    }
    if !lo.is_finite() || !hi.is_finite() {
        (lo, hi) = (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        (lo, hi) = (lo - 0.5, hi + 0.5);
    }
    let pad = (hi - lo) * 0.06;
    let (lo, hi) = (
        if chart.from_zero && lo >= 0.0 {
            lo
        } else {
            lo - pad
        },
        hi + pad,
    );
    let x = |ms: i64| left + plot_w * axis.fraction(ms);
    let y = |v: f64| top + plot_h * (1.0 - (v - lo) / (hi - lo));

    let _ = write!(
        out,
        "<figure class=\"{}\"><figcaption>{}<span class=\"note\">{}</span></figcaption>",
        if chart.wide { "wide" } else { "half" },
        esc(&chart.title),
        esc(&chart.note)
    );
    let _ = write!(
        out,
        "<svg viewBox=\"0 0 {width} {height}\" role=\"img\" aria-label=\"{}\">",
        esc(&chart.title)
    );
    let _ = write!(
        out,
        "<rect x=\"{left}\" y=\"{top}\" width=\"{plot_w}\" height=\"{plot_h}\" class=\"plot\"/>"
    );
    // This chart's own alerts as spans, behind the data: from the first window of the
    // breach streak to the window that resolved it, or to the right edge while open.
    let mut spans: BTreeMap<&str, (i64, Option<i64>, &AlertRow)> = BTreeMap::new();
    for m in chart.markers.iter().filter(|m| m.own) {
        let span = spans
            .entry(m.alert.id.as_str())
            .or_insert((m.alert.first_ms, None, m.alert));
        if m.alert.state == "resolved" {
            span.1 = Some(m.alert.ts_ms);
        }
    }
    for (start, end, alert) in spans.values() {
        let (x0, x1) = (x(*start), x(end.unwrap_or(axis.to_ms)));
        let _ = write!(
            out,
            "<rect x=\"{x0:.1}\" y=\"{top}\" width=\"{:.1}\" height=\"{plot_h}\" class=\"alert-span\"><title>{}</title></rect>",
            (x1 - x0).max(2.0),
            esc(&format!(
                "alert {}{} ({}): breach from {} to {}",
                alert.subject,
                alert
                    .scenario
                    .as_deref()
                    .map(|s| format!(" / {s}"))
                    .unwrap_or_default(),
                alert.statistic,
                format_ms(*start),
                end.map_or("the end (still open)".to_string(), format_ms)
            ))
        );
    }
    for v in value_ticks(lo, hi) {
        let yy = y(v);
        let _ = write!(
            out,
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" class=\"grid\"/><text x=\"{}\" y=\"{:.1}\" class=\"ytick\">{}</text>",
            left + plot_w,
            left - 6.0,
            yy + 4.0,
            esc(&format_value(v))
        );
    }
    let ticks = time_ticks(axis.from_ms, axis.to_ms, if chart.wide { 12 } else { 7 });
    // Times on one row, the date on a second row under the first tick of each day: a
    // date and time on one row ran into the next label on half-hourly ticks.
    let mut last_day = String::new();
    for t in ticks {
        let xx = x(t);
        let stamp = format_ms(t);
        let (day, time) = stamp.split_at(10.min(stamp.len()));
        // A label at an edge would run past the plot: it ends (starts) there instead.
        let anchor = if xx > left + plot_w - 30.0 {
            " style=\"text-anchor:end\""
        } else if xx < left + 30.0 {
            " style=\"text-anchor:start\""
        } else {
            ""
        };
        let _ = write!(
            out,
            "<line x1=\"{xx:.1}\" x2=\"{xx:.1}\" y1=\"{top}\" y2=\"{}\" class=\"grid\"/><text x=\"{xx:.1}\" y=\"{}\" class=\"xtick\"{anchor}>{}</text>",
            top + plot_h,
            top + plot_h + 14.0,
            esc(time.trim())
        );
        if day != last_day {
            let _ = write!(
                out,
                "<text x=\"{xx:.1}\" y=\"{}\" class=\"xdate\"{anchor}>{}</text>",
                top + plot_h + 26.0,
                esc(day)
            );
            last_day = day.to_string();
        }
    }
    for (i, (band, label)) in chart.bands.iter().enumerate() {
        let class = if i == 0 { "warn" } else { "crit" };
        let mirrored = if chart.symmetric {
            vec![*band, -band]
        } else {
            vec![*band]
        };
        for b in mirrored {
            let yy = y(b);
            let _ = write!(
                out,
                "<line x1=\"{left}\" x2=\"{}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" class=\"{class}\"/>",
                left + plot_w
            );
        }
        let _ = write!(
            out,
            "<text x=\"{}\" y=\"{:.1}\" class=\"bandlabel {class}text\">{}</text>",
            left + plot_w - 4.0,
            y(*band) - 3.0,
            esc(label)
        );
    }
    if chart.symmetric {
        let _ = write!(
            out,
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{:.1}\" y2=\"{:.1}\" class=\"zero\"/>",
            left + plot_w,
            y(0.0),
            y(0.0)
        );
    }
    for (i, (_, points)) in chart.series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        // A gap of more than three typical steps breaks the line (no data there).
        let mut steps: Vec<i64> = points.windows(2).map(|w| w[1].0 - w[0].0).collect();
        steps.sort_unstable();
        let typical = steps.get(steps.len() / 2).copied().unwrap_or(60_000).max(1);
        let mut run: Vec<String> = Vec::new();
        let flush = |run: &mut Vec<String>, out: &mut String| {
            if run.len() == 1 {
                let _ = write!(
                    out,
                    "<circle cx=\"{}\" r=\"2\" fill=\"{color}\"/>",
                    run[0].replace(',', "\" cy=\"")
                );
            } else if run.len() > 1 {
                let _ = write!(
                    out,
                    "<polyline points=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\"/>",
                    run.join(" ")
                );
            }
            run.clear();
        };
        let mut previous: Option<i64> = None;
        for (ts, v) in points.iter().filter(|p| p.1.is_finite()) {
            if previous.is_some_and(|p| ts - p > 3 * typical) {
                flush(&mut run, out);
            }
            run.push(format!("{:.1},{:.1}", x(*ts), y(*v)));
            previous = Some(*ts);
        }
        flush(&mut run, out);
    }
    for p in &chart.points {
        point_marker(out, p.verdict, x(p.ts), y(p.value), &p.title);
    }
    // Alerts: a tick under the axis for every alert, a line through the plot for this
    // chart's own.
    let strip = top + plot_h + 33.0;
    for m in &chart.markers {
        let color = if m.alert.state == "resolved" {
            RESOLVED
        } else {
            FIRING
        };
        let xx = x(m.alert.ts_ms);
        let title = esc(&format!(
            "{} {} {} {}{} at {} ({} = {})",
            m.alert.state,
            m.alert.severity,
            m.alert.kind,
            m.alert.subject,
            m.alert
                .scenario
                .as_deref()
                .map(|s| format!(" / {s}"))
                .unwrap_or_default(),
            format_ms(m.alert.ts_ms),
            m.alert.statistic,
            format_value(m.alert.value)
        ));
        if m.own {
            let _ = write!(
                out,
                "<line x1=\"{xx:.1}\" x2=\"{xx:.1}\" y1=\"{top}\" y2=\"{}\" stroke=\"{color}\" stroke-width=\"1.2\" stroke-dasharray=\"4 3\"><title>{title}</title></line>",
                top + plot_h
            );
        }
        let (tip, base) = if m.alert.state == "resolved" {
            (strip + 8.0, strip)
        } else {
            (strip, strip + 8.0)
        };
        let _ = write!(
            out,
            "<path d=\"M{:.1},{base:.1} L{:.1},{base:.1} L{xx:.1},{tip:.1} Z\" fill=\"{color}\" opacity=\"{}\"><title>{title}</title></path>",
            xx - 4.5,
            xx + 4.5,
            if m.own { 1.0 } else { 0.35 }
        );
    }
    out.push_str("</svg>");
    if chart.series.iter().any(|(_, s)| !s.is_empty()) {
        out.push_str("<div class=\"legend\">");
        for (i, (name, _)) in chart.series.iter().enumerate() {
            let _ = write!(
                out,
                "<span><i style=\"background:{}\"></i>{}</span>",
                PALETTE[i % PALETTE.len()],
                esc(name)
            );
        }
        for verdict in [
            Verdict::Breach,
            Verdict::NotSignificant,
            Verdict::SignificantUnder,
            Verdict::NotJudged,
        ] {
            let count = chart.points.iter().filter(|p| p.verdict == verdict).count();
            if count > 0 {
                let _ = write!(
                    out,
                    "<span><b class=\"key {}\"></b>{} ({count})</span>",
                    verdict.class(),
                    verdict.meaning()
                );
            }
        }
        out.push_str("</div>");
    } else {
        out.push_str("<div class=\"legend empty\">no values in this range</div>");
    }
    out.push_str("</figure>");
}

const STYLE: &str = "
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1160px;color:#222;background:#fff;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
p{margin:4px 0 8px;line-height:1.45}.muted{color:#666;font-size:13px}
.summary{display:flex;flex-wrap:wrap;gap:10px;margin:12px 0}
.summary div{border:1px solid #ddd;border-radius:6px;padding:8px 12px;min-width:120px}
.summary b{display:block;font-size:20px}
.grid2{display:flex;flex-wrap:wrap;gap:16px 20px}
figure{margin:0}figure.half{width:calc(50% - 10px)}figure.wide{width:100%}
figcaption{font-weight:600;font-size:14px;margin-bottom:2px}
figcaption .note{font-weight:400;color:#666;font-size:12px;margin-left:8px}
svg{width:100%;height:auto;display:block}
.plot{fill:#fcfcfc;stroke:#ccc}.grid{stroke:#eee}.zero{stroke:#999}
.warn{stroke:#e6a700;stroke-dasharray:6 3}.crit{stroke:#d62728;stroke-dasharray:6 3}
.warntext{fill:#b38300}.crittext{fill:#d62728}
text{font-size:11px;fill:#555}.ytick{text-anchor:end}.xtick,.xdate{text-anchor:middle}.xdate{fill:#888;font-size:10px}.bandlabel{text-anchor:end;font-size:10px}
.legend{font-size:12px;color:#444;margin-top:2px}.legend span{margin-right:14px;white-space:nowrap}
.legend i{display:inline-block;width:12px;height:3px;margin-right:4px;vertical-align:middle}
.legend.empty{color:#999}
.alert-span{fill:#d62728;fill-opacity:.09}
.mark-breach{fill:#d62728;stroke:#7f1010;stroke-width:1}.mark-nosig{fill:#fff;stroke:#666;stroke-width:1.2}
.mark-under{fill:#6a3d9a}.mark-unjudged{fill:none;stroke:#999;stroke-width:1.4}
.key{display:inline-block;box-sizing:border-box;width:9px;height:9px;margin-right:4px;vertical-align:middle}
.key.mark-breach{background:#d62728;border:1px solid #7f1010;border-radius:50%}
.key.mark-nosig{background:#fff;border:1.5px solid #666;border-radius:50%}
.key.mark-under{background:#6a3d9a;width:8px;height:8px;transform:rotate(45deg)}
.key.mark-unjudged{width:auto;height:auto;color:#999;font-weight:700}.key.mark-unjudged::before{content:'\\00d7'}
.key.span{width:14px;background:rgba(214,39,40,.15);border:1px solid rgba(214,39,40,.3)}
table{border-collapse:collapse;width:100%;font-size:12.5px}
th,td{border-bottom:1px solid #e4e4e4;padding:4px 6px;text-align:left;vertical-align:top}
th{background:#f5f5f5;position:sticky;top:0}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}td.time{white-space:nowrap}
.badge{display:inline-block;border-radius:3px;padding:0 5px;color:#fff;font-size:11.5px}
.firing{background:#d62728}.resolved{background:#2ca02c}.critical{color:#d62728;font-weight:600}
code{font-size:11.5px;color:#555;word-break:break-all}
";

/// Whether `a` concerns a chart about `kind` and one of `subjects` (any if empty).
fn concerns(a: &AlertRow, kind: &str, subjects: &[&str]) -> bool {
    a.kind == kind && (subjects.is_empty() || subjects.contains(&a.subject.as_str()))
}

fn markers<'a>(alerts: &'a [AlertRow], own: impl Fn(&AlertRow) -> bool) -> Vec<Marker<'a>> {
    alerts
        .iter()
        .map(|alert| Marker {
            alert,
            own: own(alert),
        })
        .collect()
}

fn series_of(map: &BTreeMap<String, Series>) -> Vec<(&str, &Series)> {
    map.iter().map(|(k, v)| (k.as_str(), v)).collect()
}

/// The warning and critical lines of a chart, labelled `"{label} {value}"`.
fn band_lines(
    (warning, critical): (f64, f64),
    (warning_label, critical_label): (&str, &str),
) -> Vec<(f64, String)> {
    vec![
        (
            warning,
            format!("{warning_label} {}", format_value(warning)),
        ),
        (
            critical,
            format!("{critical_label} {}", format_value(critical)),
        ),
    ]
}

/// The tooltip of a marked window: its value, the test and the decision.
fn point_title(
    ts: i64,
    label: &str,
    value: f64,
    judgement: Option<&Judgement>,
    verdict: Verdict,
) -> String {
    let test = match judgement.and_then(|j| j.p_corrected.zip(j.p_warning)) {
        Some((p, warning)) => format!(
            "; corrected test p = {} ({} {}){}",
            format_value(p),
            if p < warning { "<" } else { ">=" },
            format_value(warning),
            if judgement.is_some_and(|j| j.small) {
                "; small window: the test decides"
            } else {
                ""
            }
        ),
        None => String::new(),
    };
    format!(
        "{} {label} = {}{test}: {}",
        format_ms(ts),
        format_value(value),
        verdict.meaning()
    )
}

/// One chart per feature of an effect-size statistic (PSI, Jensen-Shannon), with its
/// warning and critical bands, each window marked with the drift stage's decision (see
/// [`verdict`]) and the data-drift alerts of that feature marked.
/// `labels`: (series label, chart note, text when there are no values).
fn feature_charts(
    out: &mut String,
    data: &ReportData,
    axis: &TimeAxis,
    values: &BTreeMap<String, Series>,
    labels: (&str, &str, &str),
    bands: (f64, f64),
) {
    let (series_label, note, empty) = labels;
    if values.is_empty() {
        let _ = write!(out, "<p class=\"muted\">{empty}</p>");
    }
    for (feature, series) in values {
        let judgements = data.judgements.get(feature);
        let points = series
            .iter()
            .filter_map(|&(ts, value)| {
                let judgement = judgements.and_then(|j| j.get(&ts));
                let verdict = verdict(value, bands.0, judgement);
                (verdict != Verdict::Quiet).then(|| PointMark {
                    ts,
                    value,
                    verdict,
                    title: point_title(ts, series_label, value, judgement, verdict),
                })
            })
            .collect();
        let chart = Chart {
            title: feature.clone(),
            note: note.into(),
            series: vec![(series_label, series)],
            bands: band_lines(bands, ("warning", "critical")),
            symmetric: false,
            from_zero: true,
            markers: markers(&data.alerts, |a| concerns(a, "data_drift", &[feature])),
            points,
            wide: false,
        };
        render_chart(out, &chart, axis);
    }
}

/// The report as one HTML document.
pub fn render(data: &ReportData) -> String {
    let (from, to) = (data.from_ms, data.to_ms);
    let axis = TimeAxis::fit(data);
    let mut out = String::with_capacity(64 * 1024);
    let fired = data.alerts.iter().filter(|a| a.state == "firing").count();
    let resolved = data.alerts.iter().filter(|a| a.state == "resolved").count();
    // Open at the end of the range: the last event of the id is a firing one.
    let mut last: BTreeMap<&str, &AlertRow> = BTreeMap::new();
    for a in &data.alerts {
        last.insert(&a.id, a);
    }
    let open = last.values().filter(|a| a.state == "firing").count();
    let _ = write!(
        out,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>shopstream drift report {} to {}</title><style>{STYLE}</style></head><body>",
        esc(&format_ms(from)),
        esc(&format_ms(to))
    );
    let _ = write!(
        out,
        "<h1>shopstream drift report</h1><p class=\"muted\">{} to {} UTC (event time) &middot; generated {} UTC</p>",
        esc(&format_ms(from)),
        esc(&format_ms(to)),
        esc(&format_ms(chrono::Utc::now().timestamp_millis()))
    );
    if (axis.from_ms, axis.to_ms) != (from, to) {
        let _ = write!(
            out,
            "<p class=\"muted\">Data from {} to {} UTC: the time axes span the data present in the range.</p>",
            esc(&format_ms(axis.from_ms)),
            esc(&format_ms(axis.to_ms))
        );
    }
    let _ = write!(
        out,
        "<div class=\"summary\"><div><b>{}</b>windows with drift statistics</div><div><b>{fired}</b>alerts fired</div><div><b>{resolved}</b>alerts resolved</div><div><b>{open}</b>open at the end</div><div><b>{}</b>features monitored</div></div>",
        data.drift_windows,
        data.psi.len() + data.js.len()
    );
    let shift_min = data.metrics_shift_ms / 60_000;
    let _ = write!(
        out,
        "<p class=\"muted\">Time axes show the event time of the impressions each value describes. Values computed from matured examples (item features, labels, predictions, losses, AUC) become known {shift_min} minutes later, when their labels mature. Alert markers under every time axis: <span style=\"color:{FIRING}\">&#9650; firing</span>, <span style=\"color:{RESOLVED}\">&#9660; resolved</span> (hover for details). On the chart of the alert's own feature, label or task, <b class=\"key span\"></b>a shaded span runs from the first window of its breach streak to the window that resolved it (to the right edge while it is open), with dashed lines at the firing and resolved events. Dashed horizontal lines are the warning (amber) and critical (red) thresholds.</p>"
    );

    let b = data.bands;
    out.push_str(
        "<h2>Data drift: continuous features (PSI against the reference)</h2><p class=\"muted\">PSI and Jensen-Shannon are effect sizes and read high on small windows (a few hundred values spread over many bins or categories). Windows with fewer values than drift.small_sample are decided by the KS or chi-squared test instead, corrected for clustering; the bands apply to larger windows, where a value over a band counts only if that test is significant too. Device and new_user count each user once per window.</p>",
    );
    let _ = write!(
        out,
        "<p class=\"muted\">Every window is marked with the drift stage's decision, so the picture agrees with the alerts (K windows in breach in a row fire one): <b class=\"key {}\"></b>{}; <b class=\"key {}\"></b>{}; <b class=\"key {}\"></b>{}; <b class=\"key {}\"></b>{} (the first windows of a run). Windows without a marker are under the warning line and not significant. Windows under drift.small_sample values are decided by the test alone: there a value above the line without a significant test is no breach, and a significant test is one below the line.</p><div class=\"grid2\">",
        Verdict::Breach.class(),
        Verdict::Breach.meaning(),
        Verdict::NotSignificant.class(),
        Verdict::NotSignificant.meaning(),
        Verdict::SignificantUnder.class(),
        Verdict::SignificantUnder.meaning(),
        Verdict::NotJudged.class(),
        Verdict::NotJudged.meaning(),
    );
    feature_charts(
        &mut out,
        data,
        &axis,
        &data.psi,
        (
            "PSI",
            "population stability index",
            "No PSI values in this range.",
        ),
        b.psi,
    );
    out.push_str("</div>");

    out.push_str(
        "<h2>Data drift: categorical features (Jensen-Shannon distance)</h2><div class=\"grid2\">",
    );
    feature_charts(
        &mut out,
        data,
        &axis,
        &data.js,
        (
            "JS distance",
            "Jensen-Shannon distance, base 2",
            "No Jensen-Shannon values in this range.",
        ),
        b.js,
    );
    out.push_str("</div>");

    out.push_str("<h2>Label and prediction drift per scenario</h2><div class=\"grid2\">");
    let label = Chart {
        title: "Click rate vs reference".into(),
        note: "matured labels; two-proportion z, design-effect corrected".into(),
        series: series_of(&data.ctr_z),
        bands: band_lines(b.rate_z, ("|z|", "|z|")),
        symmetric: true,
        from_zero: false,
        markers: markers(&data.alerts, |a| {
            a.kind == "label_drift" && a.subject != EARLY_CTR
        }),
        points: Vec::new(),
        wide: false,
    };
    render_chart(&mut out, &label, &axis);
    let early = Chart {
        title: "Early click rate vs reference".into(),
        note: "click events per impression on arrival; z as above".into(),
        series: series_of(&data.early_ctr_z),
        markers: markers(&data.alerts, |a| {
            a.kind == "label_drift" && a.subject == EARLY_CTR
        }),
        ..label.clone()
    };
    render_chart(&mut out, &early, &axis);
    let gap = Chart {
        title: "Calibration gap".into(),
        note: "z of observed minus predicted clicks".into(),
        series: series_of(&data.gap_z),
        bands: band_lines(b.gap_z, ("|z|", "|z|")),
        symmetric: true,
        from_zero: false,
        markers: markers(&data.alerts, |a| a.kind == "prediction_drift"),
        points: Vec::new(),
        wide: false,
    };
    render_chart(&mut out, &gap, &axis);
    out.push_str("</div>");

    out.push_str(
        "<h2>Model quality per task (prequential, all scenarios)</h2><div class=\"grid2\">",
    );
    let auc = Chart {
        title: "AUC".into(),
        note: "scored before training on the window".into(),
        series: series_of(&data.auc),
        bands: Vec::new(),
        symmetric: false,
        from_zero: false,
        markers: markers(&data.alerts, |a| a.kind == "model_quality"),
        points: Vec::new(),
        wide: false,
    };
    render_chart(&mut out, &auc, &axis);
    let loss = Chart {
        title: "Log loss".into(),
        note: "mean per example".into(),
        series: series_of(&data.log_loss),
        from_zero: true,
        ..auc
    };
    render_chart(&mut out, &loss, &axis);
    out.push_str("</div>");

    let _ = write!(out, "<h2>Alert events ({})</h2>", data.alerts.len());
    if data.alerts.is_empty() {
        out.push_str("<p>No alert fired or resolved in this range.</p>");
    } else {
        out.push_str("<table><thead><tr><th>Reported</th><th>Evidence window</th><th>State</th><th>Severity</th><th>Kind</th><th>Feature / task</th><th>Scenario</th><th>Statistic</th><th>Value</th><th>Threshold</th><th>Breach since</th><th>Id</th></tr></thead><tbody>");
        for a in &data.alerts {
            let _ = write!(
                out,
                "<tr><td class=\"time\">{}</td><td class=\"time\">{}</td><td><span class=\"badge {}\">{}</span></td><td class=\"{}\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"time\">{}</td><td><code>{}</code></td></tr>",
                esc(&format_ms(a.reported_ms)),
                esc(&format_ms(a.ts_ms)),
                if a.state == "resolved" {
                    "resolved"
                } else {
                    "firing"
                },
                esc(&a.state),
                esc(&a.severity),
                esc(&a.severity),
                esc(&a.kind),
                esc(&a.subject),
                esc(a.scenario.as_deref().unwrap_or("")),
                esc(&a.statistic),
                esc(&format_value(a.value)),
                esc(&format_value(a.threshold)),
                esc(&format_ms(a.first_ms)),
                esc(&a.id)
            );
        }
        out.push_str("</tbody></table>");
    }
    out.push_str("<p class=\"muted\">Statistics and thresholds: docs/drift.md. Made by <code>shopstream drift report</code>.</p></body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_767_571_200_000;
    const MIN: i64 = 60_000;

    fn alert(ts: i64, state: &str, kind: &str, subject: &str) -> AlertRow {
        AlertRow {
            ts_ms: ts,
            reported_ms: ts,
            first_ms: ts - 2 * MIN,
            id: format!("{kind}/{subject}/-/{}", ts - 2 * MIN),
            state: state.into(),
            severity: "critical".into(),
            kind: kind.into(),
            subject: subject.into(),
            scenario: None,
            statistic: "ks".into(),
            value: 1e-7,
            threshold: 0.001,
        }
    }

    fn sample() -> ReportData {
        let line =
            |f: &dyn Fn(i64) -> f64| -> Series { (0..120).map(|i| (T0 + i * MIN, f(i))).collect() };
        let mut d = ReportData {
            from_ms: T0,
            to_ms: T0 + 120 * MIN,
            metrics_shift_ms: 40 * MIN,
            drift_windows: 120,
            ..ReportData::default()
        };
        d.psi
            .insert("price".into(), line(&|i| if i >= 60 { 0.9 } else { 0.02 }));
        d.psi.insert("position".into(), line(&|_| 0.01));
        d.js.insert("device <&>".into(), line(&|_| 0.03));
        d.ctr_z
            .insert("home_feed".into(), line(&|i| (i % 7) as f64 - 3.0));
        d.auc.insert("ctr".into(), line(&|_| 0.7));
        d.log_loss.insert("ctr".into(), Vec::new());
        let fired = alert(T0 + 62 * MIN, "firing", "data_drift", "price");
        let resolved = AlertRow {
            id: fired.id.clone(),
            first_ms: fired.first_ms,
            ..alert(T0 + 90 * MIN, "resolved", "data_drift", "price")
        };
        d.alerts = vec![fired, resolved];
        d
    }

    #[test]
    fn the_report_is_one_self_contained_document() {
        let html = render(&sample());
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.ends_with("</html>\n"));
        for external in ["<script", "<link", "http://", "https://", "@import", "url("] {
            assert!(!html.contains(external), "found {external}");
        }
        // 2 PSI + 1 JS + label + early label + gap + AUC + loss charts.
        assert_eq!(html.matches("<svg ").count(), 8);
        assert!(html.contains("device &lt;&amp;&gt;"), "names are escaped");
        assert!(!html.contains("device <&>"));
        // Alert markers: a dashed line on price's own plot (firing and resolved), ticks
        // on the others; the table lists both events.
        assert_eq!(html.matches("stroke-dasharray=\"4 3\"").count(), 2);
        assert!(html.contains("<span class=\"badge firing\">firing</span>"));
        assert!(html.contains("<span class=\"badge resolved\">resolved</span>"));
        assert!(html.contains("data_drift/price/-/"));
        assert!(
            html.contains("no values in this range"),
            "empty series say so"
        );
        assert!(html.contains("<b>1</b>alerts fired"));
        assert!(html.contains("<b>0</b>open at the end"));
    }

    /// The x coordinates of the first polyline after `anchor` in `html`.
    fn polyline_xs(html: &str, anchor: &str) -> Vec<f64> {
        let from = html.find(anchor).expect("anchor");
        let start = html[from..].find("<polyline points=\"").expect("polyline") + from + 18;
        let end = html[start..].find('"').expect("end of points") + start;
        html[start..end]
            .split(' ')
            .map(|p| p.split(',').next().expect("x").parse().expect("number"))
            .collect()
    }

    #[test]
    fn the_time_axis_spans_the_data_not_the_requested_range() {
        // 3.5 h of windows, 2 h into a requested day.
        let start = T0 + 2 * HOUR_MS;
        let line: Series = (0..210).map(|i| (start + i * MIN, 0.05)).collect();
        let mut d = ReportData {
            from_ms: T0,
            to_ms: T0 + 24 * HOUR_MS,
            drift_windows: 210,
            ..ReportData::default()
        };
        d.psi.insert("price".into(), line.clone());
        d.auc.insert("ctr".into(), line);
        let html = render(&d);
        // Half-width charts: plot from x = 58 to 58 + 456.
        let (left, right) = (58.0, 58.0 + 456.0);
        for anchor in ["aria-label=\"price\"", "aria-label=\"AUC\""] {
            let xs = polyline_xs(&html, anchor);
            assert_eq!(xs.len(), 210);
            let (first, last) = (xs[0], xs[xs.len() - 1]);
            assert!(
                first - left < 0.02 * 456.0,
                "{anchor}: first point at x = {first}"
            );
            assert!(
                right - last < 0.02 * 456.0,
                "{anchor}: last point at x = {last}"
            );
        }
        // Readable ticks: half-hourly or hourly, a handful per chart, not 24 crammed
        // into the left 15 %.
        let price = &html[html.find("aria-label=\"price\"").expect("price")..];
        let price = &price[..price.find("</svg>").expect("svg end")];
        let ticks = price.matches("class=\"xtick\"").count();
        assert!((3..=8).contains(&ticks), "{ticks} ticks");
        assert!(html.contains("Data from 2026-01-05 02:00 to 2026-01-05 05:29"));
        // Still clipped to the requested range: an alert streak that began before it.
        d.alerts = vec![alert(T0 + 3 * HOUR_MS, "firing", "data_drift", "price")];
        d.alerts[0].first_ms = T0 - HOUR_MS;
        let axis = TimeAxis::fit(&d);
        assert_eq!((axis.from_ms, axis.to_ms), (T0, start + 209 * MIN));
    }

    #[test]
    fn markers_say_which_windows_breached_and_which_tests_were_significant() {
        let mut d = ReportData {
            from_ms: T0,
            to_ms: T0 + 10 * MIN,
            drift_windows: 6,
            ..ReportData::default()
        };
        let large = |p: Option<f64>| Judgement {
            small: false,
            p_corrected: p,
            p_warning: Some(0.01),
        };
        // (JS, judgement) per window; warning line 0.1, critical 0.2.
        let windows = [
            (0.25, large(Some(0.3))),   // over both lines, test not significant
            (0.25, large(Some(0.001))), // over the line and significant: breach
            (0.05, large(Some(0.001))), // significant, under the line
            (0.25, large(None)),        // test not calibrated yet
            (0.05, large(Some(0.5))),   // nothing to mark
            (
                0.05, // small window: the significant test decides alone
                Judgement {
                    small: true,
                    ..large(Some(0.002))
                },
            ),
        ];
        d.js.insert(
            "item_category".into(),
            (0..6)
                .map(|i| (T0 + i * MIN, windows[i as usize].0))
                .collect(),
        );
        d.judgements.insert(
            "item_category".into(),
            (0..6)
                .map(|i| (T0 + i * MIN, windows[i as usize].1))
                .collect(),
        );
        let html = render(&d);
        let chart = &html[html.find("aria-label=\"item_category\"").expect("chart")..];
        let chart = &chart[..chart.find("</figure>").expect("figure end")];
        let svg = &chart[..chart.find("</svg>").expect("svg end")];
        assert_eq!(svg.matches("class=\"mark-breach\"").count(), 2, "{svg}");
        assert_eq!(svg.matches("class=\"mark-nosig\"").count(), 1);
        assert_eq!(svg.matches("class=\"mark-under\"").count(), 1);
        assert_eq!(svg.matches("class=\"mark-unjudged\"").count(), 1);
        // The not significant window over the line says why it is no breach.
        assert!(svg.contains(
            "2026-01-05 00:00 JS distance = 0.25; corrected test p = 0.3 (&gt;= 0.01): above the line but test not significant: no breach"
        ));
        // The first breach is window 1 of 0..=5: a fifth across the 456 px plot.
        let breach = svg.find("class=\"mark-breach\"").expect("breach marker");
        assert!(svg[..breach].contains("<circle cx=\"149.2\""), "{svg}");
        // The legend explains the markers with their counts.
        assert!(chart.contains("above the line but test not significant: no breach (1)"));
        assert!(chart.contains("breached (test significant): counts towards an alert (2)"));
        assert_eq!(
            verdict(0.25, 0.1, Some(&large(Some(0.01)))),
            Verdict::NotSignificant
        );
        assert_eq!(
            verdict(0.1, 0.1, Some(&large(Some(0.0)))),
            Verdict::SignificantUnder
        );
        assert_eq!(verdict(0.05, 0.1, None), Verdict::Quiet);
    }

    #[test]
    fn an_alert_is_a_span_on_its_own_chart() {
        let html = render(&sample());
        // price fired at +62 min (streak from +60) and resolved at +90: one span, on
        // price's chart only.
        assert_eq!(html.matches("class=\"alert-span\"").count(), 1);
        let price = &html[html.find("aria-label=\"price\"").expect("price")..];
        let price = &price[..price.find("</svg>").expect("svg end")];
        assert!(
            price.contains("alert price (ks): breach from 2026-01-05 01:00 to 2026-01-05 01:30")
        );
        // An open alert runs to the right edge.
        let mut open = sample();
        open.alerts.truncate(1);
        let html = render(&open);
        assert!(html.contains("to the end (still open)"));
    }

    #[test]
    fn a_gap_in_the_data_breaks_the_line() {
        let mut d = sample();
        let series: Series = (0..10)
            .chain(50..60)
            .map(|i| (T0 + i * MIN, 0.05))
            .collect();
        d.psi = BTreeMap::from([("price".to_string(), series)]);
        d.js.clear();
        let mut out = String::new();
        let chart = Chart {
            title: "price".into(),
            note: String::new(),
            series: vec![("PSI", &d.psi["price"])],
            bands: vec![(0.1, "w".into())],
            symmetric: false,
            from_zero: true,
            markers: Vec::new(),
            points: Vec::new(),
            wide: false,
        };
        let axis = TimeAxis {
            from_ms: d.from_ms,
            to_ms: d.to_ms,
        };
        render_chart(&mut out, &chart, &axis);
        assert_eq!(out.matches("<polyline").count(), 2, "{out}");
    }

    #[test]
    fn ticks_are_round() {
        let t = time_ticks(T0 + 7 * MIN, T0 + 6 * HOUR_MS, 8);
        assert_eq!(t.first(), Some(&(T0 + HOUR_MS)));
        assert_eq!(t.len(), 6);
        assert!(t.windows(2).all(|w| w[1] - w[0] == HOUR_MS));
        assert_eq!(
            value_ticks(0.0, 1.0),
            [0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]
        );
        assert_eq!(value_ticks(-5.0, 5.0), [-4.0, -2.0, 0.0, 2.0, 4.0]);
        assert_eq!(value_ticks(2.0, 2.0), [2.0]);
        assert_eq!(format_value(0.123456), "0.1235");
        assert_eq!(format_value(12.5), "12.5");
        assert_eq!(format_value(3e-7), "3.00e-7");
        assert_eq!(format_value(0.0), "0");
        assert_eq!(format_ms(T0 + 90 * MIN), "2026-01-05 01:30");
    }

    #[test]
    fn load_reads_the_store_tables_in_range_and_explains_an_empty_one() {
        use crate::drift::{DriftRow, Evidence, alerts_batch, drift_batch};
        use shopstream_trainer::drift::{AlertEvent, AlertState, DriftKind, Severity};
        let dir = tempfile::tempdir().expect("tempdir");
        let store = shopstream_sinks::store::ParquetStore::open(&shopstream_config::StoreConfig {
            path: dir.path().to_path_buf(),
            ..Default::default()
        })
        .expect("store");
        let none = BTreeMap::new();
        let offsets = BTreeMap::new();
        for i in 0..90 {
            let ts = T0 + i * MIN;
            let psi = DriftRow {
                ts_ms: ts,
                reported_ms: ts,
                evidence: Evidence::Arrival,
                kind: DriftKind::DataDrift,
                subject: "price".into(),
                scenario: None,
                statistic: "psi",
                value: 0.01 * i as f64,
                threshold: Some(0.15),
                critical: Some(0.3),
                n: 500,
            };
            let p = DriftRow {
                statistic: "ks_p_corrected",
                value: 0.5,
                threshold: Some(0.01),
                critical: Some(0.001),
                ..psi.clone()
            };
            let rows = vec![psi, p];
            let batch = drift_batch(&rows).expect("batch");
            store
                .write("drift", &format!("window-{ts}"), &batch, &none, &offsets)
                .expect("write drift");
            let metrics = shopstream_trainer::WindowMetrics {
                examples: 100,
                ctr: shopstream_trainer::metrics::BinaryMetrics {
                    n: 100,
                    auc: Some(0.5 + 0.001 * i as f64),
                    log_loss: 0.2,
                    ..Default::default()
                },
                ..Default::default()
            };
            let batch = shopstream_trainer::metrics::metrics_batch(ts, ts + MIN, 1, &metrics)
                .expect("metrics batch");
            store
                .write("metrics", &format!("window-{ts}"), &batch, &none, &offsets)
                .expect("write metrics");
        }
        let event = AlertEvent {
            id: "data_drift/price/-/1".into(),
            state: AlertState::Firing,
            severity: Severity::Warning,
            kind: DriftKind::DataDrift,
            subject: "price".into(),
            scenario: None,
            statistic: "psi".into(),
            value: 0.2,
            threshold: 0.15,
            window_start_ms: T0 + 30 * MIN,
            first_window_ms: T0 + 28 * MIN,
        };
        let batch = alerts_batch(T0 + 30 * MIN, &[event]).expect("alerts batch");
        store
            .write("alerts", "window-x", &batch, &none, &offsets)
            .expect("write alerts");

        let options = ReportOptions {
            root: dir.path().to_path_buf(),
            from_ms: T0 + 10 * MIN,
            to_ms: T0 + 70 * MIN,
            metrics_shift_ms: 20 * MIN,
            small_sample: 1000,
        };
        let data = load(&options).expect("load");
        assert_eq!(data.drift_windows, 60);
        let psi = &data.psi["price"];
        assert_eq!(psi.first(), Some(&(T0 + 10 * MIN, 0.1)));
        assert_eq!(data.bands.psi, (0.15, 0.3));
        // 500 values < small_sample: the test decides; its corrected p-value is kept.
        assert_eq!(
            data.judgements["price"].get(&(T0 + 10 * MIN)),
            Some(&Judgement {
                small: true,
                p_corrected: Some(0.5),
                p_warning: Some(0.01),
            })
        );
        // Metrics rows at ts are drawn at ts - 20 min: rows 30..90 fall in the range.
        let auc = &data.auc["ctr"];
        assert_eq!(auc.len(), 60);
        assert_eq!(auc[0].0, T0 + 10 * MIN);
        assert!((auc[0].1 - 0.53).abs() < 1e-12);
        assert_eq!(data.alerts.len(), 1);
        assert_eq!(data.alerts[0].first_ms, T0 + 28 * MIN);
        assert!(render(&data).contains("<b>1</b>alerts fired"));

        let err = load(&ReportOptions {
            from_ms: T0 + 30 * HOUR_MS,
            to_ms: T0 + 31 * HOUR_MS,
            ..options.clone()
        })
        .expect_err("empty range");
        let text = err.to_string();
        assert!(
            text.contains("drift from 2026-01-05 00:00 to 2026-01-05 02:00"),
            "{text}"
        );
        let err = load(&ReportOptions {
            to_ms: options.from_ms,
            ..options
        })
        .expect_err("reversed");
        assert!(err.to_string().contains("must be after"));
    }
}
