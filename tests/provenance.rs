//! Prediction provenance (`serving.explain`): every published prediction carries the
//! model version and its 3 largest input effects. (That explaining changes no probability
//! is `trainer::explain::tests::a_prediction_explains_itself_with_its_three_largest_input_effects`:
//! two job runs serve with models that depend on thread timing.)

#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;

use shopstream_job::generate::publish_traffic;
use shopstream_trainer::explain::{DENSE_NAMES, FIELD_NAMES};

mod support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_prediction_carries_its_model_version_and_three_largest_input_effects() {
    let broker = support::Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let mut explained = broker.config("provenance", &dir.path().join("explained"));
    explained.serving.explain = true;
    let report = publish_traffic(&explained, support::two_hour_traffic(51), None, None)
        .await
        .unwrap();
    support::run_to_end(&explained).await;
    let read = |topic: &str| -> BTreeMap<String, serde_json::Value> {
        support::read_topic(&explained.kafka.brokers, topic)
            .into_iter()
            .map(|r| {
                let v: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
                (v["event_id"].as_str().unwrap().to_string(), v)
            })
            .collect()
    };
    let with = read(&explained.topics.predictions);
    assert_eq!(with.len() as u64, report.impressions);
    let names: Vec<&str> = FIELD_NAMES.iter().chain(&DENSE_NAMES).copied().collect();
    for p in with.values() {
        let top = p["top_features"].as_array().unwrap();
        assert_eq!(top.len(), 3, "{p}");
        for c in top {
            assert!(names.contains(&c["feature"].as_str().unwrap()), "{c}");
            assert!(c["effect"].as_f64().unwrap().is_finite());
        }
        // Ordered by size of effect.
        let sizes: Vec<f64> = top
            .iter()
            .map(|c| c["effect"].as_f64().unwrap().abs())
            .collect();
        assert!(sizes.windows(2).all(|w| w[0] >= w[1]), "{p}");
        assert!(p["model_version"].is_u64(), "{p}");
    }
}
