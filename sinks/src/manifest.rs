//! The store's commit manifest: which Parquet files of a table are visible to readers.
//!
//! A data file becomes visible only once a commit record naming it exists, so a reader
//! never sees a window half written, and a file left behind by a crash (written but never
//! committed) stays invisible until the window is reprocessed and committed. Records live
//! in `ROOT/_manifest/TABLE/ID.json`, outside the table directories, so engines that read
//! the hive layout directly (pyarrow, DuckDB, polars) are not confused by them; each record
//! is created once and never overwritten (see [`write_commit`]).
//!
//! Two kinds of records exist:
//! - a window commit (`window-<start_ms>`) names the files one window wrote into a table;
//!   reprocessing the window rewrites the same files and the same record;
//! - a compaction commit (`compact-date=…-hour=…-<first>-<last>`, after the first and last
//!   window it holds) names one merged file and the files it `replaces`. Replaced paths
//!   are never visible again: the merged file already holds their rows, so showing both
//!   would duplicate them (a restarted job does not even write them again).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::storage::{Created, Storage};

/// Directory below the store root that holds the commit records.
pub const MANIFEST_DIR: &str = "_manifest";

/// Version of the commit record format.
pub const COMMIT_FORMAT: u32 = 1;

/// One file named by a commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommittedFile {
    /// Path relative to the table directory (`date=…/hour=…/NAME.parquet`).
    pub path: String,
    /// Rows in the file.
    pub rows: u64,
    /// Size in bytes.
    pub bytes: u64,
}

/// A commit record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Commit {
    /// [`COMMIT_FORMAT`].
    pub format: u32,
    /// The table.
    pub table: String,
    /// Record name (file stem of the record).
    pub id: String,
    /// Files this commit makes visible.
    pub files: Vec<CommittedFile>,
    /// Files (relative paths) this commit supersedes (compaction).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replaces: Vec<String>,
    /// Next offset per input partition (`topic/partition`) consumed when the commit was
    /// made: where a reprocessing of this window would have to start at the latest.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub source_offsets: BTreeMap<String, i64>,
}

/// A file visible to readers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveFile {
    /// Path relative to the table directory.
    pub relative: String,
    /// Key of the object, relative to the store root (`TABLE/RELATIVE`).
    pub key: String,
    /// Where it is: a path below a local store, a URL below a bucket.
    pub path: PathBuf,
    /// Rows, as committed.
    pub rows: u64,
}

/// Directory of `table`'s commit records in a local store at `root`.
pub fn commit_dir(root: &Path, table: &str) -> PathBuf {
    root.join(MANIFEST_DIR).join(table)
}

/// Key (below the store root) of `table`'s commit records' "directory", ending in `/`.
pub fn commit_prefix(table: &str) -> String {
    format!("{MANIFEST_DIR}/{table}/")
}

/// Key (below the store root) of the commit record `id` of `table`.
pub fn commit_key(table: &str, id: &str) -> String {
    format!("{MANIFEST_DIR}/{table}/{id}.json")
}

/// Writes `commit`, create-only: a record is never overwritten (a conditional put on a
/// bucket, a link that fails on an existing name locally), so two writers of one record
/// never replace each other's. When the record exists already (a restarted job, or a
/// second instance, committing a window again), it is accepted if it commits the same
/// thing: the same files (paths, rows, bytes) replacing the same paths; the first
/// writer's record stays, `source_offsets` included (they tell how far the input was
/// read when the window closed, which differs from run to run). Any other difference is
/// [`StoreError::Conflict`]: two jobs with different input write one store.
pub fn write_commit(storage: &Storage, commit: &Commit) -> Result<(), StoreError> {
    let key = commit_key(&commit.table, &commit.id);
    let bytes = serde_json::to_vec_pretty(commit)
        .map_err(|e| StoreError::Internal(format!("cannot encode commit {}: {e}", commit.id)))?;
    match storage.put_new(&key, bytes.into())? {
        Created::New => Ok(()),
        Created::Existing(existing) => {
            let path = storage.location(&key);
            let existing = parse_commit(&path, &existing)?;
            if existing.files == commit.files
                && existing.replaces == commit.replaces
                && existing.table == commit.table
            {
                Ok(())
            } else {
                Err(StoreError::Conflict { path })
            }
        }
    }
}

/// Every commit record of `table`, sorted by id.
pub fn read_commits(storage: &Storage, table: &str) -> Result<Vec<Commit>, StoreError> {
    let prefix = commit_prefix(table);
    let keys: Vec<String> = storage
        .list(&prefix)?
        .into_iter()
        .map(|listed| listed.key)
        .filter(|key| {
            key.strip_prefix(&prefix).is_some_and(|name| {
                !name.contains('/') && !name.starts_with('.') && name.ends_with(".json")
            })
        })
        .collect();
    // A bucket's records are fetched concurrently: one request each, and a store holds
    // a record per window or compacted hour.
    let mut commits = Vec::new();
    for (key, bytes) in keys.iter().zip(storage.get_all(&keys)?) {
        // Gone between the listing and the read: vacuumed by a compaction.
        if let Some(bytes) = bytes {
            commits.push(parse_commit(&storage.location(key), &bytes)?);
        }
    }
    commits.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(commits)
}

/// Reads the commit record at `key`; `None` when it does not exist.
pub fn read_commit(storage: &Storage, key: &str) -> Result<Option<Commit>, StoreError> {
    let Some(bytes) = storage.get(key)? else {
        return Ok(None);
    };
    parse_commit(&storage.location(key), &bytes).map(Some)
}

/// A commit record from its bytes (read from `path`, for errors).
fn parse_commit(path: &Path, bytes: &[u8]) -> Result<Commit, StoreError> {
    let commit: Commit = serde_json::from_slice(bytes).map_err(|e| StoreError::CorruptCommit {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    if commit.format != COMMIT_FORMAT {
        return Err(StoreError::CorruptCommit {
            path: path.to_path_buf(),
            message: format!(
                "commit format {} is not supported (this build reads {COMMIT_FORMAT})",
                commit.format
            ),
        });
    }
    Ok(commit)
}

/// The files of `table` visible to readers: named by a commit and not replaced by a
/// compaction. Sorted by relative path.
pub fn live_files(storage: &Storage, table: &str) -> Result<Vec<LiveFile>, StoreError> {
    let commits = read_commits(storage, table)?;
    Ok(live_of(storage, table, &commits))
}

/// [`live_files`] over already-read commits.
pub fn live_of(storage: &Storage, table: &str, commits: &[Commit]) -> Vec<LiveFile> {
    let replaced: BTreeSet<&str> = commits
        .iter()
        .flat_map(|c| c.replaces.iter().map(String::as_str))
        .collect();
    let mut live: BTreeMap<&str, u64> = BTreeMap::new();
    for commit in commits {
        for file in &commit.files {
            if !replaced.contains(file.path.as_str()) {
                live.insert(&file.path, file.rows);
            }
        }
    }
    live.into_iter()
        .map(|(relative, rows)| {
            let key = format!("{table}/{relative}");
            LiveFile {
                relative: relative.to_string(),
                path: storage.location(&key),
                key,
                rows,
            }
        })
        .collect()
}

/// Tables that have commits.
pub fn tables(storage: &Storage) -> Result<Vec<String>, StoreError> {
    storage.list_dirs(&format!("{MANIFEST_DIR}/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(id: &str, files: &[&str], replaces: &[&str]) -> Commit {
        Commit {
            format: COMMIT_FORMAT,
            table: "t".to_string(),
            id: id.to_string(),
            files: files
                .iter()
                .map(|p| CommittedFile {
                    path: p.to_string(),
                    rows: 1,
                    bytes: 1,
                })
                .collect(),
            replaces: replaces.iter().map(|p| p.to_string()).collect(),
            source_offsets: BTreeMap::new(),
        }
    }

    #[test]
    fn replaced_files_stay_invisible_even_when_recommitted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = &Storage::local(dir.path());
        write_commit(root, &commit("window-1", &["h=0/window-1.parquet"], &[])).expect("w1");
        write_commit(root, &commit("window-2", &["h=0/window-2.parquet"], &[])).expect("w2");
        write_commit(
            root,
            &commit(
                "compact-h=0-1",
                &["h=0/compact-1.parquet"],
                &["h=0/window-1.parquet", "h=0/window-2.parquet"],
            ),
        )
        .expect("compaction");
        // A restart rewrites window 1 after the compaction.
        write_commit(root, &commit("window-1", &["h=0/window-1.parquet"], &[])).expect("again");
        let live: Vec<String> = live_files(root, "t")
            .expect("live")
            .into_iter()
            .map(|f| f.relative)
            .collect();
        assert_eq!(live, vec!["h=0/compact-1.parquet"]);
    }

    #[test]
    fn a_corrupt_commit_names_its_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let commits = commit_dir(dir.path(), "t");
        std::fs::create_dir_all(&commits).expect("mkdir");
        std::fs::write(commits.join("window-1.json"), b"{\"format\": 1, \"tab").expect("write");
        let storage = Storage::local(dir.path());
        let err = live_files(&storage, "t").expect_err("corrupt");
        assert!(err.to_string().contains("window-1.json"), "{err}");
    }

    #[test]
    fn uncommitted_files_and_temporary_records_are_invisible() {
        let dir = tempfile::tempdir().expect("tempdir");
        let commits = commit_dir(dir.path(), "t");
        std::fs::create_dir_all(&commits).expect("mkdir");
        // A record killed mid-write never has its final name.
        std::fs::write(commits.join(".window-9.json.tmp"), b"{").expect("write");
        let storage = Storage::local(dir.path());
        assert!(live_files(&storage, "t").expect("live").is_empty());
    }

    /// Guards issue 16: commit records are create-only. The same commit again (a
    /// restart, a second instance) goes on and keeps the first record, offsets included;
    /// a record committing other files is refused with an error naming it.
    #[test]
    fn a_second_writer_of_a_record_keeps_the_first_or_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::local(dir.path());
        let mut first = commit("window-1", &["h=0/window-1.parquet"], &[]);
        first.source_offsets.insert("clicks/0".to_string(), 10);
        write_commit(&storage, &first).expect("first");
        let mut again = first.clone();
        again.source_offsets.insert("clicks/0".to_string(), 12);
        write_commit(&storage, &again).expect("the same commit goes on");
        let key = commit_key("t", "window-1");
        let kept = read_commit(&storage, &key).expect("read").expect("there");
        assert_eq!(kept, first, "the first record stays");
        let other = commit("window-1", &["h=0/other.parquet"], &[]);
        let err = write_commit(&storage, &other).expect_err("conflict");
        assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
        assert!(err.to_string().contains("window-1.json"), "{err}");
        assert_eq!(
            read_commit(&storage, &key).expect("read").expect("there"),
            first
        );
    }
}
