//! The latent ground truth behind generated traffic: users with category preferences and
//! activity levels, items with Zipf popularity, category, price and quality, and scenarios
//! with their own click and conversion levels. Click and conversion probabilities are
//! logistic functions of these, so the best achievable model is known.

use compact_str::format_compact;

use crate::event::{Scenario, Text};

use super::rng::{Rng, Weighted, sigmoid};

/// Device classes and their additive effect on the click logit.
pub const DEVICES: [(&str, f64); 3] = [("ios", 0.10), ("android", 0.0), ("web", -0.15)];

/// Per-scenario levels: (scenario, share of sessions, base click logit, base conversion logit).
pub const SCENARIOS: [(Scenario, f64, f64, f64); 5] = [
    (Scenario::HomeFeed, 0.40, -2.9, -2.2),
    (Scenario::Search, 0.25, -1.9, -1.6),
    (Scenario::ProductDetail, 0.20, -2.4, -2.0),
    (Scenario::Cart, 0.08, -2.6, -1.4),
    (Scenario::Push, 0.07, -3.4, -2.6),
];

/// Exponent of the Zipf law of item popularity.
const ZIPF_EXPONENT: f64 = 1.05;

/// Click-logit decrease per list position.
const POSITION_DECAY: f64 = 0.12;

/// A shopper.
#[derive(Debug, Clone)]
pub struct User {
    /// Wire id.
    pub id: Text,
    /// Preferred categories with their affinity (added to the click logit).
    pub prefs: [(usize, f64); 3],
    /// Index into [`DEVICES`].
    pub device: usize,
    /// Personal click propensity.
    pub bias: f64,
    /// How strongly price above the category median lowers conversion.
    pub price_sensitivity: f64,
}

impl User {
    /// Affinity of this user for `category` (0 when not preferred).
    pub fn affinity(&self, category: usize) -> f64 {
        self.prefs
            .iter()
            .find(|(c, _)| *c == category)
            .map_or(0.0, |(_, a)| *a)
    }
}

/// A product.
#[derive(Debug, Clone)]
pub struct Item {
    /// Wire id.
    pub id: Text,
    /// Category index.
    pub category: usize,
    /// List price before any drift.
    pub price: f64,
    /// Intrinsic appeal (added to click and conversion logits).
    pub quality: f64,
}

/// Sizes of the simulated shop.
#[derive(Debug, Clone, Copy)]
pub struct WorldSize {
    /// Number of regular users.
    pub users: usize,
    /// Number of items.
    pub items: usize,
    /// Number of categories.
    pub categories: usize,
}

/// The simulated shop.
#[derive(Debug, Clone)]
pub struct World {
    /// Regular users.
    pub users: Vec<User>,
    /// Who starts a session, by activity.
    pub user_activity: Weighted,
    /// The cohort that appears with the `new_cohort` drift.
    pub cohort: Vec<User>,
    /// All items.
    pub items: Vec<Item>,
    /// Global popularity (Zipf over a shuffled item order).
    pub popularity: Weighted,
    /// Items of each category with their popularity within it.
    pub by_category: Vec<(Vec<usize>, Weighted)>,
    /// Median list price per category, the reference for price sensitivity.
    pub median_price: Vec<f64>,
    /// Scenario mix of sessions.
    pub scenario_mix: Weighted,
    /// Category popularity, used for user preferences.
    pub category_popularity: Weighted,
}

impl World {
    /// Builds a world from `rng`; the same seed gives the same world.
    pub fn new(size: WorldSize, rng: &mut Rng) -> Self {
        let categories = size.categories.max(3);
        let category_popularity = Weighted::zipf(categories, 0.8);
        let category_price: Vec<f64> = (0..categories)
            .map(|_| (2.5 + rng.normal() * 0.8).exp())
            .collect();

        let items: Vec<Item> = (0..size.items.max(1))
            .map(|i| {
                let category = category_popularity.sample(rng);
                let price = (category_price[category] * (rng.normal() * 0.35).exp() * 100.0)
                    .round()
                    / 100.0;
                Item {
                    id: format_compact!("sku{i}"),
                    category,
                    price: price.max(0.5),
                    quality: rng.normal() * 0.5,
                }
            })
            .collect();
        // Popularity rank is independent of the item index.
        let mut order: Vec<usize> = (0..items.len()).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i + 1));
        }
        let mut popularity_weights = vec![0.0; items.len()];
        for (rank, &item) in order.iter().enumerate() {
            popularity_weights[item] = 1.0 / ((rank + 1) as f64).powf(ZIPF_EXPONENT);
        }
        let popularity = Weighted::new(popularity_weights.iter().copied());
        let by_category = (0..categories)
            .map(|c| {
                let members: Vec<usize> = (0..items.len())
                    .filter(|&i| items[i].category == c)
                    .collect();
                let weights = Weighted::new(members.iter().map(|&i| popularity_weights[i]));
                (members, weights)
            })
            .collect();
        let median_price = (0..categories)
            .map(|c| {
                let mut prices: Vec<f64> = items
                    .iter()
                    .filter(|i| i.category == c)
                    .map(|i| i.price)
                    .collect();
                prices.sort_by(f64::total_cmp);
                prices
                    .get(prices.len() / 2)
                    .copied()
                    .unwrap_or(category_price[c])
            })
            .collect();

        let users: Vec<User> = (0..size.users.max(1))
            .map(|u| {
                make_user(
                    format_compact!("u{u}"),
                    &category_popularity,
                    categories,
                    false,
                    rng,
                )
            })
            .collect();
        let user_activity = Weighted::new(users.iter().map(|_| (rng.normal() * 0.9).exp()));
        let cohort = (0..(size.users / 4).max(1))
            .map(|u| {
                make_user(
                    format_compact!("n{u}"),
                    &category_popularity,
                    categories,
                    true,
                    rng,
                )
            })
            .collect();
        let scenario_mix = Weighted::new(SCENARIOS.iter().map(|s| s.1));
        World {
            users,
            user_activity,
            cohort,
            items,
            popularity,
            by_category,
            median_price,
            scenario_mix,
            category_popularity,
        }
    }

    /// True probability that `user` clicks `item` shown at `position` in `scenario` on
    /// `device`, with `ctr_shift` added to the logit (drift).
    pub fn p_click(
        &self,
        user: &User,
        item: &Item,
        scenario: usize,
        position: u32,
        ctr_shift: f64,
    ) -> f64 {
        let logit = SCENARIOS[scenario].2
            + user.affinity(item.category)
            + item.quality
            + user.bias
            + DEVICES[user.device].1
            - POSITION_DECAY * f64::from(position)
            + ctr_shift;
        sigmoid(logit)
    }

    /// True probability that a click converts into an order, at the price shown.
    pub fn p_cvr(&self, user: &User, item: &Item, scenario: usize, price: f64) -> f64 {
        let relative_price = (price / self.median_price[item.category]).ln();
        let logit = SCENARIOS[scenario].3 + 0.7 * user.affinity(item.category) + 0.5 * item.quality
            - user.price_sensitivity * relative_price;
        sigmoid(logit)
    }
}

fn make_user(
    id: Text,
    popularity: &Weighted,
    categories: usize,
    cohort: bool,
    rng: &mut Rng,
) -> User {
    let mut prefs = [(0usize, 0.0f64); 3];
    let strengths = [1.5, 1.0, 0.6];
    for (slot, strength) in strengths.iter().enumerate() {
        let mut category = if cohort {
            // The new cohort prefers the long tail of categories.
            categories - 1 - popularity.sample(rng)
        } else {
            popularity.sample(rng)
        };
        while prefs[..slot].iter().any(|(c, _)| *c == category) {
            category = (category + 1) % categories;
        }
        prefs[slot] = (category, strength * (0.7 + 0.6 * rng.unit()));
    }
    let device = if cohort {
        if rng.chance(0.9) { 0 } else { 2 }
    } else {
        Weighted::new([0.35, 0.45, 0.20]).sample(rng)
    };
    User {
        id,
        prefs,
        device,
        bias: rng.normal() * 0.4 - if cohort { 0.4 } else { 0.0 },
        price_sensitivity: 0.5 + rng.unit() * 1.5,
    }
}
