//! The feature store end to end, against a real broker: a replay rebuilds byte-identical
//! files, and a job SIGKILLed in the middle of writing leaves nothing partial or
//! duplicated visible to `shopstream query` once restarted.

#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use shopstream_config::Config;
use shopstream_ingest::generator::GeneratorReport;
use shopstream_job::generate::publish_traffic;
use shopstream_job::pipeline::{ReplayRange, RunOptions, run, run_observed};
use shopstream_sinks::storage::Storage;
use shopstream_sinks::store::ParquetStore;
use support::s3::S3Server;
use support::{Broker, store_files};

/// The live job (consumer group, idle-partition release, no end-of-input stop) until it
/// has consumed `total` messages, then a shutdown like SIGTERM's.
async fn live_run(config: &Config, total: u64) {
    let (progress, mut watch) = tokio::sync::watch::channel(Default::default());
    let consumed_all = async move {
        let _ = watch
            .wait_for(|p: &shopstream_job::pipeline::Progress| p.consumed >= total)
            .await;
        // Let the last partitions' idle release and the final windows settle like a
        // real SIGTERM some time later would.
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let summary = tokio::time::timeout(
        Duration::from_secs(120),
        run_observed(config, RunOptions::default(), consumed_all, progress),
    )
    .await
    .expect("live run within 120 s")
    .expect("live run");
    assert_eq!(summary.consumed.values().sum::<u64>(), total);
}

async fn replay(config: &Config, store: &shopstream_config::StoreConfig, range: ReplayRange) {
    let mut config = config.clone();
    config.store = store.clone();
    let options = RunOptions {
        stop_at_end: true,
        replay: Some(range),
    };
    run(&config, options, std::future::pending())
        .await
        .expect("replay");
}

fn window_of(relative: &str) -> Option<i64> {
    relative
        .rsplit('/')
        .next()?
        .strip_prefix("window-")?
        .strip_suffix(".parquet")?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_of_the_live_range_writes_byte_identical_files() {
    replay_identical(None).await;
}

/// Guards issue 16: [`replay_of_the_live_range_writes_byte_identical_files`] with the
/// replays written to, and compacted in, S3 buckets (moto).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_into_s3_writes_the_live_runs_files_byte_for_byte() {
    let s3 = S3Server::start();
    replay_identical(Some(&s3)).await;
}

/// The replay test; the replays go into directories, or into buckets of `s3`.
async fn replay_identical(s3: Option<&S3Server>) {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live");
    let mut config = broker.config("replay", &live);
    // Compared window file by window file first (a file per window, none merged);
    // compaction is compared after.
    config.store.compact_closed_hours = false;
    config.store.file_span_secs = 0;
    config.pipeline.idle_partition_timeout_secs = 30;
    let report = publish_traffic(&config, support::two_hour_traffic(21), None, None)
        .await
        .unwrap();
    live_run(&config, report.valid_total).await;
    // The live job checkpointed its open windows at shutdown; a bounded run to the end
    // resumes from there and writes them (as a backfill would), so the live store is
    // complete for the comparison.
    support::run_to_end(&config).await;
    let live_store = config.store.clone();
    let files_of = |store: &shopstream_config::StoreConfig| {
        support::objects(&shopstream_sinks::store::open_storage(store).unwrap())
    };
    let live_files = files_of(&live_store);
    assert!(
        live_files == store_files(&live),
        "objects are the directory's files"
    );
    let examples = live_files
        .keys()
        .filter(|k| k.starts_with("examples/"))
        .count();
    assert!(examples > 20, "{examples} example files");
    // Where a replay writes: a directory, or a new bucket.
    let target = |name: &str| {
        let mut store = config.store.clone();
        match s3 {
            None => store.path = dir.path().join(name),
            Some(s3) => {
                store.path = format!("s3://{}/store", s3.bucket(name)).into();
                store.options = s3.options();
            }
        }
        store
    };

    // The whole range, into a second store.
    let full = target("replay-full");
    replay(
        &config,
        &full,
        ReplayRange {
            from_ms: report.first_ts - 3_600_000,
            to_ms: report.last_ts + 86_400_000,
            warmup_from_ms: None,
        },
    )
    .await;
    let full_files = files_of(&full);
    assert_eq!(
        live_files.keys().collect::<Vec<_>>(),
        full_files.keys().collect::<Vec<_>>(),
        "replay of the whole range: same file names"
    );
    for (name, bytes) in &live_files {
        assert!(
            full_files[name] == *bytes,
            "replay of the whole range: {name} differs"
        );
    }

    // A sub-range: exactly the live run's files of the windows starting in it, same bytes.
    let (from, to) = (report.first_ts + 1_200_000, report.first_ts + 2_400_000);
    let part = target("replay-part");
    replay(
        &config,
        &part,
        ReplayRange {
            from_ms: from,
            to_ms: to,
            warmup_from_ms: None,
        },
    )
    .await;
    let part_files = files_of(&part);
    let expected: Vec<&String> = live_files
        .keys()
        .filter(|name| {
            let start = window_of(name).unwrap();
            // item_demand files are named after their window's end.
            let start = if name.starts_with("item_demand/") {
                start - 60_000
            } else {
                start
            };
            (from..to).contains(&start)
        })
        .collect();
    assert_eq!(part_files.keys().collect::<Vec<_>>(), expected);
    for (name, bytes) in &part_files {
        assert!(
            live_files[name] == *bytes,
            "{name} differs in the sub-range"
        );
    }

    // Compaction is deterministic too, and loses no row.
    let compact = |store_config: &shopstream_config::StoreConfig| {
        let store = ParquetStore::open(store_config).unwrap();
        for table in shopstream_sinks::manifest::tables(store.storage()).unwrap() {
            store.compact(&table, None).unwrap();
        }
    };
    compact(&live_store);
    compact(&full);
    let (live_files, full_files) = (files_of(&live_store), files_of(&full));
    assert_eq!(live_files, full_files, "compacted stores differ");
    let compacted = live_files
        .keys()
        .filter(|k| k.starts_with("examples/"))
        .count();
    assert!(compacted <= 2, "{compacted} example files after compaction");
    let storage = shopstream_sinks::store::open_storage(&full).unwrap();
    let rows: u64 = shopstream_sinks::manifest::live_files(&storage, "examples")
        .unwrap()
        .iter()
        .map(|f| f.rows)
        .sum();
    assert_eq!(rows, report.impressions);
    println!(
        "replay{}: {examples} example files byte-identical (full range), {} in the sub-range, {compacted} after compaction, {rows} rows",
        if s3.is_some() { " into S3" } else { "" },
        part_files.len()
    );
}

/// Guards the store's file spans (`store.file_span_secs`): a live job stopped part way keeps
/// the rows of the span it was in in its checkpoint (with its open windows), and the run
/// after it writes the files, names and bytes, of a job never stopped. Compaction is off,
/// so no merge hides a difference, and there are fewer files than windows. The traffic is
/// quiet (fewer rows a span than `store.file_span_min_rows`), so its spans carry on to
/// the end of their hour, through the stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_stopped_mid_span_writes_the_files_of_one_never_stopped() {
    stopped_mid_span_then_compared(false).await;
}

/// Guards compaction waiting for a span's end (`compaction_due`, kept in checkpoints): with
/// compaction on, a job stopped part way through a carried span, with the compaction of
/// settled hours possibly waiting for that span, ends with the store of a job never
/// stopped, commit records included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_stopped_mid_span_with_compaction_on_writes_the_store_of_one_never_stopped() {
    stopped_mid_span_then_compared(true).await;
}

/// Runs the two-hour traffic once stopped half way and restarted, once straight through,
/// with compaction `compact`, and compares the stores byte for byte.
async fn stopped_mid_span_then_compared(compact: bool) {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let stopped = dir.path().join("stopped");
    let mut config = broker.config(if compact { "spans-compact" } else { "spans" }, &stopped);
    config.store.compact_closed_hours = compact;
    config.pipeline.idle_partition_timeout_secs = 30;
    assert_eq!(config.store.file_span_secs, 600, "the default span");
    let report = publish_traffic(&config, support::two_hour_traffic(22), None, None)
        .await
        .unwrap();
    let total = report.valid_total + report.malformed_total;

    // Stopped once about half the input is consumed, as SIGTERM would.
    let (progress, mut watch) = tokio::sync::watch::channel(Default::default());
    let half = async move {
        let _ = watch
            .wait_for(|p: &shopstream_job::pipeline::Progress| p.consumed >= total / 2)
            .await;
    };
    let first = tokio::time::timeout(
        Duration::from_secs(120),
        run_observed(&config, RunOptions::default(), half, progress),
    )
    .await
    .expect("stopped run within 120 s")
    .expect("stopped run");
    assert!(
        first.examples_written < report.impressions,
        "the first run stopped part way: {} of {} examples",
        first.examples_written,
        report.impressions
    );
    let end = support::run_to_end(&config).await;
    assert_eq!(
        first.examples_written + end.examples_written,
        report.impressions,
        "every example written once across the stop"
    );

    let mut never = config.clone();
    never.store.path = dir.path().join("never-stopped");
    never.kafka.group_id = format!("{}-never", config.kafka.group_id);
    let whole = support::run_to_end(&never).await;
    assert_eq!(whole.examples_written, report.impressions);
    support::assert_same_store(
        "stopped mid-span vs never stopped",
        &stopped,
        &never.store.path,
    );
    if compact {
        println!(
            "file spans with compaction: {} compacted files; the stopped run wrote {} of {} examples",
            whole.compactions, first.examples_written, report.impressions
        );
        return;
    }
    let example_files: Vec<String> = store_files(&stopped)
        .into_keys()
        .filter(|k| k.starts_with("examples/"))
        .collect();
    let files = example_files.len() as u64;
    assert!(
        files < whole.windows_closed / 2,
        "{files} example files for {} windows",
        whole.windows_closed
    );
    // Carried spans: a span per hour, each writing its hour and the hours its late labels
    // reach back to; 10-minute spans would write at least 6 an hour.
    let hours: std::collections::BTreeSet<&str> = example_files
        .iter()
        .filter_map(|k| k.rsplit_once('/').map(|(dir, _)| dir))
        .collect();
    assert!(
        files <= 3 * hours.len() as u64,
        "{files} example files in {} hour partitions: spans not carried",
        hours.len()
    );
    println!(
        "file spans: {files} example files for {} windows; the stopped run wrote {} of {} examples",
        whole.windows_closed, first.examples_written, report.impressions
    );
}

/// `shopstream query` over the store: (rows, distinct event ids) of `examples`.
fn visible_examples(config_path: &Path) -> (u64, u64) {
    let out = Command::new(env!("CARGO_BIN_EXE_shopstream"))
        .args(["query", "--format", "csv", "--config"])
        .arg(config_path)
        .arg("SELECT count(*) AS n, count(DISTINCT event_id) AS d FROM examples")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Nothing of the table committed yet: the store says so instead of showing rows.
    if stderr.contains("has no tables yet") || stderr.contains("relation 'examples' was not found")
    {
        return (0, 0);
    }
    assert!(out.status.success(), "query failed: {stderr}");
    let line = stdout.lines().nth(1).unwrap_or_default();
    let (n, d) = line.split_once(',').unwrap();
    (n.parse().unwrap(), d.parse().unwrap())
}

/// Guards crash recovery with exactly-once effects on the store (issues 6, 8 and 13): the
/// job is SIGKILLed at eight points (mid-window, half-way through a Parquet file, between a
/// window's files and its commit record, half-way through a checkpoint, between a
/// checkpoint and the offset commit, in the middle of a compaction, late in the run,
/// between the last checkpoint and the model file),
/// each time restarted from its checkpoint. While killed, `shopstream query` never shows a
/// partial file or a duplicate row; after the restart the store is byte-identical, file
/// for file, to a run never killed, and so is the model file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_eight_points_then_restart_gives_the_never_killed_store_and_model() {
    sigkill_then_restart(None).await;
}

/// Guards issue 16: [`sigkill_at_eight_points_then_restart_gives_the_never_killed_store_and_model`]
/// with the store, the checkpoints and the model file in an S3 bucket (moto).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_eight_points_with_the_store_on_s3_gives_the_never_killed_store_and_model() {
    let s3 = S3Server::start();
    sigkill_then_restart(Some(&s3)).await;
}

/// The kill test, with the store (checkpoints and model included) in a directory, or in
/// a bucket of `s3`.
async fn sigkill_then_restart(s3: Option<&S3Server>) {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let base = broker.config("kill", &dir.path().join("unused"));
    let report: GeneratorReport = publish_traffic(&base, support::two_hour_traffic(22), None, None)
        .await
        .unwrap();

    let job_config = |name: &str| {
        let mut config = base.clone();
        config.kafka.group_id = format!("{}-{name}", base.kafka.group_id);
        match s3 {
            None => {
                config.store.path = dir.path().join(name);
                config.model.path = Some(dir.path().join(format!("{name}.ssm")));
            }
            Some(s3) => {
                let bucket = s3.bucket(name);
                config.store.path = format!("s3://{bucket}/store").into();
                config.store.options = s3.options();
                config.model.path = Some(format!("s3://{bucket}/model.ssm").into());
            }
        }
        config.model.embedding_bits = 12;
        // Every span ends at its 10-minute boundary, as the kill points below count them
        // (this traffic is quiet: by default its spans would carry on to their hour). A
        // stop inside a carried span is `a_job_stopped_mid_span_writes_the_files_of_one_never_stopped`.
        config.store.file_span_min_rows = 0;
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
        (config, path)
    };
    let storage = |config: &Config| shopstream_sinks::store::open_storage(&config.store).unwrap();
    // The model file's bytes, wherever it is.
    let model_of = |config: &Config| -> Vec<u8> {
        let path = config.model.path.as_ref().unwrap();
        match path.to_string_lossy().rsplit_once('/') {
            Some((parent, name)) if parent.starts_with("s3://") => {
                let dir = Storage::open(
                    Path::new(parent),
                    &config.store.options,
                    Duration::from_secs(30),
                )
                .unwrap();
                dir.get(name).unwrap().expect("model file").to_vec()
            }
            _ => std::fs::read(path).unwrap(),
        }
    };
    let run_job = |config_path: &Path, failpoint: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_shopstream"));
        command
            .args(["run", "--stop-at-end", "--config"])
            .arg(config_path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(point) = failpoint {
            command.env("SHOPSTREAM_FAILPOINT", point);
        }
        command.spawn().unwrap()
    };
    // Every visible file of every table, with its bytes.
    let visible = |store: &Storage| -> Vec<(String, Vec<u8>)> {
        let mut files = Vec::new();
        for table in shopstream_sinks::manifest::tables(store).unwrap() {
            for f in shopstream_sinks::manifest::live_files(store, &table).unwrap() {
                let bytes = store.get(&f.key).unwrap().expect("committed file").to_vec();
                files.push((f.key, bytes));
            }
        }
        files.sort();
        files
    };

    // The reference: never killed.
    let (reference, reference_path) = job_config("reference");
    let out = run_job(&reference_path, None).wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        visible_examples(&reference_path),
        (report.impressions, report.impressions)
    );
    let reference_model = model_of(&reference);
    let reference_files = visible(&storage(&reference));
    let total: u64 = report.valid_per_topic.values().sum();

    let mut partial_seen = false;
    for (n, point) in [
        "pipeline.message_handled:4600",
        "store.temp_written:7",
        // (Windows are written a file span at a time: about 8 spans of 5 tables here.)
        "store.files_renamed:15",
        "checkpoint.temp_written:4",
        // (The run writes 10 checkpoints, the last at its end: the 9th left too few
        // windows after it to be sure the kill comes before they are written.)
        "checkpoint.written:5",
        "store.compaction_written:1",
        "store.temp_written:20",
        // After the last checkpoint, before the model file: the restart resumes at the
        // end and must write the model file of the run never killed (issue 13, 3).
        "pipeline.model_saving:1",
    ]
    .into_iter()
    .enumerate()
    {
        let (config, config_path) = job_config(&format!("killed-{n}"));
        let mut job = run_job(&config_path, Some(point));
        // Wait until the job stands at the crash point, then kill it there.
        let stderr = job.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("failpoint") {
                    let _ = tx.send(line);
                }
            }
        });
        let reached = rx.recv_timeout(Duration::from_secs(60));
        assert!(reached.is_ok(), "{point} was not reached");
        job.kill().unwrap(); // SIGKILL
        job.wait().unwrap();

        let (rows, distinct) = visible_examples(&config_path);
        partial_seen |= 0 < rows && rows < report.impressions;
        assert_eq!(rows, distinct, "{point}: duplicates visible after the kill");
        if point.starts_with("store.compaction") || point.starts_with("pipeline.model_saving") {
            // Compaction runs once every window is written: all rows, each once.
            assert_eq!(rows, report.impressions, "{point}");
        } else {
            assert!(rows < report.impressions, "{point}: killed before the end");
        }
        // Every visible file is complete: its rows equal its commit record's.
        let store = storage(&config);
        for file in shopstream_sinks::manifest::live_files(&store, "examples").unwrap() {
            let (_, batches) = shopstream_sinks::read::read_object(&store, &file.key).unwrap();
            let read: usize = batches.iter().map(|b| b.num_rows()).sum();
            assert_eq!(read as u64, file.rows, "{point}: {}", file.relative);
        }

        let restart = run_job(&config_path, None).wait_with_output().unwrap();
        assert!(
            restart.status.success(),
            "{point}: restart failed: {}",
            String::from_utf8_lossy(&restart.stderr)
        );
        let summary: serde_json::Value = serde_json::from_slice(&restart.stdout).unwrap();
        let consumed: u64 = summary["consumed"]
            .as_object()
            .map_or(0, |m| m.values().filter_map(|v| v.as_u64()).sum());
        let resumed = String::from_utf8_lossy(&restart.stderr).contains("resuming from checkpoint");
        assert!(
            summary["duplicates"]
                .as_object()
                .is_none_or(|m| m.is_empty())
                && summary["dead_lettered"]
                    .as_object()
                    .is_none_or(|m| m.is_empty()),
            "{point}: the restart saw duplicates or dead letters: {summary}"
        );
        assert_eq!(
            visible_examples(&config_path),
            (report.impressions, report.impressions),
            "{point}: after the restart"
        );
        // No file outside the manifest is left for directory-scanning engines.
        let on_disk: Vec<String> = support::objects(&store).into_keys().collect();
        let files = visible(&store);
        let committed: Vec<&String> = files.iter().map(|(name, _)| name).collect();
        assert_eq!(
            on_disk.iter().collect::<Vec<_>>(),
            committed,
            "{point}: files outside the manifest"
        );
        assert!(
            files == reference_files,
            "{point}: the restarted store differs from the never-killed one"
        );
        assert!(
            model_of(&config) == reference_model,
            "{point}: the model differs from the never-killed one"
        );
        println!(
            "{}kill at {point}: {rows} rows visible after the kill; restart {} and read {consumed} of {total} messages; store and model identical to the never-killed run",
            if s3.is_some() { "S3 store: " } else { "" },
            if resumed {
                "resumed from a checkpoint"
            } else {
                "started empty (no checkpoint yet)"
            }
        );
    }
    assert!(
        partial_seen,
        "no kill point fell where some but not all rows were visible"
    );
}

/// Guards "positions never pass unwritten data": when the store cannot be written (here a
/// file sits where an hour directory must go, as a full or read-only disk would refuse
/// too), the job exits non-zero naming the path, commits no offsets, and a restart after
/// the problem is fixed writes every row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwritable_store_exits_non_zero_naming_the_path_and_loses_nothing() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let config = broker.config("unwritable", &store);
    let report = publish_traffic(&config, support::two_hour_traffic(23), None, None)
        .await
        .unwrap();
    let config_path = dir.path().join("job.toml");
    std::fs::write(&config_path, toml::to_string(&config).unwrap()).unwrap();
    let blocker = store.join("examples").join("date=2026-01-05");
    std::fs::create_dir_all(blocker.parent().unwrap()).unwrap();
    std::fs::write(&blocker, b"not a directory").unwrap();

    let run = || {
        Command::new(env!("CARGO_BIN_EXE_shopstream"))
            .args(["run", "--stop-at-end", "--config"])
            .arg(&config_path)
            .output()
            .unwrap()
    };
    let failed = run();
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert_eq!(failed.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("date=2026-01-05") && stderr.contains("store.path is writable"),
        "{stderr}"
    );
    assert_eq!(visible_examples(&config_path).0, 0, "nothing committed");

    std::fs::remove_file(&blocker).unwrap();
    let fixed = run();
    assert!(
        fixed.status.success(),
        "{}",
        String::from_utf8_lossy(&fixed.stderr)
    );
    assert_eq!(
        visible_examples(&config_path),
        (report.impressions, report.impressions)
    );
    println!(
        "unwritable store: exit 1 with `{}`; after the fix {} rows",
        stderr.lines().last().unwrap_or_default(),
        report.impressions
    );
}
