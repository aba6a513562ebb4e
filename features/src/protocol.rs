//! The scale-out protocol's messages as bytes, for the topic transport
//! (docs/scale-out.md): what shards send the coordinator ([`ToCoordinator`]) and what
//! the coordinator sends every shard ([`ToShards`], mostly [`SequencedClose`]s).
//!
//! The values inside are the ones the shard workers exchange through channels
//! ([`Report`], [`Close`], [`Part`]), so a message read back is the message sent: the
//! property tests of `tests/shuffle.rs` pass every one of them through [`encode`] and
//! [`decode`] and still write the windows of the whole stage.
//!
//! Encoding: one version byte, then MessagePack with field names (like the checkpoints),
//! so a reader meets an unknown version with a clear error instead of misreading it.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use shopstream_ingest::event::InputTopic;

use crate::coordinator::{Close, Part};
use crate::shard_set::Report;

/// The encoding's version (the first byte of every message). Version 2: examples carry
/// `user_category_exposure` (examples schema 2); every instance of a group runs one
/// version, and a message of another is refused, not misread.
pub const VERSION: u8 = 2;

/// What a shard side sends the coordinator, all on one topic (`<prefix>.shards`) so that
/// a sender's progress reaches the coordinator before the parts that depend on it.
/// `A` is what the global stage takes from each admitted event (the job's drift
/// arrivals), which this crate does not know.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToCoordinator<A = ()> {
    /// What the coordinator needs to decide closes, since the sender's last progress.
    Progress {
        /// Newest event times and the windows that received events.
        report: Report,
        /// Partitions that stopped holding the watermark back (read to their end, idle,
        /// revoked), after every event they delivered is in `report` or an earlier one.
        released: Vec<(InputTopic, i32)>,
        /// What the global stage takes from the admitted events, in admission order.
        arrivals: Vec<A>,
    },
    /// The sender's answer to close `seq` for the partition numbers it holds.
    Parts {
        /// The close answered.
        seq: u64,
        /// Who published it (its writer on the closes log). A coordinator takes only
        /// answers to its own closes and to those it adopted, never answers to another
        /// coordinator's close of the same number (one that lost the lease unnoticed).
        author: String,
        /// Every partition number the answer is for, also those with no shard yet (no
        /// event so far, nothing to contribute): the coordinator merges a close once
        /// every partition number is covered.
        covers: Vec<i32>,
        /// The parts of the shards among them, in partition order.
        parts: Vec<Part>,
    },
}

/// What the coordinator sends every shard (`<prefix>.closes`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToShards {
    /// A coordinator starts: from here on only its messages count (a lease holder that
    /// lost the lease may still write). A coordinator that takes over a run adopts the
    /// closes before its start and numbers on from them.
    Start {
        /// The coordinator's writer name.
        coordinator: String,
    },
    /// The next close.
    Close(SequencedClose),
    /// The coordinator stopped the run (it failed, or found an earlier run's log): every
    /// instance stops with this reason instead of waiting for closes that never come.
    Stop {
        /// Why.
        reason: String,
    },
    /// The final close is merged: no more answers are needed, and every instance's shard
    /// side ends. Until then an instance stays in the group even when it holds nothing,
    /// since a rebalance may hand it partitions to replay and answer.
    Merged,
    /// The coordinator is at work, sent every few seconds: an instance waiting for the
    /// lease tells a coordinator that is busy (replaying, say) from an election that
    /// left nobody holding the lease, and joins the lease group again only then.
    Alive,
}

/// Which messages of the closes log count: those of the coordinator whose `Start` came
/// last. A new lease holder starts after its predecessors and numbers on from their
/// closes; a holder that lost the lease without noticing may still write, and is ignored.
/// The shards and a coordinator taking a run over read the log by this one rule.
#[derive(Debug, Clone, Default)]
pub struct CurrentCoordinator {
    writer: Option<String>,
}

impl CurrentCoordinator {
    /// Whether `message`, written by `writer`, counts. A `Start` always does, and names
    /// the coordinator whose messages count from there on.
    pub fn counts(&mut self, writer: &str, message: &ToShards) -> bool {
        if let ToShards::Start { coordinator } = message {
            self.writer = Some(coordinator.clone());
            return true;
        }
        self.writer.as_deref() == Some(writer)
    }

    /// The coordinator whose messages count, once a `Start` was read.
    pub fn writer(&self) -> Option<&str> {
        self.writer.as_deref()
    }
}

/// A close with its place in the coordinator's sequence (`<prefix>.closes`): shards apply
/// closes in `seq` order and skip a `seq` they have applied (a log read again).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SequencedClose {
    /// 0 for the first close of a run, then one more for each.
    pub seq: u64,
    /// The close.
    pub close: Close,
}

/// Why a message could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// Encoding failed (a bug: every value here encodes).
    #[error("encoding a scale-out message: {0}")]
    Encode(String),
    /// The bytes are not a message of this version.
    #[error(
        "decoding a scale-out message of {bytes} bytes: {what}; every instance of one group \
         must run the same shopstream version"
    )]
    Decode {
        /// The message's size.
        bytes: usize,
        /// What is wrong.
        what: String,
    },
}

/// `message` as bytes: [`VERSION`], then MessagePack.
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, ProtocolError> {
    let mut bytes = vec![VERSION];
    rmp_serde::encode::write_named(&mut bytes, message)
        .map_err(|e| ProtocolError::Encode(e.to_string()))?;
    Ok(bytes)
}

/// The message `bytes` encode.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ProtocolError> {
    let failed = |what: String| ProtocolError::Decode {
        bytes: bytes.len(),
        what,
    };
    match bytes.split_first() {
        Some((&VERSION, body)) => rmp_serde::from_slice(body).map_err(|e| failed(e.to_string())),
        Some((version, _)) => Err(failed(format!(
            "version {version}, this build reads version {VERSION}"
        ))),
        None => Err(failed("empty".to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_messages_of_the_coordinator_that_started_last_count() {
        let start = |c: &str| ToShards::Start {
            coordinator: c.into(),
        };
        let mut current = CurrentCoordinator::default();
        // Nothing counts before a start.
        assert!(!current.counts("a", &ToShards::Alive));
        assert!(current.counts("a", &start("a")));
        assert!(current.counts("a", &ToShards::Merged));
        assert!(current.counts("b", &start("b")));
        assert_eq!(current.writer(), Some("b"));
        assert!(!current.counts("a", &ToShards::Alive));
        assert!(current.counts("b", &ToShards::Alive));
    }

    #[test]
    fn a_message_of_another_version_is_refused_with_both_versions_named() {
        let close = SequencedClose {
            seq: 7,
            close: Close {
                boundary: Some(60_000),
                windows: Vec::new(),
            },
        };
        let mut bytes = encode(&close).unwrap_or_default();
        assert_eq!(decode::<SequencedClose>(&bytes).ok(), Some(close));
        bytes[0] = VERSION + 1;
        let error = decode::<SequencedClose>(&bytes)
            .err()
            .map(|e| e.to_string());
        let error = error.unwrap_or_default();
        assert!(
            error.contains("version 3, this build reads version 2"),
            "{error}"
        );
        assert!(decode::<SequencedClose>(&[]).is_err());
        assert!(decode::<SequencedClose>(&[VERSION, 0xc1]).is_err());
    }
}
