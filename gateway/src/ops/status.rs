//! Reading the status JSON: health verdict, derived gauges, and the human
//! rendering for `tracegate status`.
//!
//! The status JSON comes from the lead's [`super::StatusSource`] callback.
//! Expected shape (missing keys are skipped, extra keys are shown as-is;
//! `gateway`/`gateway_id` and `uptime_secs`/`uptime_s` are both accepted):
//! ```json
//! { "gateway": "dock-1", "site": "dc1", "version": "0.1.0", "uptime_secs": 12,
//!   "readers": [ <tracegate_drivers::health::HealthSnapshot>, ... ],
//!   "store": { "pending": 3, "oldest_pending_utc_ms": 1700000000000,
//!              "dropped_total": 0, "bytes": 1048576, "last_seq": 41,
//!              "published_upto": 38 },
//!   "publisher": { "connected": true, "reconnects": 0, "connection_errors": 0,
//!                  "events_acked": 38,
//!                  "publish_latency_ms": { "last": 3.1, "avg": 2.0, "max": 9.5 } } }
//! ```
//! The HTTP layer adds `"health"` and `"heartbeats"`.

use std::fmt::Write as _;

use serde_json::{json, Value};

/// The `/healthz` verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub ok: bool,
    /// Why not healthy; empty when `ok`.
    pub reasons: Vec<String>,
}

impl Health {
    pub fn to_json(&self) -> Value {
        json!({ "ok": self.ok, "reasons": self.reasons })
    }
}

/// Healthy when every heartbeat is at most `max_age_ms` old and, when
/// readers are configured, at least one of them is running.
pub fn evaluate_health(heartbeat_ages: &[(&str, u64)], max_age_ms: u64, status: &Value) -> Health {
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
    if let Some(readers) = status.get("readers").and_then(Value::as_array) {
        let running = readers
            .iter()
            .filter(|r| r.get("state").and_then(Value::as_str) == Some("running"))
            .count();
        if !readers.is_empty() && running == 0 {
            let detail: Vec<String> = readers
                .iter()
                .map(|r| {
                    let name = r.get("name").and_then(Value::as_str).unwrap_or("?");
                    let state = r.get("state").and_then(Value::as_str).unwrap_or("?");
                    match r.get("last_error").and_then(Value::as_str) {
                        Some(e) => format!("{name} {state}: {e}"),
                        None => format!("{name} {state}"),
                    }
                })
                .collect();
            reasons.push(format!(
                "all {} readers down ({})",
                readers.len(),
                detail.join("; ")
            ));
        }
    }
    Health {
        ok: reasons.is_empty(),
        reasons,
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One metric family in Prometheus text format.
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    samples: Vec<(String, f64)>,
}

impl Family {
    fn new(name: &'static str, kind: &'static str, help: &'static str) -> Self {
        Self {
            name,
            kind,
            help,
            samples: Vec::new(),
        }
    }

    fn push(&mut self, labels: &[(&str, &str)], v: f64) {
        let l = if labels.is_empty() {
            String::new()
        } else {
            let inner: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
                .collect();
            format!("{{{}}}", inner.join(","))
        };
        self.samples.push((l, v));
    }
}

fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

/// Gauges and counters derived from a status snapshot at scrape time.
/// Families whose `# TYPE` line already appears in `existing` (the
/// recorder's output) are skipped so no family is exported twice.
pub(crate) fn derived_metrics(
    status: &Value,
    heartbeat_ages: &[(&str, u64)],
    health: &Health,
    now_utc_ms: i64,
    existing: &str,
) -> String {
    let mut fams = Vec::new();

    let mut info = Family::new(
        "tracegate_build_info",
        "gauge",
        "Build information; always 1.",
    );
    info.push(&[("version", env!("CARGO_PKG_VERSION"))], 1.0);
    fams.push(info);

    let mut healthy = Family::new("tracegate_healthy", "gauge", "1 when /healthz answers 200.");
    healthy.push(&[], if health.ok { 1.0 } else { 0.0 });
    fams.push(healthy);

    let mut hb = Family::new(
        "tracegate_heartbeat_age_seconds",
        "gauge",
        "Seconds since each component last made progress.",
    );
    for (name, age) in heartbeat_ages {
        hb.push(&[("component", name)], *age as f64 / 1000.0);
    }
    fams.push(hb);

    if let Some(readers) = status.get("readers").and_then(Value::as_array) {
        let mut up = Family::new(
            "tracegate_reader_up",
            "gauge",
            "1 while the reader is running.",
        );
        let mut state = Family::new(
            "tracegate_reader_state",
            "gauge",
            "1 for the reader's current state (starting, running, reconnecting, stopped).",
        );
        let counters: [(&str, &'static str, &'static str); 6] = [
            (
                "frames_ok",
                "tracegate_reader_frames_ok_total",
                "Frames decoded with a valid checksum.",
            ),
            (
                "crc_errors",
                "tracegate_reader_crc_errors_total",
                "Frames dropped for a bad checksum.",
            ),
            (
                "resyncs",
                "tracegate_reader_resyncs_total",
                "Times the decoder skipped bytes to find a frame.",
            ),
            (
                "protocol_errors",
                "tracegate_reader_protocol_errors_total",
                "Well-formed frames not understood, and reader error codes.",
            ),
            (
                "reads",
                "tracegate_reader_reads_total",
                "Tag reads handed to the pipeline.",
            ),
            (
                "reconnects",
                "tracegate_reader_reconnects_total",
                "Failed connection attempts and lost connections.",
            ),
        ];
        let mut cfams: Vec<Family> = counters
            .iter()
            .map(|(_, n, h)| Family::new(n, "counter", h))
            .collect();
        let mut last = Family::new(
            "tracegate_reader_last_read_timestamp_seconds",
            "gauge",
            "UTC time of the reader's last tag read.",
        );
        for r in readers {
            let name = r.get("name").and_then(Value::as_str).unwrap_or("?");
            let kind = r.get("kind").and_then(Value::as_str).unwrap_or("?");
            let st = r.get("state").and_then(Value::as_str).unwrap_or("unknown");
            up.push(
                &[("reader", name), ("kind", kind)],
                if st == "running" { 1.0 } else { 0.0 },
            );
            for s in ["starting", "running", "reconnecting", "stopped"] {
                state.push(
                    &[("reader", name), ("state", s)],
                    if st == s { 1.0 } else { 0.0 },
                );
            }
            for ((key, _, _), fam) in counters.iter().zip(cfams.iter_mut()) {
                if let Some(v) = num(r, key) {
                    fam.push(&[("reader", name)], v);
                }
            }
            if let Some(ms) = num(r, "last_read_utc_ms") {
                last.push(&[("reader", name)], ms / 1000.0);
            }
        }
        fams.push(up);
        fams.push(state);
        fams.extend(cfams);
        fams.push(last);
    }

    if let Some(store) = status.get("store") {
        let mut depth = Family::new(
            "tracegate_outbox_depth",
            "gauge",
            "Committed events not yet acknowledged by the broker.",
        );
        if let Some(v) = num(store, "pending") {
            depth.push(&[], v);
        }
        fams.push(depth);
        let mut age = Family::new(
            "tracegate_outbox_oldest_pending_age_seconds",
            "gauge",
            "Age of the oldest unpublished event; 0 when the outbox is empty.",
        );
        let oldest = store.get("oldest_pending_utc_ms").and_then(Value::as_i64);
        age.push(
            &[],
            oldest.map_or(0.0, |t| {
                (now_utc_ms.saturating_sub(t)).max(0) as f64 / 1000.0
            }),
        );
        fams.push(age);
        for (key, name, kind, help) in [
            (
                "dropped_total",
                "tracegate_store_dropped_total",
                "counter",
                "Events dropped by the store's full policy.",
            ),
            (
                "bytes",
                "tracegate_store_bytes",
                "gauge",
                "Database size in bytes.",
            ),
            (
                "last_seq",
                "tracegate_store_last_seq",
                "gauge",
                "Sequence number of the newest committed event.",
            ),
            (
                "published_upto",
                "tracegate_store_published_upto",
                "gauge",
                "Highest sequence number acknowledged by the broker.",
            ),
        ] {
            let mut f = Family::new(name, kind, help);
            if let Some(v) = num(store, key) {
                f.push(&[], v);
            }
            fams.push(f);
        }
    }

    if let Some(p) = status.get("publisher").filter(|p| p.is_object()) {
        if let Some(c) = p.get("connected").and_then(Value::as_bool) {
            let mut f = Family::new(
                "tracegate_mqtt_connected",
                "gauge",
                "1 while connected to the broker.",
            );
            f.push(&[], if c { 1.0 } else { 0.0 });
            fams.push(f);
        }
        for (key, name, kind, help) in [
            (
                "reconnects",
                "tracegate_mqtt_reconnects_total",
                "counter",
                "Connections to the broker after the first one.",
            ),
            (
                "connection_errors",
                "tracegate_mqtt_connection_errors_total",
                "counter",
                "Failed or lost broker connections.",
            ),
            (
                "events_acked",
                "tracegate_published_events_total",
                "counter",
                "Events acknowledged by the broker.",
            ),
        ] {
            let mut f = Family::new(name, kind, help);
            if let Some(v) = num(p, key) {
                f.push(&[], v);
            }
            fams.push(f);
        }
        if let Some(lat) = p.get("publish_latency_ms") {
            for (key, name, help) in [
                (
                    "last",
                    "tracegate_publish_latency_last_seconds",
                    "Commit-to-acknowledgement time of the last batch.",
                ),
                (
                    "max",
                    "tracegate_publish_latency_max_seconds",
                    "Longest commit-to-acknowledgement time since start.",
                ),
            ] {
                let mut f = Family::new(name, "gauge", help);
                if let Some(v) = num(lat, key) {
                    f.push(&[], v / 1000.0);
                }
                fams.push(f);
            }
        }
    }

    let mut out = String::new();
    for f in fams {
        if f.samples.is_empty() || existing.contains(&format!("# TYPE {} ", f.name)) {
            continue;
        }
        let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
        let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind);
        for (labels, v) in f.samples {
            let _ = writeln!(out, "{}{} {}", f.name, labels, v);
        }
    }
    out
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

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// The status JSON as `tracegate status` prints it.
pub fn render_status_human(status: &Value) -> String {
    render_status_at(status, tracegate_drivers::clock::utc_now_ms())
}

pub(crate) fn render_status_at(status: &Value, now_utc_ms: i64) -> String {
    let mut out = String::new();
    let s = |k: &str| status.get(k).map(scalar).unwrap_or_else(|| "-".into());
    let health = status.get("health");
    let ok = health.and_then(|h| h.get("ok")).and_then(Value::as_bool);
    let gateway = status
        .get("gateway_id")
        .or_else(|| status.get("gateway"))
        .map(scalar)
        .unwrap_or_else(|| "-".into());
    let site = status
        .get("site")
        .and_then(Value::as_str)
        .map(|x| format!(" (site {x})"))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "tracegate {}  gateway {gateway}{site}  up {}  health: {}",
        s("version"),
        status
            .get("uptime_s")
            .or_else(|| status.get("uptime_secs"))
            .and_then(Value::as_f64)
            .map_or("-".into(), fmt_age),
        match ok {
            Some(true) => "OK",
            Some(false) => "UNHEALTHY",
            None => "unknown",
        }
    );
    if let Some(reasons) = health
        .and_then(|h| h.get("reasons"))
        .and_then(Value::as_array)
    {
        for r in reasons {
            let _ = writeln!(out, "  ! {}", scalar(r));
        }
    }

    if let Some(readers) = status.get("readers").and_then(Value::as_array) {
        let _ = writeln!(out, "readers:");
        if readers.is_empty() {
            let _ = writeln!(out, "  (none configured)");
        } else {
            let _ = writeln!(
                out,
                "  {:<16} {:<9} {:<13} {:>10} {:>6} {:>7} {:>7}  LAST READ",
                "NAME", "KIND", "STATE", "READS", "CRC", "RESYNC", "RECONN"
            );
        }
        for r in readers {
            let g = |k: &str| r.get(k).map(scalar).unwrap_or_else(|| "-".into());
            let last = r
                .get("last_read_utc_ms")
                .and_then(Value::as_i64)
                .map_or("never".into(), |t| {
                    format!("{} ago", fmt_age((now_utc_ms - t) as f64 / 1000.0))
                });
            let _ = writeln!(
                out,
                "  {:<16} {:<9} {:<13} {:>10} {:>6} {:>7} {:>7}  {}",
                g("name"),
                g("kind"),
                g("state"),
                g("reads"),
                g("crc_errors"),
                g("resyncs"),
                g("reconnects"),
                last
            );
            if let Some(e) = r.get("last_error").and_then(Value::as_str) {
                let _ = writeln!(out, "    last error: {e}");
            }
        }
    }

    if let Some(store) = status.get("store").and_then(Value::as_object) {
        let mut parts = Vec::new();
        if let Some(p) = store.get("pending").and_then(Value::as_u64) {
            let oldest = store
                .get("oldest_pending_utc_ms")
                .and_then(Value::as_i64)
                .map(|t| format!(", oldest {}", fmt_age((now_utc_ms - t) as f64 / 1000.0)))
                .unwrap_or_default();
            parts.push(format!("pending {p}{oldest}"));
        }
        if let Some(b) = store.get("bytes").and_then(Value::as_f64) {
            parts.push(fmt_bytes(b));
        }
        for (k, v) in store {
            if !matches!(
                k.as_str(),
                "pending" | "oldest_pending_utc_ms" | "oldest_pending_age_secs" | "bytes"
            ) {
                parts.push(format!("{} {}", k.replace('_', " "), scalar(v)));
            }
        }
        let _ = writeln!(out, "store: {}", parts.join(", "));
    }

    match status.get("publisher") {
        Some(Value::Object(p)) => {
            let mut parts = Vec::new();
            for (k, v) in p {
                match (k.as_str(), v) {
                    ("connected", Value::Bool(true)) => parts.push("connected".to_owned()),
                    ("connected", Value::Bool(false)) => parts.push("DISCONNECTED".to_owned()),
                    (_, Value::Object(inner)) => {
                        let sub: Vec<String> = inner
                            .iter()
                            .map(|(ik, iv)| format!("{ik} {}", scalar(iv)))
                            .collect();
                        parts.push(format!("{} ({})", k.replace('_', " "), sub.join(", ")));
                    }
                    _ => parts.push(format!("{} {}", k.replace('_', " "), scalar(v))),
                }
            }
            let _ = writeln!(out, "publisher: {}", parts.join(", "));
        }
        Some(Value::Null) => {
            let _ = writeln!(out, "publisher: none (no [mqtt] section)");
        }
        _ => {}
    }

    if let Some(hbs) = status.get("heartbeats").and_then(Value::as_array) {
        let parts: Vec<String> = hbs
            .iter()
            .map(|h| {
                format!(
                    "{} {}",
                    h.get("name").map(scalar).unwrap_or_else(|| "?".into()),
                    h.get("age_ms")
                        .and_then(Value::as_f64)
                        .map_or("-".into(), |ms| fmt_age(ms / 1000.0))
                )
            })
            .collect();
        let _ = writeln!(out, "progress: {}", parts.join(", "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Value {
        json!({
            "gateway_id": "dock-1",
            "version": "0.1.0",
            "uptime_s": 3725.0,
            "readers": [
                {"name": "door-1", "kind": "mercury", "state": "running", "reads": 120,
                 "frames_ok": 130, "crc_errors": 2, "resyncs": 1, "protocol_errors": 0,
                 "reconnects": 1, "last_read_utc_ms": 1_000_000, "last_error": null},
                {"name": "nfc \"desk\"", "kind": "pcsc", "state": "reconnecting", "reads": 0,
                 "frames_ok": 0, "crc_errors": 0, "resyncs": 0, "protocol_errors": 0,
                 "reconnects": 4, "last_read_utc_ms": null, "last_error": "no reader"}
            ],
            "store": {"pending": 7, "oldest_pending_utc_ms": 990_000, "dropped_total": 3,
                      "bytes": 2_097_152, "last_seq": 50, "published_upto": 43},
            "publisher": {"connected": false, "reconnects": 2, "connection_errors": 5,
                          "events_acked": 43,
                          "publish_latency_ms": {"last": 4.0, "avg": 3.0, "max": 250.0}}
        })
    }

    #[test]
    fn healthy_when_fresh_and_one_reader_runs() {
        let h = evaluate_health(&[("store", 100), ("publisher", 200)], 20_000, &sample());
        assert!(h.ok, "{h:?}");
        assert!(h.reasons.is_empty());
    }

    #[test]
    fn a_stale_heartbeat_is_named_in_the_reason() {
        let h = evaluate_health(&[("store", 100), ("publisher", 25_000)], 20_000, &sample());
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
        s["readers"][0]["state"] = json!("reconnecting");
        let h = evaluate_health(&[], 20_000, &s);
        assert!(!h.ok);
        assert!(
            h.reasons[0].contains("all 2 readers down"),
            "{:?}",
            h.reasons
        );
        assert!(h.reasons[0].contains("no reader"), "{:?}", h.reasons);
        let h = evaluate_health(&[], 20_000, &json!({"readers": []}));
        assert!(h.ok);
    }

    #[test]
    fn derived_metrics_cover_readers_outbox_and_drops() {
        let s = sample();
        let h = evaluate_health(&[("store", 1500)], 20_000, &s);
        let text = derived_metrics(&s, &[("store", 1500)], &h, 1_000_000, "");
        for line in [
            "tracegate_reader_up{reader=\"door-1\",kind=\"mercury\"} 1",
            "tracegate_reader_up{reader=\"nfc \\\"desk\\\"\",kind=\"pcsc\"} 0",
            "tracegate_reader_state{reader=\"door-1\",state=\"running\"} 1",
            "tracegate_reader_state{reader=\"door-1\",state=\"reconnecting\"} 0",
            "tracegate_reader_crc_errors_total{reader=\"door-1\"} 2",
            "tracegate_reader_frames_ok_total{reader=\"door-1\"} 130",
            "tracegate_reader_resyncs_total{reader=\"door-1\"} 1",
            "tracegate_reader_reads_total{reader=\"door-1\"} 120",
            "tracegate_reader_last_read_timestamp_seconds{reader=\"door-1\"} 1000",
            "tracegate_outbox_depth 7",
            "tracegate_outbox_oldest_pending_age_seconds 10",
            "tracegate_store_dropped_total 3",
            "tracegate_mqtt_connected 0",
            "tracegate_mqtt_reconnects_total 2",
            "tracegate_mqtt_connection_errors_total 5",
            "tracegate_published_events_total 43",
            "tracegate_publish_latency_max_seconds 0.25",
            "tracegate_heartbeat_age_seconds{component=\"store\"} 1.5",
            "tracegate_healthy 1",
            "# TYPE tracegate_store_dropped_total counter",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        // A reader that never read has no last-read sample.
        assert!(!text.contains("tracegate_reader_last_read_timestamp_seconds{reader=\"nfc"));
    }

    #[test]
    fn a_family_the_recorder_already_exports_is_not_repeated() {
        let s = sample();
        let h = evaluate_health(&[], 20_000, &s);
        let existing =
            "# TYPE tracegate_store_dropped_total counter\ntracegate_store_dropped_total 9\n";
        let text = derived_metrics(&s, &[], &h, 1_000_000, existing);
        assert!(!text.contains("tracegate_store_dropped_total"), "{text}");
        assert!(text.contains("tracegate_outbox_depth 7"));
    }

    #[test]
    fn human_status_shows_readers_store_publisher_and_health() {
        let mut s = sample();
        s["health"] =
            json!({"ok": false, "reasons": ["publisher has made no progress for 25.0 s"]});
        s["heartbeats"] = json!([{"name": "store", "age_ms": 200}]);
        let text = render_status_at(&s, 1_002_000);
        assert!(
            text.starts_with("tracegate 0.1.0  gateway dock-1  up 1h02m  health: UNHEALTHY"),
            "{text}"
        );
        assert!(text.contains("! publisher has made no progress"), "{text}");
        assert!(
            text.contains("door-1") && text.contains("running") && text.contains("2.0 s ago"),
            "{text}"
        );
        assert!(text.contains("last error: no reader"), "{text}");
        assert!(
            text.contains("store: pending 7, oldest 12 s, 2.0 MiB"),
            "{text}"
        );
        assert!(text.contains("dropped total 3"), "{text}");
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
    fn human_status_reads_the_gateways_own_key_names() {
        let s = json!({"gateway": "dc1-dock-07", "site": "dc1", "version": "0.1.0",
                       "uptime_secs": 90, "readers": [],
                       "store": {"pending": 0, "oldest_pending_utc_ms": null,
                                 "oldest_pending_age_secs": 1.0},
                       "publisher": null});
        let text = render_status_at(&s, 0);
        assert!(
            text.starts_with("tracegate 0.1.0  gateway dc1-dock-07 (site dc1)  up 90 s"),
            "{text}"
        );
        assert!(text.contains("(none configured)"), "{text}");
        assert!(!text.contains("oldest pending age secs"), "{text}");
        assert!(
            text.contains("publisher: none (no [mqtt] section)"),
            "{text}"
        );
    }

    #[test]
    fn human_status_of_an_empty_object_does_not_fail() {
        let text = render_status_at(&json!({}), 0);
        assert!(text.contains("health: unknown"), "{text}");
    }
}
