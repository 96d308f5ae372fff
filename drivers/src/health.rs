//! Per-reader health, shared between a driver, its supervisor, the status
//! publisher and the metrics endpoint.
//!
//! Counters are atomics so the hot path never takes a lock; the state and the
//! last error sit behind a mutex that is only touched on transitions.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReaderState {
    /// Opening the port and running the start-up sequence.
    Starting,
    /// Inventory running.
    Running,
    /// Lost the reader (unplugged, timed out, protocol error); waiting to retry.
    Reconnecting,
    /// Stopped by shutdown.
    Stopped,
}

#[derive(Debug)]
pub struct ReaderHealth {
    pub name: Arc<str>,
    pub kind: &'static str,
    inner: Mutex<Transitions>,
    /// Frames that decoded with a valid checksum.
    pub frames_ok: AtomicU64,
    /// Frames dropped because their checksum did not match.
    pub crc_errors: AtomicU64,
    /// Times the decoder skipped bytes to find the next frame header.
    pub resyncs: AtomicU64,
    /// Well-formed frames the driver could not make sense of, and reader error codes.
    pub protocol_errors: AtomicU64,
    /// Tag reads handed to the pipeline.
    pub reads: AtomicU64,
    /// UTC ms of the last tag read, 0 if none yet.
    pub last_read_utc_ms: AtomicI64,
    /// Connection attempts that failed or connections that were lost.
    pub reconnects: AtomicU64,
    /// Turns of the reader task (a frame, a wait slice that timed out, a
    /// reconnect attempt): it moves while the task is alive, connected or
    /// retrying, and stands still only when the task is wedged. The
    /// gateway's watchdog watches it.
    pub progress: AtomicU64,
}

#[derive(Debug, Clone)]
struct Transitions {
    state: ReaderState,
    since_utc_ms: i64,
    last_error: Option<String>,
    /// Completed outages: (start, end) in UTC ms, newest last, at most 16 kept.
    outages: Vec<(i64, i64)>,
    outage_started: Option<i64>,
    /// Reader-specific facts (firmware version, region, temperature...).
    details: Vec<(String, String)>,
}

/// A point-in-time copy for status messages and metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthSnapshot {
    pub name: String,
    /// Borrowed from the reader's config; owned when read back from JSON
    /// (`tracegate status`).
    pub kind: std::borrow::Cow<'static, str>,
    pub state: ReaderState,
    pub since_utc_ms: i64,
    pub last_error: Option<String>,
    pub frames_ok: u64,
    pub crc_errors: u64,
    pub resyncs: u64,
    pub protocol_errors: u64,
    pub reads: u64,
    pub last_read_utc_ms: Option<i64>,
    pub reconnects: u64,
    pub outages: Vec<Outage>,
    pub details: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outage {
    pub start_utc_ms: i64,
    /// `None` while the outage lasts.
    pub end_utc_ms: Option<i64>,
}

const MAX_OUTAGES: usize = 16;

impl ReaderHealth {
    pub fn new(name: impl Into<Arc<str>>, kind: &'static str) -> Arc<Self> {
        Arc::new(Self {
            name: name.into(),
            kind,
            inner: Mutex::new(Transitions {
                state: ReaderState::Starting,
                since_utc_ms: crate::clock::utc_now_ms(),
                last_error: None,
                outages: Vec::new(),
                outage_started: None,
                details: Vec::new(),
            }),
            frames_ok: AtomicU64::new(0),
            crc_errors: AtomicU64::new(0),
            resyncs: AtomicU64::new(0),
            protocol_errors: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            last_read_utc_ms: AtomicI64::new(0),
            reconnects: AtomicU64::new(0),
            progress: AtomicU64::new(0),
        })
    }

    /// One turn of the reader task: see [`ReaderHealth::progress`].
    pub fn alive(&self) {
        self.progress.fetch_add(1, Ordering::Relaxed);
    }

    fn with<R>(&self, f: impl FnOnce(&mut Transitions) -> R) -> R {
        // A poisoned lock only means another thread panicked mid-update of
        // plain data; the data is still usable for reporting.
        let mut g = match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&mut g)
    }

    pub fn state(&self) -> ReaderState {
        self.with(|t| t.state)
    }

    pub fn set_state(&self, state: ReaderState) {
        let now = crate::clock::utc_now_ms();
        self.with(|t| {
            if t.state == state {
                return;
            }
            match state {
                ReaderState::Reconnecting => {
                    if t.outage_started.is_none() {
                        t.outage_started = Some(now);
                    }
                }
                ReaderState::Running => {
                    if let Some(start) = t.outage_started.take() {
                        t.outages.push((start, now));
                        if t.outages.len() > MAX_OUTAGES {
                            t.outages.remove(0);
                        }
                    }
                    t.last_error = None;
                }
                ReaderState::Starting | ReaderState::Stopped => {}
            }
            t.state = state;
            t.since_utc_ms = now;
        });
    }

    /// Records why the reader failed; moves it to `Reconnecting`.
    pub fn record_failure(&self, error: &dyn std::fmt::Display) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
        let msg = error.to_string();
        self.with(|t| t.last_error = Some(msg));
        self.set_state(ReaderState::Reconnecting);
    }

    pub fn set_detail(&self, key: &str, value: impl Into<String>) {
        let value = value.into();
        self.with(|t| match t.details.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => t.details.push((key.to_owned(), value)),
        });
    }

    pub fn count_reads(&self, n: usize, utc_ms: i64) {
        self.reads.fetch_add(n as u64, Ordering::Relaxed);
        self.last_read_utc_ms.fetch_max(utc_ms, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HealthSnapshot {
        let t = self.with(|t| t.clone());
        let mut outages: Vec<Outage> = t
            .outages
            .iter()
            .map(|&(s, e)| Outage {
                start_utc_ms: s,
                end_utc_ms: Some(e),
            })
            .collect();
        if let Some(s) = t.outage_started {
            outages.push(Outage {
                start_utc_ms: s,
                end_utc_ms: None,
            });
        }
        let last = self.last_read_utc_ms.load(Ordering::Relaxed);
        HealthSnapshot {
            name: self.name.to_string(),
            kind: std::borrow::Cow::Borrowed(self.kind),
            state: t.state,
            since_utc_ms: t.since_utc_ms,
            last_error: t.last_error,
            frames_ok: self.frames_ok.load(Ordering::Relaxed),
            crc_errors: self.crc_errors.load(Ordering::Relaxed),
            resyncs: self.resyncs.load(Ordering::Relaxed),
            protocol_errors: self.protocol_errors.load(Ordering::Relaxed),
            reads: self.reads.load(Ordering::Relaxed),
            last_read_utc_ms: (last != 0).then_some(last),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            outages,
            details: t.details,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_recorded_from_failure_until_running_again() {
        let h = ReaderHealth::new("r1", "sim");
        h.set_state(ReaderState::Running);
        h.record_failure(&"port vanished");
        let s = h.snapshot();
        assert_eq!(s.state, ReaderState::Reconnecting);
        assert_eq!(s.outages.len(), 1);
        assert!(s.outages[0].end_utc_ms.is_none());
        assert_eq!(s.last_error.as_deref(), Some("port vanished"));
        h.set_state(ReaderState::Running);
        let s = h.snapshot();
        assert_eq!(s.outages.len(), 1);
        assert!(s.outages[0].end_utc_ms.is_some());
        assert_eq!(s.reconnects, 1);
    }
}
