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
    /// Drift detection and alerting (see `docs/drift.md`).
    pub drift: DriftConfig,
    /// Checkpoints of the job's state, for restarts (see `docs/operations.md`).
    pub checkpoint: CheckpointConfig,
    /// How the input topics are read (see `docs/mappings.md`).
    pub input: InputConfig,
    /// Pseudonymisation and field minimisation at ingest (see `docs/privacy.md`).
    pub privacy: PrivacyConfig,
    /// What each published prediction carries.
    pub serving: ServingConfig,
}

/// What each published prediction carries.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServingConfig {
    /// Add `top_features` to each prediction: the 3 model inputs whose absence would
    /// change its click probability most (each set to its baseline: an unknown id, a
    /// dense input at its running mean), with the signed change. Costs 19 extra forward
    /// passes per impression (BENCHMARKS.md, "Prediction provenance").
    pub explain: bool,
}

/// Pseudonymisation and field minimisation, applied to every event as it is decoded,
/// before anything is stored, published, checkpointed or logged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrivacyConfig {
    /// Replace `user_id` (and the message key, which equals it) by a keyed HMAC-SHA256
    /// pseudonym: 32 hex digits, the same for the same id and key, so joins, dedupe and
    /// features work as before. The key comes from the environment variable `key_env`.
    pub enabled: bool,
    /// Name of the environment variable holding the HMAC key (at least 16 bytes). Keep
    /// it secret and stable: a new key gives every user a new pseudonym.
    pub key_env: String,
    /// Also pseudonymise `session_id` with the same key.
    pub pseudonymize_session_id: bool,
    /// Click fields dropped at ingest: `query` (search text), `device`.
    pub drop_fields: Vec<DroppedField>,
    /// Round prices (click `price`, order `unit_price`) to a multiple of this, in the
    /// shop's currency; unset keeps them exact.
    pub price_step: Option<f64>,
}

impl Default for PrivacyConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            key_env: "SHOPSTREAM_PRIVACY_KEY".to_string(),
            pseudonymize_session_id: true,
            drop_fields: vec![DroppedField::Query],
            price_step: None,
        }
    }
}

/// A click field `[privacy]` can drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DroppedField {
    /// The search text.
    Query,
    /// The device class.
    Device,
}

/// How the input topics are read.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InputConfig {
    /// Mappings that decode a shop's own JSON on an input topic, instead of contract v1.
    pub mapping: InputMappingConfig,
}

/// A mapping file (docs/mappings.md) per input topic; unset: the topic carries contract v1
/// events. Each message is one JSON object and becomes one event of its topic; a message
/// the mapping cannot convert goes to the dead-letter topic with the reason and the field.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InputMappingConfig {
    /// Mapping of the clicks topic (its events must all be click kinds).
    pub clicks: Option<PathBuf>,
    /// Mapping of the orders topic (its events must all be `order`).
    pub orders: Option<PathBuf>,
}

/// Checkpoints: the job's whole state written at window close, so a restart resumes
/// exactly where the last checkpoint left off. In a group run
/// (`pipeline.instances = "group"`) the same settings govern the checkpoints of each
/// partition number (`<dir>/shards/<group id>/`) and of the coordinator
/// (`<dir>/coordinator/<group id>/`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Take checkpoints and resume from the latest one at start. Off: a restart starts
    /// with empty state at the committed Kafka offsets.
    pub enabled: bool,
    /// Directory of the checkpoint files; default `<store.path>/_checkpoints`.
    pub dir: Option<PathBuf>,
    /// Take a checkpoint every this many closed windows (and at shutdown) ...
    pub every_windows: u64,
    /// ... but not more often than this many seconds of wall time apart (a checkpoint of
    /// the default model takes about 0.3 s; catching up on a backlog closes windows far
    /// faster than real time). 0: every `every_windows` windows.
    pub min_interval_secs: u64,
    /// How many checkpoints to keep (older ones are deleted); a damaged newest one falls
    /// back to the one before.
    pub keep: usize,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: None,
            every_windows: 5,
            min_interval_secs: 30,
            keep: 3,
        }
    }
}

impl CheckpointConfig {
    /// The checkpoint directory for a store at `store_path`.
    pub fn dir_for(&self, store_path: &std::path::Path) -> PathBuf {
        self.dir
            .clone()
            .unwrap_or_else(|| store_path.join(crate::DEFAULT_CHECKPOINT_DIR))
    }
}

/// HTTP endpoints of the long-running job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Serve the endpoints at all.
    pub enabled: bool,
    /// `host:port` to listen on; loopback by default. Port 0 picks a free port (logged).
    pub listen: String,
    /// `/readyz` answers 200 once the backlog has been drained and the consumer lag summed
    /// over all input partitions is at most this many messages (one instance; a group
    /// run's readiness is per role, docs/operations.md "Instances").
    pub ready_max_lag: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: "127.0.0.1:9464".to_string(),
            ready_max_lag: 10_000,
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
    /// When resuming a partition at a checkpointed position, start reading this many
    /// messages earlier and drop them again. 0 for Apache Kafka; the development broker
    /// tansu 0.6 answers a fetch at an offset inside a record batch with the next batch,
    /// which would skip the rest of that batch, so tests against it set this above the
    /// largest batch (for example 10000).
    pub seek_back_messages: u64,
    /// How long to wait for the broker's metadata at start-up before reporting it
    /// unreachable, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Extra librdkafka client properties, passed through unchanged to every consumer,
    /// producer and admin client (for example `"security.protocol" = "SASL_SSL"`,
    /// `"sasl.mechanisms" = "PLAIN"`, `"sasl.username"`, `"sasl.password"`,
    /// `"ssl.ca.location"`). Of the properties shopstream sets itself
    /// ([`crate::MANAGED_PROPERTIES`]), some take the user's value here (`acks` = `all`,
    /// `linger.ms`, `message.max.bytes`, `statistics.interval.ms` > 0, `fetch.wait.max.ms`)
    /// and the others are refused by validation with the reason and what to set instead.
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
            seek_back_messages: 0,
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
    /// the 7-day horizon of the longest rolling features). Checked once per hour of event
    /// time; an item counts from the end of its last event's 10-minute bucket.
    pub feature_ttl_secs: u64,
    /// Messages larger than this are dead-lettered as `too_large`, in bytes.
    pub max_message_bytes: usize,
    /// Capacity of the bounded channel between the Kafka source and the processor, in
    /// messages. A full channel pauses consumption (backpressure).
    pub channel_capacity: usize,
    /// Threads of the processing path; 0 means one per available core. With 1 the whole
    /// job runs on one task. With `n` >= 2 the global stage (training, item demand, drift,
    /// store writes, checkpoints) runs on a thread of its own, fed in window order, and
    /// the clicks and orders of partition `p` are cleaned, windowed and served on shard
    /// worker `p % n`; predictions are then served by the newest model the global stage
    /// has published (see docs/operations.md, "Workers"). Outputs do not depend on it.
    pub workers: usize,
    /// How this instance shares the work with the others of its `kafka.group_id`. `one`
    /// (the default): it reads every input partition and runs every stage. `group`
    /// (live, or `run --stop-at-end`): it holds the click and order partitions the
    /// group assigns it, and the instance that holds the trainer lease also reads the
    /// inventory, decides which windows close, trains and writes the store and the model,
    /// from what the others send on the internal topics `<group>.shards` and
    /// `<group>.closes` (docs/scale-out.md). It broadcasts each model (by reference on
    /// `<group>.model`, files under the checkpoint directory, which every instance must
    /// reach) and every instance serves with the newest. When the lease holder stops or
    /// dies, the next one takes the run over from the closes topic. Outputs are the same;
    /// each bounded run in group mode needs a group id of its own, and a live one does
    /// not yet release idle partitions (docs/operations.md, "Instances").
    pub instances: Instances,
    /// How long an event id is remembered for duplicate suppression, in seconds of event
    /// time after the newest event of its partition.
    pub dedupe_horizon_secs: u64,
    /// After SIGTERM or SIGINT, the job must have drained, checkpointed and committed
    /// within this many seconds; otherwise it exits with status 1 (the last periodic
    /// checkpoint is then used at the next start).
    pub shutdown_timeout_secs: u64,
    /// Most event ids remembered per input partition; beyond it the oldest are forgotten
    /// (bounds memory; counted as evictions).
    pub dedupe_max_keys: usize,
    /// Events more than this far ahead of the newest event of their partition are
    /// dead-lettered as `out_of_range` (a producer with a broken clock), in seconds.
    pub max_future_skew_secs: u64,
    /// In the long-running job, a partition that delivered nothing for this long stops
    /// holding the watermark back until its next event, in seconds; only once nothing of
    /// it is left to read (librdkafka's statistics, every `statistics.interval.ms`, taken
    /// since it fell silent show it fetched to its end, and the job handled all of it), so
    /// a partition queued behind others during a catch-up is not taken for idle.
    pub idle_partition_timeout_secs: u64,
}

impl PipelineConfig {
    /// How long after an impression its labels mature and its example is released: the
    /// click window plus the attribution window, in seconds (saturating).
    pub fn label_maturity_secs(&self) -> u64 {
        self.click_window_secs
            .saturating_add(self.attribution_window_secs)
    }

    /// [`Self::label_maturity_secs`] in milliseconds.
    pub fn label_maturity_ms(&self) -> i64 {
        secs_to_ms(self.label_maturity_secs())
    }

    /// Threads of the processing path: `workers`, or the available cores when 0.
    pub fn worker_threads(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            n => n,
        }
    }

    /// The event-time window length in milliseconds.
    pub fn window_ms(&self) -> i64 {
        secs_to_ms(self.window_secs)
    }

    /// The allowed lateness in milliseconds.
    pub fn allowed_lateness_ms(&self) -> i64 {
        secs_to_ms(self.allowed_lateness_secs)
    }

    /// The click window in milliseconds.
    pub fn click_window_ms(&self) -> i64 {
        secs_to_ms(self.click_window_secs)
    }

    /// The order attribution window in milliseconds.
    pub fn attribution_window_ms(&self) -> i64 {
        secs_to_ms(self.attribution_window_secs)
    }

    /// The feature time-to-live in milliseconds.
    pub fn feature_ttl_ms(&self) -> i64 {
        secs_to_ms(self.feature_ttl_secs)
    }

    /// The duplicate-detection horizon in milliseconds.
    pub fn dedupe_horizon_ms(&self) -> i64 {
        secs_to_ms(self.dedupe_horizon_secs)
    }

    /// The largest accepted clock skew ahead of a stream, in milliseconds.
    pub fn max_future_skew_ms(&self) -> i64 {
        secs_to_ms(self.max_future_skew_secs)
    }
}

/// Configured seconds as milliseconds of event time, saturating at `i64::MAX`. The one
/// conversion: durations are configured in seconds and computed with in epoch ms.
pub fn secs_to_ms(secs: u64) -> i64 {
    i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX)
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
            workers: 0,
            instances: Instances::One,
            dedupe_horizon_secs: 3_600,
            shutdown_timeout_secs: 60,
            dedupe_max_keys: 200_000,
            max_future_skew_secs: 86_400,
            idle_partition_timeout_secs: 30,
        }
    }
}

/// Parquet feature store settings.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Root of the store: a local directory (a path or `file:///…`), or a bucket and
    /// prefix, `s3://BUCKET/PREFIX`, `gs://…` or `az://…`, reached with the standard
    /// credentials of the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_REGION`, `AWS_ENDPOINT_URL`, instance profiles; `GOOGLE_*`, `AZURE_*`). Tables
    /// live below it in hive partitions (`examples/date=YYYY-MM-DD/hour=HH/`).
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
    /// Event time the files written as windows close span, in seconds: a window's rows are
    /// held in memory (and in checkpoints) until the window that starts the next span of
    /// this length (aligned to the epoch) closes (a span holding fewer than
    /// `file_span_min_rows` rows there carries on, up to the end of its hour), or a
    /// bounded run ends;
    /// then one file per table and hour holds them all. Fewer, larger files
    /// cost less to write and to compact; rows become visible to readers up to this much
    /// event time later. The spans follow event time only, so a restarted job writes the
    /// same files. 0 writes one file per window. Must divide 3600.
    pub file_span_secs: u64,
    /// Rows (all tables together) a file span must hold to end at its boundary: a span
    /// holding fewer carries on into the next span of its hour, so a quiet hour (a sparse
    /// log, a small shop at night) is written as one file per table rather than one per
    /// span, each of which costs a file, a commit record and a compaction input whatever
    /// its rows. Spans still end with their hour; rows of a quiet hour become visible up
    /// to the end of that hour. Follows the input only, like the spans. 0 ends every span
    /// at its boundary.
    pub file_span_min_rows: u64,
    /// How long a request to a bucket store is retried (with backoff) while the store is
    /// unreachable or overloaded, in seconds; then the job stops with exit code 1, naming
    /// the endpoint and the object. Nothing is acknowledged meanwhile: input offsets only
    /// advance past what the store holds.
    pub retry_timeout_secs: u64,
    /// Hour partitions whose end lies more than this many days before the newest hour the
    /// job has settled (event time) are expired: removed for readers through a commit
    /// record, then deleted (docs/operations.md, "Retention"). Unset keeps everything.
    /// `shopstream store expire` applies it on demand, by wall-clock time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention_days: Option<u32>,
    /// Options of the bucket's client, with `object_store`'s keys for its provider (for
    /// S3: `aws_endpoint`, `aws_region`, `aws_allow_http`, `aws_access_key_id`,
    /// `aws_secret_access_key`, …); they override the environment. Values of keys that
    /// name secrets are masked when the configuration is printed.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
}

/// Debug output masks the values of secret options (it may end up in a log).
impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let options: BTreeMap<&str, &str> = self
            .options
            .iter()
            .map(|(key, value)| {
                let shown = if crate::is_secret_store_option(key) {
                    "********"
                } else {
                    value.as_str()
                };
                (key.as_str(), shown)
            })
            .collect();
        f.debug_struct("StoreConfig")
            .field("path", &self.path)
            .field("row_group_rows", &self.row_group_rows)
            .field("zstd_level", &self.zstd_level)
            .field("compact_closed_hours", &self.compact_closed_hours)
            .field("file_span_secs", &self.file_span_secs)
            .field("file_span_min_rows", &self.file_span_min_rows)
            .field("retry_timeout_secs", &self.retry_timeout_secs)
            .field("retention_days", &self.retention_days)
            .field("options", &options)
            .finish()
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("shopstream-store"),
            row_group_rows: 65_536,
            zstd_level: 3,
            compact_closed_hours: true,
            file_span_secs: 600,
            file_span_min_rows: 4_096,
            retry_timeout_secs: 120,
            retention_days: None,
            options: BTreeMap::new(),
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

/// How an instance shares the work with the others of its group
/// (`pipeline.instances`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Instances {
    /// This instance reads every input partition and runs every stage.
    One,
    /// Instances of one group share the partitions; the trainer lease's holder runs the
    /// global stages.
    Group,
}

/// Which past windows each window is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftReference {
    /// The `reference_windows` windows before the current one: "did something change
    /// recently?". A lasting change is absorbed once it fills about half of them, and
    /// its alerts resolve.
    Trailing,
    /// The first `reference_windows` windows of the run, then frozen: "how far are we from
    /// the baseline?". Alerts stay open while the traffic stays away from it.
    Pinned,
}

/// How the drift monitor calibrates a significance test for clustered sessions: from a
/// history of the test's own per-window results (docs/drift.md, "Clustered sessions").
/// One rule for the monitor and for the validation of `[drift]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CalibrationHistory {
    /// Entries kept.
    pub capacity: usize,
    /// Entries needed before the test may alert.
    pub needed: usize,
    /// Newest entries left out of the estimate: they may be a breach streak building up,
    /// which must not correct itself away.
    pub lag: usize,
}

impl DriftReference {
    /// The calibration history of a reference of `windows` windows with alerts firing
    /// after `fire_after_windows` (K). Trailing: four references' worth kept, one
    /// reference's worth (at least 2K - 1) needed, the newest K - 1 left out. Pinned:
    /// frozen with the reference, 2K - 1 needed, none left out.
    pub fn calibration_history(
        self,
        windows: usize,
        fire_after_windows: u32,
    ) -> CalibrationHistory {
        let k = fire_after_windows.max(1) as usize;
        match self {
            DriftReference::Trailing => CalibrationHistory {
                capacity: windows.saturating_mul(4),
                needed: windows.max(2 * k - 1),
                lag: k - 1,
            },
            DriftReference::Pinned => CalibrationHistory {
                capacity: windows,
                needed: 2 * k - 1,
                lag: 0,
            },
        }
    }
}

/// Drift detection: data drift per feature, label and prediction drift per scenario,
/// model-quality drift per task, the alert lifecycle and where alerts go. Thresholds are
/// the usual bands (PSI 0.1 / 0.2, Jensen-Shannon distance 0.1 / 0.2, p-values 0.01 /
/// 0.001); `docs/drift.md` explains each statistic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DriftConfig {
    /// Run the drift monitors at all (gauges, `alerts` and `drift` tables, alert topic,
    /// webhook).
    pub enabled: bool,
    /// `trailing` (the windows just before) or `pinned` (the first windows of the run).
    pub reference: DriftReference,
    /// Windows in the reference.
    pub reference_windows: usize,
    /// Windows the reference must hold before anything is compared.
    pub min_reference_windows: usize,
    /// Quantile bins of the population stability index (PSI), taken from the reference.
    pub psi_bins: usize,
    /// PSI above this is a moderate shift (warning).
    pub psi_warning: f64,
    /// PSI above this is a significant shift (critical).
    pub psi_critical: f64,
    /// Jensen-Shannon distance (base 2, 0..1) of a categorical feature above this warns.
    pub js_warning: f64,
    /// Jensen-Shannon distance above this is critical.
    pub js_critical: f64,
    /// p-value of the small-sample tests (KS, chi-squared) below this warns.
    pub p_value_warning: f64,
    /// p-value below this is critical.
    pub p_value_critical: f64,
    /// Windows with fewer values of a feature than this use the p-value tests (KS,
    /// chi-squared); larger ones use PSI and Jensen-Shannon.
    pub small_sample: usize,
    /// A feature with fewer values than this in the window or the reference is not
    /// compared.
    pub min_samples: usize,
    /// |z| of a click or conversion rate against the reference above this warns (label
    /// drift).
    pub rate_z_warning: f64,
    /// |z| of a rate above this is critical.
    pub rate_z_critical: f64,
    /// |z| of the calibration gap (clicks minus predicted clicks) above this warns
    /// (prediction drift).
    pub gap_z_warning: f64,
    /// |z| of the calibration gap above this is critical.
    pub gap_z_critical: f64,
    /// Rates with fewer trials (impressions, clicks) than this are not compared.
    pub min_trials: u64,
    /// Windows before prediction drift and model quality may raise alerts (a fresh model
    /// is neither calibrated nor stable).
    pub model_warmup_windows: u64,
    /// ADWIN's confidence on each task's per-example loss (River's default 0.002).
    pub adwin_delta: f64,
    /// Relative loss increase found by ADWIN above this warns.
    pub loss_increase_warning: f64,
    /// Relative loss increase above this is critical.
    pub loss_increase_critical: f64,
    /// Page-Hinkley's threshold on the cumulative loss deviation.
    pub page_hinkley_threshold: f64,
    /// Consecutive windows over the warning threshold before an alert fires (K).
    pub fire_after_windows: u32,
    /// Consecutive windows back under the threshold before it resolves.
    pub resolve_after_windows: u32,
    /// Correct the significance tests for sessions clustering the impressions (calibrated
    /// on each test's recent per-window results); off, KS and chi-squared page on noise.
    pub design_effect_correction: bool,
    /// POST every alert event (JSON) to this `http://` or `https://` URL; unset: no
    /// webhook. Deliveries run beside the job and never hold it up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    /// Timeout of one webhook request, in milliseconds.
    pub webhook_timeout_ms: u64,
    /// Retries after a failed webhook request (5xx, 408, 429, timeout, connection
    /// refused); other 4xx answers are final.
    pub webhook_max_retries: u32,
    /// Wait before the first retry, in milliseconds; doubled for each further retry.
    pub webhook_backoff_ms: u64,
    /// Alert events waiting for the webhook; beyond this, new events are not posted
    /// (counted in `shopstream_webhook_failures_total` and logged).
    pub webhook_queue: usize,
}

impl Default for DriftConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            reference: DriftReference::Trailing,
            reference_windows: 12,
            min_reference_windows: 3,
            psi_bins: 10,
            psi_warning: 0.1,
            psi_critical: 0.2,
            js_warning: 0.1,
            js_critical: 0.2,
            p_value_warning: 0.01,
            p_value_critical: 0.001,
            small_sample: 1000,
            min_samples: 30,
            rate_z_warning: 3.0,
            rate_z_critical: 5.0,
            gap_z_warning: 3.0,
            gap_z_critical: 5.0,
            min_trials: 30,
            model_warmup_windows: 12,
            adwin_delta: 0.002,
            loss_increase_warning: 0.1,
            loss_increase_critical: 0.5,
            page_hinkley_threshold: 80.0,
            fire_after_windows: 3,
            resolve_after_windows: 3,
            design_effect_correction: true,
            webhook_url: None,
            webhook_timeout_ms: 5_000,
            webhook_max_retries: 3,
            webhook_backoff_ms: 500,
            webhook_queue: 1_024,
        }
    }
}
