//! The store on a local disk and in an S3 bucket, in one run (`scripts/bench-store-s3.sh`
//! starts moto and runs it): the same windows of generated examples are written as the
//! job writes them (a file per window and hour, a commit record each, hours compacted as
//! they close), then queried with `shopstream query`'s engine, alternating local and S3
//! for each round. Prints rows/s and MB/s written, and the latency of a query (for S3 it
//! includes copying the committed files, see docs/feature-store.md).
//!
//! `cargo run --release -p shopstream-sinks --example store_backends -- LOCAL_DIR S3_URL ROWS ROUNDS`
//! with the bucket's settings in the standard environment (`AWS_ENDPOINT_URL`,
//! `AWS_ALLOW_HTTP`, credentials).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use arrow::array::RecordBatch;
use shopstream_config::{PipelineConfig, StoreConfig};
use shopstream_features::FeaturePipeline;
use shopstream_features::{examples_batch, examples_metadata};
use shopstream_ingest::generator::{Generator, GeneratorOptions, world::WorldSize};
use shopstream_sinks::mirror::ReadableStore;
use shopstream_sinks::query::QueryContext;
use shopstream_sinks::store::{PARTITION_MS, ParquetStore, open_storage};

/// One window's examples: (start ms, rows, file metadata).
type Window = (i64, RecordBatch, BTreeMap<String, String>);

fn windows(rows: u64) -> Result<Vec<Window>, Box<dyn std::error::Error>> {
    let mut pipeline = FeaturePipeline::new(&PipelineConfig::default());
    let mut generator = Generator::new(GeneratorOptions {
        seed: 5,
        max_events: Some(rows * 4 / 3 + 10_000),
        // About 3 example rows per second of event time: a 200k-row run spans some 18
        // hours, a thousand one-minute windows.
        sessions_per_sec: 0.4,
        size: WorldSize {
            users: 50_000,
            items: 20_000,
            categories: 60,
        },
        ..GeneratorOptions::default()
    });
    let mut out = Vec::new();
    let mut held = 0u64;
    let mut keep =
        |window: shopstream_features::WindowOutput| -> Result<(), Box<dyn std::error::Error>> {
            if window.examples.is_empty() || held >= rows {
                return Ok(());
            }
            let batch = examples_batch(&window.examples)?;
            held += batch.num_rows() as u64;
            out.push((
                window.start,
                batch,
                examples_metadata(window.start, window.end),
            ));
            Ok(())
        };
    for (meta, event) in generator.decoded() {
        if pipeline.ingest(meta, event).is_err() {
            continue;
        }
        for window in pipeline.close_ready() {
            keep(window)?;
        }
    }
    for window in pipeline.finish() {
        keep(window)?;
    }
    Ok(out)
}

/// Writes `windows` into the store at `path` as the job does; (seconds, rows, bytes, files).
fn write(
    path: &str,
    windows: &[Window],
) -> Result<(f64, u64, u64, usize), Box<dyn std::error::Error>> {
    let store = ParquetStore::open(&StoreConfig {
        path: PathBuf::from(path),
        ..StoreConfig::default()
    })?;
    let started = Instant::now();
    let (mut rows, mut bytes, mut files) = (0u64, 0u64, 0usize);
    let mut compacted_hours = None;
    for (start, batch, metadata) in windows {
        let stem = format!("window-{start}");
        for file in store.write("examples", &stem, batch, metadata, &BTreeMap::new())? {
            rows += file.rows as u64;
            bytes += file.bytes;
            files += 1;
        }
        // As the job does: compact once the bound of settled windows passes an hour
        // (compaction reads every commit record of the table).
        let settled_before = start - 2 * PARTITION_MS;
        if compacted_hours != Some(settled_before.div_euclid(PARTITION_MS)) {
            store.compact("examples", Some(settled_before))?;
            compacted_hours = Some(settled_before.div_euclid(PARTITION_MS));
        }
    }
    store.compact("examples", None)?;
    Ok((started.elapsed().as_secs_f64(), rows, bytes, files))
}

/// Opens the store at `path` for SQL and runs an aggregate; (seconds to open, seconds to
/// run, rows counted).
fn query(path: &str) -> Result<(f64, f64, i64), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let storage = open_storage(&StoreConfig {
        path: PathBuf::from(path),
        ..StoreConfig::default()
    })?;
    let readable = ReadableStore::of(&storage)?;
    let mut ctx = QueryContext::open(readable.root())?;
    let opened = started.elapsed().as_secs_f64();
    let df = ctx.run(
        "SELECT scenario, count(*) AS n, avg(CAST(clicked AS DOUBLE)) AS ctr FROM examples GROUP BY scenario",
    )?;
    let counts = df.column("n")?.cast(&polars::prelude::DataType::Int64)?;
    let counts = counts.i64()?;
    let n: i64 = (0..counts.len()).filter_map(|i| counts.get(i)).sum();
    Ok((opened, started.elapsed().as_secs_f64() - opened, n))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [local, s3, rows, rounds] = args.as_slice() else {
        return Err("usage: store_backends LOCAL_DIR S3_URL ROWS ROUNDS".into());
    };
    let (rows, rounds): (u64, usize) = (rows.parse()?, rounds.parse()?);
    let windows = windows(rows)?;
    println!(
        "{} windows, {} example rows generated",
        windows.len(),
        windows.iter().map(|w| w.1.num_rows()).sum::<usize>()
    );
    println!("round backend  write_s  rows/s  MB/s  files  query_open_s  query_run_s  rows");
    for round in 0..rounds {
        for (backend, root) in [("local", local.as_str()), ("s3", s3.as_str())] {
            let path = format!("{}/round-{round}", root.trim_end_matches('/'));
            let (secs, written, bytes, files) = write(&path, &windows)?;
            let (open_s, run_s, counted) = query(&path)?;
            assert_eq!(
                counted as u64, written,
                "the query counts every row written"
            );
            println!(
                "{round:>5} {backend:<7} {secs:>8.2} {:>7.0} {:>5.1} {files:>6} {open_s:>13.3} {run_s:>12.3} {counted}",
                written as f64 / secs,
                bytes as f64 / secs / 1e6,
            );
        }
    }
    Ok(())
}
