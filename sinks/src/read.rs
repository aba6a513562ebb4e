//! Reading the store back: listing committed files and simple aggregate queries used by
//! the demo summary and the tests. (The SQL query engine arrives with the query command.)

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::{Array, BooleanArray, StringArray};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::store::StoreError;

/// Committed Parquet files of `table` (hidden temporary files excluded), sorted by path.
pub fn table_files(root: &Path, table: &str) -> Result<Vec<PathBuf>, StoreError> {
    let mut files = Vec::new();
    let dir = root.join(table);
    if !dir.exists() {
        return Ok(files);
    }
    let mut stack = vec![dir];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|source| StoreError::Io {
            path: dir.clone(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| StoreError::Io {
                path: dir.clone(),
                source,
            })?;
            let path = entry.path();
            let hidden = entry.file_name().to_string_lossy().starts_with(['.', '_']);
            if hidden {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
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
    for path in table_files(root, "examples")? {
        summary.files += 1;
        let parquet_err = |source| StoreError::Parquet {
            path: path.clone(),
            source,
        };
        let file = File::open(&path).map_err(|source| StoreError::Io {
            path: path.clone(),
            source,
        })?;
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
