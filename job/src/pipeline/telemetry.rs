//! What the job tells about itself while it runs: [`Progress`] on a `watch` channel, the
//! [`Telemetry`] behind `/metrics` and `/readyz`, and the [`RunSummary`] at its end.

use std::sync::Arc;

use shopstream_kafka::source::SharedLag;
use tokio::sync::watch;

use super::Progress;
use super::global_worker::GlobalView;
use crate::http::Telemetry;
use crate::latency::{Histogram, PREDICTION_LATENCY_BOUNDS};
use crate::summary::RunSummary;

/// The rest of the job as the reporter sees it at one moment.
pub(super) struct JobView<'a> {
    /// The shard side's counters.
    pub(super) summary: &'a RunSummary,
    /// The global stage: its counters, the model, drift gauges, window times.
    pub(super) global: GlobalView,
    /// Version of the model predictions are served with.
    pub(super) serving_model_version: u64,
    /// Input partitions assigned to this instance.
    pub(super) owned_partitions: Vec<(shopstream_ingest::event::InputTopic, i32)>,
    /// How the global stage runs (`inline` or `own` thread).
    pub(super) global_stage_threads: &'static str,
    /// Predictions acknowledged by the broker.
    pub(super) predictions_delivered: u64,
    /// Dead letters acknowledged by the broker.
    pub(super) dead_letters_delivered: u64,
    /// The event-time watermark.
    pub(super) watermark_ms: Option<i64>,
    /// Examples waiting for their labels.
    pub(super) pending_examples: usize,
}

/// The channels and timers of a run's self-report.
pub(super) struct Reporter {
    progress: watch::Sender<Progress>,
    telemetry: watch::Sender<Arc<Telemetry>>,
    http_addr: Option<std::net::SocketAddr>,
    /// The input backlog has been drained at least once.
    drained_once: bool,
    /// Messages consumed when [`Reporter::due`] was last asked.
    due_at: u64,
    /// When the run started.
    started: std::time::Instant,
    /// From receipt of an impression to its prediction handed to the producer.
    pub(super) latency: Histogram,
}

impl Reporter {
    /// A reporter publishing to `progress` and `telemetry`.
    pub(super) fn new(
        progress: watch::Sender<Progress>,
        telemetry: watch::Sender<Arc<Telemetry>>,
        http_addr: Option<std::net::SocketAddr>,
        started: std::time::Instant,
    ) -> Self {
        Self {
            progress,
            telemetry,
            http_addr,
            drained_once: false,
            due_at: 0,
            started,
            latency: Histogram::new(PREDICTION_LATENCY_BOUNDS),
        }
    }

    /// Whether to publish after `consumed` messages: every 1024, and whenever the input
    /// is drained (`drained`, which is also remembered for readiness).
    pub(super) fn due(&mut self, drained: bool, consumed: u64) -> bool {
        self.drained_once |= drained;
        // Crossing a multiple, not landing on one: shard workers' counts come in batches.
        let crossed = consumed / 1024 != self.due_at / 1024;
        self.due_at = consumed;
        drained || crossed
    }

    /// Publishes progress and telemetry. Ready: the backlog has been drained once and the
    /// consumer lag is within `ready_max_lag` (the lag comes from the consumer's
    /// statistics every few seconds; none yet counts as 0).
    pub(super) fn publish(
        &self,
        consumed: u64,
        view: JobView<'_>,
        consumer_lag: &SharedLag,
        ready_max_lag: u64,
    ) {
        let consumer_lag = consumer_lag
            .lock()
            .map(|lag| lag.clone())
            .unwrap_or_default();
        let lag: i64 = consumer_lag.values().sum();
        let ready = self.drained_once && u64::try_from(lag).unwrap_or(0) <= ready_max_lag;
        let progress = Progress {
            consumed,
            impressions: view.summary.impressions,
            windows_closed: view.summary.windows_closed,
            http_addr: self.http_addr,
            serving_model_version: view.serving_model_version,
        };
        self.progress.send_if_modified(|p| {
            let changed = *p != progress;
            *p = progress;
            changed
        });
        let summary = self.snapshot(&view);
        let telemetry = Telemetry {
            watermark_ms: view.watermark_ms,
            acknowledged: (
                summary.predictions_published,
                summary.dead_letters_published,
            ),
            summary,
            pending_examples: view.pending_examples,
            ready,
            serving_model_version: view.serving_model_version,
            owned_partitions: view.owned_partitions,
            global_stage_threads: view.global_stage_threads,
            global_role: true,
            model_broadcast_delay_ms: None,
            drift: view.global.drift,
            consumer_lag,
            prediction_latency: self.latency.clone(),
            window_processing: view.global.window_time,
        };
        let _ = self.telemetry.send(Arc::new(telemetry));
    }

    /// The run summary as of now: the counters plus the figures kept elsewhere (latency,
    /// model, broker acknowledgements, elapsed time).
    pub(super) fn snapshot(&self, view: &JobView<'_>) -> RunSummary {
        let global = &view.global;
        let mut summary = view.summary.clone();
        summary.absorb_global(&global.counters);
        summary.prediction_latency = self.latency.percentiles();
        summary.window_processing = global.window_time.percentiles();
        summary.elapsed_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        summary.model_version = global.model_version;
        summary.trained_examples = global.trained_examples;
        summary.last_window_metrics = global.last_window.clone();
        summary.predictions_published = view.predictions_delivered;
        summary.dead_letters_published = view.dead_letters_delivered;
        summary.drift = global.drift.summary();
        summary
    }
}
