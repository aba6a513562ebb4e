//! Features: event-time windows, the watermark, joins and rolling state, emitted as Arrow
//! record batches.
//!
//! [`FeaturePipeline`] is the stage's whole interface:
//! - [`FeaturePipeline::ingest`] buffers a decoded event in its tumbling window (or reports
//!   it late) and advances the watermark;
//! - [`FeaturePipeline::serving_row`] gives an impression's features on arrival, from the
//!   state of the windows closed so far (for immediate prediction);
//! - [`FeaturePipeline::close_ready`] closes every window the watermark has passed, applies
//!   its events in (ts, topic, partition, offset) order and returns the training examples
//!   whose labels matured; [`FeaturePipeline::finish`] closes everything at end of input.
//!
//! Examples depend only on the input events, never on arrival order: state changes only
//! when whole windows close, and label maturity is judged against window boundaries. The
//! joins and the state are described in [`state`]; the columns in `docs/feature-schema.md`.
//! The state is split into one [`Shard`] per partition number (clicks and orders are
//! co-partitioned by user) plus one for the inventory, which every shard joins.
//!
//! Two things every later stage shares live here too: [`WindowGrid`], the one tumbling
//! window grid (the drift stage, the store's per-window files and `drift bench` place
//! times on it), and [`arrow_time`], the store's UTC-microsecond timestamp columns.

pub mod arrow_time;
mod category;
mod coordinator;
mod example;
mod example_read;
mod follower;
mod id_map;
mod inventory;
mod merge_queue;
mod niche;
mod pending;
pub mod protocol;
pub mod rolling;
mod shard;
mod shard_set;
pub mod state;
mod time_order;
mod watermark;
mod window;

pub use category::Category;
pub use coordinator::{Close, Coordinator, Part};
pub use example::{
    EXAMPLES_SCHEMA_VERSION, Example, Features, Labels, SCHEMA_VERSION_KEY, ServingRow,
    examples_batch, examples_metadata, examples_schema,
};
pub use example_read::{ExampleReadError, examples_from_batch};
pub use follower::Follower;
pub use merge_queue::{MergeQueue, MergeQueueError};
pub use shard::{JoinedEvents, Shard, ShardWindow};
pub use shard_set::{Report, ShardSet};
pub use state::{
    DemandFeatures, DemandRow, FeatureState, GroupEvent, StateBytes, StateLimits, UserArrival,
};
pub use watermark::Watermark;
pub use window::{Buffered, ClosedWindow, WindowGrid, Windows};

use std::collections::BTreeMap;

use shopstream_config::PipelineConfig;
use shopstream_ingest::event::{ClickKind, Event, InputTopic, Millis};
use shopstream_ingest::record::RecordMeta;

/// Examples that matured when a window closed.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowOutput {
    /// Start of the window (inclusive).
    pub start: Millis,
    /// End of the window (exclusive).
    pub end: Millis,
    /// Number of events the window held.
    pub events: usize,
    /// Training examples whose labels matured, in (ts, partition, order) order.
    pub examples: Vec<Example>,
    /// Item demand rows of this window: features at its start, units sold during it.
    pub demand: Vec<DemandRow>,
    /// Demand features at this window's end, to forecast the next window (shared with
    /// the features stage, which labels them with the next window's units).
    pub demand_next: std::sync::Arc<Vec<DemandFeatures>>,
    /// The window's users at their first impression in it (for drift monitoring).
    pub users: Vec<UserArrival>,
    /// No window after this one releases anything before this time: every row a later
    /// window produces is an example of an impression still pending once this window was
    /// applied (at or after the oldest one), drift evidence on the window grid of one, or
    /// belongs to a later window. The store compacts an hour once it ends before this
    /// bound.
    ///
    /// It comes from the state, not from the configured horizons: a window closes only
    /// when it has events, so in sparse traffic labels mature long after their horizon,
    /// into hours a bound computed from the window's time alone would call settled. And
    /// it is taken as this window is applied: windows that close together are all applied
    /// before the first of them is written.
    pub settled_before: Millis,
}

/// The features stage. Serializable as a whole: a checkpoint holds it (open windows,
/// watermark, keyed state, pending labels).
///
/// Inside, a [`Coordinator`] sees every event (lateness, which windows close, the
/// inventory, the demand rows) and one [`Shard`] per partition number of the clicks and
/// orders topics holds their keyed state. They talk through [`Close`] and [`Part`] only;
/// here both sides run in this value, the shards of a close on up to
/// [`FeaturePipeline::set_threads`] threads.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FeaturePipeline {
    coordinator: Coordinator,
    /// A shard per partition number of clicks and orders.
    shards: BTreeMap<i32, Shard>,
    /// Threads the shards may be applied on (a setting, not state: never checkpointed).
    #[serde(skip, default = "one_thread")]
    threads: usize,
}

fn one_thread() -> usize {
    1
}

/// Features of an impression (`None` for any other event) from `shard`, the shard of
/// `partition`, joined with `table`, the inventory's state that it joins. Before a
/// partition's first event its shard does not exist: `table` knows no user either, and
/// serves alone.
pub(crate) fn serving_row_of(
    shard: Option<&Shard>,
    table: &Shard,
    partition: i32,
    event: &Event,
) -> Option<ServingRow> {
    let (state, base) = match shard {
        Some(shard) => (shard.state(), Some(table.state())),
        None => (table.state(), None),
    };
    match event {
        Event::Click(c) if c.kind == ClickKind::Impression => Some(ServingRow {
            event_id: c.event_id.clone(),
            ts: c.ts,
            user_id: c.user_id.clone(),
            item_id: c.item_id.clone()?,
            features: state.features_of(base, partition, c),
        }),
        _ => None,
    }
}

/// Fewer events than this in the windows closing at once are applied on one thread: a
/// thread costs tens of microseconds to start, more than a small window's work.
const PARALLEL_MIN_EVENTS: usize = 2_048;

/// `work` split into `threads` runs of consecutive items, each run on a thread of its own
/// (the first on this one); the results in `work`'s order. A panic in a thread is raised
/// again here, as if the work had run on this thread.
fn on_threads<T: Send, R: Send>(
    mut work: Vec<T>,
    threads: usize,
    f: &(impl Fn(T) -> R + Sync),
) -> Vec<R> {
    let per_thread = work.len().div_ceil(threads.max(1));
    let mut runs: Vec<Vec<T>> = Vec::new();
    while work.len() > per_thread {
        let rest = work.split_off(per_thread);
        runs.push(std::mem::replace(&mut work, rest));
    }
    runs.push(work);
    let mut runs = runs.into_iter();
    let first = runs.next().unwrap_or_default();
    std::thread::scope(|scope| {
        let others: Vec<_> = runs
            .map(|run| scope.spawn(move || run.into_iter().map(f).collect::<Vec<R>>()))
            .collect();
        let mut out: Vec<R> = first.into_iter().map(f).collect();
        for thread in others {
            match thread.join() {
                Ok(results) => out.extend(results),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        out
    })
}

impl FeaturePipeline {
    /// Drops the keyed state of `users` in every shard ([`FeatureState::forget_users`]);
    /// the entries dropped.
    pub fn forget_users(&mut self, users: &std::collections::BTreeSet<String>) -> usize {
        self.shards
            .values_mut()
            .map(|s| s.forget_users(users))
            .sum()
    }

    /// A stage configured by `config`.
    pub fn new(config: &PipelineConfig) -> Self {
        let state = FeatureState::new(StateLimits {
            click_window_ms: config.click_window_ms(),
            attribution_ms: config.attribution_window_ms(),
            ttl_ms: config.feature_ttl_ms(),
        });
        Self {
            coordinator: Coordinator::new(
                WindowGrid::of(config),
                config.allowed_lateness_ms(),
                state,
            ),
            shards: BTreeMap::new(),
            threads: 1,
        }
    }

    /// Lets the shards be applied on up to `threads` threads (the default is one). The
    /// outputs are the same for any number.
    pub fn set_threads(&mut self, threads: usize) {
        self.threads = threads.max(1);
    }

    /// Buffers `event`. Returns it back when it is late; the caller dead-letters it with
    /// reason `late` (the rule: [`Coordinator::admit`]).
    pub fn ingest(&mut self, meta: RecordMeta, event: Event) -> Result<(), Box<Buffered>> {
        let Some(own) = self.coordinator.admit(meta, event)? else {
            return Ok(());
        };
        let coordinator = &self.coordinator;
        self.shards
            .entry(meta.partition)
            .or_insert_with(|| coordinator.new_shard())
            .push(own)
    }

    /// Makes the watermark wait for a partition known to hold unread data.
    pub fn register_partition(&mut self, topic: InputTopic, partition: i32) {
        self.coordinator.register_partition(topic, partition);
    }

    /// A partition has been read to its end: it no longer holds the watermark back until
    /// its next event arrives. (Its future events must then keep within the allowed
    /// lateness of the other partitions.)
    pub fn partition_at_end(&mut self, topic: InputTopic, partition: i32) {
        self.coordinator.partition_at_end(topic, partition);
    }

    /// The current watermark.
    pub fn watermark(&self) -> Option<Millis> {
        self.coordinator.watermark()
    }

    /// Features for an impression read from `meta`'s partition, from the state as it is.
    pub fn serving_row(&self, meta: &RecordMeta, event: &Event) -> Option<ServingRow> {
        let shard = self.shards.get(&meta.partition);
        serving_row_of(shard, self.coordinator.inventory(), meta.partition, event)
    }

    /// The coordinator and the shards, to run apart ([`ShardSet`]).
    pub fn into_parts(self) -> (Coordinator, BTreeMap<i32, Shard>) {
        (self.coordinator, self.shards)
    }

    /// The stage made of a coordinator and the shards of every partition number (a
    /// checkpoint of a stage that ran apart, taken when every report had reached the
    /// coordinator).
    pub fn from_parts(coordinator: Coordinator, shards: BTreeMap<i32, Shard>) -> Self {
        Self {
            coordinator,
            shards,
            threads: 1,
        }
    }

    /// Closes every window the watermark has passed.
    pub fn close_ready(&mut self) -> Vec<WindowOutput> {
        self.close_ready_at_most(usize::MAX)
    }

    /// Like [`FeaturePipeline::close_ready`], closing at most `max_windows` windows (see
    /// [`Coordinator::close_ready_at_most`]).
    pub fn close_ready_at_most(&mut self, max_windows: usize) -> Vec<WindowOutput> {
        match self.coordinator.close_ready_at_most(max_windows) {
            Some(close) => self.apply(close),
            None => Vec::new(),
        }
    }

    /// Closes all windows and matures all pending examples (end of input).
    pub fn finish(&mut self) -> Vec<WindowOutput> {
        self.finish_at_most(usize::MAX).0
    }

    /// The end of input at most `max_windows` windows at a time (see
    /// [`Coordinator::finish_at_most`]), and whether this was its last step.
    pub fn finish_at_most(&mut self, max_windows: usize) -> (Vec<WindowOutput>, bool) {
        let close = self.coordinator.finish_at_most(max_windows);
        let last = close.is_final();
        (self.apply(close), last)
    }

    /// `close` applied by every shard (on threads when the windows are worth it), and
    /// merged.
    fn apply(&mut self, close: Close) -> Vec<WindowOutput> {
        if close.is_empty() {
            return Vec::new();
        }
        let events: usize = close.windows.iter().map(|(_, e)| e.len()).sum::<usize>()
            + self.shards.values().map(Shard::buffered).sum::<usize>();
        let work: Vec<(i32, &mut Shard)> = self.shards.iter_mut().map(|(p, s)| (*p, s)).collect();
        // Every shard joins the coordinator's inventory as the last close left it; the
        // coordinator applies the close's inventory events when it merges.
        let base = self.coordinator.inventory();
        let apply =
            |(partition, shard): (i32, &mut Shard)| shard.on_close(partition, &close, Some(base));
        let parts = if self.threads > 1 && work.len() > 1 && events >= PARALLEL_MIN_EVENTS {
            on_threads(work, self.threads, &apply)
        } else {
            work.into_iter().map(&apply).collect()
        };
        self.coordinator.merge(&close, parts)
    }

    /// Impressions waiting for their labels.
    pub fn pending_examples(&self) -> usize {
        self.shards.values().map(|s| s.state().pending_len()).sum()
    }

    /// Users and (partition, item) entries with state, for memory accounting.
    pub fn key_counts(&self) -> (usize, usize) {
        self.shards.values().fold((0, 0), |(u, i), s| {
            let (users, items) = s.state().key_counts();
            (u + users, i + items)
        })
    }

    /// Approximate bytes held by every shard's state and the coordinator's inventory
    /// table (which the shards join), for the memory benchmark.
    pub fn approx_bytes(&self) -> StateBytes {
        self.shards
            .values()
            .chain([self.coordinator.inventory()])
            .map(|s| s.state().approx_bytes())
            .fold(StateBytes::default(), |a, b| a + b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shopstream_ingest::event::{ClickEvent, InventoryEvent, InventoryKind, Scenario, Text};

    const T0: Millis = 1_767_571_200_000;

    fn click(id: &str, ts: Millis, kind: ClickKind, item: &str) -> Event {
        Event::Click(ClickEvent {
            event_id: id.into(),
            ts,
            user_id: "u1".into(),
            session_id: "s1".into(),
            kind,
            item_id: Some(item.into()),
            scenario: Scenario::HomeFeed,
            position: Some(0),
            device: Some("ios".into()),
            price: Some(5.0),
            query: None,
        })
    }

    fn meta(topic: InputTopic, partition: i32, offset: i64) -> RecordMeta {
        RecordMeta {
            topic,
            partition,
            offset,
        }
    }

    #[test]
    fn a_window_lists_each_user_once_new_until_the_state_knows_them() {
        let mut pipeline = FeaturePipeline::new(&PipelineConfig::default());
        let imp = |id: &str, ts: Millis, user: &str, device: &str| {
            let Event::Click(mut c) = click(id, ts, ClickKind::Impression, "i1") else {
                unreachable!()
            };
            c.user_id = user.into();
            c.device = Some(device.into());
            Event::Click(c)
        };
        let search = |id: &str, ts: Millis, user: &str| {
            let Event::Click(mut c) = click(id, ts, ClickKind::Search, "i1") else {
                unreachable!()
            };
            c.user_id = user.into();
            Event::Click(c)
        };
        let events = [
            // A search just before a new user's first impression does not make them known.
            search("s", T0 + 700, "u1"),
            imp("a", T0 + 1_000, "u1", "ios"),
            imp("b", T0 + 2_000, "u1", "web"),
            imp("c", T0 + 3_000, "u2", "android"),
            imp("d", T0 + 61_000, "u1", "ios"),
            imp("e", T0 + 62_000, "u3", "web"),
        ];
        let mut outputs = Vec::new();
        for (offset, e) in events.into_iter().enumerate() {
            pipeline
                .ingest(meta(InputTopic::Clicks, 0, offset as i64), e)
                .expect("not late");
            outputs.extend(pipeline.close_ready());
        }
        outputs.extend(pipeline.finish());
        let users: Vec<Vec<(Text, Option<Text>, bool)>> = outputs
            .iter()
            .map(|w| {
                w.users
                    .iter()
                    .map(|u| (u.user_id.clone(), u.device.clone(), u.new_user))
                    .collect()
            })
            .collect();
        let u = |id: &str, device: &str, new: bool| (Text::from(id), Some(Text::from(device)), new);
        assert_eq!(
            users,
            vec![
                vec![u("u1", "ios", true), u("u2", "android", true)],
                vec![u("u1", "ios", false), u("u3", "web", true)],
            ]
        );
    }

    fn run(events: Vec<(RecordMeta, Event)>) -> Vec<Example> {
        let mut pipeline = FeaturePipeline::new(&PipelineConfig::default());
        let mut out = Vec::new();
        for (m, e) in events {
            pipeline.ingest(m, e).expect("not late");
            out.extend(pipeline.close_ready().into_iter().flat_map(|w| w.examples));
        }
        out.extend(pipeline.finish().into_iter().flat_map(|w| w.examples));
        out
    }

    #[test]
    fn order_one_millisecond_after_the_impression_does_not_leak() {
        let order = Event::Order(shopstream_ingest::event::OrderEvent {
            order_id: "o1".into(),
            ts: T0 + 1,
            user_id: "u1".into(),
            status: shopstream_ingest::event::OrderStatus::Placed,
            lines: vec![shopstream_ingest::event::OrderLine {
                item_id: "i1".into(),
                quantity: 3,
                unit_price: 2.0,
            }],
            currency: "EUR".into(),
        });
        let examples = run(vec![
            (
                meta(InputTopic::Clicks, 0, 0),
                click("imp", T0, ClickKind::Impression, "i1"),
            ),
            (meta(InputTopic::Orders, 0, 0), order),
            (
                meta(InputTopic::Clicks, 0, 1),
                click("next", T0 + 2, ClickKind::Impression, "i1"),
            ),
        ]);
        let units = |id: &str| {
            let e = examples.iter().find(|e| e.event_id == id).expect("example");
            (e.features.user[2].units, e.features.item[2].units)
        };
        assert_eq!(units("imp"), (0, 0), "the order came 1 ms later: invisible");
        assert_eq!(units("next"), (3, 3), "1 ms after the order: visible");
    }

    #[test]
    fn events_of_the_same_millisecond_do_not_leak_into_features() {
        let examples = run(vec![
            (
                meta(InputTopic::Clicks, 0, 0),
                click("a", T0, ClickKind::Impression, "i1"),
            ),
            (
                meta(InputTopic::Clicks, 0, 1),
                click("b", T0 + 1, ClickKind::Impression, "i2"),
            ),
            (
                meta(InputTopic::Clicks, 0, 2),
                click("c", T0 + 1, ClickKind::Impression, "i3"),
            ),
        ]);
        let user_impressions: Vec<i64> = examples
            .iter()
            .map(|e| e.features.user[0].impressions)
            .collect();
        assert_eq!(
            user_impressions,
            vec![0, 1, 1],
            "b and c share a millisecond: neither sees the other"
        );
    }

    #[test]
    fn inventory_is_joined_as_of_event_time_not_arrival() {
        let stock = |id: &str, ts: Millis, on_hand: i64| {
            Event::Inventory(InventoryEvent {
                event_id: id.into(),
                ts,
                item_id: "i1".into(),
                kind: InventoryKind::Snapshot,
                on_hand: Some(on_hand),
                delta: None,
                price: None,
                category: None,
            })
        };
        // The later snapshot arrives first (other partition); the impression between them
        // must see the earlier one.
        let examples = run(vec![
            (
                meta(InputTopic::Inventory, 1, 0),
                stock("v2", T0 + 2_000, 0),
            ),
            (meta(InputTopic::Inventory, 0, 0), stock("v1", T0, 7)),
            (
                meta(InputTopic::Clicks, 0, 0),
                click("imp", T0 + 1_000, ClickKind::Impression, "i1"),
            ),
        ]);
        assert_eq!(examples[0].features.item_on_hand, Some(7));
    }

    /// Guards the shards' shared inventory: a shard joins the table as the last close
    /// left it, plus the rows its own close changed so far (also for an item the table
    /// does not hold yet); after the close the table holds those changes.
    #[test]
    fn shards_join_the_shared_inventory_as_of_event_time_within_and_across_closes() {
        let stock = |id: &str, ts: Millis, item: &str, on_hand: i64, category: &str| {
            Event::Inventory(InventoryEvent {
                event_id: id.into(),
                ts,
                item_id: item.into(),
                kind: InventoryKind::Snapshot,
                on_hand: Some(on_hand),
                delta: None,
                price: Some(on_hand as f64 / 2.0),
                category: Some(category.into()),
            })
        };
        let inv = |offset| meta(InputTopic::Inventory, 0, offset);
        let imp = |partition, offset, id: &str, ts, item: &str| {
            (
                meta(InputTopic::Clicks, partition, offset),
                click(id, ts, ClickKind::Impression, item),
            )
        };
        let events = vec![
            (inv(0), stock("v1", T0, "i1", 7, "shoes")),
            imp(0, 0, "a", T0 + 1_000, "i1"),
            imp(1, 0, "b", T0 + 1_500, "i1"),
            (inv(1), stock("v2", T0 + 2_000, "i1", 3, "hats")),
            imp(0, 1, "c", T0 + 3_000, "i1"),
            imp(1, 1, "d", T0 + 4_000, "i1"),
            (inv(2), stock("v3", T0 + 5_000, "i2", 9, "hats")),
            imp(1, 2, "e", T0 + 6_000, "i2"),
            imp(0, 2, "f", T0 + 120_000, "i1"),
            imp(1, 3, "g", T0 + 121_000, "i2"),
        ];
        let joined = |e: &Example| {
            let f = &e.features;
            (f.item_on_hand, f.item_price, f.item_category.clone())
        };
        let row = |on_hand: i64, category: &str| {
            (
                Some(on_hand),
                Some(on_hand as f64 / 2.0),
                Some(Category::from(category)),
            )
        };
        for threads in [1, 2] {
            let mut pipeline = FeaturePipeline::new(&PipelineConfig::default());
            pipeline.set_threads(threads);
            let mut out = Vec::new();
            for (m, e) in events.clone() {
                pipeline.ingest(m, e).expect("not late");
                out.extend(pipeline.close_ready().into_iter().flat_map(|w| w.examples));
            }
            out.extend(pipeline.finish().into_iter().flat_map(|w| w.examples));
            let by_id: BTreeMap<&str, _> = out
                .iter()
                .map(|e| (e.event_id.as_str(), joined(e)))
                .collect();
            assert_eq!(by_id["a"], row(7, "shoes"));
            assert_eq!(by_id["b"], row(7, "shoes"), "the other shard, same close");
            assert_eq!(by_id["c"], row(3, "hats"));
            assert_eq!(by_id["d"], row(3, "hats"));
            assert_eq!(by_id["e"], row(9, "hats"), "an item new in this close");
            assert_eq!(by_id["f"], row(3, "hats"), "a later close reads the table");
            assert_eq!(by_id["g"], row(9, "hats"));
            // Between closes no shard holds inventory rows of its own.
            let table = pipeline.coordinator.inventory().state().approx_bytes();
            assert_eq!(pipeline.approx_bytes().inventory, table.inventory);
        }
    }

    #[test]
    fn click_in_the_same_session_labels_its_impression() {
        let examples = run(vec![
            (
                meta(InputTopic::Clicks, 0, 0),
                click("imp1", T0, ClickKind::Impression, "i1"),
            ),
            (
                meta(InputTopic::Clicks, 0, 1),
                click("imp2", T0 + 50, ClickKind::Impression, "i2"),
            ),
            (
                meta(InputTopic::Clicks, 0, 2),
                click("clk", T0 + 5_000, ClickKind::Click, "i2"),
            ),
        ]);
        let labels: Vec<(&str, bool)> = examples
            .iter()
            .map(|e| (e.event_id.as_str(), e.labels.clicked))
            .collect();
        assert_eq!(labels, vec![("imp1", false), ("imp2", true)]);
    }

    /// Regression: lateness was judged against the windows already closed, which depend
    /// on how far the *other* partitions had been read, so one event could be late in one
    /// interleaving and admitted in another (and different instances or threads reading
    /// the partitions would write different stores).
    #[test]
    fn lateness_depends_on_the_events_own_partition_only() {
        let config = PipelineConfig::default();
        let window_ms = config.window_ms();
        let lateness_ms = config.allowed_lateness_ms();
        // Partition 0: steady traffic over ten windows. Partition 1: a jump, then an event
        // from before the jump by more than the allowed lateness and a window.
        let p0: Vec<(RecordMeta, Event)> = (0..40)
            .map(|i| {
                (
                    meta(InputTopic::Clicks, 0, i),
                    click(
                        &format!("a{i}"),
                        T0 + i * window_ms / 4,
                        ClickKind::Impression,
                        "i1",
                    ),
                )
            })
            .collect();
        let jump = T0 + 3 * window_ms + lateness_ms;
        let p1: Vec<(RecordMeta, Event)> = [(0, T0 + 1), (1, jump), (2, T0 + 2)]
            .into_iter()
            .map(|(offset, ts)| {
                (
                    meta(InputTopic::Clicks, 1, offset),
                    click(&format!("b{offset}"), ts, ClickKind::Impression, "i2"),
                )
            })
            .collect();
        let late_ids = |first: &[(RecordMeta, Event)], second: &[(RecordMeta, Event)]| {
            let mut pipeline = FeaturePipeline::new(&config);
            pipeline.register_partition(InputTopic::Clicks, 0);
            pipeline.register_partition(InputTopic::Clicks, 1);
            let mut late = Vec::new();
            let mut examples = Vec::new();
            for (m, e) in first.iter().chain(second).cloned() {
                if let Err(b) = pipeline.ingest(m, e) {
                    let Event::Click(c) = &b.event else {
                        unreachable!()
                    };
                    late.push(c.event_id.clone());
                }
                examples.extend(pipeline.close_ready().into_iter().flat_map(|w| w.examples));
            }
            examples.extend(pipeline.finish().into_iter().flat_map(|w| w.examples));
            (late, examples)
        };
        let p0_first = late_ids(&p0, &p1);
        let p1_first = late_ids(&p1, &p0);
        assert_eq!(
            p0_first.0,
            vec!["b2".to_string()],
            "behind its own partition"
        );
        assert_eq!(p0_first, p1_first);
    }

    /// 400 impressions and clicks of five items, 0.7 s apart, over partitions 0 to 2.
    fn clicks_over_three_partitions() -> Vec<(RecordMeta, Event)> {
        (0..400)
            .map(|i| {
                let kind = if i % 7 == 3 {
                    ClickKind::Click
                } else {
                    ClickKind::Impression
                };
                let item = format!("i{}", i % 5);
                (
                    meta(InputTopic::Clicks, i % 3, i64::from(i)),
                    click(&format!("e{i}"), T0 + i64::from(i) * 700, kind, &item),
                )
            })
            .collect()
    }

    #[test]
    fn arrival_order_across_partitions_does_not_change_examples() {
        let events = clicks_over_three_partitions();
        let baseline = run(events.clone());
        // Interleave partitions differently: all of partition 2, then 1, then 0, each in
        // its own order, within the lateness bound per partition.
        let mut reordered = events;
        reordered.sort_by_key(|(m, e)| (std::cmp::Reverse(m.partition), e.ts()));
        let mut pipeline = FeaturePipeline::new(&PipelineConfig::default());
        for p in 0..3 {
            pipeline.register_partition(InputTopic::Clicks, p);
        }
        let mut shuffled = Vec::new();
        for (m, e) in reordered {
            pipeline
                .ingest(m, e)
                .expect("registered partitions hold the watermark");
            shuffled.extend(pipeline.close_ready().into_iter().flat_map(|w| w.examples));
        }
        shuffled.extend(pipeline.finish().into_iter().flat_map(|w| w.examples));
        assert_eq!(baseline, shuffled);
    }

    /// Guards checkpoints at the end of a bounded run: the windows still open when the
    /// input ends close a few at a time (the job takes a checkpoint between the steps),
    /// with the window outputs of one finish, whatever was read before it.
    #[test]
    fn finishing_a_few_windows_at_a_time_gives_the_outputs_of_one_finish() {
        let events = clicks_over_three_partitions();
        // Partition 3 is registered and never read: nothing closes before the end.
        let fed = || {
            let mut pipeline = FeaturePipeline::new(&PipelineConfig::default());
            pipeline.register_partition(InputTopic::Clicks, 3);
            for (m, e) in events.clone() {
                pipeline.ingest(m, e).expect("not late");
                assert!(pipeline.close_ready().is_empty());
            }
            pipeline
        };
        let at_once = fed().finish();
        assert!(at_once.len() > 3, "{} windows", at_once.len());
        for step in [1, 2, 3] {
            let mut pipeline = fed();
            let mut stepwise = Vec::new();
            loop {
                let (outputs, last) = pipeline.finish_at_most(step);
                assert!(
                    outputs.len() <= step,
                    "{} windows in one step",
                    outputs.len()
                );
                stepwise.extend(outputs);
                if last {
                    break;
                }
            }
            assert_eq!(stepwise, at_once, "{step} windows a step");
        }
    }
}
