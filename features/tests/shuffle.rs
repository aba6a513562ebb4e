//! Property test: the order in which partitions interleave on arrival does not change the
//! examples (each partition keeps its own order, as Kafka guarantees).

#![allow(clippy::unwrap_used, missing_docs)]

use compact_str::format_compact;
use proptest::prelude::*;
use shopstream_config::PipelineConfig;
use std::collections::BTreeMap;

use shopstream_features::protocol::{self, SequencedClose, ToCoordinator};
use shopstream_features::{
    Close, Coordinator, Example, FeaturePipeline, Follower, MergeQueue, Part, Report, ShardSet,
    WindowOutput,
};
use shopstream_ingest::event::{
    ClickEvent, ClickKind, Event, InputTopic, InventoryEvent, InventoryKind, OrderEvent, OrderLine,
    OrderStatus, Scenario,
};
use shopstream_ingest::record::RecordMeta;

const T0: i64 = 1_767_571_200_000;
const PARTITIONS: usize = 3;

/// One generated step: (user, item, kind, gap in ms).
type Step = (u8, u8, u8, u32);

fn event(user: u8, item: u8, kind: u8, ts: i64, n: usize) -> (InputTopic, Event) {
    let user_id = format_compact!("u{user}");
    let item_id = format_compact!("i{item}");
    if kind == 5 {
        let stock = InventoryEvent {
            event_id: format_compact!("v{n}"),
            ts,
            item_id,
            kind: InventoryKind::Snapshot,
            on_hand: Some(i64::from(user) * 3 % 11),
            delta: None,
            price: Some(4.0 + f64::from(user % 3)),
            category: None,
        };
        return (InputTopic::Inventory, Event::Inventory(stock));
    }
    if kind == 4 {
        let order = OrderEvent {
            order_id: format_compact!("o{n}"),
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
        event_id: format_compact!("e{n}"),
        ts,
        user_id,
        session_id: format_compact!("s{}", ts / 600_000),
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

/// `report` as the topic transport carries it (encoded and decoded).
fn through_the_wire_report(report: Report) -> Report {
    let sent: ToCoordinator = ToCoordinator::Progress {
        report,
        released: Vec::new(),
        arrivals: Vec::new(),
    };
    match protocol::decode::<ToCoordinator>(&protocol::encode(&sent).unwrap()).unwrap() {
        ToCoordinator::Progress { report, .. } => report,
        ToCoordinator::Parts { .. } => panic!("a progress message came back as parts"),
    }
}

/// `close` as the topic transport carries it.
fn through_the_wire_close(close: Close) -> Close {
    let sent = SequencedClose { seq: 3, close };
    let back: SequencedClose = protocol::decode(&protocol::encode(&sent).unwrap()).unwrap();
    assert_eq!(back, sent);
    back.close
}

/// `parts` as the topic transport carries them.
fn through_the_wire_parts(parts: Vec<Part>) -> Vec<Part> {
    let covers = parts.iter().map(|p| p.partition).collect();
    let sent: ToCoordinator = ToCoordinator::Parts {
        seq: 3,
        author: "closes-1".into(),
        covers,
        parts,
    };
    let back: ToCoordinator = protocol::decode(&protocol::encode(&sent).unwrap()).unwrap();
    assert_eq!(back, sent);
    match back {
        ToCoordinator::Parts { parts, .. } => parts,
        ToCoordinator::Progress { .. } => panic!("parts came back as progress"),
    }
}

/// Every window output with the shards split over `sets` [`ShardSet`]s apart from the
/// coordinator, which takes their reports only when `deliver` says so (late, as from
/// other threads or instances) and closes a few windows at a time or all at once. Every
/// report, close and part goes through the topic transport's encoding on the way.
fn run_split(
    arrival: Vec<(RecordMeta, Event)>,
    sets: usize,
    deliver: &[u8],
    register: bool,
) -> (Vec<WindowOutput>, Vec<i64>) {
    let (out, late, _) = run_split_logged(arrival, sets, deliver, register);
    (out, late)
}

/// Every close with the parts the sets answered (the closes log and what the coordinator
/// merged from it).
type ClosesLog = Vec<(Close, Vec<Part>)>;

/// [`run_split`], with the closes log.
fn run_split_logged(
    arrival: Vec<(RecordMeta, Event)>,
    sets: usize,
    deliver: &[u8],
    register: bool,
) -> (Vec<WindowOutput>, Vec<i64>, ClosesLog) {
    run_split_failing_over(arrival, sets, deliver, register, None, None)
}

/// A coordinator as a run starts.
fn new_coordinator(register: bool) -> Coordinator {
    let mut pipeline = FeaturePipeline::new(&PipelineConfig::default());
    if register {
        for topic in [InputTopic::Clicks, InputTopic::Orders] {
            for p in 0..PARTITIONS as i32 {
                pipeline.register_partition(topic, p);
            }
        }
    }
    let (coordinator, shards) = pipeline.into_parts();
    assert!(shards.is_empty());
    coordinator
}

/// Sends `close` to every set, logs it with their parts and merges them.
fn apply_close(
    coordinator: &mut Coordinator,
    sets: &mut [ShardSet],
    log: &mut ClosesLog,
    close: Close,
) -> Vec<WindowOutput> {
    let close = through_the_wire_close(close);
    let mut parts: Vec<Part> = sets
        .iter_mut()
        .flat_map(|s| through_the_wire_parts(s.on_close(&close)))
        .collect();
    parts.sort_by_key(|p| p.partition);
    log.push((close.clone(), parts.clone()));
    if close.is_empty() {
        return Vec::new();
    }
    coordinator.merge(&close, parts)
}

/// [`run_split_logged`]; with `fail_at`, the coordinator is replaced by a new one before
/// arrival `fail_at`, as a new lease holder takes over in a group run (docs/scale-out.md):
/// it adopts every close published so far, reads the inventory and every report again
/// from the start, merges the adopted closes from the answers logged, and goes on
/// deciding. The outputs are the new coordinator's (it writes every window again). With
/// `checkpoint_at`, every set is written as a checkpoint before that arrival and read back,
/// as a partition's new owner would (reports not yet delivered included).
fn run_split_failing_over(
    arrival: Vec<(RecordMeta, Event)>,
    sets: usize,
    deliver: &[u8],
    register: bool,
    fail_at: Option<usize>,
    checkpoint_at: Option<usize>,
) -> (Vec<WindowOutput>, Vec<i64>, ClosesLog) {
    let mut coordinator = new_coordinator(register);
    let mut sets: Vec<ShardSet> = (0..sets)
        .map(|_| ShardSet::new(&coordinator, BTreeMap::new(), |_, _| true))
        .collect();
    let mut log = ClosesLog::new();
    // What a new coordinator reads again: the inventory and the shards' reports.
    let mut inventory_read = Vec::new();
    let mut reports = Vec::new();
    let mut out = Vec::new();
    let mut late = Vec::new();
    let count = sets.len();
    for (i, (meta, e)) in arrival.into_iter().enumerate() {
        if checkpoint_at == Some(i) {
            for set in &mut sets {
                let bytes = rmp_serde::to_vec_named(&*set).expect("encode");
                *set = rmp_serde::from_slice(&bytes).expect("decode");
            }
        }
        if fail_at == Some(i) {
            coordinator = new_coordinator(register);
            for (close, _) in &log {
                coordinator.adopt(close);
            }
            late.clear();
            out.clear();
            for (meta, e) in inventory_read.iter().cloned() {
                match coordinator.admit(meta, e) {
                    Ok(own) => assert!(own.is_none()),
                    Err(refused) => late.push(refused.event.ts()),
                }
            }
            for report in &reports {
                coordinator.observe(report);
            }
            for (close, parts) in &log {
                if !close.is_empty() {
                    out.extend(coordinator.merge(close, parts.clone()));
                }
            }
        }
        if meta.topic == InputTopic::Inventory {
            inventory_read.push((meta, e.clone()));
            match coordinator.admit(meta, e) {
                Ok(own) => assert!(
                    own.is_none(),
                    "the coordinator keeps the inventory's events"
                ),
                Err(refused) => late.push(refused.event.ts()),
            }
        } else {
            let set = meta.partition as usize % count;
            if let Err(refused) = sets[set].admit(meta, e) {
                late.push(refused.event.ts());
            }
        }
        if deliver.get(i).is_none_or(|d| d % 4 == 0) {
            for set in &mut sets {
                let report = through_the_wire_report(set.take_report());
                coordinator.observe(&report);
                reports.push(report);
            }
            // Closes of one to three windows, or of all that can close.
            let most = deliver.get(i).map_or(usize::MAX, |d| match d % 16 {
                0 => usize::MAX,
                d => usize::from(d % 3 + 1),
            });
            while let Some(close) = coordinator.close_ready_at_most(most) {
                out.extend(apply_close(&mut coordinator, &mut sets, &mut log, close));
            }
        }
    }
    for set in &mut sets {
        coordinator.observe(&through_the_wire_report(set.take_report()));
    }
    // The end of input: when `deliver` says so, as the job ends a run, a few windows at a
    // time whatever the watermark allows, else all that can close, then the rest at once.
    let end_steps = deliver.last().map(|d| usize::from(d % 3 + 1));
    if end_steps.is_none() {
        while let Some(close) = coordinator.close_ready() {
            out.extend(apply_close(&mut coordinator, &mut sets, &mut log, close));
        }
    }
    loop {
        let close = coordinator.finish_at_most(end_steps.unwrap_or(usize::MAX));
        let last = close.is_final();
        out.extend(apply_close(&mut coordinator, &mut sets, &mut log, close));
        if last {
            break;
        }
    }
    (out, late, log)
}

/// Partition `p`'s parts of every close in `log`, from a new owner that reads `p`'s
/// events from the start with the whole closes log already read (the handover of
/// docs/scale-out.md, at its hardest: every close comes before the events it covers).
/// Partition `p` replayed from its first event with the closes `log`: the answer to each
/// close. With `resume_at`, its follower is written as a checkpoint after that many events
/// and read back as a new owner would (behind, with the closes log pushed again).
fn replay_partition(
    p: i32,
    events: &[(RecordMeta, Event)],
    log: &ClosesLog,
    resume_at: Option<usize>,
) -> Vec<Vec<Part>> {
    let mut pipeline = FeaturePipeline::new(&PipelineConfig::default());
    for topic in [InputTopic::Clicks, InputTopic::Orders] {
        for q in 0..PARTITIONS as i32 {
            pipeline.register_partition(topic, q);
        }
    }
    let (coordinator, _) = pipeline.into_parts();
    let set = ShardSet::new(&coordinator, BTreeMap::new(), |_, q| q == p);
    let mut follower = Follower::new(set, 0, false);
    for (seq, (close, _)) in log.iter().enumerate() {
        follower.push_close(SequencedClose {
            seq: seq as u64,
            close: close.clone(),
        });
    }
    let mut parts = Vec::new();
    for (i, (meta, e)) in events
        .iter()
        .filter(|(m, _)| m.topic != InputTopic::Inventory)
        .enumerate()
    {
        if resume_at == Some(i) {
            let bytes = rmp_serde::to_vec_named(&follower).expect("encode");
            follower = rmp_serde::from_slice(&bytes).expect("decode");
            for (seq, (close, _)) in log.iter().enumerate() {
                follower.push_close(SequencedClose {
                    seq: seq as u64,
                    close: close.clone(),
                });
            }
        }
        follower
            .admit(*meta, e.clone())
            .expect("per-partition order is never late");
        parts.extend(follower.apply_due());
    }
    follower.caught_up();
    parts.extend(follower.apply_due());
    parts
        .into_iter()
        .enumerate()
        .map(|(i, (seq, parts))| {
            assert_eq!(seq, i as u64, "closes applied in order");
            parts
        })
        .collect()
}

/// Every window output of the whole stage, and the times of the events refused as late,
/// without registering the partitions first (windows close before some partition's first
/// event, whose shard then starts from the inventory as it is).
fn run_unregistered(arrival: Vec<(RecordMeta, Event)>) -> (Vec<WindowOutput>, Vec<i64>) {
    let mut pipeline = FeaturePipeline::new(&PipelineConfig::default());
    let (mut out, mut late) = (Vec::new(), Vec::new());
    for (meta, e) in arrival {
        if let Err(refused) = pipeline.ingest(meta, e) {
            late.push(refused.event.ts());
        }
        out.extend(pipeline.close_ready());
    }
    out.extend(pipeline.finish());
    (out, late)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Guards the shard workers (and the instances of docs/scale-out.md): shards apart
    /// from the coordinator, reporting late, write the windows of the whole stage.
    #[test]
    fn shard_sets_reporting_late_write_the_same_windows(
        // Kind 5: inventory snapshots, which reach the sets' shards through the closes.
        steps in prop::collection::vec((0u8..12, 0u8..6, 0u8..6, 0u32..40_000), 1..600),
        choices in prop::collection::vec(any::<u8>(), 0..1_200),
        deliver in prop::collection::vec(any::<u8>(), 0..1_200),
        sets in 1usize..4,
    ) {
        let whole = run_windows(interleave(partitions(&steps), &choices), 1);
        let (split, late) = run_split(interleave(partitions(&steps), &choices), sets, &deliver, true);
        prop_assert!(late.is_empty());
        prop_assert_eq!(whole, split);
    }

    /// Guards per-partition checkpoints of owners that apply closes as they arrive: shard
    /// sets written as checkpoints at any point of the input (open windows, pending
    /// labels, reports not delivered yet) and read back write the windows of the whole
    /// stage.
    #[test]
    fn shard_sets_checkpointed_at_any_point_write_the_same_windows(
        steps in prop::collection::vec((0u8..12, 0u8..6, 0u8..6, 0u32..40_000), 1..600),
        choices in prop::collection::vec(any::<u8>(), 0..1_200),
        deliver in prop::collection::vec(any::<u8>(), 0..1_200),
        sets in 1usize..4,
        cut in 0usize..600,
    ) {
        let whole = run_windows(interleave(partitions(&steps), &choices), 1);
        let (split, late, _) = run_split_failing_over(
            interleave(partitions(&steps), &choices), sets, &deliver, true, None, Some(cut % steps.len()),
        );
        prop_assert!(late.is_empty());
        prop_assert_eq!(whole, split);
    }

    /// Guards the inventory a shard starts from when its partition's first event comes
    /// after windows closed (reports reach the coordinator at once here: a set judges a
    /// partition that holds nothing back by the closes it has applied).
    #[test]
    fn shard_sets_start_new_shards_from_the_inventory_as_closed(
        steps in prop::collection::vec((0u8..12, 0u8..6, 0u8..6, 0u32..40_000), 1..600),
        choices in prop::collection::vec(any::<u8>(), 0..1_200),
        sets in 1usize..4,
    ) {
        let whole = run_unregistered(interleave(partitions(&steps), &choices));
        let split = run_split(interleave(partitions(&steps), &choices), sets, &[], false);
        prop_assert_eq!(whole, split);
    }

    /// Guards the handover of a partition to a new owner (docs/scale-out.md): replayed
    /// from its first event with the closes log, applying each close once the partition's
    /// watermark has passed it, a partition answers every close as its first owner did
    /// (up to parts that contribute nothing), so the coordinator can take either copy.
    #[test]
    fn a_partition_replayed_with_the_closes_log_answers_every_close_the_same(
        steps in prop::collection::vec((0u8..12, 0u8..6, 0u8..6, 0u32..40_000), 1..600),
        choices in prop::collection::vec(any::<u8>(), 0..1_200),
        deliver in prop::collection::vec(any::<u8>(), 0..1_200),
        sets in 1usize..4,
    ) {
        let by_partition = partitions(&steps);
        let (_, _, log) = run_split_logged(interleave(by_partition.clone(), &choices), sets, &deliver, true);
        let all: Vec<i32> = (0..PARTITIONS as i32).collect();
        let mut queue = MergeQueue::new(all.clone(), 0);
        for (p, events) in by_partition.iter().enumerate() {
            let p = p as i32;
            let replayed = replay_partition(p, events, &log, None);
            prop_assert_eq!(replayed.len(), log.len());
            for (seq, ((close, first), again)) in log.iter().zip(&replayed).enumerate() {
                let first: Vec<&Part> = first.iter().filter(|q| q.partition == p && !q.is_empty()).collect();
                let kept: Vec<&Part> = again.iter().filter(|q| !q.is_empty()).collect();
                prop_assert_eq!(first, kept, "partition {} close {} {:?}", p, seq, close.boundary);
                // The new owner's answer reaches the coordinator first for some closes.
                if seq % 2 == p as usize % 2 {
                    queue.offer(seq as u64, &[p], again.clone()).unwrap();
                }
            }
        }
        // The first owners' answers, then every replayed answer again: each close merges
        // the first owners' parts.
        for (seq, (_, first)) in log.iter().enumerate() {
            queue.offer(seq as u64, &all, first.clone()).unwrap();
            let (merged, parts) = queue.pop_ready().unwrap();
            prop_assert_eq!(merged, seq as u64);
            let first: Vec<Part> = first.iter().filter(|q| !q.is_empty()).cloned().collect();
            prop_assert_eq!(parts, first);
        }
        prop_assert!(queue.pop_ready().is_none());
    }

    /// Guards per-partition checkpoints (docs/scale-out.md): a partition whose follower is
    /// written as a checkpoint at any point of its input and read back by a new owner,
    /// which goes on from there with the closes log, answers every close as its first
    /// owner did.
    #[test]
    fn a_partition_resumed_from_its_checkpoint_answers_every_close_the_same(
        steps in prop::collection::vec((0u8..12, 0u8..6, 0u8..6, 0u32..40_000), 1..600),
        choices in prop::collection::vec(any::<u8>(), 0..1_200),
        deliver in prop::collection::vec(any::<u8>(), 0..1_200),
        sets in 1usize..4,
        cut in 0usize..600,
    ) {
        let by_partition = partitions(&steps);
        let (_, _, log) = run_split_logged(interleave(by_partition.clone(), &choices), sets, &deliver, true);
        for (p, events) in by_partition.iter().enumerate() {
            let p = p as i32;
            let own = events.iter().filter(|(m, _)| m.topic != InputTopic::Inventory).count();
            let resumed = replay_partition(p, events, &log, Some(cut % own.max(1)));
            prop_assert_eq!(resumed.len(), log.len());
            for (seq, ((close, first), again)) in log.iter().zip(&resumed).enumerate() {
                let first: Vec<&Part> = first.iter().filter(|q| q.partition == p && !q.is_empty()).collect();
                let kept: Vec<&Part> = again.iter().filter(|q| !q.is_empty()).collect();
                prop_assert_eq!(first, kept, "partition {} close {} {:?}", p, seq, close.boundary);
            }
        }
    }

    /// Guards the failover of the coordinator (docs/scale-out.md): a new coordinator that
    /// adopts the closes its predecessor published, reads the inventory and the reports
    /// again from the start and merges the answers logged writes every window of the
    /// whole stage, whenever the old one stopped.
    #[test]
    fn a_coordinator_taking_over_the_closes_log_writes_the_same_windows(
        steps in prop::collection::vec((0u8..12, 0u8..6, 0u8..6, 0u32..40_000), 1..600),
        choices in prop::collection::vec(any::<u8>(), 0..1_200),
        deliver in prop::collection::vec(any::<u8>(), 0..1_200),
        sets in 1usize..4,
        fail_at in 0usize..600,
    ) {
        let whole = run_windows(interleave(partitions(&steps), &choices), 1);
        let (taken_over, late, _) = run_split_failing_over(
            interleave(partitions(&steps), &choices), sets, &deliver, true, Some(fail_at % steps.len()), None,
        );
        prop_assert!(late.is_empty());
        prop_assert_eq!(whole, taken_over);
    }
}
