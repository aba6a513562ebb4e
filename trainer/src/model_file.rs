//! The model file: everything needed to resume training or to serve predictions elsewhere,
//! in a documented, dependency-free format (`docs/model-format.md`):
//!
//! ```text
//! SHOPSTREAM-MODEL 1\n
//! <one line of JSON: ModelHeader>\n
//! <for each header.blocks entry, in order: len x f64 little-endian>
//! ```
//!
//! Written to a temporary name, fsynced and renamed, so a reader never sees half a file
//! ([`Trainer::save`]); [`Trainer::model_file_bytes`] and [`Trainer::load_bytes`] are the same
//! file as bytes, for a bucket.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::explain::{DENSE_NAMES, FIELD_NAMES};
use crate::joint::{DENSE, FIELDS, JointConfig, JointModel};
use crate::{Trainer, WindowMetrics};

/// First line of every model file.
pub const MAGIC: &str = "SHOPSTREAM-MODEL 1";

/// The JSON header of a model file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelHeader {
    /// Network sizes and optimiser settings.
    pub config: JointConfig,
    /// Windows trained on (the model version of predictions).
    pub model_version: u64,
    /// Examples trained on.
    pub trained_examples: u64,
    /// Adam steps of the CTR/CVR/value towers and of the demand head.
    pub steps: u64,
    /// Adam steps of the demand head.
    pub demand_steps: u64,
    /// Observations behind the input normalisers (towers, demand head).
    pub normaliser_counts: (f64, f64),
    /// Prequential metrics of the last window trained on, if any.
    pub last_window: Option<WindowMetrics>,
    /// The model's inputs in order: its id fields, then its dense inputs. A file written
    /// before they were recorded has none (its model took 10 dense inputs).
    #[serde(default)]
    pub inputs: Vec<String>,
    /// The arrays that follow the header, in order: (name, number of f64 values).
    pub blocks: Vec<(String, usize)>,
}

/// This build's model inputs, as a model file's header lists them.
pub fn model_inputs() -> Vec<String> {
    FIELD_NAMES
        .iter()
        .chain(DENSE_NAMES.iter())
        .map(|name| (*name).to_string())
        .collect()
}

/// Why a model file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum ModelFileError {
    /// File system error.
    #[error("model file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Not a model file, or a damaged one.
    #[error("{path} is not a readable shopstream model file: {reason}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ModelFileError + '_ {
    move |source| ModelFileError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn format(path: &Path, reason: impl Into<String>) -> ModelFileError {
    ModelFileError::Format {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

impl Trainer {
    /// Writes the model atomically to `path`.
    pub fn save(&self, path: &Path) -> Result<(), ModelFileError> {
        let tmp = path.with_extension("tmp");
        let file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        let out = self.write_model(std::io::BufWriter::new(file), &tmp)?;
        let file = out.into_inner().map_err(|e| io(&tmp)(e.into_error()))?;
        file.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io(path))
    }

    /// The bytes of the model file (what [`Trainer::save`] writes), for storage that
    /// takes whole objects (a bucket).
    pub fn model_file_bytes(&self) -> Result<Vec<u8>, ModelFileError> {
        self.write_model(Vec::new(), Path::new("<model in memory>"))
    }

    /// Writes the model file into `out` (`label` names it in errors); returns `out`.
    fn write_model<W: Write>(&self, mut out: W, label: &Path) -> Result<W, ModelFileError> {
        let tmp = label;
        let path = label;
        let model = self.model();
        let (steps, demand_steps, c1, c2) = model.counters();
        let blocks = model.blocks();
        let header = ModelHeader {
            config: *model.config(),
            model_version: self.version(),
            trained_examples: self.trained_examples(),
            steps,
            demand_steps,
            normaliser_counts: (c1, c2),
            last_window: self.last_window().cloned(),
            inputs: model_inputs(),
            blocks: blocks
                .iter()
                .map(|(n, b)| (n.to_string(), b.len()))
                .collect(),
        };
        let json = serde_json::to_string(&header).map_err(|e| format(path, e.to_string()))?;
        writeln!(out, "{MAGIC}\n{json}").map_err(io(tmp))?;
        for (_, block) in &blocks {
            for v in *block {
                out.write_all(&v.to_le_bytes()).map_err(io(tmp))?;
            }
        }
        Ok(out)
    }

    /// Reads a model file written by [`Trainer::save`].
    pub fn load(path: &Path) -> Result<(Trainer, ModelHeader), ModelFileError> {
        Self::load_as(path, false)
    }

    /// Reads a model file written by [`Trainer::save`] of a [`Trainer::serving_copy`]
    /// (no optimiser state): a model to serve with, never to train.
    pub fn load_serving(path: &Path) -> Result<(Trainer, ModelHeader), ModelFileError> {
        Self::load_as(path, true)
    }

    /// Reads a model from the bytes of a model file (read from `path`, for errors); a
    /// serving copy when `serving`.
    pub fn load_bytes(
        bytes: &[u8],
        path: &Path,
        serving: bool,
    ) -> Result<(Trainer, ModelHeader), ModelFileError> {
        Self::load_from(path, bytes, bytes.len() as u64, serving)
    }

    fn load_as(path: &Path, serving: bool) -> Result<(Trainer, ModelHeader), ModelFileError> {
        let file = std::fs::File::open(path).map_err(io(path))?;
        let size = file.metadata().map_err(io(path))?.len();
        Self::load_from(path, BufReader::new(file), size, serving)
    }

    fn load_from(
        path: &Path,
        mut input: impl BufRead,
        size: u64,
        serving: bool,
    ) -> Result<(Trainer, ModelHeader), ModelFileError> {
        let header = read_header_from(path, &mut input)?;
        check_inputs(path, &header)?;
        let mut blocks = BTreeMap::new();
        for (name, len) in &header.blocks {
            // The header's lengths are checked against the file before anything is
            // allocated for them: a damaged header is an error, not an abort.
            let bytes_len = len
                .checked_mul(8)
                .filter(|n| u64::try_from(*n).is_ok_and(|n| n <= size))
                .ok_or_else(|| format(path, format!("block {name} is truncated")))?;
            let mut bytes = vec![0u8; bytes_len];
            input
                .read_exact(&mut bytes)
                .map_err(|_| format(path, format!("block {name} is truncated")))?;
            let values = bytes
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap_or_default()))
                .collect();
            blocks.insert(name.clone(), values);
        }
        let counters = (
            header.steps,
            header.demand_steps,
            header.normaliser_counts.0,
            header.normaliser_counts.1,
        );
        let model = if serving {
            JointModel::serving_from_blocks(header.config, blocks, counters)
        } else {
            JointModel::from_blocks(header.config, blocks, counters)
        }
        .ok_or_else(|| format(path, "blocks do not match the configuration"))?;
        let trainer = Trainer::from_model(
            model,
            header.model_version,
            header.trained_examples,
            header.last_window.clone(),
        );
        Ok((trainer, header))
    }
}

/// A model trained on other inputs (another version of shopstream) cannot be loaded: its
/// arrays have other shapes, or the same shapes with other meanings.
fn check_inputs(path: &Path, header: &ModelHeader) -> Result<(), ModelFileError> {
    let ours = model_inputs();
    if header.inputs == ours {
        return Ok(());
    }
    let theirs = if header.inputs.is_empty() {
        "does not list its inputs (it was written by an older shopstream, whose model took \
         10 dense inputs)"
            .to_string()
    } else {
        format!("takes the inputs {}", header.inputs.join(", "))
    };
    Err(format(
        path,
        format!(
            "the model {theirs}, and this build's model takes {} ({FIELDS} id fields, {DENSE} \
             dense inputs): train one with this build, e.g. by replaying the topics into a new \
             store (`shopstream replay`, docs/operations.md)",
            ours.join(", ")
        ),
    ))
}

/// Reads only the header of a model file (for `shopstream model inspect`).
pub fn read_header(path: &Path) -> Result<ModelHeader, ModelFileError> {
    let file = std::fs::File::open(path).map_err(io(path))?;
    read_header_from(path, &mut BufReader::new(file))
}

fn read_header_from(path: &Path, input: &mut impl BufRead) -> Result<ModelHeader, ModelFileError> {
    let mut magic = String::new();
    input.read_line(&mut magic).map_err(io(path))?;
    if magic.trim_end() != MAGIC {
        return Err(format(path, format!("first line is not `{MAGIC}`")));
    }
    let mut json = String::new();
    input.read_line(&mut json).map_err(io(path))?;
    serde_json::from_str(&json).map_err(|e| format(path, format!("header: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shopstream_config::ModelConfig;

    /// A fresh model of 2^`bits` embedding rows saved as `m.ssm` in `dir`: (its path, it).
    fn saved(dir: &tempfile::TempDir, bits: u32) -> (std::path::PathBuf, Trainer) {
        let path = dir.path().join("m.ssm");
        let trainer = Trainer::new(&ModelConfig {
            embedding_bits: bits,
            ..ModelConfig::default()
        });
        trainer.save(&path).expect("save");
        (path, trainer)
    }

    #[test]
    fn save_then_load_gives_the_same_model_and_corruption_is_detected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, trainer) = saved(&dir, 8);
        let (loaded, header) = Trainer::load(&path).expect("load");
        assert_eq!(loaded.model_bytes(), trainer.model_bytes());
        assert_eq!(header.blocks.len(), 13);
        assert_eq!(read_header(&path).expect("header").config.embedding_bits, 8);
        let bytes = std::fs::read(&path).expect("read");
        std::fs::write(&path, &bytes[..bytes.len() - 100]).expect("truncate");
        let err = Trainer::load(&path).expect_err("truncated file must fail");
        assert!(err.to_string().contains("truncated"), "{err}");
        std::fs::write(&path, b"hello\n").expect("write");
        assert!(Trainer::load(&path).is_err());
    }

    #[test]
    fn a_header_claiming_huge_blocks_is_an_error_not_an_abort() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, _) = saved(&dir, 4);
        let text = String::from_utf8_lossy(&std::fs::read(&path).expect("read")).into_owned();
        let start = text
            .find("[\"params\",")
            .expect("params block in the header")
            + 10;
        let end = start + text[start..].find(']').expect("end of the pair");
        let mut bytes = std::fs::read(&path).expect("read");
        let huge = usize::MAX / 4;
        let patched = format!("{huge}");
        bytes.splice(start..end, patched.bytes());
        std::fs::write(&path, &bytes).expect("write");
        for load in [Trainer::load, Trainer::load_serving] {
            let err = load(&path).expect_err("a damaged header must fail");
            assert!(err.to_string().contains("truncated"), "{err}");
        }
    }

    /// Guards the upgrade path: a model file of another build's inputs (or of a build
    /// before inputs were recorded) is refused with what it takes and what to do, not
    /// with a shape mismatch.
    #[test]
    fn a_model_file_of_other_inputs_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, _) = saved(&dir, 4);
        assert_eq!(read_header(&path).expect("header").inputs, model_inputs());
        // The magic and JSON lines, then the arrays.
        let bytes = std::fs::read(&path).expect("read");
        let arrays_at = 1 + bytes
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\n')
            .nth(1)
            .expect("two header lines")
            .0;
        let header = std::str::from_utf8(&bytes[..arrays_at]).expect("the header is text");
        let listed = format!(
            ",\"inputs\":{}",
            serde_json::to_string(&model_inputs()).expect("json")
        );
        assert!(
            header.contains(&listed),
            "the header lists the inputs: {header}"
        );
        let older = header.replacen(&listed, "", 1);
        let other = header.replacen("\"user_category_exposure\"", "\"user_category_share\"", 1);
        for (header, says) in [
            (older, "does not list its inputs"),
            (other, "takes the inputs user, item, "),
        ] {
            let edited = dir.path().join("edited.ssm");
            let mut file = header.into_bytes();
            file.extend_from_slice(&bytes[arrays_at..]);
            std::fs::write(&edited, &file).expect("write");
            let message = Trainer::load(&edited)
                .expect_err("other inputs must be refused")
                .to_string();
            assert!(message.contains(says), "{message}");
            assert!(message.contains("user_category_exposure"), "{message}");
            assert!(message.contains("shopstream replay"), "{message}");
        }
    }

    #[test]
    fn a_serving_copy_loads_only_as_a_serving_model() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("serving.bin");
        let serving = Trainer::new(&ModelConfig {
            embedding_bits: 8,
            ..ModelConfig::default()
        })
        .serving_copy();
        serving.save(&path).expect("save");
        let (loaded, _) = Trainer::load_serving(&path).expect("load as serving");
        assert_eq!(loaded.model_bytes(), serving.model_bytes());
        // Without optimiser state it must never be trained: the training load refuses it.
        let err = Trainer::load(&path).expect_err("a serving copy is not a training model");
        assert!(err.to_string().contains("blocks do not match"), "{err}");
    }
}
