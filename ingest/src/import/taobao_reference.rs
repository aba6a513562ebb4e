//! The hard-coded Taobao importer that `mappings/taobao.toml` replaced, kept verbatim (as of
//! 21a8ead) as the reference the mapping must reproduce message for message (tests only).

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;

use compact_str::format_compact;
use serde::Serialize;

use crate::event::{
    ClickEvent, ClickKind, InputTopic, InventoryEvent, InventoryKind, Millis, OrderEvent,
    OrderLine, OrderStatus, Scenario, Text,
};
use crate::generator::GeneratedMessage;

/// What an import produced.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(super) struct ImportReport {
    /// Data rows read.
    pub rows: u64,
    /// Rows per behaviour.
    pub per_behavior: BTreeMap<String, u64>,
    /// Rows that could not be read: (line number, reason).
    pub rejected: Vec<(u64, String)>,
    /// Distinct users and items.
    pub users: u64,
    /// Distinct items.
    pub items: u64,
    /// Messages produced per topic.
    pub messages_per_topic: BTreeMap<String, u64>,
    /// Earliest and latest row time, epoch ms.
    pub first_ts: Millis,
    /// Latest row time.
    pub last_ts: Millis,
}

struct Row {
    line: u64,
    user: String,
    item: String,
    category: String,
    behavior: String,
    ts: Millis,
}

fn parse(line: u64, text: &str) -> Result<Row, String> {
    let fields: Vec<&str> = text.trim().split(',').map(str::trim).collect();
    let [user, item, category, behavior, ts] = fields[..] else {
        return Err(format!(
            "expected 5 comma-separated fields, found {}",
            fields.len()
        ));
    };
    for (name, value) in [
        ("user_id", user),
        ("item_id", item),
        ("category_id", category),
    ] {
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("{name} `{value}` is not a number"));
        }
    }
    if !matches!(behavior, "pv" | "cart" | "fav" | "buy") {
        return Err(format!("behavior `{behavior}` is not pv, cart, fav or buy"));
    }
    let secs: i64 = ts
        .parse()
        .map_err(|_| format!("timestamp `{ts}` is not epoch seconds"))?;
    Ok(Row {
        line,
        user: user.to_string(),
        item: item.to_string(),
        category: category.to_string(),
        behavior: behavior.to_string(),
        ts: secs.saturating_mul(1000),
    })
}

fn click_message(row: &Row, suffix: &str, kind: ClickKind, ts: Millis) -> GeneratedMessage {
    let day = ts.div_euclid(86_400_000);
    let event = ClickEvent {
        event_id: format_compact!("tb{}{suffix}", row.line),
        ts,
        user_id: row.user.as_str().into(),
        session_id: format_compact!("tb-{}-{day}", row.user),
        kind,
        item_id: Some(row.item.as_str().into()),
        scenario: Scenario::ProductDetail,
        position: None,
        device: None,
        price: None,
        query: None,
    };
    GeneratedMessage::valid(InputTopic::Clicks, row.user.clone(), &event, ts)
}

/// Reads a Taobao UserBehavior CSV and returns the contract messages in event-time order.
pub(super) fn import_taobao(
    input: impl BufRead,
) -> std::io::Result<(Vec<GeneratedMessage>, ImportReport)> {
    let mut report = ImportReport::default();
    let mut rows = Vec::new();
    for (index, line) in input.lines().enumerate() {
        let line_no = index as u64 + 1;
        let text = line?;
        if text.trim().is_empty() {
            continue;
        }
        report.rows += 1;
        match parse(line_no, &text) {
            Ok(row) => rows.push(row),
            Err(reason) => report.rejected.push((line_no, reason)),
        }
    }
    rows.sort_by_key(|r| (r.ts, r.line));
    let mut messages = Vec::new();
    let first = rows.first().map_or(0, |r| r.ts);
    let mut items: BTreeMap<&str, &str> = BTreeMap::new();
    let mut users = BTreeSet::new();
    for row in &rows {
        items.entry(&row.item).or_insert(&row.category);
        users.insert(&row.user);
    }
    for (n, (item, category)) in items.iter().enumerate() {
        let event = InventoryEvent {
            event_id: format_compact!("tbv{n}"),
            ts: first - 1_000,
            item_id: Text::from(*item),
            kind: InventoryKind::Snapshot,
            on_hand: None,
            delta: None,
            price: None,
            category: Some(Text::from(*category)),
        };
        messages.push(GeneratedMessage::valid(
            InputTopic::Inventory,
            item.to_string(),
            &event,
            event.ts,
        ));
    }
    for row in &rows {
        *report.per_behavior.entry(row.behavior.clone()).or_default() += 1;
        match row.behavior.as_str() {
            "pv" => {
                messages.push(click_message(row, "i", ClickKind::Impression, row.ts));
                messages.push(click_message(row, "c", ClickKind::Click, row.ts + 1));
            }
            "cart" => messages.push(click_message(row, "a", ClickKind::AddToCart, row.ts + 2)),
            "fav" => messages.push(click_message(row, "f", ClickKind::Favorite, row.ts + 2)),
            _ => {
                let order = OrderEvent {
                    order_id: format_compact!("tbo{}", row.line),
                    ts: row.ts + 3,
                    user_id: row.user.as_str().into(),
                    status: OrderStatus::Placed,
                    lines: vec![OrderLine {
                        item_id: row.item.as_str().into(),
                        quantity: 1,
                        unit_price: 0.0,
                    }],
                    currency: "CNY".into(),
                };
                messages.push(GeneratedMessage::valid(
                    InputTopic::Orders,
                    row.user.clone(),
                    &order,
                    order.ts,
                ));
            }
        }
    }
    for m in &messages {
        *report
            .messages_per_topic
            .entry(m.topic.as_str().to_string())
            .or_default() += 1;
    }
    report.users = users.len() as u64;
    report.items = items.len() as u64;
    report.first_ts = first;
    report.last_ts = rows.last().map_or(0, |r| r.ts);
    Ok((messages, report))
}
