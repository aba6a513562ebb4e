//! How far the source has read each input partition, for the live job's idleness rule.
//!
//! A partition that delivered nothing for `pipeline.idle_partition_timeout_secs` stops
//! holding the watermark back. Silence alone does not show idleness: a partition whose
//! messages wait in librdkafka's queue or in the source's channel behind other partitions'
//! (a job catching up, a loaded machine) is silent too, and releasing it would make its
//! waiting events late. So a partition only counts as drained when statistics from
//! librdkafka taken after it fell silent, and recent enough, show it fetched to the end of
//! the log with nothing of it left to hand over, and the pipeline has read everything the
//! source handed on.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shopstream_ingest::event::InputTopic;

/// What is known of one partition.
#[derive(Debug, Clone, Copy, Default)]
struct PartitionProgress {
    /// librdkafka's latest statistics of it, and when they were recorded.
    statistics: Option<(Instant, EndOffsets)>,
    /// The offset after the last message the source handed on (0 before any).
    handed_on_up_to: i64,
}

/// Read progress per partition, shared by the source (which records it) and the pipeline
/// (which asks whether a silent partition is drained). Cloning shares it.
#[derive(Debug, Clone)]
pub struct ReadProgress {
    partitions: Arc<Mutex<BTreeMap<(InputTopic, i32), PartitionProgress>>>,
    /// Statistics older than this say nothing (they stop while the source is blocked on a
    /// full channel): twice the statistics interval.
    max_age: Duration,
}

impl ReadProgress {
    /// Progress whose statistics arrive every `statistics_interval`.
    pub fn new(statistics_interval: Duration) -> Self {
        Self {
            partitions: Arc::default(),
            max_age: statistics_interval.saturating_mul(2),
        }
    }

    /// Records a partition's statistics from librdkafka.
    pub fn record_statistics(
        &self,
        key: (InputTopic, i32),
        statistics: &rdkafka::statistics::Partition,
    ) {
        let offsets = EndOffsets {
            high_watermark: statistics.hi_offset,
            last_stable: statistics.ls_offset,
            next_fetch: statistics.next_offset,
            handed_over_up_to: statistics.app_offset,
            queued: statistics.fetchq_cnt,
            fetched_messages: statistics.rxmsgs,
        };
        if let Ok(mut partitions) = self.partitions.lock() {
            partitions.entry(key).or_default().statistics = Some((Instant::now(), offsets));
        }
    }

    /// The source handed on the message at `offset`.
    pub fn handed_on(&self, key: (InputTopic, i32), offset: i64) {
        if let Ok(mut partitions) = self.partitions.lock() {
            let entry = partitions.entry(key).or_default();
            entry.handed_on_up_to = entry.handed_on_up_to.max(offset.saturating_add(1));
        }
    }

    /// Forgets what is known of `partitions` (assigned or revoked: statistics from before
    /// describe another assignment).
    pub fn forget(&self, partitions: &[(InputTopic, i32)]) {
        if let Ok(mut known) = self.partitions.lock() {
            for key in partitions {
                known.remove(key);
            }
        }
    }

    /// Whether nothing of a partition silent since `silent_since` waits to be read by a
    /// pipeline whose next offset for it is `read_up_to` (`None`: it read nothing of it).
    /// It needs statistics recorded after `silent_since` and at most twice the statistics
    /// interval old (so a snapshot from before new messages came, or one left over while
    /// the source was blocked, does not count) that show nothing left (see
    /// [`nothing_left`]), and everything the source handed on read. Unknown counts as not
    /// drained.
    pub fn drained(
        &self,
        key: (InputTopic, i32),
        read_up_to: Option<i64>,
        silent_since: Instant,
    ) -> bool {
        let Ok(partitions) = self.partitions.lock() else {
            return false;
        };
        let Some(progress) = partitions.get(&key) else {
            return false;
        };
        let Some((recorded, offsets)) = progress.statistics else {
            return false;
        };
        let read_up_to = read_up_to.unwrap_or(0);
        recorded >= silent_since
            && recorded.elapsed() <= self.max_age
            && read_up_to >= progress.handed_on_up_to
            && nothing_left(&offsets, read_up_to)
    }
}

/// The offsets of one partition in librdkafka's statistics (`-1001`: not known).
#[derive(Debug, Clone, Copy, Default)]
struct EndOffsets {
    /// The partition's high watermark, from the last fetch response.
    high_watermark: i64,
    /// Its last stable offset (the end a `read_committed` consumer reads to).
    last_stable: i64,
    /// The next offset librdkafka will fetch.
    next_fetch: i64,
    /// The offset after the last message (or transaction marker) handed to the
    /// application since the partition was assigned.
    handed_over_up_to: i64,
    /// Messages fetched and not yet handed over, in the queue this partition shares with
    /// the consumer's other partitions.
    queued: i64,
    /// Messages of this partition fetched since the consumer started.
    fetched_messages: u64,
}

/// Whether nothing of the partition is left for a pipeline whose next offset is
/// `read_up_to`: librdkafka's fetch position is at the end, and the pipeline read up to
/// it, or librdkafka handed over everything up to it (transaction markers included), or
/// nothing of it was ever fetched, or nothing at all waits in the consumer's queue. (A
/// partition with nothing to read since its assignment has handed nothing over, so the
/// handed-over test alone would hold it forever.)
fn nothing_left(offsets: &EndOffsets, read_up_to: i64) -> bool {
    let end = if offsets.last_stable >= 0 {
        offsets.last_stable
    } else {
        offsets.high_watermark
    };
    end >= 0
        && offsets.next_fetch >= end
        && (read_up_to >= end
            || offsets.handed_over_up_to >= end
            || offsets.fetched_messages == 0
            || offsets.queued == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNKNOWN: i64 = -1001;

    fn offsets(high: i64, next: i64, handed: i64, queued: i64) -> EndOffsets {
        EndOffsets {
            high_watermark: high,
            last_stable: high,
            next_fetch: next,
            handed_over_up_to: handed,
            queued,
            fetched_messages: 500,
        }
    }

    #[test]
    fn nothing_is_left_only_when_all_of_the_partition_was_handed_over_or_read() {
        // Everything up to the end handed over, other partitions' messages queued.
        assert!(nothing_left(&offsets(500, 500, 500, 40), 0));
        // Fetched to the end, but its last 20 messages still queued.
        assert!(!nothing_left(&offsets(500, 500, 480, 20), 480));
        // Fetched to the end, none handed over yet: queued behind other partitions.
        assert!(!nothing_left(&offsets(500, 500, UNKNOWN, 500), 0));
        // Nothing to read since the assignment: nothing handed over, nothing queued.
        assert!(nothing_left(&offsets(500, 500, UNKNOWN, 0), 0));
        // Likewise with other partitions' messages queued: it never fetched any.
        let never_fetched = EndOffsets {
            fetched_messages: 0,
            ..offsets(500, 500, UNKNOWN, 70)
        };
        assert!(nothing_left(&never_fetched, 0));
        // Assigned again at its end after a rebalance: nothing handed over since, other
        // partitions' messages queued, but the pipeline read it to the end before.
        assert!(nothing_left(&offsets(500, 500, UNKNOWN, 70), 500));
        // Not fetched to the end (a catch-up in progress).
        assert!(!nothing_left(&offsets(500, 300, 300, 0), 300));
        // No fetch response yet.
        assert!(!nothing_left(&offsets(UNKNOWN, UNKNOWN, UNKNOWN, 0), 0));
    }

    #[test]
    fn the_end_is_the_last_stable_offset_when_the_broker_reports_one() {
        // An open transaction from 480: a read_committed consumer reads to 480.
        let open = EndOffsets {
            high_watermark: 500,
            last_stable: 480,
            next_fetch: 480,
            handed_over_up_to: 480,
            queued: 0,
            fetched_messages: 480,
        };
        assert!(nothing_left(&open, 480));
        let no_stable = EndOffsets {
            last_stable: UNKNOWN,
            ..open
        };
        assert!(!nothing_left(&no_stable, 480));
    }

    fn caught_up(end: i64) -> rdkafka::statistics::Partition {
        rdkafka::statistics::Partition {
            hi_offset: end,
            ls_offset: end,
            next_offset: end,
            app_offset: end,
            ..Default::default()
        }
    }

    #[test]
    fn a_silent_partition_is_drained_only_once_the_pipeline_read_what_was_handed_on() {
        let progress = ReadProgress::new(Duration::from_secs(5));
        let key = (InputTopic::Clicks, 3);
        let silent_since = Instant::now();
        assert!(
            !progress.drained(key, Some(100), silent_since),
            "no statistics yet"
        );
        progress.record_statistics(key, &caught_up(100));
        progress.handed_on(key, 99);
        assert!(
            !progress.drained(key, Some(60), silent_since),
            "40 messages in the channel"
        );
        assert!(!progress.drained(key, None, silent_since));
        assert!(progress.drained(key, Some(100), silent_since));
        // New messages arrive: the next statistics show them unfetched.
        progress.record_statistics(
            key,
            &rdkafka::statistics::Partition {
                hi_offset: 150,
                ls_offset: 150,
                ..caught_up(100)
            },
        );
        assert!(!progress.drained(key, Some(100), silent_since));
        progress.record_statistics(key, &caught_up(150));
        progress.forget(&[key]);
        assert!(
            !progress.drained(key, Some(150), silent_since),
            "forgotten on reassignment"
        );
    }

    #[test]
    fn statistics_from_before_the_silence_or_too_old_say_nothing() {
        let key = (InputTopic::Orders, 0);
        let progress = ReadProgress::new(Duration::from_millis(5));
        progress.record_statistics(key, &caught_up(100));
        // Recorded before the partition's last message: new ones may have come since.
        let later = Instant::now() + Duration::from_millis(1);
        assert!(!progress.drained(key, Some(100), later));
        // Recorded after it, but older than twice the interval (a blocked source).
        let silent_since = Instant::now() - Duration::from_secs(1);
        std::thread::sleep(Duration::from_millis(20));
        assert!(!progress.drained(key, Some(100), silent_since));
        progress.record_statistics(key, &caught_up(100));
        assert!(progress.drained(key, Some(100), silent_since));
    }
}
