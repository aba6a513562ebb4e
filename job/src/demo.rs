//! `shopstream demo`: the whole pipeline on one machine with nothing installed.
//!
//! When `kafka.brokers` is empty the demo starts librdkafka's in-process mock cluster (a
//! real Kafka-protocol listener on 127.0.0.1, inside this process), creates the topics,
//! publishes generated traffic, runs the job until it has caught up, and reads the store
//! back for a summary. With brokers configured it does the same against that cluster.

use std::path::{Path, PathBuf};

use serde::Serialize;
use shopstream_config::Config;
use shopstream_ingest::generator::{GeneratorOptions, GeneratorReport};
use shopstream_kafka::embedded::EmbeddedCluster;
use shopstream_sinks::read::{ScenarioSummary, scenario_summary};
use shopstream_sinks::store::StoreError;
use shopstream_sinks::tables;

use crate::generate::{GenerateError, publish_traffic};
use crate::pipeline::{PipelineError, RunOptions, RunSummary, run};

/// Partitions per topic on the embedded cluster.
const EMBEDDED_PARTITIONS: i32 = 32;

/// Why the demo failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The embedded cluster could not start.
    #[error("cannot start the embedded Kafka mock cluster: {0}")]
    Cluster(String),
    /// The cluster kept fewer messages than were produced (the embedded one has a size
    /// limit per partition).
    #[error(
        "{produced} messages were produced but only {consumed} could be consumed: the embedded \
         mock cluster keeps at most 5 MiB or 100,000 messages per partition and dropped the \
         oldest; use fewer --events (up to about 500,000) or a real broker (kafka.brokers)"
    )]
    Lost {
        /// Messages produced.
        produced: u64,
        /// Messages the run consumed.
        consumed: u64,
    },
    /// Live mode needs a real broker.
    #[error(
        "--live-rate needs a configured cluster (kafka.brokers): the embedded mock cluster drops \
         its connections when a live run shuts down; start one with `make broker` and set \
         SHOPSTREAM__KAFKA__BROKERS=127.0.0.1:9092"
    )]
    LiveNeedsBroker,
    /// The store path holds something that is not a previous demo store.
    #[error(
        "{0} exists and does not look like a shopstream store; choose another --store or remove it"
    )]
    ForeignStore(PathBuf),
    /// Removing the previous demo store failed.
    #[error("cannot clear the previous demo store {path}: {source}")]
    Clear {
        /// The store.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Generating traffic failed.
    #[error(transparent)]
    Generate(#[from] GenerateError),
    /// The job failed.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// Reading the store back failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Everything the demo reports.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    /// Where Kafka was.
    pub brokers: String,
    /// Whether that was the embedded mock cluster.
    pub embedded_cluster: bool,
    /// What the generator produced.
    pub generated: GeneratorReport,
    /// What the job did.
    pub run: RunSummary,
    /// The sample query over the store: examples and clicks per scenario.
    #[serde(skip)]
    pub query: ScenarioSummary,
    /// Rows the store holds, read back.
    pub store_rows: u64,
}

/// Runs the demo: `options` says what traffic to generate.
pub async fn demo(
    mut config: Config,
    options: GeneratorOptions,
    live_rate: Option<f64>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<DemoReport, DemoError> {
    if live_rate.is_some() && config.kafka.brokers.trim().is_empty() {
        return Err(DemoError::LiveNeedsBroker);
    }
    clear_previous_store(&config.store.path)?;
    let mut _cluster: Option<EmbeddedCluster> = None;
    let embedded = config.kafka.brokers.trim().is_empty();
    if embedded {
        let topics = config.topics.clone();
        // librdkafka's mock broker keeps at most 5 MiB or 100,000 messages per partition
        // and deletes older ones; more partitions give the demo room (checked below).
        config.kafka.topic_partitions = config.kafka.topic_partitions.max(EMBEDDED_PARTITIONS);
        let cluster = EmbeddedCluster::start(
            topics.inputs().into_iter().chain(topics.outputs()),
            config.kafka.topic_partitions,
        )
        .map_err(|e| DemoError::Cluster(e.to_string()))?;
        config.kafka.brokers = cluster.bootstrap_servers();
        // The mock cluster has no admin API; its topics were created above.
        config.kafka.create_topics = false;
        _cluster = Some(cluster);
    }
    let (generated, run) = match live_rate {
        None => {
            tracing::info!(brokers = %config.kafka.brokers, embedded, "demo: publishing generated traffic");
            let generated = publish_traffic(&config, options, None, None).await?;
            tracing::info!(
                messages = generated.valid_total + generated.malformed_total,
                "demo: running the pipeline until caught up"
            );
            let run = run(
                &config,
                RunOptions {
                    stop_at_end: true,
                    ..Default::default()
                },
                shutdown,
            )
            .await?;
            (generated, run)
        }
        Some(rate) => live(&config, options, rate, shutdown).await?,
    };
    let produced = generated.valid_total + generated.malformed_total;
    let consumed: u64 = run.consumed.values().sum();
    if consumed != produced {
        return Err(DemoError::Lost { produced, consumed });
    }
    let query = scenario_summary(&shopstream_sinks::store::open_storage(&config.store)?)?;
    Ok(DemoReport {
        brokers: config.kafka.brokers.clone(),
        embedded_cluster: embedded,
        generated,
        store_rows: query.rows,
        query,
        run,
    })
}

/// Live mode: the job runs as it would in production (consumer group, idle partitions
/// released by timeout) while traffic arrives at `rate` messages per second; it is shut
/// down once it has consumed everything. Prediction latency is then live latency, not
/// the queueing delay of a backlog.
async fn live(
    config: &Config,
    options: GeneratorOptions,
    rate: f64,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(GeneratorReport, RunSummary), DemoError> {
    let (progress, mut watch) = tokio::sync::watch::channel(crate::pipeline::Progress::default());
    let (total_tx, total_rx) = tokio::sync::oneshot::channel::<u64>();
    let done = async move {
        if let Ok(total) = total_rx.await {
            let _ = watch.wait_for(|p| p.consumed >= total).await;
        }
    };
    let stop = async move {
        tokio::select! {
            _ = done => {},
            _ = shutdown => {},
        }
    };
    let job = crate::pipeline::run_observed(
        config,
        RunOptions {
            stop_at_end: false,
            ..Default::default()
        },
        stop,
        progress,
    );
    let traffic = async {
        // Give the job a moment to join its group before the first message.
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        tracing::info!(rate, "demo: publishing traffic live");
        let generated = publish_traffic(config, options, Some(rate), None).await;
        if let Ok(report) = &generated {
            let _ = total_tx.send(report.valid_total + report.malformed_total);
        }
        generated
    };
    let (run, generated) = tokio::join!(job, traffic);
    Ok((generated?, run?))
}

/// Removes a previous demo store so the summary counts only this run; refuses to touch a
/// directory that holds anything but what the job writes into a store (its tables, the
/// commit manifest and the default checkpoint directory).
fn clear_previous_store(path: &Path) -> Result<(), DemoError> {
    let Ok(entries) = std::fs::read_dir(path) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !tables::is_store_entry(&name.to_string_lossy()) {
            return Err(DemoError::ForeignStore(path.to_path_buf()));
        }
    }
    std::fs::remove_dir_all(path).map_err(|source| DemoError::Clear {
        path: path.to_path_buf(),
        source,
    })
}

/// The demo summary as people read it.
pub fn render(report: &DemoReport, store: &Path) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let g = &report.generated;
    let r = &report.run;
    let join = |m: &std::collections::BTreeMap<String, u64>| {
        if m.is_empty() {
            "none".to_string()
        } else {
            m.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        }
    };
    let _ = writeln!(s, "shopstream demo summary");
    let _ = writeln!(
        s,
        "  kafka:                 {} ({})",
        report.brokers,
        if report.embedded_cluster {
            "embedded mock cluster"
        } else {
            "configured cluster"
        }
    );
    let _ = writeln!(
        s,
        "  generated:             {} valid + {} malformed messages, {} impressions, event time {} .. {}",
        g.valid_total,
        g.malformed_total,
        g.impressions,
        shopstream_ingest::event::ts_to_rfc3339(g.first_ts),
        shopstream_ingest::event::ts_to_rfc3339(g.last_ts)
    );
    let consumed: u64 = r.consumed.values().sum();
    let secs = r.elapsed_ms as f64 / 1000.0;
    let _ = writeln!(
        s,
        "  pipeline run:          {secs:.2} s for {consumed} messages ({:.0} messages/s, including connect and final flush)",
        consumed as f64 / secs.max(1e-3)
    );
    let _ = writeln!(s, "  events consumed:       {}", join(&r.consumed));
    let _ = writeln!(s, "  valid events:          {}", join(&r.valid));
    let dead: u64 = r.dead_lettered.values().sum();
    let _ = writeln!(
        s,
        "  dead-lettered:         {dead} ({}), {} acknowledged on the dead-letter topic",
        join(&r.dead_lettered),
        r.dead_letters_published
    );
    let _ = writeln!(
        s,
        "  duplicates:            {}",
        r.duplicates.values().sum::<u64>()
    );
    let l = &r.prediction_latency;
    let _ = writeln!(
        s,
        "  prediction latency:    p50 {} us, p99 {} us, max {} us over {} impressions (consumed -> handed to the producer)",
        l.p50_us, l.p99_us, l.max_us, l.count
    );
    let _ = writeln!(s, "  examples written:      {}", r.examples_written);
    let _ = writeln!(
        s,
        "  predictions published: {} (acknowledged by the broker)",
        r.predictions_published
    );
    let _ = writeln!(
        s,
        "  files written:         {} under {}",
        r.files_written,
        store.join(tables::EXAMPLES).display()
    );
    let _ = writeln!(s, "  windows closed:        {}", r.windows_closed);
    let _ = writeln!(
        s,
        "  item demand:           {} forecasts in {}, {} with stock-out risk",
        r.demand_forecasts,
        store.join(tables::ITEM_DEMAND).display(),
        r.stockout_risks
    );
    let q = &r.quality;
    let metrics = format!(
        "; prequential over {} windows: CTR AUC {:.3}, log loss {:.4}; CVR AUC {:.3}; CTCVR AUC {:.3}",
        q.windows, q.ctr_auc, q.ctr_log_loss, q.cvr_auc, q.ctcvr_auc
    );
    let _ = writeln!(
        s,
        "  model:                 version {}, trained on {} examples{metrics}",
        r.model_version, r.trained_examples
    );
    let _ = writeln!(
        s,
        "  sample query:          examples per scenario, read back from {} Parquet files",
        report.query.files
    );
    let _ = writeln!(
        s,
        "    {:<16} {:>10} {:>8} {:>7}",
        "scenario", "examples", "clicks", "ctr"
    );
    for (scenario, (rows, clicks)) in &report.query.by_scenario {
        let ctr = if *rows == 0 {
            0.0
        } else {
            *clicks as f64 / *rows as f64
        };
        let _ = writeln!(s, "    {scenario:<16} {rows:>10} {clicks:>8} {ctr:>7.4}");
    }
    let _ = writeln!(s, "    {:<16} {:>10}", "total", report.store_rows);
    s
}
