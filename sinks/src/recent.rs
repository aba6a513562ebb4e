//! The data files a store wrote lately, kept in memory until a compaction merges them, so
//! that merging an hour does not read back (and decompress) the files it wrote minutes
//! before. Reading them back was most of a compaction's cost: an hour of one-minute
//! windows is some 60 files per table, each a zstd decompression context per column.
//!
//! An entry is the file as [`crate::read::read_file`] would return it: the file's
//! key-value metadata and the batch under the schema the Parquet reader reconstructs
//! ([`as_read_back`]), so a merge from memory writes the bytes a merge from disk writes.
//! A file's name fixes its bytes (the store's rule), so an entry never goes stale; a job
//! restarted with an empty cache reads the files instead.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::Schema;

/// Memory the entries may take together before the oldest are dropped (they are then
/// read back from their files when merged).
pub(crate) const RECENT_BYTES_MAX: usize = 256 << 20;

/// A file as read back: its key-value metadata and its rows.
pub(crate) use crate::read::FileContents;

/// Files written lately, by path, oldest first.
#[derive(Debug, Default)]
pub(crate) struct RecentFiles {
    by_path: HashMap<PathBuf, Entry>,
    /// The paths held, by the order they were remembered in (the oldest go first).
    order: BTreeMap<u64, PathBuf>,
    /// The number the next entry is remembered under.
    next: u64,
    /// Memory of the entries held.
    bytes: usize,
    /// Limit on `bytes`.
    max_bytes: usize,
}

#[derive(Debug)]
struct Entry {
    metadata: BTreeMap<String, String>,
    batch: RecordBatch,
    bytes: usize,
    /// Its key in `order`.
    number: u64,
}

impl RecentFiles {
    /// An empty cache holding at most `max_bytes` of batches.
    pub(crate) fn with_limit(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            ..Self::default()
        }
    }

    /// Keeps the file written at `path` from `batch` with key-value `metadata` (in place
    /// of what was held for that path), dropping the oldest entries beyond the limit (a
    /// batch larger than the limit is not kept).
    pub(crate) fn remember(
        &mut self,
        path: &Path,
        metadata: &BTreeMap<String, String>,
        batch: &RecordBatch,
    ) {
        self.remove(path);
        let bytes = batch.get_array_memory_size();
        if bytes > self.max_bytes {
            return;
        }
        while self.bytes + bytes > self.max_bytes {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.remove(&oldest);
        }
        let number = self.next;
        self.next += 1;
        self.by_path.insert(
            path.to_path_buf(),
            Entry {
                metadata: metadata.clone(),
                batch: as_read_back(batch),
                bytes,
                number,
            },
        );
        self.order.insert(number, path.to_path_buf());
        self.bytes += bytes;
    }

    /// The file at `path` as read back, if held; it is no longer held afterwards (a
    /// merged file is replaced, never merged again).
    pub(crate) fn take(&mut self, path: &Path) -> Option<FileContents> {
        self.remove(path)
            .map(|entry| (entry.metadata, vec![entry.batch]))
    }

    /// Drops the entry of `path`, if any, and returns it.
    fn remove(&mut self, path: &Path) -> Option<Entry> {
        let entry = self.by_path.remove(path)?;
        self.order.remove(&entry.number);
        self.bytes -= entry.bytes;
        Some(entry)
    }

    /// Memory of the entries held.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

/// `batch` under the schema the Parquet reader gives the batches of a file written from
/// it: the same fields, and no schema-level metadata (the reader keeps the file's
/// key-value pairs in the file metadata, not in its batches). The test
/// `a_file_held_in_memory_is_the_file_read_back` holds the two equal.
pub(crate) fn as_read_back(batch: &RecordBatch) -> RecordBatch {
    if batch.schema().metadata().is_empty() {
        return batch.clone();
    }
    let schema = Arc::new(Schema::new(batch.schema().fields().clone()));
    // Same columns under the same fields: this cannot fail, and the batch as it is would
    // only cost a merge its byte-identity, which the test above guards.
    RecordBatch::try_new(schema, batch.columns().to_vec()).unwrap_or_else(|_| batch.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, Int64Array, StringArray, TimestampMicrosecondArray};
    use arrow::datatypes::{DataType, Field, TimeUnit};

    fn batch(rows: usize) -> RecordBatch {
        let schema = Schema::new_with_metadata(
            vec![
                Field::new("user_id", DataType::Utf8, false),
                Field::new(
                    "ts",
                    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                    false,
                ),
                Field::new("n", DataType::Int64, true)
                    .with_metadata([("unit".to_string(), "items".to_string())].into()),
                Field::new("x", DataType::Float64, true),
            ],
            [
                ("schema.version".to_string(), "3".to_string()),
                ("shared".to_string(), "from the schema".to_string()),
            ]
            .into(),
        );
        let n = rows as i64;
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(StringArray::from_iter_values(
                    (0..n).map(|i| format!("u{}", i % 7)),
                )),
                Arc::new(
                    TimestampMicrosecondArray::from_iter_values((0..n).map(|i| i * 1_000))
                        .with_timezone("UTC"),
                ),
                Arc::new(Int64Array::from_iter(
                    (0..n).map(|i| (i % 3 != 0).then_some(i)),
                )),
                Arc::new(Float64Array::from_iter(
                    (0..n).map(|i| (i % 5 != 0).then_some(i as f64 / 3.0)),
                )),
            ],
        )
        .expect("batch")
    }

    /// Guards the byte-identity of compaction from memory: what the cache hands a merge
    /// is what reading the file back gives (schema, metadata and rows), also for a file
    /// of several row groups and for a key both the file and the schema carry.
    #[test]
    fn a_file_held_in_memory_is_the_file_read_back() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("f.parquet");
        let batch = batch(3_000);
        let metadata: BTreeMap<String, String> = [
            (
                "shopstream.window_start_ms".to_string(),
                "60000".to_string(),
            ),
            ("shared".to_string(), "from the file".to_string()),
        ]
        .into();
        let properties = parquet::file::properties::WriterProperties::builder()
            .set_max_row_group_size(1_000)
            .set_key_value_metadata(Some(
                metadata
                    .iter()
                    .map(|(k, v)| parquet::file::metadata::KeyValue::new(k.clone(), v.clone()))
                    .collect(),
            ))
            .build();
        let file = std::fs::File::create(&path).expect("create");
        let mut writer =
            parquet::arrow::ArrowWriter::try_new(file, batch.schema(), Some(properties))
                .expect("writer");
        writer.write(&batch).expect("write");
        writer.close().expect("close");

        let (read_metadata, read) = crate::read::read_file(&path).expect("read");
        let read = arrow::compute::concat_batches(&read[0].schema(), &read).expect("concat");
        let mut recent = RecentFiles::with_limit(RECENT_BYTES_MAX);
        recent.remember(&path, &metadata, &batch);
        let (held_metadata, held) = recent.take(&path).expect("held");
        assert_eq!(held_metadata, read_metadata);
        assert_eq!(held[0].schema(), read.schema());
        assert_eq!(held[0], read);
        assert!(recent.take(&path).is_none(), "taken once");
        assert_eq!(recent.bytes(), 0);
    }

    #[test]
    fn the_oldest_files_go_first_beyond_the_limit() {
        let one = batch(100);
        let size = one.get_array_memory_size();
        let mut recent = RecentFiles::with_limit(size * 2);
        let none = BTreeMap::new();
        for name in ["a", "b", "c"] {
            recent.remember(Path::new(name), &none, &one);
        }
        assert!(recent.take(Path::new("a")).is_none(), "dropped for c");
        assert!(recent.take(Path::new("b")).is_some());
        assert!(recent.take(Path::new("c")).is_some());
        // Rewritten files replace their entry rather than count twice.
        recent.remember(Path::new("d"), &none, &one);
        recent.remember(Path::new("d"), &none, &one);
        assert_eq!(recent.bytes(), size);
        // A batch above the limit is not kept at all.
        let mut small = RecentFiles::with_limit(size / 2);
        small.remember(Path::new("e"), &none, &one);
        assert!(small.take(Path::new("e")).is_none());
        assert_eq!(small.bytes(), 0);
    }
}
