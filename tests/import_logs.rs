//! Real logs through their built-in mappings onto a real broker and into the store.
//!
//! - The Taobao UserBehavior sample (../shared/data, not part of the repository; CI always
//!   has it), imported through the library: counts per behaviour must survive the whole
//!   path, and the conversions must be exactly those an independent reading of the CSV
//!   finds.
//! - The REES46 sample, imported by the binary (`shopstream import --mapping rees46`):
//!   it reconciles row for row (every view one example, every purchase one order, every
//!   message consumed, nothing dead-lettered), with conversions read from the CSV alone.
//!
//! Each fails, saying where it looked, when its sample is absent.

#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::path::{Path, PathBuf};

use arrow::array::{Array, BooleanArray, RecordBatch};
use shopstream_ingest::import::Importer;
use shopstream_ingest::mapping::{Mapping, builtin};
use shopstream_job::generate::publish_messages;
use support::{Broker, read_table, run_to_end};

fn shared_sample(name: &str) -> PathBuf {
    shopstream_ingest::import::reference_log(name).unwrap_or_else(|e| panic!("{e}"))
}

fn true_count(batches: &[RecordBatch], name: &str) -> usize {
    batches
        .iter()
        .map(|b| {
            let col = b
                .column_by_name(name)
                .unwrap()
                .as_any()
                .downcast_ref::<BooleanArray>()
                .unwrap();
            (0..col.len()).filter(|i| col.value(*i)).count()
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taobao_sample_replays_with_counts_per_behaviour() {
    let sample = shared_sample("taobao-userbehavior-sample.csv");
    let mapping = Mapping::parse(builtin("taobao").unwrap(), "taobao").unwrap();
    let broker = Broker::start();
    let store = tempfile::tempdir().unwrap();
    let config = broker.config("taobao", store.path());
    let mut importer = Importer::open(&mapping, &sample, None).unwrap();
    let sent = publish_messages(&config, &mut importer, None)
        .await
        .unwrap();
    let report = importer.finish().unwrap();
    assert!(report.rejected.is_empty(), "{:?}", report.rejected);
    let summary = run_to_end(&config).await;

    let behaviour = |b: &str| report.per_behavior.get(b).copied().unwrap_or(0);
    let consumed = |t: &str| summary.consumed.get(t).copied().unwrap_or(0);
    assert_eq!(summary.consumed.values().sum::<u64>(), sent);
    assert_eq!(
        consumed("clicks"),
        2 * behaviour("pv") + behaviour("cart") + behaviour("fav")
    );
    assert_eq!(consumed("orders"), behaviour("buy"));
    assert_eq!(consumed("inventory"), report.items);
    if !summary.dead_lettered.is_empty() {
        let letters = support::read_topic(&broker.bootstrap, &config.topics.dead_letter);
        let shown: Vec<_> = letters
            .iter()
            .map(|r| {
                (
                    r.headers.clone(),
                    String::from_utf8_lossy(&r.payload).to_string(),
                )
            })
            .collect();
        panic!("dead letters: {shown:#?}");
    }
    assert!(summary.duplicates.is_empty());

    // One example per product view, each labelled clicked (the view was opened).
    let batches = read_table(store.path(), "examples");
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows as u64, behaviour("pv"));
    assert_eq!(true_count(&batches, "clicked") as u64, behaviour("pv"));
    let converted = true_count(&batches, "converted") as u64;
    let expected = attributed_views(&taobao_rows(&sample), "pv", "buy");
    assert_eq!(
        converted, expected,
        "converted examples vs views a buy attributes to, read from the CSV"
    );
    assert!(expected > 0, "the sample has attributed buys");
    eprintln!(
        "taobao: {} rows (pv {}, cart {}, fav {}, buy {}), {} items -> {sent} messages; \
         {rows} examples, {converted} converted (buys within 30 min of a view of the item)",
        report.rows,
        behaviour("pv"),
        behaviour("cart"),
        behaviour("fav"),
        behaviour("buy"),
        report.items,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rees46_sample_imports_by_the_binary_and_reconciles_row_for_row() {
    let sample = shared_sample("rees46-2019oct-sample.csv");
    let broker = Broker::start();
    let store = tempfile::tempdir().unwrap();
    let config = broker.config("rees46", store.path());
    let config_path = store.path().join("job.toml");
    std::fs::write(&config_path, toml::to_string(&config).unwrap()).unwrap();
    let report_path = store.path().join("report.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shopstream"))
        .args(["import", "--mapping", "rees46", "--config"])
        .arg(&config_path)
        .arg(&sample)
        .arg("--report-json")
        .arg(&report_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "import failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap();
    let rows = rees46_rows(&sample);
    let per_type = |t: &str| rows.iter().filter(|r| r.3 == t).count() as u64;
    assert_eq!(report["rows"], rows.len() as u64);
    assert_eq!(report["rejected_rows"], 0, "{report}");
    for t in ["view", "cart", "remove_from_cart", "purchase"] {
        assert_eq!(
            report["per_behavior"][t].as_u64().unwrap_or(0),
            per_type(t),
            "{t}"
        );
    }

    let summary = run_to_end(&config).await;
    let consumed = |t: &str| summary.consumed.get(t).copied().unwrap_or(0);
    assert_eq!(
        summary.consumed.values().sum::<u64>(),
        report["messages"].as_u64().unwrap()
    );
    assert_eq!(
        consumed("clicks"),
        2 * per_type("view") + per_type("cart") + per_type("remove_from_cart")
    );
    assert_eq!(consumed("orders"), per_type("purchase"));
    assert_eq!(
        consumed("inventory"),
        report["messages_per_topic"]["inventory"].as_u64().unwrap()
    );
    assert!(
        summary.dead_lettered.is_empty(),
        "dead letters: {:?}",
        summary.dead_lettered
    );
    assert!(summary.duplicates.is_empty());

    // Every view is one example, clicked; conversions are exactly the views a purchase of
    // the same user and item attributes to, read from the CSV alone.
    let batches = read_table(store.path(), "examples");
    let examples: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(examples as u64, per_type("view"));
    assert_eq!(true_count(&batches, "clicked") as u64, per_type("view"));
    let converted = true_count(&batches, "converted") as u64;
    assert_eq!(converted, attributed_views(&rows, "view", "purchase"));
    eprintln!(
        "rees46: {} rows -> {} messages; {examples} examples, {converted} converted",
        rows.len(),
        report["messages"]
    );

    // `model evaluate` scores every stored example once, and its VW stream carries the
    // same examples with the conversion label, tagged scenario/clicked/window.
    let (json, vw) = (store.path().join("eval.json"), store.path().join("eval.vw"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shopstream"))
        .args(["model", "evaluate", "--config"])
        .arg(&config_path)
        .arg("--json")
        .arg(&json)
        .arg("--vw-out")
        .arg(&vw)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("{examples} examples in")),
        "{stdout}"
    );
    let evaluated: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(evaluated["examples"], examples);
    let cvr_all = evaluated["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["task"] == "cvr" && r["scenario"] == "all")
        .unwrap();
    assert_eq!(cvr_all["n"], examples, "every view is a clicked impression");
    assert_eq!(cvr_all["positives"], converted);
    assert!(
        cvr_all["joint"]
            .as_f64()
            .is_some_and(|auc| (0.0..=1.0).contains(&auc))
    );
    let lines = std::fs::read_to_string(&vw).unwrap();
    assert_eq!(lines.lines().count(), examples);
    assert_eq!(
        lines.lines().filter(|l| l.starts_with("1 ")).count() as u64,
        converted
    );
    assert!(
        lines.lines().all(|l| l.contains(" 'product_detail/1/")),
        "{}",
        &lines[..200]
    );
}

fn rees46_rows(sample: &Path) -> Vec<LogRow> {
    std::fs::read_to_string(sample)
        .unwrap()
        .lines()
        .enumerate()
        .skip(1)
        .map(|(line, row)| {
            let f: Vec<&str> = row.split(',').collect();
            let at = chrono::NaiveDateTime::parse_from_str(f[0], "%Y-%m-%d %H:%M:%S UTC").unwrap();
            (
                line,
                f[7].to_string(),
                f[2].to_string(),
                f[1].to_string(),
                at.and_utc().timestamp_millis(),
            )
        })
        .collect()
}

/// One CSV row as the attribution check reads it: line, user, item, kind, time (ms).
type LogRow = (usize, String, String, String, i64);

fn taobao_rows(sample: &Path) -> Vec<LogRow> {
    std::fs::read_to_string(sample)
        .unwrap()
        .lines()
        .enumerate()
        .filter_map(|(line, row)| {
            let [user, item, _, kind, ts]: [&str; 5] =
                row.split(',').collect::<Vec<_>>().try_into().ok()?;
            Some((
                line,
                user.to_string(),
                item.to_string(),
                kind.to_string(),
                ts.parse::<i64>().ok()? * 1000,
            ))
        })
        .collect()
}

/// Rows that the mappings turn into a view (an impression, and a click 1 ms later) and
/// those that become an order (3 ms later): the views a later order of the same user and
/// item attributes to, computed from the rows alone with the documented rules
/// (docs/taobao-import.md): an order goes to the latest click strictly before it within
/// the 30-minute attribution window (last touch; equal times: the later line). Several
/// orders of one view count it once.
fn attributed_views(rows: &[LogRow], view: &str, buy: &str) -> u64 {
    const ATTRIBUTION_MS: i64 = 30 * 60 * 1000;
    let mut views: std::collections::BTreeMap<(&str, &str), Vec<(i64, usize)>> =
        std::collections::BTreeMap::new();
    for (line, user, item, kind, ts) in rows {
        if kind == view {
            views.entry((user, item)).or_default().push((ts + 1, *line));
        }
    }
    let mut attributed = std::collections::BTreeSet::new();
    for (_, user, item, kind, ts) in rows {
        if kind != buy {
            continue;
        }
        let order_ms = ts + 3;
        let touch = views
            .get(&(user.as_str(), item.as_str()))
            .and_then(|clicks| {
                clicks
                    .iter()
                    .filter(|(click_ms, _)| {
                        *click_ms < order_ms && order_ms - click_ms <= ATTRIBUTION_MS
                    })
                    .max()
            });
        if let Some((_, line)) = touch {
            attributed.insert(*line);
        }
    }
    attributed.len() as u64
}
