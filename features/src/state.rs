//! Feature state and the event-time joins.
//!
//! State is scoped by input partition: clicks and orders are co-partitioned by user, so
//! everything a user touches (the user's counters, their impressions waiting for labels,
//! their clicks and orders for attribution) lives in the state of that partition number,
//! and a partition's state can move between instances as a unit. Item counters are kept
//! per partition too (partial aggregates over the partition's users), which keeps them
//! deterministic and movable; inventory is a global table (every instance reads all of
//! it), joined as of event time.
//!
//! Joins, all in event time and applied in (ts, topic, partition, offset) order:
//! - **click**: a click labels the latest earlier impression of the same user, item and
//!   session within the click window;
//! - **attribution** (last touch): an order line is attributed to the latest click of the
//!   same user on the same item strictly before the order and at most the attribution
//!   window before it; the click's impression becomes `converted` with the line's
//!   quantity and revenue; a cancellation before the label matures sets `cancelled`;
//! - **inventory as of**: on hand, price and category of the item from the inventory
//!   events applied before the impression.
//!
//! An impression's example is emitted once a closed window ends later than
//! `ts + click window + attribution window`: no later event can change its labels.

use std::collections::BTreeMap;

// FxHash: fast, and deterministic across runs (state serialises the same way every time).
use rustc_hash::FxHashMap as HashMap;

use serde::{Deserialize, Serialize};
use shopstream_ingest::event::{
    ClickEvent, ClickKind, Event, Millis, OrderEvent, OrderStatus, Text, heap_bytes,
};

use crate::category::Category;
use crate::example::{Example, Features, Labels};
use crate::id_map::{IdKey, IdMap};
use crate::inventory::{Inventory, InventoryRow};
use crate::niche::OptI64;
use crate::pending::{
    HeldFeatures, Pending, PendingKey, PendingQueue, SessionIndex, SessionKeys, session_hash,
};
use crate::rolling::{Counts, DAY, HOUR, Rolling};
use crate::time_order::merge_in_time_order;

/// Time limits of the joins and of state retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateLimits {
    /// Click join window.
    pub click_window_ms: Millis,
    /// Attribution window (click -> order).
    pub attribution_ms: Millis,
    /// Keys without activity for this long are forgotten.
    pub ttl_ms: Millis,
}

/// Demand features of one item at a window boundary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DemandFeatures {
    /// The item (shared with the sold-items index: a window's snapshot copies no ids).
    pub item_id: std::sync::Arc<str>,
    /// The boundary (start of the window forecast).
    pub at: Millis,
    /// Units sold over 1 h, 24 h, 7 d before `at`.
    pub sales: crate::rolling::Horizons,
    /// Units on hand at `at`.
    pub on_hand: Option<i64>,
    /// List price at `at`.
    pub price: Option<f64>,
}

/// A demand training row: features at a window's start, units sold during the window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DemandRow {
    /// Features as of the window's start.
    pub features: DemandFeatures,
    /// Units sold in the window.
    pub units: i64,
}

/// Most categories remembered per user for the affinity feature.
const MAX_CATEGORIES: usize = 8;
/// Time constant of the decayed category affinity.
const AFFINITY_TAU_MS: f64 = 7.0 * 86_400_000.0;
/// How often (event time) expired keys are swept.
const SWEEP_EVERY_MS: Millis = 3_600_000;

/// The hour of the day (0-23) and the day of the week (Monday 0) of `ts`, in UTC: what
/// chrono gives, without its calendar (only whole days and hours since the epoch matter);
/// 1970-01-01 00:00, a Thursday, for a time outside chrono's range, as before.
fn hour_and_weekday(ts: Millis) -> (u8, u8) {
    const FIRST: Millis = chrono::DateTime::<chrono::Utc>::MIN_UTC.timestamp_millis();
    const LAST: Millis = chrono::DateTime::<chrono::Utc>::MAX_UTC.timestamp_millis();
    /// 1970-01-01 was a Thursday.
    const EPOCH_WEEKDAY: Millis = 3;
    if !(FIRST..=LAST).contains(&ts) {
        return (0, EPOCH_WEEKDAY as u8);
    }
    let hour = ts.div_euclid(HOUR).rem_euclid(24);
    let weekday = (ts.div_euclid(DAY) + EPOCH_WEEKDAY).rem_euclid(7);
    (hour as u8, weekday as u8)
}

/// `event` and its item if it is an impression of an item: one an example is made of.
fn impression_with_item(event: &Event) -> Option<(&ClickEvent, &str)> {
    match event {
        Event::Click(c) if c.kind == ClickKind::Impression => {
            c.item_id.as_deref().map(|item| (c, item))
        }
        _ => None,
    }
}

/// An event of a same-timestamp group ([`FeatureState::apply_group`]).
#[derive(Debug)]
pub enum GroupEvent<'a> {
    /// The applier's own event, dropped after the group: an impression's example takes
    /// its ids and device instead of copying them.
    Owned(Event),
    /// An event that others apply too (the inventory's, which every shard joins).
    Shared(&'a Event),
}

impl GroupEvent<'_> {
    /// The event.
    pub fn event(&self) -> &Event {
        match self {
            Self::Owned(event) => event,
            Self::Shared(event) => event,
        }
    }

    /// The ids and device an impression's example keeps, and its time: taken out of an
    /// owned event, copied from a shared one. `None` if this is not an impression of an
    /// item.
    fn impression_ids(&mut self) -> Option<(ImpressionIds, Millis)> {
        match self {
            Self::Owned(Event::Click(c)) => Some((
                ImpressionIds {
                    item_id: c.item_id.take()?,
                    event_id: std::mem::take(&mut c.event_id),
                    user_id: std::mem::take(&mut c.user_id),
                    session_id: std::mem::take(&mut c.session_id),
                    device: c.device.take(),
                },
                c.ts,
            )),
            Self::Shared(Event::Click(c)) => Some((
                ImpressionIds {
                    item_id: c.item_id.clone()?,
                    event_id: c.event_id.clone(),
                    user_id: c.user_id.clone(),
                    session_id: c.session_id.clone(),
                    device: c.device.clone(),
                },
                c.ts,
            )),
            _ => None,
        }
    }
}

/// The ids of an impression that its pending example keeps, and its device.
struct ImpressionIds {
    event_id: Text,
    user_id: Text,
    item_id: Text,
    session_id: Text,
    device: Option<Text>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct UserState {
    rolling: Rolling,
    /// Time of the user's latest event (8 bytes; serialised as an `Option`).
    last_ts: OptI64,
    /// Per category: decayed clicks and decayed impressions, as of `categories_ts`. A
    /// boxed slice of exactly the categories kept (16 B, a `Vec` is 24).
    categories: Box<[CategoryScore]>,
    categories_ts: Millis,
}

/// A user's decayed activity in one category.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct CategoryScore {
    /// The inventory's shared copy of the name (a copy of its own after a restore, until
    /// the user's next event in the category).
    category: Category,
    clicks: f32,
    shown: f32,
}

/// An item's counters in one partition. When it was last seen is not kept: its newest
/// 10-minute bucket says so closely enough for the TTL (8 bytes less per entry).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(from = "ItemFields")]
struct ItemState {
    rolling: Rolling,
}

/// The serialised shape of an [`ItemState`], as read back (`last_ts` is not needed).
#[derive(Deserialize)]
struct ItemFields {
    rolling: Rolling,
    #[serde(default, rename = "last_ts")]
    _last_ts: Millis,
}

impl From<ItemFields> for ItemState {
    fn from(f: ItemFields) -> Self {
        Self { rolling: f.rolling }
    }
}

/// The serialised shape of an [`ItemState`]: `last_ts`, read by builds that kept it, is
/// the latest time its newest event may have had ([`Rolling::latest_possible`]).
#[derive(Serialize)]
struct ItemView<'a> {
    rolling: &'a Rolling,
    last_ts: Millis,
}

impl Serialize for ItemState {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        ItemView {
            rolling: &self.rolling,
            last_ts: self.rolling.latest_possible().unwrap_or(Millis::MIN),
        }
        .serialize(serializer)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct PartitionState {
    users: IdMap<UserState>,
    items: IdMap<ItemState>,
    /// Impressions waiting for labels, in key order.
    pending: PendingQueue,
    /// The pending impressions by user, item and session, for the click join (derived
    /// from `pending`, so not serialised).
    #[serde(skip)]
    by_session: SessionIndex,
    /// user \x1f item -> recent clicks (time, the impression they labelled).
    clicks: HashMap<Text, Clicks>,
    /// order id -> (order time, impressions it was attributed to), for cancellations.
    orders: IdMap<(Millis, Box<[PendingKey]>)>,
    seq: u64,
    last_sweep: Millis,
}

thread_local! {
    /// The buffer [`with_join_key`] builds keys in.
    static JOIN_KEY: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// Calls `f` with the join key of `parts` (joined by \x1f, the separator the maps'
/// documentation shows), built in a reused buffer: a lookup (one or two per event, and one
/// per matured example) allocates nothing. `f` must not call it again.
fn with_join_key<R>(parts: &[&str], f: impl FnOnce(&str) -> R) -> R {
    JOIN_KEY.with_borrow_mut(|key| {
        key.clear();
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                key.push('\u{1f}');
            }
            key.push_str(part);
        }
        f(key)
    })
}

/// A user's recent clicks on an item: (time, the impression they labelled). A boxed slice
/// of exactly the clicks kept: most keys hold one, for which a `Vec` would hold room for
/// four.
type Clicks = Box<[(Millis, Option<PendingKey>)]>;

/// Appends `value` to the list of the join key of `parts` in `map`, then keeps the values
/// for which `keep` holds; the key is made only when it is new (inline up to 24 bytes).
fn push_keyed<V>(
    map: &mut HashMap<Text, Box<[V]>>,
    parts: &[&str],
    value: V,
    mut keep: impl FnMut(&V) -> bool,
) {
    with_join_key(parts, move |key| match map.get_mut(key) {
        Some(list) => {
            let mut values = std::mem::take(list).into_vec();
            // Room for exactly one more: the list goes back into a box of its length.
            values.reserve_exact(1);
            values.push(value);
            values.retain(keep);
            *list = values.into_boxed_slice();
        }
        None => {
            if keep(&value) {
                map.insert(Text::from(key), Box::new([value]));
            }
        }
    })
}

/// Keeps the values of `list` for which `keep` holds, reallocating only if one goes.
fn retain_boxed<V>(list: &mut Box<[V]>, mut keep: impl FnMut(&V) -> bool) {
    if !list.iter().all(&mut keep) {
        let mut values = std::mem::take(list).into_vec();
        values.retain(keep);
        *list = values.into_boxed_slice();
    }
}

/// Everything the features of the next event may depend on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureState {
    limits: StateLimits,
    partitions: BTreeMap<i32, PartitionState>,
    /// The inventory table (of the coordinator, or of a shard set's template); in a
    /// shard, which joins a table it is given (its base), only the rows that the close
    /// being applied has changed, empty between closes.
    inventory: Inventory,
    /// Users of the window being applied, at their first impression in it (drained by
    /// [`FeatureState::take_window_users`] when the window's output is made, so empty in
    /// the job's checkpoints, which are taken between windows).
    #[serde(default)]
    window_users: Vec<(Millis, UserArrival)>,
    /// Each user with an event in the window being applied (see [`WindowUser`]); empty
    /// in checkpoints, like `window_users` (it serialises packed ids first, so a
    /// non-empty one would not write the bytes the `HashMap` it replaced wrote).
    #[serde(default)]
    window_user_state: IdMap<WindowUser>,
    /// Whether inventory sales are counted (for item demand). A shard, which joins its
    /// base's table, needs only what features join (on hand, price, category).
    #[serde(default = "counts_sales")]
    counts_sales: bool,
    /// The features of a group's impressions while [`FeatureState::apply_group`] applies
    /// the group; empty between calls. Kept to reuse its allocation: most groups are one
    /// event, and a new list each would be one allocation per impression. Its capacity
    /// follows the most impressions one group has held (one millisecond of one shard's
    /// input).
    #[serde(skip)]
    group_features: Vec<(usize, HeldFeatures)>,
}

fn counts_sales() -> bool {
    true
}

/// A user of the window being applied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
struct WindowUser {
    /// The state held the user before the window (taken at the user's first event in it:
    /// a search 300 ms before a new user's first impression must not make them known).
    known: bool,
    /// Listed in `window_users` already.
    listed: bool,
}

/// A user as the window's first impression of them found them: what drift monitoring
/// counts once per user (device, new or returning), since a user's impressions share
/// both and are not independent draws.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserArrival {
    /// The user.
    pub user_id: Text,
    /// Device class of that impression.
    pub device: Option<Text>,
    /// The state held nothing of the user before the window (no event within the TTL).
    pub new_user: bool,
}

impl FeatureState {
    /// Empty state.
    pub fn new(limits: StateLimits) -> Self {
        Self {
            limits,
            partitions: BTreeMap::new(),
            inventory: Inventory::default(),
            window_users: Vec::new(),
            window_user_state: IdMap::default(),
            counts_sales: true,
            group_features: Vec::new(),
        }
    }

    /// Empty keyed state with a copy of `other`'s inventory table: the state of a shard
    /// set's template, the base its shards join, which applies every close after them.
    /// It does not count sales (demand is made once, from the coordinator's table).
    pub fn replica_of(other: &FeatureState) -> Self {
        Self {
            inventory: other.inventory.replica(),
            counts_sales: false,
            ..Self::new(other.limits)
        }
    }

    /// Empty keyed state, with `other`'s limits, of a shard that joins `other`'s
    /// inventory: every close is applied with `other` as its base (see
    /// [`FeatureState::apply_group`]), and `other` applies the close after every shard.
    /// It does not count sales (demand is made once, from the table itself).
    pub fn joining(other: &FeatureState) -> Self {
        Self {
            counts_sales: false,
            ..Self::new(other.limits)
        }
    }

    /// The inventory row of `item`: from the rows this state changed (its own table, or
    /// in a shard the rows its close changed so far), else from `base`'s table.
    fn inventory_row<'a>(
        inventory: &'a Inventory,
        base: Option<&'a FeatureState>,
        item: IdKey<'_>,
    ) -> Option<&'a InventoryRow> {
        inventory
            .get_key(item)
            .or_else(|| base.and_then(|b| b.inventory.get_key(item)))
    }

    /// Features of impression `click` read from `partition`, from the current state
    /// joined with `base`'s inventory (a shard's; `None` for a state that holds its own).
    pub fn features_of(
        &self,
        base: Option<&FeatureState>,
        partition: i32,
        click: &ClickEvent,
    ) -> Features {
        let item_id = click.item_id.as_deref().unwrap_or_default();
        let keys = (IdKey::of(&click.user_id), IdKey::of(item_id));
        Features {
            device: click.device.clone(),
            ..self.features_but_device(base, partition, click, keys)
        }
    }

    /// [`FeatureState::features_of`] without the device, which an impression applied in
    /// [`FeatureState::apply_group`] takes from its event instead of copying; `user` and
    /// `item` are the keys of the click's user and item (its item id, or empty).
    fn features_but_device(
        &self,
        base: Option<&FeatureState>,
        partition: i32,
        click: &ClickEvent,
        (user, item): (IdKey<'_>, IdKey<'_>),
    ) -> Features {
        let state = self.partitions.get(&partition);
        let inventory = Self::inventory_row(&self.inventory, base, item);
        let user = state.and_then(|s| s.users.get_key(user));
        let item = state.and_then(|s| s.items.get_key(item));
        let category = inventory.and_then(|i| i.category.as_ref());
        let (hour_of_day, day_of_week) = hour_and_weekday(click.ts);
        Features {
            scenario: click.scenario,
            device: None,
            position: click.position,
            price: click.price,
            hour_of_day,
            day_of_week,
            user: user.map(|u| u.rolling.totals(click.ts)).unwrap_or_default(),
            user_recency_secs: user
                .and_then(|u| u.last_ts.get())
                .map(|t| (click.ts - t) as f64 / 1000.0),
            user_category_affinity: match (user, &category) {
                (Some(u), Some(c)) => u.category_share(c, |s| s.clicks),
                _ => 0.0,
            },
            user_category_exposure: match (user, &category) {
                (Some(u), Some(c)) => u.category_share(c, |s| s.shown),
                _ => 0.0,
            },
            item: item.map(|i| i.rolling.totals(click.ts)).unwrap_or_default(),
            item_category: category.cloned(),
            item_price: inventory.and_then(|i| i.price.get()),
            item_on_hand: inventory.and_then(|i| i.on_hand.get()),
        }
    }

    /// Applies a group of events that share one timestamp, each with the partition it
    /// was read from. Features of the group's impressions are taken before any of the
    /// group is applied, so an example never sees an event of its own millisecond (no
    /// leakage). An impression's example takes its ids and device from an owned event
    /// (which is left without them) and copies them from a shared one. A shard passes the
    /// `base` whose inventory it joins ([`FeatureState::joining`]).
    pub fn apply_group(
        &mut self,
        group: &mut [(i32, GroupEvent<'_>)],
        base: Option<&FeatureState>,
    ) {
        let mut new_pending = std::mem::take(&mut self.group_features);
        for (at, (partition, event)) in group.iter().enumerate() {
            if let Some((c, item)) = impression_with_item(event.event()) {
                // Each id packed once for the maps it is looked up in.
                let keys = (IdKey::of(&c.user_id), IdKey::of(item));
                let features = self.features_but_device(base, *partition, c, keys);
                let user = self.window_user(*partition, keys.0);
                let (first, known) = (!user.listed, user.known);
                user.listed = true;
                if first {
                    let arrival = UserArrival {
                        user_id: c.user_id.clone(),
                        device: c.device.clone(),
                        new_user: !known,
                    };
                    self.window_users.push((c.ts, arrival));
                }
                new_pending.push((at, HeldFeatures::new(features)));
            }
        }
        for (partition, event) in group.iter() {
            let event = event.event();
            // An impression's user is in the window's users already (above).
            if impression_with_item(event).is_none() {
                self.register_window_user(*partition, event);
            }
            self.apply(*partition, event, base);
        }
        for (at, mut features) in new_pending.drain(..) {
            let (partition, event) = &mut group[at];
            let Some((ids, ts)) = event.impression_ids() else {
                continue;
            };
            features.set_device(ids.device);
            let pending = Pending {
                event_id: ids.event_id,
                user_id: ids.user_id,
                item_id: ids.item_id,
                session: ids.session_id,
                features,
                labels: Labels::default(),
            };
            let state = self.partitions.entry(*partition).or_default();
            state.seq += 1;
            let key = (ts, state.seq);
            state.session_index().insert(pending.session_hash(), key);
            state.pending.insert(key, pending);
        }
        self.group_features = new_pending;
    }

    /// The user `user` in the window being applied, recorded at its first event in it.
    fn window_user(&mut self, partition: i32, user: IdKey<'_>) -> &mut WindowUser {
        let partitions = &self.partitions;
        self.window_user_state
            .get_or_insert_with_key(user, || WindowUser {
                known: partitions
                    .get(&partition)
                    .is_some_and(|p| p.users.get_key(user).is_some()),
                listed: false,
            })
    }

    /// Records the user of `event` among the window's users.
    fn register_window_user(&mut self, partition: i32, event: &Event) {
        match event {
            Event::Click(c) => _ = self.window_user(partition, IdKey::of(&c.user_id)),
            Event::Order(o) => _ = self.window_user(partition, IdKey::of(&o.user_id)),
            Event::Inventory(_) => {}
        }
    }

    /// Applies `event` to the state; its user is among the window's users already.
    fn apply(&mut self, partition: i32, event: &Event, base: Option<&FeatureState>) {
        let limits = self.limits;
        match event {
            Event::Inventory(e) => match base {
                Some(base) => self.inventory.apply_over(&base.inventory, e),
                None => self.inventory.apply(e, self.counts_sales),
            },
            Event::Click(c) => {
                // Each id packed once for the maps it is looked up in.
                let item = c.item_id.as_deref().map(|id| (id, IdKey::of(id)));
                let category = item
                    .and_then(|(_, key)| Self::inventory_row(&self.inventory, base, key))
                    .and_then(|r| r.category.as_ref());
                let keys = (IdKey::of(&c.user_id), item);
                let state = self.partitions.entry(partition).or_default();
                state.sweep(c.ts, limits);
                state.apply_click(c, category, limits, keys);
            }
            Event::Order(o) => {
                let state = self.partitions.entry(partition).or_default();
                state.sweep(o.ts, limits);
                state.apply_order(o, limits);
            }
        }
    }

    /// Drops the rows a shard's close changed, once its base has applied them too.
    pub(crate) fn end_close(&mut self) {
        self.inventory = Inventory::default();
    }

    /// Removes and returns, in (ts, partition, order) order, the examples whose labels can
    /// no longer change before `boundary` (the end of the window just closed).
    pub fn mature_before(&mut self, boundary: Millis) -> Vec<Example> {
        let horizon = self.limits.click_window_ms + self.limits.attribution_ms;
        let due = |key: &PendingKey| key.0 + horizon < boundary;
        let mut runs = Vec::with_capacity(self.partitions.len());
        for (partition, state) in &mut self.partitions {
            // Each partition's examples in key order, (ts, order applied): merged by
            // (ts, partition) they are in (ts, partition, order applied) order.
            let mut run = Vec::with_capacity(state.pending.0.partition_point(|(k, _)| due(k)));
            while let Some((key, _)) = state.pending.0.front() {
                if !due(key) {
                    break;
                }
                let Some((key, pending)) = state.pending.0.pop_front() else {
                    break;
                };
                state.unindex(key, &pending);
                run.push(pending.into_example(key.0));
            }
            runs.push((*partition, run));
        }
        merge_in_time_order(runs)
    }

    /// Removes and returns every pending example (end of input).
    pub fn mature_all(&mut self) -> Vec<Example> {
        self.mature_before(Millis::MAX)
    }

    /// Demand features of every item sold within the last 7 days, as of `at` (a window
    /// boundary), sorted by item id; the forecast for the next window is made from these.
    /// Shared: the state keeps it to copy from at the next boundary.
    pub fn demand_snapshot(&mut self, at: Millis) -> std::sync::Arc<Vec<DemandFeatures>> {
        self.inventory.demand_snapshot(at)
    }

    /// Users of the window just applied, with the time of their first impression in it,
    /// in that order (resets the list).
    pub fn take_window_users(&mut self) -> Vec<(Millis, UserArrival)> {
        self.window_user_state.clear();
        std::mem::take(&mut self.window_users)
    }

    /// Units each item sold in the window just applied, each item once, in the order of
    /// its first sale in the window (resets the counters).
    pub fn take_window_units(&mut self) -> Vec<(std::sync::Arc<str>, i64)> {
        self.inventory.take_window_units()
    }

    /// Drops everything keyed by one of `users` (erasure, `shopstream store forget`):
    /// their rolling features, their impressions waiting for labels (whose examples are
    /// then never written), their click and session join entries and their window
    /// bookkeeping. Returns the entries dropped. Orders keep their ids: the impressions
    /// they point to are gone, and a cancellation of them finds nothing.
    pub fn forget_users(&mut self, users: &std::collections::BTreeSet<String>) -> usize {
        if users.is_empty() {
            return 0;
        }
        let of_user = |key: &str| {
            key.split_once('\u{1f}')
                .is_some_and(|(user, _)| users.contains(user))
        };
        let mut dropped = 0;
        for partition in self.partitions.values_mut() {
            let before = partition.users.len()
                + partition.pending.len()
                + partition.session_index().keys.len()
                + partition.clicks.len();
            partition.users.retain_ids(|user, _| !users.contains(user));
            partition
                .pending
                .0
                .retain(|(_, p)| !users.contains(&*p.user_id));
            // Rebuilt from what stays pending.
            partition.by_session = SessionIndex::default();
            partition.clicks.retain(|key, _| !of_user(key));
            dropped += before
                - (partition.users.len()
                    + partition.pending.len()
                    + partition.session_index().keys.len()
                    + partition.clicks.len());
        }
        let before = self.window_users.len() + self.window_user_state.len();
        self.window_users
            .retain(|(_, arrival)| !users.contains(arrival.user_id.as_str()));
        self.window_user_state
            .retain_ids(|user, _| !users.contains(user));
        dropped + before - (self.window_users.len() + self.window_user_state.len())
    }

    /// Impressions waiting for their labels.
    pub fn pending_len(&self) -> usize {
        self.partitions.values().map(|s| s.pending.len()).sum()
    }

    /// Event time of the oldest impression still waiting for its labels, if any.
    pub fn oldest_pending_ts(&self) -> Option<Millis> {
        self.partitions
            .values()
            .filter_map(|s| s.pending.0.front().map(|(key, _)| key.0))
            .min()
    }

    /// Users and items with state, for memory accounting.
    pub fn key_counts(&self) -> (usize, usize) {
        self.partitions
            .values()
            .fold((0, 0), |(u, i), s| (u + s.users.len(), i + s.items.len()))
    }

    /// Approximate bytes held, for the memory benchmark: entry sizes plus what their text
    /// holds on the heap (hash table slack not included).
    pub fn approx_bytes(&self) -> StateBytes {
        use std::mem::size_of;
        let mut bytes = StateBytes::default();
        for s in self.partitions.values() {
            bytes.users += s.users.approx_bytes(|u| {
                u.rolling.heap_bytes()
                    + u.categories
                        .iter()
                        .map(|c| size_of::<CategoryScore>() + c.category.shared_bytes())
                        .sum::<usize>()
            });
            bytes.items += s.items.approx_bytes(|i| i.rolling.heap_bytes());
            bytes.joins += s
                .clicks
                .iter()
                .map(|(k, v)| heap_bytes(k) + size_of::<(Text, Clicks)>() + size_of_val(&**v))
                .sum::<usize>();
            bytes.joins += s.orders.approx_bytes(|(_, keys)| size_of_val(&**keys));
            bytes.pending += s.pending.values().map(Pending::approx_bytes).sum::<usize>();
            bytes.pending += s
                .by_session
                .keys
                .values()
                .map(SessionKeys::approx_bytes)
                .sum::<usize>();
        }
        bytes.inventory = self.inventory.approx_bytes();
        bytes
    }
}

/// Approximate memory of the feature state, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateBytes {
    /// The per-user entries (rolling counters, category affinities).
    pub users: usize,
    /// The per-(partition, item) entries (rolling counters).
    pub items: usize,
    /// The click and order join indexes.
    pub joins: usize,
    /// The inventory (the coordinator's table with its sales, a shard set's template, or
    /// the rows a shard's close changed: none between closes).
    pub inventory: usize,
    /// Impressions waiting for their labels, and their click-join index.
    pub pending: usize,
}

impl StateBytes {
    /// Keyed state: users, items, join indexes and inventory (everything but `pending`).
    pub fn keyed(&self) -> usize {
        self.users + self.items + self.joins + self.inventory
    }
}

impl std::ops::Add for StateBytes {
    type Output = StateBytes;

    fn add(self, other: StateBytes) -> StateBytes {
        StateBytes {
            users: self.users + other.users,
            items: self.items + other.items,
            joins: self.joins + other.joins,
            inventory: self.inventory + other.inventory,
            pending: self.pending + other.pending,
        }
    }
}

impl UserState {
    /// Counts an event of the user at `ts`.
    fn count(&mut self, ts: Millis, delta: Counts) {
        self.rolling.add(ts, delta);
        self.last_ts = Some(ts).into();
    }

    /// Counts an impression (`clicked` false) or a click in `category` at `ts`, after
    /// decaying every category's scores to `ts`.
    fn count_category(&mut self, category: &Category, ts: Millis, clicked: bool) {
        let decay = (-((ts - self.categories_ts).max(0) as f64) / AFFINITY_TAU_MS).exp() as f32;
        for score in &mut self.categories {
            score.clicks *= decay;
            score.shown *= decay;
        }
        self.categories_ts = ts;
        let (clicks, shown) = if clicked { (1.0, 0.0) } else { (0.0, 1.0) };
        if let Some(score) = self.categories.iter_mut().find(|s| s.category == *category) {
            if !score.category.ptr_eq(category) {
                // Read back from a checkpoint: share the inventory's copy again.
                score.category = category.clone();
            }
            score.clicks += clicks;
            score.shown += shown;
            return;
        }
        let mut evict = None;
        if self.categories.len() >= MAX_CATEGORIES {
            // Forget the least active category, the first of equals among the kept ones
            // before the new one: the new one goes (unallocated) only when it is less
            // active than all of them.
            let activity = |s: &CategoryScore| s.clicks + s.shown;
            let (weakest, least) = self
                .categories
                .iter()
                .enumerate()
                .min_by(|a, b| activity(a.1).total_cmp(&activity(b.1)))
                .map_or((0, 0.0), |(i, s)| (i, activity(s)));
            if clicks + shown < least {
                return;
            }
            evict = Some(weakest);
        }
        // Taken as a vector and back: it reallocates only when it grows.
        let mut categories = std::mem::take(&mut self.categories).into_vec();
        if let Some(weakest) = evict {
            categories.remove(weakest);
        } else {
            categories.reserve_exact(1);
        }
        categories.push(CategoryScore {
            category: category.clone(),
            clicks,
            shown,
        });
        self.categories = categories.into_boxed_slice();
    }

    /// The share of the user's decayed `score` (clicks or impressions) in `category`; 0
    /// with no history.
    fn category_share(&self, category: &Category, score: impl Fn(&CategoryScore) -> f32) -> f64 {
        let total: f64 = self.categories.iter().map(|s| f64::from(score(s))).sum();
        if total <= 0.0 {
            return 0.0;
        }
        let mine = self
            .categories
            .iter()
            .find(|s| s.category == *category)
            .map_or(0.0, |s| f64::from(score(s)));
        mine / total
    }
}

impl PartitionState {
    /// The session index, rebuilt from the pending queue first if it is not up to date.
    fn session_index(&mut self) -> &mut SessionIndex {
        self.by_session.up_to_date(&self.pending)
    }

    fn count(&mut self, user_id: &str, item_id: Option<&str>, ts: Millis, delta: Counts) {
        self.users.get_or_default(user_id).count(ts, delta);
        if let Some(item_id) = item_id {
            self.items.get_or_default(item_id).rolling.add(ts, delta);
        }
    }

    /// Applies click event `c` of user `user` (its key), on item `item` (its id and key;
    /// `c`'s item) of category `category`.
    fn apply_click(
        &mut self,
        c: &ClickEvent,
        category: Option<&Category>,
        limits: StateLimits,
        (user, item): (IdKey<'_>, Option<(&str, IdKey<'_>)>),
    ) {
        let item_id = item.map(|(id, _)| id);
        let delta = match c.kind {
            ClickKind::Impression => Counts {
                impressions: 1,
                ..Counts::default()
            },
            ClickKind::Click => Counts {
                clicks: 1,
                ..Counts::default()
            },
            ClickKind::AddToCart => Counts {
                carts: 1,
                ..Counts::default()
            },
            ClickKind::RemoveFromCart | ClickKind::Favorite | ClickKind::Search => {
                Counts::default()
            }
        };
        let clicked = c.kind == ClickKind::Click;
        // The user looked up once for its counters and its categories.
        let user = self.users.get_or_default_key(user);
        user.count(c.ts, delta);
        if let Some(category) = category
            && (clicked || c.kind == ClickKind::Impression)
        {
            user.count_category(category, c.ts, clicked);
        }
        if let Some((_, item)) = item {
            self.items.get_or_default_key(item).rolling.add(c.ts, delta);
        }
        if !clicked {
            return;
        }
        let Some(item_id) = item_id else { return };
        // Click join: the latest earlier impression of the same user, item and session.
        let hash = session_hash(&c.user_id, item_id, &c.session_id);
        let pending = &self.pending;
        let index = self.by_session.up_to_date(pending);
        let target = index.keys.get(&hash).and_then(|keys| {
            keys.as_slice()
                .iter()
                .copied()
                .filter(|(ts, _)| *ts < c.ts && c.ts - *ts <= limits.click_window_ms)
                .filter(|key| {
                    // A list may hold another triple's impressions (a hash collision).
                    pending.get(key).is_some_and(|p| {
                        *p.user_id == c.user_id
                            && &*p.item_id == item_id
                            && *p.session == c.session_id
                    })
                })
                .max()
        });
        if let Some(key) = target
            && let Some(pending) = self.pending.get_mut(&key)
        {
            pending.labels.clicked = true;
        }
        // The new click is kept by the retain (it is 0 ms old), after the older ones.
        push_keyed(
            &mut self.clicks,
            &[&c.user_id, item_id],
            (c.ts, target),
            |(ts, _)| c.ts - *ts <= limits.attribution_ms,
        );
    }

    fn apply_order(&mut self, o: &OrderEvent, limits: StateLimits) {
        match o.status {
            OrderStatus::Placed => {
                let mut attributed = Vec::new();
                for line in &o.lines {
                    let units = u16::try_from(line.quantity).unwrap_or(u16::MAX);
                    let spend = (line.quantity as f64 * line.unit_price) as f32;
                    self.count(
                        &o.user_id,
                        Some(&line.item_id),
                        o.ts,
                        Counts {
                            units,
                            spend,
                            ..Counts::default()
                        },
                    );
                    // Last touch: the latest click strictly before the order, within the window.
                    let touch = with_join_key(&[&o.user_id, &line.item_id], |key| {
                        self.clicks.get(key).and_then(|clicks| {
                            clicks
                                .iter()
                                .filter(|(ts, _)| *ts < o.ts && o.ts - *ts <= limits.attribution_ms)
                                .max_by_key(|(ts, key)| (*ts, *key))
                                .and_then(|(_, key)| *key)
                        })
                    });
                    if let Some(key) = touch
                        && let Some(pending) = self.pending.get_mut(&key)
                    {
                        let labels = &mut pending.labels;
                        labels.converted = true;
                        labels.quantity += line.quantity;
                        labels.revenue += line.quantity as f64 * line.unit_price;
                        attributed.push(key);
                    }
                }
                self.orders
                    .insert(&o.order_id, (o.ts, attributed.into_boxed_slice()));
            }
            OrderStatus::Cancelled => {
                if let Some((_, keys)) = self.orders.remove(&o.order_id) {
                    for key in keys {
                        if let Some(pending) = self.pending.get_mut(&key) {
                            pending.labels.cancelled = true;
                        }
                    }
                }
                if let Some(user) = self.users.get_mut(o.user_id.as_str()) {
                    user.last_ts = Some(o.ts).into();
                }
            }
        }
    }

    fn unindex(&mut self, key: PendingKey, pending: &Pending) {
        self.session_index().remove(pending.session_hash(), key);
    }

    /// Forgets keys idle for longer than the TTL, clicks past the attribution window and
    /// orders whose impressions have all matured. Runs once per hour of event time.
    fn sweep(&mut self, now: Millis, limits: StateLimits) {
        if now - self.last_sweep < SWEEP_EVERY_MS {
            return;
        }
        self.last_sweep = now;
        let ttl_cutoff = now - limits.ttl_ms;
        self.users
            .retain(|u| u.last_ts.get().is_some_and(|t| t >= ttl_cutoff));
        // An item's last event is known to its 10-minute bucket: it stays until the TTL has
        // passed since the bucket's end, at most 10 minutes longer than since the event.
        self.items
            .retain(|i| i.rolling.latest_possible().is_some_and(|t| t >= ttl_cutoff));
        let click_cutoff = now - limits.attribution_ms;
        self.clicks.retain(|_, clicks| {
            retain_boxed(clicks, |(ts, _)| *ts >= click_cutoff);
            !clicks.is_empty()
        });
        let order_cutoff = now - limits.click_window_ms - 2 * limits.attribution_ms;
        self.orders.retain(|(ts, _)| *ts >= order_cutoff);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::{DEMAND_LOOKBACK_MS, InventoryRow};
    use shopstream_ingest::event::{InputTopic, InventoryKind};

    /// A 10-minute click window, 30-minute attribution and an 8-day time to live.
    const LIMITS: StateLimits = StateLimits {
        click_window_ms: 600_000,
        attribution_ms: 1_800_000,
        ttl_ms: 8 * 86_400_000,
    };

    /// Guards the checkpoint format of a user's state: its last event time held in 8
    /// bytes and its scores in a boxed slice write the bytes of the `Option` and the
    /// `Vec` they replaced (MessagePack named and compact, JSON), and read them back.
    #[test]
    fn a_users_state_serialises_as_before_its_fields_were_compacted() {
        #[derive(Serialize)]
        struct Before {
            rolling: Rolling,
            last_ts: Option<Millis>,
            categories: Vec<CategoryScore>,
            categories_ts: Millis,
        }
        let t0 = 1_767_571_200_000;
        let mut user = UserState::default();
        user.rolling.add(t0, Counts::default());
        for (n, category) in ["shoes", "hats", "shoes"].into_iter().enumerate() {
            user.count_category(&category.into(), t0 + n as Millis * 1_000, n == 1);
        }
        for last_ts in [None, Some(t0 + 5_000)] {
            user.last_ts = last_ts.into();
            let before = Before {
                rolling: user.rolling.clone(),
                last_ts,
                categories: user.categories.to_vec(),
                categories_ts: user.categories_ts,
            };
            let named = rmp_serde::to_vec_named(&before).expect("encode");
            assert_eq!(rmp_serde::to_vec_named(&user).expect("encode"), named);
            assert_eq!(
                rmp_serde::to_vec(&user).expect("encode"),
                rmp_serde::to_vec(&before).expect("encode")
            );
            let json = serde_json::to_string(&before).expect("json");
            assert_eq!(serde_json::to_string(&user).expect("json"), json);
            let back: UserState = rmp_serde::from_slice(&named).expect("decode");
            assert_eq!(back, user);
            assert_eq!(back.last_ts.get(), last_ts);
        }
    }

    /// Guards the TTL of items, whose last event time is no longer kept: an item is
    /// forgotten once the TTL has passed since the end of its newest event's 10-minute
    /// bucket, and not before.
    #[test]
    fn an_item_is_forgotten_a_ttl_after_the_ten_minutes_of_its_last_event() {
        let t0: Millis = 1_767_571_200_000; // on a 10-minute boundary
        let mut partition = PartitionState::default();
        let seen = |p: &PartitionState| p.items.contains_key("sku1");
        for ts in [t0 - 3_600_000, t0 + 120_000, t0 + 60_000] {
            partition.count("u1", Some("sku1"), ts, Counts::default());
        }
        let bucket_end = t0 + 600_000 - 1;
        assert_eq!(
            partition
                .items
                .get("sku1")
                .map(|i| i.rolling.latest_possible()),
            Some(Some(bucket_end))
        );
        let mut kept = partition.clone();
        kept.sweep(bucket_end + LIMITS.ttl_ms, LIMITS);
        assert!(seen(&kept), "the TTL since the bucket's end has not passed");
        let mut forgotten = partition.clone();
        forgotten.sweep(bucket_end + 1 + LIMITS.ttl_ms, LIMITS);
        assert!(!seen(&forgotten));
    }

    /// Guards the checkpoint format of an item's state: it writes the `last_ts` field it
    /// no longer holds (the latest time its newest event may have had), and reads states
    /// written with the exact time.
    #[test]
    fn an_items_state_serialises_as_before_its_last_time_was_derived() {
        #[derive(Serialize)]
        struct Before {
            rolling: Rolling,
            last_ts: Millis,
        }
        let t0: Millis = 1_767_571_200_000;
        let mut item = ItemState::default();
        item.rolling.add(t0 + 5_000, Counts::default());
        let before = Before {
            rolling: item.rolling.clone(),
            last_ts: t0 + 599_999,
        };
        let named = rmp_serde::to_vec_named(&before).expect("encode");
        assert_eq!(rmp_serde::to_vec_named(&item).expect("encode"), named);
        let compact = rmp_serde::to_vec(&before).expect("encode");
        assert_eq!(rmp_serde::to_vec(&item).expect("encode"), compact);
        let exact = Before {
            last_ts: t0 + 5_000,
            ..before
        };
        for bytes in [
            rmp_serde::to_vec_named(&exact).expect("encode"),
            rmp_serde::to_vec(&exact).expect("encode"),
        ] {
            let back: ItemState = rmp_serde::from_slice(&bytes).expect("decode");
            assert_eq!(back, item);
        }
    }

    #[test]
    fn state_round_trips_through_json() {
        let limits = LIMITS;
        let mut state = FeatureState::new(limits);
        let click = ClickEvent {
            event_id: "e".into(),
            ts: 1_767_571_200_000,
            user_id: "u".into(),
            session_id: "s".into(),
            kind: ClickKind::Impression,
            item_id: Some("i".into()),
            scenario: shopstream_ingest::event::Scenario::Cart,
            position: Some(1),
            device: None,
            price: Some(2.0),
            query: None,
        };
        let event = Event::Click(click);
        state.apply_same_ts(&[(InputTopic::Clicks, 3, &event)]);
        let json = serde_json::to_string(&state).expect("serialise");
        let back: FeatureState = serde_json::from_str(&json).expect("deserialise");
        assert_eq!(back, state);
        assert_eq!(back.pending_len(), 1);
    }

    fn click(user: &str, item: &str, kind: ClickKind, ts: Millis) -> Event {
        Event::Click(ClickEvent {
            event_id: format!("{user}-{item}-{ts}-{kind:?}").into(),
            ts,
            user_id: user.into(),
            session_id: format!("s-{user}").into(),
            kind,
            item_id: Some(item.into()),
            scenario: shopstream_ingest::event::Scenario::Search,
            position: Some(1),
            device: None,
            price: Some(2.0),
            query: None,
        })
    }

    /// Guards the click join against hash collisions in the session index: an impression
    /// of another user and session filed under the clicked triple's hash (as a collision
    /// would) is never the one labelled, even when it is the latest.
    #[test]
    fn a_click_never_labels_an_impression_of_another_triple_sharing_its_index_list() {
        let t0 = 1_767_571_200_000;
        let mut state = FeatureState::new(LIMITS);
        for (user, ts) in [("u1", t0), ("u2", t0 + 1_000)] {
            let shown = click(user, "i", ClickKind::Impression, ts);
            state.apply_same_ts(&[(InputTopic::Clicks, 0, &shown)]);
        }
        let partition = state.partitions.get_mut(&0).expect("partition 0");
        let (other, _) = partition.pending.0.back().expect("u2's impression");
        let other = *other;
        partition
            .session_index()
            .keys
            .get_mut(&session_hash("u1", "i", "s-u1"))
            .expect("u1's list")
            .push(other);
        let clicked = click("u1", "i", ClickKind::Click, t0 + 2_000);
        state.apply_same_ts(&[(InputTopic::Clicks, 0, &clicked)]);
        let labels: Vec<(Text, bool)> = state
            .mature_all()
            .into_iter()
            .map(|e| (e.user_id, e.labels.clicked))
            .collect();
        assert_eq!(
            labels,
            [(Text::from("u1"), true), (Text::from("u2"), false)]
        );
    }

    #[test]
    fn exposure_shares_impressions_and_affinity_shares_clicks_per_category() {
        let limits = LIMITS;
        let t0 = 1_767_571_200_000;
        let mut state = FeatureState::new(limits);
        for (item, category) in [("i1", "shoes"), ("i2", "hats"), ("i3", "shoes")] {
            let stock = Event::Inventory(shopstream_ingest::event::InventoryEvent {
                event_id: format!("inv-{item}").into(),
                ts: t0,
                item_id: item.into(),
                kind: shopstream_ingest::event::InventoryKind::Snapshot,
                on_hand: Some(5),
                delta: None,
                price: Some(2.0),
                category: Some(category.into()),
            });
            state.apply_same_ts(&[(InputTopic::Inventory, 0, &stock)]);
        }
        let user_saw = |state: &mut FeatureState, item: &str, kind, ts| {
            state.apply_same_ts(&[(InputTopic::Clicks, 0, &click("u", item, kind, ts))]);
        };
        // Three impressions of shoes and one of hats a second apart (next to no decay at a
        // 7-day time constant), then a click on hats.
        for (n, item) in ["i1", "i2", "i1", "i1"].iter().enumerate() {
            let ts = t0 + 1_000 * (n as i64 + 1);
            user_saw(&mut state, item, ClickKind::Impression, ts);
        }
        let next = |state: &FeatureState, ts| {
            let Event::Click(c) = click("u", "i3", ClickKind::Impression, ts) else {
                unreachable!()
            };
            state.features_of(None, 0, &c)
        };
        let before_click = next(&state, t0 + 10_000);
        assert!(
            (before_click.user_category_exposure - 0.75).abs() < 1e-6,
            "{before_click:?}"
        );
        assert_eq!(before_click.user_category_affinity, 0.0, "no click yet");

        user_saw(&mut state, "i2", ClickKind::Click, t0 + 20_000);
        let after_click = next(&state, t0 + 30_000);
        assert!(
            (after_click.user_category_exposure - 0.75).abs() < 1e-6,
            "a click is not an impression: {after_click:?}"
        );
        assert_eq!(
            after_click.user_category_affinity, 0.0,
            "the click went to hats"
        );

        // A click on shoes: one of the user's two clicks is shoes (the hats click, 20 s
        // older, has decayed by 3e-5 at a 7-day time constant).
        user_saw(&mut state, "i1", ClickKind::Click, t0 + 40_000);
        let shoes = next(&state, t0 + 50_000);
        assert!(
            (shoes.user_category_affinity - 0.5).abs() < 1e-4,
            "{shoes:?}"
        );
        assert!(
            (shoes.user_category_exposure - 0.75).abs() < 1e-6,
            "{shoes:?}"
        );
    }

    /// Guards the eviction of category scores: with MAX_CATEGORIES kept, a new category
    /// replaces the least active one (clicks + impressions, decayed; the first of equals),
    /// and one less active than every kept category is not kept; the shares are over the
    /// kept categories.
    #[test]
    fn the_least_active_category_is_forgotten_and_a_weaker_newcomer_is_not_kept() {
        let t0 = 1_767_571_200_000;
        let mut user = UserState::default();
        for k in 0..MAX_CATEGORIES {
            for _ in 0..if k == 0 { 1 } else { 2 } {
                user.count_category(&format!("c{k}").into(), t0, false);
            }
        }
        let names = |user: &UserState| -> Vec<String> {
            user.categories
                .iter()
                .map(|s| s.category.to_string())
                .collect()
        };
        // As active as c0 (one event): c0, the least active, goes.
        user.count_category(&"new".into(), t0, true);
        let mut expected: Vec<String> = (1..MAX_CATEGORIES).map(|k| format!("c{k}")).collect();
        expected.push("new".to_string());
        assert_eq!(names(&user), expected);
        assert_eq!(user.category_share(&"new".into(), |s| s.clicks), 1.0);
        let exposure = user.category_share(&"c1".into(), |s| s.shown);
        assert!((exposure - 1.0 / 7.0).abs() < 1e-6, "{exposure}");
        // Every kept category now has two events: a newcomer with one is not kept.
        user.count_category(&"new".into(), t0, false);
        user.count_category(&"late".into(), t0, true);
        assert_eq!(names(&user), expected);
        assert_eq!(user.category_share(&"late".into(), |s| s.clicks), 0.0);
        // A week later the kept scores have decayed below one event: the first of the
        // least active (c1) makes room for a newcomer.
        user.count_category(&"later".into(), t0 + 7 * 86_400_000, false);
        assert!(
            !names(&user).contains(&"c1".to_string()),
            "{:?}",
            names(&user)
        );
        assert_eq!(names(&user).last().map(String::as_str), Some("later"));
        assert_eq!(user.categories.len(), MAX_CATEGORIES);
    }

    #[test]
    fn a_forgotten_user_is_served_as_new_and_other_users_keep_their_state() {
        let limits = LIMITS;
        let t0 = 1_767_571_200_000;
        let history = |state: &mut FeatureState| {
            for (n, user) in ["gone", "kept"].iter().enumerate() {
                let ts = t0 + n as i64 * 1_000;
                state.apply_same_ts(&[(
                    InputTopic::Clicks,
                    0,
                    &click(user, "i1", ClickKind::Impression, ts),
                )]);
                state.apply_same_ts(&[(
                    InputTopic::Clicks,
                    0,
                    &click(user, "i1", ClickKind::Click, ts + 100),
                )]);
                state.apply_same_ts(&[(
                    InputTopic::Clicks,
                    0,
                    &click(user, "i2", ClickKind::Impression, ts + 200),
                )]);
            }
        };
        let mut state = FeatureState::new(limits);
        history(&mut state);
        let later = t0 + 60_000;
        let Event::Click(next_gone) = click("gone", "i3", ClickKind::Impression, later) else {
            unreachable!()
        };
        let Event::Click(next_kept) = click("kept", "i3", ClickKind::Impression, later) else {
            unreachable!()
        };
        let kept_before = state.features_of(None, 0, &next_kept);
        let pending_before = state.pending_len();
        assert_ne!(
            state.features_of(None, 0, &next_gone),
            FeatureState::new(limits).features_of(None, 0, &next_gone),
            "the history counts before the erasure"
        );

        let dropped = state.forget_users(&std::collections::BTreeSet::from(["gone".to_string()]));
        assert!(dropped >= 3, "{dropped}");
        assert_eq!(
            state.features_of(None, 0, &next_gone),
            FeatureState::new(limits).features_of(None, 0, &next_gone),
            "served as a user never seen"
        );
        assert_eq!(state.features_of(None, 0, &next_kept), kept_before);
        assert_eq!(
            state.pending_len(),
            pending_before - 2,
            "their impressions never mature"
        );
        assert!(state.mature_all().iter().all(|e| e.user_id == "kept"));
        assert_eq!(
            state.forget_users(&std::collections::BTreeSet::from(["gone".to_string()])),
            0
        );
    }

    impl FeatureState {
        /// Applies a group of events that share one timestamp, each shared (its ids
        /// copied), with the partition it was read from ([`FeatureState::apply_group`]).
        fn apply_same_ts(&mut self, group: &[(InputTopic, i32, &Event)]) {
            let mut group: Vec<(i32, GroupEvent<'_>)> = group
                .iter()
                .map(|(_, partition, event)| (*partition, GroupEvent::Shared(event)))
                .collect();
            self.apply_group(&mut group, None);
        }
    }

    /// The hour and weekday as chrono gives them, its default (the epoch) outside its range.
    fn chrono_hour_and_weekday(ts: Millis) -> (u8, u8) {
        use chrono::{Datelike, Timelike};
        let at = chrono::DateTime::from_timestamp_millis(ts).unwrap_or_default();
        (at.hour() as u8, at.weekday().num_days_from_monday() as u8)
    }

    #[test]
    fn hour_and_weekday_match_chrono_at_the_edges_of_its_range_and_of_days() {
        let first = chrono::DateTime::<chrono::Utc>::MIN_UTC.timestamp_millis();
        let last = chrono::DateTime::<chrono::Utc>::MAX_UTC.timestamp_millis();
        let day = 86_400_000;
        for edge in [
            i64::MIN,
            first,
            -day,
            0,
            day,
            946_684_800_000,
            last,
            i64::MAX,
        ] {
            for ts in edge.saturating_sub(2)..=edge.saturating_add(2) {
                assert_eq!(hour_and_weekday(ts), chrono_hour_and_weekday(ts), "{ts}");
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn hour_and_weekday_match_chrono(ts in proptest::num::i64::ANY, near in -1i64 << 45..1i64 << 45) {
            proptest::prop_assert_eq!(hour_and_weekday(ts), chrono_hour_and_weekday(ts));
            proptest::prop_assert_eq!(hour_and_weekday(near), chrono_hour_and_weekday(near));
        }
    }

    proptest::proptest! {
        /// Guards the shared inventory: a shard that joins a base (the table as the last
        /// close left it, which applies each close after the shard) gives the examples of
        /// a state holding the table itself, and so does a shard read back from a
        /// checkpoint of before the change, which holds a full copy of the table.
        #[test]
        fn shards_joining_a_base_give_the_examples_of_a_state_holding_the_table(
            events in proptest::collection::vec(
                (0u8..4, 0u8..4, 0u8..3, 0i64..4, proptest::bool::ANY),
                1..80,
            ),
        ) {
            let t0: Millis = 1_767_571_200_000;
            let stock = |item: u8, on_hand: i64, category: u8, ts: Millis| {
                Event::Inventory(shopstream_ingest::event::InventoryEvent {
                    event_id: format!("v{item}-{ts}").into(),
                    ts,
                    item_id: format!("i{item}").into(),
                    kind: InventoryKind::Snapshot,
                    on_hand: Some(on_hand),
                    delta: None,
                    price: Some(1.0 + on_hand as f64),
                    category: Some(format!("c{category}").into()),
                })
            };
            let mut owner = FeatureState::new(LIMITS);
            let mut base = FeatureState::replica_of(&owner);
            let mut shard = FeatureState::joining(&base);
            let mut old: Option<FeatureState> = None;
            let mut close: Vec<Event> = Vec::new();
            for (i, (kind, item, user, value, ends_close)) in events.into_iter().enumerate() {
                let ts = t0 + i as Millis * 1_000;
                let event = match kind {
                    0 => stock(item, value, user, ts),
                    // A change of stock only: joins the row as the table holds it.
                    3 => Event::Inventory(shopstream_ingest::event::InventoryEvent {
                        event_id: format!("r{item}-{ts}").into(),
                        ts,
                        item_id: format!("i{item}").into(),
                        kind: InventoryKind::Restock,
                        on_hand: None,
                        delta: Some(value + 1),
                        price: None,
                        category: None,
                    }),
                    1 => click(&format!("u{user}"), &format!("i{item}"), ClickKind::Impression, ts),
                    _ => click(&format!("u{user}"), &format!("i{item}"), ClickKind::Click, ts),
                };
                owner.apply_same_ts(&[(InputTopic::Clicks, 0, &event)]);
                for state in [Some(&mut shard), old.as_mut()].into_iter().flatten() {
                    let mut group = vec![(0, GroupEvent::Shared(&event))];
                    state.apply_group(&mut group, Some(&base));
                }
                close.push(event);
                if ends_close {
                    for event in close.drain(..).filter(|e| matches!(e, Event::Inventory(_))) {
                        base.apply_same_ts(&[(InputTopic::Inventory, 0, &event)]);
                    }
                    shard.end_close();
                    if let Some(old) = &mut old {
                        old.end_close();
                    } else {
                        // Read back from before the change: the shard's own full copy.
                        let mut copy = shard.clone();
                        copy.inventory = base.inventory.replica();
                        old = Some(copy);
                    }
                    proptest::prop_assert!(shard.inventory.iter().next().is_none());
                }
            }
            let expected = owner.mature_all();
            proptest::prop_assert_eq!(&shard.mature_all(), &expected);
            if let Some(mut old) = old {
                proptest::prop_assert_eq!(&old.mature_all(), &expected);
            }
        }
    }

    proptest::proptest! {
        /// Guards the examples that take their ids from the shard's own events: applying
        /// groups of owned events gives the state and the examples that applying the same
        /// events shared (their ids copied) gives.
        #[test]
        fn examples_taking_ids_from_owned_events_match_examples_copying_them(
            events in proptest::collection::vec((0u8..3, 0u8..4, 0u8..3, 0i64..4), 1..60),
        ) {
            let t0 = 1_767_571_200_000;
            let mut ts = t0;
            let events: Vec<(i32, Event)> = events
                .iter()
                .map(|&(user, item, kind, step)| {
                    // Steps of 0 put events in one same-timestamp group.
                    ts += step * 1_000;
                    let kind = [ClickKind::Impression, ClickKind::Click, ClickKind::AddToCart]
                        [usize::from(kind)];
                    (i32::from(user % 2), click(&format!("u{user}"), &format!("i{item}"), kind, ts))
                })
                .collect();
            let mut shared = FeatureState::new(LIMITS);
            let mut owned = FeatureState::new(LIMITS);
            for group in events.chunk_by(|a, b| a.1.ts() == b.1.ts()) {
                let borrowed: Vec<(InputTopic, i32, &Event)> =
                    group.iter().map(|(p, e)| (InputTopic::Clicks, *p, e)).collect();
                shared.apply_same_ts(&borrowed);
                let mut group: Vec<(i32, GroupEvent<'_>)> = group
                    .iter()
                    .map(|(p, e)| (*p, GroupEvent::Owned(e.clone())))
                    .collect();
                owned.apply_group(&mut group, None);
            }
            proptest::prop_assert_eq!(&owned, &shared);
            proptest::prop_assert_eq!(owned.take_window_users(), shared.take_window_users());
            let examples = shared.mature_all();
            proptest::prop_assert!(examples.iter().all(|e| !e.event_id.is_empty()));
            proptest::prop_assert_eq!(owned.mature_all(), examples);
        }
    }

    /// The demand snapshot and window units as they were computed before the sold-items
    /// index: a scan of the whole inventory, sorted by id.
    fn demand_by_scan(state: &FeatureState, at: Millis) -> Vec<DemandFeatures> {
        let mut sold: Vec<(String, &InventoryRow)> = state
            .inventory
            .iter()
            .filter(|(_, r)| r.last_sale().is_some_and(|t| at - t <= DEMAND_LOOKBACK_MS))
            .map(|(item, r)| (item.to_string(), r))
            .collect();
        sold.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        sold.into_iter()
            // A copy of the row: the scan leaves the state's cached totals as they were.
            .map(|(item, r)| r.clone().demand_features(item.as_str().into(), at))
            .collect()
    }

    fn units_by_scan(state: &FeatureState) -> Vec<(String, i64)> {
        let mut units: Vec<(String, i64)> = state
            .inventory
            .iter()
            .filter(|(_, r)| r.window_units() != 0)
            .map(|(item, r)| (item.to_string(), r.window_units()))
            .collect();
        units.sort();
        units
    }

    proptest::proptest! {
        /// Guards the sold-items index and the snapshot rows copied from the previous
        /// snapshot: every window's demand snapshot and sold units are what a scan of the
        /// whole inventory gives, across windows a minute to days apart (totals that hold
        /// or move with time alone), stock and price changes without a sale, items falling
        /// out of the 7-day lookback, selling again, and a restore from serialised state
        /// mid-way.
        #[test]
        fn demand_snapshots_from_the_sold_index_match_a_scan_of_the_inventory(
            windows in proptest::collection::vec(
                proptest::collection::vec((0u8..40, 0u8..4, 0i64..3_600_000), 0..12),
                1..30,
            ),
            gap_minutes in proptest::collection::vec(1i64..6_000, 30),
            restore_at in 0usize..30,
        ) {
            let mut state = FeatureState::new(LIMITS);
            let mut at = 1_767_571_200_000;
            for (w, events) in windows.iter().enumerate() {
                let start = at;
                at += gap_minutes[w] * 60_000;
                let mut events: Vec<Event> = events
                    .iter()
                    .map(|&(item, kind, offset)| {
                        let kind = [
                            InventoryKind::Sale,
                            InventoryKind::Sale,
                            InventoryKind::Restock,
                            InventoryKind::Snapshot,
                        ][usize::from(kind)];
                        Event::Inventory(shopstream_ingest::event::InventoryEvent {
                            event_id: format!("e{w}-{item}-{offset}").into(),
                            ts: start + offset.min(at - start - 1),
                            item_id: format!("item-{item}").into(),
                            kind,
                            on_hand: (kind == InventoryKind::Snapshot).then_some(9),
                            delta: Some(if kind == InventoryKind::Sale { -2 } else { 3 }),
                            price: Some(f64::from(item) + 0.5 + w as f64),
                            category: None,
                        })
                    })
                    .collect();
                events.sort_by_key(|e| e.ts());
                for event in &events {
                    state.apply_same_ts(&[(InputTopic::Inventory, 0, event)]);
                }
                if w == restore_at {
                    let json = serde_json::to_string(&state).expect("serialise");
                    state = serde_json::from_str(&json).expect("deserialise");
                }
                let expected_units = units_by_scan(&state);
                let mut units: Vec<(String, i64)> = state
                    .take_window_units()
                    .into_iter()
                    .map(|(item, units)| (item.to_string(), units))
                    .collect();
                units.sort();
                proptest::prop_assert_eq!(units, expected_units);
                let expected = demand_by_scan(&state, at);
                proptest::prop_assert_eq!(&*state.demand_snapshot(at), &expected);
            }
        }
    }
}
