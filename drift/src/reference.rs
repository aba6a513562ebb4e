//! The reference the monitor compares each window with: a span of past windows, either
//! trailing (the N windows before the current one, so the question is "did something
//! change recently?") or pinned (the first N windows, "how far are we from the baseline?").
//!
//! A trailing reference absorbs a lasting change: once the new regime fills about half of
//! it the statistics fall back under threshold and the alert resolves (after K windows),
//! which is what "tell me when something changes" wants. A pinned reference keeps an alert
//! open for as long as the traffic stays away from the baseline.
//!
//! Samples are bounded: a window's values of one feature are thinned to at most
//! `max_reference_sample / windows` by keeping evenly spaced order statistics, which
//! preserves the quantiles (what PSI and KS look at) deterministically, with no RNG.

use shopstream_config::{CalibrationHistory, DriftReference};
use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Which past windows form the reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReferenceMode {
    /// The last `windows` windows before the current one.
    Trailing {
        /// How many.
        windows: usize,
    },
    /// The first `windows` windows seen, then frozen.
    Pinned {
        /// How many.
        windows: usize,
    },
}

impl ReferenceMode {
    /// The number of windows the reference holds when full.
    pub fn windows(self) -> usize {
        match self {
            ReferenceMode::Trailing { windows } | ReferenceMode::Pinned { windows } => windows,
        }
    }

    /// The configuration's name of this kind of reference.
    pub fn kind(self) -> DriftReference {
        match self {
            ReferenceMode::Trailing { .. } => DriftReference::Trailing,
            ReferenceMode::Pinned { .. } => DriftReference::Pinned,
        }
    }

    /// The calibration history of the significance tests against this reference (see
    /// [`DriftReference::calibration_history`]).
    pub fn calibration_history(self, fire_after_windows: u32) -> CalibrationHistory {
        self.kind()
            .calibration_history(self.windows().max(1), fire_after_windows)
    }
}

impl Default for ReferenceMode {
    fn default() -> Self {
        ReferenceMode::Trailing { windows: 12 }
    }
}

/// A bounded span of per-window summaries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReferenceWindows<T> {
    mode: ReferenceMode,
    windows: VecDeque<T>,
}

impl<T> ReferenceWindows<T> {
    /// An empty reference.
    pub fn new(mode: ReferenceMode) -> Self {
        Self {
            mode,
            windows: VecDeque::new(),
        }
    }

    /// Windows held.
    pub fn len(&self) -> usize {
        self.windows.len()
    }

    /// Whether no window is held yet.
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    /// The windows, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.windows.iter()
    }

    /// The windows, oldest first, to change in place.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.windows.iter_mut()
    }

    /// The newest window held.
    pub fn newest(&self) -> Option<&T> {
        self.windows.back()
    }

    /// Adds a closed window: trailing drops the oldest beyond capacity, pinned ignores
    /// windows once full.
    pub fn push(&mut self, window: T) -> Pushed<T> {
        let cap = self.mode.windows().max(1);
        match self.mode {
            ReferenceMode::Trailing { .. } => {
                self.windows.push_back(window);
                let excess = self.windows.len().saturating_sub(cap);
                Pushed::Held {
                    dropped: self.windows.drain(..excess).collect(),
                }
            }
            ReferenceMode::Pinned { .. } if self.windows.len() < cap => {
                self.windows.push_back(window);
                Pushed::Held {
                    dropped: Vec::new(),
                }
            }
            ReferenceMode::Pinned { .. } => Pushed::Ignored,
        }
    }
}

/// What [`ReferenceWindows::push`] did with a window.
#[derive(Debug, PartialEq)]
#[must_use = "a window held or dropped changes what is derived from the reference"]
pub enum Pushed<T> {
    /// It is the newest window held; the oldest windows beyond capacity were dropped.
    Held {
        /// The windows dropped, oldest first.
        dropped: Vec<T>,
    },
    /// A full pinned reference keeps the windows it has.
    Ignored,
}

/// At most `cap` evenly spaced order statistics of a sorted sample (all of it if it is
/// small enough), including the minimum and maximum; a `cap` below 2 keeps the median.
pub fn thin_sorted(sorted: Vec<f64>, cap: usize) -> Vec<f64> {
    let n = sorted.len();
    if n <= cap {
        return sorted;
    }
    if cap <= 1 {
        return sorted.get(n / 2).copied().into_iter().collect();
    }
    (0..cap)
        .map(|i| {
            // Index of the i-th of `cap` evenly spaced ranks; exact integer arithmetic.
            let at = (i * (n - 1) + (cap - 1) / 2) / (cap - 1);
            sorted[at.min(n - 1)]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailing_keeps_the_latest_and_pinned_the_first() {
        let mut t = ReferenceWindows::new(ReferenceMode::Trailing { windows: 3 });
        let mut p = ReferenceWindows::new(ReferenceMode::Pinned { windows: 3 });
        for w in 0..10 {
            let dropped = (w >= 3).then_some(w - 3).into_iter().collect();
            assert_eq!(t.push(w), Pushed::Held { dropped });
            let pinned = if w < 3 {
                Pushed::Held {
                    dropped: Vec::new(),
                }
            } else {
                Pushed::Ignored
            };
            assert_eq!(p.push(w), pinned);
        }
        assert_eq!(t.iter().copied().collect::<Vec<_>>(), [7, 8, 9]);
        assert_eq!(p.iter().copied().collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!((t.len(), p.is_empty()), (3, false));
    }

    #[test]
    fn thinning_keeps_ends_and_spacing() {
        let v: Vec<f64> = (0..101).map(f64::from).collect();
        assert_eq!(thin_sorted(v.clone(), 200).len(), 101);
        assert_eq!(thin_sorted(v.clone(), 5), [0.0, 25.0, 50.0, 75.0, 100.0]);
        assert_eq!(thin_sorted(v.clone(), 1), [50.0]);
        assert!(thin_sorted(v, 0).len() <= 1);
        assert!(thin_sorted(Vec::new(), 0).is_empty());
    }
}
