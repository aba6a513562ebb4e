//! The model broadcast of a group run: every instance serves with the newest model the
//! coordinator trained, not only the coordinator.
//!
//! The model (16 MB of embedding table) goes by reference. The coordinator writes each
//! model it publishes for serving to `models/<group id>/model-v<version>.bin` in the
//! checkpoint directory (default `<store.path>/_checkpoints`, which every instance of a
//! group reaches; it keeps its newest 4 and deletes its files at the end) and then
//! publishes a small [`ModelReference`] on the compacted internal topic `<group>.model`.
//! Every instance follows that topic and loads the newest model it names. Between a
//! window closing and an instance serving its model lie at most the global stage's own
//! publication interval (1 s) plus [`BROADCAST_EVERY`] plus the time to write and load the
//! file; each instance exports the part from the coordinator taking the model to itself
//! serving it (`shopstream_model_broadcast_delay_seconds`).
//!
//! Serving never changes the store or the model (predictions are published, not stored),
//! so which model an instance serves with leaves the outputs of a run as they are.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use shopstream_sinks::storage::Storage;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shopstream_config::Config;
use shopstream_features::protocol;
use shopstream_kafka::latest::{LatestError, LatestReader, LatestWriter};
use shopstream_trainer::Trainer;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::super::PipelineError;
use super::now_ms;

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
    /// When the coordinator took it for broadcast, epoch ms (for the broadcast delay,
    /// which so includes writing the file).
    pub taken_ms: i64,
}

/// The directory of a group's broadcast models: `models/<group id>/` in the checkpoint
/// directory, state that every instance of the group reaches, not part of the store's
/// data. One per group, so that groups sharing a checkpoint directory (or a new run of a
/// backfill) never see each other's files.
fn models_path(config: &Config) -> PathBuf {
    config
        .checkpoint
        .dir_for(&config.store.path)
        .join(MODELS_DIR)
        .join(path_component(&config.kafka.group_id))
}

/// [`models_path`] opened: a local directory, or a prefix in the bucket of a bucket
/// checkpoint directory (reached with `store.options`).
fn models_dir(config: &Config) -> Result<Storage, PipelineError> {
    Storage::open(
        &models_path(config),
        &config.store.options,
        Duration::from_secs(config.store.retry_timeout_secs),
    )
    .map_err(|e| PipelineError::Internal(format!("the model broadcast directory: {e}")))
}

/// `name` as one path component: characters other than letters, digits, `.`, `_` and
/// `-` become `_`, and `.` or `..` get a leading `_`.
pub(super) fn path_component(name: &str) -> String {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if safe.is_empty() || safe == "." || safe == ".." {
        format!("_{safe}")
    } else {
        safe
    }
}

/// The directory of broadcast models inside the checkpoint directory.
const MODELS_DIR: &str = "models";

fn file_name(version: u64) -> String {
    format!("model-v{version:012}.bin")
}

/// Whether `name` is one of [`file_name`]'s.
fn is_broadcast_file(name: &str) -> bool {
    name.starts_with("model-v") && name.ends_with(".bin")
}

/// Whether `name` is the temporary file of one of [`file_name`]'s being written (a local
/// write goes to `.<name>.<writer>.tmp` and is renamed; older builds wrote
/// `model-v….tmp`): a publisher killed mid-write leaves it.
fn is_partial_broadcast_file(name: &str) -> bool {
    (name.starts_with("model-v") || name.starts_with(".model-v")) && name.ends_with(".tmp")
}

/// The coordinator's side: broadcasts each model `models` receives (the models its global
/// stage publishes for serving), at most every [`BROADCAST_EVERY`], until `cancel`. A
/// model that cannot be written or published is reported and skipped: the next one is
/// tried, and serving goes on with the model each instance has. At the end it deletes the
/// files it wrote.
pub(super) async fn publish(
    config: Config,
    topic: String,
    mut models: watch::Receiver<Arc<Trainer>>,
    cancel: CancellationToken,
) -> Result<(), PipelineError> {
    let writer = LatestWriter::create(&config.kafka, &topic, KEY).await?;
    let dir = models_dir(&config)?;
    // Only the files this publisher wrote are ever deleted (another group, or an earlier
    // run's leftovers, are not its to touch).
    let mut written: VecDeque<String> = VecDeque::new();
    let mut last = 0;
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            changed = models.changed() => if changed.is_err() {
                break;
            },
        }
        let model = Arc::clone(&models.borrow_and_update());
        if model.version() <= last {
            continue;
        }
        match broadcast(&writer, &dir, model).await {
            Ok((version, path)) => {
                last = version;
                written.push_back(path);
                while written.len() > KEEP_FILES {
                    if let Some(old) = written.pop_front() {
                        remove_if_present(&dir, &old);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "model broadcast failed; trying the next model"),
        }
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(BROADCAST_EVERY) => {}
        }
    }
    for file in written {
        remove_if_present(&dir, &file);
    }
    // Gone when empty (the last publisher of the group); kept otherwise (files of a
    // lease holder that died go with `remove_leftovers` when the run finishes).
    if let Some(local) = dir.local_root() {
        let _ = std::fs::remove_dir(local);
    }
    Ok(())
}

/// At the end of a run, by the lease holder that finished it: deletes the broadcast
/// files every publisher of the group left behind (a lease holder that died deleted none
/// of its own, and may have died writing one) and the group's directory. Only names this
/// module writes are touched.
pub(super) fn remove_leftovers(config: &Config) {
    let Ok(dir) = models_dir(config) else {
        return;
    };
    let Ok(listed) = dir.list("") else {
        return;
    };
    for object in listed {
        // Only names directly in the directory, and only the broadcast's.
        let ours = !object.key.contains('/')
            && (is_broadcast_file(&object.key) || is_partial_broadcast_file(&object.key));
        if ours {
            remove_if_present(&dir, &object.key);
        }
    }
    if let Some(local) = dir.local_root() {
        let _ = std::fs::remove_dir(local);
    }
}

/// Deletes `file` of `dir`; one already gone is fine, another failure is reported.
fn remove_if_present(dir: &Storage, file: &str) {
    if let Err(e) = dir.delete(file) {
        tracing::warn!(error = %e, path = %dir.location(file).display(), "could not delete an old broadcast model");
    }
}

/// Writes `model` to its file and publishes its reference: the version and the file.
async fn broadcast(
    writer: &LatestWriter,
    dir: &Storage,
    model: Arc<Trainer>,
) -> Result<(u64, String), PipelineError> {
    let taken_ms = now_ms();
    let version = model.version();
    let file = file_name(version);
    let saved = {
        let (dir, file) = (dir.clone(), file.clone());
        tokio::task::spawn_blocking(move || {
            let bytes = model.model_file_bytes().map_err(|e| e.to_string())?;
            dir.put(&file, bytes.into(), None)
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| PipelineError::Internal(format!("model broadcast task: {e}")))?
    };
    saved.map_err(PipelineError::Internal)?;
    let reference = ModelReference {
        version,
        file: file.clone(),
        taken_ms,
    };
    writer.publish(&protocol::encode(&reference)?).await?;
    tracing::debug!(version, "model broadcast");
    Ok((version, file))
}

/// Whether `file` names a file directly inside the broadcast directory (a reference from
/// the topic never reaches outside it).
fn is_plain_file_name(file: &str) -> bool {
    // (`file_name` is none for "", "." and ".."; a backslash separates only on Windows.)
    !file.contains('\\') && Path::new(file).file_name().is_some_and(|n| n == file)
}

/// Every instance's side: follows `<group>.model` and hands each model newer than the one
/// served to `models` until `cancel`. `delay_ms` is set to the delay of the last model
/// taken (from the coordinator taking it for broadcast to this instance serving it).
/// Nothing read from the topic stops it: a record it cannot use, a file it cannot load or
/// a read error is reported, and it goes on with the next (serving keeps the model held).
pub(super) async fn follow(
    config: Config,
    topic: String,
    models: watch::Sender<Arc<Trainer>>,
    delay_ms: Arc<AtomicI64>,
    cancel: CancellationToken,
) -> Result<(), PipelineError> {
    let mut reader = LatestReader::open(&config.kafka, &topic).await?;
    let dir = models_dir(&config)?;
    let mut newest: Option<ModelReference> = None;
    loop {
        let value = tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            value = reader.next() => value,
        };
        let mut take = |value: Result<Vec<u8>, LatestError>| match value
            .map_err(PipelineError::from)
            .and_then(|v| protocol::decode::<ModelReference>(&v).map_err(PipelineError::from))
        {
            Ok(reference) if is_plain_file_name(&reference.file) => {
                if newest
                    .as_ref()
                    .is_none_or(|n| reference.version > n.version)
                {
                    newest = Some(reference);
                }
                true
            }
            Ok(reference) => {
                tracing::warn!(file = %reference.file, "model broadcast: ignoring a reference outside the broadcast directory");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "model broadcast: cannot read a reference; going on");
                false
            }
        };
        if !take(value) {
            // (A read error: do not spin on it.)
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        }
        // A reader behind (at start, the whole topic) loads only the newest queued.
        while let Ok(value) = tokio::time::timeout(Duration::ZERO, reader.next()).await {
            take(value);
        }
        let Some(reference) = newest.take() else {
            continue;
        };
        if reference.version <= models.borrow().version() {
            continue;
        }
        let (from, file) = (dir.clone(), reference.file.clone());
        let loaded = tokio::task::spawn_blocking(move || {
            let path = from.location(&file);
            let bytes = from
                .get(&file)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("{} is gone", path.display()))?;
            Trainer::load_bytes(&bytes, &path, true).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| PipelineError::Internal(format!("model load task: {e}")))?;
        match loaded {
            Ok((trainer, _)) => {
                let version = trainer.version();
                if version > models.borrow().version() {
                    // Set first: whoever sees the new model sees its delay.
                    delay_ms.store((now_ms() - reference.taken_ms).max(0), Ordering::Relaxed);
                    models.send_if_modified(|current| {
                        let newer = version > current.version();
                        if newer {
                            *current = Arc::new(trainer);
                        }
                        newer
                    });
                    tracing::debug!(version, "serving the broadcast model");
                }
            }
            // Deleted already (this instance fell behind): the next reference names a newer.
            Err(e) => tracing::warn!(
                error = %e,
                version = reference.version,
                "could not load a broadcast model; waiting for the next"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_file_names_are_loaded() {
        assert!(is_plain_file_name(&file_name(7)));
        for bad in [
            "",
            ".",
            "..",
            "../x.bin",
            "/etc/passwd",
            "a/b.bin",
            "a\\b.bin",
        ] {
            assert!(!is_plain_file_name(bad), "{bad}");
        }
    }

    #[test]
    fn each_group_has_a_directory_of_its_own_inside_the_checkpoint_directory() {
        let mut config = Config::default();
        config.store.path = PathBuf::from("/data/store");
        config.kafka.group_id = "backfill/../2026".to_string();
        let dir = models_path(&config);
        assert_eq!(
            dir,
            PathBuf::from("/data/store/_checkpoints/models/backfill_.._2026")
        );
        config.kafka.group_id = "..".to_string();
        assert_eq!(models_path(&config).file_name().unwrap_or_default(), "_..");
    }

    #[test]
    fn the_lease_holder_that_finishes_removes_every_publishers_leftovers_and_nothing_else() {
        let root = tempfile::tempdir().expect("temp dir");
        let mut config = Config::default();
        config.store.path = root.path().join("store");
        let dir = models_path(&config);
        std::fs::create_dir_all(&dir).expect("models dir");
        // A dead lease holder's files (one it died writing), and a file that is not the
        // broadcast's.
        let partial = std::path::Path::new(&file_name(11))
            .with_extension("tmp")
            .display()
            .to_string();
        for name in [file_name(3), file_name(9), partial, "notes.txt".to_string()] {
            std::fs::write(dir.join(name), b"x").expect("write");
        }
        remove_leftovers(&config);
        let left: Vec<_> = std::fs::read_dir(&dir)
            .expect("dir kept: it is not empty")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(left, ["notes.txt"]);
        std::fs::remove_file(dir.join("notes.txt")).expect("remove");
        remove_leftovers(&config);
        assert!(!dir.exists(), "an emptied directory goes");
    }

    #[test]
    fn a_reference_survives_the_protocol() {
        let reference = ModelReference {
            version: 42,
            file: file_name(42),
            taken_ms: 1_700_000_000_000,
        };
        let bytes = protocol::encode(&reference).expect("encode");
        assert_eq!(
            protocol::decode::<ModelReference>(&bytes).expect("decode"),
            reference
        );
    }
}
