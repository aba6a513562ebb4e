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

/// The open windows (part of a checkpoint).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Windows {
    length_ms: Millis,
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
            length_ms: length_ms.max(1),
            open: BTreeMap::new(),
            closed_until: None,
            typical_len: 0,
        }
    }

    /// Start of the window containing `ts`.
    pub fn start_of(&self, ts: Millis) -> Millis {
        ts.div_euclid(self.length_ms) * self.length_ms
    }

    /// Length of a window.
    pub fn length_ms(&self) -> Millis {
        self.length_ms
    }

    /// Everything before this time is closed.
    pub fn closed_until(&self) -> Option<Millis> {
        self.closed_until
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
            if *entry.key() + self.length_ms > boundary {
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
        let events: Vec<Buffered> = order
            .into_iter()
            .filter_map(|(_, _, i)| slots[i as usize].take())
            .collect();
        self.typical_len = events.len();
        ClosedWindow {
            start,
            end: start + self.length_ms,
            events,
        }
    }
}
