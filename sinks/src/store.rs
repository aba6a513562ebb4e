//! The Parquet feature store (write side).

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use arrow::array::{Array, RecordBatch, TimestampMicrosecondArray, UInt32Array};
use arrow::compute::take_record_batch;
use chrono::{DateTime, Datelike, Timelike};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use shopstream_config::StoreConfig;

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
    #[error("cannot split batch by hour: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
}

/// A written file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenFile {
    /// Path of the committed file.
    pub path: PathBuf,
    /// Rows in it.
    pub rows: usize,
}

/// Writes tables below one root directory.
#[derive(Debug, Clone)]
pub struct ParquetStore {
    root: PathBuf,
    row_group_rows: usize,
    zstd_level: i32,
}

impl ParquetStore {
    /// A store rooted at `config.path` (created when missing).
    pub fn open(config: &StoreConfig) -> Result<Self, StoreError> {
        std::fs::create_dir_all(&config.path).map_err(|source| StoreError::Io {
            path: config.path.clone(),
            source,
        })?;
        Ok(Self {
            root: config.path.clone(),
            row_group_rows: config.row_group_rows,
            zstd_level: config.zstd_level,
        })
    }

    /// Writes `batch` into `table`, one file per hour partition of its `ts` column, named
    /// after `file_stem` (deterministic per table and window). `metadata` is stored in each
    /// file's key-value metadata.
    pub fn write(
        &self,
        table: &str,
        file_stem: &str,
        batch: &RecordBatch,
        metadata: &BTreeMap<String, String>,
    ) -> Result<Vec<WrittenFile>, StoreError> {
        if batch.num_rows() == 0 {
            return Ok(Vec::new());
        }
        let mut written = Vec::new();
        for (partition, part) in split_by_hour(table, batch)? {
            let dir = self.root.join(table).join(partition);
            let path = dir.join(format!("{file_stem}.parquet"));
            self.write_file(&dir, &path, &part, metadata)?;
            written.push(WrittenFile {
                path,
                rows: part.num_rows(),
            });
        }
        Ok(written)
    }

    fn write_file(
        &self,
        dir: &Path,
        path: &Path,
        batch: &RecordBatch,
        metadata: &BTreeMap<String, String>,
    ) -> Result<(), StoreError> {
        let io_err = |p: &Path| {
            let p = p.to_path_buf();
            move |source| StoreError::Io { path: p, source }
        };
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("part.parquet");
        // Hidden while incomplete: readers (pyarrow, polars, DuckDB) skip dot-files.
        let tmp = dir.join(format!(".{name}.tmp"));
        let file = File::create(&tmp).map_err(io_err(&tmp))?;
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
        let mut writer =
            ArrowWriter::try_new(file, batch.schema(), Some(properties)).map_err(parquet_err)?;
        writer.write(batch).map_err(parquet_err)?;
        let file = writer.into_inner().map_err(parquet_err)?;
        file.sync_all().map_err(io_err(&tmp))?;
        drop(file);
        std::fs::rename(&tmp, path).map_err(io_err(path))?;
        // Make the rename itself durable.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))?;
        Ok(())
    }
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
        let files = store.write("t", "w1", &b, &meta).expect("write");
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
        store.write("t", "w1", &b, &meta).expect("rewrite");
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
