//! Examples of several partitions (and a window's users, alike) put in one (event time,
//! partition) order, each moved once.
//!
//! Each partition's examples come out of its pending queue already in time order, so
//! the lists are merged, not sorted: a stable sort of the joined list moved every
//! example (about 400 bytes) several times, and collecting it grew the list by copies.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use shopstream_ingest::event::Millis;

use crate::example::Example;

/// `runs` (each a partition and its examples) as one list in `(ts, partition)` order;
/// on equal keys, in the order of `runs`, then of each run. The same list as a stable
/// sort of the runs joined in order, which is what is done when a run is not in time
/// order (not expected: each is a partition's pending queue, kept in key order, or a
/// shard's matured examples, merged by this).
pub(crate) fn merge_in_time_order(runs: Vec<(i32, Vec<Example>)>) -> Vec<Example> {
    merge_by_time(runs, |e| e.ts)
}

/// [`merge_in_time_order`] of items with the time `ts` (a window's examples, or its
/// users at their first impressions).
pub(crate) fn merge_by_time<T>(
    runs: Vec<(i32, Vec<T>)>,
    ts: impl Fn(&T) -> Millis + Copy,
) -> Vec<T> {
    if !runs.iter().all(|(_, run)| run.is_sorted_by_key(ts)) {
        return sort_by_time(runs, ts);
    }
    let total = runs.iter().map(|(_, run)| run.len()).sum();
    let mut runs: Vec<(i32, std::vec::IntoIter<T>)> = runs
        .into_iter()
        .filter(|(_, run)| !run.is_empty())
        .map(|(partition, run)| (partition, run.into_iter()))
        .collect();
    if let [(_, only)] = runs.as_mut_slice() {
        return std::mem::take(only).collect();
    }
    // The next item of each run, by its key and the run's place (the tie-break).
    let head = |at: usize, (partition, run): &(i32, std::vec::IntoIter<T>)| {
        run.as_slice()
            .first()
            .map(|item| Reverse((ts(item), *partition, at)))
    };
    let mut heads: BinaryHeap<Reverse<(Millis, i32, usize)>> = runs
        .iter()
        .enumerate()
        .filter_map(|(at, r)| head(at, r))
        .collect();
    let mut merged = Vec::with_capacity(total);
    while let Some(Reverse((_, _, at))) = heads.pop() {
        let run = &mut runs[at];
        merged.extend(run.1.next());
        heads.extend(head(at, run));
    }
    merged
}

/// [`merge_by_time`] by a stable sort, for runs that are not in time order.
fn sort_by_time<T>(runs: Vec<(i32, Vec<T>)>, ts: impl Fn(&T) -> Millis) -> Vec<T> {
    let mut tagged: Vec<(i32, T)> = runs
        .into_iter()
        .flat_map(|(p, items)| items.into_iter().map(move |item| (p, item)))
        .collect();
    tagged.sort_by_key(|(partition, item)| (ts(item), *partition));
    tagged.into_iter().map(|(_, item)| item).collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A time and a tag that tells items apart.
    type Item = (Millis, usize);

    fn merge(runs: Vec<(i32, Vec<Item>)>) -> Vec<Item> {
        merge_by_time(runs, |(ts, _)| *ts)
    }

    proptest! {
        /// The merge gives what the stable sort gives, for runs in time order (the ones
        /// merged) and runs out of it (sorted), with partitions repeated across runs,
        /// equal times within and across runs, and empty runs.
        #[test]
        fn merging_runs_gives_the_stable_sort_of_the_runs_joined(
            runs in proptest::collection::vec(
                (0..3i32, proptest::collection::vec(0..5i64, 0..8), any::<bool>()),
                0..5,
            )
        ) {
            let mut tag = 0;
            let runs: Vec<(i32, Vec<Item>)> = runs
                .into_iter()
                .map(|(partition, mut times, in_order)| {
                    if in_order {
                        times.sort();
                    }
                    let run = times
                        .into_iter()
                        .map(|ts| {
                            tag += 1;
                            (ts, tag)
                        })
                        .collect();
                    (partition, run)
                })
                .collect();
            let expected = sort_by_time(runs.clone(), |(ts, _)| *ts);
            prop_assert_eq!(merge(runs), expected);
        }
    }

    #[test]
    fn equal_times_of_one_partition_keep_the_order_of_the_runs() {
        let runs = vec![
            (1, vec![(5, 1), (5, 2)]),
            (0, vec![(5, 3)]),
            (1, vec![(4, 4), (5, 5)]),
        ];
        let tags: Vec<usize> = merge(runs).into_iter().map(|(_, tag)| tag).collect();
        assert_eq!(tags, [4, 3, 1, 2, 5]);
    }
}
