//! `shopstream generate`: synthetic traffic onto the input topics, and the traffic
//! options the other commands share.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use shopstream_config::Config;
use shopstream_ingest::event::Millis;
use shopstream_ingest::generator::{
    DEFAULT_START_MS, DriftKind, GeneratorOptions, world::WorldSize,
};
use shopstream_job::generate;

use super::parse::{parse_duration_ms, parse_ts_ms};

#[derive(Args, Debug, Clone)]
pub(crate) struct TrafficArgs {
    /// Seed of every random choice; the same seed and options give the same messages.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Stop starting new sessions after this many valid events (sessions under way still
    /// finish, so the total may be slightly higher).
    #[arg(long, default_value_t = 100_000)]
    pub(crate) events: u64,
    /// Stop starting sessions after this much event time (for example 90m, 2h, 7d);
    /// combined with --events, whichever comes first.
    #[arg(long, value_parser = parse_duration_ms)]
    pub(crate) duration: Option<Millis>,
    /// Event time of the first event: RFC 3339 (2026-01-05T00:00:00Z) or epoch ms.
    #[arg(long, value_parser = parse_ts_ms)]
    pub(crate) start: Option<Millis>,
    /// Mean sessions per second of event time (about 9 events each): event time runs as
    /// fast as the producer can go, so days of history take minutes.
    #[arg(long, default_value_t = 1.5)]
    pub(crate) sessions_per_sec: f64,
    /// Number of users.
    #[arg(long, default_value_t = 5_000)]
    pub(crate) users: usize,
    /// Number of items.
    #[arg(long, default_value_t = 2_000)]
    pub(crate) items: usize,
    /// Number of categories.
    #[arg(long, default_value_t = 40)]
    pub(crate) categories: usize,
    /// Probability per valid message of adding a malformed one (broken JSON, invalid
    /// UTF-8, schema violations, out-of-range values), for dead-letter tests.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) malformed_fraction: f64,
    /// Event time at which --drift starts: RFC 3339, epoch ms, or +DURATION after --start.
    #[arg(long, requires = "drift")]
    pub(crate) drift_at: Option<String>,
    /// Kind of drift injected at --drift-at.
    #[arg(long, value_enum, requires = "drift_at")]
    pub(crate) drift: Option<DriftArg>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum DriftArg {
    /// Prices rise by 60 %; conversion falls through price sensitivity.
    PriceShock,
    /// Half of the sessions come from a new cohort with other tastes and devices.
    NewCohort,
    /// Home-feed click level +1.0 logit, push -0.8.
    CtrShift,
}

impl From<DriftArg> for DriftKind {
    fn from(arg: DriftArg) -> Self {
        match arg {
            DriftArg::PriceShock => DriftKind::PriceShock,
            DriftArg::NewCohort => DriftKind::NewCohort,
            DriftArg::CtrShift => DriftKind::CtrShift,
        }
    }
}

#[derive(Args, Debug)]
pub(crate) struct GenerateArgs {
    #[command(flatten)]
    pub(crate) traffic: TrafficArgs,
    /// Publish at most this many messages per wall-clock second (default: as fast as
    /// possible).
    #[arg(long)]
    pub(crate) rate: Option<f64>,
    /// Write every impression's true click and conversion probability (CSV) here.
    #[arg(long)]
    pub(crate) truth_out: Option<PathBuf>,
    /// Write the generator's report (counts per topic, malformed per reason) as JSON here.
    #[arg(long)]
    pub(crate) report_json: Option<PathBuf>,
}

pub(crate) fn generator_options(t: &TrafficArgs) -> Result<GeneratorOptions> {
    if !(0.0..=0.5).contains(&t.malformed_fraction) {
        bail!(
            "--malformed-fraction {} must be within 0..=0.5",
            t.malformed_fraction
        );
    }
    if !(t.sessions_per_sec > 0.0 && t.sessions_per_sec.is_finite()) {
        bail!("--sessions-per-sec must be a positive number");
    }
    let start_ms = t.start.unwrap_or(DEFAULT_START_MS);
    let drift = match (&t.drift_at, t.drift) {
        (Some(at), Some(kind)) => {
            let at = match at.strip_prefix('+') {
                Some(offset) => start_ms + parse_duration_ms(offset).map_err(anyhow::Error::msg)?,
                None => parse_ts_ms(at).map_err(anyhow::Error::msg)?,
            };
            Some((at, DriftKind::from(kind)))
        }
        _ => None,
    };
    Ok(GeneratorOptions {
        seed: t.seed,
        start_ms,
        max_events: Some(t.events),
        duration_ms: t.duration,
        sessions_per_sec: t.sessions_per_sec,
        size: WorldSize {
            users: t.users.max(1),
            items: t.items.max(1),
            categories: t.categories.max(3),
        },
        malformed_fraction: t.malformed_fraction,
        drift,
    })
}

pub(crate) async fn generate_cmd(config: Config, args: GenerateArgs) -> Result<()> {
    let options = generator_options(&args.traffic)?;
    let report =
        generate::publish_traffic(&config, options, args.rate, args.truth_out.as_deref()).await?;
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &args.report_json {
        std::fs::write(path, &json).with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!("{json}");
    Ok(())
}
