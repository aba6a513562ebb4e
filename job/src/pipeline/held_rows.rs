//! The rows of closed windows the global stage holds until their file span ends
//! (`store.file_span_secs`), then writes together: one file per table and hour for the
//! span instead of one per window. Where the spans end follows event time alone
//! (windows' starts, aligned to the epoch; the hours compaction settles; the end of a
//! bounded run), and what is held goes into checkpoints, so a job restarted from any
//! checkpoint writes the files of a job never stopped.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use shopstream_sinks::store::WindowRows;

/// Rows held per table, with the span they belong to.
#[derive(Debug, Default)]
pub(super) struct HeldRows {
    /// Length of a span, ms (0: every window is written on its own).
    span_ms: i64,
    /// What a checkpoint keeps.
    state: HeldState,
}

/// The held rows as checkpoints keep them.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct HeldState {
    /// The span (window start divided by the span length) of the windows held.
    span: Option<i64>,
    /// Hour (since the epoch) of the last bound the store was compacted up to, which
    /// decides when the next compaction comes (and writes what is held first).
    pub(super) compacted_hours: Option<i64>,
    /// Per table, the windows held, oldest first.
    tables: BTreeMap<String, Vec<WindowRows>>,
    /// Input offsets of the newest window held: they go into the commit records.
    offsets: BTreeMap<String, i64>,
}

/// Rows taken out to be written: per table, the windows, and the offsets for the records.
pub(super) type Taken = (Vec<(String, Vec<WindowRows>)>, Arc<BTreeMap<String, i64>>);

impl HeldRows {
    /// Nothing held, spans of `span_secs`.
    pub(super) fn new(span_secs: u64) -> Self {
        Self {
            span_ms: shopstream_config::secs_to_ms(span_secs),
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

    /// Whether the window starting at `start_ms` begins another span than the windows
    /// held, so that they are written before it is held.
    pub(super) fn span_ends_before(&self, start_ms: i64) -> bool {
        self.state
            .span
            .is_some_and(|span| self.span_ms == 0 || span != start_ms.div_euclid(self.span_ms))
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
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![window_ms]))])
            .expect("batch");
        WindowRows {
            window_ms,
            batch,
            metadata: BTreeMap::new(),
        }
    }

    #[test]
    fn spans_end_at_aligned_window_starts_whatever_window_came_first() {
        let mut held = HeldRows::new(600);
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
        let mut held = HeldRows::new(0);
        assert!(held.per_window());
        held.hold(60_000, "t", rows(60_000), &BTreeMap::new());
        assert!(held.span_ends_before(120_000));
    }

    #[test]
    fn held_rows_keep_their_tables_order_and_newest_offsets_through_a_checkpoint() {
        let mut held = HeldRows::new(600);
        let first = BTreeMap::from([("clicks/0".to_string(), 5)]);
        let second = BTreeMap::from([("clicks/0".to_string(), 9)]);
        held.hold(0, "metrics", rows(0), &first);
        held.hold(0, "examples", rows(0), &first);
        held.hold(60_000, "examples", rows(60_000), &second);
        held.set_compacted_hours(3);
        let packed = rmp_serde::to_vec_named(held.state()).expect("encode");
        let mut back = HeldRows::new(600);
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
}
