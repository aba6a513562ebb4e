//! Retention (`shopstream store expire`) on a store the demo wrote: whole hour partitions
//! leave every table through the manifest, a dry run changes nothing, and a second run
//! finds nothing left.

#![allow(clippy::unwrap_used, missing_docs)]

use std::path::Path;
use std::process::{Command, Output};

mod support;

use support::stdout_of;

fn shopstream(args: &[&str], store: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shopstream"))
        .args(args)
        .arg("--store")
        .arg(store)
        .env("SHOPSTREAM_LOG", "warn")
        .output()
        .unwrap()
}

fn examples_count(store: &Path) -> u64 {
    let out = shopstream(
        &[
            "query",
            "--format",
            "csv",
            "SELECT COUNT(*) AS n FROM examples",
        ],
        store,
    );
    stdout_of(&out).lines().nth(1).unwrap().parse().unwrap()
}

fn parquet_files_under(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .map(|e| e.unwrap().path())
            .map(|p| {
                if p.is_dir() {
                    parquet_files_under(&p)
                } else {
                    usize::from(p.extension().is_some_and(|e| e == "parquet"))
                }
            })
            .sum()
    })
}

/// Rows the expiry lines of `table` report.
fn expired_rows(text: &str, table: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{table} date=")))
        .map(|l| {
            let rows = l.rsplit(", ").next().unwrap();
            rows.trim_end_matches(" row(s)").parse::<u64>().unwrap()
        })
        .sum()
}

#[test]
fn store_expire_removes_whole_hours_through_the_manifest_and_a_dry_run_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    // About 70 minutes of event time from 2026-01-05T00:00Z: hours 00 and 01.
    support::demo_store(&store, 60_000);
    let hour0 = "date=2026-01-05/hour=00";
    let hour1 = "date=2026-01-05/hour=01";
    assert!(
        store.join("examples").join(hour1).is_dir(),
        "the run reaches hour 01"
    );
    let before = examples_count(&store);
    let files_before = parquet_files_under(&store);
    // One day before 2026-01-06T01:00Z: hour 00 has ended, hour 01 has not.
    let expire = [
        "store",
        "expire",
        "--days",
        "1",
        "--as-of",
        "2026-01-06T01:00:00Z",
    ];

    let dry = stdout_of(&shopstream(&[&expire[..], &["--dry-run"]].concat(), &store));
    assert!(
        dry.contains(&format!("examples {hour0}: would expire")),
        "{dry}"
    );
    assert!(!dry.contains(hour1), "{dry}");
    assert_eq!(examples_count(&store), before, "a dry run changes nothing");
    assert_eq!(parquet_files_under(&store), files_before);

    let done = stdout_of(&shopstream(&expire, &store));
    assert_eq!(
        done.replace("expired", "would expire"),
        dry,
        "the dry run listed it all"
    );
    let gone = expired_rows(&done, "examples");
    assert!(gone > 0 && gone < before, "{done}");
    assert_eq!(examples_count(&store), before - gone);
    for table in ["examples", "metrics", "drift"] {
        assert_eq!(
            parquet_files_under(&store.join(table).join(hour0)),
            0,
            "{table}: the expired hour's files are deleted"
        );
    }
    assert!(parquet_files_under(&store.join("examples").join(hour1)) > 0);

    let again = stdout_of(&shopstream(&expire, &store));
    assert!(again.contains("expired 0 hour partition(s)"), "{again}");
    assert_eq!(examples_count(&store), before - gone);
}

#[test]
fn store_expire_without_a_retention_says_what_to_give() {
    let dir = tempfile::tempdir().unwrap();
    let out = shopstream(&["store", "expire"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--days N or set store.retention_days"),
        "{stderr}"
    );
}
