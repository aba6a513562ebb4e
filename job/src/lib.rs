//! The shopstream job: the runtime that connects the stage crates into one long-running
//! process, and the commands that drive it.
//!
//! - [`pipeline`]: the job (`shopstream run`, `replay`), split by role: the source loop,
//!   the partition-scoped **shard stage** (cleaning, windows, features, predictions on
//!   arrival), the per-window **global stage** (demand, score then train, drift, store
//!   writes, compaction), outputs, replay, checkpoints and telemetry. [`pipeline::run`]
//!   takes the shutdown future so tests and the CLI drive it alike.
//! - [`recovery`]: what a checkpoint of the job holds.
//! - [`summary`]: what a run did ([`summary::RunSummary`]), reported at its end and on
//!   `/metrics`; [`http`]: `/metrics` (Prometheus), `/healthz`, `/readyz`;
//!   [`latency`]: the histograms behind the latency figures.
//! - [`generate`]: publishing synthetic traffic and imported logs onto the input topics.
//! - [`demo`]: generate, run and summarise on an embedded cluster (`shopstream demo`).
//!
//! The stages themselves live in `shopstream-config`, `-ingest`, `-kafka`, `-features`,
//! `-trainer`, `-drift` and `-sinks`; the `shopstream` binary only parses commands.

pub mod demo;
pub mod generate;
pub mod http;
pub mod latency;
pub mod pipeline;
pub mod recovery;
pub mod summary;

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
