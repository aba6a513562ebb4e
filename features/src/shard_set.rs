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
//! decided. An event of such a partition may then be admitted into a window the
//! coordinator has closed already: the shard refuses it when that close arrives
//! ([`Part::refused`]), and the job dead-letters it as late, as one task would have. A
//! bounded run never meets it (such a partition has no later event).

use std::collections::{BTreeMap, BTreeSet};

use shopstream_ingest::event::{Event, InputTopic, Millis};
use shopstream_ingest::record::RecordMeta;

use crate::coordinator::{Close, Coordinator, Part, is_late};
use crate::example::ServingRow;
use crate::serving_row_of;
use crate::shard::Shard;
use crate::watermark::Watermark;
use crate::window::{Buffered, WindowGrid};

/// What the coordinator learns from a shard set's admitted events since the last report.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
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

/// The shards of some partition numbers (see the module doc). Serializable: the state of
/// a partition number in a group run's per-partition checkpoint.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ShardSet {
    grid: WindowGrid,
    /// Own partitions' newest event times (lateness).
    watermark: Watermark,
    /// Everything before this time is closed (by the closes applied here).
    closed_until: Option<Millis>,
    /// The inventory as the applied closes left it, which every shard joins (their base).
    template: Shard,
    shards: BTreeMap<i32, Shard>,
    report: Report,
}

impl ShardSet {
    /// The set holding `shards` of the partitions `owns` selects, as `coordinator` has
    /// them now (a start, or a checkpoint taken when every report had reached the
    /// coordinator).
    pub fn new(
        coordinator: &Coordinator,
        shards: BTreeMap<i32, Shard>,
        owns: impl Fn(InputTopic, i32) -> bool,
    ) -> Self {
        let mut watermark = coordinator.partition_watermarks().clone();
        watermark.retain(owns);
        Self {
            grid: coordinator.grid(),
            watermark,
            closed_until: coordinator.closed_until(),
            template: coordinator.inventory_replica(),
            shards,
            report: Report::default(),
        }
    }

    /// Admits one of the set's own events (clicks or orders), or gives it back when it is
    /// late (the rule of [`Coordinator::admit`]).
    pub fn admit(&mut self, meta: RecordMeta, event: Event) -> Result<(), Box<Buffered>> {
        let ts = event.ts();
        let own = self.watermark.observe(meta.topic, meta.partition, ts);
        self.report
            .newest
            .entry((meta.topic, meta.partition))
            .and_modify(|newest| *newest = (*newest).max(ts))
            .or_insert(ts);
        let buffered = Buffered { meta, event };
        if is_late(self.grid, own, self.closed_until, ts) {
            return Err(Box::new(buffered));
        }
        let (template, closed_until) = (&self.template, self.closed_until);
        self.shards
            .entry(meta.partition)
            .or_insert_with(|| template.joining(closed_until))
            .push(buffered)?;
        self.report.starts.insert(self.grid.start_of(ts));
        Ok(())
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
        let shard = self.shards.get(&meta.partition);
        serving_row_of(shard, &self.template, meta.partition, event)
    }

    /// The newest own-partition watermark (what serving reports as the model's view).
    pub fn watermark(&self) -> Option<Millis> {
        self.watermark.current()
    }

    /// Applies `close` to every shard (and the inventory template); their parts in
    /// partition order.
    pub fn on_close(&mut self, close: &Close) -> Vec<Part> {
        if close.is_empty() {
            if let Some(boundary) = close.boundary {
                self.closed_until = Some(boundary);
            }
            return Vec::new();
        }
        let base = &self.template;
        let parts = self
            .shards
            .iter_mut()
            .map(|(partition, shard)| shard.on_close(*partition, close, Some(base)))
            .collect();
        // The base moves on once every shard has joined it as it was.
        let _inventory_only = self.template.on_close(-1, close, None);
        self.closed_until = match close.boundary {
            Some(boundary) => Some(boundary),
            None => close
                .windows
                .last()
                .map(|(start, _)| start + self.grid.length_ms())
                .or(self.closed_until),
        };
        parts
    }

    /// Whether `close` can be applied by a set that reads its partitions from behind (a
    /// new owner catching up after a handover): every own partition's watermark has
    /// passed its boundary, so every own event of its windows that is not late has been
    /// admitted. That is when the coordinator, which decided it from the partitions'
    /// reports, could decide it at the earliest. The final close, and every close once the
    /// set has read as far as its previous owner had, is applied without this test.
    pub fn is_due(&self, close: &Close) -> bool {
        match (close.boundary, self.watermark.current()) {
            (Some(boundary), Some(watermark)) => boundary <= watermark,
            _ => false,
        }
    }

    /// Impressions waiting for their labels.
    pub fn pending_examples(&self) -> usize {
        self.shards.values().map(|s| s.state().pending_len()).sum()
    }

    /// The shards (for checkpoints).
    pub fn shards(&self) -> &BTreeMap<i32, Shard> {
        &self.shards
    }

    /// Drops the keyed state of `users` in every shard held; the entries dropped.
    pub fn forget_users(&mut self, users: &std::collections::BTreeSet<String>) -> usize {
        self.shards
            .values_mut()
            .map(|s| s.forget_users(users))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coordinator::Coordinator;
    use crate::state::{FeatureState, StateLimits};
    use crate::window::WindowGrid;
    use shopstream_config::PipelineConfig;
    use shopstream_ingest::event::{ClickEvent, ClickKind, Scenario};

    const T0: Millis = 1_767_571_200_000;

    fn impression(partition: i32, offset: i64, ts: Millis) -> (RecordMeta, Event) {
        let meta = RecordMeta {
            topic: InputTopic::Clicks,
            partition,
            offset,
        };
        let event = Event::Click(ClickEvent {
            event_id: format!("e{partition}-{offset}").into(),
            ts,
            user_id: format!("u{partition}").into(),
            session_id: "s".into(),
            kind: ClickKind::Impression,
            item_id: Some("i1".into()),
            scenario: Scenario::HomeFeed,
            position: Some(0),
            device: None,
            price: Some(5.0),
            query: None,
        });
        (meta, event)
    }

    /// Regression (review of the shard workers): a partition that held nothing back
    /// (idle in live mode) delivered an event into a window the coordinator closed before
    /// the event's report arrived. The shard dropped it silently at that close, and the
    /// late report reopened the window, which then closed a second time.
    #[test]
    fn an_event_admitted_into_a_window_closed_meanwhile_is_refused_not_lost() {
        let config = PipelineConfig::default();
        let window = config.window_ms();
        let state = FeatureState::new(StateLimits {
            click_window_ms: config.click_window_ms(),
            attribution_ms: config.attribution_window_ms(),
            ttl_ms: config.feature_ttl_ms(),
        });
        let mut coordinator =
            Coordinator::new(WindowGrid::of(&config), config.allowed_lateness_ms(), state);
        let mut a = ShardSet::new(&coordinator, BTreeMap::new(), |_, p| p == 0);
        let mut b = ShardSet::new(&coordinator, BTreeMap::new(), |_, p| p == 1);
        let (m, e) = impression(0, 0, T0);
        a.admit(m, e).expect("first event");
        coordinator.observe(&a.take_report());
        // Partition 0 goes idle and is released; partition 1 runs ahead.
        a.release(InputTopic::Clicks, 0);
        coordinator.partition_at_end(InputTopic::Clicks, 0);
        let (m, e) = impression(1, 0, T0 + 6 * window);
        b.admit(m, e).expect("first event");
        coordinator.observe(&b.take_report());
        let close = coordinator
            .close_ready()
            .expect("partition 1 passed window 0");
        let boundary = close.boundary.expect("not final");
        assert!(boundary > T0 + 2 * window);
        // Before the close reaches partition 0's set, an event of a closed window arrives.
        let (m, e) = impression(0, 1, T0 + 2 * window);
        a.admit(m, e)
            .expect("the set has not applied the close yet");
        coordinator.observe(&a.take_report());
        let parts = a.on_close(&close);
        assert_eq!(parts.len(), 1);
        let refused: Vec<Millis> = parts[0].refused.iter().map(|b| b.event.ts()).collect();
        assert_eq!(refused, vec![T0 + 2 * window], "refused, not dropped");
        assert_eq!(parts[0].windows.len(), 1, "window 0 applied");
        // The late report did not reopen the closed window.
        let finish = coordinator.finish();
        assert!(
            finish.windows.iter().all(|(start, _)| *start >= boundary),
            "{:?}",
            finish.windows.iter().map(|(s, _)| s).collect::<Vec<_>>()
        );
    }
}
