//! Retention: hour partitions past a horizon leave the store through the manifest.
//!
//! An expiry is a commit record like a compaction's, `expire-date=…-hour=…-<hash>`, that
//! makes no file visible and `replaces` every visible file of the partition. Readers stop
//! seeing the partition the moment the record is in place; then its files, and the window
//! records left without a visible file, are deleted.
//!
//! - Crash safety: before the record exists nothing changed; after it, the partition is
//!   gone for readers, and the deletes that a crash interrupted are finished by
//!   [`ParquetStore::vacuum`] (the job runs it at start) or by running the expiry again.
//! - Idempotence: the record's name hashes the paths it replaces, so a second run over the
//!   same files writes the same record (create-only: accepted as is), and a run after it
//!   finds nothing visible left to expire.
//! - Determinism: the job expires by event time (the hours it settled, minus
//!   `store.retention_days`), so a replay or a restart expires the same partitions;
//!   `shopstream store expire` takes a wall-clock time instead (default: now).

use std::collections::BTreeMap;

use serde::Serialize;
use shopstream_ingest::hash::Fnv1a;

use crate::error::StoreError;
use crate::manifest::{self, Commit};
use crate::store::{ParquetStore, partition_end_ms};

/// A partition an expiry removed (or, in a dry run, would remove).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExpiredPartition {
    /// The table.
    pub table: String,
    /// `date=YYYY-MM-DD/hour=HH`.
    pub partition: String,
    /// Visible files it held.
    pub files: usize,
    /// Rows they held.
    pub rows: u64,
}

/// Name of the record that expires `replaces` of `partition`.
fn expiry_id(partition: &str, replaces: &[String]) -> String {
    // FNV-1a over the sorted paths: the same files give the same record name.
    let mut hash = Fnv1a::default();
    for path in replaces {
        hash.write(path.as_bytes()).write(&[0]);
    }
    format!(
        "expire-{}-{:016x}",
        partition.replace('/', "-"),
        hash.finish()
    )
}

impl ParquetStore {
    /// Expires every hour partition of `table` that ends at or before `before_ms` (epoch
    /// ms): see the module doc. With `dry_run`, only lists what it would expire. Returns
    /// the partitions, oldest first. Files outside hour partitions are left alone.
    pub fn expire(
        &self,
        table: &str,
        before_ms: i64,
        dry_run: bool,
    ) -> Result<Vec<ExpiredPartition>, StoreError> {
        let commits = manifest::read_commits(self.storage(), table)?;
        let live = manifest::live_of(self.storage(), table, &commits);
        let mut by_hour: BTreeMap<&str, Vec<&manifest::LiveFile>> = BTreeMap::new();
        for file in &live {
            let Some((partition, _)) = file.relative.rsplit_once('/') else {
                continue;
            };
            if partition_end_ms(partition).is_some_and(|end| end <= before_ms) {
                by_hour.entry(partition).or_default().push(file);
            }
        }
        let mut expired = Vec::new();
        for (partition, files) in by_hour {
            let replaces: Vec<String> = files.iter().map(|f| f.relative.clone()).collect();
            expired.push(ExpiredPartition {
                table: table.to_string(),
                partition: partition.to_string(),
                files: files.len(),
                rows: files.iter().map(|f| f.rows).sum(),
            });
            if dry_run {
                continue;
            }
            let commit = Commit {
                format: manifest::COMMIT_FORMAT,
                table: table.to_string(),
                id: expiry_id(partition, &replaces),
                files: Vec::new(),
                replaces,
                source_offsets: BTreeMap::new(),
            };
            manifest::write_commit(self.storage(), &commit)?;
            crate::failpoint::hit("store.expiry_committed");
            self.note_replaced(table, &commit.replaces)?;
            self.remove_files(table, &commit.replaces)?;
        }
        if !dry_run && !expired.is_empty() {
            self.remove_emptied_records(table, &self.replaced_paths(table)?, &commits)?;
        }
        Ok(expired)
    }
}

impl ParquetStore {
    /// What the job expires once the hours before `settled_before_ms` (event time) can no
    /// longer change: `table`'s hours ending `store.retention_days` or more before it.
    /// Nothing when retention is unset.
    pub fn expire_past_retention(
        &self,
        table: &str,
        settled_before_ms: i64,
    ) -> Result<Vec<ExpiredPartition>, StoreError> {
        match self.retention_days() {
            Some(days) => {
                let horizon = settled_before_ms.saturating_sub(i64::from(days) * 86_400_000);
                self.expire(table, horizon, false)
            }
            None => Ok(Vec::new()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use shopstream_config::StoreConfig;

    use super::*;
    use crate::read;
    use crate::store::PARTITION_MS;
    use crate::store::tests::keyed;

    use crate::store::tests::{H0 as HOUR0, uncompacted_store as store};

    /// One row per window of a minute, across three hours.
    fn write_windows(store: &ParquetStore) {
        for minute in [5, 50, 65, 130] {
            let ms = HOUR0 + minute * 60_000;
            let batch = keyed(&[(&format!("u{minute}"), ms, "x")]);
            store
                .write(
                    "t",
                    &format!("window-{ms}"),
                    &batch,
                    &BTreeMap::new(),
                    &BTreeMap::new(),
                )
                .unwrap();
        }
    }

    fn visible(store: &ParquetStore) -> Vec<String> {
        read::table_files(store.storage(), "t")
            .unwrap()
            .into_iter()
            .map(|f| f.relative)
            .collect()
    }

    /// Parquet objects of table `t` on disk, committed or not.
    fn parquet_files(store: &ParquetStore) -> usize {
        let listed = store.storage().list("t/").unwrap();
        listed
            .iter()
            .filter(|o| o.key.ends_with(".parquet"))
            .count()
    }

    #[test]
    fn hours_past_the_horizon_leave_readers_and_disk_and_a_rerun_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        write_windows(&store);
        assert_eq!(visible(&store).len(), 4);
        // Hours 00 and 01 end at or before 02:00; hour 02 does not.
        let horizon = HOUR0 + 2 * PARTITION_MS;
        let listed = store.expire("t", horizon, true).unwrap();
        let hours: Vec<(&str, usize, u64)> = listed
            .iter()
            .map(|e| (e.partition.as_str(), e.files, e.rows))
            .collect();
        assert_eq!(
            hours,
            vec![
                ("date=2026-01-05/hour=00", 2, 2),
                ("date=2026-01-05/hour=01", 1, 1)
            ]
        );
        assert_eq!(visible(&store).len(), 4, "a dry run changes nothing");
        assert_eq!(parquet_files(&store), 4);

        assert_eq!(store.expire("t", horizon, false).unwrap(), listed);
        let left = visible(&store);
        assert_eq!(left.len(), 1);
        assert!(left[0].starts_with("date=2026-01-05/hour=02/"), "{left:?}");
        assert_eq!(parquet_files(&store), 1, "expired files are deleted");
        // The window records of the expired hours went with them; the expiry records stay.
        let ids: Vec<String> = manifest::read_commits(store.storage(), "t")
            .unwrap()
            .into_iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(ids.len(), 3, "{ids:?}");
        assert_eq!(ids.iter().filter(|id| id.starts_with("expire-")).count(), 2);

        assert!(store.expire("t", horizon, false).unwrap().is_empty());
        // A fresh handle (a restarted job) sees the same.
        assert_eq!(visible(&self::store(dir.path())), left);
    }

    /// The job's rule: hours ending `retention_days` or more before the settled bound;
    /// nothing without `store.retention_days`.
    #[test]
    fn the_job_expires_by_event_time_only_when_retention_is_set() {
        let dir = tempfile::tempdir().unwrap();
        write_windows(&store(dir.path()));
        let settled = HOUR0 + 2 * PARTITION_MS + 86_400_000;
        assert!(
            store(dir.path())
                .expire_past_retention("t", settled)
                .unwrap()
                .is_empty()
        );
        let keeping_a_day = ParquetStore::open(&StoreConfig {
            path: dir.path().to_path_buf(),
            compact_closed_hours: false,
            retention_days: Some(1),
            ..StoreConfig::default()
        })
        .unwrap();
        let expired = keeping_a_day
            .expire_past_retention("t", settled - 1)
            .unwrap();
        assert_eq!(
            expired.len(),
            1,
            "only hour 00 ends a day or more before the bound"
        );
        let expired = keeping_a_day.expire_past_retention("t", settled).unwrap();
        assert_eq!(expired.len(), 1, "then hour 01");
        assert_eq!(visible(&keeping_a_day).len(), 1);
    }

    /// A crash after the expiry record and before the deletes: readers no longer see the
    /// partition, and vacuum (run at every job start) deletes what is left.
    #[test]
    fn an_expiry_interrupted_after_its_record_is_finished_by_vacuum() {
        let dir = tempfile::tempdir().unwrap();
        let first = store(dir.path());
        write_windows(&first);
        let commits = manifest::read_commits(first.storage(), "t").unwrap();
        let hour0: Vec<String> = manifest::live_of(first.storage(), "t", &commits)
            .into_iter()
            .map(|f| f.relative)
            .filter(|r| r.starts_with("date=2026-01-05/hour=00/"))
            .collect();
        // What `expire` writes first, and nothing after it.
        manifest::write_commit(
            first.storage(),
            &Commit {
                format: manifest::COMMIT_FORMAT,
                table: "t".into(),
                id: expiry_id("date=2026-01-05/hour=00", &hour0),
                files: Vec::new(),
                replaces: hour0,
                source_offsets: BTreeMap::new(),
            },
        )
        .unwrap();
        let restarted = store(dir.path());
        assert_eq!(visible(&restarted).len(), 2);
        assert_eq!(parquet_files(&restarted), 4);
        assert_eq!(restarted.vacuum("t").unwrap(), 2);
        assert_eq!(parquet_files(&restarted), 2);
        // Expiring the same horizon again writes the same record: accepted, nothing left.
        let again = restarted.expire("t", HOUR0 + PARTITION_MS, false).unwrap();
        assert!(again.is_empty(), "{again:?}");
    }
}
