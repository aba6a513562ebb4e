//! The closes a shard side keeps for the stages it starts later, and the re-read of the
//! closes log for the ones it no longer keeps.
//!
//! A stage starts from its partition's checkpoint (or from nothing) and needs every close
//! from the checkpoint's on. Each close carries the inventory events of its windows, so
//! keeping every close read would grow with the whole inventory stream for as long as the
//! job runs. The side keeps only the closes at or after the oldest checkpoint of the
//! partitions it holds: a stage that starts again for one of those needs nothing older.
//! A stage that needs older ones (a partition taken over from an instance whose last
//! checkpoint is older, or one never checkpointed) gets them by reading the closes log
//! again from its start, by the same rule of which coordinator counts
//! ([`CurrentCoordinator`]).

use std::collections::{BTreeMap, VecDeque};

use shopstream_features::protocol::{
    self, CurrentCoordinator, ProtocolError, SequencedClose, ToShards,
};
use shopstream_kafka::log::LogEntry;

/// The closes kept, with who published each, and how far the dropped ones reach.
#[derive(Debug, Default)]
pub(super) struct KeptCloses {
    /// Closes from [`KeptCloses::first`] on, in the order read, each with the log offset
    /// it was read at.
    closes: VecDeque<(SequencedClose, i64)>,
    /// Who published each close (by number), for the answers; kept as long as the close,
    /// and for closes read again while a stage may still answer them.
    authors: BTreeMap<u64, String>,
    /// Every close numbered below this was dropped.
    first: u64,
    /// The log offset of the newest close dropped (where a re-read may stop).
    dropped_through: Option<i64>,
    /// One more than the highest close number read.
    next: u64,
}

/// Closes read again from the log: those numbered `from..to` (each with its author).
#[derive(Debug)]
pub(super) struct Reread {
    from: u64,
    to: u64,
    /// Read through this offset (the newest close dropped).
    through: i64,
    current: CurrentCoordinator,
    found: BTreeMap<u64, (SequencedClose, String)>,
}

impl KeptCloses {
    /// Keeps a close read at `offset` of the closes log, published by `author`.
    pub(super) fn push(&mut self, close: SequencedClose, author: String, offset: i64) {
        self.next = self.next.max(close.seq + 1);
        if close.seq < self.first {
            // Already dropped (a log read again): no stage kept here needs it.
            return;
        }
        self.authors.insert(close.seq, author);
        self.closes.push_back((close, offset));
    }

    /// Who published close `seq`, when known.
    pub(super) fn author(&self, seq: u64) -> Option<&str> {
        self.authors.get(&seq).map(String::as_str)
    }

    /// The closes kept, in the order read.
    pub(super) fn iter(&self) -> impl Iterator<Item = &SequencedClose> {
        self.closes.iter().map(|(close, _)| close)
    }

    /// Drops the closes numbered below `floor` (no stage held needs them): `floor` is the
    /// oldest checkpoint of the partitions held, `None` when none is held.
    pub(super) fn drop_below(&mut self, floor: Option<u64>) {
        let floor = floor.unwrap_or(self.next).min(self.next);
        if floor <= self.first {
            return;
        }
        while let Some((close, offset)) = self.closes.front() {
            if close.seq >= floor {
                break;
            }
            // Closes are kept in the order read, so the last dropped is the newest.
            self.dropped_through = Some(*offset);
            self.closes.pop_front();
        }
        self.authors = self.authors.split_off(&floor);
        self.first = floor;
    }

    /// What a stage whose next close is `from` has to read again, if anything.
    pub(super) fn reread_for(&self, from: u64) -> Option<Reread> {
        let through = self.dropped_through?;
        (from < self.first).then(|| Reread {
            from,
            to: self.first,
            through,
            current: CurrentCoordinator::default(),
            found: BTreeMap::new(),
        })
    }

    /// Takes in the author of close `seq`, read again (for the answers the stage gives).
    pub(super) fn note_author(&mut self, seq: u64, author: String) {
        self.authors.entry(seq).or_insert(author);
    }

    /// The number of closes kept (for tests and logs).
    pub(super) fn len(&self) -> usize {
        self.closes.len()
    }

    /// Every close below this number was dropped.
    pub(super) fn first(&self) -> u64 {
        self.first
    }
}

impl Reread {
    /// Takes the next entry of the log read from its start; `true` once the log is read
    /// far enough.
    pub(super) fn take(&mut self, entry: &LogEntry) -> Result<bool, ProtocolError> {
        let message: ToShards = protocol::decode(&entry.payload)?;
        if self.current.counts(&entry.writer, &message)
            && let ToShards::Close(close) = message
            && (self.from..self.to).contains(&close.seq)
        {
            // The first of a number counts, as for a stage reading the log (`push_close`).
            self.found
                .entry(close.seq)
                .or_insert_with(|| (close, entry.writer.clone()));
        }
        Ok(entry.offset >= self.through)
    }

    /// The closes found, in number order; an error names the first number missing.
    pub(super) fn finish(self) -> Result<Vec<(SequencedClose, String)>, u64> {
        if let Some(missing) = (self.from..self.to).find(|seq| !self.found.contains_key(seq)) {
            return Err(missing);
        }
        Ok(self.found.into_values().collect())
    }

    /// The numbers it reads again.
    pub(super) fn range(&self) -> std::ops::Range<u64> {
        self.from..self.to
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shopstream_features::Close;

    fn close(seq: u64) -> SequencedClose {
        SequencedClose {
            seq,
            close: Close {
                boundary: Some(seq as i64 * 60_000),
                windows: Vec::new(),
            },
        }
    }

    fn entry(writer: &str, offset: i64, message: &ToShards) -> LogEntry {
        LogEntry {
            writer: writer.to_string(),
            offset,
            payload: protocol::encode(message).expect("encode"),
        }
    }

    fn start(coordinator: &str) -> ToShards {
        ToShards::Start {
            coordinator: coordinator.to_string(),
        }
    }

    /// Ten closes by "a", read at offsets 1..=10 (offset 0 is its start).
    fn ten() -> KeptCloses {
        let mut kept = KeptCloses::default();
        for seq in 0..10 {
            kept.push(close(seq), "a".into(), seq as i64 + 1);
        }
        kept
    }

    #[test]
    fn closes_below_the_oldest_checkpoint_held_are_dropped_with_their_authors() {
        let mut kept = ten();
        kept.drop_below(Some(4));
        assert_eq!(kept.first(), 4);
        assert_eq!(
            kept.iter().map(|c| c.seq).collect::<Vec<_>>(),
            (4..10).collect::<Vec<_>>()
        );
        assert_eq!(kept.author(3), None);
        assert_eq!(kept.author(4), Some("a"));
        // A lower floor later (a stage started from an older checkpoint) keeps what is
        // kept: what was dropped stays dropped.
        kept.drop_below(Some(2));
        assert_eq!(kept.first(), 4);
        assert_eq!(kept.len(), 6);
    }

    #[test]
    fn a_side_holding_no_partition_keeps_no_close() {
        let mut kept = ten();
        kept.drop_below(None);
        assert_eq!(kept.len(), 0);
        assert_eq!(kept.first(), 10);
        // A close read again below what was dropped is not kept either.
        kept.push(close(9), "a".into(), 10);
        assert_eq!(kept.len(), 0);
        kept.push(close(10), "a".into(), 11);
        assert_eq!(kept.len(), 1);
    }

    #[test]
    fn a_stage_needing_no_dropped_close_reads_nothing_again() {
        let mut kept = ten();
        assert!(kept.reread_for(0).is_none(), "nothing dropped yet");
        kept.drop_below(Some(4));
        assert!(kept.reread_for(4).is_none());
        assert!(kept.reread_for(7).is_none());
        assert_eq!(
            kept.reread_for(1)
                .expect("closes 1..4 were dropped")
                .range(),
            1..4
        );
    }

    #[test]
    fn a_reread_takes_the_dropped_closes_of_the_coordinator_that_counts() {
        let mut kept = KeptCloses::default();
        // The log: "a" starts and closes 0..3; "b" takes over and closes 3 and 4; "a",
        // not knowing yet, writes its own close 3, which does not count.
        let log = vec![
            entry("a", 0, &start("a")),
            entry("a", 1, &ToShards::Close(close(0))),
            entry("a", 2, &ToShards::Close(close(1))),
            entry("a", 3, &ToShards::Close(close(2))),
            entry("b", 4, &start("b")),
            entry(
                "a",
                5,
                &ToShards::Close(SequencedClose {
                    seq: 3,
                    close: close(99).close,
                }),
            ),
            entry("b", 6, &ToShards::Close(close(3))),
            entry("b", 7, &ToShards::Close(close(4))),
        ];
        // What the side read and kept, by the same rule.
        let mut current = CurrentCoordinator::default();
        for e in &log {
            let message: ToShards = protocol::decode(&e.payload).expect("decode");
            if current.counts(&e.writer, &message)
                && let ToShards::Close(c) = message
            {
                kept.push(c, e.writer.clone(), e.offset);
            }
        }
        kept.drop_below(Some(4));
        let mut reread = kept.reread_for(1).expect("closes 1..4 were dropped");
        let mut done_at = None;
        for e in &log {
            if reread.take(e).expect("a message of this version") {
                done_at = Some(e.offset);
                break;
            }
        }
        assert_eq!(done_at, Some(6), "read through the newest close dropped");
        let found = reread.finish().expect("every dropped close found");
        assert_eq!(
            found
                .iter()
                .map(|(c, w)| (c.seq, w.as_str()))
                .collect::<Vec<_>>(),
            [(1, "a"), (2, "a"), (3, "b")]
        );
        assert_eq!(found[2].0, close(3), "b's close 3, not a's stale one");
        for (c, w) in found {
            kept.note_author(c.seq, w);
        }
        assert_eq!(kept.author(3), Some("b"));
    }

    #[test]
    fn a_reread_that_misses_a_close_names_it() {
        let mut kept = ten();
        kept.drop_below(Some(5));
        let mut reread = kept.reread_for(0).expect("closes 0..5 were dropped");
        // A log that lost close 2 (it cannot: the side read it there; the check is what
        // keeps a stage from starting with a gap).
        for seq in [0u64, 1, 3, 4] {
            let _ = reread.take(&entry("a", 0, &start("a"))).expect("decode");
            if reread
                .take(&entry("a", seq as i64 + 1, &ToShards::Close(close(seq))))
                .expect("decode")
            {
                break;
            }
        }
        assert_eq!(reread.finish().expect_err("close 2 is missing"), 2);
    }
}
