//! One schema version per table: a job refuses a store whose `examples` files are of
//! another version than it writes (`shopstream_features::EXAMPLES_SCHEMA_VERSION`, given
//! by the job: this crate builds without the feature stage) (a store of an older build), before it writes anything
//! beside them. Files of two versions in one table would break compaction (their columns
//! differ) and mislead every reader.
//!
//! Only the first and the last visible file (by path: the oldest and the newest hour) are
//! read, footer only: a store is written by one build from its first file on, and a job
//! started on an older store meets an older file at either end.

use crate::error::StoreError;
use crate::read::{object_metadata, table_files};
use crate::storage::Storage;

/// Checks that the visible files of `table` in `storage` hold `expected` (what this build
/// writes) under the metadata key `key`; an empty table passes.
pub fn check_schema_version(
    storage: &Storage,
    table: &str,
    key: &str,
    expected: &str,
) -> Result<(), StoreError> {
    let files = table_files(storage, table)?;
    let ends = files
        .first()
        .into_iter()
        .chain(files.last().filter(|_| files.len() > 1));
    for file in ends {
        let metadata = object_metadata(storage, &file.key)?;
        let found = metadata.get(key).map(String::as_str);
        if found != Some(expected) {
            return Err(StoreError::SchemaVersion {
                table: table.to_string(),
                path: file.path.clone(),
                found: found.unwrap_or("none").to_string(),
                expected: expected.to_string(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::store::tests::{keyed, uncompacted_store};
    use crate::tables;
    use shopstream_features::{EXAMPLES_SCHEMA_VERSION, SCHEMA_VERSION_KEY};

    fn check(storage: &Storage) -> Result<(), StoreError> {
        check_schema_version(
            storage,
            tables::EXAMPLES,
            SCHEMA_VERSION_KEY,
            EXAMPLES_SCHEMA_VERSION,
        )
    }

    const HOUR_MS: i64 = 3_600_000;

    fn write_examples(store: &crate::store::ParquetStore, hour: i64, version: Option<&str>) {
        let mut metadata = BTreeMap::new();
        if let Some(version) = version {
            metadata.insert(SCHEMA_VERSION_KEY.to_string(), version.to_string());
        }
        let ts = 1_767_571_200_000 + hour * HOUR_MS;
        store
            .write(
                tables::EXAMPLES,
                &format!("window-{ts}"),
                &keyed(&[("u1", ts, "a")]),
                &metadata,
                &BTreeMap::new(),
            )
            .expect("write");
    }

    /// Guards the upgrade path: a job of this build started on a store an older build
    /// wrote (at either end of its hours, or without a version) stops with both versions
    /// and what to do, instead of writing files of two schemas into one table.
    #[test]
    fn a_store_of_another_examples_version_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = uncompacted_store(dir.path());
        check(store.storage()).expect("an empty store passes");
        write_examples(&store, 0, Some(EXAMPLES_SCHEMA_VERSION));
        write_examples(&store, 1, Some(EXAMPLES_SCHEMA_VERSION));
        check(store.storage()).expect("this build's files pass");

        for (hour, version, found) in [(-1, Some("1"), "1"), (2, None, "none")] {
            let dir = tempfile::tempdir().expect("tempdir");
            let store = uncompacted_store(dir.path());
            write_examples(&store, 0, Some(EXAMPLES_SCHEMA_VERSION));
            write_examples(&store, hour, version);
            let message = check(store.storage())
                .expect_err("another version must be refused")
                .to_string();
            assert!(
                message.contains(&format!("schema version {found}, and this build writes version {EXAMPLES_SCHEMA_VERSION}")),
                "{message}"
            );
            assert!(message.contains("shopstream replay"), "{message}");
        }
    }
}
