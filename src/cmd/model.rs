//! `shopstream model`: the quality benchmark, evaluation on a store's examples and
//! model-file inspection.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use shopstream_config::Config;
use shopstream_features::{Example, examples_from_batch};
use shopstream_ingest::event::Scenario;
use shopstream_ingest::generator::GeneratorOptions;
use shopstream_sinks::manifest::LiveFile;
use shopstream_sinks::read;
use shopstream_sinks::storage::Storage;
use shopstream_sinks::store::open_storage;
use shopstream_trainer::VwLabel;
use shopstream_trainer::evaluate::{EvaluateOptions, evaluate, train_holding_out};
use shopstream_trainer::explain::{self, permutation_importance};
use shopstream_trainer::quality::QualityReport;

#[derive(Subcommand, Debug)]
pub(crate) enum ModelCommand {
    /// Quality benchmark without Kafka: generated traffic -> features -> the joint model and
    /// single-task smartcore baselines, all prequential (predict, then train), compared with
    /// the generator's true probabilities; prints AUC per task and scenario.
    Quality(QualityArgs),
    /// Prequential evaluation on a store's `examples` table (an imported real log, say):
    /// a fresh joint model and the smartcore baselines score each training window before
    /// they learn from it, in the groups and order the job trained them; prints AUC per
    /// task and scenario. `--vw-out` writes the same examples for scripts/vw-compare.sh.
    Evaluate(EvaluateArgs),
    /// Permutation importance on a store's examples: a fresh model trains on all but the
    /// last training windows, then each input (id field or dense input) is shuffled over
    /// those held-out windows with a seeded shuffle; prints the AUC each task loses, over
    /// all impressions and per scenario (`scenario` includes the scenario conditioning).
    Explain(ExplainArgs),
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
pub(crate) struct EvaluateArgs {
    /// Store root: a directory or a bucket URL such as s3://bucket/prefix (default:
    /// store.path of the configuration). The model and the window settings are the
    /// configuration's (`[model]`, `[pipeline]`).
    #[arg(long)]
    pub(crate) store: Option<PathBuf>,
    /// Also write the report as JSON here.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
    /// Also write the examples in Vowpal Wabbit text format here, in the order evaluated
    /// (for scripts/vw-compare.sh).
    #[arg(long)]
    pub(crate) vw_out: Option<PathBuf>,
    /// The label of the `--vw-out` stream.
    #[arg(long, value_enum, default_value_t = VwLabelArg::Conversion)]
    pub(crate) vw_label: VwLabelArg,
}

#[derive(Args, Debug)]
pub(crate) struct ExplainArgs {
    /// Store root: a directory or a bucket URL such as s3://bucket/prefix (default:
    /// store.path of the configuration). The model settings are the configuration's.
    #[arg(long)]
    pub(crate) store: Option<PathBuf>,
    /// Training windows held out at the end of the store and measured on.
    #[arg(long, default_value_t = 30)]
    pub(crate) windows: usize,
    /// Seed of the shuffles.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Also write every figure (input, task, scenario, n, AUC, drop) as JSON here.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
}

/// The label of a Vowpal Wabbit stream.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub(crate) enum VwLabelArg {
    /// Clicked (compare with the ctr rows).
    Click,
    /// Converted, over every impression (compare with the ctcvr rows; on clicked lines
    /// alone, with the cvr rows).
    Conversion,
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
    print_report(&report, started, args.json.as_deref())
}

/// Prints a quality table and the wall time since `started`; also writes it as JSON to
/// `json` when given.
fn print_report(
    report: &QualityReport,
    started: std::time::Instant,
    json: Option<&Path>,
) -> Result<()> {
    print!("{}", report.render());
    println!("wall time {:.1} s", started.elapsed().as_secs_f64());
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_string_pretty(report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

pub(crate) fn evaluate_cmd(config: Config, args: EvaluateArgs, bar: bool) -> Result<()> {
    let (storage, files, shown) = examples_files(&config, args.store.clone())?;
    let total: u64 = files.iter().map(|f| f.rows).sum();
    let options = EvaluateOptions {
        model: config.model.clone(),
        pipeline: config.pipeline.clone(),
        baselines: Default::default(),
        vw_out: args.vw_out.clone().map(|path| {
            let label = match args.vw_label {
                VwLabelArg::Click => VwLabel::Click,
                VwLabelArg::Conversion => VwLabel::Conversion,
            };
            (path, label)
        }),
    };
    let started = std::time::Instant::now();
    let mut line = super::progress::ProgressLine::new("model evaluate", bar);
    let report = evaluate(
        examples_in_time_order(&storage, &files),
        &options,
        &mut |n| {
            line.update(
                "scoring",
                n,
                "examples",
                Some(n as f64 / total.max(1) as f64),
            );
        },
    )?;
    line.finish();
    println!("store {shown}: {} examples in {} files", total, files.len());
    print_report(&report, started, args.json.as_deref())
}

pub(crate) fn explain_cmd(config: Config, args: ExplainArgs) -> Result<()> {
    let (storage, files, shown) = examples_files(&config, args.store.clone())?;
    let options = EvaluateOptions {
        model: config.model.clone(),
        pipeline: config.pipeline.clone(),
        baselines: Default::default(),
        vw_out: None,
    };
    let held_out = args.windows.max(1);
    let (trainer, sample) =
        train_holding_out(examples_in_time_order(&storage, &files), &options, held_out)?;
    if trainer.trained_examples() == 0 {
        bail!(
            "every training window of the store {shown} is among the last --windows {held_out}: \
             nothing is left to train on; give a smaller --windows"
        );
    }
    let rows = permutation_importance(&trainer, &sample, args.seed);
    println!(
        "store {shown}: model trained on {} examples; importance on the last {held_out} \
         training window(s), {} examples (seed {})",
        trainer.trained_examples(),
        sample.len(),
        args.seed
    );
    for task in ["ctr", "cvr", "ctcvr"] {
        print!("{}", explain::render(&rows, task, "all"));
    }
    for scenario in Scenario::ALL {
        print!("{}", explain::render(&rows, "ctr", scenario.as_str()));
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&rows)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// The store at `store` (or `store.path`), its committed `examples` files and its
/// location for messages; an error that says what to do when there are none.
fn examples_files(
    config: &Config,
    store: Option<PathBuf>,
) -> Result<(Storage, Vec<LiveFile>, String)> {
    let mut store_config = config.store.clone();
    store_config.path = super::store::root(config, store);
    let shown = store_config.path.display().to_string();
    let storage =
        open_storage(&store_config).with_context(|| format!("cannot open the store {shown}"))?;
    storage.check()?;
    let files = read::table_files(&storage, "examples")?;
    if files.is_empty() {
        bail!(
            "the store {shown} has no committed `examples` files: run the job on the log first \
             (`shopstream import` then `shopstream run --stop-at-end`)"
        );
    }
    Ok((storage, files, shown))
}

/// The examples of `files`, an hour partition at a time (partitions are hours of event
/// time, and their paths sort in time order), each hour sorted by (ts, event_id): the
/// store keeps a file's rows sorted by user for readers, not in the order they were
/// trained.
fn examples_in_time_order<'a>(
    storage: &'a Storage,
    files: &'a [LiveFile],
) -> impl Iterator<Item = Result<Example>> + 'a {
    let hour = |f: &LiveFile| {
        f.relative
            .rsplit_once('/')
            .map_or(String::new(), |(dir, _)| dir.to_string())
    };
    files
        .chunk_by(move |a, b| hour(a) == hour(b))
        .flat_map(move |partition| {
            // The hour's rows, or its error, without copying them into another vector.
            let (rows, error) = match read_hour(storage, partition) {
                Ok(rows) => (rows, None),
                Err(e) => (Vec::new(), Some(e)),
            };
            rows.into_iter().map(Ok).chain(error.map(Err))
        })
}

fn read_hour(storage: &Storage, files: &[LiveFile]) -> Result<Vec<Example>> {
    let mut rows = Vec::new();
    for file in files {
        let (_, batches) = read::read_object(storage, &file.key)?;
        for batch in &batches {
            rows.extend(
                examples_from_batch(batch)
                    .with_context(|| format!("reading {}", file.path.display()))?,
            );
        }
    }
    rows.sort_by(|a, b| (a.ts, &a.event_id).cmp(&(b.ts, &b.event_id)));
    Ok(rows)
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
    if header.inputs.is_empty() {
        println!(
            "inputs:            not listed (an older build's file; this build cannot load it)"
        );
    } else {
        println!("inputs:            {}", header.inputs.join(", "));
    }
    match &header.last_window {
        Some(m) => println!("last window:       {}", serde_json::to_string(m)?),
        None => println!("last window:       none trained"),
    }
    Ok(())
}
