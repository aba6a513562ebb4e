//! Erasure (`shopstream store forget`) on a store the demo wrote: the users' rows leave
//! every file for `shopstream query` and DuckDB, every other row is unchanged, a second
//! run changes nothing, and a run SIGKILLed at any of its steps then run again ends with
//! the store of a run never killed.

#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

mod support;

use support::stdout_of;

fn shopstream(args: &[&str], store: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_shopstream"));
    command
        .args(args)
        .arg("--store")
        .arg(store)
        .env("SHOPSTREAM_LOG", "warn");
    command
}

/// `sql` over the store through `shopstream query`, as CSV lines without the header.
fn query(store: &Path, sql: &str) -> Vec<String> {
    let out = shopstream(&["query", "--format", "csv", sql], store)
        .output()
        .unwrap();
    stdout_of(&out)
        .lines()
        .skip(1)
        .map(str::to_string)
        .collect()
}

/// Every file below `root` with its bytes.
fn tree(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(root, &mut files);
    files
        .into_iter()
        .map(|p| {
            (
                p.strip_prefix(root).unwrap().to_path_buf(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

fn copy_tree(from: &Path, to: &Path) {
    for (relative, bytes) in tree(from) {
        let path = to.join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

/// Every example row but those of `users`, in a stable order (all columns, as CSV).
fn other_rows(store: &Path, users: &[&str]) -> Vec<String> {
    let list = users
        .iter()
        .map(|u| format!("'{u}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut rows = query(
        store,
        &format!("SELECT * FROM examples WHERE user_id NOT IN ({list})"),
    );
    rows.sort();
    rows
}

#[test]
fn store_forget_removes_the_users_everywhere_keeps_every_other_row_and_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let original = dir.path().join("original");
    support::demo_store(&original, 60_000);
    // The two users with the most examples.
    let top = query(
        &original,
        "SELECT user_id, COUNT(*) AS n FROM examples GROUP BY user_id ORDER BY n DESC, user_id LIMIT 2",
    );
    let users: Vec<String> = top
        .iter()
        .map(|l| l.split(',').next().unwrap().to_string())
        .collect();
    let users: Vec<&str> = users.iter().map(String::as_str).collect();
    let their_rows: u64 = top
        .iter()
        .map(|l| l.rsplit(',').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert!(their_rows > 0, "{top:?}");
    let total: u64 = query(&original, "SELECT COUNT(*) FROM examples")[0]
        .parse()
        .unwrap();
    let others = other_rows(&original, &users);
    let forget: Vec<&str> = ["store", "forget", "--user", users[0], "--user", users[1]].into();

    // The reference erasure, never interrupted.
    let store = dir.path().join("forgotten");
    copy_tree(&original, &store);
    let dry = stdout_of(
        &shopstream(&[&forget[..], &["--dry-run"]].concat(), &store)
            .output()
            .unwrap(),
    );
    assert_eq!(tree(&store), tree(&original), "a dry run changes nothing");
    let out = stdout_of(&shopstream(&forget, &store).output().unwrap());
    println!("{out}");
    // The request is recorded first (for the job), then the files are rewritten.
    let (recorded, done) = out.split_once('\n').unwrap();
    assert!(
        recorded.starts_with("recorded _erasures/erasure-"),
        "{recorded}"
    );
    assert_eq!(done.replace("rewrote", "would rewrite"), dry);
    assert!(
        done.ends_with(&format!(
            "rewrote {} file(s), {their_rows} row(s) of 2 user(s) removed\n",
            done.lines().count() - 1
        )),
        "{done}"
    );
    assert!(done.lines().all(|l| !l.starts_with("metrics ")), "{done}");
    let list = format!("'{}', '{}'", users[0], users[1]);
    assert_eq!(
        query(
            &store,
            &format!("SELECT COUNT(*) FROM examples WHERE user_id IN ({list})")
        ),
        ["0"]
    );
    assert_eq!(
        query(&store, "SELECT COUNT(*) FROM examples"),
        [(total - their_rows).to_string()]
    );
    assert_eq!(
        other_rows(&store, &users),
        others,
        "every other row unchanged"
    );

    // DuckDB, which globs the directories rather than read the commit records, sees
    // neither the users nor an old file (check-store compares its row counts with the
    // records'; it installs pyarrow and DuckDB into a venv outside the clone once).
    let check = Command::new("scripts/check-store.sh")
        .arg(&store)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "check-store: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let venv = std::env::var("SHOPSTREAM_TOOLS").map_or_else(
        |_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/shopstream/tools"),
        PathBuf::from,
    );
    let duck = Command::new(venv.join("pyenv/bin/python"))
        .arg("-c")
        .arg(format!(
            "import duckdb; print(duckdb.connect().execute(\"SELECT COUNT(*) FILTER (WHERE user_id IN ({list})), \
             COUNT(*) FROM read_parquet('{}/examples/**/*.parquet', hive_partitioning = true)\").fetchone())",
            store.display()
        ))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&duck.stdout).trim(),
        format!("(0, {})", total - their_rows),
        "{}",
        String::from_utf8_lossy(&duck.stderr)
    );

    // Idempotent: nothing left to rewrite, nothing changes.
    let forgotten = tree(&store);
    let again = stdout_of(&shopstream(&forget, &store).output().unwrap());
    assert!(again.contains("rewrote 0 file(s), 0 row(s)"), "{again}");
    assert_eq!(tree(&store), forgotten);

    // Killed at each step of an erasure, then run again: the reference store.
    let rewrites = done.lines().count() - 1;
    let points: std::collections::BTreeSet<String> = [
        "store.forget_written:1".to_string(),
        format!("store.forget_written:{rewrites}"),
        "store.forget_committed:1".to_string(),
        format!("store.forget_committed:{rewrites}"),
    ]
    .into();
    assert!(
        rewrites >= 2,
        "two hours of traffic, two files at least: {done}"
    );
    for point in points {
        let killed = dir
            .path()
            .join(format!("killed-{}", point.replace([':', '.'], "-")));
        copy_tree(&original, &killed);
        let mut job = shopstream(&forget, &killed)
            .env("SHOPSTREAM_FAILPOINT", &point)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = job.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let mut said = Vec::new();
        let reached = loop {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(line) if line.contains("failpoint") => break true,
                Ok(line) => said.push(line),
                Err(_) => break false,
            }
        };
        assert!(reached, "{point} was not reached: {said:?}");
        job.kill().unwrap(); // SIGKILL
        job.wait().unwrap();
        // Killed: readers see each row at most once, and no new row.
        let seen: u64 = query(&killed, "SELECT COUNT(*) FROM examples")[0]
            .parse()
            .unwrap();
        assert!(
            (total - their_rows..=total).contains(&seen),
            "{point}: {seen} rows visible"
        );
        assert_ne!(tree(&killed), forgotten, "{point}: killed before the end");
        stdout_of(&shopstream(&forget, &killed).output().unwrap());
        assert!(
            tree(&killed) == forgotten,
            "{point}: the rerun ends with the store of a run never killed"
        );
    }
}

/// A live run of `config` stopped (like SIGTERM: it checkpoints and keeps its state)
/// once it has consumed `messages` in all.
async fn run_until_consumed(config: &shopstream_config::Config, messages: u64) {
    use shopstream_job::pipeline::{Progress, RunOptions, run_observed};
    let (progress, mut watch) = tokio::sync::watch::channel(Progress::default());
    let shutdown = async move {
        let _ = watch.wait_for(|p: &Progress| p.consumed >= messages).await;
    };
    tokio::time::timeout(
        Duration::from_secs(300),
        run_observed(config, RunOptions::default(), shutdown, progress),
    )
    .await
    .expect("the run stops within 300 s")
    .expect("the run");
}

/// `ms` as a timestamp literal polars SQL compares with the UTC `ts` column.
fn utc(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .format("%Y-%m-%d %H:%M:%S%.3f")
        .to_string()
}

/// The first part-two example of `user` in `store`: its 7-day user impression count.
fn first_history_after(store: &Path, user: &str, after_ms: i64) -> Option<i64> {
    let rows = query(
        store,
        &format!(
            "SELECT user_impressions_7d FROM examples WHERE user_id = '{user}' \
             AND ts >= '{}' ORDER BY ts, event_id LIMIT 1",
            utc(after_ms)
        ),
    );
    rows.first().map(|v| v.parse().unwrap())
}

/// A job restarted on a store after `store forget` drops the users' keyed state before
/// any event: their next examples count no history from before the erasure, while a
/// copy of the store never erased counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_restarted_after_store_forget_serves_the_users_as_new() {
    use shopstream_ingest::generator::{DEFAULT_START_MS, GeneratorOptions};
    use shopstream_job::generate::publish_traffic;

    let broker = support::Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let erased_store = dir.path().join("erased");
    let config = broker.config("erasure", &erased_store);
    let one = publish_traffic(&config, support::two_hour_traffic(31), None, None)
        .await
        .unwrap();
    let part_one = one.valid_total + one.malformed_total;
    // Stopped, not ended: a bounded run's end deletes its checkpoints, and the state goes
    // with them.
    run_until_consumed(&config, part_one).await;
    // The never-erased copy resumes from the same checkpoint in a group of its own.
    let control_store = dir.path().join("control");
    copy_tree(&erased_store, &control_store);
    let mut control = config.clone();
    control.store.path = control_store.clone();
    control.kafka.group_id = format!("{}-control", config.kafka.group_id);

    // Part two, an hour after part one, from the same world of users.
    let part_two = DEFAULT_START_MS + 3 * 3_600_000;
    let traffic = GeneratorOptions {
        start_ms: part_two,
        ..support::two_hour_traffic(32)
    };
    let two = publish_traffic(&config, traffic, None, None).await.unwrap();
    // (Consumed counts from where the checkpoint stands.)
    let part_two_messages = two.valid_total + two.malformed_total;
    run_until_consumed(&control, part_two_messages).await;
    // A user part one made known: the first part-two example that counts history.
    let rows = query(
        &control_store,
        &format!(
            "SELECT user_id, user_impressions_7d FROM examples WHERE ts >= '{}' ORDER BY ts, event_id",
            utc(part_two)
        ),
    );
    let mut seen = std::collections::BTreeSet::new();
    let (user, kept) = rows
        .iter()
        .filter_map(|row| {
            let (user, history) = row.split_once(',')?;
            seen.insert(user)
                .then(|| (user.to_string(), history.parse::<i64>().unwrap()))
        })
        .find(|(_, history)| *history > 0)
        .expect("a user of part one returns in part two");
    assert_eq!(
        first_history_after(&control_store, &user, part_two),
        Some(kept)
    );
    let before: u64 = query(
        &erased_store,
        &format!("SELECT COUNT(*) FROM examples WHERE user_id = '{user}'"),
    )[0]
    .parse()
    .unwrap();
    assert!(before > 0, "{user} has part-one examples");

    let out = stdout_of(
        &shopstream(&["store", "forget", "--user", &user], &erased_store)
            .output()
            .unwrap(),
    );
    assert!(out.contains("recorded _erasures/erasure-"), "{out}");
    run_until_consumed(&config, part_two_messages).await;

    assert_eq!(
        first_history_after(&erased_store, &user, part_two),
        Some(0),
        "the erased user starts with no history"
    );
    assert_eq!(
        query(
            &erased_store,
            &format!(
                "SELECT COUNT(*) FROM examples WHERE user_id = '{user}' AND ts < '{}'",
                utc(part_two)
            )
        ),
        ["0"],
        "and nothing of part one came back"
    );
}
