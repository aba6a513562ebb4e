//! Ingest: the v1 topic contract, decoding and validation, the Kafka source, and the
//! synthetic traffic generator.
//!
//! - [`event`]: typed events of `shop.clicks`, `shop.orders`, `shop.inventory`.
//! - [`decode`]: bytes -> [`event::Event`] or a [`decode::Rejection`] with a reason code
//!   for the dead-letter topic. Nothing is dropped without a reason.
//! - [`kafka`]: client configuration from `shopstream-config`, topic creation, reachability
//!   checks.
//! - [`source`]: the consuming side: a bounded stream of decoded records with their
//!   partition and offset, and end-of-input detection for batch runs.
//! - [`generator`]: deterministic synthetic traffic from a latent ground-truth model.

pub mod decode;
pub mod event;
pub mod generator;
pub mod kafka;
pub mod source;
