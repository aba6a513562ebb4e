//! The v1 topic contract as Rust types (see `docs/topic-contract.md`).
//!
//! Timestamps are event time in epoch milliseconds ([`Millis`]); on the wire `ts` is either
//! an RFC 3339 string with a zone or an integer of epoch milliseconds. Ids are strings on
//! the wire; integer ids (as in the Taobao log) are accepted and kept as their decimal text.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

/// Event time in milliseconds since the Unix epoch, UTC.
pub type Millis = i64;

/// The text of an event's id and string fields: held inline up to 24 bytes (the ids of
/// the generator and of both sample logs), on the heap beyond. Every event carries several,
/// and each was a heap allocation to make and to free on the hot path. Serialises as a
/// plain string; `&*text` is a `&str`.
pub type Text = compact_str::CompactString;

/// Bytes `text` holds on the heap: none when it is inline.
pub fn heap_bytes(text: &Text) -> usize {
    if text.is_heap_allocated() {
        text.capacity()
    } else {
        0
    }
}

/// Epoch microseconds of `ms`, the unit of every timestamp the store writes (saturating:
/// no event time is near the bounds). The one place milliseconds become microseconds.
pub const fn ms_to_micros(ms: Millis) -> i64 {
    ms.saturating_mul(1000)
}

/// Epoch milliseconds of `micros` (rounded down), reading store timestamps back.
pub const fn micros_to_ms(micros: i64) -> Millis {
    micros.div_euclid(1000)
}

/// Which input topic an event came from. The order of the variants is the tie-break order
/// used when events with the same timestamp are applied (clicks, then orders, then
/// inventory).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputTopic {
    /// `shop.clicks`, keyed by user_id.
    Clicks,
    /// `shop.orders`, keyed by user_id.
    Orders,
    /// `shop.inventory`, keyed by item_id.
    Inventory,
}

impl InputTopic {
    /// All input topics in tie-break order.
    pub const ALL: [InputTopic; 3] = [
        InputTopic::Clicks,
        InputTopic::Orders,
        InputTopic::Inventory,
    ];

    /// Stable short name, used in metrics and summaries.
    pub fn as_str(self) -> &'static str {
        match self {
            InputTopic::Clicks => "clicks",
            InputTopic::Orders => "orders",
            InputTopic::Inventory => "inventory",
        }
    }
}

/// Kind of clickstream event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClickKind {
    /// An item was shown to the user.
    Impression,
    /// The user opened an item.
    Click,
    /// The user put an item in the cart.
    AddToCart,
    /// The user took an item out of the cart.
    RemoveFromCart,
    /// The user marked an item as favourite.
    Favorite,
    /// The user searched; `item_id` is absent and `query` holds the text.
    Search,
}

/// Where on the shop the event happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    /// The personalised home feed.
    HomeFeed,
    /// Search results.
    Search,
    /// Recommendations on a product page.
    ProductDetail,
    /// Recommendations in the cart.
    Cart,
    /// Push notifications.
    Push,
}

impl Scenario {
    /// All scenarios, in a fixed order (used for one-hot encodings and reports).
    pub const ALL: [Scenario; 5] = [
        Scenario::HomeFeed,
        Scenario::Search,
        Scenario::ProductDetail,
        Scenario::Cart,
        Scenario::Push,
    ];

    /// The contract's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Scenario::HomeFeed => "home_feed",
            Scenario::Search => "search",
            Scenario::ProductDetail => "product_detail",
            Scenario::Cart => "cart",
            Scenario::Push => "push",
        }
    }
}

/// A `shop.clicks` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClickEvent {
    /// Unique id of the event (dedupe key).
    #[serde(deserialize_with = "de_id")]
    pub event_id: Text,
    /// Event time.
    #[serde(deserialize_with = "de_ts")]
    pub ts: Millis,
    /// The user; also the message key.
    #[serde(deserialize_with = "de_id")]
    pub user_id: Text,
    /// The browsing session.
    #[serde(deserialize_with = "de_id")]
    pub session_id: Text,
    /// What happened.
    #[serde(rename = "type", deserialize_with = "de_enum")]
    pub kind: ClickKind,
    /// The item; absent only for searches.
    #[serde(
        default,
        deserialize_with = "de_opt_id",
        skip_serializing_if = "Option::is_none"
    )]
    pub item_id: Option<Text>,
    /// Where it happened.
    #[serde(deserialize_with = "de_enum")]
    pub scenario: Scenario,
    /// Slot in the list shown, 0 = top.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<u32>,
    /// Device class, for example `ios`, `android`, `web`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<Text>,
    /// Price shown with the item.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<f64>,
    /// Search text (searches only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<Text>,
}

/// Status of an order event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// The order was placed.
    Placed,
    /// A previously placed order was cancelled (a retraction for attribution).
    Cancelled,
}

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderLine {
    /// The item bought.
    #[serde(deserialize_with = "de_id")]
    pub item_id: Text,
    /// Units bought (1 to 1,000,000; a signed type so that negative values are reported as
    /// out of range rather than as a type error).
    pub quantity: i64,
    /// Price per unit.
    pub unit_price: f64,
}

/// A `shop.orders` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderEvent {
    /// The order (dedupe key together with `status`).
    #[serde(deserialize_with = "de_id")]
    pub order_id: Text,
    /// Event time.
    #[serde(deserialize_with = "de_ts")]
    pub ts: Millis,
    /// The buyer; also the message key.
    #[serde(deserialize_with = "de_id")]
    pub user_id: Text,
    /// Placed or cancelled.
    #[serde(deserialize_with = "de_enum")]
    pub status: OrderStatus,
    /// What was bought.
    pub lines: Vec<OrderLine>,
    /// ISO 4217 currency code.
    pub currency: Text,
}

impl OrderEvent {
    /// Sum of quantity x unit price over the lines.
    pub fn revenue(&self) -> f64 {
        self.lines
            .iter()
            .map(|l| l.quantity as f64 * l.unit_price)
            .sum()
    }
}

/// Kind of inventory event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InventoryKind {
    /// Full state of the item: `on_hand` is authoritative.
    Snapshot,
    /// Stock arrived: `delta` > 0.
    Restock,
    /// Stock left through an order: `delta` < 0.
    Sale,
    /// Manual correction (returns, shrinkage, cancelled orders).
    Adjustment,
}

/// A `shop.inventory` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InventoryEvent {
    /// Unique id of the event (dedupe key).
    #[serde(deserialize_with = "de_id")]
    pub event_id: Text,
    /// Event time.
    #[serde(deserialize_with = "de_ts")]
    pub ts: Millis,
    /// The item; also the message key.
    #[serde(deserialize_with = "de_id")]
    pub item_id: Text,
    /// What happened.
    #[serde(deserialize_with = "de_enum")]
    pub kind: InventoryKind,
    /// Units on hand after the event, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_hand: Option<i64>,
    /// Change in units, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<i64>,
    /// Current price, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<f64>,
    /// Category of the item, when known.
    #[serde(
        default,
        deserialize_with = "de_opt_id",
        skip_serializing_if = "Option::is_none"
    )]
    pub category: Option<Text>,
}

/// A decoded, valid input event. (Serializable for checkpoints, which hold the events
/// of windows still open; the wire format is the contract's JSON, decoded in [`crate::decode`].)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Event {
    /// From `shop.clicks`.
    Click(ClickEvent),
    /// From `shop.orders`.
    Order(OrderEvent),
    /// From `shop.inventory`.
    Inventory(InventoryEvent),
}

impl Event {
    /// Event time.
    pub fn ts(&self) -> Millis {
        match self {
            Event::Click(e) => e.ts,
            Event::Order(e) => e.ts,
            Event::Inventory(e) => e.ts,
        }
    }

    /// The topic this kind of event belongs to.
    pub fn topic(&self) -> InputTopic {
        match self {
            Event::Click(_) => InputTopic::Clicks,
            Event::Order(_) => InputTopic::Orders,
            Event::Inventory(_) => InputTopic::Inventory,
        }
    }
}

/// Serializes a timestamp as RFC 3339 with millisecond precision and a `Z` zone.
pub fn ts_to_rfc3339(ts: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(ts)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| ts.to_string())
}

fn de_ts<'de, D: Deserializer<'de>>(d: D) -> Result<Millis, D::Error> {
    struct TsVisitor;
    impl Visitor<'_> for TsVisitor {
        type Value = Millis;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an RFC 3339 timestamp with zone or integer epoch milliseconds")
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Millis, E> {
            Ok(v)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Millis, E> {
            i64::try_from(v).map_err(|_| E::custom(format!("epoch milliseconds {v} overflow")))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Millis, E> {
            chrono::DateTime::parse_from_rfc3339(v.trim())
                .map(|t| t.timestamp_millis())
                .map_err(|e| E::custom(format!("`{v}` is not RFC 3339 with zone: {e}")))
        }
    }
    d.deserialize_any(TsVisitor)
}

/// Enum values are matched after trimming and ASCII lower-casing (`" Impression"` is
/// `impression`); values already in canonical form take a path without allocation.
fn de_enum<'de, D: Deserializer<'de>, T: de::DeserializeOwned>(d: D) -> Result<T, D::Error> {
    struct EnumVisitor<T>(std::marker::PhantomData<T>);
    impl<T: de::DeserializeOwned> Visitor<'_> for EnumVisitor<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            use serde::de::IntoDeserializer;
            let canonical = v.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
            let parse = |s: &str| {
                T::deserialize(s.into_deserializer()).map_err(|e: de::value::Error| E::custom(e))
            };
            if canonical {
                parse(v)
            } else {
                parse(&v.trim().to_ascii_lowercase())
            }
        }
    }
    d.deserialize_str(EnumVisitor(std::marker::PhantomData))
}

struct IdVisitor;
impl Visitor<'_> for IdVisitor {
    type Value = Text;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string or integer id")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Text, E> {
        Ok(Text::from(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Text, E> {
        Ok(compact_str::ToCompactString::to_compact_string(&v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Text, E> {
        Ok(compact_str::ToCompactString::to_compact_string(&v))
    }
}

fn de_id<'de, D: Deserializer<'de>>(d: D) -> Result<Text, D::Error> {
    d.deserialize_any(IdVisitor)
}

fn de_opt_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Text>, D::Error> {
    struct OptIdVisitor;
    impl<'de> Visitor<'de> for OptIdVisitor {
        type Value = Option<Text>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string or integer id, or null")
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(IdVisitor).map(Some)
        }
    }
    d.deserialize_option(OptIdVisitor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_of_any_length_are_kept_whole_inline_or_on_the_heap() {
        let long = "u-0123456789abcdef0123456789abcdef";
        let json = format!(
            r#"{{"event_id":"e1","ts":1767571200000,"user_id":"{long}","session_id":"s",
                "type":"impression","item_id":123456789012,"scenario":"search"}}"#
        );
        let click: ClickEvent = serde_json::from_str(&json).expect("a valid click");
        assert_eq!(click.user_id, long);
        assert_eq!(
            click.item_id.as_deref(),
            Some("123456789012"),
            "integer ids as text"
        );
        // Short ids cost no allocation; a long one is held whole on the heap.
        assert_eq!(heap_bytes(&click.event_id), 0);
        assert_eq!(heap_bytes(click.item_id.as_ref().expect("item")), 0);
        assert!(heap_bytes(&click.user_id) >= long.len());
        // Written back as the same strings.
        let back: serde_json::Value = serde_json::to_value(&click).expect("json");
        assert_eq!(back["user_id"], long);
        assert_eq!(back["item_id"], "123456789012");
    }

    #[test]
    fn events_serialise_their_text_as_plain_strings_byte_for_byte() {
        let click = ClickEvent {
            event_id: "e1".into(),
            ts: 1_767_571_200_000,
            user_id: "u-0123456789abcdef0123456789abcdef".into(),
            session_id: "s\u{1f}1".into(),
            kind: ClickKind::Impression,
            item_id: Some("sku7".into()),
            scenario: Scenario::Search,
            position: Some(2),
            device: Some("ios".into()),
            price: Some(9.5),
            query: Some("red \"shoes\"".into()),
        };
        // The bytes a `String` field wrote: the store, checkpoints and published events
        // must not change with the type that holds the text.
        assert_eq!(
            serde_json::to_string(&click).expect("json"),
            r#"{"event_id":"e1","ts":1767571200000,"user_id":"u-0123456789abcdef0123456789abcdef","session_id":"s\u001f1","type":"impression","item_id":"sku7","scenario":"search","position":2,"device":"ios","price":9.5,"query":"red \"shoes\""}"#
        );
    }

    #[test]
    fn milliseconds_and_microseconds_convert_both_ways() {
        assert_eq!(ms_to_micros(1_767_571_200_000), 1_767_571_200_000_000);
        assert_eq!(micros_to_ms(1_767_571_200_000_999), 1_767_571_200_000);
        assert_eq!(micros_to_ms(-1), -1, "rounds down before the epoch");
        assert_eq!(ms_to_micros(i64::MAX), i64::MAX, "saturates");
    }
}
