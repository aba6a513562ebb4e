//! Streaming import of an external log through a [`Mapping`]: the [`Importer`] reads a
//! CSV or JSON-lines file and yields contract messages in publishing order while it reads,
//! so memory does not grow with the log.
//!
//! What a mapping may make it hold (docs/mappings.md):
//! - `source.sorted = false`: a first pass sorts the rows by (time, line) in runs on disk
//!   ([`sort`]), then merges them;
//! - `snapshots = "before_first_row"`: a first pass collects every item's earliest
//!   category and price (one entry per item);
//! - `snapshots = "on_change"`: the last category and price of each item.
//!
//! Rows that cannot be read are never published; each is reported with its line and why
//! (the first [`MAX_REJECTED_SHOWN`] are kept with their reason, all are counted).

mod sort;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use compact_str::format_compact;
use serde::Serialize;

use crate::event::Millis;
use crate::generator::GeneratedMessage;
use crate::mapping::spec::{Format, SnapshotMode};
use crate::mapping::{Emitter, Mapping, Row, header_index, snapshot};
use sort::{RunWriter, Sorted, Staged};

/// Where a reference log of `../shared/data` (beside the repository; see its README) is,
/// for tests and benchmarks; the error says where it looked and what to do.
pub fn reference_log(name: &str) -> Result<PathBuf, String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data")
        .join(name);
    if path.exists() {
        Ok(path)
    } else {
        Err(format!(
            "{} is missing: the reference data lives beside the repository in ../shared/data \
             (see its README); check out the project next to it",
            path.display()
        ))
    }
}

/// Rejected rows kept with their reason in the report (all are counted).
pub const MAX_REJECTED_SHOWN: usize = 1000;

/// What went wrong reading the input.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The file (or a temporary sort run) could not be read or written.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Sorting the rows on disk failed (full disk, unwritable temporary directory).
    #[error(
        "cannot sort {path} in runs on disk under {tmp}: {source}; set TMPDIR to a directory \
         with room (about the size of the log), or sort the log and set source.sorted = true"
    )]
    Sort {
        /// The file being sorted.
        path: PathBuf,
        /// The temporary directory.
        tmp: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The CSV header lacks columns the mapping reads.
    #[error(
        "{path}: the header has no column {missing}; the header is {header:?} (fix the mapping's \
         paths or the file)"
    )]
    Header {
        /// The file.
        path: PathBuf,
        /// The missing columns, with the fields that read them.
        missing: String,
        /// The header found.
        header: Vec<String>,
    },
}

/// What an import read and produced.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ImportReport {
    /// Data rows read (not counting blank lines and the header).
    pub rows: u64,
    /// Rows per value of the mapping's `kind` field.
    pub per_behavior: BTreeMap<String, u64>,
    /// Rows that could not be read.
    pub rejected_rows: u64,
    /// The first rejected rows: (line number, reason).
    pub rejected: Vec<(u64, String)>,
    /// Distinct items, when the mapping keeps item state (`inventory.snapshots`), else 0.
    pub items: u64,
    /// Messages produced per topic.
    pub messages_per_topic: BTreeMap<String, u64>,
    /// Earliest row time, epoch ms.
    pub first_ts: Millis,
    /// Latest row time.
    pub last_ts: Millis,
}

impl ImportReport {
    fn reject(&mut self, line: u64, reason: String) {
        self.rejected_rows += 1;
        if self.rejected.len() < MAX_REJECTED_SHOWN {
            self.rejected.push((line, reason));
        }
    }

    fn accept(&mut self, row: &Row) {
        if self.per_behavior.is_empty() {
            (self.first_ts, self.last_ts) = (row.ts, row.ts);
        }
        match self.per_behavior.get_mut(&row.kind) {
            Some(n) => *n += 1,
            None => {
                self.per_behavior.insert(row.kind.clone(), 1);
            }
        }
        self.first_ts = self.first_ts.min(row.ts);
        self.last_ts = self.last_ts.max(row.ts);
    }
}

/// How far an import is, for progress displays.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// `scanning` (a first pass: sorting or collecting items) or `publishing`.
    pub phase: &'static str,
    /// Rows read in this phase.
    pub rows: u64,
    /// Bytes of the file read in this phase (the merge of sorted runs reports rows only).
    pub bytes: u64,
    /// The file's size.
    pub total_bytes: u64,
    /// Rows to publish, when a first pass counted them.
    pub total_rows: Option<u64>,
}

/// Called every [`PROGRESS_EVERY_ROWS`] rows and at the end of each phase.
pub type ProgressFn<'a> = Box<dyn FnMut(Progress) + 'a>;

/// Rows between two progress callbacks.
pub const PROGRESS_EVERY_ROWS: u64 = 16_384;

struct Counting<R> {
    inner: R,
    bytes: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Numbered, non-blank lines of the file after the header.
struct Lines {
    reader: BufReader<Counting<File>>,
    line: u64,
    buf: String,
}

impl Lines {
    fn open(path: &Path) -> std::io::Result<Self> {
        Ok(Self {
            reader: BufReader::with_capacity(
                1 << 16,
                Counting {
                    inner: File::open(path)?,
                    bytes: 0,
                },
            ),
            line: 0,
            buf: String::new(),
        })
    }

    /// The next line with its 1-based number, blank lines skipped.
    fn next_line(&mut self) -> std::io::Result<Option<(u64, &str)>> {
        loop {
            self.buf.clear();
            if self.reader.read_line(&mut self.buf)? == 0 {
                return Ok(None);
            }
            self.line += 1;
            if !self.buf.trim().is_empty() {
                let text = self.buf.trim_end_matches(['\n', '\r']);
                return Ok(Some((self.line, text)));
            }
        }
    }

    fn bytes(&self) -> u64 {
        self.reader.get_ref().bytes
    }
}

/// Where the publishing pass takes its rows from.
enum RowSource {
    File(Lines),
    Sorted(Sorted),
}

/// Reads a log through a mapping and yields its messages in publishing order.
///
/// Iterate it (by `&mut`), then call [`Importer::finish`] for the report or the first
/// read error (iteration stops at an error).
pub struct Importer<'m> {
    mapping: &'m Mapping,
    path: PathBuf,
    columns: HashMap<String, usize>,
    source: Option<RowSource>,
    /// Rows were validated and counted by a first pass.
    scanned: bool,
    emitter: Emitter<'m>,
    pending: VecDeque<GeneratedMessage>,
    scratch: Vec<GeneratedMessage>,
    report: ImportReport,
    error: Option<ImportError>,
    progress: Option<ProgressFn<'m>>,
    total_bytes: u64,
    rows_published: u64,
}

impl<'m> Importer<'m> {
    /// Opens `path`, reads the header and runs the first pass when the mapping needs one.
    pub fn open(
        mapping: &'m Mapping,
        path: &Path,
        mut progress: Option<ProgressFn<'m>>,
    ) -> Result<Self, ImportError> {
        let io = |source| ImportError::Io {
            path: path.to_path_buf(),
            source,
        };
        let total_bytes = std::fs::metadata(path).map_err(io)?.len();
        let mut lines = Lines::open(path).map_err(io)?;
        let columns = read_columns(mapping, path, &mut lines)?;
        let spec = &mapping.spec;
        let first_pass =
            !spec.source.sorted || spec.inventory.snapshots == SnapshotMode::BeforeFirstRow;
        let mut report = ImportReport::default();
        let mut pending = VecDeque::new();
        let source = if first_pass {
            let mut runs = (!spec.source.sorted).then(|| RunWriter::new(spec.source.sort_run_rows));
            let mut items: BTreeMap<String, ItemFirst> = BTreeMap::new();
            let tracks_items = spec.inventory.snapshots == SnapshotMode::BeforeFirstRow;
            let mut rows = 0u64;
            while let Some((line, text)) = lines.next_line().map_err(io)? {
                rows += 1;
                report.rows += 1;
                match parse(mapping, &columns, line, text) {
                    Err(reason) => report.reject(line, reason),
                    Ok(row) => {
                        report.accept(&row);
                        if tracks_items && let Some(item) = &row.item_id {
                            let first = || ItemFirst {
                                ts: row.ts,
                                line,
                                category: row.category.clone(),
                                price: row.price,
                            };
                            match items.get_mut(item) {
                                Some(f) if (row.ts, line) < (f.ts, f.line) => *f = first(),
                                Some(_) => {}
                                None => {
                                    items.insert(item.clone(), first());
                                }
                            }
                        }
                        if let Some(runs) = &mut runs {
                            let text = text.to_string();
                            runs.push(Staged {
                                ts: row.ts,
                                line,
                                text,
                            })
                            .map_err(|e| sort_error(path, e))?;
                        }
                    }
                }
                if rows.is_multiple_of(PROGRESS_EVERY_ROWS) {
                    scanned(&mut progress, rows, lines.bytes(), total_bytes);
                }
            }
            scanned(&mut progress, rows, lines.bytes(), total_bytes);
            report.items = items.len() as u64;
            for (n, (item, first)) in items.into_iter().enumerate() {
                pending.push_back(snapshot(
                    format_compact!("{}v{n}", spec.source.id_prefix),
                    report.first_ts - 1_000,
                    &item,
                    &(first.category, first.price),
                ));
            }
            match runs {
                Some(runs) => RowSource::Sorted(runs.finish().map_err(|e| sort_error(path, e))?),
                None => {
                    let mut again = Lines::open(path).map_err(io)?;
                    read_columns(mapping, path, &mut again)?;
                    RowSource::File(again)
                }
            }
        } else {
            RowSource::File(lines)
        };
        Ok(Self {
            mapping,
            path: path.to_path_buf(),
            columns,
            source: Some(source),
            scanned: first_pass,
            emitter: Emitter::new(mapping),
            pending,
            scratch: Vec::new(),
            report,
            error: None,
            progress,
            total_bytes,
            rows_published: 0,
        })
    }

    /// The report, or the error that stopped the import.
    pub fn finish(mut self) -> Result<ImportReport, ImportError> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        // Whatever was not iterated is still counted.
        while self.next().is_some() {}
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        if self.mapping.spec.inventory.snapshots == SnapshotMode::OnChange {
            self.report.items = self.emitter.items_seen();
        }
        Ok(self.report)
    }

    /// The next row to publish, or `None` at the end (or after an error).
    fn next_row(&mut self) -> Option<Row> {
        loop {
            // Parsed where the source holds the text: no copy of the line.
            let next = match self.source.as_mut()? {
                RowSource::File(lines) => match lines.next_line() {
                    Ok(Some((line, text))) => {
                        let parsed = parse(self.mapping, &self.columns, line, text);
                        Some((line, parsed, lines.bytes()))
                    }
                    Ok(None) => None,
                    Err(e) => {
                        self.fail(e);
                        return None;
                    }
                },
                RowSource::Sorted(sorted) => match sorted.next_row() {
                    Ok(Some(s)) => Some((
                        s.line,
                        parse(self.mapping, &self.columns, s.line, &s.text),
                        0,
                    )),
                    Ok(None) => None,
                    Err(e) => {
                        self.error = Some(sort_error(&self.path, e));
                        self.source = None;
                        return None;
                    }
                },
            };
            let Some((line, parsed, bytes)) = next else {
                self.report_progress(0, true);
                self.source = None;
                return None;
            };
            self.rows_published += 1;
            self.report_progress(bytes, false);
            if self.scanned {
                // Counted and rejected in the first pass already.
                if let Ok(row) = parsed {
                    return Some(row);
                }
                continue;
            }
            self.report.rows += 1;
            match parsed {
                Ok(row) => {
                    self.report.accept(&row);
                    return Some(row);
                }
                Err(reason) => self.report.reject(line, reason),
            }
        }
    }

    fn report_progress(&mut self, bytes: u64, end: bool) {
        if !end && !self.rows_published.is_multiple_of(PROGRESS_EVERY_ROWS) {
            return;
        }
        let bytes = if end && !self.scanned {
            self.total_bytes
        } else {
            bytes
        };
        if let Some(p) = &mut self.progress {
            p(Progress {
                phase: "publishing",
                rows: self.rows_published,
                bytes,
                total_bytes: self.total_bytes,
                total_rows: self.scanned.then_some(self.report.rows),
            });
        }
    }

    fn fail(&mut self, e: std::io::Error) {
        self.error = Some(ImportError::Io {
            path: self.path.clone(),
            source: e,
        });
        self.source = None;
    }
}

impl Iterator for Importer<'_> {
    type Item = GeneratedMessage;

    fn next(&mut self) -> Option<GeneratedMessage> {
        loop {
            if let Some(m) = self.pending.pop_front() {
                *self
                    .report
                    .messages_per_topic
                    .entry(m.topic.as_str().to_string())
                    .or_default() += 1;
                return Some(m);
            }
            let row = self.next_row()?;
            self.emitter.emit(&row, &mut self.scratch);
            self.pending.extend(self.scratch.drain(..));
        }
    }
}

/// Reports the first pass's progress.
fn scanned(progress: &mut Option<ProgressFn<'_>>, rows: u64, bytes: u64, total_bytes: u64) {
    if let Some(p) = progress {
        p(Progress {
            phase: "scanning",
            rows,
            bytes,
            total_bytes,
            total_rows: None,
        });
    }
}

#[derive(Debug)]
struct ItemFirst {
    ts: Millis,
    line: u64,
    category: Option<String>,
    price: Option<f64>,
}

fn sort_error(path: &Path, e: std::io::Error) -> ImportError {
    ImportError::Sort {
        path: path.to_path_buf(),
        tmp: std::env::temp_dir(),
        source: e,
    }
}

fn parse(
    mapping: &Mapping,
    columns: &HashMap<String, usize>,
    line: u64,
    text: &str,
) -> Result<Row, String> {
    let record = mapping.record(text, columns).map_err(|e| e.message)?;
    mapping.row(line, &record).map_err(|e| e.message)
}

/// The CSV column index: from the mapping's `columns`, or the header line (checked against
/// the columns the mapping reads).
fn read_columns(
    mapping: &Mapping,
    path: &Path,
    lines: &mut Lines,
) -> Result<HashMap<String, usize>, ImportError> {
    let source = &mapping.spec.source;
    if source.format == Format::Jsonl {
        return Ok(HashMap::new());
    }
    if !source.header {
        return Ok(header_index(&source.columns));
    }
    let io = |source| ImportError::Io {
        path: path.to_path_buf(),
        source,
    };
    let header: Vec<String> = match lines.next_line().map_err(io)? {
        Some((_, text)) => crate::mapping::split_csv(text, source.delimiter)
            .map_err(|e| io(std::io::Error::other(format!("the header: {e}"))))?
            .into_iter()
            .map(|c| c.trim_start_matches('\u{feff}').to_string())
            .collect(),
        None => Vec::new(),
    };
    let missing: Vec<String> = mapping
        .paths()
        .into_iter()
        .filter(|(_, p)| !header.iter().any(|h| h == p))
        .map(|(field, p)| format!("`{p}` (fields.{field})"))
        .collect();
    if !missing.is_empty() {
        return Err(ImportError::Header {
            path: path.to_path_buf(),
            missing: missing.join(", "),
            header,
        });
    }
    Ok(header_index(&header))
}

#[cfg(test)]
mod tests;
