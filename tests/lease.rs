//! The lease through Kafka's group protocol (`shopstream_kafka::lease`) against a real
//! broker: one member of the group holds it, and it moves to another member when the
//! holder leaves or is SIGKILLed (after the session timeout). This is the election the
//! trainer role of several instances builds on (docs/scale-out.md).

#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use shopstream_config::KafkaConfig;
use shopstream_kafka::lease::{Lease, LeaseOptions};
use support::Broker;

/// Short, so that a killed holder's lease moves within seconds.
const SESSION_MS: u64 = 6_000;

fn options(kafka: &KafkaConfig) -> LeaseOptions {
    LeaseOptions {
        topic: format!("{}.lease", kafka.group_id),
        group: format!("{}.trainer", kafka.group_id),
        session_timeout_ms: SESSION_MS,
    }
}

/// Waits until `ready` holds for the members' lease states, checked every 100 ms.
async fn wait_until(what: &str, within: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ready() {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_member_holds_the_lease_and_it_moves_when_the_holder_leaves() {
    let broker = Broker::start();
    let store = tempfile::tempdir().unwrap();
    let kafka = broker.config("lease-leave", store.path()).kafka;
    let options = options(&kafka);

    let first = Lease::join(&kafka, &options).await.unwrap();
    wait_until(
        "the only member holds the lease",
        Duration::from_secs(60),
        || first.is_held(),
    )
    .await;
    let second = Lease::join(&kafka, &options).await.unwrap();
    // The group rebalances for the new member; then exactly one holds it, and keeps it.
    let mut stable_since = Instant::now();
    let mut last = (first.is_held(), second.is_held());
    wait_until(
        "exactly one of two members holds the lease for 3 s",
        Duration::from_secs(90),
        || {
            let now = (first.is_held(), second.is_held());
            if now != last {
                stable_since = Instant::now();
            }
            last = now;
            (now.0 ^ now.1) && stable_since.elapsed() >= Duration::from_secs(3)
        },
    )
    .await;
    let (holder, other) = if first.is_held() {
        (first, second)
    } else {
        (second, first)
    };
    holder.leave().await;
    wait_until(
        "the other member takes the lease once the holder left",
        Duration::from_secs(60),
        || other.is_held(),
    )
    .await;
    other.leave().await;
}

/// Guards the trainer's stability: a role that moved on every join would fail the
/// coordinator over each time an instance is added (docs/scale-out.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_holder_keeps_the_lease_when_members_join() {
    let broker = Broker::start();
    let store = tempfile::tempdir().unwrap();
    let kafka = broker.config("lease-sticky", store.path()).kafka;
    let options = options(&kafka);
    let first = Lease::join(&kafka, &options).await.unwrap();
    wait_until(
        "the only member holds the lease",
        Duration::from_secs(60),
        || first.is_held(),
    )
    .await;
    let taken = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut joined = Vec::new();
    for n in 1..=3 {
        let lease = Lease::join(&kafka, &options).await.unwrap();
        // Whether the new member ever holds the lease, at any instant.
        let mut held = lease.held();
        let taken_by_it = std::sync::Arc::clone(&taken);
        tokio::spawn(async move {
            if held.wait_for(|h| *h).await.is_ok() {
                taken_by_it.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        });
        joined.push(lease);
        // Long enough for the group to rebalance for the new member.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(
            first.is_held(),
            "the first member still holds the lease after {n} joined"
        );
        assert!(
            !taken.load(std::sync::atomic::Ordering::SeqCst),
            "no member that joined took the lease ({n} joined)"
        );
    }
    for lease in joined {
        lease.leave().await;
    }
    first.leave().await;
}

/// One member of the lease group in a process of its own (started by the test below with
/// `SHOPSTREAM_LEASE_CHILD="brokers group_id"`): prints `JOINED`, then `HELD` or `LOST` on
/// every change, until it is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a child process of the_lease_moves_when_its_holder_is_sigkilled"]
async fn lease_member_child() {
    let Ok(spec) = std::env::var("SHOPSTREAM_LEASE_CHILD") else {
        return;
    };
    let (brokers, group) = spec.split_once(' ').unwrap();
    let kafka = KafkaConfig {
        brokers: brokers.to_string(),
        group_id: group.to_string(),
        ..KafkaConfig::default()
    };
    let lease = Lease::join(&kafka, &options(&kafka)).await.unwrap();
    let mut held = lease.held();
    println!("JOINED");
    loop {
        println!(
            "{}",
            if *held.borrow_and_update() {
                "HELD"
            } else {
                "LOST"
            }
        );
        if held.changed().await.is_err() {
            return;
        }
    }
}

/// Child members, killed when dropped (also when an assertion fails).
struct Members(Vec<Child>);

impl Drop for Members {
    fn drop(&mut self) {
        for member in &mut self.0 {
            let _ = member.kill();
            let _ = member.wait();
        }
    }
}

/// A child member and the thread forwarding its lines.
fn spawn_member(index: usize, spec: &str, lines: mpsc::Sender<(usize, String)>) -> Child {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["lease_member_child", "--exact", "--ignored", "--nocapture"])
        .env("SHOPSTREAM_LEASE_CHILD", spec)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if matches!(line.as_str(), "JOINED" | "HELD" | "LOST")
                && lines.send((index, line)).is_err()
            {
                break;
            }
        }
    });
    child
}

#[test]
fn the_lease_moves_when_its_holder_is_sigkilled() {
    let broker = Broker::start();
    let store = tempfile::tempdir().unwrap();
    let kafka = broker.config("lease-kill", store.path()).kafka;
    let spec = format!("{} {}", kafka.brokers, kafka.group_id);
    let (tx, rx) = mpsc::channel();
    // The last state each member printed.
    let mut state = [String::new(), String::new()];
    let next = |within: Duration, state: &mut [String; 2]| -> bool {
        match rx.recv_timeout(within) {
            Ok((i, line)) => {
                state[i] = line;
                true
            }
            Err(_) => false,
        }
    };
    let mut members = Members(vec![spawn_member(0, &spec, tx.clone())]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while state[0] != "HELD" {
        assert!(
            Instant::now() < deadline,
            "the first member holds the lease within 60 s"
        );
        next(Duration::from_secs(1), &mut state);
    }
    members.0.push(spawn_member(1, &spec, tx));
    // Settled: both printed a state, exactly one holds, and nothing changed for 5 s.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if !next(Duration::from_secs(5), &mut state)
            && !state[1].is_empty()
            && (state[0] == "HELD") != (state[1] == "HELD")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "two members settle with one holder within 90 s (last states {state:?})"
        );
    }
    let holder = usize::from(state[1] == "HELD");
    let other = 1 - holder;
    // SIGKILL: no LeaveGroup, only missed heartbeats tell the broker.
    members.0[holder].kill().unwrap();
    members.0[holder].wait().unwrap();
    let killed_at = Instant::now();
    let deadline = killed_at + Duration::from_secs(60);
    while state[other] != "HELD" {
        assert!(
            Instant::now() < deadline,
            "the surviving member holds the lease within 60 s of the kill (session timeout {SESSION_MS} ms)"
        );
        next(Duration::from_secs(1), &mut state);
    }
    eprintln!(
        "lease moved {} ms after the holder was SIGKILLed (session timeout {SESSION_MS} ms)",
        killed_at.elapsed().as_millis()
    );
}
