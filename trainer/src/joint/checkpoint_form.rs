//! How a [`JointModel`] is written into a checkpoint, and read back.
//!
//! The embedding table and its two Adam moments are most of a model's bytes: 2^18 rows of
//! 8 values each by default, of which a shop's ids reach a few per cent. A row training
//! never reached still holds the values [`JointModel::new`] drew from the seed (which a
//! compressor cannot shrink) and zero moments. So a checkpoint writes only the rows that
//! differ from a new model's, by number, with their values and moments; reading starts
//! from a new model's table and puts those rows back, bit for bit. The rest is written as
//! it is, arrays as little-endian bytes ([`crate::f64_bytes`]). Checkpoints written before
//! carry the whole table and moments (`embedding`, `emb_m`, `emb_v`); both forms read.

use serde::{Deserialize, Serialize, Serializer};

use super::{JointConfig, JointModel, Layout, Normaliser, initial_embedding};

/// Above the largest table the configuration allows (`model.embedding_bits`, 8..=24): a
/// damaged checkpoint is refused rather than allocated.
const MAX_EMBEDDING_BITS: u32 = 30;

/// Likewise for `model.embedding_dim` (1..=1024).
const MAX_EMBEDDING_DIM: usize = 1024;

/// The written form: the model's own fields, borrowed, but the embedding table.
#[derive(Serialize)]
struct Written<'a> {
    config: &'a JointConfig,
    layout: &'a Layout,
    #[serde(with = "crate::f64_bytes")]
    params: &'a [f64],
    #[serde(with = "crate::f64_bytes")]
    adam_m: &'a [f64],
    #[serde(with = "crate::f64_bytes")]
    adam_v: &'a [f64],
    /// The embedding rows that differ from a new model's, ascending ...
    changed_rows: &'a [u32],
    /// ... their values, `embedding_dim` per row ...
    #[serde(with = "crate::f64_bytes")]
    changed_embedding: &'a [f64],
    /// ... and their Adam moments.
    #[serde(with = "crate::f64_bytes")]
    changed_emb_m: &'a [f64],
    #[serde(with = "crate::f64_bytes")]
    changed_emb_v: &'a [f64],
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

/// The embedding rows of a model that differ from a new model's, with their contents.
#[derive(Default)]
struct ChangedRows {
    rows: Vec<u32>,
    embedding: Vec<f64>,
    emb_m: Vec<f64>,
    emb_v: Vec<f64>,
}

impl ChangedRows {
    /// Compares bits, so that a moment of -0.0 or a value trained back to its start in
    /// another representation still counts as changed.
    fn of(model: &JointModel) -> Self {
        let dim = model.config.embedding_dim;
        let mut changed = ChangedRows::default();
        let mut initial = initial_embedding(&model.config);
        let mut start = vec![0.0; dim];
        let rows = model.embedding.chunks_exact(dim);
        let moments = model
            .emb_m
            .chunks_exact(dim)
            .zip(model.emb_v.chunks_exact(dim));
        for (row, (values, (m, v))) in rows.zip(moments).enumerate() {
            for slot in &mut start {
                *slot = initial.next().unwrap_or_default();
            }
            let same = values
                .iter()
                .zip(&start)
                .all(|(a, b)| a.to_bits() == b.to_bits())
                && m.iter().chain(v).all(|x| x.to_bits() == 0);
            if !same {
                // The table has at most 2^embedding_bits rows, and the config caps the bits.
                changed.rows.push(u32::try_from(row).unwrap_or(u32::MAX));
                changed.embedding.extend_from_slice(values);
                changed.emb_m.extend_from_slice(m);
                changed.emb_v.extend_from_slice(v);
            }
        }
        changed
    }
}

impl<'a> Written<'a> {
    /// `model`'s written form, with `config` (its own, except in tests) and its `changed`
    /// rows.
    fn of(model: &'a JointModel, config: &'a JointConfig, changed: &'a ChangedRows) -> Self {
        Written {
            config,
            layout: &model.layout,
            params: &model.params,
            adam_m: &model.adam_m,
            adam_v: &model.adam_v,
            changed_rows: &changed.rows,
            changed_embedding: &changed.embedding,
            changed_emb_m: &changed.emb_m,
            changed_emb_v: &changed.emb_v,
            normaliser: &model.normaliser,
            steps: model.steps,
            demand: &model.demand,
            demand_m: &model.demand_m,
            demand_v: &model.demand_v,
            demand_normaliser: &model.demand_normaliser,
            demand_steps: model.demand_steps,
        }
    }
}

impl Serialize for JointModel {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let changed = ChangedRows::of(self);
        Written::of(self, &self.config, &changed).serialize(serializer)
    }
}

/// The read form: either form of the embedding table.
#[derive(Deserialize)]
pub(super) struct Read {
    config: JointConfig,
    layout: Layout,
    #[serde(with = "crate::f64_bytes")]
    params: Vec<f64>,
    #[serde(with = "crate::f64_bytes")]
    adam_m: Vec<f64>,
    #[serde(with = "crate::f64_bytes")]
    adam_v: Vec<f64>,
    /// Checkpoints written before the changed-rows form: the whole table and moments.
    #[serde(default, deserialize_with = "crate::f64_bytes::deserialize")]
    embedding: Vec<f64>,
    #[serde(default, deserialize_with = "crate::f64_bytes::deserialize")]
    emb_m: Vec<f64>,
    #[serde(default, deserialize_with = "crate::f64_bytes::deserialize")]
    emb_v: Vec<f64>,
    /// The changed-rows form.
    changed_rows: Option<Vec<u32>>,
    #[serde(default, deserialize_with = "crate::f64_bytes::deserialize")]
    changed_embedding: Vec<f64>,
    #[serde(default, deserialize_with = "crate::f64_bytes::deserialize")]
    changed_emb_m: Vec<f64>,
    #[serde(default, deserialize_with = "crate::f64_bytes::deserialize")]
    changed_emb_v: Vec<f64>,
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
        let (embedding, emb_m, emb_v) = match read.changed_rows {
            None if !read.embedding.is_empty() => (read.embedding, read.emb_m, read.emb_v),
            None => return Err("no embedding table (neither form)".to_string()),
            Some(rows) => {
                let dim = read.config.embedding_dim;
                if read.config.embedding_bits > MAX_EMBEDDING_BITS
                    || !(1..=MAX_EMBEDDING_DIM).contains(&dim)
                {
                    return Err(format!(
                        "embedding_bits {} and embedding_dim {dim} are not a table this build makes",
                        read.config.embedding_bits
                    ));
                }
                let table_rows = 1usize << read.config.embedding_bits;
                let values = rows.len() * dim;
                for (name, len) in [
                    ("changed_embedding", read.changed_embedding.len()),
                    ("changed_emb_m", read.changed_emb_m.len()),
                    ("changed_emb_v", read.changed_emb_v.len()),
                ] {
                    if len != values {
                        return Err(format!(
                            "{name} holds {len} values, {} changed rows of {dim} need {values}",
                            rows.len()
                        ));
                    }
                }
                let mut embedding: Vec<f64> = initial_embedding(&read.config).collect();
                let mut emb_m = vec![0.0; table_rows * dim];
                let mut emb_v = vec![0.0; table_rows * dim];
                for (i, &row) in rows.iter().enumerate() {
                    let row = row as usize;
                    if row >= table_rows {
                        return Err(format!(
                            "changed row {row} is outside the configured table of {table_rows} rows"
                        ));
                    }
                    let (to, from) = (row * dim..(row + 1) * dim, i * dim..(i + 1) * dim);
                    embedding[to.clone()].copy_from_slice(&read.changed_embedding[from.clone()]);
                    emb_m[to.clone()].copy_from_slice(&read.changed_emb_m[from.clone()]);
                    emb_v[to].copy_from_slice(&read.changed_emb_v[from]);
                }
                (embedding, emb_m, emb_v)
            }
        };
        Ok(JointModel {
            config: read.config,
            layout: read.layout,
            params: read.params,
            embedding,
            adam_m: read.adam_m,
            adam_v: read.adam_v,
            emb_m,
            emb_v,
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

    /// Guards what the form is for: the rows training did not reach are not written.
    #[test]
    fn rows_training_did_not_reach_are_not_written() {
        #[derive(Deserialize)]
        struct RowsOnly {
            changed_rows: Vec<u32>,
        }
        let model = trained(small_config());
        let packed = rmp_serde::to_vec_named(&model).expect("encode");
        let written: RowsOnly = rmp_serde::from_slice(&packed).expect("decode");
        assert!(
            !written.changed_rows.is_empty(),
            "training changed some rows"
        );
        assert!(
            written
                .changed_rows
                .iter()
                .all(|&row| (row as usize) < ROWS_REACHED),
            "rows the batch never used are written: {:?}",
            written.changed_rows
        );
        let fresh = rmp_serde::to_vec_named(&JointModel::new(small_config())).expect("encode");
        let written: RowsOnly = rmp_serde::from_slice(&fresh).expect("decode");
        assert!(
            written.changed_rows.is_empty(),
            "a new model has no changed rows"
        );
    }

    /// The form checkpoints had before: the whole table and moments (`embedding`,
    /// `emb_m`, `emb_v`). A frozen copy of that format, field for field, so it does not
    /// follow later changes to [`Written`].
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

    /// `model` written with `config` in place of its own and its changed rows edited.
    fn written_edited(
        model: &JointModel,
        config: &JointConfig,
        edit: impl FnOnce(&mut ChangedRows),
    ) -> Vec<u8> {
        let mut changed = ChangedRows::of(model);
        edit(&mut changed);
        rmp_serde::to_vec_named(&Written::of(model, config, &changed)).expect("encode")
    }

    #[test]
    fn damaged_changed_rows_are_an_error_not_a_panic() {
        let model = trained(small_config());
        let decode = |bytes: Vec<u8>| {
            rmp_serde::from_slice::<JointModel>(&bytes)
                .expect_err("damaged")
                .to_string()
        };
        let short = written_edited(&model, &model.config, |c| {
            c.emb_v.pop();
        });
        assert!(decode(short).contains("changed_emb_v holds"));
        let small = JointConfig {
            embedding_bits: 5,
            ..small_config()
        };
        let outside = decode(written_edited(&model, &small, |_| {}));
        assert!(
            outside.contains("outside the configured table of 32 rows"),
            "{outside}"
        );
        let huge = JointConfig {
            embedding_bits: 60,
            ..small_config()
        };
        let huge = decode(written_edited(&model, &huge, |_| {}));
        assert!(huge.contains("embedding_bits 60"), "{huge}");
        let flat = JointConfig {
            embedding_dim: 0,
            ..small_config()
        };
        let flat = decode(written_edited(&model, &flat, |c| {
            c.embedding.clear();
            c.emb_m.clear();
            c.emb_v.clear();
        }));
        assert!(flat.contains("embedding_dim 0"), "{flat}");
    }
}
