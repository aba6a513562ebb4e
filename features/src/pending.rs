//! Impressions waiting for their labels (the label buffer), held compactly, and the index
//! the click join finds them by.
//!
//! An impression's example is built when it matures; until then its features are held
//! in a smaller form than [`Features`]: counters in `u32` ([`CompactHorizons`]), optional
//! numbers in 8 bytes, the ids inline (`Text`) and the item's category as the
//! inventory's shared name. Nothing is rounded: the example that matures is the one
//! [`Features`] would have held. The buffer serialises in the shape it had when it held
//! whole examples, so checkpoints read and write as before.

use std::cmp::Ordering;
use std::collections::VecDeque;

// FxHash: fast, and deterministic across runs.
use rustc_hash::FxHashMap as HashMap;
use serde::{Deserialize, Serialize, Serializer};
use shopstream_ingest::event::{Millis, Scenario, Text, heap_bytes};

use crate::category::Category;
use crate::example::{Example, Features, Labels};
use crate::niche::{OptF64, OptI64};
use crate::rolling::{CompactHorizons, Horizons};

/// (ts, application sequence) of a pending impression.
pub(crate) type PendingKey = (Millis, u64);

/// The features of an impression as the label buffer holds them until it matures: the
/// same values as [`Features`], in 240 bytes instead of 368.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HeldFeatures {
    user: CompactHorizons,
    item: CompactHorizons,
    device: Option<Text>,
    price: OptF64,
    user_recency_secs: OptF64,
    user_category_affinity: f64,
    user_category_exposure: f64,
    item_category: Option<Category>,
    item_price: OptF64,
    item_on_hand: OptI64,
    position: Option<u32>,
    scenario: Scenario,
    hour_of_day: u8,
    day_of_week: u8,
}

impl HeldFeatures {
    /// The features `f`, held compactly.
    pub(crate) fn new(f: Features) -> Self {
        Self {
            user: CompactHorizons::of(&f.user),
            item: CompactHorizons::of(&f.item),
            device: f.device,
            price: f.price.into(),
            user_recency_secs: f.user_recency_secs.into(),
            user_category_affinity: f.user_category_affinity,
            user_category_exposure: f.user_category_exposure,
            item_category: f.item_category,
            item_price: f.item_price.into(),
            item_on_hand: f.item_on_hand.into(),
            position: f.position,
            scenario: f.scenario,
            hour_of_day: f.hour_of_day,
            day_of_week: f.day_of_week,
        }
    }

    /// Sets the device, which [`HeldFeatures::new`] took from `f` (an impression's
    /// features are taken before its group applies, its device after: from an owned
    /// event, without a copy).
    pub(crate) fn set_device(&mut self, device: Option<Text>) {
        self.device = device;
    }

    /// The features as an example carries them.
    pub(crate) fn features(self) -> Features {
        Features {
            scenario: self.scenario,
            device: self.device,
            position: self.position,
            price: self.price.get(),
            hour_of_day: self.hour_of_day,
            day_of_week: self.day_of_week,
            user: self.user.horizons(),
            user_recency_secs: self.user_recency_secs.get(),
            user_category_affinity: self.user_category_affinity,
            user_category_exposure: self.user_category_exposure,
            item: self.item.horizons(),
            item_category: self.item_category,
            item_price: self.item_price.get(),
            item_on_hand: self.item_on_hand.get(),
        }
    }

    /// Bytes on the heap that this impression holds alone (the device name; the category
    /// name's share).
    fn heap_bytes(&self) -> usize {
        self.device.as_ref().map_or(0, heap_bytes)
            + self
                .item_category
                .as_ref()
                .map_or(0, Category::shared_bytes)
    }
}

/// An impression waiting for its labels. Its time is its key's.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Pending {
    pub(crate) event_id: Text,
    pub(crate) user_id: Text,
    pub(crate) item_id: Text,
    pub(crate) session: Text,
    pub(crate) features: HeldFeatures,
    pub(crate) labels: Labels,
}

impl Pending {
    /// Its [`SessionIndex`] hash.
    pub(crate) fn session_hash(&self) -> u64 {
        session_hash(&self.user_id, &self.item_id, &self.session)
    }

    /// The example of this impression, shown at `ts`.
    pub(crate) fn into_example(self, ts: Millis) -> Example {
        Example {
            event_id: self.event_id,
            ts,
            user_id: self.user_id,
            item_id: self.item_id,
            features: self.features.features(),
            labels: self.labels,
        }
    }

    /// Bytes held: the entry in the buffer and its share of the heap.
    pub(crate) fn approx_bytes(&self) -> usize {
        size_of::<(PendingKey, Pending)>()
            + heap_bytes(&self.event_id)
            + heap_bytes(&self.user_id)
            + heap_bytes(&self.item_id)
            + heap_bytes(&self.session)
            + self.features.heap_bytes()
    }
}

/// Pending impressions ordered by key. Keys only grow within a partition (windows close
/// in order, events apply in time order), so this is a queue: append at the back, mature
/// from the front, find by a search from the newest end ([`PendingQueue::position`]).
///
/// Serialised as the sequence of `(key, { example, session })` it was when it held whole
/// examples, written from the held form without a copy.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(from = "StoredQueue")]
pub(crate) struct PendingQueue(pub(crate) VecDeque<(PendingKey, Pending)>);

impl PendingQueue {
    pub(crate) fn insert(&mut self, key: PendingKey, pending: Pending) {
        match self.0.back() {
            Some((last, _)) if *last > key => {
                // Not expected (keys grow), but stay correct if it happens.
                let at = self.0.partition_point(|(k, _)| *k < key);
                self.0.insert(at, (key, pending));
            }
            _ => self.0.push_back((key, pending)),
        }
    }

    /// Where `key` is. Searched from the newest end, in steps that double, then by
    /// halving what is left: a label (a click, an order) mostly finds an impression of
    /// the last minutes, and a plain binary search would first touch entries from all
    /// over a queue of hours, each a cache miss.
    fn position(&self, key: &PendingKey) -> Option<usize> {
        let queue = &self.0;
        let (mut from, mut to) = (0, queue.len());
        let mut step = 1;
        while step <= queue.len() {
            let probe = queue.len() - step;
            match queue[probe].0.cmp(key) {
                Ordering::Equal => return Some(probe),
                Ordering::Less => {
                    from = probe + 1;
                    break;
                }
                Ordering::Greater => to = probe,
            }
            step *= 2;
        }
        while from < to {
            let mid = from + (to - from) / 2;
            match queue[mid].0.cmp(key) {
                Ordering::Equal => return Some(mid),
                Ordering::Less => from = mid + 1,
                Ordering::Greater => to = mid,
            }
        }
        None
    }

    pub(crate) fn get(&self, key: &PendingKey) -> Option<&Pending> {
        self.0.get(self.position(key)?).map(|(_, p)| p)
    }

    pub(crate) fn get_mut(&mut self, key: &PendingKey) -> Option<&mut Pending> {
        let at = self.position(key)?;
        self.0.get_mut(at).map(|(_, p)| p)
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &Pending> {
        self.0.iter().map(|(_, p)| p)
    }
}

/// The serialised shape of the queue, as read back.
#[derive(Deserialize)]
struct StoredQueue(VecDeque<(PendingKey, StoredPending)>);

/// The serialised shape of a pending impression.
#[derive(Deserialize)]
struct StoredPending {
    example: Example,
    session: Text,
}

impl From<StoredQueue> for PendingQueue {
    /// The example's own time is its key's (keys are `(example.ts, sequence)`), so it is
    /// not kept twice.
    fn from(stored: StoredQueue) -> Self {
        Self(
            stored
                .0
                .into_iter()
                .map(|(key, p)| {
                    let e = p.example;
                    let pending = Pending {
                        event_id: e.event_id,
                        user_id: e.user_id,
                        item_id: e.item_id,
                        session: p.session,
                        features: HeldFeatures::new(e.features),
                        labels: e.labels,
                    };
                    (key, pending)
                })
                .collect(),
        )
    }
}

/// [`StoredPending`], borrowed from a held impression.
#[derive(Serialize)]
struct PendingView<'a> {
    example: ExampleView<'a>,
    session: &'a str,
}

/// [`Example`]'s serialised shape, borrowed (field for field, in its order).
#[derive(Serialize)]
struct ExampleView<'a> {
    event_id: &'a str,
    ts: Millis,
    user_id: &'a str,
    item_id: &'a str,
    features: FeaturesView<'a>,
    labels: &'a Labels,
}

/// [`Features`]' serialised shape, borrowed (field for field, in its order).
#[derive(Serialize)]
struct FeaturesView<'a> {
    scenario: Scenario,
    device: Option<&'a str>,
    position: Option<u32>,
    price: Option<f64>,
    hour_of_day: u8,
    day_of_week: u8,
    user: Horizons,
    user_recency_secs: Option<f64>,
    user_category_affinity: f64,
    user_category_exposure: f64,
    item: Horizons,
    item_category: Option<&'a str>,
    item_price: Option<f64>,
    item_on_hand: Option<i64>,
}

impl<'a> PendingView<'a> {
    fn new(ts: Millis, p: &'a Pending) -> Self {
        let f = &p.features;
        Self {
            example: ExampleView {
                event_id: &p.event_id,
                ts,
                user_id: &p.user_id,
                item_id: &p.item_id,
                features: FeaturesView {
                    scenario: f.scenario,
                    device: f.device.as_deref(),
                    position: f.position,
                    price: f.price.get(),
                    hour_of_day: f.hour_of_day,
                    day_of_week: f.day_of_week,
                    user: f.user.horizons(),
                    user_recency_secs: f.user_recency_secs.get(),
                    user_category_affinity: f.user_category_affinity,
                    user_category_exposure: f.user_category_exposure,
                    item: f.item.horizons(),
                    item_category: f.item_category.as_deref(),
                    item_price: f.item_price.get(),
                    item_on_hand: f.item_on_hand.get(),
                },
                labels: &p.labels,
            },
            session: &p.session,
        }
    }
}

impl Serialize for PendingQueue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        /// The queue's entries, viewed.
        struct Entries<'a>(&'a VecDeque<(PendingKey, Pending)>);

        impl Serialize for Entries<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_seq(
                    self.0
                        .iter()
                        .map(|(key, p)| (key, PendingView::new(key.0, p))),
                )
            }
        }

        // As `#[derive(Serialize)]` wrote the newtype.
        serializer.serialize_newtype_struct("PendingQueue", &Entries(&self.0))
    }
}

/// The pending impressions of one (user, item, session) hash: nearly always one, held
/// without a heap allocation.
#[derive(Debug, Clone)]
pub(crate) enum SessionKeys {
    One(PendingKey),
    Many(Vec<PendingKey>),
}

impl SessionKeys {
    /// The keys, in the order they were filed.
    pub(crate) fn as_slice(&self) -> &[PendingKey] {
        match self {
            Self::One(key) => std::slice::from_ref(key),
            Self::Many(keys) => keys,
        }
    }

    pub(crate) fn push(&mut self, key: PendingKey) {
        match self {
            Self::One(first) => *self = Self::Many(vec![*first, key]),
            Self::Many(keys) => keys.push(key),
        }
    }

    /// Unfiles `key`; whether any key is left.
    fn remove(&mut self, key: PendingKey) -> bool {
        match self {
            Self::One(only) => *only != key,
            Self::Many(keys) => {
                keys.retain(|k| *k != key);
                !keys.is_empty()
            }
        }
    }

    /// Bytes held: the entry and any keys on the heap.
    pub(crate) fn approx_bytes(&self) -> usize {
        size_of::<(u64, SessionKeys)>()
            + match self {
                Self::One(_) => 0,
                Self::Many(keys) => keys.capacity() * size_of::<PendingKey>(),
            }
    }
}

/// Pending impressions by a hash of their (user, item, session), for the click join.
///
/// Keyed by a 64-bit hash rather than the ids themselves, so indexing an impression copies
/// no id; impressions of two triples whose hashes collide share a list, and the click join
/// keeps only those whose ids match. Derived from the pending queue: it takes no part in
/// equality or in the serialised state, and is rebuilt at first use after a restore.
#[derive(Debug, Clone, Default)]
pub(crate) struct SessionIndex {
    pub(crate) keys: HashMap<u64, SessionKeys>,
    /// `keys` lists every pending impression (false after a restore, until rebuilt).
    built: bool,
}

impl PartialEq for SessionIndex {
    fn eq(&self, _: &Self) -> bool {
        // Derived from the pending queue, which the state compares.
        true
    }
}

impl SessionIndex {
    /// Files the impression `key` under `hash`.
    pub(crate) fn insert(&mut self, hash: u64, key: PendingKey) {
        use std::collections::hash_map::Entry;
        // One lookup: nearly every impression files a hash of its own.
        match self.keys.entry(hash) {
            Entry::Occupied(mut keys) => keys.get_mut().push(key),
            Entry::Vacant(slot) => {
                slot.insert(SessionKeys::One(key));
            }
        }
    }

    /// This index, first rebuilt from `pending` if it does not list every impression yet.
    pub(crate) fn up_to_date(&mut self, pending: &PendingQueue) -> &mut Self {
        if !self.built {
            self.keys.clear();
            for (key, p) in &pending.0 {
                self.insert(p.session_hash(), *key);
            }
            self.built = true;
        }
        self
    }

    /// Unfiles the impression `key` from `hash`.
    pub(crate) fn remove(&mut self, hash: u64, key: PendingKey) {
        if let Some(keys) = self.keys.get_mut(&hash)
            && !keys.remove(key)
        {
            self.keys.remove(&hash);
        }
    }
}

/// The [`SessionIndex`] hash of an impression's ids.
pub(crate) fn session_hash(user_id: &str, item_id: &str, session_id: &str) -> u64 {
    use std::hash::BuildHasher;
    rustc_hash::FxBuildHasher.hash_one((user_id, item_id, session_id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rolling::Totals;

    /// The buffer's shape when it held whole examples.
    #[derive(Serialize)]
    struct WholeQueue(VecDeque<(PendingKey, WholePending)>);

    #[derive(Serialize)]
    struct WholePending {
        example: Example,
        session: String,
    }

    fn example(event_id: &str, ts: Millis, full: bool) -> Example {
        let totals = |k: i64| Totals {
            impressions: 7 * k,
            clicks: 2 * k,
            carts: k,
            units: 3 * k,
            spend: 12.345_678_9 * k as f64,
        };
        Example {
            event_id: event_id.into(),
            ts,
            user_id: "u17".into(),
            item_id: "sku4".into(),
            features: Features {
                scenario: Scenario::ProductDetail,
                device: full.then(|| "ios".into()),
                position: full.then_some(4),
                price: full.then_some(19.99),
                hour_of_day: 13,
                day_of_week: 6,
                user: [totals(1), totals(24), totals(1_500)],
                user_recency_secs: full.then_some(0.001),
                user_category_affinity: 0.25,
                user_category_exposure: 1.0 / 3.0,
                item: [totals(0), totals(5), totals(65_535 * 7)],
                item_category: full.then(|| "shoes".into()),
                item_price: full.then_some(-0.0),
                item_on_hand: full.then_some(-3),
            },
            labels: Labels {
                clicked: true,
                converted: full,
                cancelled: false,
                quantity: 2,
                revenue: 39.98,
            },
        }
    }

    fn whole_queue() -> WholeQueue {
        WholeQueue(
            [
                ((1_000, 1), example("e1", 1_000, true), "s1"),
                ((1_000, 2), example("e2", 1_000, false), "s2"),
            ]
            .into_iter()
            .map(|(key, example, session)| {
                let session = session.to_string();
                (key, WholePending { example, session })
            })
            .collect(),
        )
    }

    proptest::proptest! {
        /// The search from the newest end finds what a scan finds, for keys anywhere in
        /// the queue and keys it does not hold.
        #[test]
        fn position_finds_what_a_scan_finds(
            keys in proptest::collection::btree_set((0i64..50, 0u64..4), 0..120),
            probes in proptest::collection::vec((-1i64..51, 0u64..5), 1..40),
        ) {
            let e = example("e", 0, false);
            let pending = Pending {
                event_id: e.event_id.clone(),
                user_id: e.user_id.clone(),
                item_id: e.item_id.clone(),
                session: "s".into(),
                features: HeldFeatures::new(e.features),
                labels: e.labels,
            };
            let mut queue = PendingQueue::default();
            for &key in &keys {
                queue.insert(key, pending.clone());
            }
            let held: Vec<PendingKey> = keys.iter().copied().collect();
            for probe in probes.iter().chain(&held) {
                let scanned = held.iter().position(|k| k == probe);
                proptest::prop_assert_eq!(queue.position(probe), scanned);
            }
        }
    }

    /// Guards the checkpoint format: a buffer read back from what the whole-example form
    /// wrote writes the same bytes again (MessagePack and JSON), and matures into the same
    /// examples.
    #[test]
    fn the_held_buffer_reads_and_writes_the_bytes_of_the_whole_example_buffer() {
        let whole = whole_queue();
        let packed = rmp_serde::to_vec_named(&whole).expect("encode");
        let held: PendingQueue = rmp_serde::from_slice(&packed).expect("decode");
        assert_eq!(rmp_serde::to_vec_named(&held).expect("encode"), packed);
        assert_eq!(
            rmp_serde::to_vec(&held).expect("encode"),
            rmp_serde::to_vec(&whole).expect("encode")
        );
        let json = serde_json::to_string(&whole).expect("json");
        let from_json: PendingQueue = serde_json::from_str(&json).expect("read json");
        assert_eq!(serde_json::to_string(&from_json).expect("json"), json);
        assert_eq!(from_json, held);
        let matured: Vec<Example> = held
            .0
            .into_iter()
            .map(|(key, p)| p.into_example(key.0))
            .collect();
        let expected: Vec<Example> = whole_queue()
            .0
            .into_iter()
            .map(|(_, p)| p.example)
            .collect();
        assert_eq!(matured, expected);
    }

    #[test]
    fn held_features_are_smaller_and_give_back_the_features_they_were_made_of() {
        // 240: the device name is held inline (24 bytes, no heap allocation behind it).
        assert!(
            size_of::<HeldFeatures>() <= 240,
            "{}",
            size_of::<HeldFeatures>()
        );
        // Features holds its category as the shared name too (8 bytes, as here).
        assert_eq!(size_of::<Features>(), 368);
        for full in [true, false] {
            let features = example("e", 0, full).features;
            assert_eq!(HeldFeatures::new(features.clone()).features(), features);
        }
    }

    #[test]
    fn a_session_list_holds_one_key_inline_and_more_on_the_heap() {
        let mut index = SessionIndex::default();
        index.insert(9, (1, 1));
        assert!(matches!(index.keys[&9], SessionKeys::One((1, 1))));
        index.insert(9, (2, 2));
        index.insert(9, (3, 3));
        assert_eq!(index.keys[&9].as_slice(), [(1, 1), (2, 2), (3, 3)]);
        index.remove(9, (2, 2));
        assert_eq!(index.keys[&9].as_slice(), [(1, 1), (3, 3)]);
        index.remove(9, (1, 1));
        index.remove(9, (3, 3));
        assert!(index.keys.is_empty());
        index.insert(5, (4, 4));
        index.remove(5, (6, 6));
        assert_eq!(index.keys[&5].as_slice(), [(4, 4)]);
        index.remove(5, (4, 4));
        assert!(index.keys.is_empty());
    }
}
