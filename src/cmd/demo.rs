//! `shopstream demo`: generate, run and summarise on an embedded cluster.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use shopstream_config::Config;
use shopstream_ingest::generator::GeneratorOptions;
use shopstream_job::{demo, shutdown_signal};

#[derive(Args, Debug)]
pub(crate) struct DemoArgs {
    /// Valid events to generate (about two hours of event time at the default rate).
    #[arg(long, default_value_t = 100_000)]
    pub(crate) events: u64,
    /// Seed of the generated traffic.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Fraction of malformed messages added, to show the dead-letter path.
    #[arg(long, default_value_t = 0.005)]
    pub(crate) malformed_fraction: f64,
    /// Store directory for the demo (a previous demo store there is replaced).
    #[arg(long, default_value = "demo-store")]
    pub(crate) store: PathBuf,
    /// Also write the full report as JSON to this file.
    #[arg(long)]
    pub(crate) summary_json: Option<PathBuf>,
    /// Run the job live (consumer group, as in production) while traffic is published at
    /// this many messages per second, instead of publishing first and catching up; the
    /// printed prediction latency is then live latency. Needs kafka.brokers (for example
    /// `make broker`).
    #[arg(long)]
    pub(crate) live_rate: Option<f64>,
}

pub(crate) async fn demo_cmd(mut config: Config, args: DemoArgs) -> Result<()> {
    config.store.path = args.store.clone();
    let options = GeneratorOptions {
        seed: args.seed,
        max_events: Some(args.events),
        malformed_fraction: args.malformed_fraction,
        ..GeneratorOptions::default()
    };
    let report = demo::demo(config, options, args.live_rate, shutdown_signal()).await?;
    if let Some(path) = &args.summary_json {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json).with_context(|| format!("cannot write {}", path.display()))?;
    }
    print!("{}", demo::render(&report, &args.store));
    Ok(())
}
