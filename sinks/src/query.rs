//! SQL over the store, on polars: every table with committed files is registered as a
//! lazy Parquet scan of exactly the files its manifest makes visible, with the hive columns
//! `date` (a date) and `hour` (an integer) parsed from the paths, so a filter on them skips
//! whole files and a filter on `ts` or `user_id` skips row groups by their statistics.
//! Also the point-in-time training-set join ([`training_set`]).

use std::io::Write;
use std::path::{Path, PathBuf};

use polars::prelude::*;
use polars::sql::SQLContext;

use crate::manifest;
use crate::store::StoreError;

/// Why a query failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The store could not be listed (I/O, corrupt manifest).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store has no committed table at all. User.
    #[error(
        "the store at {root} has no tables yet (no commit records under {root}/_manifest); run the pipeline or a replay first, or point --store/store.path at another store"
    )]
    EmptyStore {
        /// The store root.
        root: PathBuf,
    },
    /// The query names a table that does not exist. User.
    #[error("{message}; tables in this store: {tables}")]
    UnknownTable {
        /// polars' message.
        message: String,
        /// The tables there are.
        tables: String,
    },
    /// The query is invalid (syntax, unknown column, types). User.
    #[error("{message}")]
    Invalid {
        /// polars' message, plus the columns of the tables when a column was unknown.
        message: String,
    },
    /// Writing the result failed. External.
    #[error("cannot write the result: {0}")]
    Output(String),
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// An aligned text table.
    Table,
    /// CSV with a header row.
    Csv,
    /// One JSON object per line.
    Json,
    /// A Parquet file (binary; redirect it or use --out).
    Parquet,
}

/// A table registered for SQL.
#[derive(Debug, Clone)]
pub struct TableInfo {
    /// Its name.
    pub name: String,
    /// Visible files.
    pub files: usize,
    /// Committed rows.
    pub rows: u64,
}

/// The store opened for SQL.
pub struct QueryContext {
    ctx: SQLContext,
    tables: Vec<TableInfo>,
    schemas: Vec<(String, Vec<String>)>,
}

impl std::fmt::Debug for QueryContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryContext")
            .field("tables", &self.tables)
            .finish_non_exhaustive()
    }
}

/// A lazy scan of `table`'s visible files, with hive columns; `None` when it has none.
pub fn scan_table(root: &Path, table: &str) -> Result<Option<(LazyFrame, TableInfo)>, QueryError> {
    let files = manifest::live_files(root, table)?;
    if files.is_empty() {
        return Ok(None);
    }
    let table_dir = root.join(table);
    let prefix = format!("{}/", table_dir.display());
    let paths: Vec<PlRefPath> = files
        .iter()
        .map(|f| PlRefPath::new(format!("{prefix}{}", f.relative)))
        .collect();
    let args = ScanArgsParquet {
        hive_options: HiveOptions {
            enabled: Some(true),
            hive_start_idx: 0,
            schema: None,
            try_parse_dates: true,
        },
        glob: false,
        ..Default::default()
    };
    let lf = LazyFrame::scan_parquet_files(paths.into_iter().collect(), args).map_err(|e| {
        QueryError::Invalid {
            message: format!("cannot scan table {table}: {e}"),
        }
    })?;
    let info = TableInfo {
        name: table.to_string(),
        files: files.len(),
        rows: files.iter().map(|f| f.rows).sum(),
    };
    Ok(Some((lf, info)))
}

impl QueryContext {
    /// Registers every table of the store at `root`.
    pub fn open(root: &Path) -> Result<Self, QueryError> {
        let ctx = SQLContext::new();
        let mut tables = Vec::new();
        let mut schemas = Vec::new();
        for name in manifest::tables(root)? {
            if let Some((mut lf, info)) = scan_table(root, &name)? {
                let columns = lf
                    .collect_schema()
                    .map(|s| s.iter_names().map(|n| n.to_string()).collect())
                    .unwrap_or_default();
                schemas.push((name.clone(), columns));
                ctx.register(&name, lf);
                tables.push(info);
            }
        }
        if tables.is_empty() {
            return Err(QueryError::EmptyStore {
                root: root.to_path_buf(),
            });
        }
        Ok(Self {
            ctx,
            tables,
            schemas,
        })
    }

    /// The registered tables.
    pub fn tables(&self) -> &[TableInfo] {
        &self.tables
    }

    /// Plans `sql`.
    pub fn plan(&mut self, sql: &str) -> Result<LazyFrame, QueryError> {
        self.ctx.execute(sql).map_err(|e| self.explain_error(e))
    }

    /// Runs `sql` to a data frame.
    pub fn run(&mut self, sql: &str) -> Result<DataFrame, QueryError> {
        let lf = self.plan(sql)?;
        lf.collect().map_err(|e| self.explain_error(e))
    }

    /// The optimized plan of `sql`, as text.
    pub fn explain(&mut self, sql: &str) -> Result<String, QueryError> {
        let lf = self.plan(sql)?;
        lf.explain(true).map_err(|e| self.explain_error(e))
    }

    /// Turns a polars error into one that says what exists.
    fn explain_error(&self, error: PolarsError) -> QueryError {
        let message = error.to_string();
        let lower = message.to_lowercase();
        if lower.contains("relation") || lower.contains("table") && lower.contains("not found") {
            return QueryError::UnknownTable {
                message,
                tables: self
                    .tables
                    .iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            };
        }
        if matches!(error, PolarsError::ColumnNotFound(_)) || lower.contains("column") {
            let columns: Vec<String> = self
                .schemas
                .iter()
                .map(|(table, columns)| format!("{table}: {}", columns.join(", ")))
                .collect();
            return QueryError::Invalid {
                message: format!("{message}\ncolumns by table:\n  {}", columns.join("\n  ")),
            };
        }
        QueryError::Invalid { message }
    }
}

/// Writes `df` to `out` in `format`.
pub fn write_output(
    df: &mut DataFrame,
    format: OutputFormat,
    out: &mut dyn Write,
) -> Result<(), QueryError> {
    let err = |e: &dyn std::fmt::Display| QueryError::Output(e.to_string());
    match format {
        // polars abbreviates long tables; its POLARS_FMT_MAX_ROWS / POLARS_FMT_MAX_COLS
        // environment variables (-1: no limit) control that.
        OutputFormat::Table => writeln!(out, "{df}").map_err(|e| err(&e)),
        OutputFormat::Csv => CsvWriter::new(out)
            .include_header(true)
            .finish(df)
            .map_err(|e| err(&e)),
        OutputFormat::Json => JsonWriter::new(out)
            .with_json_format(JsonFormat::JsonLines)
            .finish(df)
            .map_err(|e| err(&e)),
        OutputFormat::Parquet => ParquetWriter::new(out)
            .with_compression(ParquetCompression::Zstd(None))
            .finish(df)
            .map(|_| ())
            .map_err(|e| err(&e)),
    }
}

/// Options of a point-in-time training set.
#[derive(Debug, Clone)]
pub struct TrainingSetOptions {
    /// The entity key: `user_id` or `item_id`.
    pub key: String,
    /// Feature snapshots older than this before a spine row are not used (the state's
    /// time to live), in milliseconds; also bounds the partitions read.
    pub max_age_ms: i64,
}

/// Point-in-time join: for each spine row (key, ts[, label, …]) the latest feature
/// snapshot of that key taken strictly before `ts` (the `user_*` or `item_*` columns of the
/// `examples` table, as served at the key's last impression), no older than
/// `max_age_ms`. Rows without such a snapshot keep nulls. The examples scan is limited to
/// the spine's time range (hive `date` pruning plus `ts` row-group statistics).
pub fn training_set(
    root: &Path,
    spine: LazyFrame,
    options: &TrainingSetOptions,
) -> Result<DataFrame, QueryError> {
    let Some((examples, _)) = scan_table(root, "examples")? else {
        return Err(QueryError::EmptyStore {
            root: root.to_path_buf(),
        });
    };
    let key = options.key.as_str();
    let prefix = match key {
        "user_id" => "user_",
        "item_id" => "item_",
        other => {
            return Err(QueryError::Invalid {
                message: format!("--key {other} is not supported; use user_id or item_id"),
            });
        }
    };
    let invalid = |e: PolarsError| QueryError::Invalid {
        message: e.to_string(),
    };
    let utc_us = DataType::Datetime(TimeUnit::Microseconds, Some(TimeZone::UTC));
    let spine = spine
        .with_column(col("ts").cast(utc_us.clone()))
        .with_column(col(key).cast(DataType::String));
    let bounds = spine
        .clone()
        .select([col("ts").min().alias("lo"), col("ts").max().alias("hi")])
        .collect()
        .map_err(invalid)?;
    let micros = |name: &str| -> Result<Option<i64>, QueryError> {
        let column = bounds.column(name).map_err(invalid)?;
        let physical = column.cast(&DataType::Int64).map_err(invalid)?;
        Ok(physical.get(0).ok().and_then(|v| v.extract::<i64>()))
    };
    let (Some(lo), Some(hi)) = (micros("lo")?, micros("hi")?) else {
        return Err(QueryError::Invalid {
            message: "the spine has no rows with a timestamp".to_string(),
        });
    };
    let lo = lo - options.max_age_ms * 1000;
    let mut schema = examples.clone();
    let columns: Vec<Expr> = schema
        .collect_schema()
        .map_err(invalid)?
        .iter_names()
        .filter(|n| n.starts_with(prefix) && n.as_str() != key)
        .map(|n| col(n.clone()))
        .collect();
    let lo_date = micros_to_date(lo);
    let hi_date = micros_to_date(hi);
    let features = examples
        // Whole days outside the range are skipped by their hive directory.
        .filter(
            col("date")
                .gt_eq(lit(lo_date))
                .and(col("date").lt_eq(lit(hi_date))),
        )
        .filter(
            col("ts")
                .cast(DataType::Int64)
                .gt_eq(lit(lo))
                .and(col("ts").cast(DataType::Int64).lt(lit(hi))),
        )
        .select(
            [col(key), col("ts").alias("features_ts")]
                .into_iter()
                .chain(columns)
                .collect::<Vec<_>>(),
        )
        .sort(["features_ts"], Default::default());
    let spine = spine.sort(["ts"], Default::default());
    let options_asof = AsOfOptions {
        strategy: AsofStrategy::Backward,
        tolerance_str: Some(format!("{}ms", options.max_age_ms).into()),
        left_by: Some(vec![key.into()]),
        right_by: Some(vec![key.into()]),
        // Strictly before: a snapshot taken at the same instant may already include the
        // event being labelled.
        allow_eq: false,
        check_sortedness: false,
        tolerance: None,
    };
    spine
        .join_builder()
        .with(features)
        .left_on([col("ts")])
        .right_on([col("features_ts")])
        .how(JoinType::AsOf(Box::new(options_asof)))
        .finish()
        .collect()
        .map_err(invalid)
}

/// The UTC date of epoch microseconds, as days since 1970-01-01 (polars' Date).
fn micros_to_date(micros: i64) -> chrono::NaiveDate {
    chrono::DateTime::from_timestamp_micros(micros)
        .unwrap_or_default()
        .date_naive()
}
