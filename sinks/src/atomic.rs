//! Atomic file replacement, shared by the data files, the commit records and the
//! checkpoints: write to a hidden temporary name beside the target, fsync it, rename it
//! into place, fsync the directory. A crash leaves either the old file or the new one
//! complete, plus at worst a `.NAME.<writer>.tmp` that readers skip (they ignore
//! dot-files).

use std::fs::File;
use std::io;
use std::path::Path;

/// An error type with a variant for a failed file-system call on a path.
pub(crate) trait IoError {
    /// The error for `source`, raised on `path`.
    fn io(path: &Path, source: io::Error) -> Self;
}

/// Temporary files written by this process so far (their names differ).
static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Writes `dir/name` (at `path`) atomically: creates `dir/.NAME.<writer>.tmp` (a name of
/// this write's own, so that two writers of one file, such as the old and the new owner
/// of a partition writing its checkpoint, never write into each other's), lets `fill` write
/// into it (`fill` also gets the temporary path, for its errors), fsyncs it, arms
/// `failpoint` (when given) with the complete file still under its temporary name, renames
/// it to `path` and fsyncs `dir` so that the rename is durable. `dir` must exist. Returns
/// what `fill` returned.
pub(crate) fn write_atomic<T, E: IoError>(
    dir: &Path,
    path: &Path,
    name: &str,
    failpoint: Option<&str>,
    fill: impl FnOnce(&mut File, &Path) -> Result<T, E>,
) -> Result<T, E> {
    // Hidden while incomplete: readers (pyarrow, polars, DuckDB) skip dot-files.
    let write = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.{}-{write}.tmp", std::process::id()));
    let mut file = File::create(&tmp).map_err(|e| E::io(&tmp, e))?;
    let out = fill(&mut file, &tmp)?;
    file.sync_all().map_err(|e| E::io(&tmp, e))?;
    drop(file);
    if let Some(point) = failpoint {
        crate::failpoint::hit(point);
    }
    std::fs::rename(&tmp, path).map_err(|e| E::io(path, e))?;
    // Make the rename itself durable.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| E::io(dir, e))?;
    Ok(out)
}

/// Creates `dir/name` (at `path`) holding `bytes` only if nothing has that name: writes
/// and fsyncs a temporary file as [`write_atomic`] does, then links it to `path`, which
/// the OS refuses when `path` exists (so of two writers exactly one creates it, and a
/// reader never sees a part). Whether this call created it.
pub(crate) fn create_new<E: IoError>(
    dir: &Path,
    path: &Path,
    name: &str,
    bytes: &[u8],
) -> Result<bool, E> {
    use std::io::Write;
    let write = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.{}-{write}.tmp", std::process::id()));
    let mut file = File::create(&tmp).map_err(|e| E::io(&tmp, e))?;
    file.write_all(bytes).map_err(|e| E::io(&tmp, e))?;
    file.sync_all().map_err(|e| E::io(&tmp, e))?;
    drop(file);
    let linked = std::fs::hard_link(&tmp, path);
    std::fs::remove_file(&tmp).map_err(|e| E::io(&tmp, e))?;
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(E::io(path, e)),
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| E::io(dir, e))?;
    Ok(true)
}
