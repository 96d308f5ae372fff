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
    /// The PUBACK deadline: connected with messages out and no PUBACK for
    /// this long, the connection is wedged (a silent partition: no RST, no
    /// FIN, the keep-alive would take up to 1.5 keep-alives to notice) and
    /// the loop drops it. Also how long committed events may wait without
    /// any PUBACK before the uplink counts as stalled (health).
    pub puback_timeout: Duration,
}

impl OutboxConfig {
    pub fn from_mqtt(cfg: &MqttConfig) -> OutboxConfig {
        OutboxConfig {
            batch_max_events: cfg.batch_max_events.get(),
            batch_max_bytes: cfg.batch_max_bytes.get(),
            linger: cfg.linger,
            backlog_rate: cfg.backlog_rate_limit,
            window: usize::from(cfg.inflight.get()),
            mark_interval: cfg.mark_interval,
            puback_timeout: cfg.puback_timeout,
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
    /// The connection is idle and the broker has not been heard from for
    /// half the PUBACK deadline: publish a small QoS 1 message and report
    /// [`Outbox::on_control_handed`] (or [`Outbox::on_probe_refused`]). Its
    /// PUBACK falls under the deadline like any other, so a silent
    /// partition is noticed within 1.5 × `puback_timeout` with no events
    /// flowing too, not at the MQTT keep-alive.
    Probe(ConnId),
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
    /// The connection the batch was made for.
    pub fn conn(&self) -> ConnId {
        self.conn
    }

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
    /// Payload bytes in `buf` (plus one separator per event).
    buf_bytes: usize,
    /// The store holds no event in `(at, known_upto]` other than those in
    /// `buf`: what lets a gap be covered without another read.
    known_upto: u64,
    /// Events up to here were part of a batch already formed (then split or
    /// refused): they go out without lingering again.
    flush_upto: u64,
}

fn size_of(e: &StoredEvent) -> usize {
    e.payload.len() + 1
}

impl Cursor {
    fn reset(&mut self, at: u64) {
        self.at = at;
        self.buf.clear();
        self.buf_bytes = 0;
        self.known_upto = at;
        self.flush_upto = at;
    }

    fn extend(&mut self, events: Vec<StoredEvent>) {
        self.buf_bytes += events.iter().map(size_of).sum::<usize>();
        self.buf.extend(events);
    }

    fn pop_front(&mut self) -> Option<StoredEvent> {
        let e = self.buf.pop_front()?;
        self.buf_bytes -= size_of(&e);
        Some(e)
    }

    /// Drops read-ahead the cursor has moved past (an acknowledged range was skipped).
    fn drop_stale(&mut self) {
        while self.buf.front().is_some_and(|e| e.seq <= self.at) {
            self.pop_front();
        }
    }

    /// The one put-back path: `events` (oldest first) go back in front of
    /// the read-ahead and the cursor returns to `at`, just before them.
    fn unread(&mut self, events: Vec<StoredEvent>, at: u64) {
        if let Some(e) = events.last() {
            self.flush_upto = self.flush_upto.max(e.seq);
        }
        for e in events.into_iter().rev() {
            self.buf_bytes += size_of(&e);
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
        if !events.is_empty() && bytes + size_of(e) > max_bytes {
            break;
        }
        bytes += size_of(e);
        if let Some(e) = cur.pop_front() {
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
    /// The PUBACK clock of the current connection: since when the oldest
    /// outstanding message has waited (its hand-over, or the last PUBACK
    /// if one came since). `None` while nothing is in flight.
    outstanding_since: Option<Instant>,
    /// Connection time: the clock for control messages handed without one.
    connected_at: Instant,
    /// When the broker last answered on this connection (CONNACK, a
    /// PUBACK, any packet): an idle connection is probed half a deadline
    /// after it.
    heard_at: Instant,
    /// A refused probe is asked for again no sooner than this.
    probe_retry_at: Option<Instant>,
    /// Since when committed events have waited without any PUBACK, across
    /// connections (`None`: nothing unacknowledged). Updated by
    /// [`Outbox::observe`] and by PUBACKs.
    waiting_since: Option<Instant>,
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
            outstanding_since: None,
            connected_at: now,
            heard_at: now,
            probe_retry_at: None,
            waiting_since: None,
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
        self.outstanding_since = None;
        self.connected_at = now;
        self.heard_at = now;
        self.probe_retry_at = None;
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
        self.outstanding_since = None;
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
        if self.probe_at().is_some_and(|t| now >= t) {
            return Action::Probe(self.conn);
        }
        Action::Wait
    }

    /// When an idle connection is to be probed: connected, nothing in
    /// flight (a message out is under the deadline already) and nothing
    /// being read, half the PUBACK deadline after the broker was last heard.
    fn probe_at(&self) -> Option<Instant> {
        if !self.connected
            || self.tracker.in_flight() > 0
            || self.reading.is_some()
            || self.need_last_seq
        {
            return None;
        }
        let at = self.heard_at + self.cfg.puback_timeout / 2;
        Some(self.probe_retry_at.map_or(at, |r| r.max(at)))
    }

    /// The client refused the probe (its request channel is full): ask
    /// again a little later rather than spin.
    pub fn on_probe_refused(&mut self, now: Instant) {
        self.probe_retry_at = Some(now + LIVE_RETRY);
    }

    /// Any packet from the broker on `conn` (a PINGRESP, a SUBACK, a
    /// message): it is there, so an idle connection needs no probe yet.
    pub fn on_heard(&mut self, conn: ConnId, now: Instant) {
        if self.is_current(conn) {
            self.heard_at = self.heard_at.max(now);
        }
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
        // Linger only while a full batch (by count or bytes) is not there yet.
        let full = avail >= n as u64
            || self.live.buf_bytes >= self.cfg.batch_max_bytes
            || self.live.at < self.live.flush_upto;
        if !full {
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
                self.live.extend(events);
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
                self.backlog.extend(events);
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
        self.outstanding_since.get_or_insert(now);
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
    pub fn on_control_handed(&mut self, conn: ConnId, now: Instant) {
        if self.is_current(conn) {
            self.tracker.handed(Item::Control);
            self.outstanding_since.get_or_insert(now);
            self.probe_retry_at = None;
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
        self.heard_at = self.heard_at.max(now);
        // The broker answers: the deadline restarts for what is still out.
        self.outstanding_since = (self.tracker.in_flight() > 0).then_some(now);
        let acked = match item {
            Item::Control => Acked::Control,
            Item::Batch(b) => {
                self.acked.insert(b.after, b.last);
                Acked::Batch(b)
            }
        };
        if self.waiting_since.is_some() {
            self.waiting_since = self.has_unacknowledged().then_some(now);
        }
        Some(acked)
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
            if in_flight < self.cfg.window - self.live_reserve && self.backlog.at < self.backlog_end
            {
                if let Some(b) = &self.bucket {
                    at(b.ready_at(1));
                }
            }
        }
        if self.acked.watermark() > self.persisted {
            at(self.last_persist + self.cfg.mark_interval);
        }
        if let Some(d) = self.puback_deadline() {
            at(d);
        }
        if let Some(t) = self.probe_at() {
            at(t);
        }
        wake.map(|w| w.max(now))
    }

    /// When the PUBACK deadline of the current connection runs out: the
    /// oldest outstanding message (or the last PUBACK, if later) plus
    /// `puback_timeout`. `None` when disconnected or nothing is in flight.
    pub fn puback_deadline(&self) -> Option<Instant> {
        if !self.connected || self.tracker.in_flight() == 0 {
            return None;
        }
        let since = self.outstanding_since.unwrap_or(self.connected_at);
        Some(since + self.cfg.puback_timeout)
    }

    /// The PUBACK deadline has passed: the caller drops the connection
    /// (and reports [`Outbox::on_connection_lost`]); everything in flight
    /// is sent again on the next one.
    pub fn puback_overdue(&self, now: Instant) -> bool {
        self.puback_deadline().is_some_and(|d| now >= d)
    }

    fn has_unacknowledged(&self) -> bool {
        self.acked.watermark() < self.committed
    }

    /// Notes the time for the stall clock: call once per wake-up, connected
    /// or not (the committed seq may have moved without a `now`).
    pub fn observe(&mut self, now: Instant) {
        if !self.has_unacknowledged() {
            self.waiting_since = None;
        } else if self.waiting_since.is_none() {
            self.waiting_since = Some(now);
        }
    }

    /// Since when committed events have waited with no PUBACK at all, if
    /// that is at least `puback_timeout` (the uplink is stalled, connected
    /// or not); `None` while events flow or nothing waits.
    pub fn stalled_since(&self, now: Instant) -> Option<Instant> {
        self.waiting_since
            .filter(|&t| now.saturating_duration_since(t) >= self.cfg.puback_timeout)
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    fn cfg() -> OutboxConfig {
        OutboxConfig {
            batch_max_events: 10,
            batch_max_bytes: 100_000,
            linger: Duration::from_millis(20),
            backlog_rate: None,
            window: 8,
            mark_interval: Duration::from_millis(200),
            puback_timeout: Duration::from_secs(90),
        }
    }

    /// The event store as the loop sees it: seq -> payload length.
    #[derive(Debug, Default)]
    struct Store {
        events: BTreeMap<u64, usize>,
        last_seq: u64,
    }

    impl Store {
        fn read(&self, after: u64, limit: usize) -> Vec<StoredEvent> {
            self.events
                .range(after + 1..)
                .take(limit)
                .map(|(&seq, &len)| StoredEvent {
                    seq,
                    id: format!("g:s:{seq}"),
                    event_type: "tap".into(),
                    event_utc_ms: 0,
                    payload: "x".repeat(len),
                })
                .collect()
        }

        fn is_gone(&self, seq: u64) -> bool {
            seq <= self.last_seq && !self.events.contains_key(&seq)
        }
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Msg {
        Control,
        Batch {
            after: u64,
            last: u64,
            seqs: Vec<u64>,
        },
    }

    /// rumqttc's packet-id handling (`MqttState`): ids cycle through
    /// `1..=max`; a publish whose id is still unacknowledged collides and
    /// waits, blocking every later request, until that id's PUBACK.
    #[derive(Debug)]
    struct Client {
        max: u16,
        last_pkid: u16,
        slots: Vec<Option<Msg>>,
        collision: Option<(u16, Msg)>,
        queue: VecDeque<Msg>,
    }

    impl Client {
        fn new(window: usize) -> Client {
            // As `mqtt_options` sets it: the window plus two.
            let max = u16::try_from(window + 2).unwrap();
            Client {
                max,
                last_pkid: 0,
                slots: vec![None; usize::from(max) + 1],
                collision: None,
                queue: VecDeque::new(),
            }
        }

        fn next_pkid(&mut self) -> u16 {
            let next = self.last_pkid + 1;
            self.last_pkid = if next == self.max { 0 } else { next };
            next
        }

        fn unacked(&self) -> Vec<u16> {
            (0..self.slots.len())
                .filter(|&i| self.slots[i].is_some())
                .map(|i| u16::try_from(i).unwrap())
                .collect()
        }
    }

    /// The outbox with a simulated store, client and broker around it, doing
    /// what `publish/mod.rs` does with the real ones.
    struct Harness {
        ob: Outbox,
        store: Store,
        client: Client,
        conn: Option<ConnId>,
        now: Instant,
        window: usize,
        /// Largest rendered batch (sum of payload + 1 per event).
        max_payload: usize,
        /// Seqs carried by a message the broker acknowledged.
        delivered: BTreeSet<u64>,
        skipped: BTreeSet<u64>,
        /// Every batch handed over: (lane, after, last, events).
        sent: Vec<(Lane, u64, u64, usize)>,
        /// The watermark up to which `check_watermark` has looked.
        checked: u64,
        /// Probes handed over.
        probes: usize,
    }

    impl Harness {
        fn new(cfg: OutboxConfig) -> Harness {
            Harness::with_store(cfg, Store::default(), 0)
        }

        fn with_store(cfg: OutboxConfig, store: Store, published_upto: u64) -> Harness {
            let now = Instant::now();
            let window = cfg.window;
            Harness {
                ob: Outbox::new(cfg, published_upto, store.last_seq, now),
                store,
                client: Client::new(window),
                conn: None,
                now,
                window,
                max_payload: usize::MAX,
                delivered: BTreeSet::new(),
                skipped: BTreeSet::new(),
                sent: Vec::new(),
                checked: published_upto,
                probes: 0,
            }
        }

        fn commit(&mut self, n: u64, len: usize) -> u64 {
            for _ in 0..n {
                self.store.last_seq += 1;
                self.store.events.insert(self.store.last_seq, len);
            }
            self.ob.on_committed(self.store.last_seq);
            self.store.last_seq
        }

        fn connect(&mut self) {
            let conn = self.ob.on_connected(self.now);
            self.conn = Some(conn);
            self.client = Client::new(self.window);
            self.client.queue.push_back(Msg::Control);
            self.ob.on_control_handed(conn, self.now);
        }

        fn disconnect(&mut self) {
            self.ob.on_connection_lost();
            self.conn = None;
        }

        fn advance(&mut self, ms: u64) {
            self.now += Duration::from_millis(ms);
        }

        /// Carries out the outbox's actions until it waits; returns the
        /// batches handed over meanwhile.
        fn drive(&mut self) -> Vec<(Lane, u64, u64, usize)> {
            let before = self.sent.len();
            for _ in 0..100_000 {
                match self.ob.poll(self.now) {
                    Action::Wait => {
                        // As the loop does: persist when the outbox says so.
                        if let Some(wm) = self.ob.watermark_to_persist(self.now) {
                            self.ob.on_persisted(wm, self.now);
                        }
                        return self.sent[before..].to_vec();
                    }
                    Action::Read(r) => {
                        let events = self.store.read(r.after, r.limit);
                        self.ob.on_read(events);
                    }
                    Action::ReadLastSeq => self.ob.on_last_seq(self.store.last_seq, self.now),
                    Action::Publish(b) => self.publish(b),
                    Action::Probe(conn) => {
                        self.client.queue.push_back(Msg::Control);
                        self.ob.on_control_handed(conn, self.now);
                        self.probes += 1;
                    }
                }
            }
            panic!("the outbox never waits");
        }

        fn publish(&mut self, mut b: Batch) {
            loop {
                let size: usize = b.events.iter().map(|e| e.payload.len() + 1).sum();
                if size <= self.max_payload {
                    break;
                }
                match self.ob.split(b) {
                    Split::Retry(smaller) => b = smaller,
                    Split::Skipped { seq } => {
                        self.skipped.insert(seq);
                        return;
                    }
                }
            }
            self.sent.push((b.lane, b.after, b.last, b.events.len()));
            self.client.queue.push_back(Msg::Batch {
                after: b.after,
                last: b.last,
                seqs: b.events.iter().map(|e| e.seq).collect(),
            });
            self.ob.on_handed(&b, self.now);
        }

        /// The event loop writes queued requests out, as far as its
        /// inflight limit and collisions allow.
        fn flush(&mut self) {
            let Some(conn) = self.conn else { return };
            while self.client.collision.is_none()
                && self.client.unacked().len() < usize::from(self.client.max)
            {
                let Some(msg) = self.client.queue.pop_front() else {
                    return;
                };
                let pkid = self.client.next_pkid();
                if self.client.slots[usize::from(pkid)].is_some() {
                    self.client.collision = Some((pkid, msg));
                    return;
                }
                self.client.slots[usize::from(pkid)] = Some(msg);
                assert!(
                    self.ob.on_outgoing(conn, pkid),
                    "pkid {pkid} matched nothing"
                );
            }
        }

        /// The broker's PUBACK for `pkid`.
        fn ack(&mut self, pkid: u16) {
            let conn = self.conn.unwrap();
            let msg = self.client.slots[usize::from(pkid)].take().unwrap();
            match (msg, self.ob.on_puback(conn, pkid, self.now)) {
                (Msg::Control, Some(Acked::Control)) => {}
                (Msg::Batch { after, last, seqs }, Some(Acked::Batch(b))) => {
                    assert_eq!((b.after, b.last, b.events), (after, last, seqs.len()));
                    self.delivered.extend(seqs);
                }
                (msg, got) => panic!("PUBACK {pkid} for {msg:?} matched {got:?}"),
            }
            if self
                .client
                .collision
                .as_ref()
                .is_some_and(|(p, _)| *p == pkid)
            {
                let (p, msg) = self.client.collision.take().unwrap();
                self.client.slots[usize::from(p)] = Some(msg);
                assert!(self.ob.on_outgoing(conn, p));
            }
        }

        fn ack_all(&mut self) {
            loop {
                self.flush();
                let unacked = self.client.unacked();
                if unacked.is_empty() {
                    return;
                }
                for pkid in unacked {
                    self.ack(pkid);
                }
            }
        }

        /// Every seq at or below the watermark was delivered, skipped or is
        /// gone. Those sets only grow, so each seq is checked once.
        fn check_watermark(&mut self) {
            let wm = self.ob.watermark();
            assert!(wm <= self.store.last_seq, "watermark {wm} above the store");
            for seq in self.checked + 1..=wm {
                assert!(
                    self.delivered.contains(&seq)
                        || self.skipped.contains(&seq)
                        || self.store.is_gone(seq),
                    "watermark {wm} passed seq {seq}, never acknowledged"
                );
            }
            self.checked = self.checked.max(wm);
        }
    }

    fn lanes(sent: &[(Lane, u64, u64, usize)]) -> Vec<Lane> {
        sent.iter().map(|s| s.0).collect()
    }

    #[test]
    fn watermark_moves_only_over_a_contiguous_prefix_of_out_of_order_pubacks() {
        let mut h = Harness::new(cfg());
        h.connect();
        h.commit(30, 10);
        let sent = h.drive();
        assert_eq!(
            sent.iter().map(|s| (s.1, s.2)).collect::<Vec<_>>(),
            [(0, 10), (10, 20), (20, 30)]
        );
        h.flush(); // birth = pkid 1, batches 2, 3, 4
        h.ack(4);
        assert_eq!(h.ob.watermark(), 0);
        assert_eq!(h.ob.acked_ranges_pending(), 1);
        h.ack(2);
        assert_eq!(h.ob.watermark(), 10);
        h.ack(3);
        assert_eq!(h.ob.watermark(), 30);
        assert_eq!(h.ob.acked_ranges_pending(), 0);
        h.check_watermark();
    }

    #[test]
    fn watermark_is_persisted_at_most_once_per_mark_interval() {
        let mut h = Harness::new(cfg());
        h.connect();
        h.commit(10, 10);
        h.drive();
        assert_eq!(
            h.ob.watermark_to_persist(h.now),
            None,
            "nothing acknowledged"
        );
        h.ack_all();
        assert_eq!(h.ob.watermark(), 10);
        // The interval runs from construction.
        assert_eq!(h.ob.watermark_to_persist(h.now), None);
        assert_eq!(
            h.ob.next_wake(h.now),
            Some(h.now + Duration::from_millis(200))
        );
        h.advance(200);
        assert_eq!(h.ob.watermark_to_persist(h.now), Some(10));
        h.ob.on_persisted(10, h.now);
        assert_eq!(h.ob.persisted(), 10);
        h.commit(10, 10);
        h.drive();
        h.ack_all();
        h.advance(100);
        assert_eq!(h.ob.watermark_to_persist(h.now), None, "too soon");
        h.advance(100);
        assert_eq!(h.ob.watermark_to_persist(h.now), Some(20));
    }

    #[test]
    fn live_goes_before_backlog_and_keeps_a_reserve_of_the_window() {
        let mut store = Store::default();
        for seq in 1..=1_000 {
            store.events.insert(seq, 10);
        }
        store.last_seq = 1_000;
        let mut h = Harness::with_store(cfg(), store, 0);
        h.connect();
        h.commit(10, 10); // a full live batch: no linger
        let sent = h.drive();
        // Live first; the backlog fills the window up to the live reserve
        // (8 / 4 = 2 slots), the birth message holding one slot.
        assert_eq!(sent[0], (Lane::Live, 1_000, 1_010, 10));
        assert_eq!(
            lanes(&sent[1..]),
            [Lane::Backlog; 4],
            "backlog stops at window - reserve"
        );
        assert_eq!(h.ob.in_flight(), 6);
        // New live events take the reserved slots while the backlog waits.
        h.commit(20, 10);
        let sent = h.drive();
        assert_eq!(lanes(&sent), [Lane::Live, Lane::Live]);
        assert_eq!(h.ob.in_flight(), 8);
        assert!(matches!(h.ob.poll(h.now), Action::Wait), "window full");
    }

    #[test]
    fn backlog_is_rate_limited_and_live_is_not() {
        let mut store = Store::default();
        for seq in 1..=10_000 {
            store.events.insert(seq, 10);
        }
        store.last_seq = 10_000;
        let cfg = OutboxConfig {
            backlog_rate: NonZeroU32::new(100),
            window: 100,
            ..cfg()
        };
        let mut h = Harness::with_store(cfg, store, 0);
        h.connect();
        let start = h.now;
        let mut backlog_events = 0;
        for _ in 0..1_000 {
            for s in h.drive() {
                backlog_events += s.3;
            }
            h.ack_all();
            let wake = h.ob.next_wake(h.now).unwrap();
            assert!(wake > h.now, "a rate-limited backlog must not spin");
            h.now = wake;
            if h.now >= start + Duration::from_secs(2) {
                break;
            }
        }
        // 2 s at 100/s plus the initial batch's worth of tokens.
        assert!(
            (195..=215).contains(&backlog_events),
            "{backlog_events} backlog events in 2 s at 100/s"
        );
        // 500 live events go out at once, limited by the window only.
        h.commit(500, 10);
        let sent = h.drive();
        let live: usize = sent.iter().filter(|s| s.0 == Lane::Live).map(|s| s.3).sum();
        assert_eq!(live, 500);
    }

    #[test]
    fn everything_unacknowledged_is_sent_again_after_a_lost_connection() {
        let mut h = Harness::new(cfg());
        h.connect();
        h.commit(30, 10);
        h.drive();
        h.flush();
        h.ack(3); // (10, 20]
        h.disconnect();
        assert!(
            matches!(h.ob.poll(h.now), Action::Wait),
            "nothing while down"
        );
        h.commit(5, 10);
        h.connect();
        h.advance(20);
        let sent = h.drive();
        // (10, 20] was acknowledged and is skipped; the rest, live events
        // committed while down included, is backlog now.
        assert_eq!(
            sent.iter().map(|s| (s.0, s.1, s.2)).collect::<Vec<_>>(),
            [
                (Lane::Backlog, 0, 10),
                (Lane::Backlog, 20, 30),
                (Lane::Backlog, 30, 35)
            ]
        );
        h.ack_all();
        assert_eq!(h.ob.watermark(), 35);
        h.check_watermark();
    }

    #[test]
    fn events_of_an_old_connection_are_ignored() {
        let mut h = Harness::new(cfg());
        h.connect();
        let old = h.conn.unwrap();
        h.commit(10, 10);
        h.drive();
        h.flush(); // birth = 1, batch = 2
        h.disconnect();
        h.connect();
        let new = h.conn.unwrap();
        assert_eq!(h.ob.on_puback(old, 2, h.now), None);
        assert!(h.ob.on_outgoing(old, 3), "stale events are not warnings");
        assert_eq!(h.ob.watermark(), 0);
        // The new connection's birth message still owns pkid 1.
        h.flush();
        assert_eq!(h.ob.on_puback(new, 1, h.now), Some(Acked::Control));
    }

    #[test]
    fn a_freed_pkid_is_reused_for_the_next_message() {
        let mut h = Harness::new(OutboxConfig {
            window: 2,
            batch_max_events: 1,
            ..cfg()
        });
        h.connect();
        h.flush();
        h.ack(1); // birth
                  // Four pkids (window + 2); ten messages go through them twice over.
        for i in 1..=10u64 {
            h.commit(1, 10);
            h.drive();
            h.flush();
            let unacked = h.client.unacked();
            assert_eq!(unacked.len(), 1);
            h.ack(unacked[0]);
            assert_eq!(h.ob.watermark(), i);
        }
    }

    #[test]
    fn a_collided_publish_is_matched_when_its_pkid_is_freed() {
        let mut h = Harness::new(OutboxConfig {
            window: 4,
            batch_max_events: 1,
            ..cfg()
        });
        h.connect(); // birth takes pkid 1 and is not acknowledged yet
        h.commit(3, 10);
        h.drive();
        h.flush(); // seqs 1, 2, 3 on pkids 2, 3, 4
        h.ack(2);
        h.ack(3);
        h.ack(4);
        h.commit(3, 10);
        h.drive();
        h.flush(); // seq 4 on pkid 5, 5 on 6; seq 6 collides on 1 (birth)
        assert_eq!(h.client.collision.as_ref().map(|c| c.0), Some(1));
        assert_eq!(h.ob.in_flight(), 4);
        h.ack(5);
        h.ack(6);
        assert_eq!(h.ob.watermark(), 5);
        // The birth's PUBACK frees pkid 1; the collided publish goes out on
        // it and its PUBACK must be matched to seq 6, not to the birth.
        h.ack(1);
        h.ack(1);
        assert_eq!(h.ob.watermark(), 6);
        assert_eq!(h.ob.in_flight(), 0);
    }

    #[test]
    fn an_outgoing_event_for_a_mapped_pkid_is_a_retransmission() {
        let mut h = Harness::new(OutboxConfig {
            batch_max_events: 1,
            ..cfg()
        });
        h.connect();
        let conn = h.conn.unwrap();
        h.commit(2, 10);
        h.drive();
        // birth -> 1, seq 1 -> 2; then pkid 2 shows up again before seq 2 goes out.
        assert!(h.ob.on_outgoing(conn, 1));
        assert!(h.ob.on_outgoing(conn, 2));
        assert!(h.ob.on_outgoing(conn, 2));
        assert!(h.ob.on_outgoing(conn, 3));
        assert!(
            !h.ob.on_outgoing(conn, 4),
            "nothing was handed for a fourth"
        );
        match h.ob.on_puback(conn, 3, h.now) {
            Some(Acked::Batch(b)) => assert_eq!((b.after, b.last), (1, 2)),
            other => panic!("{other:?}"),
        }
        match h.ob.on_puback(conn, 2, h.now) {
            Some(Acked::Batch(b)) => assert_eq!((b.after, b.last), (0, 1)),
            other => panic!("{other:?}"),
        }
        assert_eq!(h.ob.watermark(), 2);
    }

    #[test]
    fn batches_close_on_count_bytes_or_linger() {
        // Count: 25 events make two full batches; the last 5 linger.
        let mut h = Harness::new(cfg());
        h.connect();
        h.commit(25, 10);
        let sent = h.drive();
        assert_eq!(sent.iter().map(|s| s.3).collect::<Vec<_>>(), [10, 10]);
        assert_eq!(
            h.ob.next_wake(h.now),
            Some(h.now + Duration::from_millis(20))
        );
        h.advance(19);
        assert!(h.drive().is_empty(), "still lingering");
        h.advance(1);
        assert_eq!(h.drive(), [(Lane::Live, 20, 25, 5)]);

        // Bytes: 300-byte events, 1,000 bytes per batch -> 3 per batch.
        let mut h = Harness::new(OutboxConfig {
            batch_max_bytes: 1_000,
            ..cfg()
        });
        h.connect();
        h.commit(10, 300);
        let sent = h.drive();
        assert_eq!(sent.iter().map(|s| s.3).collect::<Vec<_>>(), [3, 3, 3]);

        // No linger: a single event goes at once.
        let mut h = Harness::new(OutboxConfig {
            linger: Duration::ZERO,
            ..cfg()
        });
        h.connect();
        h.commit(1, 10);
        assert_eq!(h.drive(), [(Lane::Live, 0, 1, 1)]);
    }

    #[test]
    fn an_oversized_batch_is_split_and_an_oversized_event_skipped() {
        let mut h = Harness::new(cfg());
        h.max_payload = 500;
        h.connect();
        h.commit(4, 100); // seqs 1..=4
        h.commit(1, 1_000); // seq 5: larger than any packet
        h.commit(5, 100); // seqs 6..=10
        let sent = h.drive();
        h.advance(20);
        let sent: Vec<_> = sent.into_iter().chain(h.drive()).collect();
        assert!(sent.iter().all(|s| s.3 * 101 <= 500), "{sent:?}");
        assert_eq!(h.skipped, BTreeSet::from([5]));
        // Every batch starts where the previous one ended (the skipped event
        // is covered too), so nothing is lost between the halves.
        let covered: Vec<_> = sent.iter().map(|s| (s.1, s.2)).collect();
        assert!(covered.windows(2).all(|w| w[0].1 == w[1].0 || w[1].0 == 5));
        h.ack_all();
        assert_eq!(h.ob.watermark(), 10);
        h.check_watermark();
    }

    #[test]
    fn deleted_seqs_do_not_block_the_watermark() {
        // Backlog with a hole (11..=20 dropped by the full policy) and an
        // acknowledged range after it from before the reconnect.
        let mut store = Store::default();
        for seq in (1..=10).chain(21..=40) {
            store.events.insert(seq, 10);
        }
        store.last_seq = 40;
        let mut h = Harness::with_store(cfg(), store, 0);
        h.connect();
        h.ack_all();
        h.ack_all();
        let sent = h.drive();
        assert_eq!(
            sent.iter().map(|s| (s.1, s.2, s.3)).collect::<Vec<_>>(),
            [(0, 10, 10), (10, 30, 10), (30, 40, 10)],
            "the hole rides along in a batch's range"
        );
        h.ack_all();
        assert_eq!(h.ob.watermark(), 40);

        // Live events that are gone before they were read: the store's
        // last seq says so, and the watermark passes them.
        h.store.last_seq = 45;
        h.ob.on_committed(45);
        assert!(h.drive().is_empty(), "lingers first");
        h.advance(20);
        h.drive();
        assert_eq!(h.ob.watermark(), 45);
        h.check_watermark();
    }

    #[test]
    fn a_backlog_read_past_an_acknowledged_range_still_sends_what_follows_it() {
        // seqs 1..=5 gone; (10, 20] acknowledged before the connection
        // dropped; a read that returns events beyond that range must not
        // make the outbox mistake 21..=30 for a hole.
        let mut store = Store::default();
        for seq in 6..=30 {
            store.events.insert(seq, 10);
        }
        store.last_seq = 30;
        let mut h = Harness::with_store(
            OutboxConfig {
                batch_max_events: 2,
                ..cfg()
            },
            store,
            0,
        );
        h.connect();
        h.ob.acked.insert(10, 20);
        h.ob.on_connected(h.now);
        h.conn = Some(h.ob.conn);
        h.client = Client::new(h.window);
        loop {
            let sent = h.drive();
            h.ack_all();
            if sent.is_empty() {
                break;
            }
        }
        assert_eq!(h.ob.watermark(), 30);
        assert_eq!(h.delivered, (6..=10).chain(21..=30).collect());
    }

    #[test]
    fn a_live_commit_not_yet_visible_is_retried_not_skipped() {
        let mut h = Harness::new(cfg());
        h.connect();
        // The writer said 5 is committed but the store does not show it yet.
        h.ob.on_committed(5);
        h.advance(20);
        assert!(h.drive().is_empty());
        assert_eq!(h.ob.watermark(), 0, "not visible is not gone");
        let retry = h.ob.next_wake(h.now).unwrap();
        assert!(retry > h.now);
        h.commit(5, 10);
        h.now = retry;
        assert_eq!(h.drive(), [(Lane::Live, 0, 5, 5)]);
    }

    #[test]
    fn a_refused_batch_is_put_back_and_sent_next() {
        let mut h = Harness::new(cfg());
        h.connect();
        h.commit(10, 10);
        let Action::Read(r) = h.ob.poll(h.now) else {
            panic!("expected a read")
        };
        h.ob.on_read(h.store.read(r.after, r.limit));
        let Action::Publish(b) = h.ob.poll(h.now) else {
            panic!("expected a batch")
        };
        assert_eq!((b.after, b.last), (0, 10));
        h.ob.put_back(b);
        let Action::Publish(b) = h.ob.poll(h.now) else {
            panic!("expected the same batch again")
        };
        assert_eq!((b.after, b.last, b.events.len()), (0, 10, 10));
    }

    fn stall_cfg() -> OutboxConfig {
        OutboxConfig {
            puback_timeout: Duration::from_secs(10),
            linger: Duration::ZERO,
            ..cfg()
        }
    }

    #[test]
    fn no_puback_within_the_deadline_while_in_flight_makes_the_connection_overdue() {
        let mut h = Harness::new(stall_cfg());
        h.connect();
        h.flush();
        h.ack(1); // the birth message
        h.commit(5, 10);
        assert_eq!(h.drive().len(), 1);
        h.flush();
        let handed = h.now;
        assert_eq!(
            h.ob.puback_deadline(),
            Some(handed + Duration::from_secs(10))
        );
        assert_eq!(
            h.ob.next_wake(h.now),
            Some(handed + Duration::from_secs(10)),
            "the loop wakes for the deadline even if nothing arrives"
        );
        h.advance(9_999);
        assert!(!h.ob.puback_overdue(h.now));
        h.advance(1);
        assert!(h.ob.puback_overdue(h.now), "10 s without a PUBACK");
        h.disconnect();
        assert!(
            !h.ob.puback_overdue(h.now),
            "no deadline while disconnected"
        );
        assert_eq!(h.ob.puback_deadline(), None);
    }

    #[test]
    fn a_long_idle_connection_gives_a_new_message_its_full_deadline() {
        let mut h = Harness::new(stall_cfg());
        h.connect();
        h.flush();
        h.ack(1);
        assert_eq!(h.ob.puback_deadline(), None, "idle: no deadline");
        h.advance(3_600_000);
        h.commit(1, 10);
        h.drive();
        h.flush();
        assert!(!h.ob.puback_overdue(h.now), "an hour idle is not a stall");
        h.advance(10_000);
        assert!(h.ob.puback_overdue(h.now));
    }

    #[test]
    fn each_puback_restarts_the_deadline_for_what_is_still_out() {
        let mut h = Harness::new(stall_cfg());
        h.connect();
        h.commit(30, 10);
        h.drive();
        h.flush(); // birth 1, batches 2, 3, 4
        h.advance(8_000);
        h.ack(1);
        h.ack(2);
        h.advance(8_000);
        assert!(!h.ob.puback_overdue(h.now), "a PUBACK 8 s ago");
        h.ack(3);
        h.advance(9_000);
        assert!(!h.ob.puback_overdue(h.now));
        h.advance(1_000);
        assert!(
            h.ob.puback_overdue(h.now),
            "batch 4 unanswered 10 s after the last PUBACK"
        );
    }

    #[test]
    fn a_fresh_connection_gets_a_fresh_deadline() {
        let mut h = Harness::new(stall_cfg());
        h.connect();
        h.commit(5, 10);
        h.drive();
        h.flush();
        h.advance(10_000);
        assert!(h.ob.puback_overdue(h.now));
        h.disconnect();
        h.advance(2_000);
        h.connect();
        h.drive();
        h.flush();
        assert!(!h.ob.puback_overdue(h.now));
        h.advance(9_000);
        assert!(!h.ob.puback_overdue(h.now));
        h.advance(1_000);
        assert!(h.ob.puback_overdue(h.now));
    }

    #[test]
    fn events_waiting_without_any_puback_are_a_stall_connected_or_not() {
        let mut h = Harness::new(stall_cfg());
        h.ob.observe(h.now);
        assert_eq!(h.ob.stalled_since(h.now), None, "nothing waits");
        // Committed while the broker is unreachable: waiting starts now.
        h.commit(3, 10);
        h.ob.observe(h.now);
        let waiting = h.now;
        h.advance(9_000);
        h.ob.observe(h.now);
        assert_eq!(h.ob.stalled_since(h.now), None, "9 s is within the timeout");
        h.advance(1_000);
        h.ob.observe(h.now);
        assert_eq!(
            h.ob.stalled_since(h.now),
            Some(waiting),
            "since the first wait"
        );
        // Connected, but the PUBACKs do not come: still stalled, same since.
        h.connect();
        h.drive();
        h.flush();
        h.advance(5_000);
        h.ob.observe(h.now);
        assert_eq!(h.ob.stalled_since(h.now), Some(waiting));
        // A PUBACK: the uplink moves again; once everything is acknowledged
        // nothing waits.
        h.ack(1);
        h.ob.observe(h.now);
        assert_eq!(h.ob.stalled_since(h.now), None);
        h.ack_all();
        h.ob.observe(h.now);
        h.advance(60_000);
        h.ob.observe(h.now);
        assert_eq!(h.ob.stalled_since(h.now), None, "idle is not stalled");
    }

    #[test]
    fn an_idle_connection_is_probed_half_a_deadline_after_the_broker_was_last_heard() {
        let mut h = Harness::new(stall_cfg());
        h.connect();
        h.flush();
        h.ack_all(); // the birth message
        let heard = h.now;
        h.drive();
        assert_eq!(h.probes, 0);
        assert_eq!(
            h.ob.next_wake(h.now),
            Some(heard + Duration::from_secs(5)),
            "the loop wakes for the probe even if nothing arrives"
        );
        h.advance(4_999);
        h.drive();
        assert_eq!(h.probes, 0, "heard from 4.999 s ago");
        h.advance(1);
        h.drive();
        assert_eq!(h.probes, 1);
        h.drive();
        assert_eq!(h.probes, 1, "one probe out at a time");
        // It falls under the PUBACK deadline like an event batch.
        let probed = h.now;
        assert_eq!(
            h.ob.puback_deadline(),
            Some(probed + Duration::from_secs(10))
        );
        // Answered: the next one goes half a deadline after the answer.
        h.advance(30);
        h.ack_all();
        h.drive();
        assert_eq!(h.ob.puback_deadline(), None);
        assert_eq!(
            h.ob.next_wake(h.now),
            Some(probed + Duration::from_millis(5_030))
        );
        // Unanswered: overdue 1.5 deadlines after the broker was last heard.
        h.advance(5_000);
        h.drive();
        h.flush();
        assert_eq!(h.probes, 2);
        h.advance(9_999);
        h.drive();
        assert!(!h.ob.puback_overdue(h.now));
        h.advance(1);
        assert!(
            h.ob.puback_overdue(h.now),
            "10 s without the probe's PUBACK"
        );
    }

    #[test]
    fn a_connection_that_hears_from_the_broker_is_not_probed() {
        let mut h = Harness::new(stall_cfg());
        h.connect();
        h.flush();
        h.ack_all();
        // Events every 3 s, acknowledged: their PUBACKs are the answers.
        for _ in 0..20 {
            h.advance(3_000);
            h.commit(2, 10);
            h.drive();
            h.flush();
            h.ack_all();
        }
        assert_eq!(h.probes, 0);
        // Idle, but a PINGRESP (or any packet) every 4 s is an answer too.
        let conn = h.conn.unwrap();
        for _ in 0..20 {
            h.advance(4_000);
            h.ob.on_heard(conn, h.now);
            h.drive();
        }
        assert_eq!(h.probes, 0);
        // A packet of an older connection is no answer.
        h.advance(4_000);
        h.disconnect();
        h.connect();
        h.flush();
        h.ack_all();
        h.advance(4_000);
        h.ob.on_heard(conn, h.now);
        h.advance(1_000);
        h.drive();
        assert_eq!(h.probes, 1);
    }

    #[test]
    fn no_probe_while_disconnected_and_a_refused_one_is_asked_again_later() {
        let mut h = Harness::new(stall_cfg());
        h.advance(60_000);
        assert!(matches!(h.ob.poll(h.now), Action::Wait));
        assert_eq!(h.ob.next_wake(h.now), None, "nothing to probe offline");
        h.connect();
        h.flush();
        h.ack_all();
        h.advance(5_000);
        let Action::Probe(conn) = h.ob.poll(h.now) else {
            panic!("a probe is due")
        };
        assert_eq!(Some(conn), h.conn);
        h.ob.on_probe_refused(h.now);
        assert!(matches!(h.ob.poll(h.now), Action::Wait));
        assert_eq!(
            h.ob.next_wake(h.now),
            Some(h.now + LIVE_RETRY),
            "no spin on a full request channel"
        );
        h.advance(50);
        assert!(matches!(h.ob.poll(h.now), Action::Probe(_)));
    }

    proptest! {
        /// Wherever a silent partition falls in the life of an idle
        /// connection, the PUBACK deadline drops it between one and 1.5
        /// `puback_timeout`s after the partition began.
        #[test]
        fn an_idle_silent_partition_is_overdue_within_one_and_a_half_deadlines(
            partition_ms in 0u64..60_000,
            timeout_s in 1u64..30,
        ) {
            let mut h = Harness::new(OutboxConfig {
                puback_timeout: Duration::from_secs(timeout_s),
                ..stall_cfg()
            });
            h.connect();
            let start = h.now;
            let mut overdue_ms = None;
            for step in 0..4_000u64 {
                let t = step * 50;
                h.now = start + Duration::from_millis(t);
                h.drive();
                if h.ob.puback_overdue(h.now) {
                    overdue_ms = Some(t);
                    break;
                }
                if t < partition_ms {
                    h.ack_all();
                }
            }
            let after = overdue_ms.expect("never overdue") - partition_ms;
            prop_assert!(after >= timeout_s * 1_000 - 50, "{after} ms");
            prop_assert!(after <= timeout_s * 1_500 + 50, "{after} ms");
        }
    }

    #[test]
    fn token_bucket_refills_at_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(NonZeroU32::new(1000).unwrap(), 100, t0);
        assert_eq!(b.available(t0), 100);
        b.take(100);
        assert_eq!(b.available(t0), 0);
        assert_eq!(b.available(t0 + Duration::from_millis(50)), 50);
        assert!(b.ready_at(100) > t0 + Duration::from_millis(50));
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Commit this many events; set bits of the mask are dropped at once.
        Commit(u8, u16),
        /// The full policy drops the oldest stored events.
        DropOldest(u8),
        Drive,
        Flush,
        /// The broker acknowledges one outstanding message (any of them).
        Ack(u8),
        Disconnect,
        Connect,
        Advance(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (1u8..30, any::<u16>()).prop_map(|(n, m)| Op::Commit(n, m)),
            1 => (1u8..5).prop_map(Op::DropOldest),
            4 => Just(Op::Drive),
            3 => Just(Op::Flush),
            5 => any::<u8>().prop_map(Op::Ack),
            1 => Just(Op::Disconnect),
            1 => Just(Op::Connect),
            2 => (0u16..300).prop_map(Op::Advance),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn watermark_never_passes_an_unacknowledged_seq_and_all_get_delivered(
            ops in proptest::collection::vec(op(), 1..200),
            window in 1usize..6,
            batch in 1usize..8,
            linger in prop_oneof![Just(0u64), Just(20)],
            rate in prop_oneof![Just(0u32), Just(50)],
            bytes in 100usize..600,
        ) {
            let mut h = Harness::new(OutboxConfig {
                batch_max_events: batch,
                batch_max_bytes: bytes,
                linger: Duration::from_millis(linger),
                backlog_rate: NonZeroU32::new(rate),
                window,
                ..cfg()
            });
            let mut len = 0usize;
            for op in ops {
                match op {
                    Op::Commit(n, mask) => {
                        for i in 0..n {
                            len = (len + 37) % 150;
                            let seq = h.commit(1, len + 1);
                            if i < 16 && mask & (1 << i) != 0 {
                                h.store.events.remove(&seq);
                            }
                        }
                    }
                    Op::DropOldest(n) => {
                        for _ in 0..n {
                            h.store.events.pop_first();
                        }
                    }
                    Op::Drive => {
                        h.drive();
                    }
                    Op::Flush => h.flush(),
                    Op::Ack(i) => {
                        let unacked = h.client.unacked();
                        if h.conn.is_some() && !unacked.is_empty() {
                            h.ack(unacked[usize::from(i) % unacked.len()]);
                        }
                    }
                    Op::Disconnect => {
                        if h.conn.is_some() {
                            h.disconnect();
                        }
                    }
                    Op::Connect => {
                        if h.conn.is_none() {
                            h.connect();
                        }
                    }
                    Op::Advance(ms) => h.advance(u64::from(ms)),
                }
                h.check_watermark();
                prop_assert!(h.ob.in_flight() <= window);
            }
            // The connection stays up from here: everything committed gets
            // delivered (or is gone) and the watermark reaches the end.
            if h.conn.is_none() {
                h.connect();
            }
            for _ in 0..10_000 {
                if h.ob.watermark() == h.store.last_seq {
                    break;
                }
                h.advance(1_000);
                h.drive();
                h.ack_all();
                h.check_watermark();
            }
            prop_assert_eq!(h.ob.watermark(), h.store.last_seq);
            for &seq in h.store.events.keys() {
                prop_assert!(h.delivered.contains(&seq) || h.skipped.contains(&seq));
            }
        }
    }
}
