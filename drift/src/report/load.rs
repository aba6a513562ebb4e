//! Reading the `drift`, `metrics` and `alerts` tables over a range into [`ReportData`],
//! and the drift stage's decision per window ([`verdict`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use arrow::array::{Array, Float64Array, Int64Array, StringArray, TimestampMicrosecondArray};
use arrow::record_batch::RecordBatch;
use shopstream_ingest::event::micros_to_ms;
use shopstream_sinks::store::{PARTITION_MS, partition_start_ms};
use shopstream_sinks::tables;

use super::{ReportError, ReportOptions};
use crate::EARLY_CTR;

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
/// from the rows (see `drift/src/monitor.rs`, `feature_decision`).
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

/// Record batches with the file they came from.
pub(super) type Batches = Vec<(PathBuf, RecordBatch)>;

/// The batches of `table`'s committed files whose hour overlaps `[lo, hi)`, with their
/// paths; and the (first, last) hour partition of the whole table.
pub(super) fn read_range(
    root: &Path,
    table: &str,
    lo: i64,
    hi: i64,
) -> Result<(Batches, Option<(i64, i64)>), ReportError> {
    let mut out = Vec::new();
    let mut span: Option<(i64, i64)> = None;
    for file in shopstream_sinks::manifest::live_files(
        &shopstream_sinks::storage::Storage::local(root),
        table,
    )? {
        let start = partition_start_ms(&file.relative);
        if let Some(s) = start {
            span = Some(span.map_or((s, s), |(a, b)| (a.min(s), b.max(s))));
            if s + PARTITION_MS <= lo || s >= hi {
                continue;
            }
        }
        let (_, batches) = shopstream_sinks::read::read_file(&file.path)?;
        out.extend(batches.into_iter().map(|b| (file.path.clone(), b)));
    }
    Ok((out, span))
}

/// Typed column access with an error naming the file.
pub(super) struct Columns<'a> {
    pub(super) path: &'a Path,
    pub(super) batch: &'a RecordBatch,
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

pub(super) fn opt_text(a: &StringArray, row: usize) -> Option<String> {
    a.is_valid(row).then(|| a.value(row).to_string())
}

pub(super) fn opt_float(a: &Float64Array, row: usize) -> Option<f64> {
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
            let at = micros_to_ms(ts.value(row));
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
            let at = micros_to_ms(ts.value(row)) - shift;
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
            let at = micros_to_ms(ts.value(row));
            if !in_range(at) {
                continue;
            }
            data.alerts.push(AlertRow {
                ts_ms: at,
                reported_ms: micros_to_ms(reported.value(row)),
                first_ms: micros_to_ms(first.value(row)),
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
            s.map(|(a, b)| {
                format!(
                    "{t} from {} to {}",
                    format_ms(a),
                    format_ms(b + PARTITION_MS)
                )
            })
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
