//! What a run did: the counters, quality and latencies the job reports at its end, on
//! `/metrics` (through [`crate::http::Telemetry`]) and in `--summary-json`.

use std::collections::BTreeMap;

use serde::Serialize;
use shopstream_trainer::WindowMetrics;

/// What a run did. Counts reconcile exactly: for each topic,
/// consumed == valid + dead-lettered + duplicates, where `late` is one of the dead-letter
/// reasons (events that decoded fine but arrived behind the watermark).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RunSummary {
    /// Messages consumed per input topic.
    pub consumed: BTreeMap<String, u64>,
    /// Valid (decoded and accepted) events per input topic.
    pub valid: BTreeMap<String, u64>,
    /// Dead-lettered messages per reason (`late` included).
    pub dead_lettered: BTreeMap<String, u64>,
    /// Dead-lettered messages per input topic.
    pub dead_lettered_per_topic: BTreeMap<String, u64>,
    /// Duplicates suppressed per input topic (not dead-lettered: they are copies).
    pub duplicates: BTreeMap<String, u64>,
    /// Replay: events outside the replayed range per input topic (not processed).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub replay_skipped: BTreeMap<String, u64>,
    /// Dead letters acknowledged by the broker.
    pub dead_letters_published: u64,
    /// Impressions seen (each gets a prediction).
    pub impressions: u64,
    /// Predictions acknowledged by the broker.
    pub predictions_published: u64,
    /// Training examples written to the store.
    pub examples_written: u64,
    /// Parquet files of the examples table committed.
    pub files_written: u64,
    /// Hour partitions compacted (all tables).
    pub compactions: u64,
    /// Checkpoints written.
    pub checkpoints: u64,
    /// Group runs: checkpoints of partition numbers written by this instance.
    #[serde(skip_serializing_if = "is_zero")]
    pub partition_checkpoints: u64,
    /// Group runs: partition numbers this instance took over from a checkpoint instead of
    /// reading them from their start.
    #[serde(skip_serializing_if = "is_zero")]
    pub partitions_resumed: u64,
    /// Group runs: windows closed at the coordinator checkpoint this instance's
    /// coordinator took the run over from (0: none, it read the topics from their start).
    #[serde(skip_serializing_if = "is_zero")]
    pub coordinator_resumed_windows: u64,
    /// Group runs: messages read again that a partition's checkpoint already held (not
    /// handled, not counted as consumed).
    #[serde(skip_serializing_if = "is_zero")]
    pub checkpoint_skipped: u64,
    /// Group runs: closes read again from the closes log for partitions taken over from
    /// a checkpoint older than the closes this instance still kept.
    #[serde(skip_serializing_if = "is_zero")]
    pub closes_reread: u64,
    /// Windows closed.
    pub windows_closed: u64,
    /// Item demand forecasts written to the store's `item_demand` table.
    pub demand_forecasts: u64,
    /// Of those, forecasts above the stock on hand.
    pub stockout_risks: u64,
    /// Drift monitoring: windows observed, alert events and where they went.
    pub drift: shopstream_drift::stage::DriftSummary,
    /// Model version at the end.
    pub model_version: u64,
    /// Examples the model trained on.
    pub trained_examples: u64,
    /// Prequential metrics of the last window that had examples.
    pub last_window_metrics: Option<WindowMetrics>,
    /// Prequential quality over the whole run (example-weighted means over windows).
    pub quality: Quality,
    /// Whether the run stopped because the input was exhausted (`stop_at_end`).
    pub reached_end: bool,
    /// Wall-clock duration of the run, in milliseconds.
    pub elapsed_ms: u64,
    /// Latency from the consumer handing an impression over to its prediction being
    /// handed to the producer (queueing, decoding, cleaning, features, model included;
    /// the broker's acknowledgement, batched by `linger.ms`, is not).
    pub prediction_latency: crate::latency::Percentiles,
    /// Time spent on each closed window: joins and features, training, drift, store.
    pub window_processing: crate::latency::Percentiles,
}

/// The counters the global stage moves (inline or on its own thread); the run summary
/// takes them over with [`RunSummary::absorb_global`].
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct GlobalCounters {
    pub(crate) examples_written: u64,
    pub(crate) files_written: u64,
    pub(crate) compactions: u64,
    pub(crate) checkpoints: u64,
    pub(crate) demand_forecasts: u64,
    pub(crate) stockout_risks: u64,
    pub(crate) quality: Quality,
}

impl RunSummary {
    /// Takes over the global stage's counters.
    pub(crate) fn absorb_global(&mut self, global: &GlobalCounters) {
        self.examples_written = global.examples_written;
        self.files_written = global.files_written;
        self.compactions = global.compactions;
        self.checkpoints = global.checkpoints;
        self.demand_forecasts = global.demand_forecasts;
        self.stockout_risks = global.stockout_risks;
        self.quality = global.quality.clone();
    }
}

/// Prequential quality over a run: example-weighted means of the per-window metrics
/// (each window scored by the model before it trained on that window).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Quality {
    /// Windows with examples.
    pub windows: u64,
    /// Examples scored.
    pub examples: u64,
    /// CTR log loss.
    pub ctr_log_loss: f64,
    /// CTR AUC (windows with both classes).
    pub ctr_auc: f64,
    /// CTCVR AUC (click and order over all impressions).
    pub ctcvr_auc: f64,
    /// CVR AUC (order over clicked impressions).
    pub cvr_auc: f64,
    #[serde(skip)]
    weights: [f64; 3],
}

impl Quality {
    pub(crate) fn add(&mut self, m: &WindowMetrics) {
        if m.examples == 0 {
            return;
        }
        let n = m.examples as f64;
        let total = self.examples as f64;
        self.ctr_log_loss = (self.ctr_log_loss * total + m.ctr.log_loss * n) / (total + n);
        self.windows += 1;
        self.examples += m.examples as u64;
        let aucs = [m.ctr.auc, m.ctcvr.auc, m.cvr.auc];
        let weights = [n, n, m.cvr.n as f64];
        let means = [&mut self.ctr_auc, &mut self.ctcvr_auc, &mut self.cvr_auc];
        for (i, (auc, mean)) in aucs.into_iter().zip(means).enumerate() {
            if let Some(auc) = auc {
                let w = weights[i];
                *mean = (*mean * self.weights[i] + auc * w) / (self.weights[i] + w);
                self.weights[i] += w;
            }
        }
    }
}

/// Whether a count is zero (left out of the JSON summary).
fn is_zero(n: &u64) -> bool {
    *n == 0
}
