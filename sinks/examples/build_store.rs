//! Builds a large example store without Kafka, for the query benchmark
//! (`scripts/bench-query.sh`): generated traffic -> the feature pipeline -> the store
//! writer, window by window, with hour compaction, exactly as the job writes it.
//!
//! `cargo run --release -p shopstream-sinks --example build_store -- STORE_DIR ROWS`

use std::collections::BTreeMap;
use std::time::Instant;

use shopstream_config::{PipelineConfig, StoreConfig};
use shopstream_features::FeaturePipeline;
use shopstream_features::{examples_batch, examples_metadata};
use shopstream_ingest::generator::{Generator, GeneratorOptions, world::WorldSize};
use shopstream_sinks::store::ParquetStore;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(root), Some(rows)) = (args.next(), args.next()) else {
        return Err("usage: build_store STORE_DIR ROWS".into());
    };
    let rows: u64 = rows.parse()?;
    let store = ParquetStore::open(&StoreConfig {
        path: root.into(),
        ..StoreConfig::default()
    })?;
    let pipeline_config = PipelineConfig::default();
    let mut pipeline = FeaturePipeline::new(&pipeline_config);
    // About 0.75 impressions per event.
    let mut generator = Generator::new(GeneratorOptions {
        seed: 5,
        max_events: Some(rows * 4 / 3 + 10_000),
        sessions_per_sec: 6.0,
        size: WorldSize {
            users: 200_000,
            items: 20_000,
            categories: 60,
        },
        ..GeneratorOptions::default()
    });
    let started = Instant::now();
    let mut written = 0u64;
    let mut write =
        |window: shopstream_features::WindowOutput| -> Result<(), Box<dyn std::error::Error>> {
            if window.examples.is_empty() || written >= rows {
                return Ok(());
            }
            let batch = examples_batch(&window.examples)?;
            let metadata = examples_metadata(window.start, window.end);
            let stem = format!("window-{}", window.start);
            for file in store.write("examples", &stem, &batch, &metadata, &BTreeMap::new())? {
                written += file.rows as u64;
            }
            store.compact("examples", Some(window.start - 2 * 3_600_000))?;
            Ok(())
        };
    for (meta, event) in generator.decoded() {
        if pipeline.ingest(meta, event).is_err() {
            continue;
        }
        for window in pipeline.close_ready() {
            write(window)?;
        }
    }
    for window in pipeline.finish() {
        write(window)?;
    }
    store.compact("examples", None)?;
    println!(
        "{written} example rows written in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
