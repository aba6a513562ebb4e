//! The store commands of the CLI: `query`, `training-set`, `replay` and `store compact`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use shopstream_config::Config;
use shopstream_ingest::event::Millis;
use shopstream_job::pipeline;
use shopstream_sinks::mirror::ReadableStore;
use shopstream_sinks::query::{self, OutputFormat, QueryContext, TrainingSetOptions};
use shopstream_sinks::store::{ParquetStore, open_storage};

#[derive(Args, Debug)]
pub struct QueryArgs {
    /// The SQL (polars dialect). Tables: examples, metrics, item_demand (those with
    /// committed files); hive columns `date` (a date) and `hour` (an integer) prune whole
    /// files, for example `WHERE date = '2026-01-05' AND hour = 3`.
    pub sql: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Print the optimized plan (which files and columns are read, which filters are
    /// pushed into the scan) instead of running the query.
    #[arg(long)]
    pub explain: bool,
    /// Write the result to this file instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Store root: a directory or a bucket URL such as s3://bucket/prefix (default:
    /// store.path of the configuration).
    #[arg(long)]
    pub store: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    /// Aligned text (long results are abbreviated; POLARS_FMT_MAX_ROWS=-1 shows all).
    Table,
    /// CSV with a header.
    Csv,
    /// JSON lines.
    Json,
    /// Parquet (use --out).
    Parquet,
}

impl From<Format> for OutputFormat {
    fn from(f: Format) -> Self {
        match f {
            Format::Table => OutputFormat::Table,
            Format::Csv => OutputFormat::Csv,
            Format::Json => OutputFormat::Json,
            Format::Parquet => OutputFormat::Parquet,
        }
    }
}

#[derive(Args, Debug)]
pub struct TrainingSetArgs {
    /// The spine: CSV (with a header) or Parquet with the key column, a `ts` column
    /// (RFC 3339 text, or a timestamp) and any other columns (labels), kept as they are.
    #[arg(long)]
    pub spine: PathBuf,
    /// Output file: `.parquet` or `.csv`.
    #[arg(long)]
    pub out: PathBuf,
    /// Entity key of the spine: user_id (user_* features) or item_id (item_* features).
    #[arg(long, default_value = "user_id")]
    pub key: String,
    /// Ignore feature snapshots older than this before a spine row (for example 7d).
    #[arg(long, default_value = "7d", value_parser = super::parse::parse_duration_ms)]
    pub max_age: Millis,
    /// Store root: a directory or a bucket URL such as s3://bucket/prefix (default:
    /// store.path of the configuration).
    #[arg(long)]
    pub store: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// First window start to rebuild: RFC 3339 or epoch ms.
    #[arg(long, value_parser = super::parse::parse_ts_ms)]
    pub from: Millis,
    /// End of the range (exclusive): RFC 3339 or epoch ms.
    #[arg(long, value_parser = super::parse::parse_ts_ms)]
    pub to: Millis,
    /// Write into this store instead of store.path (to compare with, or to swap in for,
    /// the live store).
    #[arg(long)]
    pub store: Option<PathBuf>,
    /// Only process events from this long before --from (for example 7d, the longest
    /// feature horizon). Faster on long topics, but the model then starts untrained at
    /// the warm-up start, so prediction-dependent columns (the metrics table) differ from
    /// the live run's. Default: everything from the beginning of the topics, which gives
    /// files identical to the live run's.
    #[arg(long, value_parser = super::parse::parse_duration_ms)]
    pub warmup: Option<Millis>,
    /// Also write the run summary as JSON to this file.
    #[arg(long)]
    pub summary_json: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum StoreCommand {
    /// Merge each hour partition's files into one (what store.compact_closed_hours does
    /// as the job goes), for every table or one; first delete files no commit names
    /// (left by a crash). Do not run it while a job writes to the same store.
    Compact(CompactArgs),
    /// List the tables with their committed files and rows.
    Tables(TablesArgs),
    /// Expire whole hour partitions past the retention horizon: a commit record hides
    /// each from readers, then its files are deleted (crash-safe: rerun, or the job's
    /// start, finishes an interrupted expiry). The job does the same by event time as
    /// hours settle when store.retention_days is set.
    Expire(ExpireArgs),
    /// Erase users: every visible file holding their rows (tables with a user_id column)
    /// is rewritten without them and committed as replacing the old one, which is then
    /// deleted. Crash-safe and idempotent: rerun the same command after an interruption.
    /// The request is recorded under _erasures/ first: a job on the store drops these
    /// users' keyed state when it starts, or at its next checkpoint. Run it with no job
    /// writing to the store.
    Forget(ForgetArgs),
}

#[derive(Args, Debug)]
pub struct ForgetArgs {
    /// A user id to erase (repeat for several). With privacy.enabled, the raw id: it is
    /// pseudonymised with the key from privacy.key_env, as the job does.
    #[arg(long = "user", value_name = "ID", required = true)]
    pub users: Vec<String>,
    /// Only list the files that would be rewritten.
    #[arg(long)]
    pub dry_run: bool,
    /// Only this table.
    #[arg(long)]
    pub table: Option<String>,
    /// Store root: a directory or a bucket URL such as s3://bucket/prefix (default:
    /// store.path of the configuration).
    #[arg(long)]
    pub store: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ExpireArgs {
    /// Keep this many days before --as-of (default: store.retention_days).
    #[arg(long)]
    pub days: Option<u32>,
    /// The time the horizon counts back from: RFC 3339 with zone, or epoch ms (default:
    /// now, wall clock).
    #[arg(long, value_parser = super::parse::parse_ts_ms)]
    pub as_of: Option<Millis>,
    /// Only list the partitions that would be expired.
    #[arg(long)]
    pub dry_run: bool,
    /// Only this table.
    #[arg(long)]
    pub table: Option<String>,
    /// Store root: a directory or a bucket URL such as s3://bucket/prefix (default:
    /// store.path of the configuration).
    #[arg(long)]
    pub store: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct CompactArgs {
    /// Only this table.
    #[arg(long)]
    pub table: Option<String>,
    /// Store root: a directory or a bucket URL such as s3://bucket/prefix (default:
    /// store.path of the configuration).
    #[arg(long)]
    pub store: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct TablesArgs {
    /// Store root: a directory or a bucket URL such as s3://bucket/prefix (default:
    /// store.path of the configuration).
    #[arg(long)]
    pub store: Option<PathBuf>,
}

pub(crate) fn root(config: &Config, store: Option<PathBuf>) -> PathBuf {
    store.unwrap_or_else(|| config.store.path.clone())
}

/// The store at `--store` (or `store.path`) as local files for the readers: its
/// directory, or a temporary copy of a bucket store's committed state (`store.options`
/// and the environment give the bucket's credentials).
pub(crate) fn readable(config: &Config, store: Option<PathBuf>) -> Result<ReadableStore> {
    Ok(readable_shown(config, store)?.0)
}

/// [`readable`], and the store's location as the user gave it (for messages: a bucket's
/// copy lives in a temporary directory).
fn readable_shown(config: &Config, store: Option<PathBuf>) -> Result<(ReadableStore, PathBuf)> {
    let shown = root(config, store.clone());
    Ok((readable_inner(config, store)?, shown))
}

/// The store opened for SQL; an empty store is reported at the location given.
fn open_query(store: &ReadableStore, shown: &Path) -> Result<QueryContext, query::QueryError> {
    QueryContext::open(store.root()).map_err(|e| match e {
        query::QueryError::EmptyStore { .. } => query::QueryError::EmptyStore {
            root: shown.to_path_buf(),
        },
        other => other,
    })
}

fn readable_inner(config: &Config, store: Option<PathBuf>) -> Result<ReadableStore> {
    let mut store_config = config.store.clone();
    store_config.path = root(config, store);
    let storage = open_storage(&store_config)
        .with_context(|| format!("cannot open the store {}", store_config.path.display()))?;
    storage.check()?;
    Ok(ReadableStore::of(&storage)?)
}

fn output(out: Option<&Path>) -> Result<Box<dyn Write>> {
    Ok(match out {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    })
}

pub fn query_cmd(config: &Config, args: QueryArgs) -> Result<()> {
    let (store, shown) = readable_shown(config, args.store)?;
    let mut ctx = open_query(&store, &shown)?;
    let mut out = output(args.out.as_deref())?;
    if args.explain {
        let plan = ctx.explain(&args.sql)?;
        writeln!(out, "{plan}")?;
    } else {
        if matches!(args.format, Format::Parquet) && args.out.is_none() {
            bail!("--format parquet writes binary data: give --out FILE");
        }
        let mut df = ctx.run(&args.sql)?;
        query::write_output(&mut df, args.format.into(), &mut out)?;
    }
    out.flush()?;
    Ok(())
}

pub fn tables_cmd(config: &Config, args: TablesArgs) -> Result<()> {
    let (store, shown) = readable_shown(config, args.store)?;
    let ctx = open_query(&store, &shown)?;
    println!("{:<14} {:>7} {:>12}", "table", "files", "rows");
    for table in ctx.tables() {
        println!("{:<14} {:>7} {:>12}", table.name, table.files, table.rows);
    }
    Ok(())
}

pub fn training_set_cmd(config: &Config, args: TrainingSetArgs) -> Result<()> {
    let store = readable(config, args.store)?;
    let spine = query::read_spine(&args.spine)?;
    let options = TrainingSetOptions {
        key: args.key,
        max_age_ms: args.max_age,
    };
    let mut df = query::training_set(store.root(), spine, &options)?;
    let format = match args.out.extension().and_then(|e| e.to_str()) {
        Some("parquet") => OutputFormat::Parquet,
        Some("csv") => OutputFormat::Csv,
        _ => bail!("--out {} must end in .parquet or .csv", args.out.display()),
    };
    let mut out = output(Some(&args.out))?;
    query::write_output(&mut df, format, &mut out)?;
    out.flush()?;
    let matched = df
        .column("features_ts")
        .map(|c| c.len() - c.null_count())
        .unwrap_or(0);
    eprintln!(
        "training set: {} spine rows, {matched} with features, written to {}",
        df.height(),
        args.out.display()
    );
    Ok(())
}

pub async fn replay_cmd(mut config: Config, args: ReplayArgs, bar: bool) -> Result<()> {
    if args.to <= args.from {
        bail!("--to must be after --from");
    }
    if let Some(store) = args.store {
        config.store.path = store;
    }
    let options = pipeline::RunOptions {
        stop_at_end: true,
        replay: Some(pipeline::ReplayRange {
            from_ms: args.from,
            to_ms: args.to,
            warmup_from_ms: args.warmup.map(|w| args.from - w),
        }),
    };
    let (progress, mut watched) = tokio::sync::watch::channel(pipeline::Progress::default());
    let display = tokio::spawn(async move {
        let mut line = super::progress::ProgressLine::new("replay", bar);
        while watched.changed().await.is_ok() {
            let consumed = watched.borrow_and_update().consumed;
            line.update("reading", consumed, "messages", None);
        }
        line.finish();
    });
    let summary = pipeline::run_observed(
        &config,
        options,
        shopstream_job::shutdown_signal(),
        progress,
    )
    .await;
    let _ = display.await;
    super::run::print_summary(&summary?, args.summary_json.as_deref())
}

pub fn expire_cmd(config: &Config, args: ExpireArgs) -> Result<()> {
    let Some(days) = args.days.or(config.store.retention_days) else {
        bail!("no retention: give --days N or set store.retention_days in the configuration");
    };
    if days == 0 {
        bail!("--days 0 would expire every hour up to --as-of; give at least 1");
    }
    let as_of = args
        .as_of
        .unwrap_or_else(|| chrono::Utc::now().timestamp_millis());
    let horizon = as_of.saturating_sub(i64::from(days) * 86_400_000);
    let mut store_config = config.store.clone();
    store_config.path = root(config, args.store);
    let store = ParquetStore::open(&store_config)?;
    let tables = match args.table {
        Some(table) => vec![table],
        None => shopstream_sinks::manifest::tables(store.storage())?,
    };
    let rfc3339 = |ms: Millis| {
        chrono::DateTime::from_timestamp_millis(ms).map_or(ms.to_string(), |t| t.to_rfc3339())
    };
    let verb = if args.dry_run {
        "would expire"
    } else {
        "expired"
    };
    let (mut partitions, mut rows) = (0, 0);
    for table in tables {
        for p in store.expire(&table, horizon, args.dry_run)? {
            println!(
                "{table} {}: {verb} {} file(s), {} row(s)",
                p.partition, p.files, p.rows
            );
            partitions += 1;
            rows += p.rows;
        }
    }
    println!(
        "{verb} {partitions} hour partition(s), {rows} row(s): the hours ending at or before {} ({days} day(s) before {})",
        rfc3339(horizon),
        rfc3339(as_of)
    );
    Ok(())
}

pub fn forget_cmd(config: &Config, args: ForgetArgs) -> Result<()> {
    if args.users.iter().any(|u| u.trim().is_empty()) {
        bail!("--user needs a non-empty id");
    }
    // With [privacy] on, the store holds pseudonyms: erase (and record) those.
    let users: std::collections::BTreeSet<String> =
        match shopstream_job::pipeline::privacy(&config.privacy)? {
            Some(privacy) => args.users.iter().map(|u| privacy.pseudonym(u)).collect(),
            None => args.users.into_iter().collect(),
        };
    let mut store_config = config.store.clone();
    store_config.path = root(config, args.store);
    let store = ParquetStore::open(&store_config)?;
    let tables = match args.table {
        Some(table) => vec![table],
        None => shopstream_sinks::manifest::tables(store.storage())?,
    };
    let verb = if args.dry_run {
        "would rewrite"
    } else {
        "rewrote"
    };
    if !args.dry_run {
        // First, so that a job started after an interrupted erasure drops their state.
        let key = shopstream_sinks::forget::record_erasure(store.storage(), &users)?;
        println!(
            "recorded {key}: a job on this store drops these users' keyed state when it starts, or at its next checkpoint"
        );
    }
    let (mut files, mut removed) = (0, 0);
    for table in tables {
        for f in store.forget(&table, &users, args.dry_run)? {
            let into = f.written.as_deref().unwrap_or("nothing (no other row)");
            println!(
                "{table} {}: {verb} into {into}: {} row(s), {} removed",
                f.replaced, f.rows_before, f.rows_removed
            );
            files += 1;
            removed += f.rows_removed;
        }
    }
    println!(
        "{verb} {files} file(s), {removed} row(s) of {} user(s) removed",
        users.len()
    );
    Ok(())
}

pub fn compact_cmd(config: &Config, args: CompactArgs) -> Result<()> {
    let mut store_config = config.store.clone();
    store_config.path = root(config, args.store);
    let store = ParquetStore::open(&store_config)?;
    let tables = match args.table {
        Some(table) => vec![table],
        None => shopstream_sinks::manifest::tables(store.storage())?,
    };
    for table in tables {
        let removed = store.vacuum(&table)?;
        if removed > 0 {
            println!("{table}: {removed} uncommitted file(s) deleted");
        }
        let commits = store.compact(&table, None)?;
        let replaced: usize = commits.iter().map(|c| c.replaces.len()).sum();
        println!(
            "{table}: {} hour partition(s) compacted, {replaced} file(s) merged",
            commits.len()
        );
    }
    Ok(())
}
