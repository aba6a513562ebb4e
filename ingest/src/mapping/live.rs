//! A mapping on a live input topic (`[input.mapping]`): each message, one JSON object in
//! the shop's own schema, becomes one contract event of that topic. The event then goes
//! through the contract's own decoder, so a mapped topic is checked exactly as a contract
//! one (ranges, the key, sizes), and every failure is a [`Rejection`] with its reason and
//! field for the dead-letter topic.

use super::spec::{EmitKind, Format, SnapshotMode};
use super::{Emitter, Mapping, MappingError};
use crate::decode::{DecodeLimits, Reason, Rejection, decode};
use crate::event::{Event, InputTopic};

/// Reads and validates the mapping file of each listed topic; every problem of every file
/// is reported at once.
pub fn load_live_mappings(
    files: &[(InputTopic, &std::path::Path)],
) -> Result<std::collections::BTreeMap<InputTopic, LiveMapping>, MappingError> {
    let mut out = std::collections::BTreeMap::new();
    let mut problems = Vec::new();
    for (topic, path) in files {
        let origin = path.display().to_string();
        let parsed = std::fs::read_to_string(path)
            .map_err(|e| MappingError {
                origin: origin.clone(),
                problems: vec![format!("cannot read it: {e}")],
            })
            .and_then(|text| Mapping::parse(&text, &origin))
            .and_then(|m| LiveMapping::new(m, *topic, &origin));
        match parsed {
            Ok(m) => {
                out.insert(*topic, m);
            }
            Err(e) => problems.extend(
                e.problems
                    .into_iter()
                    .map(|p| format!("input.mapping.{} = {origin}: {p}", topic.as_str())),
            ),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(MappingError {
            origin: "[input.mapping]".to_string(),
            problems,
        })
    }
}

/// A validated mapping for one input topic.
#[derive(Debug, Clone)]
pub struct LiveMapping {
    mapping: Mapping,
    topic: InputTopic,
}

impl LiveMapping {
    /// Checks that `mapping` suits a live `topic`: JSON lines, no inventory snapshots, and
    /// every value of `kind` one event of the topic. `origin` names it in errors.
    pub fn new(mapping: Mapping, topic: InputTopic, origin: &str) -> Result<Self, MappingError> {
        let mut problems = Vec::new();
        let spec = &mapping.spec;
        if spec.source.format != Format::Jsonl {
            problems.push(
                "source.format must be \"jsonl\" on a live topic (each message is one JSON \
                 object)"
                    .to_string(),
            );
        }
        if spec.inventory.snapshots != SnapshotMode::None {
            problems.push(
                "inventory.snapshots must be \"none\" on a live topic (publish inventory \
                 events on the inventory topic)"
                    .to_string(),
            );
        }
        if topic == InputTopic::Inventory {
            problems.push(
                "the inventory topic cannot be mapped yet: publish contract v1 inventory events"
                    .to_string(),
            );
        }
        for (value, emits) in &spec.events {
            if emits.len() != 1 {
                problems.push(format!(
                    "events.{value:?} lists {} events; on a live topic a message becomes \
                     exactly one",
                    emits.len()
                ));
            }
            for e in emits {
                let fits = match topic {
                    InputTopic::Clicks => e.emit != EmitKind::Order,
                    InputTopic::Orders => e.emit == EmitKind::Order,
                    InputTopic::Inventory => false,
                };
                if !fits {
                    problems.push(format!(
                        "events.{value:?}: `{}` is not an event of the {} topic",
                        e.emit.as_str(),
                        topic.as_str()
                    ));
                }
            }
        }
        if !problems.is_empty() {
            return Err(MappingError {
                origin: format!("{origin} (input.mapping.{})", topic.as_str()),
                problems,
            });
        }
        Ok(Self { mapping, topic })
    }

    /// The topic it decodes.
    pub fn topic(&self) -> InputTopic {
        self.topic
    }

    /// Decodes one message of partition `partition` at `offset`. Ids the mapping does not
    /// read from the message are `<id_prefix><partition>-<offset><suffix>`, so a replay
    /// gives the same ids.
    pub fn decode(
        &self,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        payload: &[u8],
        limits: DecodeLimits,
    ) -> Result<Event, Rejection> {
        if payload.len() > limits.max_message_bytes {
            // The contract decoder words this one.
            return decode(self.topic, key, payload, limits);
        }
        let text = std::str::from_utf8(payload).map_err(|e| {
            Rejection::new(
                Reason::InvalidUtf8,
                None,
                format!("invalid UTF-8 at byte {}", e.valid_up_to()),
            )
        })?;
        let index = std::collections::HashMap::new();
        let record = self
            .mapping
            .record(text, &index)
            .map_err(|e| Rejection::new(Reason::MalformedJson, None, e.message))?;
        let line = u64::try_from(offset).unwrap_or_default();
        let row = self.mapping.row(line, &record).map_err(|e| {
            Rejection::new(
                Reason::SchemaViolation,
                e.field.as_deref(),
                format!("{} (input.mapping.{})", e.message, self.topic.as_str()),
            )
        })?;
        let prefix = format!("{}{partition}-", self.mapping.spec.source.id_prefix);
        let mut out = Vec::with_capacity(1);
        Emitter::with_prefix(&self.mapping, prefix).emit(&row, &mut out);
        let [message] = &out[..] else {
            return Err(Rejection::new(
                Reason::SchemaViolation,
                None,
                format!("the mapping made {} events of one message", out.len()),
            ));
        };
        decode(self.topic, key, &message.payload, limits)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const CLICKS: &str = r#"
        [source]
        format = "jsonl"
        id_prefix = "shop"
        [fields]
        time = { path = "when", type = "datetime", format = "%Y-%m-%dT%H:%M:%S%.3fZ" }
        user_id = "visitor.id"
        kind = "action"
        item_id = "product.sku"
        scenario = "placement"
        position = { path = "slot", type = "integer" }
        [events]
        view = [{ emit = "impression" }]
        open = [{ emit = "click" }]
    "#;

    fn clicks() -> LiveMapping {
        let m = Mapping::parse(CLICKS, "clicks.toml").unwrap();
        LiveMapping::new(m, InputTopic::Clicks, "clicks.toml").unwrap()
    }

    #[test]
    fn a_shop_message_decodes_to_a_contract_event_with_offset_ids() {
        let payload = br#"{"when":"2026-11-30T10:00:00.250Z","visitor":{"id":"u7"},"action":"view","product":{"sku":"p1"},"placement":"home_feed","slot":3}"#;
        let event = clicks()
            .decode(2, 41, Some(b"u7"), payload, DecodeLimits::default())
            .unwrap();
        let Event::Click(click) = event else {
            panic!("not a click: {event:?}");
        };
        assert_eq!(click.event_id, "shop2-41i");
        assert_eq!(click.ts, 1_796_032_800_250);
        assert_eq!(click.item_id.as_deref(), Some("p1"));
        assert_eq!(click.position, Some(3));
    }

    #[test]
    fn what_the_mapping_cannot_convert_is_rejected_with_reason_and_field() {
        let m = clicks();
        let limits = DecodeLimits::default();
        let e = m
            .decode(0, 1, None, br#"{"when":"yesterday","visitor":{"id":"u"},"action":"view","product":{"sku":"p"}}"#, limits)
            .unwrap_err();
        assert_eq!(e.reason, Reason::SchemaViolation);
        assert_eq!(e.field.as_deref(), Some("when"));
        let e = m
            .decode(
                0,
                1,
                None,
                br#"{"when":"2026-11-30T10:00:00.000Z","visitor":{"id":"u"},"action":"view"}"#,
                limits,
            )
            .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("product.sku"), "{e}");
        let e = m.decode(0, 1, None, b"{not json", limits).unwrap_err();
        assert_eq!(e.reason, Reason::MalformedJson);
        // The contract's own checks still apply: the key must be the user.
        let e = m
            .decode(0, 1, Some(b"someone-else"), br#"{"when":"2026-11-30T10:00:00.000Z","visitor":{"id":"u"},"action":"open","product":{"sku":"p"}}"#, limits)
            .unwrap_err();
        assert!(e.to_string().contains("key"), "{e}");
    }

    #[test]
    fn mappings_that_cannot_serve_a_live_topic_are_refused() {
        let import_only =
            Mapping::parse(crate::mapping::builtin("rees46").unwrap(), "rees46").unwrap();
        let e = LiveMapping::new(import_only, InputTopic::Clicks, "rees46")
            .unwrap_err()
            .to_string();
        for needle in [
            "source.format must be \"jsonl\"",
            "inventory.snapshots must be \"none\"",
            "events.\"view\" lists 2 events",
            "events.\"purchase\": `order` is not an event of the clicks topic",
        ] {
            assert!(e.contains(needle), "missing {needle:?} in {e}");
        }
    }
}
