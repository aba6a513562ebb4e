//! The Parquet feature store (write side).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::{Array, RecordBatch, TimestampMicrosecondArray, UInt32Array};
use arrow::compute::{LexicographicalComparator, SortColumn, take_record_batch};
use chrono::{DateTime, Datelike, Timelike};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use shopstream_config::StoreConfig;

pub use crate::error::StoreError;
use crate::manifest::{self, Commit, CommittedFile};
use crate::recent::{FileContents, RECENT_BYTES_MAX, RecentFiles};
use crate::storage::Storage;

/// A written file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenFile {
    /// Where the file is: a path below a local store, a URL below a bucket.
    pub path: PathBuf,
    /// Path relative to the table directory.
    pub relative: String,
    /// Rows in it.
    pub rows: usize,
    /// Size in bytes.
    pub bytes: u64,
}

/// The rows of one hour partition from each window of a span: (window ms, rows, metadata).
type HourParts<'a> = Vec<(i64, RecordBatch, &'a BTreeMap<String, String>)>;

/// The files of one commit record: all it names, and those of them written now.
#[derive(Default)]
struct Placed {
    files: Vec<CommittedFile>,
    written: Vec<WrittenFile>,
}

/// One window's rows of a table, waiting to be written with the windows next to it
/// ([`ParquetStore::write_windows`]).
#[derive(Debug, Clone)]
pub struct WindowRows {
    /// The time that names the window's files (epoch ms): its start, or for tables named
    /// after the window's end, its end.
    pub window_ms: i64,
    /// The rows, in any order.
    pub batch: RecordBatch,
    /// Key-value metadata of the window's files.
    pub metadata: BTreeMap<String, String>,
}

/// Writes tables below one root: a local directory or a bucket prefix.
#[derive(Debug, Clone)]
pub struct ParquetStore {
    storage: Storage,
    row_group_rows: usize,
    zstd_level: i32,
    compact_closed_hours: bool,
    /// `store.retention_days`.
    retention_days: Option<u32>,
    /// Per table, the paths (relative to the table directory) that compactions replaced,
    /// read from the manifest on first use and kept up to date by [`ParquetStore::compact`]
    /// (shared by the clones that write from blocking tasks).
    replaced: Arc<Mutex<BTreeMap<String, BTreeSet<String>>>>,
    /// The files written lately, which compaction merges from memory instead of reading
    /// them back (kept only when `compact_closed_hours`; shared like `replaced`).
    recent: Arc<Mutex<RecentFiles>>,
}

impl ParquetStore {
    /// A store rooted at `config.path`: a local directory (created when missing) or a
    /// bucket URL, which is contacted once here so that a missing bucket, wrong
    /// credentials or an unreachable endpoint fail at start-up.
    pub fn open(config: &StoreConfig) -> Result<Self, StoreError> {
        let storage = open_storage(config)?;
        storage.check()?;
        Ok(Self::on(storage, config))
    }

    /// A store on `storage` (already opened) with the settings of `config`.
    pub fn on(storage: Storage, config: &StoreConfig) -> Self {
        Self {
            storage,
            row_group_rows: config.row_group_rows,
            zstd_level: config.zstd_level,
            compact_closed_hours: config.compact_closed_hours,
            retention_days: config.retention_days,
            replaced: Arc::default(),
            recent: Arc::new(Mutex::new(RecentFiles::with_limit(RECENT_BYTES_MAX))),
        }
    }

    /// `store.retention_days`: hours older than this are expired (see [`crate::retention`]).
    pub fn retention_days(&self) -> Option<u32> {
        self.retention_days
    }

    /// Where the store's objects are.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Whether closed hours are compacted as the job goes (`store.compact_closed_hours`).
    pub fn compacts_closed_hours(&self) -> bool {
        self.compact_closed_hours
    }

    /// Writes `batch` into `table`, one file per hour partition of its `ts` column, named
    /// after `file_stem` (deterministic per table and window), rows sorted by (user_id or
    /// item_id, ts); `metadata` goes into each file's key-value metadata. Then commits the
    /// files under the record `file_stem`, with `source_offsets`, so they become visible.
    ///
    /// A file whose path a compaction already replaced is not written again: a job
    /// restarted from a checkpoint reprocesses windows whose rows the merged file holds,
    /// and the copy would only be an invisible file that directory-scanning engines count
    /// twice. When every file of the window was replaced, no record is written either (the
    /// compaction deleted the record it had). Returns the files written.
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
        let replaced = self.replaced_paths(table)?;
        let mut placed = Placed::default();
        for (partition, part) in split_by_hour(table, &batch)? {
            let relative = format!("{partition}/{file_stem}.parquet");
            self.place(
                table,
                file_stem,
                relative,
                &part,
                metadata,
                &replaced,
                &mut placed,
            )?;
        }
        self.commit_written(table, file_stem, placed, source_offsets)
    }

    /// Writes the rows of consecutive windows of `table` (in window order) as one file per
    /// hour partition, then commits them under one record, with `source_offsets`. A
    /// single window is written exactly as [`ParquetStore::write`] writes it (stem
    /// `window-<ms>`). For several, an hour holding rows of one window gets that window's
    /// file, and an hour holding rows of several gets `compact-<first>-<last>`: the file,
    /// name and bytes alike, that [`ParquetStore::compact`] makes of their window files
    /// (the rows of the windows in order, stably sorted; their metadata merged). The
    /// record is `window-<first>-<last>` over the windows with rows.
    ///
    /// So a run that writes a few windows at a time ends, once an hour is compacted, with
    /// the files of a run that wrote one window at a time. Windows with no rows are
    /// skipped. Returns the files written.
    pub fn write_windows(
        &self,
        table: &str,
        windows: &[WindowRows],
        source_offsets: &BTreeMap<String, i64>,
    ) -> Result<Vec<WrittenFile>, StoreError> {
        let windows: Vec<&WindowRows> = windows.iter().filter(|w| w.batch.num_rows() > 0).collect();
        match windows.as_slice() {
            [] => return Ok(Vec::new()),
            [one] => {
                let stem = format!("{WINDOW_PREFIX}{}", one.window_ms);
                return self.write(table, &stem, &one.batch, &one.metadata, source_offsets);
            }
            _ => {}
        }
        let mut by_hour: BTreeMap<String, HourParts<'_>> = BTreeMap::new();
        for window in &windows {
            for (partition, part) in split_by_hour(table, &window.batch)? {
                by_hour.entry(partition).or_default().push((
                    window.window_ms,
                    part,
                    &window.metadata,
                ));
            }
        }
        let span = WindowSpan::covering(windows.iter().map(|w| WindowSpan::of(w.window_ms)));
        let id = format!("{WINDOW_PREFIX}{}", span.id_suffix());
        let replaced = self.replaced_paths(table)?;
        let mut placed = Placed::default();
        for (partition, parts) in by_hour {
            let (relative, batch, metadata) = match parts.as_slice() {
                [(ms, part, metadata)] => (
                    format!("{partition}/{WINDOW_PREFIX}{ms}.parquet"),
                    sort_for_readers(part)?,
                    (*metadata).clone(),
                ),
                _ => {
                    let hour_span = WindowSpan::covering(parts.iter().map(|p| WindowSpan::of(p.0)));
                    let mut metadata = BTreeMap::new();
                    for (_, _, from) in &parts {
                        merge_window_metadata(&mut metadata, (*from).clone());
                    }
                    let batches: Vec<RecordBatch> = parts.iter().map(|p| p.1.clone()).collect();
                    (
                        format!("{partition}/{}.parquet", hour_span.file_stem()),
                        merged_for_readers(&batches)?,
                        metadata,
                    )
                }
            };
            self.place(
                table,
                &id,
                relative,
                &batch,
                &metadata,
                &replaced,
                &mut placed,
            )?;
        }
        self.commit_written(table, &id, placed, source_offsets)
    }

    /// Writes `batch` as the file `relative` of `table` into `placed`, unless a compaction
    /// replaced that path already: its rows are in the merged file then, and the record
    /// `id` still names the path, as the record of a run never restarted does (sizes as
    /// it had them: the file is gone).
    #[allow(clippy::too_many_arguments)]
    fn place(
        &self,
        table: &str,
        id: &str,
        relative: String,
        batch: &RecordBatch,
        metadata: &BTreeMap<String, String>,
        replaced: &BTreeSet<String>,
        placed: &mut Placed,
    ) -> Result<(), StoreError> {
        if replaced.contains(&relative) {
            let bytes = self.committed_bytes(table, id, &relative)?;
            placed.files.push(CommittedFile {
                path: relative,
                rows: batch.num_rows() as u64,
                bytes,
            });
            return Ok(());
        }
        let file = self.write_one(table, &relative, batch, metadata)?;
        placed.files.push(committed(&file));
        placed.written.push(file);
        Ok(())
    }

    /// Commits the files `placed` of `table` under the record `id`, with
    /// `source_offsets`, when any of them was written now (none: the compaction that
    /// replaced them holds their rows, and its record stands). Returns those written.
    fn commit_written(
        &self,
        table: &str,
        id: &str,
        placed: Placed,
        source_offsets: &BTreeMap<String, i64>,
    ) -> Result<Vec<WrittenFile>, StoreError> {
        let Placed { files, written } = placed;
        if written.is_empty() {
            return Ok(written);
        }
        crate::failpoint::hit("store.files_renamed");
        manifest::write_commit(
            &self.storage,
            &Commit {
                format: manifest::COMMIT_FORMAT,
                table: table.to_string(),
                id: id.to_string(),
                files,
                replaces: Vec::new(),
                source_offsets: source_offsets.clone(),
            },
        )?;
        Ok(written)
    }

    /// The paths of `table` that compactions replaced (read from the manifest once).
    pub(crate) fn replaced_paths(&self, table: &str) -> Result<BTreeSet<String>, StoreError> {
        let mut cache = self
            .replaced
            .lock()
            .map_err(|_| StoreError::Internal("replaced-path cache poisoned".into()))?;
        if let Some(paths) = cache.get(table) {
            return Ok(paths.clone());
        }
        let paths: BTreeSet<String> = manifest::read_commits(&self.storage, table)?
            .into_iter()
            .flat_map(|c| c.replaces)
            .collect();
        cache.insert(table.to_string(), paths.clone());
        Ok(paths)
    }

    /// The size the record `id` of `table` gives for `relative` (0 when it has none).
    fn committed_bytes(&self, table: &str, id: &str, relative: &str) -> Result<u64, StoreError> {
        let key = manifest::commit_key(table, id);
        let Some(commit) = manifest::read_commit(&self.storage, &key)? else {
            return Ok(0);
        };
        Ok(commit
            .files
            .iter()
            .find(|f| f.path == relative)
            .map_or(0, |f| f.bytes))
    }

    /// Notes the paths a compaction of `table` replaced.
    pub(crate) fn note_replaced(&self, table: &str, paths: &[String]) -> Result<(), StoreError> {
        let mut cache = self
            .replaced
            .lock()
            .map_err(|_| StoreError::Internal("replaced-path cache poisoned".into()))?;
        if let Some(known) = cache.get_mut(table) {
            known.extend(paths.iter().cloned());
        }
        Ok(())
    }

    /// The metadata and rows of the data file `key`: from memory when this store wrote
    /// it lately, else read back.
    pub(crate) fn contents(&self, key: &str) -> Result<FileContents, StoreError> {
        let held = self
            .recent
            .lock()
            .ok()
            .and_then(|mut recent| recent.take(Path::new(key)));
        match held {
            Some(contents) => Ok(contents),
            None => crate::read::read_object(&self.storage, key),
        }
    }

    /// Writes one data file (not yet committed) at `relative` below the table directory.
    pub(crate) fn write_one(
        &self,
        table: &str,
        relative: &str,
        batch: &RecordBatch,
        metadata: &BTreeMap<String, String>,
    ) -> Result<WrittenFile, StoreError> {
        let key = format!("{table}/{relative}");
        let bytes = self.write_file(&key, batch, metadata)?;
        if self.compact_closed_hours
            && let Ok(mut recent) = self.recent.lock()
        {
            recent.remember(Path::new(&key), metadata, batch);
        }
        Ok(WrittenFile {
            path: self.storage.location(&key),
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
    /// The merged file is named after the windows it holds, `compact-<first>-<last>`
    /// (window stems, epoch ms), and its rows are the stable sort of its inputs taken in
    /// window order. So the same windows give the same file name and bytes however often,
    /// and in how many steps, the hour was merged: a job killed and restarted any number
    /// of times ends with the files of a job never killed.
    ///
    /// Crash safety: until the compaction record is renamed into place, readers see the
    /// old files; after it, the merged one. Deleting the replaced files comes last and is
    /// idempotent ([`ParquetStore::vacuum`] finishes it after a crash).
    pub fn compact(&self, table: &str, before_ms: Option<i64>) -> Result<Vec<Commit>, StoreError> {
        let commits = manifest::read_commits(&self.storage, table)?;
        let live = manifest::live_of(&self.storage, table, &commits);
        let mut by_hour: BTreeMap<&str, Vec<(WindowSpan, &manifest::LiveFile)>> = BTreeMap::new();
        for file in &live {
            let Some((partition, name)) = file.relative.rsplit_once('/') else {
                continue;
            };
            // Files the store did not name itself are left alone.
            if let Some(span) = WindowSpan::of_file_name(name) {
                by_hour.entry(partition).or_default().push((span, file));
            }
        }
        let mut made = Vec::new();
        for (partition, mut files) in by_hour {
            if files.len() < 2 {
                continue;
            }
            if let (Some(limit), Some(hour_end)) = (before_ms, partition_end_ms(partition))
                && hour_end > limit
            {
                continue;
            }
            // Window order, so that the stable sort breaks ties among equal keys the same
            // way whether the hour is merged in one step or in several.
            files.sort_by(|a, b| (a.0, &a.1.relative).cmp(&(b.0, &b.1.relative)));
            let span = WindowSpan::covering(files.iter().map(|(s, _)| *s));
            let mut batches = Vec::new();
            let mut metadata = BTreeMap::new();
            for (_, file) in &files {
                let (schema_meta, mut read) = self.contents(&file.key)?;
                batches.append(&mut read);
                merge_window_metadata(&mut metadata, schema_meta);
            }
            if batches.is_empty() {
                continue;
            }
            let merged = merged_for_readers(&batches)?;
            let relative = format!("{partition}/{}.parquet", span.file_stem());
            let written = self.write_one(table, &relative, &merged, &metadata)?;
            let commit = Commit {
                format: manifest::COMMIT_FORMAT,
                table: table.to_string(),
                id: format!("{}{}", compaction_prefix(partition), span.id_suffix()),
                files: vec![committed(&written)],
                replaces: files.iter().map(|(_, f)| f.relative.clone()).collect(),
                source_offsets: BTreeMap::new(),
            };
            crate::failpoint::hit("store.compaction_written");
            manifest::write_commit(&self.storage, &commit)?;
            self.note_replaced(table, &commit.replaces)?;
            self.remove_files(table, &commit.replaces)?;
            made.push(commit);
        }
        if !made.is_empty() {
            // A window record can name files in two hours (rows late for the earlier
            // one): it is left without a visible file only once both are merged, so
            // the test is against everything ever replaced, not these compactions alone.
            self.remove_emptied_records(table, &self.replaced_paths(table)?, &commits)?;
        }
        Ok(made)
    }

    /// Deletes the data files of `table` that no commit makes visible (written by a run
    /// that crashed before committing them, or replaced files a crash kept from being
    /// deleted), the window records whose files were all replaced, and leftover temporary
    /// files, so engines that scan the directories rather than read the manifest (pyarrow
    /// and DuckDB globs) see what `shopstream query` sees. Run at job start, before
    /// anything is written. Returns the data files deleted.
    pub fn vacuum(&self, table: &str) -> Result<usize, StoreError> {
        let commits = manifest::read_commits(&self.storage, table)?;
        let live: BTreeSet<String> = manifest::live_of(&self.storage, table, &commits)
            .into_iter()
            .map(|f| f.key)
            .collect();
        let replaced: BTreeSet<String> = commits.iter().flat_map(|c| c.replaces.clone()).collect();
        let mut removed = self.remove_files(table, &replaced)?;
        self.remove_emptied_records(table, &replaced, &commits)?;
        for listed in self.storage.list(&format!("{table}/"))? {
            let name = listed.key.rsplit('/').next().unwrap_or(&listed.key);
            if (name.ends_with(".parquet") && !live.contains(&listed.key)) || is_temporary(name) {
                removed += usize::from(self.storage.delete(&listed.key)?);
            }
        }
        // Commit records killed half-way through their write (local stores).
        for listed in self.storage.list(&manifest::commit_prefix(table))? {
            let name = listed.key.rsplit('/').next().unwrap_or(&listed.key);
            if is_temporary(name) {
                self.storage.delete(&listed.key)?;
            }
        }
        Ok(removed)
    }

    /// Deletes the data files `paths` (relative to the table directory) of `table`.
    /// Returns how many were still there.
    pub(crate) fn remove_files<'a>(
        &self,
        table: &str,
        paths: impl IntoIterator<Item = &'a String>,
    ) -> Result<usize, StoreError> {
        let mut removed = 0;
        for relative in paths {
            removed += usize::from(self.storage.delete(&format!("{table}/{relative}"))?);
        }
        Ok(removed)
    }

    /// Deletes, among `commits`, the window records left without a visible file: every
    /// file they name is in `replaced` (all the paths compactions of `table` replaced).
    pub(crate) fn remove_emptied_records(
        &self,
        table: &str,
        replaced: &BTreeSet<String>,
        commits: &[Commit],
    ) -> Result<(), StoreError> {
        for commit in commits {
            let all_replaced = commit.files.iter().all(|f| replaced.contains(&f.path));
            if commit.id.starts_with(WINDOW_PREFIX) && !commit.files.is_empty() && all_replaced {
                self.storage
                    .delete(&manifest::commit_key(table, &commit.id))?;
            }
        }
        Ok(())
    }

    /// The Parquet settings of every file the store writes, with `metadata` as the file's
    /// key-value metadata: `store.zstd_level`, `store.row_group_rows`, [`created_by`], and
    /// dictionaries for every column but [`UNIQUE_COLUMNS`].
    pub fn file_properties(&self, metadata: &BTreeMap<String, String>) -> WriterProperties {
        UNIQUE_COLUMNS
            .iter()
            .fold(WriterProperties::builder(), |builder, name| {
                builder.set_column_dictionary_enabled(ColumnPath::from(*name), false)
            })
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
            .set_created_by(created_by())
            .build()
    }

    /// Writes `batch` as the object `key` (whole or not at all); returns its size in
    /// bytes.
    fn write_file(
        &self,
        key: &str,
        batch: &RecordBatch,
        metadata: &BTreeMap<String, String>,
    ) -> Result<u64, StoreError> {
        let properties = self.file_properties(metadata);
        let parquet_err = |source| StoreError::Parquet {
            path: self.storage.location(key),
            source,
        };
        let mut writer = ArrowWriter::try_new(Vec::new(), batch.schema(), Some(properties))
            .map_err(parquet_err)?;
        writer.write(batch).map_err(parquet_err)?;
        let bytes = writer.into_inner().map_err(parquet_err)?;
        let size = bytes.len() as u64;
        self.storage
            .put(key, bytes.into(), Some("store.temp_written"))?;
        Ok(size)
    }
}

/// Opens where `config.path` points (see [`Storage::open`]), with `store.options` and
/// `store.retry_timeout_secs`; does not contact a bucket.
pub fn open_storage(config: &StoreConfig) -> Result<Storage, StoreError> {
    Storage::open(
        &config.path,
        &config.options,
        Duration::from_secs(config.retry_timeout_secs),
    )
}

/// The `created_by` of every file: `shopstream version X.Y.Z (build parquet-rs A.B.C)`.
///
/// parquet-java (Spark, Hive, Trino, Flink) parses it as `<app> version <semver> (build
/// <id>)` and ignores the min/max statistics of string columns in files whose writer it
/// cannot parse, which would defeat row-group pruning on `user_id`. The build part names
/// the Parquet writer rather than a commit hash: the bytes of a file must not change with
/// a commit that changes no output (a refactor proves itself by identical files).
pub fn created_by() -> String {
    let writer = parquet::file::properties::DEFAULT_CREATED_BY.replacen(" version", "", 1);
    format!(
        "shopstream version {} (build {writer})",
        env!("CARGO_PKG_VERSION")
    )
}

pub(crate) fn committed(file: &WrittenFile) -> CommittedFile {
    CommittedFile {
        path: file.relative.clone(),
        rows: file.rows as u64,
        bytes: file.bytes,
    }
}

/// A leftover of a local store's atomic write: `.NAME.<writer>.tmp`.
fn is_temporary(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".tmp")
}

/// Stem prefix of the files (and records) of one window.
const WINDOW_PREFIX: &str = "window-";
/// Stem prefix of merged files.
const COMPACT_PREFIX: &str = "compact-";

/// The windows a data file holds, by their stems' times (epoch ms): `window-<ms>` holds
/// one, `compact-<first>-<last>` those from `first` to `last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct WindowSpan {
    first: i64,
    last: i64,
}

impl WindowSpan {
    /// The span of a data file's name; `None` for names the store does not write.
    fn of_file_name(name: &str) -> Option<Self> {
        let stem = name.strip_suffix(".parquet")?;
        // A file rewritten without some users' rows holds the windows of the one it
        // replaced (`<stem>.r<hash>`, crate::forget).
        let stem = stem.split_once(".r").map_or(stem, |(stem, _)| stem);
        if let Some(ms) = stem.strip_prefix(WINDOW_PREFIX) {
            return Some(Self::of(ms.parse().ok()?));
        }
        let (first, last) = stem.strip_prefix(COMPACT_PREFIX)?.split_once('-')?;
        Some(Self {
            first: first.parse().ok()?,
            last: last.parse().ok()?,
        })
    }

    /// The span of one window.
    fn of(window_ms: i64) -> Self {
        Self {
            first: window_ms,
            last: window_ms,
        }
    }

    /// The span from the first to the last of `spans` (empty: 0-0).
    fn covering(spans: impl Iterator<Item = Self>) -> Self {
        spans
            .reduce(|a, b| Self {
                first: a.first.min(b.first),
                last: a.last.max(b.last),
            })
            .unwrap_or(Self { first: 0, last: 0 })
    }

    /// `<first>-<last>`, as merged files and their records are named.
    fn id_suffix(&self) -> String {
        format!("{}-{}", self.first, self.last)
    }

    /// Stem of the merged file of this span.
    fn file_stem(&self) -> String {
        format!("{COMPACT_PREFIX}{}", self.id_suffix())
    }
}

/// Record-name prefix of the compactions of one hour partition.
fn compaction_prefix(partition: &str) -> String {
    format!("compact-{}-", partition.replace('/', "-"))
}

/// Length of a store partition (`date=YYYY-MM-DD/hour=HH`): one hour, in ms.
pub const PARTITION_MS: i64 = 3_600_000;

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
pub(crate) fn partition_end_ms(partition: &str) -> Option<i64> {
    if partition.matches('/').count() != 1 {
        return None;
    }
    Some(partition_start_ms(partition)? + PARTITION_MS)
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

/// Columns written without a dictionary: a value in them is unique to its row (an event's
/// id, the dedupe key of the topic contract), so a dictionary only grows until the writer
/// falls back to plain values, having hashed each one (BENCHMARKS.md, "Store: event ids
/// without a dictionary").
pub const UNIQUE_COLUMNS: [&str; 1] = ["event_id"];

/// Sorts rows by (`user_id`, `ts`), or (`item_id`, `ts`) for tables keyed by item, so that
/// readers looking up one key touch few pages (row-group statistics prune the rest).
/// Tables with neither key keep their order. The sort is stable: rows with equal keys
/// keep their order, so merging files gives the same bytes whatever steps it took.
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
    let comparator = LexicographicalComparator::try_new(&columns)?;
    let rows = u32::try_from(batch.num_rows())
        .map_err(|_| StoreError::Internal(format!("{} rows in one batch", batch.num_rows())))?;
    let mut indices: Vec<u32> = (0..rows).collect();
    // `sort_by` is stable (arrow's lexsort is not).
    indices.sort_by(|a, b| comparator.compare(*a as usize, *b as usize));
    Ok(take_record_batch(batch, &UInt32Array::from(indices))?)
}

/// The rows of `batches` (not empty) in one batch, sorted like any file
/// ([`sort_for_readers`]): the rows of merged files, taken in window order.
fn merged_for_readers(batches: &[RecordBatch]) -> Result<RecordBatch, StoreError> {
    let merged = arrow::compute::concat_batches(&batches[0].schema(), batches)?;
    sort_for_readers(&merged)
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
pub(crate) mod tests {
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

    /// The footer of the Parquet file at `path`.
    fn parquet_metadata(path: &Path) -> parquet::file::metadata::ParquetMetaData {
        use parquet::file::reader::FileReader;
        let file = std::fs::File::open(path).expect("open file");
        let reader =
            parquet::file::reader::SerializedFileReader::new(file).expect("a Parquet file");
        reader.metadata().clone()
    }

    #[test]
    fn event_ids_are_written_without_a_dictionary_and_other_columns_with_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_store(dir.path());
        let rows = 1_000;
        let schema = Schema::new(vec![
            Field::new("event_id", DataType::Utf8, false),
            Field::new("user_id", DataType::Utf8, false),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
        ]);
        let b = RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(StringArray::from_iter_values(
                    (0..rows).map(|i| format!("e{i}")),
                )),
                Arc::new(StringArray::from_iter_values(
                    (0..rows).map(|i| format!("u{}", i % 7)),
                )),
                Arc::new(
                    TimestampMicrosecondArray::from_iter_values(
                        (0..rows).map(|i| 1_767_571_200_000_000 + i),
                    )
                    .with_timezone("UTC"),
                ),
            ],
        )
        .expect("batch");
        let files = store
            .write("t", "w1", &b, &BTreeMap::new(), &BTreeMap::new())
            .expect("write");
        let [file] = files.as_slice() else {
            panic!("one hour, one file: {files:?}");
        };
        let metadata = parquet_metadata(&file.path);
        let group = metadata.row_group(0);
        let dictionary = |name: &str| {
            let column = group
                .columns()
                .iter()
                .find(|c| c.column_path().string() == name)
                .expect("the column");
            column.dictionary_page_offset().is_some()
        };
        assert!(!dictionary("event_id"), "event ids are unique");
        assert!(dictionary("user_id"), "a repeated key keeps its dictionary");
    }

    /// Guards row-group pruning in parquet-java engines: they parse `created_by` with this
    /// pattern (`org.apache.parquet.VersionParser`, a full match) and distrust string
    /// statistics when it does not match or the version is not semver.
    #[test]
    fn created_by_parses_with_parquet_javas_version_pattern() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ParquetStore::open(&StoreConfig {
            path: dir.path().to_path_buf(),
            ..StoreConfig::default()
        })
        .expect("open");
        let files = store
            .write(
                "t",
                "w1",
                &batch(&[1_767_574_800_000]),
                &BTreeMap::new(),
                &BTreeMap::new(),
            )
            .expect("write");
        let created_by = parquet_metadata(&files[0].path)
            .file_metadata()
            .created_by()
            .expect("created_by set")
            .to_string();
        let java = regex::Regex::new(
            r"^(.*?)\s+version\s*(?:([^(]*?)\s*(?:\(\s*build\s*([^)]*?)\s*\))?)?$",
        )
        .expect("pattern");
        let parts = java.captures(&created_by).expect("parquet-java parses it");
        assert_eq!(&parts[1], "shopstream", "{created_by}");
        let version = parts.get(2).map_or("", |m| m.as_str());
        assert_eq!(version, env!("CARGO_PKG_VERSION"), "{created_by}");
        // parquet-java's SemanticVersion: MAJOR.MINOR.PATCH, digits.
        let numbers: Vec<&str> = version.split('.').collect();
        assert_eq!(numbers.len(), 3, "{version}");
        assert!(
            numbers.iter().all(|n| n.parse::<u32>().is_ok()),
            "{version}"
        );
        let build = parts.get(3).map_or("", |m| m.as_str());
        assert!(build.starts_with("parquet-rs "), "{created_by}");
    }

    /// Rows (user_id, ts ms, id) as a batch.
    pub(crate) fn keyed(rows: &[(&str, i64, &str)]) -> RecordBatch {
        let schema = Schema::new(vec![
            Field::new("user_id", DataType::Utf8, false),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
            Field::new("id", DataType::Utf8, false),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(
                    TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.1 * 1000))
                        .with_timezone("UTC"),
                ),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.2))),
            ],
        )
        .expect("batch")
    }

    fn open_store(root: &Path) -> ParquetStore {
        ParquetStore::open(&StoreConfig {
            path: root.to_path_buf(),
            ..StoreConfig::default()
        })
        .expect("open")
    }

    /// A store at `root` that does not compact as it goes (retention and erasure tests
    /// compact, or not, themselves).
    pub(crate) fn uncompacted_store(root: &Path) -> ParquetStore {
        ParquetStore::open(&StoreConfig {
            path: root.to_path_buf(),
            compact_closed_hours: false,
            ..StoreConfig::default()
        })
        .expect("open")
    }

    /// Every file below `root` (relative path, bytes), manifest included.
    pub(crate) fn tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).expect("dir").flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    let relative = path.strip_prefix(root).expect("under root");
                    out.insert(
                        relative.display().to_string(),
                        std::fs::read(&path).expect("read"),
                    );
                }
            }
        }
        out
    }

    /// 2026-01-05T00:00:00Z, the start of the test stores' first hour.
    pub(crate) const H0: i64 = 1_767_571_200_000;

    /// Four windows of one hour; users u1 and u2 have rows with equal (user_id, ts) in
    /// different windows, so the order of ties shows in the merged bytes.
    fn four_windows() -> Vec<(String, RecordBatch)> {
        (0..4)
            .map(|w| {
                let id = |n: i64| format!("w{w}-{n}");
                let (a, b, c) = (id(0), id(1), id(2));
                let batch = keyed(&[
                    ("u2", H0 + 5_000, &a),
                    ("u1", H0 + 1_000, &b),
                    ("u1", H0 + 60_000 * w, &c),
                ]);
                (format!("window-{}", H0 + 60_000 * w), batch)
            })
            .collect()
    }

    /// A store in a new directory with [`four_windows`] written (not compacted).
    fn store_of_four_windows() -> (tempfile::TempDir, ParquetStore, Vec<(String, RecordBatch)>) {
        let dir = tempfile::tempdir().expect("dir");
        let store = open_store(dir.path());
        let windows = four_windows();
        for (stem, batch) in &windows {
            store
                .write("t", stem, batch, &BTreeMap::new(), &BTreeMap::new())
                .expect("write");
        }
        (dir, store, windows)
    }

    /// The windows of [`four_windows`] with their metadata, plus a fifth window whose
    /// rows fall into the next hour too (rows late for the first).
    fn five_window_rows() -> Vec<WindowRows> {
        let mut rows: Vec<WindowRows> = four_windows()
            .into_iter()
            .map(|(stem, batch)| {
                let ms: i64 = stem["window-".len()..].parse().expect("ms");
                WindowRows {
                    window_ms: ms,
                    batch,
                    metadata: BTreeMap::from([
                        ("shopstream.window_start_ms".to_string(), ms.to_string()),
                        (
                            "shopstream.window_end_ms".to_string(),
                            (ms + 60_000).to_string(),
                        ),
                        ("shopstream.schema".to_string(), "1".to_string()),
                    ]),
                }
            })
            .collect();
        let ms = H0 + 3_600_000;
        rows.push(WindowRows {
            window_ms: ms,
            batch: keyed(&[("u3", ms + 1, "w4-0"), ("u1", H0 + 2_000, "w4-late")]),
            metadata: BTreeMap::from([("shopstream.window_start_ms".to_string(), ms.to_string())]),
        });
        rows
    }

    /// Guards the store's file spans: windows written a few at a time end, once their
    /// hours are compacted, with the files (names and bytes) of windows written one at a
    /// time, however the windows were grouped.
    #[test]
    fn windows_written_together_compact_to_the_files_of_windows_written_one_by_one() {
        let data = |root: &Path| -> BTreeMap<String, Vec<u8>> {
            tree(root)
                .into_iter()
                .filter(|(name, _)| name.starts_with("t/"))
                .collect()
        };
        let windows = five_window_rows();
        let none = BTreeMap::new();
        let one_by_one = tempfile::tempdir().expect("dir");
        let store = open_store(one_by_one.path());
        for window in &windows {
            let stem = format!("window-{}", window.window_ms);
            store
                .write("t", &stem, &window.batch, &window.metadata, &none)
                .expect("write");
        }
        store.compact("t", None).expect("compact");
        let expected = data(one_by_one.path());
        for groups in [vec![5], vec![2, 3], vec![1, 3, 1], vec![4, 1]] {
            let dir = tempfile::tempdir().expect("dir");
            let store = open_store(dir.path());
            let mut at = 0;
            for n in &groups {
                let written = store
                    .write_windows("t", &windows[at..at + n], &none)
                    .expect("write windows");
                assert!(!written.is_empty(), "{groups:?}");
                at += n;
            }
            store.compact("t", None).expect("compact");
            let got = data(dir.path());
            assert_eq!(
                got.keys().collect::<Vec<_>>(),
                expected.keys().collect::<Vec<_>>(),
                "groups {groups:?}: same file names"
            );
            assert!(got == expected, "groups {groups:?}: same bytes");
        }
        // Written at once, an hour with rows of one window keeps that window's name, one
        // with several gets the merged file's, and one record names them.
        let dir = tempfile::tempdir().expect("dir");
        let store = open_store(dir.path());
        let written = store.write_windows("t", &windows, &none).expect("write");
        let names: Vec<&str> = written.iter().map(|f| f.relative.as_str()).collect();
        assert_eq!(
            names,
            [
                "date=2026-01-05/hour=00/compact-1767571200000-1767574800000.parquet",
                "date=2026-01-05/hour=01/window-1767574800000.parquet"
            ]
        );
        let commits = manifest::read_commits(&Storage::local(dir.path()), "t").expect("records");
        let ids: Vec<&str> = commits.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["window-1767571200000-1767574800000"]);
    }

    /// Guards issue 13 (2): the merged file's name and bytes depend on the windows it
    /// holds, not on how many compactions it took (a restarted job may merge an hour in
    /// more steps than a job never stopped).
    #[test]
    fn an_hour_merged_in_two_steps_gives_the_file_merged_in_one() {
        let (one, two) = (
            tempfile::tempdir().expect("dir"),
            tempfile::tempdir().expect("dir"),
        );
        let (once, twice) = (open_store(one.path()), open_store(two.path()));
        let (none, no_offsets) = (BTreeMap::new(), BTreeMap::new());
        for (n, (stem, batch)) in four_windows().iter().enumerate() {
            once.write("t", stem, batch, &none, &no_offsets)
                .expect("write");
            twice
                .write("t", stem, batch, &none, &no_offsets)
                .expect("write");
            if n == 1 {
                assert_eq!(twice.compact("t", None).expect("first step").len(), 1);
            }
        }
        once.compact("t", None).expect("compact");
        twice.compact("t", None).expect("second step");
        let data = |root: &Path| -> BTreeMap<String, Vec<u8>> {
            tree(root)
                .into_iter()
                .filter(|(name, _)| name.starts_with("t/"))
                .collect()
        };
        let merged = data(one.path());
        let names: Vec<&String> = merged.keys().collect();
        assert_eq!(
            names,
            vec!["t/date=2026-01-05/hour=00/compact-1767571200000-1767571380000.parquet"]
        );
        assert!(merged == data(two.path()), "same windows, same bytes");
        let (_, batches) = crate::read::read_file(&one.path().join(names[0])).expect("read");
        let ids: Vec<String> = batches
            .iter()
            .flat_map(|b| {
                let ids = b
                    .column_by_name("id")
                    .expect("id")
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .expect("strings")
                    .clone();
                (0..ids.len()).map(move |i| ids.value(i).to_string())
            })
            .collect();
        // Ties (u1 at +1 s in every window) in window order.
        assert_eq!(&ids[..5], ["w0-2", "w0-1", "w1-1", "w2-1", "w3-1"]);
    }

    /// Guards issue 13 (2): a restarted job reprocessing windows an hour's compaction
    /// merged leaves no copy of them on disk and no record of them in the manifest.
    #[test]
    fn a_window_rewritten_after_its_compaction_leaves_nothing_behind() {
        let (dir, store, windows) = store_of_four_windows();
        let (none, no_offsets) = (BTreeMap::new(), BTreeMap::new());
        store.compact("t", None).expect("compact");
        let before = tree(dir.path());
        // A restart (a new store handle) reprocesses two windows.
        let restarted = open_store(dir.path());
        for (stem, batch) in &windows[2..] {
            let written = restarted
                .write("t", stem, batch, &none, &no_offsets)
                .expect("write");
            assert!(written.is_empty(), "{stem} written again");
        }
        assert!(tree(dir.path()) == before, "files or records changed");
    }

    /// Guards issue 13 (2, found by the kill soak on the drift table): a window whose
    /// rows fall in two hours has its record removed once both hours are merged, by the
    /// running job as by the vacuum of the next start, so a job never stopped and one
    /// restarted end with the same manifest.
    #[test]
    fn a_window_record_spanning_two_hours_goes_when_the_second_hour_is_merged() {
        let dir = tempfile::tempdir().expect("dir");
        let store = open_store(dir.path());
        let (none, no_offsets) = (BTreeMap::new(), BTreeMap::new());
        let h1 = H0 + 3_600_000;
        // The middle window has a late row for hour 00.
        let (a, b, c) = (H0 + 60_000, h1 - 60_000, h1 + 60_000);
        let windows = [
            (a, keyed(&[("u1", a, "a0")])),
            (b, keyed(&[("u1", a + 1, "b0"), ("u1", h1 + 1_000, "b1")])),
            (c, keyed(&[("u1", c, "c0")])),
        ];
        for (start, batch) in &windows {
            let stem = format!("window-{start}");
            store
                .write("t", &stem, batch, &none, &no_offsets)
                .expect("write");
        }
        let spanning = manifest::commit_dir(dir.path(), "t").join(format!("window-{b}.json"));
        store.compact("t", Some(h1)).expect("first hour");
        assert!(spanning.exists(), "hour 01 still reads it");
        store.compact("t", None).expect("second hour");
        assert!(!spanning.exists(), "record left behind");
        let compacted = tree(dir.path());
        assert_eq!(open_store(dir.path()).vacuum("t").expect("vacuum"), 0);
        assert!(
            tree(dir.path()) == compacted,
            "a restart's vacuum changed the store"
        );
    }

    /// Guards issue 13 (2): after a crash between a compaction's record and the deletion
    /// of what it replaced, the next start deletes the replaced files and their window
    /// records, and temporary leftovers.
    #[test]
    fn vacuum_finishes_a_compaction_a_crash_interrupted() {
        let (dir, store, _) = store_of_four_windows();
        let before_compaction = tree(dir.path());
        store.compact("t", None).expect("compact");
        let compacted = tree(dir.path());
        // Put back what the compaction deleted, as if it had been killed right after
        // its record, and leave temporary files of a data file and a record.
        for (name, bytes) in &before_compaction {
            let path = dir.path().join(name);
            if !path.exists() {
                std::fs::write(&path, bytes).expect("restore");
            }
        }
        let hour = dir.path().join("t/date=2026-01-05/hour=00");
        std::fs::write(hour.join(".window-9.parquet.tmp"), b"partial").expect("tmp");
        let records = manifest::commit_dir(dir.path(), "t");
        std::fs::write(records.join(".window-9.json.tmp"), b"{").expect("tmp");
        assert_eq!(open_store(dir.path()).vacuum("t").expect("vacuum"), 5);
        assert!(tree(dir.path()) == compacted, "vacuum left something");
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
