//! Decoding message bytes into [`Event`]s, and the validation rules every event must pass.
//!
//! A message that fails is never dropped: it becomes a [`Rejection`] with a [`Reason`] code,
//! the offending field where one can be named, and a human message; the pipeline publishes
//! it with the original bytes to the dead-letter topic.

use std::fmt;

use serde::de::DeserializeOwned;

use crate::event::{ClickEvent, ClickKind, Event, InputTopic, InventoryEvent, OrderEvent, Text};

/// Why a message was rejected. The `as_str` spelling is the dead-letter `reason` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// Not JSON, truncated JSON, NaN/Infinity literals, or an empty message.
    MalformedJson,
    /// The bytes are not UTF-8.
    InvalidUtf8,
    /// JSON, but a field is missing, has the wrong type or an unknown enum value.
    SchemaViolation,
    /// Well-typed, but a value is outside its allowed range.
    OutOfRange,
    /// Larger than `pipeline.max_message_bytes`.
    TooLarge,
    /// Behind the watermark when it arrived (set by the features stage).
    Late,
}

impl Reason {
    /// Every reason, in a fixed order for reports.
    pub const ALL: [Reason; 6] = [
        Reason::MalformedJson,
        Reason::InvalidUtf8,
        Reason::SchemaViolation,
        Reason::OutOfRange,
        Reason::TooLarge,
        Reason::Late,
    ];

    /// The reason code as written to the dead-letter topic and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::MalformedJson => "malformed_json",
            Reason::InvalidUtf8 => "invalid_utf8",
            Reason::SchemaViolation => "schema_violation",
            Reason::OutOfRange => "out_of_range",
            Reason::TooLarge => "too_large",
            Reason::Late => "late",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rejected message: reason code, the field at fault (when known) and a message for humans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Machine-readable reason.
    pub reason: Reason,
    /// Dotted path of the offending field, for example `lines[0].quantity`.
    pub field: Option<String>,
    /// What is wrong, for a person reading the dead-letter topic.
    pub message: String,
}

impl Rejection {
    pub(crate) fn new(reason: Reason, field: Option<&str>, message: impl Into<String>) -> Self {
        Self {
            reason,
            field: field.map(str::to_string),
            message: message.into(),
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{} ({field}): {}", self.reason, self.message),
            None => write!(f, "{}: {}", self.reason, self.message),
        }
    }
}

/// Limits applied while decoding.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Messages above this size are rejected as [`Reason::TooLarge`].
    pub max_message_bytes: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_message_bytes: 1_048_576,
        }
    }
}

/// Longest id or enum-like string accepted, in bytes.
pub const MAX_ID_BYTES: usize = 256;
/// Longest search query accepted, in bytes.
pub const MAX_QUERY_BYTES: usize = 1_024;
/// Largest quantity accepted on an order line.
pub const MAX_QUANTITY: i64 = 1_000_000;
/// Event times outside [2000-01-01, 2100-01-01) are rejected as out of range.
const MIN_TS: i64 = 946_684_800_000;
const MAX_TS: i64 = 4_102_444_800_000;

/// Decodes, normalises and validates one message from `topic`. `key` is the message key;
/// when present it must equal the event's partitioning id (user_id for clicks and orders,
/// item_id for inventory), else co-partitioning is broken and the event is rejected.
pub fn decode(
    topic: InputTopic,
    key: Option<&[u8]>,
    payload: &[u8],
    limits: DecodeLimits,
) -> Result<Event, Rejection> {
    if payload.len() > limits.max_message_bytes {
        return Err(Rejection::new(
            Reason::TooLarge,
            None,
            format!(
                "message has {} bytes, limit is {} (pipeline.max_message_bytes)",
                payload.len(),
                limits.max_message_bytes
            ),
        ));
    }
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Err(Rejection::new(Reason::MalformedJson, None, "empty message"));
    }
    if let Err(e) = std::str::from_utf8(payload) {
        return Err(Rejection::new(
            Reason::InvalidUtf8,
            None,
            format!("invalid UTF-8 at byte {}", e.valid_up_to()),
        ));
    }
    let mut event = match topic {
        InputTopic::Clicks => Event::Click(parse::<ClickEvent>(payload)?),
        InputTopic::Orders => Event::Order(parse::<OrderEvent>(payload)?),
        InputTopic::Inventory => Event::Inventory(parse::<InventoryEvent>(payload)?),
    };
    normalize(&mut event);
    validate(&event)?;
    if let Some(key) = key {
        check_key(&event, key)?;
    }
    Ok(event)
}

/// Explicit normalisation (enum values are normalised while parsing, see `event.rs`):
/// device lower case and trimmed, currency upper case and trimmed. Ids are left exactly as
/// sent: they are case-sensitive.
fn normalize(event: &mut Event) {
    match event {
        Event::Click(e) => {
            if let Some(device) = &mut e.device
                && device
                    .bytes()
                    .any(|b| b.is_ascii_uppercase() || b.is_ascii_whitespace())
            {
                let mut normal = Text::from(device.trim());
                normal.make_ascii_lowercase();
                *device = normal;
            }
        }
        Event::Order(e) => {
            if e.currency
                .bytes()
                .any(|b| b.is_ascii_lowercase() || b.is_ascii_whitespace())
            {
                let mut normal = Text::from(e.currency.trim());
                normal.make_ascii_uppercase();
                e.currency = normal;
            }
        }
        Event::Inventory(_) => {}
    }
}

fn check_key(event: &Event, key: &[u8]) -> Result<(), Rejection> {
    let (field, expected) = match event {
        Event::Click(e) => ("user_id", e.user_id.as_str()),
        Event::Order(e) => ("user_id", e.user_id.as_str()),
        Event::Inventory(e) => ("item_id", e.item_id.as_str()),
    };
    if key == expected.as_bytes() {
        Ok(())
    } else {
        Err(Rejection::new(
            Reason::SchemaViolation,
            Some("key"),
            format!(
                "message key `{}` disagrees with {field} `{expected}`; the producer must key this topic by {field}",
                String::from_utf8_lossy(&key[..key.len().min(64)])
            ),
        ))
    }
}

/// Parses with plain serde_json (fast path); on failure parses again with path tracking so
/// the rejection can name the field.
fn parse<T: DeserializeOwned>(payload: &[u8]) -> Result<T, Rejection> {
    match serde_json::from_slice::<T>(payload) {
        Ok(value) => Ok(value),
        Err(first) => {
            // serde_json reports some type mismatches (a number where an enum belongs) as
            // syntax errors, so syntax is judged by parsing without a schema.
            if let Err(syntax) = serde_json::from_slice::<serde::de::IgnoredAny>(payload) {
                return Err(Rejection::new(
                    Reason::MalformedJson,
                    None,
                    syntax.to_string(),
                ));
            }
            let mut de = serde_json::Deserializer::from_slice(payload);
            let field = match serde_path_to_error::deserialize::<_, T>(&mut de) {
                Err(e) => {
                    let path = e.path().to_string();
                    (path != "." && !path.is_empty()).then_some(path)
                }
                Ok(_) => None,
            };
            let field = field.or_else(|| missing_field(&first.to_string()));
            let message = first.to_string();
            // A literal like 1e999 is valid JSON but no finite number.
            let reason = if message.starts_with("number out of range") {
                Reason::OutOfRange
            } else {
                Reason::SchemaViolation
            };
            Err(Rejection {
                reason,
                field,
                message,
            })
        }
    }
}

/// serde reports a missing field at the parent's path; take the name from the message.
fn missing_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("missing field `")?;
    rest.split('`').next().map(str::to_string)
}

fn check_id(field: &str, value: &str) -> Result<(), Rejection> {
    if value.trim().is_empty() {
        return Err(Rejection::new(
            Reason::SchemaViolation,
            Some(field),
            "must not be empty",
        ));
    }
    if value.len() > MAX_ID_BYTES {
        return Err(Rejection::new(
            Reason::OutOfRange,
            Some(field),
            format!("{} bytes, limit {MAX_ID_BYTES}", value.len()),
        ));
    }
    Ok(())
}

fn check_ts(ts: i64) -> Result<(), Rejection> {
    if (MIN_TS..MAX_TS).contains(&ts) {
        Ok(())
    } else {
        Err(Rejection::new(
            Reason::OutOfRange,
            Some("ts"),
            format!("{ts} ms is outside the years 2000..2100"),
        ))
    }
}

fn check_money(field: &str, value: f64) -> Result<(), Rejection> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(Rejection::new(
            Reason::OutOfRange,
            Some(field),
            format!("{value} must be a finite number >= 0"),
        ))
    }
}

/// The validation rules; see `docs/topic-contract.md`.
fn validate(event: &Event) -> Result<(), Rejection> {
    check_ts(event.ts())?;
    match event {
        Event::Click(e) => {
            check_id("event_id", &e.event_id)?;
            check_id("user_id", &e.user_id)?;
            check_id("session_id", &e.session_id)?;
            match (&e.item_id, e.kind) {
                (Some(item), _) => check_id("item_id", item)?,
                (None, ClickKind::Search) => {}
                (None, kind) => {
                    return Err(Rejection::new(
                        Reason::SchemaViolation,
                        Some("item_id"),
                        format!("required for type {kind:?}"),
                    ));
                }
            }
            if let Some(price) = e.price {
                check_money("price", price)?;
            }
            if let Some(device) = &e.device {
                check_id("device", device)?;
            }
            if let Some(query) = &e.query
                && query.len() > MAX_QUERY_BYTES
            {
                return Err(Rejection::new(
                    Reason::OutOfRange,
                    Some("query"),
                    format!("{} bytes, limit {MAX_QUERY_BYTES}", query.len()),
                ));
            }
        }
        Event::Order(e) => {
            check_id("order_id", &e.order_id)?;
            check_id("user_id", &e.user_id)?;
            if e.lines.is_empty() {
                return Err(Rejection::new(
                    Reason::SchemaViolation,
                    Some("lines"),
                    "an order needs at least one line",
                ));
            }
            for (i, line) in e.lines.iter().enumerate() {
                // Field names are only formatted on failure: this loop is on the hot path.
                check_id("item_id", &line.item_id).map_err(|mut r| {
                    r.field = Some(format!("lines[{i}].item_id"));
                    r
                })?;
                if !(1..=MAX_QUANTITY).contains(&line.quantity) {
                    return Err(Rejection::new(
                        Reason::OutOfRange,
                        Some(&format!("lines[{i}].quantity")),
                        format!("{} is outside 1..={MAX_QUANTITY}", line.quantity),
                    ));
                }
                check_money("unit_price", line.unit_price).map_err(|mut r| {
                    r.field = Some(format!("lines[{i}].unit_price"));
                    r
                })?;
            }
            let code_ok =
                e.currency.len() == 3 && e.currency.chars().all(|c| c.is_ascii_uppercase());
            if !code_ok {
                return Err(Rejection::new(
                    Reason::SchemaViolation,
                    Some("currency"),
                    format!("`{}` is not an ISO 4217 code like EUR", e.currency),
                ));
            }
        }
        Event::Inventory(e) => {
            check_id("event_id", &e.event_id)?;
            check_id("item_id", &e.item_id)?;
            if let Some(on_hand) = e.on_hand
                && on_hand < 0
            {
                return Err(Rejection::new(
                    Reason::OutOfRange,
                    Some("on_hand"),
                    format!("{on_hand} must be >= 0"),
                ));
            }
            if let Some(price) = e.price {
                check_money("price", price)?;
            }
            if let Some(category) = &e.category {
                check_id("category", category)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Scenario;

    fn dec(topic: InputTopic, key: Option<&[u8]>, json: &str) -> Result<Event, Rejection> {
        decode(topic, key, json.as_bytes(), DecodeLimits::default())
    }

    fn click(json: &str) -> Result<Event, Rejection> {
        dec(InputTopic::Clicks, None, json)
    }

    const GOOD: &str = r#"{"event_id":"e1","ts":"2026-01-05T10:00:00Z","user_id":"u1","session_id":"s1","type":"impression","item_id":"sku1","scenario":"home_feed","position":3,"device":"ios","price":9.5}"#;

    #[test]
    fn decodes_valid_click_with_rfc3339_time() {
        let Ok(Event::Click(e)) = click(GOOD) else {
            panic!("valid click rejected");
        };
        assert_eq!(e.ts, 1_767_607_200_000);
        assert_eq!(e.kind, ClickKind::Impression);
        assert_eq!(e.position, Some(3));
    }

    #[test]
    fn epoch_millis_and_integer_ids_are_accepted() {
        let json = r#"{"event_id":7,"ts":1767607200000,"user_id":42,"session_id":"s","type":"search","scenario":"search","query":"shoes"}"#;
        let Ok(Event::Click(e)) = click(json) else {
            panic!("rejected");
        };
        assert_eq!(e.user_id, "42");
        assert_eq!(e.item_id, None);
    }

    #[test]
    fn reasons_and_fields_are_named() {
        let cases: [(&[u8], Reason, Option<&str>); 7] = [
            (b"{\"event_id\":", Reason::MalformedJson, None),
            (b"", Reason::MalformedJson, None),
            (b"\xff\xfe{}", Reason::InvalidUtf8, None),
            (
                br#"{"event_id":"e","ts":1767607200000,"user_id":"u","session_id":"s","type":"teleport","item_id":"i","scenario":"push"}"#,
                Reason::SchemaViolation,
                Some("type"),
            ),
            (
                br#"{"event_id":"e","ts":1767607200000,"session_id":"s","type":"click","item_id":"i","scenario":"push"}"#,
                Reason::SchemaViolation,
                Some("user_id"),
            ),
            (
                br#"{"event_id":"e","ts":1767607200000,"user_id":"u","session_id":"s","type":"click","item_id":"i","scenario":"push","price":-1}"#,
                Reason::OutOfRange,
                Some("price"),
            ),
            (
                br#"{"event_id":"e","ts":1767607200000,"user_id":"u","session_id":"s","type":"click","scenario":"push"}"#,
                Reason::SchemaViolation,
                Some("item_id"),
            ),
        ];
        for (bytes, reason, field) in cases {
            let err = decode(InputTopic::Clicks, None, bytes, DecodeLimits::default())
                .expect_err("must be rejected");
            assert_eq!(err.reason, reason, "{err}");
            assert_eq!(err.field.as_deref(), field, "{err}");
        }
    }

    #[test]
    fn too_large_is_checked_before_parsing() {
        let limits = DecodeLimits {
            max_message_bytes: 64,
        };
        let err = decode(InputTopic::Clicks, None, GOOD.as_bytes(), limits).expect_err("too large");
        assert_eq!(err.reason, Reason::TooLarge);
    }

    #[test]
    fn order_quantity_zero_is_out_of_range() {
        let json = r#"{"order_id":"o","ts":1767607200000,"user_id":"u","status":"placed","lines":[{"item_id":"i","quantity":0,"unit_price":1.0}],"currency":"EUR"}"#;
        let err = dec(InputTopic::Orders, None, json).expect_err("q=0");
        assert_eq!(err.reason, Reason::OutOfRange);
        assert_eq!(err.field.as_deref(), Some("lines[0].quantity"));
    }

    #[test]
    fn year_1970_is_out_of_range() {
        let json = r#"{"event_id":"v","ts":0,"item_id":"i","kind":"snapshot","on_hand":3}"#;
        let err = dec(InputTopic::Inventory, None, json).expect_err("1970");
        assert_eq!(
            (err.reason, err.field.as_deref()),
            (Reason::OutOfRange, Some("ts"))
        );
    }

    #[test]
    fn enums_devices_and_currencies_are_normalised() {
        let json = r#"{"event_id":"e","ts":1767607200000,"user_id":"u","session_id":"s","type":" Add_To_Cart ","item_id":"i","scenario":"HOME_FEED","device":" iOS "}"#;
        let Ok(Event::Click(e)) = click(json) else {
            panic!("normalisable click rejected");
        };
        assert_eq!(
            (e.kind, e.scenario, e.device.as_deref()),
            (ClickKind::AddToCart, Scenario::HomeFeed, Some("ios"))
        );
        let json = r#"{"order_id":"o","ts":"2026-01-05T10:00:00+01:00","user_id":"u","status":"Placed","lines":[{"item_id":"i","quantity":1,"unit_price":2.5}],"currency":"eur"}"#;
        let Ok(Event::Order(o)) = dec(InputTopic::Orders, None, json) else {
            panic!("normalisable order rejected");
        };
        assert_eq!(
            (o.status, o.currency.as_str(), o.ts),
            (crate::event::OrderStatus::Placed, "EUR", 1_767_603_600_000)
        );
    }

    #[test]
    fn key_must_match_the_partitioning_id() {
        let ok = dec(InputTopic::Clicks, Some(b"u1"), GOOD);
        assert!(ok.is_ok());
        let err = dec(InputTopic::Clicks, Some(b"u2"), GOOD).expect_err("mismatch");
        assert_eq!(
            (err.reason, err.field.as_deref()),
            (Reason::SchemaViolation, Some("key"))
        );
    }

    #[test]
    fn pathological_nesting_is_rejected_without_overflowing_the_stack() {
        for depth in [200, 100_000, 1_000_000] {
            let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            let in_field = format!(r#"{{"event_id":{nested}}}"#);
            for payload in [&nested, &in_field] {
                let limits = DecodeLimits {
                    max_message_bytes: 4 << 20,
                };
                let err = decode(InputTopic::Clicks, None, payload.as_bytes(), limits)
                    .expect_err("not an event");
                assert!(
                    matches!(err.reason, Reason::MalformedJson | Reason::SchemaViolation),
                    "{err}"
                );
            }
        }
    }

    #[test]
    fn number_overflow_is_out_of_range_on_its_field() {
        let json = GOOD.replace("9.5", "1e999");
        let err = click(&json).expect_err("overflow");
        assert_eq!(
            (err.reason, err.field.as_deref()),
            (Reason::OutOfRange, Some("price"))
        );
    }
}
