//! Shared helpers for the store tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::sync::{Arc, Mutex};

use tracegate::event::Event;
use tracegate::store::{EventDraft, FullPolicy, StoreConfig};

/// 2026-11-26T00:00:00Z in UTC ms.
pub const T0: i64 = 1_795_651_200_000;

pub fn config(dir: &tempfile::TempDir, max_bytes: u64, policy: FullPolicy) -> StoreConfig {
    StoreConfig {
        path: dir.path().join("events.db"),
        max_bytes,
        full_policy: policy,
        commit_interval_ms: 20,
        commit_age_ms: 0,
        commit_max_events: 256,
        retention_secs: 3600,
    }
}

/// The EPC of every test event (sgtin-96 0614141.812345.6789).
pub const EPC: [u8; 12] = [
    0x30, 0x74, 0x25, 0x7b, 0xf7, 0x19, 0x4e, 0x40, 0x00, 0x00, 0x1a, 0x85,
];

pub fn draft(utc_ms: i64) -> EventDraft {
    EventDraft::new(Event::sample_arrival(
        "dock-01", "dc1", "door-3", &EPC, utc_ms,
    ))
}

#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs `f` with a tracing subscriber that records formatted logs; returns them.
pub fn capture_logs(f: impl FnOnce()) -> String {
    let buf = Buf::default();
    let out = buf.clone();
    let sub = tracing_subscriber::fmt()
        .with_writer(move || out.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .finish();
    tracing::subscriber::with_default(sub, f);
    let bytes = buf.0.lock().unwrap().clone();
    String::from_utf8_lossy(&bytes).into_owned()
}
