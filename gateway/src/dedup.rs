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
use std::collections::BTreeSet;
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
}

type Key = (usize, Box<[u8]>);

#[derive(Debug)]
struct Tracked {
    key: Key,
    summary: TagSummary,
    arrived: bool,
    window_start_ms: u64,
    window_reads: u32,
    last_report_ms: u64,
    first_antenna: u8,
    last_antenna: u8,
}

#[derive(Debug)]
pub struct Dedup {
    config: DedupConfig,
    points: Vec<PointSettings>,
    /// Per read point: tag key → id. Split by read point so a read's key can
    /// be looked up by reference, without allocating on the hot path.
    ids: Vec<HashMap<Box<[u8]>, u64>>,
    tags: HashMap<u64, Tracked>,
    /// (last_seen mono ms, id): oldest first, for departures and eviction.
    by_last_seen: BTreeSet<(u64, u64)>,
    next_id: u64,
    stats: DedupStats,
}

fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Dedup {
    pub fn new(config: DedupConfig, points: Vec<PointSettings>) -> Self {
        Self {
            config,
            points,
            ids: Vec::new(),
            tags: HashMap::default(),
            by_last_seen: BTreeSet::new(),
            next_id: 0,
            stats: DedupStats::default(),
        }
    }

    pub fn stats(&self) -> DedupStats {
        DedupStats {
            tracked: self.tags.len(),
            ..self.stats
        }
    }

    /// The read's tag key; borrowed unless it has to be composed (EPC+TID).
    fn key_of<'r>(&self, read: &'r RawRead) -> Option<Cow<'r, [u8]>> {
        tag_key(self.config.key, read)
    }

    fn forget(&mut self, key: &Key) {
        if let Some(ids) = self.ids.get_mut(key.0) {
            ids.remove(&key.1);
        }
    }

    /// Feeds one read seen at `read_point`. Reads without the configured key
    /// (no TID when keying by TID) are ignored and return no events.
    pub fn observe(&mut self, read_point: usize, read: &RawRead, out: &mut Vec<TagEvent>) {
        self.stats.reads += 1;
        let Some(tag_key) = self.key_of(read) else {
            return;
        };
        let now = read.host.mono_ms;
        let window = ms(self.config.arrival_window);
        let known = self
            .ids
            .get(read_point)
            .and_then(|ids| ids.get(tag_key.as_ref()))
            .copied();
        let id = match known {
            Some(id) => id,
            None => {
                if self.tags.len() >= self.config.max_tags.get() {
                    self.evict_oldest(read.host, out);
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
                        window_start_ms: now,
                        window_reads: 0,
                        last_report_ms: now,
                        first_antenna: read.antenna,
                        last_antenna: read.antenna,
                    },
                );
                self.by_last_seen.insert((now, id));
                id
            }
        };
        let Some(t) = self.tags.get_mut(&id) else {
            return;
        };
        let previous = t.summary.last_seen.mono_ms;
        // Reads may arrive slightly out of order across readers; time never
        // runs backwards inside the engine.
        let now = now.max(previous);
        if previous != now {
            self.by_last_seen.remove(&(previous, id));
            self.by_last_seen.insert((now, id));
        }
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
                t.last_report_ms = now;
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
    }

    /// Advances time: departures of silent tags, forgetting silent pending
    /// tags, and periodic `present` reports. Call regularly (every 100 ms).
    pub fn tick(&mut self, now: HostTime, out: &mut Vec<TagEvent>) {
        let timeout = ms(self.config.departure_timeout);
        while let Some(&(last, id)) = self.by_last_seen.first() {
            if now.mono_ms.saturating_sub(last) < timeout {
                break;
            }
            self.by_last_seen.pop_first();
            if let Some(t) = self.tags.remove(&id) {
                self.forget(&t.key);
                if t.arrived {
                    // The departure happened when the timeout ran out, which
                    // may be before this tick noticed it.
                    let at = shift(t.summary.last_seen, timeout);
                    self.emit_departure(t, at, None, out);
                }
            }
        }
        if let Some(interval) = self.config.report_interval.map(ms) {
            let mut due: Vec<u64> = self
                .tags
                .iter()
                .filter(|(_, t)| {
                    t.arrived && now.mono_ms.saturating_sub(t.last_report_ms) >= interval
                })
                .map(|(&id, _)| id)
                .collect();
            due.sort_unstable();
            for id in due {
                if let Some(t) = self.tags.get_mut(&id) {
                    t.last_report_ms = now.mono_ms;
                    self.stats.events += 1;
                    out.push(TagEvent {
                        kind: Kind::Present,
                        read_point: t.key.0,
                        at: now,
                        tag: t.summary.clone(),
                        direction: None,
                        reason: None,
                    });
                }
            }
        }
    }

    /// Milliseconds until the next departure could fall due (0: already
    /// due), so the pipeline can sleep exactly that long.
    pub fn next_deadline_ms(&self, now_mono_ms: u64) -> Option<u64> {
        let timeout = ms(self.config.departure_timeout);
        self.by_last_seen
            .first()
            .map(|&(last, _)| (last + timeout).saturating_sub(now_mono_ms))
    }

    fn evict_oldest(&mut self, now: HostTime, out: &mut Vec<TagEvent>) {
        if let Some((_, id)) = self.by_last_seen.pop_first() {
            if let Some(t) = self.tags.remove(&id) {
                self.forget(&t.key);
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

    proptest! {
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
