//! MQTT uplink to the serial registry.
//!
//! Delivery is at-least-once: an event leaves the outbox (the store's
//! `published_upto` watermark) only after the broker's PUBACK for the message
//! that carried it, and only over a contiguous acknowledged prefix. After a
//! reconnect or a restart everything unacknowledged is read again from SQLite
//! and sent again (clean MQTT session: the store, not the broker session,
//! owns durability). See docs/events.md for topics and payloads.
//!
//! One task owns the rumqttc `EventLoop`. Its `poll()` future is never
//! dropped half-way (that could lose a packet written into the codec buffer);
//! instead the loop selects on the pinned future next to the other wake-ups
//! and hands publishes to the client with `try_publish` inside a window no
//! larger than the request channel (reliability.md §2.4: no deadlock).

pub mod config;
#[cfg(feature = "demo-broker")]
pub mod embedded;
pub mod epcis;
pub mod render;
mod tls;
mod tracker;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, Incoming, LastWill, MqttOptions,
    NetworkOptions, Outgoing, QoS, TlsConfiguration, Transport,
};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::heartbeat::Heartbeat;
use crate::store::{StoreError, StoreReader, StoredEvent, Watermark};

pub use config::{BrokerUrl, MqttConfig, MqttProtocol, PayloadFormat, Secret};
pub use render::{renderer_for, BatchRenderer, BatchSource, JsonRenderer, EVENTS_SCHEMA};
pub use tls::ensure_crypto_provider;

use tracker::{AckTracker, AckedRanges, Item};

pub const STATUS_SCHEMA: &str = "tracegate.status/1";
pub const HEALTH_SCHEMA: &str = "tracegate.health/1";

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
pub type HealthFn = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

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

/// Counters the lead can read for metrics; also in every health message.
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

    pub fn snapshot(&self) -> serde_json::Value {
        let count = self.latency_count.load(Ordering::Relaxed);
        let avg_ms = if count == 0 {
            0.0
        } else {
            self.latency_sum_us.load(Ordering::Relaxed) as f64 / count as f64 / 1000.0
        };
        let ms = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64 / 1000.0;
        serde_json::json!({
            "connected": self.connected.load(Ordering::Relaxed),
            "connects": self.connects.load(Ordering::Relaxed),
            "reconnects": self.connects.load(Ordering::Relaxed).saturating_sub(1),
            "connection_errors": self.connection_errors.load(Ordering::Relaxed),
            "messages_acked": self.messages_acked.load(Ordering::Relaxed),
            "events_acked": self.events_acked.load(Ordering::Relaxed),
            "events_sent": self.events_sent.load(Ordering::Relaxed),
            "published_upto": self.published_upto.load(Ordering::Relaxed),
            "oversize_skipped": self.oversize_skipped.load(Ordering::Relaxed),
            "publish_latency_ms": {
                "last": ms(&self.last_latency_us),
                "avg": avg_ms,
                "max": ms(&self.max_latency_us),
            },
        })
    }
}

/// Everything [`run`] needs from the rest of the gateway.
pub struct PublisherContext {
    pub identity: GatewayIdentity,
    /// The daemon's read connection.
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
    pub acks: Option<mpsc::UnboundedSender<AckNotice>>,
}

impl std::fmt::Debug for PublisherContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublisherContext")
            .field("identity", &self.identity)
            .field("committed", &*self.committed.borrow())
            .finish_non_exhaustive()
    }
}

/// `{prefix}/{site}/{gateway}/events|status|health`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub events: String,
    pub status: String,
    pub health: String,
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
        })
    }
}

fn utc_now_iso() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
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
    (cfg.batch_max_bytes * 2 + 64 * 1024).max(1024 * 1024)
}

/// Builds the rumqttc options (client id, TLS, credentials, last will).
pub fn mqtt_options(
    cfg: &MqttConfig,
    identity: &GatewayIdentity,
    started_at: &str,
) -> Result<MqttOptions, PublishError> {
    let url = cfg.validate()?;
    let topics = Topics::new(&cfg.topic_prefix, &identity.site, &identity.gateway_id)?;
    let client_id = cfg
        .client_id
        .clone()
        .unwrap_or_else(|| identity.gateway_id.clone());
    let mut o = MqttOptions::new(client_id, url.host.clone(), url.port);
    o.set_keep_alive(Duration::from_secs(cfg.keep_alive_secs));
    o.set_clean_session(true);
    // Two more than the window: the birth message and a spare.
    o.set_inflight(cfg.inflight.saturating_add(2));
    let max = max_packet_size(cfg);
    o.set_max_packet_size(max, max);
    o.set_last_will(LastWill::new(
        topics.status,
        status_payload(identity, false, started_at, "connection lost"),
        QoS::AtLeastOnce,
        true,
    ));
    if let Some(user_file) = &cfg.username_file {
        let user = Secret::from_file(user_file, "username")?;
        let pass = match &cfg.password_file {
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
    let cap = usize::from(cfg.inflight) + 8;
    let (client, mut el) = AsyncClient::new(opts, cap);
    let mut net = NetworkOptions::new();
    net.set_connection_timeout(cfg.connect_timeout_secs);
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

#[derive(Debug)]
struct TokenBucket {
    rate: f64,
    tokens: f64,
    cap: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(rate: u32, batch: usize) -> Option<TokenBucket> {
        if rate == 0 {
            return None;
        }
        let rate = f64::from(rate);
        let cap = rate.max(batch as f64);
        Some(TokenBucket {
            rate,
            tokens: batch as f64,
            cap,
            last: Instant::now(),
        })
    }
    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.cap);
        self.last = now;
    }
    /// Whole events allowed now.
    fn available(&mut self, now: Instant) -> usize {
        self.refill(now);
        self.tokens.max(0.0) as usize
    }
    fn take(&mut self, n: usize) {
        self.tokens -= n as f64;
    }
    /// When at least `n` tokens will be there.
    fn ready_at(&self, n: usize) -> Instant {
        let missing = (n as f64 - self.tokens).max(0.0);
        self.last + Duration::from_secs_f64(missing / self.rate)
    }
}

/// A batch ready to publish.
#[derive(Debug)]
struct Batch {
    after: u64,
    last: u64,
    events: Vec<StoredEvent>,
    live: bool,
}

enum Outcome {
    Cancelled,
    Polled(Result<Event, ConnectionError>),
}

struct Publisher<'a> {
    cfg: &'a MqttConfig,
    ctx: &'a PublisherContext,
    store: StoreReader,
    topics: Topics,
    source: BatchSource,
    renderer: Box<dyn BatchRenderer>,
    max_payload: usize,
    window: usize,
    live_reserve: usize,
    started_at: String,

    connected: bool,
    tracker: AckTracker,
    acked: AckedRanges,
    committed: u64,
    live_cursor: u64,
    backlog_cursor: u64,
    backlog_end: u64,
    live_buf: VecDeque<StoredEvent>,
    backlog_buf: VecDeque<StoredEvent>,
    linger_deadline: Option<Instant>,
    bucket: Option<TokenBucket>,
    marked: u64,
    last_mark: Instant,
    next_health: Instant,
    last_progress: Instant,
}

/// Runs the uplink until `cancel` fires. Returns an error only for problems a
/// retry cannot fix (bad configuration, TLS files, the store unreadable); an
/// unreachable broker is retried forever with backoff.
pub async fn run(
    config: &MqttConfig,
    ctx: PublisherContext,
    cancel: CancellationToken,
) -> Result<(), PublishError> {
    config.validate()?;
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
    let window = usize::from(config.inflight);
    let mut p = Publisher {
        cfg: config,
        ctx: &ctx,
        store,
        source: BatchSource {
            gateway: ctx.identity.gateway_id.clone(),
            site: ctx.identity.site.clone(),
        },
        max_payload: max_packet_size(config) - topics.events.len() - 16,
        topics,
        renderer,
        window,
        live_reserve: if window >= 2 { (window / 4).max(1) } else { 0 },
        started_at,
        connected: false,
        tracker: AckTracker::default(),
        acked: AckedRanges::new(stats.published_upto),
        committed,
        live_cursor: committed,
        backlog_cursor: stats.published_upto,
        backlog_end: committed,
        live_buf: VecDeque::new(),
        backlog_buf: VecDeque::new(),
        linger_deadline: None,
        bucket: TokenBucket::new(config.backlog_rate_limit, config.batch_max_events),
        marked: stats.published_upto,
        last_mark: Instant::now(),
        next_health: Instant::now(),
        last_progress: Instant::now(),
    };
    ctx.stats
        .published_upto
        .store(stats.published_upto, Ordering::Relaxed);
    tracing::info!(
        broker = %config.url,
        topic = %p.topics.events,
        pending = stats.pending,
        published_upto = stats.published_upto,
        "MQTT publisher starting"
    );
    let (client, mut el) = new_client(config, opts);
    let mut committed_rx = ctx.committed.clone();
    let mut committed_open = true;
    let mut backoff = Backoff::new(
        Duration::from_millis(config.reconnect_min_ms),
        Duration::from_millis(config.reconnect_max_ms),
    );

    loop {
        let outcome = {
            let poll = el.poll();
            tokio::pin!(poll);
            loop {
                // Read the committed seq directly as well: during a drain the
                // poll branch is always ready and, being first in the biased
                // select, would starve the watch branch (live events would
                // then wait for the whole backlog).
                if committed_open {
                    let c = *committed_rx.borrow_and_update();
                    p.committed = p.committed.max(c);
                }
                p.feed(&client).await?;
                p.housekeeping(&client);
                let wake = p.next_wake();
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => break Outcome::Cancelled,
                    r = &mut poll => break Outcome::Polled(r),
                    r = committed_rx.changed(), if committed_open => {
                        match r {
                            Ok(()) => {
                                let c = *committed_rx.borrow_and_update();
                                p.committed = p.committed.max(c);
                            }
                            Err(_) => committed_open = false,
                        }
                    }
                    _ = tokio::time::sleep_until(wake.into()) => {}
                }
            }
        };
        match outcome {
            Outcome::Cancelled => break,
            Outcome::Polled(Ok(ev)) => {
                if matches!(ev, Event::Incoming(Incoming::ConnAck(_))) {
                    backoff.reset();
                    p.on_connack(&client);
                } else {
                    p.on_event(&ev);
                }
            }
            Outcome::Polled(Err(e)) => {
                let was_connected = p.connected;
                // rumqttc keeps events it buffered before the error (PUBACKs
                // read in the same burst, Outgoing::Publish of a write that
                // failed) and would return them after the next CONNACK,
                // where they would be matched against the new session. Apply
                // them to the old session now, then forget the session.
                for ev in std::mem::take(&mut el.state.events) {
                    p.on_event(&ev);
                }
                p.on_disconnect();
                ctx.stats.connection_errors.fetch_add(1, Ordering::Relaxed);
                // rumqttc keeps a collided publish across a clean session and
                // then times out forever (#1014/#1056); we resend from SQLite
                // anyway, so drop it together with any session leftovers.
                el.state.collision = None;
                el.pending.clear();
                let delay = backoff.next_delay();
                if was_connected {
                    tracing::warn!(error = %describe(&e), retry_in_ms = delay.as_millis() as u64, "MQTT connection lost");
                } else {
                    tracing::warn!(error = %describe(&e), retry_in_ms = delay.as_millis() as u64, "MQTT connect failed");
                }
                let until = Instant::now() + delay;
                while Instant::now() < until {
                    ctx.heartbeat.beat();
                    let step = until
                        .saturating_duration_since(Instant::now())
                        .min(Duration::from_secs(1));
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(step) => {}
                    }
                }
                if cancel.is_cancelled() {
                    break;
                }
            }
        }
    }

    // Shutdown: say offline (retained), wait briefly for outstanding acks, record the watermark.
    if p.connected {
        let payload = status_payload(&ctx.identity, false, &p.started_at, "shutdown");
        if client
            .try_publish(p.topics.status.clone(), QoS::AtLeastOnce, true, payload)
            .is_ok()
        {
            p.tracker.handed(Item::Control);
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
                && (p.tracker.in_flight() == 0 || tokio::time::Instant::now() >= ack_deadline)
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
                    Ok(ev) => p.on_event(&ev),
                },
                _ = tokio::time::sleep_until(wake) => {
                    if disconnect_sent {
                        break;
                    }
                }
            }
        }
    }
    ctx.stats.connected.store(false, Ordering::Relaxed);
    let wm = p.acked.watermark();
    if wm > p.marked {
        p.ctx.watermark.advance(wm);
    }
    tracing::info!(published_upto = wm, "MQTT publisher stopped");
    Ok(())
}

impl Publisher<'_> {
    fn on_connack(&mut self, client: &AsyncClient) {
        self.connected = true;
        self.tracker.reset();
        self.ctx.stats.connected.store(true, Ordering::Relaxed);
        let n = self.ctx.stats.connects.fetch_add(1, Ordering::Relaxed);
        self.last_progress = Instant::now();
        // Everything not acknowledged is backlog now; what commits from here on is live.
        self.backlog_cursor = self.acked.skip_from(self.acked.watermark());
        self.backlog_end = self.committed.max(self.live_cursor);
        self.live_cursor = self.backlog_end;
        self.live_buf.clear();
        self.backlog_buf.clear();
        self.linger_deadline = None;
        let birth = status_payload(&self.ctx.identity, true, &self.started_at, "connected");
        match client.try_publish(self.topics.status.clone(), QoS::AtLeastOnce, true, birth) {
            Ok(()) => self.tracker.handed(Item::Control),
            Err(e) => tracing::warn!(error = %e, "cannot queue the MQTT birth message"),
        }
        self.next_health = Instant::now();
        tracing::info!(
            connects = n + 1,
            backlog = self.backlog_end.saturating_sub(self.backlog_cursor),
            "MQTT connected"
        );
    }

    fn on_disconnect(&mut self) {
        self.connected = false;
        self.ctx.stats.connected.store(false, Ordering::Relaxed);
        self.tracker.reset();
    }

    fn on_event(&mut self, ev: &Event) {
        match ev {
            Event::Outgoing(Outgoing::Publish(pkid)) if !self.tracker.on_outgoing(*pkid) => {
                tracing::warn!(pkid, "MQTT publish not handed by the publisher");
            }
            Event::Incoming(Incoming::PubAck(ack)) => {
                if let Some(item) = self.tracker.on_puback(ack.pkid) {
                    self.on_acked(item);
                }
            }
            _ => {}
        }
    }

    fn on_acked(&mut self, item: Item) {
        let now = Instant::now();
        self.last_progress = now;
        self.ctx.heartbeat.beat();
        let Item::Batch {
            after,
            last,
            events,
            live,
            sent_at,
        } = item
        else {
            return;
        };
        let stats = &self.ctx.stats;
        stats.record_latency(now.saturating_duration_since(sent_at));
        stats.messages_acked.fetch_add(1, Ordering::Relaxed);
        stats
            .events_acked
            .fetch_add(events as u64, Ordering::Relaxed);
        if self.acked.insert(after, last) {
            stats
                .published_upto
                .store(self.acked.watermark(), Ordering::Relaxed);
        }
        if let Some(tx) = &self.ctx.acks {
            let _ = tx.send(AckNotice {
                after,
                last,
                events,
                live,
                acked_at: now,
            });
        }
    }

    /// Periodic work that must not wait for a poll event.
    fn housekeeping(&mut self, client: &AsyncClient) {
        let now = Instant::now();
        let wm = self.acked.watermark();
        if wm > self.marked
            && now.saturating_duration_since(self.last_mark)
                >= Duration::from_millis(self.cfg.mark_interval_ms)
        {
            self.ctx.watermark.advance(wm);
            self.marked = wm;
            self.last_mark = now;
        }
        if self.connected && now >= self.next_health {
            self.next_health = now + Duration::from_secs(self.cfg.health_interval_secs);
            let payload = self.health_payload();
            // QoS 0: health is periodic and superseded by the next one; it
            // must not take a slot of the event window.
            if let Err(e) =
                client.try_publish(self.topics.health.clone(), QoS::AtMostOnce, false, payload)
            {
                tracing::debug!(error = %e, "health message not queued");
            }
        }
        // Stuck = connected with messages out and no PUBACK for a long time;
        // then stop beating and let the watchdog act.
        let stuck_after = Duration::from_secs(self.cfg.keep_alive_secs * 3);
        let stuck = self.connected
            && self.tracker.in_flight() > 0
            && now.saturating_duration_since(self.last_progress) > stuck_after;
        if !stuck {
            self.ctx.heartbeat.beat();
        }
    }

    fn health_payload(&self) -> Vec<u8> {
        let mut obj = serde_json::Map::new();
        obj.insert("schema".into(), HEALTH_SCHEMA.into());
        obj.insert(
            "gateway".into(),
            self.ctx.identity.gateway_id.clone().into(),
        );
        obj.insert("site".into(), self.ctx.identity.site.clone().into());
        obj.insert("time".into(), utc_now_iso().into());
        match (self.ctx.health)() {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    obj.entry(k).or_insert(v);
                }
            }
            serde_json::Value::Null => {}
            other => {
                obj.insert("gateway_health".into(), other);
            }
        }
        let mut publ = self.ctx.stats.snapshot();
        if let serde_json::Value::Object(m) = &mut publ {
            m.insert(
                "backlog".into(),
                self.backlog_end.saturating_sub(self.backlog_cursor).into(),
            );
            m.insert("in_flight".into(), self.tracker.in_flight().into());
            m.insert(
                "acked_ranges_above_watermark".into(),
                self.acked.pending_ranges().into(),
            );
        }
        obj.insert("publisher".into(), publ);
        serde_json::Value::Object(obj).to_string().into_bytes()
    }

    fn next_wake(&self) -> Instant {
        let now = Instant::now();
        let mut wake = now + Duration::from_secs(1);
        if self.connected {
            wake = wake.min(self.next_health);
            // Linger and rate-limit timers only matter while the window has
            // room; otherwise the next PUBACK is what allows progress (and an
            // expired timer would spin the loop).
            let in_flight = self.tracker.in_flight();
            if in_flight < self.window {
                if let Some(d) = self.linger_deadline {
                    wake = wake.min(d);
                }
            }
            if in_flight < self.window - self.live_reserve && self.backlog_cursor < self.backlog_end
            {
                if let Some(b) = &self.bucket {
                    wake = wake.min(b.ready_at(1));
                }
            }
        }
        if self.acked.watermark() > self.marked {
            wake = wake.min(self.last_mark + Duration::from_millis(self.cfg.mark_interval_ms));
        }
        wake.max(now)
    }

    /// Hands batches to the client while the window has room: live first.
    async fn feed(&mut self, client: &AsyncClient) -> Result<(), PublishError> {
        while self.connected && self.tracker.in_flight() < self.window {
            let now = Instant::now();
            if let Some(b) = self.take_live(now).await? {
                self.send(client, b);
                continue;
            }
            if self.tracker.in_flight() < self.window - self.live_reserve {
                if let Some(b) = self.take_backlog(now).await? {
                    self.send(client, b);
                    continue;
                }
            }
            break;
        }
        Ok(())
    }

    async fn take_live(&mut self, now: Instant) -> Result<Option<Batch>, PublishError> {
        let n = self.cfg.batch_max_events;
        let avail = self.committed.saturating_sub(self.live_cursor) as usize;
        if avail == 0 && self.live_buf.is_empty() {
            self.linger_deadline = None;
            return Ok(None);
        }
        if avail < n {
            match self.linger_deadline {
                None => {
                    self.linger_deadline = Some(now + Duration::from_millis(self.cfg.linger_ms));
                    if self.cfg.linger_ms > 0 {
                        return Ok(None);
                    }
                }
                Some(d) if now < d => return Ok(None),
                Some(_) => {}
            }
        }
        if self.live_buf.is_empty() {
            let got = self
                .store
                .read_after(self.live_cursor, n.min(avail.max(1)))
                .await?;
            if got.is_empty() {
                // Nothing above the cursor although `committed` says there is:
                // either deleted (full policy) or not visible yet. Only the
                // store's own last_seq can tell which.
                let last = self.store.stats().await?.last_seq;
                if last >= self.committed {
                    let (after, upto) = (self.live_cursor, self.committed);
                    self.live_cursor = upto;
                    self.acked.insert(after, upto);
                }
                self.linger_deadline = None;
                return Ok(None);
            }
            if let Some(e) = got.last() {
                self.committed = self.committed.max(e.seq);
            }
            self.live_buf.extend(got);
        }
        let batch = pack(
            &mut self.live_buf,
            self.live_cursor,
            u64::MAX,
            n,
            self.cfg.batch_max_bytes,
        );
        self.linger_deadline = None;
        match batch {
            Some(mut b) => {
                self.live_cursor = b.last;
                self.committed = self.committed.max(b.last);
                b.live = true;
                Ok(Some(b))
            }
            None => Ok(None),
        }
    }

    async fn take_backlog(&mut self, now: Instant) -> Result<Option<Batch>, PublishError> {
        loop {
            self.backlog_cursor = self.acked.skip_from(self.backlog_cursor);
            if self.backlog_cursor >= self.backlog_end {
                return Ok(None);
            }
            let mut n = self.cfg.batch_max_events;
            if let Some(b) = &mut self.bucket {
                n = n.min(b.available(now));
                if n == 0 {
                    return Ok(None);
                }
            }
            // Stop before the next acknowledged range and at the end of the backlog.
            let stop = self
                .acked
                .next_start_after(self.backlog_cursor + 1)
                .unwrap_or(u64::MAX)
                .min(self.backlog_end);
            if self.backlog_buf.is_empty() {
                let limit = (stop - self.backlog_cursor).min(n as u64 * 4) as usize;
                let got = self
                    .store
                    .read_after(self.backlog_cursor, limit.max(1))
                    .await?;
                self.backlog_buf.extend(got);
            }
            let batch = pack(
                &mut self.backlog_buf,
                self.backlog_cursor,
                stop,
                n,
                self.cfg.batch_max_bytes,
            );
            match batch {
                Some(b) => {
                    self.backlog_cursor = b.last;
                    if let Some(bucket) = &mut self.bucket {
                        bucket.take(b.events.len());
                    }
                    return Ok(Some(b));
                }
                None => {
                    // No stored event in (cursor, stop]: deleted by the full
                    // policy or by retention; nothing to deliver there.
                    let after = self.backlog_cursor;
                    self.acked.insert(after, stop);
                    self.backlog_cursor = stop;
                    self.backlog_buf.retain(|e| e.seq > stop);
                }
            }
        }
    }

    fn send(&mut self, client: &AsyncClient, mut b: Batch) {
        loop {
            let payload = match self.renderer.render(&self.source, &b.events) {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, first = b.after + 1, last = b.last, "cannot render a batch; skipped");
                    self.acked.insert(b.after, b.last);
                    return;
                }
            };
            if payload.len() > self.max_payload {
                if b.events.len() > 1 {
                    // Split: send the first half now, put the rest back in front.
                    let keep = b.events.len() / 2;
                    let rest = b.events.split_off(keep);
                    let new_last = b.events.last().map_or(b.after, |e| e.seq);
                    let buf = if b.live {
                        &mut self.live_buf
                    } else {
                        &mut self.backlog_buf
                    };
                    for e in rest.into_iter().rev() {
                        buf.push_front(e);
                    }
                    if b.live {
                        self.live_cursor = new_last;
                    } else {
                        self.backlog_cursor = new_last;
                    }
                    b.last = new_last;
                    continue;
                }
                tracing::error!(
                    seq = b.last,
                    bytes = payload.len(),
                    "event larger than the MQTT packet limit; skipped"
                );
                self.ctx
                    .stats
                    .oversize_skipped
                    .fetch_add(1, Ordering::Relaxed);
                self.acked.insert(b.after, b.last);
                return;
            }
            let item = Item::Batch {
                after: b.after,
                last: b.last,
                events: b.events.len(),
                live: b.live,
                sent_at: Instant::now(),
            };
            match client.try_publish(self.topics.events.clone(), QoS::AtLeastOnce, false, payload) {
                Ok(()) => {
                    self.ctx
                        .stats
                        .events_sent
                        .fetch_add(b.events.len() as u64, Ordering::Relaxed);
                    self.tracker.handed(item);
                }
                Err(e) => {
                    // Cannot happen with the window below the channel size;
                    // if it does, put the batch back so nothing is skipped.
                    tracing::warn!(error = %e, "MQTT request channel refused a batch; will retry");
                    let buf = if b.live {
                        &mut self.live_buf
                    } else {
                        &mut self.backlog_buf
                    };
                    for e in b.events.into_iter().rev() {
                        buf.push_front(e);
                    }
                    if b.live {
                        self.live_cursor = b.after;
                    } else {
                        self.backlog_cursor = b.after;
                    }
                }
            }
            return;
        }
    }
}

/// Takes up to `max_events` / `max_bytes` (at least one event) from the front
/// of `buf`, all with seq <= `stop`; the batch covers `(after, last]`.
fn pack(
    buf: &mut VecDeque<StoredEvent>,
    after: u64,
    stop: u64,
    max_events: usize,
    max_bytes: usize,
) -> Option<Batch> {
    // Anything at or below the cursor is stale (read before a skip).
    while buf.front().is_some_and(|e| e.seq <= after) {
        buf.pop_front();
    }
    let mut events = Vec::new();
    let mut bytes = 0usize;
    while let Some(e) = buf.front() {
        if e.seq > stop || events.len() >= max_events {
            break;
        }
        if !events.is_empty() && bytes + e.payload.len() + 1 > max_bytes {
            break;
        }
        bytes += e.payload.len() + 1;
        if let Some(e) = buf.pop_front() {
            events.push(e);
        }
    }
    let last = events.last()?.seq;
    Some(Batch {
        after,
        last,
        events,
        live: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: u64, len: usize) -> StoredEvent {
        StoredEvent {
            seq,
            id: format!("g:s:{seq}"),
            event_type: "tap".into(),
            event_utc_ms: 0,
            payload: "x".repeat(len),
        }
    }

    #[test]
    fn pack_respects_count_bytes_and_stop() {
        let mut buf: VecDeque<_> = (1..=10).map(|s| ev(s, 100)).collect();
        let b = pack(&mut buf, 0, u64::MAX, 3, 10_000).unwrap();
        assert_eq!((b.after, b.last, b.events.len()), (0, 3, 3));
        let b = pack(&mut buf, 3, u64::MAX, 100, 250).unwrap();
        assert_eq!((b.after, b.last), (3, 5));
        let b = pack(&mut buf, 5, 7, 100, 10_000).unwrap();
        assert_eq!(b.last, 7);
        assert_eq!(buf.front().map(|e| e.seq), Some(8));
    }

    #[test]
    fn pack_sends_an_oversized_event_alone_and_covers_gaps() {
        let mut buf: VecDeque<_> = [ev(5, 5000), ev(9, 10)].into_iter().collect();
        let b = pack(&mut buf, 2, u64::MAX, 100, 1000).unwrap();
        assert_eq!((b.after, b.last, b.events.len()), (2, 5, 1));
        let b = pack(&mut buf, 5, u64::MAX, 100, 1000).unwrap();
        assert_eq!((b.after, b.last), (5, 9));
        assert!(pack(&mut buf, 9, u64::MAX, 100, 1000).is_none());
    }

    #[test]
    fn topics_refuse_wildcards_in_names() {
        let t = Topics::new("tracegate", "dock-1", "gw-7").unwrap();
        assert_eq!(t.events, "tracegate/dock-1/gw-7/events");
        assert_eq!(t.status, "tracegate/dock-1/gw-7/status");
        assert!(Topics::new("p", "a/b", "g").is_err());
        assert!(Topics::new("p", "s", "g#").is_err());
    }

    #[test]
    fn token_bucket_limits_backlog_rate() {
        let mut b = TokenBucket::new(1000, 100).unwrap();
        let t0 = b.last;
        assert_eq!(b.available(t0), 100);
        b.take(100);
        assert_eq!(b.available(t0), 0);
        assert_eq!(b.available(t0 + Duration::from_millis(50)), 50);
        assert!(b.ready_at(100) > t0 + Duration::from_millis(50));
    }
}
