//! Evaluation metrics: AUC, log loss, calibration, RMSE.

use serde::Serialize;

/// Area under the ROC curve of `scores` for binary `labels` (ties count one half); `None`
/// when one class is absent.
pub fn auc(scores: &[f64], labels: &[bool]) -> Option<f64> {
    let mut pairs: Vec<(f64, bool)> = scores.iter().copied().zip(labels.iter().copied()).collect();
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let positives = pairs.iter().filter(|p| p.1).count() as f64;
    let negatives = pairs.len() as f64 - positives;
    if positives == 0.0 || negatives == 0.0 {
        return None;
    }
    // Sum of positive ranks, with average ranks for ties.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < pairs.len() {
        let mut j = i;
        while j < pairs.len() && pairs[j].0 == pairs[i].0 {
            j += 1;
        }
        let average_rank = (i + j + 1) as f64 / 2.0;
        rank_sum += average_rank * pairs[i..j].iter().filter(|p| p.1).count() as f64;
        i = j;
    }
    Some((rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives))
}

/// Standard error of an AUC of `auc` over `positives` and `negatives` (Hanley and McNeil,
/// 1982): what the AUC of a sample this size varies by. `None` without both classes.
pub fn auc_standard_error(auc: f64, positives: usize, negatives: usize) -> Option<f64> {
    if positives == 0 || negatives == 0 {
        return None;
    }
    let (p, n) = (positives as f64, negatives as f64);
    let q1 = auc / (2.0 - auc);
    let q2 = 2.0 * auc * auc / (1.0 + auc);
    let variance =
        (auc * (1.0 - auc) + (p - 1.0) * (q1 - auc * auc) + (n - 1.0) * (q2 - auc * auc)) / (p * n);
    Some(variance.max(0.0).sqrt())
}

/// Log loss of one probability `p` (clamped to [1e-15, 1 - 1e-15]) for label `y`.
pub fn example_log_loss(p: f64, y: bool) -> f64 {
    let p = p.clamp(1e-15, 1.0 - 1e-15);
    if y { -p.ln() } else { -(1.0 - p).ln() }
}

/// Mean log loss of probabilities `p` (clamped to [1e-15, 1 - 1e-15]).
pub fn log_loss(p: &[f64], labels: &[bool]) -> f64 {
    if p.is_empty() {
        return 0.0;
    }
    let total: f64 = p
        .iter()
        .zip(labels)
        .map(|(p, y)| example_log_loss(*p, *y))
        .sum();
    total / p.len() as f64
}

/// Metrics of one binary task over a set of predictions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct BinaryMetrics {
    /// Predictions.
    pub n: usize,
    /// Positive labels.
    pub positives: usize,
    /// AUC, when both classes are present.
    pub auc: Option<f64>,
    /// Mean log loss.
    pub log_loss: f64,
    /// Mean prediction / observed rate (1 = calibrated); `None` without positives.
    pub calibration: Option<f64>,
}

impl BinaryMetrics {
    /// Metrics of `p` against `labels`.
    pub fn of(p: &[f64], labels: &[bool]) -> Self {
        let positives = labels.iter().filter(|y| **y).count();
        let mean_p = if p.is_empty() {
            0.0
        } else {
            p.iter().sum::<f64>() / p.len() as f64
        };
        let rate = positives as f64 / p.len().max(1) as f64;
        Self {
            n: p.len(),
            positives,
            auc: auc(p, labels),
            log_loss: log_loss(p, labels),
            calibration: (positives > 0).then(|| mean_p / rate),
        }
    }
}

/// Rows of the store's `metrics` table for one window: one per (task, slice), with the
/// window start as `ts` (the partitioning column).
pub fn metrics_batch(
    window_start_ms: i64,
    window_end_ms: i64,
    model_version: u64,
    m: &crate::WindowMetrics,
) -> Result<arrow::record_batch::RecordBatch, arrow::error::ArrowError> {
    use std::sync::Arc;

    use shopstream_features::arrow_time::{utc_micros, utc_micros_type};

    use arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray, UInt64Array};
    use arrow::datatypes::{DataType, Field, Schema};

    let mut rows: Vec<(&str, &str, &BinaryMetrics)> = vec![
        ("ctr", "all", &m.ctr),
        ("cvr", "all", &m.cvr),
        ("ctcvr", "all", &m.ctcvr),
    ];
    for (scenario, metrics) in &m.ctr_by_scenario {
        rows.push(("ctr", scenario.as_str(), metrics));
    }
    // The demand head as one more row: deviance in `log_loss`, units sold in `positives`,
    // forecast / sold in `calibration`.
    let demand = m.demand.map(|d| BinaryMetrics {
        n: d.n,
        positives: d.units as usize,
        auc: None,
        log_loss: d.poisson_deviance,
        calibration: (d.units > 0.0).then(|| d.forecast / d.units),
    });
    if let Some(d) = &demand {
        rows.push(("demand", "all", d));
    }
    let n = rows.len();
    let ts = utc_micros_type();
    let schema = Schema::new(vec![
        Field::new("ts", ts.clone(), false),
        Field::new("window_end", ts, false),
        Field::new("model_version", DataType::UInt64, false),
        Field::new("task", DataType::Utf8, false),
        Field::new("scenario", DataType::Utf8, false),
        Field::new("n", DataType::Int64, false),
        Field::new("positives", DataType::Int64, false),
        Field::new("auc", DataType::Float64, true),
        Field::new("log_loss", DataType::Float64, false),
        Field::new("calibration", DataType::Float64, true),
        Field::new("value_rmse", DataType::Float64, true),
    ]);
    let columns: Vec<ArrayRef> = vec![
        utc_micros(std::iter::repeat_n(window_start_ms, n)),
        utc_micros(std::iter::repeat_n(window_end_ms, n)),
        Arc::new(UInt64Array::from(vec![model_version; n])),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| r.2.n as i64),
        )),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| r.2.positives as i64),
        )),
        Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.2.auc))),
        Arc::new(Float64Array::from_iter_values(
            rows.iter().map(|r| r.2.log_loss),
        )),
        Arc::new(Float64Array::from_iter(
            rows.iter().map(|r| r.2.calibration),
        )),
        Arc::new(Float64Array::from_iter(rows.iter().map(|r| {
            if r.0 == "ctr" && r.1 == "all" {
                m.value_rmse
            } else {
                None
            }
        }))),
    ];
    arrow::record_batch::RecordBatch::try_new(Arc::new(schema), columns)
}

/// Rows of the store's `item_demand` table: one forecast per item for the window starting
/// at `ts`.
pub fn demand_batch(
    forecasts: &[crate::DemandForecast],
) -> Result<arrow::record_batch::RecordBatch, arrow::error::ArrowError> {
    use std::sync::Arc;

    use shopstream_features::arrow_time::{utc_micros, utc_micros_type};

    use arrow::array::{
        ArrayRef, BooleanArray, Float64Array, Int64Array, StringArray, UInt64Array,
    };
    use arrow::datatypes::{DataType, Field, Schema};

    let schema = Schema::new(vec![
        Field::new("ts", utc_micros_type(), false),
        Field::new("item_id", DataType::Utf8, false),
        Field::new("forecast_units", DataType::Float64, false),
        Field::new("on_hand", DataType::Int64, true),
        Field::new("stockout_risk", DataType::Boolean, false),
        Field::new("model_version", DataType::UInt64, false),
    ]);
    let columns: Vec<ArrayRef> = vec![
        utc_micros(forecasts.iter().map(|f| f.window_start)),
        Arc::new(StringArray::from_iter_values(
            forecasts.iter().map(|f| &*f.item_id),
        )),
        Arc::new(Float64Array::from_iter_values(
            forecasts.iter().map(|f| f.units),
        )),
        Arc::new(Int64Array::from_iter(forecasts.iter().map(|f| f.on_hand))),
        Arc::new(BooleanArray::from_iter(
            forecasts.iter().map(|f| Some(f.stockout_risk)),
        )),
        Arc::new(UInt64Array::from_iter_values(
            forecasts.iter().map(|f| f.model_version),
        )),
    ];
    arrow::record_batch::RecordBatch::try_new(Arc::new(schema), columns)
}

#[cfg(test)]
mod tests {
    #[test]
    fn auc_standard_error_matches_hanley_mcneil_and_shrinks_with_the_sample() {
        // AUC 0.8, 50 and 50 cases: Q1 = 0.8 / 1.2, Q2 = 1.28 / 1.8, so the variance is
        // (0.16 + 49 (Q1 - 0.64) + 49 (Q2 - 0.64)) / 2500 = 0.0019804, an SE of 0.04450.
        let se = super::auc_standard_error(0.8, 50, 50).expect("both classes");
        assert!((se - 0.04450).abs() < 1e-5, "{se}");
        let small = super::auc_standard_error(0.6, 27, 3_899).expect("both classes");
        let large = super::auc_standard_error(0.6, 2_700, 389_900).expect("both classes");
        assert!(small > 0.05 && large < 0.006, "{small} {large}");
        assert_eq!(super::auc_standard_error(0.6, 0, 10), None);
    }

    use super::*;

    #[test]
    fn auc_matches_hand_computed_values() {
        assert_eq!(
            auc(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]),
            Some(0.75)
        );
        assert_eq!(auc(&[0.5, 0.5], &[false, true]), Some(0.5));
        assert_eq!(auc(&[0.1, 0.2], &[true, true]), None);
        assert_eq!(auc(&[0.9, 0.1], &[true, false]), Some(1.0));
    }

    #[test]
    fn log_loss_of_certain_right_answers_is_zero() {
        assert!(log_loss(&[1.0, 0.0], &[true, false]) < 1e-12);
        assert!((log_loss(&[0.5], &[true]) - std::f64::consts::LN_2).abs() < 1e-12);
    }
}
