//! Crash points for tests: `SHOPSTREAM_FAILPOINT=NAME:N` makes the N-th arrival at the
//! point NAME print `failpoint NAME reached` on stderr and then stop the thread there
//! (sleeping), so a test can SIGKILL the process at exactly that moment: half-way through
//! a Parquet write, between the data files and their commit record, and so on.
//! `NAME:N:MS` pauses the thread there for MS milliseconds instead and goes on (a stalled
//! stage, for tests of what happens around it). Without the variable every point is a
//! counter check and nothing else.
//!
//! Points: `store.temp_written` (a data file is fsynced under its temporary name, not
//! renamed), `store.files_renamed` (a window's data files are in place, its commit record
//! is not), `store.compaction_written` (a merged file is in place, its record is not),
//! `checkpoint.temp_written` and `checkpoint.written` (around a checkpoint's rename),
//! `pipeline.message_handled` (after each message), `pipeline.partitions_assigned` (the
//! job took partitions: once at start, then at each assignment), `pipeline.model_saving` (a run's
//! outputs and last checkpoint are written, its model file is not); `store.forget_written` and
//! `store.forget_committed` (an erasure's rewrite is in place, its record is not; the
//! record is, the old file is not deleted).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

struct Armed {
    name: String,
    nth: u64,
    /// Pause this long and go on; `None`: stop for good.
    pause_ms: Option<u64>,
    seen: AtomicU64,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let value = std::env::var("SHOPSTREAM_FAILPOINT").ok()?;
            let mut parts = value.split(':');
            let name = parts.next().unwrap_or_default();
            let nth = parts.next().and_then(|n| n.parse().ok()).unwrap_or(1);
            let pause_ms = parts.next().and_then(|ms| ms.parse().ok());
            Some(Armed {
                name: name.to_string(),
                nth,
                pause_ms,
                seen: AtomicU64::new(0),
            })
        })
        .as_ref()
}

/// Marks the point `name`; stops here for good when the test armed it.
pub fn hit(name: &str) {
    let Some(armed) = armed() else { return };
    if armed.name != name {
        return;
    }
    if armed.seen.fetch_add(1, Ordering::SeqCst) + 1 == armed.nth {
        if let Some(ms) = armed.pause_ms {
            eprintln!("failpoint {name} pausing for {ms} ms");
            std::thread::sleep(std::time::Duration::from_millis(ms));
            return;
        }
        eprintln!("failpoint {name} reached");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}
