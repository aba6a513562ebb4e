//! Test harness: a real Kafka-protocol broker (tansu) per test, unique topic names,
//! helpers to read topics and the store back, and a webhook [`receiver`].

#![allow(dead_code, clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use shopstream_config::{Config, TopicsConfig};

pub mod proxy;
pub mod receiver;
pub mod s3;

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Sends SIGTERM to `child`, as an orchestrator stopping the job would.
pub fn sigterm(child: &std::process::Child) {
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
}

/// Where the tansu binary is: $SHOPSTREAM_TANSU, $SHOPSTREAM_TOOLS/bin/tansu,
/// ~/.cache/shopstream/tools/bin/tansu, or `tansu` on PATH.
pub fn tansu_binary() -> PathBuf {
    if let Ok(path) = std::env::var("SHOPSTREAM_TANSU") {
        return PathBuf::from(path);
    }
    let mut candidates = Vec::new();
    if let Ok(tools) = std::env::var("SHOPSTREAM_TOOLS") {
        candidates.push(PathBuf::from(tools).join("bin/tansu"));
    }
    if let Ok(home) = std::env::var("HOME") {
        candidates.push(PathBuf::from(home).join(".cache/shopstream/tools/bin/tansu"));
    }
    if let Some(found) = candidates.into_iter().find(|p| p.exists()) {
        return found;
    }
    let on_path = Command::new("tansu")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if on_path.is_ok() {
        return PathBuf::from("tansu");
    }
    panic!(
        "the tansu broker is not installed; run `make tansu` (scripts/install-tansu.sh) or set SHOPSTREAM_TANSU to its path"
    );
}

/// A tansu broker on a free 127.0.0.1 port with in-memory storage, stopped on drop.
pub struct Broker {
    child: Child,
    pub bootstrap: String,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Broker {
    pub fn start() -> Broker {
        Self::start_advertising(None)
    }

    /// A broker reached only through a [`proxy::Proxy`] (which can cut it off).
    pub fn start_behind_proxy() -> (Broker, proxy::Proxy) {
        let (proxy, listener) = proxy::Proxy::bind();
        let mut broker = Self::start_advertising(Some(&proxy.addr));
        proxy.forward_to(listener, broker.bootstrap.clone());
        broker.bootstrap = proxy.addr.clone();
        (broker, proxy)
    }

    fn start_advertising(advertised: Option<&str>) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let advertised_url = advertised.map_or_else(|| url.clone(), |a| format!("tcp://{a}"));
        let log = dir.path().join("tansu.log");
        let out = File::create(&log).unwrap();
        let child = Command::new(tansu_binary())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &advertised_url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .current_dir(dir.path())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("cannot start tansu");
        let mut broker = Broker {
            child,
            bootstrap: format!("127.0.0.1:{port}"),
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(&broker.bootstrap).is_err() {
            if let Ok(Some(status)) = broker.child.try_wait() {
                panic!(
                    "tansu exited with {status}: {}",
                    std::fs::read_to_string(&broker.log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "tansu did not listen on {} within 30 s",
                broker.bootstrap
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        broker
    }

    /// A configuration for this broker with topics, group and store unique to `test`.
    pub fn config(&self, test: &str, store: &Path) -> Config {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let prefix = format!("{test}-{}-{n}", std::process::id());
        let mut config = Config::default();
        config.kafka.brokers = self.bootstrap.clone();
        config.kafka.group_id = format!("{prefix}-group");
        // tansu 0.6 answers a fetch inside a record batch with the next batch: resume
        // from earlier and drop what was read before (see kafka.seek_back_messages).
        config.kafka.seek_back_messages = 10_000;
        // Tests run in seconds: checkpoint at every fifth window regardless of wall time,
        // so crash tests have checkpoints to resume from.
        config.checkpoint.min_interval_secs = 0;
        config.topics = TopicsConfig {
            clicks: format!("{prefix}.clicks"),
            orders: format!("{prefix}.orders"),
            inventory: format!("{prefix}.inventory"),
            predictions: format!("{prefix}.predictions"),
            dead_letter: format!("{prefix}.dead-letter"),
            alerts: format!("{prefix}.alerts"),
        };
        config.store.path = store.to_path_buf();
        // Tests run in parallel: let each job pick a free port for its endpoints.
        config.http.listen = "127.0.0.1:0".to_string();
        config
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One consumed record.
#[derive(Debug, Clone)]
pub struct Record {
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
    pub headers: BTreeMap<String, String>,
}

/// Reads every record of `topic` from the beginning to its current end. The end is found
/// through end-of-partition events: tansu's ListOffsets answers are not reliable.
pub fn read_topic(bootstrap: &str, topic: &str) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("reader-{topic}"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let timeout = Duration::from_secs(10);
    let metadata = consumer.fetch_metadata(Some(topic), timeout).unwrap();
    let partitions = metadata.topics()[0].partitions().len() as i32;
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&list).unwrap();
    let mut at_end = vec![false; partitions as usize];
    let mut records = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !at_end.iter().all(|e| *e) {
        assert!(
            Instant::now() < deadline,
            "read {} records of {topic}, no end in sight",
            records.len()
        );
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = match message {
            Ok(m) => m,
            Err(KafkaError::PartitionEOF(p)) => {
                at_end[p as usize] = true;
                continue;
            }
            Err(e) => panic!("reading {topic}: {e}"),
        };
        at_end[message.partition() as usize] = false;
        let headers = message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_string(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        records.push(Record {
            key: message.key().unwrap_or_default().to_vec(),
            payload: message.payload().unwrap_or_default().to_vec(),
            headers,
        });
    }
    records
}

/// Every object of a store (local or bucket) but its commit records, checkpoints and model
/// files, with its bytes: what a directory-scanning engine sees.
pub fn objects(storage: &shopstream_sinks::storage::Storage) -> BTreeMap<String, Vec<u8>> {
    storage
        .list("")
        .unwrap()
        .into_iter()
        .filter(|o| !o.key.starts_with("_manifest/") && !o.key.starts_with("_checkpoints/"))
        .filter(|o| !o.key.ends_with(".ssm"))
        .map(|o| {
            let bytes = storage.get(&o.key).unwrap().unwrap().to_vec();
            (o.key, bytes)
        })
        .collect()
}

/// Every batch of every committed Parquet file of `table` of the local store at `root`.
pub fn read_table(root: &Path, table: &str) -> Vec<RecordBatch> {
    read_table_of(&shopstream_sinks::storage::Storage::local(root), table)
}

/// Every batch of every committed Parquet file of `table` of `storage` (local or bucket).
pub fn read_table_of(
    storage: &shopstream_sinks::storage::Storage,
    table: &str,
) -> Vec<RecordBatch> {
    shopstream_sinks::read::table_files(storage, table)
        .unwrap()
        .into_iter()
        .flat_map(|file| {
            shopstream_sinks::read::read_object(storage, &file.key)
                .unwrap()
                .1
        })
        .collect()
}

/// Options of a source driven by hand: contract v1 on every topic, no privacy, messages up
/// to 1 MiB; `stop_at_end` as given.
pub fn source_options(stop_at_end: bool) -> shopstream_kafka::source::SourceOptions {
    shopstream_kafka::source::SourceOptions {
        stop_at_end,
        limits: shopstream_ingest::decode::DecodeLimits {
            max_message_bytes: 1 << 20,
        },
        mappings: Default::default(),
        privacy: None,
    }
}

/// Runs the pipeline in bounded mode until it has caught up with its input.
pub async fn run_to_end(config: &Config) -> shopstream_job::pipeline::RunSummary {
    let options = shopstream_job::pipeline::RunOptions {
        stop_at_end: true,
        ..Default::default()
    };
    shopstream_job::pipeline::run(config, options, std::future::pending())
        .await
        .expect("pipeline run")
}

/// A blocking HTTP GET: (status line, body).
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    )
}

/// Every file of a store except its commit records: relative path -> bytes.
pub fn store_files(root: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut files = std::collections::BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read store dir") {
            let path = entry.expect("dir entry").path();
            let relative = path
                .strip_prefix(root)
                .expect("under root")
                .display()
                .to_string();
            if relative.starts_with("_manifest")
                || relative.starts_with("_checkpoints")
                || relative.ends_with(".ssm")
            {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else {
                files.insert(relative, std::fs::read(&path).expect("read store file"));
            }
        }
    }
    files
}

/// Asserts that two stores hold the same files (commit records and checkpoints left out,
/// see [`store_files`]) with the same bytes; `what` names the comparison.
pub fn assert_same_store(what: &str, store: &Path, other: &Path) {
    let files = store_files(store);
    let other = store_files(other);
    assert_eq!(
        files.keys().collect::<Vec<_>>(),
        other.keys().collect::<Vec<_>>(),
        "{what}: same file names"
    );
    for (name, bytes) in &files {
        assert!(other[name] == *bytes, "{what}: {name} differs");
    }
}

/// Sums the samples of metric `name` in a Prometheus text body.
pub fn metric(body: &str, name: &str) -> u64 {
    body.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Waits until the job serving `/metrics` on `addr` has consumed at least `at_least`
/// messages; fails if it exits first or takes longer than `timeout`.
pub async fn wait_consumed(
    addr: std::net::SocketAddr,
    at_least: u64,
    job: &mut Child,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    loop {
        assert!(
            Instant::now() < deadline,
            "the job did not consume {at_least} messages in {timeout:?}"
        );
        if let Ok(Some(status)) = job.try_wait() {
            panic!("the job exited early: {status}");
        }
        let consumed = TcpStream::connect(addr).ok().map(|_| {
            metric(
                &http_get(addr, "/metrics").1,
                "shopstream_events_consumed_total",
            )
        });
        if consumed.is_some_and(|c| c >= at_least) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The generator seed of a test that compares runs with each other (not with golden
/// files): `default`, or `SHOPSTREAM_TRAFFIC_SEED` when set, so the same test can be run
/// on other traffic (`SHOPSTREAM_TRAFFIC_SEED=7 cargo nextest run -E 'binary(scale_out)'`).
/// An overriding seed is printed, which nextest shows with a failure.
pub fn traffic_seed(default: u64) -> u64 {
    match std::env::var("SHOPSTREAM_TRAFFIC_SEED") {
        Ok(value) => {
            let seed = value.trim().parse().unwrap_or_else(|_| {
                panic!("SHOPSTREAM_TRAFFIC_SEED={value:?} is not a whole number (a generator seed)")
            });
            eprintln!("traffic seed {seed} (SHOPSTREAM_TRAFFIC_SEED)");
            seed
        }
        Err(_) => default,
    }
}

/// A small shop's traffic (150 users, 200 items, 8 categories), sparse enough in event time
/// that about 75 minutes pass in 5,000 events: labels mature within a test's run.
pub fn small_shop(seed: u64, max_events: u64) -> shopstream_ingest::generator::GeneratorOptions {
    shopstream_ingest::generator::GeneratorOptions {
        sessions_per_sec: 0.12,
        ..small_shop_at_default_rate(seed, max_events)
    }
}

/// The small shop of [`small_shop`] at the generator's default session rate: dense in
/// event time, for tests that need input rather than mature labels.
pub fn small_shop_at_default_rate(
    seed: u64,
    max_events: u64,
) -> shopstream_ingest::generator::GeneratorOptions {
    shopstream_ingest::generator::GeneratorOptions {
        seed,
        max_events: Some(max_events),
        size: shopstream_ingest::generator::world::WorldSize {
            users: 150,
            items: 200,
            categories: 8,
        },
        ..Default::default()
    }
}

/// About 75 minutes of event time (two hour partitions) in 5,000 events of a shop with
/// 250 users, 300 items and 10 categories.
pub fn two_hour_traffic(seed: u64) -> shopstream_ingest::generator::GeneratorOptions {
    shopstream_ingest::generator::GeneratorOptions {
        seed,
        max_events: Some(5_000),
        sessions_per_sec: 0.12,
        size: shopstream_ingest::generator::world::WorldSize {
            users: 250,
            items: 300,
            categories: 10,
        },
        ..Default::default()
    }
}

/// Publishes `options`' traffic to `config`'s topics and writes `config` to
/// `dir/job.toml` for the binary: the generator's report, the number of messages
/// published (valid and malformed) and the config file.
pub async fn publish_for_binary(
    config: &Config,
    options: shopstream_ingest::generator::GeneratorOptions,
    dir: &Path,
) -> (shopstream_ingest::generator::GeneratorReport, u64, PathBuf) {
    let report = shopstream_job::generate::publish_traffic(config, options, None, None)
        .await
        .unwrap();
    let produced = report.valid_total + report.malformed_total;
    let config_path = dir.join("job.toml");
    std::fs::write(&config_path, toml::to_string(config).unwrap()).unwrap();
    (report, produced, config_path)
}

/// The last `lines` lines of each log in `paths` (a job's stderr), headed by its path, for
/// failure messages: what the job said is often the only clue to a failure seen in CI.
pub fn log_tails(paths: &[&Path], lines: usize) -> String {
    let mut out = String::new();
    for path in paths {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        let tail = &all[all.len().saturating_sub(lines)..];
        out.push_str(&format!(
            "\n--- {} (last {} lines)\n",
            path.display(),
            tail.len()
        ));
        out.push_str(&tail.join("\n"));
    }
    out
}

/// Points `config`'s HTTP endpoints at a free port on 127.0.0.1 and returns their address,
/// for a test that spawns the binary and reads its `/metrics`.
pub fn serve_on_free_port(config: &mut Config) -> std::net::SocketAddr {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    config.http.listen = addr.to_string();
    addr
}

/// The offsets `group` has committed for partitions `0..partitions` of `topic` (those
/// with none left out).
pub fn committed_offsets(
    bootstrap: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> BTreeMap<i32, i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition(topic, p);
    }
    let committed = consumer
        .committed_offsets(list, Duration::from_secs(30))
        .expect("committed offsets");
    committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}

/// Runs `shopstream demo --events EVENTS --store STORE` (the embedded mock cluster, no
/// broker to start, no HTTP endpoint) and asserts it succeeded: a store of generator
/// traffic to read.
pub fn demo_store(store: &Path, events: u32) {
    let demo = Command::new(env!("CARGO_BIN_EXE_shopstream"))
        .args(["demo", "--events", &events.to_string(), "--store"])
        .arg(store)
        .env("SHOPSTREAM_LOG", "warn")
        // Tests run side by side: no two may serve the default 127.0.0.1:9464.
        .env("SHOPSTREAM__HTTP__ENABLED", "false")
        .output()
        .unwrap();
    assert!(
        demo.status.success(),
        "{}",
        String::from_utf8_lossy(&demo.stderr)
    );
}

/// The stdout of a command that must have succeeded (else its stderr is the failure).
pub fn stdout_of(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}
