//! `shopstream import` streams: a million-row log, unsorted (so the import sorts it in runs
//! of 100,000 rows on disk), goes through in bounded memory. Measured: 58 MiB peak this way;
//! sorted in memory in one run (`sort_run_rows = 10000000`) the same log peaks at 148 MiB,
//! and the first importer also held all two million messages.

#![allow(clippy::unwrap_used, missing_docs)]

use std::io::Write;

const ROWS: u64 = 1_000_000;
/// Peak resident memory allowed for the whole process (the binary alone, with its
/// runtime, takes about 50 MiB).
const MAX_PEAK_RSS_MIB: u64 = 100;

const MAPPING: &str = r#"
[source]
format = "csv"
header = true
sorted = false
sort_run_rows = 100000
id_prefix = "m"

[fields]
time = { path = "t", type = "epoch_ms" }
user_id = "u"
item_id = "i"
category = "c"
price = { path = "p", type = "number" }
kind = "k"

[events]
view = [{ emit = "impression" }, { emit = "click", after_ms = 1 }]
cart = [{ emit = "add_to_cart", after_ms = 2 }]
buy = [{ emit = "order", after_ms = 3 }]

[inventory]
snapshots = "on_change"
"#;

#[test]
fn a_million_unsorted_rows_import_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("log.csv");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&data).unwrap());
    writeln!(out, "t,u,i,c,p,k").unwrap();
    let (mut views, mut carts, mut buys) = (0u64, 0u64, 0u64);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..ROWS {
        // xorshift: times scattered over a day, so the rows are far from sorted.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let kind = match x % 20 {
            0 => {
                buys += 1;
                "buy"
            }
            1..=3 => {
                carts += 1;
                "cart"
            }
            _ => {
                views += 1;
                "view"
            }
        };
        let item = (x >> 20) % 10_000;
        writeln!(
            out,
            "{},u{},i{item},c{},{}.99,{kind}",
            1_700_000_000_000 + (x >> 8) % 86_400_000,
            (x >> 32) % 50_000,
            item % 97,
            item % 500
        )
        .unwrap();
    }
    out.flush().unwrap();
    drop(out);
    let mapping = dir.path().join("mapping.toml");
    std::fs::write(&mapping, MAPPING).unwrap();
    let report_path = dir.path().join("report.json");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_shopstream"))
        .arg("import")
        .arg("--mapping")
        .arg(&mapping)
        .arg(&data)
        .args(["--output", "/dev/null", "--report-json"])
        .arg(&report_path)
        .env("TMPDIR", dir.path())
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap();
    assert_eq!(report["rows"], ROWS);
    assert_eq!(report["rejected_rows"], 0);
    let topics = &report["messages_per_topic"];
    assert_eq!(topics["clicks"], 2 * views + carts);
    assert_eq!(topics["orders"], buys);
    // Each of the 10,000 items is snapshotted once: its category and price never change.
    assert_eq!(topics["inventory"], 10_000);
    assert_eq!(report["items"], 10_000);
    let peak_mib = report["peak_rss_kib"].as_u64().unwrap() / 1024;
    eprintln!(
        "imported {ROWS} rows in {} s ({} rows/s), peak RSS {peak_mib} MiB",
        report["seconds"], report["rows_per_sec"]
    );
    assert!(
        peak_mib <= MAX_PEAK_RSS_MIB,
        "peak RSS {peak_mib} MiB > {MAX_PEAK_RSS_MIB} MiB: the import holds the log in memory"
    );
    // The sort runs were removed.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("shopstream-import-"))
        .collect();
    assert!(left.is_empty(), "sort runs left behind: {left:?}");
}
