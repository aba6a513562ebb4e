//! Cleaning that needs state: duplicate suppression and event-time sanity relative to the
//! stream itself.
//!
//! State is kept per input partition and only advanced by that partition's own events, so
//! the outcome for every message depends only on the partition's content, never on how
//! partitions interleave on arrival (replays decide exactly like the live run). The state is
//! serde-serialisable so it can be checkpointed with the rest of the job.
//!
//! - **Dedupe**: a retrying producer can write an event twice. The dedupe key is `event_id`
//!   (clicks, inventory) or `order_id` + `status` (orders, so a cancellation is not a
//!   duplicate of its placement). A key is remembered for `dedupe_horizon` of event time
//!   after the newest event of its partition; at most `max_keys` keys are kept per
//!   partition (the oldest are forgotten first, counted in [`Cleaner::evicted`]).
//! - **Future skew**: an event more than `max_future_skew` ahead of the newest event time
//!   already seen on its partition is *held* ([`Admission::Hold`]): if the partition's next
//!   event is also that far past the old reference, the stream really moved on (a gap in
//!   the data, an idle partition) and the held event is accepted ([`Resolution::Confirm`]);
//!   if the next event is normal, the held one is rejected as `out_of_range` on `ts`
//!   ([`Resolution::Reject`]). A producer with a broken clock would otherwise drag the
//!   watermark forward and make everyone else late, while a real jump must not be lost.

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};

// FxHash: fast, and deterministic across runs (the state serialises in the same order
// every time).
use rustc_hash::FxHashMap as HashMap;

use compact_str::format_compact;
use serde::{Deserialize, Serialize};

use crate::decode::{Reason, Rejection};
use crate::event::{Event, InputTopic, Millis, OrderStatus, Text};

/// Settings of the [`Cleaner`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CleanLimits {
    /// How long (event time) a key is remembered after the partition's newest event.
    pub dedupe_horizon_ms: Millis,
    /// Keys remembered per partition at most.
    pub max_keys: usize,
    /// How far ahead of its partition's newest event an event may be.
    pub max_future_skew_ms: Millis,
}

impl Default for CleanLimits {
    fn default() -> Self {
        Self {
            dedupe_horizon_ms: 3_600_000,
            max_keys: 200_000,
            max_future_skew_ms: 86_400_000,
        }
    }
}

/// What to do with an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// New and sane: process it.
    Accept,
    /// Seen before within the horizon: count it, do not process it.
    Duplicate,
    /// Insane relative to the stream: dead-letter it.
    Reject(Rejection),
    /// Far ahead of its partition: keep it until the partition's next event (or its end)
    /// decides, through [`Cleaner::resolve_held`].
    Hold,
}

/// The decision about a held event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// The next event confirmed the jump: admit the held event again (it now passes).
    Confirm,
    /// Not confirmed: dead-letter the held event.
    Reject(Rejection),
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct PartitionState {
    newest: Option<Millis>,
    /// Time of the event held for confirmation, if any.
    held: Option<Millis>,
    /// Each key remembered, with the time it was recorded at (a copy of the one in
    /// `order`: inline up to 24 bytes, so most keys cost no allocation).
    seen: HashMap<Text, Millis>,
    /// Keys in arrival order with their time, for expiry and eviction.
    order: VecDeque<(Millis, Text)>,
}

/// Duplicate and skew checks, per input partition.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Cleaner {
    limits: CleanLimits,
    #[serde(with = "crate::serde_entries")]
    partitions: BTreeMap<(InputTopic, i32), PartitionState>,
    evicted: u64,
}

fn skew_rejection(
    topic: InputTopic,
    partition: i32,
    ts: Millis,
    newest: Millis,
    limits: CleanLimits,
) -> Rejection {
    Rejection {
        reason: Reason::OutOfRange,
        field: Some("ts".to_string()),
        message: format!(
            "event time {ts} is {} s ahead of the newest event of {}/{partition} ({newest}) and the \
             partition's next event did not confirm the jump; limit is {} s",
            (ts - newest) / 1000,
            topic.as_str(),
            limits.max_future_skew_ms / 1000
        ),
    }
}

/// The dedupe key of an event: its event id (borrowed: a duplicate is found without a
/// copy), or for an order its id and status (inline up to 24 bytes, like the ids it is
/// made of).
pub fn dedupe_key(event: &Event) -> Cow<'_, Text> {
    match event {
        Event::Click(e) => Cow::Borrowed(&e.event_id),
        Event::Inventory(e) => Cow::Borrowed(&e.event_id),
        Event::Order(e) => Cow::Owned(match e.status {
            OrderStatus::Placed => format_compact!("{}#placed", e.order_id),
            OrderStatus::Cancelled => format_compact!("{}#cancelled", e.order_id),
        }),
    }
}

impl Cleaner {
    /// A cleaner with `limits`.
    pub fn new(limits: CleanLimits) -> Self {
        Self {
            limits,
            partitions: BTreeMap::new(),
            evicted: 0,
        }
    }

    /// Moves the state of the partitions `take` selects into a cleaner of their own (a
    /// thread or instance that reads only those); the evictions counted so far stay here.
    pub fn split_off(&mut self, take: impl Fn(InputTopic, i32) -> bool) -> Cleaner {
        let (taken, kept) = std::mem::take(&mut self.partitions)
            .into_iter()
            .partition(|((topic, partition), _)| take(*topic, *partition));
        self.partitions = kept;
        Self {
            limits: self.limits,
            partitions: taken,
            evicted: 0,
        }
    }

    /// Takes over the partitions (and the eviction count) of `other`, which must not
    /// share a partition with this one.
    pub fn absorb(&mut self, other: Cleaner) {
        self.partitions.extend(other.partitions);
        self.evicted += other.evicted;
    }

    /// Decides about `event`, read from `partition` of `topic`, and records it.
    pub fn admit(&mut self, topic: InputTopic, partition: i32, event: &Event) -> Admission {
        let limits = self.limits;
        let state = self.partitions.entry((topic, partition)).or_default();
        let ts = event.ts();
        if let Some(newest) = state.newest
            && ts > newest.saturating_add(limits.max_future_skew_ms)
        {
            if state.held.is_none() {
                state.held = Some(ts);
                return Admission::Hold;
            }
            return Admission::Reject(skew_rejection(topic, partition, ts, newest, limits));
        }
        let key = dedupe_key(event);
        let newest = state.newest.map_or(ts, |n| n.max(ts));
        // A key counts only while it is within the horizon of the partition's newest event,
        // this one included: an id reused long after (a day-later event after a restart
        // from a checkpoint, whose dedupe state still holds the old key) is not a copy.
        let horizon_start = newest.saturating_sub(limits.dedupe_horizon_ms);
        if state
            .seen
            .get(key.as_str())
            .is_some_and(|seen_at| *seen_at >= horizon_start)
        {
            return Admission::Duplicate;
        }
        state.newest = Some(newest);
        let key = key.into_owned();
        state.seen.insert(key.clone(), ts);
        state.order.push_back((ts, key));
        // Forget keys that fell out of the horizon, then enforce the size bound.
        while let Some((front_ts, _)) = state.order.front() {
            let expired = *front_ts < horizon_start;
            let over = state.order.len() > limits.max_keys;
            if !expired && !over {
                break;
            }
            if let Some((front_ts, key)) = state.order.pop_front() {
                // The key may have been seen again since (reused after the horizon): only
                // the entry this one recorded goes.
                if state.seen.get(&*key) == Some(&front_ts) {
                    state.seen.remove(&*key);
                }
                if !expired {
                    self.evicted += 1;
                }
            }
        }
        Admission::Accept
    }

    /// Decides about the event held on `partition`, given the time of the partition's next
    /// event (`None`: the partition has no next event now). Call before admitting that
    /// next event. Only a next event that contradicts the jump rejects the held one: with
    /// no next event (end of a partition, shutdown) it is accepted, since sparse partitions
    /// have long gaps and a consumed event must not be lost for want of a successor.
    pub fn resolve_held(
        &mut self,
        topic: InputTopic,
        partition: i32,
        next_ts: Option<Millis>,
    ) -> Option<Resolution> {
        let limits = self.limits;
        let state = self.partitions.get_mut(&(topic, partition))?;
        let held = state.held.take()?;
        let newest = state.newest.unwrap_or(held);
        let skew = limits.max_future_skew_ms;
        // The next event confirms when it, too, is past the old reference: the stream moved
        // on (however sparse it is afterwards). A normal next event contradicts; with no
        // next event nothing contradicts.
        let confirmed = next_ts.is_none_or(|next| next > newest.saturating_add(skew));
        if confirmed {
            // The stream moved: the held event becomes the partition's reference.
            state.newest = Some(held);
            Some(Resolution::Confirm)
        } else {
            Some(Resolution::Reject(skew_rejection(
                topic, partition, held, newest, limits,
            )))
        }
    }

    /// Keys forgotten because of the size bound, before their horizon ended.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Keys remembered, over all partitions.
    pub fn remembered(&self) -> usize {
        self.partitions.values().map(|p| p.seen.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{InventoryEvent, InventoryKind, OrderEvent, OrderLine};

    fn inv(id: &str, ts: Millis) -> Event {
        Event::Inventory(InventoryEvent {
            event_id: id.into(),
            ts,
            item_id: "i".into(),
            kind: InventoryKind::Snapshot,
            on_hand: Some(1),
            delta: None,
            price: None,
            category: None,
        })
    }

    fn order(id: &str, ts: Millis, status: OrderStatus) -> Event {
        Event::Order(OrderEvent {
            order_id: id.into(),
            ts,
            user_id: "u".into(),
            status,
            lines: vec![OrderLine {
                item_id: "i".into(),
                quantity: 1,
                unit_price: 1.0,
            }],
            currency: "EUR".into(),
        })
    }

    const T: Millis = 1_767_571_200_000;

    #[test]
    fn duplicates_within_the_horizon_are_caught_per_partition() {
        let mut c = Cleaner::new(CleanLimits::default());
        assert_eq!(
            c.admit(InputTopic::Inventory, 0, &inv("a", T)),
            Admission::Accept
        );
        assert_eq!(
            c.admit(InputTopic::Inventory, 0, &inv("a", T + 5)),
            Admission::Duplicate
        );
        // The same id on another partition is another producer's event.
        assert_eq!(
            c.admit(InputTopic::Inventory, 1, &inv("a", T)),
            Admission::Accept
        );
    }

    /// Regression: a restored dedupe state flagged a day-later event whose id had been
    /// used a day earlier as a duplicate (the key had not been expired yet because no
    /// newer event had arrived since).
    #[test]
    fn an_id_reused_after_the_horizon_is_not_a_duplicate() {
        let mut c = Cleaner::new(CleanLimits::default());
        let horizon = CleanLimits::default().dedupe_horizon_ms;
        assert_eq!(
            c.admit(InputTopic::Inventory, 0, &inv("a", T)),
            Admission::Accept
        );
        let later = T + horizon + 1;
        assert_eq!(
            c.admit(InputTopic::Inventory, 0, &inv("a", later)),
            Admission::Accept
        );
        // ... and its copy within the horizon still is one.
        assert_eq!(
            c.admit(InputTopic::Inventory, 0, &inv("a", later + 5)),
            Admission::Duplicate
        );
    }

    #[test]
    fn cancellation_is_not_a_duplicate_of_its_order() {
        let mut c = Cleaner::new(CleanLimits::default());
        assert_eq!(
            c.admit(InputTopic::Orders, 0, &order("o1", T, OrderStatus::Placed)),
            Admission::Accept
        );
        assert_eq!(
            c.admit(
                InputTopic::Orders,
                0,
                &order("o1", T + 9, OrderStatus::Cancelled)
            ),
            Admission::Accept
        );
        assert_eq!(
            c.admit(
                InputTopic::Orders,
                0,
                &order("o1", T + 9, OrderStatus::Cancelled)
            ),
            Admission::Duplicate
        );
    }

    #[test]
    fn keys_expire_after_the_horizon_and_memory_is_bounded() {
        let limits = CleanLimits {
            dedupe_horizon_ms: 1_000,
            max_keys: 10,
            ..CleanLimits::default()
        };
        let mut c = Cleaner::new(limits);
        c.admit(InputTopic::Clicks, 0, &inv("old", T));
        c.admit(InputTopic::Clicks, 0, &inv("new", T + 5_000));
        assert_eq!(c.remembered(), 1, "old expired");
        assert_eq!(
            c.admit(InputTopic::Clicks, 0, &inv("old", T + 5_001)),
            Admission::Accept
        );
        for i in 0..100 {
            c.admit(InputTopic::Clicks, 0, &inv(&format!("k{i}"), T + 5_002));
        }
        assert_eq!(c.remembered(), 10);
        assert!(c.evicted() > 0);
    }

    #[test]
    fn far_future_event_is_rejected_relative_to_its_partition() {
        let mut c = Cleaner::new(CleanLimits::default());
        c.admit(InputTopic::Clicks, 0, &inv("a", T));
        let ahead = T + 2 * 86_400_000;
        assert_eq!(
            c.admit(InputTopic::Clicks, 0, &inv("b", ahead)),
            Admission::Hold
        );
        // The next event is normal: the held one was a broken clock.
        let Some(Resolution::Reject(r)) = c.resolve_held(InputTopic::Clicks, 0, Some(T + 5)) else {
            panic!("must be rejected");
        };
        assert_eq!(
            (r.reason, r.field.as_deref()),
            (Reason::OutOfRange, Some("ts"))
        );
        assert_eq!(
            c.admit(InputTopic::Clicks, 0, &inv("c", T + 5)),
            Admission::Accept
        );
        // Old data replayed later is judged by its own stream, not the wall clock.
        assert_eq!(
            c.admit(InputTopic::Clicks, 1, &inv("d", 1_500_000_000_000)),
            Admission::Accept
        );
    }

    /// Regression: a straggler from months earlier, first on its partition, made every
    /// later event look far ahead, and all of them were dead-lettered (seen on the Taobao
    /// sample). A jump confirmed by the next event is accepted.
    #[test]
    fn a_gap_in_the_stream_is_accepted_once_confirmed() {
        let mut c = Cleaner::new(CleanLimits::default());
        let later = T + 75 * 86_400_000;
        assert_eq!(
            c.admit(InputTopic::Clicks, 0, &inv("straggler", T)),
            Admission::Accept
        );
        assert_eq!(
            c.admit(InputTopic::Clicks, 0, &inv("x", later)),
            Admission::Hold
        );
        assert_eq!(
            c.resolve_held(InputTopic::Clicks, 0, Some(later + 60_000)),
            Some(Resolution::Confirm)
        );
        assert_eq!(
            c.admit(InputTopic::Clicks, 0, &inv("x", later)),
            Admission::Accept
        );
        assert_eq!(
            c.admit(InputTopic::Clicks, 0, &inv("y", later + 60_000)),
            Admission::Accept
        );
        // A held event with nothing after it (a sparse partition's last event after a long
        // gap) is accepted: nothing contradicts it.
        assert_eq!(
            c.admit(InputTopic::Clicks, 0, &inv("z", later + 9 * 86_400_000)),
            Admission::Hold
        );
        assert_eq!(
            c.resolve_held(InputTopic::Clicks, 0, None),
            Some(Resolution::Confirm)
        );
        assert_eq!(c.resolve_held(InputTopic::Clicks, 0, None), None);
    }

    #[test]
    fn state_round_trips_through_serde() {
        let mut c = Cleaner::new(CleanLimits::default());
        c.admit(InputTopic::Clicks, 0, &inv("a", T));
        let json = serde_json::to_string(&c).expect("serialise");
        let mut back: Cleaner = serde_json::from_str(&json).expect("deserialise");
        assert_eq!(
            back.admit(InputTopic::Clicks, 0, &inv("a", T)),
            Admission::Duplicate
        );
    }
}
