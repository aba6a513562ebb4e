//! The job's Kafka outputs: predictions, alert events and dead letters, each counted
//! under a tag once the broker acknowledged it. A replay publishes nothing (not even the
//! encoding runs): the live run published what the output topics hold.

use shopstream_config::{Config, TopicsConfig};
use shopstream_drift::AlertEvent;
use shopstream_ingest::decode::Rejection;
use shopstream_kafka::client::input_topic_name;
use shopstream_kafka::sink::{Publisher, dead_letter_headers};
use shopstream_kafka::source::RecordMeta;
use shopstream_trainer::Prediction;

use super::shard::Effect;
use super::source_loop::bump;
use super::{PipelineError, RunSummary};
use crate::latency::Histogram;
use shopstream_drift::stage::Arrival;

/// Tags under which the publisher counts acknowledged messages.
const TAG_PREDICTION: &str = "prediction";
const TAG_DEAD_LETTER: &str = "dead_letter";
const TAG_ALERT: &str = "alert";

/// The producer and where each kind of message goes.
pub(super) struct Outputs {
    publisher: Publisher,
    topics: TopicsConfig,
    /// A replay: publish nothing.
    replay: bool,
    /// The JSON of the message being published (reused: one allocation, not one a
    /// message).
    json: Vec<u8>,
}

impl Outputs {
    /// A producer for the job's cluster.
    pub(super) fn new(config: &Config, replay: bool) -> Result<Self, PipelineError> {
        Ok(Self {
            publisher: Publisher::new(&config.kafka)?,
            topics: config.topics.clone(),
            replay,
            json: Vec::new(),
        })
    }

    /// A prediction served on arrival, keyed by its event id.
    pub(super) async fn prediction(&mut self, p: &Prediction) -> Result<(), PipelineError> {
        self.publish_json(
            TAG_PREDICTION,
            |t| &t.predictions,
            p.event_id.as_bytes(),
            p,
            p.ts,
        )
        .await
    }

    /// An alert event, keyed by its id, timestamped with its evidence window.
    pub(super) async fn alert(&mut self, a: &AlertEvent) -> Result<(), PipelineError> {
        self.publish_json(
            TAG_ALERT,
            |t| &t.alerts,
            a.id.as_bytes(),
            a,
            a.window_start_ms,
        )
        .await
    }

    /// Carries out a shard's effects in the order it produced them: counts in `summary`,
    /// predictions and dead letters published, each prediction's latency into `latency`
    /// when kept, and the drift arrivals appended to `arrivals` in order (the caller hands
    /// them on).
    pub(super) async fn apply_effects(
        &mut self,
        summary: &mut RunSummary,
        effects: &mut Vec<Effect>,
        mut latency: Option<&mut Histogram>,
        arrivals: &mut Vec<Arrival>,
    ) -> Result<(), PipelineError> {
        for effect in effects.drain(..) {
            match effect {
                Effect::Duplicate(topic) => bump(&mut summary.duplicates, topic.as_str()),
                Effect::DeadLetter {
                    meta,
                    key,
                    payload,
                    rejection,
                } => {
                    self.counted_dead_letter(summary, meta, key.as_deref(), &payload, &rejection)
                        .await?;
                }
                Effect::Predicted {
                    prediction,
                    received,
                } => {
                    summary.impressions += 1;
                    self.prediction(&prediction).await?;
                    if let Some(latency) = latency.as_deref_mut() {
                        latency.record(received.elapsed());
                    }
                }
                Effect::Admitted { topic, arrival } => {
                    bump(&mut summary.valid, topic.as_str());
                    arrivals.extend(arrival);
                }
            }
        }
        Ok(())
    }

    /// Counts a refused message in `summary` (per reason and per topic) and sends it to
    /// the dead-letter topic.
    pub(super) async fn counted_dead_letter(
        &mut self,
        summary: &mut RunSummary,
        meta: RecordMeta,
        key: Option<&[u8]>,
        payload: &[u8],
        rejection: &Rejection,
    ) -> Result<(), PipelineError> {
        bump(&mut summary.dead_lettered, rejection.reason.as_str());
        bump(&mut summary.dead_lettered_per_topic, meta.topic.as_str());
        tracing::debug!(topic = meta.topic.as_str(), partition = meta.partition, offset = meta.offset, %rejection, "dead-lettered");
        self.dead_letter(meta, key, payload, rejection).await
    }

    /// The original bytes of a refused message, with the reason in its headers.
    pub(super) async fn dead_letter(
        &mut self,
        meta: RecordMeta,
        key: Option<&[u8]>,
        payload: &[u8],
        rejection: &Rejection,
    ) -> Result<(), PipelineError> {
        if self.replay {
            // The live run dead-lettered it already.
            return Ok(());
        }
        let headers =
            dead_letter_headers(input_topic_name(&self.topics, meta.topic), &meta, rejection);
        self.publisher
            .send(
                TAG_DEAD_LETTER,
                &self.topics.dead_letter,
                key.unwrap_or_default(),
                payload,
                None,
                Some(headers),
            )
            .await?;
        Ok(())
    }

    /// Waits until every message sent so far is acknowledged.
    pub(super) async fn flush(&mut self) -> Result<(), PipelineError> {
        Ok(self.publisher.flush().await?)
    }

    /// Publishes `value` as JSON to the topic `topic` picks, keyed by `key`, with
    /// timestamp `ts_ms` (nothing in a replay).
    async fn publish_json(
        &mut self,
        tag: &'static str,
        topic: fn(&TopicsConfig) -> &String,
        key: &[u8],
        value: &impl serde::Serialize,
        ts_ms: i64,
    ) -> Result<(), PipelineError> {
        if self.replay {
            return Ok(());
        }
        self.json.clear();
        serde_json::to_writer(&mut self.json, value)
            .map_err(|e| PipelineError::Internal(format!("{tag} JSON: {e}")))?;
        let topic = topic(&self.topics);
        self.publisher
            .send(tag, topic, key, &self.json, Some(ts_ms), None)
            .await?;
        Ok(())
    }

    fn delivered(&self, tag: &str) -> u64 {
        self.publisher.delivered().get(tag).copied().unwrap_or(0)
    }

    /// Predictions acknowledged.
    pub(super) fn predictions_delivered(&self) -> u64 {
        self.delivered(TAG_PREDICTION)
    }

    /// Dead letters acknowledged.
    pub(super) fn dead_letters_delivered(&self) -> u64 {
        self.delivered(TAG_DEAD_LETTER)
    }

    /// Alert events acknowledged.
    pub(super) fn alerts_delivered(&self) -> u64 {
        self.delivered(TAG_ALERT)
    }
}
