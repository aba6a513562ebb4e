//! The store in a bucket: a real S3-compatible server (moto) and a real broker per test.
//! The job writes the same bytes to S3 as to a local directory, commit records are
//! create-only, and readers (`query`) take the bucket's URL.

#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::collections::BTreeMap;

use arrow::array::Array;
use std::path::{Path, PathBuf};
use std::time::Duration;

use shopstream_config::Config;
use shopstream_job::generate::publish_traffic;
use shopstream_sinks::manifest::{self, Commit, CommittedFile};
use shopstream_sinks::storage::{Created, Storage};
use shopstream_sinks::store::StoreError;
use support::s3::S3Server;
use support::{Broker, objects, read_table_of};

/// The store of `config` (local or bucket).
fn storage_of(config: &Config) -> Storage {
    shopstream_sinks::store::open_storage(&config.store).unwrap()
}

/// `config` with its store in a new bucket of `s3`.
fn on_s3(config: &Config, s3: &S3Server, name: &str) -> Config {
    let mut config = config.clone();
    let bucket = s3.bucket(name);
    config.store.path = PathBuf::from(format!("s3://{bucket}/shop"));
    config.store.options = s3.options();
    config
}

fn commit(id: &str, file: &str) -> Commit {
    Commit {
        format: manifest::COMMIT_FORMAT,
        table: "examples".to_string(),
        id: id.to_string(),
        files: vec![CommittedFile {
            path: file.to_string(),
            rows: 1,
            bytes: 1,
        }],
        replaces: Vec::new(),
        source_offsets: BTreeMap::new(),
    }
}

/// Guards issue 16's create-only commit records on a real S3 server: of writers racing
/// for one record exactly one creates it; the same commit again goes on, keeping the
/// first record; a different commit under the same name is refused, naming the record.
#[test]
fn commit_records_are_create_only_on_s3() {
    let s3 = S3Server::start();
    let bucket = s3.bucket("records");
    let storage = Storage::open(
        Path::new(&format!("s3://{bucket}/store")),
        &s3.options(),
        Duration::from_secs(10),
    )
    .unwrap();
    storage.check().unwrap();

    let racers: Vec<_> = (0..4)
        .map(|n| {
            let storage = storage.clone();
            std::thread::spawn(move || {
                storage
                    .put_new(
                        "race/record.json",
                        format!("writer {n}").into_bytes().into(),
                    )
                    .unwrap()
            })
        })
        .collect();
    let outcomes: Vec<Created> = racers.into_iter().map(|t| t.join().unwrap()).collect();
    let created = outcomes.iter().filter(|o| **o == Created::New).count();
    assert_eq!(created, 1, "{outcomes:?}");
    let kept = storage.get("race/record.json").unwrap().unwrap();
    for outcome in &outcomes {
        if let Created::Existing(bytes) = outcome {
            assert_eq!(*bytes, kept, "every loser sees the winner's record");
        }
    }

    let mut first = commit("window-1", "date=2026-01-05/hour=00/window-1.parquet");
    first.source_offsets.insert("clicks/0".to_string(), 5);
    manifest::write_commit(&storage, &first).unwrap();
    let mut again = first.clone();
    again.source_offsets.insert("clicks/0".to_string(), 9);
    manifest::write_commit(&storage, &again).unwrap();
    let key = manifest::commit_key("examples", "window-1");
    assert_eq!(
        manifest::read_commit(&storage, &key).unwrap().unwrap(),
        first
    );
    let other = commit("window-1", "date=2026-01-05/hour=00/other.parquet");
    let err = manifest::write_commit(&storage, &other).unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains(&format!(
            "s3://{bucket}/store/_manifest/examples/window-1.json"
        )),
        "{message}"
    );
    println!(
        "create-only on S3: 1 of 4 racing writers created the record; a different commit: {message}"
    );
}

/// Guards issue 16, a missing bucket: a clear error at start-up
/// that names the bucket and what to check, without retrying for the whole timeout.
#[test]
fn a_missing_bucket_fails_at_start_up() {
    let s3 = S3Server::start();
    let config = shopstream_config::StoreConfig {
        path: PathBuf::from("s3://no-such-bucket/store"),
        options: s3.options(),
        retry_timeout_secs: 30,
        ..Default::default()
    };
    let started = std::time::Instant::now();
    let err = shopstream_sinks::store::ParquetStore::open(&config).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("s3://no-such-bucket/store"), "{message}");
    assert!(message.contains("check the bucket name"), "{message}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "retried a missing bucket"
    );
    println!("missing bucket: {message}");
}

/// Guards issue 16's end-to-end run on S3: the job run to the end of generated traffic
/// with its store in a bucket writes, object for object, the bytes the same job writes to
/// a local directory; every impression is one row; `shopstream query` reads the bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_writes_to_s3_the_bytes_it_writes_to_a_local_store() {
    let broker = Broker::start();
    let s3 = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let mut local = broker.config("s3e2e", &dir.path().join("local"));
    local.model.path = Some(dir.path().join("model.ssm"));
    let report = publish_traffic(&local, support::two_hour_traffic(31), None, None)
        .await
        .unwrap();
    let summary = support::run_to_end(&local).await;
    assert!(summary.reached_end);

    let mut remote = on_s3(&local, &s3, "e2e");
    remote.kafka.group_id = format!("{}-s3", local.kafka.group_id);
    // Checkpoints (by default below store.path) and the model file in the bucket too.
    let model_url = format!("{}/models/model.ssm", remote.store.path.display());
    remote.model.path = Some(PathBuf::from(&model_url));
    let summary = support::run_to_end(&remote).await;
    assert!(summary.reached_end);

    let local_objects = objects(&storage_of(&local));
    let remote_objects = objects(&storage_of(&remote));
    assert_eq!(
        local_objects.keys().collect::<Vec<_>>(),
        remote_objects.keys().collect::<Vec<_>>(),
        "same objects"
    );
    for (key, bytes) in &local_objects {
        assert!(remote_objects[key] == *bytes, "{key} differs on S3");
    }
    let bucket = storage_of(&remote);
    let checkpoints: Vec<String> = bucket
        .list("_checkpoints/")
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert!(
        checkpoints.iter().any(|k| k.ends_with(".ckpt")),
        "no checkpoint in the bucket: {checkpoints:?}"
    );
    let model = bucket
        .get("models/model.ssm")
        .unwrap()
        .expect("model in the bucket");
    assert!(
        model.as_ref() == std::fs::read(local.model.path.as_ref().unwrap()).unwrap(),
        "the model in the bucket differs from the local one"
    );
    let rows: usize = read_table_of(&bucket, "examples")
        .iter()
        .map(|b| b.num_rows())
        .sum();
    assert_eq!(rows as u64, report.impressions);

    // The CLI reads the bucket by URL.
    let config_path = dir.path().join("s3.toml");
    std::fs::write(&config_path, toml::to_string(&remote).unwrap()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shopstream"))
        .args(["query", "--format", "csv", "--config"])
        .arg(&config_path)
        .arg("SELECT COUNT(*) AS n, COUNT(DISTINCT event_id) AS d FROM examples")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines().nth(1),
        Some(format!("{0},{0}", report.impressions).as_str()),
        "{text}"
    );
    // Other engines read the bucket too: pyarrow and DuckDB agree with the manifest
    // (scripts/check-store.sh installs them into a venv outside the clone once).
    let check = std::process::Command::new("scripts/check-store.sh")
        .arg(remote.store.path.display().to_string())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("AWS_ENDPOINT_URL", format!("http://{}", s3.endpoint))
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .output()
        .unwrap();
    let checked = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "check-store on S3: {checked}{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        checked.contains(&format!(
            "examples: files {}",
            local_objects
                .keys()
                .filter(|k| k.starts_with("examples/"))
                .count()
        )),
        "{checked}"
    );
    println!("check-store on S3:\n{checked}");
    println!(
        "S3 end to end: {} objects identical to the local store's, {rows} example rows, {} checkpoint objects and the model ({} bytes, identical) in the bucket, query over s3:// agrees",
        remote_objects.len(),
        checkpoints.len(),
        model.len()
    );
}

/// A live job on generated traffic whose store (checkpoints included) is in a bucket
/// reached through `proxy`: its config file, endpoints, log and the traffic's report.
struct LiveOnS3 {
    config: Config,
    config_path: PathBuf,
    addr: std::net::SocketAddr,
    log: PathBuf,
    job: std::process::Child,
    messages: Vec<shopstream_ingest::generator::GeneratedMessage>,
    report: shopstream_ingest::generator::GeneratorReport,
}

/// Publishes the first half of 3,000 generated events and starts the live job on them
/// with its store in a new bucket of `s3`, a file per window (so that windows closing
/// during an outage write), and `retry_timeout_secs`.
async fn start_live_on_s3(
    broker: &Broker,
    s3: &S3Server,
    dir: &Path,
    retry_timeout_secs: u64,
) -> LiveOnS3 {
    let base = broker.config("s3outage", &dir.join("unused"));
    let mut config = on_s3(&base, s3, "outage");
    let addr = support::serve_on_free_port(&mut config);
    config.store.file_span_secs = 0;
    config.store.retry_timeout_secs = retry_timeout_secs;
    // Offsets are committed after each checkpoint: take one every window.
    config.checkpoint.every_windows = 1;
    config.kafka.produce_timeout_ms = 120_000;
    config.pipeline.idle_partition_timeout_secs = 120;
    let config_path = dir.join("job.toml");
    std::fs::write(&config_path, toml::to_string(&config).unwrap()).unwrap();
    let mut generator = shopstream_ingest::generator::Generator::new(
        support::small_shop_at_default_rate(12, 3_000),
    );
    let messages: Vec<_> = generator.by_ref().collect();
    let report = generator.report().clone();
    let first = messages[..messages.len() / 2].to_vec();
    let first_count = shopstream_job::generate::publish_messages(&config, first, None)
        .await
        .unwrap();
    let log = dir.join("job.log");
    let mut job = std::process::Command::new(env!("CARGO_BIN_EXE_shopstream"))
        .args(["run", "--config"])
        .arg(&config_path)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    support::wait_consumed(addr, first_count, &mut job, Duration::from_secs(90)).await;
    LiveOnS3 {
        config,
        config_path,
        addr,
        log,
        job,
        messages,
        report,
    }
}

/// Guards issue 16's store outage: S3 unreachable for 30 s (the connection cut through a
/// proxy) while windows close. The job keeps running and retries with backoff, `/readyz`
/// says the store is unreachable, no input offset is committed meanwhile, and once the
/// store is back nothing is lost or doubled: every impression is one row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thirty_second_s3_outage_loses_nothing() {
    let broker = Broker::start();
    let (s3, proxy) = S3Server::start_behind_proxy();
    let dir = tempfile::tempdir().unwrap();
    let mut live = start_live_on_s3(&broker, &s3, dir.path(), 120).await;
    let committed = || {
        support::committed_offsets(
            &broker.bootstrap,
            &live.config.kafka.group_id,
            &live.config.topics.clicks,
            live.config.kafka.topic_partitions,
        )
    };

    proxy.cut();
    let cut_at = std::time::Instant::now();
    // The rest of the traffic arrives during the outage: its windows close and want
    // writing.
    let second = live.messages[live.messages.len() / 2..].to_vec();
    shopstream_job::generate::publish_messages(&live.config, second, None)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let committed_early = committed();
    let mut unready_seen = None;
    while cut_at.elapsed() < Duration::from_secs(30) {
        assert!(
            live.job.try_wait().unwrap().is_none(),
            "the job exited during the outage: {}",
            std::fs::read_to_string(&live.log).unwrap_or_default()
        );
        let (status, body) = support::http_get(live.addr, "/readyz");
        if status.contains("503") && body.contains("store unreachable") {
            unready_seen.get_or_insert(cut_at.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let committed_late = committed();
    assert_eq!(
        committed_early, committed_late,
        "offsets advanced while the store was unreachable"
    );
    let unready_after = unready_seen.expect("/readyz never said the store was unreachable");
    proxy.restore();
    support::wait_consumed(
        live.addr,
        live.report.valid_total,
        &mut live.job,
        Duration::from_secs(120),
    )
    .await;
    support::sigterm(&live.job);
    let status = live.job.wait().unwrap();
    let logged = std::fs::read_to_string(&live.log).unwrap();
    assert_eq!(status.code(), Some(0), "{logged}");
    assert!(
        logged.contains("store request failed; retrying"),
        "the outage was not logged: {logged}"
    );
    // Shutdown checkpointed what was still open; a bounded run resumes and writes it.
    let end = std::process::Command::new(env!("CARGO_BIN_EXE_shopstream"))
        .args(["run", "--stop-at-end", "--config"])
        .arg(&live.config_path)
        .output()
        .unwrap();
    assert!(
        end.status.success(),
        "{}",
        String::from_utf8_lossy(&end.stderr)
    );
    let committed_end = committed();
    assert!(
        committed_end.values().sum::<i64>() > committed_late.values().sum::<i64>(),
        "offsets never advanced after the outage: {committed_late:?} -> {committed_end:?}"
    );
    let bucket = storage_of(&live.config);
    let batches = read_table_of(&bucket, "examples");
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    let mut ids = std::collections::HashSet::new();
    for batch in &batches {
        let column = batch.column_by_name("event_id").unwrap();
        let strings = column
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .unwrap();
        for i in 0..strings.len() {
            ids.insert(strings.value(i).to_string());
        }
    }
    assert_eq!(rows as u64, live.report.impressions, "store rows");
    assert_eq!(ids.len(), rows, "duplicates");
    // Every committed file is whole: its rows are its record's.
    for file in manifest::live_files(&bucket, "examples").unwrap() {
        let (_, read) = shopstream_sinks::read::read_object(&bucket, &file.key).unwrap();
        let n: usize = read.iter().map(|b| b.num_rows()).sum();
        assert_eq!(n as u64, file.rows, "{}", file.key);
    }
    println!(
        "S3 outage: 30 s cut, {} connections refused; /readyz said \"store unreachable\" {:.1} s into it; clicks offsets committed 5 s and 30 s into it equal (sum {}, {} after it); {} impressions -> {rows} rows, {} distinct",
        proxy.refused.load(std::sync::atomic::Ordering::SeqCst),
        unready_after.as_secs_f64(),
        committed_late.values().sum::<i64>(),
        committed_end.values().sum::<i64>(),
        live.report.impressions,
        ids.len()
    );
}

/// Guards issue 16's longer outage: with the store unreachable past
/// `store.retry_timeout_secs` the job exits 1, naming the endpoint and the object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_longer_s3_outage_exits_1_naming_the_endpoint_and_the_object() {
    let broker = Broker::start();
    let (s3, proxy) = S3Server::start_behind_proxy();
    let dir = tempfile::tempdir().unwrap();
    let mut live = start_live_on_s3(&broker, &s3, dir.path(), 5).await;
    proxy.cut();
    let cut_at = std::time::Instant::now();
    let second = live.messages[live.messages.len() / 2..].to_vec();
    shopstream_job::generate::publish_messages(&live.config, second, None)
        .await
        .unwrap();
    let status = loop {
        if let Some(status) = live.job.try_wait().unwrap() {
            break status;
        }
        assert!(
            cut_at.elapsed() < Duration::from_secs(120),
            "the job still runs 120 s into the outage: {}",
            std::fs::read_to_string(&live.log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let logged = std::fs::read_to_string(&live.log).unwrap();
    assert_eq!(status.code(), Some(1), "{logged}");
    let endpoint = format!("http://{}", s3.endpoint);
    let store = live.config.store.path.display().to_string();
    let last = logged.lines().last().unwrap_or_default();
    assert!(
        logged.contains(&endpoint) && logged.contains(&store),
        "the error names neither the endpoint {endpoint} nor an object of {store}: {logged}"
    );
    assert!(logged.contains("store.retry_timeout_secs"), "{logged}");
    println!(
        "S3 longer outage: exit 1 after {:.1} s (retry_timeout_secs = 5); last log line: {last}",
        cut_at.elapsed().as_secs_f64()
    );
}

/// Guards issue 16's `check-config` for a bucket store: secrets masked, a reachable bucket
/// says so (exit 0), a missing one is named with what to check (exit 1), an unknown
/// option key is a configuration error (exit 2).
#[test]
fn check_config_tells_what_it_can_about_a_bucket() {
    let s3 = S3Server::start();
    let bucket = s3.bucket("checkconfig");
    let dir = tempfile::tempdir().unwrap();
    let run = |path: &str, extra: &str| {
        let file = dir.path().join("c.toml");
        let options: String = s3
            .options()
            .iter()
            .map(|(k, v)| format!("{k} = \"{v}\"\n"))
            .collect();
        std::fs::write(
            &file,
            format!("[store]\npath = \"{path}\"\n[store.options]\n{options}{extra}"),
        )
        .unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_shopstream"))
            .arg("check-config")
            .arg(&file)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, _) = run(&format!("s3://{bucket}/store"), "");
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("reachable"), "{stdout}");
    assert!(
        stdout.contains("aws_secret_access_key = \"********\""),
        "{stdout}"
    );
    assert!(
        !stdout.contains("\"testing\"\naws_region"),
        "a secret shown: {stdout}"
    );
    let (code, _, stderr) = run("s3://no-such-bucket/store", "");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("no-such-bucket") && stderr.contains("check the bucket name"),
        "{stderr}"
    );
    let (code, _, stderr) = run(&format!("s3://{bucket}/store"), "aws_bogus = \"1\"\n");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("aws_bogus"), "{stderr}");
}
