//! `shopstream demo` as a new user runs it: on the embedded mock cluster, nothing to
//! install, and again on the same store.

#![allow(clippy::unwrap_used, missing_docs)]

use std::path::Path;
use std::process::{Command, Output};

fn demo(store: &Path, summary: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shopstream"))
        .args(["demo", "--events", "3000", "--store"])
        .arg(store)
        .arg("--summary-json")
        .arg(summary)
        .output()
        .unwrap()
}

fn store_rows(summary: &Path) -> u64 {
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(summary).unwrap()).unwrap();
    report["store_rows"].as_u64().unwrap()
}

/// Guards issue 13 (1): the second `make demo` refused the first one's store because it
/// held `_checkpoints/` (and `drift/`), which the clean-up did not know. Now the second run
/// replaces the store, and a directory holding anything else is still refused.
#[test]
fn a_second_demo_on_the_same_store_replaces_the_first_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("demo-store");
    let first = demo(&store, &dir.path().join("first.json"));
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(
        store.join("_checkpoints").is_dir(),
        "the demo writes checkpoints into its store"
    );
    let rows = store_rows(&dir.path().join("first.json"));
    assert!(rows > 0);

    let second = demo(&store, &dir.path().join("second.json"));
    assert!(
        second.status.success(),
        "second demo on the same store: {}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert_eq!(
        store_rows(&dir.path().join("second.json")),
        rows,
        "the second store holds only the second run's rows"
    );

    std::fs::write(store.join("notes.txt"), b"mine").unwrap();
    let refused = demo(&store, &dir.path().join("third.json"));
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("does not look like a shopstream store"),
        "{stderr}"
    );
    assert!(
        store.join("notes.txt").exists(),
        "a foreign file was deleted"
    );
    println!(
        "demo twice on {}: {rows} rows both times; with a foreign file: `{}`",
        store.display(),
        stderr.lines().last().unwrap_or_default()
    );
}
