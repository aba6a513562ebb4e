//! The real Taobao UserBehavior sample (../shared/data, not part of the repository) is
//! imported onto a real broker and replayed into the store; counts per behaviour must
//! survive the whole path. Skips, saying so, when the sample is absent.

#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::path::Path;

use arrow::array::{Array, BooleanArray};
use shopstream::generate::publish_messages;
use shopstream_ingest::import::import_taobao;
use support::{Broker, read_table, run_to_end};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taobao_sample_replays_with_counts_per_behaviour() {
    let sample =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/taobao-userbehavior-sample.csv");
    if !sample.exists() {
        eprintln!(
            "SKIPPED: {} is absent (reference data lives outside the repository)",
            sample.display()
        );
        return;
    }
    let (messages, report) = import_taobao(std::io::BufReader::new(
        std::fs::File::open(&sample).unwrap(),
    ))
    .unwrap();
    assert!(report.rejected.is_empty(), "{:?}", report.rejected);
    let broker = Broker::start();
    let store = tempfile::tempdir().unwrap();
    let config = broker.config("taobao", store.path());
    let sent = publish_messages(&config, messages, None).await.unwrap();
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
    let flags = |name: &str| -> usize {
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
    };
    assert_eq!(flags("clicked") as u64, behaviour("pv"));
    let converted = flags("converted") as u64;
    assert!(converted <= behaviour("buy"));
    eprintln!(
        "taobao: {} rows (pv {}, cart {}, fav {}, buy {}), {} users, {} items -> {sent} messages; \
         {rows} examples, {} clicked, {converted} converted (buys within 30 min of a view of the item)",
        report.rows,
        behaviour("pv"),
        behaviour("cart"),
        behaviour("fav"),
        behaviour("buy"),
        report.users,
        report.items,
        flags("clicked")
    );
}
