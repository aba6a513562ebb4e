//! End-to-end tests against a real Kafka-protocol broker (tansu), one broker and one set of
//! topics per test.

#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};

use arrow::array::{Array, BooleanArray, StringArray};
use shopstream_ingest::generator::{GeneratorOptions, world::WorldSize};
use shopstream_job::generate::publish_traffic;
use shopstream_job::pipeline::{RunOptions, run};
use support::{Broker, read_table, read_topic};

fn small_traffic(seed: u64, events: u64, malformed_fraction: f64) -> GeneratorOptions {
    GeneratorOptions {
        seed,
        max_events: Some(events),
        size: WorldSize {
            users: 300,
            items: 400,
            categories: 12,
        },
        malformed_fraction,
        ..GeneratorOptions::default()
    }
}

/// Guards the skeleton's core promise: with N impressions and malformed fraction f, the
/// store holds N examples, the predictions topic N predictions (one per impression id),
/// and the dead-letter topic exactly the malformed messages, reason for reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_traffic_reconciles_exactly_through_a_real_broker() {
    let broker = Broker::start();
    let store = tempfile::tempdir().unwrap();
    let mut config = broker.config("reconcile", store.path());
    let model_path = store.path().join("model.ssm");
    config.model.path = Some(model_path.clone());

    let mut generator_run = small_traffic(7, 6_000, 0.02);
    generator_run.sessions_per_sec = 3.0;
    let mut generator = shopstream_ingest::generator::Generator::new(generator_run.clone());
    let truth: Vec<_> = {
        generator.by_ref().for_each(drop);
        generator.truth().to_vec()
    };
    let report = publish_traffic(&config, generator_run, None, None)
        .await
        .unwrap();
    assert_eq!(
        report,
        *generator.report(),
        "publishing does not change the traffic"
    );
    assert!(
        report.impressions > 3_000 && report.malformed_total > 50,
        "{report:?}"
    );

    let summary = support::run_to_end(&config).await;
    assert!(summary.reached_end);

    // consumed == valid + dead-lettered, per topic and in total.
    let consumed: u64 = summary.consumed.values().sum();
    let valid: u64 = summary.valid.values().sum();
    let dead: u64 = summary.dead_lettered.values().sum();
    assert_eq!(consumed, report.valid_total + report.malformed_total);
    assert!(
        summary.duplicates.is_empty(),
        "the generator writes no duplicates"
    );
    assert_eq!(valid, report.valid_total);
    assert_eq!(dead, report.malformed_total);
    assert_eq!(
        summary.dead_lettered, report.malformed_per_reason,
        "no late events in ordered input"
    );

    // The store: exactly one example per impression, read back from Parquet.
    let batches = read_table(store.path(), "examples");
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows as u64, report.impressions);
    assert_eq!(summary.examples_written, report.impressions);
    // Labels of every example, by impression id, read back from the store.
    let mut labels_by_id: HashMap<String, (bool, bool, bool)> = HashMap::new();
    for batch in &batches {
        let strings = |name: &str| {
            batch
                .column_by_name(name)
                .unwrap()
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap()
                .clone()
        };
        let flags = |name: &str| {
            batch
                .column_by_name(name)
                .unwrap()
                .as_any()
                .downcast_ref::<BooleanArray>()
                .unwrap()
                .clone()
        };
        let (ids, clicked, converted, cancelled) = (
            strings("event_id"),
            flags("clicked"),
            flags("converted"),
            flags("cancelled"),
        );
        for row in 0..batch.num_rows() {
            let labels = (
                clicked.value(row),
                converted.value(row),
                cancelled.value(row),
            );
            let previous = labels_by_id.insert(ids.value(row).to_string(), labels);
            assert!(previous.is_none(), "duplicate example");
        }
    }
    // Labels agree with the generator's own record, impression for impression: clicks and
    // attributed orders exactly; a cancellation only counts when it came before the label
    // matured, so an example's `cancelled` implies the truth's.
    let mut clicks = 0;
    let mut conversions = 0;
    for t in &truth {
        let (clicked, converted, cancelled) = labels_by_id[&t.event_id];
        assert_eq!(clicked, t.clicked, "clicked of {}", t.event_id);
        assert_eq!(converted, t.converted, "converted of {}", t.event_id);
        assert!(!cancelled || t.cancelled, "cancelled of {}", t.event_id);
        clicks += usize::from(clicked);
        conversions += usize::from(converted);
    }
    assert!(
        clicks > 100 && conversions > 10,
        "{clicks} clicks, {conversions} conversions"
    );

    // Prequential metrics of every trained window are in the store's `metrics` table.
    let metrics = read_table(store.path(), "metrics");
    let metric_rows: usize = metrics.iter().map(|b| b.num_rows()).sum();
    assert!(
        metric_rows as u64 >= 3 * summary.model_version,
        "{metric_rows} rows for {} windows",
        summary.model_version
    );
    let tasks: HashSet<String> = metrics
        .iter()
        .flat_map(|b| {
            let t = b
                .column_by_name("task")
                .unwrap()
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap()
                .clone();
            (0..t.len()).map(move |i| t.value(i).to_string())
        })
        .collect();
    assert_eq!(
        tasks,
        HashSet::from(["ctr".to_string(), "cvr".to_string(), "ctcvr".to_string()])
    );

    // The model file was written at stop and `shopstream model inspect` reads it.
    let (_, header) = shopstream_trainer::Trainer::load(&model_path).unwrap();
    assert_eq!(header.model_version, summary.model_version);
    assert_eq!(header.trained_examples, report.impressions);
    let inspect = std::process::Command::new(env!("CARGO_BIN_EXE_shopstream"))
        .args(["model", "inspect"])
        .arg(&model_path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&inspect.stdout);
    assert!(
        inspect.status.success()
            && text.contains(&format!("model version:     {}", summary.model_version)),
        "{text}"
    );

    // Item demand forecasts are in the store's `item_demand` table.
    let forecasts: usize = read_table(store.path(), "item_demand")
        .iter()
        .map(|b| b.num_rows())
        .sum();
    assert_eq!(forecasts as u64, summary.demand_forecasts);
    assert!(forecasts > 0);

    // Predictions: one per impression, keyed by the impression's id, with a model version.
    let predictions = read_topic(&broker.bootstrap, &config.topics.predictions);
    assert_eq!(predictions.len() as u64, report.impressions);
    assert_eq!(summary.predictions_published, report.impressions);
    let keys: HashSet<Vec<u8>> = predictions.iter().map(|r| r.key.clone()).collect();
    assert_eq!(
        keys.len(),
        predictions.len(),
        "one prediction per impression id"
    );
    for record in &predictions {
        let value: serde_json::Value = serde_json::from_slice(&record.payload).unwrap();
        assert_eq!(
            value["event_id"].as_str().unwrap().as_bytes(),
            record.key.as_slice()
        );
        assert!(value["model_version"].is_u64());
        let (c, v, cv) = (
            value["p_click"].as_f64().unwrap(),
            value["p_cvr"].as_f64().unwrap(),
            value["p_ctcvr"].as_f64().unwrap(),
        );
        assert!((c * v - cv).abs() < 1e-12, "p_ctcvr = p_click x p_cvr");
        assert!(value["expected_revenue"].as_f64().unwrap() >= 0.0);
        let p = value["p_click"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&p));
    }

    // Dead letters: exactly the malformed messages, with reason and source headers.
    let dead_letters = read_topic(&broker.bootstrap, &config.topics.dead_letter);
    assert_eq!(dead_letters.len() as u64, report.malformed_total);
    let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
    for record in &dead_letters {
        *reasons
            .entry(record.headers["shopstream.reason"].clone())
            .or_default() += 1;
        let source = &record.headers["shopstream.source.topic"];
        assert!(
            [
                &config.topics.clicks,
                &config.topics.orders,
                &config.topics.inventory
            ]
            .contains(&source)
        );
        assert!(
            record.headers["shopstream.source.offset"]
                .parse::<i64>()
                .is_ok()
        );
        assert!(!record.headers["shopstream.message"].is_empty());
    }
    assert_eq!(reasons, report.malformed_per_reason);
    eprintln!(
        "reconciled: {} impressions -> {} examples, {} predictions; {} malformed -> {} dead letters {:?}",
        report.impressions,
        rows,
        predictions.len(),
        report.malformed_total,
        dead_letters.len(),
        reasons
    );
}

/// Guards the error path of a wrong `kafka.brokers`: a clear message naming the address,
/// not a hang or a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_broker_is_reported_with_its_address() {
    let store = tempfile::tempdir().unwrap();
    let mut config = shopstream_config::Config::default();
    // Port 9 (discard) on loopback: nothing listens there.
    config.kafka.brokers = "127.0.0.1:9".to_string();
    config.kafka.connect_timeout_ms = 2_000;
    config.store.path = store.path().to_path_buf();
    let error = run(
        &config,
        RunOptions {
            stop_at_end: true,
            ..Default::default()
        },
        std::future::pending(),
    )
    .await
    .expect_err("no broker there");
    let text = error.to_string();
    assert!(text.contains("cannot reach Kafka at 127.0.0.1:9"), "{text}");
}
