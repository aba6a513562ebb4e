//! Progress of long commands: a one-line bar on stderr when it is a terminal (and logs
//! are text), otherwise a log line every [`LOG_EVERY`].

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// How often the bar is redrawn.
const REDRAW_EVERY: Duration = Duration::from_millis(200);
/// How often a log line is written when stderr is not a terminal.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Whether a bar may be drawn: stderr is a terminal and logs are human-readable text.
pub(crate) fn bar_allowed(text_logs: bool) -> bool {
    text_logs && std::io::stderr().is_terminal()
}

/// Draws (or logs) the progress of one command.
pub(crate) struct ProgressLine {
    what: &'static str,
    bar: bool,
    started: Instant,
    phase_started: Instant,
    phase: &'static str,
    last_shown: Option<Instant>,
    drawn: bool,
}

impl ProgressLine {
    /// A progress display for `what` (for example `import`).
    pub(crate) fn new(what: &'static str, bar: bool) -> Self {
        let now = Instant::now();
        Self {
            what,
            bar,
            started: now,
            phase_started: now,
            phase: "",
            last_shown: None,
            drawn: false,
        }
    }

    /// Reports `done` units of the current phase (`unit` names them) and, when known,
    /// the fraction of the phase done (for the percentage and ETA).
    pub(crate) fn update(
        &mut self,
        phase: &'static str,
        done: u64,
        unit: &str,
        fraction: Option<f64>,
    ) {
        let now = Instant::now();
        if phase != self.phase {
            self.phase = phase;
            self.phase_started = now;
            self.last_shown = None;
            if self.drawn {
                eprintln!();
                self.drawn = false;
            }
        }
        let every = if self.bar { REDRAW_EVERY } else { LOG_EVERY };
        // Logs start only once a phase has run for a while: a short command logs nothing.
        let since = self.last_shown.unwrap_or(if self.bar {
            now.checked_sub(every).unwrap_or(self.phase_started)
        } else {
            self.phase_started
        });
        if now.duration_since(since) < every {
            return;
        }
        self.last_shown = Some(now);
        let secs = now
            .duration_since(self.phase_started)
            .as_secs_f64()
            .max(1e-3);
        // A rate over the first instants of a phase says nothing yet.
        let settled = secs >= 0.5;
        let rate = done as f64 / secs;
        let share = fraction
            .filter(|f| *f > 0.0 && f.is_finite())
            .map(|f| f.min(1.0));
        let eta = share
            .filter(|f| *f < 1.0 && settled)
            .map(|f| format!(", ETA {:.0} s", secs * (1.0 - f) / f))
            .unwrap_or_default();
        let per_sec = if settled {
            format!(", {rate:.0} {unit}/s")
        } else {
            String::new()
        };
        let percent = share
            .map(|f| format!(" {:>3.0} %", f * 100.0))
            .unwrap_or_default();
        if self.bar {
            let width = 24;
            let filled = share.map_or(0, |f| (f * width as f64).round() as usize);
            let gauge = if share.is_some() {
                format!(" [{}{}]", "#".repeat(filled), ".".repeat(width - filled))
            } else {
                String::new()
            };
            eprint!(
                "\r{} {phase}{gauge}{percent} {done} {unit}{per_sec}{eta}\x1b[K",
                self.what
            );
            let _ = std::io::stderr().flush();
            self.drawn = true;
        } else {
            tracing::info!(
                command = self.what,
                phase,
                done,
                unit,
                per_sec = rate.round(),
                percent = share.map(|f| (f * 1000.0).round() / 10.0),
                "progress"
            );
        }
    }

    /// Ends the bar's line; returns the seconds since the start.
    pub(crate) fn finish(&mut self) -> f64 {
        if self.drawn {
            eprintln!();
            self.drawn = false;
        }
        self.started.elapsed().as_secs_f64()
    }
}
