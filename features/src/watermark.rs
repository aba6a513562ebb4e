//! Event-time watermark: the minimum over input partitions of (newest event time seen -
//! allowed lateness), which closes windows. Lateness is judged per partition, by the
//! partition's own watermark (its newest event time - allowed lateness), so whether an
//! event is late never depends on how fast other partitions (read by other threads or
//! instances) were consumed.

use std::collections::BTreeMap;

use shopstream_ingest::event::{InputTopic, Millis};

/// Tracks the newest event time per input partition.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(from = "StoredWatermark")]
pub struct Watermark {
    newest: BTreeMap<(InputTopic, i32), Option<Millis>>,
    lateness_ms: Millis,
    /// [`least_newest`] of `newest`, kept as the partitions change, so that the
    /// watermark asked for after every event does not read every partition. Not stored:
    /// computed when a watermark is read back.
    #[serde(skip_serializing)]
    least: Option<Millis>,
}

/// The stored fields of a [`Watermark`], as read back.
#[derive(serde::Deserialize)]
struct StoredWatermark {
    newest: BTreeMap<(InputTopic, i32), Option<Millis>>,
    lateness_ms: Millis,
}

impl From<StoredWatermark> for Watermark {
    fn from(stored: StoredWatermark) -> Self {
        Self {
            least: least_newest(&stored.newest),
            newest: stored.newest,
            lateness_ms: stored.lateness_ms,
        }
    }
}

/// The least newest event time over `newest`: none while one of them has not been read
/// (or there are none).
fn least_newest(newest: &BTreeMap<(InputTopic, i32), Option<Millis>>) -> Option<Millis> {
    let mut min: Option<Millis> = None;
    for newest in newest.values() {
        let newest = (*newest)?;
        min = Some(min.map_or(newest, |m| m.min(newest)));
    }
    min
}

impl Watermark {
    /// A watermark that allows `lateness_ms` of out-of-order arrival per partition.
    pub fn new(lateness_ms: Millis) -> Self {
        Self {
            newest: BTreeMap::new(),
            lateness_ms,
            least: None,
        }
    }

    /// Makes the watermark wait for `partition` until its first event arrives (a partition
    /// known to hold data must not be overtaken before it was read at all).
    pub fn register(&mut self, topic: InputTopic, partition: i32) {
        self.newest.entry((topic, partition)).or_insert(None);
        self.least = least_newest(&self.newest);
    }

    /// Stops waiting for `partition` (it has been read to its end); its next event makes
    /// it count again.
    pub fn release(&mut self, topic: InputTopic, partition: i32) {
        self.newest.remove(&(topic, partition));
        self.least = least_newest(&self.newest);
    }

    /// Keeps only the partitions `keep` selects (a copy for the partitions one worker
    /// reads).
    pub fn retain(&mut self, keep: impl Fn(InputTopic, i32) -> bool) {
        self.newest
            .retain(|(topic, partition), _| keep(*topic, *partition));
        self.least = least_newest(&self.newest);
    }

    /// Records an event of `partition` at `ts`. Returns the partition's own watermark
    /// before it (its newest event time - allowed lateness; none before its first event),
    /// which decides whether the event is late.
    pub fn observe(&mut self, topic: InputTopic, partition: i32, ts: Millis) -> Option<Millis> {
        let count = self.newest.len();
        let newest = self.newest.entry((topic, partition)).or_insert(None);
        let before = *newest;
        let after = Some(before.map_or(ts, |n| n.max(ts)));
        *newest = after;
        // Raising a partition above the least leaves the least; a new partition, or
        // the one (or one of those) at the least, can move it.
        let added = self.newest.len() != count;
        if added || (after != before && self.least == before) {
            self.least = least_newest(&self.newest);
        }
        before.map(|n| n - self.lateness_ms)
    }

    /// The current watermark: none while a registered partition has not been read yet.
    pub fn current(&self) -> Option<Millis> {
        self.least.map(|m| m - self.lateness_ms)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// The kept least gives the watermark a scan of every partition gives, through
        /// any mix of registrations, releases, events (new, late or repeated times, on
        /// partitions known or not) and a restore (which does not store it).
        #[test]
        fn the_kept_least_is_the_least_of_every_partition(
            steps in proptest::collection::vec((0..4u8, 0..2usize, 0..3i32, 0..50i64), 0..60)
        ) {
            let topics = [InputTopic::Clicks, InputTopic::Orders];
            let mut w = Watermark::new(5);
            for (step, topic, partition, ts) in steps {
                let topic = topics[topic];
                match step {
                    0 => w.register(topic, partition),
                    1 => w.release(topic, partition),
                    2 => {
                        let bytes = rmp_serde::to_vec_named(&w).expect("encode");
                        w = rmp_serde::from_slice(&bytes).expect("decode");
                    }
                    _ => _ = w.observe(topic, partition, ts),
                }
                let scanned = least_newest(&w.newest).map(|m| m - 5);
                prop_assert_eq!(w.current(), scanned);
            }
        }
    }

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
