//! How a [`JointModel`] is written into a checkpoint, and read back.
//!
//! The embedding table is most of a model's bytes: 2^18 rows of 8 values by default, of
//! which a shop's ids reach a few per cent. A row training never reached keeps the values
//! [`JointModel::new`] drew from the seed, which a compressor cannot shrink. So the table
//! is written as `embedding_xor_initial`: the bits of each value XOR the bits of the value
//! the seed gave it. That is exactly reversible, and zero wherever training changed
//! nothing, which compresses to almost nothing. The rest is written as it is, arrays as
//! little-endian bytes ([`crate::f64_bytes`]). Checkpoints written before carry the table
//! itself as `embedding`; both forms read.

use serde::{Deserialize, Serialize, Serializer};

use super::{JointConfig, JointModel, Layout, Normaliser, initial_embedding};

/// The written form: the model's own fields, borrowed, but the embedding table.
#[derive(Serialize)]
struct Written<'a> {
    config: &'a JointConfig,
    layout: &'a Layout,
    #[serde(with = "crate::f64_bytes")]
    params: &'a [f64],
    /// Bit patterns (`u64`s carried as `f64`s of the same bits), one per table value.
    #[serde(with = "crate::f64_bytes")]
    embedding_xor_initial: &'a [f64],
    #[serde(with = "crate::f64_bytes")]
    adam_m: &'a [f64],
    #[serde(with = "crate::f64_bytes")]
    adam_v: &'a [f64],
    #[serde(with = "crate::f64_bytes")]
    emb_m: &'a [f64],
    #[serde(with = "crate::f64_bytes")]
    emb_v: &'a [f64],
    normaliser: &'a Normaliser,
    steps: u64,
    #[serde(with = "crate::f64_bytes")]
    demand: &'a [f64],
    #[serde(with = "crate::f64_bytes")]
    demand_m: &'a [f64],
    #[serde(with = "crate::f64_bytes")]
    demand_v: &'a [f64],
    demand_normaliser: &'a Normaliser,
    demand_steps: u64,
}

impl Serialize for JointModel {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let xored = xor_bits(&self.embedding, initial_embedding(&self.config));
        Written {
            config: &self.config,
            layout: &self.layout,
            params: &self.params,
            embedding_xor_initial: &xored,
            adam_m: &self.adam_m,
            adam_v: &self.adam_v,
            emb_m: &self.emb_m,
            emb_v: &self.emb_v,
            normaliser: &self.normaliser,
            steps: self.steps,
            demand: &self.demand,
            demand_m: &self.demand_m,
            demand_v: &self.demand_v,
            demand_normaliser: &self.demand_normaliser,
            demand_steps: self.demand_steps,
        }
        .serialize(serializer)
    }
}

/// The read form: either form of the embedding table.
#[derive(Deserialize)]
pub(super) struct Read {
    config: JointConfig,
    layout: Layout,
    #[serde(with = "crate::f64_bytes")]
    params: Vec<f64>,
    /// Checkpoints written before the XOR form.
    #[serde(default, deserialize_with = "crate::f64_bytes::deserialize")]
    embedding: Vec<f64>,
    #[serde(default, deserialize_with = "crate::f64_bytes::deserialize")]
    embedding_xor_initial: Vec<f64>,
    #[serde(with = "crate::f64_bytes")]
    adam_m: Vec<f64>,
    #[serde(with = "crate::f64_bytes")]
    adam_v: Vec<f64>,
    #[serde(with = "crate::f64_bytes")]
    emb_m: Vec<f64>,
    #[serde(with = "crate::f64_bytes")]
    emb_v: Vec<f64>,
    normaliser: Normaliser,
    steps: u64,
    #[serde(with = "crate::f64_bytes")]
    demand: Vec<f64>,
    #[serde(with = "crate::f64_bytes")]
    demand_m: Vec<f64>,
    #[serde(with = "crate::f64_bytes")]
    demand_v: Vec<f64>,
    demand_normaliser: Normaliser,
    demand_steps: u64,
}

impl TryFrom<Read> for JointModel {
    type Error = String;

    fn try_from(read: Read) -> Result<Self, String> {
        let table = (1usize << read.config.embedding_bits) * read.config.embedding_dim;
        let embedding = match (read.embedding.is_empty(), read.embedding_xor_initial.len()) {
            (false, 0) => read.embedding,
            (true, len) if len == table => {
                xor_bits(&read.embedding_xor_initial, initial_embedding(&read.config))
            }
            (true, len) => {
                return Err(format!(
                    "embedding_xor_initial holds {len} values, the configured table {table}"
                ));
            }
            (false, _) => {
                return Err("both embedding and embedding_xor_initial present".to_string());
            }
        };
        Ok(JointModel {
            config: read.config,
            layout: read.layout,
            params: read.params,
            embedding,
            adam_m: read.adam_m,
            adam_v: read.adam_v,
            emb_m: read.emb_m,
            emb_v: read.emb_v,
            normaliser: read.normaliser,
            steps: read.steps,
            demand: read.demand,
            demand_m: read.demand_m,
            demand_v: read.demand_v,
            demand_normaliser: read.demand_normaliser,
            demand_steps: read.demand_steps,
        })
    }
}

/// Each value's bits XOR the bits of its counterpart in `initial` (an involution: applied
/// to its own output with the same `initial`, it gives back `values` bit for bit).
fn xor_bits(values: &[f64], initial: impl Iterator<Item = f64>) -> Vec<f64> {
    values
        .iter()
        .zip(initial)
        .map(|(value, initial)| f64::from_bits(value.to_bits() ^ initial.to_bits()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::joint::{Input, SCENARIOS, Targets};

    fn small_config() -> JointConfig {
        JointConfig {
            embedding_bits: 10,
            ..JointConfig::default()
        }
    }

    /// Distinct rows one training batch below reaches, at most.
    const ROWS_REACHED: usize = 40;

    /// A model whose table has rows training reached and rows it did not.
    fn trained(config: JointConfig) -> JointModel {
        let mut model = JointModel::new(config);
        let batch: Vec<(Input, Targets)> = (0..64)
            .map(|i: usize| {
                (
                    Input {
                        ids: std::array::from_fn(|f| (i * 7 + f * 3) % ROWS_REACHED),
                        dense: std::array::from_fn(|k| ((i + k) % 5) as f64 - 2.0),
                        scenario: i % SCENARIOS,
                    },
                    Targets {
                        clicked: i.is_multiple_of(3),
                        converted: i.is_multiple_of(9),
                        log_revenue: if i.is_multiple_of(9) { 2.5 } else { 0.0 },
                    },
                )
            })
            .collect();
        model.train_batch(&batch);
        model
    }

    fn bits(values: &[f64]) -> Vec<u64> {
        values.iter().map(|v| v.to_bits()).collect()
    }

    #[test]
    fn a_checkpointed_model_reads_back_bit_for_bit() {
        let model = trained(small_config());
        let initial = JointModel::new(small_config());
        assert_ne!(bits(&model.embedding), bits(&initial.embedding));
        let packed = rmp_serde::to_vec_named(&model).expect("encode");
        let back: JointModel = rmp_serde::from_slice(&packed).expect("decode");
        assert_eq!(back, model);
        assert_eq!(bits(&back.embedding), bits(&model.embedding));
    }

    /// Guards what the form is for: in the bytes written, the rows training did not reach
    /// are zeros.
    #[test]
    fn rows_training_did_not_reach_are_written_as_zeros() {
        #[derive(Deserialize)]
        struct TableOnly {
            #[serde(deserialize_with = "crate::f64_bytes::deserialize")]
            embedding_xor_initial: Vec<f64>,
        }
        let model = trained(small_config());
        let packed = rmp_serde::to_vec_named(&model).expect("encode");
        let written: TableOnly = rmp_serde::from_slice(&packed).expect("decode");
        let changed: Vec<usize> = written
            .embedding_xor_initial
            .chunks(model.config.embedding_dim)
            .enumerate()
            .filter(|(_, row)| row.iter().any(|v| v.to_bits() != 0))
            .map(|(row, _)| row)
            .collect();
        assert!(!changed.is_empty(), "training changed some rows");
        assert!(
            changed.iter().all(|&row| row < ROWS_REACHED),
            "rows the batch never used are not zeros: {changed:?}"
        );
    }

    /// The form checkpoints had before: the table itself, as `embedding`.
    fn written_before(model: &JointModel, config: &JointConfig) -> Vec<u8> {
        #[derive(Serialize)]
        struct Before<'a> {
            config: &'a JointConfig,
            layout: &'a Layout,
            #[serde(with = "crate::f64_bytes")]
            params: &'a [f64],
            #[serde(with = "crate::f64_bytes")]
            embedding: &'a [f64],
            #[serde(with = "crate::f64_bytes")]
            adam_m: &'a [f64],
            #[serde(with = "crate::f64_bytes")]
            adam_v: &'a [f64],
            #[serde(with = "crate::f64_bytes")]
            emb_m: &'a [f64],
            #[serde(with = "crate::f64_bytes")]
            emb_v: &'a [f64],
            normaliser: &'a Normaliser,
            steps: u64,
            #[serde(with = "crate::f64_bytes")]
            demand: &'a [f64],
            #[serde(with = "crate::f64_bytes")]
            demand_m: &'a [f64],
            #[serde(with = "crate::f64_bytes")]
            demand_v: &'a [f64],
            demand_normaliser: &'a Normaliser,
            demand_steps: u64,
        }
        rmp_serde::to_vec_named(&Before {
            config,
            layout: &model.layout,
            params: &model.params,
            embedding: &model.embedding,
            adam_m: &model.adam_m,
            adam_v: &model.adam_v,
            emb_m: &model.emb_m,
            emb_v: &model.emb_v,
            normaliser: &model.normaliser,
            steps: model.steps,
            demand: &model.demand,
            demand_m: &model.demand_m,
            demand_v: &model.demand_v,
            demand_normaliser: &model.demand_normaliser,
            demand_steps: model.demand_steps,
        })
        .expect("encode")
    }

    #[test]
    fn a_checkpoint_with_the_table_itself_still_reads() {
        let model = trained(small_config());
        let before = written_before(&model, &model.config);
        let back: JointModel = rmp_serde::from_slice(&before).expect("decode");
        assert_eq!(back, model);
    }

    #[test]
    fn a_table_of_another_size_is_an_error_not_a_panic() {
        let model = trained(small_config());
        let xored = xor_bits(&model.embedding, initial_embedding(&model.config));
        let other = JointConfig {
            embedding_bits: 9,
            ..small_config()
        };
        let written = Written {
            config: &other,
            layout: &model.layout,
            params: &model.params,
            embedding_xor_initial: &xored,
            adam_m: &model.adam_m,
            adam_v: &model.adam_v,
            emb_m: &model.emb_m,
            emb_v: &model.emb_v,
            normaliser: &model.normaliser,
            steps: model.steps,
            demand: &model.demand,
            demand_m: &model.demand_m,
            demand_v: &model.demand_v,
            demand_normaliser: &model.demand_normaliser,
            demand_steps: model.demand_steps,
        };
        let packed = rmp_serde::to_vec_named(&written).expect("encode");
        let err = rmp_serde::from_slice::<JointModel>(&packed).expect_err("sizes differ");
        assert!(
            err.to_string()
                .contains("embedding_xor_initial holds 8192 values, the configured table 4096"),
            "{err}"
        );
    }
}
