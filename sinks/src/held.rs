//! Serde for [`WindowRows`]: the rows of windows a job holds before writing them go into
//! its checkpoints as an uncompressed Parquet file in memory (the checkpoint compresses
//! the whole), which keeps every Arrow type, time zones included, exactly.

use std::collections::BTreeMap;

use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::de::{self, Deserializer, Visitor};
use serde::ser::{Error as _, SerializeStruct, Serializer};
use serde::{Deserialize, Serialize};

use crate::store::WindowRows;

/// `batch` as the bytes of a Parquet file (no compression).
fn encode(batch: &RecordBatch) -> Result<Vec<u8>, parquet::errors::ParquetError> {
    let mut writer = ArrowWriter::try_new(Vec::new(), batch.schema(), None)?;
    writer.write(batch)?;
    writer.into_inner()
}

/// The rows of a Parquet file in memory, as one batch.
fn decode(bytes: Vec<u8>) -> Result<RecordBatch, String> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))
        .map_err(|e| e.to_string())?;
    let schema = builder.schema().clone();
    let batches = builder
        .build()
        .map_err(|e| e.to_string())?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    arrow::compute::concat_batches(&schema, &batches).map_err(|e| e.to_string())
}

/// A byte string (serialized as one, not as a sequence of numbers).
struct Bytes<'a>(&'a [u8]);

impl Serialize for Bytes<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

/// A byte string, read back.
struct ByteBuf(Vec<u8>);

impl<'de> Deserialize<'de> for ByteBuf {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Bytes;
        impl<'de> Visitor<'de> for Bytes {
            type Value = ByteBuf;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<ByteBuf, E> {
                Ok(ByteBuf(v.to_vec()))
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<ByteBuf, E> {
                Ok(ByteBuf(v))
            }
        }
        deserializer.deserialize_byte_buf(Bytes)
    }
}

impl Serialize for WindowRows {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let parquet = encode(&self.batch)
            .map_err(|e| S::Error::custom(format!("window {} rows: {e}", self.window_ms)))?;
        let mut state = serializer.serialize_struct("WindowRows", 3)?;
        state.serialize_field("window_ms", &self.window_ms)?;
        state.serialize_field("metadata", &self.metadata)?;
        state.serialize_field("parquet", &Bytes(&parquet))?;
        state.end()
    }
}

impl<'de> Deserialize<'de> for WindowRows {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Stored {
            window_ms: i64,
            metadata: BTreeMap<String, String>,
            parquet: ByteBuf,
        }
        let stored = Stored::deserialize(deserializer)?;
        let batch = decode(stored.parquet.0)
            .map_err(|e| de::Error::custom(format!("window {} rows: {e}", stored.window_ms)))?;
        Ok(Self {
            window_ms: stored.window_ms,
            batch,
            metadata: stored.metadata,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{StringArray, TimestampMicrosecondArray};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};

    use super::*;

    #[test]
    fn held_rows_round_trip_through_a_checkpoint_encoding_with_their_types() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::Utf8, false),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["u2", "u1"])),
                Arc::new(TimestampMicrosecondArray::from(vec![7, 3]).with_timezone("UTC")),
            ],
        )
        .expect("batch");
        let rows = WindowRows {
            window_ms: 60_000,
            batch,
            metadata: BTreeMap::from([("k".to_string(), "v".to_string())]),
        };
        let packed = rmp_serde::to_vec_named(&rows).expect("encode");
        let back: WindowRows = rmp_serde::from_slice(&packed).expect("decode");
        assert_eq!(back.window_ms, rows.window_ms);
        assert_eq!(back.metadata, rows.metadata);
        assert_eq!(back.batch, rows.batch);
        let mut broken = packed.clone();
        broken.truncate(packed.len() - 10);
        assert!(rmp_serde::from_slice::<WindowRows>(&broken).is_err());
    }
}
