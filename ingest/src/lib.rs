//! Ingest: the v1 topic contract, decoding and validation, the Kafka source, and the
//! synthetic traffic generator.
//!
//! - [`event`]: typed events of `shop.clicks`, `shop.orders`, `shop.inventory`.
//! - [`decode`]: bytes -> [`event::Event`] or a [`decode::Rejection`] with a reason code
//!   for the dead-letter topic. Nothing is dropped without a reason.
//! - [`clean`]: per-partition stateful checks: duplicates within an event-time horizon and
//!   timestamps far ahead of their own stream.
//! - [`kafka`]: client configuration from `shopstream-config`, topic creation, reachability
//!   checks.
//! - [`source`]: the consuming side: a bounded stream of decoded records with their
//!   partition and offset, and end-of-input detection for batch runs.
//! - [`seek`]: start offsets by time for replays, each checked by reading around it, with
//!   a scan from the beginning when the broker's time index cannot be trusted.
//! - [`generator`]: deterministic synthetic traffic from a latent ground-truth model.

pub mod clean;
pub mod decode;
pub mod event;
pub mod generator;
pub mod import;
pub mod kafka;
pub mod seek;
pub mod source;

/// serde helper for maps with non-string keys (JSON objects need string keys): the map is
/// written as a list of `[key, value]` pairs. Use with `#[serde(with = "...")]`.
pub mod serde_entries {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// Writes the map as a sequence of pairs.
    pub fn serialize<K: Serialize, V: Serialize, S: Serializer>(
        map: &BTreeMap<K, V>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(map.iter())
    }

    /// Reads a sequence of pairs into a map.
    pub fn deserialize<'de, K, V, D>(deserializer: D) -> Result<BTreeMap<K, V>, D::Error>
    where
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        Ok(Vec::<(K, V)>::deserialize(deserializer)?
            .into_iter()
            .collect())
    }
}
