//! The typed status of a running gateway: what `/status` serves, what MQTT
//! health messages carry, and what `tracegate status` prints; the `/healthz`
//! verdict; and the metrics set from it at scrape time.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use tracegate_drivers::health::{HealthSnapshot, ReaderState};

use crate::event::UtcMs;
use crate::store::StoreStats;

/// Everything `/status` reports. The gateway builds it (`status_source` in
/// `lib.rs`); the HTTP endpoint adds `health` and `heartbeats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub gateway: String,
    pub site: String,
    pub version: String,
    pub config_hash: String,
    pub started_at: UtcMs,
    pub uptime_secs: u64,
    pub readers: Vec<HealthSnapshot>,
    /// `None` when the store statistics could not be read.
    pub store: Option<StoreStatus>,
    /// `None` without an `[mqtt]` section.
    pub publisher: Option<PublisherStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub heartbeats: Vec<HeartbeatAge>,
    /// Datasets in force and the last refusal (`None`: no `[masterdata]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masterdata: Option<crate::masterdata::service::MasterdataStatus>,
}

/// Store statistics plus what is derived from them at the snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoreStatus {
    #[serde(flatten)]
    pub stats: StoreStats,
    /// Seconds since the oldest pending event happened.
    pub oldest_pending_age_secs: Option<f64>,
}

impl StoreStatus {
    pub fn new(stats: StoreStats, now_utc_ms: i64) -> Self {
        let oldest_pending_age_secs = stats
            .oldest_pending_utc_ms
            .map(|t| now_utc_ms.saturating_sub(t).max(0) as f64 / 1000.0);
        Self {
            stats,
            oldest_pending_age_secs,
        }
    }
}

/// The MQTT publisher's counters (also in every health message).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PublisherStatus {
    pub connected: bool,
    pub connects: u64,
    /// Connections after the first one.
    pub reconnects: u64,
    pub connection_errors: u64,
    pub messages_acked: u64,
    pub events_acked: u64,
    /// Events sent, resends included.
    pub events_sent: u64,
    pub published_upto: u64,
    pub oversize_skipped: u64,
    /// Hand-over to PUBACK.
    pub publish_latency_ms: LatencyMs,
    /// Events committed but not yet handed to the broker after a reconnect
    /// (health messages only: the publisher's own view).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backlog: Option<u64>,
    /// Messages handed to the client and not acknowledged yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<usize>,
    /// Acknowledged seq ranges waiting for a gap below them to close.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acked_ranges_above_watermark: Option<usize>,
    /// UTC ms of the last PUBACK; absent before the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_puback_utc_ms: Option<i64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyMs {
    pub last: f64,
    pub avg: f64,
    pub max: f64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatAge {
    pub name: String,
    pub age_ms: u64,
}

/// The `/healthz` verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub ok: bool,
    /// Why not healthy; empty when `ok`.
    pub reasons: Vec<String>,
}

/// Healthy when every heartbeat is at most `max_age_ms` old and, when
/// readers are configured, at least one of them is running.
pub fn evaluate_health(
    heartbeat_ages: &[(&str, u64)],
    max_age_ms: u64,
    readers: &[HealthSnapshot],
) -> Health {
    let mut reasons = Vec::new();
    for (name, age) in heartbeat_ages {
        if *age > max_age_ms {
            reasons.push(format!(
                "{name} has made no progress for {:.1} s (limit {:.0} s)",
                *age as f64 / 1000.0,
                max_age_ms as f64 / 1000.0
            ));
        }
    }
    if !readers.is_empty() && !readers.iter().any(|r| r.state == ReaderState::Running) {
        let detail: Vec<String> = readers
            .iter()
            .map(|r| match &r.last_error {
                Some(e) => format!("{} {}: {e}", r.name, state_name(r.state)),
                None => format!("{} {}", r.name, state_name(r.state)),
            })
            .collect();
        reasons.push(format!(
            "all {} readers down ({})",
            readers.len(),
            detail.join("; ")
        ));
    }
    Health {
        ok: reasons.is_empty(),
        reasons,
    }
}

const STATES: [ReaderState; 4] = [
    ReaderState::Starting,
    ReaderState::Running,
    ReaderState::Reconnecting,
    ReaderState::Stopped,
];

fn state_name(s: ReaderState) -> &'static str {
    match s {
        ReaderState::Starting => "starting",
        ReaderState::Running => "running",
        ReaderState::Reconnecting => "reconnecting",
        ReaderState::Stopped => "stopped",
    }
}

/// Sets the metrics whose values are the state of other components (reader
/// health, the outbox, the publisher's connection, heartbeats) from one
/// snapshot, through the same recorder that counts reads and events where
/// they happen. Called right before `/metrics` renders.
pub(crate) fn record_metrics(
    status: &Status,
    heartbeat_ages: &[(&str, u64)],
    health: &Health,
    now_utc_ms: i64,
) {
    use metrics::{counter, gauge};
    gauge!("tracegate_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    gauge!("tracegate_healthy").set(if health.ok { 1.0 } else { 0.0 });
    for (name, age) in heartbeat_ages {
        gauge!("tracegate_heartbeat_age_seconds", "component" => name.to_string())
            .set(*age as f64 / 1000.0);
    }
    for r in &status.readers {
        let name = r.name.clone();
        gauge!("tracegate_reader_up", "reader" => name.clone(), "kind" => r.kind.to_string()).set(
            if r.state == ReaderState::Running {
                1.0
            } else {
                0.0
            },
        );
        for s in STATES {
            gauge!("tracegate_reader_state", "reader" => name.clone(), "state" => state_name(s))
                .set(if r.state == s { 1.0 } else { 0.0 });
        }
        for (metric, v) in [
            ("tracegate_reader_frames_ok_total", r.frames_ok),
            ("tracegate_reader_crc_errors_total", r.crc_errors),
            ("tracegate_reader_resyncs_total", r.resyncs),
            ("tracegate_reader_protocol_errors_total", r.protocol_errors),
            ("tracegate_reader_reads_total", r.reads),
            ("tracegate_reader_reconnects_total", r.reconnects),
        ] {
            counter!(metric, "reader" => name.clone()).absolute(v);
        }
        if let Some(ms) = r.last_read_utc_ms {
            gauge!("tracegate_reader_last_read_timestamp_seconds", "reader" => name)
                .set(ms as f64 / 1000.0);
        }
    }
    if let Some(store) = &status.store {
        let s = &store.stats;
        gauge!("tracegate_outbox_depth").set(s.pending as f64);
        gauge!("tracegate_outbox_oldest_pending_age_seconds").set(
            s.oldest_pending_utc_ms
                .map_or(0.0, |t| now_utc_ms.saturating_sub(t).max(0) as f64 / 1000.0),
        );
        counter!("tracegate_store_dropped_total").absolute(s.dropped_total);
        gauge!("tracegate_store_bytes").set(s.bytes as f64);
        gauge!("tracegate_store_last_seq").set(s.last_seq as f64);
        gauge!("tracegate_store_published_upto").set(s.published_upto as f64);
    }
    if let Some(p) = &status.publisher {
        gauge!("tracegate_mqtt_connected").set(if p.connected { 1.0 } else { 0.0 });
        counter!("tracegate_mqtt_reconnects_total").absolute(p.reconnects);
        counter!("tracegate_mqtt_connection_errors_total").absolute(p.connection_errors);
        counter!("tracegate_published_events_total").absolute(p.events_acked);
        gauge!("tracegate_publish_latency_last_seconds").set(p.publish_latency_ms.last / 1000.0);
        gauge!("tracegate_publish_latency_max_seconds").set(p.publish_latency_ms.max / 1000.0);
    }
}

fn fmt_age(secs: f64) -> String {
    if secs < 0.0 {
        return "in the future".into();
    }
    let s = secs as u64;
    match s {
        _ if secs < 10.0 => format!("{secs:.1} s"),
        0..=119 => format!("{s} s"),
        120..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn fmt_bytes(b: f64) -> String {
    if b >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / (1024.0 * 1024.0))
    } else if b >= 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{b:.0} B")
    }
}

/// The status as `tracegate status` prints it.
pub fn render_status_human(status: &Status) -> String {
    render_status_at(status, tracegate_drivers::clock::utc_now_ms())
}

pub(crate) fn render_status_at(status: &Status, now_utc_ms: i64) -> String {
    let mut out = String::new();
    let ago = |t: i64| fmt_age((now_utc_ms - t) as f64 / 1000.0);
    let _ = writeln!(
        out,
        "tracegate {}  gateway {} (site {})  up {}  health: {}",
        status.version,
        status.gateway,
        status.site,
        fmt_age(status.uptime_secs as f64),
        match &status.health {
            Some(h) if h.ok => "OK",
            Some(_) => "UNHEALTHY",
            None => "unknown",
        }
    );
    if let Some(h) = &status.health {
        for r in &h.reasons {
            let _ = writeln!(out, "  ! {r}");
        }
    }

    let _ = writeln!(out, "readers:");
    if status.readers.is_empty() {
        let _ = writeln!(out, "  (none configured)");
    } else {
        let _ = writeln!(
            out,
            "  {:<16} {:<9} {:<13} {:>10} {:>6} {:>7} {:>7}  LAST READ",
            "NAME", "KIND", "STATE", "READS", "CRC", "RESYNC", "RECONN"
        );
    }
    for r in &status.readers {
        let last = r
            .last_read_utc_ms
            .map_or("never".into(), |t| format!("{} ago", ago(t)));
        let _ = writeln!(
            out,
            "  {:<16} {:<9} {:<13} {:>10} {:>6} {:>7} {:>7}  {}",
            r.name,
            r.kind,
            state_name(r.state),
            r.reads,
            r.crc_errors,
            r.resyncs,
            r.reconnects,
            last
        );
        if let Some(e) = &r.last_error {
            let _ = writeln!(out, "    last error: {e}");
        }
    }

    match &status.store {
        Some(store) => {
            let s = &store.stats;
            let oldest = s
                .oldest_pending_utc_ms
                .map(|t| format!(", oldest {}", ago(t)))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "store: pending {}{oldest}, {}, dropped total {}, last seq {}, published upto {}",
                s.pending,
                fmt_bytes(s.bytes as f64),
                s.dropped_total,
                s.last_seq,
                s.published_upto
            );
        }
        None => {
            let _ = writeln!(out, "store: statistics unavailable (see the log)");
        }
    }

    match &status.publisher {
        Some(p) => {
            let l = p.publish_latency_ms;
            let _ = writeln!(
                out,
                "publisher: {}, connection errors {}, events acked {}, publish latency ms (avg {:.1}, last {:.1}, max {:.1}), reconnects {}",
                if p.connected { "connected" } else { "DISCONNECTED" },
                p.connection_errors,
                p.events_acked,
                l.avg,
                l.last,
                l.max,
                p.reconnects
            );
        }
        None => {
            let _ = writeln!(out, "publisher: none (no [mqtt] section)");
        }
    }

    if !status.heartbeats.is_empty() {
        let parts: Vec<String> = status
            .heartbeats
            .iter()
            .map(|h| format!("{} {}", h.name, fmt_age(h.age_ms as f64 / 1000.0)))
            .collect();
        let _ = writeln!(out, "progress: {}", parts.join(", "));
    }
    if let Some(md) = &status.masterdata {
        out.push_str(&crate::masterdata::service::human_lines(md));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;

    fn reader(name: &str, kind: &'static str, state: ReaderState) -> HealthSnapshot {
        HealthSnapshot {
            name: name.into(),
            kind: Cow::Borrowed(kind),
            state,
            since_utc_ms: 0,
            last_error: None,
            frames_ok: 130,
            crc_errors: 2,
            resyncs: 1,
            protocol_errors: 0,
            reads: 120,
            last_read_utc_ms: Some(1_000_000),
            reconnects: 1,
            outages: vec![],
            details: vec![],
        }
    }

    fn sample() -> Status {
        let mut nfc = reader("nfc \"desk\"", "pcsc", ReaderState::Reconnecting);
        nfc.last_read_utc_ms = None;
        nfc.last_error = Some("no reader".into());
        Status {
            gateway: "dock-1".into(),
            site: "dc1".into(),
            version: "0.1.0".into(),
            config_hash: "sha256:ab".into(),
            started_at: UtcMs(0),
            uptime_secs: 3725,
            readers: vec![reader("door-1", "mercury", ReaderState::Running), nfc],
            store: Some(StoreStatus::new(
                StoreStats {
                    last_seq: 50,
                    published_upto: 43,
                    pending: 7,
                    oldest_pending_utc_ms: Some(990_000),
                    dropped_total: 3,
                    bytes: 2_097_152,
                },
                1_000_000,
            )),
            publisher: Some(PublisherStatus {
                connected: false,
                reconnects: 2,
                connection_errors: 5,
                events_acked: 43,
                publish_latency_ms: LatencyMs {
                    last: 4.0,
                    avg: 3.0,
                    max: 250.0,
                },
                ..PublisherStatus::default()
            }),
            health: None,
            heartbeats: vec![],
            masterdata: None,
        }
    }

    #[test]
    fn healthy_when_fresh_and_one_reader_runs() {
        let h = evaluate_health(
            &[("store", 100), ("publisher", 200)],
            20_000,
            &sample().readers,
        );
        assert!(h.ok, "{h:?}");
        assert!(h.reasons.is_empty());
    }

    #[test]
    fn a_stale_heartbeat_is_named_in_the_reason() {
        let h = evaluate_health(
            &[("store", 100), ("publisher", 25_000)],
            20_000,
            &sample().readers,
        );
        assert!(!h.ok);
        assert_eq!(h.reasons.len(), 1);
        assert!(
            h.reasons[0].starts_with("publisher has made no progress for 25.0 s"),
            "{:?}",
            h.reasons
        );
    }

    #[test]
    fn all_readers_down_is_unhealthy_but_no_readers_is_not() {
        let mut s = sample();
        s.readers[0].state = ReaderState::Reconnecting;
        let h = evaluate_health(&[], 20_000, &s.readers);
        assert!(!h.ok);
        assert!(
            h.reasons[0].contains("all 2 readers down"),
            "{:?}",
            h.reasons
        );
        assert!(h.reasons[0].contains("no reader"), "{:?}", h.reasons);
        assert!(evaluate_health(&[], 20_000, &[]).ok);
    }

    #[test]
    fn the_status_survives_json_with_one_name_per_field() {
        let mut s = sample();
        s.health = Some(Health {
            ok: true,
            reasons: vec![],
        });
        s.heartbeats = vec![HeartbeatAge {
            name: "store".into(),
            age_ms: 5,
        }];
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["gateway"], "dock-1");
        assert!(v.get("gateway_id").is_none());
        assert_eq!(v["uptime_secs"], 3725);
        assert_eq!(v["store"]["pending"], 7);
        assert_eq!(v["store"]["oldest_pending_age_secs"], 10.0);
        assert_eq!(v["readers"][0]["state"], "running");
        assert_eq!(v["started_at"], "1970-01-01T00:00:00.000Z");
        let back: Status = serde_json::from_value(v).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn human_status_shows_readers_store_publisher_and_health() {
        let mut s = sample();
        s.health = Some(Health {
            ok: false,
            reasons: vec!["publisher has made no progress for 25.0 s".into()],
        });
        s.heartbeats = vec![HeartbeatAge {
            name: "store".into(),
            age_ms: 200,
        }];
        let text = render_status_at(&s, 1_002_000);
        assert!(
            text.starts_with(
                "tracegate 0.1.0  gateway dock-1 (site dc1)  up 1h02m  health: UNHEALTHY"
            ),
            "{text}"
        );
        assert!(text.contains("! publisher has made no progress"), "{text}");
        assert!(
            text.contains("door-1") && text.contains("running") && text.contains("2.0 s ago"),
            "{text}"
        );
        assert!(text.contains("last error: no reader"), "{text}");
        assert!(
            text.contains("store: pending 7, oldest 12 s, 2.0 MiB, dropped total 3"),
            "{text}"
        );
        assert!(
            text.contains("publisher: DISCONNECTED, connection errors 5,"),
            "{text}"
        );
        assert!(
            text.contains("publish latency ms (avg 3.0, last 4.0, max 250.0), reconnects 2"),
            "{text}"
        );
        assert!(text.contains("progress: store 0.2 s"), "{text}");
    }

    #[test]
    fn human_status_without_readers_publisher_or_store() {
        let mut s = sample();
        s.readers.clear();
        s.publisher = None;
        s.store = None;
        s.uptime_secs = 90;
        let text = render_status_at(&s, 0);
        assert!(text.contains("up 90 s  health: unknown"), "{text}");
        assert!(text.contains("(none configured)"), "{text}");
        assert!(text.contains("store: statistics unavailable"), "{text}");
        assert!(
            text.contains("publisher: none (no [mqtt] section)"),
            "{text}"
        );
    }
}
