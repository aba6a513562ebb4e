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
    /// Each continuous feature's finite values, sorted and thinned.
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
    fn from(windows: ReferenceWindows<WindowSummary>) -> Self {
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
