//! A bounded group run on the real binary (`pipeline.instances = "group"`): three
//! `shopstream run --stop-at-end` processes of one group; one is SIGKILLed mid-run and not
//! restarted, then another is SIGTERMed (it leaves the run and exits 0). The group gives
//! their partitions to the instance left, which replays them; the store and the model are
//! those of one instance.

#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use shopstream_config::{Config, Instances};
use shopstream_ingest::generator::GeneratorOptions;
use shopstream_ingest::generator::world::WorldSize;
use shopstream_job::generate::publish_traffic;
use support::{Broker, run_to_end};

fn traffic() -> GeneratorOptions {
    GeneratorOptions {
        seed: 21,
        max_events: Some(100_000),
        sessions_per_sec: 0.6,
        size: WorldSize {
            users: 600,
            items: 500,
            categories: 12,
        },
        malformed_fraction: 0.01,
        ..GeneratorOptions::default()
    }
}

/// Instances killed when dropped (also when an assertion fails).
struct Instances3(Vec<Child>);

impl Drop for Instances3 {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts an instance with `config_path`; its log lines go to `lines` tagged `index`.
fn spawn(index: usize, config_path: &Path, lines: mpsc::Sender<(usize, String)>) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shopstream"))
        .args(["run", "--stop-at-end", "--config"])
        .arg(config_path)
        .env("SHOPSTREAM_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if lines.send((index, line)).is_err() {
                break;
            }
        }
    });
    child
}

/// Waits for a line of instance `index` containing `needle`.
fn wait_for(lines: &mpsc::Receiver<(usize, String)>, index: usize, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok((i, line)) if i == index && line.contains(needle) => return,
            Ok(_) => {}
            Err(_) => panic!("instance {index} logged {needle:?} within 120 s"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_run_with_one_instance_sigkilled_and_one_sigtermed_writes_the_store_and_model_of_one()
 {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let base = broker.config("group-kill", &dir.path().join("unused"));
    publish_traffic(&base, traffic(), None, None).await.unwrap();

    let mut one: Config = base.clone();
    one.kafka.group_id = format!("{}-one", base.kafka.group_id);
    one.pipeline.workers = 1;
    one.store.path = dir.path().join("one");
    one.model.path = Some(dir.path().join("one.ssm"));
    run_to_end(&one).await;

    let mut group = base.clone();
    group.kafka.group_id = format!("{}-group", base.kafka.group_id);
    group.pipeline.workers = 2;
    group.pipeline.instances = Instances::Group;
    group.store.path = dir.path().join("group");
    group.model.path = Some(dir.path().join("group.ssm"));
    let config_path = dir.path().join("group.toml");
    std::fs::write(&config_path, toml::to_string(&group).unwrap()).unwrap();

    let (tx, lines) = mpsc::channel();
    let mut instances = Instances3(vec![spawn(0, &config_path, tx.clone())]);
    wait_for(&lines, 0, "holds the trainer lease");
    instances.0.push(spawn(1, &config_path, tx.clone()));
    instances.0.push(spawn(2, &config_path, tx));
    wait_for(&lines, 1, "partitions assigned");
    // SIGKILL: no goodbye; the group notices after the session timeout.
    instances.0[1].kill().unwrap();
    instances.0[1].wait().unwrap();
    let killed = Instant::now();
    // Its partitions go to a survivor once the session times out: only lines from now on.
    while lines.try_recv().is_ok() {}
    let mut taken_over = false;
    // SIGTERM: this one leaves the run (not the coordinator: the first instance is).
    support::sigterm(&instances.0[2]);
    let status = instances.0[2].wait().unwrap();
    let mut said = Vec::new();
    for (i, line) in lines.try_iter() {
        taken_over |= i == 0 && line.contains("partitions assigned");
        if i == 2 {
            said.push(line);
        }
    }
    assert!(
        status.success(),
        "a SIGTERMed instance leaves with 0: {status}; its last lines: {:?}",
        &said[said.len().saturating_sub(5)..]
    );
    // The first instance finishes alone (its log lines drained so its pipe never fills).
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        while let Ok((i, line)) = lines.try_recv() {
            taken_over |= i == 0 && line.contains("partitions assigned");
        }
        if let Some(status) = instances.0[0].try_wait().unwrap() {
            assert!(status.success(), "the first instance failed: {status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the first instance ends within 600 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "the first instance ended {:?} after the SIGKILL",
        killed.elapsed()
    );
    assert!(
        taken_over,
        "a survivor was assigned partitions after the SIGKILL"
    );
    support::assert_same_store(
        "1 instance vs a group with instances SIGKILLed and SIGTERMed",
        &one.store.path,
        &group.store.path,
    );
    assert!(
        std::fs::read(one.model.path.as_ref().unwrap()).unwrap()
            == std::fs::read(group.model.path.as_ref().unwrap()).unwrap(),
        "model files differ"
    );
}
