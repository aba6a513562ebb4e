//! Bounded group runs on the real binary (`pipeline.instances = "group"`): three
//! `shopstream run --stop-at-end` processes of one group, some of them SIGKILLed or
//! SIGTERMed mid-run and not restarted. The group gives their partitions to the instances
//! left, which replay them, and when the lease holder goes the next one takes the run over
//! from the closes log; the store and the model are those of one instance.

#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::collections::BTreeSet;
use std::io::BufRead;
use std::path::{Path, PathBuf};
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
        seed: support::traffic_seed(21),
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
fn wait_for(
    lines: &mpsc::Receiver<(usize, String)>,
    index: usize,
    needle: &str,
) -> Vec<(usize, String)> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut read = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok((i, line)) => {
                let found = i == index && line.contains(needle);
                read.push((i, line));
                if found {
                    return read;
                }
            }
            Err(_) => panic!("instance {index} logged {needle:?} within 120 s"),
        }
    }
}

/// The single-instance reference run and a group's config file: (broker, directory,
/// reference config, group config, group config file).
async fn setup(name: &str, seed: u64) -> (Broker, tempfile::TempDir, Config, Config, PathBuf) {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let base = broker.config(name, &dir.path().join("unused"));
    let traffic = GeneratorOptions { seed, ..traffic() };
    publish_traffic(&base, traffic, None, None).await.unwrap();

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
    (broker, dir, one, group, config_path)
}

/// Nothing is left of the group's `kind` checkpoints (`shards`, `coordinator`) under
/// the checkpoint directory: the lease holder that finished the run deleted them.
fn assert_no_checkpoints_left(group: &Config, kind: &str) {
    let dir = group.store.path.join("_checkpoints").join(kind);
    let left: Vec<_> = std::fs::read_dir(&dir)
        .map(|groups| groups.flatten().map(|g| g.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{kind} checkpoints left behind: {left:?}");
}

/// The group's store and model are byte-identical to the single instance's.
fn assert_same_outputs(what: &str, one: &Config, group: &Config) {
    support::assert_same_store(what, &one.store.path, &group.store.path);
    assert!(
        std::fs::read(one.model.path.as_ref().unwrap()).unwrap()
            == std::fs::read(group.model.path.as_ref().unwrap()).unwrap(),
        "{what}: model files differ"
    );
}

/// Waits until every instance in `indices` has exited with success, handing each log
/// line to `seen` meanwhile (which also keeps the pipes from filling).
fn wait_all_succeed(
    instances: &mut Instances3,
    indices: &[usize],
    lines: &mpsc::Receiver<(usize, String)>,
    mut seen: impl FnMut(usize, &str),
) {
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut left: Vec<usize> = indices.to_vec();
    // Each instance's last lines, for the failure messages.
    let mut tails: Vec<std::collections::VecDeque<String>> = vec![Default::default(); 3];
    while !left.is_empty() {
        while let Ok((i, line)) = lines.try_recv() {
            seen(i, &line);
            if let Some(tail) = tails.get_mut(i) {
                if tail.len() == 20 {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
        }
        let mut still = Vec::new();
        for i in left {
            match instances.0[i].try_wait().unwrap() {
                Some(status) => assert!(
                    status.success(),
                    "instance {i} failed: {status}; its last lines: {:#?}",
                    tails[i]
                ),
                None => still.push(i),
            }
        }
        left = still;
        assert!(
            Instant::now() < deadline,
            "instances {left:?} end within 600 s; their last lines: {:#?}",
            left.iter().map(|i| &tails[*i]).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A line an instance logged, tagged with the instance.
type Line = (usize, String);

/// Starts instance 0 and, once it holds the trainer lease, instances 1 and 2; returns
/// when instance 1 holds partitions, with the lines read since the three ran (the lines
/// of every instance come tagged).
fn start_three(config_path: &Path) -> (Instances3, mpsc::Receiver<Line>, Vec<Line>) {
    let (tx, lines) = mpsc::channel();
    let mut instances = Instances3(vec![spawn(0, config_path, tx.clone())]);
    wait_for(&lines, 0, "holds the trainer lease");
    instances.0.push(spawn(1, config_path, tx.clone()));
    instances.0.push(spawn(2, config_path, tx));
    let read = wait_for(&lines, 1, "partitions assigned");
    (instances, lines, read)
}

/// Keeps `holds`, the partition numbers instance `index` holds, up to date with `line`
/// of instance `i`.
fn follow(holds: &mut BTreeSet<i32>, index: usize, i: usize, line: &str) {
    if i == index && line.contains("partitions assigned") {
        holds.extend(partitions_named(line));
    } else if i == index && line.contains("partitions revoked") {
        for p in partitions_named(line) {
            holds.remove(&p);
        }
    }
}

/// The partition numbers a line names: `partitions=[(Clicks, 2), (Orders, 2)]` (assigned,
/// revoked) or `partition=2` (resumed).
fn partitions_named(line: &str) -> BTreeSet<i32> {
    if let Some(list) = line.split("partitions=").nth(1) {
        return list
            .split(')')
            .filter_map(|item| item.rsplit(", ").next()?.trim().parse().ok())
            .collect();
    }
    line.split(" partition=")
        .nth(1)
        .and_then(|rest| rest.split(' ').next()?.parse().ok())
        .into_iter()
        .collect()
}

/// Commit records of the examples table so far: windows the lease holder has written.
fn windows_written(store: &Path) -> usize {
    std::fs::read_dir(shopstream_sinks::manifest::commit_dir(store, "examples"))
        .map(|entries| entries.filter(|e| e.is_ok()).count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_run_with_one_instance_sigkilled_and_one_sigtermed_writes_the_store_and_model_of_one()
 {
    let (_broker, _dir, one, group, config_path) = setup("group-kill", 21).await;
    let (mut instances, lines, read) = start_three(&config_path);
    // SIGKILL: no goodbye; the group notices after the session timeout.
    instances.0[1].kill().unwrap();
    instances.0[1].wait().unwrap();
    let killed = Instant::now();
    // The partition numbers the third instance holds, from its lines so far.
    let mut third_holds = BTreeSet::new();
    // Its partitions go to a survivor once the session times out: only lines from now on.
    for (i, line) in read {
        follow(&mut third_holds, 2, i, &line);
    }
    while let Ok((i, line)) = lines.try_recv() {
        follow(&mut third_holds, 2, i, &line);
    }
    if third_holds.is_empty() {
        // The SIGTERMed instance is to leave partitions behind: wait until it holds some
        // (the SIGKILL rebalances nothing before the session timeout).
        for (i, line) in wait_for(&lines, 2, "partitions assigned") {
            follow(&mut third_holds, 2, i, &line);
        }
    }
    let mut taken_over = false;
    // A SIGTERMed instance checkpoints its partitions as it leaves: the first goes on
    // from those checkpoints instead of replaying them.
    let mut resumed = BTreeSet::new();
    // SIGTERM: this one leaves the run (not the coordinator: the first instance is).
    support::sigterm(&instances.0[2]);
    let status = instances.0[2].wait().unwrap();
    let mut said = Vec::new();
    for (i, line) in lines.try_iter() {
        taken_over |= i == 0 && line.contains("partitions assigned");
        if i == 0 && line.contains("resuming a partition from its checkpoint") {
            resumed.extend(partitions_named(&line));
        }
        if i == 2 {
            follow(&mut third_holds, 2, i, &line);
            said.push(line);
        }
    }
    assert!(
        status.success(),
        "a SIGTERMed instance leaves with 0: {status}; its last lines: {:?}",
        &said[said.len().saturating_sub(5)..]
    );
    // The first instance finishes alone.
    // Partitions whose stage needed closes the survivor no longer kept (the SIGKILLed
    // instance's last checkpoints, or none, are older than the survivor's own).
    let mut rereads = 0;
    wait_all_succeed(&mut instances, &[0], &lines, |i, line| {
        taken_over |= i == 0 && line.contains("partitions assigned");
        if i == 0 && line.contains("resuming a partition from its checkpoint") {
            resumed.extend(partitions_named(line));
        }
        rereads += usize::from(i == 0 && line.contains("reading the closes log again"));
    });
    eprintln!(
        "the first instance ended {:?} after the SIGKILL; it read the closes log again for \
         {rereads} partitions",
        killed.elapsed()
    );
    assert!(
        taken_over,
        "a survivor was assigned partitions after the SIGKILL"
    );
    assert!(
        !third_holds.is_empty() && third_holds.iter().any(|p| resumed.contains(p)),
        "the survivor resumed a partition the SIGTERMed instance held ({third_holds:?}) from \
         a checkpoint; it resumed {resumed:?}"
    );
    // The lease holder that finished the run deleted the group's checkpoints.
    assert_no_checkpoints_left(&group, "shards");
    assert_no_checkpoints_left(&group, "coordinator");
    assert_same_outputs(
        "1 instance vs a group with instances SIGKILLed and SIGTERMed",
        &one,
        &group,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_run_whose_lease_holders_are_sigtermed_then_sigkilled_is_taken_over_and_writes_the_store_and_model_of_one()
 {
    let (_broker, _dir, one, group, config_path) = setup("trainer-failover", 23).await;
    let (mut instances, lines, _) = start_three(&config_path);
    // Mid-run: the lease holder has merged and written some windows, not all.
    let deadline = Instant::now() + Duration::from_secs(300);
    while windows_written(&group.store.path) < 3 {
        assert!(Instant::now() < deadline, "3 windows written within 300 s");
        while lines.try_recv().is_ok() {}
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        instances.0[0].try_wait().unwrap().is_none(),
        "the lease holder is still running when it is stopped"
    );
    eprintln!(
        "SIGTERM to the lease holder after {} windows written",
        windows_written(&group.store.path)
    );
    // SIGTERM: it leaves with 0, and the lease moves at once.
    support::sigterm(&instances.0[0]);
    let stopped = Instant::now();
    assert!(
        instances.0[0].wait().unwrap().success(),
        "a SIGTERMed lease holder exits 0"
    );
    // The next holder adopts the closes; once it is under way it is SIGKILLed in turn.
    let deadline = Instant::now() + Duration::from_secs(120);
    let (second, after) = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok((i, line)) if line.contains("taking over a group run under way") => {
                // The SIGTERMed holder left a checkpoint on its way out.
                assert!(
                    line.contains("from the coordinator's checkpoint"),
                    "the second lease holder goes on from the first one's checkpoint: {line}"
                );
                break (i, stopped.elapsed());
            }
            Ok(_) => {}
            Err(_) => panic!("no instance took the run over within 120 s of the SIGTERM"),
        }
    };
    eprintln!("instance {second} took the run over {after:?} after the SIGTERM");
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        instances.0[second].try_wait().unwrap().is_none(),
        "the second lease holder is still running when it is killed"
    );
    instances.0[second].kill().unwrap();
    instances.0[second].wait().unwrap();
    let killed = Instant::now();
    let last = 3 - second;
    let mut took_over = None;
    wait_all_succeed(&mut instances, &[last], &lines, |i, line| {
        if i == last && line.contains("taking over a group run under way") {
            took_over.get_or_insert((killed.elapsed(), line.to_string()));
        }
        if line.contains("joining the trainer lease group again") {
            eprintln!(
                "instance {i}, {:?} after the SIGKILL: {line}",
                killed.elapsed()
            );
        }
    });
    let (after, line) = took_over.expect("the last instance took the run over after the SIGKILL");
    // A SIGKILLed holder writes no checkpoint on its way out; the newest left is the
    // first holder's (or one the second wrote), and it still belongs to the closes log.
    assert!(
        line.contains("from the coordinator's checkpoint"),
        "the last lease holder goes on from a coordinator checkpoint: {line}"
    );
    eprintln!(
        "instance {last} took the run over {after:?} after the SIGKILL; the run ended {:?} after it",
        killed.elapsed()
    );
    assert_same_outputs(
        "1 instance vs a group whose lease holders were SIGTERMed, then SIGKILLed",
        &one,
        &group,
    );
    // The SIGKILLed holder's broadcast files went with the end of the run.
    let models = group.store.path.join("_checkpoints").join("models");
    let left: Vec<_> = std::fs::read_dir(&models)
        .map(|groups| {
            groups
                .flatten()
                .flat_map(|g| std::fs::read_dir(g.path()).into_iter().flatten().flatten())
                .map(|f| f.path())
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "broadcast files left behind: {left:?}");
    assert_no_checkpoints_left(&group, "shards");
    assert_no_checkpoints_left(&group, "coordinator");
}
