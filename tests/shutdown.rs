//! SIGTERM on the real binary: the live job drains, checkpoints, commits and exits 0; a
//! restart reads nothing already consumed and writes each remaining row exactly once.

#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use arrow::array::{Array, StringArray};
use support::{Broker, http_get, metric, read_table};

/// The `event_id`s of the examples visible in the store, and the number of rows.
fn example_ids(store: &Path) -> (BTreeSet<String>, usize) {
    let mut ids = BTreeSet::new();
    let mut rows = 0;
    for batch in read_table(store, "examples") {
        let column = batch
            .column_by_name("event_id")
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap()
            .clone();
        rows += column.len();
        ids.extend((0..column.len()).map(|i| column.value(i).to_string()));
    }
    (ids, rows)
}

/// Guards "SIGTERM checkpoints instead of flushing, and the restart neither loses nor
/// repeats rows": the signal arrives once the job has committed examples (about 75
/// minutes of event time, labels mature after 40), so some rows are in the store and the
/// rest in the checkpoint; the restart must write exactly the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_checkpoints_commits_and_exits_zero_then_restart_writes_each_row_once() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let mut config = broker.config("sigterm", &store);
    let addr = support::serve_on_free_port(&mut config);
    config.pipeline.idle_partition_timeout_secs = 1;
    config.pipeline.shutdown_timeout_secs = 20;
    let (report, produced, config_path) =
        support::publish_for_binary(&config, support::small_shop(8, 5_000), dir.path()).await;

    let first_log = dir.path().join("first.log");
    let second_log = dir.path().join("second.log");
    let logs = || support::log_tails(&[&first_log, &second_log], 40);
    let mut job = Command::new(env!("CARGO_BIN_EXE_shopstream"))
        .args(["run", "--config"])
        .arg(&config_path)
        .arg("--summary-json")
        .arg(dir.path().join("first.json"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&first_log).unwrap())
        .spawn()
        .unwrap();
    // Wait for the first committed examples.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        assert!(Instant::now() < deadline, "no examples written in 90 s");
        if let Ok(Some(status)) = job.try_wait() {
            panic!("the job exited early: {status}");
        }
        if std::net::TcpStream::connect(addr).is_ok()
            && metric(
                &http_get(addr, "/metrics").1,
                "shopstream_examples_written_total",
            ) > 0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let signalled = Instant::now();
    support::sigterm(&job);
    let status = loop {
        if let Some(status) = job.try_wait().unwrap() {
            break status;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(config.pipeline.shutdown_timeout_secs),
            "no exit within the configured bound of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(0), "SIGTERM exits 0{}", logs());
    let summary = |name: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(dir.path().join(name)).unwrap()).unwrap()
    };
    let consumed = |s: &serde_json::Value| -> u64 {
        s["consumed"]
            .as_object()
            .map_or(0, |m| m.values().filter_map(|v| v.as_u64()).sum())
    };
    let first = summary("first.json");
    let written_at_stop = first["examples_written"].as_u64().unwrap();
    assert!(
        0 < written_at_stop && written_at_stop < report.impressions,
        "rows written before SIGTERM: {first}"
    );
    assert!(
        first["checkpoints"].as_u64().unwrap() >= 1,
        "{first}{}",
        logs()
    );
    let (before, rows_before) = example_ids(&store);
    assert_eq!(rows_before as u64, written_at_stop);
    assert_eq!(before.len(), rows_before, "duplicates before the restart");

    // Restart, bounded: it resumes from the checkpoint, reads only what the first run had
    // not consumed, and at the end of its input writes the rest.
    let status = Command::new(env!("CARGO_BIN_EXE_shopstream"))
        .args(["run", "--stop-at-end", "--config"])
        .arg(&config_path)
        .arg("--summary-json")
        .arg(dir.path().join("second.json"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&second_log).unwrap())
        .status()
        .unwrap();
    assert!(status.success(), "the restart failed{}", logs());
    let second = summary("second.json");
    assert_eq!(
        consumed(&first) + consumed(&second),
        produced,
        "every message consumed once: {first} {second}{}",
        logs()
    );
    assert_eq!(
        second["examples_written"].as_u64(),
        Some(report.impressions - written_at_stop),
        "{first} {second}{}",
        logs()
    );
    let (after, rows_after) = example_ids(&store);
    assert_eq!(
        rows_after as u64, report.impressions,
        "every impression once: none lost"
    );
    assert_eq!(after.len(), rows_after, "no row written twice");
    assert!(before.is_subset(&after), "rows of the first run kept");
    eprintln!(
        "sigterm: {produced} messages, SIGTERM after {} consumed with {written_at_stop} rows \
         committed, exit 0 after {:.2} s; restart consumed {}, wrote {}; store {rows_after} \
         rows, {} distinct",
        consumed(&first),
        signalled.elapsed().as_secs_f64(),
        consumed(&second),
        report.impressions - written_at_stop,
        after.len()
    );
}
