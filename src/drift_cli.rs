//! The drift commands of the CLI: `drift report` (the HTML report over the store) and
//! `drift bench` (the acceptance benchmark of issue 7 on generator traffic, in process).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde::Serialize;
use shopstream::drift::{Arrival, DriftStage};
use shopstream::drift_report::{self, ReportOptions, format_ms};
use shopstream_config::Config;
use shopstream_features::FeaturePipeline;
use shopstream_ingest::event::Millis;
use shopstream_ingest::generator::{DEFAULT_START_MS, DriftKind, Generator, GeneratorOptions};
use shopstream_trainer::Trainer;
use shopstream_trainer::drift::{AlertEvent, AlertState};

#[derive(Subcommand, Debug)]
pub enum DriftCommand {
    /// Write a self-contained HTML report (inline SVG plots) of a time range of the store:
    /// PSI per feature, label and prediction drift per scenario, AUC and log loss per task,
    /// alert markers and a table of the alert events.
    Report(ReportArgs),
    /// The acceptance benchmark: generator traffic -> features -> model -> drift monitors,
    /// in process (no Kafka). Each drift kind is injected at a known event time and the
    /// delay to its first alert is printed; a stationary run counts false alarms.
    Bench(BenchArgs),
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Start of the range (event time of the evidence): RFC 3339 or epoch ms.
    #[arg(long, value_parser = crate::parse_ts_ms)]
    pub from: Millis,
    /// End of the range (exclusive): RFC 3339 or epoch ms.
    #[arg(long, value_parser = crate::parse_ts_ms)]
    pub to: Millis,
    /// The HTML file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Store root (default: store.path of the configuration).
    #[arg(long)]
    pub store: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Event time of the stationary run (no drift), for example 6h30m as 390m.
    #[arg(long, default_value = "390m", value_parser = crate::parse_duration_ms)]
    pub stationary: Millis,
    /// Onset of the injected drift, after the start of the traffic.
    #[arg(long, default_value = "3h", value_parser = crate::parse_duration_ms)]
    pub onset: Millis,
    /// How long each drift run goes on after its onset (at least the label maturity, so
    /// label and model alerts can be seen).
    #[arg(long, default_value = "60m", value_parser = crate::parse_duration_ms)]
    pub after: Millis,
    /// Mean sessions per second of generated traffic (about 7 impressions each; default:
    /// the generator's, 1.5). Whether a one-window change is visible within 3 windows
    /// depends on how many impressions a window holds: see docs/drift.md.
    #[arg(long)]
    pub sessions_per_sec: Option<f64>,
    /// Seeds of the traffic; every kind and the stationary run are run per seed.
    #[arg(long = "seed", default_values_t = [1u64])]
    pub seeds: Vec<u64>,
    /// Only these drift kinds (default: all three).
    #[arg(long = "kind", value_enum)]
    pub kinds: Vec<crate::DriftArg>,
    /// Skip the stationary run.
    #[arg(long)]
    pub no_stationary: bool,
    /// Also write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write every drift statistic of every window (the rows the job writes to the
    /// store's `drift` table) as CSV into this directory, one file per run.
    #[arg(long)]
    pub rows_dir: Option<PathBuf>,
}

pub fn report_cmd(config: &Config, args: ReportArgs) -> Result<()> {
    let root = crate::store_cli::root(config, args.store);
    let options = ReportOptions {
        root: root.clone(),
        from_ms: args.from,
        to_ms: args.to,
        metrics_shift_ms: config.pipeline.label_maturity_ms(),
        small_sample: config.drift.small_sample,
    };
    let data = drift_report::load(&options)
        .with_context(|| format!("cannot make the drift report from {}", root.display()))?;
    let html = drift_report::render(&data);
    std::fs::write(&args.out, &html)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    eprintln!(
        "drift report: {} windows, {} features, {} alert events, {} to {} -> {} ({} KiB)",
        data.drift_windows,
        data.psi.len() + data.js.len(),
        data.alerts.len(),
        format_ms(data.from_ms),
        format_ms(data.to_ms),
        args.out.display(),
        html.len() / 1024
    );
    Ok(())
}

/// An alert event and when it became known.
#[derive(Debug, Clone, Serialize)]
struct Raised {
    /// Start of the window whose close raised it.
    reported_ms: i64,
    event: AlertEvent,
}

/// What one bench run saw.
#[derive(Debug, Clone, Serialize)]
struct RunResult {
    seed: u64,
    kind: Option<&'static str>,
    hours: f64,
    windows: u64,
    impressions: u64,
    onset_window_ms: Option<i64>,
    /// Firing events whose evidence window is before the onset (false alarms).
    firing_before_onset: usize,
    /// Firing events whose evidence window is at or after the onset.
    firing_after_onset: Vec<Raised>,
    /// Firing events of the stationary run.
    firing: usize,
    /// First firing event naming an expected subject: delay in windows from the onset
    /// window to its evidence window, and to the window whose close reported it.
    detection: Option<Detection>,
    passed: bool,
}

#[derive(Debug, Clone, Serialize)]
struct Detection {
    kind: String,
    subject: String,
    scenario: Option<String>,
    statistic: String,
    evidence_delay_windows: i64,
    reported_delay_windows: i64,
}

/// The feature(s) or task(s) each drift kind moves, as the monitors name them.
fn expected(kind: DriftKind) -> &'static [&'static str] {
    match kind {
        // +60 % prices; conversion falls through price sensitivity.
        DriftKind::PriceShock => &["price", "cvr"],
        // Users never seen before, other devices and categories, lower click propensity.
        DriftKind::NewCohort => &["new_user", "device", "item_category", "early_ctr", "ctr"],
        // Home feed and push click levels.
        DriftKind::CtrShift => &["early_ctr", "ctr", "ctcvr"],
    }
}

/// Generator -> features -> model -> drift stage, exactly as the job wires them, minus
/// Kafka and the store.
/// What one in-process run saw.
struct Run {
    raised: Vec<Raised>,
    impressions: u64,
    /// Windows closed.
    windows: u64,
}

impl Run {
    /// The firing events raised.
    fn firing(&self) -> Vec<&Raised> {
        self.raised
            .iter()
            .filter(|r| r.event.state == AlertState::Firing)
            .collect()
    }
}

/// One run; with `rows_dir`, every drift row goes to `<rows_dir>/<name>.csv`.
fn run_one(
    config: &Config,
    sessions_per_sec: Option<f64>,
    seed: u64,
    duration: Millis,
    drift: Option<(Millis, DriftKind)>,
    rows_dir: Option<&PathBuf>,
    name: &str,
) -> Result<Run> {
    let mut csv = rows_file(rows_dir, name)?;
    let mut rows = csv.as_mut().map(|w| w as &mut dyn std::io::Write);
    let options = GeneratorOptions {
        seed,
        start_ms: DEFAULT_START_MS,
        max_events: None,
        duration_ms: Some(duration),
        drift,
        sessions_per_sec: sessions_per_sec.unwrap_or(GeneratorOptions::default().sessions_per_sec),
        ..GeneratorOptions::default()
    };
    let mut generator = Generator::new(options);
    let mut features = FeaturePipeline::new(&config.pipeline);
    let mut trainer = Trainer::new(&config.model);
    let mut stage = DriftStage::new(&config.drift, &config.pipeline);
    let mut raised = Vec::new();
    let mut impressions = 0u64;
    let mut windows = 0u64;
    if let Some(out) = rows.as_mut() {
        writeln!(
            out,
            "ts,reported_at,evidence,kind,subject,scenario,statistic,value,threshold,critical,n"
        )?;
    }
    let mut on_window = |output: shopstream_features::WindowOutput,
                         trainer: &mut Trainer,
                         stage: &mut DriftStage|
     -> Result<()> {
        let (_, outputs) = trainer.train_window_scored(&output.examples);
        let drifts =
            stage.window_closed(output.start, &output.users, &output.examples, &outputs)?;
        windows += 1;
        if let Some(out) = rows.as_mut() {
            for r in stage.rows(&drifts) {
                writeln!(
                    out,
                    "{},{},{},{},{},{},{},{},{},{},{}",
                    format_ms(r.ts_ms),
                    format_ms(r.reported_ms),
                    r.evidence.as_str(),
                    r.kind.as_str(),
                    r.subject,
                    r.scenario.as_deref().unwrap_or(""),
                    r.statistic,
                    r.value,
                    r.threshold.map(|t| t.to_string()).unwrap_or_default(),
                    r.critical.map(|t| t.to_string()).unwrap_or_default(),
                    r.n
                )?;
            }
        }
        raised.extend(drifts.alerts.into_iter().map(|event| Raised {
            reported_ms: output.start,
            event,
        }));
        Ok(())
    };
    for (meta, event) in generator.decoded() {
        let arrival = Arrival::of(&event);
        if features.ingest(meta, event).is_err() {
            continue;
        }
        if let Some(a) = arrival {
            impressions += u64::from(matches!(a, Arrival::Impression(_)));
            stage.on_arrival(&a);
        }
        for output in features.close_ready() {
            on_window(output, &mut trainer, &mut stage)?;
        }
    }
    for output in features.finish() {
        on_window(output, &mut trainer, &mut stage)?;
    }
    Ok(Run {
        raised,
        impressions,
        windows,
    })
}

/// A CSV file for one run's rows, when asked for.
fn rows_file(
    dir: Option<&PathBuf>,
    name: &str,
) -> Result<Option<std::io::BufWriter<std::fs::File>>> {
    let Some(dir) = dir else { return Ok(None) };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(format!("{name}.csv"));
    let file = std::fs::File::create(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    Ok(Some(std::io::BufWriter::new(file)))
}

fn describe(r: &Raised) -> String {
    let e = &r.event;
    format!(
        "{}/{}{}",
        e.kind.as_str(),
        e.subject,
        e.scenario
            .as_deref()
            .map(|s| format!("[{s}]"))
            .unwrap_or_default()
    )
}

pub fn bench_cmd(config: &Config, args: BenchArgs) -> Result<()> {
    if args.seeds.is_empty() {
        bail!("give at least one --seed");
    }
    let window_ms = config.pipeline.window_ms().max(1);
    let kinds: Vec<DriftKind> = if args.kinds.is_empty() {
        DriftKind::ALL.to_vec()
    } else {
        args.kinds.iter().map(|k| DriftKind::from(*k)).collect()
    };
    let started = std::time::Instant::now();
    let mut results = Vec::new();
    if let Some(rate) = args.sessions_per_sec
        && !(rate.is_finite() && rate > 0.0)
    {
        bail!("--sessions-per-sec must be a positive number, got {rate}");
    }
    println!(
        "drift bench: {} sessions/s, windows of {} s, K = {} to fire, label maturity {} min, defaults of [drift] unless configured",
        args.sessions_per_sec
            .unwrap_or(GeneratorOptions::default().sessions_per_sec),
        config.pipeline.window_secs,
        config.drift.fire_after_windows,
        config.pipeline.label_maturity_secs() / 60
    );
    for &seed in &args.seeds {
        for &kind in &kinds {
            let onset = DEFAULT_START_MS + args.onset;
            let onset_window = onset.div_euclid(window_ms) * window_ms;
            let duration = args.onset + args.after;
            let run = run_one(
                config,
                args.sessions_per_sec,
                seed,
                duration,
                Some((onset, kind)),
                args.rows_dir.as_ref(),
                &format!("{}-seed{seed}", kind.as_str()),
            )?;
            let (impressions, windows) = (run.impressions, run.windows);
            let firing = run.firing();
            let before = firing
                .iter()
                .filter(|r| r.event.window_start_ms < onset_window)
                .count();
            let after: Vec<Raised> = firing
                .iter()
                .filter(|r| r.event.window_start_ms >= onset_window)
                .map(|r| (*r).clone())
                .collect();
            let delay = |ms: i64| (ms - onset_window).div_euclid(window_ms);
            let detection = after
                .iter()
                .filter(|r| expected(kind).contains(&r.event.subject.as_str()))
                // The first one a person would have been told about.
                .min_by_key(|r| (r.reported_ms, r.event.window_start_ms))
                .map(|r| Detection {
                    kind: r.event.kind.as_str().to_string(),
                    subject: r.event.subject.clone(),
                    scenario: r.event.scenario.clone(),
                    statistic: r.event.statistic.clone(),
                    evidence_delay_windows: delay(r.event.window_start_ms),
                    reported_delay_windows: delay(r.reported_ms),
                });
            let passed = before == 0
                && detection
                    .as_ref()
                    .is_some_and(|d| d.reported_delay_windows <= 2);
            println!();
            println!(
                "{} (seed {seed}): onset {} UTC, window {}; {} windows, {} impressions",
                kind.as_str(),
                format_ms(onset),
                format_ms(onset_window),
                windows,
                impressions
            );
            println!("  firing alerts before the onset: {before}");
            match &detection {
                Some(d) => println!(
                    "  first alert naming {}: {}/{}{} ({}), reported at the close of window onset+{} (evidence window onset+{})",
                    expected(kind).join("|"),
                    d.kind,
                    d.subject,
                    d.scenario
                        .as_deref()
                        .map(|s| format!("[{s}]"))
                        .unwrap_or_default(),
                    d.statistic,
                    d.reported_delay_windows,
                    d.evidence_delay_windows
                ),
                None => println!(
                    "  no alert named {} after the onset",
                    expected(kind).join("|")
                ),
            }
            println!("  firing alerts from the onset on (evidence window: subject):");
            for r in after.iter().take(25) {
                println!(
                    "    onset+{:<3} (reported onset+{:<3}) {:<40} {:<8} {} = {}",
                    delay(r.event.window_start_ms),
                    delay(r.reported_ms),
                    describe(r),
                    r.event.severity.as_str(),
                    r.event.statistic,
                    drift_report::format_value(r.event.value)
                );
            }
            if after.len() > 25 {
                println!("    ... {} more", after.len() - 25);
            }
            println!(
                "  reported within 3 windows of the onset (by the close of onset+2) and no false alarm before: {}",
                if passed { "PASS" } else { "FAIL" }
            );
            results.push(RunResult {
                seed,
                kind: Some(kind.as_str()),
                hours: duration as f64 / 3_600_000.0,
                windows,
                impressions,
                onset_window_ms: Some(onset_window),
                firing_before_onset: before,
                firing_after_onset: after,
                firing: firing.len(),
                detection,
                passed,
            });
        }
        if !args.no_stationary {
            let run = run_one(
                config,
                args.sessions_per_sec,
                seed,
                args.stationary,
                None,
                args.rows_dir.as_ref(),
                &format!("stationary-seed{seed}"),
            )?;
            let (impressions, windows) = (run.impressions, run.windows);
            let firing = run.firing();
            let hours = args.stationary as f64 / 3_600_000.0;
            println!();
            println!(
                "stationary (seed {seed}): {hours:.2} h of event time, {windows} windows, {impressions} impressions: {} firing alerts {}",
                firing.len(),
                if firing.is_empty() { "PASS" } else { "FAIL" }
            );
            for r in firing.iter().take(25) {
                println!(
                    "    {} {} {} = {}",
                    format_ms(r.event.window_start_ms),
                    describe(r),
                    r.event.statistic,
                    drift_report::format_value(r.event.value)
                );
            }
            results.push(RunResult {
                seed,
                kind: None,
                hours,
                windows,
                impressions,
                onset_window_ms: None,
                firing_before_onset: firing.len(),
                firing_after_onset: Vec::new(),
                firing: firing.len(),
                detection: None,
                passed: firing.is_empty(),
            });
        }
    }
    let passed = results.iter().filter(|r| r.passed).count();
    println!();
    println!(
        "{passed} of {} runs passed; wall time {:.1} s",
        results.len(),
        started.elapsed().as_secs_f64()
    );
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&results)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if passed != results.len() {
        bail!(
            "{} of {} bench runs failed",
            results.len() - passed,
            results.len()
        );
    }
    Ok(())
}
