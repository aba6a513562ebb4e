//! Decoding message bytes into [`Event`]s, and the validation rules every event must pass.
//!
//! A message that fails is never dropped: it becomes a [`Rejection`] with a [`Reason`] code,
//! the offending field where one can be named, and a human message; the pipeline publishes
//! it with the original bytes to the dead-letter topic.

use std::fmt;

use serde::de::DeserializeOwned;

use crate::event::{ClickEvent, ClickKind, Event, InputTopic, InventoryEvent, OrderEvent};

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

    /// Parses a reason code.
    pub fn parse(code: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == code)
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
    fn new(reason: Reason, field: Option<&str>, message: impl Into<String>) -> Self {
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
/// Event times outside [2000-01-01, 2100-01-01) are rejected as out of range.
const MIN_TS: i64 = 946_684_800_000;
const MAX_TS: i64 = 4_102_444_800_000;

/// Decodes and validates one message from `topic`.
pub fn decode(topic: InputTopic, payload: &[u8], limits: DecodeLimits) -> Result<Event, Rejection> {
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
    let event = match topic {
        InputTopic::Clicks => Event::Click(parse::<ClickEvent>(payload)?),
        InputTopic::Orders => Event::Order(parse::<OrderEvent>(payload)?),
        InputTopic::Inventory => Event::Inventory(parse::<InventoryEvent>(payload)?),
    };
    validate(&event)?;
    Ok(event)
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
            Err(Rejection {
                reason: Reason::SchemaViolation,
                field,
                message: first.to_string(),
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
                check_id(&format!("lines[{i}].item_id"), &line.item_id)?;
                if line.quantity == 0 {
                    return Err(Rejection::new(
                        Reason::OutOfRange,
                        Some(&format!("lines[{i}].quantity")),
                        "must be at least 1",
                    ));
                }
                check_money(&format!("lines[{i}].unit_price"), line.unit_price)?;
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

    fn click(json: &str) -> Result<Event, Rejection> {
        decode(InputTopic::Clicks, json.as_bytes(), DecodeLimits::default())
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
            let err = decode(InputTopic::Clicks, bytes, DecodeLimits::default())
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
        let err = decode(InputTopic::Clicks, GOOD.as_bytes(), limits).expect_err("too large");
        assert_eq!(err.reason, Reason::TooLarge);
    }

    #[test]
    fn order_quantity_zero_is_out_of_range() {
        let json = r#"{"order_id":"o","ts":1767607200000,"user_id":"u","status":"placed","lines":[{"item_id":"i","quantity":0,"unit_price":1.0}],"currency":"EUR"}"#;
        let err =
            decode(InputTopic::Orders, json.as_bytes(), DecodeLimits::default()).expect_err("q=0");
        assert_eq!(err.reason, Reason::OutOfRange);
        assert_eq!(err.field.as_deref(), Some("lines[0].quantity"));
    }

    #[test]
    fn year_1970_is_out_of_range() {
        let json = r#"{"event_id":"v","ts":0,"item_id":"i","kind":"snapshot","on_hand":3}"#;
        let err = decode(
            InputTopic::Inventory,
            json.as_bytes(),
            DecodeLimits::default(),
        )
        .expect_err("1970");
        assert_eq!(
            (err.reason, err.field.as_deref()),
            (Reason::OutOfRange, Some("ts"))
        );
    }
}
