//! Kafka clients: everything of shopstream that links librdkafka, in and out. The
//! event contract they decode into is `shopstream-ingest`, which builds without Kafka, so
//! the features, trainer and drift code do too.
//!
//! - [`client`]: client configuration from `shopstream-config` (through the managed
//!   property table), reachability checks, topic creation, librdkafka logs to `tracing`.
//! - [`source`]: the consuming side: a bounded stream of decoded records with their
//!   partition and offset, offsets committed only when the pipeline says so, and
//!   end-of-input detection for batch runs.
//! - [`seek`]: start offsets by time for replays, each checked by reading around it, with
//!   a scan from the beginning when the broker's time index cannot be trusted.
//! - [`embedded`]: librdkafka's in-process mock cluster, for the demo without a broker.
//! - [`lease`]: a role held by one member of a consumer group at a time (the owner of a
//!   one-partition topic's partition), for the trainer of several instances.
//! - [`membership`]: a group member that is only told its partitions (read by directly
//!   assigned consumers): the lease's election and an instance's share of the input.
//! - [`read_progress`]: how far each input partition is read (fetched, handed on), so
//!   the live job tells a silent partition with nothing left from one still queued.
//! - [`log`]: an internal one-partition topic as an ordered log of messages of any size
//!   (split into fragments and put together again), the topic transport of scale-out.
//! - [`latest`]: a compacted one-partition internal topic holding the latest value of one
//!   key, the model broadcast of scale-out.
//! - [`sink`]: asynchronous producers with delivery tracking (predictions, alerts, dead
//!   letters, generated traffic): a message only counts as published once the broker
//!   acknowledged it.

pub mod client;
pub mod embedded;
pub mod latest;
pub mod lease;
pub mod log;
pub mod membership;
pub mod read_progress;
pub mod seek;
pub mod sink;
pub mod source;
