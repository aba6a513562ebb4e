//! The configuration sections. Each field carries its default next to it and a doc comment;
//! `config/shopstream.example.toml` mirrors this file and a test keeps the two in step.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The whole configuration of a shopstream job.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// How to reach Kafka.
    pub kafka: KafkaConfig,
    /// Names of the input and output topics.
    pub topics: TopicsConfig,
    /// Event-time processing: windows, joins, limits.
    pub pipeline: PipelineConfig,
    /// Where the Parquet feature store lives.
    pub store: StoreConfig,
    /// The online model.
    pub model: ModelConfig,
    /// The HTTP endpoints (`/metrics`, `/healthz`, `/readyz`).
    pub http: HttpConfig,
}

/// HTTP endpoints of the long-running job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Serve the endpoints at all.
    pub enabled: bool,
    /// `host:port` to listen on; loopback by default. Port 0 picks a free port (logged).
    pub listen: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: "127.0.0.1:9464".to_string(),
        }
    }
}

/// Kafka connection settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` bootstrap servers. Empty means "no cluster configured":
    /// `shopstream demo` then starts librdkafka's in-process mock cluster; `run` and
    /// `generate` refuse to start.
    pub brokers: String,
    /// Consumer group id of the job; instances with the same id share the click and order
    /// partitions.
    pub group_id: String,
    /// Create missing topics (with `topic_partitions` partitions) at start-up through the
    /// Kafka admin API.
    pub create_topics: bool,
    /// Partition count used when shopstream creates a topic.
    pub topic_partitions: i32,
    /// How long a produce may wait for the broker before it counts as failed, in
    /// milliseconds.
    pub produce_timeout_ms: u64,
    /// How long to wait for the broker's metadata at start-up before reporting it
    /// unreachable, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Extra librdkafka client properties, passed through unchanged to every consumer,
    /// producer and admin client (for example `"security.protocol" = "SASL_SSL"`,
    /// `"sasl.mechanisms" = "PLAIN"`, `"sasl.username"`, `"sasl.password"`,
    /// `"ssl.ca.location"`). Properties that shopstream manages itself
    /// (`bootstrap.servers`, `group.id`, `enable.auto.commit`) are rejected here.
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: String::new(),
            group_id: "shopstream".to_string(),
            create_topics: true,
            topic_partitions: 4,
            produce_timeout_ms: 30_000,
            connect_timeout_ms: 10_000,
            properties: BTreeMap::new(),
        }
    }
}

/// Topic names. Inputs follow the v1 contract in `docs/topic-contract.md`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopicsConfig {
    /// Clickstream input (impressions, clicks, carts, favourites, searches), keyed by user.
    pub clicks: String,
    /// Order input (placed, cancelled), keyed by user.
    pub orders: String,
    /// Inventory input (snapshots, restocks, sales, adjustments), keyed by item.
    pub inventory: String,
    /// Output: one prediction per impression, keyed by the impression's event id.
    pub predictions: String,
    /// Output: every rejected input message with its original bytes and a reason.
    pub dead_letter: String,
    /// Output: drift alerts.
    pub alerts: String,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        Self {
            clicks: "shop.clicks".to_string(),
            orders: "shop.orders".to_string(),
            inventory: "shop.inventory".to_string(),
            predictions: "shop.predictions".to_string(),
            dead_letter: "shop.dead-letter".to_string(),
            alerts: "shop.alerts".to_string(),
        }
    }
}

impl TopicsConfig {
    /// The three input topics, in the order used for deterministic tie-breaking.
    pub fn inputs(&self) -> [&str; 3] {
        [&self.clicks, &self.orders, &self.inventory]
    }

    /// The output topics shopstream produces to.
    pub fn outputs(&self) -> [&str; 3] {
        [&self.predictions, &self.dead_letter, &self.alerts]
    }
}

/// Event-time processing settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    /// Length of the tumbling event-time windows that drive feature emission and training,
    /// in seconds. Should divide an hour so windows never straddle a store partition.
    pub window_secs: u64,
    /// How far behind the newest event of a partition an event may arrive and still be
    /// processed, in seconds.
    pub allowed_lateness_secs: u64,
    /// How long after an impression a click on the same item still counts as its click, in
    /// seconds. Training examples are emitted once this has passed.
    pub click_window_secs: u64,
    /// How long after a click an order of the same user for the same item is attributed to
    /// it (last touch), in seconds. Examples are emitted once click window + attribution
    /// window have passed after the impression.
    pub attribution_window_secs: u64,
    /// Users and items without any event for this long are forgotten, in seconds (at least
    /// the 7-day horizon of the longest rolling features).
    pub feature_ttl_secs: u64,
    /// Messages larger than this are dead-lettered as `too_large`, in bytes.
    pub max_message_bytes: usize,
    /// Capacity of the bounded channel between the Kafka source and the processor, in
    /// messages. A full channel pauses consumption (backpressure).
    pub channel_capacity: usize,
    /// How long an event id is remembered for duplicate suppression, in seconds of event
    /// time after the newest event of its partition.
    pub dedupe_horizon_secs: u64,
    /// Most event ids remembered per input partition; beyond it the oldest are forgotten
    /// (bounds memory; counted as evictions).
    pub dedupe_max_keys: usize,
    /// Events more than this far ahead of the newest event of their partition are
    /// dead-lettered as `out_of_range` (a producer with a broken clock), in seconds.
    pub max_future_skew_secs: u64,
    /// In the long-running job, a partition that delivered nothing for this long stops
    /// holding the watermark back until its next event, in seconds.
    pub idle_partition_timeout_secs: u64,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            window_secs: 60,
            allowed_lateness_secs: 5,
            click_window_secs: 600,
            attribution_window_secs: 1_800,
            feature_ttl_secs: 8 * 86_400,
            max_message_bytes: 1_048_576,
            channel_capacity: 8_192,
            dedupe_horizon_secs: 3_600,
            dedupe_max_keys: 200_000,
            max_future_skew_secs: 86_400,
            idle_partition_timeout_secs: 30,
        }
    }
}

/// Parquet feature store settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Root directory of the store; tables live below it in hive partitions
    /// (`examples/date=YYYY-MM-DD/hour=HH/`).
    pub path: PathBuf,
    /// Maximum rows per Parquet row group.
    pub row_group_rows: usize,
    /// zstd compression level (1 fast .. 22 small).
    pub zstd_level: i32,
    /// Merge each hour partition's window files into one file once no window can add rows
    /// to that hour any more (and everything at the end of a bounded run), so the file
    /// count stays at about one per table and hour. `shopstream store compact` does the
    /// same on demand.
    pub compact_closed_hours: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("shopstream-store"),
            row_group_rows: 65_536,
            zstd_level: 3,
            compact_closed_hours: true,
        }
    }
}

/// The joint multi-task model (see `trainer/src/joint.rs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// Adam step size.
    pub learning_rate: f64,
    /// Examples per Adam step.
    pub batch_size: usize,
    /// Rows of the shared hashed embedding table are `2^embedding_bits`.
    pub embedding_bits: u32,
    /// Embedding width per categorical field.
    pub embedding_dim: usize,
    /// Width of the first shared layer.
    pub hidden1: usize,
    /// Width of the second shared layer.
    pub hidden2: usize,
    /// Weight of the order-value loss next to the CTR and CTCVR losses.
    pub value_weight: f64,
    /// Seed for every random choice of the trainer, so two runs give identical models.
    pub seed: u64,
    /// Where the model file (`docs/model-format.md`) is written when the job stops; not
    /// written when unset. Inspect it with `shopstream model inspect PATH`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            learning_rate: 0.002,
            batch_size: 64,
            embedding_bits: 18,
            embedding_dim: 8,
            hidden1: 64,
            hidden2: 32,
            value_weight: 0.1,
            seed: 42,
            path: None,
        }
    }
}
