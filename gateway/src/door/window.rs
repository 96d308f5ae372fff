//! Read windows ("passes"), sans-IO: one per read point, ALE event cycles
//! with set semantics. Time comes in with every call.
//!
//! A window opens on the trigger input going active (a photo-eye, or the
//! first of two beams), on the first read while closed, or on a schedule
//! (`open_every_ms`), as configured. It closes on the first of:
//! - the trigger's release plus `linger_ms` (a new activation within the
//!   linger keeps it open);
//! - a stable set: no new tag for `stable_ms`;
//! - `max_duration_ms` after it opened.
//!
//! While open it gathers every tag read at the read point (identity,
//! antennas, read count, first/last seen, peak RSSI). Memory is bounded by
//! `max_tags`: tags beyond it are counted (tags and reads) and the closed
//! window says so, never silently cut. One trigger activation opens at most
//! one window: a window closed by stable set or max duration while the
//! photo-eye is still blocked stays closed until the next activation.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tracegate_drivers::{HostTime, RawRead};

use crate::dedup::{tag_key, DedupKey, Portal};
use crate::event::{AntennaVotes, PassOverflow, WindowClosed, WindowOpened};

/// Distinct tags beyond `max_tags` remembered to count them exactly; past
/// this the count is a lower bound (reads are still counted exactly).
const OVERFLOW_KEYS: usize = 65_536;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowConfig {
    pub open_on_input: bool,
    pub open_on_first_read: bool,
    pub open_every_ms: Option<u64>,
    /// Close this long after the trigger releases (`None`: the release
    /// does not close the window).
    pub linger_ms: Option<u64>,
    pub stable_ms: Option<u64>,
    pub max_duration_ms: u64,
    pub max_tags: usize,
    pub key: DedupKey,
    pub portal: Option<Portal>,
}

/// One tag seen in a window.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowTag {
    pub epc: Vec<u8>,
    pub tid: Option<Vec<u8>>,
    pub reader: Arc<str>,
    pub antennas: Vec<u8>,
    pub read_count: u64,
    pub first_seen: HostTime,
    pub last_seen: HostTime,
    pub peak_rssi_dbm: Option<i16>,
    pub first_antenna: u8,
    pub last_antenna: u8,
}

/// A window that closed: everything a `pass` event needs but identity
/// decoding and flags.
#[derive(Debug, Clone, PartialEq)]
pub struct ClosedWindow {
    pub opened_at: HostTime,
    pub closed_at: HostTime,
    pub opened_by: WindowOpened,
    pub closed_by: WindowClosed,
    /// In the order first read.
    pub tags: Vec<WindowTag>,
    /// All distinct tags and reads, listed or not.
    pub tag_count: u64,
    pub read_count: u64,
    pub overflow: Option<PassOverflow>,
    pub votes: AntennaVotes,
}

#[derive(Debug)]
struct Open {
    opened_at: HostTime,
    opened_by: WindowOpened,
    tags: Vec<WindowTag>,
    index: HashMap<Box<[u8]>, usize>,
    overflow_keys: HashSet<Box<[u8]>>,
    overflow_reads: u64,
    read_count: u64,
    last_new_tag_ms: u64,
}

#[derive(Debug)]
pub struct ReadWindow {
    config: WindowConfig,
    open: Option<Open>,
    trigger_active: bool,
    /// The trigger has been active since the window it opened closed: no
    /// second window for the same activation.
    spent: bool,
    release_at_ms: Option<u64>,
    next_schedule_ms: Option<u64>,
}

/// `t` (monotonic ms, at or before `now`) with UTC derived from `now`.
fn back_to(now: HostTime, t_ms: u64) -> HostTime {
    let back = now.mono_ms.saturating_sub(t_ms);
    HostTime {
        mono_ms: t_ms.min(now.mono_ms),
        utc_ms: now
            .utc_ms
            .saturating_sub(i64::try_from(back).unwrap_or(i64::MAX)),
        clock_synced: now.clock_synced,
    }
}

impl ReadWindow {
    /// `start_ms`: the monotonic time the schedule counts from.
    pub fn new(config: WindowConfig, start_ms: u64) -> Self {
        let next_schedule_ms = config.open_every_ms.map(|p| start_ms.saturating_add(p));
        Self {
            config,
            open: None,
            trigger_active: false,
            spent: false,
            release_at_ms: None,
            next_schedule_ms,
        }
    }

    pub fn config(&self) -> &WindowConfig {
        &self.config
    }

    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    fn open_at(&mut self, at: HostTime, by: WindowOpened) {
        self.release_at_ms = None;
        self.open = Some(Open {
            opened_at: at,
            opened_by: by,
            tags: Vec::new(),
            index: HashMap::new(),
            overflow_keys: HashSet::new(),
            overflow_reads: 0,
            read_count: 0,
            last_new_tag_ms: at.mono_ms,
        });
    }

    /// The trigger input (photo-eye, or "any beam broken") changed. Call
    /// [`ReadWindow::poll`] first. Returns whether a window opened.
    pub fn on_trigger(&mut self, active: bool, at: HostTime) -> bool {
        if active == self.trigger_active {
            return false;
        }
        self.trigger_active = active;
        if active {
            self.release_at_ms = None;
            if self.open.is_none() && self.config.open_on_input {
                self.open_at(at, WindowOpened::Input);
                return true;
            }
        } else {
            self.spent = false;
            if self.open.is_some() {
                self.release_at_ms = self.config.linger_ms.map(|l| at.mono_ms.saturating_add(l));
            }
        }
        false
    }

    /// One read accepted at this read point (after its filters). Call
    /// [`ReadWindow::poll`] first.
    pub fn on_read(&mut self, read: &RawRead) {
        if self.open.is_none() {
            if !self.config.open_on_first_read || self.spent {
                return;
            }
            self.open_at(read.host, WindowOpened::FirstRead);
        }
        let Some(key) = tag_key(self.config.key, read) else {
            return;
        };
        let max_tags = self.config.max_tags;
        let Some(w) = self.open.as_mut() else {
            return;
        };
        w.read_count += 1;
        if let Some(&i) = w.index.get(key.as_ref()) {
            if let Some(t) = w.tags.get_mut(i) {
                t.read_count += 1;
                if read.host.mono_ms >= t.last_seen.mono_ms {
                    t.last_seen = read.host;
                    t.last_antenna = read.antenna;
                }
                if let Some(r) = read.rssi_dbm {
                    t.peak_rssi_dbm = Some(t.peak_rssi_dbm.map_or(r, |p| p.max(r)));
                }
                if let Err(pos) = t.antennas.binary_search(&read.antenna) {
                    t.antennas.insert(pos, read.antenna);
                }
                if t.tid.is_none() {
                    t.tid.clone_from(&read.tid);
                }
            }
            return;
        }
        if w.tags.len() >= max_tags {
            w.overflow_reads += 1;
            if w.overflow_keys.len() < OVERFLOW_KEYS
                && w.overflow_keys.insert(key.into_owned().into_boxed_slice())
            {
                w.last_new_tag_ms = read.host.mono_ms;
            }
            return;
        }
        w.last_new_tag_ms = read.host.mono_ms.max(w.last_new_tag_ms);
        w.index
            .insert(key.into_owned().into_boxed_slice(), w.tags.len());
        w.tags.push(WindowTag {
            epc: read.epc.clone(),
            tid: read.tid.clone(),
            reader: read.reader.clone(),
            antennas: vec![read.antenna],
            read_count: 1,
            first_seen: read.host,
            last_seen: read.host,
            peak_rssi_dbm: read.rssi_dbm,
            first_antenna: read.antenna,
            last_antenna: read.antenna,
        });
    }

    /// The earliest time a window must close or open, if any.
    pub fn deadline_ms(&self) -> Option<u64> {
        let schedule = self.next_schedule_ms.filter(|_| self.open.is_none());
        let closing = self.open.as_ref().map(|w| {
            let max = w
                .opened_at
                .mono_ms
                .saturating_add(self.config.max_duration_ms);
            let stable = self
                .config
                .stable_ms
                .map_or(u64::MAX, |s| w.last_new_tag_ms.saturating_add(s));
            max.min(stable).min(self.release_at_ms.unwrap_or(u64::MAX))
        });
        match (schedule, closing) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Closes a window whose condition is due at `now` (stamped with the
    /// moment the condition fell due), and opens a scheduled one.
    pub fn poll(&mut self, now: HostTime) -> Option<ClosedWindow> {
        let mut closed = None;
        if let Some(w) = &self.open {
            let max = w
                .opened_at
                .mono_ms
                .saturating_add(self.config.max_duration_ms);
            let stable = self
                .config
                .stable_ms
                .map(|s| w.last_new_tag_ms.saturating_add(s));
            // The earliest due condition names the close.
            let mut due: Vec<(u64, WindowClosed)> = vec![(max, WindowClosed::MaxDuration)];
            if let Some(s) = stable {
                due.push((s, WindowClosed::Stable));
            }
            if let Some(r) = self.release_at_ms {
                due.push((r, WindowClosed::Release));
            }
            if let Some(&(at, why)) = due
                .iter()
                .filter(|(t, _)| *t <= now.mono_ms)
                .min_by_key(|(t, _)| *t)
            {
                closed = self.close(back_to(now, at), why);
            }
        }
        if let (Some(next), Some(period)) = (self.next_schedule_ms, self.config.open_every_ms) {
            if now.mono_ms >= next {
                // Missed slots (a long window, a stalled task) are skipped.
                let missed = (now.mono_ms - next) / period.max(1);
                let slot = next.saturating_add(missed.saturating_mul(period));
                self.next_schedule_ms = Some(slot.saturating_add(period));
                if self.open.is_none() {
                    self.open_at(back_to(now, slot), WindowOpened::Schedule);
                }
            }
        }
        closed
    }

    /// Closes the window now, whatever its conditions (`shutdown`).
    pub fn close(&mut self, at: HostTime, why: WindowClosed) -> Option<ClosedWindow> {
        let w = self.open.take()?;
        self.release_at_ms = None;
        // A photo-eye still blocked when its window closed opens no second
        // window until it releases.
        self.spent = self.trigger_active;
        let mut votes = AntennaVotes::default();
        if let Some(portal) = self.config.portal {
            for t in &w.tags {
                match portal.direction_of(t.first_antenna, t.last_antenna) {
                    Some(crate::dedup::Direction::In) => votes.inward += 1,
                    Some(crate::dedup::Direction::Out) => votes.outward += 1,
                    None => {}
                }
            }
        }
        let not_listed = w.overflow_keys.len() as u64;
        Some(ClosedWindow {
            opened_at: w.opened_at,
            closed_at: at,
            opened_by: w.opened_by,
            closed_by: why,
            tag_count: w.tags.len() as u64 + not_listed,
            read_count: w.read_count,
            overflow: (w.overflow_reads > 0).then_some(PassOverflow {
                max_tags: self.config.max_tags as u64,
                tags_not_listed: not_listed,
                reads_not_listed: w.overflow_reads,
            }),
            tags: w.tags,
            votes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg() -> WindowConfig {
        WindowConfig {
            open_on_input: true,
            open_on_first_read: false,
            open_every_ms: None,
            linger_ms: Some(500),
            stable_ms: None,
            max_duration_ms: 60_000,
            max_tags: 1_000,
            key: DedupKey::Epc,
            portal: Some(Portal {
                outside: 1,
                inside: 2,
            }),
        }
    }

    fn t(ms: u64) -> HostTime {
        HostTime {
            mono_ms: ms,
            utc_ms: 1_700_000_000_000 + ms as i64,
            clock_synced: true,
        }
    }

    fn read(epc: u8, antenna: u8, ms: u64, rssi: i16) -> RawRead {
        RawRead {
            reader: Arc::from("r"),
            antenna,
            epc: vec![0x30, epc],
            tid: None,
            pc: None,
            rssi_dbm: Some(rssi),
            frequency_khz: None,
            phase_deg: None,
            reader_timestamp_ms: None,
            host: t(ms),
        }
    }

    /// Polls then feeds, as the pipeline does.
    fn feed(w: &mut ReadWindow, r: RawRead) -> Option<ClosedWindow> {
        let c = w.poll(r.host);
        w.on_read(&r);
        c
    }

    #[test]
    fn an_input_window_closes_on_release_plus_linger_with_every_tag_and_its_figures() {
        let mut w = ReadWindow::new(cfg(), 0);
        assert!(feed(&mut w, read(9, 1, 50, -60)).is_none());
        assert!(!w.is_open(), "reads before the trigger open nothing");
        assert!(w.on_trigger(true, t(100)));
        feed(&mut w, read(1, 1, 150, -70));
        feed(&mut w, read(2, 1, 160, -65));
        feed(&mut w, read(1, 2, 400, -50));
        feed(&mut w, read(1, 2, 450, -55));
        w.on_trigger(false, t(600));
        feed(&mut w, read(2, 2, 900, -58)); // within the linger: still counted
        assert_eq!(w.deadline_ms(), Some(1100));
        assert!(w.poll(t(1099)).is_none());
        let c = w.poll(t(1180)).unwrap();
        assert_eq!(c.opened_by, WindowOpened::Input);
        assert_eq!(c.closed_by, WindowClosed::Release);
        assert_eq!(c.opened_at, t(100));
        assert_eq!(c.closed_at, t(1100), "stamped when the linger ran out");
        assert_eq!((c.tag_count, c.read_count), (2, 5));
        let one = &c.tags[0];
        assert_eq!(one.epc, vec![0x30, 1]);
        assert_eq!(one.antennas, vec![1, 2]);
        assert_eq!(one.read_count, 3);
        assert_eq!(one.peak_rssi_dbm, Some(-50));
        assert_eq!((one.first_seen, one.last_seen), (t(150), t(450)));
        assert_eq!(
            c.votes,
            AntennaVotes {
                inward: 2,
                outward: 0
            }
        );
        assert!(c.overflow.is_none());
    }

    #[test]
    fn a_new_activation_within_the_linger_keeps_the_window_open() {
        let mut w = ReadWindow::new(cfg(), 0);
        w.on_trigger(true, t(0));
        w.on_trigger(false, t(100));
        assert!(w.poll(t(400)).is_none());
        w.on_trigger(true, t(400));
        assert!(w.poll(t(2000)).is_none(), "blocked again: no release due");
        w.on_trigger(false, t(2000));
        let c = w.poll(t(2500)).unwrap();
        assert_eq!(c.closed_by, WindowClosed::Release);
        assert_eq!(c.opened_at, t(0));
    }

    #[test]
    fn a_stable_set_closes_the_window_when_no_new_tag_arrives() {
        let mut c = cfg();
        c.stable_ms = Some(300);
        let mut w = ReadWindow::new(c, 0);
        w.on_trigger(true, t(0));
        feed(&mut w, read(1, 1, 100, -60));
        feed(&mut w, read(1, 1, 350, -60)); // known tag: not "new"
        feed(&mut w, read(2, 1, 380, -60));
        assert!(w.poll(t(679)).is_none());
        let closed = w.poll(t(680)).unwrap();
        assert_eq!(closed.closed_by, WindowClosed::Stable);
        assert_eq!(closed.closed_at, t(680));
        // The photo-eye is still blocked: the same activation opens nothing.
        feed(&mut w, read(3, 1, 700, -60));
        assert!(!w.is_open());
        w.on_trigger(false, t(800));
        assert!(w.on_trigger(true, t(900)), "the next activation opens anew");
    }

    #[test]
    fn the_maximum_duration_closes_a_window_that_never_releases() {
        let mut c = cfg();
        c.max_duration_ms = 1_000;
        let mut w = ReadWindow::new(c, 0);
        w.on_trigger(true, t(10));
        feed(&mut w, read(1, 1, 100, -60));
        let closed = w.poll(t(5_000)).unwrap();
        assert_eq!(closed.closed_by, WindowClosed::MaxDuration);
        assert_eq!(closed.closed_at, t(1_010));
    }

    #[test]
    fn the_first_read_opens_a_window_when_configured() {
        let mut c = cfg();
        c.open_on_input = false;
        c.open_on_first_read = true;
        c.linger_ms = None;
        c.stable_ms = Some(200);
        let mut w = ReadWindow::new(c, 0);
        feed(&mut w, read(1, 1, 100, -60));
        assert!(w.is_open());
        let closed = w.poll(t(300)).unwrap();
        assert_eq!(closed.opened_by, WindowOpened::FirstRead);
        assert_eq!(closed.opened_at, t(100));
        assert_eq!(closed.tag_count, 1);
    }

    #[test]
    fn a_schedule_opens_windows_every_period_and_skips_missed_slots() {
        let mut c = cfg();
        c.open_on_input = false;
        c.open_every_ms = Some(1_000);
        c.max_duration_ms = 400;
        let mut w = ReadWindow::new(c, 0);
        assert_eq!(w.deadline_ms(), Some(1_000));
        assert!(w.poll(t(1_000)).is_none());
        assert!(w.is_open());
        let closed = w.poll(t(1_400)).unwrap();
        assert_eq!(closed.opened_by, WindowOpened::Schedule);
        assert_eq!(closed.closed_by, WindowClosed::MaxDuration);
        // Asleep until 3.5 s: the 2 s and 3 s slots are skipped, the window
        // opens at the 3 s slot's time, the next slot is at 4 s.
        w.poll(t(3_500));
        assert!(w.is_open());
        assert_eq!(w.poll(t(3_900)).unwrap().opened_at, t(3_000));
        assert_eq!(w.deadline_ms(), Some(4_000));
    }

    #[test]
    fn tags_beyond_max_tags_are_counted_and_stated_not_silently_cut() {
        let mut c = cfg();
        c.max_tags = 2;
        let mut w = ReadWindow::new(c, 0);
        w.on_trigger(true, t(0));
        for (i, epc) in [1u8, 2, 3, 4, 3, 1].iter().enumerate() {
            feed(&mut w, read(*epc, 1, 10 + i as u64, -60));
        }
        let closed = w.close(t(100), WindowClosed::Shutdown).unwrap();
        assert_eq!(closed.tags.len(), 2);
        assert_eq!(closed.tag_count, 4);
        assert_eq!(closed.read_count, 6);
        assert_eq!(
            closed.overflow,
            Some(PassOverflow {
                max_tags: 2,
                tags_not_listed: 2,
                reads_not_listed: 3
            })
        );
    }

    proptest! {
        /// Every tag read while a window is open is in exactly one closed
        /// window, with its reads counted once; nothing is lost or doubled.
        #[test]
        fn every_read_in_an_open_window_is_counted_once(
            steps in proptest::collection::vec((0u8..4, 0u8..12, 0u64..300), 1..200),
            stable in proptest::option::of(50u64..500),
        ) {
            let mut c = cfg();
            c.stable_ms = stable;
            c.max_tags = 5;
            let mut w = ReadWindow::new(c, 0);
            let mut now = 0;
            let mut closed = Vec::new();
            let mut counted = 0u64;
            for (action, epc, gap) in steps {
                now += gap;
                closed.extend(w.poll(t(now)));
                match action {
                    0 => { w.on_trigger(true, t(now)); }
                    1 => { w.on_trigger(false, t(now)); }
                    _ => {
                        if w.is_open() { counted += 1; }
                        w.on_read(&read(epc, 1 + epc % 2, now, -60));
                    }
                }
            }
            closed.extend(w.close(t(now), WindowClosed::Shutdown));
            let reads: u64 = closed.iter().map(|c| c.read_count).sum();
            prop_assert_eq!(reads, counted);
            for c in &closed {
                let listed: u64 = c.tags.iter().map(|t| t.read_count).sum();
                let over = c.overflow.map_or(0, |o| o.reads_not_listed);
                prop_assert_eq!(listed + over, c.read_count);
                prop_assert!(c.tags.len() <= 5);
                prop_assert!(c.closed_at.mono_ms >= c.opened_at.mono_ms);
            }
        }
    }
}
