//! The HTTP endpoint: the technician's page (`/`, see `page/`), `/metrics`
//! (Prometheus text), `/healthz`, `/status` (JSON), and the client side
//! used by `tracegate status`.
//!
//! axum on hyper 1.x, with our own accept loop around it for what
//! `axum::serve` does not offer: a connection limit that answers `503`
//! when full, and hyper's header-read timeout, so idle or slow clients
//! cannot hold the endpoint (a hand-written server before it failed every
//! `/healthz` once 8 idle connections were open). One request per
//! connection (`Connection: close`, as before): an idle keep-alive socket
//! costs nothing. Beyond loopback every request needs the credentials of
//! `[ops] credentials_file` (`access.rs`).

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::access::Credentials;
use super::page::{self, PageSources, PageState};
use super::status::{record_metrics, with_health, Status};
use super::{OpsConfig, OpsError};
use crate::heartbeat::Heartbeats;

/// Returns the gateway's status (reader health snapshots, store and
/// publisher statistics). Called on a blocking thread for every `/status`,
/// `/healthz` and `/metrics` request.
pub type StatusSource = Arc<dyn Fn() -> Status + Send + Sync>;

/// A client has this long from connecting to the end of its request head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(1);
/// Bytes of request head hyper buffers (request line and headers); a
/// larger head is answered 431.
pub const MAX_HEAD: usize = 16 * 1024;
/// Every route is a GET; a declared body beyond this is answered 413.
pub const MAX_BODY: u64 = 1024;
/// Requests being answered at once (live streams count only while their
/// answer starts); one more is answered 503.
pub const MAX_REQUESTS: usize = 32;
/// How long `tracegate status` waits for the daemon.
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
            "tracegate_store_commits_total",
            "Transactions that committed events (each one fsync).",
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
            "tracegate_health_state",
            "1 while a health state (label state: disk_full, read_only, store_failing, stuck, reader_down, broker_unreachable, publish_stalled) is in force.",
        ),
        (
            "tracegate_health_state_age_seconds",
            "Seconds the health state has been in force (the oldest, if several); 0 when not.",
        ),
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
    /// `None` on loopback: open, as the endpoint always was.
    access: Option<Arc<Credentials>>,
    /// Requests being answered; one more gets a 503.
    requests: Arc<Semaphore>,
}

/// A bound, not yet serving, endpoint.
#[derive(Debug)]
pub struct OpsHttp {
    listener: TcpListener,
    addr: SocketAddr,
    access: Option<Arc<Credentials>>,
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
        Ok(Self {
            listener,
            addr,
            access: None,
        })
    }

    /// Loads `[ops] credentials_file` when the endpoint listens beyond
    /// loopback; refuses without one (the configuration check already
    /// requires it, this is the last line). Call before READY=1 so an
    /// unreadable file stops the start.
    pub fn with_access(mut self, cfg: &OpsConfig) -> Result<Self, OpsError> {
        if self.addr.ip().is_loopback() {
            return Ok(self);
        }
        let Some(path) = &cfg.credentials_file else {
            return Err(OpsError::Config(format!(
                "[ops] metrics_addr {} is not a loopback address and [ops] credentials_file is not set: \
                 refusing to open the page, /status and /metrics to the network without credentials",
                self.addr
            )));
        };
        self.access = Some(Arc::new(Credentials::load(path)?));
        Ok(self)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `cancel` fires, without the page's live data (the
    /// page still loads and shows `/status`). Installs the metrics
    /// recorder if `run` has not yet.
    pub async fn serve(
        self,
        cfg: &OpsConfig,
        heartbeats: Heartbeats,
        status: StatusSource,
        cancel: CancellationToken,
    ) -> Result<(), OpsError> {
        self.serve_with(cfg, heartbeats, status, PageSources::default(), cancel)
            .await
    }

    /// Serves `/metrics`, `/healthz`, `/status` and the page until
    /// `cancel` fires.
    pub async fn serve_with(
        self,
        cfg: &OpsConfig,
        heartbeats: Heartbeats,
        status: StatusSource,
        page: PageSources,
        cancel: CancellationToken,
    ) -> Result<(), OpsError> {
        let exposed = !self.addr.ip().is_loopback();
        if exposed && self.access.is_none() {
            return Err(OpsError::Config(format!(
                "[ops] metrics_addr {} is not a loopback address: call with_access first",
                self.addr
            )));
        }
        let ctx = Ctx {
            metrics: install_metrics()?,
            heartbeats,
            status,
            stale_after_ms: u64::try_from(cfg.stale_after.as_millis()).unwrap_or(u64::MAX),
            access: self.access.clone(),
            requests: Arc::new(Semaphore::new(MAX_REQUESTS)),
        };
        let app = router(
            ctx.clone(),
            PageState::new(page, cfg.max_viewers, cancel.clone()),
        );
        if exposed {
            tracing::warn!(
                event = "ops.http_exposed",
                addr = %self.addr,
                "the page, /status, /metrics and /healthz are reachable from the network; \
                 every request needs the credentials of [ops] credentials_file"
            );
        }
        tracing::info!(
            addr = %self.addr,
            "serving the page at http://{}/ and /metrics, /healthz, /status",
            self.addr
        );
        let connections = Arc::new(Semaphore::new(cfg.max_connections));
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
                            tracing::warn!(error = %e, "accept failed on the HTTP endpoint");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    match connections.clone().try_acquire_owned() {
                        Ok(permit) => {
                            tokio::spawn(connection(stream, app.clone(), cancel.clone(), permit));
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "too many HTTP connections, answering 503");
                            tokio::spawn(refuse(stream));
                        }
                    }
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
        .with_access(cfg)?
        .serve(cfg, heartbeats, status, cancel)
        .await
}

/// Serves one connection with hyper: one request per connection (as the
/// endpoint always did), its head within [`HEADER_TIMEOUT`] and
/// [`MAX_HEAD`] bytes. `_permit` is the connection's slot.
async fn connection(
    stream: TcpStream,
    app: Router,
    cancel: CancellationToken,
    _permit: OwnedSemaphorePermit,
) {
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
        }
        () = cancel.cancelled() => {
            // A live stream never ends on its own: give the rest a moment.
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
        }
    }
}

/// The answer to a connection beyond `max_connections`: a 503 without
/// reading the request, then close.
async fn refuse(mut stream: TcpStream) {
    let body = "too many connections; try again\n";
    let msg = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(HEADER_TIMEOUT, async {
        stream.write_all(msg.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

fn router(ctx: Ctx, page: PageState) -> Router {
    Router::new()
        .route("/metrics", get(metrics_route))
        .route("/healthz", get(healthz_route))
        .route("/status", get(status_route))
        .with_state(ctx.clone())
        .merge(page::routes(page))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(ctx, guard))
}

/// Every request: the request limit, the size limit, access beyond
/// loopback, and `Cache-Control: no-store` on every answer.
async fn guard(State(ctx): State<Ctx>, req: Request, next: Next) -> Response {
    let Ok(_permit) = ctx.requests.clone().try_acquire_owned() else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many requests at once; try again\n",
        );
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // Every route is a GET: a body is never needed. A chunked one is
    // refused outright, a declared one only when too large.
    if declared.is_some_and(|n| n > MAX_BODY)
        || req.headers().contains_key(header::TRANSFER_ENCODING)
    {
        return text(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n");
    }
    if let Some(access) = &ctx.access {
        let auth = req
            .headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        if !access.allows(auth) {
            let mut r = text(StatusCode::UNAUTHORIZED, "credentials required\n");
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"tracegate\", charset=\"UTF-8\""),
            );
            return r;
        }
    }
    let mut resp = next.run(req).await;
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn text(code: StatusCode, body: impl Into<String>) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body.into(),
    )
        .into_response()
}

async fn not_found() -> Response {
    text(
        StatusCode::NOT_FOUND,
        "not found: try / (the page), /metrics, /healthz or /status\n",
    )
}

/// Takes a snapshot of everything a response needs, off the async workers
/// (the status callback may query SQLite), with its health and heartbeats
/// filled in. `Err` with the health when the callback panicked.
async fn snapshot(ctx: &Ctx) -> Result<Status, super::Health> {
    let source = ctx.status.clone();
    let (hb, max_age) = (ctx.heartbeats.clone(), ctx.stale_after_ms);
    tokio::task::spawn_blocking(move || with_health(source(), &hb, max_age))
        .await
        .map_err(|_| super::Health {
            ok: false,
            conditions: Vec::new(),
            reasons: vec!["the status callback failed (a bug: see the log)".into()],
        })
}

/// Heartbeat ages as the status carries them.
fn ages_of(status: &Status) -> Vec<(Arc<str>, u64)> {
    status
        .heartbeats
        .iter()
        .map(|h| (Arc::from(h.name.as_str()), h.age_ms))
        .collect()
}

async fn metrics_route(State(ctx): State<Ctx>) -> Response {
    if let Ok(status) = snapshot(&ctx).await {
        if let Some(health) = &status.health {
            record_metrics(
                &status,
                &ages_of(&status),
                health,
                tracegate_drivers::clock::utc_now_ms(),
            );
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        ctx.metrics.render(),
    )
        .into_response()
}

async fn healthz_route(State(ctx): State<Ctx>) -> Response {
    let health = match snapshot(&ctx).await {
        Ok(s) => s.health.unwrap_or_else(|| super::Health {
            ok: true,
            conditions: Vec::new(),
            reasons: Vec::new(),
        }),
        Err(h) => h,
    };
    if health.ok && health.conditions.is_empty() {
        text(StatusCode::OK, "ok\n")
    } else if health.ok {
        // Warnings only: still healthy, and they say what is going on.
        let lines: Vec<String> = health.conditions.iter().map(|c| c.line()).collect();
        text(StatusCode::OK, format!("ok; warn: {}\n", lines.join("; ")))
    } else {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: {}\n", health.reasons.join("; ")),
        )
    }
}

async fn status_route(State(ctx): State<Ctx>) -> Response {
    match snapshot(&ctx).await {
        Ok(status) => match serde_json::to_string(&status) {
            Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
            Err(e) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("status not serialisable: {e}\n"),
            ),
        },
        Err(health) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{}\n", health.reasons.join("; ")),
        ),
    }
}

/// `GET /status` from a running daemon, for `tracegate status`.
pub async fn fetch_status(addr: SocketAddr) -> Result<Status, OpsError> {
    fetch_status_with(addr, None).await
}

/// [`fetch_status`] with an `Authorization` header value (see
/// [`Credentials::client_authorization`]), for an endpoint beyond loopback.
pub async fn fetch_status_with(
    addr: SocketAddr,
    authorization: Option<&str>,
) -> Result<Status, OpsError> {
    let fail = |reason: String| OpsError::Fetch { addr, reason };
    let mut stream = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| fail("connection timed out".into()))?
        .map_err(|e| fail(e.to_string()))?;
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let req = format!("GET /status HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n");
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
            ..OpsConfig::default()
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
        assert!(body.contains("stuck store for"), "{body}");
        cancel.cancel();
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn healthz_fails_when_every_reader_is_down() {
        let hb = Heartbeats::new(Clock::new());
        let (addr, cancel, task) = start(status_with(ReaderState::Reconnecting), hb, 20).await;
        let (code, body) = get(addr, "/healthz").await;
        assert_eq!(code, 503);
        assert!(body.contains("reader_down r1"), "{body}");
        cancel.cancel();
        task.await.unwrap().unwrap();
    }

    /// Every tracegate metric the alert rules in docs/operations.md use is
    /// one this endpoint emits.
    #[tokio::test]
    async fn the_documented_alert_rules_use_only_metrics_that_are_emitted() {
        let doc = include_str!("../../../docs/operations.md");
        let from = doc
            .find("Alert rules (Prometheus)")
            .expect("alert rules section");
        let rules = &doc[from..];
        let rules = &rules[..rules.find("```\n\n").expect("end of the rules block")];
        let mut names: Vec<&str> = rules
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("tracegate_"))
            .collect();
        names.sort_unstable();
        names.dedup();
        assert!(names.len() >= 5, "{names:?}");
        let hb = Heartbeats::new(Clock::new());
        hb.register("store").beat();
        let (addr, cancel, task) = start(status_with(ReaderState::Running), hb, 20).await;
        let (_, body) = get(addr, "/metrics").await;
        for name in names {
            assert!(
                body.lines().any(|l| !l.starts_with('#')
                    && l.starts_with(name)
                    && l[name.len()..].starts_with([' ', '{'])),
                "{name} is in the alert rules but not in /metrics:\n{body}"
            );
        }
        cancel.cancel();
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_full_disk_fails_healthz_by_name_and_a_stalled_uplink_only_warns() {
        let hb = Heartbeats::new(Clock::new());
        let store = hb.register("store");
        let stalled: StatusSource = Arc::new(|| {
            let mut s = status_with(ReaderState::Running)();
            if let Some(p) = s.publisher.as_mut() {
                p.stalled_since_utc_ms = Some(tracegate_drivers::clock::utc_now_ms() - 16_000);
            }
            s
        });
        let (addr, cancel, task) = start(stalled, hb.clone(), 20).await;
        let (code, body) = get(addr, "/healthz").await;
        assert_eq!(code, 200, "{body}");
        assert!(
            body.starts_with("ok; warn: publish_stalled for 1"),
            "{body}"
        );
        let (_, metrics) = get(addr, "/metrics").await;
        assert!(
            metrics.contains("tracegate_health_state{state=\"publish_stalled\"} 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains("tracegate_health_state{state=\"disk_full\"} 0"),
            "{metrics}"
        );

        store.set_fault(Some(crate::heartbeat::Fault {
            state: super::super::HealthState::DiskFull,
            since_utc_ms: tracegate_drivers::clock::utc_now_ms() - 2_000,
            detail: "database or disk is full".into(),
        }));
        let (code, body) = get(addr, "/healthz").await;
        assert_eq!(code, 503);
        assert!(
            body.starts_with("unhealthy: disk_full store for 2."),
            "{body}"
        );
        let v = fetch_status(addr).await.unwrap();
        let states: Vec<_> = v
            .health
            .unwrap()
            .conditions
            .iter()
            .map(|c| c.state)
            .collect();
        assert_eq!(
            states,
            [
                super::super::HealthState::DiskFull,
                super::super::HealthState::PublishStalled
            ]
        );
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

    /// Reads one whole answer (the server closes after each).
    async fn raw(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw).await;
        String::from_utf8_lossy(&raw).into_owned()
    }

    async fn start_with(
        cfg: OpsConfig,
        bind: &str,
        page: PageSources,
    ) -> (
        SocketAddr,
        CancellationToken,
        tokio::task::JoinHandle<Result<(), OpsError>>,
    ) {
        let hb = Heartbeats::new(Clock::new());
        let server = OpsHttp::bind(bind.parse().unwrap())
            .await
            .unwrap()
            .with_access(&cfg)
            .unwrap();
        let addr = SocketAddr::new([127, 0, 0, 1].into(), server.local_addr().port());
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        let status = status_with(ReaderState::Running);
        let task = tokio::spawn(async move { server.serve_with(&cfg, hb, status, page, c).await });
        (addr, cancel, task)
    }

    #[tokio::test]
    async fn sixty_four_idle_sockets_neither_block_healthz_nor_stay_open() {
        let (addr, cancel, task) =
            start_with(OpsConfig::default(), "127.0.0.1:0", PageSources::default()).await;
        let mut idle = Vec::new();
        for _ in 0..64 {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        let t0 = std::time::Instant::now();
        assert_eq!(get(addr, "/healthz").await, (200, "ok\n".to_owned()));
        // The bound the issue sets: an answer within 1 s despite the idle sockets.
        assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
        // The header-read timeout closes them (no request within 1 s).
        for mut s in idle {
            let mut b = [0u8; 64];
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
                .await
                .expect("an idle socket was closed by the server");
            assert!(matches!(n, Ok(0) | Err(_)) || String::from_utf8_lossy(&b).contains("408"));
        }
        cancel.cancel();
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_connection_beyond_the_limit_gets_503_and_the_slot_frees_when_one_closes() {
        let cfg = OpsConfig {
            max_connections: 16,
            ..OpsConfig::default()
        };
        let (addr, cancel, task) = start_with(cfg, "127.0.0.1:0", PageSources::default()).await;
        let mut held = Vec::new();
        for _ in 0..16 {
            held.push(TcpStream::connect(addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let answer = raw(addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.contains("too many connections"), "{answer}");
        drop(held);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(get(addr, "/healthz").await.0, 200);
        cancel.cancel();
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn requests_beyond_the_limit_get_503_while_the_others_are_answered() {
        // A status that takes 2 s holds every request that needs it, far
        // longer than opening all the connections takes.
        let slow = status_with(ReaderState::Running);
        let status: StatusSource = Arc::new(move || {
            std::thread::sleep(Duration::from_secs(2));
            slow()
        });
        let server = OpsHttp::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = server.local_addr();
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        let hb = Heartbeats::new(Clock::new());
        let task =
            tokio::spawn(async move { server.serve(&OpsConfig::default(), hb, status, c).await });
        let n = MAX_REQUESTS + 8;
        let answers: Vec<String> = futures_util::future::join_all(
            (0..n).map(|_| raw(addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")),
        )
        .await;
        let ok = answers
            .iter()
            .filter(|a| a.starts_with("HTTP/1.1 200"))
            .count();
        let busy = answers
            .iter()
            .filter(|a| a.starts_with("HTTP/1.1 503") && a.contains("too many requests"))
            .count();
        assert_eq!((ok, busy), (MAX_REQUESTS, 8), "{answers:?}");
        cancel.cancel();
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn oversized_heads_and_bodies_are_refused() {
        let (addr, cancel, task) =
            start_with(OpsConfig::default(), "127.0.0.1:0", PageSources::default()).await;
        let big = format!(
            "GET /status HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
            "a".repeat(20_000)
        );
        let answer = raw(addr, big.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
        let answer = raw(
            addr,
            b"GET /status HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        // A slow client that never finishes its head is cut off.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /status HTTP/1.1\r\nHost").await.unwrap();
        let mut rest = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
        assert!(r.is_ok(), "the half-sent request was not timed out");
        assert!(!String::from_utf8_lossy(&rest).contains("200 OK"));
        cancel.cancel();
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn beyond_loopback_every_route_needs_the_credentials_of_the_file() {
        // Without a file the endpoint refuses to start.
        let bound = OpsHttp::bind("0.0.0.0:0".parse().unwrap()).await.unwrap();
        let e = bound
            .with_access(&OpsConfig::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("credentials_file"), "{e}");

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("page.cred");
        std::fs::write(&file, "token = 0123456789abcdef-secret\n").unwrap();
        let cfg = OpsConfig {
            credentials_file: Some(file.clone()),
            ..OpsConfig::default()
        };
        let (addr, cancel, task) = start_with(cfg, "0.0.0.0:0", PageSources::default()).await;
        for path in ["/", "/status", "/metrics", "/healthz", "/api/live"] {
            let answer = raw(
                addr,
                format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
            )
            .await;
            assert!(answer.starts_with("HTTP/1.1 401"), "{path}: {answer}");
            assert!(
                answer
                    .to_ascii_lowercase()
                    .contains("www-authenticate: basic"),
                "{answer}"
            );
            assert!(!answer.contains("secret"), "{answer}");
        }
        let answer = raw(
            addr,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong-token-wrong\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
        let header = Credentials::client_authorization(&file).unwrap();
        let v = fetch_status_with(addr, Some(&header)).await.unwrap();
        assert_eq!(v.gateway, "gw-test");
        assert!(fetch_status(addr)
            .await
            .unwrap_err()
            .to_string()
            .contains("401"));
        cancel.cancel();
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn the_page_is_served_from_the_binary_within_150_kb() {
        let (addr, cancel, task) =
            start_with(OpsConfig::default(), "127.0.0.1:0", PageSources::default()).await;
        let mut total = 0;
        for (path, kind) in [
            ("/", "text/html"),
            ("/app.js", "text/javascript"),
            ("/app.css", "text/css"),
        ] {
            let answer = raw(
                addr,
                format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
            )
            .await;
            assert!(answer.starts_with("HTTP/1.1 200"), "{path}: {answer}");
            assert!(
                answer.contains(&format!("content-type: {kind}")),
                "{answer}"
            );
            assert!(answer.contains("content-security-policy"), "{answer}");
            total += answer.len();
        }
        assert!(total <= 150 * 1024, "the page weighs {total} bytes");
        let index = raw(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(
            !index.contains("http://") && !index.contains("https://"),
            "no CDN: {index}"
        );
        let (code, body) = get(addr, "/api/page").await;
        assert_eq!(code, 200);
        assert!(body.contains("\"max_viewers\":4"), "{body}");
        cancel.cancel();
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn live_reads_flow_only_while_watched_and_viewers_beyond_the_limit_get_503() {
        use crate::ops::page::PageInfo;
        use crate::read_tap::ReadTap;
        let tap = ReadTap::new();
        let page = PageSources {
            info: PageInfo::default(),
            reads: Some(tap.clone()),
            events: None,
            lights: None,
        };
        let cfg = OpsConfig {
            max_viewers: 1,
            ..OpsConfig::default()
        };
        let (addr, cancel, task) = start_with(cfg, "127.0.0.1:0", page).await;
        assert!(!tap.is_watched(), "no viewer, no feed");
        let mut viewer = TcpStream::connect(addr).await.unwrap();
        viewer
            .write_all(b"GET /api/live HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut seen = String::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !seen.contains("3074257BF7194E4000001A85") {
            tap.offer(vec![tracegate_drivers::RawRead {
                reader: "portal".into(),
                antenna: 2,
                epc: hex::decode("3074257BF7194E4000001A85").unwrap(),
                tid: None,
                pc: None,
                rssi_dbm: Some(-51),
                frequency_khz: None,
                phase_deg: None,
                reader_timestamp_ms: None,
                host: tracegate_drivers::HostTime {
                    mono_ms: 0,
                    utc_ms: 0,
                    clock_synced: true,
                },
            }]);
            let mut buf = [0u8; 4096];
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(600), viewer.read(&mut buf)).await
            {
                seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no read in the stream: {seen}"
            );
        }
        assert!(seen.contains("text/event-stream"), "{seen}");
        assert!(seen.contains("event: reads"), "{seen}");
        assert!(
            seen.contains("urn:epc:id:sgtin:0614141.812345.6789"),
            "{seen}"
        );
        let second = raw(addr, b"GET /api/live HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(second.starts_with("HTTP/1.1 503"), "{second}");
        drop(viewer);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while tap.is_watched() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the feed outlived its viewer"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        cancel.cancel();
        task.await.unwrap().unwrap();
    }

    /// `promtool check metrics` (Debian package `prometheus`) on a scrape
    /// with every metric the gateway describes. Skipped without promtool
    /// unless `CI=true` (CI installs it).
    #[tokio::test]
    async fn metrics_pass_promtool_check_metrics() {
        let promtool = std::env::var_os("PATH").and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("promtool"))
                .find(|p| p.is_file())
        });
        let Some(promtool) = promtool else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "promtool is required under CI (apt-get install prometheus)"
            );
            eprintln!("skipped: promtool not found (Debian package prometheus)");
            return;
        };
        let hb = Heartbeats::new(Clock::new());
        hb.register("store").beat();
        let (addr, cancel, task) = start(status_with(ReaderState::Running), hb, 20).await;
        metrics::counter!("tracegate_reads_unrouted_total").increment(1);
        metrics::counter!("tracegate_reads_filtered_total").increment(1);
        metrics::counter!("tracegate_dedup_reads_total").increment(1);
        metrics::gauge!("tracegate_dedup_tracked_tags").set(3.0);
        metrics::gauge!("tracegate_dedup_evictions").set(0.0);
        metrics::counter!("tracegate_events_total", "type" => "arrived").increment(1);
        let (code, body) = get(addr, "/metrics").await;
        assert_eq!(code, 200);
        let mut child = std::process::Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write as _;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(body.as_bytes())
                .unwrap();
        }
        let out = child.wait_with_output().unwrap();
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && report.trim().is_empty(),
            "promtool: {report}\n{body}"
        );
        cancel.cancel();
        task.await.unwrap().unwrap();
    }
}
