//! PUBACK bookkeeping. rumqttc 0.25 has no publish token: packet ids are
//! assigned inside the event loop and reused, so the order of
//! `Outgoing::Publish(pkid)` events is what ties a pkid to what we handed over.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Instant;

/// An outbox batch handed to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SentBatch {
    /// The batch covers `after < seq <= last` (gaps inside are seqs the
    /// store no longer has, which need no delivery).
    pub after: u64,
    pub last: u64,
    pub events: usize,
    pub live: bool,
    pub sent_at: Instant,
}

/// One QoS 1 message handed to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item {
    Batch(SentBatch),
    /// A QoS 1 message that is not part of the outbox (birth or shutdown status).
    Control,
}

#[derive(Debug, Default)]
pub struct AckTracker {
    /// Handed to the client, packet id not yet known (FIFO = channel order).
    handed: VecDeque<Item>,
    by_pkid: HashMap<u16, Item>,
}

impl AckTracker {
    pub fn in_flight(&self) -> usize {
        self.handed.len() + self.by_pkid.len()
    }

    pub fn handed(&mut self, item: Item) {
        self.handed.push_back(item);
    }

    /// `Outgoing::Publish(pkid)`. A publish that collided emits its event only
    /// after the PUBACK that freed the pkid, and the event loop pulls nothing
    /// new meanwhile, so FIFO order still holds. Returns false if nothing was
    /// waiting for a packet id (a bug or an untracked QoS 1 publish).
    pub fn on_outgoing(&mut self, pkid: u16) -> bool {
        if pkid == 0 || self.by_pkid.contains_key(&pkid) {
            // QoS 0, or the retransmission of a publish we already mapped.
            return true;
        }
        match self.handed.pop_front() {
            Some(item) => {
                self.by_pkid.insert(pkid, item);
                true
            }
            None => false,
        }
    }

    pub fn on_puback(&mut self, pkid: u16) -> Option<Item> {
        self.by_pkid.remove(&pkid)
    }

    /// The connection is gone: everything in flight will be sent again.
    pub fn reset(&mut self) {
        self.handed.clear();
        self.by_pkid.clear();
    }
}

/// Seq ranges acknowledged by the broker above the contiguous watermark.
#[derive(Debug)]
pub struct AckedRanges {
    watermark: u64,
    /// start (exclusive `after`) -> last, non-overlapping.
    ranges: BTreeMap<u64, u64>,
}

impl AckedRanges {
    pub fn new(watermark: u64) -> Self {
        AckedRanges {
            watermark,
            ranges: BTreeMap::new(),
        }
    }

    /// Highest seq such that every seq at or below it is acknowledged.
    pub fn watermark(&self) -> u64 {
        self.watermark
    }

    /// Records `after < seq <= last` as acknowledged; returns true if the
    /// watermark moved.
    pub fn insert(&mut self, after: u64, last: u64) -> bool {
        if last <= self.watermark || last <= after {
            return false;
        }
        let after = after.max(self.watermark);
        self.ranges
            .entry(after)
            .and_modify(|l| *l = (*l).max(last))
            .or_insert(last);
        let before = self.watermark;
        while let Some((&a, &l)) = self.ranges.first_key_value() {
            if a > self.watermark {
                break;
            }
            self.ranges.remove(&a);
            self.watermark = self.watermark.max(l);
        }
        self.watermark != before
    }

    /// If `seq + 1` starts an acknowledged range (or lies inside one),
    /// the last seq of it; lets a cursor jump over work already done.
    pub fn skip_from(&self, cursor: u64) -> u64 {
        let mut c = cursor.max(self.watermark);
        loop {
            // Ranges are disjoint in practice; taking the max keeps this
            // right even if a resend overlapped an acknowledged range.
            match self.ranges.range(..=c).map(|(_, &l)| l).max() {
                Some(l) if l > c => c = l,
                _ => return c,
            }
        }
    }

    /// The first acknowledged range starting at or after `cursor` (its
    /// exclusive `after`), so a batch read from `cursor` stops before it.
    pub fn next_start_after(&self, cursor: u64) -> Option<u64> {
        self.ranges.range(cursor..).next().map(|(&a, _)| a)
    }

    pub fn pending_ranges(&self) -> usize {
        self.ranges.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(after: u64, last: u64) -> Item {
        Item::Batch(SentBatch {
            after,
            last,
            events: (last - after) as usize,
            live: false,
            sent_at: Instant::now(),
        })
    }

    fn after_of(item: Option<Item>) -> Option<u64> {
        match item {
            Some(Item::Batch(b)) => Some(b.after),
            _ => None,
        }
    }

    #[test]
    fn pkids_map_in_fifo_order_and_reuse_is_safe() {
        let mut t = AckTracker::default();
        t.handed(batch(0, 10));
        t.handed(batch(10, 20));
        assert!(t.on_outgoing(1));
        assert!(t.on_outgoing(2));
        assert_eq!(after_of(t.on_puback(1)), Some(0));
        t.handed(batch(20, 30));
        // pkid 1 is free again and gets the next handed item.
        assert!(t.on_outgoing(1));
        assert_eq!(after_of(t.on_puback(1)), Some(20));
        assert_eq!(after_of(t.on_puback(2)), Some(10));
        assert_eq!(t.in_flight(), 0);
        assert_eq!(t.on_puback(2), None);
    }

    #[test]
    fn collision_keeps_the_stashed_publish_mapped_to_its_item() {
        let mut t = AckTracker::default();
        t.handed(Item::Control);
        t.handed(batch(0, 5));
        t.handed(batch(5, 9));
        assert!(t.on_outgoing(1));
        assert!(t.on_outgoing(2));
        // The third publish collides on pkid 1 (AwaitAck): no event yet.
        // PUBACK(1) frees it, then Outgoing::Publish(1) for the stashed one.
        assert_eq!(t.on_puback(1), Some(Item::Control));
        assert!(t.on_outgoing(1));
        assert_eq!(after_of(t.on_puback(1)), Some(5));
        assert_eq!(after_of(t.on_puback(2)), Some(0));
    }

    #[test]
    fn watermark_advances_only_over_a_contiguous_prefix() {
        let mut a = AckedRanges::new(100);
        assert!(!a.insert(150, 200));
        assert_eq!(a.watermark(), 100);
        assert!(!a.insert(120, 150));
        assert!(a.insert(100, 120));
        assert_eq!(a.watermark(), 200);
        assert_eq!(a.pending_ranges(), 0);
        assert!(!a.insert(50, 80)); // below the watermark: ignored
        assert!(a.insert(190, 210)); // overlap with the watermark
        assert_eq!(a.watermark(), 210);
    }

    #[test]
    fn cursors_skip_acknowledged_ranges() {
        let mut a = AckedRanges::new(10);
        a.insert(20, 30);
        a.insert(30, 40);
        a.insert(50, 60);
        assert_eq!(a.skip_from(10), 10);
        assert_eq!(a.skip_from(20), 40);
        assert_eq!(a.skip_from(25), 40);
        assert_eq!(a.skip_from(45), 45);
        assert_eq!(a.skip_from(5), 10);
        assert_eq!(a.next_start_after(10), Some(20));
        assert_eq!(a.next_start_after(41), Some(50));
        assert_eq!(a.next_start_after(51), None);
    }
}
