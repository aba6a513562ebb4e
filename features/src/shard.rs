//! One partition's share of the features stage.
//!
//! Clicks and orders are co-partitioned by user, so the events of partition number `p` of
//! both topics touch only `p`'s keyed state. A [`Shard`] holds that state and the open
//! windows of its own events, and joins the inventory as of event time: the table as the
//! last close left it (its base, one per process or shard set, read by every shard), and
//! the rows that the window's inventory events change, which the shard keeps until the
//! close ends and the base has applied them too. It applies a window when told the
//! window closes (the job closes a window for every shard at once, also for shards with
//! no event in it, so that labels mature in the same window whoever holds the
//! partition), and returns its part of the window: the examples that matured, the users
//! it saw, the oldest impression still pending. The features stage merges the parts of
//! all shards in a fixed order.
//!
//! A shard's work depends only on its own events, the inventory events, the base and the
//! list of windows that close, so shards can be applied in any order, on any thread.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use shopstream_ingest::event::Millis;

use crate::coordinator::{Close, Part};
use crate::example::Example;
use crate::state::{FeatureState, GroupEvent, UserArrival};
use crate::window::{Buffered, ClosedWindow, Windows};

/// The state and open windows of one partition number (or of the inventory).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shard {
    windows: Windows,
    state: FeatureState,
}

/// A shard's part of one closed window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardWindow {
    /// Events of the shard's own partitions in the window.
    pub events: usize,
    /// Examples whose labels matured, in (ts, application order) order.
    pub examples: Vec<Example>,
    /// Users at their first impression in the window, with its time, in that order.
    pub users: Vec<(Millis, UserArrival)>,
    /// Event time of the oldest impression still waiting for labels after the window.
    pub oldest_pending: Option<Millis>,
}

/// Events of the inventory by window start: what every shard joins.
pub type JoinedEvents = BTreeMap<Millis, Vec<Buffered>>;

impl Shard {
    /// A shard with `state`, whose windows before `closed_until` are closed already.
    pub fn new(windows: Windows, state: FeatureState, closed_until: Option<Millis>) -> Self {
        let mut shard = Self { windows, state };
        if let Some(closed) = closed_until {
            // Nothing is open: this only moves the closed bound.
            let none = shard.windows.close_until(closed);
            debug_assert!(none.is_empty());
        }
        shard
    }

    /// An empty shard with a copy of this one's inventory table (it counts no sales),
    /// with every window before `closed_until` closed: a shard set's template.
    pub fn replica(&self, closed_until: Option<Millis>) -> Shard {
        self.starting_with(FeatureState::replica_of(&self.state), closed_until)
    }

    /// An empty shard that joins this one's inventory (it counts no sales; this shard is
    /// the base of its closes), with every window before `closed_until` closed.
    pub fn joining(&self, closed_until: Option<Millis>) -> Shard {
        self.starting_with(FeatureState::joining(&self.state), closed_until)
    }

    /// A shard of `state` with this one's window length and no open window, every window
    /// before `closed_until` closed.
    fn starting_with(&self, state: FeatureState, closed_until: Option<Millis>) -> Shard {
        Shard::new(Windows::new(self.windows.length_ms()), state, closed_until)
    }

    /// Buffers one of the shard's own events; gives it back when its window is closed.
    pub fn push(&mut self, event: Buffered) -> Result<(), Box<Buffered>> {
        self.windows.push(event)
    }

    /// Events buffered in the shard's open windows.
    pub fn buffered(&self) -> usize {
        self.windows.buffered()
    }

    /// The keyed state.
    pub fn state(&self) -> &FeatureState {
        &self.state
    }

    /// Takes the shard's own events of every window ending at or before `boundary`,
    /// sorted, by window start; everything before `boundary` is closed from now on.
    pub fn take_closed(&mut self, boundary: Millis) -> JoinedEvents {
        collect(self.windows.close_until(boundary))
    }

    /// Takes the shard's own events of every open window (end of input).
    pub fn take_all(&mut self) -> JoinedEvents {
        collect(self.windows.close_all())
    }

    /// Applies the window starting at `start`: the shard's `own` events merged with the
    /// `joined` (inventory) events, both sorted, in (ts, topic, partition, offset) order;
    /// then matures the examples whose labels can no longer change. The examples take
    /// their ids and device from `own`, which is consumed. `base`: see [`FeatureState::apply_group`].
    pub fn apply(
        &mut self,
        start: Millis,
        own: Vec<Buffered>,
        joined: &[Buffered],
        base: Option<&FeatureState>,
    ) -> ShardWindow {
        let events = own.len();
        let own = own.into_iter().map(|b| {
            (
                b.order_key(),
                (b.meta.partition, GroupEvent::Owned(b.event)),
            )
        });
        let merged = merge(own, joined);
        self.apply_merged(start, events, merged, base)
    }

    /// [`Shard::apply`] of `own` events that stay with the caller (the examples copy
    /// their ids and device), by a shard that holds its own inventory table.
    pub fn apply_shared(
        &mut self,
        start: Millis,
        own: &[Buffered],
        joined: &[Buffered],
    ) -> ShardWindow {
        let shared = own.iter().map(|b| {
            (
                b.order_key(),
                (b.meta.partition, GroupEvent::Shared(&b.event)),
            )
        });
        let merged = merge(shared, joined);
        self.apply_merged(start, own.len(), merged, None)
    }

    fn apply_merged(
        &mut self,
        start: Millis,
        events: usize,
        mut merged: Vec<(i32, GroupEvent<'_>)>,
        base: Option<&FeatureState>,
    ) -> ShardWindow {
        let end = start + self.windows.length_ms();
        for group in merged.chunk_by_mut(|a, b| a.1.event().ts() == b.1.event().ts()) {
            self.state.apply_group(group, base);
        }
        ShardWindow {
            events,
            users: self.state.take_window_users(),
            examples: self.state.mature_before(end),
            oldest_pending: self.state.oldest_pending_ts(),
        }
    }

    /// Applies `close` to the shard of partition number `partition`: every closing window
    /// in order, each with the shard's own events in it (if any) and the inventory's,
    /// joined over `base`'s inventory as the last close left it (`None` for the shard that
    /// holds the table itself). `base` applies the close after every shard that joins it.
    pub fn on_close(&mut self, partition: i32, close: &Close, base: Option<&Shard>) -> Part {
        let base = base.map(Shard::state);
        let mut own = match close.boundary {
            Some(boundary) => self.take_closed(boundary),
            None => self.take_all(),
        };
        let windows = close
            .windows
            .iter()
            .map(|(start, inventory)| {
                let mine = own.remove(start).unwrap_or_default();
                self.apply(*start, mine, inventory, base)
            })
            .collect();
        if base.is_some() {
            self.state.end_close();
        }
        // Left over only when the coordinator closed past a window before it learned of
        // the window's events (see `Part::refused`).
        let refused = own.into_values().flatten().collect();
        let rest = if close.is_final() {
            self.state.mature_all()
        } else {
            Vec::new()
        };
        Part {
            partition,
            windows,
            rest,
            refused,
        }
    }

    /// Drops the keyed state of `users` ([`FeatureState::forget_users`]); the entries
    /// dropped.
    pub fn forget_users(&mut self, users: &std::collections::BTreeSet<String>) -> usize {
        self.state.forget_users(users)
    }

    /// The state, to make demand rows from (the inventory's shard only).
    pub(crate) fn state_mut(&mut self) -> &mut FeatureState {
        &mut self.state
    }
}

fn collect(closed: Vec<ClosedWindow>) -> JoinedEvents {
    closed.into_iter().map(|w| (w.start, w.events)).collect()
}

/// The shard's own events (with their order keys) and the joined ones, both sorted, as
/// one list in processing order, each with its partition. On equal keys (not expected:
/// keys hold the offset) the own event goes first.
fn merge<'a>(
    own: impl ExactSizeIterator<Item = (OrderKey, (i32, GroupEvent<'a>))>,
    joined: &'a [Buffered],
) -> Vec<(i32, GroupEvent<'a>)> {
    let mut out = Vec::with_capacity(own.len() + joined.len());
    let mut joined = joined.iter().peekable();
    for (key, event) in own {
        while let Some(j) = joined.next_if(|j| j.order_key() < key) {
            out.push((j.meta.partition, GroupEvent::Shared(&j.event)));
        }
        out.push(event);
    }
    out.extend(joined.map(|j| (j.meta.partition, GroupEvent::Shared(&j.event))));
    out
}

/// An event's place in the processing order ([`Buffered::order_key`]).
type OrderKey = (Millis, shopstream_ingest::record::RecordMeta);
