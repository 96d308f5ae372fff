//! Shared helpers for the store tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::sync::{Arc, Mutex};

use serde_json::{json, Map, Value};
use tracegate::store::{EventDraft, FullPolicy, StoreConfig};

/// 2026-11-26T00:00:00Z in UTC ms.
pub const T0: i64 = 1_795_651_200_000;

pub fn config(dir: &tempfile::TempDir, max_bytes: u64, policy: FullPolicy) -> StoreConfig {
    StoreConfig {
        path: dir.path().join("events.db"),
        max_bytes,
        full_policy: policy,
        commit_interval_ms: 20,
        commit_max_events: 256,
        retention_secs: 3600,
    }
}

pub fn body(utc_ms: i64) -> Map<String, Value> {
    let v = json!({
        "type": "arrived",
        "gateway": "dock-01",
        "site": "dc1",
        "read_point": "door-3",
        "time": utc_ms.to_string(),
        "identity": {"epc": "3074257bf7194e4000001a85"},
        "read_count": 3,
    });
    match v {
        Value::Object(m) => m,
        _ => unreachable!(),
    }
}

pub fn draft(utc_ms: i64) -> EventDraft {
    EventDraft {
        event_type: "arrived".into(),
        event_utc_ms: utc_ms,
        body: body(utc_ms),
    }
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
