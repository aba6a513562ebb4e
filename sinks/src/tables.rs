//! The store's tables: one list for the job that writes them, the maintenance commands and
//! the demo's clean-up, so a new table cannot be forgotten by one of them.

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
/// a table, the commit manifest, or the default checkpoint directory.
pub fn is_store_entry(name: &str) -> bool {
    ALL.contains(&name)
        || name == crate::manifest::MANIFEST_DIR
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
        for foreign in ["src", "Cargo.toml", ".git", "predictions", ""] {
            assert!(!is_store_entry(foreign), "{foreign}");
        }
    }
}
