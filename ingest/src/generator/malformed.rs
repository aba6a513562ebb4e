//! Deliberately broken messages, each with the dead-letter reason the decoder must give.

use serde_json::Value;

use crate::decode::Reason;
use crate::event::InputTopic;

use super::GeneratedMessage;
use super::rng::Rng;

/// A broken copy of `valid` (same topic, key and time) and the reason it must be rejected
/// with.
pub(super) fn corrupt(valid: &GeneratedMessage, rng: &mut Rng) -> GeneratedMessage {
    let (payload, reason) = match rng.below(5) {
        0 => {
            // Truncated in the middle, as a producer that died mid-write would leave it.
            let cut = (valid.payload.len() / 2).max(1);
            (valid.payload[..cut].to_vec(), Reason::MalformedJson)
        }
        1 => {
            let mut bytes = vec![0xff, 0xfe];
            bytes.extend_from_slice(&valid.payload);
            (bytes, Reason::InvalidUtf8)
        }
        2 => edit(valid, Reason::SchemaViolation, |topic, v| {
            // A required field is missing.
            let field = match topic {
                InputTopic::Clicks | InputTopic::Orders => "user_id",
                InputTopic::Inventory => "item_id",
            };
            if let Some(object) = v.as_object_mut() {
                object.remove(field);
            }
        }),
        3 => edit(valid, Reason::SchemaViolation, |topic, v| {
            // A field has the wrong type.
            match topic {
                InputTopic::Clicks => v["scenario"] = Value::from(42),
                InputTopic::Orders => v["lines"] = Value::from("none"),
                InputTopic::Inventory => v["kind"] = Value::from(7),
            }
        }),
        _ => edit(valid, Reason::OutOfRange, |topic, v| {
            // Well-typed but impossible.
            match topic {
                InputTopic::Clicks => v["price"] = Value::from(-5.0),
                InputTopic::Orders => v["lines"][0]["quantity"] = Value::from(0),
                InputTopic::Inventory => v["on_hand"] = Value::from(-3),
            }
        }),
    };
    GeneratedMessage {
        topic: valid.topic,
        key: valid.key.clone(),
        payload,
        ts: valid.ts,
        malformed: Some(reason),
    }
}

fn edit(
    valid: &GeneratedMessage,
    reason: Reason,
    change: impl FnOnce(InputTopic, &mut Value),
) -> (Vec<u8>, Reason) {
    let mut value: Value = serde_json::from_slice(&valid.payload).unwrap_or(Value::Null);
    change(valid.topic, &mut value);
    (serde_json::to_vec(&value).unwrap_or_default(), reason)
}
