//! Reading the store back: listing committed files, reading one file, and the small
//! aggregate the demo summary prints. SQL over the store is in [`crate::query`].

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::{Array, BooleanArray, RecordBatch, StringArray};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::error::{StoreError, io_err};

/// Files of `table` visible to readers (named by a commit, not replaced by a compaction),
/// sorted by path. Files present on disk but never committed (a crash mid-window) are not
/// included.
pub fn table_files(root: &Path, table: &str) -> Result<Vec<PathBuf>, StoreError> {
    Ok(crate::manifest::live_files(root, table)?
        .into_iter()
        .map(|f| f.path)
        .collect())
}

/// Reads one Parquet file: its key-value metadata and its record batches.
pub fn read_file(path: &Path) -> Result<(BTreeMap<String, String>, Vec<RecordBatch>), StoreError> {
    let parquet_err = |source| StoreError::Parquet {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io_err(path))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(parquet_err)?;
    let metadata = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .map(|kv| {
            kv.iter()
                .filter(|kv| kv.key != "ARROW:schema")
                .map(|kv| (kv.key.clone(), kv.value.clone().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    let batches = builder
        .build()
        .map_err(parquet_err)?
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
pub fn scenario_summary(root: &Path) -> Result<ScenarioSummary, StoreError> {
    let mut summary = ScenarioSummary::default();
    for path in table_files(root, crate::tables::EXAMPLES)? {
        summary.files += 1;
        let parquet_err = |source| StoreError::Parquet {
            path: path.clone(),
            source,
        };
        let file = File::open(&path).map_err(io_err(&path))?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(parquet_err)?
            .build()
            .map_err(parquet_err)?;
        for batch in reader {
            let batch = batch.map_err(StoreError::Arrow)?;
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
