//! A fixed-size latency histogram, so a long-running job reports latencies in constant
//! memory. It keeps two views of the same observations:
//! - log-spaced buckets (1 us .. about 10 min, 10 % apart) for the run summary's
//!   percentiles;
//! - counts per fixed upper bound plus the exact sum, for the Prometheus histogram on
//!   `/metrics`. Each observation is compared with the bounds at full (nanosecond)
//!   resolution, so an exported `le` count is exact, not derived from the log buckets.

use std::time::Duration;

use serde::Serialize;

/// Log buckets grow by this factor.
const GROWTH: f64 = 1.1;
const BUCKETS: usize = 220;

/// Exported bucket bounds of `shopstream_prediction_latency_seconds`: 100 us .. 60 s.
/// Serving is in the low milliseconds when caught up (BENCHMARKS.md: p99 about 11 ms) and
/// up to seconds behind a backlog or a window close, hence fine steps below 100 ms.
pub const PREDICTION_LATENCY_BOUNDS: &[Duration] = &[
    Duration::from_micros(100),
    Duration::from_micros(250),
    Duration::from_micros(500),
    Duration::from_millis(1),
    Duration::from_micros(2_500),
    Duration::from_millis(5),
    Duration::from_millis(10),
    Duration::from_millis(25),
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_millis(2_500),
    Duration::from_secs(5),
    Duration::from_secs(10),
    Duration::from_secs(30),
    Duration::from_secs(60),
];

/// Exported bucket bounds of `shopstream_window_processing_seconds`: 1 ms .. 60 s (a
/// window's joins, training, drift and store writes take milliseconds to seconds): the
/// prediction latency ladder from 1 ms on.
pub const WINDOW_PROCESSING_BOUNDS: &[Duration] = PREDICTION_LATENCY_BOUNDS.split_at(3).1;

/// Counts of durations per log-spaced bucket and per exported bound.
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max_us: u64,
    /// Exported upper bounds, ascending.
    bounds: &'static [Duration],
    /// `per_bound[i]`: observations in `(bounds[i - 1], bounds[i]]`; the extra last entry
    /// counts those above every bound. Not cumulative, so recording touches one entry.
    per_bound: Vec<u64>,
    /// Sum of all observations (saturating; 584 years of nanoseconds).
    sum: Duration,
}

/// Percentiles of a histogram, in microseconds (upper bucket bounds, so within 10 %).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// Observations.
    pub count: u64,
    /// Median.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// Largest observation (exact).
    pub max_us: u64,
}

fn bucket_of(us: u64) -> usize {
    if us <= 1 {
        return 0;
    }
    ((us as f64).ln() / GROWTH.ln())
        .ceil()
        .min((BUCKETS - 1) as f64) as usize
}

fn upper_bound(bucket: usize) -> u64 {
    GROWTH.powi(bucket as i32).ceil() as u64
}

impl Histogram {
    /// An empty histogram exporting the given upper bounds (ascending; `+Inf` is
    /// implied), for example [`PREDICTION_LATENCY_BOUNDS`].
    pub fn new(bounds: &'static [Duration]) -> Self {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]), "ascending bounds");
        Self {
            counts: vec![0; BUCKETS],
            total: 0,
            max_us: 0,
            bounds,
            per_bound: vec![0; bounds.len() + 1],
            sum: Duration::ZERO,
        }
    }

    /// Records one duration.
    pub fn record(&mut self, duration: Duration) {
        let us = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        self.counts[bucket_of(us)] += 1;
        self.total += 1;
        self.max_us = self.max_us.max(us);
        // The first bound >= duration: Prometheus buckets are `le` (less or equal).
        let slot = self.bounds.partition_point(|bound| *bound < duration);
        self.per_bound[slot] += 1;
        self.sum = self.sum.saturating_add(duration);
    }

    /// Observations recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// Sum of the observations.
    pub fn sum(&self) -> Duration {
        self.sum
    }

    /// `(upper bound, observations <= bound)` per exported bound, ascending and
    /// cumulative as in Prometheus' `_bucket{le}`; the `+Inf` bucket is [`Self::count`].
    pub fn cumulative_buckets(&self) -> impl Iterator<Item = (Duration, u64)> + '_ {
        self.bounds
            .iter()
            .zip(&self.per_bound)
            .scan(0u64, |seen, (bound, count)| {
                *seen += count;
                Some((*bound, *seen))
            })
    }

    fn quantile(&self, q: f64) -> u64 {
        let rank = ((self.total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (bucket, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return upper_bound(bucket).min(self.max_us);
            }
        }
        self.max_us
    }

    /// p50, p99 and max.
    pub fn percentiles(&self) -> Percentiles {
        if self.total == 0 {
            return Percentiles::default();
        }
        Percentiles {
            count: self.total,
            p50_us: self.quantile(0.5),
            p99_us: self.quantile(0.99),
            max_us: self.max_us,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_within_a_bucket() {
        let mut h = Histogram::new(PREDICTION_LATENCY_BOUNDS);
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        let p = h.percentiles();
        assert_eq!((p.count, p.max_us), (1000, 1000));
        assert!((500..=550).contains(&p.p50_us), "{p:?}");
        assert!((990..=1000).contains(&p.p99_us), "{p:?}");
    }

    #[test]
    fn exported_buckets_count_exactly_at_and_around_the_bounds() {
        let mut h = Histogram::new(WINDOW_PROCESSING_BOUNDS);
        let ms = Duration::from_millis(1);
        // On the bound, one nanosecond above it, far above every bound.
        for d in [ms, ms + Duration::from_nanos(1), Duration::from_secs(61)] {
            h.record(d);
        }
        let buckets: Vec<_> = h.cumulative_buckets().collect();
        assert_eq!(buckets.len(), WINDOW_PROCESSING_BOUNDS.len());
        assert_eq!(buckets[0], (ms, 1), "le is inclusive");
        assert_eq!(buckets[1], (Duration::from_micros(2_500), 2));
        assert_eq!(buckets.last(), Some(&(Duration::from_secs(60), 2)));
        assert_eq!(h.count(), 3, "+Inf holds the one above 60 s");
        assert_eq!(
            h.sum(),
            Duration::from_secs(61) + Duration::from_millis(2) + Duration::from_nanos(1)
        );
    }
}
