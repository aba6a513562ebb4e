//! The `shopstream` command line: parses arguments, loads configuration, sets up logging,
//! and hands each command to its file under `cmd/` (one file per command family), which
//! calls into the stage crates. Exit codes: 0 success, 1 runtime failure, 2 bad
//! configuration or usage.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use shopstream_config::{Config, ConfigError};

mod cmd;
mod cpu;

use cmd::{check_config, demo, drift, generate, import, model, progress, run, store};

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
    /// `shopstream=debug,rdkafka=warn`), default `info,object_store=warn` (the object
    /// store client logs each retried request at info; shopstream warns once per request).
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
    Run(run::RunArgs),
    /// Publish synthetic shop traffic (from a known ground-truth model) to the input topics.
    Generate(generate::GenerateArgs),
    /// One-command tour: generate about two hours of traffic, run the pipeline on an
    /// embedded Kafka cluster (or kafka.brokers if set) until caught up, print a summary.
    Demo(demo::DemoArgs),
    /// Validate a configuration file: print the effective configuration (secrets masked),
    /// or every problem found and exit with status 2.
    CheckConfig(check_config::CheckConfigArgs),
    /// Work with the model offline.
    #[command(subcommand)]
    Model(model::ModelCommand),
    /// Publish an external event log (CSV or JSON lines) onto the input topics as contract
    /// events, through a declarative mapping (docs/mappings.md).
    Import(import::ImportArgs),
    /// SQL over the Parquet store (polars): every table with committed files, hive
    /// partition columns date and hour, output as a table, CSV, JSON lines or Parquet.
    Query(store::QueryArgs),
    /// Point-in-time training set: for each spine row (key, ts, labels...) the latest
    /// features of the key strictly before ts (as-of join over the examples table).
    TrainingSet(store::TrainingSetArgs),
    /// Rebuild the store for a historical range from the input topics (a throw-away
    /// consumer group; nothing is committed or published). Files of windows starting in
    /// [--from, --to) are written, identical to what the live run wrote.
    Replay(store::ReplayArgs),
    /// Store maintenance.
    #[command(subcommand)]
    Store(store::StoreCommand),
    /// Drift monitoring: the HTML report over the store, and the detection benchmark.
    #[command(subcommand)]
    Drift(drift::DriftCommand),
}

fn main() -> ExitCode {
    cpu::exit_unless_supported();
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
            let user_error = error.downcast_ref::<ConfigError>().is_some()
                || error
                    .downcast_ref::<shopstream_ingest::mapping::MappingError>()
                    .is_some();
            if user_error || user_query_error {
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
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,object_store=warn"));
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
        return Ok(check_config::check_config(&args.file));
    }
    let config = Config::load(cli.config.as_deref())?;
    // Progress bars of long commands: on a terminal, with text logs.
    let bar = progress::bar_allowed(matches!(cli.log_format, LogFormat::Text));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Run(args) => run::run(config, args).await,
            Command::Generate(args) => generate::generate_cmd(config, args).await,
            Command::Demo(args) => demo::demo_cmd(config, args).await,
            Command::Model(model::ModelCommand::Quality(args)) => {
                model::quality_cmd(config, args, bar)
            }
            Command::Model(model::ModelCommand::Evaluate(args)) => {
                model::evaluate_cmd(config, args, bar)
            }
            Command::Model(model::ModelCommand::Explain(args)) => model::explain_cmd(config, args),
            Command::Model(model::ModelCommand::Inspect(args)) => model::inspect_cmd(&args.file),
            Command::Import(args) => import::import_cmd(config, args, bar).await,
            Command::Query(args) => store::query_cmd(&config, args),
            Command::TrainingSet(args) => store::training_set_cmd(&config, args),
            Command::Replay(args) => store::replay_cmd(config, args, bar).await,
            Command::Store(store::StoreCommand::Compact(args)) => store::compact_cmd(&config, args),
            Command::Store(store::StoreCommand::Tables(args)) => store::tables_cmd(&config, args),
            Command::Store(store::StoreCommand::Expire(args)) => store::expire_cmd(&config, args),
            Command::Store(store::StoreCommand::Forget(args)) => store::forget_cmd(&config, args),
            Command::Drift(drift::DriftCommand::Report(args)) => drift::report_cmd(&config, args),
            Command::Drift(drift::DriftCommand::Bench(args)) => {
                drift::bench_cmd(&config, args, bar)
            }
            Command::CheckConfig(_) => unreachable!("handled above"),
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
