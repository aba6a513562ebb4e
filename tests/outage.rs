//! Broker outage: the connection between the live job and the broker is cut for 30 s in
//! the middle of a run (see support::proxy for how the outage is modelled). The job must
//! log it, keep running, reconnect on its own, and lose nothing: every impression ends up
//! in the store once and gets a prediction on the topic.

#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shopstream_ingest::generator::Generator;
use shopstream_job::generate::publish_messages;
use support::{Broker, http_get, read_table, read_topic, wait_consumed};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thirty_second_broker_outage_loses_nothing() {
    let (broker, proxy) = Broker::start_behind_proxy();
    let dir = tempfile::tempdir().unwrap();
    let mut config = broker.config("outage", &dir.path().join("store"));
    let addr = support::serve_on_free_port(&mut config);
    // Predictions wait out the outage in the producer's queue instead of failing.
    config.kafka.produce_timeout_ms = 120_000;
    config.pipeline.idle_partition_timeout_secs = 120;
    let config_path = dir.path().join("job.toml");
    std::fs::write(&config_path, toml::to_string(&config).unwrap()).unwrap();

    let mut generator = Generator::new(support::small_shop_at_default_rate(12, 3_000));
    let messages: Vec<_> = generator.by_ref().collect();
    let report = generator.report().clone();
    let (first, second) = messages.split_at(messages.len() / 2);
    let first_count = publish_messages(&config, first.to_vec(), None)
        .await
        .unwrap();

    let log = dir.path().join("job.log");
    let mut job = Command::new(env!("CARGO_BIN_EXE_shopstream"))
        .args(["run", "--config"])
        .arg(&config_path)
        .arg("--summary-json")
        .arg(dir.path().join("summary.json"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_consumed(addr, first_count, &mut job, Duration::from_secs(90)).await;

    proxy.cut();
    let cut_at = Instant::now();
    while cut_at.elapsed() < Duration::from_secs(30) {
        assert!(
            job.try_wait().unwrap().is_none(),
            "the job exited during the outage"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Still serving its endpoints while the broker is away.
    assert!(http_get(addr, "/healthz").0.contains("200"));
    proxy.restore();
    let second_count = publish_messages(&config, second.to_vec(), None)
        .await
        .unwrap();
    assert_eq!(first_count + second_count, report.valid_total);
    wait_consumed(addr, report.valid_total, &mut job, Duration::from_secs(90)).await;

    support::sigterm(&job);
    let status = job.wait().unwrap();
    let logged = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(0), "{logged}");
    assert!(
        logged.contains("unreachable") || logged.contains("reconnecting"),
        "the outage was not logged: {logged}"
    );

    // Shutdown checkpointed what was still open; a bounded run resumes and writes it.
    let end = Command::new(env!("CARGO_BIN_EXE_shopstream"))
        .args(["run", "--stop-at-end", "--config"])
        .arg(&config_path)
        .output()
        .unwrap();
    assert!(
        end.status.success(),
        "{}",
        String::from_utf8_lossy(&end.stderr)
    );
    let rows: u64 = read_table(&dir.path().join("store"), "examples")
        .iter()
        .map(|b| b.num_rows() as u64)
        .sum();
    assert_eq!(rows, report.impressions, "store rows");
    let predictions: HashSet<Vec<u8>> = read_topic(&broker.bootstrap, &config.topics.predictions)
        .into_iter()
        .map(|r| r.key)
        .collect();
    assert_eq!(
        predictions.len() as u64,
        report.impressions,
        "distinct predictions"
    );
    println!(
        "outage: 30 s cut, {} connections refused meanwhile; {} impressions -> {rows} rows, {} distinct predictions; log lines about it: {}",
        proxy.refused.load(std::sync::atomic::Ordering::SeqCst),
        report.impressions,
        predictions.len(),
        logged
            .lines()
            .filter(|l| l.contains("shopstream_job::kafka"))
            .count()
    );
    if let Some(line) = logged.lines().find(|l| l.contains("unreachable")) {
        println!("outage log line: {line}");
    }
}
