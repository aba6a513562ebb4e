//! Examples of several partitions put in one (event time, partition) order, each moved
//! once.
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
/// order (not expected: each comes from a queue kept in key order).
pub(crate) fn merge_in_time_order(runs: Vec<(i32, Vec<Example>)>) -> Vec<Example> {
    if !runs.iter().all(|(_, run)| run.is_sorted_by_key(|e| e.ts)) {
        return sort_in_time_order(runs);
    }
    let total = runs.iter().map(|(_, run)| run.len()).sum();
    let mut runs: Vec<(i32, std::vec::IntoIter<Example>)> = runs
        .into_iter()
        .filter(|(_, run)| !run.is_empty())
        .map(|(partition, run)| (partition, run.into_iter()))
        .collect();
    if let [(_, only)] = runs.as_mut_slice() {
        return std::mem::take(only).collect();
    }
    // The next example of each run, by its key and the run's place (the tie-break).
    let head = |at: usize, (partition, run): &(i32, std::vec::IntoIter<Example>)| {
        run.as_slice()
            .first()
            .map(|e| Reverse((e.ts, *partition, at)))
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

/// [`merge_in_time_order`] by a stable sort, for runs that are not in time order.
fn sort_in_time_order(runs: Vec<(i32, Vec<Example>)>) -> Vec<Example> {
    let mut tagged: Vec<(i32, Example)> = runs
        .into_iter()
        .flat_map(|(p, examples)| examples.into_iter().map(move |e| (p, e)))
        .collect();
    tagged.sort_by_key(|(partition, e)| (e.ts, *partition));
    tagged.into_iter().map(|(_, e)| e).collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::example::Features;

    fn example(ts: Millis, tag: usize) -> Example {
        Example {
            event_id: tag.to_string(),
            ts,
            user_id: String::new(),
            item_id: String::new(),
            features: Features {
                scenario: shopstream_ingest::event::Scenario::Search,
                device: None,
                position: None,
                price: None,
                hour_of_day: 0,
                day_of_week: 0,
                user: Default::default(),
                user_recency_secs: None,
                user_category_affinity: 0.0,
                user_category_exposure: 0.0,
                item: Default::default(),
                item_category: None,
                item_price: None,
                item_on_hand: None,
            },
            labels: Default::default(),
        }
    }

    fn tags(examples: &[Example]) -> Vec<String> {
        examples.iter().map(|e| e.event_id.clone()).collect()
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
            let runs: Vec<(i32, Vec<Example>)> = runs
                .into_iter()
                .map(|(partition, mut times, in_order)| {
                    if in_order {
                        times.sort();
                    }
                    let run = times
                        .into_iter()
                        .map(|ts| {
                            tag += 1;
                            example(ts, tag)
                        })
                        .collect();
                    (partition, run)
                })
                .collect();
            let expected = sort_in_time_order(runs.clone());
            let merged = merge_in_time_order(runs);
            prop_assert_eq!(tags(&merged), tags(&expected));
        }
    }

    #[test]
    fn equal_times_of_one_partition_keep_the_order_of_the_runs() {
        let runs = vec![
            (1, vec![example(5, 1), example(5, 2)]),
            (0, vec![example(5, 3)]),
            (1, vec![example(4, 4), example(5, 5)]),
        ];
        assert_eq!(tags(&merge_in_time_order(runs)), ["4", "3", "1", "2", "5"]);
    }
}
