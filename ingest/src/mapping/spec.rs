//! The mapping file's schema (TOML): what a user writes. Validation that needs more than
//! the types is in [`super::validate`].

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::event::{ClickKind, Scenario};

/// A mapping from an external event log to topic contract v1 events.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingSpec {
    /// How the input is read.
    pub source: SourceSpec,
    /// Where each contract field comes from.
    pub fields: FieldsSpec,
    /// Constants for what the log does not carry.
    #[serde(default)]
    pub defaults: DefaultsSpec,
    /// Each value of `fields.kind` and the events a row with it becomes, in order.
    pub events: BTreeMap<String, Vec<EmitSpec>>,
    /// Which rows make inventory snapshots.
    #[serde(default)]
    pub inventory: InventorySpec,
}

/// The input format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Comma- (or `delimiter`-) separated values, one record per line; fields may be
    /// double-quoted (`""` inside quotes is a quote).
    Csv,
    /// One JSON object per line.
    Jsonl,
}

/// How the input is read.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// `csv` or `jsonl`.
    pub format: Format,
    /// CSV: the first line names the columns.
    #[serde(default)]
    pub header: bool,
    /// CSV without a header: the column names, in order. A row with another number of
    /// fields is rejected.
    #[serde(default)]
    pub columns: Vec<String>,
    /// CSV: the field separator.
    #[serde(default = "default_delimiter")]
    pub delimiter: char,
    /// The rows are already in time order. When false the import sorts them by (time,
    /// line) on disk, in runs of `sort_run_rows`, so memory stays bounded.
    #[serde(default)]
    pub sorted: bool,
    /// Rows per sorted run when `sorted = false`.
    #[serde(default = "default_sort_run_rows")]
    pub sort_run_rows: usize,
    /// Prefix of every id the import makes: event ids `<prefix><line><suffix>`, order ids
    /// `<prefix>o<line>`, snapshot ids `<prefix>v<n>`, sessions `<prefix>-<user>-<day>`.
    #[serde(default)]
    pub id_prefix: String,
}

fn default_delimiter() -> char {
    ','
}

fn default_sort_run_rows() -> usize {
    1_000_000
}

/// Where each contract field comes from. `time`, `user_id` and `kind` are required.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldsSpec {
    /// Event time.
    pub time: FieldSpec,
    /// The user.
    pub user_id: FieldSpec,
    /// The value looked up in `[events]`.
    pub kind: FieldSpec,
    /// The event's own id, for dedupe (click ids get the suffix of their kind when a row
    /// becomes several click events); absent: ids derive from the line (imports) or the
    /// partition and offset (live topics).
    #[serde(default)]
    pub event_id: Option<FieldSpec>,
    /// The item (required by every event but `search`).
    #[serde(default)]
    pub item_id: Option<FieldSpec>,
    /// The item's category (inventory snapshots).
    #[serde(default)]
    pub category: Option<FieldSpec>,
    /// The item's price at the event (clicks, order lines, snapshots).
    #[serde(default)]
    pub price: Option<FieldSpec>,
    /// The session; absent: sessions are (user, UTC day).
    #[serde(default)]
    pub session_id: Option<FieldSpec>,
    /// The scenario (`home_feed`, `search`, `product_detail`, `cart`, `push`); absent:
    /// `defaults.scenario`.
    #[serde(default)]
    pub scenario: Option<FieldSpec>,
    /// The device.
    #[serde(default)]
    pub device: Option<FieldSpec>,
    /// The 0-based rank in a list.
    #[serde(default)]
    pub position: Option<FieldSpec>,
    /// Search text.
    #[serde(default)]
    pub query: Option<FieldSpec>,
    /// Units of an order line; absent: `defaults.quantity`.
    #[serde(default)]
    pub quantity: Option<FieldSpec>,
}

/// One field: a path (a CSV column, or a dotted path into a JSON object), or several tried
/// in order (the first present and non-empty wins), and a conversion.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum FieldSpec {
    /// Just a path; the value is taken as text.
    Path(String),
    /// Paths tried in order; the value is taken as text.
    Paths(Vec<String>),
    /// A path (or paths) with a conversion.
    Full(FullFieldSpec),
}

/// A field with its conversion.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FullFieldSpec {
    /// One path or a list tried in order.
    pub path: Paths,
    /// The conversion.
    #[serde(default, rename = "type")]
    pub kind: Conversion,
    /// For `type = "datetime"`: a chrono format such as `%Y-%m-%d %H:%M:%S UTC`; the
    /// time is read as UTC.
    #[serde(default)]
    pub format: Option<String>,
    /// Used when the field is absent or empty (as text, then converted).
    #[serde(default)]
    pub default: Option<String>,
}

/// One path or several.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Paths {
    /// One path.
    One(String),
    /// Tried in order.
    Many(Vec<String>),
}

/// How a field's text becomes a value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Conversion {
    /// The text as it is.
    #[default]
    String,
    /// Text made only of ASCII digits (numeric ids), kept as text.
    Digits,
    /// A number (JSON number or numeric text).
    Number,
    /// A whole number (JSON number or numeric text).
    Integer,
    /// Epoch seconds (whole or fractional) -> milliseconds.
    EpochS,
    /// Epoch milliseconds.
    EpochMs,
    /// Epoch microseconds -> milliseconds (truncated).
    EpochUs,
    /// Text in `format`, read as UTC.
    Datetime,
}

/// Constants for what the log does not carry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultsSpec {
    /// Scenario of click events.
    #[serde(default = "default_scenario")]
    pub scenario: Scenario,
    /// Currency of orders.
    #[serde(default = "default_currency")]
    pub currency: String,
    /// Units of an order line.
    #[serde(default = "default_quantity")]
    pub quantity: i64,
    /// Unit price of an order line when the row has no price.
    #[serde(default)]
    pub unit_price: f64,
}

impl Default for DefaultsSpec {
    fn default() -> Self {
        Self {
            scenario: default_scenario(),
            currency: default_currency(),
            quantity: default_quantity(),
            unit_price: 0.0,
        }
    }
}

fn default_scenario() -> Scenario {
    Scenario::ProductDetail
}

fn default_currency() -> String {
    "USD".to_string()
}

fn default_quantity() -> i64 {
    1
}

/// One event a row becomes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmitSpec {
    /// What to publish.
    pub emit: EmitKind,
    /// Milliseconds after the row's time (keeps an impression before its click).
    #[serde(default)]
    pub after_ms: i64,
    /// Overrides the row's scenario for this event.
    #[serde(default)]
    pub scenario: Option<Scenario>,
}

/// The contract event a row becomes: `order` (a placed one-line order of the row's item
/// at its price, on the orders topic) or a contract click type (`impression`, `click`,
/// `add_to_cart`, `remove_from_cart`, `favorite`, `search`) on the clicks topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmitKind {
    /// A placed one-line order.
    Order,
    /// A click event of this type.
    #[serde(untagged)]
    Click(ClickKind),
}

impl EmitKind {
    /// The spelling in mapping files.
    pub fn as_str(self) -> &'static str {
        match self {
            EmitKind::Order => "order",
            EmitKind::Click(kind) => click_names(kind).0,
        }
    }

    /// A search: the one click type without an item.
    pub fn is_search(self) -> bool {
        self == EmitKind::Click(ClickKind::Search)
    }
}

/// A click type's spelling and the suffix of the event ids a mapping derives for it
/// (`<prefix><line><suffix>`).
pub(crate) fn click_names(kind: ClickKind) -> (&'static str, &'static str) {
    match kind {
        ClickKind::Impression => ("impression", "i"),
        ClickKind::Click => ("click", "c"),
        ClickKind::AddToCart => ("add_to_cart", "a"),
        ClickKind::RemoveFromCart => ("remove_from_cart", "r"),
        ClickKind::Favorite => ("favorite", "f"),
        ClickKind::Search => ("search", "s"),
    }
}

/// Which rows make inventory snapshots.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InventorySpec {
    /// `none`; `before_first_row`: one snapshot per item (its category and price in its
    /// earliest row) 1 s before the earliest row, which needs a first pass over the input
    /// and a map of items; `on_change`: a snapshot 1 ms before a row whose item's category
    /// or price differs from the item's previous one, which keeps the last category and
    /// price per item.
    #[serde(default)]
    pub snapshots: SnapshotMode,
}

/// See [`InventorySpec::snapshots`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotMode {
    /// No inventory events.
    #[default]
    None,
    /// One per item before everything.
    BeforeFirstRow,
    /// When an item's category or price changes.
    OnChange,
}
