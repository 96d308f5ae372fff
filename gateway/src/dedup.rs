//! The dedup engine: raw reads in, tag events out. Sans-IO and deterministic:
//! time comes in with every call, nothing is read from a clock or written
//! anywhere, and the same input always gives the same output.
//!
//! Semantics follow ALE event cycles (additions and deletions), per read
//! point and per tag key (EPC, TID or both):
//! - a tag is *pending* from its first read; it *arrives* (one `arrived`
//!   event) once `min_reads` reads fall within `arrival_window` of the first
//!   read of the current window. A pending tag that misses the window starts
//!   a new window with its next read.
//! - an arrived tag *departs* (one `departed` event) when `departure_timeout`
//!   passes without a read. A pending tag that goes silent that long is
//!   forgotten without an event.
//! - with `report_interval`, an arrived tag is re-reported (`present`) every
//!   interval while it stays.
//! - memory is bounded by `max_tags`: when a new tag would exceed it, the
//!   least recently read tag is evicted (an arrived one departs with reason
//!   `evicted`), and the eviction is counted.
//! - at a two-antenna portal (`direction` configured), the departure carries
//!   `in` when the tag was first read by the outside antenna and last by the
//!   inside one, `out` for the reverse, nothing otherwise.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use tracegate_drivers::{HostTime, RawRead};

/// Every read is looked up by its tag key: with std's SipHash, hashing was a
/// fifth of the gateway's instructions per event. foldhash (hashbrown's
/// default, randomly seeded per process) hashes a 12-byte EPC in a few
/// instructions.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// What identifies "the same tag".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DedupKey {
    #[default]
    Epc,
    /// The chip's TID: one physical tag even if its EPC is rewritten.
    Tid,
    /// EPC and TID together: a cloned EPC on another chip is another tag.
    EpcTid,
}

/// The engine's settings; the config file's `[dedup]` table builds them.
/// A zero window or timeout would make the semantics meaningless (nothing
/// could ever arrive, or a tag would depart between two reads), so the
/// config refuses zeros before they get here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupConfig {
    pub key: DedupKey,
    pub min_reads: NonZeroU32,
    pub arrival_window: Duration,
    pub departure_timeout: Duration,
    /// Re-report arrived tags this often (`present` events).
    pub report_interval: Option<Duration>,
    pub max_tags: NonZeroUsize,
}

impl Default for DedupConfig {
    fn default() -> Self {
        Self {
            key: DedupKey::Epc,
            min_reads: NonZeroU32::MIN,
            arrival_window: Duration::from_secs(1),
            departure_timeout: Duration::from_secs(3),
            report_interval: None,
            max_tags: NonZeroUsize::new(100_000).unwrap_or(NonZeroUsize::MIN),
        }
    }
}

/// A two-antenna portal: which antenna faces outside and which inside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Portal {
    pub outside: u8,
    pub inside: u8,
}

impl Portal {
    /// The direction of a tag first read by `first` and last by `last`:
    /// outside then inside is `in`, the reverse `out`, anything else none.
    /// Departures and read windows ([`crate::door`]) both decide by this.
    pub fn direction_of(&self, first: u8, last: u8) -> Option<Direction> {
        if first == self.outside && last == self.inside {
            Some(Direction::In)
        } else if first == self.inside && last == self.outside {
            Some(Direction::Out)
        } else {
            None
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Arrived,
    Departed,
    Present,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Arrived => "arrived",
            Kind::Departed => "departed",
            Kind::Present => "present",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    In,
    Out,
}

/// What the engine knows about a tag at the moment of an event.
#[derive(Debug, Clone, PartialEq)]
pub struct TagSummary {
    pub epc: Vec<u8>,
    pub tid: Option<Vec<u8>>,
    pub reader: std::sync::Arc<str>,
    pub first_seen: HostTime,
    pub last_seen: HostTime,
    pub read_count: u64,
    pub peak_rssi_dbm: Option<i16>,
    /// Antennas that read the tag, ascending.
    pub antennas: Vec<u8>,
    /// Every read of the tag was taken with a synchronised clock.
    pub clock_synced: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TagEvent {
    pub kind: Kind,
    pub read_point: usize,
    /// When the engine decided: the read that completed an arrival, or the
    /// tick that noticed a departure.
    pub at: HostTime,
    pub tag: TagSummary,
    pub direction: Option<Direction>,
    /// Why a departure happened when it was not a timeout (`evicted`).
    pub reason: Option<&'static str>,
}

/// Per-read-point settings the engine needs.
#[derive(Debug, Clone, Default)]
pub struct PointSettings {
    pub direction: Option<Portal>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DedupStats {
    pub reads: u64,
    pub events: u64,
    pub evictions: u64,
    pub tracked: usize,
    /// Reads older than the watermark when they reached the engine (a
    /// decision about their tag may already have been made without them).
    /// Zero while readers deliver in time order, as they do.
    pub late_reads: u64,
    /// The engine's time: silence up to here has been judged (mono ms).
    pub watermark_ms: u64,
}

/// How far behind the newest read the watermark stays while reads drive
/// it: a read of one reader may reach the engine after a slightly newer one
/// of another reader (each reader stamps, then queues its batch), and a
/// read this much older than the newest one is still judged on its time.
pub const READ_LATENESS_MS: u64 = 250;

/// How far behind the clock a tick moves the watermark: a reader stamps a
/// read a moment before it counts as in flight (the reader's own
/// synchronous code between the stamp and the send).
pub const CLOCK_GRACE_MS: u64 = 10;

type Key = (usize, Box<[u8]>);

#[derive(Debug)]
struct Tracked {
    key: Key,
    summary: TagSummary,
    arrived: bool,
    window_start_ms: u64,
    window_reads: u32,
    /// When the last `present` report fell due (or the arrival).
    last_report: HostTime,
    first_antenna: u8,
    last_antenna: u8,
}

/// The dedup engine. Every decision is made on the reads' own time:
/// a tag arrives at the read that completes its window, departs at the
/// moment `departure_timeout` ran out after its last read, and is
/// re-reported at fixed intervals after its arrival. When a decision is
/// *made* depends on the watermark (the time up to which the engine knows
/// every read): it advances with the reads themselves (the newest read
/// minus [`READ_LATENESS_MS`]) and with the clock ([`Dedup::clock_tick`]),
/// and never past the oldest read still on its way ([`Dedup::hold_back`]).
/// So a backlog of queued reads or a stalled store delays events but never
/// changes them.
#[derive(Debug)]
pub struct Dedup {
    config: DedupConfig,
    points: Vec<PointSettings>,
    /// Per read point: tag key → id. Split by read point so a read's key can
    /// be looked up by reference, without allocating on the hot path.
    ids: Vec<HashMap<Box<[u8]>, u64>>,
    tags: HashMap<u64, Tracked>,
    /// Tags by last read, oldest first, for departures and eviction.
    by_last_seen: LastSeen,
    /// (next report due mono ms, id) of arrived tags, with `report_interval`.
    by_report: BTreeSet<(u64, u64)>,
    next_id: u64,
    /// Silence up to here has been judged; no read older than this is
    /// expected (one that comes anyway is counted in `late_reads`).
    watermark: u64,
    /// The oldest read time of reads handed over and not yet observed: the
    /// watermark stays at or before it.
    held_at: Option<u64>,
    stats: DedupStats,
}

fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// At most this many `present` reports per tag fall due between two of its
/// reads (a report interval far shorter than the departure timeout would
/// otherwise make one read produce millions); beyond it the rest of the
/// silence is not re-reported.
const MAX_REPORTS_PER_GAP: u32 = 1_000;

impl Dedup {
    pub fn new(config: DedupConfig, points: Vec<PointSettings>) -> Self {
        Self {
            config,
            points,
            ids: Vec::new(),
            tags: HashMap::default(),
            by_last_seen: LastSeen::default(),
            by_report: BTreeSet::new(),
            next_id: 0,
            watermark: 0,
            held_at: None,
            stats: DedupStats::default(),
        }
    }

    pub fn stats(&self) -> DedupStats {
        DedupStats {
            tracked: self.tags.len(),
            watermark_ms: self.watermark,
            ..self.stats
        }
    }

    /// The read's tag key; borrowed unless it has to be composed (EPC+TID).
    fn key_of<'r>(&self, read: &'r RawRead) -> Option<Cow<'r, [u8]>> {
        tag_key(self.config.key, read)
    }

    fn timeout_ms(&self) -> u64 {
        ms(self.config.departure_timeout)
    }

    /// Removes a tag from every index.
    fn untrack(&mut self, id: u64) -> Option<Tracked> {
        let t = self.tags.remove(&id)?;
        // Its entry in `by_last_seen` stays until it reaches the front.
        if self.by_last_seen.front_is(id) {
            self.by_last_seen.settle(&self.tags);
        }
        if let Some(due) = self.report_due(&t) {
            self.by_report.remove(&(due, id));
        }
        if let Some(ids) = self.ids.get_mut(t.key.0) {
            ids.remove(&t.key.1);
        }
        Some(t)
    }

    /// When the tag's next `present` report falls due (arrived tags with a
    /// report interval only).
    fn report_due(&self, t: &Tracked) -> Option<u64> {
        let interval = self.config.report_interval.map(ms)?;
        t.arrived
            .then(|| t.last_report.mono_ms.saturating_add(interval))
    }

    /// Feeds one read seen at `read_point`. Reads without the configured key
    /// (no TID when keying by TID) are ignored and return no events.
    pub fn observe(&mut self, read_point: usize, read: &RawRead, out: &mut Vec<TagEvent>) {
        self.stats.reads += 1;
        let Some(tag_key) = self.key_of(read) else {
            return;
        };
        let t_read = read.host.mono_ms;
        // Reads drive time: decisions up to a little before this read are
        // now safe to make (later reads of other readers may be a little
        // older than this one, never much).
        self.advance(t_read.saturating_sub(READ_LATENESS_MS), out);
        if t_read < self.watermark {
            self.stats.late_reads += 1;
        }
        let window = ms(self.config.arrival_window);
        let timeout = self.timeout_ms();
        let mut known = self
            .ids
            .get(read_point)
            .and_then(|ids| ids.get(tag_key.as_ref()))
            .copied();
        if let Some(id) = known {
            // Reports that fell due up to this read, then (if the tag was
            // silent for the whole timeout) its departure: on the read's
            // time, whether or not the watermark got there first.
            self.reports_until(id, t_read.saturating_add(1), out);
            let silent_since = self.tags.get(&id).map(|t| t.summary.last_seen.mono_ms);
            if silent_since.is_some_and(|last| t_read.saturating_sub(last) >= timeout) {
                self.depart_timed_out(id, out);
                known = None;
            }
        }
        let id = match known {
            Some(id) => id,
            None => {
                if self.tags.len() >= self.config.max_tags.get() {
                    self.make_room(read.host, out);
                }
                let id = self.next_id;
                self.next_id += 1;
                if self.ids.len() <= read_point {
                    self.ids.resize_with(read_point + 1, HashMap::default);
                }
                let key: Key = (read_point, tag_key.into_owned().into_boxed_slice());
                if let Some(ids) = self.ids.get_mut(read_point) {
                    ids.insert(key.1.clone(), id);
                }
                self.tags.insert(
                    id,
                    Tracked {
                        key,
                        summary: TagSummary {
                            epc: read.epc.clone(),
                            tid: read.tid.clone(),
                            reader: read.reader.clone(),
                            first_seen: read.host,
                            last_seen: read.host,
                            read_count: 0,
                            peak_rssi_dbm: None,
                            antennas: Vec::new(),
                            clock_synced: true,
                        },
                        arrived: false,
                        window_start_ms: t_read,
                        window_reads: 0,
                        last_report: read.host,
                        first_antenna: read.antenna,
                        last_antenna: read.antenna,
                    },
                );
                self.by_last_seen.push(t_read, id, &self.tags);
                id
            }
        };
        let interval = self.config.report_interval.map(ms);
        let Some(t) = self.tags.get_mut(&id) else {
            return;
        };
        let previous = t.summary.last_seen.mono_ms;
        // Reads may arrive slightly out of order across readers; time never
        // runs backwards inside the engine.
        let now = t_read.max(previous);
        // `by_last_seen` is not touched per read: its entry for the tag
        // keeps the older time until it reaches the front (see `LastSeen`),
        // unless the tag is at the front now.
        let moved_front = previous != now && self.by_last_seen.front_is(id);
        let s = &mut t.summary;
        s.last_seen = HostTime {
            mono_ms: now,
            ..read.host
        };
        s.read_count += 1;
        s.clock_synced &= read.host.clock_synced;
        if let Some(r) = read.rssi_dbm {
            s.peak_rssi_dbm = Some(s.peak_rssi_dbm.map_or(r, |p| p.max(r)));
        }
        if let Err(pos) = s.antennas.binary_search(&read.antenna) {
            s.antennas.insert(pos, read.antenna);
        }
        if s.tid.is_none() {
            s.tid.clone_from(&read.tid);
        }
        t.last_antenna = read.antenna;
        if !t.arrived {
            if now.saturating_sub(t.window_start_ms) >= window {
                t.window_start_ms = now;
                t.window_reads = 0;
                t.first_antenna = read.antenna;
            }
            t.window_reads += 1;
            if t.window_reads >= self.config.min_reads.get() {
                t.arrived = true;
                t.last_report = t.summary.last_seen;
                if let Some(interval) = interval {
                    self.by_report.insert((now.saturating_add(interval), id));
                }
                self.stats.events += 1;
                out.push(TagEvent {
                    kind: Kind::Arrived,
                    read_point,
                    at: t.summary.last_seen,
                    tag: t.summary.clone(),
                    direction: None,
                    reason: None,
                });
            }
        }
        if moved_front {
            self.by_last_seen.settle(&self.tags);
        }
    }

    /// Advances time to `now`: departures of silent tags, forgetting silent
    /// pending tags, and `present` reports, each stamped with the moment it
    /// fell due. The caller promises that no read older than `now` is still
    /// to come (beyond those [`Dedup::hold_back`] announced);
    /// [`Dedup::clock_tick`] is the form for a clock.
    pub fn tick(&mut self, now: HostTime, out: &mut Vec<TagEvent>) {
        self.advance(now.mono_ms, out);
    }

    /// Says which reads are still on their way to the engine: `Some(t)`,
    /// reads as old as `t` are queued (or a reader waits to queue them);
    /// `None`, nothing is. Until told otherwise, neither reads nor the
    /// clock move the watermark past `t`: those reads are judged on their
    /// own time when they come, however long the queue.
    pub fn hold_back(&mut self, oldest_in_flight: Option<u64>) {
        self.held_at = oldest_in_flight;
    }

    /// A tick from the clock, clamped so it can never fake a departure: it
    /// moves the watermark to `now` less [`CLOCK_GRACE_MS`], but not past
    /// the oldest read in flight ([`Dedup::hold_back`]): a backlog of
    /// queued older reads moves time by itself.
    pub fn clock_tick(&mut self, now: HostTime, out: &mut Vec<TagEvent>) {
        self.advance(now.mono_ms.saturating_sub(CLOCK_GRACE_MS), out);
    }

    /// Moves the watermark to `to` (never back, never past the oldest read
    /// in flight) and makes every decision that falls due up to it, in time
    /// order.
    fn advance(&mut self, to: u64, out: &mut Vec<TagEvent>) {
        let to = self.held_at.map_or(to, |held| to.min(held));
        if to <= self.watermark {
            return;
        }
        self.watermark = to;
        let timeout = self.timeout_ms();
        loop {
            let departure = self
                .by_last_seen
                .first()
                .map(|(last, id)| (last.saturating_add(timeout), id))
                .filter(|&(due, _)| due <= to);
            let report = self
                .by_report
                .first()
                .copied()
                .filter(|&(due, _)| due <= to);
            match (departure, report) {
                // A report due before a departure is made first; a report
                // due with or after its own tag's departure never is.
                (Some((d, _)), Some((r, id))) if r < d => self.report_at(r, id, out),
                // `untrack` drops the entry (the front is always a live
                // tag's true last read), so the loop makes progress.
                (Some((_, id)), _) => self.depart_timed_out(id, out),
                (None, Some((r, id))) => self.report_at(r, id, out),
                (None, None) => break,
            }
        }
    }

    /// Makes the report of tag `id` due at `due` (and any before it).
    fn report_at(&mut self, due: u64, id: u64, out: &mut Vec<TagEvent>) {
        self.reports_until(id, due.saturating_add(1), out);
        // An entry that did not move (no such tag any more) is dropped, so
        // the loop in `advance` always makes progress.
        if self.by_report.first() == Some(&(due, id)) {
            self.by_report.pop_first();
        }
    }

    /// Emits the `present` reports of tag `id` that fall due before `until`
    /// (and before its departure).
    fn reports_until(&mut self, id: u64, until: u64, out: &mut Vec<TagEvent>) {
        let Some(interval) = self.config.report_interval.map(ms) else {
            return;
        };
        let timeout = self.timeout_ms();
        let Some(t) = self.tags.get_mut(&id) else {
            return;
        };
        if !t.arrived {
            return;
        }
        let departs = t.summary.last_seen.mono_ms.saturating_add(timeout);
        let before = t.last_report.mono_ms.saturating_add(interval);
        let mut made = 0u32;
        loop {
            let due = t.last_report.mono_ms.saturating_add(interval);
            if due >= until || due >= departs || made >= MAX_REPORTS_PER_GAP {
                break;
            }
            t.last_report = shift(t.last_report, interval);
            made += 1;
            self.stats.events += 1;
            out.push(TagEvent {
                kind: Kind::Present,
                read_point: t.key.0,
                at: t.last_report,
                tag: t.summary.clone(),
                direction: None,
                reason: None,
            });
        }
        if made >= MAX_REPORTS_PER_GAP {
            // Skip the rest of this silence: the next report is due after
            // the read (or departure) that ends it.
            let skip = until.max(departs).saturating_sub(t.last_report.mono_ms);
            let n = skip / interval.max(1);
            t.last_report = shift(t.last_report, n.saturating_mul(interval));
        }
        let after = t.last_report.mono_ms.saturating_add(interval);
        if after != before {
            self.by_report.remove(&(before, id));
            self.by_report.insert((after, id));
        }
    }

    /// Tag `id` has been silent for the whole timeout: an arrived tag
    /// departs, stamped with the moment the timeout ran out; a pending one
    /// is forgotten.
    fn depart_timed_out(&mut self, id: u64, out: &mut Vec<TagEvent>) {
        let timeout = self.timeout_ms();
        if let Some(t) = self.untrack(id) {
            if t.arrived {
                let at = shift(t.summary.last_seen, timeout);
                self.emit_departure(t, at, None, out);
            }
        }
    }

    /// Milliseconds until the next decision could fall due (a departure or
    /// a `present` report; 0: already due), so the pipeline can sleep
    /// exactly that long. A clock tick then needs [`CLOCK_GRACE_MS`] more.
    pub fn next_deadline_ms(&self, now_mono_ms: u64) -> Option<u64> {
        let timeout = self.timeout_ms();
        let departure = self
            .by_last_seen
            .first()
            .map(|(last, _)| last.saturating_add(timeout));
        let report = self.by_report.first().map(|&(due, _)| due);
        let due = match (departure, report) {
            (Some(d), Some(r)) => d.min(r),
            (d, r) => d.or(r)?,
        };
        Some(due.saturating_sub(now_mono_ms))
    }

    /// Makes room for one more tag at a read taken at `now`: tags whose
    /// timeout ran out by the read's time depart as they would have on
    /// time; only when none has is the least recently read tag evicted.
    fn make_room(&mut self, now: HostTime, out: &mut Vec<TagEvent>) {
        let timeout = self.timeout_ms();
        let mut freed = false;
        while let Some((last, id)) = self.by_last_seen.first() {
            if last.saturating_add(timeout) > now.mono_ms {
                break;
            }
            self.reports_until(id, u64::MAX, out);
            self.depart_timed_out(id, out);
            freed = true;
        }
        if freed {
            return;
        }
        if let Some((_, id)) = self.by_last_seen.first() {
            // Reports due up to the eviction come first, as a tick would
            // have made them.
            self.reports_until(id, now.mono_ms.saturating_add(1), out);
            if let Some(t) = self.untrack(id) {
                self.stats.evictions += 1;
                if t.arrived {
                    self.emit_departure(t, now, Some("evicted"), out);
                }
            }
        }
    }

    fn emit_departure(
        &mut self,
        t: Tracked,
        at: HostTime,
        reason: Option<&'static str>,
        out: &mut Vec<TagEvent>,
    ) {
        let direction = self
            .points
            .get(t.key.0)
            .and_then(|p| p.direction)
            .and_then(|d| d.direction_of(t.first_antenna, t.last_antenna));
        self.stats.events += 1;
        out.push(TagEvent {
            kind: Kind::Departed,
            read_point: t.key.0,
            at,
            tag: t.summary,
            direction,
            reason,
        });
    }
}

/// A read's tag key under `key` (`None`: the read lacks it, e.g. no TID
/// when keying by TID); borrowed unless it has to be composed (EPC+TID).
/// Dedup and read windows ([`crate::door`]) both key tags by this.
pub fn tag_key(key: DedupKey, read: &RawRead) -> Option<Cow<'_, [u8]>> {
    match key {
        DedupKey::Epc => Some(Cow::Borrowed(&read.epc)),
        DedupKey::Tid => read.tid.as_deref().map(Cow::Borrowed),
        DedupKey::EpcTid => {
            let tid = read.tid.as_ref()?;
            let mut k = Vec::with_capacity(read.epc.len() + tid.len() + 1);
            k.push(u8::try_from(read.epc.len()).unwrap_or(u8::MAX));
            k.extend_from_slice(&read.epc);
            k.extend_from_slice(tid);
            Some(Cow::Owned(k))
        }
    }
}

/// The tracked tags ordered by their last read, oldest first (ties by id),
/// as `(last_seen mono ms, id)`: what departures and eviction look at.
///
/// Updated lazily, because a tag is read many times between two looks at
/// the front (6 to 12 reads per visit at a portal, against a remove and an
/// insert in an ordered set per read before): a read does not touch the
/// heap, so a tag's entry may hold an *older* time than its last read, and
/// an untracked tag's entry stays until it reaches the front.
/// [`LastSeen::settle`] brings the front up to date (drops entries of
/// untracked tags, moves a stale one to its tag's true time) and the
/// engine calls it whenever the front may have changed, so between calls
/// the front is exact: since an entry's time is never later than its tag's
/// last read, a fresh front is the true minimum, in the same order as an
/// ordered set of the true times. Ids are never reused, so an entry of an
/// untracked tag can never be taken for a new one. A new tag that finds
/// the heap at twice the tracked tags (plus 64) rebuilds it from them, so
/// it never holds more than `2 * max_tags + 64` entries.
#[derive(Debug, Default)]
struct LastSeen {
    heap: BinaryHeap<Reverse<(u64, u64)>>,
}

impl LastSeen {
    /// Adds a new tag, first read at `at`, already in `tags`. A tag whose
    /// first read is older than the front's (readers' batches interleave)
    /// becomes the front, fresh.
    fn push(&mut self, at: u64, id: u64, tags: &HashMap<u64, Tracked>) {
        if self.heap.len() >= tags.len().saturating_mul(2).saturating_add(64) {
            // Every entry exact again, the new tag's included.
            self.heap = tags
                .iter()
                .map(|(&id, t)| Reverse((t.summary.last_seen.mono_ms, id)))
                .collect();
            return;
        }
        self.heap.push(Reverse((at, id)));
    }

    /// Whether tag `id` holds the front entry.
    fn front_is(&self, id: u64) -> bool {
        self.heap
            .peek()
            .is_some_and(|Reverse((_, front))| *front == id)
    }

    /// Makes the front exact: drops entries of tags no longer tracked and
    /// moves stale entries to their tag's last read, until the front entry
    /// is a tracked tag's true last read (or the heap is empty).
    fn settle(&mut self, tags: &HashMap<u64, Tracked>) {
        while let Some(mut front) = self.heap.peek_mut() {
            let Reverse((at, id)) = *front;
            match tags.get(&id).map(|t| t.summary.last_seen.mono_ms) {
                None => {
                    std::collections::binary_heap::PeekMut::pop(front);
                }
                Some(last) if last != at => *front = Reverse((last, id)),
                Some(_) => break,
            }
        }
    }

    /// The oldest tag: `(last_seen mono ms, id)`. Exact while the engine
    /// keeps the front settled.
    fn first(&self) -> Option<(u64, u64)> {
        self.heap.peek().map(|Reverse(e)| *e)
    }
}

fn shift(t: HostTime, by_ms: u64) -> HostTime {
    HostTime {
        mono_ms: t.mono_ms.saturating_add(by_ms),
        utc_ms: t
            .utc_ms
            .saturating_add(i64::try_from(by_ms).unwrap_or(i64::MAX)),
        clock_synced: t.clock_synced,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;

    fn cfg(
        min_reads: u32,
        window: u64,
        timeout: u64,
        report: Option<u64>,
        max_tags: usize,
    ) -> DedupConfig {
        DedupConfig {
            key: DedupKey::Epc,
            min_reads: NonZeroU32::new(min_reads).unwrap(),
            arrival_window: Duration::from_millis(window),
            departure_timeout: Duration::from_millis(timeout),
            report_interval: report.map(Duration::from_millis),
            max_tags: NonZeroUsize::new(max_tags).unwrap(),
        }
    }

    fn read(epc: u8, antenna: u8, at: u64) -> RawRead {
        RawRead {
            reader: Arc::from("r"),
            antenna,
            epc: vec![0x30, epc],
            tid: None,
            pc: None,
            rssi_dbm: Some(-60 + i16::from(epc % 10)),
            frequency_khz: None,
            phase_deg: None,
            reader_timestamp_ms: None,
            host: HostTime {
                mono_ms: at,
                utc_ms: 1_700_000_000_000 + at as i64,
                clock_synced: true,
            },
        }
    }

    fn at(ms: u64) -> HostTime {
        HostTime {
            mono_ms: ms,
            utc_ms: 1_700_000_000_000 + ms as i64,
            clock_synced: true,
        }
    }

    #[test]
    fn a_tag_arrives_after_min_reads_within_the_window() {
        let mut d = Dedup::new(
            cfg(3, 1000, 3000, None, 100),
            vec![PointSettings::default()],
        );
        let mut out = Vec::new();
        d.observe(0, &read(1, 1, 0), &mut out);
        d.observe(0, &read(1, 1, 100), &mut out);
        assert!(out.is_empty());
        d.observe(0, &read(1, 1, 200), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].kind, Kind::Arrived);
        assert_eq!(out[0].tag.read_count, 3);
        d.observe(0, &read(1, 1, 300), &mut out);
        assert_eq!(out.len(), 1, "a present tag does not arrive again");
    }

    #[test]
    fn reads_spread_wider_than_the_window_do_not_arrive() {
        let mut d = Dedup::new(cfg(2, 100, 3000, None, 100), vec![PointSettings::default()]);
        let mut out = Vec::new();
        for t in [0, 150, 300, 450] {
            d.observe(0, &read(1, 1, t), &mut out);
        }
        assert!(out.is_empty());
        d.observe(0, &read(1, 1, 460), &mut out);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn a_silent_tag_departs_once_at_the_timeout_with_its_summary() {
        let mut d = Dedup::new(cfg(1, 1000, 500, None, 100), vec![PointSettings::default()]);
        let mut out = Vec::new();
        d.observe(0, &read(1, 1, 0), &mut out);
        d.observe(0, &read(1, 2, 200), &mut out);
        d.tick(at(600), &mut out);
        assert_eq!(out.len(), 1);
        d.tick(at(800), &mut out);
        assert_eq!(out.len(), 2);
        let dep = &out[1];
        assert_eq!(dep.kind, Kind::Departed);
        assert_eq!(
            dep.at.mono_ms, 700,
            "departure is stamped when the timeout ran out"
        );
        assert_eq!(dep.tag.read_count, 2);
        assert_eq!(dep.tag.antennas, vec![1, 2]);
        d.tick(at(5000), &mut out);
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn a_two_antenna_portal_reports_the_direction_of_travel() {
        let points = vec![PointSettings {
            direction: Some(Portal {
                outside: 1,
                inside: 2,
            }),
        }];
        let mut d = Dedup::new(cfg(1, 1000, 500, None, 100), points);
        let mut out = Vec::new();
        d.observe(0, &read(1, 1, 0), &mut out);
        d.observe(0, &read(1, 2, 100), &mut out);
        d.observe(0, &read(2, 2, 0), &mut out);
        d.observe(0, &read(2, 1, 100), &mut out);
        d.tick(at(1000), &mut out);
        let dirs: Vec<_> = out
            .iter()
            .filter(|e| e.kind == Kind::Departed)
            .map(|e| (e.tag.epc[1], e.direction))
            .collect();
        assert!(dirs.contains(&(1, Some(Direction::In))));
        assert!(dirs.contains(&(2, Some(Direction::Out))));
    }

    #[test]
    fn present_tags_are_re_reported_every_interval() {
        let mut d = Dedup::new(
            cfg(1, 1000, 10_000, Some(1000), 100),
            vec![PointSettings::default()],
        );
        let mut out = Vec::new();
        d.observe(0, &read(1, 1, 0), &mut out);
        for t in (100..=3050).step_by(100) {
            d.observe(0, &read(1, 1, t), &mut out);
            d.tick(at(t), &mut out);
        }
        let presents = out.iter().filter(|e| e.kind == Kind::Present).count();
        assert_eq!(presents, 3);
    }

    #[test]
    fn the_tag_cap_evicts_the_least_recently_read_and_counts_it() {
        let mut d = Dedup::new(
            cfg(1, 1000, 10_000, None, 2),
            vec![PointSettings::default()],
        );
        let mut out = Vec::new();
        d.observe(0, &read(1, 1, 0), &mut out);
        d.observe(0, &read(2, 1, 10), &mut out);
        d.observe(0, &read(1, 1, 20), &mut out);
        d.observe(0, &read(3, 1, 30), &mut out);
        let evicted: Vec<_> = out.iter().filter(|e| e.kind == Kind::Departed).collect();
        assert_eq!(evicted.len(), 1);
        assert_eq!(evicted[0].tag.epc[1], 2);
        assert_eq!(evicted[0].reason, Some("evicted"));
        assert_eq!(d.stats().evictions, 1);
        assert_eq!(d.stats().tracked, 2);
    }

    proptest! {
        /// The lazily updated last-seen heap always shows the tag an
        /// ordered set of the true last reads would put first (what
        /// departures and eviction pick), and stays bounded by the tag cap.
        #[test]
        fn the_last_seen_front_is_always_the_least_recently_read_tag(
            steps in proptest::collection::vec((0u8..12, 0u64..40, any::<bool>()), 1..400),
        ) {
            let mut d = Dedup::new(cfg(2, 200, 300, None, 6), vec![PointSettings::default()]);
            let mut out = Vec::new();
            let mut t = 0u64;
            for (epc, gap, tick) in steps {
                t += gap;
                if tick {
                    d.tick(at(t), &mut out);
                } else {
                    d.observe(0, &read(epc, 1 + epc % 2, t), &mut out);
                }
                let truth = d
                    .tags
                    .iter()
                    .map(|(&id, tag)| (tag.summary.last_seen.mono_ms, id))
                    .min();
                prop_assert_eq!(d.by_last_seen.first(), truth);
                // Grows only by a new tag, rebuilt beyond twice the tracked ones.
                prop_assert!(d.by_last_seen.heap.len() <= 2 * 6 + 64);
            }
        }
    }

    #[test]
    fn the_same_tag_at_two_read_points_is_tracked_separately() {
        let mut d = Dedup::new(
            cfg(1, 1000, 500, None, 100),
            vec![PointSettings::default(); 2],
        );
        let mut out = Vec::new();
        d.observe(0, &read(1, 1, 0), &mut out);
        d.observe(1, &read(1, 1, 0), &mut out);
        assert_eq!(out.len(), 2);
        assert_ne!(out[0].read_point, out[1].read_point);
    }

    #[test]
    fn a_gap_in_a_tags_reads_is_a_departure_even_without_a_tick() {
        let mut d = Dedup::new(cfg(1, 1000, 500, None, 100), vec![PointSettings::default()]);
        let mut out = Vec::new();
        d.observe(0, &read(1, 1, 0), &mut out);
        d.observe(0, &read(1, 1, 100), &mut out);
        // Nothing ticked (a backlog): the next read shows 900 ms of silence.
        d.observe(0, &read(1, 1, 1000), &mut out);
        let kinds: Vec<_> = out.iter().map(|e| (e.kind, e.at.mono_ms)).collect();
        assert_eq!(
            kinds,
            [
                (Kind::Arrived, 0),
                (Kind::Departed, 600),
                (Kind::Arrived, 1000)
            ]
        );
    }

    #[test]
    fn a_backlog_of_older_reads_never_fakes_a_departure() {
        // A tag read every 100 ms for 5 s, with a 500 ms timeout, processed
        // while the wall clock is already 10 s on: the clock may not move
        // time while those reads are in flight.
        let mut d = Dedup::new(cfg(1, 1000, 500, None, 100), vec![PointSettings::default()]);
        let mut out = Vec::new();
        for t in (0..=5_000).step_by(100) {
            // The rest of the backlog, from this read on, is queued.
            d.hold_back(Some(t));
            d.clock_tick(at(10_000), &mut out);
            d.hold_back(Some(t + 100));
            d.observe(0, &read(1, 1, t), &mut out);
        }
        assert_eq!(out.len(), 1, "only the arrival: {out:?}");
        d.hold_back(None);
        d.clock_tick(at(10_000), &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!((out[1].kind, out[1].at.mono_ms), (Kind::Departed, 5_500));
        assert_eq!(out[1].tag.read_count, 51);
        assert_eq!(d.stats().late_reads, 0);
    }

    #[test]
    fn reads_alone_move_time_during_a_backlog() {
        // Two tags; one stops being read at 1000. With no tick at all (the
        // clock is held back by the backlog), the other tag's reads move the
        // watermark and the silent tag departs on its own time.
        let mut d = Dedup::new(cfg(1, 1000, 500, None, 100), vec![PointSettings::default()]);
        let mut out = Vec::new();
        for t in (0..=3_000).step_by(100) {
            if t <= 1_000 {
                d.observe(0, &read(1, 1, t), &mut out);
            }
            d.observe(0, &read(2, 1, t), &mut out);
        }
        let dep: Vec<_> = out.iter().filter(|e| e.kind == Kind::Departed).collect();
        assert_eq!(dep.len(), 1);
        assert_eq!((dep[0].tag.epc[1], dep[0].at.mono_ms), (1, 1_500));
        assert!(d.stats().watermark_ms >= 1_500);
    }

    #[test]
    fn a_clock_tick_stays_behind_the_clock_by_the_grace() {
        let mut d = Dedup::new(cfg(1, 1000, 500, None, 100), vec![PointSettings::default()]);
        let mut out = Vec::new();
        d.observe(0, &read(1, 1, 0), &mut out);
        d.clock_tick(at(500), &mut out);
        assert_eq!(out.len(), 1, "500 - grace is before the timeout ran out");
        d.clock_tick(at(500 + CLOCK_GRACE_MS), &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(d.next_deadline_ms(600), None);
    }

    fn run(config: DedupConfig, reads: &[(u8, u8, u64)], end_ms: u64) -> Vec<TagEvent> {
        let mut d = Dedup::new(config, vec![PointSettings::default(); 2]);
        let mut out = Vec::new();
        let mut sorted = reads.to_vec();
        sorted.sort_by_key(|r| r.2);
        for (epc, rp, t) in sorted {
            d.tick(at(t), &mut out);
            d.observe(usize::from(rp % 2), &read(epc, 1, t), &mut out);
        }
        let mut t = end_ms;
        // Once reads stop, ticking past the timeout must drain everything.
        for _ in 0..3 {
            t += ms(config.departure_timeout) + 1;
            d.tick(at(t), &mut out);
        }
        assert_eq!(
            d.stats().tracked,
            0,
            "every tag is forgotten once reads stop"
        );
        out
    }

    /// An event reduced to what must not depend on processing: time, kind,
    /// read point, EPC, read count, direction, reason.
    type Canonical = (
        u64,
        u8,
        usize,
        Vec<u8>,
        u64,
        Option<u8>,
        Option<&'static str>,
    );

    /// Feeds time-ordered reads the way the pipeline might under any load:
    /// in batches of `batches[i]` reads, and before each batch a clock tick
    /// at a time given by `ticks[i]` (`None`: none; `Some((c, true))`: the
    /// rest of the reads are in flight, any clock value; `Some((c, false))`:
    /// nothing in flight, so the clock is at most the next read's time plus
    /// the grace). While a batch is observed, the reads after it are in
    /// flight when `ticks[i]` says so.
    /// Returns the events in a canonical order.
    fn run_batched(
        config: DedupConfig,
        reads: &[(u8, u8, u64)],
        batches: &[usize],
        ticks: &[Option<(u64, bool)>],
    ) -> Vec<Canonical> {
        let points = vec![
            PointSettings {
                direction: Some(Portal {
                    outside: 1,
                    inside: 2,
                }),
            };
            2
        ];
        let mut d = Dedup::new(config, points);
        let mut out = Vec::new();
        let mut sorted = reads.to_vec();
        sorted.sort_by_key(|r| r.2);
        let mut i = 0;
        let mut b = 0;
        while i < sorted.len() {
            let next_t = sorted[i].2;
            let tick = ticks.get(b % ticks.len().max(1)).copied().flatten();
            let n = batches
                .get(b % batches.len().max(1))
                .copied()
                .unwrap_or(1)
                .max(1);
            match tick {
                Some((c, true)) => {
                    d.hold_back(Some(next_t));
                    d.clock_tick(at(c), &mut out);
                }
                Some((c, false)) => {
                    d.hold_back(None);
                    d.clock_tick(at(c.min(next_t + CLOCK_GRACE_MS)), &mut out);
                }
                None => {}
            }
            // The batch is taken; what follows it may still be queued.
            let queued_after = sorted.get(i + n).map(|r| r.2);
            d.hold_back(if matches!(tick, Some((_, true))) {
                queued_after
            } else {
                None
            });
            for &(epc, rp, t) in sorted.iter().skip(i).take(n) {
                d.observe(usize::from(rp % 2), &read(epc, 1 + rp / 2, t), &mut out);
            }
            i += n;
            b += 1;
        }
        let end = sorted.last().map_or(0, |r| r.2) + ms(config.departure_timeout) * 2 + 10_000;
        d.tick(at(end), &mut out);
        assert_eq!(d.stats().tracked, 0);
        let mut events: Vec<_> = out
            .into_iter()
            .map(|e| {
                (
                    e.at.mono_ms,
                    e.kind as u8,
                    e.read_point,
                    e.tag.epc,
                    e.tag.read_count,
                    e.direction.map(|d| d as u8),
                    e.reason,
                )
            })
            .collect();
        events.sort();
        events
    }

    proptest! {
        #[test]
        fn processing_delays_and_batching_never_change_the_events(
            reads in proptest::collection::vec((0u8..6, 0u8..4, 0u64..10_000), 0..300),
            batches in proptest::collection::vec(1usize..40, 1..10),
            ticks in proptest::collection::vec(
                proptest::option::of((0u64..40_000, any::<bool>())), 1..10),
            min_reads in 1u32..4,
            window in 1u64..2_000,
            timeout in 1u64..3_000,
            report in proptest::option::of(50u64..2_000),
            max_tags in 1usize..8,
        ) {
            let config = cfg(min_reads, window, timeout, report, max_tags);
            // The reference: one read at a time, and no clock at all.
            let reference = run_batched(config, &reads, &[1], &[None]);
            prop_assert_eq!(run_batched(config, &reads, &batches, &ticks), reference);
        }

        #[test]
        fn arrivals_and_departures_alternate_and_all_arrivals_depart(
            reads in proptest::collection::vec((0u8..6, 0u8..2, 0u64..20_000), 0..300),
            min_reads in 1u32..4,
            window in 1u64..2_000,
            timeout in 1u64..3_000,
            max_tags in 1usize..8,
        ) {
            let config = cfg(min_reads, window, timeout, None, max_tags);
            let out = run(config, &reads, 20_000);
            let mut present: HashMap<(usize, Vec<u8>), bool> = HashMap::default();
            for e in &out {
                let k = (e.read_point, e.tag.epc.clone());
                let was = present.get(&k).copied().unwrap_or(false);
                match e.kind {
                    Kind::Arrived => { prop_assert!(!was, "arrived twice without departing"); present.insert(k, true); }
                    Kind::Departed => { prop_assert!(was, "departed without arriving"); present.insert(k, false); }
                    Kind::Present => prop_assert!(was),
                }
            }
            prop_assert!(present.values().all(|p| !p), "an arrival never departed");
        }

        #[test]
        fn the_same_input_gives_the_same_output(
            reads in proptest::collection::vec((0u8..6, 0u8..2, 0u64..5_000), 0..200),
        ) {
            let config = cfg(2, 500, 700, Some(300), 4);
            prop_assert_eq!(run(config, &reads, 5_000), run(config, &reads, 5_000));
        }
    }
}
