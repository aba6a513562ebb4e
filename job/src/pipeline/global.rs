//! The global stage: what needs every partition's examples of a window, once per closed
//! window and in window order. The item-demand head, the prequential score-then-train
//! step of the joint model, the drift stage, and the store writes of the window's tables
//! (`item_demand`, `examples`, `metrics`, `drift`, `alerts`), then compaction of the
//! hours no later window can touch.
//!
//! A window's tables are held in memory until their file span ends (`store.file_span_secs`,
//! [`HeldRows`]), then written together. Store writes run on the blocking pool while the
//! stage goes on with the next window (at most [`MAX_WRITES_IN_FLIGHT`] at once). Each
//! file has its own name and commit record, so they do not depend on each other; what
//! depends on them waits with
//! [`GlobalStage::settle_writes`]: compaction, every checkpoint (whose offsets must not be
//! committed before the files they produced are durable; the rows still held go into
//! the checkpoint), and the end of the run.
//! Compaction of the settled hours runs on the blocking pool too, while later windows are
//! written (they never touch those hours); `settle_writes` waits for it as well.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use shopstream_config::Config;
use shopstream_drift::AlertState;
use shopstream_drift::stage::{Arrival, DriftGauges, DriftStage};
use shopstream_drift::tables::{alerts_batch, drift_batch};
use shopstream_drift::webhook::{Webhook, WebhookOptions};
use shopstream_features::{WindowOutput, examples_batch, examples_metadata};
use shopstream_sinks::store::{PARTITION_MS, ParquetStore, StoreError, WindowRows, WrittenFile};
use shopstream_sinks::tables;
use shopstream_trainer::Trainer;
use shopstream_trainer::joint::Output;

use super::PipelineError;
use super::held_rows::{HeldRows, HeldState};
use super::outputs::Outputs;
use crate::summary::GlobalCounters;

/// The model, the drift stage and the store.
pub(super) struct GlobalStage {
    pub(super) trainer: Trainer,
    /// Drift monitors (`drift.enabled`).
    pub(super) drift: Option<DriftStage>,
    /// Alert webhook (`drift.webhook_url`, live runs only).
    pub(super) webhook: Option<Webhook>,
    store: ParquetStore,
    /// The rows of closed windows not written yet, and where compaction stands.
    held: HeldRows,
    /// Store writes started and not yet awaited, oldest first.
    writes: VecDeque<PendingWrite>,
    /// The compaction running, if any: how many hour partitions it merges.
    compacting: Option<tokio::task::JoinHandle<Result<usize, StoreError>>>,
    /// Cancelled when a store write or compaction fails, so that the run stops (and
    /// reports the error) at once rather than when it next waits for its writes, which
    /// a live job with no new input would not do.
    on_store_failure: Option<tokio_util::sync::CancellationToken>,
}

/// Store writes running at once before the stage waits for the oldest.
pub(super) const MAX_WRITES_IN_FLIGHT: usize = 16;

/// A store write running on the blocking pool.
struct PendingWrite {
    /// Its rows count as examples written (the `examples` table).
    examples: bool,
    task: tokio::task::JoinHandle<Result<Vec<WrittenFile>, StoreError>>,
}

/// What a window close writes with and counts into.
pub(super) struct WindowContext<'a> {
    /// Whether the window's tables are written (a replay writes only its range).
    pub(super) write: bool,
    /// Input offsets consumed so far, by `topic/partition`: they go into the commit
    /// record, not the file, since files must be byte-identical however the input was
    /// interleaved (live run vs replay).
    pub(super) offsets: Arc<BTreeMap<String, i64>>,
    pub(super) counters: &'a mut GlobalCounters,
    pub(super) outputs: &'a mut Outputs,
}

impl GlobalStage {
    /// A fresh model and drift stage; the webhook only in live runs (a replay rebuilds
    /// tables: the live run posted its alerts already).
    pub(super) fn new(
        config: &Config,
        store: ParquetStore,
        live: bool,
    ) -> Result<Self, PipelineError> {
        Ok(Self {
            trainer: Trainer::new(&config.model),
            drift: config
                .drift
                .enabled
                .then(|| DriftStage::new(&config.drift, &config.pipeline)),
            webhook: match WebhookOptions::from_settings(&config.drift) {
                Some(hook) if config.drift.enabled && live => Some(Webhook::spawn(hook)?),
                _ => None,
            },
            store,
            held: HeldRows::new(config.store.file_span_secs, config.store.file_span_min_rows),
            writes: VecDeque::new(),
            compacting: None,
            on_store_failure: None,
        })
    }

    /// Cancels `run` when a store write or compaction fails (see `on_store_failure`).
    pub(super) fn stop_on_store_failure(&mut self, run: tokio_util::sync::CancellationToken) {
        self.on_store_failure = Some(run);
    }

    /// Takes over a checkpoint's model, drift stage and held rows.
    pub(super) fn resume(
        &mut self,
        config: &Config,
        trainer: Trainer,
        drift: Option<DriftStage>,
        held: HeldState,
    ) {
        self.trainer = trainer;
        self.held.resume(held);
        if self.drift.is_some() {
            // Drift detection switched on since the checkpoint starts fresh; a restored
            // stage takes the [drift] settings the job runs with now.
            self.drift = drift.or_else(|| self.drift.take());
            if let Some(stage) = self.drift.as_mut() {
                stage.reconfigure(&config.drift);
            }
        }
    }

    /// The rows held for the store, as a checkpoint keeps them.
    pub(super) fn held_rows(&self) -> &HeldState {
        self.held.state()
    }

    /// An admitted event's evidence for the arrival monitor.
    pub(super) fn on_arrival(&mut self, arrival: &Arrival) {
        if let Some(stage) = self.drift.as_mut() {
            stage.on_arrival(arrival);
        }
    }

    /// The drift gauges with the counters kept outside the drift stage filled in.
    pub(super) fn drift_gauges(&self, alerts_published: u64) -> DriftGauges {
        let Some(stage) = &self.drift else {
            return Default::default();
        };
        let mut gauges = stage.gauges().clone();
        gauges.alerts_published = alerts_published;
        if let Some(webhook) = &self.webhook {
            gauges.webhook_delivered = webhook.delivered();
            gauges.webhook_failures = webhook.failures();
        }
        gauges
    }

    /// Closes the webhook, giving queued alert events `grace`; its counts go into the
    /// drift gauges.
    pub(super) async fn close_webhook(&mut self, grace: std::time::Duration) {
        if let Some(webhook) = self.webhook.take() {
            let (delivered, failures) = webhook.close(grace).await;
            if let Some(stage) = self.drift.as_mut() {
                let g = stage.gauges_mut();
                g.webhook_delivered = delivered;
                g.webhook_failures = failures;
            }
        }
    }

    /// One closed window: demand, score then train, drift, the window's tables (held
    /// until their file span ends), and compaction of the hours it settled.
    pub(super) async fn window_closed(
        &mut self,
        output: WindowOutput,
        cx: WindowContext<'_>,
    ) -> Result<(), PipelineError> {
        let WindowContext {
            write,
            offsets,
            counters,
            outputs,
        } = cx;
        if self.held.span_ends_before(output.start) {
            self.write_held(counters).await?;
            if let Some(due) = self.held.take_due_compaction() {
                self.compact_settled(due, counters).await?;
            }
        }
        let settled = self
            .train_and_hold(&output, write, &offsets, outputs, counters)
            .await?;
        if self.held.per_window() {
            self.write_held(counters).await?;
        }
        let Some(settled_before) = settled else {
            return Ok(());
        };
        // Hours that no later window can add rows to (see `settled_before`). Partitions
        // end on whole hours, so the partitions settled change only when the bound passes
        // an hour; in between, compaction would re-read every commit record of every
        // table to find nothing to do. Compaction needs the rows held written first, so
        // with a span held it waits for the span's end rather than cut it in two (a
        // sparse log would write each hour's span twice). Later windows add no rows to
        // those hours, so the wait changes which steps merge them, not the merged files.
        let settled_hours = settled_before.div_euclid(PARTITION_MS);
        if self.held.compacted_hours() != Some(settled_hours) {
            // Nothing held: every window is written as it closes (`file_span_secs = 0`),
            // or this one wrote nothing (a replay outside its range).
            if self.held.is_empty() {
                self.compact_settled(settled_before, counters).await?;
            } else {
                self.held.defer_compaction(settled_before);
            }
        }
        Ok(())
    }

    /// Compacts the hours settled before `settled_before`, which `window_closed` found not
    /// compacted yet, and notes them compacted.
    async fn compact_settled(
        &mut self,
        settled_before: i64,
        counters: &mut GlobalCounters,
    ) -> Result<(), PipelineError> {
        self.compact(Some(settled_before), counters).await?;
        self.held
            .set_compacted_hours(settled_before.div_euclid(PARTITION_MS));
        Ok(())
    }

    /// The window's model and drift steps, its tables held; the bound of the hours its
    /// close settled when it had examples to write.
    async fn train_and_hold(
        &mut self,
        output: &WindowOutput,
        write: bool,
        offsets: &BTreeMap<String, i64>,
        outputs: &mut Outputs,
        counters: &mut GlobalCounters,
    ) -> Result<Option<i64>, PipelineError> {
        // Item demand: score and train on what sold in this window, forecast the next.
        let demand = self.trainer.train_demand(&output.demand);
        let forecasts = self.trainer.forecast(&output.demand_next);
        if !forecasts.is_empty() {
            counters.demand_forecasts += forecasts.len() as u64;
            counters.stockout_risks += forecasts.iter().filter(|f| f.stockout_risk).count() as u64;
            if write {
                let batch = shopstream_trainer::metrics::demand_batch(&forecasts)?;
                let rows = window_rows(output.end, batch, BTreeMap::new());
                self.held
                    .hold(output.start, tables::ITEM_DEMAND, rows, offsets);
            }
        }
        // Prequential: each example is scored just before the training step that learns
        // from it; the drift monitors see those scores.
        let (mut metrics, scores) = self.trainer.train_window_scored(&output.examples);
        self.observe_drift(output, &scores, write, offsets, outputs)
            .await?;
        if output.examples.is_empty() {
            return Ok(None);
        }
        metrics.demand = demand;
        counters.quality.add(&metrics);
        if !write {
            self.trainer.record_window(metrics);
            return Ok(None);
        }
        let batch = examples_batch(&output.examples)?;
        let metadata = examples_metadata(output.start, output.end);
        let rows = window_rows(output.start, batch, metadata);
        self.held
            .hold(output.start, tables::EXAMPLES, rows, offsets);
        // The prequential metrics of the window go to the store's `metrics` table.
        let metrics_batch = shopstream_trainer::metrics::metrics_batch(
            output.start,
            output.end,
            self.trainer.version(),
            &metrics,
        )?;
        let rows = window_rows(output.start, metrics_batch, BTreeMap::new());
        self.held.hold(output.start, tables::METRICS, rows, offsets);
        tracing::debug!(
            window_start = output.start,
            events = output.events,
            examples = metrics.examples,
            log_loss = metrics.log_loss,
            "window closed"
        );
        self.trainer.record_window(metrics);
        Ok(Some(output.settled_before))
    }

    /// Starts writing every row held, one write per table (see
    /// [`ParquetStore::write_windows`]); first waits for the oldest write when
    /// [`MAX_WRITES_IN_FLIGHT`] are running.
    async fn write_held(&mut self, counters: &mut GlobalCounters) -> Result<(), PipelineError> {
        if self.held.is_empty() {
            return Ok(());
        }
        tracing::debug!(rows = self.held.rows(), "file span written");
        let (tables, offsets) = self.held.take();
        for (table, windows) in tables {
            while self.writes.len() >= MAX_WRITES_IN_FLIGHT {
                self.settle_oldest(counters).await?;
            }
            let store = self.store.clone();
            let offsets = Arc::clone(&offsets);
            let examples = table == tables::EXAMPLES;
            let on_failure = self.on_store_failure.clone();
            let task = tokio::task::spawn_blocking(move || {
                let written = store.write_windows(&table, &windows, &offsets);
                if let (Err(_), Some(run)) = (&written, on_failure) {
                    run.cancel();
                }
                written
            });
            self.writes.push_back(PendingWrite { examples, task });
        }
        Ok(())
    }

    /// Waits for the oldest running store write and counts what it wrote.
    async fn settle_oldest(&mut self, counters: &mut GlobalCounters) -> Result<(), PipelineError> {
        let Some(write) = self.writes.pop_front() else {
            return Ok(());
        };
        let written = write
            .task
            .await
            .map_err(|e| PipelineError::Internal(format!("store writer: {e}")))??;
        if write.examples {
            for file in written {
                counters.examples_written += file.rows as u64;
                counters.files_written += 1;
            }
        }
        Ok(())
    }

    /// Waits until every store write and compaction started is durable (or one failed).
    pub(super) async fn settle_writes(
        &mut self,
        counters: &mut GlobalCounters,
    ) -> Result<(), PipelineError> {
        while !self.writes.is_empty() {
            self.settle_oldest(counters).await?;
        }
        if let Some(task) = self.compacting.take() {
            let made = task
                .await
                .map_err(|e| PipelineError::Internal(format!("store compaction: {e}")))??;
            counters.compactions += made as u64;
        }
        Ok(())
    }

    /// Feeds the drift monitors with a closed window; holds the `drift` and `alerts`
    /// rows (when the window is written), and, in a live run, queues each alert event
    /// for the alerts topic and hands it to the webhook.
    async fn observe_drift(
        &mut self,
        output: &WindowOutput,
        scores: &[Output],
        write: bool,
        offsets: &BTreeMap<String, i64>,
        outputs: &mut Outputs,
    ) -> Result<(), PipelineError> {
        let Some(stage) = self.drift.as_mut() else {
            return Ok(());
        };
        let drifts = stage
            .window_closed(output.start, &output.users, &output.examples, scores)
            .map_err(|e| PipelineError::Internal(format!("drift monitor: {e}")))?;
        let rows = stage.rows(&drifts);
        if write && !rows.is_empty() {
            let batch = drift_batch(&rows)?;
            let rows = window_rows(output.start, batch, BTreeMap::new());
            self.held.hold(output.start, tables::DRIFT, rows, offsets);
        }
        if drifts.alerts.is_empty() {
            return Ok(());
        }
        if write {
            let batch = alerts_batch(output.start, &drifts.alerts)?;
            let rows = window_rows(output.start, batch, BTreeMap::new());
            self.held.hold(output.start, tables::ALERTS, rows, offsets);
        }
        for alert in &drifts.alerts {
            let scenario = alert.scenario.as_deref().unwrap_or("-");
            let (id, subject, statistic) = (&alert.id, &alert.subject, &alert.statistic);
            let (kind, value, threshold) = (alert.kind.as_str(), alert.value, alert.threshold);
            match alert.state {
                AlertState::Firing => tracing::warn!(
                    %id, severity = ?alert.severity, kind, %subject, scenario, %statistic,
                    value, threshold, "drift alert firing"
                ),
                AlertState::Resolved => tracing::info!(
                    %id, kind, %subject, scenario, %statistic, value, threshold,
                    "drift alert resolved"
                ),
            }
            outputs.alert(alert).await?;
            // (A replay has no webhook: the live run posted its alerts.)
            if let Some(webhook) = &self.webhook {
                webhook.post(alert);
            }
        }
        Ok(())
    }

    /// Compacts every table's hour partitions that end at or before `before_ms`, when
    /// `store.compact_closed_hours` is on: started on the blocking pool, settled by the
    /// next [`GlobalStage::settle_writes`]. The rows held are written first: with a
    /// bound, nothing is held (`window_closed` waits for the span's end); with `None` (the
    /// end of a bounded run) it writes what is held and compacts everything, a compaction
    /// waiting for the span included, and returns once done.
    pub(super) async fn compact(
        &mut self,
        before_ms: Option<i64>,
        counters: &mut GlobalCounters,
    ) -> Result<(), PipelineError> {
        let compacts = self.store.compacts_closed_hours();
        if compacts || before_ms.is_none() {
            self.write_held(counters).await?;
        }
        if before_ms.is_none() {
            // Everything is compacted below: nothing waits any more.
            self.held.take_due_compaction();
        }
        if !compacts {
            return Ok(());
        }
        // Compaction reads the commit records of the hours it merges (and one compaction
        // at a time: the next may merge the file the last one wrote).
        self.settle_writes(counters).await?;
        let store = self.store.clone();
        let on_failure = self.on_store_failure.clone();
        self.compacting = Some(tokio::task::spawn_blocking(move || {
            let compact = || {
                let mut made = 0;
                for table in tables::ALL {
                    made += store.compact(table, before_ms)?.len();
                    // Retention by event time: a replay expires the same hours.
                    if let Some(settled) = before_ms {
                        for expired in store.expire_past_retention(table, settled)? {
                            tracing::info!(
                                table = expired.table,
                                partition = expired.partition,
                                files = expired.files,
                                rows = expired.rows,
                                "partition expired (store.retention_days)"
                            );
                        }
                    }
                }
                Ok::<_, StoreError>(made)
            };
            let made = compact();
            if let (Err(_), Some(run)) = (&made, on_failure) {
                run.cancel();
            }
            made
        }));
        if before_ms.is_none() {
            self.settle_writes(counters).await?;
        }
        Ok(())
    }
}

/// A window's rows of one table, its files named after `window_ms` (which also goes into
/// their metadata, beside `metadata`).
fn window_rows(
    window_ms: i64,
    batch: RecordBatch,
    mut metadata: BTreeMap<String, String>,
) -> WindowRows {
    metadata.insert(
        "shopstream.window_start_ms".to_string(),
        window_ms.to_string(),
    );
    WindowRows {
        window_ms,
        batch,
        metadata,
    }
}
