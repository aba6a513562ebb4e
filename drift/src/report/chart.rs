//! SVG building blocks: number and time formatting, axis ticks, and one time-series
//! chart with bands, verdict markers and alert marks.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::load::{AlertRow, ReportData, Series, Verdict, format_ms};

/// One hour in ms (tick steps and marker spans).
pub(super) const HOUR_MS: i64 = 3_600_000;

/// HTML-escapes text.
pub(super) fn esc(text: &str) -> String {
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

pub(super) const PALETTE: [&str; 8] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f",
];
pub(super) const FIRING: &str = "#d62728";
pub(super) const RESOLVED: &str = "#2ca02c";

/// An alert shown on a chart.
#[derive(Clone)]
pub(super) struct Marker<'a> {
    pub(super) alert: &'a AlertRow,
    /// A full-height line (the alert concerns this chart) rather than a tick.
    pub(super) own: bool,
}

/// One chart.
#[derive(Clone)]
pub(super) struct Chart<'a> {
    pub(super) title: String,
    pub(super) note: String,
    pub(super) series: Vec<(&'a str, &'a Series)>,
    /// Horizontal reference lines: value, label.
    pub(super) bands: Vec<(f64, String)>,
    /// Mirror the bands below zero (z scores).
    pub(super) symmetric: bool,
    /// Keep zero on the axis.
    pub(super) from_zero: bool,
    pub(super) markers: Vec<Marker<'a>>,
    /// Windows of an effect size marked with the drift stage's decision (feature charts).
    pub(super) points: Vec<PointMark>,
    pub(super) wide: bool,
}

/// A window of an effect size drawn with a marker saying how it was judged.
#[derive(Clone)]
pub(super) struct PointMark {
    pub(super) ts: i64,
    pub(super) value: f64,
    pub(super) verdict: Verdict,
    /// Tooltip: the value, the test and the decision.
    pub(super) title: String,
}

/// The SVG shape of a verdict's marker at (`x`, `y`), with a tooltip. Shapes differ, not
/// only colours, so the picture reads in grey print and for colour-blind readers.
pub(super) fn point_marker(out: &mut String, verdict: Verdict, x: f64, y: f64, title: &str) {
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

pub(super) fn render_chart(out: &mut String, chart: &Chart<'_>, axis: &TimeAxis) {
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
