//! The `drift` and `alerts` tables: their row type and Arrow schemas (the job writes them
//! to the store, `drift report` reads them back).

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use shopstream_features::arrow_time::{utc_micros, utc_micros_type};

use crate::{AlertEvent, DriftKind};

/// Which monitor a statistic comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Evidence {
    /// Impressions as they arrived, compared when their window closed.
    Arrival,
    /// Matured training examples with their prequential predictions.
    Matured,
}

impl Evidence {
    /// `arrival` or `matured`, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Evidence::Arrival => "arrival",
            Evidence::Matured => "matured",
        }
    }
}

/// One row of the `drift` table.
#[derive(Debug, Clone, PartialEq)]
pub struct DriftRow {
    /// Start of the window of the evidence (epoch ms): the `ts` column.
    pub ts_ms: i64,
    /// Start of the window whose close computed it (epoch ms).
    pub reported_ms: i64,
    /// Arrival or matured.
    pub evidence: Evidence,
    /// data_drift, label_drift, prediction_drift or model_quality.
    pub kind: DriftKind,
    /// Feature, label (`ctr`, `cvr`) or task.
    pub subject: String,
    /// Scenario of per-scenario statistics.
    pub scenario: Option<String>,
    /// Statistic name (see `docs/drift.md`).
    pub statistic: &'static str,
    /// Its value.
    pub value: f64,
    /// Warning threshold, for statistics that alerts compare (z: on |value|; p-values:
    /// below is worse).
    pub threshold: Option<f64>,
    /// Critical threshold, likewise.
    pub critical: Option<f64>,
    /// Values (impressions, clicks, examples) behind it in the window.
    pub n: i64,
}

/// The `drift` table's batch: `ts` (window of the evidence, UTC microseconds: the
/// partitioning column), `reported_at` (window whose close computed it), `evidence`,
/// `kind`, `subject`, `scenario`, `statistic`, `value`, `threshold`, `critical`, `n`.
pub fn drift_batch(rows: &[DriftRow]) -> Result<RecordBatch, ArrowError> {
    let schema = Schema::new(vec![
        Field::new("ts", utc_micros_type(), false),
        Field::new("reported_at", utc_micros_type(), false),
        Field::new("evidence", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("subject", DataType::Utf8, false),
        Field::new("scenario", DataType::Utf8, true),
        Field::new("statistic", DataType::Utf8, false),
        Field::new("value", DataType::Float64, false),
        Field::new("threshold", DataType::Float64, true),
        Field::new("critical", DataType::Float64, true),
        Field::new("n", DataType::Int64, false),
    ]);
    let columns: Vec<ArrayRef> = vec![
        utc_micros(rows.iter().map(|r| r.ts_ms)),
        utc_micros(rows.iter().map(|r| r.reported_ms)),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.evidence.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.kind.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.subject.as_str()),
        )),
        Arc::new(StringArray::from_iter(
            rows.iter().map(|r| r.scenario.as_deref()),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.statistic),
        )),
        Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.value))),
        Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.threshold))),
        Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.critical))),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.n))),
    ];
    RecordBatch::try_new(Arc::new(schema), columns)
}

/// The `alerts` table's batch: `ts` (window of the evidence that produced the event, UTC
/// microseconds), `reported_at` (window whose close raised it), `first_window` (start of
/// the breach streak), and the event's `id`, `state`, `severity`, `kind`, `subject`,
/// `scenario`, `statistic`, `value`, `threshold`.
pub fn alerts_batch(reported_ms: i64, alerts: &[AlertEvent]) -> Result<RecordBatch, ArrowError> {
    let schema = Schema::new(vec![
        Field::new("ts", utc_micros_type(), false),
        Field::new("reported_at", utc_micros_type(), false),
        Field::new("first_window", utc_micros_type(), false),
        Field::new("id", DataType::Utf8, false),
        Field::new("state", DataType::Utf8, false),
        Field::new("severity", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("subject", DataType::Utf8, false),
        Field::new("scenario", DataType::Utf8, true),
        Field::new("statistic", DataType::Utf8, false),
        Field::new("value", DataType::Float64, false),
        Field::new("threshold", DataType::Float64, false),
    ]);
    let text = |f: fn(&AlertEvent) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(alerts.iter().map(f)))
    };
    let columns: Vec<ArrayRef> = vec![
        utc_micros(alerts.iter().map(|a| a.window_start_ms)),
        utc_micros(alerts.iter().map(|_| reported_ms)),
        utc_micros(alerts.iter().map(|a| a.first_window_ms)),
        text(|a| a.id.as_str()),
        text(|a| a.state.as_str()),
        text(|a| a.severity.as_str()),
        text(|a| a.kind.as_str()),
        text(|a| a.subject.as_str()),
        Arc::new(StringArray::from_iter(
            alerts.iter().map(|a| a.scenario.as_deref()),
        )),
        text(|a| a.statistic.as_str()),
        Arc::new(Float64Array::from_iter_values(
            alerts.iter().map(|a| a.value),
        )),
        Arc::new(Float64Array::from_iter_values(
            alerts.iter().map(|a| a.threshold),
        )),
    ];
    RecordBatch::try_new(Arc::new(schema), columns)
}
