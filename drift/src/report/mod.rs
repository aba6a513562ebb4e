//! The drift report (`shopstream drift report`): one self-contained HTML file, inline SVG
//! plots and inline CSS, no scripts, fonts or other files, so it opens anywhere and can be
//! mailed or attached to a ticket.
//!
//! It reads three store tables over a time range: `drift` (per-window statistics, see
//! [`crate::drift_batch`]), `metrics` (per-window prequential AUC and log loss per
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

use std::path::PathBuf;

use shopstream_sinks::store::StoreError;

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

mod chart;
mod load;
mod page;

pub use chart::{TimeAxis, format_value, time_ticks, value_ticks};
pub use load::{AlertRow, Bands, Judgement, ReportData, Series, Verdict, format_ms, load, verdict};
pub use page::render;

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::chart::*;
    use super::load::*;
    use super::page::*;
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
        use crate::stage::Evidence;
        use crate::tables::{DriftRow, alerts_batch, drift_batch};
        use crate::{AlertEvent, AlertState, DriftKind, Severity};
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
