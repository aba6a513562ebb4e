//! Features path throughput: decoded events -> windows -> joins and rolling state -> Arrow
//! batches, on generator traffic with 100k users; and state bytes per active user.
//!
//! Run: `cargo bench -p shopstream-features --bench features` (figures in BENCHMARKS.md).

#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use shopstream_config::PipelineConfig;
use shopstream_features::{FeaturePipeline, examples_batch};
use shopstream_ingest::event::{Event, InputTopic};
use shopstream_ingest::generator::{Generator, GeneratorOptions, world::WorldSize};
use shopstream_ingest::record::RecordMeta;

const PARTITIONS: i32 = 4;

fn traffic(events: u64) -> Vec<(RecordMeta, Event)> {
    let options = GeneratorOptions {
        max_events: Some(events),
        // About 6 hours of event time: past the label horizon, so the pending-label
        // buffer and the rolling state are in steady state when measured.
        sessions_per_sec: 4.0,
        size: WorldSize {
            users: 100_000,
            items: 50_000,
            categories: 200,
        },
        ..GeneratorOptions::default()
    };
    Generator::new(options).decoded_on(PARTITIONS).collect()
}

fn run(events: Vec<(RecordMeta, Event)>, measure_state: bool) -> usize {
    run_with(events, measure_state, true, 1)
}

/// `arrow`: also build the Arrow batches (else only count the examples), to split the cost;
/// `threads`: the partition shards are applied on this many threads.
fn run_with(
    events: Vec<(RecordMeta, Event)>,
    measure_state: bool,
    arrow: bool,
    threads: usize,
) -> usize {
    let mut pipeline = FeaturePipeline::new(&PipelineConfig::default());
    pipeline.set_threads(threads);
    for topic in InputTopic::ALL {
        for p in 0..PARTITIONS {
            pipeline.register_partition(topic, p);
        }
    }
    // The examples of a window: counted, or built into an Arrow batch too.
    let examples = |output: &shopstream_features::WindowOutput| {
        if arrow {
            examples_batch(&output.examples).unwrap().num_rows()
        } else {
            output.examples.len()
        }
    };
    let mut rows = 0;
    for (meta, event) in events {
        pipeline.ingest(meta, event).unwrap();
        rows += pipeline.close_ready().iter().map(examples).sum::<usize>();
    }
    if measure_state {
        let (users, items) = pipeline.key_counts();
        let memory = pipeline.approx_bytes();
        let pending = pipeline.pending_examples();
        let per_user = |bytes: usize| bytes as f64 / users.max(1) as f64;
        eprintln!(
            "state: {users} active users, {items} (partition, item) entries, {pending} pending examples; \
             keyed state ~{} bytes = {:.0} bytes per active user (users {:.0} B each, items {:.0} B each; \
             per active user: users {:.0}, items {:.0}, join indexes {:.0}, inventories {:.0}); \
             label buffer ~{} bytes = {:.0} bytes per pending example",
            memory.keyed(),
            per_user(memory.keyed()),
            per_user(memory.users),
            memory.items as f64 / items.max(1) as f64,
            per_user(memory.users),
            per_user(memory.items),
            per_user(memory.joins),
            per_user(memory.inventory),
            memory.pending,
            memory.pending as f64 / pending.max(1) as f64
        );
    }
    rows += pipeline.finish().iter().map(examples).sum::<usize>();
    rows
}

fn bench(c: &mut Criterion) {
    let events = traffic(800_000);
    let rows = run(events.clone(), true);
    eprintln!("{} events -> {rows} examples", events.len());
    let mut group = c.benchmark_group("features");
    group.sample_size(10);
    group.throughput(Throughput::Elements(events.len() as u64));
    group.bench_function("events_to_arrow_batches", |b| {
        b.iter_batched(
            || events.clone(),
            |ev| black_box(run(ev, false)),
            BatchSize::LargeInput,
        )
    });
    group.bench_function("events_to_examples_without_arrow", |b| {
        b.iter_batched(
            || events.clone(),
            |ev| black_box(run_with(ev, false, false, 1)),
            BatchSize::LargeInput,
        )
    });
    // The same with the 4 partition shards on 2 threads (the ratio to the line above is
    // what a second core buys the features path).
    group.bench_function("events_to_examples_without_arrow_2_threads", |b| {
        b.iter_batched(
            || events.clone(),
            |ev| black_box(run_with(ev, false, false, 2)),
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
