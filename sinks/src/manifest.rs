//! The store's commit manifest: which Parquet files of a table are visible to readers.
//!
//! A data file becomes visible only once a commit record naming it exists, so a reader
//! never sees a window half written, and a file left behind by a crash (written but never
//! committed) stays invisible until the window is reprocessed and committed. Records live
//! in `ROOT/_manifest/TABLE/ID.json`, outside the table directories, so engines that read
//! the hive layout directly (pyarrow, DuckDB, polars) are not confused by them; each record
//! is written to a hidden temporary name, fsynced and renamed, like the data files.
//!
//! Two kinds of records exist:
//! - a window commit (`window-<start_ms>`) names the files one window wrote into a table;
//!   reprocessing the window rewrites the same files and the same record;
//! - a compaction commit (`compact-date=…-hour=…-<first>-<last>`, after the first and last
//!   window it holds) names one merged file and the files it `replaces`. Replaced paths
//!   are never visible again: the merged file already holds their rows, so showing both
//!   would duplicate them (a restarted job does not even write them again).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::atomic::write_atomic;
use crate::error::{StoreError, io_err};

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
    /// Absolute path.
    pub path: PathBuf,
    /// Rows, as committed.
    pub rows: u64,
}

/// Directory of `table`'s commit records.
pub fn commit_dir(root: &Path, table: &str) -> PathBuf {
    root.join(MANIFEST_DIR).join(table)
}

/// Writes `commit` atomically (temporary name, fsync, rename, fsync of the directory).
pub fn write_commit(root: &Path, commit: &Commit) -> Result<(), StoreError> {
    let dir = commit_dir(root, &commit.table);
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let name = format!("{}.json", commit.id);
    let bytes = serde_json::to_vec_pretty(commit)
        .map_err(|e| StoreError::Internal(format!("cannot encode commit {}: {e}", commit.id)))?;
    write_atomic(&dir, &dir.join(&name), &name, None, |file, tmp| {
        file.write_all(&bytes).map_err(io_err(tmp))
    })
}

/// Every commit record of `table`, sorted by id.
pub fn read_commits(root: &Path, table: &str) -> Result<Vec<Commit>, StoreError> {
    let dir = commit_dir(root, table);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(_) if !dir.exists() => return Ok(Vec::new()),
        Err(source) => return Err(StoreError::Io { path: dir, source }),
    };
    let mut commits = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err(&dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || !name.ends_with(".json") {
            continue;
        }
        if let Some(commit) = read_commit(&entry.path())? {
            commits.push(commit);
        }
    }
    commits.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(commits)
}

/// Reads one commit record; `None` when it does not exist.
pub fn read_commit(path: &Path) -> Result<Option<Commit>, StoreError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(io_err(path)(source)),
    };
    let commit: Commit = serde_json::from_slice(&bytes).map_err(|e| StoreError::CorruptCommit {
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
    Ok(Some(commit))
}

/// The files of `table` visible to readers: named by a commit and not replaced by a
/// compaction. Sorted by relative path.
pub fn live_files(root: &Path, table: &str) -> Result<Vec<LiveFile>, StoreError> {
    let commits = read_commits(root, table)?;
    Ok(live_of(root, table, &commits))
}

/// [`live_files`] over already-read commits.
pub fn live_of(root: &Path, table: &str, commits: &[Commit]) -> Vec<LiveFile> {
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
    let table_dir = root.join(table);
    live.into_iter()
        .map(|(relative, rows)| LiveFile {
            relative: relative.to_string(),
            path: table_dir.join(relative),
            rows,
        })
        .collect()
}

/// Tables that have commits.
pub fn tables(root: &Path) -> Result<Vec<String>, StoreError> {
    let dir = root.join(MANIFEST_DIR);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(_) if !dir.exists() => return Ok(Vec::new()),
        Err(source) => return Err(StoreError::Io { path: dir, source }),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err(&dir))?;
        if entry.path().is_dir() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
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
        let root = dir.path();
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
        let err = live_files(dir.path(), "t").expect_err("corrupt");
        assert!(err.to_string().contains("window-1.json"), "{err}");
    }

    #[test]
    fn uncommitted_files_and_temporary_records_are_invisible() {
        let dir = tempfile::tempdir().expect("tempdir");
        let commits = commit_dir(dir.path(), "t");
        std::fs::create_dir_all(&commits).expect("mkdir");
        // A record killed mid-write never has its final name.
        std::fs::write(commits.join(".window-9.json.tmp"), b"{").expect("write");
        assert!(live_files(dir.path(), "t").expect("live").is_empty());
    }
}
