//! The in-memory index the pipeline asks for every event: compact, immutable
//! once built, and shared behind an `Arc` (a new dataset builds a new index
//! off the hot path and swaps it in whole).
//!
//! Numeric serials are kept as sorted disjoint runs (`RangeSet`, Elias-Fano
//! coded in blocks: about 2.5 bytes per isolated serial, a few bytes per
//! run whatever its length): commissioning hands out serials in sequence,
//! so 10 million serials are typically a few thousand runs.
//! Overlapping blocked ranges and market rules are flattened once, at build
//! time, into disjoint segments with their combined value (`RangeMap`), so a
//! lookup is a hash of the GTIN and one binary search: O(log runs), no
//! allocation. Text serials (SGTIN-198, Digital Link) go in hash sets.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::records::{canonical_number, parse_gtin, ExpectedItem, Record, Serial, Serials};
use crate::event::{BlockReason, Flag, MasterdataDetail};

mod rangeset;

pub use rangeset::RangeSet;

/// Sorted disjoint inclusive segments, each with a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeMap<W> {
    starts: Vec<u64>,
    ends: Vec<u64>,
    vals: Vec<W>,
}

impl<W> Default for RangeMap<W> {
    fn default() -> Self {
        Self {
            starts: Vec::new(),
            ends: Vec::new(),
            vals: Vec::new(),
        }
    }
}

impl<W: Clone + PartialEq> RangeMap<W> {
    /// Flattens possibly overlapping intervals: every number covered by at
    /// least one interval gets `combine(values of the intervals covering
    /// it)`, adjacent segments with equal results merge.
    pub fn flatten<V: Ord + Clone>(
        intervals: Vec<(u64, u64, V)>,
        mut combine: impl FnMut(&BTreeMap<V, usize>) -> W,
    ) -> RangeMap<W> {
        // Boundary events: +1 at the start, -1 just past the end (an
        // interval ending at u64::MAX never closes).
        let mut events: Vec<(u64, bool, V)> = Vec::with_capacity(intervals.len() * 2);
        for (a, z, v) in intervals {
            if a > z {
                continue;
            }
            events.push((a, true, v.clone()));
            if let Some(past) = z.checked_add(1) {
                events.push((past, false, v));
            }
        }
        events.sort_unstable_by_key(|e| e.0);
        let mut out = RangeMap::default();
        let mut active: BTreeMap<V, usize> = BTreeMap::new();
        let mut i = 0;
        while i < events.len() {
            let pos = events[i].0;
            while i < events.len() && events[i].0 == pos {
                let (_, open, v) = &events[i];
                if *open {
                    *active.entry(v.clone()).or_insert(0) += 1;
                } else if let Some(n) = active.get_mut(v) {
                    *n -= 1;
                    if *n == 0 {
                        active.remove(v);
                    }
                }
                i += 1;
            }
            if active.is_empty() {
                continue;
            }
            let end = match events.get(i) {
                Some(next) => next.0 - 1,
                None => u64::MAX,
            };
            let w = combine(&active);
            let merge = out
                .ends
                .last()
                .is_some_and(|&e| e.checked_add(1) == Some(pos))
                && out.vals.last() == Some(&w);
            if merge {
                if let Some(e) = out.ends.last_mut() {
                    *e = end;
                }
            } else {
                out.starts.push(pos);
                out.ends.push(end);
                out.vals.push(w);
            }
        }
        out
    }

    pub fn get(&self, x: u64) -> Option<&W> {
        let i = self.starts.partition_point(|&s| s <= x);
        if i > 0 && self.ends.get(i - 1).is_some_and(|&e| e >= x) {
            self.vals.get(i - 1)
        } else {
            None
        }
    }

    pub fn segments(&self) -> usize {
        self.starts.len()
    }
}

/// A set of serials of one GTIN.
#[derive(Debug, Clone, Default)]
pub struct SerialSet {
    pub nums: RangeSet,
    pub text: HashSet<Box<str>>,
}

impl SerialSet {
    fn contains(&self, s: &SerialRef) -> bool {
        match s {
            SerialRef::Num(n) => self.nums.contains(*n),
            SerialRef::Text(t) => self.text.contains(*t),
        }
    }
}

/// Runs a [`SerialSetBuilder`] holds uncompressed (16 bytes each) before
/// it folds them into its compressed set: building from 10 million listed
/// serials never holds them all as pairs.
const COMPACT_RUNS: usize = 1 << 20;

#[derive(Debug, Default)]
struct SerialSetBuilder {
    runs: Vec<(u64, u64)>,
    done: RangeSet,
    text: HashSet<Box<str>>,
}

impl SerialSetBuilder {
    fn push_run(&mut self, run: (u64, u64)) {
        self.runs.push(run);
        if self.runs.len() >= COMPACT_RUNS {
            let runs = std::mem::take(&mut self.runs);
            self.done = self.done.union(runs);
        }
    }

    fn add(&mut self, serials: Serials) {
        match serials {
            Serials::Range(a, z) => self.push_run((a, z)),
            Serials::List(list) => {
                for s in list {
                    match s {
                        // Serials listed in sequence extend the last run
                        // instead of costing 16 bytes each until the merge.
                        Serial::Num(n) => match self.runs.last_mut() {
                            Some(last) if last.0 <= n && n <= last.1.saturating_add(1) => {
                                last.1 = last.1.max(n)
                            }
                            _ => self.push_run((n, n)),
                        },
                        Serial::Text(t) => {
                            self.text.insert(t);
                        }
                    }
                }
            }
            Serials::All => self.push_run((0, u64::MAX)),
        }
    }

    fn finish(self) -> SerialSet {
        let mut text = self.text;
        text.shrink_to_fit();
        SerialSet {
            nums: self.done.union(self.runs),
            text,
        }
    }
}

/// A serial as looked up (borrowed from the event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SerialRef<'a> {
    Num(u64),
    Text(&'a str),
}

impl<'a> SerialRef<'a> {
    pub fn parse(s: &'a str) -> SerialRef<'a> {
        match canonical_number(s) {
            Some(n) => SerialRef::Num(n),
            None => SerialRef::Text(s),
        }
    }

    fn matches(&self, s: &Serial) -> bool {
        match (self, s) {
            (SerialRef::Num(a), Serial::Num(b)) => a == b,
            (SerialRef::Text(a), Serial::Text(b)) => *a == &**b,
            _ => false,
        }
    }
}

#[derive(Debug, Default)]
struct Blocked {
    nums: RangeMap<BlockReason>,
    text: HashMap<Box<str>, BlockReason>,
}

#[derive(Debug, Default)]
struct MarketRules {
    /// Rules without serials: the whole GTIN.
    all: Option<u32>,
    nums: RangeMap<u32>,
    text: HashMap<Box<str>, u32>,
}

/// The expected shipments of one read point, merged.
#[derive(Debug, Default)]
pub struct Expected {
    pub items: HashMap<u64, SerialSet>,
    pub ssccs: HashSet<Box<str>>,
    pub shipments: BTreeSet<String>,
}

impl Expected {
    fn contains(&self, s: &Subject) -> bool {
        if let Some(sscc) = s.sscc {
            if self.ssccs.contains(sscc) {
                return true;
            }
        }
        match (s.gtin(), s.serial()) {
            (Some(g), Some(ser)) => self.items.get(&g).is_some_and(|set| set.contains(&ser)),
            _ => false,
        }
    }

    /// How many items the shipments list (saturating).
    pub fn count(&self) -> u64 {
        self.items.values().fold(self.ssccs.len() as u64, |n, s| {
            n.saturating_add(s.nums.count())
                .saturating_add(s.text.len() as u64)
        })
    }
}

/// Which checks a read point applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checks {
    pub unknown_serial: bool,
    pub blocked: bool,
    pub wrong_market: bool,
    pub serial_mismatch: bool,
    pub not_expected: bool,
}

impl Checks {
    pub const ALL: Checks = Checks {
        unknown_serial: true,
        blocked: true,
        wrong_market: true,
        serial_mismatch: true,
        not_expected: true,
    };
    pub const NONE: Checks = Checks {
        unknown_serial: false,
        blocked: false,
        wrong_market: false,
        serial_mismatch: false,
        not_expected: false,
    };

    /// Names as written in config and docs.
    pub const NAMES: [&'static str; 5] = [
        "unknown_serial",
        "blocked",
        "wrong_market",
        "serial_mismatch",
        "not_expected",
    ];

    /// Turns on the check called `name`; false for an unknown name.
    pub fn enable(&mut self, name: &str) -> bool {
        let flag = match name {
            "unknown_serial" => &mut self.unknown_serial,
            "blocked" => &mut self.blocked,
            "wrong_market" => &mut self.wrong_market,
            "serial_mismatch" => &mut self.serial_mismatch,
            "not_expected" => &mut self.not_expected,
            _ => return false,
        };
        *flag = true;
        true
    }
}

/// What an event says about the thing it saw.
#[derive(Debug, Clone, Copy, Default)]
pub struct Subject<'a> {
    /// GTIN-14 (UHF SGTIN or NFC Digital Link).
    pub gtin: Option<&'a str>,
    pub serial: Option<&'a str>,
    /// 18-digit SSCC (UHF SSCC).
    pub sscc: Option<&'a str>,
    /// NFC tag UID.
    pub uid: Option<&'a [u8]>,
}

impl Subject<'_> {
    fn gtin(&self) -> Option<u64> {
        self.gtin.and_then(parse_gtin)
    }

    fn serial(&self) -> Option<SerialRef<'_>> {
        self.serial.map(SerialRef::parse)
    }
}

/// The SSCC in a GS1 element string `(00)` + 18 digits, as the EPC decoder
/// writes it for SSCC-96.
pub fn sscc_of_element_string(es: &str) -> Option<&str> {
    es.strip_prefix("(00)")
        .filter(|s| s.len() == 18 && s.bytes().all(|b| b.is_ascii_digit()))
}

/// How much an index holds (for status, logs and the bench).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IndexCounts {
    pub records: u64,
    pub commissioned_runs: u64,
    pub blocked_segments: u64,
    pub market_rules: u64,
    pub nfc_bindings: u64,
    pub expected_read_points: u64,
}

/// Everything the active datasets say, ready for lookups.
#[derive(Debug, Default)]
pub struct MasterIndex {
    commissioned: HashMap<u64, SerialSet>,
    blocked: HashMap<u64, Blocked>,
    markets: HashMap<u64, MarketRules>,
    market_sets: Vec<Box<[Box<str>]>>,
    nfc: HashMap<Box<[u8]>, (u64, Serial)>,
    expected: HashMap<Box<str>, Expected>,
    counts: IndexCounts,
}

/// Collects records (from any number of datasets) into a [`MasterIndex`].
#[derive(Debug, Default)]
pub struct IndexBuilder {
    commissioned: HashMap<u64, SerialSetBuilder>,
    blocked: HashMap<u64, BlockedBuilder>,
    markets: HashMap<u64, MarketBuilder>,
    market_names: BTreeMap<Box<str>, u32>,
    nfc: HashMap<Box<[u8]>, (u64, Serial)>,
    expected: HashMap<Box<str>, ExpectedBuilder>,
    records: u64,
}

/// Numeric blocked ranges (flattened at the end) and text serials.
type BlockedBuilder = (Vec<(u64, u64, BlockReason)>, HashMap<Box<str>, BlockReason>);

#[derive(Debug, Default)]
struct MarketBuilder {
    all: BTreeSet<u32>,
    nums: Vec<(u64, u64, u32)>,
    text: HashMap<Box<str>, BTreeSet<u32>>,
}

#[derive(Debug, Default)]
struct ExpectedBuilder {
    items: HashMap<u64, SerialSetBuilder>,
    ssccs: HashSet<Box<str>>,
    shipments: BTreeSet<String>,
}

impl IndexBuilder {
    pub fn add(&mut self, record: Record) {
        self.records += 1;
        match record {
            Record::Commissioned { gtin, serials } => {
                self.commissioned.entry(gtin).or_default().add(serials)
            }
            Record::Blocked {
                gtin,
                serials,
                reason,
            } => {
                let (nums, text) = self.blocked.entry(gtin).or_default();
                match serials {
                    Serials::Range(a, z) => nums.push((a, z, reason)),
                    Serials::All => nums.push((0, u64::MAX, reason)),
                    Serials::List(list) => {
                        for s in list {
                            match s {
                                Serial::Num(n) => nums.push((n, n, reason)),
                                Serial::Text(t) => {
                                    let r = text.entry(t).or_insert(reason);
                                    *r = (*r).max(reason);
                                }
                            }
                        }
                    }
                }
            }
            Record::Market {
                gtin,
                serials,
                markets,
            } => {
                let ids: Vec<u32> = markets
                    .into_iter()
                    .map(|m| {
                        let next = self.market_names.len() as u32;
                        *self.market_names.entry(m.into()).or_insert(next)
                    })
                    .collect();
                let rules = self.markets.entry(gtin).or_default();
                match serials {
                    Serials::All => rules.all.extend(ids),
                    Serials::Range(a, z) => rules.nums.extend(ids.into_iter().map(|m| (a, z, m))),
                    Serials::List(list) => {
                        for s in list {
                            match s {
                                Serial::Num(n) => rules.nums.extend(ids.iter().map(|&m| (n, n, m))),
                                Serial::Text(t) => {
                                    rules.text.entry(t).or_default().extend(ids.iter().copied())
                                }
                            }
                        }
                    }
                }
            }
            Record::Nfc { uid, gtin, serial } => {
                // A later binding of the same UID replaces an earlier one
                // (a re-commissioned tag).
                self.nfc.insert(uid.into(), (gtin, serial));
            }
            Record::Expected {
                read_point,
                shipment,
                item,
            } => {
                let e = self.expected.entry(read_point.into()).or_default();
                e.shipments.insert(shipment);
                match item {
                    ExpectedItem::Sscc(s) => {
                        e.ssccs.insert(s.into());
                    }
                    ExpectedItem::Items { gtin, serials } => {
                        e.items.entry(gtin).or_default().add(serials)
                    }
                }
            }
        }
    }

    pub fn finish(self) -> MasterIndex {
        let mut counts = IndexCounts {
            records: self.records,
            ..IndexCounts::default()
        };
        let commissioned: HashMap<u64, SerialSet> = self
            .commissioned
            .into_iter()
            .map(|(g, b)| {
                let set = b.finish();
                counts.commissioned_runs += (set.nums.runs() + set.text.len()) as u64;
                (g, set)
            })
            .collect();
        let blocked = self
            .blocked
            .into_iter()
            .map(|(g, (nums, text))| {
                let nums = RangeMap::flatten(nums, |active| {
                    active
                        .keys()
                        .next_back()
                        .copied()
                        .unwrap_or(BlockReason::Other)
                });
                counts.blocked_segments += (nums.segments() + text.len()) as u64;
                (g, Blocked { nums, text })
            })
            .collect();
        // Market names by id, then each distinct union of names interned once.
        let mut names: Vec<Box<str>> = vec![Box::from(""); self.market_names.len()];
        for (n, id) in self.market_names {
            if let Some(slot) = names.get_mut(id as usize) {
                *slot = n;
            }
        }
        let mut sets: Vec<Box<[Box<str>]>> = Vec::new();
        let mut interned: HashMap<Vec<u32>, u32> = HashMap::new();
        let mut intern = |ids: Vec<u32>| -> u32 {
            let next = sets.len() as u32;
            *interned.entry(ids.clone()).or_insert_with(|| {
                sets.push(
                    ids.iter()
                        .filter_map(|&i| names.get(i as usize).cloned())
                        .collect(),
                );
                next
            })
        };
        let markets = self
            .markets
            .into_iter()
            .map(|(g, b)| {
                counts.market_rules +=
                    (b.nums.len() + b.text.len() + usize::from(!b.all.is_empty())) as u64;
                let all = (!b.all.is_empty()).then(|| intern(b.all.into_iter().collect()));
                let nums =
                    RangeMap::flatten(b.nums, |active| intern(active.keys().copied().collect()));
                let text = b
                    .text
                    .into_iter()
                    .map(|(t, ids)| (t, intern(ids.into_iter().collect())))
                    .collect();
                (g, MarketRules { all, nums, text })
            })
            .collect();
        counts.nfc_bindings = self.nfc.len() as u64;
        counts.expected_read_points = self.expected.len() as u64;
        let expected = self
            .expected
            .into_iter()
            .map(|(rp, b)| {
                (
                    rp,
                    Expected {
                        items: b.items.into_iter().map(|(g, s)| (g, s.finish())).collect(),
                        ssccs: b.ssccs,
                        shipments: b.shipments,
                    },
                )
            })
            .collect();
        MasterIndex {
            commissioned,
            blocked,
            markets,
            market_sets: sets,
            nfc: self.nfc,
            expected,
            counts,
        }
    }
}

/// Heap bytes of a set of text serials: the table's slots and the strings.
fn text_bytes<V>(t: &HashMap<Box<str>, V>) -> usize {
    t.capacity() * (std::mem::size_of::<(Box<str>, V)>() + 1)
        + t.keys().map(|k| k.len()).sum::<usize>()
}

impl SerialSet {
    fn heap_bytes(&self) -> usize {
        self.nums.heap_bytes()
            + self.text.capacity() * (std::mem::size_of::<Box<str>>() + 1)
            + self.text.iter().map(|k| k.len()).sum::<usize>()
    }
}

impl<W> RangeMap<W> {
    fn heap_bytes(&self) -> usize {
        (self.starts.capacity() + self.ends.capacity()) * 8
            + self.vals.capacity() * std::mem::size_of::<W>()
    }
}

impl MasterIndex {
    pub fn counts(&self) -> IndexCounts {
        self.counts
    }

    /// Heap bytes of the commissioned serials (their compressed runs and
    /// text serials), what 10 million serials cost.
    pub fn commissioned_bytes(&self) -> usize {
        self.commissioned.values().map(SerialSet::heap_bytes).sum()
    }

    /// Heap bytes the index holds, near enough to compare with the
    /// process's RSS (hash tables counted by their slots, not by the
    /// allocator's rounding): logged when a dataset is applied or loaded.
    pub fn heap_bytes(&self) -> usize {
        let blocked: usize = self
            .blocked
            .values()
            .map(|b| b.nums.heap_bytes() + text_bytes(&b.text))
            .sum();
        let markets: usize = self
            .markets
            .values()
            .map(|m| m.nums.heap_bytes() + text_bytes(&m.text))
            .sum();
        let expected: usize = self
            .expected
            .values()
            .map(|e| {
                e.items.values().map(SerialSet::heap_bytes).sum::<usize>()
                    + e.ssccs.capacity() * 17
                    + e.ssccs.len() * 18
            })
            .sum();
        let nfc = self.nfc.capacity() * (std::mem::size_of::<(Box<[u8]>, (u64, Serial))>() + 1)
            + self.nfc.keys().map(|k| k.len()).sum::<usize>();
        self.commissioned_bytes() + blocked + markets + expected + nfc
    }

    pub fn is_empty(&self) -> bool {
        self.counts.records == 0
    }

    /// Whether any commissioned serials are listed (`unknown_serial` is
    /// judged only then).
    pub fn has_commissioned(&self) -> bool {
        !self.commissioned.is_empty()
    }

    /// The merged expected shipments of a read point.
    pub fn expected(&self, read_point: &str) -> Option<&Expected> {
        self.expected.get(read_point)
    }

    /// Whether the commissioned serials include this one.
    pub fn is_commissioned(&self, gtin: u64, serial: SerialRef) -> bool {
        self.commissioned
            .get(&gtin)
            .is_some_and(|s| s.contains(&serial))
    }

    pub fn blocked_reason(&self, gtin: u64, serial: SerialRef) -> Option<BlockReason> {
        let b = self.blocked.get(&gtin)?;
        match serial {
            SerialRef::Num(n) => b.nums.get(n).copied(),
            SerialRef::Text(t) => b.text.get(t).copied(),
        }
    }

    /// `None`: no market rule covers the serial; otherwise whether `market`
    /// is among the markets of the rules that do.
    pub fn market_allows(&self, gtin: u64, serial: SerialRef, market: &str) -> Option<bool> {
        let rules = self.markets.get(&gtin)?;
        let specific = match serial {
            SerialRef::Num(n) => rules.nums.get(n).copied(),
            SerialRef::Text(t) => rules.text.get(t).copied(),
        };
        let mut covered = false;
        for set in [rules.all, specific].into_iter().flatten() {
            covered = true;
            if self
                .market_sets
                .get(set as usize)
                .is_some_and(|names| names.iter().any(|n| &**n == market))
            {
                return Some(true);
            }
        }
        covered.then_some(false)
    }

    /// The (GTIN, serial) an NFC UID is bound to.
    pub fn nfc_binding(&self, uid: &[u8]) -> Option<(u64, &Serial)> {
        self.nfc.get(uid).map(|(g, s)| (*g, s))
    }

    /// Runs the enabled checks, pushing a flag for each one that fails.
    /// Returns the details the flags need (blocked reason, bound serial).
    pub fn check(
        &self,
        subject: &Subject,
        read_point: &str,
        checks: Checks,
        own_market: Option<&str>,
        flags: &mut Vec<Flag>,
    ) -> Option<MasterdataDetail> {
        let mut detail = MasterdataDetail::default();
        let item = subject.gtin().zip(subject.serial());
        if let Some((gtin, serial)) = item {
            if checks.unknown_serial
                && !self.commissioned.is_empty()
                && !self.is_commissioned(gtin, serial)
            {
                flags.push(Flag::UnknownSerial);
            }
            if checks.blocked {
                if let Some(r) = self.blocked_reason(gtin, serial) {
                    flags.push(Flag::Blocked);
                    detail.blocked_reason = Some(r);
                }
            }
            if let (true, Some(m)) = (checks.wrong_market, own_market) {
                if self.market_allows(gtin, serial, m) == Some(false) {
                    flags.push(Flag::WrongMarket);
                }
            }
        }
        if checks.serial_mismatch {
            if let (Some(uid), Some((gtin, serial))) = (subject.uid, item) {
                if let Some((bg, bs)) = self.nfc_binding(uid) {
                    if bg != gtin || !serial.matches(bs) {
                        flags.push(Flag::SerialMismatch);
                        detail.bound_gtin = Some(format!("{bg:014}"));
                        detail.bound_serial = Some(bs.to_string());
                    }
                }
            }
        }
        if checks.not_expected {
            if let Some(e) = self.expected.get(read_point) {
                if !e.contains(subject) {
                    flags.push(Flag::NotExpected);
                }
            }
        }
        (detail != MasterdataDetail::default()).then_some(detail)
    }
}

#[cfg(test)]
mod tests;
