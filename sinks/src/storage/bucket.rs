//! A bucket behind `object_store`: building its client from the environment and
//! `store.options`, running its requests from blocking code, and retrying those that fail
//! for a reason that may pass until `store.retry_timeout_secs`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use object_store::path::Path as ObjectPath;
use object_store::{ClientConfigKey, ObjectStore, RetryConfig};

use crate::error::StoreError;

/// A bucket and a prefix in it, with its client.
#[derive(Clone)]
pub(super) struct Bucket {
    pub(super) store: Arc<dyn ObjectStore>,
    /// The prefix below the bucket (may be empty).
    pub(super) prefix: String,
    /// The URL of the root, for messages.
    pub(super) url: String,
    /// The endpoint requests go to, for messages.
    pub(super) endpoint: String,
    /// How long a request is retried before its error is final.
    pub(super) retry_timeout: Duration,
}

/// The runtime the bucket requests run on (created on first use, never dropped: a
/// runtime dropped inside another one panics).
fn runtime() -> Result<&'static tokio::runtime::Runtime, StoreError> {
    static RUNTIME: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("store-io")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| StoreError::Internal(format!("cannot start the storage runtime: {e}")))
}

/// Runs `future` on the storage runtime and waits for it, from any thread (blocking it).
pub(super) fn block_on<T: Send + 'static>(
    future: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T, StoreError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime()?.spawn(async move {
        let _ = tx.send(future.await);
    });
    rx.recv()
        .map_err(|_| StoreError::Internal("a storage request was dropped".to_string()))
}

impl Bucket {
    /// The object path of `key` (below the prefix).
    pub(super) fn object_path(&self, key: &str) -> ObjectPath {
        let key = key.trim_end_matches('/');
        match (self.prefix.is_empty(), key.is_empty()) {
            (true, _) => ObjectPath::from(key),
            (false, true) => ObjectPath::from(self.prefix.as_str()),
            (false, false) => ObjectPath::from(format!("{}/{key}", self.prefix)),
        }
    }

    /// Runs the request `make` makes, again with backoff while it fails for a reason that
    /// may pass, until `retry_timeout` has passed since the first try.
    pub(super) fn retrying<T, F, Fut>(&self, key: &str, make: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, object_store::Error>> + Send + 'static,
    {
        let started = Instant::now();
        let mut pause = Duration::from_millis(100);
        let mut tries = 0u32;
        let mut failing: Option<Failing> = None;
        loop {
            tries += 1;
            match block_on(make())? {
                Ok(value) => return Ok(value),
                Err(error) => {
                    let transient = is_transient(&error);
                    if !transient || started.elapsed() + pause > self.retry_timeout {
                        return Err(StoreError::Remote {
                            object: if key.is_empty() {
                                self.url.clone()
                            } else {
                                format!("{}/{key}", self.url)
                            },
                            endpoint: self.endpoint.clone(),
                            tries,
                            secs: started.elapsed().as_secs(),
                            transient,
                            message: error_chain(&error),
                        });
                    }
                    if failing.is_none() {
                        failing = Some(Failing::start());
                        tracing_like_warn(&self.endpoint, key, &error);
                    }
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// Bucket requests failing and being retried right now.
static FAILING: AtomicUsize = AtomicUsize::new(0);

/// Whether a request to the store's bucket is failing right now and being retried (the
/// store is unreachable or overloaded): `/readyz` reports the job not ready meanwhile.
pub fn retrying_now() -> bool {
    FAILING.load(Ordering::Relaxed) > 0
}

/// Counts one request in [`FAILING`] while it lives.
struct Failing;

impl Failing {
    fn start() -> Self {
        FAILING.fetch_add(1, Ordering::Relaxed);
        Self
    }
}

impl Drop for Failing {
    fn drop(&mut self) {
        FAILING.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Says once per failing request that the store is being retried.
fn tracing_like_warn(endpoint: &str, key: &str, error: &object_store::Error) {
    tracing::warn!(
        endpoint,
        object = key,
        error = %error,
        "store request failed; retrying with backoff until store.retry_timeout_secs"
    );
}

/// `error` and its sources, `: `-separated (the root cause is often only in a source).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

/// Whether a request that failed with `error` may succeed when tried again (the store
/// was unreachable or overloaded, not wrong).
fn is_transient(error: &object_store::Error) -> bool {
    use object_store::Error as E;
    match error {
        E::NotFound { .. }
        | E::AlreadyExists { .. }
        | E::Precondition { .. }
        | E::NotModified { .. }
        | E::NotSupported { .. }
        | E::NotImplemented { .. }
        | E::PermissionDenied { .. }
        | E::Unauthenticated { .. }
        | E::InvalidPath { .. }
        | E::UnknownConfigurationKey { .. } => false,
        E::Generic { source, .. } => {
            // object_store gives up on its own retries with a message such as "error
            // sending request", "Server returned non-2XX status code: 503" or a timeout.
            // A 4xx other than 408/429 is an answer, not an outage.
            let text = error_chain(source.as_ref());
            ![
                "status code: 400",
                "status code: 403",
                "status code: 404",
                "NoSuchBucket",
                "builder error",
            ]
            .iter()
            .any(|answer| text.contains(answer))
        }
        _ => true,
    }
}

/// Builds the client of the bucket at `url`: the provider's settings from the standard
/// environment, then `options`, then the URL.
pub(super) fn open_bucket(
    url: &str,
    options: &BTreeMap<String, String>,
    retry_timeout: Duration,
) -> Result<Bucket, StoreError> {
    let bad = |message: String| StoreError::Location {
        location: url.to_string(),
        message,
    };
    let parsed = url::Url::parse(url).map_err(|e| bad(format!("not a valid URL: {e}")))?;
    let prefix = parsed.path().trim_matches('/').to_string();
    // object_store's own retries are short: the loop in `retrying` owns the deadline.
    let retry = RetryConfig {
        max_retries: 2,
        retry_timeout: Duration::from_secs(10).min(retry_timeout),
        ..RetryConfig::default()
    };
    // Timeouts unless the environment or the options set them: a cut connection must
    // fail a request (to be retried) rather than hang it.
    let client_defaults = [
        (ClientConfigKey::ConnectTimeout, "5s"),
        (ClientConfigKey::Timeout, "60s"),
    ];
    let unknown = |key: &str| {
        bad(format!(
            "store.options has an unknown key {key:?} for this provider"
        ))
    };
    // The provider's builder from the environment, with the client defaults (unless set)
    // and `options` applied, then built with the retry settings.
    macro_rules! build {
        ($builder:ty, $key:ty) => {{
            let mut builder = <$builder>::from_env().with_url(url);
            for (key, value) in client_defaults {
                let key = <$key>::Client(key);
                if builder.get_config_value(&key).is_none() {
                    builder = builder.with_config(key, value);
                }
            }
            for (key, value) in options {
                let key: $key = key.parse().map_err(|_| unknown(key))?;
                builder = builder.with_config(key, value);
            }
            builder
        }};
    }
    let (store, endpoint): (Arc<dyn ObjectStore>, String) = match parsed.scheme() {
        "s3" | "s3a" => {
            use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
            let builder = build!(AmazonS3Builder, AmazonS3ConfigKey);
            let endpoint = builder
                .get_config_value(&AmazonS3ConfigKey::Endpoint)
                .unwrap_or_else(|| {
                    let region = builder
                        .get_config_value(&AmazonS3ConfigKey::Region)
                        .unwrap_or_else(|| "us-east-1".to_string());
                    format!("https://s3.{region}.amazonaws.com")
                });
            let store = builder.with_retry(retry).build();
            (Arc::new(store.map_err(|e| bad(e.to_string()))?), endpoint)
        }
        "gs" => {
            use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
            let store = build!(GoogleCloudStorageBuilder, GoogleConfigKey)
                .with_retry(retry)
                .build();
            let endpoint = "https://storage.googleapis.com".to_string();
            (Arc::new(store.map_err(|e| bad(e.to_string()))?), endpoint)
        }
        _ => {
            use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
            let store = build!(MicrosoftAzureBuilder, AzureConfigKey)
                .with_retry(retry)
                .build();
            let endpoint = "Azure Blob Storage".to_string();
            (Arc::new(store.map_err(|e| bad(e.to_string()))?), endpoint)
        }
    };
    // With `s3://bucket/prefix`, object_store addresses the bucket; keys are below the
    // prefix.
    Ok(Bucket {
        store,
        prefix,
        url: url.to_string(),
        endpoint,
        retry_timeout,
    })
}
