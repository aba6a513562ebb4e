//! A converted row -> the contract messages it becomes, with the ids, sessions and keys
//! the mapping's conventions give (docs/mappings.md).

use std::collections::HashMap;

use compact_str::format_compact;

use super::Mapping;
use super::record::Row;
use super::spec::{EmitKind, SnapshotMode, click_names};
use crate::event::{
    ClickEvent, ClickKind, InputTopic, InventoryEvent, InventoryKind, Millis, OrderEvent,
    OrderLine, OrderStatus, Text,
};
use crate::generator::GeneratedMessage;

/// The last category and price published for an item (`snapshots = "on_change"`).
type ItemState = (Option<String>, Option<f64>);

/// Turns rows into messages; holds per-item state only for `snapshots = "on_change"`.
pub struct Emitter<'a> {
    mapping: &'a Mapping,
    prefix: String,
    items: HashMap<String, ItemState>,
}

impl<'a> Emitter<'a> {
    /// An emitter with no item state yet; ids start with the mapping's `id_prefix`.
    pub fn new(mapping: &'a Mapping) -> Self {
        Self::with_prefix(mapping, mapping.spec.source.id_prefix.clone())
    }

    /// An emitter whose derived ids start with `prefix`.
    pub fn with_prefix(mapping: &'a Mapping, prefix: String) -> Self {
        Self {
            mapping,
            prefix,
            items: HashMap::new(),
        }
    }

    /// Items seen so far (`on_change` only).
    pub fn items_seen(&self) -> u64 {
        self.items.len() as u64
    }

    /// The messages of one row, appended to `out` in publishing order.
    pub fn emit(&mut self, row: &Row, out: &mut Vec<GeneratedMessage>) {
        let spec = &self.mapping.spec;
        let prefix = &self.prefix;
        if spec.inventory.snapshots == SnapshotMode::OnChange
            && let Some(item) = &row.item_id
        {
            // What the row says, a missing value keeping the last known one; compared
            // before anything is copied (most rows change nothing).
            let previous = self.items.get(item);
            let category = row
                .category
                .as_ref()
                .or_else(|| previous.and_then(|p| p.0.as_ref()));
            let price = row.price.or_else(|| previous.and_then(|p| p.1));
            let changed = previous.is_none_or(|p| p.0.as_ref() != category || p.1 != price);
            if changed {
                let state = (category.cloned(), price);
                if state.0.is_some() || state.1.is_some() {
                    out.push(snapshot(
                        format_compact!("{prefix}v{}", row.line),
                        row.ts - 1,
                        item,
                        &state,
                    ));
                }
                self.items.insert(item.clone(), state);
            }
        }
        let Some(emits) = spec.events.get(&row.kind) else {
            return;
        };
        for e in emits {
            let ts = row.ts + e.after_ms;
            let kind = match e.emit {
                EmitKind::Click(kind) => (kind, click_names(kind).1),
                EmitKind::Order => {
                    let order = OrderEvent {
                        order_id: row
                            .event_id
                            .as_deref()
                            .map_or_else(|| format_compact!("{prefix}o{}", row.line), Text::from),
                        ts,
                        user_id: row.user_id.as_str().into(),
                        status: OrderStatus::Placed,
                        lines: vec![OrderLine {
                            item_id: row.item_id.as_deref().unwrap_or_default().into(),
                            quantity: row.quantity.unwrap_or(spec.defaults.quantity),
                            unit_price: row.price.unwrap_or(spec.defaults.unit_price),
                        }],
                        currency: spec.defaults.currency.as_str().into(),
                    };
                    out.push(GeneratedMessage::valid(
                        InputTopic::Orders,
                        row.user_id.clone(),
                        &order,
                        ts,
                    ));
                    continue;
                }
            };
            let search = kind.0 == ClickKind::Search;
            let event_id = match &row.event_id {
                Some(id) if emits.iter().filter(|e| e.emit != EmitKind::Order).count() == 1 => {
                    Text::from(id.as_str())
                }
                Some(id) => format_compact!("{id}{}", kind.1),
                None => format_compact!("{prefix}{}{}", row.line, kind.1),
            };
            let event = ClickEvent {
                event_id,
                ts,
                user_id: row.user_id.as_str().into(),
                session_id: row.session_id.as_deref().map_or_else(
                    || format_compact!("{prefix}-{}-{}", row.user_id, ts.div_euclid(86_400_000)),
                    Text::from,
                ),
                kind: kind.0,
                item_id: if search {
                    None
                } else {
                    row.item_id.as_deref().map(Text::from)
                },
                scenario: e
                    .scenario
                    .or(row.scenario)
                    .unwrap_or(spec.defaults.scenario),
                position: row.position,
                device: row.device.as_deref().map(Text::from),
                price: if search { None } else { row.price },
                query: if search {
                    row.query.as_deref().map(Text::from)
                } else {
                    None
                },
            };
            out.push(GeneratedMessage::valid(
                InputTopic::Clicks,
                row.user_id.clone(),
                &event,
                ts,
            ));
        }
    }
}

/// An inventory snapshot with unknown stock.
pub(crate) fn snapshot(
    event_id: Text,
    ts: Millis,
    item: &str,
    (category, price): &ItemState,
) -> GeneratedMessage {
    let event = InventoryEvent {
        event_id,
        ts,
        item_id: item.into(),
        kind: InventoryKind::Snapshot,
        on_hand: None,
        delta: None,
        price: *price,
        category: category.as_deref().map(Text::from),
    };
    GeneratedMessage::valid(InputTopic::Inventory, item.to_string(), &event, ts)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::HashMap as Map;

    use super::*;

    fn mapping() -> Mapping {
        Mapping::parse(
            r#"
            [source]
            format = "csv"
            columns = ["t", "u", "k", "i", "c", "p"]
            id_prefix = "x"
            [fields]
            time = { path = "t", type = "epoch_ms" }
            user_id = "u"
            kind = "k"
            item_id = "i"
            category = "c"
            price = { path = "p", type = "number" }
            [defaults]
            currency = "EUR"
            [events]
            view = [{ emit = "impression" }, { emit = "click", after_ms = 1 }]
            buy = [{ emit = "order", after_ms = 3 }]
            [inventory]
            snapshots = "on_change"
            "#,
            "test",
        )
        .unwrap()
    }

    fn run(m: &Mapping, lines: &[&str]) -> Vec<serde_json::Value> {
        let cols = crate::mapping::header_index(&m.spec.source.columns);
        let mut emitter = Emitter::new(m);
        let mut out = Vec::new();
        for (n, text) in lines.iter().enumerate() {
            let record = m.record(text, &cols).unwrap();
            emitter.emit(&m.row(n as u64 + 1, &record).unwrap(), &mut out);
        }
        out.iter()
            .map(|msg| {
                let mut v: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
                v["topic"] = msg.topic.as_str().into();
                v["key"] = msg.key.clone().into();
                v
            })
            .collect()
    }

    #[test]
    fn a_view_is_an_impression_then_a_click_and_a_buy_an_order_at_the_price() {
        let m = mapping();
        let out = run(&m, &["1000,u1,view,i1,shoes,10", "5000,u1,buy,i1,shoes,10"]);
        let kinds: Vec<_> = out
            .iter()
            .map(|v| (v["topic"].as_str().unwrap().to_string(), v["ts"].as_i64()))
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("inventory".to_string(), Some(999)),
                ("clicks".to_string(), Some(1000)),
                ("clicks".to_string(), Some(1001)),
                ("orders".to_string(), Some(5003)),
            ]
        );
        assert_eq!(out[1]["event_id"], "x1i");
        assert_eq!(out[2]["event_id"], "x1c");
        assert_eq!(out[2]["session_id"], "x-u1-0");
        assert_eq!(out[2]["price"], 10.0);
        assert_eq!(out[3]["order_id"], "xo2");
        assert_eq!(out[3]["currency"], "EUR");
        assert_eq!(out[3]["lines"][0]["unit_price"], 10.0);
        assert_eq!(out[0]["category"], "shoes");
    }

    #[test]
    fn snapshots_follow_changes_of_category_or_price_only() {
        let m = mapping();
        let out = run(
            &m,
            &[
                "1000,u1,view,i1,shoes,10",
                "2000,u2,view,i1,shoes,10",
                "3000,u2,view,i1,,12",
                "4000,u3,view,i2,,",
            ],
        );
        let snaps: Map<String, (i64, serde_json::Value, serde_json::Value)> = out
            .iter()
            .filter(|v| v["topic"] == "inventory")
            .map(|v| {
                (
                    v["event_id"].as_str().unwrap().to_string(),
                    (
                        v["ts"].as_i64().unwrap(),
                        v["category"].clone(),
                        v["price"].clone(),
                    ),
                )
            })
            .collect();
        // Line 2 repeats line 1; line 3 changes the price and keeps the category; i2 has
        // nothing to say.
        assert_eq!(snaps.len(), 2, "{snaps:?}");
        assert_eq!(snaps["xv1"], (999, "shoes".into(), 10.0.into()));
        assert_eq!(snaps["xv3"], (2999, "shoes".into(), 12.0.into()));
    }
}
