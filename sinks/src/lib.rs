//! Sinks: the Parquet feature store (the Kafka producers are in `shopstream-kafka`, so
//! this crate builds without librdkafka).
//!
//! - [`store`]: writes record batches as zstd Parquet files with UTC microsecond timestamps
//!   into hive partitions `TABLE/date=YYYY-MM-DD/hour=HH/`. File names are deterministic
//!   per (table, window), and each file is written to a hidden temporary name, fsynced and
//!   renamed, so readers never see a partial file and reprocessing overwrites instead of
//!   duplicating.
//! - [`manifest`]: commit records; a file is visible to readers only once a commit names
//!   it, and compaction replaces many small files of an hour by one.
//! - [`checkpoint`]: versioned, checksummed checkpoint files written atomically, the last
//!   K kept; loading skips damaged ones.
//! - [`failpoint`]: named crash points for the kill tests (inert unless armed).
//! - `held`: serde for the rows of windows a job holds before writing them (checkpoints).
//! - [`read`]: reading the store back (summaries, tests).
//! - [`query`]: SQL over the store on polars, and point-in-time training sets.
//! - [`tables`]: the names of the store's tables, in one place.

mod atomic;
pub mod checkpoint;
mod error;
pub mod failpoint;
mod held;
pub mod manifest;
pub mod query;
pub mod read;
mod recent;
pub mod store;
pub mod tables;
