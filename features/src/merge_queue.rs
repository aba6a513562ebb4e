//! The coordinator's side of rule 3 of docs/scale-out.md: parts of closes that arrive
//! from shards anywhere (threads, other instances, a new owner replaying a partition),
//! handed out for merging close by close, in `seq` order, once every partition number
//! has answered.
//!
//! A partition can answer a close twice: its old owner answered, then it moved and the
//! new owner replayed it. Parts are deterministic, so the first answer is kept and a
//! later copy only checked against it: a copy that differs means two owners computed
//! different state, which would make the output depend on who held the partition, and
//! is reported instead of merged. Parts that contribute nothing (a shard with no event in
//! the windows and nothing pending) merge like no part at all, so they are dropped on
//! arrival and an owner may send them or not.

use std::collections::{BTreeMap, BTreeSet};

use crate::coordinator::Part;

/// Why an answer could not be taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MergeQueueError {
    /// A part for a partition its answer does not cover.
    #[error("an answer to close {seq} holds a part of partition {partition} it does not cover")]
    Uncovered {
        /// The close.
        seq: u64,
        /// The partition.
        partition: i32,
    },
    /// Two answers for one partition disagree.
    #[error(
        "partition {partition} answered close {seq} twice with different parts: two owners \
         of the partition computed different state (a bug; the output would depend on who \
         held it)"
    )]
    Conflict {
        /// The close.
        seq: u64,
        /// The partition.
        partition: i32,
    },
}

/// The answers gathered for one close.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct Answers {
    covered: BTreeSet<i32>,
    parts: BTreeMap<i32, Part>,
}

/// Parts of closes waiting for every partition's answer (see the module doc).
///
/// Serialisable: a coordinator checkpoint keeps the answers it has not merged yet.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct MergeQueue {
    partitions: BTreeSet<i32>,
    next_seq: u64,
    waiting: BTreeMap<u64, Answers>,
}

impl MergeQueue {
    /// A queue for closes from `next_seq` on, answered by `partitions`.
    pub fn new(partitions: impl IntoIterator<Item = i32>, next_seq: u64) -> Self {
        Self {
            partitions: partitions.into_iter().collect(),
            next_seq,
            waiting: BTreeMap::new(),
        }
    }

    /// The close to be merged next.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Partition numbers that have not answered close [`MergeQueue::next_seq`] yet.
    pub fn missing(&self) -> BTreeSet<i32> {
        let covered = self.waiting.get(&self.next_seq).map(|a| &a.covered);
        self.partitions
            .iter()
            .filter(|p| !covered.is_some_and(|c| c.contains(p)))
            .copied()
            .collect()
    }

    /// Takes an answer to close `seq` for the partitions `covers`, with the parts of
    /// those that contribute. Answers to merged closes are ignored.
    pub fn offer(
        &mut self,
        seq: u64,
        covers: &[i32],
        parts: Vec<Part>,
    ) -> Result<(), MergeQueueError> {
        if seq < self.next_seq {
            return Ok(());
        }
        for part in &parts {
            if !covers.contains(&part.partition) {
                return Err(MergeQueueError::Uncovered {
                    seq,
                    partition: part.partition,
                });
            }
        }
        let mut parts: BTreeMap<i32, Part> = parts
            .into_iter()
            .filter(|p| !p.is_empty())
            .map(|p| (p.partition, p))
            .collect();
        let answers = self.waiting.entry(seq).or_default();
        for &partition in covers {
            let part = parts.remove(&partition);
            if answers.covered.insert(partition) {
                if let Some(part) = part {
                    answers.parts.insert(partition, part);
                }
            } else if answers.parts.get(&partition) != part.as_ref() {
                return Err(MergeQueueError::Conflict { seq, partition });
            }
        }
        Ok(())
    }

    /// The parts of the next close once every partition answered it, in partition order.
    pub fn pop_ready(&mut self) -> Option<(u64, Vec<Part>)> {
        let answers = self.waiting.get(&self.next_seq)?;
        if !self.partitions.is_subset(&answers.covered) {
            return None;
        }
        let seq = self.next_seq;
        let answers = self.waiting.remove(&seq)?;
        self.next_seq += 1;
        Some((seq, answers.parts.into_values().collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::ShardWindow;

    fn part(partition: i32, events: usize) -> Part {
        Part {
            partition,
            windows: vec![ShardWindow {
                events,
                examples: Vec::new(),
                users: Vec::new(),
                oldest_pending: None,
            }],
            rest: Vec::new(),
            refused: Vec::new(),
        }
    }

    #[test]
    fn a_close_is_ready_once_every_partition_answered_and_closes_come_in_order() {
        let mut queue = MergeQueue::new([0, 1, 2], 5);
        queue.offer(6, &[0, 1, 2], vec![part(1, 4)]).expect("taken");
        queue
            .offer(5, &[0, 2], vec![part(0, 1), part(2, 3)])
            .expect("taken");
        assert_eq!(queue.missing(), BTreeSet::from([1]));
        assert!(
            queue.pop_ready().is_none(),
            "partition 1 has not answered 5"
        );
        // Partition 1 has no shard yet: it covers the close with no part.
        queue.offer(5, &[1], Vec::new()).expect("taken");
        let (seq, parts) = queue.pop_ready().expect("ready");
        assert_eq!(seq, 5);
        assert_eq!(parts, vec![part(0, 1), part(2, 3)]);
        assert_eq!(queue.pop_ready(), Some((6, vec![part(1, 4)])));
        assert!(queue.pop_ready().is_none());
        assert_eq!(queue.next_seq(), 7);
    }

    #[test]
    fn a_replayed_copy_is_ignored_and_a_differing_copy_is_a_conflict() {
        let mut queue = MergeQueue::new([0, 1], 0);
        queue.offer(0, &[0], vec![part(0, 2)]).expect("taken");
        // The new owner of 0 answers again, with an empty part of 1 it now holds too.
        queue
            .offer(0, &[0, 1], vec![part(0, 2), part(1, 0)])
            .expect("taken");
        assert_eq!(queue.pop_ready(), Some((0, vec![part(0, 2)])));
        // An answer to a merged close (a replay from further back) changes nothing.
        queue.offer(0, &[0, 1], vec![part(0, 9)]).expect("taken");
        queue.offer(1, &[0], vec![part(0, 1)]).expect("taken");
        assert_eq!(
            queue.offer(1, &[0], vec![part(0, 2)]),
            Err(MergeQueueError::Conflict {
                seq: 1,
                partition: 0
            })
        );
        assert_eq!(
            queue.offer(1, &[1], vec![part(0, 1)]),
            Err(MergeQueueError::Uncovered {
                seq: 1,
                partition: 0
            })
        );
    }
}
