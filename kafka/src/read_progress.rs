//! How far the source has read each input partition, for the live job's idleness rule.
//!
//! A partition that delivered nothing for `pipeline.idle_partition_timeout_secs` stops
//! holding the watermark back. Silence alone does not show idleness: a partition whose
//! messages wait in librdkafka's queue or in the source's channel behind other partitions'
//! (a job catching up, a loaded machine) is silent too, and releasing it would make its
//! waiting events late. So a partition only counts as drained when librdkafka's latest
//! statistics show it fetched to the end of the log and every fetched message handed to
//! the source, and the pipeline has read everything the source handed on.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use shopstream_ingest::event::InputTopic;

/// What is known of one partition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct PartitionProgress {
    /// librdkafka's latest statistics: fetched to the end and all of it handed over.
    fetched_to_end: bool,
    /// The offset after the last message the source handed on (0 before any).
    handed_on_up_to: i64,
}

/// Read progress per partition, shared by the source (which records it) and the pipeline
/// (which asks whether a silent partition is drained). Cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct ReadProgress {
    partitions: Arc<Mutex<BTreeMap<(InputTopic, i32), PartitionProgress>>>,
}

impl ReadProgress {
    /// Records a partition's statistics from librdkafka (see [`fetched_to_end`]).
    pub fn record_statistics(
        &self,
        key: (InputTopic, i32),
        statistics: &rdkafka::statistics::Partition,
    ) {
        let done = fetched_to_end(&EndOffsets {
            high_watermark: statistics.hi_offset,
            last_stable: statistics.ls_offset,
            next_fetch: statistics.next_offset,
            handed_over_up_to: statistics.app_offset,
            queued: statistics.fetchq_cnt,
            fetched_messages: statistics.rxmsgs,
        });
        if let Ok(mut partitions) = self.partitions.lock() {
            partitions.entry(key).or_default().fetched_to_end = done;
        }
    }

    /// The source handed on the message at `offset`.
    pub fn handed_on(&self, key: (InputTopic, i32), offset: i64) {
        if let Ok(mut partitions) = self.partitions.lock() {
            let entry = partitions.entry(key).or_default();
            entry.handed_on_up_to = entry.handed_on_up_to.max(offset + 1);
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

    /// Whether nothing of the partition waits to be read by a pipeline whose next offset
    /// for it is `read_up_to` (`None`: it read nothing of it): fetched to the end, handed
    /// over by librdkafka, and read from the source's channel. Unknown counts as not
    /// drained (no statistics yet: they come every `statistics.interval.ms`).
    pub fn drained(&self, key: (InputTopic, i32), read_up_to: Option<i64>) -> bool {
        let Ok(partitions) = self.partitions.lock() else {
            return false;
        };
        partitions
            .get(&key)
            .is_some_and(|p| p.fetched_to_end && read_up_to.unwrap_or(0) >= p.handed_on_up_to)
    }
}

/// The offsets of one partition in librdkafka's statistics (`-1001`: not known).
#[derive(Debug, Clone, Copy)]
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

/// Whether librdkafka has fetched the partition to its end and handed over all it
/// fetched: the fetch position is at the end, and the application got everything up to
/// it (transaction markers included), or nothing of it was ever fetched, or nothing at
/// all waits in the consumer's queue. (A partition with nothing to read since its
/// assignment has handed nothing over, so the first test alone would hold it forever.)
fn fetched_to_end(offsets: &EndOffsets) -> bool {
    let end = if offsets.last_stable >= 0 {
        offsets.last_stable
    } else {
        offsets.high_watermark
    };
    end >= 0
        && offsets.next_fetch >= end
        && (offsets.handed_over_up_to >= end
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
    fn a_partition_is_fetched_to_its_end_only_when_all_of_it_was_handed_over() {
        // Everything up to the end handed over, other partitions' messages queued.
        assert!(fetched_to_end(&offsets(500, 500, 500, 40)));
        // Fetched to the end, but its last 20 messages still queued.
        assert!(!fetched_to_end(&offsets(500, 500, 480, 20)));
        // Fetched to the end, none handed over yet: queued behind other partitions.
        assert!(!fetched_to_end(&offsets(500, 500, UNKNOWN, 500)));
        // Nothing to read since the assignment: nothing handed over, nothing queued.
        assert!(fetched_to_end(&offsets(500, 500, UNKNOWN, 0)));
        // Likewise with other partitions' messages queued: it never fetched any.
        let never_fetched = EndOffsets {
            fetched_messages: 0,
            ..offsets(500, 500, UNKNOWN, 70)
        };
        assert!(fetched_to_end(&never_fetched));
        // Not fetched to the end (a catch-up in progress).
        assert!(!fetched_to_end(&offsets(500, 300, 300, 0)));
        // No fetch response yet.
        assert!(!fetched_to_end(&offsets(UNKNOWN, UNKNOWN, UNKNOWN, 0)));
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
        assert!(fetched_to_end(&open));
        let no_stable = EndOffsets {
            last_stable: UNKNOWN,
            ..open
        };
        assert!(!fetched_to_end(&no_stable));
    }

    #[test]
    fn a_silent_partition_is_drained_only_once_the_pipeline_read_what_was_handed_on() {
        let progress = ReadProgress::default();
        let key = (InputTopic::Clicks, 3);
        assert!(!progress.drained(key, Some(100)), "no statistics yet");
        let mut statistics = rdkafka::statistics::Partition {
            hi_offset: 100,
            ls_offset: 100,
            next_offset: 100,
            app_offset: 100,
            ..Default::default()
        };
        progress.record_statistics(key, &statistics);
        progress.handed_on(key, 99);
        assert!(
            !progress.drained(key, Some(60)),
            "40 messages in the channel"
        );
        assert!(!progress.drained(key, None));
        assert!(progress.drained(key, Some(100)));
        // New messages arrive: the next statistics show them unfetched.
        statistics.hi_offset = 150;
        statistics.ls_offset = 150;
        progress.record_statistics(key, &statistics);
        assert!(!progress.drained(key, Some(100)));
        progress.forget(&[key]);
        assert!(
            !progress.drained(key, Some(150)),
            "forgotten on reassignment"
        );
    }
}
