//! The shard side of the features stage when it runs apart from its [`Coordinator`]: the
//! shards of some partition numbers, as one worker thread (or, later, one instance) holds
//! them.
//!
//! A [`ShardSet`] judges lateness of its own events by their partition's watermark, buffers
//! them in their shard, serves features for impressions, and applies the [`Close`]s the
//! coordinator decides. What the coordinator needs to decide them (each partition's newest
//! event time and the windows that hold an event) it takes as a [`Report`].
//!
//! Admitting here and reporting to the coordinator decides every event as
//! [`crate::FeaturePipeline::ingest`] does, with one difference: an event of a partition
//! that stopped holding the watermark back (read to its end, idle, revoked) is judged
//! against the windows this set has applied, which may be fewer than the coordinator has
//! decided. A bounded run never meets it (such a partition has no later event).

use std::collections::{BTreeMap, BTreeSet};

use shopstream_ingest::event::{Event, InputTopic, Millis};
use shopstream_ingest::record::RecordMeta;

use crate::coordinator::{Close, Coordinator, Part};
use crate::example::ServingRow;
use crate::serving_row_of;
use crate::shard::Shard;
use crate::state::FeatureState;
use crate::watermark::Watermark;
use crate::window::{Buffered, Windows};

/// What the coordinator learns from a shard set's admitted events since the last report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// Each partition's newest event time seen (late events included).
    pub newest: BTreeMap<(InputTopic, i32), Millis>,
    /// Starts of the windows that received an admitted event.
    pub starts: BTreeSet<Millis>,
}

impl Report {
    /// Whether there is nothing to report.
    pub fn is_empty(&self) -> bool {
        self.newest.is_empty() && self.starts.is_empty()
    }
}

/// The shards of some partition numbers (see the module doc).
#[derive(Debug, Clone)]
pub struct ShardSet {
    /// Window length.
    length_ms: Millis,
    /// Own partitions' newest event times (lateness).
    watermark: Watermark,
    /// Everything before this time is closed (by the closes applied here).
    closed_until: Option<Millis>,
    /// The inventory as the applied closes left it: a new shard starts from a replica.
    template: Shard,
    shards: BTreeMap<i32, Shard>,
    report: Report,
}

impl ShardSet {
    /// The set holding `shards`, as `coordinator` has them now (a start, or a checkpoint
    /// taken when every report had reached the coordinator).
    pub fn new(coordinator: &Coordinator, shards: BTreeMap<i32, Shard>) -> Self {
        Self {
            length_ms: coordinator.grid().length_ms(),
            watermark: coordinator.partition_watermarks().clone(),
            closed_until: coordinator.closed_until(),
            template: coordinator.new_shard(),
            shards,
            report: Report::default(),
        }
    }

    /// Admits one of the set's own events (clicks or orders), or gives it back when it is
    /// late (the rule of [`Coordinator::admit`]).
    pub fn admit(&mut self, meta: RecordMeta, event: Event) -> Result<(), Box<Buffered>> {
        let ts = event.ts();
        let own = self.watermark.observe(meta.topic, meta.partition, ts);
        let newest = self
            .report
            .newest
            .entry((meta.topic, meta.partition))
            .or_insert(ts);
        *newest = (*newest).max(ts);
        let behind_own = own.is_some_and(|w| ts < self.start_of(w));
        let behind_closed = self.closed_until.is_some_and(|c| ts < c);
        let buffered = Buffered { meta, event };
        if behind_own || behind_closed {
            return Err(Box::new(buffered));
        }
        let start = self.start_of(ts);
        let (template, closed_until, length) = (&self.template, self.closed_until, self.length_ms);
        self.shards
            .entry(meta.partition)
            .or_insert_with(|| {
                Shard::new(
                    Windows::new(length),
                    FeatureState::replica_of(template.state()),
                    closed_until,
                )
            })
            .push(buffered)?;
        self.report.starts.insert(start);
        Ok(())
    }

    fn start_of(&self, ts: Millis) -> Millis {
        ts.div_euclid(self.length_ms) * self.length_ms
    }

    /// A partition no longer holds the watermark back: its next event counts from scratch
    /// (as in [`Watermark::release`]).
    pub fn release(&mut self, topic: InputTopic, partition: i32) {
        self.watermark.release(topic, partition);
    }

    /// What the coordinator has not been told yet.
    pub fn take_report(&mut self) -> Report {
        std::mem::take(&mut self.report)
    }

    /// Features for an impression of `meta`'s partition, from the state as it is.
    pub fn serving_row(&self, meta: &RecordMeta, event: &Event) -> Option<ServingRow> {
        let state = self
            .shards
            .get(&meta.partition)
            .unwrap_or(&self.template)
            .state();
        serving_row_of(state, meta.partition, event)
    }

    /// The newest own-partition watermark (what serving reports as the model's view).
    pub fn watermark(&self) -> Option<Millis> {
        self.watermark.current()
    }

    /// Applies `close` to every shard (and the inventory template); their parts in
    /// partition order.
    pub fn on_close(&mut self, close: &Close) -> Vec<Part> {
        if close.windows.is_empty() && !close.is_final() {
            if let Some(boundary) = close.boundary {
                self.closed_until = Some(boundary);
            }
            return Vec::new();
        }
        let parts = self
            .shards
            .iter_mut()
            .map(|(partition, shard)| shard.on_close(*partition, close))
            .collect();
        let _inventory_only = self.template.on_close(-1, close);
        self.closed_until = match close.boundary {
            Some(boundary) => Some(boundary),
            None => close
                .windows
                .last()
                .map(|(start, _)| start + self.length_ms)
                .or(self.closed_until),
        };
        parts
    }

    /// Impressions waiting for their labels.
    pub fn pending_examples(&self) -> usize {
        self.shards.values().map(|s| s.state().pending_len()).sum()
    }

    /// The shards (for checkpoints).
    pub fn shards(&self) -> &BTreeMap<i32, Shard> {
        &self.shards
    }
}
