//! The Prometheus text exposition of the job's [`Telemetry`]: one family per metric,
//! each with its `# HELP` and `# TYPE`, labels escaped.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::Telemetry;
use crate::latency::Histogram;

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
        "shopstream_build_info",
        "gauge",
        "1, labelled with the version of the running binary.",
        vec![(
            format!("{{version=\"{}\"}}", esc(env!("CARGO_PKG_VERSION"))),
            1.0,
        )],
    );
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
        "shopstream_prediction_latency_seconds",
        "histogram",
        "Consume-to-producer latency of predictions, since the process started.",
        histogram(&t.prediction_latency),
    );
    family(
        "shopstream_window_processing_seconds",
        "histogram",
        "Time spent on each closed window (features, training, drift, store writes), since the process started.",
        histogram(&t.window_processing),
    );
    family(
        "shopstream_partition_owned",
        "gauge",
        "1 for each input partition this instance is assigned (consumer-group ownership).",
        t.owned_partitions
            .iter()
            .map(|(topic, partition)| {
                (
                    format!("{{topic=\"{}\",partition=\"{partition}\"}}", topic.as_str()),
                    1.0,
                )
            })
            .collect(),
    );
    family(
        "shopstream_role",
        "gauge",
        "1 for each role this instance holds: shard (its partitions) and global (training, drift, store files; in a group, only the trainer lease holder); `threads` says how the global stage runs.",
        std::iter::once(("{role=\"shard\"}".to_string(), 1.0))
            .chain(t.global_role.then(|| {
                (
                    format!("{{role=\"global\",threads=\"{}\"}}", t.global_stage_threads),
                    1.0,
                )
            }))
            .collect(),
    );
    if let Some(delay) = t.model_broadcast_delay_ms {
        family(
            "shopstream_model_broadcast_delay_seconds",
            "gauge",
            "In a group: time from the coordinator broadcasting the serving model to this instance taking it (the model broadcast delay).",
            one(delay as f64 / 1_000.0),
        );
    }
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
    family(
        "shopstream_serving_model_version",
        "gauge",
        "Version of the model predictions are served with (with pipeline.workers >= 2, the newest the global stage published).",
        one(t.serving_model_version as f64),
    );
    family(
        "shopstream_serving_model_lag_windows",
        "gauge",
        "Windows the serving model is behind the trained one: the model broadcast delay (0 on a group instance that does not train; see shopstream_model_broadcast_delay_seconds).",
        one(s.model_version.saturating_sub(t.serving_model_version) as f64),
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
            "AUC of the last window, each example scored before the model learned from it.",
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
        "1 when /readyz answers 200: the input backlog drained (one instance), or in a group every partition held read to its end (and the inventory, on the lease holder).",
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

/// The samples of a histogram family: cumulative `_bucket{le}` per bound in seconds, then
/// `+Inf`, `_sum` (seconds) and `_count`.
fn histogram(h: &Histogram) -> Samples {
    let mut samples: Samples = h
        .cumulative_buckets()
        .map(|(bound, count)| {
            (
                format!("_bucket{{le=\"{}\"}}", bound.as_secs_f64()),
                count as f64,
            )
        })
        .collect();
    samples.push(("_bucket{le=\"+Inf\"}".to_string(), h.count() as f64));
    samples.push(("_sum".to_string(), h.sum().as_secs_f64()));
    samples.push(("_count".to_string(), h.count() as f64));
    samples
}

/// A Prometheus label value: backslash, double quote and newline escaped.
pub(super) fn esc(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The drift families (see `docs/drift.md` and `deploy/prometheus/shopstream-alerts.yml`).
fn render_drift(
    d: &shopstream_drift::stage::DriftGauges,
    family: &mut impl FnMut(&str, &str, &str, Samples),
) {
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
