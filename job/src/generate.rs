//! `shopstream generate`: publishes synthetic traffic onto the three input topics.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use shopstream_config::Config;
use shopstream_ingest::generator::{
    GeneratedMessage, Generator, GeneratorOptions, GeneratorReport, TruthRow,
};
use shopstream_kafka::client::{KafkaSetupError, ensure_topics, input_topic_name};
use shopstream_kafka::sink::{PublishError, Publisher};

/// Why generation failed.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// Kafka set-up failed.
    #[error(transparent)]
    Kafka(#[from] KafkaSetupError),
    /// Publishing failed.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// The truth file could not be written.
    #[error("cannot write the truth file {path}: {source}")]
    Truth {
        /// The file.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// Publishes the traffic of `options` to the input topics of `config`, at most
/// `rate_per_sec` messages per wall-clock second (as fast as possible when `None`), and
/// returns what was produced once the broker acknowledged every message.
pub async fn publish_traffic(
    config: &Config,
    options: GeneratorOptions,
    rate_per_sec: Option<f64>,
    truth_out: Option<&Path>,
) -> Result<GeneratorReport, GenerateError> {
    let mut generator = Generator::new(options);
    publish_messages(config, generator.by_ref(), rate_per_sec).await?;
    if let Some(path) = truth_out {
        write_truth(path, generator.truth()).map_err(|source| GenerateError::Truth {
            path: path.display().to_string(),
            source,
        })?;
    }
    Ok(generator.report().clone())
}

/// Publishes `messages` to the input topics of `config` (created when missing), at most
/// `rate_per_sec` per wall-clock second, and waits until the broker acknowledged them all.
/// Returns how many were sent.
pub async fn publish_messages(
    config: &Config,
    messages: impl IntoIterator<Item = GeneratedMessage>,
    rate_per_sec: Option<f64>,
) -> Result<u64, GenerateError> {
    let topics = &config.topics;
    let inputs: Vec<String> = topics.inputs().iter().map(|t| t.to_string()).collect();
    ensure_topics(&config.kafka, &inputs).await?;
    let mut publisher = Publisher::new(&config.kafka)?;
    let started = tokio::time::Instant::now();
    let mut sent: u64 = 0;
    for message in messages {
        let topic = input_topic_name(topics, message.topic);
        publisher
            .send(
                message.topic.as_str(),
                topic,
                message.key.as_bytes(),
                &message.payload,
                Some(message.ts),
                None,
            )
            .await?;
        sent += 1;
        if let Some(rate) = rate_per_sec.filter(|r| *r > 0.0) {
            let due = started + Duration::from_secs_f64(sent as f64 / rate);
            tokio::time::sleep_until(due).await;
        }
    }
    publisher.flush().await?;
    Ok(sent)
}

/// Writes the ground truth as CSV with a header.
pub fn write_truth(path: &Path, rows: &[TruthRow]) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(
        out,
        "event_id,ts,scenario,p_click,p_cvr,clicked,converted,cancelled"
    )?;
    for r in rows {
        writeln!(
            out,
            "{},{},{},{:.6},{:.6},{},{},{}",
            r.event_id,
            r.ts,
            r.scenario.as_str(),
            r.p_click,
            r.p_cvr,
            u8::from(r.clicked),
            u8::from(r.converted),
            u8::from(r.cancelled)
        )?;
    }
    out.flush()
}
