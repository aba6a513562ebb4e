//! The inverse of [`crate::examples_batch`]: examples read back from the store's
//! `examples` table, for evaluating a model on a store (`shopstream model evaluate`).
//!
//! Derived columns (`user_ctr_7d`, `item_in_stock`, ...) are not read: they follow from the
//! counters, which are.

use arrow::array::{
    Array, BooleanArray, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::error::ArrowError;
use shopstream_ingest::event::{Scenario, Text};

use crate::example::{Example, Features, Labels};
use crate::inventory::intern;
use crate::rolling::{HORIZONS, Horizons};

/// Why a batch could not be read as examples.
#[derive(Debug, thiserror::Error)]
pub enum ExampleReadError {
    /// A column of the examples schema is absent or has another type.
    #[error(
        "column `{column}` is missing or is not {expected} (this build reads `examples` files of schema version {version}; a store of another version is rebuilt with `shopstream replay`, docs/feature-schema.md)",
        version = crate::example::EXAMPLES_SCHEMA_VERSION
    )]
    Column {
        /// The column.
        column: String,
        /// The Arrow type it must have.
        expected: &'static str,
    },
    /// A value the schema forbids.
    #[error("row {row}: {message}")]
    Value {
        /// Row in the batch.
        row: usize,
        /// What is wrong.
        message: String,
    },
}

impl From<ExampleReadError> for ArrowError {
    fn from(e: ExampleReadError) -> Self {
        ArrowError::InvalidArgumentError(e.to_string())
    }
}

fn column<'a, T: 'static>(
    batch: &'a RecordBatch,
    name: &str,
    expected: &'static str,
) -> Result<&'a T, ExampleReadError> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| ExampleReadError::Column {
            column: name.to_string(),
            expected,
        })
}

fn utf8<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a StringArray, ExampleReadError> {
    column(batch, name, "Utf8")
}

fn i64s<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a Int64Array, ExampleReadError> {
    column(batch, name, "Int64")
}

fn f64s<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a Float64Array, ExampleReadError> {
    column(batch, name, "Float64")
}

fn i32s<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a Int32Array, ExampleReadError> {
    column(batch, name, "Int32")
}

fn bools<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a BooleanArray, ExampleReadError> {
    column(batch, name, "Boolean")
}

fn opt_str(a: &StringArray, i: usize) -> Option<Text> {
    a.is_valid(i).then(|| Text::from(a.value(i)))
}

fn opt<T: arrow::datatypes::ArrowPrimitiveType>(
    a: &arrow::array::PrimitiveArray<T>,
    i: usize,
) -> Option<T::Native> {
    a.is_valid(i).then(|| a.value(i))
}

/// The five counter columns of one horizon of `prefix` (user or item).
struct HorizonColumns<'a> {
    impressions: &'a Int64Array,
    clicks: &'a Int64Array,
    carts: &'a Int64Array,
    units: &'a Int64Array,
    spend: &'a Float64Array,
}

fn horizon_columns<'a>(
    batch: &'a RecordBatch,
    prefix: &str,
) -> Result<Vec<HorizonColumns<'a>>, ExampleReadError> {
    HORIZONS
        .iter()
        .map(|h| {
            Ok(HorizonColumns {
                impressions: i64s(batch, &format!("{prefix}_impressions_{h}"))?,
                clicks: i64s(batch, &format!("{prefix}_clicks_{h}"))?,
                carts: i64s(batch, &format!("{prefix}_carts_{h}"))?,
                units: i64s(batch, &format!("{prefix}_units_{h}"))?,
                spend: f64s(batch, &format!("{prefix}_spend_{h}"))?,
            })
        })
        .collect()
}

fn horizons_at(columns: &[HorizonColumns<'_>], i: usize) -> Horizons {
    let mut out = Horizons::default();
    for (totals, c) in out.iter_mut().zip(columns) {
        totals.impressions = c.impressions.value(i);
        totals.clicks = c.clicks.value(i);
        totals.carts = c.carts.value(i);
        totals.units = c.units.value(i);
        totals.spend = c.spend.value(i);
    }
    out
}

fn scenario_of(name: &str) -> Option<Scenario> {
    Scenario::ALL.into_iter().find(|s| s.as_str() == name)
}

/// The rows of an `examples` batch (as [`crate::examples_batch`] writes them, or as a
/// Parquet reader gives them back), in their order.
pub fn examples_from_batch(batch: &RecordBatch) -> Result<Vec<Example>, ExampleReadError> {
    let event_id = utf8(batch, "event_id")?;
    let ts: &TimestampMicrosecondArray = column(batch, "ts", "Timestamp(Microsecond, UTC)")?;
    let user_id = utf8(batch, "user_id")?;
    let item_id = utf8(batch, "item_id")?;
    let scenario = utf8(batch, "scenario")?;
    let device = utf8(batch, "device")?;
    let position = i32s(batch, "position")?;
    let price = f64s(batch, "price")?;
    let hour = i32s(batch, "hour_of_day")?;
    let weekday = i32s(batch, "day_of_week")?;
    let user = horizon_columns(batch, "user")?;
    let recency = f64s(batch, "user_recency_secs")?;
    let affinity = f64s(batch, "user_category_affinity")?;
    let exposure = f64s(batch, "user_category_exposure")?;
    let item = horizon_columns(batch, "item")?;
    let category = utf8(batch, "item_category")?;
    let item_price = f64s(batch, "item_price")?;
    let on_hand = i64s(batch, "item_on_hand")?;
    let clicked = bools(batch, "clicked")?;
    let converted = bools(batch, "converted")?;
    let cancelled = bools(batch, "cancelled")?;
    let quantity = i64s(batch, "quantity")?;
    let revenue = f64s(batch, "revenue")?;
    let value = |row: usize, message: String| ExampleReadError::Value { row, message };
    // One shared copy of each category name in the batch, as the inventory holds them.
    let mut categories = Default::default();
    (0..batch.num_rows())
        .map(|i| {
            let name = scenario.value(i);
            let scenario =
                scenario_of(name).ok_or_else(|| value(i, format!("unknown scenario {name:?}")))?;
            let small = |a: &Int32Array, what: &str| {
                u8::try_from(a.value(i)).map_err(|_| value(i, format!("{what} out of range")))
            };
            Ok(Example {
                event_id: event_id.value(i).into(),
                ts: ts.value(i).div_euclid(1000),
                user_id: user_id.value(i).into(),
                item_id: item_id.value(i).into(),
                features: Features {
                    scenario,
                    device: opt_str(device, i),
                    position: opt(position, i).and_then(|p| u32::try_from(p).ok()),
                    price: opt(price, i),
                    hour_of_day: small(hour, "hour_of_day")?,
                    day_of_week: small(weekday, "day_of_week")?,
                    user: horizons_at(&user, i),
                    user_recency_secs: opt(recency, i),
                    user_category_affinity: affinity.value(i),
                    user_category_exposure: exposure.value(i),
                    item: horizons_at(&item, i),
                    item_category: category
                        .is_valid(i)
                        .then(|| intern(&mut categories, category.value(i))),
                    item_price: opt(item_price, i),
                    item_on_hand: opt(on_hand, i),
                },
                labels: Labels {
                    clicked: clicked.value(i),
                    converted: converted.value(i),
                    cancelled: cancelled.value(i),
                    quantity: quantity.value(i),
                    revenue: revenue.value(i),
                },
            })
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::examples_batch;
    use crate::rolling::Totals;

    fn example(i: i64, sparse: bool) -> Example {
        let totals = |k: i64| Totals {
            impressions: k,
            clicks: k / 2,
            carts: k / 3,
            units: k / 4,
            spend: k as f64 * 1.5,
        };
        Example {
            event_id: format!("e{i}").into(),
            ts: 1_767_571_200_000 + i * 1_001,
            user_id: format!("u{i}").into(),
            item_id: format!("i{}", i % 3).into(),
            features: Features {
                scenario: Scenario::ALL[i as usize % 5],
                device: (!sparse).then(|| "mobile".into()),
                position: (!sparse).then_some(i as u32),
                price: (!sparse).then_some(9.99),
                hour_of_day: (i % 24) as u8,
                day_of_week: (i % 7) as u8,
                user: [totals(i), totals(i + 1), totals(i + 2)],
                user_recency_secs: (!sparse).then_some(12.5),
                user_category_affinity: 0.25,
                user_category_exposure: 0.5,
                item: [totals(3 * i), totals(3 * i + 1), totals(3 * i + 2)],
                item_category: (!sparse).then(|| "c1".into()),
                item_price: (!sparse).then_some(10.0),
                item_on_hand: (!sparse).then_some(-2),
            },
            labels: Labels {
                clicked: i % 2 == 0,
                converted: i % 4 == 0,
                cancelled: false,
                quantity: i % 4,
                revenue: if i % 4 == 0 { 19.98 } else { 0.0 },
            },
        }
    }

    #[test]
    fn examples_read_back_equal_what_was_written() {
        let rows: Vec<Example> = (0..40).map(|i| example(i, i % 3 == 0)).collect();
        let batch = examples_batch(&rows).unwrap();
        assert_eq!(examples_from_batch(&batch).unwrap(), rows);
    }

    #[test]
    fn a_batch_of_another_table_names_the_missing_column() {
        let batch = examples_batch(&[example(1, false)]).unwrap();
        let without = batch.project(&[0, 1, 2]).unwrap();
        let err = examples_from_batch(&without).unwrap_err().to_string();
        assert!(err.contains("`item_id` is missing"), "{err}");
    }
}
