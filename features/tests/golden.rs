//! Golden test: a small fixed event sequence gives exactly the feature vectors and labels
//! in `golden/examples.json`. Regenerate after an intended change with
//! `SHOPSTREAM_UPDATE_GOLDEN=1 cargo test -p shopstream-features --test golden`
//! and review the diff.

#![allow(clippy::unwrap_used, missing_docs)]

use std::path::Path;

use shopstream_config::PipelineConfig;
use shopstream_features::{Example, FeaturePipeline, examples_batch, examples_schema};
use shopstream_ingest::decode::{DecodeLimits, decode};
use shopstream_ingest::event::InputTopic;
use shopstream_ingest::record::RecordMeta;

fn events() -> Vec<(RecordMeta, shopstream_ingest::event::Event)> {
    let text = include_str!("golden/events.jsonl");
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let topic: InputTopic = serde_json::from_value(v["topic"].clone()).unwrap();
            let meta = RecordMeta {
                topic,
                partition: v["partition"].as_i64().unwrap() as i32,
                offset: v["offset"].as_i64().unwrap(),
            };
            let payload = serde_json::to_vec(&v["payload"]).unwrap();
            (
                meta,
                decode(topic, None, &payload, DecodeLimits::default()).unwrap(),
            )
        })
        .collect()
}

fn examples() -> Vec<Example> {
    let mut pipeline = FeaturePipeline::new(&PipelineConfig::default());
    let mut out = Vec::new();
    for (meta, event) in events() {
        pipeline.ingest(meta, event).unwrap();
        out.extend(pipeline.close_ready().into_iter().flat_map(|w| w.examples));
    }
    out.extend(pipeline.finish().into_iter().flat_map(|w| w.examples));
    out
}

#[test]
fn fixed_events_give_the_golden_feature_vectors() {
    let actual = serde_json::to_string_pretty(&examples()).unwrap() + "\n";
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/examples.json");
    if std::env::var_os("SHOPSTREAM_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "{} is missing; run with SHOPSTREAM_UPDATE_GOLDEN=1",
            path.display()
        )
    });
    assert!(
        actual == expected,
        "feature vectors differ from {}; diff the output of SHOPSTREAM_UPDATE_GOLDEN=1",
        path.display()
    );
}

#[test]
fn golden_labels_follow_the_documented_joins() {
    let by_id = |id: &str| examples().into_iter().find(|e| e.event_id == id).unwrap();
    let i1 = by_id("i1");
    assert!(i1.labels.clicked && i1.labels.converted && !i1.labels.cancelled);
    assert_eq!((i1.labels.quantity, i1.labels.revenue), (2, 40.0));
    assert_eq!(i1.features.item_on_hand, Some(5), "inventory as of 10:00");
    let i2 = by_id("i2");
    assert!(!i2.labels.clicked && !i2.labels.converted);
    assert_eq!(i2.features.item_on_hand, Some(0));
    // i3 is one millisecond after the order and the sale: they are before it, so visible.
    let i3 = by_id("i3");
    assert_eq!(i3.features.user[0].units, 2);
    assert_eq!(i3.features.item_on_hand, Some(3));
    // Bob's order was cancelled before i4's label matured.
    let i4 = by_id("i4");
    assert!(i4.labels.clicked && i4.labels.converted && i4.labels.cancelled);
    // Other partitions' item counts are not mixed in (state is scoped by partition).
    assert_eq!(i4.features.item[0].impressions, 0);
    // A click 15 minutes after the impression is outside the 10-minute click window.
    assert!(!by_id("i5").labels.clicked);
    // The restock 1 ms before i6 is visible.
    assert_eq!(by_id("i6").features.item_on_hand, Some(40));
}

#[test]
fn every_column_is_documented() {
    let doc = include_str!("../../docs/feature-schema.md");
    for field in examples_schema().fields() {
        let name = field.name();
        let direct = format!("`{name}`");
        // Rolling columns are documented by pattern, e.g. `user_clicks_{1h,24h,7d}`.
        let pattern = name
            .rsplit_once('_')
            .map(|(stem, _)| format!("`{stem}_{{1h,24h,7d}}`"))
            .unwrap_or_default();
        assert!(
            doc.contains(&direct) || doc.contains(&pattern),
            "column {name} is not in docs/feature-schema.md"
        );
    }
    assert_eq!(
        examples_batch(&examples()).unwrap().schema(),
        examples_schema()
    );
}
