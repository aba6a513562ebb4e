//! The model broadcast of a group run: every instance serves with the newest model the
//! coordinator trained, not only the coordinator.
//!
//! The model (16 MB of embedding table) goes by reference. The coordinator writes each
//! model it publishes for serving to `models/model-v<version>.bin` in the checkpoint
//! directory (default `<store.path>/_checkpoints`, which every instance of a group
//! reaches) and then publishes a small
//! [`ModelReference`] on the compacted internal topic `<group>.model`. Every instance
//! follows that topic and loads the newest model it names. Between a window closing and
//! an instance serving its model lie at most [`BROADCAST_EVERY`] plus the global stage's
//! own publication interval (1 s) plus the time to write and load the file; each
//! instance exports the delay it saw (`shopstream_model_broadcast_delay_seconds`).
//!
//! Serving never changes the store or the model (predictions are published, not stored),
//! so which model an instance serves with leaves the outputs of a run as they are.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shopstream_config::Config;
use shopstream_features::protocol;
use shopstream_kafka::latest::{LatestReader, LatestWriter};
use shopstream_trainer::Trainer;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::super::PipelineError;

/// The key of the broadcast's records (one key: compaction keeps the newest).
const KEY: &str = "model";

/// A model is broadcast at most this often (writing 16 MB more often buys little).
pub(super) const BROADCAST_EVERY: Duration = Duration::from_secs(2);

/// Model files kept: an instance a few references behind still finds the one it reads.
const KEEP_FILES: usize = 4;

/// What the coordinator publishes on `<group>.model`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct ModelReference {
    /// The model's version.
    pub version: u64,
    /// Its file, relative to the broadcast directory (each instance may mount the shared
    /// directory elsewhere).
    pub file: String,
    /// When it was published, epoch ms (for the broadcast delay).
    pub published_ms: i64,
}

/// The directory of broadcast models: `models/` in the checkpoint directory, state that
/// every instance of a group reaches and that is not part of the store's data.
fn models_dir(config: &Config) -> PathBuf {
    config
        .checkpoint
        .dir_for(&config.store.path)
        .join(MODELS_DIR)
}

/// The directory of broadcast models inside the checkpoint directory.
const MODELS_DIR: &str = "models";

fn file_name(version: u64) -> String {
    format!("model-v{version:012}.bin")
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The coordinator's side: broadcasts each model `models` receives (the models its global
/// stage publishes for serving), at most every [`BROADCAST_EVERY`], until `cancel`. A
/// model that cannot be written or published is reported and skipped: the next one is
/// tried, and serving goes on with the model each instance has.
pub(super) async fn publish(
    config: Config,
    topic: String,
    mut models: watch::Receiver<Arc<Trainer>>,
    cancel: CancellationToken,
) -> Result<(), PipelineError> {
    let writer = LatestWriter::create(&config.kafka, &topic, KEY).await?;
    let dir = models_dir(&config);
    std::fs::create_dir_all(&dir).map_err(|e| {
        PipelineError::Internal(format!(
            "creating the model broadcast directory {}: {e}",
            dir.display()
        ))
    })?;
    let mut last = 0;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            changed = models.changed() => if changed.is_err() {
                return Ok(());
            },
        }
        let model = Arc::clone(&models.borrow_and_update());
        if model.version() <= last {
            continue;
        }
        match broadcast(&writer, &dir, model).await {
            Ok(version) => last = version,
            Err(e) => tracing::warn!(error = %e, "model broadcast failed; trying the next model"),
        }
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            () = tokio::time::sleep(BROADCAST_EVERY) => {}
        }
    }
}

/// Writes `model` to its file, publishes its reference and prunes old files.
async fn broadcast(
    writer: &LatestWriter,
    dir: &Path,
    model: Arc<Trainer>,
) -> Result<u64, PipelineError> {
    let version = model.version();
    let file = file_name(version);
    let path = dir.join(&file);
    let written = {
        let dir = dir.to_path_buf();
        tokio::task::spawn_blocking(move || -> Result<(), String> {
            model.save(&path).map_err(|e| e.to_string())?;
            prune(&dir, KEEP_FILES).map_err(|e| format!("pruning {}: {e}", dir.display()))
        })
        .await
        .map_err(|e| PipelineError::Internal(format!("model broadcast task: {e}")))?
    };
    written.map_err(PipelineError::Internal)?;
    let reference = ModelReference {
        version,
        file,
        published_ms: now_ms(),
    };
    writer.publish(&protocol::encode(&reference)?).await?;
    tracing::debug!(version, "model broadcast");
    Ok(version)
}

/// Deletes all but the newest `keep` model files of `dir` (names sort by version).
fn prune(dir: &Path, keep: usize) -> std::io::Result<()> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("model-v") && n.ends_with(".bin"))
        })
        .collect();
    files.sort();
    let old = files.len().saturating_sub(keep);
    for path in &files[..old] {
        std::fs::remove_file(path)?;
    }
    Ok(())
}

/// Every instance's side: follows `<group>.model` and hands each model newer than the one
/// served to `models` until `cancel`. `delay_ms` is set to the delay of the last model
/// taken (published to loaded).
pub(super) async fn follow(
    config: Config,
    topic: String,
    models: watch::Sender<Arc<Trainer>>,
    delay_ms: Arc<AtomicI64>,
    cancel: CancellationToken,
) -> Result<(), PipelineError> {
    let mut reader = LatestReader::open(&config.kafka, &topic).await?;
    let dir = models_dir(&config);
    loop {
        let value = tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            value = reader.next() => value?,
        };
        let mut newest: ModelReference = protocol::decode(&value)?;
        // A reader behind (at start, the whole topic) loads only the newest queued.
        while let Ok(value) = tokio::time::timeout(Duration::ZERO, reader.next()).await {
            let reference: ModelReference = protocol::decode(&value?)?;
            if reference.version > newest.version {
                newest = reference;
            }
        }
        if newest.version <= models.borrow().version() {
            continue;
        }
        let path = dir.join(&newest.file);
        let loaded = tokio::task::spawn_blocking(move || Trainer::load_serving(&path))
            .await
            .map_err(|e| PipelineError::Internal(format!("model load task: {e}")))?;
        match loaded {
            Ok((trainer, _)) => {
                let version = trainer.version();
                let taken = models.send_if_modified(|current| {
                    let newer = version > current.version();
                    if newer {
                        *current = Arc::new(trainer);
                    }
                    newer
                });
                if taken {
                    delay_ms.store(now_ms() - newest.published_ms, Ordering::Relaxed);
                    tracing::debug!(version, "serving the broadcast model");
                }
            }
            // Pruned already (this instance fell behind): the next reference names a newer.
            Err(e) => tracing::warn!(
                error = %e,
                version = newest.version,
                "could not load a broadcast model; waiting for the next"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pruning_keeps_the_newest_model_files_and_nothing_else_is_touched() {
        let dir = tempfile::tempdir().expect("tempdir");
        for version in [3_u64, 10, 1, 200, 7] {
            std::fs::write(dir.path().join(file_name(version)), b"m").expect("write");
        }
        std::fs::write(dir.path().join("notes.txt"), b"x").expect("write");
        prune(dir.path(), 2).expect("prune");
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [file_name(10), file_name(200), "notes.txt".into()]);
    }

    #[test]
    fn a_reference_survives_the_protocol() {
        let reference = ModelReference {
            version: 42,
            file: file_name(42),
            published_ms: 1_700_000_000_000,
        };
        let bytes = protocol::encode(&reference).expect("encode");
        assert_eq!(
            protocol::decode::<ModelReference>(&bytes).expect("decode"),
            reference
        );
    }
}
