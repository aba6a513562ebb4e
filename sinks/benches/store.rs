//! Store write path throughput: the examples of generated traffic written as the job
//! writes them (one file per 10-minute span and hour, `write_windows`), their hours
//! compacted (`compact`), and the Parquet encoding alone under the store's settings and
//! two alternatives (the levers measured in BENCHMARKS.md). Rows per second; the bytes
//! of each encoding are printed once.
//!
//! Run: `cargo bench -p shopstream-sinks --bench store` (figures in BENCHMARKS.md).

#![allow(missing_docs, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::hint::black_box;

use arrow::array::RecordBatch;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use shopstream_config::{PipelineConfig, StoreConfig};
use shopstream_features::{FeaturePipeline, examples_batch};
use shopstream_ingest::event::InputTopic;
use shopstream_ingest::generator::{Generator, GeneratorOptions};
use shopstream_sinks::store::{ParquetStore, UNIQUE_COLUMNS, WindowRows};

const PARTITIONS: i32 = 4;
const TABLE: &str = "examples";

/// The windows' examples of `events` generated messages (default world), as the job hands
/// them to the store, grouped by the default 10-minute file span.
fn spans(events: u64) -> Vec<Vec<WindowRows>> {
    let config = PipelineConfig::default();
    let mut pipeline = FeaturePipeline::new(&config);
    for topic in InputTopic::ALL {
        for p in 0..PARTITIONS {
            pipeline.register_partition(topic, p);
        }
    }
    let mut outputs = Vec::new();
    let options = GeneratorOptions {
        max_events: Some(events),
        ..GeneratorOptions::default()
    };
    for (meta, event) in Generator::new(options).decoded_on(PARTITIONS) {
        pipeline.ingest(meta, event).unwrap();
        outputs.extend(pipeline.close_ready());
    }
    outputs.extend(pipeline.finish());
    let span_ms = shopstream_config::secs_to_ms(StoreConfig::default().file_span_secs);
    let mut spans: BTreeMap<i64, Vec<WindowRows>> = BTreeMap::new();
    for output in outputs.into_iter().filter(|o| !o.examples.is_empty()) {
        spans
            .entry(output.start.div_euclid(span_ms))
            .or_default()
            .push(WindowRows {
                window_ms: output.start,
                batch: examples_batch(&output.examples).unwrap(),
                metadata: BTreeMap::new(),
            });
    }
    spans.into_values().collect()
}

/// A store with the default settings in a fresh temporary directory.
fn fresh_store() -> (tempfile::TempDir, ParquetStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = ParquetStore::open(&StoreConfig {
        path: dir.path().to_path_buf(),
        ..StoreConfig::default()
    })
    .unwrap();
    (dir, store)
}

fn write_spans(store: &ParquetStore, spans: &[Vec<WindowRows>]) -> usize {
    let offsets = BTreeMap::new();
    spans
        .iter()
        .map(|span| store.write_windows(TABLE, span, &offsets).unwrap().len())
        .sum()
}

/// Bytes of `batch` as one Parquet file written with `properties`.
fn encode(batch: &RecordBatch, properties: &WriterProperties) -> usize {
    let mut writer =
        ArrowWriter::try_new(Vec::new(), batch.schema(), Some(properties.clone())).unwrap();
    writer.write(batch).unwrap();
    writer.into_inner().unwrap().len()
}

fn zstd(level: i32) -> Compression {
    Compression::ZSTD(ZstdLevel::try_new(level).unwrap())
}

fn bench(c: &mut Criterion) {
    let spans = spans(200_000);
    let rows: usize = spans.iter().flatten().map(|w| w.batch.num_rows()).sum();
    let windows: usize = spans.iter().map(Vec::len).sum();
    eprintln!(
        "{rows} examples in {windows} windows, {} file spans",
        spans.len()
    );

    let mut group = c.benchmark_group("store");
    group.sample_size(10);
    group.throughput(Throughput::Elements(rows as u64));
    group.bench_function("write_spans", |b| {
        b.iter_batched(
            fresh_store,
            |(dir, store)| (black_box(write_spans(&store, &spans)), dir),
            BatchSize::PerIteration,
        )
    });
    group.bench_function("compact_written_spans", |b| {
        b.iter_batched(
            || {
                let (dir, store) = fresh_store();
                write_spans(&store, &spans);
                (dir, store)
            },
            |(dir, store)| (black_box(store.compact(TABLE, None).unwrap().len()), dir),
            BatchSize::PerIteration,
        )
    });
    group.finish();

    // The encoding alone, one span's windows in one file each, under the store's
    // settings (default configuration: zstd level 3, dictionaries on but for event ids) and
    // the alternatives measured.
    let batches: Vec<RecordBatch> = spans
        .iter()
        .map(|span| {
            let windows: Vec<RecordBatch> = span.iter().map(|w| w.batch.clone()).collect();
            arrow::compute::concat_batches(&windows[0].schema(), &windows).unwrap()
        })
        .collect();
    let (_dir, store) = fresh_store();
    let settings = store.file_properties(&BTreeMap::new());
    let options = [
        ("store_settings", settings.clone()),
        (
            "zstd_level_1",
            settings
                .clone()
                .into_builder()
                .set_compression(zstd(1))
                .build(),
        ),
        (
            "no_dictionaries",
            settings
                .clone()
                .into_builder()
                .set_dictionary_enabled(false)
                .build(),
        ),
        (
            // The store's settings before event ids lost their dictionary.
            "event_id_dictionary",
            UNIQUE_COLUMNS
                .iter()
                .fold(settings.clone().into_builder(), |builder, name| {
                    builder.set_column_dictionary_enabled(ColumnPath::from(*name), true)
                })
                .build(),
        ),
    ];
    let mut group = c.benchmark_group("parquet_encoding");
    group.sample_size(10);
    group.throughput(Throughput::Elements(rows as u64));
    for (name, properties) in &options {
        let bytes: usize = batches.iter().map(|b| encode(b, properties)).sum();
        eprintln!("{name}: {bytes} bytes for {rows} rows");
        group.bench_function(*name, |b| {
            b.iter(|| {
                batches
                    .iter()
                    .map(|batch| encode(black_box(batch), properties))
                    .sum::<usize>()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
