//! Drift: is the traffic, or the model, still what it was? Everything about drift lives
//! in this crate, in three layers.
//!
//! **Statistics and detectors** (pure computation, no I/O): the job's drift stage feeds
//! [`DriftMonitor::observe_window`] once per closed window and publishes what comes back
//! (gauges, `shop.alerts` events, report rows).
//!
//!
//! - [`stats`]: the two-sample statistics behind data drift. PSI with quantile bins (the
//!   0.1 / 0.2 bands people know), KS and chi-squared for small windows, Jensen-Shannon
//!   and Wasserstein for large ones (Evidently's split). Each reproduces numpy/SciPy to
//!   1e-9 on the vectors of `tests/data/drift_reference.json`, made by
//!   `scripts/make_drift_vectors.py`, so the numbers mean what the literature means.
//! - [`kolmogorov`]: the exact KS distribution SciPy uses for its p-values (a separate
//!   file because it is most of the numerical work); [`special`]: the chi-squared tail.
//! - [`adwin`] and [`page_hinkley`]: sequential change detectors (River's algorithms)
//!   for the per-example prequential loss, which see a degradation within a few hundred
//!   examples instead of waiting for window statistics.
//! - [`alerts`]: the lifecycle that turns noisy per-window values into pages: fire after
//!   K windows in breach (on one side, for z statistics; effect sizes only when their
//!   test is significant), resolve after K back, one open alert per key, deterministic
//!   ids.
//! - [`reference`](mod@reference): which past windows a window is compared with (trailing or pinned),
//!   with bounded, deterministic sample memory.
//! - [`observation`]: what the pipeline hands over per window ([`WindowObservation`]),
//!   either matured examples with their labels or, marked
//!   [`WindowObservation::clicks_on_arrival`], impressions and click events as they
//!   arrived (the early click rate, [`EARLY_CTR`]).
//! - [`settings`]: the job's `[drift]` configuration section mapped onto [`MonitorConfig`].
//! - [`monitor`]: the per-window driver that ties it together, including a design-effect
//!   correction of the significance tests (clickstream windows are clustered by session,
//!   so tests calibrated for independent samples would page on noise).
//!
//! **The job's drift stage**:
//!
//! - [`stage`]: the two monitors (arrival, matured) fed from the job's events and
//!   examples, and what a closed window yields (rows, alerts, gauges);
//! - [`tables`]: the `drift` and `alerts` tables (row type and Arrow schemas);
//! - [`webhook`]: posting alert events to `drift.webhook_url`, off the job's path.
//!
//! **Tools over the stage**: [`report`] (`shopstream drift report`: load, chart, page)
//! and [`bench`] (`shopstream drift bench`: injected drifts, detection delays, false
//! alarms).
//!
//! Everything is deterministic (no RNG, no hash-order iteration) and total: empty samples,
//! NaN and infinities give a defined value or a [`DriftError`], never a panic.

pub mod adwin;
pub mod alerts;
pub mod bench;
mod held_reference;
pub mod kolmogorov;
pub mod monitor;
pub mod observation;
pub mod page_hinkley;
mod pooled;
pub mod reference;
pub mod report;
pub mod settings;
pub mod special;
pub mod stage;
pub mod stats;
pub mod tables;
#[cfg(test)]
mod test_rng;
pub mod webhook;

pub use adwin::{Adwin, AdwinChange, AdwinConfig};
pub use alerts::{
    AlertEvent, AlertKey, AlertPolicy, AlertState, AlertTracker, Direction, DriftKind, Observation,
    Severity,
};
pub use monitor::{
    DriftMonitor, FeatureDrift, MonitorConfig, ScenarioDrift, TaskQuality, WindowDrift,
};
pub use observation::{EARLY_CTR, FeatureSelection, ScenarioOutcomes, WindowObservation};
pub use page_hinkley::{PageHinkley, PageHinkleyConfig, PageHinkleyMode};
pub use reference::ReferenceMode;
pub use stats::{
    ChiSquareResult, KsResult, chi2_homogeneity, jensen_shannon, ks_2samp, psi, wasserstein,
};

/// Why a statistic could not be computed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DriftError {
    /// A sample had no finite value.
    #[error("the {0} sample has no finite values")]
    EmptySample(&'static str),
    /// PSI asked for zero bins.
    #[error("PSI needs at least one bin")]
    NoBins,
    /// Two vectors that must align differ in length.
    #[error("lengths differ: {0} vs {1}")]
    LengthMismatch(usize, usize),
    /// A count was negative or not finite.
    #[error("counts must be finite and non-negative, got {0}")]
    InvalidCount(f64),
    /// A count vector summed to zero.
    #[error("the {0} counts sum to zero")]
    ZeroTotal(&'static str),
}
