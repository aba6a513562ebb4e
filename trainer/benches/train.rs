//! Training and prediction throughput of the joint model on generator-derived examples.
//!
//! Run: `cargo bench -p shopstream-trainer --bench train` (figures in BENCHMARKS.md).

#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use shopstream_config::{ModelConfig, PipelineConfig};
use shopstream_features::{Example, FeaturePipeline};
use shopstream_ingest::generator::{Generator, GeneratorOptions};
use shopstream_trainer::Trainer;

/// The examples of the traffic of `events` generated events, as the pipeline handed them
/// over: one list per window closed while the input flowed (a window's list holds the
/// impressions whose labels matured in it), then what the end of input released at once.
fn windows(events: u64) -> (Vec<Vec<Example>>, Vec<Example>) {
    let mut pipeline = FeaturePipeline::new(&PipelineConfig::default());
    let mut closed = Vec::new();
    let mut generator = Generator::new(GeneratorOptions {
        max_events: Some(events),
        ..GeneratorOptions::default()
    });
    for (meta, event) in generator.decoded() {
        pipeline.ingest(meta, event).unwrap();
        closed.extend(pipeline.close_ready().into_iter().map(|w| w.examples));
    }
    closed.retain(|w| !w.is_empty());
    let rest = pipeline.finish().into_iter().flat_map(|w| w.examples);
    (closed, rest.collect())
}

fn bench(c: &mut Criterion) {
    let (closed, rest) = windows(120_000);
    let mut data: Vec<Example> = closed.iter().flatten().chain(&rest).cloned().collect();
    data.truncate(20_000);
    // The windows closed while the input flowed, from the 20,001st example on (the end
    // of input releases every label still waiting at once: no window a running job sees).
    let mut before = 0;
    let later: Vec<&[Example]> = closed
        .iter()
        .filter_map(|w| {
            let skip = data.len().saturating_sub(before).min(w.len());
            before += w.len();
            (skip < w.len()).then(|| &w[skip..])
        })
        .collect();
    let mut group = c.benchmark_group("trainer");
    group.sample_size(10);
    group.throughput(Throughput::Elements(data.len() as u64));
    // A new model on one 20,000-example window: every embedding row and optimiser page it
    // touches is touched for the first time (page faults), inside the timing.
    group.bench_function("train_window_prequential", |b| {
        b.iter_batched(
            || Trainer::new(&ModelConfig::default()),
            |mut t| black_box(t.train_window(&data).examples),
            BatchSize::LargeInput,
        )
    });
    // What a running job does: a model that has trained on the first 20,000 examples
    // trains on the next ones, window by window as the pipeline closed them (one-minute
    // windows). The trainer is returned so that its drop is not timed either.
    let mut warm = Trainer::new(&ModelConfig::default());
    warm.train_window(&data);
    let later_examples: usize = later.iter().map(|w| w.len()).sum();
    eprintln!(
        "warm: {later_examples} examples in {} windows, after {} examples",
        later.len(),
        data.len()
    );
    group.throughput(Throughput::Elements(later_examples as u64));
    group.bench_function("train_windows_warm", |b| {
        b.iter_batched(
            || warm.clone(),
            |mut t| {
                for window in &later {
                    black_box(t.train_window(window).examples);
                }
                t
            },
            BatchSize::LargeInput,
        )
    });
    group.throughput(Throughput::Elements(data.len() as u64));
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
