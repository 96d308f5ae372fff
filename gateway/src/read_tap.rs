//! A tap on the raw reads, for the technician's page: the pipeline offers
//! every batch of reads after it has processed them, and the tap passes it
//! on only while someone watches.
//!
//! Cost when nobody watches: one relaxed atomic load per batch (no clone,
//! no lock, no allocation). While someone watches, each batch moves (not
//! copied) into a bounded broadcast channel; a viewer that falls more than
//! [`CAPACITY`] batches behind sees `Lagged` and is dropped by the page.
//! The pipeline never waits for a viewer. Like an [`crate::Observer`],
//! watching is not delivery: events come from the pipeline whether or not
//! anyone looks at the reads here.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::broadcast;
use tracegate_drivers::RawRead;

/// Batches a viewer may fall behind by before it misses some (and the
/// page drops it). A reader sends a batch every few tens of milliseconds,
/// so this is several seconds of a stalled browser.
pub const CAPACITY: usize = 256;

/// One batch of reads as a reader delivered it.
pub type ReadBatch = Arc<Vec<RawRead>>;

/// Cheap to clone; clones share the channel and the watcher count.
#[derive(Debug, Clone)]
pub struct ReadTap {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    tx: broadcast::Sender<ReadBatch>,
    watchers: AtomicUsize,
}

impl Default for ReadTap {
    fn default() -> Self {
        Self::new()
    }
}

impl ReadTap {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(CAPACITY);
        Self {
            inner: Arc::new(Inner {
                tx,
                watchers: AtomicUsize::new(0),
            }),
        }
    }

    /// Whether anyone is subscribed.
    pub fn is_watched(&self) -> bool {
        self.inner.watchers.load(Ordering::Relaxed) > 0
    }

    /// Hands `reads` to the watchers, or drops them at once when there are
    /// none. Never waits.
    pub fn offer(&self, reads: Vec<RawRead>) {
        if self.is_watched() && !reads.is_empty() {
            // Err only when every receiver has just gone: nothing to do.
            let _ = self.inner.tx.send(Arc::new(reads));
        }
    }

    /// Starts watching; the tap feeds the channel until the returned
    /// [`Watch`] is dropped.
    pub fn subscribe(&self) -> Watch {
        let rx = self.inner.tx.subscribe();
        self.inner.watchers.fetch_add(1, Ordering::Relaxed);
        Watch {
            rx,
            tap: self.inner.clone(),
        }
    }
}

/// A subscription; dropping it stops the feed when it was the last one.
#[derive(Debug)]
pub struct Watch {
    pub rx: broadcast::Receiver<ReadBatch>,
    tap: Arc<Inner>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.tap.watchers.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracegate_drivers::HostTime;

    fn read() -> RawRead {
        RawRead {
            reader: "r".into(),
            antenna: 1,
            epc: vec![1, 2],
            tid: None,
            pc: None,
            rssi_dbm: Some(-50),
            frequency_khz: None,
            phase_deg: None,
            reader_timestamp_ms: None,
            host: HostTime {
                mono_ms: 0,
                utc_ms: 0,
                clock_synced: true,
            },
        }
    }

    #[test]
    fn reads_reach_a_watcher_and_stop_when_the_last_watcher_leaves() {
        let tap = ReadTap::new();
        assert!(!tap.is_watched());
        tap.offer(vec![read()]); // nobody: dropped
        let mut w = tap.subscribe();
        assert!(tap.is_watched());
        tap.offer(vec![read(), read()]);
        assert_eq!(w.rx.try_recv().map(|b| b.len()), Ok(2));
        assert!(w.rx.try_recv().is_err(), "the unwatched batch was not kept");
        drop(w);
        assert!(!tap.is_watched());
    }

    #[test]
    fn a_viewer_that_falls_behind_sees_lagged_and_the_tap_never_waits() {
        let tap = ReadTap::new();
        let mut w = tap.subscribe();
        for _ in 0..CAPACITY + 10 {
            tap.offer(vec![read()]);
        }
        assert!(matches!(
            w.rx.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(10))
        ));
    }
}
