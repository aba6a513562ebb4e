//! The `shopstream` command line: parses arguments, loads configuration, sets up logging,
//! and calls into the library. Exit codes: 0 success, 1 runtime failure, 2 bad
//! configuration or usage.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use shopstream::{demo, generate, pipeline, shutdown_signal};
use shopstream_config::{Config, ConfigError};
use shopstream_ingest::event::Millis;
use shopstream_ingest::generator::{
    DEFAULT_START_MS, DriftKind, GeneratorOptions, world::WorldSize,
};

mod drift_cli;
mod store_cli;

#[derive(Parser, Debug)]
#[command(
    name = "shopstream",
    version,
    about = "Stream processing for e-commerce behaviour: Kafka in; features, a continuously trained model, a Parquet feature store and predictions out.",
    long_about = "Stream processing for e-commerce behaviour.\n\n\
        Reads shop.clicks, shop.orders and shop.inventory (JSON, contract in docs/topic-contract.md), \
        builds point-in-time features in event-time windows, trains a model window by window, publishes \
        one prediction per impression to shop.predictions, writes training examples to a Parquet store, \
        and dead-letters every bad message with a reason.\n\n\
        Configuration: defaults < --config FILE < SHOPSTREAM__SECTION__KEY environment variables. \
        Every key is documented in config/shopstream.example.toml."
)]
struct Cli {
    /// TOML configuration file (see config/shopstream.example.toml). Without it, defaults
    /// and SHOPSTREAM__* environment variables apply.
    #[arg(long, short, global = true, env = "SHOPSTREAM_CONFIG")]
    config: Option<PathBuf>,

    /// Log format on stderr. The level comes from SHOPSTREAM_LOG (for example `debug` or
    /// `shopstream=debug,rdkafka=warn`), default `info`.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the pipeline: consume the three input topics, publish predictions, write the
    /// store. Runs until SIGINT/SIGTERM (or, with --stop-at-end, until caught up).
    Run(RunArgs),
    /// Publish synthetic shop traffic (from a known ground-truth model) to the input topics.
    Generate(GenerateArgs),
    /// One-command tour: generate about two hours of traffic, run the pipeline on an
    /// embedded Kafka cluster (or kafka.brokers if set) until caught up, print a summary.
    Demo(DemoArgs),
    /// Validate a configuration file: print the effective configuration (secrets masked),
    /// or every problem found and exit with status 2.
    CheckConfig(CheckConfigArgs),
    /// Work with the model offline.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Publish an external event log onto the input topics as contract events.
    #[command(subcommand)]
    Import(ImportCommand),
    /// SQL over the Parquet store (polars): every table with committed files, hive
    /// partition columns date and hour, output as a table, CSV, JSON lines or Parquet.
    Query(store_cli::QueryArgs),
    /// Point-in-time training set: for each spine row (key, ts, labels...) the latest
    /// features of the key strictly before ts (as-of join over the examples table).
    TrainingSet(store_cli::TrainingSetArgs),
    /// Rebuild the store for a historical range from the input topics (a throw-away
    /// consumer group; nothing is committed or published). Files of windows starting in
    /// [--from, --to) are written, identical to what the live run wrote.
    Replay(store_cli::ReplayArgs),
    /// Store maintenance.
    #[command(subcommand)]
    Store(store_cli::StoreCommand),
    /// Drift monitoring: the HTML report over the store, and the detection benchmark.
    #[command(subcommand)]
    Drift(drift_cli::DriftCommand),
}

#[derive(Subcommand, Debug)]
enum ImportCommand {
    /// The public Taobao UserBehavior CSV (`user_id,item_id,category_id,behavior,timestamp`,
    /// behavior pv|cart|fav|buy, epoch seconds; rows need not be sorted). pv becomes an
    /// impression plus a click in product_detail, cart add_to_cart, fav favorite, buy a
    /// one-line order; each item gets an inventory snapshot with its category. Unreadable
    /// rows are listed, not published. Mapping: docs/taobao-import.md.
    Taobao(TaobaoArgs),
}

#[derive(Args, Debug)]
struct TaobaoArgs {
    /// The CSV file.
    file: PathBuf,
    /// Also write the import report as JSON here.
    #[arg(long)]
    report_json: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum ModelCommand {
    /// Quality benchmark without Kafka: generated traffic -> features -> the joint model and
    /// single-task smartcore baselines, all prequential (predict, then train), compared with
    /// the generator's true probabilities; prints AUC per task and scenario.
    Quality(QualityArgs),
    /// Print a model file's header: version, sizes, training counts and the last window's
    /// prequential metrics (the file is written at stop when model.path is set).
    Inspect(InspectArgs),
}

#[derive(Args, Debug)]
struct InspectArgs {
    /// The model file.
    file: PathBuf,
}

#[derive(Args, Debug)]
struct QualityArgs {
    /// Impressions to evaluate (about 4/3 as many events are generated).
    #[arg(long, default_value_t = 2_000_000)]
    impressions: u64,
    /// Seed of the traffic.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Also write the example stream in Vowpal Wabbit text format here (for
    /// scripts/vw_compare.py).
    #[arg(long)]
    vw_out: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Stop once everything that was in the input topics at start has been processed,
    /// instead of waiting for more (backfills, tests).
    #[arg(long)]
    stop_at_end: bool,
    /// Also write the run summary (counts per topic, reason, output) as JSON to this file.
    #[arg(long)]
    summary_json: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
struct TrafficArgs {
    /// Seed of every random choice; the same seed and options give the same messages.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Stop starting new sessions after this many valid events (sessions under way still
    /// finish, so the total may be slightly higher).
    #[arg(long, default_value_t = 100_000)]
    events: u64,
    /// Stop starting sessions after this much event time (for example 90m, 2h, 7d);
    /// combined with --events, whichever comes first.
    #[arg(long, value_parser = parse_duration_ms)]
    duration: Option<Millis>,
    /// Event time of the first event: RFC 3339 (2026-01-05T00:00:00Z) or epoch ms.
    #[arg(long, value_parser = parse_ts_ms)]
    start: Option<Millis>,
    /// Mean sessions per second of event time (about 9 events each): event time runs as
    /// fast as the producer can go, so days of history take minutes.
    #[arg(long, default_value_t = 1.5)]
    sessions_per_sec: f64,
    /// Number of users.
    #[arg(long, default_value_t = 5_000)]
    users: usize,
    /// Number of items.
    #[arg(long, default_value_t = 2_000)]
    items: usize,
    /// Number of categories.
    #[arg(long, default_value_t = 40)]
    categories: usize,
    /// Probability per valid message of adding a malformed one (broken JSON, invalid
    /// UTF-8, schema violations, out-of-range values), for dead-letter tests.
    #[arg(long, default_value_t = 0.0)]
    malformed_fraction: f64,
    /// Event time at which --drift starts: RFC 3339, epoch ms, or +DURATION after --start.
    #[arg(long, requires = "drift")]
    drift_at: Option<String>,
    /// Kind of drift injected at --drift-at.
    #[arg(long, value_enum, requires = "drift_at")]
    drift: Option<DriftArg>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DriftArg {
    /// Prices rise by 60 %; conversion falls through price sensitivity.
    PriceShock,
    /// Half of the sessions come from a new cohort with other tastes and devices.
    NewCohort,
    /// Home-feed click level +1.0 logit, push -0.8.
    CtrShift,
}

impl From<DriftArg> for DriftKind {
    fn from(arg: DriftArg) -> Self {
        match arg {
            DriftArg::PriceShock => DriftKind::PriceShock,
            DriftArg::NewCohort => DriftKind::NewCohort,
            DriftArg::CtrShift => DriftKind::CtrShift,
        }
    }
}

#[derive(Args, Debug)]
struct GenerateArgs {
    #[command(flatten)]
    traffic: TrafficArgs,
    /// Publish at most this many messages per wall-clock second (default: as fast as
    /// possible).
    #[arg(long)]
    rate: Option<f64>,
    /// Write every impression's true click and conversion probability (CSV) here.
    #[arg(long)]
    truth_out: Option<PathBuf>,
    /// Write the generator's report (counts per topic, malformed per reason) as JSON here.
    #[arg(long)]
    report_json: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct DemoArgs {
    /// Valid events to generate (about two hours of event time at the default rate).
    #[arg(long, default_value_t = 100_000)]
    events: u64,
    /// Seed of the generated traffic.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Fraction of malformed messages added, to show the dead-letter path.
    #[arg(long, default_value_t = 0.005)]
    malformed_fraction: f64,
    /// Store directory for the demo (a previous demo store there is replaced).
    #[arg(long, default_value = "demo-store")]
    store: PathBuf,
    /// Also write the full report as JSON to this file.
    #[arg(long)]
    summary_json: Option<PathBuf>,
    /// Run the job live (consumer group, as in production) while traffic is published at
    /// this many messages per second, instead of publishing first and catching up; the
    /// printed prediction latency is then live latency. Needs kafka.brokers (for example
    /// `make broker`).
    #[arg(long)]
    live_rate: Option<f64>,
}

#[derive(Args, Debug)]
struct CheckConfigArgs {
    /// The TOML file to check.
    file: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match dispatch(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {}", error_text(&error));
            let user_query_error = error
                .downcast_ref::<shopstream_sinks::query::QueryError>()
                .is_some_and(|e| {
                    !matches!(
                        e,
                        shopstream_sinks::query::QueryError::Output(_)
                            | shopstream_sinks::query::QueryError::Store(_)
                    )
                });
            if error.downcast_ref::<ConfigError>().is_some() || user_query_error {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// The error and its causes, each cause once: library errors often name their source in
/// their own message already.
fn error_text(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHOPSTREAM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn dispatch(cli: Cli) -> Result<ExitCode> {
    if let Command::CheckConfig(args) = &cli.command {
        return Ok(check_config(&args.file));
    }
    let config = Config::load(cli.config.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Run(args) => run(config, args).await,
            Command::Generate(args) => generate_cmd(config, args).await,
            Command::Demo(args) => demo_cmd(config, args).await,
            Command::Model(ModelCommand::Quality(args)) => quality_cmd(config, args),
            Command::Model(ModelCommand::Inspect(args)) => inspect_cmd(&args.file),
            Command::Import(ImportCommand::Taobao(args)) => import_cmd(config, args).await,
            Command::Query(args) => store_cli::query_cmd(&config, args),
            Command::TrainingSet(args) => store_cli::training_set_cmd(&config, args),
            Command::Replay(args) => store_cli::replay_cmd(config, args).await,
            Command::Store(store_cli::StoreCommand::Compact(args)) => {
                store_cli::compact_cmd(&config, args)
            }
            Command::Store(store_cli::StoreCommand::Tables(args)) => {
                store_cli::tables_cmd(&config, args)
            }
            Command::Drift(drift_cli::DriftCommand::Report(args)) => {
                drift_cli::report_cmd(&config, args)
            }
            Command::Drift(drift_cli::DriftCommand::Bench(args)) => {
                drift_cli::bench_cmd(&config, args)
            }
            Command::CheckConfig(_) => unreachable!("handled above"),
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

fn check_config(file: &Path) -> ExitCode {
    match Config::load(Some(file)) {
        Ok(config) => {
            println!(
                "# effective configuration of {} (defaults < file < environment)",
                file.display()
            );
            print!("{}", config.to_toml_masked());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(2)
        }
    }
}

async fn run(config: Config, args: RunArgs) -> Result<()> {
    let options = pipeline::RunOptions {
        stop_at_end: args.stop_at_end,
        ..Default::default()
    };
    // The shutdown bound starts when the signal arrives.
    let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        shutdown_signal().await;
        let _ = signalled_tx.send(());
    };
    let bound = std::time::Duration::from_secs(config.pipeline.shutdown_timeout_secs);
    let overdue = async move {
        if signalled_rx.await.is_err() {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(bound).await;
    };
    let run = pipeline::run(&config, options, shutdown);
    let summary = tokio::select! {
        summary = run => summary?,
        () = overdue => bail!(
            "the job did not drain, checkpoint and commit within pipeline.shutdown_timeout_secs = {} s of the signal; exiting (the last periodic checkpoint is used at the next start)",
            bound.as_secs()
        ),
    };
    print_summary(&summary, args.summary_json.as_deref())
}

/// Prints a run summary as pretty JSON, and writes it to `path` too if given.
fn print_summary(summary: &pipeline::RunSummary, path: Option<&std::path::Path>) -> Result<()> {
    let json = serde_json::to_string_pretty(summary)?;
    if let Some(path) = path {
        std::fs::write(path, &json).with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!("{json}");
    Ok(())
}

fn generator_options(t: &TrafficArgs) -> Result<GeneratorOptions> {
    if !(0.0..=0.5).contains(&t.malformed_fraction) {
        bail!(
            "--malformed-fraction {} must be within 0..=0.5",
            t.malformed_fraction
        );
    }
    if !(t.sessions_per_sec > 0.0 && t.sessions_per_sec.is_finite()) {
        bail!("--sessions-per-sec must be a positive number");
    }
    let start_ms = t.start.unwrap_or(DEFAULT_START_MS);
    let drift = match (&t.drift_at, t.drift) {
        (Some(at), Some(kind)) => {
            let at = match at.strip_prefix('+') {
                Some(offset) => start_ms + parse_duration_ms(offset).map_err(anyhow::Error::msg)?,
                None => parse_ts_ms(at).map_err(anyhow::Error::msg)?,
            };
            Some((at, DriftKind::from(kind)))
        }
        _ => None,
    };
    Ok(GeneratorOptions {
        seed: t.seed,
        start_ms,
        max_events: Some(t.events),
        duration_ms: t.duration,
        sessions_per_sec: t.sessions_per_sec,
        size: WorldSize {
            users: t.users.max(1),
            items: t.items.max(1),
            categories: t.categories.max(3),
        },
        malformed_fraction: t.malformed_fraction,
        drift,
    })
}

async fn generate_cmd(config: Config, args: GenerateArgs) -> Result<()> {
    let options = generator_options(&args.traffic)?;
    let report =
        generate::publish_traffic(&config, options, args.rate, args.truth_out.as_deref()).await?;
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &args.report_json {
        std::fs::write(path, &json).with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!("{json}");
    Ok(())
}

async fn demo_cmd(mut config: Config, args: DemoArgs) -> Result<()> {
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

fn quality_cmd(config: Config, args: QualityArgs) -> Result<()> {
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
    let report = shopstream_trainer::quality::run_quality(&options)
        .with_context(|| format!("writing {:?}", args.vw_out))?;
    print!("{}", report.render());
    println!("wall time {:.1} s", started.elapsed().as_secs_f64());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

async fn import_cmd(config: Config, args: TaobaoArgs) -> Result<()> {
    let file = std::fs::File::open(&args.file)
        .with_context(|| format!("cannot open {}", args.file.display()))?;
    let (messages, report) =
        shopstream_ingest::import::import_taobao(std::io::BufReader::new(file))
            .with_context(|| format!("cannot read {}", args.file.display()))?;
    for (line, reason) in report.rejected.iter().take(20) {
        eprintln!("warning: {}:{line}: skipped: {reason}", args.file.display());
    }
    if report.rejected.len() > 20 {
        eprintln!("warning: {} more rows skipped", report.rejected.len() - 20);
    }
    generate::publish_messages(&config, messages, None).await?;
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &args.report_json {
        std::fs::write(path, &json).with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!("{json}");
    Ok(())
}

fn inspect_cmd(file: &Path) -> Result<()> {
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

/// Parses `90s`, `15m`, `2h`, `7d` or plain milliseconds.
fn parse_duration_ms(text: &str) -> Result<Millis, String> {
    let text = text.trim();
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: Millis = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 90s, 15m, 2h or 7d"))?;
    let factor = match unit {
        "" | "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "`{text}`: unknown unit `{unit}` (use ms, s, m, h or d)"
            ));
        }
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("`{text}` is too long"))
}

/// Parses RFC 3339 with zone, or epoch milliseconds.
fn parse_ts_ms(text: &str) -> Result<Millis, String> {
    if let Ok(ms) = text.trim().parse::<Millis>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(text.trim())
        .map(|t| t.timestamp_millis())
        .map_err(|e| format!("`{text}` is neither RFC 3339 with zone nor epoch milliseconds: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_timestamps_parse() {
        assert_eq!(parse_duration_ms("2h"), Ok(7_200_000));
        assert_eq!(parse_duration_ms("90s"), Ok(90_000));
        assert!(parse_duration_ms("2 weeks").is_err());
        assert_eq!(parse_ts_ms("2026-01-05T00:00:00Z"), Ok(DEFAULT_START_MS));
        assert_eq!(parse_ts_ms("1767571200000"), Ok(DEFAULT_START_MS));
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
