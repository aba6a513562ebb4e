//! Posting alert events to a webhook (`drift.webhook_url`).
//!
//! The job hands events to [`Webhook::post`], which only enqueues them: a task of its own
//! delivers them one by one (JSON body, the same document as on the alerts topic), with a
//! per-request timeout and retries after an exponential backoff. A slow or dead receiver
//! therefore never holds up the pipeline; the queue is bounded, and an event that does not
//! fit, exhausts its retries or is refused for good is logged and counted in
//! [`Webhook::failures`] (`shopstream_webhook_failures_total`), never fatal. Alerts also go
//! to the alerts topic, the store and `/metrics`, so the webhook is a convenience, not the
//! record.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::AlertEvent;
use shopstream_config::DriftConfig as DriftSettings;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Longest wait between two attempts, whatever the backoff doubled to.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Where and how to post.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookOptions {
    /// `http://` or `https://` URL.
    pub url: String,
    /// Timeout of one request.
    pub timeout: Duration,
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// Wait before the first retry; doubled for each further one.
    pub backoff: Duration,
    /// Events waiting at most.
    pub queue: usize,
}

impl WebhookOptions {
    /// The options of the `[drift]` section, or `None` without a `webhook_url`.
    pub fn from_settings(s: &DriftSettings) -> Option<Self> {
        Some(Self {
            url: s.webhook_url.clone()?,
            timeout: Duration::from_millis(s.webhook_timeout_ms.max(1)),
            max_retries: s.webhook_max_retries,
            backoff: Duration::from_millis(s.webhook_backoff_ms),
            queue: s.webhook_queue.max(1),
        })
    }
}

/// Why the webhook could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The HTTP client could not be built (TLS set-up). External.
    #[error(
        "cannot set up the HTTP client for drift.webhook_url ({url}): {source}; check the system's CA certificates or unset drift.webhook_url"
    )]
    Client {
        /// The URL, without its path.
        url: String,
        /// reqwest's error.
        source: reqwest::Error,
    },
}

#[derive(Debug, Default)]
struct Stats {
    delivered: AtomicU64,
    failures: AtomicU64,
    /// Enqueued and not yet delivered or given up.
    pending: AtomicU64,
}

/// A running webhook sender.
#[derive(Debug)]
pub struct Webhook {
    tx: mpsc::Sender<(String, Vec<u8>)>,
    stats: Arc<Stats>,
    task: JoinHandle<()>,
    shown_url: String,
}

/// `scheme://host[:port]/…`: webhook URLs often carry a token in their path or query, which
/// must not reach the logs.
pub fn redacted(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or(authority);
    if rest.len() > authority.len() {
        format!("{scheme}://{host}/…")
    } else {
        format!("{scheme}://{host}")
    }
}

/// What one attempt came to.
enum Attempt {
    Delivered,
    /// Worth another try (5xx, 408, 429, timeout, connection failure).
    Retry(String),
    /// The receiver refused it for good (other 4xx, 3xx).
    Final(String),
}

/// The request posting `body` to `url`, built once per event: each attempt sends a clone,
/// which shares the body rather than copying it. `Err`: why it cannot be built (a malformed
/// URL), the same on every attempt.
fn request(client: &reqwest::Client, url: &str, body: Vec<u8>) -> Result<reqwest::Request, String> {
    client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .build()
        // reqwest's error names the URL; the redacted one is logged instead.
        .map_err(|e| error_chain(&e.without_url()))
}

async fn attempt(client: &reqwest::Client, request: &Result<reqwest::Request, String>) -> Attempt {
    let request = match request {
        Ok(request) => request.try_clone(),
        Err(why) => return Attempt::Retry(why.clone()),
    };
    // Only streaming bodies cannot be cloned; this one is bytes.
    let Some(request) = request else {
        return Attempt::Final("the request body cannot be sent again".to_string());
    };
    match client.execute(request).await {
        Ok(r) if r.status().is_success() => Attempt::Delivered,
        Ok(r) => {
            let status = r.status();
            let why = format!("HTTP {status}");
            if status.is_server_error()
                || status == reqwest::StatusCode::REQUEST_TIMEOUT
                || status == reqwest::StatusCode::TOO_MANY_REQUESTS
            {
                Attempt::Retry(why)
            } else {
                Attempt::Final(why)
            }
        }
        // reqwest's error names the URL; the redacted one is logged instead.
        Err(e) if e.is_timeout() => Attempt::Retry("timed out".to_string()),
        Err(e) => Attempt::Retry(error_chain(&e.without_url())),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Delivers the queued events one by one; `shown` is the URL as logged ([`redacted`]).
async fn deliver_all(
    client: reqwest::Client,
    options: WebhookOptions,
    shown: String,
    mut rx: mpsc::Receiver<(String, Vec<u8>)>,
    stats: Arc<Stats>,
) {
    while let Some((id, body)) = rx.recv().await {
        let request = request(&client, &options.url, body);
        let mut tries = 0u32;
        let outcome = loop {
            tries += 1;
            match attempt(&client, &request).await {
                Attempt::Delivered => break Ok(()),
                Attempt::Final(why) => break Err(why),
                Attempt::Retry(why) if tries > options.max_retries => break Err(why),
                Attempt::Retry(why) => {
                    let wait = options
                        .backoff
                        .saturating_mul(1u32 << (tries - 1).min(20))
                        .min(MAX_BACKOFF);
                    tracing::info!(alert = %id, url = %shown, attempt = tries, error = %why, retry_in_ms = wait.as_millis() as u64, "webhook attempt failed; retrying");
                    tokio::time::sleep(wait).await;
                }
            }
        };
        match outcome {
            Ok(()) => {
                stats.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err(why) => {
                stats.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(alert = %id, url = %shown, attempts = tries, error = %why, "webhook did not accept the alert event; it is still on the alerts topic and in the store's alerts table (check drift.webhook_url and the receiver)");
            }
        }
        stats.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Webhook {
    /// Starts the sender task (needs a tokio runtime).
    pub fn spawn(options: WebhookOptions) -> Result<Self, WebhookError> {
        let shown_url = redacted(&options.url);
        let client = reqwest::Client::builder()
            .timeout(options.timeout)
            .user_agent(concat!("shopstream/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|source| WebhookError::Client {
                url: shown_url.clone(),
                source,
            })?;
        let (tx, rx) = mpsc::channel(options.queue.max(1));
        let stats = Arc::new(Stats::default());
        let task = tokio::spawn(deliver_all(
            client,
            options,
            shown_url.clone(),
            rx,
            Arc::clone(&stats),
        ));
        Ok(Self {
            tx,
            stats,
            task,
            shown_url,
        })
    }

    /// Enqueues `event` without waiting; a full queue counts it as a failure.
    pub fn post(&self, event: &AlertEvent) {
        let body = match serde_json::to_vec(event) {
            Ok(body) => body,
            Err(e) => {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(alert = %event.id, error = %e, "cannot encode the alert event for the webhook");
                return;
            }
        };
        self.stats.pending.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.tx.try_send((event.id.clone(), body)) {
            self.stats.pending.fetch_sub(1, Ordering::Relaxed);
            self.stats.failures.fetch_add(1, Ordering::Relaxed);
            let why = match e {
                mpsc::error::TrySendError::Full(_) => {
                    "the queue is full (drift.webhook_queue): the receiver is slower than the alerts"
                }
                mpsc::error::TrySendError::Closed(_) => "the sender task has stopped",
            };
            tracing::warn!(alert = %event.id, url = %self.shown_url, "alert event not posted to the webhook: {why}");
        }
    }

    /// Events the receiver accepted so far.
    pub fn delivered(&self) -> u64 {
        self.stats.delivered.load(Ordering::Relaxed)
    }

    /// Events given up so far (retries exhausted, refused, queue full).
    pub fn failures(&self) -> u64 {
        self.stats.failures.load(Ordering::Relaxed)
    }

    /// Stops taking events and lets the queued ones go out for at most `grace`; whatever
    /// is still queued then counts as failed. Returns (delivered, failures).
    pub async fn close(self, grace: Duration) -> (u64, u64) {
        let Webhook {
            tx,
            stats,
            mut task,
            shown_url,
        } = self;
        drop(tx);
        if tokio::time::timeout(grace, &mut task).await.is_err() {
            task.abort();
            let _ = task.await;
            let left = stats.pending.swap(0, Ordering::Relaxed);
            stats.failures.fetch_add(left, Ordering::Relaxed);
            tracing::warn!(url = %shown_url, left, "stopping: alert events still queued for the webhook were not posted");
        }
        (
            stats.delivered.load(Ordering::Relaxed),
            stats.failures.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Delivery, retries and the queue are tested against a local receiver in
    // tests/webhook.rs.

    #[test]
    fn tokens_in_urls_stay_out_of_logs() {
        assert_eq!(
            redacted("https://hooks.example.com/services/T0/B0/XYZ?x=1"),
            "https://hooks.example.com/…"
        );
        assert_eq!(
            redacted("http://user:pw@10.0.0.1:9000"),
            "http://10.0.0.1:9000"
        );
    }
}
