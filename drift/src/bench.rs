//! The drift acceptance benchmark (`shopstream drift bench`): generator traffic ->
//! features -> model -> drift stage, in process through the shared prequential loop
//! (no Kafka, no store). Each drift kind is injected at a known event time and the delay
//! to its first alert is measured; a stationary run counts false alarms.

use std::io::Write;
use std::path::PathBuf;

use serde::Serialize;
use shopstream_config::Config;
use shopstream_features::WindowGrid;
use shopstream_ingest::event::{Event, Millis};
use shopstream_ingest::generator::{DEFAULT_START_MS, DriftKind, Generator, GeneratorOptions};
use shopstream_trainer::Trainer;
use shopstream_trainer::prequential::{Observer, Prequential, ScoredWindow};

use crate::report::{format_ms, format_value};
use crate::stage::{Arrival, DriftStage};
use crate::{AlertEvent, AlertState, DriftError};

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Event time of the stationary run (no drift); `None` skips it.
    pub stationary_ms: Option<Millis>,
    /// Onset of the injected drift, after the start of the traffic.
    pub onset_ms: Millis,
    /// How long each drift run goes on after its onset.
    pub after_ms: Millis,
    /// Mean sessions per second of generated traffic (`None`: the generator's default).
    pub sessions_per_sec: Option<f64>,
    /// Seeds of the traffic; every kind and the stationary run are run per seed.
    pub seeds: Vec<u64>,
    /// The drift kinds to inject.
    pub kinds: Vec<DriftKind>,
    /// Write every drift row of every window as CSV into this directory, one file per run.
    pub rows_dir: Option<PathBuf>,
}

/// Why the benchmark could not run (a run that detects nothing is a result, not an error).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The options make no sense.
    #[error("{0}")]
    Options(String),
    /// Writing the progress or a rows file failed.
    #[error("cannot write {what}: {source}")]
    Io {
        /// The file or stream.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A drift statistic could not be computed.
    #[error(transparent)]
    Drift(#[from] DriftError),
}

/// Maps an I/O error on `what` (named only when it happens: the rows are written one
/// line at a time).
fn io(what: &str) -> impl FnOnce(std::io::Error) -> BenchError + '_ {
    move |source| BenchError::Io {
        what: what.to_string(),
        source,
    }
}

/// `writeln!` to the progress output, failing the bench with a [`BenchError::Io`].
macro_rules! say {
    ($out:expr) => {
        writeln!($out).map_err(io("the progress output"))?
    };
    ($out:expr, $($arg:tt)*) => {
        writeln!($out, $($arg)*).map_err(io("the progress output"))?
    };
}

/// An alert event and when it became known.
#[derive(Debug, Clone, Serialize)]
pub struct Raised {
    /// Start of the window whose close raised it.
    pub reported_ms: i64,
    /// The event.
    pub event: AlertEvent,
}

/// What one bench run saw.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    /// Seed of the traffic.
    pub seed: u64,
    /// The injected drift, `None` for the stationary run.
    pub kind: Option<&'static str>,
    /// Event time covered.
    pub hours: f64,
    /// Windows closed.
    pub windows: u64,
    /// Impressions the features stage admitted.
    pub impressions: u64,
    /// Window of the onset.
    pub onset_window_ms: Option<i64>,
    /// Firing events whose evidence window is before the onset (false alarms).
    pub firing_before_onset: usize,
    /// Firing events whose evidence window is at or after the onset.
    pub firing_after_onset: Vec<Raised>,
    /// Firing events of the stationary run.
    pub firing: usize,
    /// First firing event naming an expected subject: delay in windows from the onset
    /// window to its evidence window, and to the window whose close reported it.
    pub detection: Option<Detection>,
    /// Reported within 3 windows of the onset and no false alarm before (stationary: no
    /// firing alert at all).
    pub passed: bool,
}

/// The first alert about an injected drift.
#[derive(Debug, Clone, Serialize)]
pub struct Detection {
    /// Drift kind of the alert (data_drift, ...).
    pub kind: String,
    /// Its feature, label or task.
    pub subject: String,
    /// Its scenario, for per-scenario statistics.
    pub scenario: Option<String>,
    /// Its statistic.
    pub statistic: String,
    /// Windows from the onset window to the alert's evidence window.
    pub evidence_delay_windows: i64,
    /// Windows from the onset window to the window whose close reported it.
    pub reported_delay_windows: i64,
}

/// The feature(s) or task(s) each drift kind moves, as the monitors name them.
pub fn expected(kind: DriftKind) -> &'static [&'static str] {
    match kind {
        // +60 % prices; conversion falls through price sensitivity.
        DriftKind::PriceShock => &["price", "cvr"],
        // Users never seen before, other devices and categories, lower click propensity.
        DriftKind::NewCohort => &["new_user", "device", "item_category", "early_ctr", "ctr"],
        // Home feed and push click levels.
        DriftKind::CtrShift => &["early_ctr", "ctr", "ctcvr"],
    }
}

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

/// The bench's side of the prequential loop: the drift stage, fed as the job feeds it.
struct Watch<'a> {
    stage: DriftStage,
    rows: Option<&'a mut dyn Write>,
    rows_name: String,
    run: Run,
}

impl Observer for Watch<'_> {
    type Note = Arrival;
    type Error = BenchError;

    fn note(&mut self, event: &Event) -> Option<Arrival> {
        Arrival::of(event)
    }

    fn admitted(&mut self, arrival: Arrival) {
        self.run.impressions += u64::from(matches!(arrival, Arrival::Impression(_)));
        self.stage.on_arrival(&arrival);
    }

    fn window(&mut self, scored: ScoredWindow, _: &Trainer) -> Result<(), BenchError> {
        let window = &scored.window;
        let drifts = self.stage.window_closed(
            window.start,
            &window.users,
            &window.examples,
            &scored.outputs,
        )?;
        self.run.windows += 1;
        if let Some(out) = self.rows.as_mut() {
            for r in self.stage.rows(&drifts) {
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
                )
                .map_err(io(&self.rows_name))?;
            }
        }
        self.run
            .raised
            .extend(drifts.alerts.into_iter().map(|event| Raised {
                reported_ms: window.start,
                event,
            }));
        Ok(())
    }
}

/// One run; with `rows_dir`, every drift row goes to `<rows_dir>/<name>.csv`.
fn run_one(
    config: &Config,
    options: &BenchOptions,
    seed: u64,
    duration: Millis,
    drift: Option<(Millis, DriftKind)>,
    name: &str,
) -> Result<Run, BenchError> {
    let mut csv = rows_file(options.rows_dir.as_ref(), name)?;
    let rows_name = format!("the rows of {name}");
    let mut rows = csv.as_mut().map(|w| w as &mut dyn Write);
    if let Some(out) = rows.as_mut() {
        writeln!(
            out,
            "ts,reported_at,evidence,kind,subject,scenario,statistic,value,threshold,critical,n"
        )
        .map_err(io(&rows_name))?;
    }
    let generator_options = GeneratorOptions {
        seed,
        start_ms: DEFAULT_START_MS,
        max_events: None,
        duration_ms: Some(duration),
        drift,
        sessions_per_sec: options
            .sessions_per_sec
            .unwrap_or(GeneratorOptions::default().sessions_per_sec),
        ..GeneratorOptions::default()
    };
    let mut generator = Generator::new(generator_options);
    let mut watch = Watch {
        stage: DriftStage::new(&config.drift, &config.pipeline),
        rows,
        rows_name: rows_name.clone(),
        run: Run {
            raised: Vec::new(),
            impressions: 0,
            windows: 0,
        },
    };
    Prequential::new(&config.pipeline, &config.model).run(generator.decoded(), &mut watch)?;
    let run = watch.run;
    if let Some(out) = csv.as_mut() {
        out.flush().map_err(io(&rows_name))?;
    }
    Ok(run)
}

/// A CSV file for one run's rows, when asked for.
fn rows_file(
    dir: Option<&PathBuf>,
    name: &str,
) -> Result<Option<std::io::BufWriter<std::fs::File>>, BenchError> {
    let Some(dir) = dir else { return Ok(None) };
    std::fs::create_dir_all(dir).map_err(io(&dir.display().to_string()))?;
    let path = dir.join(format!("{name}.csv"));
    let file = std::fs::File::create(&path).map_err(io(&path.display().to_string()))?;
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

/// Runs the benchmark, printing progress and per-run findings to `out`; returns every
/// run's result (the caller decides what a failed run means).
pub fn run(
    config: &Config,
    options: &BenchOptions,
    out: &mut dyn Write,
) -> Result<Vec<RunResult>, BenchError> {
    run_with_progress(config, options, out, &mut |_, _| {})
}

/// Like [`run`], calling `progress(runs done, runs in all)` before each run and at the end.
pub fn run_with_progress(
    config: &Config,
    options: &BenchOptions,
    out: &mut dyn Write,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Vec<RunResult>, BenchError> {
    let args = options;
    if args.seeds.is_empty() {
        return Err(BenchError::Options("give at least one --seed".into()));
    }
    let grid = WindowGrid::of(&config.pipeline);
    let kinds = &args.kinds;
    let started = std::time::Instant::now();
    let mut results = Vec::new();
    if let Some(rate) = args.sessions_per_sec
        && !(rate.is_finite() && rate > 0.0)
    {
        return Err(BenchError::Options(format!(
            "--sessions-per-sec must be a positive number, got {rate}"
        )));
    }
    say!(
        out,
        "drift bench: {} sessions/s, windows of {} s, K = {} to fire, label maturity {} min, defaults of [drift] unless configured",
        args.sessions_per_sec
            .unwrap_or(GeneratorOptions::default().sessions_per_sec),
        config.pipeline.window_secs,
        config.drift.fire_after_windows,
        config.pipeline.label_maturity_secs() / 60
    );
    let total =
        (args.seeds.len() * (kinds.len() + usize::from(args.stationary_ms.is_some()))) as u64;
    for &seed in &args.seeds {
        for &kind in kinds {
            progress(results.len() as u64, total);
            let onset = DEFAULT_START_MS + args.onset_ms;
            let onset_window = grid.start_of(onset);
            let duration = args.onset_ms + args.after_ms;
            let run = run_one(
                config,
                options,
                seed,
                duration,
                Some((onset, kind)),
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
            let delay = |ms: i64| grid.windows_between(onset_window, ms);
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
            say!(out);
            say!(
                out,
                "{} (seed {seed}): onset {} UTC, window {}; {} windows, {} impressions",
                kind.as_str(),
                format_ms(onset),
                format_ms(onset_window),
                windows,
                impressions
            );
            say!(out, "  firing alerts before the onset: {before}");
            match &detection {
                Some(d) => say!(
                    out,
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
                None => say!(
                    out,
                    "  no alert named {} after the onset",
                    expected(kind).join("|")
                ),
            }
            say!(
                out,
                "  firing alerts from the onset on (evidence window: subject):"
            );
            for r in after.iter().take(25) {
                say!(
                    out,
                    "    onset+{:<3} (reported onset+{:<3}) {:<40} {:<8} {} = {}",
                    delay(r.event.window_start_ms),
                    delay(r.reported_ms),
                    describe(r),
                    r.event.severity.as_str(),
                    r.event.statistic,
                    format_value(r.event.value)
                );
            }
            if after.len() > 25 {
                say!(out, "    ... {} more", after.len() - 25);
            }
            say!(
                out,
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
        if let Some(stationary) = args.stationary_ms {
            progress(results.len() as u64, total);
            let run = run_one(
                config,
                options,
                seed,
                stationary,
                None,
                &format!("stationary-seed{seed}"),
            )?;
            let (impressions, windows) = (run.impressions, run.windows);
            let firing = run.firing();
            let hours = stationary as f64 / 3_600_000.0;
            say!(out);
            say!(
                out,
                "stationary (seed {seed}): {hours:.2} h of event time, {windows} windows, {impressions} impressions: {} firing alerts {}",
                firing.len(),
                if firing.is_empty() { "PASS" } else { "FAIL" }
            );
            for r in firing.iter().take(25) {
                say!(
                    out,
                    "    {} {} {} = {}",
                    format_ms(r.event.window_start_ms),
                    describe(r),
                    r.event.statistic,
                    format_value(r.event.value)
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
    say!(out);
    say!(
        out,
        "{passed} of {} runs passed; wall time {:.1} s",
        results.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(results)
}
