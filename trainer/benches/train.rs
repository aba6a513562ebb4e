//! Training and prediction throughput of the joint model on generator-derived examples.
//!
//! Run: `cargo bench -p shopstream-trainer --bench train` (figures in BENCHMARKS.md).

#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use shopstream_config::{ModelConfig, PipelineConfig};
use shopstream_features::{Example, FeaturePipeline};
use shopstream_ingest::decode::{DecodeLimits, decode};
use shopstream_ingest::generator::{Generator, GeneratorOptions};
use shopstream_ingest::record::RecordMeta;
use shopstream_trainer::Trainer;

fn examples(n: usize) -> Vec<Example> {
    let mut pipeline = FeaturePipeline::new(&PipelineConfig::default());
    let mut out = Vec::new();
    for (offset, m) in Generator::new(GeneratorOptions {
        max_events: Some(n as u64 * 2),
        ..GeneratorOptions::default()
    })
    .enumerate()
    {
        let event = decode(m.topic, None, &m.payload, DecodeLimits::default()).unwrap();
        let meta = RecordMeta {
            topic: m.topic,
            partition: 0,
            offset: offset as i64,
        };
        pipeline.ingest(meta, event).unwrap();
        out.extend(pipeline.close_ready().into_iter().flat_map(|w| w.examples));
    }
    out.extend(pipeline.finish().into_iter().flat_map(|w| w.examples));
    out.truncate(n);
    out
}

fn bench(c: &mut Criterion) {
    let data = examples(20_000);
    let mut group = c.benchmark_group("trainer");
    group.sample_size(10);
    group.throughput(Throughput::Elements(data.len() as u64));
    group.bench_function("train_window_prequential", |b| {
        b.iter_batched(
            || Trainer::new(&ModelConfig::default()),
            |mut t| black_box(t.train_window(&data).examples),
            BatchSize::LargeInput,
        )
    });
    let mut trained = Trainer::new(&ModelConfig::default());
    trained.train_window(&data);
    let rows: Vec<_> = data
        .iter()
        .map(|e| shopstream_features::ServingRow {
            event_id: e.event_id.clone(),
            ts: e.ts,
            user_id: e.user_id.clone(),
            item_id: e.item_id.clone(),
            features: e.features.clone(),
        })
        .collect();
    group.bench_function("predict", |b| {
        b.iter(|| {
            rows.iter()
                .map(|r| trained.predict(r, None).p_click)
                .sum::<f64>()
        })
    });
    // serving.explain: the same predictions with their 3 largest input effects.
    group.bench_function("predict_explained", |b| {
        b.iter(|| {
            rows.iter()
                .map(|r| trained.predict_explained(r, None, 3).top_features.len())
                .sum::<usize>()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
