//! Privacy at ingest: keyed pseudonyms for user (and session) ids and minimised fields,
//! applied to each event as it is decoded, so that nothing downstream (state, store,
//! predictions, dead letters, checkpoints, logs) sees the raw values.
//!
//! A pseudonym is the first 16 bytes of HMAC-SHA256(key, id) in hex (32 digits): the same
//! id and key always give the same pseudonym, so dedupe, joins and features work as on
//! the raw ids, and the message key (which equals `user_id`) maps to the event's new
//! `user_id`. Co-partitioning is checked on the raw key before this runs.
//!
//! A dead letter keeps what can be kept: when its payload is a JSON object, the same
//! rules are applied to its fields; otherwise (not JSON, not UTF-8) the payload is
//! withheld and only its size and SHA-256 are published.

use sha2::{Digest, Sha256};

use crate::event::{ClickEvent, Event, OrderEvent};

/// Shortest key accepted, in bytes.
pub const MIN_KEY_BYTES: usize = 16;

/// What `[privacy]` does to events.
#[derive(Clone)]
pub struct Privacy {
    /// The HMAC key blocks, XORed with ipad and opad once.
    inner_pad: [u8; 64],
    outer_pad: [u8; 64],
    sessions: bool,
    drop_query: bool,
    drop_device: bool,
    price_step: Option<f64>,
}

impl std::fmt::Debug for Privacy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Privacy")
            .field("sessions", &self.sessions)
            .field("drop_query", &self.drop_query)
            .field("drop_device", &self.drop_device)
            .field("price_step", &self.price_step)
            .finish_non_exhaustive()
    }
}

/// What to minimise besides user ids.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Minimise {
    /// Pseudonymise `session_id` too.
    pub sessions: bool,
    /// Drop the search text.
    pub query: bool,
    /// Drop the device class.
    pub device: bool,
    /// Round prices to a multiple of this.
    pub price_step: Option<f64>,
}

/// The key is unusable.
#[derive(Debug, thiserror::Error)]
#[error(
    "the privacy key has {0} bytes, fewer than {MIN_KEY_BYTES}; use a random secret of at least 32 bytes"
)]
pub struct ShortKey(pub usize);

impl Privacy {
    /// Pseudonyms keyed by `key`, and `minimise`.
    pub fn new(key: &[u8], minimise: Minimise) -> Result<Self, ShortKey> {
        if key.len() < MIN_KEY_BYTES {
            return Err(ShortKey(key.len()));
        }
        // HMAC (RFC 2104): a key longer than the block is hashed first.
        let mut block = [0u8; 64];
        if key.len() > 64 {
            block[..32].copy_from_slice(&Sha256::digest(key));
        } else {
            block[..key.len()].copy_from_slice(key);
        }
        Ok(Self {
            inner_pad: block.map(|b| b ^ 0x36),
            outer_pad: block.map(|b| b ^ 0x5c),
            sessions: minimise.sessions,
            drop_query: minimise.query,
            drop_device: minimise.device,
            price_step: minimise.price_step,
        })
    }

    /// HMAC-SHA256(key, `message`).
    fn hmac(&self, message: &[u8]) -> [u8; 32] {
        let inner = Sha256::new()
            .chain_update(self.inner_pad)
            .chain_update(message)
            .finalize();
        Sha256::new()
            .chain_update(self.outer_pad)
            .chain_update(inner)
            .finalize()
            .into()
    }

    /// The pseudonym of `id`.
    pub fn pseudonym(&self, id: &str) -> String {
        hex(&self.hmac(id.as_bytes())[..16])
    }

    fn price(&self, price: f64) -> f64 {
        match self.price_step {
            Some(step) => (price / step).round() * step,
            None => price,
        }
    }

    /// Applies the rules to a decoded event.
    pub fn apply(&self, event: &mut Event) {
        match event {
            Event::Click(click) => self.apply_click(click),
            Event::Order(order) => self.apply_order(order),
            Event::Inventory(_) => {}
        }
    }

    fn apply_click(&self, click: &mut ClickEvent) {
        click.user_id = self.pseudonym(&click.user_id).into();
        if self.sessions {
            click.session_id = self.pseudonym(&click.session_id).into();
        }
        if self.drop_query {
            click.query = None;
        }
        if self.drop_device {
            click.device = None;
        }
        click.price = click.price.map(|p| self.price(p));
    }

    fn apply_order(&self, order: &mut OrderEvent) {
        order.user_id = self.pseudonym(&order.user_id).into();
        for line in &mut order.lines {
            line.unit_price = self.price(line.unit_price);
        }
    }

    /// The message key as the event now has it (it equals the raw `user_id` for clicks and
    /// orders; an inventory key, the item, stays).
    pub fn key(&self, event: &Event, key: Option<Vec<u8>>) -> Option<Vec<u8>> {
        match event {
            Event::Inventory(_) => key,
            Event::Click(ClickEvent { user_id, .. }) | Event::Order(OrderEvent { user_id, .. }) => {
                key.map(|_| user_id.as_bytes().to_vec())
            }
        }
    }

    /// The JSON of an event after [`Privacy::apply`] (contract v1), for the payload that
    /// travels with it.
    pub fn payload(event: &Event) -> Vec<u8> {
        let json = match event {
            Event::Click(e) => serde_json::to_vec(e),
            Event::Order(e) => serde_json::to_vec(e),
            Event::Inventory(e) => serde_json::to_vec(e),
        };
        json.unwrap_or_default()
    }

    /// A rejected message's key and payload as they may be published: a contract JSON
    /// object's fields (`contract`) under the same rules, anything else withheld (its
    /// size and SHA-256 only).
    pub fn dead_letter(
        &self,
        key: Option<&[u8]>,
        payload: &[u8],
        contract: bool,
    ) -> (Option<Vec<u8>>, Vec<u8>) {
        let key = key.map(|k| self.pseudonym(&String::from_utf8_lossy(k)).into_bytes());
        let parsed = match contract {
            true => serde_json::from_slice::<serde_json::Value>(payload).ok(),
            false => None,
        };
        let payload = match parsed {
            Some(serde_json::Value::Object(mut fields)) => {
                self.minimise_fields(&mut fields);
                serde_json::to_vec(&fields).unwrap_or_default()
            }
            _ => serde_json::to_vec(&serde_json::json!({
                "withheld": "not a JSON object: withheld under [privacy]",
                "bytes": payload.len(),
                "sha256": hex(&Sha256::digest(payload)),
            }))
            .unwrap_or_default(),
        };
        (key, payload)
    }

    fn minimise_fields(&self, fields: &mut serde_json::Map<String, serde_json::Value>) {
        let mut pseudonymise = |name: &str| {
            if let Some(value) = fields.get_mut(name) {
                let raw = match &*value {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                *value = serde_json::Value::String(self.pseudonym(&raw));
            }
        };
        pseudonymise("user_id");
        if self.sessions {
            pseudonymise("session_id");
        }
        if self.drop_query {
            fields.remove("query");
        }
        if self.drop_device {
            fields.remove("device");
        }
        if self.price_step.is_some()
            && let Some(price) = fields.get("price").and_then(serde_json::Value::as_f64)
        {
            fields.insert("price".into(), serde_json::json!(self.price(price)));
        }
    }

    /// A rejection's message with the raw ids of its message (the key, and the
    /// `user_id` and `session_id` of a JSON payload) replaced by their pseudonyms.
    pub fn scrub_rejection(
        &self,
        text: &str,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
    ) -> String {
        let mut raw: Vec<String> = key
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .into_iter()
            .collect();
        if let Some(serde_json::Value::Object(fields)) =
            payload.and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
        {
            for name in ["user_id", "session_id"] {
                if let Some(serde_json::Value::String(id)) = fields.get(name) {
                    raw.push(id.clone());
                }
            }
        }
        // Longest first: an id inside another is replaced after it.
        raw.sort_by_key(|id| std::cmp::Reverse(id.len()));
        let raw: Vec<&str> = raw.iter().map(String::as_str).collect();
        self.scrub(text, &raw)
    }

    /// `text` (a rejection's detail) with `raw` ids replaced by their pseudonyms.
    pub fn scrub(&self, text: &str, raw: &[&str]) -> String {
        let mut out = text.to_string();
        for id in raw.iter().filter(|id| !id.is_empty()) {
            out = out.replace(id, &self.pseudonym(id));
        }
        out
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::decode::{DecodeLimits, decode};
    use crate::event::InputTopic;

    fn privacy(minimise: Minimise) -> Privacy {
        Privacy::new(b"0123456789abcdef-test-key", minimise).unwrap()
    }

    #[test]
    fn hmac_matches_rfc_4231_test_case_2_and_a_long_key_is_hashed() {
        // RFC 4231 test case 2 has a 4-byte key ("Jefe"), below the minimum; build the
        // pads directly to check the construction.
        let mut block = [0u8; 64];
        block[..4].copy_from_slice(b"Jefe");
        let p = Privacy {
            inner_pad: block.map(|b| b ^ 0x36),
            outer_pad: block.map(|b| b ^ 0x5c),
            ..privacy(Minimise::default())
        };
        assert_eq!(
            hex(&p.hmac(b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a 131-byte key of 0xaa.
        let long = Privacy::new(&[0xaa; 131], Minimise::default()).unwrap();
        assert_eq!(
            hex(&long.hmac(b"Test Using Larger Than Block-Size Key - Hash Key First")),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn the_same_id_and_key_give_the_same_pseudonym_and_another_key_another() {
        let a = privacy(Minimise::default());
        let b = Privacy::new(b"another key, 16 bytes or more", Minimise::default()).unwrap();
        assert_eq!(a.pseudonym("u42"), a.pseudonym("u42"));
        assert_ne!(a.pseudonym("u42"), a.pseudonym("u43"));
        assert_ne!(a.pseudonym("u42"), b.pseudonym("u42"));
        assert_eq!(a.pseudonym("u42").len(), 32);
        assert!(Privacy::new(b"short", Minimise::default()).is_err());
    }

    #[test]
    fn events_keep_no_raw_id_nor_dropped_field_and_still_decode() {
        let p = privacy(Minimise {
            sessions: true,
            query: true,
            device: true,
            price_step: Some(1.0),
        });
        let json = br#"{"event_id":"e1","ts":1767571200000,"user_id":"u42","session_id":"s9","type":"search","scenario":"search","device":"ios","query":"red shoes","price":12.34}"#;
        let mut event = decode(
            InputTopic::Clicks,
            Some(b"u42"),
            json,
            DecodeLimits::default(),
        )
        .unwrap();
        p.apply(&mut event);
        let Event::Click(click) = &event else {
            panic!()
        };
        assert_eq!(click.user_id, p.pseudonym("u42"));
        assert_eq!(click.session_id, p.pseudonym("s9"));
        assert_eq!(
            (click.query.as_deref(), click.device.as_deref()),
            (None, None)
        );
        assert_eq!(click.price, Some(12.0));
        assert_eq!(
            p.key(&event, Some(b"u42".to_vec())),
            Some(click.user_id.as_bytes().to_vec())
        );
        let payload = Privacy::payload(&event);
        let text = String::from_utf8_lossy(&payload);
        for raw in ["u42", "s9", "red shoes", "ios"] {
            assert!(!text.contains(raw), "{text}");
        }
        // The rewritten payload is still a contract event (dead letters and replays).
        let again = decode(InputTopic::Clicks, None, &payload, DecodeLimits::default()).unwrap();
        assert_eq!(again, event);
    }

    #[test]
    fn dead_letters_keep_json_fields_under_the_rules_and_withhold_the_rest() {
        let p = privacy(Minimise {
            sessions: true,
            query: true,
            ..Minimise::default()
        });
        let (key, payload) = p.dead_letter(
            Some(b"u42"),
            br#"{"user_id":"u42","session_id":"s9","query":"red shoes","ts":"yesterday"}"#,
            true,
        );
        assert_eq!(key, Some(p.pseudonym("u42").into_bytes()));
        let text = String::from_utf8(payload).unwrap();
        assert!(
            text.contains(&p.pseudonym("u42")) && text.contains("yesterday"),
            "{text}"
        );
        assert!(
            !text.contains("u42\"") && !text.contains("red shoes"),
            "{text}"
        );
        let (_, withheld) = p.dead_letter(None, b"{\"user_id\":\"u42\" broken", true);
        let text = String::from_utf8(withheld).unwrap();
        assert!(text.contains("withheld") && !text.contains("u42"), "{text}");
        assert_eq!(
            p.scrub("key `u42` disagrees with user_id `u7`", &["u42", "u7"]),
            format!(
                "key `{}` disagrees with user_id `{}`",
                p.pseudonym("u42"),
                p.pseudonym("u7")
            )
        );
    }
}
