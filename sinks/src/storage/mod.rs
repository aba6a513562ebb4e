//! Where the store's objects live: a local directory, or a bucket reached through
//! `object_store` (`s3://`, `gs://`, `az://`; `file://` and plain paths are local).
//!
//! Every object has a key relative to the store root, `/`-separated
//! (`examples/date=…/hour=…/window-….parquet`, `_manifest/examples/window-….json`). The
//! calls are blocking: the store writes from blocking tasks, and the bucket's requests run
//! on a small runtime of their own, so a caller inside or outside an async runtime works
//! the same.
//!
//! - Local: a write goes to a hidden temporary name, is fsynced and renamed ([`write_atomic`]),
//!   so a crash leaves the old object or the new one; a create-only write links the
//!   complete temporary file to its name, which fails when the name exists.
//! - Bucket: an upload is atomic by itself; a create-only write is a conditional put
//!   (`PutMode::Create`, `If-None-Match: *` on S3). A request that fails for a reason that
//!   may pass (connection refused or cut, timeout, 5xx, throttling) is retried with
//!   backoff until `store.retry_timeout_secs` have passed since the first try; then the
//!   error names the endpoint and the object.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::atomic::write_atomic;
use crate::error::{StoreError, io_err};

mod bucket;

pub use bucket::retrying_now;
use bucket::{Bucket, open_bucket};

/// URL schemes that name a bucket.
const BUCKET_SCHEMES: [&str; 7] = ["s3", "s3a", "gs", "az", "abfs", "abfss", "azure"];

/// The place a store location names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A local directory (a plain path or a `file://` URL).
    Local(PathBuf),
    /// A bucket and a prefix in it: the URL as given, without a trailing `/`.
    Bucket(String),
}

impl Location {
    /// Parses `store.path`: `s3://`, `s3a://`, `gs://`, `az://`, `abfs(s)://`, `azure://`
    /// name a bucket, `file://` and anything without a scheme a local directory.
    pub fn parse(path: &Path) -> Result<Self, StoreError> {
        let text = path.to_string_lossy();
        let Some((scheme, rest)) = text.split_once("://") else {
            return Ok(Self::Local(path.to_path_buf()));
        };
        let scheme = scheme.to_ascii_lowercase();
        if scheme == "file" {
            return Ok(Self::Local(PathBuf::from(rest)));
        }
        if !BUCKET_SCHEMES.contains(&scheme.as_str()) {
            return Err(StoreError::Location {
                location: text.into_owned(),
                message: format!(
                    "the scheme {scheme}:// is not supported; use a local path, file://, s3://, gs:// or az://"
                ),
            });
        }
        if rest.trim_matches('/').is_empty() {
            return Err(StoreError::Location {
                location: text.into_owned(),
                message: "the URL names no bucket".to_string(),
            });
        }
        Ok(Self::Bucket(text.trim_end_matches('/').to_string()))
    }

    /// The location of `key` below this one, for messages and for readers that take
    /// paths (a path below a directory, a URL below a bucket prefix).
    pub fn join(&self, key: &str) -> PathBuf {
        match self {
            Self::Local(dir) => dir.join(key),
            Self::Bucket(url) => PathBuf::from(format!("{url}/{key}")),
        }
    }
}

/// The store's objects, local or in a bucket. Cheap to clone.
#[derive(Clone)]
pub struct Storage {
    backend: Arc<Backend>,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the options: they may hold secrets.
        write!(f, "Storage({})", self.root_display())
    }
}

enum Backend {
    Local(PathBuf),
    Bucket(Bucket),
}

/// An object listed below a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Its key, relative to the store root.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
}

/// What a create-only write found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// The object did not exist and now holds the bytes given.
    New,
    /// An object existed under the name; these are its bytes (unchanged).
    Existing(Bytes),
}

impl Storage {
    /// Opens the store at `path` (see [`Location::parse`]) with `options` (object_store's
    /// keys for the bucket's provider, such as `aws_endpoint` or `aws_allow_http`; on top
    /// of the standard environment: `AWS_*`, `GOOGLE_*`, `AZURE_*`). Nothing is created
    /// or contacted: writes create the directories they need, [`Storage::check`] reaches
    /// out to a bucket.
    pub fn open(
        path: &Path,
        options: &BTreeMap<String, String>,
        retry_timeout: Duration,
    ) -> Result<Self, StoreError> {
        let backend = match Location::parse(path)? {
            Location::Local(dir) => Backend::Local(dir),
            Location::Bucket(url) => Backend::Bucket(open_bucket(&url, options, retry_timeout)?),
        };
        Ok(Self {
            backend: Arc::new(backend),
        })
    }

    /// The local store at `dir` (not created: writes create the directories they need).
    pub fn local(dir: &Path) -> Self {
        Self {
            backend: Arc::new(Backend::Local(dir.to_path_buf())),
        }
    }

    /// The storage rooted at `sub` (a `/`-separated key prefix, without a trailing `/`)
    /// below this one: the same client, credentials and retry deadline.
    pub fn child(&self, sub: &str) -> Storage {
        let sub = sub.trim_matches('/');
        let backend = match &*self.backend {
            Backend::Local(dir) => Backend::Local(dir.join(sub)),
            Backend::Bucket(bucket) => {
                let mut child = bucket.clone();
                child.prefix = if bucket.prefix.is_empty() {
                    sub.to_string()
                } else {
                    format!("{}/{sub}", bucket.prefix)
                };
                child.url = format!("{}/{sub}", bucket.url);
                Backend::Bucket(child)
            }
        };
        Storage {
            backend: Arc::new(backend),
        }
    }

    /// Whether this is a bucket (not a local directory).
    pub fn is_bucket(&self) -> bool {
        matches!(&*self.backend, Backend::Bucket(_))
    }

    /// Deletes every object below this root (a local directory: the directory itself).
    /// Gone already is no error.
    pub fn delete_all(&self) -> Result<(), StoreError> {
        if let Backend::Local(dir) = &*self.backend {
            return match std::fs::remove_dir_all(dir) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(source) => Err(io_err(dir)(source)),
            };
        }
        for listed in self.list("")? {
            self.delete(&listed.key)?;
        }
        Ok(())
    }

    /// The local directory, when the store is one.
    pub fn local_root(&self) -> Option<&Path> {
        match &*self.backend {
            Backend::Local(dir) => Some(dir),
            Backend::Bucket(_) => None,
        }
    }

    /// The root, as a path or a URL (no secrets).
    pub fn root_display(&self) -> String {
        match &*self.backend {
            Backend::Local(dir) => dir.display().to_string(),
            Backend::Bucket(bucket) => bucket.url.clone(),
        }
    }

    /// The location of `key`: a path below the directory, a URL below the bucket prefix.
    pub fn location(&self, key: &str) -> PathBuf {
        match &*self.backend {
            Backend::Local(dir) => dir.join(key),
            Backend::Bucket(bucket) => PathBuf::from(format!("{}/{key}", bucket.url)),
        }
    }

    /// Checks that the store can be reached: lists the root of a bucket (a missing bucket,
    /// wrong credentials or an unreachable endpoint fail here, with the reason); creates
    /// a local directory when missing (an unwritable path fails here).
    pub fn check(&self) -> Result<(), StoreError> {
        match &*self.backend {
            Backend::Local(dir) => std::fs::create_dir_all(dir).map_err(io_err(dir)),
            Backend::Bucket(bucket) => {
                let store = bucket.store.clone();
                let prefix = bucket.object_path("");
                bucket.retrying("", || {
                    let store = store.clone();
                    let prefix = prefix.clone();
                    async move { store.list_with_delimiter(Some(&prefix)).await.map(|_| ()) }
                })
            }
        }
    }

    /// Writes `bytes` as `key`, replacing what was there; readers see the old object or
    /// the new one, never a part. `failpoint` is armed once the bytes are complete but
    /// not yet under their name.
    pub fn put(&self, key: &str, bytes: Bytes, failpoint: Option<&str>) -> Result<(), StoreError> {
        match &*self.backend {
            Backend::Local(root) => {
                let path = root.join(key);
                let dir = path.parent().unwrap_or(root).to_path_buf();
                std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
                let name = file_name(key);
                write_atomic(&dir, &path, name, failpoint, |file, tmp| {
                    file.write_all(&bytes).map_err(io_err(tmp))
                })
            }
            Backend::Bucket(bucket) => {
                if let Some(point) = failpoint {
                    crate::failpoint::hit(point);
                }
                let store = bucket.store.clone();
                let path = bucket.object_path(key);
                bucket.retrying(key, || {
                    let (store, path) = (store.clone(), path.clone());
                    let payload = PutPayload::from(bytes.clone());
                    async move { store.put(&path, payload).await.map(|_| ()) }
                })
            }
        }
    }

    /// Writes `bytes` as `key` only if no object has that name; otherwise leaves the
    /// object alone and returns its bytes. Two writers of one name: exactly one creates
    /// it.
    pub fn put_new(&self, key: &str, bytes: Bytes) -> Result<Created, StoreError> {
        match &*self.backend {
            Backend::Local(root) => {
                let path = root.join(key);
                let dir = path.parent().unwrap_or(root).to_path_buf();
                std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
                let created =
                    crate::atomic::create_new::<StoreError>(&dir, &path, file_name(key), &bytes)?;
                if created {
                    return Ok(Created::New);
                }
                let existing = std::fs::read(&path).map_err(io_err(&path))?;
                Ok(Created::Existing(Bytes::from(existing)))
            }
            Backend::Bucket(bucket) => {
                let store = bucket.store.clone();
                let path = bucket.object_path(key);
                let outcome = bucket.retrying(key, || {
                    let (store, path) = (store.clone(), path.clone());
                    let payload = PutPayload::from(bytes.clone());
                    async move {
                        let options = PutOptions {
                            mode: PutMode::Create,
                            ..PutOptions::default()
                        };
                        match store.put_opts(&path, payload, options).await {
                            Ok(_) => Ok(true),
                            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
                            Err(e) => Err(e),
                        }
                    }
                })?;
                if outcome {
                    return Ok(Created::New);
                }
                match self.get(key)? {
                    Some(existing) => Ok(Created::Existing(existing)),
                    // Deleted between the two requests: try once more.
                    None => self.put_new(key, bytes),
                }
            }
        }
    }

    /// The bytes of `key`; `None` when there is no such object.
    pub fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        match &*self.backend {
            Backend::Local(root) => {
                let path = root.join(key);
                match std::fs::read(&path) {
                    Ok(bytes) => Ok(Some(Bytes::from(bytes))),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(source) => Err(io_err(&path)(source)),
                }
            }
            Backend::Bucket(bucket) => {
                let store = bucket.store.clone();
                let path = bucket.object_path(key);
                bucket.retrying(key, || {
                    let (store, path) = (store.clone(), path.clone());
                    async move { get_if_present(&*store, &path).await }
                })
            }
        }
    }

    /// The bytes of each of `keys` (`None` for a missing object), in their order; a
    /// bucket's requests run 16 at a time.
    pub fn get_all(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, StoreError> {
        let Backend::Bucket(bucket) = &*self.backend else {
            return keys.iter().map(|key| self.get(key)).collect();
        };
        let store = bucket.store.clone();
        let paths: Vec<ObjectPath> = keys.iter().map(|k| bucket.object_path(k)).collect();
        let first = keys.first().map_or("", String::as_str);
        bucket.retrying(first, || {
            let (store, paths) = (store.clone(), paths.clone());
            async move {
                futures::stream::iter(paths)
                    .map(|path| {
                        let store = store.clone();
                        async move { get_if_present(&*store, &path).await }
                    })
                    .buffered(16)
                    .try_collect::<Vec<_>>()
                    .await
            }
        })
    }

    /// Deletes `key`; an object already gone is no error. Whether it was there.
    pub fn delete(&self, key: &str) -> Result<bool, StoreError> {
        match &*self.backend {
            Backend::Local(root) => {
                let path = root.join(key);
                match std::fs::remove_file(&path) {
                    Ok(()) => Ok(true),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                    Err(source) => Err(io_err(&path)(source)),
                }
            }
            Backend::Bucket(bucket) => {
                let store = bucket.store.clone();
                let path = bucket.object_path(key);
                bucket.retrying(key, || {
                    let (store, path) = (store.clone(), path.clone());
                    async move {
                        match store.head(&path).await {
                            Ok(_) => store.delete(&path).await.map(|()| true),
                            Err(object_store::Error::NotFound { .. }) => Ok(false),
                            Err(e) => Err(e),
                        }
                    }
                })
            }
        }
    }

    /// Every object below `prefix` (a key prefix ending in `/`, or empty for all), at
    /// any depth, sorted by key. Local temporary files (`.NAME.tmp`) are listed too.
    pub fn list(&self, prefix: &str) -> Result<Vec<Listed>, StoreError> {
        let mut listed = match &*self.backend {
            Backend::Local(root) => list_local(root, prefix)?,
            Backend::Bucket(bucket) => {
                let store = bucket.store.clone();
                let path = bucket.object_path(prefix);
                let strip = bucket.prefix.clone();
                bucket.retrying(prefix, || {
                    let (store, path, strip) = (store.clone(), path.clone(), strip.clone());
                    async move {
                        let metas: Vec<_> = store.list(Some(&path)).try_collect().await?;
                        Ok(metas
                            .into_iter()
                            .filter_map(|meta| {
                                let key = meta.location.as_ref();
                                let key = if strip.is_empty() {
                                    key
                                } else {
                                    key.strip_prefix(strip.as_str())?.strip_prefix('/')?
                                };
                                Some(Listed {
                                    key: key.to_string(),
                                    size: meta.size,
                                })
                            })
                            .collect::<Vec<_>>())
                    }
                })?
            }
        };
        listed.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(listed)
    }

    /// The names of the "directories" right below `prefix` (a key prefix ending in `/`):
    /// sub-directories locally, common prefixes in a bucket. Sorted.
    pub fn list_dirs(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let mut names = match &*self.backend {
            Backend::Local(root) => {
                let dir = root.join(prefix);
                let entries = match std::fs::read_dir(&dir) {
                    Ok(entries) => entries,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                    Err(source) => return Err(io_err(&dir)(source)),
                };
                let mut names = Vec::new();
                for entry in entries {
                    let entry = entry.map_err(io_err(&dir))?;
                    if entry.path().is_dir() {
                        names.push(entry.file_name().to_string_lossy().into_owned());
                    }
                }
                names
            }
            Backend::Bucket(bucket) => {
                let store = bucket.store.clone();
                let path = bucket.object_path(prefix);
                bucket.retrying(prefix, || {
                    let (store, path) = (store.clone(), path.clone());
                    async move {
                        let listed = store.list_with_delimiter(Some(&path)).await?;
                        Ok(listed
                            .common_prefixes
                            .into_iter()
                            .filter_map(|p| p.filename().map(str::to_string))
                            .collect::<Vec<_>>())
                    }
                })?
            }
        };
        names.sort();
        Ok(names)
    }
}

/// The last `/`-separated part of `key`.
/// The bytes at `path`, `None` when there is no such object.
async fn get_if_present(
    store: &dyn object_store::ObjectStore,
    path: &ObjectPath,
) -> object_store::Result<Option<Bytes>> {
    match store.get(path).await {
        Ok(got) => got.bytes().await.map(Some),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

fn file_name(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

/// Every file below `root/prefix`, keys relative to `root`.
fn list_local(root: &Path, prefix: &str) -> Result<Vec<Listed>, StoreError> {
    let mut out = Vec::new();
    let mut stack = vec![root.join(prefix)];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(io_err(&dir)(source)),
        };
        for entry in entries {
            let entry = entry.map_err(io_err(&dir))?;
            let path = entry.path();
            let kind = entry.file_type().map_err(io_err(&path))?;
            if kind.is_dir() {
                stack.push(path);
            } else if let Ok(relative) = path.strip_prefix(root) {
                let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
                let key = relative
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                out.push(Listed { key, size });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_by_scheme() {
        assert_eq!(
            Location::parse(Path::new("store")).expect("plain"),
            Location::Local(PathBuf::from("store"))
        );
        assert_eq!(
            Location::parse(Path::new("file:///data/store")).expect("file"),
            Location::Local(PathBuf::from("/data/store"))
        );
        assert_eq!(
            Location::parse(Path::new("s3://bucket/shop/")).expect("s3"),
            Location::Bucket("s3://bucket/shop".to_string())
        );
        let err = Location::parse(Path::new("ftp://host/x")).expect_err("ftp");
        assert!(err.to_string().contains("ftp://"), "{err}");
        let err = Location::parse(Path::new("s3://")).expect_err("no bucket");
        assert!(err.to_string().contains("no bucket"), "{err}");
    }

    #[test]
    fn local_create_only_writes_keep_the_first_object() {
        let dir = tempfile::tempdir().expect("dir");
        let storage = Storage::local(dir.path());
        let first = storage
            .put_new("a/b.json", Bytes::from_static(b"one"))
            .expect("first");
        assert_eq!(first, Created::New);
        let second = storage
            .put_new("a/b.json", Bytes::from_static(b"two"))
            .expect("second");
        assert_eq!(second, Created::Existing(Bytes::from_static(b"one")));
        let listed: Vec<String> = storage
            .list("")
            .expect("list")
            .into_iter()
            .map(|l| l.key)
            .collect();
        assert_eq!(listed, ["a/b.json"], "no temporary file left");
        assert_eq!(storage.list_dirs("").expect("dirs"), ["a"]);
        assert!(storage.delete("a/b.json").expect("delete"));
        assert!(!storage.delete("a/b.json").expect("again"));
        assert_eq!(storage.get("a/b.json").expect("get"), None);
    }

    #[test]
    fn an_unknown_option_is_named() {
        let options = BTreeMap::from([("aws_no_such_key".to_string(), "x".to_string())]);
        let err = Storage::open(
            Path::new("s3://bucket/prefix"),
            &options,
            Duration::from_secs(1),
        )
        .expect_err("unknown key");
        assert!(err.to_string().contains("aws_no_such_key"), "{err}");
    }
}
