//! ADWIN, adaptive windowing (Bifet & Gavaldà 2007, "Learning from time-changing data
//! with adaptive windowing"), as River implements it (`river.drift.ADWIN`, 0.26).
//!
//! The window is kept as an exponential histogram: row `i` holds up to `max_buckets`
//! buckets that each summarise `2^i` consecutive values (their sum and variance), so a
//! window of `W` values costs `O(max_buckets log W)` memory. Every `clock` values (once
//! the window holds more than `grace_period`), each bucket boundary is tried as a cut
//! into an older part `W0` and a newer part `W1`; if their means differ by more than
//!
//! `eps = sqrt(2 m s^2 d) + 2/3 d m`, with `m = 1/(n0 - L + 1) + 1/(n1 - L + 1)`,
//! `d = ln(2 ln(W) / delta)`, `s^2` the window's variance, `L = min_window_length`,
//!
//! the oldest bucket is dropped and the test repeats: the window shrinks to the part
//! after the change. The `2/3 d m` term is Bernstein's range term for values in [0, 1];
//! for wider values the test is slightly less strict than the paper's guarantee.
//!
//! Like River, the detector starts afresh (empty window) on the value after a detection,
//! so `width()` and `estimation()` then describe only the data since the change. The
//! reference file checks the detection indices against River on six streams.
//!
//! Non-finite values are ignored (they would poison the sums for good).

use serde::{Deserialize, Serialize};

/// ADWIN parameters; the defaults are River's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdwinConfig {
    /// Confidence: the probability of a false detection per test is bounded by it. 0.002.
    pub delta: f64,
    /// Test for a change every `clock` values. 32.
    pub clock: u64,
    /// Buckets per row before the two oldest merge. 5.
    pub max_buckets: usize,
    /// Minimum number of values on each side of a cut. 5.
    pub min_window_length: u64,
    /// No test until the window holds more than this many values. 10.
    pub grace_period: u64,
}

impl Default for AdwinConfig {
    fn default() -> Self {
        Self {
            delta: 0.002,
            clock: 32,
            max_buckets: 5,
            min_window_length: 5,
            grace_period: 10,
        }
    }
}

/// What the last detection cut off.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdwinChange {
    /// Values dropped from the old end of the window.
    pub dropped: u64,
    /// Mean of the dropped (pre-change) values.
    pub before_mean: f64,
    /// Mean of the values kept (post-change).
    pub after_mean: f64,
}

/// One row of the histogram: sums and variances of its buckets, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Row {
    totals: Vec<f64>,
    variances: Vec<f64>,
}

/// The ADWIN change detector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Adwin {
    config: AdwinConfig,
    rows: Vec<Row>,
    total: f64,
    variance: f64,
    width: f64,
    tick: u64,
    drift_detected: bool,
    detections: u64,
    last_change: Option<AdwinChange>,
}

impl Default for Adwin {
    fn default() -> Self {
        Self::new(AdwinConfig::default())
    }
}

impl Adwin {
    /// Takes new settings, keeping the window (a restart from a checkpoint with a
    /// changed configuration).
    pub fn set_config(&mut self, config: AdwinConfig) {
        self.config = config;
    }

    /// An empty detector.
    pub fn new(config: AdwinConfig) -> Self {
        Self {
            config,
            rows: vec![Row::default()],
            total: 0.0,
            variance: 0.0,
            width: 0.0,
            tick: 0,
            drift_detected: false,
            detections: 0,
            last_change: None,
        }
    }

    /// Its parameters.
    pub fn config(&self) -> &AdwinConfig {
        &self.config
    }

    /// Number of values in the window.
    pub fn width(&self) -> u64 {
        self.width as u64
    }

    /// Mean of the window (0 when empty).
    pub fn estimation(&self) -> f64 {
        if self.width > 0.0 {
            self.total / self.width
        } else {
            0.0
        }
    }

    /// Variance of the values in the window (0 when empty).
    pub fn variance(&self) -> f64 {
        if self.width > 0.0 {
            self.variance / self.width
        } else {
            0.0
        }
    }

    /// Whether the last update detected a change.
    pub fn drift_detected(&self) -> bool {
        self.drift_detected
    }

    /// Changes detected since creation (not reset by the restart after a detection).
    pub fn detections(&self) -> u64 {
        self.detections
    }

    /// What the most recent detection cut off.
    pub fn last_change(&self) -> Option<AdwinChange> {
        self.last_change
    }

    /// Adds a value; true when it completes the evidence for a change in the mean.
    pub fn update(&mut self, x: f64) -> bool {
        if !x.is_finite() {
            return false;
        }
        if self.drift_detected {
            // River starts a fresh window after reporting a change.
            let (config, detections, last) = (self.config, self.detections, self.last_change);
            *self = Self::new(config);
            self.detections = detections;
            self.last_change = last;
        }
        self.insert(x);
        self.drift_detected = self.detect_change();
        if self.drift_detected {
            self.detections += 1;
        }
        self.drift_detected
    }

    fn bucket_size(row: usize) -> f64 {
        2f64.powi(row as i32)
    }

    fn insert(&mut self, x: f64) {
        if self.rows.is_empty() {
            // Only a hand-edited checkpoint can get here; recover instead of panicking.
            self.rows.push(Row::default());
        }
        self.rows[0].totals.push(x);
        self.rows[0].variances.push(0.0);
        self.width += 1.0;
        if self.width > 1.0 {
            let d = x - self.total / (self.width - 1.0);
            self.variance += (self.width - 1.0) * d * d / self.width;
        }
        self.total += x;
        self.compress();
    }

    /// Merges the two oldest buckets of each full row into the next row, cascading.
    fn compress(&mut self) {
        let max = self.config.max_buckets.max(1);
        let mut idx = 0;
        while idx < self.rows.len() && self.rows[idx].totals.len() > max {
            let size = Self::bucket_size(idx);
            let row = &self.rows[idx];
            let (t0, t1) = (row.totals[0], row.totals[1]);
            let (v0, v1) = (row.variances[0], row.variances[1]);
            let (mu0, mu1) = (t0 / size, t1 / size);
            let merged_variance = v0 + v1 + size * 0.5 * (mu0 - mu1) * (mu0 - mu1);
            if idx + 1 == self.rows.len() {
                self.rows.push(Row::default());
            }
            self.rows[idx + 1].totals.push(t0 + t1);
            self.rows[idx + 1].variances.push(merged_variance);
            self.rows[idx].totals.drain(..2);
            self.rows[idx].variances.drain(..2);
            idx += 1;
        }
    }

    /// Drops the oldest bucket.
    fn delete_oldest(&mut self) {
        let Some(last) = self.rows.len().checked_sub(1) else {
            return;
        };
        let size = Self::bucket_size(last);
        let row = &mut self.rows[last];
        if row.totals.is_empty() {
            return;
        }
        let u = row.totals.remove(0);
        let v = row.variances.remove(0);
        let mu = u / size;
        self.width -= size;
        self.total -= u;
        let mu_window = self.total / self.width;
        self.variance -=
            v + size * self.width * (mu - mu_window) * (mu - mu_window) / (size + self.width);
        if row.totals.is_empty() && last > 0 {
            self.rows.pop();
        }
    }

    fn cut_is_significant(&self, n0: f64, n1: f64, delta_mean: f64) -> bool {
        let min_len = self.config.min_window_length as f64;
        let d = (2.0 * self.width.ln() / self.config.delta).ln();
        let m = 1.0 / (n0 - min_len + 1.0) + 1.0 / (n1 - min_len + 1.0);
        let epsilon = (2.0 * m * (self.variance / self.width) * d).sqrt() + 2.0 / 3.0 * d * m;
        delta_mean.abs() > epsilon
    }

    fn detect_change(&mut self) -> bool {
        self.tick += 1;
        let clock = self.config.clock.max(1);
        if !self.tick.is_multiple_of(clock) || self.width <= self.config.grace_period as f64 {
            return false;
        }
        let (width_before, total_before) = (self.width, self.total);
        let min_len = self.config.min_window_length as f64;
        let mut changed = false;
        let mut shrink = true;
        while shrink {
            shrink = false;
            let (mut n0, mut n1, mut u0, mut u1) = (0.0, self.width, 0.0, self.total);
            // Cuts from the oldest bucket forward; the last bucket cannot start W1... it is W1.
            'rows: for idx in (0..self.rows.len()).rev() {
                let size = Self::bucket_size(idx);
                let buckets = self.rows[idx].totals.len();
                for k in 0..buckets {
                    let t = self.rows[idx].totals[k];
                    n0 += size;
                    n1 -= size;
                    u0 += t;
                    u1 -= t;
                    if idx == 0 && k + 1 == buckets {
                        break 'rows;
                    }
                    let delta_mean = u0 / n0 - u1 / n1;
                    if n1 >= min_len && n0 >= min_len && self.cut_is_significant(n0, n1, delta_mean)
                    {
                        shrink = true;
                        changed = true;
                        if self.width > 0.0 {
                            self.delete_oldest();
                            break 'rows;
                        }
                    }
                }
            }
        }
        if changed {
            let dropped = width_before - self.width;
            self.last_change = Some(AdwinChange {
                dropped: dropped as u64,
                before_mean: if dropped > 0.0 {
                    (total_before - self.total) / dropped
                } else {
                    0.0
                },
                after_mean: self.estimation(),
            });
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::SplitMix;

    #[test]
    fn window_statistics_of_a_short_stream() {
        let mut a = Adwin::default();
        for x in [1.0, 2.0, 3.0, 4.0, 5.0] {
            assert!(!a.update(x));
        }
        assert_eq!(a.width(), 5);
        assert_eq!(a.estimation(), 3.0);
        assert!((a.variance() - 2.0).abs() < 1e-12);
        for _ in 0..1000 {
            a.update(3.0);
        }
        assert_eq!(a.width(), 1005);
    }

    #[test]
    fn non_finite_values_are_ignored() {
        let mut a = Adwin::default();
        a.update(1.0);
        assert!(!a.update(f64::NAN));
        assert!(!a.update(f64::INFINITY));
        assert_eq!((a.width(), a.estimation()), (1, 1.0));
        assert_eq!(Adwin::default().estimation(), 0.0);
    }

    #[test]
    fn stationary_bernoulli_and_normal_streams_raise_nothing() {
        for seed in [1, 2, 3] {
            let mut rng = SplitMix(seed);
            let mut bern = Adwin::default();
            let mut norm = Adwin::default();
            for i in 0..20_000 {
                assert!(
                    !bern.update(rng.bernoulli(0.2)),
                    "seed {seed} bernoulli at {i}"
                );
                assert!(
                    !norm.update(0.5 + 0.1 * rng.normal()),
                    "seed {seed} normal at {i}"
                );
            }
            assert_eq!(bern.width(), 20_000);
            assert!((bern.estimation() - 0.2).abs() < 0.01);
        }
    }

    /// First detection at or after `change` (and none before it) over a few seeds.
    fn delays(mut make: impl FnMut(&mut SplitMix, usize) -> f64, change: usize) -> Vec<usize> {
        (1..=5)
            .map(|seed| {
                let mut rng = SplitMix(seed);
                let mut a = Adwin::default();
                for i in 0..change + 5_000 {
                    if a.update(make(&mut rng, i)) {
                        assert!(i >= change, "seed {seed}: false detection at {i}");
                        return i - change;
                    }
                }
                panic!("seed {seed}: change at {change} not detected");
            })
            .collect()
    }

    #[test]
    fn bernoulli_rate_step_is_found_quickly() {
        // 0.2 -> 0.4 at 10 000: measured delays 271, 175, 239, 143, 111 (seeds 1-5).
        let d = delays(
            |rng, i| rng.bernoulli(if i < 10_000 { 0.2 } else { 0.4 }),
            10_000,
        );
        assert!(d.iter().all(|d| *d < 500), "{d:?}");
    }

    #[test]
    fn normal_mean_shift_is_found_quickly() {
        // N(0.5, 0.1) -> N(0.6, 0.1) at 10 000: measured delays 143, 111, 143, 111, 111
        // (the clock of 32 makes them step by 32).
        let d = delays(
            |rng, i| 0.1 * rng.normal() + if i < 10_000 { 0.5 } else { 0.6 },
            10_000,
        );
        assert!(d.iter().all(|d| *d < 200), "{d:?}");
    }

    #[test]
    fn detection_reports_both_sides_and_restarts_the_window() {
        let mut a = Adwin::default();
        let mut at = None;
        for i in 0..4_000 {
            let x = if i < 2_000 { 0.0 } else { 1.0 };
            if a.update(x) {
                at = Some(i);
                break;
            }
        }
        let at = at.expect("a 0 -> 1 step is detected");
        assert!((2_000..2_100).contains(&at), "{at}");
        // The cut falls on a bucket boundary: it drops most of the zeros, keeps the ones.
        let change = a.last_change().expect("change recorded");
        assert_eq!(change.before_mean, 0.0, "{change:?}");
        assert!(
            change.after_mean > 0.1 && change.dropped >= 1_500,
            "{change:?}"
        );
        a.update(1.0);
        assert_eq!(a.width(), 1);
        assert_eq!(a.detections(), 1);
    }
}
