//! The `[drift]` section of the job's configuration mapped onto [`MonitorConfig`]. The
//! configuration exposes the thresholds and counts a user tunes (and holds their
//! defaults); the few settings nobody tunes are fixed here.

use shopstream_config::{DriftConfig as DriftSettings, DriftReference};

use super::alerts::AlertPolicy;
use super::monitor::MonitorConfig;
use super::page_hinkley::{PageHinkleyConfig, PageHinkleyMode};
use super::reference::ReferenceMode;

/// Reference values kept per continuous feature, over all the reference's windows.
const MAX_REFERENCE_SAMPLE: usize = 20_000;

impl MonitorConfig {
    /// The monitor configuration for the job's `[drift]` section.
    pub fn from_settings(s: &DriftSettings) -> Self {
        let windows = s.reference_windows;
        MonitorConfig {
            reference: match s.reference {
                DriftReference::Trailing => ReferenceMode::Trailing { windows },
                DriftReference::Pinned => ReferenceMode::Pinned { windows },
            },
            min_reference_windows: s.min_reference_windows,
            bins: s.psi_bins,
            psi_warning: s.psi_warning,
            psi_critical: s.psi_critical,
            js_warning: s.js_warning,
            js_critical: s.js_critical,
            p_value_warning: s.p_value_warning,
            p_value_critical: s.p_value_critical,
            small_sample: s.small_sample,
            min_samples: s.min_samples,
            rate_z_warning: s.rate_z_warning,
            rate_z_critical: s.rate_z_critical,
            gap_z_warning: s.gap_z_warning,
            gap_z_critical: s.gap_z_critical,
            min_trials: s.min_trials,
            model_warmup_windows: s.model_warmup_windows,
            adwin: super::AdwinConfig {
                delta: s.adwin_delta,
                ..super::AdwinConfig::default()
            },
            loss_increase_warning: s.loss_increase_warning,
            loss_increase_critical: s.loss_increase_critical,
            // Not River's defaults (see `MonitorConfig::page_hinkley`): a bigger delta and no
            // forgetting suit per-example log losses.
            page_hinkley: PageHinkleyConfig {
                min_instances: 30,
                delta: 0.05,
                threshold: s.page_hinkley_threshold,
                alpha: 1.0,
                mode: PageHinkleyMode::Up,
            },
            alerts: AlertPolicy {
                fire_after_windows: s.fire_after_windows,
                resolve_after_windows: s.resolve_after_windows,
            },
            // The loss detectors control their own false alarms: they fire on the first
            // window with a detection and resolve like the window statistics.
            detector_alerts: AlertPolicy {
                fire_after_windows: 1,
                resolve_after_windows: s.resolve_after_windows,
            },
            design_effect_correction: s.design_effect_correction,
            max_reference_sample: MAX_REFERENCE_SAMPLE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_monitor_is_the_documented_one() {
        let c = MonitorConfig::default();
        assert_eq!(c.reference, ReferenceMode::Trailing { windows: 12 });
        assert_eq!(
            (c.min_reference_windows, c.bins, c.small_sample),
            (3, 10, 1000)
        );
        assert_eq!((c.psi_warning, c.psi_critical), (0.1, 0.2));
        assert_eq!((c.p_value_warning, c.p_value_critical), (0.01, 0.001));
        assert_eq!((c.rate_z_warning, c.gap_z_warning), (3.0, 3.0));
        assert_eq!(c.adwin.delta, 0.002);
        assert_eq!(
            (
                c.page_hinkley.delta,
                c.page_hinkley.threshold,
                c.page_hinkley.alpha
            ),
            (0.05, 80.0, 1.0)
        );
        assert_eq!(
            (c.alerts.fire_after_windows, c.alerts.resolve_after_windows),
            (3, 3)
        );
        assert_eq!(c.detector_alerts.fire_after_windows, 1);
        assert_eq!(c.max_reference_sample, 20_000);
        assert!(c.design_effect_correction);
    }

    #[test]
    fn settings_reach_the_monitor() {
        let s = DriftSettings {
            reference: DriftReference::Pinned,
            reference_windows: 30,
            psi_warning: 0.15,
            adwin_delta: 0.01,
            page_hinkley_threshold: 120.0,
            fire_after_windows: 2,
            resolve_after_windows: 5,
            ..DriftSettings::default()
        };
        let c = MonitorConfig::from_settings(&s);
        assert_eq!(c.reference, ReferenceMode::Pinned { windows: 30 });
        assert_eq!(c.psi_warning, 0.15);
        assert_eq!(c.adwin.delta, 0.01);
        assert_eq!(c.page_hinkley.threshold, 120.0);
        assert_eq!(c.alerts.fire_after_windows, 2);
        assert_eq!(c.detector_alerts.fire_after_windows, 1);
        assert_eq!(c.detector_alerts.resolve_after_windows, 5);
    }
}
