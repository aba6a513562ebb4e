//! Reading the store back: listing committed files, reading one file, and the small
//! aggregate the demo summary prints. SQL over the store is in [`crate::query`].

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

use arrow::array::{Array, BooleanArray, RecordBatch, StringArray};
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::reader::ChunkReader;

use crate::error::{StoreError, io_err};
use crate::manifest::LiveFile;
use crate::storage::Storage;

/// Files of `table` visible to readers (named by a commit, not replaced by a compaction),
/// sorted by path. Files present but never committed (a crash mid-window) are not
/// included.
pub fn table_files(storage: &Storage, table: &str) -> Result<Vec<LiveFile>, StoreError> {
    crate::manifest::live_files(storage, table)
}

/// A file's key-value metadata and record batches.
pub type FileContents = (BTreeMap<String, String>, Vec<RecordBatch>);

/// Reads one local Parquet file: its key-value metadata and its record batches.
pub fn read_file(path: &Path) -> Result<FileContents, StoreError> {
    let file = File::open(path).map_err(io_err(path))?;
    read_parquet(path, file)
}

/// Reads the Parquet object `key` of `storage`: its key-value metadata and its record
/// batches.
pub fn read_object(storage: &Storage, key: &str) -> Result<FileContents, StoreError> {
    let path = storage.location(key);
    let bytes = committed_bytes(storage, key, &path)?;
    read_parquet(&path, bytes)
}

/// The bytes of the committed object `key` (at `path`): its absence is an error.
fn committed_bytes(storage: &Storage, key: &str, path: &Path) -> Result<Bytes, StoreError> {
    storage.get(key)?.ok_or_else(|| StoreError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "a committed file is missing (deleted outside shopstream?)",
        ),
    })
}

/// The key-value metadata of the Parquet object `key` of `storage` (its footer only,
/// where the storage can read part of an object; a bucket's object is fetched whole).
pub fn object_metadata(
    storage: &Storage,
    key: &str,
) -> Result<BTreeMap<String, String>, StoreError> {
    let path = storage.location(key);
    if storage.local_root().is_some() {
        let file = File::open(&path).map_err(io_err(&path))?;
        return footer_metadata(&path, file);
    }
    let bytes = committed_bytes(storage, key, &path)?;
    footer_metadata(&path, bytes)
}

/// The key-value metadata of the Parquet in `source` (read from `path`, for errors),
/// without the Arrow schema.
fn footer_metadata<R: ChunkReader + 'static>(
    path: &Path,
    source: R,
) -> Result<BTreeMap<String, String>, StoreError> {
    Ok(key_values(&reader(path, source)?))
}

/// A reader of the Parquet in `source` (read from `path`, for errors): its footer read.
fn reader<R: ChunkReader + 'static>(
    path: &Path,
    source: R,
) -> Result<ParquetRecordBatchReaderBuilder<R>, StoreError> {
    ParquetRecordBatchReaderBuilder::try_new(source).map_err(|source| parquet_error(path, source))
}

fn parquet_error(path: &Path, source: parquet::errors::ParquetError) -> StoreError {
    StoreError::Parquet {
        path: path.to_path_buf(),
        source,
    }
}

/// The key-value metadata of a Parquet file, without the Arrow schema.
fn key_values<R: ChunkReader>(
    builder: &ParquetRecordBatchReaderBuilder<R>,
) -> BTreeMap<String, String> {
    builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .map(|kv| {
            kv.iter()
                .filter(|kv| kv.key != "ARROW:schema")
                .map(|kv| (kv.key.clone(), kv.value.clone().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default()
}

/// Reads Parquet from `source` (read from `path`, for errors).
fn read_parquet<R: ChunkReader + 'static>(
    path: &Path,
    source: R,
) -> Result<FileContents, StoreError> {
    let builder = reader(path, source)?;
    let metadata = key_values(&builder);
    let batches = builder
        .build()
        .map_err(|source| parquet_error(path, source))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok((metadata, batches))
}

/// Impressions and clicks per scenario over the `examples` table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScenarioSummary {
    /// scenario -> (examples, clicked).
    pub by_scenario: BTreeMap<String, (u64, u64)>,
    /// Total rows.
    pub rows: u64,
    /// Files read.
    pub files: usize,
}

/// Reads every committed `examples` file and counts rows and clicks per scenario.
pub fn scenario_summary(storage: &Storage) -> Result<ScenarioSummary, StoreError> {
    let mut summary = ScenarioSummary::default();
    for file in table_files(storage, crate::tables::EXAMPLES)? {
        summary.files += 1;
        let path = file.path;
        let (_, batches) = read_object(storage, &file.key)?;
        for batch in batches {
            let scenario = batch
                .column_by_name("scenario")
                .and_then(|c| c.as_any().downcast_ref::<StringArray>());
            let clicked = batch
                .column_by_name("clicked")
                .and_then(|c| c.as_any().downcast_ref::<BooleanArray>());
            let (Some(scenario), Some(clicked)) = (scenario, clicked) else {
                return Err(StoreError::MissingColumn {
                    path: path.clone(),
                    column: "scenario/clicked".to_string(),
                });
            };
            for row in 0..batch.num_rows() {
                let entry = summary
                    .by_scenario
                    .entry(scenario.value(row).to_string())
                    .or_default();
                entry.0 += 1;
                entry.1 += u64::from(clicked.is_valid(row) && clicked.value(row));
                summary.rows += 1;
            }
        }
    }
    Ok(summary)
}
