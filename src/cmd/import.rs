//! `shopstream import`: external event logs onto the input topics, through a mapping.

use std::cell::RefCell;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use shopstream_config::Config;
use shopstream_ingest::import::{ImportReport, Importer, Progress};
use shopstream_ingest::mapping::{self, Mapping};
use shopstream_job::generate;

use super::progress::ProgressLine;

#[derive(Args, Debug)]
#[command(
    args_conflicts_with_subcommands = true,
    after_help = "Examples:\n  shopstream import --mapping rees46 2019-Oct.csv\n  \
                  shopstream import --mapping my-shop.toml events.jsonl --output sample.jsonl\n  \
                  shopstream import --mapping my-shop.toml --check\n\n\
                  Built-in mappings: taobao, rees46 (ingest/mappings/). The format of a \
                  mapping file: docs/mappings.md."
)]
pub(crate) struct ImportArgs {
    #[command(subcommand)]
    pub(crate) command: Option<ImportCommand>,
    #[command(flatten)]
    pub(crate) mapped: MappedArgs,
}

#[derive(Subcommand, Debug)]
pub(crate) enum ImportCommand {
    /// The public Taobao UserBehavior CSV (`user_id,item_id,category_id,behavior,timestamp`,
    /// behavior pv|cart|fav|buy, epoch seconds; rows need not be sorted). Shorthand for
    /// `import --mapping taobao FILE`; the mapping is ingest/mappings/taobao.toml and
    /// docs/taobao-import.md explains it.
    Taobao(TaobaoArgs),
}

#[derive(Args, Debug)]
pub(crate) struct TaobaoArgs {
    /// The CSV file.
    pub(crate) file: PathBuf,
    /// Also write the import report as JSON here.
    #[arg(long)]
    pub(crate) report_json: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub(crate) struct MappedArgs {
    /// The mapping: a TOML file (docs/mappings.md) or a built-in name (taobao, rees46).
    #[arg(long, value_name = "FILE|NAME")]
    pub(crate) mapping: Option<String>,
    /// The log to import: CSV or JSON lines, as the mapping says. Read as it is published,
    /// in constant memory (an unsorted log is sorted in runs on disk, under TMPDIR).
    pub(crate) data: Option<PathBuf>,
    /// Only validate the mapping: print every problem found, or `ok`.
    #[arg(long)]
    pub(crate) check: bool,
    /// Write the messages here as JSON lines (`{"topic", "key", "ts", "event"}`) instead of
    /// publishing them; `-` for stdout.
    #[arg(long, value_name = "FILE")]
    pub(crate) output: Option<PathBuf>,
    /// Also write the import report as JSON here.
    #[arg(long)]
    pub(crate) report_json: Option<PathBuf>,
}

/// Runs `import`; `bar` allows a progress bar on stderr.
pub(crate) async fn import_cmd(config: Config, args: ImportArgs, bar: bool) -> Result<()> {
    let mapped = match args.command {
        Some(ImportCommand::Taobao(t)) => MappedArgs {
            mapping: Some("taobao".to_string()),
            data: Some(t.file),
            check: false,
            output: None,
            report_json: t.report_json,
        },
        None => args.mapped,
    };
    let Some(name) = &mapped.mapping else {
        bail!("import needs --mapping FILE (or a built-in name: taobao, rees46); see --help");
    };
    let mapping = load_mapping(name)?;
    if mapped.check {
        println!("ok: mapping {name} is valid");
        return Ok(());
    }
    let Some(data) = &mapped.data else {
        bail!("import needs the log to read: shopstream import --mapping {name} DATA");
    };
    let progress = RefCell::new(ProgressLine::new("import", bar));
    let on_progress = |p: Progress| {
        let fraction = if p.bytes > 0 && p.total_bytes > 0 {
            Some(p.bytes as f64 / p.total_bytes as f64)
        } else {
            p.total_rows
                .filter(|n| *n > 0)
                .map(|n| p.rows as f64 / n as f64)
        };
        progress
            .borrow_mut()
            .update(p.phase, p.rows, "rows", fraction);
    };
    let mut importer = Importer::open(&mapping, data, Some(Box::new(on_progress)))?;
    let sent = match &mapped.output {
        Some(path) => write_messages(path, &mut importer)?,
        None => generate::publish_messages(&config, &mut importer, None).await?,
    };
    let report = importer.finish()?;
    let seconds = progress.borrow_mut().finish();
    let to_stderr = mapped.output.as_deref() == Some(Path::new("-"));
    print_report(
        data,
        &report,
        sent,
        seconds,
        mapped.report_json.as_deref(),
        to_stderr,
    )
}

fn load_mapping(name: &str) -> Result<Mapping> {
    let path = Path::new(name);
    let (text, origin) = if path.exists() {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the mapping {}", path.display()))?;
        (text, path.display().to_string())
    } else if let Some(text) = mapping::builtin(name) {
        (text.to_string(), format!("{name} (built-in)"))
    } else {
        bail!(
            "mapping {name}: no such file, and not a built-in mapping (taobao, rees46); \
             docs/mappings.md describes the format"
        );
    };
    Ok(Mapping::parse(&text, &origin)?)
}

fn write_messages(path: &Path, importer: &mut Importer<'_>) -> Result<u64> {
    let sink: Box<dyn Write> = if path == Path::new("-") {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        )
    };
    let mut out = std::io::BufWriter::new(sink);
    let mut n = 0;
    for m in importer {
        write!(
            out,
            "{{\"topic\":\"{}\",\"key\":{},\"ts\":{},\"event\":",
            m.topic.as_str(),
            serde_json::to_string(&m.key)?,
            m.ts
        )
        .and_then(|()| out.write_all(&m.payload))
        .and_then(|()| out.write_all(b"}\n"))
        .with_context(|| format!("cannot write {}", path.display()))?;
        n += 1;
    }
    out.flush()
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(n)
}

fn print_report(
    data: &Path,
    report: &ImportReport,
    sent: u64,
    seconds: f64,
    report_json: Option<&Path>,
    to_stderr: bool,
) -> Result<()> {
    for (line, reason) in report.rejected.iter().take(20) {
        eprintln!("warning: {}:{line}: skipped: {reason}", data.display());
    }
    if report.rejected_rows > 20 {
        eprintln!(
            "warning: {} more rows skipped (the report lists the first {})",
            report.rejected_rows - 20,
            report.rejected.len()
        );
    }
    let mut json = serde_json::to_value(report)?;
    json["messages"] = sent.into();
    json["seconds"] = ((seconds * 1000.0).round() / 1000.0).into();
    json["rows_per_sec"] = (report.rows as f64 / seconds.max(1e-9)).round().into();
    if let Some(kib) = peak_rss_kib() {
        json["peak_rss_kib"] = kib.into();
    }
    let text = serde_json::to_string_pretty(&json)?;
    if let Some(path) = report_json {
        std::fs::write(path, &text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if to_stderr {
        eprintln!("{text}");
    } else {
        println!("{text}");
    }
    Ok(())
}

/// The process's peak resident memory (Linux: VmHWM), for the report.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
