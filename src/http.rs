//! The job's HTTP endpoints, on a deliberately tiny HTTP/1.1 server (GET only, one request
//! per connection) so the binary needs no web framework:
//! - `/metrics`: Prometheus text format, rendered from the latest [`Telemetry`];
//! - `/healthz`: 200 while the process serves requests;
//! - `/readyz`: 200 once the job has drained its input backlog at least once and its
//!   consumer lag is within `http.ready_max_lag`, else 503.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::pipeline::RunSummary;

/// What the endpoints report; the processor publishes a fresh one as it goes.
#[derive(Debug, Clone, Default)]
pub struct Telemetry {
    /// Counters of the run so far.
    pub summary: RunSummary,
    /// The features stage's watermark, epoch ms.
    pub watermark_ms: Option<i64>,
    /// Predictions and dead letters acknowledged by the broker so far.
    pub acknowledged: (u64, u64),
    /// Impressions waiting for their labels.
    pub pending_examples: usize,
    /// The input backlog has been drained at least once.
    pub ready: bool,
    /// Latest drift statistics and alert counters (empty when `drift.enabled` is off).
    pub drift: crate::drift::DriftGauges,
    /// Messages behind each input partition's high watermark (librdkafka statistics,
    /// every 5 s).
    pub consumer_lag: BTreeMap<(shopstream_ingest::event::InputTopic, i32), i64>,
}

/// Binds `listen` and serves until `cancel`; returns the bound address.
pub async fn serve(
    listen: &str,
    telemetry: watch::Receiver<Arc<Telemetry>>,
    cancel: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = cancel.cancelled() => return,
                a = listener.accept() => a,
            };
            let Ok((mut stream, _)) = accepted else {
                continue;
            };
            let telemetry = Arc::clone(&telemetry.borrow());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut len = 0;
                while len < buf.len() {
                    match stream.read(&mut buf[len..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => len += n,
                    }
                    if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                let request = String::from_utf8_lossy(&buf[..len]);
                let path = request.split_whitespace().nth(1).unwrap_or("/");
                let (status, content_type, body) = respond(path, &telemetry);
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    Ok((addr, task))
}

fn respond(path: &str, t: &Telemetry) -> (&'static str, &'static str, String) {
    match path {
        "/metrics" => ("200 OK", "text/plain; version=0.0.4", render(t)),
        "/healthz" => ("200 OK", "text/plain", "ok\n".to_string()),
        "/readyz" if t.ready => ("200 OK", "text/plain", "ready\n".to_string()),
        "/readyz" => (
            "503 Service Unavailable",
            "text/plain",
            "catching up\n".to_string(),
        ),
        _ => (
            "404 Not Found",
            "text/plain",
            "try /metrics, /healthz or /readyz\n".to_string(),
        ),
    }
}

/// The Prometheus text exposition of `t`.
pub fn render(t: &Telemetry) -> String {
    let s = &t.summary;
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: Samples| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    family(
        "shopstream_events_consumed_total",
        "counter",
        "Messages consumed per input topic.",
        per("topic", &s.consumed),
    );
    family(
        "shopstream_events_valid_total",
        "counter",
        "Valid events per input topic.",
        per("topic", &s.valid),
    );
    family(
        "shopstream_dead_lettered_total",
        "counter",
        "Messages dead-lettered per reason (late included).",
        per("reason", &s.dead_lettered),
    );
    family(
        "shopstream_duplicates_total",
        "counter",
        "Duplicates suppressed per input topic.",
        per("topic", &s.duplicates),
    );
    family(
        "shopstream_late_total",
        "counter",
        "Events behind the watermark (dead-lettered as late).",
        one(s.dead_lettered.get("late").copied().unwrap_or(0) as f64),
    );
    family(
        "shopstream_watermark_seconds",
        "gauge",
        "Event-time watermark, seconds since the epoch.",
        one(t.watermark_ms.map_or(0.0, |w| w as f64 / 1000.0)),
    );
    family(
        "shopstream_impressions_total",
        "counter",
        "Impressions predicted on arrival.",
        one(s.impressions as f64),
    );
    family(
        "shopstream_predictions_acknowledged_total",
        "counter",
        "Predictions acknowledged by the broker.",
        one(t.acknowledged.0 as f64),
    );
    family(
        "shopstream_dead_letters_acknowledged_total",
        "counter",
        "Dead letters acknowledged by the broker.",
        one(t.acknowledged.1 as f64),
    );
    family(
        "shopstream_examples_written_total",
        "counter",
        "Training examples written to the store.",
        one(s.examples_written as f64),
    );
    family(
        "shopstream_pending_examples",
        "gauge",
        "Impressions waiting for their labels to mature.",
        one(t.pending_examples as f64),
    );
    family(
        "shopstream_windows_closed_total",
        "counter",
        "Event-time windows closed.",
        one(s.windows_closed as f64),
    );
    family(
        "shopstream_examples_per_second",
        "gauge",
        "Examples written per second of wall time, over the run.",
        one(s.examples_written as f64 / (s.elapsed_ms.max(1) as f64 / 1000.0)),
    );
    family(
        "shopstream_prediction_latency_seconds",
        "summary",
        "Consume-to-producer latency of predictions.",
        quantiles(&s.prediction_latency),
    );
    family(
        "shopstream_window_processing_seconds",
        "summary",
        "Time spent on each closed window: features, training, drift, store writes.",
        quantiles(&s.window_processing),
    );
    family(
        "shopstream_consumer_lag_messages",
        "gauge",
        "Messages behind the partition's high watermark (from the consumer's statistics).",
        t.consumer_lag
            .iter()
            .map(|((topic, partition), lag)| {
                (
                    format!("{{topic=\"{}\",partition=\"{partition}\"}}", topic.as_str()),
                    *lag as f64,
                )
            })
            .collect(),
    );
    family(
        "shopstream_model_version",
        "gauge",
        "Windows the model has trained on.",
        one(s.model_version as f64),
    );
    let q = &s.quality;
    family(
        "shopstream_model_prequential_auc",
        "gauge",
        "Prequential AUC over the run, per task.",
        vec![
            ("{task=\"ctr\"}".to_string(), q.ctr_auc),
            ("{task=\"cvr\"}".to_string(), q.cvr_auc),
            ("{task=\"ctcvr\"}".to_string(), q.ctcvr_auc),
        ],
    );
    family(
        "shopstream_model_ctr_log_loss",
        "gauge",
        "Prequential CTR log loss over the run.",
        one(q.ctr_log_loss),
    );
    if let Some(m) = &s.last_window_metrics {
        let mut samples = Vec::new();
        for (task, metrics) in [("ctr", &m.ctr), ("cvr", &m.cvr), ("ctcvr", &m.ctcvr)] {
            if let Some(auc) = metrics.auc {
                samples.push((format!("{{task=\"{task}\",scenario=\"all\"}}"), auc));
            }
        }
        for (scenario, metrics) in &m.ctr_by_scenario {
            if let Some(auc) = metrics.auc {
                samples.push((format!("{{task=\"ctr\",scenario=\"{scenario}\"}}"), auc));
            }
        }
        family(
            "shopstream_model_window_auc",
            "gauge",
            "AUC of the last window, scored before training on it.",
            samples,
        );
    }
    family(
        "shopstream_item_demand_forecasts_total",
        "counter",
        "Item demand forecasts written.",
        one(s.demand_forecasts as f64),
    );
    family(
        "shopstream_stockout_risks_total",
        "counter",
        "Forecasts above the stock on hand.",
        one(s.stockout_risks as f64),
    );
    family(
        "shopstream_ready",
        "gauge",
        "1 once the input backlog has been drained.",
        one(f64::from(u8::from(t.ready))),
    );
    render_drift(&t.drift, &mut family);
    out
}

/// Samples of one family: (label set or name suffix, value).
type Samples = Vec<(String, f64)>;

/// The single unlabelled sample of a family.
fn one(value: f64) -> Samples {
    vec![(String::new(), value)]
}

/// A value of a labelled metric map.
trait SampleValue: Copy {
    fn sample(self) -> f64;
}

impl SampleValue for u64 {
    fn sample(self) -> f64 {
        self as f64
    }
}

impl SampleValue for f64 {
    fn sample(self) -> f64 {
        self
    }
}

/// One sample per entry of `m`, labelled `{label="key"}` (key escaped: the counters' keys,
/// topic and reason names, need none; feature names might).
fn per<V: SampleValue>(label: &str, m: &BTreeMap<String, V>) -> Samples {
    m.iter()
        .map(|(k, v)| (format!("{{{label}=\"{}\"}}", esc(k)), v.sample()))
        .collect()
}

/// One sample per entry of `m`, labelled `{l1="key.0",l2="key.1"}`.
fn per2(l1: &str, l2: &str, m: &BTreeMap<(String, String), f64>) -> Samples {
    m.iter()
        .map(|((a, b), v)| (format!("{{{l1}=\"{}\",{l2}=\"{}\"}}", esc(a), esc(b)), *v))
        .collect()
}

/// A summary family of a latency histogram: median and 99th percentile in seconds, and
/// the count.
fn quantiles(p: &crate::latency::Percentiles) -> Samples {
    vec![
        ("{quantile=\"0.5\"}".to_string(), p.p50_us as f64 / 1e6),
        ("{quantile=\"0.99\"}".to_string(), p.p99_us as f64 / 1e6),
        ("_count".to_string(), p.count as f64),
    ]
}

/// A Prometheus label value: backslash, double quote and newline escaped.
fn esc(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The drift families (see `docs/drift.md` and `deploy/prometheus/shopstream-alerts.yml`).
fn render_drift(d: &crate::drift::DriftGauges, family: &mut impl FnMut(&str, &str, &str, Samples)) {
    family(
        "shopstream_feature_psi",
        "gauge",
        "Population stability index of a continuous feature, latest window vs reference.",
        per("feature", &d.feature_psi),
    );
    family(
        "shopstream_feature_js",
        "gauge",
        "Jensen-Shannon distance of a categorical feature, latest window vs reference.",
        per("feature", &d.feature_js),
    );
    family(
        "shopstream_feature_drift_pvalue",
        "gauge",
        "p-value of the feature's KS or chi-squared test after the design-effect correction.",
        per2("feature", "statistic", &d.feature_pvalue),
    );
    family(
        "shopstream_label_rate_z",
        "gauge",
        "z of a label rate (ctr, cvr; early_ctr: click events per impression on arrival) per scenario vs the reference, design-effect corrected.",
        per2("scenario", "label", &d.label_rate_z),
    );
    family(
        "shopstream_prediction_gap_z",
        "gauge",
        "z of observed minus predicted clicks per scenario on matured examples (calibration gap; label ctr).",
        per2("scenario", "label", &d.prediction_gap_z),
    );
    family(
        "shopstream_model_loss_drift",
        "gauge",
        "Model-quality detectors per task: adwin = relative loss increase, page_hinkley = statistic over its threshold.",
        per2("task", "detector", &d.model_loss_drift),
    );
    family(
        "shopstream_alerts_firing",
        "gauge",
        "Drift alerts open now.",
        one(d.firing.len() as f64),
    );
    family(
        "shopstream_alert_firing",
        "gauge",
        "1 per open drift alert.",
        d.firing
            .iter()
            .map(|a| {
                let severity = a.severity.as_str();
                (
                    format!(
                        "{{kind=\"{}\",subject=\"{}\",scenario=\"{}\",severity=\"{severity}\"}}",
                        a.kind.as_str(),
                        esc(&a.subject),
                        esc(a.scenario.as_deref().unwrap_or(""))
                    ),
                    1.0,
                )
            })
            .collect(),
    );
    family(
        "shopstream_alerts_total",
        "counter",
        "Drift alert events raised, per state (firing includes escalations).",
        ["firing", "resolved"]
            .iter()
            .map(|s| {
                (
                    format!("{{state=\"{s}\"}}"),
                    d.alerts_total.get(*s).copied().unwrap_or(0) as f64,
                )
            })
            .collect(),
    );
    family(
        "shopstream_alerts_published_total",
        "counter",
        "Drift alert events acknowledged by the broker on the alerts topic.",
        one(d.alerts_published as f64),
    );
    family(
        "shopstream_webhook_deliveries_total",
        "counter",
        "Drift alert events the webhook accepted.",
        one(d.webhook_delivered as f64),
    );
    family(
        "shopstream_webhook_failures_total",
        "counter",
        "Drift alert events the webhook did not accept (retries exhausted, refused, queue full).",
        one(d.webhook_failures as f64),
    );
    family(
        "shopstream_drift_windows_total",
        "counter",
        "Windows observed by the drift monitors (arrival and matured).",
        one(d.windows as f64),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_has_help_and_type() {
        let mut t = Telemetry::default();
        t.summary.consumed.insert("clicks".into(), 5);
        let text = render(&t);
        assert!(
            text.contains("shopstream_events_consumed_total{topic=\"clicks\"} 5"),
            "{text}"
        );
        let helps = text.lines().filter(|l| l.starts_with("# HELP")).count();
        let types = text.lines().filter(|l| l.starts_with("# TYPE")).count();
        assert_eq!(helps, types);
        assert!(helps >= 20);
    }

    #[test]
    fn drift_gauges_have_their_labels() {
        use shopstream_trainer::drift::{AlertEvent, AlertState, DriftKind, Severity};
        let mut t = Telemetry::default();
        let d = &mut t.drift;
        d.feature_psi.insert("price".into(), 0.25);
        d.feature_pvalue
            .insert(("device".into(), "chi2".into()), 1e-5);
        d.label_rate_z
            .insert(("home_feed".into(), "ctr".into()), 4.5);
        d.prediction_gap_z
            .insert(("push".into(), "ctr".into()), -3.5);
        d.model_loss_drift
            .insert(("ctr".into(), "adwin".into()), 0.2);
        d.alerts_total.insert("firing".into(), 2);
        d.webhook_failures = 3;
        d.firing.push(AlertEvent {
            id: "x".into(),
            state: AlertState::Firing,
            severity: Severity::Critical,
            kind: DriftKind::LabelDrift,
            subject: "ctr".into(),
            scenario: Some("home_feed".into()),
            statistic: "rate_z".into(),
            value: 6.0,
            threshold: 5.0,
            window_start_ms: 0,
            first_window_ms: 0,
        });
        let text = render(&t);
        for line in [
            "shopstream_feature_psi{feature=\"price\"} 0.25",
            "shopstream_feature_drift_pvalue{feature=\"device\",statistic=\"chi2\"} 0.00001",
            "shopstream_label_rate_z{scenario=\"home_feed\",label=\"ctr\"} 4.5",
            "shopstream_prediction_gap_z{scenario=\"push\",label=\"ctr\"} -3.5",
            "shopstream_model_loss_drift{task=\"ctr\",detector=\"adwin\"} 0.2",
            "shopstream_alerts_firing 1",
            "shopstream_alert_firing{kind=\"label_drift\",subject=\"ctr\",scenario=\"home_feed\",severity=\"critical\"} 1",
            "shopstream_alerts_total{state=\"firing\"} 2",
            "shopstream_alerts_total{state=\"resolved\"} 0",
            "shopstream_webhook_failures_total 3",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing `{line}` in\n{text}"
            );
        }
        assert_eq!(esc("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
