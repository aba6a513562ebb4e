//! Ingest: the v1 topic contract, decoding and validation, and the synthetic traffic
//! generator. Nothing here links Kafka (the clients are in `shopstream-kafka`), so every
//! stage that only needs the events builds without librdkafka.
//!
//! - [`event`]: typed events of `shop.clicks`, `shop.orders`, `shop.inventory`, and event
//!   time ([`event::Millis`], with the one ms -> µs conversion the store uses).
//! - [`record`]: where a record came from (topic, partition, offset).
//! - [`decode`]: bytes -> [`event::Event`] or a [`decode::Rejection`] with a reason code
//!   for the dead-letter topic. Nothing is dropped without a reason.
//! - [`clean`]: per-partition stateful checks: duplicates within an event-time horizon and
//!   timestamps far ahead of their own stream.
//! - [`generator`]: deterministic synthetic traffic from a latent ground-truth model.
//! - [`mapping`]: declarative mappings (TOML) from a shop's own event format to the
//!   contract; built-in ones for the public Taobao UserBehavior and REES46 logs.
//! - [`hash`]: FNV-1a, the stable hash of names, checksums and generated partitions.
//! - [`import`]: streaming import of a CSV or JSON-lines log through a mapping.

pub mod clean;
pub mod decode;
pub mod event;
pub mod generator;
pub mod hash;
pub mod import;
pub mod mapping;
pub mod privacy;
pub mod record;

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
