//! A store as local files, for the readers that take paths (polars scans, the drift
//! report): the directory itself for a local store; for a bucket store, a temporary copy
//! of its committed state (the commit records and the files they make visible, nothing
//! else), deleted when the copy is dropped.
//!
//! The copy is a consistent snapshot: a file a compaction deletes while it is being
//! copied makes the copy start over from the records (up to three times).

use std::path::{Path, PathBuf};

use crate::error::{StoreError, io_err};
use crate::manifest;
use crate::storage::Storage;

/// A store readable as local files.
#[derive(Debug)]
pub struct ReadableStore {
    root: PathBuf,
    /// The temporary copy of a bucket store (kept alive while `root` is read).
    _copy: Option<tempfile::TempDir>,
}

impl ReadableStore {
    /// The store on `storage` as local files: its directory, or a copy of a bucket's
    /// committed state.
    pub fn of(storage: &Storage) -> Result<Self, StoreError> {
        if let Some(root) = storage.local_root() {
            return Ok(Self {
                root: root.to_path_buf(),
                _copy: None,
            });
        }
        let mut attempts = 0;
        loop {
            attempts += 1;
            let copy = tempfile::Builder::new()
                .prefix("shopstream-store-copy-")
                .tempdir()
                .map_err(|e| StoreError::Io {
                    path: std::env::temp_dir(),
                    source: e,
                })?;
            match copy_committed(storage, copy.path())? {
                true => {
                    return Ok(Self {
                        root: copy.path().to_path_buf(),
                        _copy: Some(copy),
                    });
                }
                false if attempts < 3 => continue,
                false => {
                    return Err(StoreError::Internal(format!(
                        "the store at {} changed under three copies in a row (a compaction deleting files as they were read); try again",
                        storage.root_display()
                    )));
                }
            }
        }
    }

    /// The root directory to read.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// Copies the commit records of every table of `storage` and the files they make visible
/// into `into`. `false` when a committed file vanished meanwhile (start over).
fn copy_committed(storage: &Storage, into: &Path) -> Result<bool, StoreError> {
    for table in manifest::tables(storage)? {
        let commits = manifest::read_commits(storage, &table)?;
        let live = manifest::live_of(storage, &table, &commits);
        let keys: Vec<String> = live.iter().map(|f| f.key.clone()).collect();
        let contents = storage.get_all(&keys)?;
        for (key, bytes) in keys.iter().zip(contents) {
            let Some(bytes) = bytes else {
                return Ok(false);
            };
            write(into, key, &bytes)?;
        }
        for commit in &commits {
            let bytes = serde_json::to_vec_pretty(commit).map_err(|e| {
                StoreError::Internal(format!("cannot encode commit {}: {e}", commit.id))
            })?;
            write(into, &manifest::commit_key(&table, &commit.id), &bytes)?;
        }
    }
    Ok(true)
}

/// Writes `bytes` to `root/key`, creating directories.
fn write(root: &Path, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
    let path = root.join(key);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    std::fs::write(&path, bytes).map_err(io_err(&path))
}
