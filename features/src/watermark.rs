//! Event-time watermark: the minimum over input partitions of (newest event time seen -
//! allowed lateness), which closes windows. Lateness is judged per partition, by the
//! partition's own watermark (its newest event time - allowed lateness), so whether an
//! event is late never depends on how fast other partitions (read by other threads or
//! instances) were consumed.

use std::collections::BTreeMap;

use shopstream_ingest::event::{InputTopic, Millis};

/// Tracks the newest event time per input partition.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Watermark {
    newest: BTreeMap<(InputTopic, i32), Option<Millis>>,
    lateness_ms: Millis,
}

impl Watermark {
    /// A watermark that allows `lateness_ms` of out-of-order arrival per partition.
    pub fn new(lateness_ms: Millis) -> Self {
        Self {
            newest: BTreeMap::new(),
            lateness_ms,
        }
    }

    /// Makes the watermark wait for `partition` until its first event arrives (a partition
    /// known to hold data must not be overtaken before it was read at all).
    pub fn register(&mut self, topic: InputTopic, partition: i32) {
        self.newest.entry((topic, partition)).or_insert(None);
    }

    /// Stops waiting for `partition` (it has been read to its end); its next event makes
    /// it count again.
    pub fn release(&mut self, topic: InputTopic, partition: i32) {
        self.newest.remove(&(topic, partition));
    }

    /// Keeps only the partitions `keep` selects (a copy for the partitions one worker
    /// reads).
    pub fn retain(&mut self, keep: impl Fn(InputTopic, i32) -> bool) {
        self.newest
            .retain(|(topic, partition), _| keep(*topic, *partition));
    }

    /// Records an event of `partition` at `ts`. Returns the partition's own watermark
    /// before it (its newest event time - allowed lateness; none before its first event),
    /// which decides whether the event is late.
    pub fn observe(&mut self, topic: InputTopic, partition: i32, ts: Millis) -> Option<Millis> {
        let newest = self.newest.entry((topic, partition)).or_insert(None);
        let before = *newest;
        *newest = Some(before.map_or(ts, |n| n.max(ts)));
        before.map(|n| n - self.lateness_ms)
    }

    /// The current watermark: none while a registered partition has not been read yet.
    pub fn current(&self) -> Option<Millis> {
        let mut min: Option<Millis> = None;
        for newest in self.newest.values() {
            let newest = (*newest)?;
            min = Some(min.map_or(newest, |m| m.min(newest)));
        }
        min.map(|m| m - self.lateness_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slowest_partition_holds_the_watermark() {
        let mut w = Watermark::new(5);
        assert_eq!(w.current(), None);
        w.observe(InputTopic::Clicks, 0, 100);
        w.observe(InputTopic::Clicks, 1, 40);
        w.observe(InputTopic::Clicks, 0, 90);
        assert_eq!(w.current(), Some(35));
        w.observe(InputTopic::Clicks, 1, 200);
        assert_eq!(w.current(), Some(95));
        w.register(InputTopic::Orders, 0);
        assert_eq!(
            w.current(),
            None,
            "a registered partition not yet read holds it back"
        );
        w.observe(InputTopic::Orders, 0, 150);
        assert_eq!(w.current(), Some(95));
        w.release(InputTopic::Clicks, 0);
        assert_eq!(
            w.current(),
            Some(145),
            "a partition read to its end no longer holds it back"
        );
    }
}
