//! Decode + validate throughput per topic, next to bare serde_json parsing of the same
//! generator bytes into the typed struct and into `serde_json::Value`.
//!
//! Run: `cargo bench -p shopstream-ingest --bench decode` (figures in BENCHMARKS.md).

#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use shopstream_ingest::decode::{DecodeLimits, decode};
use shopstream_ingest::event::{ClickEvent, InputTopic, InventoryEvent, OrderEvent};
use shopstream_ingest::generator::{Generator, GeneratorOptions};

fn messages(topic: InputTopic, n: usize) -> Vec<(String, Vec<u8>)> {
    Generator::new(GeneratorOptions {
        max_events: Some(400_000),
        ..GeneratorOptions::default()
    })
    .filter(|m| m.topic == topic)
    .take(n)
    .map(|m| (m.key, m.payload))
    .collect()
}

fn typed(topic: InputTopic, payload: &[u8]) -> bool {
    match topic {
        InputTopic::Clicks => serde_json::from_slice::<ClickEvent>(payload).is_ok(),
        InputTopic::Orders => serde_json::from_slice::<OrderEvent>(payload).is_ok(),
        InputTopic::Inventory => serde_json::from_slice::<InventoryEvent>(payload).is_ok(),
    }
}

fn bench(c: &mut Criterion) {
    for topic in InputTopic::ALL {
        let data = messages(topic, 10_000);
        let mut group = c.benchmark_group(format!("decode/{}", topic.as_str()));
        group.throughput(Throughput::Elements(data.len() as u64));
        group.bench_function("shopstream_decode_validate", |b| {
            b.iter(|| {
                for (key, payload) in &data {
                    black_box(
                        decode(
                            topic,
                            Some(key.as_bytes()),
                            payload,
                            DecodeLimits::default(),
                        )
                        .is_ok(),
                    );
                }
            })
        });
        group.bench_function("serde_json_typed", |b| {
            b.iter(|| {
                for (_, payload) in &data {
                    black_box(typed(topic, payload));
                }
            })
        });
        group.bench_function("serde_json_value", |b| {
            b.iter(|| {
                for (_, payload) in &data {
                    black_box(serde_json::from_slice::<serde_json::Value>(payload).is_ok());
                }
            })
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
