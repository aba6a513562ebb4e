//! Deterministic synthetic shop traffic for the three input topics.
//!
//! Sessions arrive as a Poisson process in event time. Each session shows a user a list of
//! items in one scenario; clicks, carts, favourites and orders are drawn from the true
//! probabilities of [`world::World`]. Orders check stock when they happen (a stocked-out item
//! cannot be ordered), move inventory (sales, restocks, adjustments for cancellations), and
//! every impression's true click and conversion probability is recorded as [`TruthRow`].
//!
//! The output is a stream of [`GeneratedMessage`]s in event-time order, identical for the
//! same [`GeneratorOptions`]. With `malformed_fraction > 0`, broken messages are *added*
//! (never substituted), so the valid traffic of a seed does not depend on the fraction.

mod malformed;
pub mod rng;
pub mod world;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};

use compact_str::format_compact;
use serde::Serialize;

use crate::decode::{DecodeLimits, Reason, decode};
use crate::event::{
    ClickEvent, ClickKind, Event, InputTopic, InventoryEvent, InventoryKind, Millis, OrderEvent,
    OrderLine, OrderStatus, Scenario, Text,
};
use crate::record::RecordMeta;
use rng::{Rng, Weighted};
use world::{DEVICES, SCENARIOS, World, WorldSize};

/// 2026-01-05T00:00:00Z, the default start of generated event time.
pub const DEFAULT_START_MS: Millis = 1_767_571_200_000;

/// A change to the latent model at a point in event time, for drift tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftKind {
    /// All prices rise by 60 %, which lowers conversion through price sensitivity.
    PriceShock,
    /// Half of the sessions come from a new cohort of users with other tastes and devices.
    NewCohort,
    /// Click levels move: home feed +1.0 logit, push -0.8.
    CtrShift,
}

impl DriftKind {
    /// Every kind, in the order above.
    pub const ALL: [Self; 3] = [Self::PriceShock, Self::NewCohort, Self::CtrShift];

    /// `price_shock`, `new_cohort` or `ctr_shift` (what [`DriftKind::parse`] reads).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PriceShock => "price_shock",
            Self::NewCohort => "new_cohort",
            Self::CtrShift => "ctr_shift",
        }
    }

    /// Parses `price_shock`, `new_cohort` or `ctr_shift` (dashes allowed).
    pub fn parse(s: &str) -> Option<Self> {
        match s.replace('-', "_").as_str() {
            "price_shock" => Some(Self::PriceShock),
            "new_cohort" => Some(Self::NewCohort),
            "ctr_shift" => Some(Self::CtrShift),
            _ => None,
        }
    }
}

/// Everything that determines the generated traffic.
#[derive(Debug, Clone)]
pub struct GeneratorOptions {
    /// Seed of every random choice.
    pub seed: u64,
    /// Event time of the first event.
    pub start_ms: Millis,
    /// Stop starting sessions once this many valid events were produced (the sessions
    /// under way still finish, so the total can exceed it slightly).
    pub max_events: Option<u64>,
    /// Stop starting sessions at `start_ms + duration_ms`.
    pub duration_ms: Option<Millis>,
    /// Mean sessions per second of event time (about 9 events each).
    pub sessions_per_sec: f64,
    /// Shop size.
    pub size: WorldSize,
    /// Probability, per valid message, of adding one malformed message before it.
    pub malformed_fraction: f64,
    /// Optional drift: when and what.
    pub drift: Option<(Millis, DriftKind)>,
}

impl Default for GeneratorOptions {
    fn default() -> Self {
        Self {
            seed: 1,
            start_ms: DEFAULT_START_MS,
            max_events: Some(100_000),
            duration_ms: None,
            sessions_per_sec: 1.5,
            size: WorldSize {
                users: 5_000,
                items: 2_000,
                categories: 40,
            },
            malformed_fraction: 0.0,
            drift: None,
        }
    }
}

/// One message for a topic, in production order.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratedMessage {
    /// Target topic.
    pub topic: InputTopic,
    /// Message key (user_id for clicks and orders, item_id for inventory).
    pub key: String,
    /// JSON payload (or deliberately broken bytes).
    pub payload: Vec<u8>,
    /// Event time, also used as the Kafka message timestamp.
    pub ts: Millis,
    /// For a deliberately broken message, the reason the decoder must give.
    pub malformed: Option<Reason>,
}

impl GeneratedMessage {
    /// A valid message carrying `event` as JSON.
    pub fn valid(topic: InputTopic, key: String, event: &impl Serialize, ts: Millis) -> Self {
        Self {
            topic,
            key,
            payload: serde_json::to_vec(event).unwrap_or_default(),
            ts,
            malformed: None,
        }
    }
}

/// Ground truth for one impression.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TruthRow {
    /// The impression's event id.
    pub event_id: String,
    /// Event time.
    pub ts: Millis,
    /// Scenario.
    pub scenario: Scenario,
    /// True click probability.
    pub p_click: f64,
    /// True probability that a click converts.
    pub p_cvr: f64,
    /// Whether the impression was clicked.
    pub clicked: bool,
    /// Whether an order was placed and attributed to its click (last touch, same user and
    /// item, within 30 minutes of the click), whatever happened to the order later.
    pub converted: bool,
    /// Whether that order was later cancelled.
    pub cancelled: bool,
}

/// What the generator produced.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GeneratorReport {
    /// Valid messages per topic.
    pub valid_per_topic: BTreeMap<String, u64>,
    /// All valid messages.
    pub valid_total: u64,
    /// Impressions (each becomes one example and one prediction).
    pub impressions: u64,
    /// Clicks.
    pub clicks: u64,
    /// Placed orders.
    pub orders_placed: u64,
    /// Cancelled orders.
    pub orders_cancelled: u64,
    /// Orders that did not happen because the item was out of stock.
    pub stockouts: u64,
    /// Malformed messages added, per expected dead-letter reason.
    pub malformed_per_reason: BTreeMap<String, u64>,
    /// All malformed messages.
    pub malformed_total: u64,
    /// Event time of the first and last message.
    pub first_ts: Millis,
    /// Event time of the last message.
    pub last_ts: Millis,
}

/// Attribution window used for the truth's `converted` flag.
const ATTRIBUTION_MS: Millis = 30 * 60 * 1000;

#[derive(Debug, Clone)]
enum Action {
    Emit(Box<Pending>),
    PlaceOrder {
        user: UserRef,
        item: usize,
        quantity: u32,
        price: f64,
    },
    Cancel {
        user: UserRef,
        order: u64,
        item: usize,
        quantity: u32,
        price: f64,
        impression: Option<usize>,
    },
    Restock {
        item: usize,
    },
}

#[derive(Debug, Clone)]
struct Pending {
    topic: InputTopic,
    key: String,
    payload: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum UserRef {
    Regular(usize),
    Cohort(usize),
}

/// The traffic generator; an iterator of [`GeneratedMessage`]s.
pub struct Generator {
    options: GeneratorOptions,
    world: World,
    rng: Rng,
    malformed_rng: Rng,
    queue: BinaryHeap<Reverse<(Millis, u64)>>,
    actions: HashMap<u64, Action>,
    seq: u64,
    next_session_ts: Millis,
    sessions_started: u64,
    stop_sessions: bool,
    on_hand: Vec<i64>,
    restock_pending: Vec<bool>,
    clicks_by_pair: HashMap<(UserRef, usize), Vec<(Millis, usize)>>,
    ids: u64,
    orders: u64,
    held: Option<GeneratedMessage>,
    truth: Vec<TruthRow>,
    report: GeneratorReport,
}

impl Generator {
    /// A generator for `options`.
    pub fn new(options: GeneratorOptions) -> Self {
        let mut world_rng = Rng::new(options.seed, 1);
        let world = World::new(options.size, &mut world_rng);
        let items = world.items.len();
        let mut generator = Self {
            rng: Rng::new(options.seed, 2),
            malformed_rng: Rng::new(options.seed, 3),
            next_session_ts: options.start_ms + 1_000,
            world,
            queue: BinaryHeap::new(),
            actions: HashMap::new(),
            seq: 0,
            sessions_started: 0,
            stop_sessions: false,
            on_hand: vec![0; items],
            restock_pending: vec![false; items],
            clicks_by_pair: HashMap::new(),
            ids: 0,
            orders: 0,
            held: None,
            truth: Vec::new(),
            report: GeneratorReport::default(),
            options,
        };
        generator.initial_inventory();
        generator
    }

    /// Counts of what was produced so far (complete once the iterator is exhausted).
    pub fn report(&self) -> &GeneratorReport {
        &self.report
    }

    /// The valid events of the traffic as the job decodes them, as one input partition
    /// with consecutive offsets from 1: for running the feature stage without Kafka
    /// (benchmarks, offline evaluation). Malformed messages are skipped.
    pub fn decoded(&mut self) -> impl Iterator<Item = (RecordMeta, Event)> + '_ {
        let mut offset = 0i64;
        self.by_ref().filter_map(move |m| {
            let event = decode(m.topic, None, &m.payload, DecodeLimits::default()).ok()?;
            offset += 1;
            let meta = RecordMeta {
                topic: m.topic,
                partition: 0,
                offset,
            };
            Some((meta, event))
        })
    }

    /// The valid events of the traffic as a consumer of `partitions` partitions per topic
    /// reads them: each message on the partition its key hashes to (FNV-1a of the key,
    /// modulo `partitions`), with offsets counted from 1 per topic and partition (a
    /// malformed message takes its offset and is skipped). For benchmarks that feed the
    /// partition shards without Kafka.
    pub fn decoded_on(
        &mut self,
        partitions: i32,
    ) -> impl Iterator<Item = (RecordMeta, Event)> + '_ {
        // Kafka's partition numbers are non-negative i32s.
        let partitions = partitions.max(1).unsigned_abs();
        let mut offsets = vec![0i64; InputTopic::ALL.len() * partitions as usize];
        self.by_ref().filter_map(move |m| {
            let hash = crate::hash::fnv1a(m.key.as_bytes());
            // Below `partitions`, so it fits an i32 (and a u32).
            let partition = (hash % u64::from(partitions)) as u32;
            let slot = m.topic as usize * partitions as usize + partition as usize;
            offsets[slot] += 1;
            let event = decode(m.topic, None, &m.payload, DecodeLimits::default()).ok()?;
            let meta = RecordMeta {
                topic: m.topic,
                partition: partition as i32,
                offset: offsets[slot],
            };
            Some((meta, event))
        })
    }

    /// Ground truth of every impression produced so far, in production order.
    pub fn truth(&self) -> &[TruthRow] {
        &self.truth
    }

    fn next_id(&mut self, prefix: &str) -> Text {
        self.ids += 1;
        format_compact!("{prefix}{:010}", self.ids)
    }

    fn schedule(&mut self, ts: Millis, action: Action) {
        self.seq += 1;
        self.queue.push(Reverse((ts, self.seq)));
        self.actions.insert(self.seq, action);
    }

    fn emit_at(&mut self, ts: Millis, topic: InputTopic, key: String, payload: Vec<u8>) {
        self.schedule(
            ts,
            Action::Emit(Box::new(Pending {
                topic,
                key,
                payload,
            })),
        );
    }

    fn drift_active(&self, kind: DriftKind, ts: Millis) -> bool {
        matches!(self.options.drift, Some((at, k)) if k == kind && ts >= at)
    }

    fn price_at(&self, item: usize, ts: Millis) -> f64 {
        let base = self.world.items[item].price;
        if self.drift_active(DriftKind::PriceShock, ts) {
            (base * 1.6 * 100.0).round() / 100.0
        } else {
            base
        }
    }

    fn user(&self, user: UserRef) -> &world::User {
        match user {
            UserRef::Regular(i) => &self.world.users[i],
            UserRef::Cohort(i) => &self.world.cohort[i],
        }
    }

    fn initial_inventory(&mut self) {
        let ts = self.options.start_ms;
        for item in 0..self.world.items.len() {
            let on_hand = if self.rng.chance(0.03) {
                0
            } else {
                10 + self.rng.below(190) as i64
            };
            self.on_hand[item] = on_hand;
            let event = InventoryEvent {
                event_id: self.next_id("v"),
                ts,
                item_id: self.world.items[item].id.clone(),
                kind: InventoryKind::Snapshot,
                on_hand: Some(on_hand),
                delta: None,
                price: Some(self.world.items[item].price),
                category: Some(format_compact!("cat{}", self.world.items[item].category)),
            };
            self.emit_inventory(event);
            if on_hand == 0 {
                self.schedule_restock(item, ts);
            }
        }
    }

    fn emit_inventory(&mut self, event: InventoryEvent) {
        let payload = serde_json::to_vec(&event).unwrap_or_default();
        self.emit_at(
            event.ts,
            InputTopic::Inventory,
            event.item_id.to_string(),
            payload,
        );
    }

    fn emit_click(&mut self, event: &ClickEvent) {
        let payload = serde_json::to_vec(event).unwrap_or_default();
        self.emit_at(
            event.ts,
            InputTopic::Clicks,
            event.user_id.to_string(),
            payload,
        );
    }

    fn schedule_restock(&mut self, item: usize, now: Millis) {
        if !self.restock_pending[item] {
            self.restock_pending[item] = true;
            let delay = 600_000 + self.rng.exp(3_600_000.0) as Millis;
            self.schedule(now + delay, Action::Restock { item });
        }
    }

    fn pick_user(&mut self, ts: Millis) -> UserRef {
        if self.drift_active(DriftKind::NewCohort, ts) && self.rng.chance(0.5) {
            UserRef::Cohort(self.rng.below(self.world.cohort.len()))
        } else {
            UserRef::Regular(self.world.user_activity.sample(&mut self.rng))
        }
    }

    fn pick_item(
        &mut self,
        user: UserRef,
        scenario: Scenario,
        query_category: Option<usize>,
    ) -> usize {
        if let Some(category) = query_category
            && self.rng.chance(0.8)
            && let Some((members, weights)) = self.world.by_category.get(category)
            && !members.is_empty()
        {
            return members[weights.sample(&mut self.rng)];
        }
        let personal = match scenario {
            Scenario::HomeFeed | Scenario::Push => 0.6,
            _ => 0.4,
        };
        if self.rng.chance(personal) {
            let prefs = self.user(user).prefs;
            let slot = Weighted::new(prefs.iter().map(|p| p.1)).sample(&mut self.rng);
            let (members, weights) = &self.world.by_category[prefs[slot].0];
            if !members.is_empty() {
                return members[weights.sample(&mut self.rng)];
            }
        }
        self.world.popularity.sample(&mut self.rng)
    }

    /// Creates one session at `ts`: an optional search, a list of impressions, and the
    /// clicks, carts, favourites and (scheduled) orders that follow from them.
    fn start_session(&mut self, ts: Millis) {
        self.sessions_started += 1;
        let session_id = format_compact!("s{:09}", self.sessions_started);
        let user = self.pick_user(ts);
        let user_id = self.user(user).id.clone();
        let device = Text::from(DEVICES[self.user(user).device].0);
        let scenario_index = self.world.scenario_mix.sample(&mut self.rng);
        let scenario = SCENARIOS[scenario_index].0;
        let ctr_shift = if self.drift_active(DriftKind::CtrShift, ts) {
            match scenario {
                Scenario::HomeFeed => 1.0,
                Scenario::Push => -0.8,
                _ => 0.0,
            }
        } else {
            0.0
        };

        let mut query_category = None;
        let mut t = ts;
        if scenario == Scenario::Search {
            let prefs = self.user(user).prefs;
            let category = if self.rng.chance(0.7) {
                prefs[0].0
            } else {
                self.world.category_popularity.sample(&mut self.rng)
            };
            query_category = Some(category);
            let search = ClickEvent {
                event_id: self.next_id("c"),
                ts: t,
                user_id: user_id.clone(),
                session_id: session_id.clone(),
                kind: ClickKind::Search,
                item_id: None,
                scenario,
                position: None,
                device: Some(device.clone()),
                price: None,
                query: Some(format_compact!("category {category}")),
            };
            self.emit_click(&search);
            t += 300;
        }

        let slots = 3 + self.rng.below(10);
        let mut shown: Vec<usize> = Vec::with_capacity(slots);
        for position in 0..slots as u32 {
            let mut item = self.pick_item(user, scenario, query_category);
            for _ in 0..3 {
                if !shown.contains(&item) {
                    break;
                }
                item = self.pick_item(user, scenario, query_category);
            }
            if shown.contains(&item) {
                continue;
            }
            shown.push(item);
            let imp_ts = t + Millis::from(position) * 50;
            let price = self.price_at(item, imp_ts);
            let (p_click, p_cvr) = {
                let u = self.user(user);
                let it = &self.world.items[item];
                (
                    self.world
                        .p_click(u, it, scenario_index, position, ctr_shift),
                    self.world.p_cvr(u, it, scenario_index, price),
                )
            };
            let base = ClickEvent {
                event_id: self.next_id("c"),
                ts: imp_ts,
                user_id: user_id.clone(),
                session_id: session_id.clone(),
                kind: ClickKind::Impression,
                item_id: Some(self.world.items[item].id.clone()),
                scenario,
                position: Some(position),
                device: Some(device.clone()),
                price: Some(price),
                query: None,
            };
            self.emit_click(&base);
            self.report.impressions += 1;
            let truth_index = self.truth.len();
            let clicked = self.rng.chance(p_click);
            self.truth.push(TruthRow {
                event_id: base.event_id.to_string(),
                ts: imp_ts,
                scenario,
                p_click,
                p_cvr,
                clicked,
                converted: false,
                cancelled: false,
            });
            if !clicked {
                continue;
            }
            self.report.clicks += 1;
            let click_ts = imp_ts + 1_000 + (self.rng.exp(15_000.0) as Millis).min(240_000);
            let click = ClickEvent {
                event_id: self.next_id("c"),
                ts: click_ts,
                kind: ClickKind::Click,
                ..base.clone()
            };
            self.emit_click(&click);
            self.remember_click(user, item, click_ts, truth_index);
            let converts = self.rng.chance(p_cvr);
            let carts = self.rng.chance(if converts { 0.65 } else { 0.25 });
            if carts {
                let cart = ClickEvent {
                    event_id: self.next_id("c"),
                    ts: click_ts + 2_000 + self.rng.exp(20_000.0) as Millis,
                    kind: ClickKind::AddToCart,
                    ..base.clone()
                };
                self.emit_click(&cart);
            }
            if self.rng.chance(0.05) {
                let favorite = ClickEvent {
                    event_id: self.next_id("c"),
                    ts: click_ts + 1_500,
                    kind: ClickKind::Favorite,
                    ..base.clone()
                };
                self.emit_click(&favorite);
            }
            if converts {
                let quantity = match self.rng.unit() {
                    x if x < 0.8 => 1,
                    x if x < 0.95 => 2,
                    _ => 3,
                };
                let delay = 5_000 + (self.rng.exp(120_000.0) as Millis).min(20 * 60_000);
                self.schedule(
                    click_ts + delay,
                    Action::PlaceOrder {
                        user,
                        item,
                        quantity,
                        price,
                    },
                );
            }
        }
    }

    /// Remembers a click for last-touch attribution. Clicks are created ahead of the time
    /// they happen, so all recent clicks of a (user, item) pair are kept and the order picks
    /// the latest one before its own time.
    fn remember_click(&mut self, user: UserRef, item: usize, click_ts: Millis, truth_index: usize) {
        let clicks = self.clicks_by_pair.entry((user, item)).or_default();
        clicks.retain(|(ts, _)| click_ts - *ts <= 2 * ATTRIBUTION_MS);
        clicks.push((click_ts, truth_index));
    }

    /// The impression whose click an order at `ts` is attributed to: the latest click of the
    /// same user on the same item strictly before `ts` and at most 30 minutes before it.
    fn attributed_impression(&self, user: UserRef, item: usize, ts: Millis) -> Option<usize> {
        self.clicks_by_pair
            .get(&(user, item))?
            .iter()
            .filter(|(click_ts, _)| *click_ts < ts && ts - *click_ts <= ATTRIBUTION_MS)
            .max_by_key(|(click_ts, idx)| (*click_ts, *idx))
            .map(|(_, idx)| *idx)
    }

    fn run_action(&mut self, ts: Millis, action: Action) -> Option<GeneratedMessage> {
        match action {
            Action::Emit(pending) => {
                let Pending {
                    topic,
                    key,
                    payload,
                } = *pending;
                Some(GeneratedMessage {
                    topic,
                    key,
                    payload,
                    ts,
                    malformed: None,
                })
            }
            Action::PlaceOrder {
                user,
                item,
                quantity,
                price,
            } => {
                if self.on_hand[item] < i64::from(quantity) {
                    self.report.stockouts += 1;
                    self.schedule_restock(item, ts);
                    return None;
                }
                self.on_hand[item] -= i64::from(quantity);
                self.orders += 1;
                let order_number = self.orders;
                let impression = self.attributed_impression(user, item, ts);
                if let Some(idx) = impression {
                    self.truth[idx].converted = true;
                }
                self.report.orders_placed += 1;
                let order = self.order_event(
                    user,
                    order_number,
                    ts,
                    OrderStatus::Placed,
                    item,
                    quantity,
                    price,
                );
                let sale = InventoryEvent {
                    event_id: self.next_id("v"),
                    ts: ts + 1,
                    item_id: self.world.items[item].id.clone(),
                    kind: InventoryKind::Sale,
                    on_hand: Some(self.on_hand[item]),
                    delta: Some(-i64::from(quantity)),
                    price: None,
                    category: None,
                };
                self.emit_inventory(sale);
                if self.on_hand[item] < 5 {
                    self.schedule_restock(item, ts);
                }
                if self.rng.chance(0.04) {
                    let delay = 60_000 + (self.rng.exp(600_000.0) as Millis).min(25 * 60_000);
                    self.schedule(
                        ts + delay,
                        Action::Cancel {
                            user,
                            order: order_number,
                            item,
                            quantity,
                            price,
                            impression,
                        },
                    );
                }
                Some(order)
            }
            Action::Cancel {
                user,
                order,
                item,
                quantity,
                price,
                impression,
            } => {
                self.report.orders_cancelled += 1;
                if let Some(idx) = impression {
                    self.truth[idx].cancelled = true;
                }
                self.on_hand[item] += i64::from(quantity);
                let adjustment = InventoryEvent {
                    event_id: self.next_id("v"),
                    ts: ts + 1,
                    item_id: self.world.items[item].id.clone(),
                    kind: InventoryKind::Adjustment,
                    on_hand: Some(self.on_hand[item]),
                    delta: Some(i64::from(quantity)),
                    price: None,
                    category: None,
                };
                self.emit_inventory(adjustment);
                Some(self.order_event(
                    user,
                    order,
                    ts,
                    OrderStatus::Cancelled,
                    item,
                    quantity,
                    price,
                ))
            }
            Action::Restock { item } => {
                self.restock_pending[item] = false;
                let delta = 50 + self.rng.below(100) as i64;
                self.on_hand[item] += delta;
                let restock = InventoryEvent {
                    event_id: self.next_id("v"),
                    ts,
                    item_id: self.world.items[item].id.clone(),
                    kind: InventoryKind::Restock,
                    on_hand: Some(self.on_hand[item]),
                    delta: Some(delta),
                    price: Some(self.price_at(item, ts)),
                    category: None,
                };
                Some(GeneratedMessage::valid(
                    InputTopic::Inventory,
                    restock.item_id.to_string(),
                    &restock,
                    ts,
                ))
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn order_event(
        &self,
        user: UserRef,
        order: u64,
        ts: Millis,
        status: OrderStatus,
        item: usize,
        quantity: u32,
        unit_price: f64,
    ) -> GeneratedMessage {
        let event = OrderEvent {
            order_id: format_compact!("o{order:09}"),
            ts,
            user_id: self.user(user).id.clone(),
            status,
            lines: vec![OrderLine {
                item_id: self.world.items[item].id.clone(),
                quantity: i64::from(quantity),
                unit_price,
            }],
            currency: Text::from("EUR"),
        };
        // Orders carry RFC 3339 times, clicks and inventory epoch milliseconds: both wire
        // forms of the contract are exercised.
        let mut value = serde_json::to_value(&event).unwrap_or_default();
        value["ts"] = serde_json::Value::String(crate::event::ts_to_rfc3339(ts));
        GeneratedMessage::valid(InputTopic::Orders, event.user_id.to_string(), &value, ts)
    }

    fn session_allowed(&self) -> bool {
        if self.stop_sessions {
            return false;
        }
        let by_count = self
            .options
            .max_events
            .is_none_or(|max| self.report.valid_total < max);
        let by_time = self
            .options
            .duration_ms
            .is_none_or(|d| self.next_session_ts < self.options.start_ms + d);
        by_count && by_time
    }

    fn next_valid(&mut self) -> Option<GeneratedMessage> {
        loop {
            if !self.stop_sessions && !self.session_allowed() {
                self.stop_sessions = true;
            }
            let next_action = self.queue.peek().map(|Reverse((ts, _))| *ts);
            let session_first =
                !self.stop_sessions && next_action.is_none_or(|ts| self.next_session_ts < ts);
            if session_first {
                let ts = self.next_session_ts;
                self.start_session(ts);
                let gap = self
                    .rng
                    .exp(1000.0 / self.options.sessions_per_sec.max(1e-6));
                self.next_session_ts = ts + (gap as Millis).max(1);
                continue;
            }
            let Reverse((ts, seq)) = self.queue.pop()?;
            let Some(action) = self.actions.remove(&seq) else {
                continue;
            };
            // Once sessions have stopped, only the consequences of the traffic already
            // generated (orders, cancellations) are played out; restocks far in the future
            // would only stretch event time.
            if self.stop_sessions
                && matches!(action, Action::Restock { .. })
                && ts > self.next_session_ts + ATTRIBUTION_MS
            {
                continue;
            }
            if let Some(message) = self.run_action(ts, action) {
                return Some(message);
            }
        }
    }

    fn count_valid(&mut self, message: &GeneratedMessage) {
        *self
            .report
            .valid_per_topic
            .entry(message.topic.as_str().to_string())
            .or_default() += 1;
        self.report.valid_total += 1;
    }
}

impl Iterator for Generator {
    type Item = GeneratedMessage;

    fn next(&mut self) -> Option<GeneratedMessage> {
        if let Some(held) = self.held.take() {
            return Some(held);
        }
        let message = self.next_valid()?;
        self.count_valid(&message);
        if self.report.valid_total == 1 {
            self.report.first_ts = message.ts;
        }
        self.report.last_ts = message.ts;
        if self.options.malformed_fraction > 0.0
            && self.malformed_rng.chance(self.options.malformed_fraction)
        {
            let broken = malformed::corrupt(&message, &mut self.malformed_rng);
            if let Some(reason) = broken.malformed {
                *self
                    .report
                    .malformed_per_reason
                    .entry(reason.as_str().to_string())
                    .or_default() += 1;
                self.report.malformed_total += 1;
            }
            self.held = Some(message);
            return Some(broken);
        }
        Some(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{DecodeLimits, decode};
    use crate::event::Event;

    fn small(seed: u64, malformed: f64) -> GeneratorOptions {
        GeneratorOptions {
            seed,
            max_events: Some(3_000),
            size: WorldSize {
                users: 200,
                items: 300,
                categories: 10,
            },
            malformed_fraction: malformed,
            ..GeneratorOptions::default()
        }
    }

    #[test]
    fn same_seed_same_traffic() {
        let a: Vec<_> = Generator::new(small(5, 0.02)).collect();
        let b: Vec<_> = Generator::new(small(5, 0.02)).collect();
        assert_eq!(a, b);
        let c: Vec<_> = Generator::new(small(6, 0.02)).collect();
        assert_ne!(a, c);
    }

    #[test]
    fn decoded_on_partitions_keeps_each_key_on_one_partition_with_offsets_per_partition() {
        let raw: Vec<GeneratedMessage> = Generator::new(small(3, 0.05)).collect();
        let events: Vec<Event> = Generator::new(small(3, 0.05))
            .decoded()
            .map(|(_, e)| e)
            .collect();
        let placed: Vec<(RecordMeta, Event)> =
            Generator::new(small(3, 0.05)).decoded_on(4).collect();
        // The events of `decoded`, in its order: only their metadata differs.
        assert_eq!(
            placed.iter().map(|(_, e)| e.clone()).collect::<Vec<_>>(),
            events
        );
        let valid: Vec<&GeneratedMessage> = raw.iter().filter(|m| m.malformed.is_none()).collect();
        assert_eq!(valid.len(), placed.len());
        let mut partition_of: HashMap<(InputTopic, &str), i32> = HashMap::new();
        let mut last: BTreeMap<(InputTopic, i32), i64> = BTreeMap::new();
        for (message, (meta, _)) in valid.iter().zip(&placed) {
            assert_eq!(message.topic, meta.topic);
            assert!((0..4).contains(&meta.partition), "{meta:?}");
            let first = *partition_of
                .entry((meta.topic, message.key.as_str()))
                .or_insert(meta.partition);
            assert_eq!(first, meta.partition, "key {} moved", message.key);
            let previous = last.insert((meta.topic, meta.partition), meta.offset);
            assert!(
                meta.offset > previous.unwrap_or(0),
                "{meta:?} after {previous:?}"
            );
        }
        // Every partition of every topic got messages, and each malformed message took an
        // offset of its partition.
        assert_eq!(last.len(), 12);
        assert_eq!(last.values().sum::<i64>(), raw.len() as i64);
        assert!(raw.len() > valid.len());

        // Without malformed messages the offsets of a partition are 1, 2, 3, ...
        let mut next: BTreeMap<(InputTopic, i32), i64> = BTreeMap::new();
        for (meta, _) in Generator::new(small(3, 0.0)).decoded_on(4) {
            let expected = next.entry((meta.topic, meta.partition)).or_insert(1);
            assert_eq!(meta.offset, *expected);
            *expected += 1;
        }
    }

    #[test]
    fn malformed_messages_are_added_not_substituted() {
        let clean: Vec<_> = Generator::new(small(9, 0.0)).collect();
        let dirty: Vec<_> = Generator::new(small(9, 0.05))
            .filter(|m| m.malformed.is_none())
            .collect();
        assert_eq!(clean, dirty);
    }

    #[test]
    fn every_message_decodes_as_declared_and_counts_reconcile() {
        let mut generator = Generator::new(small(11, 0.03));
        let messages: Vec<_> = generator.by_ref().collect();
        let report = generator.report().clone();
        let mut impressions = 0;
        let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
        let mut last_ts = Millis::MIN;
        for m in &messages {
            let decoded = decode(
                m.topic,
                Some(m.key.as_bytes()),
                &m.payload,
                DecodeLimits::default(),
            );
            match (&decoded, m.malformed) {
                (Ok(event), None) => {
                    assert!(
                        event.ts() >= last_ts,
                        "valid messages come in event-time order"
                    );
                    last_ts = event.ts();
                    if let Event::Click(c) = event
                        && c.kind == ClickKind::Impression
                    {
                        impressions += 1;
                    }
                }
                (Err(rejection), Some(expected)) => {
                    assert_eq!(
                        rejection.reason,
                        expected,
                        "{rejection}: {}",
                        String::from_utf8_lossy(&m.payload)
                    );
                    *reasons.entry(expected.as_str().to_string()).or_default() += 1;
                }
                (other, expected) => panic!(
                    "decode {other:?} but expected {expected:?}: {:?}",
                    String::from_utf8_lossy(&m.payload)
                ),
            }
        }
        assert_eq!(impressions, report.impressions);
        assert_eq!(reasons, report.malformed_per_reason);
        assert!(report.malformed_total > 0);
        assert_eq!(
            report.malformed_total + report.valid_total,
            messages.len() as u64
        );
        assert_eq!(generator.truth().len() as u64, report.impressions);
        assert!(report.clicks > 0 && report.orders_placed > 0, "{report:?}");
    }

    #[test]
    fn stock_never_goes_negative_and_sales_match_orders() {
        let mut generator = Generator::new(GeneratorOptions {
            size: WorldSize {
                users: 300,
                items: 20,
                categories: 3,
            },
            max_events: Some(20_000),
            ..small(3, 0.0)
        });
        let mut on_hand: HashMap<String, i64> = HashMap::new();
        let mut sales = 0u64;
        for m in generator.by_ref() {
            if let Ok(Event::Inventory(e)) =
                decode(m.topic, None, &m.payload, DecodeLimits::default())
            {
                if let Some(v) = e.on_hand {
                    assert!(v >= 0, "negative stock {e:?}");
                    on_hand.insert(e.item_id.to_string(), v);
                }
                if e.kind == InventoryKind::Sale {
                    sales += 1;
                }
            }
        }
        assert_eq!(sales, generator.report().orders_placed);
        assert!(
            generator.report().stockouts > 0,
            "small stock must produce stock-outs"
        );
    }

    #[test]
    fn ctr_shift_raises_home_feed_clicks_after_onset() {
        let start = DEFAULT_START_MS;
        let at = start + 3_600_000;
        let mut generator = Generator::new(GeneratorOptions {
            max_events: None,
            duration_ms: Some(2 * 3_600_000),
            drift: Some((at, DriftKind::CtrShift)),
            ..small(4, 0.0)
        });
        generator.by_ref().for_each(drop);
        let rate = |before: bool| {
            let rows: Vec<_> = generator
                .truth()
                .iter()
                .filter(|t| t.scenario == Scenario::HomeFeed && (t.ts < at) == before)
                .collect();
            rows.iter().map(|t| t.p_click).sum::<f64>() / rows.len() as f64
        };
        assert!(
            rate(false) > rate(true) * 1.5,
            "{} vs {}",
            rate(false),
            rate(true)
        );
    }
}
