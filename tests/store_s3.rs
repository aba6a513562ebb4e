//! The store in a bucket: a real S3-compatible server (moto) and a real broker per test.
//! The job writes the same bytes to S3 as to a local directory, commit records are
//! create-only, and readers (`query`) take the bucket's URL.

#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use shopstream_config::Config;
use shopstream_ingest::generator::{GeneratorOptions, world::WorldSize};
use shopstream_job::generate::publish_traffic;
use shopstream_sinks::manifest::{self, Commit, CommittedFile};
use shopstream_sinks::storage::{Created, Storage};
use shopstream_sinks::store::StoreError;
use support::s3::S3Server;
use support::{Broker, read_table_of};

/// The store of `config` (local or bucket).
fn storage_of(config: &Config) -> Storage {
    shopstream_sinks::store::open_storage(&config.store).unwrap()
}

/// Every object of a store but its commit records and checkpoints, with its bytes: what
/// a directory-scanning engine sees.
pub fn objects(storage: &Storage) -> BTreeMap<String, Vec<u8>> {
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

/// `config` with its store in a new bucket of `s3`.
fn on_s3(config: &Config, s3: &S3Server, name: &str) -> Config {
    let mut config = config.clone();
    let bucket = s3.bucket(name);
    config.store.path = PathBuf::from(format!("s3://{bucket}/shop"));
    config.store.options = s3.options();
    config
}

fn traffic(seed: u64) -> GeneratorOptions {
    GeneratorOptions {
        seed,
        max_events: Some(5_000),
        sessions_per_sec: 0.12,
        size: WorldSize {
            users: 250,
            items: 300,
            categories: 10,
        },
        ..GeneratorOptions::default()
    }
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

/// Guards issue 16, a missing bucket and wrong credentials: a clear error at start-up
/// that names the bucket and what to check, without retrying for the whole timeout.
#[test]
fn a_missing_bucket_or_wrong_credentials_fail_at_start_up() {
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
    let report = publish_traffic(&local, traffic(31), None, None)
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
    println!(
        "S3 end to end: {} objects identical to the local store's, {rows} example rows, {} checkpoint objects and the model ({} bytes, identical) in the bucket, query over s3:// agrees",
        remote_objects.len(),
        checkpoints.len(),
        model.len()
    );
}
