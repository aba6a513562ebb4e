//! What the monitor holds of its reference windows: each window's summary, in a
//! [`ReferenceWindows`], and the continuous features' values pooled over them
//! ([`PooledSamples`]), which follow every window that enters or leaves.
//!
//! Only the summaries are serialised (in the shape they always had); the pools are rebuilt
//! from them when a checkpoint is read, and take no part in equality.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::observation::ScenarioOutcomes;
use super::pooled::{Pool, PooledSamples};
use super::reference::{Pushed, ReferenceMode, ReferenceWindows};

/// What the reference keeps of a window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct WindowSummary {
    /// Each continuous feature's finite values, sorted by `f64::total_cmp` and thinned.
    pub continuous: BTreeMap<String, Vec<f64>>,
    /// Each categorical feature's counts.
    pub categorical: BTreeMap<String, BTreeMap<String, u64>>,
    /// Each scenario's outcomes.
    pub scenarios: BTreeMap<String, ScenarioOutcomes>,
}

/// The reference windows' summaries and their pooled continuous values.
#[derive(Debug, Clone)]
pub(crate) struct HeldReference {
    windows: ReferenceWindows<WindowSummary>,
    pooled: PooledSamples,
}

impl HeldReference {
    /// An empty reference.
    pub fn new(mode: ReferenceMode) -> Self {
        ReferenceWindows::new(mode).into()
    }

    /// Windows held.
    pub fn len(&self) -> usize {
        self.windows.len()
    }

    /// The summaries, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &WindowSummary> {
        self.windows.iter()
    }

    /// A continuous feature's values over the windows held, if any has some.
    pub fn pooled(&self, feature: &str) -> Option<&Pool> {
        self.pooled.get(feature)
    }

    /// Adds a closed window's summary (see [`ReferenceWindows::push`]).
    pub fn push(&mut self, summary: WindowSummary) {
        let Pushed::Held { dropped } = self.windows.push(summary) else {
            return;
        };
        for old in &dropped {
            self.pooled.remove(&old.continuous);
        }
        if let Some(new) = self.windows.newest() {
            self.pooled.add(&new.continuous);
        }
    }
}

impl From<ReferenceWindows<WindowSummary>> for HeldReference {
    /// The windows as read from a checkpoint: values out of order (which no build writes)
    /// are sorted first, since the pools merge and take out sorted runs.
    fn from(mut windows: ReferenceWindows<WindowSummary>) -> Self {
        for window in windows.iter_mut() {
            for values in window.continuous.values_mut() {
                // (On values already in order, as every build writes them, the sort is
                // one linear pass.)
                values.sort_by(f64::total_cmp);
            }
        }
        let pooled = PooledSamples::of(windows.iter().map(|w| &w.continuous));
        Self { windows, pooled }
    }
}

/// The pools follow from the windows.
impl PartialEq for HeldReference {
    fn eq(&self, other: &Self) -> bool {
        self.windows == other.windows
    }
}

impl Serialize for HeldReference {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.windows.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for HeldReference {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        ReferenceWindows::deserialize(deserializer).map(Self::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(i: u32) -> WindowSummary {
        let mut continuous = BTreeMap::new();
        continuous.insert("price".to_string(), vec![f64::from(i % 4), 10.0]);
        if i.is_multiple_of(3) {
            continuous.insert("rare".to_string(), vec![-f64::from(i)]);
        }
        WindowSummary {
            continuous,
            ..WindowSummary::default()
        }
    }

    #[test]
    fn the_pools_follow_the_windows_held_and_are_rebuilt_when_read() {
        for mode in [
            ReferenceMode::Trailing { windows: 4 },
            ReferenceMode::Pinned { windows: 4 },
        ] {
            let mut held = HeldReference::new(mode);
            for i in 0..11 {
                held.push(summary(i));
                let rebuilt = PooledSamples::of(held.iter().map(|w| &w.continuous));
                assert_eq!(held.pooled, rebuilt, "{mode:?} after window {i}");
            }
            let first = match mode {
                ReferenceMode::Trailing { .. } => 7,
                ReferenceMode::Pinned { .. } => 0,
            };
            let price = held.pooled("price").expect("price is pooled");
            assert_eq!(price.windows, 4);
            let mut expected: Vec<f64> = (first..first + 4).map(|i| f64::from(i % 4)).collect();
            expected.extend([10.0; 4]);
            expected.sort_by(f64::total_cmp);
            assert_eq!(price.sorted, expected);

            let json = serde_json::to_string(&held).expect("serialise");
            assert_eq!(json, serde_json::to_string(&held.windows).expect("windows"));
            let back: HeldReference = serde_json::from_str(&json).expect("read back");
            assert_eq!(back.pooled, held.pooled);
        }
    }

    #[test]
    fn a_checkpoints_values_out_of_order_are_sorted_when_read() {
        let mut held = HeldReference::new(ReferenceMode::Trailing { windows: 2 });
        held.push(summary(1));
        let json = serde_json::to_string(&held)
            .expect("serialise")
            .replace("[1.0,10.0]", "[10.0,1.0]");
        let mut back: HeldReference = serde_json::from_str(&json).expect("read back");
        assert_eq!(back, held);
        // The window leaves the pool whole when it leaves the reference.
        back.push(summary(2));
        back.push(summary(4));
        assert_eq!(
            back.pooled("price").map(|p| p.sorted.clone()),
            Some(vec![0.0, 2.0, 10.0, 10.0])
        );
    }
}
