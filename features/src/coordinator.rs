//! The part of the features stage that sees every partition: lateness, which windows
//! close and when, the inventory, and the merge of the shards' parts into window outputs.
//!
//! It talks to the shards only through two values, so that shards can live on other
//! threads or in other instances (docs/scale-out.md):
//! - a [`Close`], which every shard applies: the windows that close, in order, each with
//!   the inventory's events in it (shards never read the inventory topic themselves);
//! - a [`Part`], each shard's answer: what its partitions contributed to those windows.
//!
//! Merging the parts of every shard in partition order gives exactly what one state
//! applying every event in (ts, topic, partition, offset) order would.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use shopstream_ingest::event::{Event, InputTopic, Millis};
use shopstream_ingest::record::RecordMeta;

use crate::WindowOutput;
use crate::example::Example;
use crate::shard::{Shard, ShardWindow};
use crate::state::{DemandFeatures, DemandRow, FeatureState};
use crate::time_order::{merge_by_time, merge_in_time_order};
use crate::watermark::Watermark;
use crate::window::{Buffered, WindowGrid, Windows};

/// Windows that close, for every shard to apply in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Close {
    /// Everything before this time is closed once it is applied; `None` closes every
    /// open window and matures every pending example (end of input).
    pub boundary: Option<Millis>,
    /// The closing windows' starts, oldest first, each with the inventory's events in it
    /// in processing order.
    pub windows: Vec<(Millis, Vec<Buffered>)>,
}

impl Close {
    /// Whether this is the end of input.
    pub fn is_final(&self) -> bool {
        self.boundary.is_none()
    }

    /// Whether it closes no window: only the closed bound moves, no shard holds events
    /// before it, and nobody needs to answer.
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty() && !self.is_final()
    }
}

/// One shard's answer to a [`Close`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Part {
    /// The shard's partition number.
    pub partition: i32,
    /// Its part of each closing window, in the close's order.
    pub windows: Vec<ShardWindow>,
    /// At the end of input: every example still pending, in (ts, application order).
    pub rest: Vec<Example>,
    /// Own events of windows the close passed without listing them: the coordinator
    /// closed their window before it learned of them (possible only for a partition that
    /// held nothing back, when the shards run apart). Late, as one task judges them.
    pub refused: Vec<Buffered>,
}

impl Part {
    /// Whether it contributes nothing to a merge (no event in the windows, nothing
    /// pending, matured or refused): present or absent, the merged windows are the same.
    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
            && self.refused.is_empty()
            && self.windows.iter().all(|w| {
                w.events == 0
                    && w.examples.is_empty()
                    && w.users.is_empty()
                    && w.oldest_pending.is_none()
            })
    }
}

/// Lateness, window closing, the inventory and the merge (see the module doc).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Coordinator {
    grid: WindowGrid,
    watermark: Watermark,
    /// Starts of the windows holding an admitted event of any partition.
    open: BTreeSet<Millis>,
    /// Everything before this time is closed.
    closed_until: Option<Millis>,
    /// The inventory's events and state: demand rows, and the table that shards join.
    inventory: Shard,
    /// Demand features taken when the previous window closed, shared with that window's
    /// output (`demand_next`) and with the inventory (which copies the rows that still
    /// hold into the next) instead of copied: a snapshot holds a row for every item sold in
    /// the lookback, often more rows than the window had events.
    demand_snapshot: Arc<Vec<DemandFeatures>>,
    /// Set by [`Coordinator::adopt`]: inventory events before this time are in the closes
    /// an earlier coordinator decided (or were late by their own partition's rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    adopted_until: Option<Millis>,
}

impl Coordinator {
    /// A coordinator on `grid`, with `lateness_ms` of allowed lateness per partition and
    /// `state` (empty) for the inventory.
    pub fn new(grid: WindowGrid, lateness_ms: Millis, state: FeatureState) -> Self {
        Self {
            grid,
            watermark: Watermark::new(lateness_ms),
            open: BTreeSet::new(),
            closed_until: None,
            inventory: Shard::new(Windows::new(grid.length_ms()), state, None),
            demand_snapshot: Arc::default(),
            adopted_until: None,
        }
    }

    /// Admits an event: gives it back when it is late, keeps it when it is the
    /// inventory's, and returns it for the shard of its partition otherwise.
    ///
    /// Late means: its window is one its own partition's watermark has passed (the
    /// partition's newest event time - allowed lateness), a rule that depends on that
    /// partition's events alone, however the partitions interleaved; or, for a partition
    /// that no longer held the watermark back (read to its end, idle, revoked), a window
    /// already closed.
    pub fn admit(
        &mut self,
        meta: RecordMeta,
        event: Event,
    ) -> Result<Option<Buffered>, Box<Buffered>> {
        let ts = event.ts();
        // A late event is older than the partition's newest, so observing it first
        // changes nothing for it.
        let own = self.watermark.observe(meta.topic, meta.partition, ts);
        let buffered = Buffered { meta, event };
        if meta.topic == InputTopic::Inventory && self.adopted_until.is_some_and(|a| ts < a) {
            // Read again after a failover: the adopted closes carry it, unless its own
            // partition's rule made it late (as the earlier coordinator judged it too).
            return if is_late(self.grid, own, None, ts) {
                Err(Box::new(buffered))
            } else {
                Ok(None)
            };
        }
        if is_late(self.grid, own, self.closed_until, ts) {
            return Err(Box::new(buffered));
        }
        self.open.insert(self.grid.start_of(ts));
        match meta.topic {
            InputTopic::Inventory => {
                self.inventory.push(buffered)?;
                Ok(None)
            }
            InputTopic::Clicks | InputTopic::Orders => Ok(Some(buffered)),
        }
    }

    /// An empty shard that starts now, with the windows closed so far, joining the
    /// coordinator's inventory (the base of its closes in a [`crate::FeaturePipeline`]).
    pub fn new_shard(&self) -> Shard {
        self.inventory.joining(self.closed_until)
    }

    /// A copy of the inventory as it is, with the windows closed so far: the template of
    /// a [`crate::ShardSet`], which its shards join.
    pub fn inventory_replica(&self) -> Shard {
        self.inventory.replica(self.closed_until)
    }

    /// Takes what a [`crate::ShardSet`] reports: its partitions' newest event times and
    /// the windows its admitted events fall in.
    pub fn observe(&mut self, report: &crate::Report) {
        for ((topic, partition), ts) in &report.newest {
            self.watermark.observe(*topic, *partition, *ts);
        }
        // A start already closed belongs to events their shard refuses at that close.
        let closed = self.closed_until;
        self.open.extend(
            report
                .starts
                .iter()
                .copied()
                .filter(|start| closed.is_none_or(|c| *start >= c)),
        );
    }

    /// The window grid.
    pub fn grid(&self) -> WindowGrid {
        self.grid
    }

    /// Every partition's newest event time (the lateness of a shard set starts from it).
    pub fn partition_watermarks(&self) -> &Watermark {
        &self.watermark
    }

    /// Everything before this time is closed.
    pub fn closed_until(&self) -> Option<Millis> {
        self.closed_until
    }

    /// The inventory's shard (its state serves features before a partition's first
    /// event).
    pub fn inventory(&self) -> &Shard {
        &self.inventory
    }

    /// Makes the watermark wait for a partition known to hold unread data.
    pub fn register_partition(&mut self, topic: InputTopic, partition: i32) {
        self.watermark.register(topic, partition);
    }

    /// A partition no longer holds the watermark back (see
    /// [`crate::FeaturePipeline::partition_at_end`]).
    pub fn partition_at_end(&mut self, topic: InputTopic, partition: i32) {
        self.watermark.release(topic, partition);
    }

    /// The current watermark.
    pub fn watermark(&self) -> Option<Millis> {
        self.watermark.current()
    }

    /// The windows the watermark has passed, if any can close.
    pub fn close_ready(&mut self) -> Option<Close> {
        self.close_ready_at_most(usize::MAX)
    }

    /// Like [`Coordinator::close_ready`], closing at most `max_windows` windows (the rest
    /// come with the next call). Outputs are the same however the windows are grouped;
    /// the job uses it to take checkpoints at the windows they are due after.
    pub fn close_ready_at_most(&mut self, max_windows: usize) -> Option<Close> {
        let mut boundary = self.grid.start_of(self.watermark.current()?);
        if self.closed_until.is_some_and(|c| c >= boundary) {
            // Every open window ends after the closed bound: nothing can close.
            return None;
        }
        let length = self.grid.length_ms();
        if let Some(next) = self
            .open
            .iter()
            .take_while(|start| **start + length <= boundary)
            .nth(max_windows.max(1))
        {
            // Closed up to the first window left open.
            boundary = *next;
        }
        Some(self.close_until(boundary))
    }

    /// Closes every open window that ends by `boundary`.
    fn close_until(&mut self, boundary: Millis) -> Close {
        self.closed_until = Some(boundary);
        let length = self.grid.length_ms();
        let mut starts = Vec::new();
        while let Some(start) = self.open.first().copied() {
            if start + length > boundary {
                break;
            }
            self.open.pop_first();
            starts.push(start);
        }
        let mut inventory = self.inventory.take_closed(boundary);
        let windows = starts
            .into_iter()
            .map(|start| (start, inventory.remove(&start).unwrap_or_default()))
            .collect();
        Close {
            boundary: Some(boundary),
            windows,
        }
    }

    /// The end of input, at most `max_windows` windows at a time: the oldest
    /// `max_windows` open windows close as the watermark would close them, or, when no
    /// more are open, every one closes as [`Coordinator::finish`] closes them. Outputs are
    /// the same however the end is split; the job uses it so that checkpoints fall at the
    /// same windows however much of the input was read before its end.
    pub fn finish_at_most(&mut self, max_windows: usize) -> Close {
        match self.open.iter().nth(max_windows.max(1)).copied() {
            // Closed up to the first window left open.
            Some(next) => self.close_until(next),
            None => self.finish(),
        }
    }

    /// Every open window (end of input).
    pub fn finish(&mut self) -> Close {
        let mut inventory = self.inventory.take_all();
        let windows: Vec<(Millis, Vec<Buffered>)> = std::mem::take(&mut self.open)
            .into_iter()
            .map(|start| (start, inventory.remove(&start).unwrap_or_default()))
            .collect();
        if let Some((last, _)) = windows.last() {
            self.closed_until = Some(last + self.grid.length_ms());
        }
        Close {
            boundary: None,
            windows,
        }
    }

    /// Takes a close that an earlier coordinator decided and published, in place of
    /// deciding it (the failover of docs/scale-out.md): its windows are closed as if this
    /// coordinator had closed them, and [`Coordinator::merge`] takes the inventory's
    /// events of those windows from the close itself. So the inventory, read again from its
    /// start, skips its events before the close's boundary: on input that is all there
    /// (a bounded run), each one not late by its own partition's rule was in one of the
    /// closes, since a partition that was not read to its end held the watermark, and so
    /// every boundary, behind its next event. Closes are adopted in order, before this
    /// coordinator decides any.
    pub fn adopt(&mut self, close: &Close) {
        let until = match close.boundary {
            Some(boundary) => {
                self.closed_until = Some(self.closed_until.map_or(boundary, |c| c.max(boundary)));
                self.open.retain(|start| *start >= boundary);
                boundary
            }
            // The end of input: every window is closed; nothing read again counts.
            None => {
                self.open.clear();
                if let Some((last, _)) = close.windows.last() {
                    self.closed_until = Some(last + self.grid.length_ms());
                }
                Millis::MAX
            }
        };
        self.adopted_until = Some(self.adopted_until.map_or(until, |a| a.max(until)));
    }

    /// The window outputs of `close` from every shard's part (`parts` in partition order,
    /// one per shard).
    pub fn merge(&mut self, close: &Close, parts: Vec<Part>) -> Vec<WindowOutput> {
        let mut rest = Vec::new();
        let mut windows: Vec<(i32, std::vec::IntoIter<ShardWindow>)> = Vec::new();
        for part in parts {
            rest.push((part.partition, part.rest));
            windows.push((part.partition, part.windows.into_iter()));
        }
        let mut outputs: Vec<WindowOutput> = close
            .windows
            .iter()
            .map(|(start, events)| {
                let inventory = self.inventory.apply_shared(*start, events, &[]);
                let parts: Vec<(i32, ShardWindow)> = windows
                    .iter_mut()
                    .filter_map(|(p, windows)| Some((*p, windows.next()?)))
                    .collect();
                self.merge_window(*start, inventory, parts)
            })
            .collect();
        let rest = merge_in_time_order(rest);
        if !rest.is_empty() {
            match outputs.last_mut() {
                Some(last) => last.examples.extend(rest),
                None => {
                    // Every window was closed already: report the rest under the next,
                    // never-used window start so no earlier window's file is overwritten.
                    let start = self
                        .closed_until
                        .unwrap_or_else(|| rest.first().map_or(0, |e| self.grid.start_of(e.ts)));
                    outputs.push(WindowOutput {
                        start,
                        end: start,
                        events: 0,
                        examples: rest,
                        demand: Vec::new(),
                        demand_next: Arc::default(),
                        users: Vec::new(),
                        settled_before: start,
                    });
                }
            }
        }
        outputs
    }

    /// One window's output from the parts of the inventory and of every shard.
    fn merge_window(
        &mut self,
        start: Millis,
        inventory: ShardWindow,
        parts: Vec<(i32, ShardWindow)>,
    ) -> WindowOutput {
        let end = start + self.grid.length_ms();
        let events = inventory.events + parts.iter().map(|(_, w)| w.events).sum::<usize>();
        let oldest = parts.iter().filter_map(|(_, w)| w.oldest_pending).min();
        let mut users = Vec::with_capacity(parts.len());
        let mut examples = Vec::with_capacity(parts.len());
        for (partition, part) in parts {
            users.push((partition, part.users));
            examples.push((partition, part.examples));
        }
        // Demand: the snapshot taken at this window's start, labelled with what sold in it;
        // the next one taken from the state at its end (its rows that still hold copied
        // from this one).
        let state = self.inventory.state_mut();
        let next = state.demand_snapshot(end);
        let previous = std::mem::replace(&mut self.demand_snapshot, next);
        // Sized up front: collected from a filter, the list would grow by copies.
        let mut demand: Vec<DemandRow> = Vec::with_capacity(previous.len());
        let row = |features| DemandRow { features, units: 0 };
        match Arc::try_unwrap(previous) {
            Ok(rows) => demand.extend(rows.into_iter().filter(|f| f.at == start).map(row)),
            // The previous window's output still holds it (windows closed together, or
            // queued for the global stage): the rows kept are copied, once.
            Err(shared) => demand.extend(shared.iter().filter(|f| f.at == start).cloned().map(row)),
        }
        // The few items sold are found in the snapshot (sorted by id), rather than each of
        // the many snapshot rows in the sold items: no pass reads every row's id.
        for (item, units) in state.take_window_units() {
            if let Ok(at) = demand.binary_search_by(|row| (*row.features.item_id).cmp(&*item)) {
                demand[at].units = units;
            }
        }
        // Later windows hold events at or after this window's end; one window of margin
        // covers drift evidence, reported on the grid of windows.
        let oldest = oldest.map_or(end, |ts| ts.min(end));
        WindowOutput {
            start,
            end,
            events,
            examples: merge_in_time_order(examples),
            demand,
            demand_next: Arc::clone(&self.demand_snapshot),
            // Each shard's users in the order of their first impressions: in (ts, partition)
            // order, a shard's users of one millisecond in its order.
            users: merge_by_time(users, |(ts, _)| *ts)
                .into_iter()
                .map(|(_, u)| u)
                .collect(),
            settled_before: self.grid.start_of(oldest) - self.grid.length_ms(),
        }
    }
}

/// The lateness rule: an event is late when its window is one its own partition's
/// watermark (`own`, before the event) has passed, or is before `closed_until`.
pub(crate) fn is_late(
    grid: WindowGrid,
    own: Option<Millis>,
    closed_until: Option<Millis>,
    ts: Millis,
) -> bool {
    own.is_some_and(|w| ts < grid.start_of(w)) || closed_until.is_some_and(|c| ts < c)
}
