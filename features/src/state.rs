//! Feature state: counters per user and item, latest inventory per item, and impressions
//! waiting for their click label. Updated only from closed windows, in deterministic order.

use std::collections::{BTreeMap, HashMap};

use shopstream_ingest::event::{ClickEvent, ClickKind, Event, InventoryKind, Millis};

use crate::example::{Example, Features};

#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    impressions: i64,
    clicks: i64,
}

/// Everything the features of the next event may depend on.
#[derive(Debug, Clone, Default)]
pub struct FeatureState {
    users: HashMap<String, Counts>,
    items: HashMap<String, Counts>,
    on_hand: HashMap<String, i64>,
    /// Impressions whose click label has not matured, by (ts, application order).
    pending: BTreeMap<(Millis, u64), (Example, String)>,
    /// (user, item, session) -> pending keys, for the click join.
    pending_index: HashMap<(String, String, String), Vec<(Millis, u64)>>,
    applied: u64,
}

impl FeatureState {
    /// Features of `click` (an impression) from the current state.
    pub fn features_of(&self, click: &ClickEvent) -> Features {
        let user = self.users.get(&click.user_id).copied().unwrap_or_default();
        let item_id = click.item_id.as_deref().unwrap_or_default();
        let item = self.items.get(item_id).copied().unwrap_or_default();
        Features {
            scenario: click.scenario,
            device: click.device.clone(),
            position: click.position,
            price: click.price,
            user_impressions: user.impressions,
            user_clicks: user.clicks,
            item_impressions: item.impressions,
            item_clicks: item.clicks,
            item_on_hand: self.on_hand.get(item_id).copied(),
        }
    }

    /// Applies a group of events that share one timestamp. Features of the group's
    /// impressions are taken before any of the group is applied, so an example never sees
    /// an event of its own millisecond (no leakage).
    pub fn apply_same_ts(&mut self, group: &[&Event], click_window_ms: Millis) {
        let mut new_pending = Vec::new();
        for event in group {
            if let Event::Click(c) = event
                && c.kind == ClickKind::Impression
                && let Some(item_id) = &c.item_id
            {
                let example = Example {
                    event_id: c.event_id.clone(),
                    ts: c.ts,
                    user_id: c.user_id.clone(),
                    item_id: item_id.clone(),
                    features: self.features_of(c),
                    clicked: false,
                };
                new_pending.push((example, c.session_id.clone()));
            }
        }
        for event in group {
            self.apply(event, click_window_ms);
        }
        for (example, session) in new_pending {
            self.applied += 1;
            let key = (example.ts, self.applied);
            self.pending_index
                .entry((
                    example.user_id.clone(),
                    example.item_id.clone(),
                    session.clone(),
                ))
                .or_default()
                .push(key);
            self.pending.insert(key, (example, session));
        }
    }

    fn apply(&mut self, event: &Event, click_window_ms: Millis) {
        match event {
            Event::Click(c) => {
                let (user_delta, item_delta) = match c.kind {
                    ClickKind::Impression => (
                        Counts {
                            impressions: 1,
                            clicks: 0,
                        },
                        Counts {
                            impressions: 1,
                            clicks: 0,
                        },
                    ),
                    ClickKind::Click => (
                        Counts {
                            impressions: 0,
                            clicks: 1,
                        },
                        Counts {
                            impressions: 0,
                            clicks: 1,
                        },
                    ),
                    _ => return,
                };
                let user = self.users.entry(c.user_id.clone()).or_default();
                user.impressions += user_delta.impressions;
                user.clicks += user_delta.clicks;
                if let Some(item_id) = &c.item_id {
                    let item = self.items.entry(item_id.clone()).or_default();
                    item.impressions += item_delta.impressions;
                    item.clicks += item_delta.clicks;
                    if c.kind == ClickKind::Click {
                        self.label_click(c, item_id, click_window_ms);
                    }
                }
            }
            Event::Inventory(e) => {
                if let Some(on_hand) = e.on_hand {
                    self.on_hand.insert(e.item_id.clone(), on_hand);
                } else if let Some(delta) = e.delta
                    && e.kind != InventoryKind::Snapshot
                {
                    *self.on_hand.entry(e.item_id.clone()).or_default() += delta;
                }
            }
            Event::Order(_) => {}
        }
    }

    /// Marks the latest earlier impression of the same user, item and session within the
    /// click window as clicked.
    fn label_click(&mut self, click: &ClickEvent, item_id: &str, click_window_ms: Millis) {
        let key = (
            click.user_id.clone(),
            item_id.to_string(),
            click.session_id.clone(),
        );
        let Some(keys) = self.pending_index.get(&key) else {
            return;
        };
        let target = keys
            .iter()
            .filter(|(ts, _)| *ts < click.ts && click.ts - *ts <= click_window_ms)
            .max()
            .copied();
        if let Some(target) = target
            && let Some((example, _)) = self.pending.get_mut(&target)
        {
            example.clicked = true;
        }
    }

    /// Removes and returns, in (ts, order) order, the examples whose click window ends
    /// before `boundary` (their label can no longer change).
    pub fn mature_before(&mut self, boundary: Millis, click_window_ms: Millis) -> Vec<Example> {
        let mut out = Vec::new();
        while let Some(entry) = self.pending.first_entry() {
            if entry.key().0 + click_window_ms >= boundary {
                break;
            }
            let (key, (example, session)) = entry.remove_entry();
            let index_key = (example.user_id.clone(), example.item_id.clone(), session);
            if let Some(keys) = self.pending_index.get_mut(&index_key) {
                keys.retain(|k| *k != key);
                if keys.is_empty() {
                    self.pending_index.remove(&index_key);
                }
            }
            out.push(example);
        }
        out
    }

    /// Removes and returns every pending example (end of input).
    pub fn mature_all(&mut self) -> Vec<Example> {
        self.pending_index.clear();
        std::mem::take(&mut self.pending)
            .into_values()
            .map(|(example, _)| example)
            .collect()
    }

    /// Number of impressions waiting for their label.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }
}
