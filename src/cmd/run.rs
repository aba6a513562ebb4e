//! `shopstream run`: the long-running job until SIGINT/SIGTERM (or caught up).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use shopstream_config::Config;
use shopstream_job::{pipeline, shutdown_signal};

#[derive(Args, Debug)]
pub(crate) struct RunArgs {
    /// Stop once everything that was in the input topics at start has been processed,
    /// instead of waiting for more (backfills, tests).
    #[arg(long)]
    pub(crate) stop_at_end: bool,
    /// Also write the run summary (counts per topic, reason, output) as JSON to this file.
    #[arg(long)]
    pub(crate) summary_json: Option<PathBuf>,
}

pub(crate) async fn run(config: Config, args: RunArgs) -> Result<()> {
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
pub(crate) fn print_summary(
    summary: &pipeline::RunSummary,
    path: Option<&std::path::Path>,
) -> Result<()> {
    let json = serde_json::to_string_pretty(summary)?;
    if let Some(path) = path {
        std::fs::write(path, &json).with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!("{json}");
    Ok(())
}
