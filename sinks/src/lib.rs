//! Sinks: the Parquet feature store (the Kafka producers are in `shopstream-kafka`, so
//! this crate builds without librdkafka).
//!
//! - [`store`]: writes record batches as zstd Parquet files with UTC microsecond timestamps
//!   into hive partitions `TABLE/date=YYYY-MM-DD/hour=HH/`. File names are deterministic
//!   per (table, window), and each file appears whole (locally: a hidden temporary name,
//!   fsynced and renamed; in a bucket: one upload), so readers never see a partial file
//!   and reprocessing overwrites instead of duplicating.
//! - [`storage`]: where the objects live: a local directory or a bucket (`s3://`,
//!   `gs://`, `az://`) through `object_store`, with create-only writes and retries.
//! - [`manifest`]: commit records; a file is visible to readers only once a commit names
//!   it, and compaction replaces many small files of an hour by one.
//! - [`retention`]: hour partitions past `store.retention_days` leave through the
//!   manifest (`shopstream store expire`, and the job as hours settle).
//! - [`schema_version`]: a job refuses a store whose `examples` files are of another
//!   schema version than it writes.
//! - [`forget`]: a user's rows leave every table through the manifest (`shopstream
//!   store forget`).
//! - [`checkpoint`]: versioned, checksummed checkpoint files written atomically, the last
//!   K kept; loading skips damaged ones.
//! - [`failpoint`]: named crash points for the kill tests (inert unless armed).
//! - `held`: serde for the rows of windows a job holds before writing them (checkpoints).
//! - [`mirror`]: a store as local files for path-based readers (a bucket's committed
//!   state copied into a temporary directory).
//! - [`read`]: reading the store back (summaries, tests).
//! - [`query`]: SQL over the store on polars, and point-in-time training sets.
//! - [`tables`]: the names of the store's tables, in one place.

mod atomic;
pub mod checkpoint;
mod error;
pub mod failpoint;
pub mod forget;
mod held;
pub mod manifest;
pub mod mirror;
pub mod query;
pub mod read;
mod recent;
pub mod retention;
pub mod schema_version;
pub mod storage;
pub mod store;
pub mod tables;
