//! Trainer: an incrementally trained click model and the predictions it serves.
//!
//! This first model is a hashed-feature logistic regression trained by SGD, predict-then-
//! train (prequential) on each window's matured examples; it stands in for the joint
//! multi-task model of DESIGN.md with the same interface: [`Trainer::predict`] for serving
//! rows on arrival, [`Trainer::train_window`] for closed windows, and a model version that
//! counts training windows.
//!
//! Features are hashed with FNV-1a (not the std hasher, whose seed changes per process), so
//! two runs over the same examples give bit-identical weights.

use serde::Serialize;
use shopstream_config::ModelConfig;
use shopstream_features::{Example, Features, ServingRow};

/// One prediction, as published to `shop.predictions` (JSON), keyed by `event_id`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    /// The impression's event id.
    pub event_id: String,
    /// Event time of the impression, epoch milliseconds.
    pub ts: i64,
    /// The user.
    pub user_id: String,
    /// The item.
    pub item_id: String,
    /// The scenario.
    pub scenario: &'static str,
    /// Predicted click probability.
    pub p_click: f64,
    /// Number of windows the model had been trained on.
    pub model_version: u64,
    /// Watermark of the job when the prediction was made, epoch milliseconds.
    pub watermark_ms: Option<i64>,
}

/// Prequential metrics of one training window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct WindowMetrics {
    /// Examples trained on.
    pub examples: usize,
    /// Positive labels among them.
    pub positives: usize,
    /// Mean log loss of the predictions made *before* training on each example.
    pub log_loss: f64,
    /// Mean predicted probability, for calibration against the observed rate.
    pub mean_prediction: f64,
}

/// The online model.
#[derive(Debug, Clone)]
pub struct Trainer {
    weights: Vec<f32>,
    mask: u64,
    learning_rate: f64,
    l2: f64,
    version: u64,
    trained_examples: u64,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;

fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h = FNV_OFFSET;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(FNV_PRIME);
        }
        h ^= 0xff;
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// Slot index and value of each active feature.
fn encode(user_id: &str, item_id: &str, f: &Features, mask: u64) -> Vec<(usize, f32)> {
    let scenario = f.scenario.as_str().as_bytes();
    let position = f.position.map_or(99, |p| p.min(20)).to_le_bytes();
    let device = f.device.as_deref().unwrap_or("").as_bytes();
    let hour = [f.hour_of_day];
    let category = f.item_category.as_deref().unwrap_or("").as_bytes();
    let slot = |parts: &[&[u8]]| (fnv(parts) & mask) as usize;
    let log = |x: f64| ((x + 1.0).ln() / 5.0) as f32;
    vec![
        (slot(&[b"bias"]), 1.0),
        (slot(&[b"user", user_id.as_bytes()]), 1.0),
        (slot(&[b"item", item_id.as_bytes()]), 1.0),
        (slot(&[b"category", category]), 1.0),
        (slot(&[b"scenario", scenario]), 1.0),
        (slot(&[b"device", device]), 1.0),
        (slot(&[b"hour", &hour]), 1.0),
        (slot(&[b"position", &position]), 1.0),
        (slot(&[b"scenario_position", scenario, &position]), 1.0),
        (slot(&[b"user_ctr_7d"]), (f.user_ctr_7d() * 10.0) as f32),
        (slot(&[b"item_ctr_24h"]), (f.item_ctr_24h() * 10.0) as f32),
        (slot(&[b"affinity"]), f.user_category_affinity as f32),
        (
            slot(&[b"user_activity_7d"]),
            log(f.user[2].impressions as f64),
        ),
        (slot(&[b"price"]), f.price.map_or(0.0, log)),
        (
            slot(&[b"in_stock"]),
            f.item_on_hand
                .map_or(0.0, |h| if h > 0 { 1.0 } else { -1.0 }),
        ),
    ]
}

/// Numerically stable log loss of logit `z` for label `y`: log(1 + e^z) - y z.
fn log_loss_from_logit(z: f64, y: bool) -> f64 {
    let softplus = if z > 0.0 {
        z + (-z).exp().ln_1p()
    } else {
        z.exp().ln_1p()
    };
    softplus - if y { z } else { 0.0 }
}

fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

impl Trainer {
    /// A fresh model.
    pub fn new(config: &ModelConfig) -> Self {
        let slots = 1usize << config.hash_bits;
        Self {
            weights: vec![0.0; slots],
            mask: (slots - 1) as u64,
            learning_rate: config.learning_rate,
            l2: config.l2,
            version: 0,
            trained_examples: 0,
        }
    }

    /// The model version: the number of windows trained on.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Examples trained on so far.
    pub fn trained_examples(&self) -> u64 {
        self.trained_examples
    }

    fn logit(&self, features: &[(usize, f32)]) -> f64 {
        features
            .iter()
            .map(|(i, v)| f64::from(self.weights[*i]) * f64::from(*v))
            .sum()
    }

    /// Click probability for a serving row, from the current weights.
    pub fn predict(&self, row: &ServingRow, watermark_ms: Option<i64>) -> Prediction {
        let encoded = encode(&row.user_id, &row.item_id, &row.features, self.mask);
        Prediction {
            event_id: row.event_id.clone(),
            ts: row.ts,
            user_id: row.user_id.clone(),
            item_id: row.item_id.clone(),
            scenario: row.features.scenario.as_str(),
            p_click: sigmoid(self.logit(&encoded)),
            model_version: self.version,
            watermark_ms,
        }
    }

    /// Predicts each example, then trains on it (prequential), and bumps the version.
    pub fn train_window(&mut self, examples: &[Example]) -> WindowMetrics {
        let mut metrics = WindowMetrics::default();
        if examples.is_empty() {
            return metrics;
        }
        let mut loss = 0.0;
        let mut predicted = 0.0;
        for example in examples {
            let encoded = encode(
                &example.user_id,
                &example.item_id,
                &example.features,
                self.mask,
            );
            let z = self.logit(&encoded);
            let p = sigmoid(z);
            let clicked = example.labels.clicked;
            loss += log_loss_from_logit(z, clicked);
            predicted += p;
            let gradient = p - if clicked { 1.0 } else { 0.0 };
            for (i, v) in &encoded {
                let w = f64::from(self.weights[*i]);
                let step = self.learning_rate * (gradient * f64::from(*v) + self.l2 * w);
                self.weights[*i] = (w - step) as f32;
            }
            metrics.positives += usize::from(clicked);
        }
        metrics.examples = examples.len();
        metrics.log_loss = loss / examples.len() as f64;
        metrics.mean_prediction = predicted / examples.len() as f64;
        self.trained_examples += examples.len() as u64;
        self.version += 1;
        metrics
    }

    /// The weights as little-endian bytes, for identity checks and checkpoints.
    pub fn weight_bytes(&self) -> Vec<u8> {
        self.weights.iter().flat_map(|w| w.to_le_bytes()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shopstream_features::Labels;
    use shopstream_ingest::event::Scenario;

    fn example(user: &str, clicked: bool) -> Example {
        Example {
            event_id: format!("e-{user}"),
            ts: 1,
            user_id: user.to_string(),
            item_id: "sku".to_string(),
            features: Features {
                scenario: Scenario::HomeFeed,
                device: Some("ios".into()),
                position: Some(0),
                price: Some(10.0),
                hour_of_day: 10,
                day_of_week: 2,
                user: Default::default(),
                user_recency_secs: None,
                user_category_affinity: 0.0,
                item: Default::default(),
                item_category: Some("c1".into()),
                item_price: Some(10.0),
                item_on_hand: Some(3),
            },
            labels: Labels {
                clicked,
                ..Labels::default()
            },
        }
    }

    #[test]
    fn stable_log_loss_has_no_overflow() {
        assert!((log_loss_from_logit(800.0, true)).abs() < 1e-12);
        assert!((log_loss_from_logit(-800.0, true) - 800.0).abs() < 1e-9);
        assert!((log_loss_from_logit(0.0, false) - std::f64::consts::LN_2).abs() < 1e-12);
    }

    #[test]
    fn learns_a_user_who_always_clicks_and_is_deterministic() {
        let config = ModelConfig::default();
        let data: Vec<Example> = (0..200)
            .flat_map(|_| [example("clicker", true), example("ignorer", false)])
            .collect();
        let mut a = Trainer::new(&config);
        let mut b = Trainer::new(&config);
        for chunk in data.chunks(50) {
            a.train_window(chunk);
            b.train_window(chunk);
        }
        assert_eq!(a.weight_bytes(), b.weight_bytes());
        assert_eq!(a.version(), 8);
        let row = |user: &str| ServingRow {
            event_id: "x".into(),
            ts: 2,
            user_id: user.into(),
            item_id: "sku".into(),
            features: example(user, false).features,
        };
        let p_clicker = a.predict(&row("clicker"), None).p_click;
        let p_ignorer = a.predict(&row("ignorer"), None).p_click;
        assert!(
            p_clicker > 0.8 && p_ignorer < 0.2,
            "{p_clicker} {p_ignorer}"
        );
    }
}
