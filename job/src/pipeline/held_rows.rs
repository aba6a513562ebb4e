//! The rows of closed windows the global stage holds until their file span ends
//! (`store.file_span_secs`), then writes together: one file per table and hour for the
//! span instead of one per window. A span holding fewer than `store.file_span_min_rows`
//! rows carries on into the next span of its hour, so a quiet hour is written once. Where
//! the spans end follows the input alone (windows' starts, aligned to the epoch; the rows
//! held; the end of a bounded run), and what is held goes into checkpoints, so a job
//! restarted from any checkpoint writes the files of a job never stopped.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use shopstream_sinks::store::{PARTITION_MS, WindowRows};

/// Rows held per table, with the span they belong to.
#[derive(Debug, Default)]
pub(super) struct HeldRows {
    /// Length of a span, ms (0: every window is written on its own).
    span_ms: i64,
    /// Rows (all tables) a span must hold to end at its boundary; one holding fewer
    /// carries on into the next span, up to the end of its hour.
    min_rows: usize,
    /// What a checkpoint keeps.
    state: HeldState,
}

/// The held rows as checkpoints keep them.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct HeldState {
    /// The span (window start divided by the span length) of the newest window held.
    span: Option<i64>,
    /// Hour (since the epoch) of the last bound the store was compacted up to, which
    /// decides when the next compaction comes.
    pub(super) compacted_hours: Option<i64>,
    /// The newest bound of settled hours (`WindowOutput::settled_before`) whose
    /// compaction waits for the end of the span held: compacting needs the rows held
    /// written, and writing them then would cut the span in two.
    #[serde(default)]
    compaction_due: Option<i64>,
    /// Per table, the windows held, oldest first.
    tables: BTreeMap<String, Vec<WindowRows>>,
    /// Input offsets of the newest window held: they go into the commit records.
    offsets: BTreeMap<String, i64>,
}

/// Rows taken out to be written: per table, the windows, and the offsets for the records.
pub(super) type Taken = (Vec<(String, Vec<WindowRows>)>, Arc<BTreeMap<String, i64>>);

impl HeldRows {
    /// Nothing held, spans of `span_secs` that end once they hold `min_rows` rows.
    pub(super) fn new(span_secs: u64, min_rows: u64) -> Self {
        Self {
            span_ms: shopstream_config::secs_to_ms(span_secs),
            min_rows: usize::try_from(min_rows).unwrap_or(usize::MAX),
            state: HeldState::default(),
        }
    }

    /// Takes over what a checkpoint held.
    pub(super) fn resume(&mut self, state: HeldState) {
        self.state = state;
    }

    /// What a checkpoint keeps.
    pub(super) fn state(&self) -> &HeldState {
        &self.state
    }

    /// The hour compaction last settled (see [`HeldState::compacted_hours`]).
    pub(super) fn compacted_hours(&self) -> Option<i64> {
        self.state.compacted_hours
    }

    /// Notes that the store was compacted up to hour `hours`.
    pub(super) fn set_compacted_hours(&mut self, hours: i64) {
        self.state.compacted_hours = Some(hours);
    }

    /// Whether anything is held.
    pub(super) fn is_empty(&self) -> bool {
        self.state.span.is_none()
    }

    /// Notes that the hours before `settled_before` are to be compacted once the span
    /// held is written.
    pub(super) fn defer_compaction(&mut self, settled_before: i64) {
        let due = self
            .state
            .compaction_due
            .map_or(settled_before, |d| d.max(settled_before));
        self.state.compaction_due = Some(due);
    }

    /// The bound of a compaction deferred by [`HeldRows::defer_compaction`], taken.
    pub(super) fn take_due_compaction(&mut self) -> Option<i64> {
        self.state.compaction_due.take()
    }

    /// Whether the window starting at `start_ms` begins another span than the windows
    /// held, so that they are written before it is held: a later span of another hour, or
    /// of this hour once what is held reaches `min_rows` rows.
    pub(super) fn span_ends_before(&self, start_ms: i64) -> bool {
        let Some(span) = self.state.span else {
            return false;
        };
        if self.span_ms == 0 {
            return true;
        }
        let next = start_ms.div_euclid(self.span_ms);
        if next == span {
            return false;
        }
        let hour = |span: i64| (span * self.span_ms).div_euclid(PARTITION_MS);
        hour(next) != hour(span) || self.rows() >= self.min_rows
    }

    /// Rows held, all tables together.
    pub(super) fn rows(&self) -> usize {
        self.state
            .tables
            .values()
            .flatten()
            .map(|w| w.batch.num_rows())
            .sum()
    }

    /// Whether every window is written as it closes (`file_span_secs = 0`).
    pub(super) fn per_window(&self) -> bool {
        self.span_ms == 0
    }

    /// Holds `rows` of `table` from the window starting at `start_ms`, whose input
    /// offsets are `offsets`.
    pub(super) fn hold(
        &mut self,
        start_ms: i64,
        table: &str,
        rows: WindowRows,
        offsets: &BTreeMap<String, i64>,
    ) {
        self.state.span = Some(if self.span_ms == 0 {
            start_ms
        } else {
            start_ms.div_euclid(self.span_ms)
        });
        self.state
            .tables
            .entry(table.to_string())
            .or_default()
            .push(rows);
        if self.state.offsets != *offsets {
            self.state.offsets.clone_from(offsets);
        }
    }

    /// Takes everything held, to be written.
    pub(super) fn take(&mut self) -> Taken {
        self.state.span = None;
        let tables = std::mem::take(&mut self.state.tables).into_iter().collect();
        (tables, Arc::new(std::mem::take(&mut self.state.offsets)))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::record_batch::RecordBatch;

    use super::*;

    fn rows(window_ms: i64) -> WindowRows {
        rows_n(window_ms, 1)
    }

    /// `n` rows of the window starting at `window_ms`.
    fn rows_n(window_ms: i64, n: usize) -> WindowRows {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        let values = Int64Array::from(vec![window_ms; n]);
        let batch = RecordBatch::try_new(schema, vec![Arc::new(values)]).expect("batch");
        WindowRows {
            window_ms,
            batch,
            metadata: BTreeMap::new(),
        }
    }

    #[test]
    fn spans_end_at_aligned_window_starts_whatever_window_came_first() {
        let mut held = HeldRows::new(600, 0);
        assert!(!held.span_ends_before(0), "nothing held");
        // A span that starts mid-way (a restart, a sparse log) ends where aligned ones do.
        held.hold(240_000, "t", rows(240_000), &BTreeMap::new());
        assert!(!held.span_ends_before(540_000));
        assert!(held.span_ends_before(600_000));
        let (tables, _) = held.take();
        assert_eq!(tables.len(), 1);
        assert!(!held.span_ends_before(600_000), "nothing held after take");
    }

    #[test]
    fn a_span_of_zero_writes_every_window_on_its_own() {
        let mut held = HeldRows::new(0, 0);
        assert!(held.per_window());
        held.hold(60_000, "t", rows(60_000), &BTreeMap::new());
        assert!(held.span_ends_before(120_000));
    }

    #[test]
    fn held_rows_keep_their_tables_order_and_newest_offsets_through_a_checkpoint() {
        let mut held = HeldRows::new(600, 0);
        let first = BTreeMap::from([("clicks/0".to_string(), 5)]);
        let second = BTreeMap::from([("clicks/0".to_string(), 9)]);
        held.hold(0, "metrics", rows(0), &first);
        held.hold(0, "examples", rows(0), &first);
        held.hold(60_000, "examples", rows(60_000), &second);
        held.set_compacted_hours(3);
        let packed = rmp_serde::to_vec_named(held.state()).expect("encode");
        let mut back = HeldRows::new(600, 0);
        back.resume(rmp_serde::from_slice(&packed).expect("decode"));
        assert_eq!(back.compacted_hours(), Some(3));
        assert!(back.span_ends_before(600_000));
        let (tables, offsets) = back.take();
        let names: Vec<(&str, Vec<i64>)> = tables
            .iter()
            .map(|(t, w)| (t.as_str(), w.iter().map(|r| r.window_ms).collect()))
            .collect();
        assert_eq!(names, [("examples", vec![0, 60_000]), ("metrics", vec![0])]);
        assert_eq!(*offsets, second);
    }

    #[test]
    fn a_quiet_span_carries_on_to_the_end_of_its_hour_and_a_busy_one_does_not() {
        let none = BTreeMap::new();
        let mut held = HeldRows::new(600, 3);
        held.hold(0, "t", rows(0), &none);
        assert!(!held.span_ends_before(540_000), "the same span");
        assert!(!held.span_ends_before(600_000), "1 row held, fewer than 3");
        held.hold(600_000, "t", rows(600_000), &none);
        held.hold(600_000, "u", rows(600_000), &none);
        assert_eq!(held.rows(), 3, "rows of every table count");
        assert!(held.span_ends_before(1_200_000), "3 rows held end the span");
        held.take();
        // However quiet, a span ends with its hour: the next hour's window writes it.
        held.hold(3_000_000, "t", rows(3_000_000), &none);
        assert!(!held.span_ends_before(3_300_000));
        assert!(held.span_ends_before(3_600_000), "the next hour");
        held.take();
        // Carried spans keep ending on aligned boundaries, never inside a span.
        held.hold(3_600_000, "t", rows_n(3_600_000, 5), &none);
        assert!(
            !held.span_ends_before(4_140_000),
            "the same span, however many rows"
        );
        assert!(held.span_ends_before(4_200_000));
        // 0 rows needed: every span ends at its boundary, as before the rule.
        let mut eager = HeldRows::new(600, 0);
        eager.hold(0, "t", rows(0), &none);
        assert!(eager.span_ends_before(600_000));
    }

    #[test]
    fn a_deferred_compaction_keeps_its_newest_bound_through_a_checkpoint() {
        let mut held = HeldRows::new(600, 0);
        assert!(held.is_empty());
        held.hold(0, "t", rows(0), &BTreeMap::new());
        assert!(!held.is_empty());
        held.defer_compaction(7_200_000);
        held.defer_compaction(3_600_000);
        let packed = rmp_serde::to_vec_named(held.state()).expect("encode");
        let mut back = HeldRows::new(600, 0);
        back.resume(rmp_serde::from_slice(&packed).expect("decode"));
        assert_eq!(
            back.take_due_compaction(),
            Some(7_200_000),
            "the newest bound"
        );
        assert_eq!(back.take_due_compaction(), None, "taken once");
    }

    /// Guards checkpoints written before compactions could wait for a span's end: they
    /// have no `compaction_due` and still load, with nothing due.
    #[test]
    fn checkpoints_from_before_deferred_compaction_still_load() {
        #[derive(Serialize)]
        struct Before {
            span: Option<i64>,
            compacted_hours: Option<i64>,
            tables: BTreeMap<String, Vec<WindowRows>>,
            offsets: BTreeMap<String, i64>,
        }
        let before = Before {
            span: Some(0),
            compacted_hours: Some(2),
            tables: BTreeMap::from([("t".to_string(), vec![rows(0)])]),
            offsets: BTreeMap::new(),
        };
        let packed = rmp_serde::to_vec_named(&before).expect("encode");
        let mut back = HeldRows::new(600, 0);
        back.resume(rmp_serde::from_slice(&packed).expect("decode"));
        assert_eq!(back.compacted_hours(), Some(2));
        assert_eq!(back.rows(), 1);
        assert_eq!(back.take_due_compaction(), None);
    }
}
