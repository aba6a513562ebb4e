//! Feature rows and their Arrow form. The schema (version 2) is documented column by
//! column in `docs/feature-schema.md`; [`examples_batch`] is its single definition.

use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Float64Array, Int32Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};
use shopstream_ingest::event::{Millis, Scenario, Text};

use crate::arrow_time::{utc_micros, utc_micros_type};
use crate::category::Category;
use crate::rolling::{HORIZONS, Horizons, Totals};

/// Version of the examples schema, written into the store's file metadata.
pub const EXAMPLES_SCHEMA_VERSION: &str = "2";

/// The file metadata key of [`EXAMPLES_SCHEMA_VERSION`].
pub const SCHEMA_VERSION_KEY: &str = "shopstream.schema_version";

/// Key-value metadata of an examples file of the window `[start_ms, end_ms)`: the schema
/// version and the window's bounds.
pub fn examples_metadata(start_ms: i64, end_ms: i64) -> std::collections::BTreeMap<String, String> {
    std::collections::BTreeMap::from([
        (
            SCHEMA_VERSION_KEY.to_string(),
            EXAMPLES_SCHEMA_VERSION.to_string(),
        ),
        (
            "shopstream.window_start_ms".to_string(),
            start_ms.to_string(),
        ),
        ("shopstream.window_end_ms".to_string(), end_ms.to_string()),
    ])
}

/// Features of one impression, computed from events strictly before its time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Features {
    /// Where the item was shown.
    pub scenario: Scenario,
    /// Device class of the session.
    pub device: Option<Text>,
    /// Slot in the list, 0 = top.
    pub position: Option<u32>,
    /// Price shown with the impression.
    pub price: Option<f64>,
    /// Hour of day (UTC) of the impression, 0..=23.
    pub hour_of_day: u8,
    /// Day of week (UTC), 0 = Monday.
    pub day_of_week: u8,
    /// The user's rolling totals over 1 h, 24 h, 7 d.
    pub user: Horizons,
    /// Seconds since the user's previous event, if any.
    pub user_recency_secs: Option<f64>,
    /// Share of the user's (decayed) clicks that went to this item's category.
    pub user_category_affinity: f64,
    /// Share of the user's (decayed) impressions that showed this item's category: what
    /// the shop chose to show the user, which knows the user's tastes before any click.
    pub user_category_exposure: f64,
    /// The item's rolling totals over 1 h, 24 h, 7 d (within the input partition).
    pub item: Horizons,
    /// The item's category as of the impression (inventory as-of join): the inventory's
    /// shared copy of the name, so an example costs no allocation for it.
    pub item_category: Option<Category>,
    /// The item's list price as of the impression (inventory as-of join).
    pub item_price: Option<f64>,
    /// Units on hand as of the impression (inventory as-of join).
    pub item_on_hand: Option<i64>,
}

impl Features {
    /// Smoothed click-through rate of the user over 7 days.
    pub fn user_ctr_7d(&self) -> f64 {
        smoothed(self.user[2].clicks, self.user[2].impressions)
    }

    /// Smoothed click-through rate of the item over 24 hours.
    pub fn item_ctr_24h(&self) -> f64 {
        smoothed(self.item[1].clicks, self.item[1].impressions)
    }

    /// Smoothed conversion rate (units per click) of the item over 7 days.
    pub fn item_cvr_7d(&self) -> f64 {
        smoothed(self.item[2].units, self.item[2].clicks)
    }

    /// Days until the item runs out at its 7-day sales rate (capped at 365).
    pub fn item_days_of_cover(&self) -> Option<f64> {
        let on_hand = self.item_on_hand? as f64;
        let per_day = self.item[2].units as f64 / 7.0;
        Some(if per_day > 0.0 {
            (on_hand / per_day).min(365.0)
        } else {
            365.0
        })
    }
}

/// (events + 1) / (trials + 20): a rate that starts near the base rate and moves with
/// evidence, so keys with little history do not get extreme values.
fn smoothed(events: i64, trials: i64) -> f64 {
    (events as f64 + 1.0) / (trials as f64 + 20.0)
}

/// An impression to predict for, on arrival.
#[derive(Debug, Clone, PartialEq)]
pub struct ServingRow {
    /// The impression's event id (the prediction's key).
    pub event_id: Text,
    /// Event time.
    pub ts: Millis,
    /// The user.
    pub user_id: Text,
    /// The item.
    pub item_id: Text,
    /// Its features from the state the job has when it arrives.
    pub features: Features,
}

/// Labels of an impression, final once it matured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Labels {
    /// A click by the same user on the same item in the same session followed within the
    /// click window.
    pub clicked: bool,
    /// An order line for the item was attributed to that click (last touch, within the
    /// attribution window).
    pub converted: bool,
    /// That order was cancelled before the label matured.
    pub cancelled: bool,
    /// Units of the attributed order lines.
    pub quantity: i64,
    /// Revenue of the attributed order lines (quantity x unit price).
    pub revenue: f64,
}

/// A training example: an impression's features plus its matured labels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Example {
    /// The impression's event id.
    pub event_id: Text,
    /// Event time.
    pub ts: Millis,
    /// The user.
    pub user_id: Text,
    /// The item.
    pub item_id: Text,
    /// Point-in-time features.
    pub features: Features,
    /// Matured labels.
    pub labels: Labels,
}

/// The Arrow schema of training examples.
pub fn examples_schema() -> SchemaRef {
    examples_batch(&[]).map_or_else(|_| Arc::new(Schema::empty()), |b| b.schema())
}

type Column = (Field, ArrayRef);

/// Reads one counter of a horizon's totals.
type Counter = fn(&Totals) -> i64;

fn utf8(
    name: &str,
    nullable: bool,
    rows: &[Example],
    get: impl Fn(&Example) -> Option<&str>,
) -> Column {
    let field = Field::new(name, DataType::Utf8, nullable);
    (
        field,
        Arc::new(StringArray::from_iter(rows.iter().map(get))),
    )
}

fn i64_col(name: &str, nullable: bool, values: impl Iterator<Item = Option<i64>>) -> Column {
    (
        Field::new(name, DataType::Int64, nullable),
        Arc::new(Int64Array::from_iter(values)),
    )
}

fn f64_col(name: &str, nullable: bool, values: impl Iterator<Item = Option<f64>>) -> Column {
    (
        Field::new(name, DataType::Float64, nullable),
        Arc::new(Float64Array::from_iter(values)),
    )
}

fn i32_col(name: &str, nullable: bool, values: impl Iterator<Item = Option<i32>>) -> Column {
    (
        Field::new(name, DataType::Int32, nullable),
        Arc::new(Int32Array::from_iter(values)),
    )
}

fn bool_col(name: &str, nullable: bool, values: impl Iterator<Item = Option<bool>>) -> Column {
    (
        Field::new(name, DataType::Boolean, nullable),
        Arc::new(BooleanArray::from_iter(values)),
    )
}

/// The five rolling columns of `prefix` (user or item) for each horizon.
fn rolling_cols(prefix: &str, rows: &[Example], get: fn(&Features) -> &Horizons) -> Vec<Column> {
    let mut cols = Vec::new();
    let counters: [(&str, Counter); 4] = [
        ("impressions", |t| t.impressions),
        ("clicks", |t| t.clicks),
        ("carts", |t| t.carts),
        ("units", |t| t.units),
    ];
    for (h, horizon) in HORIZONS.iter().enumerate() {
        for (name, counter) in counters {
            let values = rows.iter().map(|r| Some(counter(&get(&r.features)[h])));
            cols.push(i64_col(
                &format!("{prefix}_{name}_{horizon}"),
                false,
                values,
            ));
        }
        let spend = rows.iter().map(|r| Some(get(&r.features)[h].spend));
        cols.push(f64_col(&format!("{prefix}_spend_{horizon}"), false, spend));
    }
    cols
}

fn f(r: &Example) -> &Features {
    &r.features
}

/// Builds a record batch of `rows`; the column list here *is* the schema.
pub fn examples_batch(rows: &[Example]) -> Result<RecordBatch, ArrowError> {
    let mut cols: Vec<Column> = vec![
        utf8("event_id", false, rows, |r| Some(r.event_id.as_str())),
        (
            Field::new("ts", utc_micros_type(), false),
            utc_micros(rows.iter().map(|r| r.ts)),
        ),
        utf8("user_id", false, rows, |r| Some(r.user_id.as_str())),
        utf8("item_id", false, rows, |r| Some(r.item_id.as_str())),
        utf8("scenario", false, rows, |r| {
            Some(r.features.scenario.as_str())
        }),
        utf8("device", true, rows, |r| r.features.device.as_deref()),
        i32_col(
            "position",
            true,
            rows.iter()
                .map(|r| f(r).position.map(|p| i32::try_from(p).unwrap_or(i32::MAX))),
        ),
        f64_col("price", true, rows.iter().map(|r| f(r).price)),
        i32_col(
            "hour_of_day",
            false,
            rows.iter().map(|r| Some(i32::from(f(r).hour_of_day))),
        ),
        i32_col(
            "day_of_week",
            false,
            rows.iter().map(|r| Some(i32::from(f(r).day_of_week))),
        ),
    ];
    cols.extend(rolling_cols("user", rows, |f| &f.user));
    cols.push(f64_col(
        "user_ctr_7d",
        false,
        rows.iter().map(|r| Some(f(r).user_ctr_7d())),
    ));
    cols.push(f64_col(
        "user_recency_secs",
        true,
        rows.iter().map(|r| f(r).user_recency_secs),
    ));
    cols.push(f64_col(
        "user_category_affinity",
        false,
        rows.iter().map(|r| Some(f(r).user_category_affinity)),
    ));
    cols.push(f64_col(
        "user_category_exposure",
        false,
        rows.iter().map(|r| Some(f(r).user_category_exposure)),
    ));
    cols.extend(rolling_cols("item", rows, |f| &f.item));
    cols.push(f64_col(
        "item_ctr_24h",
        false,
        rows.iter().map(|r| Some(f(r).item_ctr_24h())),
    ));
    cols.push(f64_col(
        "item_cvr_7d",
        false,
        rows.iter().map(|r| Some(f(r).item_cvr_7d())),
    ));
    cols.push(utf8("item_category", true, rows, |r| {
        r.features.item_category.as_deref()
    }));
    cols.push(f64_col(
        "item_price",
        true,
        rows.iter().map(|r| f(r).item_price),
    ));
    cols.push(i64_col(
        "item_on_hand",
        true,
        rows.iter().map(|r| f(r).item_on_hand),
    ));
    cols.push(bool_col(
        "item_in_stock",
        true,
        rows.iter().map(|r| f(r).item_on_hand.map(|h| h > 0)),
    ));
    cols.push(f64_col(
        "item_days_of_cover",
        true,
        rows.iter().map(|r| f(r).item_days_of_cover()),
    ));
    cols.push(bool_col(
        "clicked",
        false,
        rows.iter().map(|r| Some(r.labels.clicked)),
    ));
    cols.push(bool_col(
        "converted",
        false,
        rows.iter().map(|r| Some(r.labels.converted)),
    ));
    cols.push(bool_col(
        "cancelled",
        false,
        rows.iter().map(|r| Some(r.labels.cancelled)),
    ));
    cols.push(i64_col(
        "quantity",
        false,
        rows.iter().map(|r| Some(r.labels.quantity)),
    ));
    cols.push(f64_col(
        "revenue",
        false,
        rows.iter().map(|r| Some(r.labels.revenue)),
    ));
    let (fields, arrays): (Vec<Field>, Vec<ArrayRef>) = cols.into_iter().unzip();
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
}
