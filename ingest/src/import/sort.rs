//! Sorting an unsorted log by (time, line) in bounded memory: rows are kept as their raw
//! text in runs of at most `run_rows`; each full run is sorted and written to a temporary
//! file; the runs are then merged. A log that fits in one run never touches the disk.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};

use crate::event::Millis;

/// One row waiting to be sorted: its time, line number and raw text.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Staged {
    pub ts: Millis,
    pub line: u64,
    pub text: String,
}

/// Collects rows, spilling sorted runs to temporary files.
pub(crate) struct RunWriter {
    run_rows: usize,
    current: Vec<Staged>,
    dir: Option<tempfile::TempDir>,
    runs: Vec<std::path::PathBuf>,
}

impl RunWriter {
    pub fn new(run_rows: usize) -> Self {
        Self {
            run_rows: run_rows.max(1),
            current: Vec::new(),
            dir: None,
            runs: Vec::new(),
        }
    }

    pub fn push(&mut self, row: Staged) -> std::io::Result<()> {
        self.current.push(row);
        if self.current.len() >= self.run_rows {
            self.spill()?;
        }
        Ok(())
    }

    fn spill(&mut self) -> std::io::Result<()> {
        self.current.sort_unstable();
        let dir = match &self.dir {
            Some(d) => d,
            None => self.dir.insert(
                tempfile::Builder::new()
                    .prefix("shopstream-import-")
                    .tempdir()?,
            ),
        };
        let path = dir.path().join(format!("run-{:05}", self.runs.len()));
        let mut out = BufWriter::new(File::create(&path)?);
        for row in self.current.drain(..) {
            writeln!(out, "{}\t{}\t{}", row.ts, row.line, row.text)?;
        }
        // No fsync: the runs live as long as this import, which a crash ends anyway.
        out.flush()?;
        self.runs.push(path);
        Ok(())
    }

    /// The rows in (time, line) order.
    pub fn finish(mut self) -> std::io::Result<Sorted> {
        if self.runs.is_empty() {
            self.current.sort_unstable();
            return Ok(Sorted::Memory(self.current.into_iter()));
        }
        if !self.current.is_empty() {
            self.spill()?;
        }
        let mut readers = Vec::new();
        for path in &self.runs {
            readers.push(BufReader::new(File::open(path)?).lines());
        }
        let mut merge = Merge {
            _dir: self.dir,
            readers,
            heads: BinaryHeap::new(),
        };
        for run in 0..merge.readers.len() {
            merge.advance(run)?;
        }
        Ok(Sorted::Merge(merge))
    }
}

/// Sorted rows, from memory or merged from runs on disk.
pub(crate) enum Sorted {
    Memory(std::vec::IntoIter<Staged>),
    Merge(Merge),
}

impl Sorted {
    pub fn next_row(&mut self) -> std::io::Result<Option<Staged>> {
        match self {
            Sorted::Memory(rows) => Ok(rows.next()),
            Sorted::Merge(m) => m.next_row(),
        }
    }
}

/// A k-way merge of sorted run files (which it deletes when dropped).
pub(crate) struct Merge {
    _dir: Option<tempfile::TempDir>,
    readers: Vec<std::io::Lines<BufReader<File>>>,
    heads: BinaryHeap<Reverse<(Staged, usize)>>,
}

impl Merge {
    fn advance(&mut self, run: usize) -> std::io::Result<()> {
        let Some(mut text) = self.readers[run].next().transpose()? else {
            return Ok(());
        };
        let bad = || std::io::Error::other(format!("sort run {run} is corrupt"));
        let mut parts = text.splitn(3, '\t');
        let ts = parts.next().and_then(|t| t.parse().ok()).ok_or_else(bad)?;
        let number = parts.next().and_then(|t| t.parse().ok()).ok_or_else(bad)?;
        let prefix = text.len() - parts.next().ok_or_else(bad)?.len();
        // The row's text is the rest of the line: keep its buffer.
        text.drain(..prefix);
        self.heads.push(Reverse((
            Staged {
                ts,
                line: number,
                text,
            },
            run,
        )));
        Ok(())
    }

    fn next_row(&mut self) -> std::io::Result<Option<Staged>> {
        let Some(Reverse((row, run))) = self.heads.pop() else {
            return Ok(None);
        };
        self.advance(run)?;
        Ok(Some(row))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sorted(rows: &[(Millis, u64)], run_rows: usize) -> Vec<(Millis, u64, String)> {
        let mut w = RunWriter::new(run_rows);
        for (ts, line) in rows {
            w.push(Staged {
                ts: *ts,
                line: *line,
                text: format!("row {line}\twith a tab"),
            })
            .unwrap();
        }
        let mut s = w.finish().unwrap();
        let mut out = Vec::new();
        while let Some(r) = s.next_row().unwrap() {
            out.push((r.ts, r.line, r.text));
        }
        out
    }

    #[test]
    fn runs_on_disk_merge_to_the_in_memory_order() {
        let rows: Vec<(Millis, u64)> = (0..1000u64)
            .map(|i| (((i * 7919) % 97) as Millis, i + 1))
            .collect();
        let memory = sorted(&rows, 10_000);
        let mut want = memory.clone();
        want.sort();
        assert_eq!(memory, want);
        for run_rows in [1, 7, 100, 999] {
            assert_eq!(sorted(&rows, run_rows), memory, "runs of {run_rows}");
        }
        assert!(sorted(&[], 3).is_empty());
    }
}
