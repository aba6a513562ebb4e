//! Drift alerts end to end, against a real broker: generated traffic with a price shock
//! goes through the job, and the alert appears on the alerts topic, in the store's
//! `alerts` table, in the `drift` table's statistics and at the webhook.

#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use arrow::array::{Array, StringArray, TimestampMicrosecondArray};
use shopstream_drift::{AlertEvent, AlertState, DriftKind as AlertKind};
use shopstream_ingest::generator::{
    DEFAULT_START_MS, DriftKind, GeneratorOptions, world::WorldSize,
};
use shopstream_job::generate::publish_traffic;
use support::receiver::receiver;
use support::{Broker, read_table, read_topic, run_to_end};

const MINUTE: i64 = 60_000;

fn column<'a, T: 'static>(batch: &'a arrow::array::RecordBatch, name: &str) -> &'a T {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .unwrap_or_else(|| panic!("column {name}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_price_shock_raises_an_alert_on_the_topic_in_the_store_and_at_the_webhook() {
    let broker = Broker::start();
    let store = tempfile::tempdir().unwrap();
    let mut config = broker.config("drift", store.path());
    let (url, bodies) = receiver(vec![200]).await;
    config.drift.webhook_url = Some(url);
    // A short run: a reference of 4 windows lets the KS test's clustering correction be
    // estimated from the 10th window on (default 12 windows: from the 18th); the
    // statistics and thresholds are the defaults.
    config.drift.reference_windows = 4;

    // 20 minutes of traffic, prices up 60 % from minute 14.
    let onset = DEFAULT_START_MS + 14 * MINUTE;
    let traffic = GeneratorOptions {
        seed: 5,
        max_events: None,
        duration_ms: Some(20 * MINUTE),
        sessions_per_sec: 0.5,
        size: WorldSize {
            users: 400,
            items: 300,
            categories: 10,
        },
        drift: Some((onset, DriftKind::PriceShock)),
        ..GeneratorOptions::default()
    };
    let report = publish_traffic(&config, traffic, None, None).await.unwrap();
    assert!(report.impressions > 2_000, "{report:?}");
    let summary = run_to_end(&config).await;

    // The topic: JSON alert events keyed by their id, one firing on price after the onset.
    let records = read_topic(&broker.bootstrap, &config.topics.alerts);
    let events: Vec<AlertEvent> = records
        .iter()
        .map(|r| {
            let event: AlertEvent = serde_json::from_slice(&r.payload).unwrap();
            assert_eq!(r.key, event.id.as_bytes(), "keyed by the alert id");
            event
        })
        .collect();
    let price = events
        .iter()
        .find(|e| {
            e.subject == "price"
                && e.state == AlertState::Firing
                && e.kind == AlertKind::DataDrift
                && e.window_start_ms >= onset
        })
        .unwrap_or_else(|| panic!("no price alert after the onset: {events:?}"));
    assert!(
        price.window_start_ms <= onset + 3 * MINUTE,
        "reported within 3 windows of the onset: {price:?}"
    );
    assert_eq!(summary.drift.published as usize, events.len());
    assert_eq!(
        (summary.drift.alerts_fired + summary.drift.alerts_resolved) as usize,
        events.len()
    );

    // The store's alerts table has the same event, partitioned by its window.
    let alerts = read_table(store.path(), "alerts");
    let mut stored = Vec::new();
    for batch in &alerts {
        let ids = column::<StringArray>(batch, "id");
        let ts = column::<TimestampMicrosecondArray>(batch, "ts");
        let state = column::<StringArray>(batch, "state");
        for row in 0..batch.num_rows() {
            stored.push((
                ids.value(row).to_string(),
                ts.value(row) / 1000,
                state.value(row).to_string(),
            ));
        }
    }
    assert!(
        stored.contains(&(
            price.id.clone(),
            price.window_start_ms,
            "firing".to_string()
        )),
        "{stored:?}"
    );
    assert_eq!(
        stored.len(),
        events.len(),
        "every published event is stored"
    );

    // The drift table has the per-window PSI of price, large after the onset.
    let drift = read_table(store.path(), "drift");
    let mut psi_after = Vec::new();
    for batch in &drift {
        let (subject, statistic) = (
            column::<StringArray>(batch, "subject"),
            column::<StringArray>(batch, "statistic"),
        );
        let value = column::<arrow::array::Float64Array>(batch, "value");
        let ts = column::<TimestampMicrosecondArray>(batch, "ts");
        for row in 0..batch.num_rows() {
            if subject.value(row) == "price"
                && statistic.value(row) == "psi"
                && ts.value(row) / 1000 >= onset + MINUTE
            {
                psi_after.push(value.value(row));
            }
        }
    }
    assert!(
        !psi_after.is_empty() && psi_after.iter().any(|p| *p > 0.2),
        "{psi_after:?}"
    );

    // The webhook got every event (the job waits a bounded time for it at shutdown).
    let posted: Vec<AlertEvent> = bodies
        .lock()
        .unwrap()
        .iter()
        .map(|b| serde_json::from_slice(b).unwrap())
        .collect();
    assert!(posted.contains(price), "{posted:?}");
    assert_eq!(summary.drift.webhook_delivered as usize, events.len());
    assert_eq!(summary.drift.webhook_failures, 0);
    println!(
        "drift end to end: {} alert events, price fired at onset+{} windows",
        events.len(),
        (price.window_start_ms - onset) / MINUTE
    );
}
