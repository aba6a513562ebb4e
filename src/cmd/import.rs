//! `shopstream import`: external event logs onto the input topics.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use shopstream_config::Config;
use shopstream_job::generate;

#[derive(Subcommand, Debug)]
pub(crate) enum ImportCommand {
    /// The public Taobao UserBehavior CSV (`user_id,item_id,category_id,behavior,timestamp`,
    /// behavior pv|cart|fav|buy, epoch seconds; rows need not be sorted). pv becomes an
    /// impression plus a click in product_detail, cart add_to_cart, fav favorite, buy a
    /// one-line order; each item gets an inventory snapshot with its category. Unreadable
    /// rows are listed, not published. Mapping: docs/taobao-import.md.
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

pub(crate) async fn import_cmd(config: Config, args: TaobaoArgs) -> Result<()> {
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
