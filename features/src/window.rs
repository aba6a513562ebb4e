//! Tumbling event-time windows. Events are buffered per window; when the watermark passes a
//! window's end the window closes and its events come out sorted by
//! (ts, topic, partition, offset), so what happens next does not depend on how partitions
//! interleaved on arrival.

use std::collections::BTreeMap;

use shopstream_ingest::event::{Event, Millis};
use shopstream_ingest::record::RecordMeta;

/// An event with its origin, as buffered in a window.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Buffered {
    /// Where it came from.
    pub meta: RecordMeta,
    /// The event.
    pub event: Event,
}

impl Buffered {
    /// The deterministic processing order.
    pub fn order_key(&self) -> (Millis, RecordMeta) {
        (self.event.ts(), self.meta)
    }
}

/// A window whose events are final.
#[derive(Debug, Clone)]
pub struct ClosedWindow {
    /// Inclusive start.
    pub start: Millis,
    /// Exclusive end.
    pub end: Millis,
    /// Its events in processing order.
    pub events: Vec<Buffered>,
}

/// The job's tumbling-window grid: every window starts at a multiple of its length
/// (epoch ms). The features stage, the drift stage, the store's per-window files and the
/// drift bench all place times on this one grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct WindowGrid {
    length_ms: Millis,
}

impl WindowGrid {
    /// Windows of `length_ms` (at least 1 ms).
    pub fn new(length_ms: Millis) -> Self {
        Self {
            length_ms: length_ms.max(1),
        }
    }

    /// The grid of the job's `[pipeline]` settings (`window_secs`).
    pub fn of(config: &shopstream_config::PipelineConfig) -> Self {
        Self::new(config.window_ms())
    }

    /// Length of a window.
    pub fn length_ms(self) -> Millis {
        self.length_ms
    }

    /// Start of the window containing `ts`.
    pub fn start_of(self, ts: Millis) -> Millis {
        ts.div_euclid(self.length_ms) * self.length_ms
    }

    /// Start of the window containing `ts` on the grid moved by `offset_ms` (windows
    /// `[k * length + offset, (k + 1) * length + offset)`).
    pub fn start_of_shifted(self, ts: Millis, offset_ms: Millis) -> Millis {
        self.start_of(ts.saturating_sub(offset_ms)) + offset_ms
    }

    /// Whole windows from `from` to `to` (negative before it, rounded down).
    pub fn windows_between(self, from: Millis, to: Millis) -> i64 {
        (to - from).div_euclid(self.length_ms)
    }
}

/// The open windows (part of a checkpoint).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Windows {
    #[serde(rename = "length_ms")]
    grid: WindowGrid,
    open: BTreeMap<Millis, Vec<Buffered>>,
    /// Everything before this time is closed.
    closed_until: Option<Millis>,
    /// Size of the last closed window, to size new ones (avoids repeated regrowth).
    typical_len: usize,
}

impl Windows {
    /// Tumbling windows of `length_ms`.
    pub fn new(length_ms: Millis) -> Self {
        Self {
            grid: WindowGrid::new(length_ms),
            open: BTreeMap::new(),
            closed_until: None,
            typical_len: 0,
        }
    }

    /// Start of the window containing `ts`.
    pub fn start_of(&self, ts: Millis) -> Millis {
        self.grid.start_of(ts)
    }

    /// Length of a window.
    pub fn length_ms(&self) -> Millis {
        self.grid.length_ms()
    }

    /// Everything before this time is closed.
    pub fn closed_until(&self) -> Option<Millis> {
        self.closed_until
    }

    /// Events buffered in all open windows.
    pub fn buffered(&self) -> usize {
        self.open.values().map(Vec::len).sum()
    }

    /// Buffers an event; gives it back if its window is already closed (late).
    pub fn push(&mut self, item: Buffered) -> Result<(), Box<Buffered>> {
        if self.closed_until.is_some_and(|c| item.event.ts() < c) {
            return Err(Box::new(item));
        }
        let start = self.start_of(item.event.ts());
        let expected = self.typical_len;
        self.open
            .entry(start)
            .or_insert_with(|| Vec::with_capacity(expected))
            .push(item);
        Ok(())
    }

    /// Closes every window that ends at or before `watermark`, oldest first.
    pub fn close_until(&mut self, watermark: Millis) -> Vec<ClosedWindow> {
        let boundary = self.start_of(watermark);
        let mut closed = Vec::new();
        while let Some(entry) = self.open.first_entry() {
            if *entry.key() + self.grid.length_ms() > boundary {
                break;
            }
            let (start, events) = entry.remove_entry();
            closed.push(self.seal(start, events));
        }
        self.closed_until = Some(self.closed_until.map_or(boundary, |c| c.max(boundary)));
        closed
    }

    /// Closes all windows (end of input).
    pub fn close_all(&mut self) -> Vec<ClosedWindow> {
        let open = std::mem::take(&mut self.open);
        let closed: Vec<ClosedWindow> = open.into_iter().map(|(s, e)| self.seal(s, e)).collect();
        if let Some(last) = closed.last() {
            self.closed_until = Some(last.end);
        }
        closed
    }

    fn seal(&mut self, start: Millis, events: Vec<Buffered>) -> ClosedWindow {
        // Sort a permutation, then move each event once: events are large and a direct
        // sort would move them O(n log n) times.
        let mut order: Vec<(Millis, RecordMeta, u32)> = events
            .iter()
            .enumerate()
            .map(|(i, b)| (b.event.ts(), b.meta, i as u32))
            .collect();
        order.sort_unstable();
        let mut slots: Vec<Option<Buffered>> = events.into_iter().map(Some).collect();
        // Sized up front: collected from a filter, the list would grow by copies.
        let mut events = Vec::with_capacity(slots.len());
        events.extend(
            order
                .into_iter()
                .filter_map(|(_, _, i)| slots[i as usize].take()),
        );
        self.typical_len = events.len();
        ClosedWindow {
            start,
            end: start + self.grid.length_ms(),
            events,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grid_places_times_in_windows_of_its_length() {
        let grid = WindowGrid::new(60_000);
        assert_eq!(grid.start_of(0), 0);
        assert_eq!(grid.start_of(59_999), 0);
        assert_eq!(grid.start_of(60_000), 60_000);
        // Before the epoch the window still starts at or before the time.
        assert_eq!(grid.start_of(-1), -60_000);
        assert_eq!(grid.windows_between(60_000, 240_000), 3);
        assert_eq!(grid.windows_between(240_000, 60_000), -3);
        assert_eq!(grid.windows_between(60_000, 119_999), 0);
        // A grid moved back by a maturity of 1.5 windows: windows start at 30 s past.
        let maturity = 90_000;
        assert_eq!(grid.start_of_shifted(61_000, -maturity), 30_000);
        assert_eq!(grid.start_of_shifted(30_000, -maturity), 30_000);
        assert_eq!(grid.start_of_shifted(29_999, -maturity), -30_000);
        assert_eq!(
            WindowGrid::new(0).length_ms(),
            1,
            "a zero length is clamped"
        );
    }

    /// Checkpoints hold `Windows`: putting the length into a `WindowGrid` must not change
    /// the serialized form (`{"length_ms": ...}`), or restarts could not read older ones.
    #[test]
    fn windows_serialize_as_before_the_grid_type() {
        let json = serde_json::to_value(Windows::new(60_000)).expect("json");
        assert_eq!(json["length_ms"], serde_json::json!(60_000));
        let back: Windows = serde_json::from_value(json).expect("read back");
        assert_eq!(back.length_ms(), 60_000);
    }
}
