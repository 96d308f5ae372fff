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
    /// UTC ms since which no connection could be made or kept; absent while
    /// connected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreachable_since_utc_ms: Option<i64>,
    /// UTC ms since which committed events have waited without any PUBACK
    /// (set once that lasted `puback_timeout_secs`); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stalled_since_utc_ms: Option<i64>,
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

/// A cause of trouble, by name: what `/healthz`, `/status`, `tracegate
/// status` and the MQTT health message report (docs/operations.md, "Health
/// states").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    /// The store cannot commit: no space left on its filesystem.
    DiskFull,
    /// The store cannot commit: its file or filesystem is read-only.
    ReadOnly,
    /// The store cannot commit for another reason (see `detail`).
    StoreFailing,
    /// A component (or a reader task) has made no progress for longer than
    /// `[ops] stale_after_secs`; the watchdog stops pinging systemd.
    Stuck,
    /// A reader is disconnected and being retried.
    ReaderDown,
    /// No connection to the MQTT broker could be made or kept.
    BrokerUnreachable,
    /// Committed events have waited `mqtt.puback_timeout_secs` or longer
    /// and no PUBACK came, connected or not.
    PublishStalled,
}

impl HealthState {
    pub const ALL: [HealthState; 7] = [
        HealthState::DiskFull,
        HealthState::ReadOnly,
        HealthState::StoreFailing,
        HealthState::Stuck,
        HealthState::ReaderDown,
        HealthState::BrokerUnreachable,
        HealthState::PublishStalled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::DiskFull => "disk_full",
            HealthState::ReadOnly => "read_only",
            HealthState::StoreFailing => "store_failing",
            HealthState::Stuck => "stuck",
            HealthState::ReaderDown => "reader_down",
            HealthState::BrokerUnreachable => "broker_unreachable",
            HealthState::PublishStalled => "publish_stalled",
        }
    }
}

/// Whether a condition makes `/healthz` fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Reported; `/healthz` still answers 200. The gateway carries on and
    /// recovers by itself when the cause goes away (events wait in the store).
    Warn,
    /// `/healthz` answers 503: the gateway cannot do its one job (make
    /// reads durable) or is stuck.
    Fail,
}

/// One condition in force: its cause, since when, and for what.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Condition {
    pub state: HealthState,
    pub severity: Severity,
    /// The reader or component concerned, when the state has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// When it began.
    pub since: UtcMs,
    /// Seconds since `since`, at the snapshot.
    pub age_secs: f64,
    /// For people: the error or figures behind it (never parse it).
    pub detail: String,
}

impl Condition {
    /// `publish_stalled for 12 s: ...`, the line of `/healthz` and `tracegate status`.
    pub fn line(&self) -> String {
        let subject = self
            .subject
            .as_ref()
            .map(|s| format!(" {s}"))
            .unwrap_or_default();
        format!(
            "{}{subject} for {}: {}",
            self.state.as_str(),
            fmt_age(self.age_secs),
            self.detail
        )
    }
}

/// The health verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// `/healthz` answers 200: no condition of severity `fail`.
    pub ok: bool,
    /// Every condition in force, failing ones first.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The lines of the failing conditions; empty when `ok`.
    pub reasons: Vec<String>,
}

impl Health {
    fn from_conditions(mut conditions: Vec<Condition>) -> Health {
        conditions.sort_by_key(|c| std::cmp::Reverse(c.severity));
        let reasons: Vec<String> = conditions
            .iter()
            .filter(|c| c.severity == Severity::Fail)
            .map(Condition::line)
            .collect();
        Health {
            ok: reasons.is_empty(),
            conditions,
            reasons,
        }
    }

    /// A failure that is not one of the gateway's states (the status
    /// callback itself failed).
    pub fn fail_with(&mut self, reason: String) {
        self.ok = false;
        self.reasons.push(reason);
    }
}

/// What health is decided from besides the [`Status`]: heartbeat ages
/// (ms), the faults components report, the age limit and the time.
#[derive(Debug, Clone, Copy)]
pub struct HealthInputs<'a> {
    pub heartbeats: &'a [(std::sync::Arc<str>, u64)],
    pub faults: &'a [(&'static str, crate::heartbeat::Fault)],
    pub max_age_ms: u64,
    pub now_utc_ms: i64,
}

/// Decides the conditions in force and the `/healthz` verdict.
///
/// Fail: `disk_full`, `read_only`, `store_failing` (nothing new can be
/// made durable), `stuck` (a heartbeat older than `max_age_ms`), and
/// `reader_down` when no configured reader runs. Warn: `reader_down` while
/// another reader runs, `broker_unreachable`, `publish_stalled` (the store
/// keeps the events; delivery resumes by itself).
pub fn evaluate_health(status: &Status, inputs: HealthInputs<'_>) -> Health {
    let now = inputs.now_utc_ms;
    let cond = |state, severity, subject: Option<String>, since: i64, detail: String| Condition {
        state,
        severity,
        subject,
        since: UtcMs(since),
        age_secs: now.saturating_sub(since).max(0) as f64 / 1000.0,
        detail,
    };
    let mut out = Vec::new();
    for (component, f) in inputs.faults {
        out.push(cond(
            f.state,
            Severity::Fail,
            Some((*component).to_owned()),
            f.since_utc_ms,
            f.detail.clone(),
        ));
    }
    for (name, age) in inputs.heartbeats {
        if *age > inputs.max_age_ms {
            out.push(cond(
                HealthState::Stuck,
                Severity::Fail,
                Some(name.to_string()),
                now.saturating_sub(i64::try_from(*age).unwrap_or(i64::MAX)),
                format!(
                    "no progress for {:.1} s (limit {:.0} s)",
                    *age as f64 / 1000.0,
                    inputs.max_age_ms as f64 / 1000.0
                ),
            ));
        }
    }
    let readers = &status.readers;
    let none_running =
        !readers.is_empty() && !readers.iter().any(|r| r.state == ReaderState::Running);
    for r in readers {
        let outage = r.outages.iter().find(|o| o.end_utc_ms.is_none());
        let down = match r.state {
            ReaderState::Reconnecting => true,
            ReaderState::Starting => outage.is_some() || none_running,
            ReaderState::Running | ReaderState::Stopped => false,
        };
        if down {
            let since = outage.map_or(r.since_utc_ms, |o| o.start_utc_ms);
            let detail = match &r.last_error {
                Some(e) => format!("{}: {e}", state_name(r.state)),
                None => state_name(r.state).to_owned(),
            };
            let severity = if none_running {
                Severity::Fail
            } else {
                Severity::Warn
            };
            out.push(cond(
                HealthState::ReaderDown,
                severity,
                Some(r.name.clone()),
                since,
                detail,
            ));
        }
    }
    if let Some(p) = &status.publisher {
        if let Some(since) = p.unreachable_since_utc_ms.filter(|_| !p.connected) {
            out.push(cond(
                HealthState::BrokerUnreachable,
                Severity::Warn,
                None,
                since,
                format!("{} failed or lost connections so far", p.connection_errors),
            ));
        }
        if let Some(since) = p.stalled_since_utc_ms {
            let pending = status.store.as_ref().map_or(0, |s| s.stats.pending);
            out.push(cond(
                HealthState::PublishStalled,
                Severity::Warn,
                None,
                since,
                format!(
                    "{pending} events waiting, no PUBACK (connected: {})",
                    p.connected
                ),
            ));
        }
    }
    Health::from_conditions(out)
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
    heartbeat_ages: &[(std::sync::Arc<str>, u64)],
    health: &Health,
    now_utc_ms: i64,
) {
    use metrics::{counter, gauge};
    gauge!("tracegate_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    gauge!("tracegate_healthy").set(if health.ok { 1.0 } else { 0.0 });
    // Every state always has both series (0 when not in force), so an
    // alert rule never meets a series that vanished.
    for state in HealthState::ALL {
        let mut on = health.conditions.iter().filter(|c| c.state == state);
        let age = on.clone().map(|c| c.age_secs).fold(0.0, f64::max);
        let active = on.next().is_some();
        gauge!("tracegate_health_state", "state" => state.as_str()).set(if active {
            1.0
        } else {
            0.0
        });
        gauge!("tracegate_health_state_age_seconds", "state" => state.as_str()).set(age);
    }
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

/// Fills `status.health` and `status.heartbeats` from the heartbeats, now:
/// what `/status` serves and every MQTT health message carries.
pub fn with_health(
    mut status: Status,
    heartbeats: &crate::heartbeat::Heartbeats,
    max_age_ms: u64,
) -> Status {
    let ages = heartbeats.ages();
    let faults = heartbeats.faults();
    let health = evaluate_health(
        &status,
        HealthInputs {
            heartbeats: &ages,
            faults: &faults,
            max_age_ms,
            now_utc_ms: tracegate_drivers::clock::utc_now_ms(),
        },
    );
    status.health = Some(health);
    status.heartbeats = ages
        .iter()
        .map(|(name, age_ms)| HeartbeatAge {
            name: name.to_string(),
            age_ms: *age_ms,
        })
        .collect();
    status
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
            Some(h) if h.ok && h.conditions.is_empty() => "OK",
            Some(h) if h.ok => "OK (warnings)",
            Some(_) => "UNHEALTHY",
            None => "unknown",
        }
    );
    if let Some(h) = &status.health {
        for c in &h.conditions {
            let mark = match c.severity {
                Severity::Fail => '!',
                Severity::Warn => '~',
            };
            let _ = writeln!(out, "  {mark} {}", c.line());
        }
        // Failures that are not a state (the status source itself failed).
        let lines: Vec<String> = h.conditions.iter().map(Condition::line).collect();
        for r in h.reasons.iter().filter(|r| !lines.contains(r)) {
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

    use std::sync::Arc;

    use crate::heartbeat::Fault;

    const NOW: i64 = 1_000_000;

    fn health(s: &Status, hb: &[(&str, u64)], faults: &[(&'static str, Fault)]) -> Health {
        let hb: Vec<(Arc<str>, u64)> = hb.iter().map(|(n, a)| (Arc::from(*n), *a)).collect();
        evaluate_health(
            s,
            HealthInputs {
                heartbeats: &hb,
                faults,
                max_age_ms: 20_000,
                now_utc_ms: NOW,
            },
        )
    }

    fn states(h: &Health) -> Vec<(HealthState, Severity)> {
        h.conditions.iter().map(|c| (c.state, c.severity)).collect()
    }

    fn connected(mut s: Status) -> Status {
        if let Some(p) = s.publisher.as_mut() {
            p.connected = true;
        }
        s
    }

    #[test]
    fn healthy_when_fresh_and_one_reader_runs() {
        let h = health(&sample(), &[("store", 100), ("publisher", 200)], &[]);
        assert!(h.ok, "{h:?}");
        assert!(h.reasons.is_empty());
        assert_eq!(
            states(&h),
            [(HealthState::ReaderDown, Severity::Warn)],
            "the other reader reconnects: a warning"
        );
        assert_eq!(h.conditions[0].subject.as_deref(), Some("nfc \"desk\""));
    }

    #[test]
    fn a_stale_heartbeat_is_stuck_and_fails() {
        let h = health(
            &connected(sample()),
            &[("store", 100), ("reader door-1", 25_000)],
            &[],
        );
        assert!(!h.ok);
        let stuck = &h.conditions[0];
        assert_eq!(
            (stuck.state, stuck.severity),
            (HealthState::Stuck, Severity::Fail)
        );
        assert_eq!(stuck.subject.as_deref(), Some("reader door-1"));
        assert_eq!(stuck.since, UtcMs(NOW - 25_000));
        assert_eq!(stuck.age_secs, 25.0);
        assert_eq!(
            h.reasons,
            ["stuck reader door-1 for 25 s: no progress for 25.0 s (limit 20 s)"]
        );
    }

    #[test]
    fn all_readers_down_fails_but_no_readers_is_fine() {
        let mut s = connected(sample());
        s.readers[0].state = ReaderState::Reconnecting;
        s.readers[0].outages = vec![tracegate_drivers::health::Outage {
            start_utc_ms: NOW - 7_000,
            end_utc_ms: None,
        }];
        let h = health(&s, &[], &[]);
        assert!(!h.ok);
        assert_eq!(
            states(&h),
            [
                (HealthState::ReaderDown, Severity::Fail),
                (HealthState::ReaderDown, Severity::Fail)
            ]
        );
        assert_eq!(
            h.conditions[0].since,
            UtcMs(NOW - 7_000),
            "since the outage began"
        );
        assert!(h.reasons[1].contains("no reader"), "{:?}", h.reasons);
        s.readers.clear();
        assert!(health(&s, &[], &[]).ok);
    }

    #[test]
    fn store_faults_fail_with_their_own_name_and_age() {
        for state in [
            HealthState::DiskFull,
            HealthState::ReadOnly,
            HealthState::StoreFailing,
        ] {
            let f = Fault {
                state,
                since_utc_ms: NOW - 3_000,
                detail: "database or disk is full".into(),
            };
            let h = health(&connected(sample()), &[], &[("store", f)]);
            assert!(!h.ok);
            assert_eq!(h.conditions[0].state, state);
            assert_eq!(h.conditions[0].age_secs, 3.0);
            assert!(
                h.reasons[0].starts_with(&format!("{} store for 3.0 s", state.as_str())),
                "{:?}",
                h.reasons
            );
        }
    }

    #[test]
    fn an_unreachable_broker_and_a_stalled_uplink_warn_with_their_ages() {
        let mut s = sample();
        s.readers.truncate(1);
        let p = s.publisher.as_mut().unwrap();
        p.connected = false;
        p.unreachable_since_utc_ms = Some(NOW - 40_000);
        p.stalled_since_utc_ms = Some(NOW - 52_000);
        let h = health(&s, &[], &[]);
        assert!(h.ok, "uplink trouble only warns: {h:?}");
        assert_eq!(
            states(&h),
            [
                (HealthState::BrokerUnreachable, Severity::Warn),
                (HealthState::PublishStalled, Severity::Warn)
            ]
        );
        assert_eq!(h.conditions[0].age_secs, 40.0);
        assert_eq!(h.conditions[1].age_secs, 52.0);
        assert!(h.conditions[1].detail.starts_with("7 events waiting"));
        // Connected again: unreachable is over even if the field lingers.
        s.publisher.as_mut().unwrap().connected = true;
        assert_eq!(
            states(&health(&s, &[], &[])),
            [(HealthState::PublishStalled, Severity::Warn)]
        );
    }

    #[test]
    fn conditions_serialise_as_snake_case_states_with_iso_since() {
        let mut s = sample();
        s.publisher.as_mut().unwrap().unreachable_since_utc_ms = Some(NOW - 1_500);
        let h = health(&s, &[], &[]);
        let v = serde_json::to_value(&h).unwrap();
        let c = &v["conditions"][0];
        assert_eq!(c["state"], "reader_down");
        assert_eq!(c["severity"], "warn");
        assert_eq!(v["conditions"][1]["state"], "broker_unreachable");
        assert_eq!(v["conditions"][1]["since"], "1970-01-01T00:16:38.500Z");
        assert_eq!(v["conditions"][1]["age_secs"], 1.5);
        assert!(v["conditions"][1].get("subject").is_none());
        let back: Health = serde_json::from_value(v).unwrap();
        assert_eq!(back, h);
    }

    #[test]
    fn the_status_survives_json_with_one_name_per_field() {
        let mut s = sample();
        s.health = Some(Health {
            ok: true,
            conditions: vec![],
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
        s.health = Some(health(&s, &[("publisher", 25_000)], &[]));
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
        assert!(
            text.contains("! stuck publisher for 25 s: no progress for 25.0 s"),
            "{text}"
        );
        assert!(text.contains("~ reader_down nfc \"desk\""), "{text}");
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
