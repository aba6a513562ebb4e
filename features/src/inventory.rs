//! The inventory table: the latest facts about each item (joined as of event time), its
//! sales, and the sold-items index that each window's demand snapshot walks.
//!
//! Rows sit in a vector, in the order their items were first seen, and are never removed
//! (a catalogue's items outlive any TTL); a hash map gives an item's slot. The sold-items
//! index holds slots, so a window's demand snapshot reads each sold item's row directly
//! instead of hashing and comparing its id. The table serialises as the map of id to row
//! it replaces (in the map's iteration order), and the index, derived from the rows, is
//! rebuilt when it is read back.

use std::collections::BTreeMap;
use std::sync::Arc;

// FxHash: fast, and deterministic across runs (the table serialises in its order).
use rustc_hash::FxHashMap as HashMap;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use shopstream_ingest::event::{InventoryEvent, InventoryKind, Millis};

use crate::rolling::{CachedRolling, Counts};
use crate::state::DemandFeatures;

/// Items sold within this long are forecast for the next window.
pub(crate) const DEMAND_LOOKBACK_MS: Millis = 7 * 86_400_000;

/// The latest inventory facts about an item.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct InventoryRow {
    pub(crate) on_hand: Option<i64>,
    pub(crate) price: Option<f64>,
    pub(crate) category: Option<String>,
    /// Units sold (inventory `sale` events), rolling over 1 h / 24 h / 7 d; boxed and
    /// absent until the item's first sale (most items of a catalogue, and every row of a
    /// shard's replica, which counts no sales, do without its 37 buckets).
    pub(crate) sales: Option<Box<CachedRolling>>,
    /// Time of the latest sale.
    pub(crate) last_sale: Option<Millis>,
    /// Units sold in the window being applied.
    pub(crate) window_units: i64,
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
                .map(|sales| sales.totals(at - 1))
                .unwrap_or_default(),
            on_hand: self.on_hand,
            price: self.price,
        }
    }
}

/// Every item's row, by id, with the index of the items sold.
#[derive(Debug, Clone, Default)]
pub(crate) struct Inventory {
    /// Each item's slot in `rows`.
    slots: HashMap<String, usize>,
    /// The rows, in the order their items were first seen.
    rows: Vec<InventoryRow>,
    /// Derived from the rows.
    sold: SoldIndex,
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
        self.slots.get(item).map(|&slot| &self.rows[slot])
    }

    /// Items and their rows, in the order the table serialises in.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&String, &InventoryRow)> {
        self.slots
            .iter()
            .map(|(item, &slot)| (item, &self.rows[slot]))
    }

    /// A copy of what features join (on hand, price, category), without sales: the
    /// inventory of a shard's replica, which counts none.
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
                    ..InventoryRow::default()
                })
                .collect(),
            sold: SoldIndex::default(),
        }
    }

    /// Applies an inventory event; sales count toward demand when `counts_sales`.
    pub(crate) fn apply(&mut self, e: &InventoryEvent, counts_sales: bool) {
        let slot = match self.slots.get(e.item_id.as_str()) {
            Some(&slot) => slot,
            None => {
                // The id is copied once, when the item is first seen.
                let slot = self.rows.len();
                self.slots.insert(e.item_id.clone(), slot);
                self.rows.push(InventoryRow::default());
                slot
            }
        };
        let row = &mut self.rows[slot];
        match (e.on_hand, e.delta) {
            (Some(on_hand), _) => row.on_hand = Some(on_hand),
            (None, Some(delta)) if e.kind != InventoryKind::Snapshot => {
                row.on_hand = Some(row.on_hand.unwrap_or(0) + delta);
            }
            _ => {}
        }
        if let Some(price) = e.price {
            row.price = Some(price);
        }
        if let Some(category) = &e.category
            && row.category.as_ref() != Some(category)
        {
            row.category = Some(category.clone());
        }
        if e.kind == InventoryKind::Sale && counts_sales {
            let units = e.delta.map_or(0, |d| -d).max(0);
            row.sales.get_or_insert_default().add(
                e.ts,
                Counts {
                    units: u16::try_from(units).unwrap_or(u16::MAX),
                    ..Counts::default()
                },
            );
            row.last_sale = Some(e.ts);
            let units_before = row.window_units;
            row.window_units += units;
            self.sold.record_sale(&e.item_id, slot, units_before, units);
        }
    }

    /// Demand features of every item sold within the last 7 days, as of `at` (a window
    /// boundary; boundaries come in order), in id order.
    pub(crate) fn demand_snapshot(&mut self, at: Millis) -> Vec<DemandFeatures> {
        let mut out = Vec::with_capacity(self.sold.ids.len());
        let mut expired = Vec::new();
        for (item, &slot) in &self.sold.ids {
            let row = &mut self.rows[slot];
            if row.last_sale.is_some_and(|t| at - t <= DEMAND_LOOKBACK_MS) {
                out.push(row.demand_features(Arc::clone(item), at));
            } else {
                expired.push(Arc::clone(item));
            }
        }
        // Items whose last sale fell out of the lookback leave the index: a later sale
        // puts them back, and `at` only grows.
        for item in &expired {
            self.sold.ids.remove(item);
        }
        out
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
                let units = std::mem::take(&mut rows[slot].window_units);
                (units != 0).then_some((item, units))
            })
            .collect()
    }

    /// Approximate bytes held: rows, ids and the index (hash table slack not included).
    pub(crate) fn approx_bytes(&self) -> usize {
        use std::mem::size_of;
        let rows: usize = self
            .iter()
            .map(|(item, row)| {
                item.len()
                    + size_of::<(String, usize)>()
                    + size_of::<InventoryRow>()
                    + row.category.as_ref().map_or(0, String::len)
                    + row
                        .sales
                        .as_ref()
                        .map_or(0, |s| size_of::<CachedRolling>() + s.heap_bytes())
            })
            .sum();
        // The sold-items index: an id, a shared pointer and a slot per item, plus tree
        // overhead.
        let index: usize = self
            .sold
            .ids
            .keys()
            .map(|id| id.len() + 2 * size_of::<usize>() + size_of::<(Arc<str>, usize)>())
            .sum();
        rows + index + self.sold.window.capacity() * size_of::<(Arc<str>, usize)>()
    }

    /// Lists the items with a sale in `sold.ids` and those with units in the window in
    /// `sold.window` (after the rows were read back).
    fn index_sales(&mut self) {
        let mut sold = SoldIndex::default();
        for (item, &slot) in &self.slots {
            let row = &self.rows[slot];
            if row.last_sale.is_some() || row.window_units != 0 {
                let id: Arc<str> = item.as_str().into();
                if row.window_units != 0 {
                    sold.window.push((Arc::clone(&id), slot));
                }
                if row.last_sale.is_some() {
                    sold.ids.insert(id, slot);
                }
            }
        }
        self.sold = sold;
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
            && self.iter().all(|(item, row)| other.get(item) == Some(row))
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
                    match inventory.slots.get(&item) {
                        // A repeated id keeps its last row, as a map would.
                        Some(&slot) => inventory.rows[slot] = row,
                        None => {
                            inventory.slots.insert(item, inventory.rows.len());
                            inventory.rows.push(row);
                        }
                    }
                }
                inventory.index_sales();
                Ok(inventory)
            }
        }

        deserializer.deserialize_map(RowsById)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(item: &str, kind: InventoryKind, ts: Millis, delta: i64) -> InventoryEvent {
        InventoryEvent {
            event_id: format!("{item}-{ts}"),
            ts,
            item_id: item.to_string(),
            kind,
            on_hand: None,
            delta: Some(delta),
            price: Some(2.5),
            category: Some("c".to_string()),
        }
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
        assert_eq!(
            bytes,
            rmp_serde::to_vec_named(&as_map).expect("serialise the map")
        );
        let back: Inventory = rmp_serde::from_slice(&bytes).expect("read back");
        assert_eq!(back, inventory);
        assert_eq!(back.sold.ids.len(), 3);
        assert_eq!(back.get("a").map(|r| r.window_units), Some(2));
    }
}
