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

use shopstream_config::KafkaConfig;
use tokio::sync::watch;

use crate::client::{KafkaSetupError, ensure_internal_topic};
use crate::membership::{Membership, MembershipError, MembershipOptions};

/// Why a lease could not be joined.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The client or the lease topic could not be set up.
    #[error(transparent)]
    Setup(#[from] KafkaSetupError),
    /// The lease's group could not be joined.
    #[error(transparent)]
    Join(#[from] MembershipError),
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

/// A member competing for a lease; it leaves the group when dropped.
pub struct Lease {
    membership: Membership,
    held: watch::Receiver<bool>,
    forward: tokio::task::JoinHandle<()>,
}

impl Lease {
    /// Joins `options.group` on `options.topic` (creating the topic with one partition
    /// when it is missing). Whether this member holds the lease shows in
    /// [`Lease::held`] once the group has settled.
    pub async fn join(kafka: &KafkaConfig, options: &LeaseOptions) -> Result<Lease, LeaseError> {
        ensure_internal_topic(kafka, &options.topic, &[]).await?;
        let membership = Membership::join(
            kafka,
            &MembershipOptions {
                group: options.group.clone(),
                topics: vec![options.topic.clone()],
                // Sticky: a member that joins does not take the lease from its holder
                // (with `range` it goes to the first member id in sort order, so joins
                // would move it).
                strategy: "cooperative-sticky",
                session_timeout_ms: Some(options.session_timeout_ms),
            },
        )
        .await?;
        let (held_tx, held) = watch::channel(false);
        let mut assigned = membership.assigned();
        let topic = options.topic.clone();
        let forward = tokio::spawn(async move {
            loop {
                let now = !assigned.borrow_and_update().is_empty();
                if held_tx.send_replace(now) != now {
                    tracing::info!(%topic, "lease {}", if now { "acquired" } else { "lost" });
                }
                if assigned.changed().await.is_err() {
                    held_tx.send_replace(false);
                    return;
                }
            }
        });
        Ok(Lease {
            membership,
            held,
            forward,
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
    pub async fn leave(self) {
        self.membership.leave().await;
        self.forward.abort();
    }
}
