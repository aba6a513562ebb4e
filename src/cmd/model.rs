//! `shopstream model`: the quality benchmark and model-file inspection.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use shopstream_config::Config;
use shopstream_ingest::generator::GeneratorOptions;

#[derive(Subcommand, Debug)]
pub(crate) enum ModelCommand {
    /// Quality benchmark without Kafka: generated traffic -> features -> the joint model and
    /// single-task smartcore baselines, all prequential (predict, then train), compared with
    /// the generator's true probabilities; prints AUC per task and scenario.
    Quality(QualityArgs),
    /// Print a model file's header: version, sizes, training counts and the last window's
    /// prequential metrics (the file is written at stop when model.path is set).
    Inspect(InspectArgs),
}

#[derive(Args, Debug)]
pub(crate) struct InspectArgs {
    /// The model file.
    pub(crate) file: PathBuf,
}

#[derive(Args, Debug)]
pub(crate) struct QualityArgs {
    /// Impressions to evaluate (about 4/3 as many events are generated).
    #[arg(long, default_value_t = 2_000_000)]
    pub(crate) impressions: u64,
    /// Seed of the traffic.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Also write the report as JSON here.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
    /// Also write the example stream in Vowpal Wabbit text format here (for
    /// scripts/vw_compare.py).
    #[arg(long)]
    pub(crate) vw_out: Option<PathBuf>,
}

pub(crate) fn quality_cmd(config: Config, args: QualityArgs, bar: bool) -> Result<()> {
    let options = shopstream_trainer::quality::QualityOptions {
        generator: GeneratorOptions {
            seed: args.seed,
            max_events: Some(args.impressions.saturating_mul(4) / 3),
            ..GeneratorOptions::default()
        },
        model: config.model.clone(),
        pipeline: config.pipeline.clone(),
        baselines: Default::default(),
        vw_out: args.vw_out.clone(),
    };
    let started = std::time::Instant::now();
    let mut line = super::progress::ProgressLine::new("model quality", bar);
    let target = args.impressions.max(1) as f64;
    let report = shopstream_trainer::quality::run_quality_with_progress(&options, &mut |n| {
        line.update("scoring", n, "impressions", Some(n as f64 / target));
    })
    .with_context(|| format!("writing {:?}", args.vw_out))?;
    line.finish();
    print!("{}", report.render());
    println!("wall time {:.1} s", started.elapsed().as_secs_f64());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

pub(crate) fn inspect_cmd(file: &Path) -> Result<()> {
    let header = shopstream_trainer::model_file::read_header(file)?;
    let floats: usize = header.blocks.iter().map(|(_, n)| n).sum();
    println!("model file:        {}", file.display());
    println!(
        "model version:     {} (windows trained on)",
        header.model_version
    );
    println!("trained examples:  {}", header.trained_examples);
    println!(
        "adam steps:        {} (towers), {} (demand head)",
        header.steps, header.demand_steps
    );
    let c = &header.config;
    println!(
        "network:           8 fields x {} embedding dims, 2^{} rows; shared {} -> {}; heads ctr, cvr, value; demand head",
        c.embedding_dim, c.embedding_bits, c.hidden1, c.hidden2
    );
    println!(
        "parameters:        {floats} f64 values incl. optimiser state ({:.1} MiB)",
        floats as f64 * 8.0 / 1048576.0
    );
    for (name, n) in &header.blocks {
        println!("  {name:<24} {n}");
    }
    match &header.last_window {
        Some(m) => println!("last window:       {}", serde_json::to_string(m)?),
        None => println!("last window:       none trained"),
    }
    Ok(())
}
