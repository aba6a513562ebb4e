//! Bucketed rolling counters over three horizons: 1 hour (6 buckets of 10 minutes),
//! 24 hours (24 buckets of 1 hour) and 7 days (7 buckets of 1 day).
//!
//! A horizon's value at time `t` is the sum of the buckets that overlap `(t - horizon, t]`,
//! so the oldest bucket may reach up to one bucket width further back than the horizon
//! (the price of bounded memory: at most 37 buckets per key). Only buckets that an event
//! fell in are stored (an event that counts nothing makes one too: the TTL of items reads
//! their newest bucket). Counters saturate at 65,535 per bucket.

use serde::{Deserialize, Serialize};
use shopstream_ingest::event::Millis;

/// What one bucket counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    /// Impressions.
    pub impressions: u16,
    /// Clicks.
    pub clicks: u16,
    /// Add-to-cart events.
    pub carts: u16,
    /// Units ordered (placed orders).
    pub units: u16,
    /// Money spent (placed orders).
    pub spend: f32,
}

impl Counts {
    /// Equal, the spend bit for bit (`-0.0` is not `0.0`).
    fn same_bits(&self, other: &Counts) -> bool {
        (
            self.impressions,
            self.clicks,
            self.carts,
            self.units,
            self.spend.to_bits(),
        ) == (
            other.impressions,
            other.clicks,
            other.carts,
            other.units,
            other.spend.to_bits(),
        )
    }

    fn add(&mut self, other: Counts) {
        self.impressions = self.impressions.saturating_add(other.impressions);
        self.clicks = self.clicks.saturating_add(other.clicks);
        self.carts = self.carts.saturating_add(other.carts);
        self.units = self.units.saturating_add(other.units);
        self.spend += other.spend;
    }
}

/// Sums over one horizon.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    /// Impressions.
    pub impressions: i64,
    /// Clicks.
    pub clicks: i64,
    /// Add-to-cart events.
    pub carts: i64,
    /// Units ordered.
    pub units: i64,
    /// Money spent.
    pub spend: f64,
}

impl Totals {
    fn add(&mut self, c: &Counts) {
        self.impressions += i64::from(c.impressions);
        self.clicks += i64::from(c.clicks);
        self.carts += i64::from(c.carts);
        self.units += i64::from(c.units);
        self.spend += f64::from(c.spend);
    }
}

const TEN_MINUTES: Millis = 600_000;
pub(crate) const HOUR: Millis = 3_600_000;
pub(crate) const DAY: Millis = 86_400_000;

/// The rings, shortest first: (bucket width, buckets kept).
const RINGS: [(Millis, i64); 3] = [(TEN_MINUTES, 6), (HOUR, 24), (DAY, 7)];

/// One non-empty bucket of a ring, in 16 bytes: the ring and the bucket number share one
/// `i32` (`number * 4 + ring`), beside 12 bytes of counts. Users and items hold about 9
/// buckets per active user between them, so every byte here counts 9 times.
///
/// Serialised as `{ ring, number, counts }` (its shape before it was packed).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(into = "BucketFields", from = "BucketFields")]
struct Bucket {
    /// `number * 4 + ring`.
    slot: i32,
    counts: Counts,
}

/// The bucket numbers a [`Bucket`] holds: +-2^29, which for the 10-minute ring is about
/// +-10,000 years around 1970. Event times are far inside (the decoder takes 2000 to
/// 2100); a time outside counts in the edge bucket of its ring, and has no span.
const NUMBERS: std::ops::RangeInclusive<i64> = -(1 << 29)..=(1 << 29) - 1;

/// `ts`'s bucket number in a ring of `width`, within [`NUMBERS`].
fn bucket_number(ts: Millis, width: Millis) -> i64 {
    within_numbers(ts.div_euclid(width))
}

/// `number`, or the edge of [`NUMBERS`] it lies beyond.
fn within_numbers(number: i64) -> i64 {
    number.clamp(*NUMBERS.start(), *NUMBERS.end())
}

/// The serialised shape of a [`Bucket`].
#[derive(Serialize, Deserialize)]
struct BucketFields {
    ring: u8,
    number: i64,
    counts: Counts,
}

impl From<Bucket> for BucketFields {
    fn from(b: Bucket) -> Self {
        Self {
            ring: b.ring() as u8,
            number: b.number(),
            counts: b.counts,
        }
    }
}

impl From<BucketFields> for Bucket {
    fn from(f: BucketFields) -> Self {
        Self {
            slot: Bucket::slot(usize::from(f.ring), within_numbers(f.number)),
            counts: f.counts,
        }
    }
}

/// Rolling counters of one key (a user or an item) over 1 h, 24 h and 7 d.
///
/// Only buckets that counted something are kept: most keys are seen in a few buckets,
/// and a dense ring costs 37 buckets of 12 bytes per key whatever the traffic. The sums
/// are the dense rings' exactly (buckets added in bucket order; an absent bucket is the
/// dense ring's zero bucket).
///
/// A key seen within one 10-minute bucket only (about half the users and items) holds one
/// bucket of each ring with the same counts: those three are kept as one, tagged
/// [`ALL_RINGS`], whose number is the 10-minute ring's (the other two follow from it).
/// That form is used exactly when the three buckets allow it; it compares and serialises
/// as the three buckets it stands for.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(try_from = "RollingFields")]
pub struct Rolling {
    /// Sorted by (ring, number). A ring's buckets lie within its reach of its newest:
    /// older ones are dropped when a newer bucket arrives. A boxed slice (16 B, a `Vec`
    /// is 24) of exactly the buckets held: keys hold a handful for a long time. Or one
    /// bucket tagged [`ALL_RINGS`]; or, ending with an hour bucket, without the day
    /// bucket that the hour buckets add up to ([`derived_day`]).
    buckets: Box<[Bucket]>,
}

/// The ring tag of a bucket that stands for one bucket of each ring with its counts, the
/// 10-minute ring's numbered as it is and the others the ones that contain it.
const ALL_RINGS: usize = 3;

/// The bucket numbers, one per ring, of the buckets containing 10-minute bucket `number`.
fn containing(number: i64) -> [i64; 3] {
    per_ring(|(width, _)| (number * TEN_MINUTES).div_euclid(width))
}

/// `f` of each ring's (width, buckets kept), in ring order. Written out rather than
/// `RINGS.map`, which the compiler leaves a call: here the widths stay constants, and a
/// division by one of them (three at every event and every lookup) is a multiplication.
#[inline(always)]
fn per_ring<T>(mut f: impl FnMut((Millis, i64)) -> T) -> [T; 3] {
    [f(RINGS[0]), f(RINGS[1]), f(RINGS[2])]
}

/// The bucket numbers of `ts`, one per ring.
fn numbers_at(ts: Millis) -> [i64; 3] {
    per_ring(|(width, _)| bucket_number(ts, width))
}

/// The serialised shape of a [`Rolling`], as read back.
#[derive(Deserialize)]
struct RollingFields {
    buckets: Vec<BucketFields>,
}

impl TryFrom<RollingFields> for Rolling {
    type Error = String;

    fn try_from(f: RollingFields) -> Result<Self, String> {
        let mut buckets = f
            .buckets
            .into_iter()
            .map(|b| match usize::from(b.ring) {
                ring if ring < RINGS.len() => Ok(Bucket::from(b)),
                ring => Err(format!(
                    "a rolling bucket of ring {ring}: rings are 0, 1 and 2"
                )),
            })
            .collect::<Result<Vec<Bucket>, _>>()?;
        // Every form is sorted; the stored form tells a left-out day bucket by its
        // absence at the end.
        buckets.sort_by_key(|b| (b.ring(), b.number()));
        if let Some(pair) = buckets.windows(2).find(|pair| pair[0].slot == pair[1].slot) {
            return Err(format!(
                "two rolling buckets of ring {} numbered {} (numbers are clamped to +-2^29)",
                pair[0].ring(),
                pair[0].number()
            ));
        }
        // Sorted, so a day bucket would be last.
        if buckets.last().is_some_and(|b| b.ring() == 1) {
            return Err(
                "rolling buckets of the hour ring without one of the day ring: \
                        every event counts in every ring"
                    .to_string(),
            );
        }
        Ok(Self {
            buckets: canonical(buckets),
        })
    }
}

/// The serialised shape of a [`Rolling`], borrowed: every ring's buckets, an
/// [`ALL_RINGS`] bucket as the three it stands for (a slice, so its length is known
/// before its buckets are written).
#[derive(Serialize)]
struct RollingView<'a> {
    buckets: &'a [Bucket],
}

impl Serialize for Rolling {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.with_explicit(|buckets| RollingView { buckets }.serialize(serializer))
    }
}

/// `buckets` (explicit, sorted by ring and number) as a [`Rolling`] stores them: one
/// [`ALL_RINGS`] bucket when they are one bucket per ring, the same counts bit for bit,
/// each containing the 10-minute one; else without the day bucket when it is the day
/// ring's only one and the hour buckets add up to it bit for bit ([`derived_day`]);
/// else as they are.
fn canonical(mut buckets: Vec<Bucket>) -> Box<[Bucket]> {
    make_canonical(&mut buckets);
    buckets.into_boxed_slice()
}

/// [`canonical`] in place.
fn make_canonical(buckets: &mut Vec<Bucket>) {
    if let [a, b, c] = buckets[..]
        && [a.ring(), b.ring(), c.ring()] == [0, 1, 2]
        && [a.number(), b.number(), c.number()] == containing(a.number())
        && a.counts.same_bits(&b.counts)
        && a.counts.same_bits(&c.counts)
    {
        buckets.clear();
        buckets.push(Bucket::all_rings(a.number(), a.counts));
        return;
    }
    if let [.., hour, day] = buckets[..]
        && hour.ring() == 1
        && day.ring() == 2
        && derived_day(buckets)
            .is_some_and(|d| d.slot == day.slot && d.counts.same_bits(&day.counts))
    {
        buckets.pop();
    }
}

thread_local! {
    /// The buckets of [`Rolling::add`]'s general path, worked on here and copied back:
    /// the key's own slice is reallocated only when its length changes (an event mostly
    /// adds to held buckets, or moves a ring on by one).
    static SCRATCH: std::cell::Cell<Vec<Bucket>> = const { std::cell::Cell::new(Vec::new()) };
}

/// The day bucket that the hour buckets of `buckets` add up to: their counts added in
/// order to zero, numbered by the day that holds them all; `None` if there are none or
/// they lie in more than one day. A stored form that ends with an hour bucket leaves
/// this bucket out (see [`canonical`]): every event counts in every ring, so a key with
/// hour buckets has a day bucket.
fn derived_day(buckets: &[Bucket]) -> Option<Bucket> {
    derived_day_adding(buckets, None)
}

/// [`derived_day`] as it would be with `delta` added to the hour bucket at `added`'s
/// index (`None`: as held).
fn derived_day_adding(buckets: &[Bucket], added: Option<(usize, Counts)>) -> Option<Bucket> {
    let day_of = |hour: &Bucket| (hour.number() * HOUR).div_euclid(DAY);
    let mut day = None;
    let mut counts = Counts::default();
    for (i, hour) in buckets.iter().enumerate().filter(|(_, b)| b.ring() == 1) {
        let hour_day = day_of(hour);
        if *day.get_or_insert(hour_day) != hour_day {
            return None;
        }
        let mut hour_counts = hour.counts;
        if let Some((at, delta)) = added
            && at == i
        {
            hour_counts.add(delta);
        }
        counts.add(hour_counts);
    }
    Some(Bucket {
        slot: Bucket::slot(2, day?),
        counts,
    })
}

impl PartialEq for Rolling {
    /// Equal buckets, an [`ALL_RINGS`] bucket compared as the three it stands for.
    fn eq(&self, other: &Self) -> bool {
        self.with_explicit(|mine| other.with_explicit(|theirs| mine == theirs))
    }
}

/// The three horizons' totals, shortest first.
pub type Horizons = [Totals; 3];

/// One horizon's totals in 24 bytes ([`Totals`] takes 40): what the label buffer and the
/// kept sales totals hold, given back exactly by [`CompactHorizons::horizons`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct CompactTotals {
    impressions: u32,
    clicks: u32,
    carts: u32,
    units: u32,
    spend: f64,
}

impl CompactTotals {
    fn of(totals: &Totals) -> Self {
        // A horizon sums at most 24 buckets of u16 counters, which fits; only a damaged
        // checkpoint could hold more, and that is clamped.
        let count = |n: i64| u32::try_from(n.max(0)).unwrap_or(u32::MAX);
        Self {
            impressions: count(totals.impressions),
            clicks: count(totals.clicks),
            carts: count(totals.carts),
            units: count(totals.units),
            spend: totals.spend,
        }
    }

    fn totals(self) -> Totals {
        Totals {
            impressions: self.impressions.into(),
            clicks: self.clicks.into(),
            carts: self.carts.into(),
            units: self.units.into(),
            spend: self.spend,
        }
    }
}

/// [`Horizons`] summed from [`Rolling`] counters, in 72 bytes instead of 120.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct CompactHorizons([CompactTotals; 3]);

impl CompactHorizons {
    /// `horizons`, as [`Rolling::totals`] gives them (counts of at most 24 buckets).
    pub(crate) fn of(horizons: &Horizons) -> Self {
        Self(horizons.each_ref().map(CompactTotals::of))
    }

    /// The horizons given to [`CompactHorizons::of`].
    pub(crate) fn horizons(&self) -> Horizons {
        self.0.map(CompactTotals::totals)
    }
}

/// Horizon names as used in column names, shortest first.
pub const HORIZONS: [&str; 3] = ["1h", "24h", "7d"];

impl Rolling {
    /// Adds `delta` at event time `ts`. A bucket older than its ring reaches (behind the
    /// ring's newest by its length or more) is not counted: events apply in time order,
    /// so that does not happen.
    pub fn add(&mut self, ts: Millis, delta: Counts) {
        let numbers = numbers_at(ts);
        match &mut *self.buckets {
            // Another event of the one 10-minute bucket: the three buckets it stands for
            // would each add `delta` to the same counts.
            [one] if one.ring() == ALL_RINGS && containing(one.number()) == numbers => {
                one.counts.add(delta);
                return;
            }
            // A key's first event: one bucket per ring, each counting `delta`.
            [] if containing(numbers[0]) == numbers => {
                self.buckets = Box::new([Bucket::new(ALL_RINGS, numbers[0], delta)]);
                return;
            }
            _ => {}
        }
        if self.add_within_left_out_day(numbers, delta) {
            return;
        }
        let mut buckets = SCRATCH.take();
        buckets.clear();
        self.for_each_explicit(|b| buckets.push(*b));
        add_to(&mut buckets, numbers, delta);
        make_canonical(&mut buckets);
        if self.buckets.len() == buckets.len() {
            self.buckets.copy_from_slice(&buckets);
        } else {
            self.buckets = Box::from(&buckets[..]);
        }
        SCRATCH.set(buckets);
    }

    /// [`Rolling::add`] in place when the day bucket is left out and stays so: the event
    /// counts in a 10-minute and an hour bucket already held, in the day the hours add up
    /// to, and the hours with it add up to that day plus `delta` bit for bit. Returns
    /// whether it added.
    fn add_within_left_out_day(&mut self, numbers: [i64; 3], delta: Counts) -> bool {
        // With one 10-minute and one hour bucket, the sums could come to make the one
        // bucket for all rings: left to the general path.
        if !self.day_left_out() || self.buckets.len() < 3 {
            return false;
        }
        // A held bucket of the event, within its ring's reach of the ring's newest (the
        // general path skips an event older than that; only a checkpoint can hold one).
        let held = |ring: usize| {
            let newest = self.buckets.iter().rfind(|b| b.ring() == ring)?.number();
            let at = self
                .buckets
                .iter()
                .position(|b| b.ring() == ring && b.number() == numbers[ring])?;
            (newest.saturating_sub(numbers[ring]) < RINGS[ring].1).then_some(at)
        };
        let (Some(ten), Some(hour)) = (held(0), held(1)) else {
            return false;
        };
        let Some(day) = derived_day(&self.buckets).filter(|d| d.number() == numbers[2]) else {
            return false;
        };
        let mut expected = day.counts;
        expected.add(delta);
        let after = derived_day_adding(&self.buckets, Some((hour, delta)));
        if !after.is_some_and(|d| d.counts.same_bits(&expected)) {
            return false;
        }
        self.buckets[ten].counts.add(delta);
        self.buckets[hour].counts.add(delta);
        true
    }

    /// The one bucket held, if it stands for one of each ring ([`ALL_RINGS`]).
    fn all_rings_bucket(&self) -> Option<&Bucket> {
        match &*self.buckets {
            [one] if one.ring() == ALL_RINGS => Some(one),
            _ => None,
        }
    }

    /// Whether the stored form leaves the day bucket out (see [`canonical`]).
    fn day_left_out(&self) -> bool {
        self.buckets.last().is_some_and(|b| b.ring() == 1)
    }

    /// Calls `f` with each bucket held, sorted by (ring, number): an [`ALL_RINGS`]
    /// bucket as the three it stands for, a left-out day bucket after the hour buckets.
    fn for_each_explicit(&self, mut f: impl FnMut(&Bucket)) {
        if let Some(one) = self.all_rings_bucket() {
            one.stands_for().iter().for_each(f);
            return;
        }
        self.buckets.iter().for_each(&mut f);
        if self.day_left_out()
            && let Some(day) = derived_day(&self.buckets)
        {
            f(&day);
        }
    }

    /// The buckets of [`Rolling::for_each_explicit`] in a vector.
    fn explicit_vec(&self) -> Vec<Bucket> {
        let count = match self.all_rings_bucket() {
            Some(_) => RINGS.len(),
            None => self.buckets.len() + usize::from(self.day_left_out()),
        };
        let mut explicit = Vec::with_capacity(count);
        self.for_each_explicit(|b| explicit.push(*b));
        explicit
    }

    /// Calls `f` with the buckets of [`Rolling::for_each_explicit`] in a slice (a copy
    /// when the stored form leaves the day bucket out).
    fn with_explicit<R>(&self, f: impl FnOnce(&[Bucket]) -> R) -> R {
        match self.all_rings_bucket() {
            Some(one) => f(&one.stands_for()),
            None if self.day_left_out() => f(&self.explicit_vec()),
            None => f(&self.buckets),
        }
    }

    /// Totals over each horizon as of `ts`.
    pub fn totals(&self, ts: Millis) -> Horizons {
        // Each ring's reach as of `ts`: one division per ring (with the constant widths
        // unrolled), not one per bucket.
        let reach = per_ring(|(width, length)| {
            let number = bucket_number(ts, width);
            (number.saturating_sub(length), number)
        });
        let mut horizons = Horizons::default();
        self.for_each_explicit(|b| {
            let (after, upto) = reach[b.ring()];
            if b.number() <= upto && b.number() > after {
                horizons[b.ring()].add(&b.counts);
            }
        });
        horizons
    }

    /// Totals as of `ts` and the times `[from, until)` around `ts` over which they are
    /// the same: no bucket enters or leaves its ring's reach in between. A bucket numbered
    /// `n` of a ring of `width` and `length` counts for `n * width <= t < (n + length) *
    /// width`. Outside the times whose bucket numbers a [`Bucket`] holds exactly, the span
    /// is `ts` alone.
    pub fn totals_with_span(&self, ts: Millis) -> (Horizons, Millis, Millis) {
        let totals = self.totals(ts);
        // The shortest ring reaches the edge of NUMBERS first.
        let exact = NUMBERS.start() * TEN_MINUTES..(NUMBERS.end() + 1) * TEN_MINUTES;
        if !exact.contains(&ts) {
            return (totals, ts, ts.saturating_add(1));
        }
        let (mut from, mut until) = (exact.start, exact.end);
        self.for_each_explicit(|b| {
            let (width, length) = RINGS[b.ring()];
            for flip in [b.number() * width, (b.number() + length) * width] {
                if flip <= ts {
                    from = from.max(flip);
                } else {
                    until = until.min(flip);
                }
            }
        });
        (totals, from, until)
    }

    /// The latest time the newest event added may have had: the last millisecond of its
    /// bucket in each ring (a ring keeps its newest bucket, and every event counts in
    /// every ring), the earliest of the three; the 10-minute ring's unless a checkpoint
    /// held no bucket of it. `None` if no bucket is held.
    pub fn latest_possible(&self) -> Option<Millis> {
        let mut newest: [Option<i64>; 3] = [None; 3];
        // Sorted by (ring, number): a ring's newest is its last.
        self.for_each_explicit(|b| newest[b.ring()] = Some(b.number()));
        RINGS
            .iter()
            .zip(newest)
            .filter_map(|(&(width, _), number)| Some((number? + 1) * width - 1))
            .min()
    }

    /// Bytes on the heap (the buckets).
    pub fn heap_bytes(&self) -> usize {
        self.buckets.len() * std::mem::size_of::<Bucket>()
    }
}

/// [`Rolling::add`] on the buckets as a vector, of an event in the ring buckets `numbers`
/// ([`numbers_at`] its time).
fn add_to(buckets: &mut Vec<Bucket>, numbers: [i64; 3], delta: Counts) {
    // The rings lie one after the other: each starts where the one before ended.
    let mut from = 0;
    for (ring, (&(_, length), number)) in RINGS.iter().zip(numbers).enumerate() {
        let to = from + buckets[from..].partition_point(|b| b.ring() == ring);
        let len = buckets.len();
        match buckets[from..to].last().map(Bucket::number) {
            Some(newest) if newest.saturating_sub(number) >= length => {}
            Some(newest) if number > newest => {
                // The ring moves on: drop what leaves its reach.
                let reach_from = number.saturating_sub(length - 1);
                let kept = from + buckets[from..to].partition_point(|b| b.number() < reach_from);
                buckets.drain(from..kept);
                let at = to - (kept - from);
                buckets.insert(at, Bucket::new(ring, number, delta));
            }
            _ => {
                let at = from + buckets[from..to].partition_point(|b| b.number() < number);
                match buckets.get_mut(at) {
                    Some(b) if at < to && b.number() == number => b.counts.add(delta),
                    _ => buckets.insert(at, Bucket::new(ring, number, delta)),
                }
            }
        }
        // This ring's end after what was dropped and inserted.
        from = to + buckets.len() - len;
    }
}

/// Rolling counters queried again and again at times where they rarely change (an
/// item's sales, summed for every item at every window boundary): the last totals are
/// kept with the span of times they hold for, and a query inside it sums nothing.
///
/// Serialised as the bare [`Rolling`] (the kept totals are derived), and two of them are
/// equal when their counters are.
#[derive(Debug, Clone, Default)]
pub struct CachedRolling {
    rolling: Rolling,
    /// (from, until, totals): the totals as of any time in `[from, until)`.
    last: Option<(Millis, Millis, CompactHorizons)>,
}

impl CachedRolling {
    /// Adds `delta` at event time `ts` (see [`Rolling::add`]); forgets the kept totals.
    pub fn add(&mut self, ts: Millis, delta: Counts) {
        self.last = None;
        self.rolling.add(ts, delta);
    }

    /// Totals over each horizon as of `ts`, the same as [`Rolling::totals`].
    pub fn totals(&mut self, ts: Millis) -> Horizons {
        match self.last {
            Some((from, until, totals)) if from <= ts && ts < until => totals.horizons(),
            _ => {
                let (totals, from, until) = self.rolling.totals_with_span(ts);
                self.last = Some((from, until, CompactHorizons::of(&totals)));
                totals
            }
        }
    }

    /// The times `[from, until)` the kept totals hold for, if any are kept: after
    /// [`CachedRolling::totals`] of `ts`, a span around `ts` over which no bucket enters or
    /// leaves its ring's reach.
    pub fn span(&self) -> Option<(Millis, Millis)> {
        self.last.map(|(from, until, _)| (from, until))
    }

    /// Bytes on the heap (the buckets' capacity).
    pub fn heap_bytes(&self) -> usize {
        self.rolling.heap_bytes()
    }
}

impl PartialEq for CachedRolling {
    fn eq(&self, other: &Self) -> bool {
        self.rolling == other.rolling
    }
}

impl Serialize for CachedRolling {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.rolling.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for CachedRolling {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Rolling::deserialize(deserializer).map(|rolling| Self {
            rolling,
            last: None,
        })
    }
}

impl Bucket {
    /// A bucket counting `delta` (`number` within [`NUMBERS`]).
    fn new(ring: usize, number: i64, delta: Counts) -> Self {
        // Added to zero, as the dense rings added to a cleared slot (a spend of -0.0
        // becomes 0.0).
        let mut counts = Counts::default();
        counts.add(delta);
        Self {
            slot: Self::slot(ring, number),
            counts,
        }
    }

    /// The packed `number * 4 + ring` (`number` within [`NUMBERS`], `ring` below 4).
    fn slot(ring: usize, number: i64) -> i32 {
        debug_assert!(NUMBERS.contains(&number) && ring < 4);
        (number * 4 + ring as i64) as i32
    }

    /// Which ring (an index into [`RINGS`]), or [`ALL_RINGS`].
    fn ring(&self) -> usize {
        (self.slot & 3) as usize
    }

    /// An [`ALL_RINGS`] bucket of 10-minute bucket `number` with `counts`.
    fn all_rings(number: i64, counts: Counts) -> Self {
        Self {
            slot: Self::slot(ALL_RINGS, number),
            counts,
        }
    }

    /// The three buckets an [`ALL_RINGS`] bucket stands for, one per ring.
    fn stands_for(&self) -> [Bucket; 3] {
        let numbers = containing(self.number());
        std::array::from_fn(|ring| Self {
            slot: Self::slot(ring, numbers[ring]),
            counts: self.counts,
        })
    }

    /// Bucket number: event time divided by the ring's bucket width.
    fn number(&self) -> i64 {
        // An arithmetic shift: the floor of slot / 4, so negative numbers come back too.
        i64::from(self.slot >> 2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clicks(n: u16) -> Counts {
        Counts {
            clicks: n,
            ..Counts::default()
        }
    }

    /// `(ring, number, clicks)` as a checkpoint's buckets.
    fn fields(buckets: &[(u8, i64, u16)]) -> Vec<BucketFields> {
        buckets
            .iter()
            .map(|&(ring, number, n)| BucketFields {
                ring,
                number,
                counts: clicks(n),
            })
            .collect()
    }

    /// A [`Rolling`] read from a checkpoint that stored `buckets`, in that order.
    fn read_stored(buckets: Vec<BucketFields>) -> Result<Rolling, String> {
        #[derive(Serialize)]
        struct Stored {
            buckets: Vec<BucketFields>,
        }
        let bytes = rmp_serde::to_vec_named(&Stored { buckets }).expect("encode");
        rmp_serde::from_slice(&bytes).map_err(|e| e.to_string())
    }

    /// Whether buckets kept apart (explicit, sorted) end with the day ring's only bucket
    /// and the hour buckets add up to it bit for bit: the form that leaves it out.
    fn leaves_its_day_out(apart: &[Bucket]) -> bool {
        matches!(apart, [.., h, d] if h.ring() == 1 && d.ring() == 2
            && derived_day(apart).is_some_and(|x| x.slot == d.slot && x.counts.same_bits(&d.counts)))
    }

    #[test]
    fn horizons_forget_old_buckets() {
        let t0 = 1_767_571_200_000;
        let mut r = Rolling::default();
        r.add(t0, clicks(1));
        r.add(t0 + 30 * 60_000, clicks(2));
        let at = |dt: Millis| r.totals(t0 + dt).map(|t| t.clicks);
        assert_eq!(at(31 * 60_000), [3, 3, 3]);
        // 65 minutes later the first click's 10-minute bucket has left the 1 h ring.
        assert_eq!(at(65 * 60_000), [2, 3, 3]);
        // Both clicks fell in the first hour bucket, which the 24 h ring has left by now.
        assert_eq!(at(25 * HOUR), [0, 0, 3]);
        assert_eq!(at(8 * DAY), [0, 0, 0]);
    }

    /// The dense rings the sparse buckets replaced: 37 buckets per key, a slot cleared
    /// when its ring moves past it. The reference for the property test below.
    #[derive(Default)]
    struct DenseRings {
        newest: [Option<i64>; 3],
        slots: [Vec<Counts>; 3],
    }

    impl DenseRings {
        fn add(&mut self, ts: Millis, delta: Counts) {
            for (ring, &(width, n)) in RINGS.iter().enumerate() {
                let slots = &mut self.slots[ring];
                if slots.is_empty() {
                    *slots = vec![Counts::default(); n as usize];
                }
                let bucket = ts.div_euclid(width);
                match self.newest[ring] {
                    Some(newest) if newest - bucket >= n => continue,
                    Some(newest) if bucket > newest && bucket - newest < n => {
                        for b in (newest + 1)..=bucket {
                            slots[b.rem_euclid(n) as usize] = Counts::default();
                        }
                        self.newest[ring] = Some(bucket);
                    }
                    Some(newest) if bucket <= newest => {}
                    _ => {
                        slots.iter_mut().for_each(|c| *c = Counts::default());
                        self.newest[ring] = Some(bucket);
                    }
                }
                slots[bucket.rem_euclid(n) as usize].add(delta);
            }
        }

        fn totals(&self, ts: Millis) -> Horizons {
            let mut horizons = Horizons::default();
            for (ring, &(width, n)) in RINGS.iter().enumerate() {
                let Some(newest) = self.newest[ring] else {
                    continue;
                };
                let bucket = ts.div_euclid(width);
                for b in (bucket - n + 1).max(newest - n + 1)..=newest.min(bucket) {
                    horizons[ring].add(&self.slots[ring][b.rem_euclid(n) as usize]);
                }
            }
            horizons
        }
    }

    /// That `rolling` sums and spans at `t + probe` for each of `probes`, bit for bit,
    /// serialises to the bytes of `kept_apart` (the same buckets held explicitly), and
    /// reads back to the same stored buckets.
    fn same_as_kept_apart(
        rolling: &Rolling,
        kept_apart: &Rolling,
        t: Millis,
        probes: &[Millis],
    ) -> Result<(), proptest::test_runner::TestCaseError> {
        for probe in probes {
            let at = t + probe;
            let (a, b) = (
                rolling.totals_with_span(at),
                kept_apart.totals_with_span(at),
            );
            proptest::prop_assert_eq!(a, b);
            for (x, y) in a.0.iter().zip(&b.0) {
                proptest::prop_assert_eq!(x.spend.to_bits(), y.spend.to_bits());
            }
        }
        let bytes = rmp_serde::to_vec_named(rolling).expect("encode");
        proptest::prop_assert_eq!(
            &bytes,
            &rmp_serde::to_vec_named(kept_apart).expect("encode")
        );
        let back: Rolling = rmp_serde::from_slice(&bytes).expect("decode");
        proptest::prop_assert_eq!(&back.buckets, &rolling.buckets);
        proptest::prop_assert_eq!(&back, rolling);
        Ok(())
    }

    proptest::proptest! {
        /// Guards the sparse buckets: for any events (mostly in time order, some late),
        /// the totals at any later time are the dense rings' totals, bit for bit.
        #[test]
        fn sparse_buckets_sum_exactly_as_dense_rings(
            steps in proptest::collection::vec((-2 * HOUR..3 * DAY, 0u16..40_000, -5.0f32..500.0), 1..60),
            probes in proptest::collection::vec(0..10 * DAY, 1..8),
        ) {
            let t0 = 1_767_571_200_000;
            let (mut sparse, mut dense) = (Rolling::default(), DenseRings::default());
            let mut t = t0;
            for (step, n, spend) in steps {
                // Mostly forward in time; a negative step is a late event.
                t = (t + step).max(t0);
                let delta = Counts { impressions: n, clicks: n / 2, carts: 1, units: n % 7, spend };
                sparse.add(t, delta);
                dense.add(t, delta);
                for probe in &probes {
                    let at = t + probe;
                    let (a, b) = (sparse.totals(at), dense.totals(at));
                    proptest::prop_assert_eq!(a, b);
                    for (x, y) in a.iter().zip(&b) {
                        proptest::prop_assert_eq!(x.spend.to_bits(), y.spend.to_bits());
                    }
                }
            }
            proptest::prop_assert!(sparse.buckets.len() <= 37);
        }

        /// Guards the one bucket that stands for all three rings: for any events, many
        /// within one 10-minute bucket and with repeated counts, a key holds it exactly
        /// when its buckets are one per ring with the same counts; it sums, spans and
        /// serialises as those buckets kept apart would, and reads back equal.
        #[test]
        fn one_bucket_for_all_rings_is_the_three_buckets_it_stands_for(
            steps in proptest::collection::vec((-4 * TEN_MINUTES..3 * TEN_MINUTES, 0u16..3, 0usize..3), 1..40),
            start in -3 * DAY..3 * DAY,
            probes in proptest::collection::vec(-HOUR..9 * DAY, 1..6),
        ) {
            let t0 = 1_767_571_200_000 + start;
            let (mut rolling, mut apart) = (Rolling::default(), Vec::new());
            let mut t = t0;
            for (step, n, spend) in steps {
                t += step;
                let delta = Counts { impressions: n, clicks: n / 2, spend: [0.0, 1.5, -0.0][spend], ..Counts::default() };
                rolling.add(t, delta);
                add_to(&mut apart, numbers_at(t), delta);
                let kept_apart = Rolling { buckets: apart.clone().into_boxed_slice() };
                let shared = matches!(&apart[..], [a, b, c]
                    if containing(a.number()) == [a.number(), b.number(), c.number()]
                        && a.counts.same_bits(&b.counts) && a.counts.same_bits(&c.counts));
                proptest::prop_assert_eq!(rolling.all_rings_bucket().is_some(), shared);
                let day_left_out = leaves_its_day_out(&apart);
                proptest::prop_assert_eq!(
                    rolling.buckets.len(),
                    if shared { 1 } else { apart.len() - usize::from(day_left_out) }
                );
                same_as_kept_apart(&rolling, &kept_apart, t, &probes)?;
            }
        }

        /// Guards the left-out day bucket: for events over hours and days, late ones too,
        /// with spends whose sums round differently in another order, a key leaves its day
        /// bucket out exactly when it is the day ring's only one and the hour buckets add
        /// up to it bit for bit; it sums, spans, serialises and reads back as the buckets
        /// kept apart.
        #[test]
        fn a_left_out_day_bucket_is_the_one_the_hour_buckets_add_up_to(
            steps in proptest::collection::vec((-3 * HOUR..5 * HOUR, 0u16..3, 0usize..5), 1..60),
            start in -DAY..DAY,
            probes in proptest::collection::vec(-HOUR..9 * DAY, 1..6),
        ) {
            let t0 = 1_767_571_200_000 + start;
            let (mut rolling, mut apart) = (Rolling::default(), Vec::new());
            let mut t = t0;
            for (step, n, spend) in steps {
                // Half the steps stay within minutes: events in buckets already held.
                t += if n == 0 { step } else { step / 60 };
                let spend = [0.0, 0.1, -0.0, 1e7, 0.3][spend];
                let delta = Counts { impressions: n, carts: n % 2, spend, ..Counts::default() };
                rolling.add(t, delta);
                add_to(&mut apart, numbers_at(t), delta);
                let kept_apart = Rolling { buckets: apart.clone().into_boxed_slice() };
                if rolling.all_rings_bucket().is_none() {
                    proptest::prop_assert_eq!(rolling.day_left_out(), leaves_its_day_out(&apart));
                    let held = apart.len() - usize::from(rolling.day_left_out());
                    proptest::prop_assert_eq!(rolling.buckets.len(), held);
                }
                proptest::prop_assert_eq!(rolling.explicit_vec(), apart.clone());
                proptest::prop_assert_eq!(rolling.latest_possible(), kept_apart.latest_possible());
                same_as_kept_apart(&rolling, &kept_apart, t, &probes)?;
            }
        }

        /// Guards the kept totals of [`CachedRolling`]: queried at times that go back and
        /// forth, across and inside the spans, between events and after them, it answers
        /// what a fresh sum answers, bit for bit; and every time inside a reported span
        /// sums the same.
        #[test]
        fn cached_totals_are_fresh_sums_at_any_time(
            steps in proptest::collection::vec((0..6 * HOUR, 1u16..9, 0.0f32..50.0), 1..30),
            probes in proptest::collection::vec(-HOUR..9 * DAY, 1..12),
        ) {
            let t0 = 1_767_571_200_000;
            let mut cached = CachedRolling::default();
            let mut t = t0;
            for (step, units, spend) in steps {
                t += step;
                cached.add(t, Counts { units, spend, ..Counts::default() });
                for probe in &probes {
                    let at = t + probe;
                    let fresh = cached.rolling.totals(at);
                    let kept = cached.totals(at);
                    proptest::prop_assert_eq!(kept, fresh);
                    for (x, y) in kept.iter().zip(&fresh) {
                        proptest::prop_assert_eq!(x.spend.to_bits(), y.spend.to_bits());
                    }
                    let (_, from, until) = cached.rolling.totals_with_span(at);
                    proptest::prop_assert!(from <= at && at < until);
                    for inside in [from, until.saturating_sub(1), from / 2 + until / 2] {
                        if from <= inside && inside < until {
                            proptest::prop_assert_eq!(cached.rolling.totals(inside), fresh);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn cached_rolling_serialises_as_its_counters_and_compares_by_them() {
        let mut a = CachedRolling::default();
        a.add(1_767_571_200_000, clicks(2));
        let b = a.clone();
        a.totals(1_767_571_200_000 + HOUR);
        assert_eq!(a, b, "kept totals are not state");
        let bytes = rmp_serde::to_vec(&a).expect("serialise");
        assert_eq!(bytes, rmp_serde::to_vec(&a.rolling).expect("serialise"));
        let back: CachedRolling = rmp_serde::from_slice(&bytes).expect("deserialise");
        assert_eq!(back, a);
    }

    /// Guards the packed bucket: 16 bytes, and serialised in the shape checkpoints wrote
    /// before it was packed (`{ ring, number, counts }`), negative numbers included.
    #[test]
    fn packed_buckets_take_16_bytes_and_serialise_as_before() {
        assert_eq!(std::mem::size_of::<Bucket>(), 16);
        let mut r = Rolling::default();
        for ts in [-5 * DAY - 1, 1_767_571_200_000] {
            r = Rolling::default();
            r.add(ts, clicks(3));
            let fields: Vec<BucketFields> = RINGS
                .iter()
                .enumerate()
                .map(|(ring, &(width, _))| BucketFields {
                    ring: ring as u8,
                    number: ts.div_euclid(width),
                    counts: clicks(3),
                })
                .collect();
            #[derive(Serialize)]
            struct Before {
                buckets: Vec<BucketFields>,
            }
            let before = rmp_serde::to_vec_named(&Before { buckets: fields }).expect("encode");
            assert_eq!(rmp_serde::to_vec_named(&r).expect("encode"), before);
            let back: Rolling = rmp_serde::from_slice(&before).expect("decode");
            assert_eq!(back, r);
        }
        assert_eq!(r.totals(1_767_571_200_000)[2].clicks, 3);
    }

    /// Guards the edge of what a bucket holds: times beyond +-10,000 years count in their
    /// ring's edge bucket instead of wrapping, and have a span of one millisecond.
    #[test]
    fn times_beyond_the_bucket_range_clamp_instead_of_wrapping() {
        for ts in [
            Millis::MAX,
            Millis::MIN,
            400_000_000_000_000,
            -400_000_000_000_000,
        ] {
            let mut r = Rolling::default();
            r.add(ts, clicks(1));
            r.add(ts, clicks(1));
            assert_eq!(r.totals(ts).map(|t| t.clicks), [2, 2, 2], "at {ts}");
            let (totals, from, until) = r.totals_with_span(ts);
            assert_eq!(totals, r.totals(ts));
            assert_eq!((from, until), (ts, ts.saturating_add(1)));
        }
    }

    /// Guards the tag of the one bucket for all rings: a checkpoint naming a ring beyond
    /// the three is refused, not read as that bucket.
    #[test]
    fn a_bucket_of_an_unknown_ring_is_refused_on_read() {
        let bucket = |ring| BucketFields {
            ring,
            number: 2_942_000,
            counts: clicks(1),
        };
        let back = read_stored(vec![bucket(0)]).expect("ring 0 reads");
        assert_eq!(back.totals(2_942_000 * TEN_MINUTES)[0].clicks, 1);
        for ring in [3, 4, 255] {
            let error = read_stored(vec![bucket(ring)]).expect_err("refused");
            assert!(error.contains(&format!("ring {ring}")), "{error}");
        }
    }

    /// Guards equality across the two forms: three buckets that differ from one bucket
    /// for all rings only in the sign of a zero spend (which only a checkpoint can hold:
    /// counting adds to a positive zero) stay apart, and compare equal to it as before.
    #[test]
    fn three_buckets_apart_equal_the_one_bucket_they_match_but_for_the_sign_of_zero() {
        let read = |spends: [f32; 3]| -> Rolling {
            let buckets = (0..3)
                .map(|ring| BucketFields {
                    ring: ring as u8,
                    number: containing(2_942_000)[ring],
                    counts: Counts {
                        spend: spends[ring],
                        ..clicks(1)
                    },
                })
                .collect();
            read_stored(buckets).expect("decode")
        };
        let (one, apart) = (read([0.0; 3]), read([0.0, -0.0, 0.0]));
        // Apart: the 10-minute and hour buckets, and the day bucket left out (the hour's
        // -0.0 added to zero is the day's 0.0).
        assert_eq!((one.buckets.len(), apart.buckets.len()), (1, 2));
        assert!(apart.all_rings_bucket().is_none());
        assert_eq!(one, apart);
        assert_ne!(one, read([0.0, 1.0, 0.0]));
    }

    /// Guards what a checkpoint may hold around the left-out day bucket: hour buckets
    /// without a day bucket are refused (the stored form would read them as adding up to
    /// one), and a day bucket that hours of two days add up to is kept.
    #[test]
    fn a_checkpoints_day_bucket_is_left_out_only_when_the_hours_of_its_day_add_up_to_it() {
        let read = |buckets: &[(u8, i64, u16)]| read_stored(fields(buckets));
        let day = 20_458; // 2026-01-05
        let hour = day * 24;
        let err = read(&[(1, hour, 1)]).expect_err("hours without a day");
        assert!(err.contains("without one of the day ring"), "{err}");
        let one_day = read(&[(1, hour, 1), (1, hour + 5, 2), (2, day, 3)]).expect("read");
        assert_eq!(one_day.buckets.len(), 2);
        let two_days = read(&[(1, hour, 1), (1, hour + 24, 2), (2, day, 3)]).expect("read");
        assert_eq!(two_days.buckets.len(), 3);
    }

    /// Guards checkpoints that the job does not write: buckets out of order are read as
    /// sorted (not as a left-out day bucket on top of the stored one), two buckets of one
    /// ring and number are refused, and an event older than its ring's reach of a bucket
    /// that a checkpoint held is skipped in that ring, as the buckets kept apart skip it.
    #[test]
    fn a_checkpoints_buckets_are_read_sorted_and_added_to_as_kept_apart() {
        let read = |buckets: &[(u8, i64, u16)]| read_stored(fields(buckets));
        let day = 20_458; // 2026-01-05
        let (hour, ten) = (day * 24, day * 144);
        let unsorted = read(&[(0, ten, 1), (2, day, 5), (1, hour, 1)]).expect("read");
        let at = ten * TEN_MINUTES + 1;
        assert_eq!(unsorted.totals(at).map(|t| t.clicks), [1, 1, 5]);
        assert_eq!(unsorted.explicit_vec().len(), 3);
        let err = read(&[(1, hour, 1), (1, hour, 2), (2, day, 3)]).expect_err("twice");
        assert!(err.contains("two rolling buckets of ring 1"), "{err}");
        // Ten-minute buckets 10 apart (the ring reaches 6), hours adding up to the day.
        let held = [
            (0, ten, 1),
            (0, ten + 10, 1),
            (1, hour, 1),
            (1, hour + 1, 1),
            (2, day, 2),
        ];
        let mut rolling = read(&held).expect("read");
        assert!(rolling.day_left_out());
        let mut apart: Vec<Bucket> = fields(&held).into_iter().map(Bucket::from).collect();
        let ts = ten * TEN_MINUTES + 1;
        rolling.add(ts, clicks(1));
        add_to(&mut apart, numbers_at(ts), clicks(1));
        assert_eq!(rolling.explicit_vec(), apart);
    }

    #[test]
    fn a_key_seen_in_one_ten_minute_bucket_holds_one_bucket() {
        let t0 = 1_767_571_200_000;
        let mut r = Rolling::default();
        r.add(t0, clicks(1));
        r.add(t0 + 60_000, clicks(2));
        assert_eq!((r.buckets.len(), r.heap_bytes()), (1, 16));
        assert_eq!(r.totals(t0 + 2 * 60_000).map(|t| t.clicks), [3, 3, 3]);
        // The next 10 minutes: the 10-minute ring holds two buckets, the others one, and
        // the day's is left out (the hour's counts are its counts).
        r.add(t0 + 10 * 60_000, clicks(4));
        assert_eq!(r.buckets.len(), 3);
        assert_eq!(r.explicit_vec().len(), 4);
        assert_eq!(r.totals(t0 + 11 * 60_000).map(|t| t.clicks), [7, 7, 7]);
        assert_eq!(r.totals(t0 + 61 * 60_000).map(|t| t.clicks), [4, 7, 7]);
    }

    /// Guards the one bucket for all rings at the edge of the bucket numbers: a later
    /// event in the same (edge) 10-minute bucket but another hour is not added to it.
    #[test]
    fn an_event_in_the_edge_ten_minute_bucket_but_another_hour_keeps_the_rings_apart() {
        let edge = *NUMBERS.end() * TEN_MINUTES;
        let (mut r, mut apart) = (Rolling::default(), Vec::new());
        for ts in [edge, edge + 100 * DAY] {
            r.add(ts, clicks(1));
            add_to(&mut apart, numbers_at(ts), clicks(1));
        }
        let kept_apart = Rolling {
            buckets: apart.into_boxed_slice(),
        };
        assert!(r.all_rings_bucket().is_none());
        for at in [edge, edge + 100 * DAY, edge + 101 * DAY] {
            assert_eq!(r.totals(at), kept_apart.totals(at), "at {at}");
        }
    }

    #[test]
    fn counters_saturate_instead_of_wrapping() {
        let mut r = Rolling::default();
        for _ in 0..3 {
            r.add(0, clicks(30_000));
        }
        assert_eq!(r.totals(0)[0].clicks, 65_535);
    }
}
