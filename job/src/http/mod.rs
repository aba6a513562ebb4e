//! The job's HTTP endpoints, served with hyper (HTTP/1.1, one request per connection):
//! - `/metrics`: Prometheus text format, rendered from the latest [`Telemetry`];
//! - `/healthz`: 200 while the process serves requests;
//! - `/readyz`: 200 once the job has drained its input backlog at least once and its
//!   consumer lag is within `http.ready_max_lag`, else 503. In a group run
//!   (`pipeline.instances = "group"`) readiness is per role instead: every partition this
//!   instance holds read to its end since it was assigned, and on the trainer lease
//!   holder the inventory too (docs/operations.md, "Instances"). While a request to a
//!   bucket store fails and is being retried, `/readyz` is 503 "store unreachable".
//!
//! Routing looks at the path only (a query string is ignored). `GET` and `HEAD` are
//! allowed (`HEAD` gets the headers of `GET`, `Content-Length` included, and no body);
//! any other method gets 405 with `Allow: GET, HEAD`.
//!
//! Limits ([`ServeOptions`]): a connection that has not sent its request head within
//! `read_timeout` is closed, and one whose exchange takes longer than
//! `connection_timeout` (a client that does not read its response) is dropped. At most
//! `max_connections` are served at once; when all are busy the server waits, leaving
//! further connections in the listen backlog until a slot frees (each slot frees within
//! `connection_timeout`). Waiting rather than refusing keeps a scrape that arrives
//! during a burst working, and costs nothing while it waits.

use std::collections::BTreeMap;
use std::convert::Infallible;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::latency::{Histogram, PREDICTION_LATENCY_BOUNDS, WINDOW_PROCESSING_BOUNDS};
use crate::summary::RunSummary;

mod prometheus;

pub use prometheus::render;

/// What the endpoints report; the processor publishes a fresh one as it goes.
#[derive(Debug, Clone)]
pub struct Telemetry {
    /// Counters of the run so far.
    pub summary: RunSummary,
    /// The features stage's watermark, epoch ms.
    pub watermark_ms: Option<i64>,
    /// Predictions and dead letters acknowledged by the broker so far.
    pub acknowledged: (u64, u64),
    /// Impressions waiting for their labels.
    pub pending_examples: usize,
    /// The input backlog has been drained at least once.
    pub ready: bool,
    /// Version of the model predictions are served with: the trained model's, or with
    /// the global stage on its own thread, the newest it published (one or a few
    /// windows behind).
    pub serving_model_version: u64,
    /// Input partitions this instance is assigned.
    pub owned_partitions: Vec<(shopstream_ingest::event::InputTopic, i32)>,
    /// How the global stage runs: `inline` (one worker) or `own` (a thread of its own).
    pub global_stage_threads: &'static str,
    /// Whether this instance runs the global stage: always with `pipeline.instances =
    /// "one"`; in a group, only the instance holding the trainer lease.
    pub global_role: bool,
    /// In a group: delay between the coordinator broadcasting the model this instance
    /// serves with and this instance taking it, ms (none before the first broadcast).
    pub model_broadcast_delay_ms: Option<i64>,
    /// Latest drift statistics and alert counters (empty when `drift.enabled` is off).
    pub drift: shopstream_drift::stage::DriftGauges,
    /// Messages behind each input partition's high watermark (librdkafka statistics,
    /// every 5 s).
    pub consumer_lag: BTreeMap<(shopstream_ingest::event::InputTopic, i32), i64>,
    /// Prediction latency since the process started (exported as a histogram).
    pub prediction_latency: Histogram,
    /// Window processing time since the process started (exported as a histogram).
    pub window_processing: Histogram,
}

impl Default for Telemetry {
    /// Nothing seen yet; the histograms already have their bounds, so the exported
    /// bucket set is the same from the first scrape on.
    fn default() -> Self {
        Self {
            summary: RunSummary::default(),
            watermark_ms: None,
            acknowledged: (0, 0),
            pending_examples: 0,
            ready: false,
            serving_model_version: 0,
            owned_partitions: Vec::new(),
            global_stage_threads: "inline",
            global_role: true,
            model_broadcast_delay_ms: None,
            drift: Default::default(),
            consumer_lag: BTreeMap::new(),
            prediction_latency: Histogram::new(PREDICTION_LATENCY_BOUNDS),
            window_processing: Histogram::new(WINDOW_PROCESSING_BOUNDS),
        }
    }
}

/// Limits of the HTTP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeOptions {
    /// A connection must send its complete request head within this, else it is closed.
    pub read_timeout: Duration,
    /// A connection is dropped when its whole exchange takes longer than this.
    pub connection_timeout: Duration,
    /// Connections served at once; further ones wait in the listen backlog.
    pub max_connections: usize,
}

impl Default for ServeOptions {
    /// 5 s to send the request head (a scraper sends it at once), 30 s for the whole
    /// exchange, 32 connections (Prometheus, probes and a few people).
    fn default() -> Self {
        Self {
            read_timeout: Duration::from_secs(5),
            connection_timeout: Duration::from_secs(30),
            max_connections: 32,
        }
    }
}

/// Binds `listen` and serves with the default [`ServeOptions`] until `cancel`; returns
/// the bound address and the server task.
pub async fn serve(
    listen: &str,
    telemetry: watch::Receiver<Arc<Telemetry>>,
    cancel: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    serve_with(listen, telemetry, cancel, ServeOptions::default()).await
}

/// [`serve`] with explicit limits. On `cancel` the server stops accepting, lets requests
/// in flight finish (closing idle connections), and its task ends once every connection
/// has (within `connection_timeout`).
pub async fn serve_with(
    listen: &str,
    telemetry: watch::Receiver<Arc<Telemetry>>,
    cancel: CancellationToken,
    options: ServeOptions,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let slots = Arc::new(Semaphore::new(options.max_connections.max(1)));
    let task = tokio::spawn(async move {
        let connections = TaskTracker::new();
        loop {
            // A slot first, then accept: while all are busy, new connections wait in the
            // kernel's backlog instead of costing a task and a buffer each.
            let permit = tokio::select! {
                _ = cancel.cancelled() => break,
                permit = Arc::clone(&slots).acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let accepted = tokio::select! {
                _ = cancel.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "http: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let telemetry = telemetry.clone();
            let cancel = cancel.clone();
            connections.spawn(async move {
                let _permit = permit;
                serve_connection(stream, telemetry, cancel, options).await;
            });
        }
        connections.close();
        connections.wait().await;
    });
    Ok((addr, task))
}

/// Serves one connection (one request: keep-alive is off, as a scrape every few seconds
/// gains nothing from it and a held-open connection would hold a slot).
async fn serve_connection(
    stream: tokio::net::TcpStream,
    telemetry: watch::Receiver<Arc<Telemetry>>,
    cancel: CancellationToken,
    options: ServeOptions,
) {
    let service = service_fn(move |request: Request<Incoming>| {
        // The telemetry as of the request, not as of the accept.
        let t = Arc::clone(&telemetry.borrow());
        async move { Ok::<_, Infallible>(respond(request.method(), request.uri().path(), &t)) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(options.read_timeout)
        .keep_alive(false);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let deadline = tokio::time::sleep(options.connection_timeout);
    tokio::pin!(deadline);
    let finished = tokio::select! {
        result = connection.as_mut() => Some(result),
        _ = cancel.cancelled() => None,
        _ = &mut deadline => return,
    };
    let result = match finished {
        Some(result) => result,
        None => {
            // Graceful stop: finish a request in flight, close an idle connection.
            connection.as_mut().graceful_shutdown();
            tokio::select! {
                result = connection.as_mut() => result,
                _ = &mut deadline => return,
            }
        }
    };
    if let Err(e) = result {
        // Timeouts, resets and malformed requests: the client's problem, not the job's.
        tracing::debug!(error = %e, "http: connection ended with an error");
    }
}

/// The response to `method path`; `HEAD` gets the headers of `GET` without the body.
fn respond(method: &Method, path: &str, t: &Telemetry) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        let mut response = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "use GET or HEAD\n".into(),
        );
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let (status, content_type, body) = route(path, t);
    if method == Method::HEAD {
        // Same headers, Content-Length of the GET body included (hyper writes the header
        // as given for HEAD and sends no body).
        let length = HeaderValue::from(body.len());
        let mut response = text(status, content_type, String::new());
        response.headers_mut().insert(CONTENT_LENGTH, length);
        return response;
    }
    text(status, content_type, body)
}

/// Status, content type and body of a `GET` of `path`.
fn route(path: &str, t: &Telemetry) -> (StatusCode, &'static str, String) {
    match path {
        "/metrics" => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            render(t),
        ),
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        // A bucket store failing its requests: the job holds everything and retries.
        "/readyz" if shopstream_sinks::storage::retrying_now() => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "store unreachable, retrying\n".to_string(),
        ),
        "/readyz" if t.ready => (StatusCode::OK, "text/plain", "ready\n".to_string()),
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "catching up\n".to_string(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "try /metrics, /healthz or /readyz\n".to_string(),
        ),
    }
}

/// A response with a text body and its content type.
fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::prometheus::{esc, render};
    use super::*;
    use std::collections::BTreeSet;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    #[test]
    fn every_family_has_help_and_type() {
        let mut t = Telemetry::default();
        t.summary.consumed.insert("clicks".into(), 5);
        let text = render(&t);
        assert!(
            text.contains("shopstream_events_consumed_total{topic=\"clicks\"} 5"),
            "{text}"
        );
        let helps = text.lines().filter(|l| l.starts_with("# HELP")).count();
        let types = text.lines().filter(|l| l.starts_with("# TYPE")).count();
        assert_eq!(helps, types);
        assert!(helps >= 20);
        let build = format!(
            "shopstream_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        assert!(text.lines().any(|l| l == build), "{text}");
        // Users rate() the counters instead of a lifetime average.
        assert!(!text.contains("shopstream_examples_per_second"), "{text}");
    }

    /// `(labels, value)` of every sample of `name` (exactly that name, suffix included).
    fn samples(text: &str, name: &str) -> Vec<(String, f64)> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                let labels = series.strip_prefix(name)?;
                (labels.is_empty() || labels.starts_with('{'))
                    .then(|| (labels.to_string(), value.parse().expect("a number")))
            })
            .collect()
    }

    /// Checks one histogram family of `text`: typed `histogram`, one bucket per bound
    /// then `+Inf`, ascending `le`, cumulative counts, `+Inf` = `_count`; returns the
    /// buckets, `_sum` and `_count`.
    fn histogram_of(text: &str, name: &str) -> (Vec<(f64, f64)>, f64, f64) {
        assert!(
            text.lines()
                .any(|l| l == format!("# TYPE {name} histogram")),
            "{text}"
        );
        let buckets: Vec<(f64, f64)> = samples(text, &format!("{name}_bucket"))
            .into_iter()
            .map(|(labels, count)| {
                let le = labels
                    .strip_prefix("{le=\"")
                    .and_then(|l| l.strip_suffix("\"}"))
                    .expect("only an le label");
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().expect("le is a number")
                };
                (le, count)
            })
            .collect();
        assert!(buckets.len() >= 2, "{text}");
        assert_eq!(buckets.last().map(|b| b.0), Some(f64::INFINITY));
        for pair in buckets.windows(2) {
            assert!(pair[0].0 < pair[1].0, "le ascending: {pair:?}");
            assert!(pair[0].1 <= pair[1].1, "cumulative: {pair:?}");
        }
        let sum = samples(text, &format!("{name}_sum"));
        let count = samples(text, &format!("{name}_count"));
        assert_eq!((sum.len(), count.len()), (1, 1), "{text}");
        let (sum, count) = (sum[0].1, count[0].1);
        assert_eq!(buckets.last().map(|b| b.1), Some(count), "+Inf == _count");
        (buckets, sum, count)
    }

    #[test]
    fn histograms_are_well_formed_and_exact() {
        let mut t = Telemetry::default();
        let micros = [50u64, 100, 101, 900, 1_000, 7_000, 120_000, 90_000_000];
        for us in micros {
            t.prediction_latency.record(Duration::from_micros(us));
        }
        t.window_processing.record(Duration::from_millis(3));
        t.window_processing.record(Duration::from_secs(2));
        let text = render(&t);

        let (buckets, sum, count) = histogram_of(&text, "shopstream_prediction_latency_seconds");
        assert_eq!(count, micros.len() as f64);
        let expected_sum = micros.iter().sum::<u64>() as f64 / 1e6;
        assert!((sum - expected_sum).abs() < 1e-9, "{sum} vs {expected_sum}");
        assert_eq!(buckets.len(), PREDICTION_LATENCY_BOUNDS.len() + 1);
        // Exact counts per bound: an observation on a bound is in its bucket (le).
        for (le, cumulative) in &buckets {
            let exact = micros.iter().filter(|&&us| us as f64 / 1e6 <= *le).count();
            assert_eq!(*cumulative, exact as f64, "le={le}");
        }
        assert_eq!(buckets[0], (0.0001, 2.0), "50 us and 100 us");
        assert_eq!(buckets[buckets.len() - 2], (60.0, 7.0), "90 s only in +Inf");

        let (buckets, sum, count) = histogram_of(&text, "shopstream_window_processing_seconds");
        assert_eq!((count, sum), (2.0, 2.003));
        assert_eq!(buckets.len(), WINDOW_PROCESSING_BOUNDS.len() + 1);
        assert_eq!(buckets[0], (0.001, 0.0));

        // Before anything is recorded: the same buckets, all zero.
        let empty = render(&Telemetry::default());
        let (buckets, sum, count) = histogram_of(&empty, "shopstream_prediction_latency_seconds");
        assert_eq!(buckets.len(), PREDICTION_LATENCY_BOUNDS.len() + 1);
        assert_eq!((sum, count), (0.0, 0.0));
    }

    /// A telemetry with every family populated.
    fn populated() -> Telemetry {
        use shopstream_trainer::metrics::BinaryMetrics;
        let mut t = Telemetry::default();
        let s = &mut t.summary;
        for topic in ["clicks", "orders", "inventory"] {
            s.consumed.insert(topic.into(), 10);
            s.valid.insert(topic.into(), 9);
            s.duplicates.insert(topic.into(), 1);
        }
        s.dead_lettered.insert("late".into(), 1);
        s.dead_lettered.insert("bad_json".into(), 2);
        let auc = BinaryMetrics {
            auc: Some(0.7),
            ..Default::default()
        };
        s.last_window_metrics = Some(shopstream_trainer::WindowMetrics {
            ctr: auc,
            cvr: auc,
            ctcvr: auc,
            ctr_by_scenario: [("home_feed".to_string(), auc)].into(),
            ..Default::default()
        });
        t.watermark_ms = Some(1_000);
        t.consumer_lag
            .insert((shopstream_ingest::event::InputTopic::Clicks, 0), 5);
        t.prediction_latency.record(Duration::from_millis(2));
        t.window_processing.record(Duration::from_millis(20));
        let d = &mut t.drift;
        d.feature_psi.insert("price".into(), 0.1);
        d.feature_js.insert("device".into(), 0.1);
        d.feature_pvalue
            .insert(("device".into(), "chi2".into()), 0.5);
        d.label_rate_z.insert(("push".into(), "ctr".into()), 1.0);
        d.prediction_gap_z
            .insert(("push".into(), "ctr".into()), 1.0);
        d.model_loss_drift
            .insert(("ctr".into(), "adwin".into()), 0.1);
        d.firing.push(firing_alert());
        t
    }

    fn firing_alert() -> shopstream_drift::AlertEvent {
        use shopstream_drift::{AlertEvent, AlertState, DriftKind, Severity};
        AlertEvent {
            id: "x".into(),
            state: AlertState::Firing,
            severity: Severity::Critical,
            kind: DriftKind::LabelDrift,
            subject: "ctr".into(),
            scenario: Some("home_feed".into()),
            statistic: "rate_z".into(),
            value: 6.0,
            threshold: 5.0,
            window_start_ms: 0,
            first_window_ms: 0,
        }
    }

    /// A file under `deploy/`.
    fn read(root: &std::path::Path, file: &str) -> String {
        std::fs::read_to_string(root.join(file)).expect(file)
    }

    /// Every `shopstream_*` name in `text`.
    fn metric_names(text: &str) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        let mut rest = text;
        while let Some(at) = rest.find("shopstream_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            // `shopstream_` inside a longer identifier is not a metric name.
            let inside = rest[..at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
            if !inside {
                names.insert(name.clone());
            }
            rest = &rest[at + name.len()..];
        }
        names
    }

    #[test]
    fn dashboards_and_rules_use_only_exported_metrics() {
        let exported: BTreeSet<String> = render(&populated())
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split(['{', ' ']).next())
            .map(str::to_string)
            .collect();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
        let dashboard = read(&root, "grafana/shopstream.json");
        let json: serde_json::Value = serde_json::from_str(&dashboard).expect("valid JSON");
        let panels = json["panels"].as_array().expect("panels");
        let exprs: Vec<&str> = panels
            .iter()
            .filter_map(|p| p["targets"].as_array())
            .flatten()
            .filter_map(|t| t["expr"].as_str())
            .collect();
        assert!(exprs.len() >= 8, "{exprs:?}");
        for (file, text) in [
            ("grafana/shopstream.json", dashboard.clone()),
            (
                "prometheus/shopstream-alerts.yml",
                read(&root, "prometheus/shopstream-alerts.yml"),
            ),
            (
                "prometheus/shopstream-alerts.test.yml",
                read(&root, "prometheus/shopstream-alerts.test.yml"),
            ),
        ] {
            let names = metric_names(&text);
            assert!(!names.is_empty(), "{file}");
            let missing: Vec<_> = names.difference(&exported).collect();
            assert!(missing.is_empty(), "{file} uses {missing:?}, not exported");
        }
        // The operational subjects are all covered by the dashboard and the rules.
        let rules = read(&root, "prometheus/shopstream-alerts.yml");
        for name in [
            "shopstream_consumer_lag_messages",
            "shopstream_dead_lettered_total",
            "shopstream_watermark_seconds",
            "shopstream_prediction_latency_seconds_bucket",
        ] {
            assert!(metric_names(&dashboard).contains(name), "dashboard: {name}");
            assert!(metric_names(&rules).contains(name), "rules: {name}");
        }
        assert!(rules.contains("up{job=\"shopstream\"} == 0"));
        assert!(rules.contains("absent(up{job=\"shopstream\"})"));
    }

    /// Serves a populated telemetry with `options`.
    async fn start(
        options: ServeOptions,
    ) -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<()>) {
        let (_tx, rx) = watch::channel(Arc::new(populated()));
        // The sender may go: the receiver keeps the last value.
        let cancel = CancellationToken::new();
        let (addr, task) = serve_with("127.0.0.1:0", rx, cancel.clone(), options)
            .await
            .expect("bind a free port");
        (addr, cancel, task)
    }

    /// Sends `request` on a new connection and reads until the server closes it:
    /// (status line, head, body).
    async fn exchange(addr: SocketAddr, request: &str) -> (String, String, String) {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(request.as_bytes()).await.expect("send");
        let mut response = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
            .await
            .expect("the server closes the connection after one response")
            .expect("read the response");
        let response = String::from_utf8(response).expect("UTF-8 response");
        let (head, body) = response.split_once("\r\n\r\n").expect("a response head");
        let status = head.lines().next().unwrap_or_default().to_string();
        (status, head.to_ascii_lowercase(), body.to_string())
    }

    fn content_length(head: &str) -> usize {
        head.lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .expect("content-length")
            .trim()
            .parse()
            .expect("a number")
    }

    #[tokio::test]
    async fn head_has_the_headers_of_get_and_no_body() {
        let (addr, cancel, _) = start(ServeOptions::default()).await;
        let (status, get_head, get_body) =
            exchange(addr, "GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n").await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(get_body.contains("shopstream_build_info"));
        let (status, head, body) =
            exchange(addr, "HEAD /metrics HTTP/1.1\r\nHost: t\r\n\r\n").await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(body, "", "no body for HEAD");
        assert_eq!(content_length(&head), get_body.len());
        assert_eq!(content_length(&get_head), get_body.len());
        assert!(
            head.contains("content-type: text/plain; version=0.0.4"),
            "{head}"
        );
        cancel.cancel();
    }

    #[tokio::test]
    async fn routing_ignores_the_query_and_refuses_other_methods() {
        let (addr, cancel, _) = start(ServeOptions::default()).await;
        let (status, _, body) =
            exchange(addr, "GET /metrics?x=1 HTTP/1.1\r\nHost: t\r\n\r\n").await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(body.contains("shopstream_events_consumed_total"));
        let (status, _, _) =
            exchange(addr, "GET /healthz?verbose HTTP/1.1\r\nHost: t\r\n\r\n").await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        let (status, _, _) = exchange(addr, "GET /readyz HTTP/1.1\r\nHost: t\r\n\r\n").await;
        assert_eq!(status, "HTTP/1.1 503 Service Unavailable");
        let (status, _, _) = exchange(addr, "GET /nope?x HTTP/1.1\r\nHost: t\r\n\r\n").await;
        assert_eq!(status, "HTTP/1.1 404 Not Found");
        let (status, head, _) = exchange(
            addr,
            "POST /metrics HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
        )
        .await;
        assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
        assert!(head.contains("allow: get, head"), "{head}");
        cancel.cancel();
    }

    #[tokio::test]
    async fn a_silent_client_is_disconnected_after_the_read_timeout() {
        let read_timeout = Duration::from_millis(300);
        let (addr, cancel, _) = start(ServeOptions {
            read_timeout,
            ..ServeOptions::default()
        })
        .await;
        let started = tokio::time::Instant::now();
        let mut silent = TcpStream::connect(addr).await.expect("connect");
        let mut buf = Vec::new();
        // Closed (EOF, possibly after a 408) well before the 10 s guard.
        tokio::time::timeout(Duration::from_secs(10), silent.read_to_end(&mut buf))
            .await
            .expect("the server closes a silent connection")
            .expect("read until closed");
        let waited = started.elapsed();
        assert!(waited >= read_timeout, "{waited:?}");
        assert!(waited < Duration::from_secs(5), "{waited:?}");
        cancel.cancel();
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_wait_for_a_free_slot() {
        let read_timeout = Duration::from_millis(1_500);
        let (addr, cancel, _) = start(ServeOptions {
            read_timeout,
            max_connections: 2,
            ..ServeOptions::default()
        })
        .await;
        // Two silent connections take both slots.
        let _a = TcpStream::connect(addr).await.expect("connect");
        let _b = TcpStream::connect(addr).await.expect("connect");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = tokio::time::Instant::now();
        let (status, _, _) = exchange(addr, "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        // Served only once the silent ones timed out and freed a slot.
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(1_200), "{waited:?}");
        cancel.cancel();
    }

    #[tokio::test]
    async fn cancel_stops_the_server_and_closes_idle_connections() {
        let (addr, cancel, task) = start(ServeOptions::default()).await;
        let mut idle = TcpStream::connect(addr).await.expect("connect");
        tokio::time::sleep(Duration::from_millis(100)).await;
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .expect("the server task ends promptly")
            .expect("the server task does not panic");
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(2), idle.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "the idle connection is closed");
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "no longer listening"
        );
    }

    #[test]
    fn drift_gauges_have_their_labels() {
        let mut t = Telemetry::default();
        let d = &mut t.drift;
        d.feature_psi.insert("price".into(), 0.25);
        d.feature_pvalue
            .insert(("device".into(), "chi2".into()), 1e-5);
        d.label_rate_z
            .insert(("home_feed".into(), "ctr".into()), 4.5);
        d.prediction_gap_z
            .insert(("push".into(), "ctr".into()), -3.5);
        d.model_loss_drift
            .insert(("ctr".into(), "adwin".into()), 0.2);
        d.alerts_total.insert("firing".into(), 2);
        d.webhook_failures = 3;
        d.firing.push(firing_alert());
        let text = render(&t);
        for line in [
            "shopstream_feature_psi{feature=\"price\"} 0.25",
            "shopstream_feature_drift_pvalue{feature=\"device\",statistic=\"chi2\"} 0.00001",
            "shopstream_label_rate_z{scenario=\"home_feed\",label=\"ctr\"} 4.5",
            "shopstream_prediction_gap_z{scenario=\"push\",label=\"ctr\"} -3.5",
            "shopstream_model_loss_drift{task=\"ctr\",detector=\"adwin\"} 0.2",
            "shopstream_alerts_firing 1",
            "shopstream_alert_firing{kind=\"label_drift\",subject=\"ctr\",scenario=\"home_feed\",severity=\"critical\"} 1",
            "shopstream_alerts_total{state=\"firing\"} 2",
            "shopstream_alerts_total{state=\"resolved\"} 0",
            "shopstream_webhook_failures_total 3",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing `{line}` in\n{text}"
            );
        }
        assert_eq!(esc("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
