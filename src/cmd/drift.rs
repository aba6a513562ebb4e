//! The drift commands of the CLI: `drift report` (the HTML report over the store) and
//! `drift bench` (the acceptance benchmark of issue 7 on generator traffic, in process).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use shopstream_config::Config;
use shopstream_drift::bench::{self, BenchOptions};
use shopstream_drift::report::{self as drift_report, ReportOptions, format_ms};
use shopstream_ingest::event::Millis;
use shopstream_ingest::generator::DriftKind;

#[derive(Subcommand, Debug)]
pub enum DriftCommand {
    /// Write a self-contained HTML report (inline SVG plots) of a time range of the store:
    /// PSI per feature, label and prediction drift per scenario, AUC and log loss per task,
    /// alert markers and a table of the alert events.
    Report(ReportArgs),
    /// The acceptance benchmark: generator traffic -> features -> model -> drift monitors,
    /// in process (no Kafka). Each drift kind is injected at a known event time and the
    /// delay to its first alert is printed; a stationary run counts false alarms.
    Bench(BenchArgs),
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Start of the range (event time of the evidence): RFC 3339 or epoch ms.
    #[arg(long, value_parser = super::parse::parse_ts_ms)]
    pub from: Millis,
    /// End of the range (exclusive): RFC 3339 or epoch ms.
    #[arg(long, value_parser = super::parse::parse_ts_ms)]
    pub to: Millis,
    /// The HTML file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Store root: a directory or a bucket URL such as s3://bucket/prefix (default:
    /// store.path of the configuration).
    #[arg(long)]
    pub store: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Event time of the stationary run (no drift), for example 6h30m as 390m.
    #[arg(long, default_value = "390m", value_parser = super::parse::parse_duration_ms)]
    pub stationary: Millis,
    /// Onset of the injected drift, after the start of the traffic.
    #[arg(long, default_value = "3h", value_parser = super::parse::parse_duration_ms)]
    pub onset: Millis,
    /// How long each drift run goes on after its onset (at least the label maturity, so
    /// label and model alerts can be seen).
    #[arg(long, default_value = "60m", value_parser = super::parse::parse_duration_ms)]
    pub after: Millis,
    /// Mean sessions per second of generated traffic (about 7 impressions each; default:
    /// the generator's, 1.5). Whether a one-window change is visible within 3 windows
    /// depends on how many impressions a window holds: see docs/drift.md.
    #[arg(long)]
    pub sessions_per_sec: Option<f64>,
    /// Seeds of the traffic; every kind and the stationary run are run per seed.
    #[arg(long = "seed", default_values_t = [1u64])]
    pub seeds: Vec<u64>,
    /// Only these drift kinds (default: all three).
    #[arg(long = "kind", value_enum)]
    pub kinds: Vec<super::generate::DriftArg>,
    /// Skip the stationary run.
    #[arg(long)]
    pub no_stationary: bool,
    /// Also write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write every drift statistic of every window (the rows the job writes to the
    /// store's `drift` table) as CSV into this directory, one file per run.
    #[arg(long)]
    pub rows_dir: Option<PathBuf>,
}

pub fn report_cmd(config: &Config, args: ReportArgs) -> Result<()> {
    let root = super::store::root(config, args.store.clone());
    let store = super::store::readable(config, args.store)?;
    let options = ReportOptions {
        root: store.root().to_path_buf(),
        from_ms: args.from,
        to_ms: args.to,
        metrics_shift_ms: config.pipeline.label_maturity_ms(),
        small_sample: config.drift.small_sample,
    };
    let data = drift_report::load(&options)
        .with_context(|| format!("cannot make the drift report from {}", root.display()))?;
    let html = drift_report::render(&data);
    std::fs::write(&args.out, &html)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    eprintln!(
        "drift report: {} windows, {} features, {} alert events, {} to {} -> {} ({} KiB)",
        data.drift_windows,
        data.psi.len() + data.js.len(),
        data.alerts.len(),
        format_ms(data.from_ms),
        format_ms(data.to_ms),
        args.out.display(),
        html.len() / 1024
    );
    Ok(())
}

pub fn bench_cmd(config: &Config, args: BenchArgs, bar: bool) -> Result<()> {
    let options = BenchOptions {
        stationary_ms: (!args.no_stationary).then_some(args.stationary),
        onset_ms: args.onset,
        after_ms: args.after,
        sessions_per_sec: args.sessions_per_sec,
        seeds: args.seeds,
        kinds: if args.kinds.is_empty() {
            DriftKind::ALL.to_vec()
        } else {
            args.kinds.iter().map(|k| DriftKind::from(*k)).collect()
        },
        rows_dir: args.rows_dir,
    };
    let mut line = super::progress::ProgressLine::new("drift bench", bar);
    let results = bench::run_with_progress(
        config,
        &options,
        &mut std::io::stdout().lock(),
        &mut |done, total| {
            line.update("running", done, "runs", Some(done as f64 / total as f64));
            // The bench prints its findings on stdout between runs: keep the bar on a
            // line of its own.
            line.finish();
        },
    )?;
    line.finish();
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&results)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let passed = results.iter().filter(|r| r.passed).count();
    if passed != results.len() {
        bail!(
            "{} of {} bench runs failed",
            results.len() - passed,
            results.len()
        );
    }
    Ok(())
}
