//! Flags for suspicious serials, raised at the edge so the registry can act
//! on them without re-deriving anything (sans-IO, bounded memory):
//! - `unknown`: the EPC is not a valid GS1 EPC (it is published as
//!   `urn:epc:raw:...`): an unprogrammed, foreign or forged tag.
//! - `unexpected`: the read point lists `expect_patterns` and the EPC
//!   matches none of them (a serial of the wrong product at this door).
//! - `cloned`: the same EPC was seen with two different TIDs: two chips
//!   carry one serial. Needs the TID to be read (`dedup.key` or the reader's
//!   TID option).
//! - `over_scanned`: the same serial arrived at the same read point more than
//!   `max_arrivals` times within `window` (a tag parked at a door, or a serial
//!   copied onto many tags).

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroUsize;
use std::time::Duration;

use tracegate_gs1::{Decoded, EpcPattern};

use crate::event::Flag;

/// When a serial counts as `over_scanned`: more than `max_arrivals`
/// arrivals at one read point within `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverScan {
    pub max_arrivals: NonZeroUsize,
    pub window: Duration,
}

/// Entries kept per table before the oldest are forgotten.
const TABLE_CAP: usize = 100_000;

#[derive(Debug)]
pub struct Suspicion {
    expect: Vec<Vec<EpcPattern>>,
    tids: HashMap<Vec<u8>, Vec<u8>>,
    tid_order: VecDeque<Vec<u8>>,
    arrivals: HashMap<(usize, Vec<u8>), VecDeque<i64>>,
    arrival_order: VecDeque<(usize, Vec<u8>)>,
    over_scan: Option<OverScan>,
}

impl Suspicion {
    /// `expect[i]`: expected patterns of read point `i` (empty: anything
    /// goes); without `over_scan` nothing is flagged `over_scanned`.
    pub fn new(expect: Vec<Vec<EpcPattern>>, over_scan: Option<OverScan>) -> Self {
        Self {
            expect,
            tids: HashMap::new(),
            tid_order: VecDeque::new(),
            arrivals: HashMap::new(),
            arrival_order: VecDeque::new(),
            over_scan,
        }
    }

    /// Flags for an event at `read_point`; `arrival_utc_ms` is set for
    /// arrivals (they count towards `over_scanned`).
    pub fn flags(
        &mut self,
        read_point: usize,
        epc: &[u8],
        decoded: &Decoded,
        tid: Option<&[u8]>,
        arrival_utc_ms: Option<i64>,
    ) -> Vec<Flag> {
        let mut flags = Vec::new();
        if decoded.scheme == "raw" {
            flags.push(Flag::Unknown);
        }
        if let Some(patterns) = self.expect.get(read_point) {
            if !patterns.is_empty() && !patterns.iter().any(|p| p.matches(decoded)) {
                flags.push(Flag::Unexpected);
            }
        }
        if let Some(tid) = tid {
            match self.tids.get(epc) {
                Some(known) if known.as_slice() != tid => flags.push(Flag::Cloned),
                Some(_) => {}
                None => {
                    if self.tids.len() >= TABLE_CAP {
                        if let Some(old) = self.tid_order.pop_front() {
                            self.tids.remove(&old);
                        }
                    }
                    self.tids.insert(epc.to_vec(), tid.to_vec());
                    self.tid_order.push_back(epc.to_vec());
                }
            }
        }
        if let (Some(at), Some(limit)) = (arrival_utc_ms, self.over_scan) {
            let window_ms = i64::try_from(limit.window.as_millis()).unwrap_or(i64::MAX);
            let key = (read_point, epc.to_vec());
            if !self.arrivals.contains_key(&key) {
                if self.arrivals.len() >= TABLE_CAP {
                    if let Some(old) = self.arrival_order.pop_front() {
                        self.arrivals.remove(&old);
                    }
                }
                self.arrival_order.push_back(key.clone());
            }
            let times = self.arrivals.entry(key).or_default();
            times.push_back(at);
            while times.front().is_some_and(|&t| at - t > window_ms) {
                times.pop_front();
            }
            if times.len() > limit.max_arrivals.get() {
                flags.push(Flag::OverScanned);
            }
        }
        flags
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SGTIN: &str = "3074257BF7194E4000001A85";

    fn epc(h: &str) -> Vec<u8> {
        hex::decode(h).unwrap()
    }

    #[test]
    fn a_non_gs1_epc_is_flagged_unknown() {
        let mut s = Suspicion::new(vec![vec![]], None);
        let e = epc("E2801170000002111111AAAA");
        let d = tracegate_gs1::decode_epc(&e);
        assert_eq!(s.flags(0, &e, &d, None, None), vec![Flag::Unknown]);
        let e = epc(SGTIN);
        assert!(s
            .flags(0, &e, &tracegate_gs1::decode_epc(&e), None, None)
            .is_empty());
    }

    #[test]
    fn an_epc_outside_the_expected_patterns_is_flagged_unexpected() {
        let pat = EpcPattern::parse("urn:epc:pat:sgtin-96:3.0614141.812345.*").unwrap();
        let other = EpcPattern::parse("urn:epc:pat:sgtin-96:3.0614141.999999.*").unwrap();
        let e = epc(SGTIN);
        let d = tracegate_gs1::decode_epc(&e);
        let mut s = Suspicion::new(vec![vec![pat], vec![other]], None);
        assert!(s.flags(0, &e, &d, None, None).is_empty());
        assert_eq!(s.flags(1, &e, &d, None, None), vec![Flag::Unexpected]);
    }

    #[test]
    fn one_epc_with_two_tids_is_flagged_cloned() {
        let e = epc(SGTIN);
        let d = tracegate_gs1::decode_epc(&e);
        let mut s = Suspicion::new(vec![vec![]], None);
        assert!(s.flags(0, &e, &d, Some(&[1, 2, 3]), None).is_empty());
        assert!(s.flags(0, &e, &d, Some(&[1, 2, 3]), None).is_empty());
        assert_eq!(
            s.flags(0, &e, &d, Some(&[9, 9, 9]), None),
            vec![Flag::Cloned]
        );
    }

    #[test]
    fn too_many_arrivals_within_the_window_are_flagged_over_scanned() {
        let e = epc(SGTIN);
        let d = tracegate_gs1::decode_epc(&e);
        let mut s = Suspicion::new(
            vec![vec![]],
            Some(OverScan {
                max_arrivals: NonZeroUsize::new(2).unwrap(),
                window: Duration::from_secs(60),
            }),
        );
        assert!(s.flags(0, &e, &d, None, Some(0)).is_empty());
        assert!(s.flags(0, &e, &d, None, Some(1_000)).is_empty());
        assert_eq!(
            s.flags(0, &e, &d, None, Some(2_000)),
            vec![Flag::OverScanned]
        );
        // Outside the window the count starts again.
        assert!(s.flags(0, &e, &d, None, Some(200_000)).is_empty());
    }
}
