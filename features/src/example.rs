//! Feature rows and their Arrow form (schema `v0`, documented in docs/feature-schema.md).

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int32Array, Int64Array, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use shopstream_ingest::event::{Millis, Scenario};

/// Version of the examples schema, written into the store's file metadata.
pub const EXAMPLES_SCHEMA_VERSION: &str = "0";

/// Features of one impression, computed from events strictly before its time.
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    /// Where the item was shown.
    pub scenario: Scenario,
    /// Device class of the session.
    pub device: Option<String>,
    /// Slot in the list, 0 = top.
    pub position: Option<u32>,
    /// Price shown.
    pub price: Option<f64>,
    /// The user's impressions before this one.
    pub user_impressions: i64,
    /// The user's clicks before this impression.
    pub user_clicks: i64,
    /// The item's impressions before this one.
    pub item_impressions: i64,
    /// The item's clicks before this impression.
    pub item_clicks: i64,
    /// Units on hand as of the impression (inventory as-of join), when known.
    pub item_on_hand: Option<i64>,
}

/// An impression to predict for, on arrival.
#[derive(Debug, Clone, PartialEq)]
pub struct ServingRow {
    /// The impression's event id (the prediction's key).
    pub event_id: String,
    /// Event time.
    pub ts: Millis,
    /// The user.
    pub user_id: String,
    /// The item.
    pub item_id: String,
    /// Its features from the state the job has when it arrives.
    pub features: Features,
}

/// A training example: an impression's features plus its matured labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// The impression's event id.
    pub event_id: String,
    /// Event time.
    pub ts: Millis,
    /// The user.
    pub user_id: String,
    /// The item.
    pub item_id: String,
    /// Point-in-time features.
    pub features: Features,
    /// Whether the same user clicked the same item in the same session within the click
    /// window.
    pub clicked: bool,
}

/// The Arrow schema of training examples.
pub fn examples_schema() -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("event_id", DataType::Utf8, false),
        Field::new("ts", ts, false),
        Field::new("user_id", DataType::Utf8, false),
        Field::new("item_id", DataType::Utf8, false),
        Field::new("scenario", DataType::Utf8, false),
        Field::new("device", DataType::Utf8, true),
        Field::new("position", DataType::Int32, true),
        Field::new("price", DataType::Float64, true),
        Field::new("user_impressions", DataType::Int64, false),
        Field::new("user_clicks", DataType::Int64, false),
        Field::new("item_impressions", DataType::Int64, false),
        Field::new("item_clicks", DataType::Int64, false),
        Field::new("item_on_hand", DataType::Int64, true),
        Field::new("clicked", DataType::Boolean, false),
    ]))
}

/// Builds a record batch of `rows` in the [`examples_schema`].
pub fn examples_batch(rows: &[Example]) -> Result<RecordBatch, ArrowError> {
    let f = |get: fn(&Features) -> i64| {
        Int64Array::from_iter_values(rows.iter().map(|r| get(&r.features)))
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.event_id.as_str()),
        )),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.ts * 1_000))
                .with_timezone("UTC"),
        ),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.user_id.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.item_id.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.features.scenario.as_str()),
        )),
        Arc::new(StringArray::from_iter(
            rows.iter().map(|r| r.features.device.as_deref()),
        )),
        Arc::new(Int32Array::from_iter(rows.iter().map(|r| {
            r.features
                .position
                .map(|p| i32::try_from(p).unwrap_or(i32::MAX))
        }))),
        Arc::new(Float64Array::from_iter(
            rows.iter().map(|r| r.features.price),
        )),
        Arc::new(f(|x| x.user_impressions)),
        Arc::new(f(|x| x.user_clicks)),
        Arc::new(f(|x| x.item_impressions)),
        Arc::new(f(|x| x.item_clicks)),
        Arc::new(Int64Array::from_iter(
            rows.iter().map(|r| r.features.item_on_hand),
        )),
        Arc::new(BooleanArray::from_iter(
            rows.iter().map(|r| Some(r.clicked)),
        )),
    ];
    RecordBatch::try_new(examples_schema(), columns)
}
