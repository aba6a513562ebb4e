//! Bucketed rolling counters over three horizons: 1 hour (6 buckets of 10 minutes),
//! 24 hours (24 buckets of 1 hour) and 7 days (7 buckets of 1 day).
//!
//! A horizon's value at time `t` is the sum of the buckets that overlap `(t - horizon, t]`,
//! so the oldest bucket may reach up to one bucket width further back than the horizon
//! (the price of bounded memory: 37 buckets of 12 bytes per key, whatever the traffic).
//! Counters saturate at 65,535 per bucket.

use serde::{Deserialize, Serialize};
use shopstream_ingest::event::Millis;

/// What one bucket counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    /// Impressions.
    pub impressions: u16,
    /// Clicks.
    pub clicks: u16,
    /// Add-to-cart events.
    pub carts: u16,
    /// Units ordered (placed orders).
    pub units: u16,
    /// Money spent (placed orders).
    pub spend: f32,
}

impl Counts {
    fn add(&mut self, other: Counts) {
        self.impressions = self.impressions.saturating_add(other.impressions);
        self.clicks = self.clicks.saturating_add(other.clicks);
        self.carts = self.carts.saturating_add(other.carts);
        self.units = self.units.saturating_add(other.units);
        self.spend += other.spend;
    }
}

/// Sums over one horizon.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    /// Impressions.
    pub impressions: i64,
    /// Clicks.
    pub clicks: i64,
    /// Add-to-cart events.
    pub carts: i64,
    /// Units ordered.
    pub units: i64,
    /// Money spent.
    pub spend: f64,
}

impl Totals {
    fn add(&mut self, c: &Counts) {
        self.impressions += i64::from(c.impressions);
        self.clicks += i64::from(c.clicks);
        self.carts += i64::from(c.carts);
        self.units += i64::from(c.units);
        self.spend += f64::from(c.spend);
    }
}

/// Adds `delta` to the ring `slots` whose newest bucket is `*newest`, at `bucket`.
fn ring_add(slots: &mut [Counts], newest: &mut i64, bucket: i64, delta: Counts) {
    let n = slots.len() as i64;
    if *newest == i64::MIN || bucket - *newest >= n {
        slots.iter_mut().for_each(|c| *c = Counts::default());
        *newest = bucket;
    } else if bucket > *newest {
        for b in (*newest + 1)..=bucket {
            slots[b.rem_euclid(n) as usize] = Counts::default();
        }
        *newest = bucket;
    } else if *newest - bucket >= n {
        // Older than the ring reaches: cannot happen for events applied in time order.
        return;
    }
    slots[bucket.rem_euclid(n) as usize].add(delta);
}

/// Sums the buckets of a ring that overlap the horizon ending at `bucket`.
fn ring_totals(slots: &[Counts], newest: i64, bucket: i64) -> Totals {
    let mut totals = Totals::default();
    let n = slots.len() as i64;
    if newest == i64::MIN {
        return totals;
    }
    let oldest = (bucket - n + 1).max(newest - n + 1);
    for b in oldest..=newest.min(bucket) {
        totals.add(&slots[b.rem_euclid(n) as usize]);
    }
    totals
}

const TEN_MINUTES: Millis = 600_000;
const HOUR: Millis = 3_600_000;
const DAY: Millis = 86_400_000;

/// Rolling counters of one key (a user or an item) over 1 h, 24 h and 7 d: 37 buckets
/// inline, no allocation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rolling {
    /// Newest bucket number written, per ring (hour, day, week).
    newest: [i64; 3],
    hour: [Counts; 6],
    day: [Counts; 24],
    week: [Counts; 7],
}

impl Default for Rolling {
    fn default() -> Self {
        Self {
            newest: [i64::MIN; 3],
            hour: Default::default(),
            day: Default::default(),
            week: Default::default(),
        }
    }
}

/// The three horizons' totals, shortest first.
pub type Horizons = [Totals; 3];

/// Horizon names as used in column names, shortest first.
pub const HORIZONS: [&str; 3] = ["1h", "24h", "7d"];

impl Rolling {
    /// Adds `delta` at event time `ts`.
    pub fn add(&mut self, ts: Millis, delta: Counts) {
        ring_add(
            &mut self.hour,
            &mut self.newest[0],
            ts.div_euclid(TEN_MINUTES),
            delta,
        );
        ring_add(
            &mut self.day,
            &mut self.newest[1],
            ts.div_euclid(HOUR),
            delta,
        );
        ring_add(
            &mut self.week,
            &mut self.newest[2],
            ts.div_euclid(DAY),
            delta,
        );
    }

    /// Totals over each horizon as of `ts`.
    pub fn totals(&self, ts: Millis) -> Horizons {
        [
            ring_totals(&self.hour, self.newest[0], ts.div_euclid(TEN_MINUTES)),
            ring_totals(&self.day, self.newest[1], ts.div_euclid(HOUR)),
            ring_totals(&self.week, self.newest[2], ts.div_euclid(DAY)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clicks(n: u16) -> Counts {
        Counts {
            clicks: n,
            ..Counts::default()
        }
    }

    #[test]
    fn horizons_forget_old_buckets() {
        let t0 = 1_767_571_200_000;
        let mut r = Rolling::default();
        r.add(t0, clicks(1));
        r.add(t0 + 30 * 60_000, clicks(2));
        let at = |dt: Millis| r.totals(t0 + dt).map(|t| t.clicks);
        assert_eq!(at(31 * 60_000), [3, 3, 3]);
        // 65 minutes later the first click's 10-minute bucket has left the 1 h ring.
        assert_eq!(at(65 * 60_000), [2, 3, 3]);
        // Both clicks fell in the first hour bucket, which the 24 h ring has left by now.
        assert_eq!(at(25 * HOUR), [0, 0, 3]);
        assert_eq!(at(8 * DAY), [0, 0, 0]);
    }

    #[test]
    fn counters_saturate_instead_of_wrapping() {
        let mut r = Rolling::default();
        for _ in 0..3 {
            r.add(0, clicks(30_000));
        }
        assert_eq!(r.totals(0)[0].clicks, 65_535);
    }
}
