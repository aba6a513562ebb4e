//! The store's error type, shared by the writer, the manifest and the readers.

use std::io;
use std::path::{Path, PathBuf};

use crate::atomic::IoError;

/// Why a store write failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file system refused (permissions, full disk). External.
    #[error(
        "cannot write {path}: {source}; check that store.path is writable and the disk has room"
    )]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// Parquet encoding failed. Internal.
    #[error("cannot encode Parquet file {path}: {source}")]
    Parquet {
        /// The file.
        path: PathBuf,
        /// The encoder's error.
        source: parquet::errors::ParquetError,
    },
    /// The batch lacks the `ts` column the partitioning needs. Internal.
    #[error("batch for table {table} has no UTC microsecond `ts` column")]
    NoTimestamp {
        /// The table.
        table: String,
    },
    /// A file of the store lacks a column the reader needs (written by another version?).
    #[error("{path} has no column `{column}`")]
    MissingColumn {
        /// The file.
        path: PathBuf,
        /// The column.
        column: String,
    },
    /// Arrow kernel failure. Internal.
    #[error("cannot split or sort batch: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// A commit record cannot be read. The store was damaged outside shopstream, or was
    /// written by an incompatible version.
    #[error(
        "commit record {path} is unreadable: {message}; restore it from a backup or delete it and reprocess its window"
    )]
    CorruptCommit {
        /// The record.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// An erasure record (`shopstream store forget`) cannot be read. The store was
    /// damaged outside shopstream.
    #[error(
        "erasure record {path} is unreadable: {message}; rerun `shopstream store forget` for its users to write it again"
    )]
    CorruptErasure {
        /// The record.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The store holds a table's files of another schema version than this build writes
    /// (a store of an older build). User: a store holds one version of each table.
    #[error(
        "{path} (table `{table}`) is of schema version {found}, and this build writes version {expected} (docs/feature-schema.md): one store holds one version, so replay the topics into a new store (`shopstream replay` with another store.path), or move this store aside"
    )]
    SchemaVersion {
        /// The table.
        table: String,
        /// A file of the other version.
        path: PathBuf,
        /// Its version (`none` when the file does not say).
        found: String,
        /// This build's version.
        expected: String,
    },
    /// A store location (`store.path`) or its options are wrong. User.
    #[error("store location {location}: {message}")]
    Location {
        /// The location as given.
        location: String,
        /// What is wrong.
        message: String,
    },
    /// A request to the store's bucket failed: for good (`transient` false: missing
    /// bucket, wrong credentials, no permission), or after retrying for
    /// `store.retry_timeout_secs`. External.
    #[error(
        "object store request for {object} at {endpoint} failed after {tries} tries in {secs} s: {message}; {}",
        if *transient {
            "the store stayed unreachable past store.retry_timeout_secs: check the endpoint and the network, then restart (nothing past the last commit was acknowledged)"
        } else {
            "check the bucket name, the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or store.options) and the endpoint"
        }
    )]
    Remote {
        /// The object (URL), or the store root for a listing.
        object: String,
        /// The endpoint the requests went to.
        endpoint: String,
        /// Requests made.
        tries: u32,
        /// Seconds from the first to the last.
        secs: u64,
        /// Whether the last failure was of a kind that may pass.
        transient: bool,
        /// The client's error.
        message: String,
    },
    /// A create-only object (a commit record) exists with other contents than this
    /// writer's: another writer committed the same record differently. External.
    #[error(
        "{path} already exists with other contents than this writer's; another job writes this store (two jobs with one store.path and different input?). Stop one of them"
    )]
    Conflict {
        /// The object.
        path: PathBuf,
    },
    /// A bug. Internal.
    #[error("internal store error: {0}")]
    Internal(String),
}

impl IoError for StoreError {
    fn io(path: &Path, source: io::Error) -> Self {
        StoreError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Maps an I/O error on `path` to [`StoreError::Io`] (for `map_err`).
pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::io(path, source)
}
