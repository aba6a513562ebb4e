//! Membership of a consumer group that only says which partitions this member is
//! assigned: it never reads them (they stay paused). Reading is left to consumers that are
//! assigned those partitions directly, one per topic, whose end-of-partition events then
//! name their topic (librdkafka's name only a partition number).
//!
//! Two uses: the trainer lease ([`crate::lease`], one partition, `cooperative-sticky` so
//! a member that joins does not take it), and the partitions of the input topics an
//! instance of a group holds (`range`, so partition *i* of co-partitioned topics goes to
//! one member). The broker's group coordinator elects; a member that stops heartbeating
//! loses its partitions after `session_timeout_ms`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::types::RDKafkaRespErr;
use shopstream_config::KafkaConfig;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::client::{KafkaSetupError, client_config, set_managed};

/// Why a group could not be joined.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// The client or the topics could not be set up.
    #[error(transparent)]
    Setup(#[from] KafkaSetupError),
    /// The consumer could not subscribe.
    #[error("subscribing group {group} to {topics:?}: {source}")]
    Subscribe {
        /// The topics.
        topics: Vec<String>,
        /// The group.
        group: String,
        /// What librdkafka said.
        source: KafkaError,
    },
}

/// How a group is joined.
#[derive(Debug, Clone)]
pub struct MembershipOptions {
    /// The group.
    pub group: String,
    /// The topics the group shares.
    pub topics: Vec<String>,
    /// `range` or `cooperative-sticky`.
    pub strategy: &'static str,
    /// How long a silent member keeps its partitions (librdkafka's `session.timeout.ms`;
    /// a value in `[kafka.properties]` takes precedence); `None` keeps librdkafka's.
    pub session_timeout_ms: Option<u64>,
}

/// A (topic, partition) assigned to this member.
pub type Assigned = BTreeSet<(String, i32)>;

struct MembershipContext {
    assigned: watch::Sender<Assigned>,
}

impl ClientContext for MembershipContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        crate::client::log_client_message(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        crate::client::log_client_error(&error, reason);
    }
}

fn elements(tpl: &TopicPartitionList) -> Assigned {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

impl ConsumerContext for MembershipContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        // Cooperative: only what changes is named, and the rest stays assigned.
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let changed = elements(tpl);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let assigned = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(e) = assigned {
                    tracing::error!(error = %e, partitions = ?changed, "taking assigned partitions failed");
                    return;
                }
                // Never read here: whoever reads them is assigned them directly.
                if let Err(e) = consumer.pause(tpl) {
                    tracing::warn!(error = %e, "pausing the membership's partitions");
                }
                self.assigned.send_modify(|now| {
                    if !cooperative {
                        now.clear();
                    }
                    now.extend(changed);
                });
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                // Given up before the partitions go: the member stops acting first.
                self.assigned.send_modify(|now| {
                    if cooperative {
                        now.retain(|p| !changed.contains(p));
                    } else {
                        now.clear();
                    }
                });
                let _ = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
            }
            other => {
                self.assigned.send_modify(BTreeSet::clear);
                tracing::error!(error = ?other, "rebalance error; holding no partition");
                let _ = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
            }
        }
    }
}

/// A member of a group; it leaves the group when dropped.
pub struct Membership {
    assigned: watch::Receiver<Assigned>,
    /// The member's consumer, for offset commits; weak, so that leaving (which drops the
    /// consumer) is never held up by a committer.
    consumer: std::sync::Weak<StreamConsumer<MembershipContext>>,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Commits offsets as the group's member (its generation and member id), which a broker
/// takes while the group has members, unlike commits of a consumer outside the group.
#[derive(Clone)]
pub struct MemberCommitter {
    consumer: std::sync::Weak<StreamConsumer<MembershipContext>>,
}

impl MemberCommitter {
    /// Commits `list` synchronously (blocking: run it on the blocking pool). `Ok(false)`
    /// when the member has left the group already: nothing is committed.
    pub fn commit(&self, list: &TopicPartitionList) -> Result<bool, KafkaError> {
        let Some(consumer) = self.consumer.upgrade() else {
            return Ok(false);
        };
        consumer.commit(list, CommitMode::Sync).map(|()| true)
    }
}

impl Membership {
    /// Joins `options.group` on `options.topics` (which must exist). What this member is
    /// assigned shows in [`Membership::assigned`] once the group has settled.
    pub async fn join(
        kafka: &KafkaConfig,
        options: &MembershipOptions,
    ) -> Result<Membership, MembershipError> {
        let mut config = client_config(kafka)?;
        let c = &mut config;
        set_managed(c, kafka, "group.id", &options.group)?;
        set_managed(c, kafka, "group.protocol", "classic")?;
        set_managed(c, kafka, "enable.auto.commit", "false")?;
        set_managed(c, kafka, "partition.assignment.strategy", options.strategy)?;
        if let Some(session) = options.session_timeout_ms {
            // The membership's own timing, unless `[kafka.properties]` sets it for every
            // client.
            if !kafka.properties.contains_key("session.timeout.ms") {
                c.set("session.timeout.ms", session.to_string());
            }
            if !kafka.properties.contains_key("heartbeat.interval.ms") {
                // Well inside the session, as librdkafka's defaults are (3 s of 45 s).
                let heartbeat = (session / 10).max(100);
                c.set("heartbeat.interval.ms", heartbeat.to_string());
            }
        }
        let (assigned_tx, assigned) = watch::channel(Assigned::new());
        let context = MembershipContext {
            assigned: assigned_tx,
        };
        let consumer: StreamConsumer<MembershipContext> = config
            .create_with_context(context)
            .map_err(KafkaSetupError::Client)?;
        let topics: Vec<&str> = options.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|source| MembershipError::Subscribe {
                topics: options.topics.clone(),
                group: options.group.clone(),
                source,
            })?;
        let consumer = Arc::new(consumer);
        let weak = Arc::downgrade(&consumer);
        let stop = CancellationToken::new();
        // The group protocol (rebalances, heartbeats) runs while the consumer is polled;
        // its partitions are paused, so a poll only ever returns on a rebalance.
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        message = consumer.recv() => {
                            if let Err(e) = message {
                                tracing::warn!(error = %e, "group membership consumer");
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
        Ok(Membership {
            assigned,
            consumer: weak,
            stop,
            task: Some(task),
        })
    }

    /// Follows the partitions assigned to this member.
    pub fn assigned(&self) -> watch::Receiver<Assigned> {
        self.assigned.clone()
    }

    /// Commits offsets as this member.
    pub fn committer(&self) -> MemberCommitter {
        MemberCommitter {
            consumer: self.consumer.clone(),
        }
    }

    /// Leaves the group (its partitions go to other members at once).
    pub async fn leave(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
