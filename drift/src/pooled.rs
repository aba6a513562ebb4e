//! The reference's values of each continuous feature pooled into one sorted sample, kept
//! up to date as windows enter and leave the reference: each window then merges one
//! window's values in and takes the oldest one's out (two linear walks) instead of sorting
//! the whole reference again.
//!
//! The pooled sample is a function of the windows held: values are ordered by
//! [`f64::total_cmp`], under which equal values have equal bits, so it is the very sample
//! that sorting the windows' values together gives, whatever the order of arrival. It is
//! never stored: a checkpoint holds the windows and the pool is rebuilt when they are read.

use std::collections::BTreeMap;

/// One feature's pooled values.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Pool {
    /// Every value of the feature in the windows held, ascending by `total_cmp`.
    pub sorted: Vec<f64>,
    /// Windows held with at least one value of the feature.
    pub windows: usize,
}

/// The pools of every continuous feature seen in the windows held.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct PooledSamples {
    by_feature: BTreeMap<String, Pool>,
}

impl PooledSamples {
    /// The pools of `windows`, each a map of feature to its sorted values.
    pub fn of<'a>(windows: impl IntoIterator<Item = &'a BTreeMap<String, Vec<f64>>>) -> Self {
        let mut pooled = Self::default();
        for window in windows {
            pooled.add(window);
        }
        pooled
    }

    /// One feature's pool, if a window held has values of it.
    pub fn get(&self, feature: &str) -> Option<&Pool> {
        self.by_feature.get(feature)
    }

    /// A window enters: each feature's sorted values are merged into its pool.
    pub fn add(&mut self, window: &BTreeMap<String, Vec<f64>>) {
        for (feature, values) in window.iter().filter(|(_, v)| !v.is_empty()) {
            // (The name is copied only for a feature no window held.)
            match self.by_feature.get_mut(feature) {
                Some(pool) => {
                    pool.sorted = merged(&pool.sorted, values);
                    pool.windows += 1;
                }
                None => {
                    let pool = Pool {
                        sorted: values.clone(),
                        windows: 1,
                    };
                    self.by_feature.insert(feature.clone(), pool);
                }
            }
        }
    }

    /// A window leaves: each feature's values, which an earlier [`PooledSamples::add`]
    /// merged in, are taken out of its pool.
    pub fn remove(&mut self, window: &BTreeMap<String, Vec<f64>>) {
        for (feature, values) in window.iter().filter(|(_, v)| !v.is_empty()) {
            let Some(pool) = self.by_feature.get_mut(feature) else {
                debug_assert!(false, "window values of {feature} were never pooled");
                continue;
            };
            pool.sorted = without(&pool.sorted, values);
            pool.windows -= 1;
            if pool.windows == 0 {
                self.by_feature.remove(feature);
            }
        }
    }
}

/// The sorted union of two sorted multisets. Ties are decided by `total_cmp` (-0 before
/// +0), the order of the sort this replaces, so the pool has the bits it gave.
fn merged(a: &[f64], b: &[f64]) -> Vec<f64> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if a[i].total_cmp(&b[j]).is_le() {
            out.push(a[i]);
            i += 1;
        } else {
            out.push(b[j]);
            j += 1;
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

/// Sorted `pool` less one occurrence of each value of sorted `gone`, which it contains.
fn without(pool: &[f64], gone: &[f64]) -> Vec<f64> {
    let mut out = Vec::with_capacity(pool.len().saturating_sub(gone.len()));
    let mut next = gone.iter().peekable();
    for &x in pool {
        if next.next_if(|g| g.total_cmp(&x).is_eq()).is_none() {
            out.push(x);
        }
    }
    debug_assert!(next.peek().is_none(), "a value left was never pooled");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::SplitMix;

    /// The pool as sorting every window's values together gives it.
    fn sorted_together(windows: &[BTreeMap<String, Vec<f64>>], feature: &str) -> Vec<u64> {
        let mut all: Vec<f64> = windows
            .iter()
            .filter_map(|w| w.get(feature))
            .flatten()
            .copied()
            .collect();
        all.sort_by(f64::total_cmp);
        all.into_iter().map(f64::to_bits).collect()
    }

    fn window(rng: &mut SplitMix) -> BTreeMap<String, Vec<f64>> {
        let mut w = BTreeMap::new();
        for feature in ["price", "position", "rare"] {
            let n = match feature {
                "rare" => rng.below(3) * rng.below(2),
                _ => rng.below(60),
            };
            let mut values: Vec<f64> = (0..n)
                .map(|_| match rng.below(4) {
                    0 => -0.0,
                    1 => 0.0,
                    2 => rng.below(5) as f64,
                    _ => rng.normal(),
                })
                .collect();
            values.sort_by(f64::total_cmp);
            w.insert(feature.to_string(), values);
        }
        w
    }

    #[test]
    fn a_pool_kept_up_to_date_is_the_windows_sorted_together() {
        let mut rng = SplitMix(5);
        for held in [1, 3, 12] {
            let mut windows: Vec<BTreeMap<String, Vec<f64>>> = Vec::new();
            let mut pooled = PooledSamples::default();
            for _ in 0..80 {
                let w = window(&mut rng);
                pooled.add(&w);
                windows.push(w);
                if windows.len() > held {
                    pooled.remove(&windows.remove(0));
                }
                for feature in ["price", "position", "rare"] {
                    let expected = sorted_together(&windows, feature);
                    let with_values = windows
                        .iter()
                        .filter(|w| w.get(feature).is_some_and(|v| !v.is_empty()))
                        .count();
                    match pooled.get(feature) {
                        Some(pool) => {
                            let bits: Vec<u64> = pool.sorted.iter().map(|v| v.to_bits()).collect();
                            assert_eq!(bits, expected, "{feature}, {held} windows held");
                            assert_eq!(pool.windows, with_values);
                        }
                        None => assert_eq!((expected.len(), with_values), (0, 0)),
                    }
                }
                assert_eq!(pooled, PooledSamples::of(&windows));
            }
        }
    }
}
