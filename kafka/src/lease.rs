//! A lease held through Kafka's group protocol: the member of a consumer group that is
//! assigned the only partition of a one-partition topic holds it.
//!
//! This is how one instance of many takes a role that must run once (the trainer, see
//! docs/scale-out.md) without a cluster manager of its own: the broker's group
//! coordinator elects, and a member that stops heartbeating (crashed, SIGKILLed, cut off)
//! loses the partition after `session_timeout_ms`, when another member is assigned it.
//! Nothing is ever produced to the topic; the assignment is the lease.
//!
//! A lease only says who holds it now. Between the holder's last heartbeat and the
//! broker's decision two members can both believe they hold it for up to the session
//! timeout, so what the holder writes must be safe to write twice (the store's file
//! names and bytes are deterministic; see docs/scale-out.md).

use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::types::RDKafkaRespErr;
use shopstream_config::KafkaConfig;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::client::{KafkaSetupError, client_config, ensure_topics, set_managed};

/// Why a lease could not be joined.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The client or the lease topic could not be set up.
    #[error(transparent)]
    Setup(#[from] KafkaSetupError),
    /// The consumer could not subscribe to the lease topic.
    #[error("subscribing group {group} to lease topic {topic}: {source}")]
    Subscribe {
        /// The lease topic.
        topic: String,
        /// The group competing for it.
        group: String,
        /// What librdkafka said.
        source: KafkaError,
    },
}

/// Options of a lease.
#[derive(Debug, Clone)]
pub struct LeaseOptions {
    /// The one-partition topic (created with one partition when missing and
    /// `kafka.create_topics` is set).
    pub topic: String,
    /// The consumer group whose members compete for it.
    pub group: String,
    /// How long a silent holder keeps it (librdkafka's `session.timeout.ms`; a value in
    /// `[kafka.properties]` takes precedence).
    pub session_timeout_ms: u64,
}

struct LeaseContext {
    topic: String,
    held: watch::Sender<bool>,
}

impl ClientContext for LeaseContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        crate::client::log_client_message(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        crate::client::log_client_error(&error, reason);
    }
}

impl ConsumerContext for LeaseContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let names_the_topic = tpl.elements().iter().any(|e| e.topic() == self.topic);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                // Cooperative: only what changes is named, and the rest stays assigned.
                if let Err(e) = consumer.incremental_assign(tpl) {
                    tracing::error!(error = %e, topic = %self.topic, "assigning the lease partition failed");
                    return;
                }
                if names_the_topic {
                    tracing::info!(topic = %self.topic, "lease acquired");
                    self.held.send_replace(true);
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                // Given up before the partition goes: the holder stops acting first.
                if names_the_topic {
                    self.held.send_replace(false);
                    tracing::info!(topic = %self.topic, "lease lost");
                }
                let _ = consumer.incremental_unassign(tpl);
            }
            other => {
                self.held.send_replace(false);
                tracing::error!(error = ?other, topic = %self.topic, "lease rebalance error; not holding it");
                let _ = consumer.incremental_unassign(tpl);
            }
        }
    }
}

/// A member competing for a lease; it leaves the group when dropped.
pub struct Lease {
    held: watch::Receiver<bool>,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Lease {
    /// Joins `options.group` on `options.topic` (creating the topic with one partition
    /// when it is missing). Whether this member holds the lease shows in
    /// [`Lease::held`] once the group has settled.
    pub async fn join(kafka: &KafkaConfig, options: &LeaseOptions) -> Result<Lease, LeaseError> {
        let mut one_partition = kafka.clone();
        one_partition.topic_partitions = 1;
        ensure_topics(&one_partition, std::slice::from_ref(&options.topic)).await?;
        let mut config = client_config(kafka)?;
        let c = &mut config;
        set_managed(c, kafka, "group.id", &options.group)?;
        set_managed(c, kafka, "group.protocol", "classic")?;
        set_managed(c, kafka, "enable.auto.commit", "false")?;
        // Sticky: a member that joins does not take the lease from its holder (with
        // `range` it goes to the first member id in sort order, so joins would move it).
        set_managed(
            c,
            kafka,
            "partition.assignment.strategy",
            "cooperative-sticky",
        )?;
        // The lease's own timing, unless `[kafka.properties]` sets it for every client.
        if !kafka.properties.contains_key("session.timeout.ms") {
            c.set("session.timeout.ms", options.session_timeout_ms.to_string());
        }
        if !kafka.properties.contains_key("heartbeat.interval.ms") {
            // Well inside the session, as librdkafka's defaults are (3 s of 45 s).
            let heartbeat = (options.session_timeout_ms / 10).max(100);
            c.set("heartbeat.interval.ms", heartbeat.to_string());
        }
        let (held_tx, held) = watch::channel(false);
        let context = LeaseContext {
            topic: options.topic.clone(),
            held: held_tx,
        };
        let consumer: StreamConsumer<LeaseContext> = config
            .create_with_context(context)
            .map_err(KafkaSetupError::Client)?;
        consumer
            .subscribe(&[options.topic.as_str()])
            .map_err(|source| LeaseError::Subscribe {
                topic: options.topic.clone(),
                group: options.group.clone(),
                source,
            })?;
        let consumer = Arc::new(consumer);
        let stop = CancellationToken::new();
        // The group protocol (rebalances, heartbeats) runs while the consumer is polled;
        // the topic holds no messages, so a poll only ever returns on a rebalance.
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        message = consumer.recv() => {
                            if let Err(e) = message {
                                tracing::warn!(error = %e, "lease consumer");
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        }
                    }
                }
                // Leave the group now rather than after the session timeout.
                consumer.unsubscribe();
                drop(consumer);
            }
        });
        Ok(Lease {
            held,
            stop,
            task: Some(task),
        })
    }

    /// Whether this member holds the lease now.
    pub fn is_held(&self) -> bool {
        *self.held.borrow()
    }

    /// Follows whether this member holds the lease.
    pub fn held(&self) -> watch::Receiver<bool> {
        self.held.clone()
    }

    /// Leaves the group (the lease, if held, goes to another member at once).
    pub async fn leave(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
