//! A fixed-size latency histogram (log-spaced buckets, 1 us .. about 10 min), so a
//! long-running job can report percentiles in constant memory.

use serde::Serialize;

/// Buckets grow by this factor.
const GROWTH: f64 = 1.1;
const BUCKETS: usize = 220;

/// Counts of durations per log-spaced bucket.
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max_us: u64,
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

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            total: 0,
            max_us: 0,
        }
    }
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
    /// Records one duration.
    pub fn record(&mut self, duration: std::time::Duration) {
        let us = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        self.counts[bucket_of(us)] += 1;
        self.total += 1;
        self.max_us = self.max_us.max(us);
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
    use std::time::Duration;

    #[test]
    fn percentiles_are_within_a_bucket() {
        let mut h = Histogram::default();
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        let p = h.percentiles();
        assert_eq!((p.count, p.max_us), (1000, 1000));
        assert!((500..=550).contains(&p.p50_us), "{p:?}");
        assert!((990..=1000).contains(&p.p99_us), "{p:?}");
    }
}
