//! Random sequences of appends, watermark moves, prunes and reopens on a
//! small store, checking the store's invariants after every step.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod store_common;

use std::collections::BTreeSet;

use proptest::prelude::*;
use rusqlite::Connection;
use store_common::*;
use tracegate::store::{FullPolicy, Store, StoreConfig};

/// The smallest store accepted: its database share is about 80 KiB.
const MAX: u64 = tracegate::store::MIN_MAX_BYTES;

#[derive(Debug, Clone)]
enum Op {
    /// Drafts per append, with body padding to vary sizes.
    Append(Vec<usize>),
    /// Publish this fraction (per mille) of what is pending.
    Publish(u16),
    /// Prune at this many seconds after T0.
    Prune(u32),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => prop::collection::vec(0usize..600, 0..60).prop_map(Op::Append),
        2 => (0u16..=1000).prop_map(Op::Publish),
        1 => (0u32..20_000).prop_map(Op::Prune),
        1 => Just(Op::Reopen),
    ]
}

fn padded(i: i64, pad: usize) -> tracegate::store::EventDraft {
    let mut d = draft(T0 + i);
    if let tracegate::event::EventBody::Arrived(b) = &mut d.event.body {
        b.at.read_point.push_str(&"x".repeat(pad));
    }
    d
}

fn check(store: &Store, cfg: &StoreConfig, policy: FullPolicy, last_seq: u64, dropped: u64) {
    let s = store.stats().unwrap();
    let db_max = store.budget().db_max();
    assert!(
        s.bytes <= db_max,
        "bytes {} over the database's share {db_max}",
        s.bytes
    );
    assert_eq!(s.last_seq, last_seq);
    assert_eq!(s.dropped_total, dropped);
    let c = Connection::open(&cfg.path).unwrap();
    let pending: u64 = c
        .query_row(
            "SELECT count(*) FROM events WHERE seq > ?1",
            [s.published_upto as i64],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(s.pending, pending, "stats.pending vs a full count");
    let events = store.events_after(0, usize::MAX, false).unwrap();
    let present: BTreeSet<u64> = events.iter().map(|e| e.seq).collect();
    let mut covered = BTreeSet::new();
    for e in events.iter().filter(|e| e.event_type == "overflow") {
        let v: serde_json::Value = serde_json::from_str(&e.payload).unwrap();
        if let (Some(a), Some(b)) = (v["first_seq"].as_u64(), v["last_seq"].as_u64()) {
            covered.extend(a..=b);
        }
    }
    for seq in s.published_upto + 1..=s.last_seq {
        match policy {
            FullPolicy::RejectNew => assert!(present.contains(&seq), "pending {seq} missing"),
            FullPolicy::DropOldest => assert!(
                present.contains(&seq) || covered.contains(&seq),
                "pending {seq} missing without an overflow record"
            ),
        }
    }
}

fn run(policy: FullPolicy, ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir, MAX, policy);
    cfg.retention_secs = 5;
    let mut store = Store::open(&cfg, "gw").unwrap();
    let mut last_seq = 0u64;
    let mut dropped = 0u64;
    let mut t = 0i64;
    for op in ops {
        match op {
            Op::Append(pads) => {
                let drafts: Vec<_> = pads
                    .iter()
                    .map(|&p| {
                        t += 10;
                        padded(t, p)
                    })
                    .collect();
                let out = store.append_detailed(&drafts).unwrap();
                // Seqs are assigned gap-free from the last one.
                let new: Vec<u64> = out.events.iter().map(|e| e.seq).collect();
                if let Some(&hi) = new.last() {
                    assert!(hi > last_seq);
                    assert!(new.windows(2).all(|w| w[0] < w[1]));
                }
                let assigned = out.accepted_groups as u64
                    + out
                        .events
                        .iter()
                        .filter(|e| e.event_type == "overflow")
                        .count() as u64;
                assert_eq!(out.last_seq, last_seq + assigned);
                last_seq = out.last_seq;
                dropped += out.dropped + out.rejected;
            }
            Op::Publish(per_mille) => {
                let s = store.stats().unwrap();
                let upto = s.published_upto
                    + (s.last_seq - s.published_upto) * u64::from(per_mille) / 1000;
                store.mark_published(upto).unwrap();
            }
            Op::Prune(secs) => {
                store.prune(T0 + i64::from(secs) * 1000).unwrap();
            }
            Op::Reopen => {
                drop(store);
                store = Store::open(&cfg, "gw").unwrap();
            }
        }
        check(&store, &cfg, policy, last_seq, dropped);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn drop_oldest_invariants_hold(ops in prop::collection::vec(op(), 1..40)) {
        run(FullPolicy::DropOldest, ops);
    }

    #[test]
    fn reject_new_invariants_hold(ops in prop::collection::vec(op(), 1..40)) {
        run(FullPolicy::RejectNew, ops);
    }
}
