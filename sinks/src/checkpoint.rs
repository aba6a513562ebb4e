//! Checkpoint files: a versioned, checksummed, atomically written snapshot of the job's
//! state (whatever serializable payload the pipeline hands over), the last K kept.
//!
//! File `DIR/checkpoint-<seq:020>.ckpt`:
//!
//! ```text
//! SHOPSTREAM-CHECKPOINT 2\n      magic and format version
//! <seq> <payload bytes> <fnv1a-64 of payload, hex>\n
//! payload                         zstd( MessagePack( state ) )
//! ```
//!
//! The directory is a [`Storage`]: locally, a file is written to a hidden temporary name,
//! fsynced, renamed, directory fsynced; in a bucket, it is one upload. A crash leaves
//! either the previous set or the new file complete. Loading walks from the newest file
//! down and uses the first one whose header, length, checksum and decoding all hold; every
//! file skipped is reported with why, so a truncated or corrupted checkpoint costs one
//! checkpoint interval of reprocessing, not the job.
//!
//! MessagePack rather than JSON: the state has maps keyed by tuples and millions of
//! floats (the model's embedding and optimiser moments), which it stores exactly and
//! compactly; the model's arrays go in as one byte string each (little-endian f64).

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;
use shopstream_ingest::hash::fnv1a;

use crate::atomic::IoError;
use crate::error::StoreError;
use crate::storage::Storage;

/// First line of every checkpoint file.
const MAGIC: &str = "SHOPSTREAM-CHECKPOINT";
/// Format version written (and the only one read). 2: rolling counters keep only the
/// buckets that counted something (the feature state's encoding changed).
const FORMAT: u32 = 2;

/// zstd level of the payload. Most of a checkpoint is the model's f64 arrays, which no
/// level shrinks much: on the demo's 64.5 MB state (`zstd -T1`), level 1 wrote 18.54 MB in
/// 0.094 s and level 3 18.51 MB in 0.124 s. Reading does not depend on it.
const ZSTD_LEVEL: i32 = 1;

/// Why a checkpoint could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The file system refused. External.
    #[error(
        "cannot write checkpoint {path}: {source}; check that checkpoint.dir is writable and the disk has room"
    )]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Checkpoints exist but none can be used. External (damaged storage) or user (files
    /// from another version).
    #[error(
        "no usable checkpoint in {dir}: {reasons}; restore one from a backup, or move the directory away to start from the committed Kafka offsets with empty state"
    )]
    AllUnusable {
        /// The checkpoint directory.
        dir: PathBuf,
        /// Why each file was refused.
        reasons: String,
    },
    /// The state could not be encoded. Internal.
    #[error("cannot encode the checkpoint state: {0}")]
    Encode(String),
    /// The checkpoint directory (a bucket) could not be read or written. External.
    #[error("checkpoint storage: {0}")]
    Store(#[from] StoreError),
}

/// A checkpoint file that was not used, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub reason: String,
}

/// What loading found.
#[derive(Debug)]
pub struct Loaded<T> {
    /// Sequence number of the checkpoint used.
    pub seq: u64,
    /// Its file.
    pub path: PathBuf,
    /// The state.
    pub state: T,
    /// Newer files that were unusable (corrupt, truncated, other format).
    pub skipped: Vec<Skipped>,
}

impl IoError for CheckpointError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

fn file_name(seq: u64) -> String {
    format!("checkpoint-{seq:020}.ckpt")
}

/// Checkpoint files in `dir`, newest first: (seq, key).
fn list_keys(dir: &Storage) -> Result<Vec<(u64, String)>, CheckpointError> {
    let mut files = Vec::new();
    for listed in dir.list("")? {
        if let Some(seq) = listed
            .key
            .strip_prefix("checkpoint-")
            .and_then(|s| s.strip_suffix(".ckpt"))
            .and_then(|s| s.parse::<u64>().ok())
        {
            files.push((seq, listed.key));
        }
    }
    files.sort_by_key(|f| std::cmp::Reverse(f.0));
    Ok(files)
}

/// Checkpoint files in `dir`, newest first: (seq, location).
pub fn list(dir: &Storage) -> Result<Vec<(u64, PathBuf)>, CheckpointError> {
    Ok(list_keys(dir)?
        .into_iter()
        .map(|(seq, key)| (seq, dir.location(&key)))
        .collect())
}

/// Writes checkpoint `seq` of `state` into `dir` atomically, then deletes all but the
/// newest `keep` checkpoints. Returns the file and its size.
pub fn write<T: Serialize>(
    dir: &Storage,
    seq: u64,
    state: &T,
    keep: usize,
) -> Result<(PathBuf, u64), CheckpointError> {
    write_encoded(dir, seq, &encode(state)?, keep)
}

/// `state` encoded as a checkpoint holds it: the part of [`write`] that needs the state,
/// so that the rest (compression, the file) can happen elsewhere while the state moves on.
pub fn encode<T: Serialize>(state: &T) -> Result<Vec<u8>, CheckpointError> {
    // Named fields: several contract types skip empty optional fields when serializing,
    // which the positional (array) encoding cannot represent.
    rmp_serde::to_vec_named(state).map_err(|e| CheckpointError::Encode(e.to_string()))
}

/// Writes checkpoint `seq` from its [`encode`]d state, like [`write`].
pub fn write_encoded(
    dir: &Storage,
    seq: u64,
    packed: &[u8],
    keep: usize,
) -> Result<(PathBuf, u64), CheckpointError> {
    let payload = zstd::bulk::compress(packed, ZSTD_LEVEL)
        .map_err(|e| CheckpointError::Encode(format!("compress: {e}")))?;
    let header = format!(
        "{MAGIC} {FORMAT}\n{seq} {} {:016x}\n",
        payload.len(),
        fnv1a(&payload)
    );
    let name = file_name(seq);
    let mut file = Vec::with_capacity(header.len() + payload.len());
    file.extend_from_slice(header.as_bytes());
    file.extend_from_slice(&payload);
    let size = file.len() as u64;
    dir.put(&name, file.into(), Some("checkpoint.temp_written"))?;
    // Another writer of this directory (a partition's old and new owner) may have pruned
    // one already: deleting what is gone is no error.
    for (_, old) in list_keys(dir)?.into_iter().skip(keep.max(1)) {
        dir.delete(&old)?;
    }
    Ok((dir.location(&name), size))
}

/// Reads one checkpoint file.
fn read_one<T: DeserializeOwned>(dir: &Storage, key: &str, seq: u64) -> Result<T, String> {
    let bytes = dir
        .get(key)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "deleted while being read".to_string())?;
    let mut lines = bytes.splitn(3, |b| *b == b'\n');
    let magic = lines.next().unwrap_or_default();
    let meta = lines.next().unwrap_or_default();
    let payload = lines.next().unwrap_or_default();
    let magic = std::str::from_utf8(magic).map_err(|_| "not a checkpoint file".to_string())?;
    match magic.split_once(' ') {
        Some((MAGIC, version)) if version == FORMAT.to_string() => {}
        Some((MAGIC, version)) => {
            return Err(format!(
                "format {version}, this build reads format {FORMAT}"
            ));
        }
        _ => return Err("not a checkpoint file (bad magic)".to_string()),
    }
    let meta = std::str::from_utf8(meta).map_err(|_| "damaged header".to_string())?;
    let fields: Vec<&str> = meta.split(' ').collect();
    let [file_seq, len, sum] = fields.as_slice() else {
        return Err("damaged header".to_string());
    };
    if file_seq.parse::<u64>().ok() != Some(seq) {
        return Err(format!("header names checkpoint {file_seq}"));
    }
    let len: usize = len.parse().map_err(|_| "damaged header".to_string())?;
    if payload.len() != len {
        return Err(format!(
            "truncated: {} of {len} payload bytes",
            payload.len()
        ));
    }
    if format!("{:016x}", fnv1a(payload)) != *sum {
        return Err("checksum mismatch (corrupted)".to_string());
    }
    // Decoded while decompressing, without holding the whole decompressed payload.
    let decoder = zstd::Decoder::with_buffer(payload).map_err(|e| format!("decompress: {e}"))?;
    let mut reader = Decompressing {
        decoder,
        failed: None,
    };
    rmp_serde::from_read(&mut reader).map_err(|e| match reader.failed.take() {
        Some(e) => format!("decompress: {e}"),
        None => format!("decode: {e}"),
    })
}

/// A zstd stream that remembers a decompression failure, so that it is reported as such
/// rather than as the decoding error it surfaces as.
struct Decompressing<'a> {
    decoder: zstd::Decoder<'static, &'a [u8]>,
    failed: Option<String>,
}

impl Read for Decompressing<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.decoder
            .read(buf)
            .inspect_err(|e| self.failed = Some(e.to_string()))
    }
}

/// The newest usable checkpoint in `dir`, or `None` when there is none (a first start).
pub fn load_latest<T: DeserializeOwned>(
    dir: &Storage,
) -> Result<Option<Loaded<T>>, CheckpointError> {
    load_latest_accepted(dir, |_: &T| Ok(()))
}

/// Like [`load_latest`], also passing over (into `skipped`, with the reason it gives)
/// every state `accept` refuses: the newest usable one that `accept` takes.
pub fn load_latest_accepted<T: DeserializeOwned>(
    dir: &Storage,
    mut accept: impl FnMut(&T) -> Result<(), String>,
) -> Result<Option<Loaded<T>>, CheckpointError> {
    let mut skipped = Vec::new();
    for (seq, key) in list_keys(dir)? {
        let path = dir.location(&key);
        match read_one(dir, &key, seq).and_then(|state| accept(&state).map(|()| state)) {
            Ok(state) => {
                return Ok(Some(Loaded {
                    seq,
                    path,
                    state,
                    skipped,
                }));
            }
            Err(reason) => skipped.push(Skipped { path, reason }),
        }
    }
    if skipped.is_empty() {
        return Ok(None);
    }
    // Every file is unusable: starting from nothing would silently reprocess (or, past
    // committed offsets, lose) everything, so the operator decides.
    Err(CheckpointError::AllUnusable {
        dir: PathBuf::from(dir.root_display()),
        reasons: skipped
            .iter()
            .map(|s| format!("{}: {}", s.path.display(), s.reason))
            .collect::<Vec<_>>()
            .join("; "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct State {
        positions: BTreeMap<(u8, i32), i64>,
        weights: Vec<f64>,
    }

    fn state(n: i64) -> State {
        State {
            positions: BTreeMap::from([((0, 1), n), ((2, 0), n + 1)]),
            weights: vec![0.1, -2.5e-300, f64::MAX, n as f64],
        }
    }

    #[test]
    fn round_trips_exactly_and_keeps_the_last_k() {
        let dir = tempfile::tempdir().expect("tempdir");
        for seq in 1..=5 {
            write(&Storage::local(dir.path()), seq, &state(seq as i64), 3).expect("write");
        }
        let seqs: Vec<u64> = list(&Storage::local(dir.path()))
            .expect("list")
            .iter()
            .map(|f| f.0)
            .collect();
        assert_eq!(seqs, vec![5, 4, 3]);
        let loaded: Loaded<State> = load_latest(&Storage::local(dir.path()))
            .expect("load")
            .expect("some");
        assert_eq!((loaded.seq, loaded.state), (5, state(5)));
        assert!(loaded.skipped.is_empty());
    }

    #[test]
    fn a_truncated_or_corrupted_checkpoint_falls_back_to_the_previous_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        for seq in 1..=3 {
            write(&Storage::local(dir.path()), seq, &state(seq as i64), 3).expect("write");
        }
        let files = list(&Storage::local(dir.path())).expect("list");
        // Newest truncated, the one before corrupted in its payload.
        let newest = std::fs::read(&files[0].1).expect("read");
        std::fs::write(&files[0].1, &newest[..newest.len() - 7]).expect("truncate");
        let mut middle = std::fs::read(&files[1].1).expect("read");
        let last = middle.len() - 1;
        middle[last] ^= 0x55;
        std::fs::write(&files[1].1, &middle).expect("corrupt");
        let loaded: Loaded<State> = load_latest(&Storage::local(dir.path()))
            .expect("load")
            .expect("some");
        assert_eq!((loaded.seq, loaded.state), (1, state(1)));
        let reasons: Vec<&str> = loaded.skipped.iter().map(|s| s.reason.as_str()).collect();
        assert!(reasons[0].starts_with("truncated"), "{reasons:?}");
        assert!(reasons[1].contains("checksum"), "{reasons:?}");
    }

    /// Guards "a stale writer's newest checkpoint does not hide the usable ones": a state
    /// the caller refuses is passed over, with its reason, for the one before.
    #[test]
    fn a_refused_checkpoint_falls_back_to_the_one_before_with_its_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        for seq in 1..=3 {
            write(&Storage::local(dir.path()), seq, &state(seq as i64), 3).expect("write");
        }
        let refuse_above_1 = |s: &State| match s.positions[&(0, 1)] {
            1 => Ok(()),
            n => Err(format!("refused {n}")),
        };
        let loaded: Loaded<State> =
            load_latest_accepted(&Storage::local(dir.path()), refuse_above_1)
                .expect("load")
                .expect("some");
        assert_eq!((loaded.seq, loaded.state), (1, state(1)));
        let reasons: Vec<&str> = loaded.skipped.iter().map(|s| s.reason.as_str()).collect();
        assert_eq!(reasons, ["refused 3", "refused 2"]);
        // Every one refused: an error naming them, as when every file is unusable.
        let none = load_latest_accepted(&Storage::local(dir.path()), |_: &State| {
            Err("no".to_string())
        });
        assert!(matches!(none, Err(CheckpointError::AllUnusable { .. })));
    }

    /// Guards restart-from-checkpoint: the whole feature stage and trainer, checkpointed
    /// mid-stream and restored, go on to produce exactly what the uninterrupted ones do.
    #[test]
    fn restored_feature_stage_and_trainer_continue_identically() {
        use shopstream_config::{ModelConfig, PipelineConfig};
        use shopstream_features::FeaturePipeline;
        use shopstream_ingest::decode::{DecodeLimits, decode};
        use shopstream_ingest::generator::{Generator, GeneratorOptions, world::WorldSize};
        use shopstream_ingest::record::RecordMeta;
        use shopstream_trainer::Trainer;

        #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
        struct Job {
            features: FeaturePipeline,
            trainer: Trainer,
        }
        let model = ModelConfig {
            embedding_bits: 10,
            ..ModelConfig::default()
        };
        let mut job = Job {
            features: FeaturePipeline::new(&PipelineConfig::default()),
            trainer: Trainer::new(&model),
        };
        let events: Vec<_> = Generator::new(GeneratorOptions {
            seed: 3,
            max_events: Some(4_000),
            sessions_per_sec: 0.5,
            size: WorldSize {
                users: 80,
                items: 60,
                categories: 5,
            },
            ..GeneratorOptions::default()
        })
        .filter_map(|m| {
            decode(m.topic, None, &m.payload, DecodeLimits::default())
                .ok()
                .map(|e| (m.topic, e))
        })
        .collect();
        let step = |job: &mut Job, from: usize, to: usize| -> Vec<(i64, usize, u64)> {
            let mut out = Vec::new();
            for (offset, (topic, event)) in events.iter().enumerate().take(to).skip(from) {
                // Four partitions, like a real topic, so per-partition state and the
                // watermark's map are exercised.
                let meta = RecordMeta {
                    topic: *topic,
                    partition: (offset % 4) as i32,
                    offset: offset as i64,
                };
                let _ = job.features.ingest(meta, event.clone());
                for w in job.features.close_ready() {
                    job.trainer.train_window(&w.examples);
                    out.push((w.start, w.examples.len(), job.trainer.version()));
                }
            }
            out
        };
        let half = events.len() / 2;
        for topic in shopstream_ingest::event::InputTopic::ALL {
            for p in 0..4 {
                job.features.register_partition(topic, p);
            }
        }
        step(&mut job, 0, half);
        // Partition 3 of every topic has been read to its end.
        for topic in shopstream_ingest::event::InputTopic::ALL {
            job.features.partition_at_end(topic, 3);
        }
        let dir = tempfile::tempdir().expect("tempdir");
        write(&Storage::local(dir.path()), 1, &job, 2).expect("write");
        let mut restored: Loaded<Job> = load_latest(&Storage::local(dir.path()))
            .expect("load")
            .expect("some");
        assert!(restored.state == job, "restored state differs");
        let expected = step(&mut job, half, events.len());
        let got = step(&mut restored.state, half, events.len());
        assert!(!expected.is_empty());
        assert_eq!(got, expected);
        assert!(restored.state == job, "diverged after the restore");
    }

    /// The restart as the pipeline does it: partitions 1-3 read to their end before the
    /// checkpoint (so their events wait in open windows), partition 0 half read; after the
    /// restore every partition is registered again and the finished ones released again.
    #[test]
    fn restored_stage_with_finished_partitions_loses_no_example() {
        use shopstream_config::PipelineConfig;
        use shopstream_features::FeaturePipeline;
        use shopstream_ingest::decode::{DecodeLimits, decode};
        use shopstream_ingest::event::InputTopic;
        use shopstream_ingest::generator::{Generator, GeneratorOptions, world::WorldSize};
        use shopstream_ingest::record::RecordMeta;

        let generated: Vec<_> = Generator::new(GeneratorOptions {
            seed: 22,
            max_events: Some(5_000),
            sessions_per_sec: 0.12,
            size: WorldSize {
                users: 250,
                items: 300,
                categories: 10,
            },
            ..GeneratorOptions::default()
        })
        .collect();
        // Partition by key like the producer would (any stable mapping will do here).
        let part = |key: &str| (key.bytes().map(u32::from).sum::<u32>() % 4) as i32;
        let mut by_partition: BTreeMap<(InputTopic, i32), Vec<_>> = BTreeMap::new();
        for m in &generated {
            let Ok(event) = decode(m.topic, None, &m.payload, DecodeLimits::default()) else {
                continue;
            };
            let list = by_partition.entry((m.topic, part(&m.key))).or_default();
            let offset = list.len() as i64;
            list.push((
                RecordMeta {
                    topic: m.topic,
                    partition: part(&m.key),
                    offset,
                },
                event,
            ));
        }
        let register = |f: &mut FeaturePipeline| {
            for (topic, p) in by_partition.keys() {
                f.register_partition(*topic, *p);
            }
        };
        // Examples released by the windows ready to close.
        let drain = |f: &mut FeaturePipeline| -> usize {
            f.close_ready().iter().map(|w| w.examples.len()).sum()
        };
        let feed = |f: &mut FeaturePipeline,
                    items: &[(RecordMeta, shopstream_ingest::event::Event)]| {
            let mut n = 0;
            for (meta, event) in items {
                let _ = f.ingest(*meta, event.clone());
                n += drain(f);
            }
            n
        };
        let run = |checkpoint_at: Option<usize>| -> usize {
            let mut f = FeaturePipeline::new(&PipelineConfig::default());
            register(&mut f);
            let mut examples = 0;
            // Everything but clicks/0 first, each partition then at its end.
            for (key, items) in &by_partition {
                if *key != (InputTopic::Clicks, 0) {
                    examples += feed(&mut f, items);
                    f.partition_at_end(key.0, key.1);
                    examples += drain(&mut f);
                }
            }
            let slow = &by_partition[&(InputTopic::Clicks, 0)];
            let cut = checkpoint_at.unwrap_or(0).min(slow.len());
            examples += feed(&mut f, &slow[..cut]);
            if checkpoint_at.is_some() {
                let dir = tempfile::tempdir().expect("tempdir");
                write(&Storage::local(dir.path()), 1, &f, 1).expect("write");
                f = load_latest::<FeaturePipeline>(&Storage::local(dir.path()))
                    .expect("load")
                    .expect("some")
                    .state;
                register(&mut f);
                for key in by_partition.keys() {
                    if *key != (InputTopic::Clicks, 0) {
                        f.partition_at_end(key.0, key.1);
                        examples += drain(&mut f);
                    }
                }
            }
            examples += feed(&mut f, &slow[cut..]);
            examples += f.finish().iter().map(|w| w.examples.len()).sum::<usize>();
            examples
        };
        let expected = run(None);
        for at in [1, 50, 107, 400] {
            assert_eq!(
                run(Some(at)),
                expected,
                "checkpoint after {at} events of clicks/0"
            );
        }
    }

    #[test]
    fn no_checkpoint_is_none_and_only_unusable_ones_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(
            load_latest::<State>(&Storage::local(dir.path()))
                .expect("load")
                .is_none()
        );
        std::fs::write(dir.path().join(file_name(9)), b"hello\n").expect("write");
        let err = load_latest::<State>(&Storage::local(dir.path())).expect_err("unusable");
        assert!(err.to_string().contains("bad magic"), "{err}");
    }
}
