//! shopstream: the binary's wiring of the stage crates.
//!
//! - [`pipeline`]: the long-running job (`shopstream run`); [`pipeline::run`] takes the
//!   shutdown future so tests and the CLI drive it alike.
//! - [`generate`]: publishing synthetic traffic (`shopstream generate`).
//! - [`demo`]: generate, run, and summarise on an embedded cluster (`shopstream demo`).
//! - [`recovery`]: what a checkpoint of the job holds and how a restart uses it.
//! - [`summary`]: what a run did ([`summary::RunSummary`]), reported at its end and on
//!   `/metrics` ([`http`]).
//! - [`drift`]: the job's drift stage (monitors, `drift` and `alerts` rows, gauges);
//!   [`webhook`]: posting alert events; [`drift_report`]: the HTML drift report.
//!
//! The stages themselves live in `shopstream-config`, `-ingest`, `-features`, `-trainer`
//! and `-sinks`; this crate only connects them.

pub mod demo;
pub mod drift;
pub mod drift_report;
pub mod generate;
pub mod http;
pub mod latency;
pub mod pipeline;
pub mod recovery;
pub mod summary;
pub mod webhook;

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
