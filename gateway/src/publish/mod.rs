//! MQTT uplink to the serial registry.
//!
//! Delivery is at-least-once: an event leaves the outbox (the store's
//! `published_upto` watermark) only after the broker's PUBACK for the message
//! that carried it, and only over a contiguous acknowledged prefix. After a
//! reconnect or a restart everything unacknowledged is read again from SQLite
//! and sent again (clean MQTT session: the store, not the broker session,
//! owns durability). See docs/events.md for topics and payloads.
//!
//! The scheduling rules live in [`outbox::Outbox`], a sans-IO state machine;
//! this module is the I/O around it. One task owns the rumqttc `EventLoop`.
//! Its `poll()` future is never dropped half-way (that could lose a packet
//! written into the codec buffer); instead the loop selects on the pinned
//! future next to the other wake-ups and hands publishes to the client with
//! `try_publish` inside a window smaller than the request channel, so
//! `try_publish` never finds the channel full and the loop never blocks on it.

pub mod config;
#[cfg(feature = "demo-broker")]
pub mod embedded;
pub mod epcis;
pub mod outbox;
pub mod render;
mod tls;
mod tracker;

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, Incoming, LastWill, MqttOptions,
    NetworkOptions, Outgoing, QoS, TlsConfiguration, Transport,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::heartbeat::Heartbeat;
use crate::ops::{LatencyMs, PublisherStatus, Status};
use crate::store::{StoreError, StoreReader, Watermark};

pub use config::{
    BrokerUrl, ClientAuth, Credentials, MqttConfig, MqttProblem, MqttProtocol, PayloadFormat,
    RawMqtt, Secret,
};
pub use render::{BatchRenderer, BatchSource, JsonRenderer, EVENTS_SCHEMA};
pub use tls::ensure_crypto_provider;

use outbox::{Acked, Action, Batch, ConnId, Outbox, OutboxConfig, Split};

pub const STATUS_SCHEMA: &str = "tracegate.status/1";
pub const HEALTH_SCHEMA: &str = "tracegate.health/1";
/// The idle probe's whole payload (docs/events.md).
const PROBE_PAYLOAD: &[u8] = br#"{"schema":"tracegate.probe/1"}"#;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("MQTT configuration: {0}")]
    Config(String),
    #[error("MQTT TLS: {0}")]
    Tls(String),
    #[error("publisher store access: {0}")]
    Store(String),
    #[error("rendering an MQTT batch: {0}")]
    Render(String),
    #[error("MQTT connection: {0}")]
    Connection(String),
}

impl From<StoreError> for PublishError {
    fn from(e: StoreError) -> Self {
        PublishError::Store(e.to_string())
    }
}

/// The renderer for a configured format. It lives here, above both
/// formats, so that `render` (the trait and `json`) and `epcis` (which
/// implements the trait) do not import each other.
pub fn renderer_for(format: PayloadFormat) -> Result<Box<dyn BatchRenderer>, PublishError> {
    match format {
        PayloadFormat::Json => Ok(Box::new(JsonRenderer)),
        PayloadFormat::Epcis2 => Ok(Box::new(epcis::EpcisRenderer)),
    }
}

/// Who this gateway is, for the status (birth/will) message and envelopes.
#[derive(Debug, Clone, Default)]
pub struct GatewayIdentity {
    pub gateway_id: String,
    pub site: String,
    pub version: String,
    pub config_hash: String,
    pub reader_names: Vec<String>,
}

/// Returns a JSON object merged into each health message (reader states,
/// store stats: outbox depth, oldest pending age, drops).
pub type HealthFn = Arc<dyn Fn() -> Status + Send + Sync>;

/// A `{prefix}/{site}/{gateway}/health` message (docs/events.md): the
/// gateway's status at the top level, with the publisher's own view.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct HealthMessage {
    pub schema: String,
    pub time: crate::event::UtcMs,
    #[serde(flatten)]
    pub status: Status,
}

/// Sent for every acknowledged batch (benchmarks and tests).
#[derive(Debug, Clone, Copy)]
pub struct AckNotice {
    /// The batch covered `after < seq <= last`.
    pub after: u64,
    pub last: u64,
    pub events: usize,
    pub live: bool,
    pub acked_at: Instant,
}

/// Counters for metrics; also in every health message.
#[derive(Debug, Default)]
pub struct PublisherStats {
    pub connected: AtomicBool,
    pub connects: AtomicU64,
    pub connection_errors: AtomicU64,
    pub messages_acked: AtomicU64,
    pub events_acked: AtomicU64,
    pub published_upto: AtomicU64,
    /// Events that were acknowledged again after a resend (duplicates at the registry).
    pub events_sent: AtomicU64,
    pub oversize_skipped: AtomicU64,
    pub last_latency_us: AtomicU64,
    pub max_latency_us: AtomicU64,
    /// UTC ms of the last PUBACK for a batch; 0 before the first.
    pub last_ack_utc_ms: AtomicI64,
    /// UTC ms since which no connection could be made or kept; 0 while
    /// connected (and before the first attempt ended).
    pub unreachable_since_utc_ms: AtomicI64,
    /// UTC ms since which committed events have waited without any PUBACK,
    /// once that lasted `puback_timeout`; 0 otherwise.
    pub stalled_since_utc_ms: AtomicI64,
    latency_sum_us: AtomicU64,
    latency_count: AtomicU64,
}

impl PublisherStats {
    fn record_latency(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.last_latency_us.store(us, Ordering::Relaxed);
        self.max_latency_us.fetch_max(us, Ordering::Relaxed);
        self.latency_sum_us.fetch_add(us, Ordering::Relaxed);
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        metrics::histogram!("tracegate_publish_latency_seconds").record(d.as_secs_f64());
    }

    pub fn snapshot(&self) -> PublisherStatus {
        let count = self.latency_count.load(Ordering::Relaxed);
        let avg_ms = if count == 0 {
            0.0
        } else {
            self.latency_sum_us.load(Ordering::Relaxed) as f64 / count as f64 / 1000.0
        };
        let ms = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64 / 1000.0;
        PublisherStatus {
            connected: self.connected.load(Ordering::Relaxed),
            connects: self.connects.load(Ordering::Relaxed),
            reconnects: self.connects.load(Ordering::Relaxed).saturating_sub(1),
            connection_errors: self.connection_errors.load(Ordering::Relaxed),
            messages_acked: self.messages_acked.load(Ordering::Relaxed),
            events_acked: self.events_acked.load(Ordering::Relaxed),
            events_sent: self.events_sent.load(Ordering::Relaxed),
            published_upto: self.published_upto.load(Ordering::Relaxed),
            oversize_skipped: self.oversize_skipped.load(Ordering::Relaxed),
            publish_latency_ms: LatencyMs {
                last: ms(&self.last_latency_us),
                avg: avg_ms,
                max: ms(&self.max_latency_us),
            },
            backlog: None,
            in_flight: None,
            acked_ranges_above_watermark: None,
            last_puback_utc_ms: match self.last_ack_utc_ms.load(Ordering::Relaxed) {
                0 => None,
                t => Some(t),
            },
            unreachable_since_utc_ms: match self.unreachable_since_utc_ms.load(Ordering::Relaxed) {
                0 => None,
                t => Some(t),
            },
            stalled_since_utc_ms: match self.stalled_since_utc_ms.load(Ordering::Relaxed) {
                0 => None,
                t => Some(t),
            },
        }
    }
}

/// Everything [`run`] needs from the rest of the gateway.
pub struct PublisherContext {
    pub identity: GatewayIdentity,
    /// The daemon's one read connection (events to publish, store figures).
    pub reader: StoreReader,
    /// Persisted by the store writer; dropping it lets the writer finish.
    pub watermark: Watermark,
    /// Highest committed seq, from the store writer.
    pub committed: watch::Receiver<u64>,
    pub health: HealthFn,
    /// Beaten while the publisher makes progress or is idle but healthy
    /// (also while backing off from an unreachable broker: that is not a hang).
    pub heartbeat: Arc<Heartbeat>,
    pub stats: Arc<PublisherStats>,
    pub acks: Option<crate::Observer<AckNotice>>,
    /// Master data from the registry (`None`: no `[masterdata]`).
    pub downlink: Option<crate::masterdata::service::Downlink>,
}

impl std::fmt::Debug for PublisherContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublisherContext")
            .field("identity", &self.identity)
            .field("committed", &*self.committed.borrow())
            .finish_non_exhaustive()
    }
}

/// `{prefix}/{site}/{gateway}/events|status|health|probe`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub events: String,
    pub status: String,
    pub health: String,
    /// The idle connection's liveness probe (`Action::Probe`): a fixed
    /// `tracegate.probe/1` payload, QoS 1, not retained; nobody needs to
    /// subscribe.
    pub probe: String,
}

impl Topics {
    pub fn new(prefix: &str, site: &str, gateway: &str) -> Result<Topics, PublishError> {
        for (what, v) in [("site", site), ("gateway id", gateway)] {
            if v.is_empty() || v.contains(['/', '+', '#', '\0']) {
                return Err(PublishError::Config(format!(
                    "the {what} {v:?} cannot be part of an MQTT topic (empty, or has '/', '+', '#')"
                )));
            }
        }
        let base = format!("{prefix}/{site}/{gateway}");
        Ok(Topics {
            events: format!("{base}/events"),
            status: format!("{base}/status"),
            health: format!("{base}/health"),
            probe: format!("{base}/probe"),
        })
    }
}

fn utc_now_iso() -> String {
    crate::event::iso_ms(tracegate_drivers::clock::utc_now_ms())
}

fn status_payload(id: &GatewayIdentity, online: bool, started_at: &str, reason: &str) -> Vec<u8> {
    serde_json::json!({
        "schema": STATUS_SCHEMA,
        "gateway": id.gateway_id,
        "site": id.site,
        "online": online,
        "reason": reason,
        "version": id.version,
        "config_hash": id.config_hash,
        "readers": id.reader_names,
        "started_at": started_at,
        "time": utc_now_iso(),
    })
    .to_string()
    .into_bytes()
}

/// Largest MQTT packet either way: well above `batch_max_bytes` so a full
/// batch plus its envelope always fits.
fn max_packet_size(cfg: &MqttConfig) -> usize {
    (cfg.batch_max_bytes.get() * 2 + 64 * 1024).max(1024 * 1024)
}

/// Builds the rumqttc options (client id, TLS, credentials, last will).
pub fn mqtt_options(
    cfg: &MqttConfig,
    identity: &GatewayIdentity,
    started_at: &str,
) -> Result<MqttOptions, PublishError> {
    let url = &cfg.broker;
    let topics = Topics::new(&cfg.topic_prefix, &identity.site, &identity.gateway_id)?;
    let client_id = cfg
        .client_id
        .clone()
        .unwrap_or_else(|| identity.gateway_id.clone());
    let mut o = MqttOptions::new(client_id, url.host.clone(), url.port);
    o.set_keep_alive(cfg.keep_alive);
    o.set_clean_session(true);
    // Two more than the window: the birth message and a spare.
    o.set_inflight(cfg.inflight.get().saturating_add(2));
    let max = max_packet_size(cfg);
    o.set_max_packet_size(max, max);
    o.set_last_will(LastWill::new(
        topics.status,
        status_payload(identity, false, started_at, "connection lost"),
        QoS::AtLeastOnce,
        true,
    ));
    if let Some(creds) = &cfg.credentials {
        let user = Secret::from_file(&creds.username_file, "username")?;
        let pass = match &creds.password_file {
            Some(p) => Secret::from_file(p, "password")?.expose().to_string(),
            None => String::new(),
        };
        o.set_credentials(user.expose(), pass);
    }
    if url.tls {
        let tls = tls::client_config(cfg)?;
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    }
    Ok(o)
}

fn new_client(cfg: &MqttConfig, opts: MqttOptions) -> (AsyncClient, EventLoop) {
    // Window + birth + health + disconnect + spare: try_publish never finds it full.
    let cap = usize::from(cfg.inflight.get()) + 8;
    let (client, mut el) = AsyncClient::new(opts, cap);
    let mut net = NetworkOptions::new();
    net.set_connection_timeout(cfg.connect_timeout.as_secs());
    net.set_tcp_nodelay(true);
    el.set_network_options(net);
    (client, el)
}

/// Connects once, waits for the CONNACK and disconnects: for `check-config`
/// and tests. The error says why the broker or TLS refused.
pub async fn probe_connect(
    cfg: &MqttConfig,
    identity: &GatewayIdentity,
) -> Result<(), PublishError> {
    let opts = mqtt_options(cfg, identity, &utc_now_iso())?;
    let (client, mut el) = new_client(cfg, opts);
    let res = match el.poll().await {
        Ok(Event::Incoming(Incoming::ConnAck(_))) => Ok(()),
        Ok(other) => Err(PublishError::Connection(format!(
            "unexpected first event {other:?}"
        ))),
        Err(e) => Err(PublishError::Connection(describe(&e))),
    };
    if res.is_ok() {
        let _ = client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Ok(ev) = el.poll().await {
                if matches!(ev, Event::Outgoing(Outgoing::Disconnect)) {
                    break;
                }
            }
        })
        .await;
    }
    res
}

fn describe(e: &ConnectionError) -> String {
    match e {
        ConnectionError::ConnectionRefused(code) => {
            format!("the broker refused the connection ({code:?}): check credentials, client id and ACLs")
        }
        other => other.to_string(),
    }
}

enum Outcome {
    Cancelled,
    Polled(Result<Event, ConnectionError>),
    PubackOverdue,
}

/// How one connection's session ended.
enum SessionEnd {
    Cancelled,
    Lost(ConnectionError),
    /// No PUBACK within `puback_timeout` with messages out: dropped here.
    PubackOverdue {
        in_flight: usize,
    },
}

/// The I/O around the [`Outbox`]: the store, the renderer, the client.
struct Uplink<'a> {
    cfg: &'a MqttConfig,
    ctx: &'a PublisherContext,
    store: StoreReader,
    outbox: Outbox,
    topics: Topics,
    source: BatchSource,
    renderer: Box<dyn BatchRenderer>,
    max_payload: usize,
    started_at: String,
    next_health: Instant,
}

/// Runs the uplink until `cancel` fires. Returns an error only for problems a
/// retry cannot fix (bad configuration, TLS files, the store unreadable); an
/// unreachable broker is retried forever with backoff.
pub async fn run(
    config: &MqttConfig,
    ctx: PublisherContext,
    cancel: CancellationToken,
) -> Result<(), PublishError> {
    let renderer = renderer_for(config.payload_format)?;
    let started_at = utc_now_iso();
    let opts = mqtt_options(config, &ctx.identity, &started_at)?;
    let topics = Topics::new(
        &config.topic_prefix,
        &ctx.identity.site,
        &ctx.identity.gateway_id,
    )?;
    let store = ctx.reader.clone();
    let stats = store.stats().await?;
    let committed = (*ctx.committed.borrow()).max(stats.last_seq);
    let now = Instant::now();
    let mut up = Uplink {
        cfg: config,
        ctx: &ctx,
        store,
        outbox: Outbox::new(
            OutboxConfig::from_mqtt(config),
            stats.published_upto,
            committed,
            now,
        ),
        source: BatchSource {
            gateway: ctx.identity.gateway_id.clone(),
            site: ctx.identity.site.clone(),
        },
        max_payload: max_packet_size(config) - topics.events.len() - 16,
        topics,
        renderer,
        started_at,
        next_health: now,
    };
    ctx.stats
        .published_upto
        .store(stats.published_upto, Ordering::Relaxed);
    tracing::info!(
        broker = %config.broker,
        topic = %up.topics.events,
        pending = stats.pending,
        published_upto = stats.published_upto,
        "MQTT publisher starting"
    );
    let mut committed_rx = ctx.committed.clone();
    let mut committed_open = true;
    let mut backoff = Backoff::new(config.reconnect_min, config.reconnect_max);

    loop {
        // A fresh client and event loop for every connection. rumqttc keeps
        // state across reconnects that a new clean session must not inherit:
        // events it buffered before the error (PUBACKs of the old session
        // would be matched against the new one), a collided publish that
        // blocks all further requests until a PUBACK that never comes
        // (rumqttc #1014/#1056), and publishes it would retransmit. The
        // outbox resends everything unacknowledged from SQLite anyway; at
        // worst a PUBACK buffered at the error is lost and its batch is sent
        // twice, which the registry deduplicates by event id.
        let (client, mut el) = new_client(config, opts.clone());
        let mut conn: Option<ConnId> = None;
        // A connect that fails made the broker unreachable from its start.
        let attempt_utc_ms = tracegate_drivers::clock::utc_now_ms();
        // One clock read per wake-up, shared by everything that wake does.
        let mut now = Instant::now();
        let end = loop {
            let outcome = {
                let poll = el.poll();
                tokio::pin!(poll);
                loop {
                    // Read the committed seq directly as well: during a drain
                    // the poll branch is always ready and, being first in the
                    // biased select, would starve the watch branch (live
                    // events would then wait for the whole backlog).
                    if committed_open {
                        up.outbox.on_committed(*committed_rx.borrow_and_update());
                    }
                    up.drive(&client, now).await?;
                    // Leaving drops `poll` half-way, which is safe only
                    // because the whole client goes with it: the outbox
                    // resends everything unacknowledged on the next one.
                    if up.outbox.puback_overdue(now) {
                        break Outcome::PubackOverdue;
                    }
                    let wake = up.wake(now);
                    let outcome = tokio::select! {
                        biased;
                        _ = cancel.cancelled() => Some(Outcome::Cancelled),
                        r = &mut poll => Some(Outcome::Polled(r)),
                        r = committed_rx.changed(), if committed_open => {
                            committed_open = r.is_ok();
                            None
                        }
                        _ = tokio::time::sleep_until(wake.into()) => None,
                    };
                    now = Instant::now();
                    if let Some(o) = outcome {
                        break o;
                    }
                }
            };
            match outcome {
                Outcome::Cancelled => break SessionEnd::Cancelled,
                Outcome::PubackOverdue => {
                    break SessionEnd::PubackOverdue {
                        in_flight: up.outbox.in_flight(),
                    }
                }
                Outcome::Polled(Ok(Event::Incoming(Incoming::ConnAck(_)))) => {
                    backoff.reset();
                    conn = Some(up.on_connack(&client, now));
                }
                Outcome::Polled(Ok(ev)) => {
                    if let (Event::Incoming(Incoming::Publish(p)), Some(dl)) = (&ev, &ctx.downlink)
                    {
                        downlink_message(dl, &client, &p.topic, &p.payload);
                    }
                    if let Some(c) = conn {
                        up.on_event(c, &ev, now);
                    }
                }
                Outcome::Polled(Err(e)) => break SessionEnd::Lost(e),
            }
        };
        let error = match end {
            SessionEnd::Cancelled => {
                if let Some(c) = conn {
                    up.say_goodbye(&client, &mut el, c).await;
                }
                break;
            }
            SessionEnd::Lost(e) => describe(&e),
            SessionEnd::PubackOverdue { in_flight } => {
                // The socket looks open but nothing comes back (a silent
                // partition drops packets without RST or FIN). Dropping the
                // client closes it; the next connection resends from SQLite.
                format!(
                    "no PUBACK for {} s with {in_flight} message(s) in flight (mqtt.puback_timeout_secs): connection dropped",
                    config.puback_timeout.as_secs()
                )
            }
        };
        drop(client);
        drop(el);
        up.outbox.on_connection_lost();
        ctx.stats.connected.store(false, Ordering::Relaxed);
        ctx.stats.connection_errors.fetch_add(1, Ordering::Relaxed);
        let _ = ctx.stats.unreachable_since_utc_ms.compare_exchange(
            0,
            if conn.is_some() {
                tracegate_drivers::clock::utc_now_ms()
            } else {
                attempt_utc_ms
            },
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        let delay = backoff.next_delay();
        let what = if conn.is_some() {
            "MQTT connection lost"
        } else {
            "MQTT connect failed"
        };
        tracing::warn!(event = "mqtt.connection_lost", error = %error, retry_in_ms = delay.as_millis() as u64, "{what}");
        // Backing off from an unreachable broker is not a hang: keep beating.
        let until = Instant::now() + delay;
        loop {
            ctx.heartbeat.beat();
            if committed_open {
                up.outbox.on_committed(*committed_rx.borrow());
            }
            up.note_stall(Instant::now());
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(left.min(Duration::from_secs(1))) => {}
            }
        }
        if cancel.is_cancelled() {
            break;
        }
    }

    ctx.stats.connected.store(false, Ordering::Relaxed);
    let wm = up.outbox.watermark();
    if wm > up.outbox.persisted() {
        // The writer persists it before it exits (it waits for this handle).
        up.ctx.watermark.advance(wm);
    }
    tracing::info!(published_upto = wm, "MQTT publisher stopped");
    Ok(())
}

/// A message on a master-data topic: subscriptions it asks for are
/// requested without waiting, a complete dataset goes to the applying task.
fn downlink_message(
    dl: &crate::masterdata::service::Downlink,
    client: &AsyncClient,
    topic: &str,
    payload: &[u8],
) {
    use crate::masterdata::service::DownlinkAction;
    for action in dl.on_message(topic, payload) {
        let sent = match &action {
            DownlinkAction::Subscribe(f) => client.try_subscribe(f.clone(), QoS::AtLeastOnce),
            DownlinkAction::Unsubscribe(f) => client.try_unsubscribe(f.clone()),
            DownlinkAction::Deliver(_) => Ok(()),
        };
        if let Err(e) = sent {
            tracing::warn!(error = %e, "master data subscription request failed; retried at the next connection");
        }
        if let DownlinkAction::Deliver(c) = action {
            dl.deliver(*c);
        }
    }
}

impl Uplink<'_> {
    fn on_connack(&mut self, client: &AsyncClient, now: Instant) -> ConnId {
        let conn = self.outbox.on_connected(now);
        self.ctx.stats.connected.store(true, Ordering::Relaxed);
        let down_since = self
            .ctx
            .stats
            .unreachable_since_utc_ms
            .swap(0, Ordering::Relaxed);
        if down_since != 0 {
            let secs = (tracegate_drivers::clock::utc_now_ms() - down_since).max(0) as f64 / 1000.0;
            tracing::info!(
                event = "mqtt.reachable",
                unreachable_secs = secs,
                "broker reachable again"
            );
        }
        let n = self.ctx.stats.connects.fetch_add(1, Ordering::Relaxed);
        let birth = status_payload(&self.ctx.identity, true, &self.started_at, "connected");
        match client.try_publish(self.topics.status.clone(), QoS::AtLeastOnce, true, birth) {
            Ok(()) => self.outbox.on_control_handed(conn, now),
            Err(e) => tracing::warn!(error = %e, "cannot queue the MQTT birth message"),
        }
        self.next_health = now;
        if let Some(dl) = &self.ctx.downlink {
            for f in dl.filters() {
                if let Err(e) = client.try_subscribe(f.clone(), QoS::AtLeastOnce) {
                    tracing::warn!(filter = %f, error = %e, "cannot subscribe to master data");
                }
            }
        }
        tracing::info!(
            connects = n + 1,
            backlog = self.outbox.backlog_remaining(),
            "MQTT connected"
        );
        conn
    }

    fn on_event(&mut self, conn: ConnId, ev: &Event, now: Instant) {
        if let Event::Incoming(_) = ev {
            self.outbox.on_heard(conn, now);
        }
        match ev {
            Event::Outgoing(Outgoing::Publish(pkid)) if !self.outbox.on_outgoing(conn, *pkid) => {
                tracing::warn!(pkid, "MQTT publish not handed by the publisher");
            }
            Event::Incoming(Incoming::PubAck(ack)) => {
                if let Some(Acked::Batch(b)) = self.outbox.on_puback(conn, ack.pkid, now) {
                    let stats = &self.ctx.stats;
                    stats.record_latency(now.saturating_duration_since(b.sent_at));
                    stats.messages_acked.fetch_add(1, Ordering::Relaxed);
                    stats
                        .last_ack_utc_ms
                        .store(tracegate_drivers::clock::utc_now_ms(), Ordering::Relaxed);
                    stats
                        .events_acked
                        .fetch_add(b.events as u64, Ordering::Relaxed);
                    if let Some(tx) = &self.ctx.acks {
                        let _ = tx.send(AckNotice {
                            after: b.after,
                            last: b.last,
                            events: b.events,
                            live: b.live,
                            acked_at: now,
                        });
                    }
                }
            }
            _ => {}
        }
    }

    /// Carries out what the outbox asks for until it waits, then the
    /// periodic work: the watermark, health, the heartbeat.
    async fn drive(&mut self, client: &AsyncClient, now: Instant) -> Result<(), PublishError> {
        loop {
            match self.outbox.poll(now) {
                Action::Wait => break,
                Action::Read(r) => {
                    let events = self.store.read_after(r.after, r.limit).await?;
                    self.outbox.on_read(events);
                }
                Action::ReadLastSeq => {
                    let last = self.store.stats().await?.last_seq;
                    self.outbox.on_last_seq(last, now);
                }
                Action::Publish(b) => {
                    if !self.publish(client, b, now) {
                        // The client refused; try again on the next wake-up
                        // rather than spin on a full channel.
                        break;
                    }
                }
                Action::Probe(conn) => {
                    // The PUBACK is all it is for; JSON with a schema all
                    // the same, so a consumer of `{prefix}/#` that parses
                    // every payload can tell it apart and skip it.
                    match client.try_publish(
                        self.topics.probe.clone(),
                        QoS::AtLeastOnce,
                        false,
                        PROBE_PAYLOAD,
                    ) {
                        Ok(()) => self.outbox.on_control_handed(conn, now),
                        Err(e) => {
                            tracing::debug!(error = %e, "idle probe not queued");
                            self.outbox.on_probe_refused(now);
                        }
                    }
                }
            }
        }
        if let Some(wm) = self.outbox.watermark_to_persist(now) {
            // Never blocks: the writer persists the highest value it has
            // been given in its next watermark transaction.
            self.ctx.watermark.advance(wm);
            self.outbox.on_persisted(wm, now);
        }
        self.ctx
            .stats
            .published_upto
            .store(self.outbox.watermark(), Ordering::Relaxed);
        if self.outbox.is_connected() && now >= self.next_health {
            self.next_health = now + self.cfg.health_interval;
            let payload = self.health_payload();
            // QoS 0: health is periodic and superseded by the next one; it
            // must not take a slot of the event window.
            if let Err(e) =
                client.try_publish(self.topics.health.clone(), QoS::AtMostOnce, false, payload)
            {
                tracing::debug!(error = %e, "health message not queued");
            }
        }
        self.note_stall(now);
        // The loop turns: a silent broker is handled by the PUBACK deadline
        // (reconnect), not by the watchdog (restart).
        self.ctx.heartbeat.beat();
        Ok(())
    }

    /// Updates the stall clock and `stalled_since_utc_ms`, logging when the
    /// uplink stalls and when it moves again.
    fn note_stall(&mut self, now: Instant) {
        self.outbox.observe(now);
        let stats = &self.ctx.stats;
        let was = stats.stalled_since_utc_ms.load(Ordering::Relaxed);
        match self.outbox.stalled_since(now) {
            Some(since) if was == 0 => {
                let waited = now.saturating_duration_since(since);
                let utc = tracegate_drivers::clock::utc_now_ms()
                    - i64::try_from(waited.as_millis()).unwrap_or(0);
                stats
                    .stalled_since_utc_ms
                    .store(utc.max(1), Ordering::Relaxed);
                tracing::warn!(
                    event = "mqtt.publish_stalled",
                    waited_secs = waited.as_secs_f64(),
                    connected = self.outbox.is_connected(),
                    in_flight = self.outbox.in_flight(),
                    "events are waiting and no PUBACK came: publishing stalled"
                );
            }
            Some(_) => {}
            None if was != 0 => {
                stats.stalled_since_utc_ms.store(0, Ordering::Relaxed);
                let secs = (tracegate_drivers::clock::utc_now_ms() - was).max(0) as f64 / 1000.0;
                tracing::info!(
                    event = "mqtt.publish_resumed",
                    stalled_secs = secs,
                    "publishing moves again"
                );
            }
            None => {}
        }
    }

    /// Renders and hands one batch to the client; false if the client refused it.
    fn publish(&mut self, client: &AsyncClient, mut batch: Batch, now: Instant) -> bool {
        let payload = loop {
            let payload = match self.renderer.render(&self.source, &batch.events) {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, first = batch.after + 1, last = batch.last, "cannot render a batch; skipped");
                    self.outbox.skip(&batch);
                    return true;
                }
            };
            if payload.len() <= self.max_payload {
                break payload;
            }
            match self.outbox.split(batch) {
                Split::Retry(b) => batch = b,
                Split::Skipped { seq } => {
                    tracing::error!(
                        seq,
                        bytes = payload.len(),
                        "event larger than the MQTT packet limit; skipped"
                    );
                    self.ctx
                        .stats
                        .oversize_skipped
                        .fetch_add(1, Ordering::Relaxed);
                    return true;
                }
            }
        };
        match client.try_publish(self.topics.events.clone(), QoS::AtLeastOnce, false, payload) {
            Ok(()) => {
                if let Some(dl) = &self.ctx.downlink {
                    self.publish_alerts(client, dl, &batch);
                }
                self.ctx
                    .stats
                    .events_sent
                    .fetch_add(batch.events.len() as u64, Ordering::Relaxed);
                self.outbox.on_handed(&batch, now);
                true
            }
            Err(e) => {
                // Cannot happen with the window below the channel size; if it
                // does, nothing is skipped: the batch goes back to its lane.
                tracing::warn!(error = %e, "MQTT request channel refused a batch; will retry");
                self.outbox.put_back(batch);
                false
            }
        }
    }

    /// The flagged events of a batch also go to the alerts topic, as one
    /// message in the same payload format (same events, same `id`s; QoS 1,
    /// not retained). The events topic is what the outbox guarantees: an
    /// alert the client cannot take is counted and logged, and a batch sent
    /// again after a reconnection sends its alert again (consumers
    /// deduplicate by `id`).
    fn publish_alerts(
        &mut self,
        client: &AsyncClient,
        dl: &crate::masterdata::service::Downlink,
        batch: &Batch,
    ) {
        let flagged: Vec<crate::store::StoredEvent> = batch
            .events
            .iter()
            .filter(|e| e.payload.contains("\"flags\":["))
            .cloned()
            .collect();
        if flagged.is_empty() {
            return;
        }
        let sent = self
            .renderer
            .render(&self.source, &flagged)
            .map_err(|e| e.to_string())
            .and_then(|payload| {
                client
                    .try_publish(dl.alerts_topic(), QoS::AtLeastOnce, false, payload)
                    .map_err(|e| e.to_string())
            });
        match sent {
            Ok(()) => self.outbox.on_control_handed(batch.conn(), Instant::now()),
            Err(e) => {
                metrics::counter!("tracegate_alerts_not_sent_total").increment(1);
                tracing::warn!(events = flagged.len(), error = %e, "alert not sent (its events are delivered on the events topic)");
            }
        }
    }

    /// When the loop must wake up even if nothing arrives.
    fn wake(&self, now: Instant) -> Instant {
        // At least once a second, to keep the heartbeat fresh.
        let mut wake = now + Duration::from_secs(1);
        if self.outbox.is_connected() {
            wake = wake.min(self.next_health);
        }
        if let Some(t) = self.outbox.next_wake(now) {
            wake = wake.min(t);
        }
        wake.max(now)
    }

    /// Shutdown: say offline (retained), wait briefly for outstanding acks,
    /// then disconnect cleanly.
    async fn say_goodbye(&mut self, client: &AsyncClient, el: &mut EventLoop, conn: ConnId) {
        let payload = status_payload(&self.ctx.identity, false, &self.started_at, "shutdown");
        if client
            .try_publish(self.topics.status.clone(), QoS::AtLeastOnce, true, payload)
            .is_ok()
        {
            self.outbox.on_control_handed(conn, Instant::now());
        }
        // Up to 2 s for outstanding PUBACKs, then DISCONNECT regardless (a
        // clean disconnect keeps the broker from publishing the last will
        // over the "shutdown" status), and 1 s more for it to go out.
        let start = tokio::time::Instant::now();
        let ack_deadline = start + Duration::from_secs(2);
        let final_deadline = start + Duration::from_secs(3);
        let mut disconnect_sent = false;
        loop {
            if !disconnect_sent
                && (self.outbox.in_flight() == 0 || tokio::time::Instant::now() >= ack_deadline)
            {
                let _ = client.try_disconnect();
                disconnect_sent = true;
            }
            let wake = if disconnect_sent {
                final_deadline
            } else {
                ack_deadline
            };
            tokio::select! {
                r = el.poll() => match r {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                    Ok(ev) => self.on_event(conn, &ev, Instant::now()),
                },
                _ = tokio::time::sleep_until(wake) => {
                    if disconnect_sent {
                        break;
                    }
                }
            }
        }
    }

    fn health_payload(&self) -> Vec<u8> {
        let mut status = (self.ctx.health)();
        let mut publisher = self.ctx.stats.snapshot();
        publisher.backlog = Some(self.outbox.backlog_remaining());
        publisher.in_flight = Some(self.outbox.in_flight());
        publisher.acked_ranges_above_watermark = Some(self.outbox.acked_ranges_pending());
        status.publisher = Some(publisher);
        let message = HealthMessage {
            schema: HEALTH_SCHEMA.to_owned(),
            time: crate::event::UtcMs(tracegate_drivers::clock::utc_now_ms()),
            status,
        };
        serde_json::to_vec(&message).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_refuse_wildcards_in_names() {
        let t = Topics::new("tracegate", "dock-1", "gw-7").unwrap();
        assert_eq!(t.events, "tracegate/dock-1/gw-7/events");
        assert_eq!(t.status, "tracegate/dock-1/gw-7/status");
        assert!(Topics::new("p", "a/b", "g").is_err());
        assert!(Topics::new("p", "s", "g#").is_err());
    }
}
