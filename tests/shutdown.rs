//! SIGTERM on the real binary: the live job drains, checkpoints, commits and exits 0; a
//! restart reads nothing already consumed and writes each remaining row exactly once.

#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shopstream::generate::publish_traffic;
use shopstream_ingest::generator::{GeneratorOptions, world::WorldSize};
use support::{Broker, read_table, wait_consumed};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_checkpoints_commits_and_exits_zero_then_restart_writes_each_row_once() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let mut config = broker.config("sigterm", &dir.path().join("store"));
    let port = support::free_port();
    config.http.listen = format!("127.0.0.1:{port}");
    config.pipeline.idle_partition_timeout_secs = 1;
    config.pipeline.shutdown_timeout_secs = 20;
    let options = GeneratorOptions {
        seed: 8,
        max_events: Some(3_000),
        size: WorldSize {
            users: 150,
            items: 200,
            categories: 8,
        },
        ..GeneratorOptions::default()
    };
    let report = publish_traffic(&config, options, None, None).await.unwrap();
    let produced = report.valid_total;
    let config_path = dir.path().join("job.toml");
    std::fs::write(&config_path, toml::to_string(&config).unwrap()).unwrap();

    let run = |summary: &str| {
        Command::new(env!("CARGO_BIN_EXE_shopstream"))
            .args(["run", "--config"])
            .arg(&config_path)
            .arg("--summary-json")
            .arg(dir.path().join(summary))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut job = run("first.json");
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_consumed(addr, produced, &mut job, Duration::from_secs(60)).await;
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
    assert_eq!(status.code(), Some(0), "SIGTERM exits 0");
    let first: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("first.json")).unwrap()).unwrap();
    // Open windows and pending labels went into the checkpoint, not the store.
    let written_at_stop = first["examples_written"].as_u64().unwrap();
    assert!(written_at_stop < report.impressions, "{first}");
    assert!(first["checkpoints"].as_u64().unwrap() >= 1, "{first}");
    let rows = |store: &std::path::Path| -> usize {
        read_table(store, "examples")
            .iter()
            .map(|b| b.num_rows())
            .sum()
    };
    assert_eq!(rows(&dir.path().join("store")) as u64, written_at_stop);

    // Restart with nothing new: it resumes from the checkpoint, reads nothing, and at the
    // end of its (bounded) input writes what the checkpoint held.
    let mut again = Command::new(env!("CARGO_BIN_EXE_shopstream"))
        .args(["run", "--stop-at-end", "--config"])
        .arg(&config_path)
        .arg("--summary-json")
        .arg(dir.path().join("second.json"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let status = again.wait().unwrap();
    assert!(status.success());
    let second: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("second.json")).unwrap()).unwrap();
    assert_eq!(
        second["consumed"].as_object().map_or(0, |m| m.len()),
        0,
        "{second}"
    );
    assert_eq!(
        second["examples_written"].as_u64(),
        Some(report.impressions - written_at_stop)
    );
    assert_eq!(
        rows(&dir.path().join("store")) as u64,
        report.impressions,
        "every impression once: none lost, none re-emitted"
    );
    eprintln!(
        "sigterm: {produced} messages, exit 0 after {:.2} s with {written_at_stop} rows written and the rest checkpointed; restart consumed 0, store rows {}",
        signalled.elapsed().as_secs_f64(),
        report.impressions
    );
}
