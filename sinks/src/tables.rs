//! The store's tables: one list for the job that writes them, the maintenance commands and
//! the demo's clean-up, so a new table cannot be forgotten by one of them.
//!
//! Each table's schema lives with the crate that owns its rows, and one place writes
//! them all (the job's global stage, once per closed window):
//!
//! | table | schema | rows from |
//! |---|---|---|
//! | `examples` | `shopstream_features::examples_batch` | the features stage |
//! | `metrics` | `shopstream_trainer::metrics::metrics_batch` | the model's prequential scores |
//! | `item_demand` | `shopstream_trainer::metrics::demand_batch` | the demand head |
//! | `drift` | `shopstream_drift::tables::drift_batch` | the drift stage |
//! | `alerts` | `shopstream_drift::tables::alerts_batch` | the drift stage's alert lifecycle |
//!
//! Their time columns are UTC microseconds through `shopstream_features::arrow_time`.

/// Matured impressions with their features as served and their labels.
pub const EXAMPLES: &str = "examples";
/// Prequential model metrics per (window, task, scenario).
pub const METRICS: &str = "metrics";
/// Item demand forecasts per (window end, item).
pub const ITEM_DEMAND: &str = "item_demand";
/// Drift statistics per window and feature or task.
pub const DRIFT: &str = "drift";
/// Drift alert events (firing, resolved).
pub const ALERTS: &str = "alerts";

/// Every table the job writes, in the order it compacts and vacuums them.
pub const ALL: [&str; 5] = [EXAMPLES, METRICS, ITEM_DEMAND, DRIFT, ALERTS];

/// Whether `name`, a top-level entry of a store directory, is one shopstream writes there:
/// a table, the commit manifest, the erasure records, or the default checkpoint
/// directory.
pub fn is_store_entry(name: &str) -> bool {
    ALL.contains(&name)
        || name == crate::manifest::MANIFEST_DIR
        || name == crate::forget::ERASURES_DIR
        || name == shopstream_config::DEFAULT_CHECKPOINT_DIR
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_manifest_and_checkpoints_are_store_entries_and_nothing_else() {
        for name in ALL {
            assert!(is_store_entry(name), "{name}");
        }
        assert!(is_store_entry("_manifest"));
        assert!(is_store_entry("_checkpoints"));
        assert!(is_store_entry("_erasures"));
        for foreign in ["src", "Cargo.toml", ".git", "predictions", ""] {
            assert!(!is_store_entry(foreign), "{foreign}");
        }
    }
}
