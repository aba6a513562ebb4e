//! The HTML page: which charts the report shows, in which order, and the alert table.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::chart::*;
use super::load::*;
use crate::EARLY_CTR;

pub(super) const STYLE: &str = "
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
pub(super) fn concerns(a: &AlertRow, kind: &str, subjects: &[&str]) -> bool {
    a.kind == kind && (subjects.is_empty() || subjects.contains(&a.subject.as_str()))
}

pub(super) fn markers<'a>(
    alerts: &'a [AlertRow],
    own: impl Fn(&AlertRow) -> bool,
) -> Vec<Marker<'a>> {
    alerts
        .iter()
        .map(|alert| Marker {
            alert,
            own: own(alert),
        })
        .collect()
}

pub(super) fn series_of(map: &BTreeMap<String, Series>) -> Vec<(&str, &Series)> {
    map.iter().map(|(k, v)| (k.as_str(), v)).collect()
}

/// The warning and critical lines of a chart, labelled `"{label} {value}"`.
pub(super) fn band_lines(
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
pub(super) fn point_title(
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
pub(super) fn feature_charts(
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
        note: "each example scored before the model learns from it".into(),
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
