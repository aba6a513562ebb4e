//! Property test: the order in which partitions interleave on arrival does not change the
//! examples (each partition keeps its own order, as Kafka guarantees).

#![allow(clippy::unwrap_used, missing_docs)]

use proptest::prelude::*;
use shopstream_config::PipelineConfig;
use shopstream_features::{Example, FeaturePipeline, WindowOutput};
use shopstream_ingest::event::{
    ClickEvent, ClickKind, Event, InputTopic, OrderEvent, OrderLine, OrderStatus, Scenario,
};
use shopstream_ingest::record::RecordMeta;

const T0: i64 = 1_767_571_200_000;
const PARTITIONS: usize = 3;

/// One generated step: (user, item, kind, gap in ms).
type Step = (u8, u8, u8, u32);

fn event(user: u8, item: u8, kind: u8, ts: i64, n: usize) -> (InputTopic, Event) {
    let user_id = format!("u{user}");
    let item_id = format!("i{item}");
    if kind == 4 {
        let order = OrderEvent {
            order_id: format!("o{n}"),
            ts,
            user_id,
            status: OrderStatus::Placed,
            lines: vec![OrderLine {
                item_id,
                quantity: 1,
                unit_price: 5.0,
            }],
            currency: "EUR".into(),
        };
        return (InputTopic::Orders, Event::Order(order));
    }
    let kind = [
        ClickKind::Impression,
        ClickKind::Impression,
        ClickKind::Click,
        ClickKind::AddToCart,
    ][kind as usize];
    let click = ClickEvent {
        event_id: format!("e{n}"),
        ts,
        user_id,
        session_id: format!("s{}", ts / 600_000),
        kind,
        item_id: Some(item_id),
        scenario: Scenario::HomeFeed,
        position: Some(u32::from(item)),
        device: None,
        price: Some(5.0),
        query: None,
    };
    (InputTopic::Clicks, Event::Click(click))
}

/// Per partition, its events in offset order (users are pinned to partitions).
fn partitions(steps: &[Step]) -> Vec<Vec<(RecordMeta, Event)>> {
    let mut out: Vec<Vec<(RecordMeta, Event)>> = vec![Vec::new(); PARTITIONS];
    let mut ts = [T0; PARTITIONS];
    for (n, (user, item, kind, gap)) in steps.iter().enumerate() {
        let p = usize::from(*user) % PARTITIONS;
        ts[p] += i64::from(*gap);
        let (topic, e) = event(*user, *item, *kind, ts[p], n);
        let offset = out[p].len() as i64;
        out[p].push((
            RecordMeta {
                topic,
                partition: p as i32,
                offset,
            },
            e,
        ));
    }
    out
}

fn run(arrival: Vec<(RecordMeta, Event)>) -> Vec<Example> {
    run_windows(arrival, 1)
        .into_iter()
        .flat_map(|w| w.examples)
        .collect()
}

/// Every window output, with the partition shards applied on `threads` threads.
fn run_windows(arrival: Vec<(RecordMeta, Event)>, threads: usize) -> Vec<WindowOutput> {
    let mut pipeline = FeaturePipeline::new(&PipelineConfig::default());
    pipeline.set_threads(threads);
    for topic in [InputTopic::Clicks, InputTopic::Orders] {
        for p in 0..PARTITIONS as i32 {
            pipeline.register_partition(topic, p);
        }
    }
    let mut out = Vec::new();
    for (meta, e) in arrival {
        pipeline
            .ingest(meta, e)
            .expect("per-partition order is never late");
        out.extend(pipeline.close_ready());
    }
    out.extend(pipeline.finish());
    out
}

/// Merges the partitions in the order `choices` dictates, keeping each partition's order.
fn interleave(
    mut parts: Vec<Vec<(RecordMeta, Event)>>,
    choices: &[u8],
) -> Vec<(RecordMeta, Event)> {
    parts.iter_mut().for_each(|p| p.reverse());
    let mut out = Vec::new();
    let mut i = 0;
    while parts.iter().any(|p| !p.is_empty()) {
        let live: Vec<usize> = (0..parts.len()).filter(|p| !parts[*p].is_empty()).collect();
        let pick = live[usize::from(choices.get(i).copied().unwrap_or(0)) % live.len()];
        out.extend(parts[pick].pop());
        i += 1;
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn arrival_interleaving_does_not_change_examples(
        steps in prop::collection::vec((0u8..6, 0u8..4, 0u8..5, 0u32..90_000), 1..200),
        first in prop::collection::vec(any::<u8>(), 0..400),
        second in prop::collection::vec(any::<u8>(), 0..400),
    ) {
        let a = run(interleave(partitions(&steps), &first));
        let b = run(interleave(partitions(&steps), &second));
        let impressions = steps.iter().filter(|s| s.2 < 2).count();
        prop_assert_eq!(a.len(), impressions);
        prop_assert_eq!(a, b);
    }
}

proptest! {
    // Enough events per close (thousands, in few windows) for the shards to go on threads.
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

    #[test]
    fn shard_threads_do_not_change_any_window_output(
        steps in prop::collection::vec((0u8..60, 0u8..40, 0u8..5, 0u32..120), 6_000..9_000),
        choices in prop::collection::vec(any::<u8>(), 0..2_000),
        threads in 2usize..5,
    ) {
        let one = run_windows(interleave(partitions(&steps), &choices), 1);
        let many = run_windows(interleave(partitions(&steps), &choices), threads);
        prop_assert!(one.iter().any(|w| w.events >= 2_048), "some close is big enough for threads");
        prop_assert_eq!(one, many);
    }
}
