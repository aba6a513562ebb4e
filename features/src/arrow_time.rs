//! The store's one timestamp type: UTC microseconds, which Spark, DuckDB, pandas and
//! polars all read as an instant. Every table's time columns are built here.

use std::sync::Arc;

use arrow::array::{ArrayRef, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, TimeUnit};
use shopstream_ingest::event::{Millis, ms_to_micros};

/// `Timestamp(Microsecond, "UTC")`.
pub fn utc_micros_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// A UTC microsecond column of the epoch-millisecond `values`.
pub fn utc_micros(values: impl IntoIterator<Item = Millis>) -> ArrayRef {
    Arc::new(
        TimestampMicrosecondArray::from_iter_values(values.into_iter().map(ms_to_micros))
            .with_timezone("UTC"),
    )
}
