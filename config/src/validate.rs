//! Semantic validation: values that have the right type but make no sense.

use std::collections::BTreeSet;
use std::fmt;

use crate::sections::Config;

/// One problem in a configuration: the dotted key and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key, for example `pipeline.window_secs`.
    pub key: String,
    /// What is wrong and, where possible, what would be right.
    pub message: String,
}

impl Problem {
    pub(crate) fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Returns every semantic problem of `config` (empty when valid).
pub(crate) fn validate(config: &Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut bad = |key: &str, message: String| problems.push(Problem::new(key, message));

    for broker in config.kafka.brokers.split(',').map(str::trim) {
        if broker.is_empty() {
            if !config.kafka.brokers.trim().is_empty() {
                bad(
                    "kafka.brokers",
                    "contains an empty entry; use host:port,host:port".into(),
                );
            }
            continue;
        }
        let port_ok = broker
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !port_ok {
            bad(
                "kafka.brokers",
                format!("`{broker}` is not host:port (for example 127.0.0.1:9092)"),
            );
        }
    }
    if config.privacy.enabled && config.privacy.key_env.trim().is_empty() {
        bad(
            "privacy.key_env",
            "must name the environment variable that holds the HMAC key".into(),
        );
    }
    if let Some(step) = config.privacy.price_step
        && !(step.is_finite() && step > 0.0)
    {
        bad(
            "privacy.price_step",
            format!("{step} is not a positive amount; unset it to keep prices exact"),
        );
    }
    if config.kafka.group_id.trim().is_empty() {
        bad("kafka.group_id", "must not be empty".into());
    }
    if !(1..=10_000).contains(&config.kafka.topic_partitions) {
        bad(
            "kafka.topic_partitions",
            format!("{} is outside 1..=10000", config.kafka.topic_partitions),
        );
    }
    if config.kafka.produce_timeout_ms == 0 {
        bad("kafka.produce_timeout_ms", "must be at least 1".into());
    }
    if config.kafka.connect_timeout_ms == 0 {
        bad("kafka.connect_timeout_ms", "must be at least 1".into());
    }
    // Properties shopstream sets itself: honoured within limits, or refused with the reason.
    for (key, message) in crate::kafka_properties::problems(config) {
        bad(&key, message);
    }

    let topics = &config.topics;
    let all = [
        ("topics.clicks", &topics.clicks),
        ("topics.orders", &topics.orders),
        ("topics.inventory", &topics.inventory),
        ("topics.predictions", &topics.predictions),
        ("topics.dead_letter", &topics.dead_letter),
        ("topics.alerts", &topics.alerts),
    ];
    let mut seen = BTreeSet::new();
    for (key, name) in all {
        let valid_chars = name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if name.is_empty() || name.len() > 249 || !valid_chars {
            bad(
                key,
                format!("`{name}` is not a valid Kafka topic name ([a-zA-Z0-9._-], 1..249 chars)"),
            );
        } else if !seen.insert(name.as_str()) {
            bad(key, format!("`{name}` is used for two different topics"));
        }
    }

    let p = &config.pipeline;
    if p.window_secs == 0 || 3600 % p.window_secs != 0 {
        bad(
            "pipeline.window_secs",
            format!(
                "{} must be positive and divide 3600 so windows never straddle an hour",
                p.window_secs
            ),
        );
    }
    if p.click_window_secs == 0 {
        bad("pipeline.click_window_secs", "must be at least 1".into());
    }
    if p.attribution_window_secs == 0 {
        bad(
            "pipeline.attribution_window_secs",
            "must be at least 1".into(),
        );
    }
    if p.feature_ttl_secs < 7 * 86_400 {
        bad(
            "pipeline.feature_ttl_secs",
            format!(
                "{} is shorter than the 7-day horizon of the rolling features (604800)",
                p.feature_ttl_secs
            ),
        );
    }
    if p.max_message_bytes < 64 {
        bad(
            "pipeline.max_message_bytes",
            format!("{} is below the 64-byte minimum", p.max_message_bytes),
        );
    }
    if p.dedupe_max_keys == 0 {
        bad("pipeline.dedupe_max_keys", "must be at least 1".into());
    }
    if p.max_future_skew_secs == 0 {
        bad("pipeline.max_future_skew_secs", "must be at least 1".into());
    }
    if p.idle_partition_timeout_secs == 0 {
        bad(
            "pipeline.idle_partition_timeout_secs",
            "must be at least 1".into(),
        );
    }
    if p.channel_capacity == 0 {
        bad("pipeline.channel_capacity", "must be at least 1".into());
    }
    if p.workers > 256 {
        bad(
            "pipeline.workers",
            format!(
                "{} is more threads than any machine here has; use 0 for one per core",
                p.workers
            ),
        );
    }

    if config.store.path.as_os_str().is_empty() {
        bad("store.path", "must not be empty".into());
    }
    let store_path = config.store.path.to_string_lossy();
    if let Some((scheme, rest)) = store_path.split_once("://") {
        let scheme = scheme.to_ascii_lowercase();
        if !["file", "s3", "s3a", "gs", "az", "abfs", "abfss", "azure"].contains(&scheme.as_str()) {
            bad(
                "store.path",
                format!(
                    "the scheme {scheme}:// is not supported; use a local path, file://, s3://, gs:// or az://"
                ),
            );
        } else if scheme != "file" && rest.trim_matches('/').is_empty() {
            bad("store.path", format!("`{store_path}` names no bucket"));
        }
    }
    if config.store.retry_timeout_secs == 0 {
        bad(
            "store.retry_timeout_secs",
            "must be at least 1 (a store outage of a moment would stop the job)".into(),
        );
    }
    if config.checkpoint.every_windows == 0 {
        bad("checkpoint.every_windows", "must be at least 1".into());
    }
    if config.checkpoint.keep == 0 {
        bad("checkpoint.keep", "must be at least 1".into());
    }
    if config.store.row_group_rows == 0 {
        bad("store.row_group_rows", "must be at least 1".into());
    }
    let span = config.store.file_span_secs;
    if span > 0 && 3_600 % span != 0 {
        bad(
            "store.file_span_secs",
            format!("{span} does not divide an hour (3600 s); use 0 or a divisor such as 600"),
        );
    }
    if config.store.retention_days.is_some() && !config.store.compact_closed_hours {
        bad(
            "store.retention_days",
            "needs store.compact_closed_hours = true: the job expires hours as it settles them \
             (or leave it unset and run `shopstream store expire --days N`)"
                .into(),
        );
    }
    if config.store.retention_days == Some(0) {
        bad(
            "store.retention_days",
            "0 would expire every settled hour; use at least 1, or leave it unset to keep everything".into(),
        );
    }
    if !(1..=22).contains(&config.store.zstd_level) {
        bad(
            "store.zstd_level",
            format!("{} is outside 1..=22", config.store.zstd_level),
        );
    }

    if config.http.listen.parse::<std::net::SocketAddr>().is_err() {
        bad(
            "http.listen",
            format!(
                "`{}` is not ip:port (for example 127.0.0.1:9464)",
                config.http.listen
            ),
        );
    }

    let m = &config.model;
    if !(m.learning_rate > 0.0 && m.learning_rate <= 1.0) {
        bad(
            "model.learning_rate",
            format!("{} is outside (0, 1]", m.learning_rate),
        );
    }
    if !(1..=65_536).contains(&m.batch_size) {
        bad(
            "model.batch_size",
            format!("{} is outside 1..=65536", m.batch_size),
        );
    }
    if !(8..=24).contains(&m.embedding_bits) {
        bad(
            "model.embedding_bits",
            format!("{} is outside 8..=24", m.embedding_bits),
        );
    }
    for (key, value) in [
        ("model.embedding_dim", m.embedding_dim),
        ("model.hidden1", m.hidden1),
        ("model.hidden2", m.hidden2),
    ] {
        if !(1..=1024).contains(&value) {
            bad(key, format!("{value} is outside 1..=1024"));
        }
    }
    if !(m.value_weight >= 0.0 && m.value_weight.is_finite()) {
        bad(
            "model.value_weight",
            format!("{} must be a finite number >= 0", m.value_weight),
        );
    }
    validate_drift(&config.drift, &mut bad);
    problems
}

/// The `[drift]` section: every threshold pair ordered, counts in range, the webhook URL
/// usable.
fn validate_drift(d: &crate::sections::DriftConfig, bad: &mut impl FnMut(&str, String)) {
    if !(1..=1_000).contains(&d.reference_windows) {
        bad(
            "drift.reference_windows",
            format!("{} is outside 1..=1000", d.reference_windows),
        );
    }
    if d.min_reference_windows == 0 || d.min_reference_windows > d.reference_windows {
        bad(
            "drift.min_reference_windows",
            format!(
                "{} must be at least 1 and at most drift.reference_windows ({})",
                d.min_reference_windows, d.reference_windows
            ),
        );
    }
    // The significance tests' design effect is the median of a history of per-window
    // statistics (`CalibrationHistory`); a pinned reference records only its windows after
    // the first min_reference_windows. Without enough of them the KS, chi-squared and
    // rate tests could never alert.
    let usable = |n: usize| {
        let h = d.reference.calibration_history(n, d.fire_after_windows);
        let recorded = match d.reference {
            crate::sections::DriftReference::Trailing => h.capacity,
            crate::sections::DriftReference::Pinned => n.saturating_sub(d.min_reference_windows),
        };
        recorded.saturating_sub(h.lag) >= h.needed
    };
    if d.design_effect_correction && !usable(d.reference_windows) {
        let least = (1..=10_000).find(|n| usable(*n)).unwrap_or(10_000);
        bad(
            "drift.reference_windows",
            format!(
                "{} leaves too few windows to estimate the design effect of the significance tests (at least {least} with this reference, drift.min_reference_windows and drift.fire_after_windows); raise it or set drift.design_effect_correction = false",
                d.reference_windows
            ),
        );
    }
    if !(2..=1_000).contains(&d.psi_bins) {
        bad(
            "drift.psi_bins",
            format!("{} is outside 2..=1000", d.psi_bins),
        );
    }
    let positive_pairs = [
        ("psi", d.psi_warning, d.psi_critical, f64::INFINITY),
        ("js", d.js_warning, d.js_critical, 1.0),
        ("rate_z", d.rate_z_warning, d.rate_z_critical, f64::INFINITY),
        ("gap_z", d.gap_z_warning, d.gap_z_critical, f64::INFINITY),
        (
            "loss_increase",
            d.loss_increase_warning,
            d.loss_increase_critical,
            f64::INFINITY,
        ),
    ];
    for (name, warning, critical, max) in positive_pairs {
        if !(warning > 0.0 && warning <= max && warning.is_finite()) {
            bad(
                &format!("drift.{name}_warning"),
                format!("{warning} must be a finite number in (0, {max}]"),
            );
        } else if !(critical >= warning && critical <= max && critical.is_finite()) {
            bad(
                &format!("drift.{name}_critical"),
                format!(
                    "{critical} must be at least drift.{name}_warning ({warning}) and at most {max}"
                ),
            );
        }
    }
    if !(d.p_value_warning > 0.0 && d.p_value_warning < 1.0) {
        bad(
            "drift.p_value_warning",
            format!("{} is outside (0, 1)", d.p_value_warning),
        );
    } else if !(d.p_value_critical > 0.0 && d.p_value_critical <= d.p_value_warning) {
        bad(
            "drift.p_value_critical",
            format!(
                "{} must be in (0, drift.p_value_warning = {}] (smaller p-values are worse)",
                d.p_value_critical, d.p_value_warning
            ),
        );
    }
    if d.min_samples < 2 {
        bad("drift.min_samples", format!("{} is below 2", d.min_samples));
    }
    if d.min_trials == 0 {
        bad("drift.min_trials", "must be at least 1".into());
    }
    if !(d.adwin_delta > 0.0 && d.adwin_delta < 1.0) {
        bad(
            "drift.adwin_delta",
            format!("{} is outside (0, 1)", d.adwin_delta),
        );
    }
    if !(d.page_hinkley_threshold > 0.0 && d.page_hinkley_threshold.is_finite()) {
        bad(
            "drift.page_hinkley_threshold",
            format!("{} must be a finite number > 0", d.page_hinkley_threshold),
        );
    }
    for (key, value) in [
        ("drift.fire_after_windows", d.fire_after_windows),
        ("drift.resolve_after_windows", d.resolve_after_windows),
    ] {
        if !(1..=100).contains(&value) {
            bad(key, format!("{value} is outside 1..=100"));
        }
    }
    if let Some(url) = &d.webhook_url
        && let Err(why) = check_http_url(url)
    {
        bad("drift.webhook_url", format!("`{url}` {why}"));
    }
    if d.webhook_timeout_ms == 0 {
        bad("drift.webhook_timeout_ms", "must be at least 1".into());
    }
    if d.webhook_max_retries > 20 {
        bad(
            "drift.webhook_max_retries",
            format!("{} is above 20", d.webhook_max_retries),
        );
    }
    if !(1..=600_000).contains(&d.webhook_backoff_ms) {
        bad(
            "drift.webhook_backoff_ms",
            format!("{} is outside 1..=600000", d.webhook_backoff_ms),
        );
    }
    if d.webhook_queue == 0 {
        bad("drift.webhook_queue", "must be at least 1".into());
    }
}

/// Whether `url` is an absolute `http://` or `https://` URL with a host.
fn check_http_url(url: &str) -> Result<(), &'static str> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or("must start with http:// or https://")?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() || host.starts_with(':') {
        return Err("has no host (for example https://alerts.example.com/hook)");
    }
    if url.chars().any(char::is_whitespace) {
        return Err("contains whitespace");
    }
    Ok(())
}
