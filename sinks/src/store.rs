//! The Parquet feature store (write side).

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use arrow::array::{Array, RecordBatch, TimestampMicrosecondArray, UInt32Array};
use arrow::compute::{SortColumn, lexsort_to_indices, take_record_batch};
use chrono::{DateTime, Datelike, Timelike};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use shopstream_config::StoreConfig;

use crate::atomic::{IoError, write_atomic};
use crate::manifest::{self, Commit, CommittedFile};

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

/// Deletes `path`; a file that is already gone is no error.
fn remove_if_exists(path: &Path) -> Result<(), StoreError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StoreError::io(path, source)),
    }
}

/// A written file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenFile {
    /// Path of the committed file.
    pub path: PathBuf,
    /// Path relative to the table directory.
    pub relative: String,
    /// Rows in it.
    pub rows: usize,
    /// Size in bytes.
    pub bytes: u64,
}

/// Writes tables below one root directory.
#[derive(Debug, Clone)]
pub struct ParquetStore {
    root: PathBuf,
    row_group_rows: usize,
    zstd_level: i32,
    compact_closed_hours: bool,
}

impl ParquetStore {
    /// A store rooted at `config.path` (created when missing).
    pub fn open(config: &StoreConfig) -> Result<Self, StoreError> {
        std::fs::create_dir_all(&config.path).map_err(io_err(&config.path))?;
        Ok(Self {
            root: config.path.clone(),
            row_group_rows: config.row_group_rows,
            zstd_level: config.zstd_level,
            compact_closed_hours: config.compact_closed_hours,
        })
    }

    /// Whether closed hours are compacted as the job goes (`store.compact_closed_hours`).
    pub fn compacts_closed_hours(&self) -> bool {
        self.compact_closed_hours
    }

    /// Writes `batch` into `table`, one file per hour partition of its `ts` column, named
    /// after `file_stem` (deterministic per table and window), rows sorted by (user_id or
    /// item_id, ts); `metadata` goes into each file's key-value metadata. Then commits the
    /// files under the record `file_stem`, with `source_offsets`, so they become visible.
    pub fn write(
        &self,
        table: &str,
        file_stem: &str,
        batch: &RecordBatch,
        metadata: &BTreeMap<String, String>,
        source_offsets: &BTreeMap<String, i64>,
    ) -> Result<Vec<WrittenFile>, StoreError> {
        if batch.num_rows() == 0 {
            return Ok(Vec::new());
        }
        let batch = sort_for_readers(batch)?;
        let mut written = Vec::new();
        for (partition, part) in split_by_hour(table, &batch)? {
            let relative = format!("{partition}/{file_stem}.parquet");
            written.push(self.write_one(table, &relative, &part, metadata)?);
        }
        crate::failpoint::hit("store.files_renamed");
        manifest::write_commit(
            &self.root,
            &Commit {
                format: manifest::COMMIT_FORMAT,
                table: table.to_string(),
                id: file_stem.to_string(),
                files: written.iter().map(committed).collect(),
                replaces: Vec::new(),
                source_offsets: source_offsets.clone(),
            },
        )?;
        Ok(written)
    }

    /// Writes one data file (not yet committed) at `relative` below the table directory.
    fn write_one(
        &self,
        table: &str,
        relative: &str,
        batch: &RecordBatch,
        metadata: &BTreeMap<String, String>,
    ) -> Result<WrittenFile, StoreError> {
        let path = self.root.join(table).join(relative);
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        let bytes = self.write_file(&dir, &path, batch, metadata)?;
        Ok(WrittenFile {
            path,
            relative: relative.to_string(),
            rows: batch.num_rows(),
            bytes,
        })
    }

    /// Merges the visible files of every hour partition of `table` that has more than one
    /// into a single file (sorted like any other), commits it as replacing them, then
    /// deletes what it replaced. Only hours that end at or before `before_ms` are touched
    /// (all with `None`): later hours may still receive windows. Returns the compaction
    /// commits made.
    ///
    /// Crash safety: until the compaction record is renamed into place, readers see the
    /// old files; after it, the merged file. Deleting the replaced files comes last and is
    /// idempotent. The generation number in the names makes a second compaction of an hour
    /// (after late windows arrived) a new file rather than an overwrite of a visible one.
    pub fn compact(&self, table: &str, before_ms: Option<i64>) -> Result<Vec<Commit>, StoreError> {
        let commits = manifest::read_commits(&self.root, table)?;
        let live = manifest::live_of(&self.root, table, &commits);
        let mut by_hour: BTreeMap<&str, Vec<&manifest::LiveFile>> = BTreeMap::new();
        for file in &live {
            if let Some((partition, _)) = file.relative.rsplit_once('/') {
                by_hour.entry(partition).or_default().push(file);
            }
        }
        let mut made = Vec::new();
        for (partition, files) in by_hour {
            if files.len() < 2 {
                continue;
            }
            if let (Some(limit), Some(hour_end)) = (before_ms, partition_end_ms(partition))
                && hour_end > limit
            {
                continue;
            }
            let generation = 1 + commits
                .iter()
                .filter(|c| c.id.starts_with(&compaction_prefix(partition)))
                .count();
            let mut batches = Vec::new();
            let mut metadata = BTreeMap::new();
            for file in &files {
                let (schema_meta, mut read) = crate::read::read_file(&file.path)?;
                batches.append(&mut read);
                merge_window_metadata(&mut metadata, schema_meta);
            }
            let Some(first) = batches.first() else {
                continue;
            };
            let merged = arrow::compute::concat_batches(&first.schema(), &batches)?;
            let merged = sort_for_readers(&merged)?;
            let relative = format!("{partition}/compact-{generation}.parquet");
            let written = self.write_one(table, &relative, &merged, &metadata)?;
            let commit = Commit {
                format: manifest::COMMIT_FORMAT,
                table: table.to_string(),
                id: format!("{}{generation}", compaction_prefix(partition)),
                files: vec![committed(&written)],
                replaces: files.iter().map(|f| f.relative.clone()).collect(),
                source_offsets: BTreeMap::new(),
            };
            crate::failpoint::hit("store.compaction_written");
            manifest::write_commit(&self.root, &commit)?;
            self.remove_replaced(table, &commit, &commits)?;
            made.push(commit);
        }
        Ok(made)
    }

    /// Deletes the data files of `table` that no commit makes visible (written by a run
    /// that crashed before committing them, or replaced files a crash kept from being
    /// deleted) and leftover temporary files, so engines that scan the directories rather
    /// than read the manifest (pyarrow and DuckDB globs) see what `shopstream query` sees.
    /// Run at job start, before anything is written. Returns the files deleted.
    pub fn vacuum(&self, table: &str) -> Result<usize, StoreError> {
        let live: std::collections::BTreeSet<PathBuf> = manifest::live_files(&self.root, table)?
            .into_iter()
            .map(|f| f.path)
            .collect();
        let mut removed = 0;
        let mut stack = vec![self.root.join(table)];
        while let Some(dir) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => return Err(StoreError::Io { path: dir, source }),
            };
            for entry in entries {
                let entry = entry.map_err(io_err(&dir))?;
                let path = entry.path();
                let name = entry.file_name().to_string_lossy().into_owned();
                if path.is_dir() {
                    stack.push(path);
                } else if (name.ends_with(".parquet") && !live.contains(&path))
                    || (name.starts_with('.') && name.ends_with(".tmp"))
                {
                    std::fs::remove_file(&path).map_err(io_err(&path))?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// Deletes the files `compaction` replaced and the window records left without any
    /// visible file.
    fn remove_replaced(
        &self,
        table: &str,
        compaction: &Commit,
        commits: &[Commit],
    ) -> Result<(), StoreError> {
        let table_dir = self.root.join(table);
        for relative in &compaction.replaces {
            remove_if_exists(&table_dir.join(relative))?;
        }
        let replaced: std::collections::BTreeSet<&str> =
            compaction.replaces.iter().map(String::as_str).collect();
        for commit in commits {
            let all_replaced = commit
                .files
                .iter()
                .all(|f| replaced.contains(f.path.as_str()));
            if commit.id.starts_with("window-") && all_replaced {
                remove_if_exists(
                    &manifest::commit_dir(&self.root, table).join(format!("{}.json", commit.id)),
                )?;
            }
        }
        Ok(())
    }

    /// Writes `batch` to `path` through a hidden temporary file; returns the size in bytes.
    fn write_file(
        &self,
        dir: &Path,
        path: &Path,
        batch: &RecordBatch,
        metadata: &BTreeMap<String, String>,
    ) -> Result<u64, StoreError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("part.parquet");
        let properties = WriterProperties::builder()
            .set_compression(Compression::ZSTD(
                ZstdLevel::try_new(self.zstd_level).unwrap_or_default(),
            ))
            .set_max_row_group_size(self.row_group_rows)
            .set_key_value_metadata(Some(
                metadata
                    .iter()
                    .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
                    .collect(),
            ))
            .set_created_by("shopstream".to_string())
            .build();
        let parquet_err = |source| StoreError::Parquet {
            path: path.to_path_buf(),
            source,
        };
        write_atomic(dir, path, name, Some("store.temp_written"), |file, tmp| {
            let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(properties))
                .map_err(parquet_err)?;
            writer.write(batch).map_err(parquet_err)?;
            let file = writer.into_inner().map_err(parquet_err)?;
            Ok(file.metadata().map_err(io_err(tmp))?.len())
        })
    }
}

fn committed(file: &WrittenFile) -> CommittedFile {
    CommittedFile {
        path: file.relative.clone(),
        rows: file.rows as u64,
        bytes: file.bytes,
    }
}

/// Record-name prefix of the compactions of one hour partition.
fn compaction_prefix(partition: &str) -> String {
    format!("compact-{}-", partition.replace('/', "-"))
}

/// Start of the hour partition a path relative to a table directory lies in, in epoch
/// ms (UTC): its first two `/`-separated segments must be `date=YYYY-MM-DD` and
/// `hour=HH`; anything after them (the file name) is ignored. `None` when they are not.
///
/// ```
/// use shopstream_sinks::store::partition_start_ms;
///
/// let start = Some(1_767_582_000_000); // 2026-01-05T03:00:00Z
/// assert_eq!(partition_start_ms("date=2026-01-05/hour=03"), start);
/// assert_eq!(partition_start_ms("date=2026-01-05/hour=03/window-1.parquet"), start);
/// assert_eq!(partition_start_ms("date=2026-01-05"), None);
/// assert_eq!(partition_start_ms("date=2026-01-05/hour=24"), None);
/// ```
pub fn partition_start_ms(relative: &str) -> Option<i64> {
    let mut parts = relative.split('/');
    let date = parts.next()?.strip_prefix("date=")?;
    let hour: u32 = parts.next()?.strip_prefix("hour=")?.parse().ok()?;
    let date = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()?;
    Some(date.and_hms_opt(hour, 0, 0)?.and_utc().timestamp_millis())
}

/// End of the hour partition `date=YYYY-MM-DD/hour=HH` (exactly these two segments),
/// epoch ms.
fn partition_end_ms(partition: &str) -> Option<i64> {
    if partition.matches('/').count() != 1 {
        return None;
    }
    Some(partition_start_ms(partition)? + 3_600_000)
}

/// Metadata of a merged file: the schema version kept, the window range widened.
fn merge_window_metadata(into: &mut BTreeMap<String, String>, from: BTreeMap<String, String>) {
    for (key, value) in from {
        let widened = match (key.as_str(), into.get(&key)) {
            ("shopstream.window_start_ms", Some(old)) => pick_number(old, &value, i64::min),
            ("shopstream.window_end_ms", Some(old)) => pick_number(old, &value, i64::max),
            _ => value,
        };
        into.insert(key, widened);
    }
}

/// `pick` of two numbers given as text; `a` unchanged when either is not a number.
fn pick_number(a: &str, b: &str, pick: fn(i64, i64) -> i64) -> String {
    match (a.parse::<i64>(), b.parse::<i64>()) {
        (Ok(x), Ok(y)) => pick(x, y).to_string(),
        _ => a.to_string(),
    }
}

/// Sorts rows by (`user_id`, `ts`), or (`item_id`, `ts`) for tables keyed by item, so that
/// readers looking up one key touch few pages (row-group statistics prune the rest).
/// Tables with neither key keep their order.
fn sort_for_readers(batch: &RecordBatch) -> Result<RecordBatch, StoreError> {
    let key = ["user_id", "item_id"]
        .into_iter()
        .find_map(|name| batch.column_by_name(name));
    let (Some(key), Some(ts)) = (key, batch.column_by_name("ts")) else {
        return Ok(batch.clone());
    };
    let columns = [
        SortColumn {
            values: key.clone(),
            options: None,
        },
        SortColumn {
            values: ts.clone(),
            options: None,
        },
    ];
    let indices = lexsort_to_indices(&columns, None)?;
    Ok(take_record_batch(batch, &indices)?)
}

/// Splits a batch by the UTC hour of its `ts` column: (`date=YYYY-MM-DD/hour=HH`, rows).
fn split_by_hour(
    table: &str,
    batch: &RecordBatch,
) -> Result<Vec<(String, RecordBatch)>, StoreError> {
    let ts = batch
        .column_by_name("ts")
        .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>())
        .ok_or_else(|| StoreError::NoTimestamp {
            table: table.to_string(),
        })?;
    let mut groups: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
    for (row, value) in ts.iter().enumerate() {
        let hour = value.unwrap_or(0).div_euclid(3_600_000_000);
        groups.entry(hour).or_default().push(row as u32);
    }
    let mut out = Vec::with_capacity(groups.len());
    for (hour, rows) in groups {
        let part = if rows.len() == batch.num_rows() {
            batch.clone()
        } else {
            take_record_batch(batch, &UInt32Array::from(rows))?
        };
        let at = DateTime::from_timestamp(hour * 3600, 0).unwrap_or_default();
        let name = format!(
            "date={:04}-{:02}-{:02}/hour={:02}",
            at.year(),
            at.month(),
            at.day(),
            at.hour()
        );
        out.push((name, part));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::StringArray;
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use std::sync::Arc;

    fn batch(ts_ms: &[i64]) -> RecordBatch {
        let schema = Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(StringArray::from_iter_values(
                    ts_ms.iter().map(|t| t.to_string()),
                )),
                Arc::new(
                    TimestampMicrosecondArray::from_iter_values(ts_ms.iter().map(|t| t * 1000))
                        .with_timezone("UTC"),
                ),
            ],
        )
        .expect("batch")
    }

    #[test]
    fn splits_by_hour_and_rewrites_identically() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ParquetStore::open(&StoreConfig {
            path: dir.path().to_path_buf(),
            ..StoreConfig::default()
        })
        .expect("open");
        // 2026-01-05 00:59:59.999 and 01:00:00.000 fall into two partitions.
        let b = batch(&[1_767_574_799_999, 1_767_574_800_000, 1_767_574_800_001]);
        let meta = BTreeMap::from([("window".to_string(), "w1".to_string())]);
        let files = store
            .write("t", "w1", &b, &meta, &BTreeMap::new())
            .expect("write");
        let rel: Vec<String> = files
            .iter()
            .map(|f| {
                f.path
                    .strip_prefix(dir.path())
                    .expect("under root")
                    .display()
                    .to_string()
            })
            .collect();
        assert_eq!(
            rel,
            vec![
                "t/date=2026-01-05/hour=00/w1.parquet",
                "t/date=2026-01-05/hour=01/w1.parquet"
            ]
        );
        assert_eq!(files.iter().map(|f| f.rows).collect::<Vec<_>>(), vec![1, 2]);
        let first = std::fs::read(&files[1].path).expect("read");
        store
            .write("t", "w1", &b, &meta, &BTreeMap::new())
            .expect("rewrite");
        assert_eq!(
            std::fs::read(&files[1].path).expect("read"),
            first,
            "same input, same bytes"
        );
        let leftovers = std::fs::read_dir(dir.path().join("t/date=2026-01-05/hour=01"))
            .expect("dir")
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().starts_with('.'))
            })
            .count();
        assert_eq!(leftovers, 0, "no temporary files left behind");
    }

    #[test]
    fn partition_bounds_come_from_the_hive_prefix() {
        let start = 1_767_582_000_000; // 2026-01-05T03:00:00Z
        assert_eq!(partition_start_ms("date=2026-01-05/hour=03"), Some(start));
        assert_eq!(
            partition_start_ms("date=2026-01-05/hour=03/w1.parquet"),
            Some(start)
        );
        assert_eq!(partition_start_ms("date=2026-01-05"), None);
        assert_eq!(partition_start_ms("hour=03/date=2026-01-05"), None);
        assert_eq!(
            partition_end_ms("date=2026-01-05/hour=03"),
            Some(start + 3_600_000)
        );
        assert_eq!(partition_end_ms("date=2026-01-05/hour=03/sub"), None);
    }

    #[test]
    fn unwritable_root_names_the_path() {
        let err = ParquetStore::open(&StoreConfig {
            path: PathBuf::from("/proc/shopstream-cannot-write-here"),
            ..StoreConfig::default()
        })
        .expect_err("unwritable");
        assert!(
            err.to_string()
                .contains("/proc/shopstream-cannot-write-here"),
            "{err}"
        );
    }
}
