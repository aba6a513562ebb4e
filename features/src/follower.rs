//! A [`ShardSet`] that follows the closes log at its own pace: the shard side of an
//! instance, which reads its partitions and the closes topic independently.
//!
//! A set that reads its partitions live applies a close as it arrives: the coordinator
//! decided it from the set's own reports, so every event it covers was admitted already.
//! A set that reads from behind (a new owner after a handover replaying a partition, see
//! docs/scale-out.md) may meet closes before the events they cover. It holds each close
//! until it is due ([`ShardSet::is_due`]: its partitions' watermarks have passed the
//! boundary) and applies every close left once it has read as far as the previous owner
//! had ([`Follower::caught_up`]). Either way it answers every close as the first owner
//! did (the property test
//! `a_partition_replayed_with_the_closes_log_answers_every_close_the_same`).

use std::collections::BTreeMap;

use shopstream_ingest::event::Event;
use shopstream_ingest::record::RecordMeta;

use crate::coordinator::{Close, Part};
use crate::protocol::SequencedClose;
use crate::shard_set::ShardSet;
use crate::window::Buffered;

/// A shard set and the closes it has not applied yet (see the module doc).
///
/// Serializable for per-partition checkpoints: whoever loads one reads the set's
/// partitions from the checkpoint's positions, behind where the closes were decided, so
/// `live` is not kept (it comes back false).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Follower {
    set: ShardSet,
    /// Closes read and not applied, by `seq`.
    waiting: BTreeMap<u64, Close>,
    /// The next close to apply.
    next_seq: u64,
    /// Whether the set has read as far as its partitions' previous owner.
    #[serde(skip)]
    live: bool,
}

impl Follower {
    /// Follows the closes from `next_seq` on; `live` when the set's partitions are read
    /// from where the closes were decided (a start, or a checkpoint written after applying
    /// close `next_seq - 1`), not from behind.
    pub fn new(set: ShardSet, next_seq: u64, live: bool) -> Self {
        Self {
            set,
            waiting: BTreeMap::new(),
            next_seq,
            live,
        }
    }

    /// Admits an event of the set's partitions (see [`ShardSet::admit`]); closes it makes
    /// due come from [`Follower::apply_due`].
    pub fn admit(&mut self, meta: RecordMeta, event: Event) -> Result<(), Box<Buffered>> {
        self.set.admit(meta, event)
    }

    /// Takes close `close.seq` from the log; one applied already (the log read again) is
    /// ignored.
    pub fn push_close(&mut self, close: SequencedClose) {
        if close.seq >= self.next_seq {
            self.waiting.entry(close.seq).or_insert(close.close);
        }
    }

    /// The set has read as far as its partitions' previous owner: every close read so
    /// far, and each later one, is applied as it comes.
    pub fn caught_up(&mut self) {
        self.live = true;
    }

    /// Applies the closes that can be applied now, in `seq` order: each one's parts.
    pub fn apply_due(&mut self) -> Vec<(u64, Vec<Part>)> {
        let mut answers = Vec::new();
        while let Some(close) = self.waiting.get(&self.next_seq) {
            if !self.live && !self.set.is_due(close) {
                break;
            }
            let Some(close) = self.waiting.remove(&self.next_seq) else {
                break;
            };
            answers.push((self.next_seq, self.set.on_close(&close)));
            self.next_seq += 1;
        }
        answers
    }

    /// The next close to apply.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The shard set.
    pub fn set(&self) -> &ShardSet {
        &self.set
    }

    /// The shard set, to report from or serve with.
    pub fn set_mut(&mut self) -> &mut ShardSet {
        &mut self.set
    }
}
