//! The inventory table: the latest facts about each item (joined as of event time), its
//! sales, and the sold-items index that each window's demand snapshot walks.
//!
//! Rows sit in a vector, in the order their items were first seen, and are never removed
//! (a catalogue's items outlive any TTL); an [`IdMap`] gives an item's slot. The sold-items
//! index holds slots, so a window's demand snapshot reads each sold item's row directly
//! instead of hashing and comparing its id. The table serialises as the map of id to row
//! it replaces (in the order of the slots' map), and the index, derived from the rows, is
//! rebuilt when it is read back.
//!
//! A window's demand snapshot copies the previous snapshot's row of an item that saw no
//! event since and whose rolling totals still hold (a count of events per row, and a record
//! per snapshot row of what it was computed from), so that it reads the rows of the items
//! that changed only.

use std::collections::BTreeMap;
use std::sync::Arc;

// FxHash: fast, and deterministic across runs (the table serialises in its order).
use rustc_hash::FxHashSet as HashSet;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use shopstream_ingest::event::{InventoryEvent, InventoryKind, Millis};

use crate::category::Category;
use crate::id_map::{IdKey, IdMap, IdText};
use crate::niche::{OptF64, OptI64};
use crate::rolling::{CachedRolling, Counts};
use crate::state::DemandFeatures;

/// Items sold within this long are forecast for the next window.
pub(crate) const DEMAND_LOOKBACK_MS: Millis = 7 * 86_400_000;

/// The latest inventory facts about an item.
///
/// 32 bytes: what features join sits in the row, and what only demand reads (sales) in a
/// box that the rows of unsold items, and every row a shard set's template holds or a
/// shard copies during a close, do without.
/// Serialised with the sales' fields beside the facts, as before they were boxed.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(from = "RowFields")]
pub(crate) struct InventoryRow {
    /// Units on hand, if known.
    pub(crate) on_hand: OptI64,
    /// List price, if known.
    pub(crate) price: OptF64,
    /// Shared with every row (and user score) of the same category: see [`intern`].
    pub(crate) category: Option<Category>,
    /// Absent until the item's first counted sale.
    pub(crate) sales: Option<Box<Sales>>,
}

/// An item's counted sales.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Sales {
    /// Units sold (inventory `sale` events), rolling over 1 h / 24 h / 7 d.
    pub(crate) units: CachedRolling,
    /// Time of the latest sale.
    pub(crate) last: OptI64,
    /// Units sold in the window being applied.
    pub(crate) window_units: i64,
}

/// The serialised shape of an [`InventoryRow`], as read back.
#[derive(Deserialize)]
struct RowFields {
    on_hand: Option<i64>,
    price: Option<f64>,
    category: Option<Category>,
    sales: Option<CachedRolling>,
    last_sale: Option<Millis>,
    window_units: i64,
}

/// The serialised shape of an [`InventoryRow`], borrowed from it (written without a copy).
#[derive(Serialize)]
struct RowView<'a> {
    on_hand: Option<i64>,
    price: Option<f64>,
    category: Option<&'a str>,
    sales: Option<&'a CachedRolling>,
    last_sale: Option<Millis>,
    window_units: i64,
}

impl Serialize for InventoryRow {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        RowView {
            on_hand: self.on_hand.get(),
            price: self.price.get(),
            category: self.category.as_deref(),
            sales: self.sales.as_ref().map(|s| &s.units),
            last_sale: self.last_sale(),
            window_units: self.window_units(),
        }
        .serialize(serializer)
    }
}

impl From<RowFields> for InventoryRow {
    fn from(f: RowFields) -> Self {
        let counted = f.sales.is_some() || f.last_sale.is_some() || f.window_units != 0;
        Self {
            on_hand: OptI64::from(f.on_hand),
            price: OptF64::from(f.price),
            category: f.category,
            sales: counted.then(|| {
                Box::new(Sales {
                    units: f.sales.unwrap_or_default(),
                    last: f.last_sale.into(),
                    window_units: f.window_units,
                })
            }),
        }
    }
}

impl InventoryRow {
    /// The demand features of this row's item `item_id` as of `at`.
    pub(crate) fn demand_features(&mut self, item_id: Arc<str>, at: Millis) -> DemandFeatures {
        DemandFeatures {
            item_id,
            at,
            sales: self
                .sales
                .as_mut()
                .map(|sales| sales.units.totals(at - 1))
                .unwrap_or_default(),
            on_hand: self.on_hand.get(),
            price: self.price.get(),
        }
    }

    /// Time of the latest counted sale.
    pub(crate) fn last_sale(&self) -> Option<Millis> {
        self.sales.as_ref().and_then(|s| s.last.get())
    }

    /// Units counted in the window being applied.
    pub(crate) fn window_units(&self) -> i64 {
        self.sales.as_ref().map_or(0, |s| s.window_units)
    }
}

/// Every item's row, by id, with the index of the items sold.
#[derive(Debug, Clone, Default)]
pub(crate) struct Inventory {
    /// Each item's slot in `rows`.
    slots: IdMap<usize>,
    /// The rows, in the order their items were first seen.
    rows: Vec<InventoryRow>,
    /// Derived from the rows.
    sold: SoldIndex,
    /// One copy of each category name, which the rows share (derived from the rows).
    categories: HashSet<Category>,
    /// Events applied to each row, by slot, in the table that counts sales (wrapping; a
    /// slot past the end has had none since the table was built or read back): a demand
    /// row computed at an earlier boundary still holds for an item whose count has not
    /// moved.
    changes: Vec<u32>,
    /// The last demand snapshot (shared with its taker), and what each of its rows was
    /// computed from, in its order. Empty until a snapshot is taken, and after the table
    /// is read back.
    snapshot: Arc<Vec<DemandFeatures>>,
    computed: Vec<SnapshotRow>,
}

/// What a row of a demand snapshot was computed from: it holds as of another boundary
/// `at` while its item had no event (`change`), its totals hold for `at - 1` (the span
/// `[from, until)`, see [`CachedRolling::span`]), and its last sale is within the lookback.
#[derive(Debug, Clone, Copy)]
struct SnapshotRow {
    change: u32,
    last_sale: Millis,
    from: Millis,
    until: Millis,
}

impl SnapshotRow {
    /// Whether the row's features as of another boundary `at` are the ones it holds.
    fn holds_at(&self, change: u32, at: Millis) -> bool {
        // Totals as of `at - 1`: within `[from, until)`.
        self.change == change && self.from < at && at <= self.until
    }
}

/// The items with a recorded sale, in id order, so that the demand snapshot of each window
/// walks them without sorting or scanning the whole inventory; and the items sold in the
/// window being applied.
///
/// `ids` holds every item whose `last_sale` is within [`DEMAND_LOOKBACK_MS`] of the latest
/// snapshot, and those sold since; a snapshot drops the ones that fell out.
#[derive(Debug, Clone, Default)]
struct SoldIndex {
    /// Id and slot of each item sold.
    ids: BTreeMap<Arc<str>, usize>,
    /// The items whose `window_units` is not zero, in the order of their first sale in the
    /// window being applied, so that taking a window's units visits only them.
    window: Vec<(Arc<str>, usize)>,
}

impl Inventory {
    /// The row of `item`, if any inventory event named it.
    pub(crate) fn get(&self, item: &str) -> Option<&InventoryRow> {
        self.get_key(IdKey::of(item))
    }

    /// [`Inventory::get`] of the item `key` stands for.
    pub(crate) fn get_key(&self, item: IdKey<'_>) -> Option<&InventoryRow> {
        self.slots.get_key(item).map(|&slot| &self.rows[slot])
    }

    /// Items and their rows, in the order the table serialises in.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (IdText<'_>, &InventoryRow)> {
        self.slots
            .iter()
            .map(|(item, &slot)| (item, &self.rows[slot]))
    }

    /// A copy of what features join (on hand, price, category), without sales: the
    /// table of a shard set's template, which counts none.
    pub(crate) fn replica(&self) -> Inventory {
        Inventory {
            slots: self.slots.clone(),
            rows: self
                .rows
                .iter()
                .map(|row| InventoryRow {
                    on_hand: row.on_hand,
                    price: row.price,
                    category: row.category.clone(),
                    sales: None,
                })
                .collect(),
            sold: SoldIndex::default(),
            categories: self.categories.clone(),
            changes: Vec::new(),
            snapshot: Arc::default(),
            computed: Vec::new(),
        }
    }

    /// Applies `e` to the rows that the close a shard is applying has changed so far
    /// (`self`), over `base`, the table as the last close left it, which every shard of
    /// one process reads: an item's row is copied from `base` at its first event in the
    /// close, and a category name `base` knows keeps `base`'s copy. Sales are not counted
    /// (the table's owner counts them).
    pub(crate) fn apply_over(&mut self, base: &Inventory, e: &InventoryEvent) {
        if !self.slots.contains_key(e.item_id.as_str())
            && let Some(row) = base.get(&e.item_id)
        {
            self.slots.insert(&e.item_id, self.rows.len());
            self.rows.push(InventoryRow {
                on_hand: row.on_hand,
                price: row.price,
                category: row.category.clone(),
                sales: None,
            });
        }
        if let Some(category) = &e.category
            && let Some(shared) = base.categories.get(category.as_str())
        {
            self.categories.insert(shared.clone());
        }
        self.apply(e, false);
    }

    /// Applies an inventory event; sales count toward demand when `counts_sales`.
    pub(crate) fn apply(&mut self, e: &InventoryEvent, counts_sales: bool) {
        let slot = match self.slots.get(e.item_id.as_str()) {
            Some(&slot) => slot,
            None => {
                // The id is kept once, when the item is first seen (packed, or copied).
                let slot = self.rows.len();
                self.slots.insert(&e.item_id, slot);
                self.rows.push(InventoryRow::default());
                slot
            }
        };
        if counts_sales {
            if self.changes.len() <= slot {
                self.changes.resize(slot + 1, 0);
            }
            self.changes[slot] = self.changes[slot].wrapping_add(1);
        }
        let row = &mut self.rows[slot];
        match (e.on_hand, e.delta) {
            (Some(on_hand), _) => row.on_hand = OptI64::from(Some(on_hand)),
            // Deltas are not bounded by the decoder: sums saturate rather than overflow.
            (None, Some(delta)) if e.kind != InventoryKind::Snapshot => {
                row.on_hand = row.on_hand.plus(delta);
            }
            _ => {}
        }
        if e.price.is_some() {
            row.price = OptF64::from(e.price);
        }
        if let Some(category) = &e.category
            && row.category.as_deref() != Some(category.as_str())
        {
            row.category = Some(intern(&mut self.categories, category));
        }
        if e.kind == InventoryKind::Sale && counts_sales {
            let units = e.delta.map_or(0, i64::saturating_neg).max(0);
            let sales = row.sales.get_or_insert_default();
            sales.units.add(
                e.ts,
                Counts {
                    units: u16::try_from(units).unwrap_or(u16::MAX),
                    ..Counts::default()
                },
            );
            sales.last = Some(e.ts).into();
            let units_before = sales.window_units;
            sales.window_units = sales.window_units.saturating_add(units);
            self.sold.record_sale(&e.item_id, slot, units_before, units);
        }
    }

    /// Demand features of every item sold within the last 7 days, as of `at` (a window
    /// boundary; boundaries come in order), in id order.
    ///
    /// A row of the previous snapshot whose item had no event since, and whose totals hold
    /// for `at` too, is copied (with `at`) rather than computed again from the item's row:
    /// in steady traffic most items sold in the lookback sold nothing in the window, and
    /// reading their rows is a cache miss each.
    pub(crate) fn demand_snapshot(&mut self, at: Millis) -> Arc<Vec<DemandFeatures>> {
        let previous = std::mem::take(&mut self.snapshot);
        let computed = std::mem::take(&mut self.computed);
        debug_assert_eq!(previous.len(), computed.len());
        // The previous rows are the index's items when it was taken, in the same order: the
        // index has gained items since, and lost none.
        let mut previous_rows = previous.iter().zip(computed).peekable();
        let mut out = Vec::with_capacity(self.sold.ids.len());
        let mut records = Vec::with_capacity(self.sold.ids.len());
        let mut expired = Vec::new();
        for (item, &slot) in &self.sold.ids {
            let change = self.changes.get(slot).copied().unwrap_or(0);
            if let Some((features, computed)) =
                previous_rows.next_if(|(features, _)| Arc::ptr_eq(&features.item_id, item))
                && computed.holds_at(change, at)
            {
                if at - computed.last_sale <= DEMAND_LOOKBACK_MS {
                    out.push(DemandFeatures {
                        at,
                        ..features.clone()
                    });
                    records.push(computed);
                } else {
                    expired.push(Arc::clone(item));
                }
                continue;
            }
            let row = &mut self.rows[slot];
            match row.last_sale() {
                Some(last_sale) if at - last_sale <= DEMAND_LOOKBACK_MS => {
                    out.push(row.demand_features(Arc::clone(item), at));
                    let (from, until) = row
                        .sales
                        .as_ref()
                        .and_then(|s| s.units.span())
                        .unwrap_or((at, at));
                    records.push(SnapshotRow {
                        change,
                        last_sale,
                        from,
                        until,
                    });
                }
                _ => expired.push(Arc::clone(item)),
            }
        }
        // Items whose last sale fell out of the lookback leave the index: a later sale
        // puts them back, and `at` only grows.
        for item in &expired {
            self.sold.ids.remove(item);
        }
        self.snapshot = Arc::new(out);
        self.computed = records;
        Arc::clone(&self.snapshot)
    }

    /// Units each item sold in the window just applied, each item once, in the order of
    /// its first sale in the window (resets the counters).
    pub(crate) fn take_window_units(&mut self) -> Vec<(Arc<str>, i64)> {
        // Only a sale counts units, and a sale lists its item in `sold.window` (once: at
        // its first units in the window).
        let rows = &mut self.rows;
        self.sold
            .window
            .drain(..)
            .filter_map(|(item, slot)| {
                let units = rows[slot]
                    .sales
                    .as_mut()
                    .map_or(0, |s| std::mem::take(&mut s.window_units));
                (units != 0).then_some((item, units))
            })
            .collect()
    }

    /// Approximate bytes held: rows, ids, category names, the index and what the last
    /// demand snapshot was computed from (hash table slack not included). A category name
    /// shared by several holders counts its share in each (see [`Category::shared_bytes`]).
    pub(crate) fn approx_bytes(&self) -> usize {
        use std::mem::size_of;
        let slots = self.slots.approx_bytes(|_| 0);
        let rows: usize = self
            .rows
            .iter()
            .map(|row| {
                size_of::<InventoryRow>()
                    + row.category.as_ref().map_or(0, Category::shared_bytes)
                    + row
                        .sales
                        .as_ref()
                        .map_or(0, |s| size_of::<Sales>() + s.units.heap_bytes())
            })
            .sum();
        let categories: usize = self
            .categories
            .iter()
            .map(|c| size_of::<Category>() + c.shared_bytes())
            .sum();
        // The sold-items index: an id, a shared pointer and a slot per item, plus tree
        // overhead.
        let index: usize = self
            .sold
            .ids
            .keys()
            .map(|id| id.len() + 2 * size_of::<usize>() + size_of::<(Arc<str>, usize)>())
            .sum();
        // What the demand snapshot's rows were computed from: a count per row, and a
        // record per item of the last snapshot (the snapshot itself is its taker's).
        let snapshot = self.changes.capacity() * size_of::<u32>()
            + self.computed.capacity() * size_of::<SnapshotRow>();
        slots
            + rows
            + categories
            + index
            + snapshot
            + self.sold.window.capacity() * size_of::<(Arc<str>, usize)>()
    }

    /// Lists the items with a sale in `sold.ids` and those with units in the window in
    /// `sold.window` (after the rows were read back).
    fn index_sales(&mut self) {
        let mut sold = SoldIndex::default();
        for (item, &slot) in self.slots.iter() {
            let Some(sales) = &self.rows[slot].sales else {
                continue;
            };
            if sales.last.get().is_some() || sales.window_units != 0 {
                let id: Arc<str> = (*item).into();
                if sales.window_units != 0 {
                    sold.window.push((Arc::clone(&id), slot));
                }
                if sales.last.get().is_some() {
                    sold.ids.insert(id, slot);
                }
            }
        }
        self.sold = sold;
    }

    /// Makes the rows of one category share one copy of its name (after the rows were
    /// read back, each with a copy of its own).
    fn intern_categories(&mut self) {
        let categories = &mut self.categories;
        for row in &mut self.rows {
            if let Some(category) = &mut row.category {
                *category = intern(categories, category);
            }
        }
    }
}

/// The shared copy of `name` in `names`, added if new.
pub(crate) fn intern(names: &mut HashSet<Category>, name: &str) -> Category {
    match names.get(name) {
        Some(shared) => shared.clone(),
        None => {
            let shared = Category::from(name);
            names.insert(shared.clone());
            shared
        }
    }
}

impl SoldIndex {
    /// Records a sale of `units` of `item` (at `slot`), which had `units_before` in the
    /// window.
    fn record_sale(&mut self, item: &str, slot: usize, units_before: i64, units: i64) {
        let id = match self.ids.get_key_value(item) {
            Some((id, _)) => Arc::clone(id),
            None => {
                let id: Arc<str> = item.into();
                self.ids.insert(Arc::clone(&id), slot);
                id
            }
        };
        if units_before == 0 && units != 0 {
            self.window.push((id, slot));
        }
    }
}

impl PartialEq for Inventory {
    /// Equal when they hold the same rows by id (slots and the index are derived).
    fn eq(&self, other: &Self) -> bool {
        self.rows.len() == other.rows.len()
            && self.iter().all(|(item, row)| other.get(&item) == Some(row))
    }
}

impl Serialize for Inventory {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Inventory {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RowsById;

        impl<'de> Visitor<'de> for RowsById {
            type Value = Inventory;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of item id to inventory row")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Inventory, A::Error> {
                let mut inventory = Inventory::default();
                while let Some((item, row)) = map.next_entry::<String, InventoryRow>()? {
                    match inventory.slots.get(item.as_str()) {
                        // A repeated id keeps its last row, as a map would.
                        Some(&slot) => inventory.rows[slot] = row,
                        None => {
                            inventory.slots.insert(&item, inventory.rows.len());
                            inventory.rows.push(row);
                        }
                    }
                }
                inventory.index_sales();
                inventory.intern_categories();
                Ok(inventory)
            }
        }

        deserializer.deserialize_map(RowsById)
    }
}

#[cfg(test)]
mod tests {
    use rustc_hash::FxHashMap as HashMap;

    use super::*;

    fn event(item: &str, kind: InventoryKind, ts: Millis, delta: i64) -> InventoryEvent {
        InventoryEvent {
            event_id: format!("{item}-{ts}").into(),
            ts,
            item_id: item.into(),
            kind,
            on_hand: None,
            delta: Some(delta),
            price: Some(2.5),
            category: Some("c".into()),
        }
    }

    /// Guards against a panic on input: deltas at the limits of `i64` (the decoder only
    /// checks that they are integers) saturate the stock and the window's units.
    #[test]
    fn deltas_at_the_limits_of_i64_saturate_instead_of_overflowing() {
        let mut inventory = Inventory::default();
        for kind in [InventoryKind::Restock, InventoryKind::Restock] {
            inventory.apply(&event("a", kind, 1_000, i64::MAX), true);
        }
        assert_eq!(
            inventory.get("a").and_then(|r| r.on_hand.get()),
            Some(i64::MAX)
        );
        for _ in 0..3 {
            inventory.apply(&event("b", InventoryKind::Sale, 2_000, i64::MIN), true);
        }
        let row = inventory.get("b").expect("row");
        assert_eq!(row.on_hand.get(), Some(i64::MIN + 1));
        assert_eq!(row.window_units(), i64::MAX);
        assert_eq!(
            inventory.take_window_units(),
            vec![(Arc::from("b"), i64::MAX)]
        );
    }

    /// Guards the compact rows: 32 bytes, the rows of one category share one copy of its
    /// name (also after a read back and in a replica), and a replica's rows hold no sales.
    #[test]
    fn rows_are_compact_and_share_their_category_names() {
        assert_eq!(std::mem::size_of::<InventoryRow>(), 32);
        let mut inventory = Inventory::default();
        for (i, item) in ["a", "b", "c"].into_iter().enumerate() {
            inventory.apply(
                &event(item, InventoryKind::Sale, 1_000 * i as Millis, -1),
                true,
            );
        }
        let shared = |inv: &Inventory| {
            let names: Vec<&Category> = ["a", "b", "c"]
                .iter()
                .filter_map(|item| inv.get(item)?.category.as_ref())
                .collect();
            names.len() == 3 && names.iter().all(|n| n.ptr_eq(names[0]))
        };
        assert!(shared(&inventory));
        let bytes = rmp_serde::to_vec_named(&inventory).expect("serialise");
        let back: Inventory = rmp_serde::from_slice(&bytes).expect("read back");
        assert!(shared(&back));
        assert_eq!(back.categories.len(), 1);
        // The bytes of the row before it was compacted.
        #[derive(Serialize)]
        struct Before {
            on_hand: Option<i64>,
            price: Option<f64>,
            category: Option<String>,
            sales: Option<Box<CachedRolling>>,
            last_sale: Option<Millis>,
            window_units: i64,
        }
        let row = inventory.get("b").expect("seen").clone();
        let sales = row.sales.clone().expect("a sale");
        let before = Before {
            on_hand: row.on_hand.get(),
            price: row.price.get(),
            category: Some("c".to_string()),
            sales: Some(Box::new(sales.units.clone())),
            last_sale: sales.last.get(),
            window_units: sales.window_units,
        };
        assert_eq!(
            rmp_serde::to_vec_named(&row).expect("serialise"),
            rmp_serde::to_vec_named(&before).expect("serialise")
        );
        let replica = inventory.replica();
        assert!(shared(&replica));
        assert!(replica.iter().all(|(_, row)| row.sales.is_none()));
        assert_eq!(replica.get("a").and_then(|r| r.price.get()), Some(2.5));
    }

    #[test]
    fn the_table_serialises_as_the_map_of_id_to_row_it_replaced() {
        let mut inventory = Inventory::default();
        for (i, item) in ["b", "a", "c", "a"].into_iter().enumerate() {
            let ts = 1_000 * i as Millis;
            inventory.apply(&event(item, InventoryKind::Sale, ts, -1), true);
        }
        // The map the table replaced took each item at its first event.
        let mut as_map: HashMap<String, InventoryRow> = HashMap::default();
        for item in ["b", "a", "c"] {
            as_map.insert(item.to_string(), inventory.get(item).expect("seen").clone());
        }
        let bytes = rmp_serde::to_vec_named(&inventory).expect("serialise");
        let read_as_map: HashMap<String, InventoryRow> =
            rmp_serde::from_slice(&bytes).expect("read as the map");
        assert_eq!(read_as_map, as_map);
        let back: Inventory = rmp_serde::from_slice(&bytes).expect("read back");
        assert_eq!(back, inventory);
        assert_eq!(back.sold.ids.len(), 3);
        assert_eq!(back.get("a").map(InventoryRow::window_units), Some(2));
    }
}
