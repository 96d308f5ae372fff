//! The outbox as a state machine: which stored events go out next, in which
//! MQTT message, and how far the store may mark them published.
//!
//! [`Outbox`] does no I/O and reads no clock (time is an argument), in the
//! manner of rumqttc's `MqttState`, so every scheduling rule is unit-tested
//! without a broker or a store. The loop in `publish/mod.rs` polls rumqttc,
//! feeds what happened here (`on_committed`, `on_connected`, `on_outgoing`,
//! `on_puback`, `on_connection_lost`) and carries out what [`Outbox::poll`]
//! asks for: read from the store, publish a batch, or wait.
//!
//! The rules it keeps:
//! - An event counts as delivered only after the PUBACK of the message that
//!   carried it; the watermark moves only over a contiguous acknowledged
//!   prefix, so PUBACKs may arrive in any order.
//! - Two lanes: *live* (committed since the connection came up) goes before
//!   *backlog* (everything unacknowledged at connect time), and a quarter of
//!   the window stays free for live events while the backlog drains. Only the
//!   backlog is rate-limited.
//! - A lost connection makes everything unacknowledged backlog again: the
//!   store, not the broker session, owns durability.
//! - Seqs the store no longer has (dropped when full) are covered as
//!   acknowledged so they never block the watermark.
//! - A batch too large for one packet is split; a single event too large is
//!   skipped and reported.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use crate::store::StoredEvent;

use super::config::MqttConfig;
use super::tracker::{AckTracker, AckedRanges, Item};

pub use super::tracker::SentBatch;

/// After a live read found nothing the committed seq promised (and the store
/// says it has not been deleted), try again after this long rather than spin.
const LIVE_RETRY: Duration = Duration::from_millis(50);

/// A backlog read fetches up to this many batches' worth of events at once.
const BACKLOG_READ_BATCHES: usize = 4;

/// The outbox's settings, taken from the validated `[mqtt]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxConfig {
    /// At most this many events in one message (at least 1).
    pub batch_max_events: usize,
    /// At most this many bytes of event JSON in one message; a single larger
    /// event still goes alone.
    pub batch_max_bytes: usize,
    /// How long a partly filled live batch waits for more events.
    pub linger: Duration,
    /// Backlog drain rate in events/s; `None` = unlimited.
    pub backlog_rate: Option<NonZeroU32>,
    /// Unacknowledged QoS 1 messages allowed at once (at least 1).
    pub window: usize,
    /// The watermark is persisted at most this often.
    pub mark_interval: Duration,
    /// Connected, messages out, and no PUBACK for this long: stalled.
    pub stall_after: Duration,
}

impl OutboxConfig {
    pub fn from_mqtt(cfg: &MqttConfig) -> OutboxConfig {
        OutboxConfig {
            batch_max_events: cfg.batch_max_events.max(1),
            batch_max_bytes: cfg.batch_max_bytes,
            linger: Duration::from_millis(cfg.linger_ms),
            backlog_rate: NonZeroU32::new(cfg.backlog_rate_limit),
            window: usize::from(cfg.inflight).max(1),
            mark_interval: Duration::from_millis(cfg.mark_interval_ms),
            // Three keep-alives without a PUBACK while rumqttc still thinks
            // the connection is up means something is wedged.
            stall_after: Duration::from_secs(cfg.keep_alive_secs.saturating_mul(3)),
        }
    }
}

/// Which lane a read or a batch belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Committed while connected: sent first, never rate-limited.
    Live,
    /// Unacknowledged when the connection came up.
    Backlog,
}

/// Read up to `limit` stored events with `seq > after`, oldest first, and
/// hand them to [`Outbox::on_read`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadRequest {
    pub lane: Lane,
    pub after: u64,
    pub limit: usize,
}

/// What the loop should do next.
#[derive(Debug)]
pub enum Action {
    Read(ReadRequest),
    /// A live read came back empty although events were committed: report
    /// the store's last assigned seq with [`Outbox::on_last_seq`] (were they
    /// deleted, or not visible yet?).
    ReadLastSeq,
    /// Render and publish this batch, then report exactly one of
    /// [`Outbox::on_handed`], [`Outbox::put_back`], [`Outbox::split`] or
    /// [`Outbox::skip`] before polling again.
    Publish(Batch),
    /// Nothing to do before [`Outbox::next_wake`] or new input.
    Wait,
}

/// Identifies one MQTT connection: events of an older one are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnId(u64);

/// Stored events for one MQTT message.
#[derive(Debug)]
pub struct Batch {
    /// The batch covers `after < seq <= last`; seqs in that range missing
    /// from `events` are gone from the store.
    pub after: u64,
    pub last: u64,
    pub events: Vec<StoredEvent>,
    pub lane: Lane,
    conn: ConnId,
}

impl Batch {
    pub fn is_live(&self) -> bool {
        self.lane == Lane::Live
    }
}

/// The outcome of [`Outbox::split`].
#[derive(Debug)]
pub enum Split {
    /// Publish this smaller batch instead (the rest went back to its lane).
    Retry(Batch),
    /// A single event larger than a packet: skipped and counted as delivered.
    Skipped { seq: u64 },
}

/// What a PUBACK acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acked {
    Control,
    Batch(SentBatch),
}

#[derive(Debug)]
struct TokenBucket {
    rate: f64,
    tokens: f64,
    cap: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(rate: NonZeroU32, batch: usize, now: Instant) -> TokenBucket {
        let rate = f64::from(rate.get());
        TokenBucket {
            rate,
            tokens: batch as f64,
            cap: rate.max(batch as f64),
            last: now,
        }
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

/// One lane's position in the store and its read-ahead.
#[derive(Debug, Default)]
struct Cursor {
    /// Every seq at or below is handed over, acknowledged or known absent.
    at: u64,
    /// Stored events above `at`, oldest first, as read from the store.
    buf: VecDeque<StoredEvent>,
    /// The store holds no event in `(at, known_upto]` other than those in
    /// `buf`: what lets a gap be covered without another read.
    known_upto: u64,
}

impl Cursor {
    fn reset(&mut self, at: u64) {
        self.at = at;
        self.buf.clear();
        self.known_upto = at;
    }

    /// Drops read-ahead the cursor has moved past (an acknowledged range was skipped).
    fn drop_stale(&mut self) {
        while self.buf.front().is_some_and(|e| e.seq <= self.at) {
            self.buf.pop_front();
        }
    }

    /// The one put-back path: `events` (oldest first) go back in front of
    /// the read-ahead and the cursor returns to `at`, just before them.
    fn unread(&mut self, events: Vec<StoredEvent>, at: u64) {
        for e in events.into_iter().rev() {
            self.buf.push_front(e);
        }
        self.at = at;
    }
}

/// Takes up to `max_events` / `max_bytes` (at least one event) from the front
/// of the cursor's read-ahead, all with seq <= `stop`, and moves the cursor
/// to the last one taken.
fn pack(
    cur: &mut Cursor,
    stop: u64,
    max_events: usize,
    max_bytes: usize,
    lane: Lane,
    conn: ConnId,
) -> Option<Batch> {
    cur.drop_stale();
    let mut events = Vec::new();
    let mut bytes = 0usize;
    while let Some(e) = cur.buf.front() {
        if e.seq > stop || events.len() >= max_events {
            break;
        }
        if !events.is_empty() && bytes + e.payload.len() + 1 > max_bytes {
            break;
        }
        bytes += e.payload.len() + 1;
        if let Some(e) = cur.buf.pop_front() {
            events.push(e);
        }
    }
    let last = events.last()?.seq;
    let after = cur.at;
    cur.at = last;
    Some(Batch {
        after,
        last,
        events,
        lane,
        conn,
    })
}

/// The publisher's outbox state. See the module documentation.
#[derive(Debug)]
pub struct Outbox {
    cfg: OutboxConfig,
    live_reserve: usize,
    conn: ConnId,
    connected: bool,
    tracker: AckTracker,
    acked: AckedRanges,
    committed: u64,
    live: Cursor,
    backlog: Cursor,
    /// The backlog is `(backlog.at, backlog_end]` minus acknowledged ranges.
    backlog_end: u64,
    linger_until: Option<Instant>,
    live_retry_at: Option<Instant>,
    bucket: Option<TokenBucket>,
    /// A read the loop has been asked for and not yet answered.
    reading: Option<ReadRequest>,
    need_last_seq: bool,
    persisted: u64,
    last_persist: Instant,
    last_progress: Instant,
}

impl Outbox {
    /// `published_upto` is the store's persisted watermark, `committed` the
    /// highest committed seq.
    pub fn new(cfg: OutboxConfig, published_upto: u64, committed: u64, now: Instant) -> Outbox {
        let window = cfg.window.max(1);
        let cfg = OutboxConfig {
            window,
            batch_max_events: cfg.batch_max_events.max(1),
            ..cfg
        };
        let committed = committed.max(published_upto);
        let mut live = Cursor::default();
        live.reset(committed);
        let mut backlog = Cursor::default();
        backlog.reset(published_upto);
        Outbox {
            live_reserve: if window >= 2 { (window / 4).max(1) } else { 0 },
            bucket: cfg
                .backlog_rate
                .map(|r| TokenBucket::new(r, cfg.batch_max_events, now)),
            cfg,
            conn: ConnId(0),
            connected: false,
            tracker: AckTracker::default(),
            acked: AckedRanges::new(published_upto),
            committed,
            live,
            backlog,
            backlog_end: committed,
            linger_until: None,
            live_retry_at: None,
            reading: None,
            need_last_seq: false,
            persisted: published_upto,
            last_persist: now,
            last_progress: now,
        }
    }

    /// The store committed everything up to `seq`.
    pub fn on_committed(&mut self, seq: u64) {
        self.committed = self.committed.max(seq);
    }

    /// CONNACK of a new clean session. Everything unacknowledged becomes
    /// backlog; what commits from now on is live.
    pub fn on_connected(&mut self, now: Instant) -> ConnId {
        self.conn = ConnId(self.conn.0 + 1);
        self.connected = true;
        self.tracker.reset();
        self.last_progress = now;
        self.backlog_end = self.committed.max(self.live.at);
        let start = self.acked.skip_from(self.acked.watermark());
        self.backlog.reset(start);
        self.live.reset(self.backlog_end);
        self.linger_until = None;
        self.live_retry_at = None;
        self.reading = None;
        self.need_last_seq = false;
        self.conn
    }

    /// The connection is gone: nothing in flight will be acknowledged, it is
    /// all sent again after the next [`Outbox::on_connected`].
    pub fn on_connection_lost(&mut self) {
        self.connected = false;
        self.tracker.reset();
        self.reading = None;
        self.need_last_seq = false;
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    fn is_current(&self, conn: ConnId) -> bool {
        self.connected && conn == self.conn
    }

    /// The next thing to do. Call again after carrying it out, until `Wait`.
    pub fn poll(&mut self, now: Instant) -> Action {
        if !self.connected {
            return Action::Wait;
        }
        if let Some(r) = self.reading {
            return Action::Read(r);
        }
        if self.need_last_seq {
            return Action::ReadLastSeq;
        }
        let in_flight = self.tracker.in_flight();
        if in_flight >= self.cfg.window {
            return Action::Wait;
        }
        if let Some(a) = self.take_live(now) {
            return a;
        }
        if in_flight < self.cfg.window - self.live_reserve {
            if let Some(a) = self.take_backlog(now) {
                return a;
            }
        }
        Action::Wait
    }

    fn take_live(&mut self, now: Instant) -> Option<Action> {
        let n = self.cfg.batch_max_events;
        self.live.drop_stale();
        let avail = self.committed.saturating_sub(self.live.at);
        if avail == 0 && self.live.buf.is_empty() {
            self.linger_until = None;
            return None;
        }
        if let Some(t) = self.live_retry_at {
            if now < t {
                return None;
            }
            self.live_retry_at = None;
        }
        if avail < n as u64 {
            match self.linger_until {
                None => {
                    self.linger_until = Some(now + self.cfg.linger);
                    if !self.cfg.linger.is_zero() {
                        return None;
                    }
                }
                Some(t) if now < t => return None,
                Some(_) => {}
            }
        }
        if self.live.buf.is_empty() {
            let limit = usize::try_from(avail.max(1)).unwrap_or(n).min(n);
            return Some(self.read(Lane::Live, limit));
        }
        let batch = pack(
            &mut self.live,
            u64::MAX,
            n,
            self.cfg.batch_max_bytes,
            Lane::Live,
            self.conn,
        )?;
        self.linger_until = None;
        self.committed = self.committed.max(batch.last);
        Some(Action::Publish(batch))
    }

    fn take_backlog(&mut self, now: Instant) -> Option<Action> {
        loop {
            self.backlog.at = self.acked.skip_from(self.backlog.at);
            if self.backlog.at >= self.backlog_end {
                return None;
            }
            let mut n = self.cfg.batch_max_events;
            if let Some(b) = &mut self.bucket {
                n = n.min(b.available(now));
                if n == 0 {
                    return None;
                }
            }
            // Stop before the next acknowledged range and at the end of the backlog.
            let at = self.backlog.at;
            let stop = self
                .acked
                .next_start_after(at + 1)
                .unwrap_or(u64::MAX)
                .min(self.backlog_end);
            self.backlog.drop_stale();
            let gap_to = match self.backlog.buf.front().map(|e| e.seq) {
                Some(seq) if seq <= stop => {
                    return pack(
                        &mut self.backlog,
                        stop,
                        n,
                        self.cfg.batch_max_bytes,
                        Lane::Backlog,
                        self.conn,
                    )
                    .map(Action::Publish);
                }
                // The next stored event is beyond `stop`: nothing to deliver
                // up to there (deleted by the full policy or by retention).
                Some(_) => stop,
                None if self.backlog.known_upto > at => self.backlog.known_upto.min(stop),
                None => {
                    let span = usize::try_from(stop - at).unwrap_or(usize::MAX);
                    let limit = span.min(n.saturating_mul(BACKLOG_READ_BATCHES)).max(1);
                    return Some(self.read(Lane::Backlog, limit));
                }
            };
            self.acked.insert(at, gap_to);
            self.backlog.at = gap_to;
        }
    }

    fn read(&mut self, lane: Lane, limit: usize) -> Action {
        let after = match lane {
            Lane::Live => self.live.at,
            Lane::Backlog => self.backlog.at,
        };
        let r = ReadRequest { lane, after, limit };
        self.reading = Some(r);
        Action::Read(r)
    }

    /// The answer to the last [`Action::Read`]: the store's events with
    /// `seq > after`, oldest first, at most `limit`.
    pub fn on_read(&mut self, events: Vec<StoredEvent>) {
        let Some(req) = self.reading.take() else {
            // Asked before a reconnect; the lanes have been reset since.
            return;
        };
        let last = events.last().map(|e| e.seq);
        match req.lane {
            Lane::Live => {
                let Some(last) = last else {
                    self.need_last_seq = true;
                    return;
                };
                self.committed = self.committed.max(last);
                self.live.known_upto = self.live.known_upto.max(last);
                self.live.buf.extend(events);
            }
            Lane::Backlog => {
                // Fewer than asked: the store had nothing more above `after`,
                // and every seq up to `backlog_end` was committed before the
                // read, so none can still appear there.
                let known = if events.len() < req.limit {
                    self.backlog_end.max(last.unwrap_or(0))
                } else {
                    last.unwrap_or(req.after)
                };
                self.backlog.known_upto = self.backlog.known_upto.max(known);
                self.backlog.buf.extend(events);
            }
        }
    }

    /// The answer to [`Action::ReadLastSeq`]: the store's last assigned seq.
    pub fn on_last_seq(&mut self, last_seq: u64, now: Instant) {
        if !std::mem::take(&mut self.need_last_seq) {
            return;
        }
        self.linger_until = None;
        if last_seq >= self.committed {
            // Assigned and gone: nothing to deliver up to `committed`.
            let (after, upto) = (self.live.at, self.committed);
            self.acked.insert(after, upto);
            self.live.reset(upto);
        } else {
            self.live_retry_at = Some(now + self.cfg.linger.max(LIVE_RETRY));
        }
    }

    /// The client accepted the batch's message (QoS 1).
    pub fn on_handed(&mut self, batch: &Batch, now: Instant) {
        if !self.is_current(batch.conn) {
            return;
        }
        self.tracker.handed(Item::Batch(SentBatch {
            after: batch.after,
            last: batch.last,
            events: batch.events.len(),
            live: batch.is_live(),
            sent_at: now,
        }));
        if batch.lane == Lane::Backlog {
            if let Some(b) = &mut self.bucket {
                b.take(batch.events.len());
            }
        }
    }

    /// The client refused the batch: it goes back in front of its lane.
    pub fn put_back(&mut self, batch: Batch) {
        if let Some(cur) = self.cursor_of(&batch) {
            cur.unread(batch.events, batch.after);
        }
    }

    /// The rendered batch is larger than a packet. Several events: the first
    /// half is returned to publish, the rest goes back in front of its lane.
    /// A single event: skipped, and covered as if acknowledged.
    pub fn split(&mut self, mut batch: Batch) -> Split {
        if batch.events.len() > 1 {
            let rest = batch.events.split_off(batch.events.len() / 2);
            let new_last = batch.events.last().map_or(batch.after, |e| e.seq);
            if let Some(cur) = self.cursor_of(&batch) {
                cur.unread(rest, new_last);
            }
            batch.last = new_last;
            return Split::Retry(batch);
        }
        self.skip(&batch);
        Split::Skipped { seq: batch.last }
    }

    /// The batch cannot be published at all (it failed to render): covered
    /// as if acknowledged, so it does not block the watermark forever.
    pub fn skip(&mut self, batch: &Batch) {
        if batch.conn == self.conn {
            self.acked.insert(batch.after, batch.last);
        }
    }

    /// The lane cursor a just-polled batch came from, if it still stands
    /// right after the batch (not reset by a reconnect since).
    fn cursor_of(&mut self, batch: &Batch) -> Option<&mut Cursor> {
        if !self.is_current(batch.conn) {
            return None;
        }
        let cur = match batch.lane {
            Lane::Live => &mut self.live,
            Lane::Backlog => &mut self.backlog,
        };
        (cur.at == batch.last).then_some(cur)
    }

    /// A QoS 1 message outside the outbox (birth or shutdown status) was
    /// handed to the client; it takes a window slot and a packet id.
    pub fn on_control_handed(&mut self, conn: ConnId) {
        if self.is_current(conn) {
            self.tracker.handed(Item::Control);
        }
    }

    /// rumqttc's `Outgoing::Publish(pkid)`. Returns false for a QoS 1
    /// publish nothing was handed for (worth a warning: untracked publish).
    pub fn on_outgoing(&mut self, conn: ConnId, pkid: u16) -> bool {
        if !self.is_current(conn) {
            return true;
        }
        self.tracker.on_outgoing(pkid)
    }

    /// rumqttc's `Incoming::PubAck(pkid)`.
    pub fn on_puback(&mut self, conn: ConnId, pkid: u16, now: Instant) -> Option<Acked> {
        if !self.is_current(conn) {
            return None;
        }
        let item = self.tracker.on_puback(pkid)?;
        self.last_progress = now;
        match item {
            Item::Control => Some(Acked::Control),
            Item::Batch(b) => {
                self.acked.insert(b.after, b.last);
                Some(Acked::Batch(b))
            }
        }
    }

    /// Highest seq such that every seq at or below it is acknowledged (or gone).
    pub fn watermark(&self) -> u64 {
        self.acked.watermark()
    }

    /// The watermark last reported persisted.
    pub fn persisted(&self) -> u64 {
        self.persisted
    }

    /// The watermark to persist now, if it moved and `mark_interval` has
    /// passed since the last time; report success with [`Outbox::on_persisted`].
    pub fn watermark_to_persist(&self, now: Instant) -> Option<u64> {
        let wm = self.acked.watermark();
        (wm > self.persisted
            && now.saturating_duration_since(self.last_persist) >= self.cfg.mark_interval)
            .then_some(wm)
    }

    pub fn on_persisted(&mut self, upto: u64, now: Instant) {
        self.persisted = self.persisted.max(upto);
        self.last_persist = now;
    }

    /// When a timer of the outbox runs out (linger, rate limit, retry,
    /// watermark interval); `None` if only new input can make progress.
    pub fn next_wake(&self, now: Instant) -> Option<Instant> {
        let mut wake: Option<Instant> = None;
        let mut at = |t: Instant| wake = Some(wake.map_or(t, |w| w.min(t)));
        if self.connected && self.reading.is_none() && !self.need_last_seq {
            // Lane timers only matter while the window has room; otherwise
            // the next PUBACK is what allows progress (and an expired timer
            // would spin the loop).
            let in_flight = self.tracker.in_flight();
            if in_flight < self.cfg.window {
                if let Some(t) = self.linger_until {
                    at(t);
                }
                if let Some(t) = self.live_retry_at {
                    at(t);
                }
            }
            if in_flight < self.cfg.window - self.live_reserve
                && self.backlog.at < self.backlog_end
            {
                if let Some(b) = &self.bucket {
                    at(b.ready_at(1));
                }
            }
        }
        if self.acked.watermark() > self.persisted {
            at(self.last_persist + self.cfg.mark_interval);
        }
        wake.map(|w| w.max(now))
    }

    /// Connected with messages out and no PUBACK for `stall_after`.
    pub fn is_stalled(&self, now: Instant) -> bool {
        self.connected
            && self.tracker.in_flight() > 0
            && now.saturating_duration_since(self.last_progress) > self.cfg.stall_after
    }

    /// QoS 1 messages handed and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.tracker.in_flight()
    }

    /// Backlog seqs not yet handed over (acknowledged ranges included).
    pub fn backlog_remaining(&self) -> u64 {
        self.backlog_end.saturating_sub(self.backlog.at)
    }

    /// Acknowledged ranges waiting above the watermark for a gap to close.
    pub fn acked_ranges_pending(&self) -> usize {
        self.acked.pending_ranges()
    }
}
