//! The loopback HTTP endpoint: `/metrics` (Prometheus text), `/healthz`,
//! `/status` (JSON), and the client side used by `tracegate status`.
//!
//! Three GET routes with `Connection: close` do not need a web framework;
//! a small hand-written HTTP/1.x handler keeps hyper out of the daemon.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::status::{evaluate_health, record_metrics, HeartbeatAge, Status};
use super::{OpsConfig, OpsError};
use crate::heartbeat::Heartbeats;

/// Returns the gateway's status (reader health snapshots, store and
/// publisher statistics). Called on a blocking thread for every `/status`,
/// `/healthz` and `/metrics` request.
pub type StatusSource = Arc<dyn Fn() -> Status + Send + Sync>;

const MAX_REQUEST: usize = 8 * 1024;
const MAX_CONNECTIONS: usize = 8;
const IO_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_STATUS_BODY: u64 = 4 * 1024 * 1024;

/// Latency buckets (seconds) for every `*_seconds` histogram. Publish
/// latency spans milliseconds on a LAN to minutes after an outage.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 900.0,
];

static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();

/// Installs the global Prometheus recorder (idempotent: later calls return
/// the same handle). Call early in `run`: metrics emitted before it are lost.
pub fn install_metrics() -> Result<PrometheusHandle, OpsError> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .map_err(|e| e.to_string())?;
            let handle = builder.install_recorder().map_err(|e| e.to_string())?;
            describe_metrics();
            Ok(handle)
        })
        .clone()
        .map_err(OpsError::Metrics)
}

/// HELP texts for the stable metric names (docs/operations.md): those
/// counted where things happen, and those set from the status snapshot at
/// scrape time ([`record_metrics`]).
fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    for (name, help) in [
        (
            "tracegate_reads_total",
            "Raw tag reads, by reader and antenna.",
        ),
        (
            "tracegate_dedup_reads_total",
            "Raw reads absorbed by deduplication (no event).",
        ),
        ("tracegate_events_total", "Events produced, by type."),
        (
            "tracegate_reads_unrouted_total",
            "Reads from an antenna no read point uses.",
        ),
        (
            "tracegate_reads_filtered_total",
            "Reads below a read point's RSSI floor or outside its EPC patterns.",
        ),
        (
            "tracegate_reader_restarts_total",
            "Driver restarts by the supervisor.",
        ),
        (
            "tracegate_flags_total",
            "Suspicious-serial flags raised, by flag.",
        ),
        (
            "tracegate_nfc_sun_total",
            "NTAG 424 SUN verifications, by verdict.",
        ),
        (
            "tracegate_reader_frames_ok_total",
            "Frames decoded with a valid checksum.",
        ),
        (
            "tracegate_reader_crc_errors_total",
            "Frames dropped for a bad checksum.",
        ),
        (
            "tracegate_reader_resyncs_total",
            "Times the decoder skipped bytes to find a frame.",
        ),
        (
            "tracegate_reader_protocol_errors_total",
            "Well-formed frames not understood, and reader error codes.",
        ),
        (
            "tracegate_reader_reads_total",
            "Tag reads handed to the pipeline.",
        ),
        (
            "tracegate_reader_reconnects_total",
            "Failed connection attempts and lost connections.",
        ),
        (
            "tracegate_store_dropped_total",
            "Events dropped by the store's full policy.",
        ),
        (
            "tracegate_mqtt_reconnects_total",
            "Connections to the broker after the first one.",
        ),
        (
            "tracegate_mqtt_connection_errors_total",
            "Failed or lost broker connections.",
        ),
        (
            "tracegate_published_events_total",
            "Events acknowledged by the broker.",
        ),
    ] {
        describe_counter!(name, help);
    }
    for (name, help) in [
        (
            "tracegate_dedup_tracked_tags",
            "Tags currently in the dedup table.",
        ),
        (
            "tracegate_dedup_evictions",
            "Tags evicted because the dedup table was full.",
        ),
        ("tracegate_build_info", "Build information; always 1."),
        ("tracegate_healthy", "1 when /healthz answers 200."),
        (
            "tracegate_heartbeat_age_seconds",
            "Seconds since each component last made progress.",
        ),
        ("tracegate_reader_up", "1 while the reader is running."),
        (
            "tracegate_reader_state",
            "1 for the reader's current state (starting, running, reconnecting, stopped).",
        ),
        (
            "tracegate_reader_last_read_timestamp_seconds",
            "UTC time of the reader's last tag read.",
        ),
        (
            "tracegate_outbox_depth",
            "Committed events not yet acknowledged by the broker.",
        ),
        (
            "tracegate_outbox_oldest_pending_age_seconds",
            "Age of the oldest unpublished event; 0 when the outbox is empty.",
        ),
        ("tracegate_store_bytes", "Database size in bytes."),
        (
            "tracegate_store_last_seq",
            "Sequence number of the newest committed event.",
        ),
        (
            "tracegate_store_published_upto",
            "Highest sequence number acknowledged by the broker.",
        ),
        (
            "tracegate_mqtt_connected",
            "1 while connected to the broker.",
        ),
        (
            "tracegate_publish_latency_last_seconds",
            "Commit-to-acknowledgement time of the last batch.",
        ),
        (
            "tracegate_publish_latency_max_seconds",
            "Longest commit-to-acknowledgement time since start.",
        ),
    ] {
        describe_gauge!(name, help);
    }
    describe_histogram!(
        "tracegate_publish_latency_seconds",
        Unit::Seconds,
        "Time from an event's commit to the broker's acknowledgement."
    );
}

#[derive(Clone)]
struct Ctx {
    metrics: PrometheusHandle,
    heartbeats: Heartbeats,
    status: StatusSource,
    stale_after_ms: u64,
}

/// A bound, not yet serving, endpoint.
#[derive(Debug)]
pub struct OpsHttp {
    listener: TcpListener,
    addr: SocketAddr,
}

impl OpsHttp {
    /// Binds the listener. Do this before READY=1 so a taken port fails the
    /// start with a clear error instead of a silent missing endpoint.
    pub async fn bind(addr: SocketAddr) -> Result<Self, OpsError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| OpsError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| OpsError::Bind { addr, source })?;
        Ok(Self { listener, addr })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `cancel` fires. Installs the metrics recorder if `run`
    /// has not yet.
    pub async fn serve(
        self,
        cfg: &OpsConfig,
        heartbeats: Heartbeats,
        status: StatusSource,
        cancel: CancellationToken,
    ) -> Result<(), OpsError> {
        let ctx = Ctx {
            metrics: install_metrics()?,
            heartbeats,
            status,
            stale_after_ms: u64::try_from(cfg.stale_after.as_millis()).unwrap_or(u64::MAX),
        };
        tracing::info!(addr = %self.addr, "serving /metrics, /healthz and /status");
        let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        // Without the crate's own HTTP listener nobody else drains the
        // histogram buckets.
        let mut upkeep = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                _ = upkeep.tick() => ctx.metrics.run_upkeep(),
                accepted = self.listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // EMFILE and friends: back off instead of spinning.
                            tracing::warn!(error = %e, "accept failed on the metrics endpoint");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let Ok(permit) = permits.clone().try_acquire_owned() else {
                        tracing::debug!(%peer, "too many metrics connections, dropping one");
                        continue;
                    };
                    let ctx = ctx.clone();
                    tokio::spawn(async move {
                        if let Err(e) = tokio::time::timeout(IO_TIMEOUT, handle(stream, ctx)).await
                            .unwrap_or_else(|_| Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "request timed out")))
                        {
                            tracing::debug!(%peer, error = %e, "metrics request failed");
                        }
                        drop(permit);
                    });
                }
            }
        }
    }
}

/// Binds `cfg.metrics_addr` and serves until `cancel`; returns at once when
/// the endpoint is disabled. Prefer [`OpsHttp::bind`] + [`OpsHttp::serve`]
/// in `run` to catch a bind error before READY=1.
pub async fn serve_http(
    cfg: &OpsConfig,
    heartbeats: Heartbeats,
    status: StatusSource,
    cancel: CancellationToken,
) -> Result<(), OpsError> {
    let Some(addr) = cfg.metrics_addr else {
        return Ok(());
    };
    OpsHttp::bind(addr)
        .await?
        .serve(cfg, heartbeats, status, cancel)
        .await
}

async fn read_request_head(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(buf);
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.len() >= MAX_REQUEST {
            return Ok(buf);
        }
    }
}

struct Response {
    code: u16,
    content_type: &'static str,
    body: String,
}

impl Response {
    fn text(code: u16, body: impl Into<String>) -> Self {
        Self {
            code,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

async fn handle(mut stream: TcpStream, ctx: Ctx) -> std::io::Result<()> {
    let head = read_request_head(&mut stream).await?;
    let (head_only, resp) = route(&head, &ctx).await;
    let header = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n\r\n",
        resp.code,
        reason(resp.code),
        resp.content_type,
        resp.body.len()
    );
    stream.write_all(header.as_bytes()).await?;
    if !head_only {
        stream.write_all(resp.body.as_bytes()).await?;
    }
    stream.shutdown().await
}

/// Takes a snapshot of everything a response needs, off the async workers
/// (the status callback may query SQLite). `None` when the callback panicked.
async fn snapshot(ctx: &Ctx) -> (Option<Status>, Vec<(&'static str, u64)>, super::Health) {
    let source = ctx.status.clone();
    let status = tokio::task::spawn_blocking(move || source()).await.ok();
    let ages = ctx.heartbeats.ages();
    let mut health = evaluate_health(
        &ages,
        ctx.stale_after_ms,
        status.as_ref().map_or(&[], |s| s.readers.as_slice()),
    );
    if status.is_none() {
        health.ok = false;
        health
            .reasons
            .push("the status callback failed (a bug: see the log)".into());
    }
    (status, ages, health)
}

async fn route(head: &[u8], ctx: &Ctx) -> (bool, Response) {
    if head.len() >= MAX_REQUEST {
        return (false, Response::text(431, "request head too large\n"));
    }
    let text = String::from_utf8_lossy(head);
    let mut parts = text.lines().next().unwrap_or("").split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return (false, Response::text(400, "malformed request line\n"));
    };
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return (false, Response::text(405, "only GET and HEAD\n")),
    };
    let path = target.split('?').next().unwrap_or(target);
    let resp = match path {
        "/metrics" => {
            let (status, ages, health) = snapshot(ctx).await;
            if let Some(status) = &status {
                record_metrics(
                    status,
                    &ages,
                    &health,
                    tracegate_drivers::clock::utc_now_ms(),
                );
            }
            Response {
                code: 200,
                content_type: "text/plain; version=0.0.4; charset=utf-8",
                body: ctx.metrics.render(),
            }
        }
        "/healthz" => {
            let (_, _, health) = snapshot(ctx).await;
            if health.ok {
                Response::text(200, "ok\n")
            } else {
                Response::text(503, format!("unhealthy: {}\n", health.reasons.join("; ")))
            }
        }
        "/status" => match snapshot(ctx).await {
            (Some(mut status), ages, health) => {
                status.health = Some(health);
                status.heartbeats = ages
                    .iter()
                    .map(|(name, age_ms)| HeartbeatAge {
                        name: (*name).to_owned(),
                        age_ms: *age_ms,
                    })
                    .collect();
                match serde_json::to_string(&status) {
                    Ok(body) => Response {
                        code: 200,
                        content_type: "application/json",
                        body,
                    },
                    Err(e) => Response::text(500, format!("status not serialisable: {e}\n")),
                }
            }
            (None, _, health) => Response::text(500, format!("{}\n", health.reasons.join("; "))),
        },
        _ => Response::text(404, "not found: try /metrics, /healthz or /status\n"),
    };
    (head_only, resp)
}

/// `GET /status` from a running daemon, for `tracegate status`.
pub async fn fetch_status(addr: SocketAddr) -> Result<Status, OpsError> {
    let fail = |reason: String| OpsError::Fetch { addr, reason };
    let mut stream = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| fail("connection timed out".into()))?
        .map_err(|e| fail(e.to_string()))?;
    let req = format!("GET /status HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut raw = Vec::new();
    tokio::time::timeout(IO_TIMEOUT, async {
        stream.write_all(req.as_bytes()).await?;
        (&mut stream)
            .take(MAX_STATUS_BODY)
            .read_to_end(&mut raw)
            .await
    })
    .await
    .map_err(|_| fail("no answer within 5 s".into()))?
    .map_err(|e| fail(e.to_string()))?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| fail("the answer is not HTTP".into()))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let code = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| fail("the answer has no HTTP status line".into()))?;
    if code != 200 {
        return Err(fail(format!("HTTP {code} from /status")));
    }
    serde_json::from_slice(&raw[split + 4..]).map_err(|e| {
        fail(format!(
            "the status is not what this version of tracegate understands: {e}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use tracegate_drivers::health::{HealthSnapshot, ReaderState};
    use tracegate_drivers::Clock;

    use super::super::status::{PublisherStatus, StoreStatus};
    use super::*;
    use crate::store::StoreStats;

    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).await.unwrap();
        let code = raw[9..12].parse().unwrap();
        let body = raw.split_once("\r\n\r\n").unwrap().1.to_owned();
        (code, body)
    }

    fn status_with(reader_state: ReaderState) -> StatusSource {
        Arc::new(move || Status {
            gateway: "gw-test".into(),
            site: "dc1".into(),
            version: "0.1.0".into(),
            config_hash: "sha256:00".into(),
            started_at: crate::event::UtcMs(0),
            uptime_secs: 5,
            readers: vec![HealthSnapshot {
                name: "r1".into(),
                kind: "sim".into(),
                state: reader_state,
                since_utc_ms: 0,
                last_error: None,
                frames_ok: 5,
                crc_errors: 1,
                resyncs: 0,
                protocol_errors: 0,
                reads: 5,
                last_read_utc_ms: None,
                reconnects: 0,
                outages: vec![],
                details: vec![],
            }],
            store: Some(StoreStatus::new(
                StoreStats {
                    pending: 4,
                    ..StoreStats::default()
                },
                0,
            )),
            publisher: Some(PublisherStatus {
                connected: true,
                ..PublisherStatus::default()
            }),
            health: None,
            heartbeats: vec![],
            masterdata: None,
        })
    }

    async fn start(
        status: StatusSource,
        hb: Heartbeats,
        stale_after_secs: u64,
    ) -> (
        SocketAddr,
        CancellationToken,
        tokio::task::JoinHandle<Result<(), OpsError>>,
    ) {
        let cfg = OpsConfig {
            metrics_addr: Some("127.0.0.1:0".parse().unwrap()),
            stale_after: std::time::Duration::from_secs(stale_after_secs),
        };
        let server = OpsHttp::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = server.local_addr();
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        let task = tokio::spawn(async move { server.serve(&cfg, hb, status, c).await });
        (addr, cancel, task)
    }

    #[tokio::test]
    async fn metrics_include_recorded_counters_and_status_gauges() {
        let hb = Heartbeats::new(Clock::new());
        hb.register("store").beat();
        let (addr, cancel, task) = start(status_with(ReaderState::Running), hb, 20).await;
        metrics::counter!("tracegate_reads_total", "reader" => "r1", "antenna" => "2").increment(3);
        metrics::histogram!("tracegate_publish_latency_seconds").record(0.02);

        let (code, body) = get(addr, "/metrics").await;
        assert_eq!(code, 200);
        assert!(
            body.contains("tracegate_reads_total{reader=\"r1\",antenna=\"2\"}"),
            "{body}"
        );
        assert!(
            body.contains("tracegate_publish_latency_seconds_bucket{le=\"0.025\"}"),
            "{body}"
        );
        assert!(
            body.contains("tracegate_reader_crc_errors_total{reader=\"r1\"} 1"),
            "{body}"
        );
        assert!(body.contains("tracegate_outbox_depth 4"), "{body}");
        assert!(
            body.contains("tracegate_outbox_oldest_pending_age_seconds 0"),
            "{body}"
        );
        assert!(body.contains("# HELP tracegate_reads_total"), "{body}");
        cancel.cancel();
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn healthz_is_200_when_fresh_and_503_with_the_reason_when_not() {
        let hb = Heartbeats::new(Clock::new());
        let store = hb.register("store");
        let (addr, cancel, task) = start(status_with(ReaderState::Running), hb.clone(), 1).await;
        store.beat();
        assert_eq!(get(addr, "/healthz").await, (200, "ok\n".to_owned()));

        // The store stops making progress for longer than stale_after_secs.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let (code, body) = get(addr, "/healthz").await;
        assert_eq!(code, 503);
        assert!(body.contains("store has made no progress"), "{body}");
        cancel.cancel();
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn healthz_fails_when_every_reader_is_down() {
        let hb = Heartbeats::new(Clock::new());
        let (addr, cancel, task) = start(status_with(ReaderState::Reconnecting), hb, 20).await;
        let (code, body) = get(addr, "/healthz").await;
        assert_eq!(code, 503);
        assert!(body.contains("all 1 readers down"), "{body}");
        cancel.cancel();
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn fetch_status_returns_the_json_with_health_and_heartbeats() {
        let hb = Heartbeats::new(Clock::new());
        hb.register("publisher").beat();
        let (addr, cancel, task) = start(status_with(ReaderState::Running), hb, 20).await;
        let v = fetch_status(addr).await.unwrap();
        assert_eq!(v.gateway, "gw-test");
        assert_eq!(v.health.as_ref().map(|h| h.ok), Some(true));
        assert_eq!(v.heartbeats[0].name, "publisher");
        let text = super::super::render_status_human(&v);
        assert!(
            text.contains("gateway gw-test") && text.contains("health: OK"),
            "{text}"
        );
        cancel.cancel();
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn unknown_paths_methods_and_garbage_get_clear_errors() {
        let hb = Heartbeats::new(Clock::new());
        let (addr, cancel, task) = start(status_with(ReaderState::Running), hb, 20).await;
        assert_eq!(get(addr, "/nope").await.0, 404);
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"DELETE /status HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).await.unwrap();
        assert!(raw.starts_with("HTTP/1.1 405"), "{raw}");
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&[0xff; 9000]).await.unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.unwrap();
        assert!(raw.starts_with(b"HTTP/1.1 431") || raw.starts_with(b"HTTP/1.1 400"));
        cancel.cancel();
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn fetch_status_from_a_closed_port_says_what_to_check() {
        let free = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = free.local_addr().unwrap();
        drop(free);
        let e = fetch_status(addr).await.unwrap_err().to_string();
        assert!(e.contains("is the service running"), "{e}");
    }

    #[tokio::test]
    async fn binding_a_taken_port_names_the_config_key() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let e = OpsHttp::bind(taken.local_addr().unwrap())
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("metrics_addr"), "{e}");
    }
}
