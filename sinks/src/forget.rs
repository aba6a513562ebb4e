//! Erasure: a user's rows leave the store through the manifest.
//!
//! Every visible file of a table with a `user_id` column that holds one of the users is
//! rewritten without their rows, as `<stem>.r<hash>.parquet` beside it, and a commit
//! record `forget-<partition>-<hash>` makes the rewrite visible and `replaces` the old
//! file (no file at all when the users were its only rows). Then the old file, and the
//! window records left without a visible file, are deleted. Tables without `user_id`
//! (metrics, drift, alerts, item demand) hold no per-user rows and are left alone.
//!
//! - Crash safety: until the record is in place readers see the old file; after it, the
//!   rewrite. The rewrite's name and bytes depend only on the old file and the users, so
//!   running the same erasure again after a crash rewrites the file a crash left
//!   uncommitted identically, and finishes the deletes a crash interrupted: the store
//!   ends as if never interrupted.
//! - Idempotence: a second run finds none of the users in any visible file.
//! - Rows of other users keep their order and values; a rewritten file still counts as
//!   the windows it held for compaction.
//!
//! Run it with no job writing to the store: a compaction of the same hour committed
//! between this read and this commit would leave both merges visible.
//!
//! Each erasure is also recorded under [`ERASURES_DIR`] (the users, one object per
//! request, before any file is rewritten). The job reads the records when it starts and
//! at every checkpoint, and drops those users' keyed state (features, impressions waiting
//! for labels), so the examples it writes afterwards hold nothing of them from before.

use std::collections::{BTreeMap, BTreeSet};

use arrow::array::{Array, BooleanArray, StringArray};
use arrow::compute::filter_record_batch;
use arrow::record_batch::RecordBatch;
use serde::Serialize;
use shopstream_ingest::hash::Fnv1a;

use crate::error::StoreError;
use crate::manifest::{self, Commit};
use crate::store::{ParquetStore, committed};

/// The column that names a row's user.
pub const USER_COLUMN: &str = "user_id";

/// Directory of the erasure records, below the store root.
pub const ERASURES_DIR: &str = "_erasures";

/// One erasure request as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErasureRecord {
    /// The users erased.
    pub users: BTreeSet<String>,
}

/// Records an erasure of `users` (create-only: the same users give the same record, so
/// a rerun adds nothing). Returns the record's key.
pub fn record_erasure(
    storage: &crate::storage::Storage,
    users: &BTreeSet<String>,
) -> Result<String, StoreError> {
    let key = format!(
        "{ERASURES_DIR}/erasure-{:016x}.json",
        erasure_hash("", users)
    );
    let record = ErasureRecord {
        users: users.clone(),
    };
    let bytes = serde_json::to_vec_pretty(&record)
        .map_err(|e| StoreError::Internal(format!("encoding an erasure record: {e}")))?;
    storage.put_new(&key, bytes.into())?;
    Ok(key)
}

/// Every erasure recorded in `storage`, by key (none when the directory is absent).
pub fn erasure_records(
    storage: &crate::storage::Storage,
) -> Result<BTreeMap<String, ErasureRecord>, StoreError> {
    let mut records = BTreeMap::new();
    for listed in storage.list(&format!("{ERASURES_DIR}/"))? {
        if !listed.key.ends_with(".json") {
            continue;
        }
        let Some(bytes) = storage.get(&listed.key)? else {
            continue;
        };
        let record: ErasureRecord =
            serde_json::from_slice(&bytes).map_err(|e| StoreError::CorruptErasure {
                path: storage.location(&listed.key),
                message: format!("not an erasure record: {e}"),
            })?;
        records.insert(listed.key, record);
    }
    Ok(records)
}

/// A file an erasure rewrote (or, in a dry run, would rewrite).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RewrittenFile {
    /// The table.
    pub table: String,
    /// The file replaced, relative to the table directory.
    pub replaced: String,
    /// The rewrite, relative to the table directory; `None` when no row was left.
    pub written: Option<String>,
    /// Rows the old file held.
    pub rows_before: u64,
    /// Rows of the users removed.
    pub rows_removed: u64,
}

/// FNV-1a of the replaced path and the users: the rewrite's name and record name.
fn erasure_hash(relative: &str, users: &BTreeSet<String>) -> u64 {
    let mut hash = Fnv1a::default();
    for part in std::iter::once(relative).chain(users.iter().map(String::as_str)) {
        hash.write(part.as_bytes()).write(&[0]);
    }
    hash.finish()
}

/// `batch` without the rows whose `user_id` is in `users`; `None` when it has no
/// `user_id` column of strings.
fn without_users(
    batch: &RecordBatch,
    users: &BTreeSet<String>,
) -> Result<Option<RecordBatch>, StoreError> {
    let Some(column) = batch.column_by_name(USER_COLUMN) else {
        return Ok(None);
    };
    let Some(ids) = column.as_any().downcast_ref::<StringArray>() else {
        return Ok(None);
    };
    let keep: BooleanArray = (0..ids.len())
        .map(|i| Some(ids.is_null(i) || !users.contains(ids.value(i))))
        .collect();
    Ok(Some(filter_record_batch(batch, &keep)?))
}

impl ParquetStore {
    /// Removes the rows of `users` from every visible file of `table` (see the module
    /// doc). With `dry_run`, only lists what it would rewrite. Returns the files, in path
    /// order.
    pub fn forget(
        &self,
        table: &str,
        users: &BTreeSet<String>,
        dry_run: bool,
    ) -> Result<Vec<RewrittenFile>, StoreError> {
        let commits = manifest::read_commits(self.storage(), table)?;
        let live = manifest::live_of(self.storage(), table, &commits);
        let mut rewritten = Vec::new();
        for file in &live {
            let (metadata, batches) = self.contents(&file.key)?;
            let mut kept = Vec::with_capacity(batches.len());
            let (mut before, mut after) = (0u64, 0u64);
            for batch in &batches {
                let Some(rest) = without_users(batch, users)? else {
                    // No user column: nothing of this table is per user.
                    return Ok(rewritten);
                };
                before += batch.num_rows() as u64;
                after += rest.num_rows() as u64;
                if rest.num_rows() > 0 {
                    kept.push(rest);
                }
            }
            if after == before {
                continue;
            }
            let (partition, name) = file
                .relative
                .rsplit_once('/')
                .unwrap_or(("", &file.relative));
            let stem = name.strip_suffix(".parquet").unwrap_or(name);
            let stem = stem.split_once(".r").map_or(stem, |(stem, _)| stem);
            let hash = erasure_hash(&file.relative, users);
            let relative = if partition.is_empty() {
                format!("{stem}.r{hash:016x}.parquet")
            } else {
                format!("{partition}/{stem}.r{hash:016x}.parquet")
            };
            rewritten.push(RewrittenFile {
                table: table.to_string(),
                replaced: file.relative.clone(),
                written: (after > 0).then(|| relative.clone()),
                rows_before: before,
                rows_removed: before - after,
            });
            if dry_run {
                continue;
            }
            let mut files = Vec::new();
            if !kept.is_empty() {
                let schema = kept[0].schema();
                let rest = arrow::compute::concat_batches(&schema, &kept)?;
                let written = self.write_one(table, &relative, &rest, &metadata)?;
                files.push(committed(&written));
            }
            crate::failpoint::hit("store.forget_written");
            let commit = Commit {
                format: manifest::COMMIT_FORMAT,
                table: table.to_string(),
                id: format!("forget-{}-{hash:016x}", partition.replace('/', "-")),
                files,
                replaces: vec![file.relative.clone()],
                source_offsets: BTreeMap::new(),
            };
            manifest::write_commit(self.storage(), &commit)?;
            crate::failpoint::hit("store.forget_committed");
            self.note_replaced(table, &commit.replaces)?;
            self.remove_files(table, &commit.replaces)?;
        }
        if !dry_run {
            // Also the deletes of an erasure a crash interrupted: every replaced path is
            // dead for good.
            let replaced = self.replaced_paths(table)?;
            self.remove_files(table, &replaced)?;
            self.remove_emptied_records(table, &replaced, &commits)?;
        }
        Ok(rewritten)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::read;
    use crate::store::tests::keyed;

    use crate::store::tests::{H0 as HOUR0, tree, uncompacted_store as store};

    /// Three windows in one hour: u1 and u2 in the first, u1 alone in the second, u2
    /// and u3 in the third.
    fn write_windows(store: &ParquetStore) {
        let rows: [&[&str]; 3] = [&["u1", "u2"], &["u1"], &["u2", "u3"]];
        for (n, users) in rows.iter().enumerate() {
            let ms = HOUR0 + (n as i64 + 1) * 60_000;
            let rows: Vec<(&str, i64, &str)> = users.iter().map(|u| (*u, ms, "x")).collect();
            store
                .write(
                    "t",
                    &format!("window-{ms}"),
                    &keyed(&rows),
                    &BTreeMap::new(),
                    &BTreeMap::new(),
                )
                .unwrap();
        }
    }

    fn users_visible(store: &ParquetStore) -> Vec<String> {
        let mut users = Vec::new();
        for file in read::table_files(store.storage(), "t").unwrap() {
            let (_, batches) = read::read_object(store.storage(), &file.key).unwrap();
            for batch in batches {
                let ids = batch
                    .column_by_name(USER_COLUMN)
                    .unwrap()
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .unwrap()
                    .clone();
                users.extend(ids.iter().flatten().map(str::to_string));
            }
        }
        users.sort();
        users
    }

    #[test]
    fn a_forgotten_user_leaves_every_file_and_other_rows_stay_and_a_rerun_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        write_windows(&store);
        let users = BTreeSet::from(["u1".to_string()]);

        let listed = store.forget("t", &users, true).unwrap();
        let summary: Vec<(u64, u64, bool)> = listed
            .iter()
            .map(|f| (f.rows_before, f.rows_removed, f.written.is_some()))
            .collect();
        // The first window keeps u2; the second held u1 alone and goes.
        assert_eq!(summary, vec![(2, 1, true), (1, 1, false)]);
        assert_eq!(users_visible(&store), ["u1", "u1", "u2", "u2", "u3"]);

        let done = store.forget("t", &users, false).unwrap();
        assert_eq!(done, listed, "a dry run lists what the run does");
        assert_eq!(users_visible(&store), ["u2", "u2", "u3"]);
        // Nothing of the old files is left for engines that glob the directories.
        let on_disk: Vec<String> = store
            .storage()
            .list("t/")
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .filter(|k| k.ends_with(".parquet"))
            .collect();
        assert_eq!(on_disk.len(), 2, "{on_disk:?}");
        assert!(
            on_disk
                .iter()
                .any(|k| k.contains("window-") && k.contains(".r"))
        );

        let before = tree(dir.path());
        assert!(store.forget("t", &users, false).unwrap().is_empty());
        assert_eq!(tree(dir.path()), before, "a second run changes nothing");
    }

    #[test]
    fn rewritten_files_still_compact_with_the_windows_of_their_hour() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        write_windows(&store);
        store
            .forget("t", &BTreeSet::from(["u3".to_string()]), false)
            .unwrap();
        let commits = store.compact("t", None).unwrap();
        assert_eq!(commits.len(), 1);
        assert_eq!(commits[0].replaces.len(), 3, "{:?}", commits[0].replaces);
        assert_eq!(users_visible(&store), ["u1", "u1", "u2", "u2"]);
    }

    #[test]
    fn an_erasure_interrupted_after_its_rewrite_or_its_record_ends_like_one_never_interrupted() {
        let users = BTreeSet::from(["u2".to_string()]);
        let reference = tempfile::tempdir().unwrap();
        let store_ref = store(reference.path());
        write_windows(&store_ref);
        store_ref.forget("t", &users, false).unwrap();
        let expected = tree(reference.path());

        // Interrupted after the rewrite: the file is there, uncommitted.
        let dir = tempfile::tempdir().unwrap();
        let interrupted = store(dir.path());
        write_windows(&interrupted);
        let file = read::table_files(interrupted.storage(), "t").unwrap()[0].clone();
        let (metadata, batches) = read::read_object(interrupted.storage(), &file.key).unwrap();
        let rest = without_users(&batches[0], &users).unwrap().unwrap();
        let hash = erasure_hash(&file.relative, &users);
        let (partition, name) = file.relative.rsplit_once('/').unwrap();
        let stem = name.strip_suffix(".parquet").unwrap();
        interrupted
            .write_one(
                "t",
                &format!("{partition}/{stem}.r{hash:016x}.parquet"),
                &rest,
                &metadata,
            )
            .unwrap();
        assert_eq!(users_visible(&interrupted), ["u1", "u1", "u2", "u2", "u3"]);
        interrupted.forget("t", &users, false).unwrap();
        assert_eq!(tree(dir.path()), expected);
    }
}
