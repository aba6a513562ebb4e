//! Serde for large `Vec<f64>` (weights, optimiser moments) as one byte string of
//! little-endian values instead of a sequence of numbers: a checkpoint of the default
//! model holds about six million of them, and encoding each one separately made a
//! checkpoint cost seconds. Sequences written before still decode.

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserializer, Serializer};

/// Serializes `values` as one byte string.
pub fn serialize<S: Serializer>(values: &[f64], serializer: S) -> Result<S::Ok, S::Error> {
    if cfg!(target_endian = "little") {
        // The values' own bytes, without a copy.
        return serializer.serialize_bytes(bytemuck::cast_slice(values));
    }
    let mut bytes = Vec::with_capacity(values.len() * 8);
    for value in values {
        bytes.extend_from_slice(&value.to_le_bytes());
    }
    serializer.serialize_bytes(&bytes)
}

/// Reads a byte string of little-endian values, or a sequence of numbers (older files).
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<f64>, D::Error> {
    deserializer.deserialize_byte_buf(F64s)
}

struct F64s;

impl<'de> Visitor<'de> for F64s {
    type Value = Vec<f64>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("little-endian f64 bytes or a sequence of numbers")
    }

    fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<Self::Value, E> {
        if !bytes.len().is_multiple_of(8) {
            return Err(E::invalid_length(bytes.len(), &"a multiple of 8 bytes"));
        }
        if cfg!(target_endian = "little") {
            // One copy into aligned memory.
            return Ok(bytemuck::pod_collect_to_vec(bytes));
        }
        Ok(bytes
            .chunks_exact(8)
            .map(|c| {
                let mut word = [0u8; 8];
                word.copy_from_slice(c);
                f64::from_le_bytes(word)
            })
            .collect())
    }

    fn visit_byte_buf<E: de::Error>(self, bytes: Vec<u8>) -> Result<Self::Value, E> {
        self.visit_bytes(&bytes)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut values = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(value) = seq.next_element()? {
            values.push(value);
        }
        Ok(values)
    }
}

#[cfg(test)]
mod tests {
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Packed {
        #[serde(with = "super")]
        values: Vec<f64>,
    }

    #[derive(serde::Serialize)]
    struct Plain {
        values: Vec<f64>,
    }

    #[test]
    fn values_round_trip_bit_for_bit_and_old_sequences_still_decode() {
        let values = vec![0.0, -0.0, 1.5, f64::MIN_POSITIVE, f64::MAX, -3.25e-300];
        let packed = Packed {
            values: values.clone(),
        };
        let bytes = rmp_serde::to_vec_named(&packed).expect("encode");
        let back: Packed = rmp_serde::from_slice(&bytes).expect("decode");
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&back.values), bits(&values));
        let old = rmp_serde::to_vec_named(&Plain {
            values: values.clone(),
        })
        .expect("encode");
        let back: Packed = rmp_serde::from_slice(&old).expect("decode a sequence");
        assert_eq!(bits(&back.values), bits(&values));
        let mut broken = rmp_serde::to_vec_named(&packed).expect("encode");
        // Drop the last byte of the byte string (and of the message).
        broken.pop();
        assert!(rmp_serde::from_slice::<Packed>(&broken).is_err());
    }
}
