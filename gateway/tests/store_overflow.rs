//! The size bound and the two full policies, with their `overflow` records.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod store_common;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use store_common::*;
use tracegate::store::{FullPolicy, Store, StoredEvent};

/// The smallest store accepted: its database share is about 80 KiB.
const MAX: u64 = tracegate::store::MIN_MAX_BYTES;

fn overflow_body(e: &StoredEvent) -> Value {
    assert_eq!(e.event_type, "overflow");
    serde_json::from_str(&e.payload).unwrap()
}

fn iso(ms: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[test]
fn drop_oldest_reports_exactly_the_dropped_seq_range_and_count() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, MAX, FullPolicy::DropOldest);
    let mut store = Store::open(&cfg, "dock-01").unwrap();

    // Every event ever stored, by seq, with its time.
    let mut times: BTreeMap<u64, i64> = BTreeMap::new();
    let mut t = T0;
    let mut returned_overflows = 0;
    let mut overflow_seqs = BTreeSet::new();
    for _ in 0..60 {
        let drafts = (0..40)
            .map(|_| {
                t += 7;
                draft(t)
            })
            .collect();
        let evs = store.append(drafts).unwrap();
        for e in &evs {
            times.insert(e.seq, e.event_utc_ms);
            if e.event_type == "overflow" {
                returned_overflows += 1;
                overflow_seqs.insert(e.seq);
            }
        }
        let s = store.stats().unwrap();
        let db_max = store.budget().db_max();
        assert!(
            s.bytes <= db_max,
            "bytes {} over the database's share {db_max}",
            s.bytes
        );
    }
    assert!(returned_overflows > 0, "the test must overflow the store");

    let present = store.events_after(0, 1_000_000, false).unwrap();
    let present_seqs: BTreeSet<u64> = present.iter().map(|e| e.seq).collect();
    let missing: BTreeSet<u64> = times
        .keys()
        .copied()
        .filter(|s| !present_seqs.contains(s))
        .collect();
    assert!(!missing.is_empty());

    // The overflow records present cover exactly the missing seqs, and their
    // counts add up to the persisted total.
    let mut covered = BTreeSet::new();
    let mut count_sum = 0;
    for e in present.iter().filter(|e| e.event_type == "overflow") {
        let b = overflow_body(e);
        assert_eq!(b["type"], "overflow");
        assert_eq!(b["policy"], "drop_oldest");
        assert_eq!(b["id"], Value::String(e.id.clone()));
        let first = b["first_seq"].as_u64().unwrap();
        let last = b["last_seq"].as_u64().unwrap();
        let count = b["count"].as_u64().unwrap();
        let kept_records = (first..=last).filter(|s| present_seqs.contains(s)).count() as u64;
        assert!(
            (first..=last).all(|s| !present_seqs.contains(&s) || overflow_seqs.contains(&s)),
            "only overflow records survive inside a dropped range: {b}"
        );
        assert_eq!(
            count,
            last - first + 1 - kept_records,
            "count is exact: {b}"
        );
        assert!(last < e.seq);
        // from/to: the time range of the lost events (not of lost records).
        let lost: Vec<i64> = (first..=last)
            .filter(|s| !present_seqs.contains(s))
            .map(|s| times[&s])
            .collect();
        assert_eq!(b["from"], iso(*lost.iter().min().unwrap()), "{b}");
        assert_eq!(b["to"], iso(*lost.iter().max().unwrap()), "{b}");
        count_sum += count;
        covered.extend((first..=last).filter(|s| !present_seqs.contains(s)));
    }
    assert_eq!(covered, missing);
    let stats = store.stats().unwrap();
    assert_eq!(count_sum, stats.dropped_total);
    assert_eq!(stats.dropped_total, missing.len() as u64);
    // Pending is still exact after drops (the rows above the drop are contiguous).
    assert_eq!(stats.pending, present.len() as u64);
    assert_eq!(stats.last_seq, *times.keys().last().unwrap());
}

#[test]
fn first_drop_names_the_oldest_events_and_their_times() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, MAX, FullPolicy::DropOldest);
    let mut store = Store::open(&cfg, "dock-01").unwrap();
    let mut all = Vec::new();
    let mut i = 0;
    let overflow = loop {
        let evs = store.append(vec![draft(T0 + i * 1000)]).unwrap();
        i += 1;
        if let Some(o) = evs.iter().find(|e| e.event_type == "overflow") {
            break o.clone();
        }
        all.extend(evs);
        assert!(i < 100_000);
    };
    let b = overflow_body(&overflow);
    let count = b["count"].as_u64().unwrap();
    assert_eq!(b["first_seq"], 1);
    assert_eq!(b["last_seq"].as_u64().unwrap(), count);
    assert_eq!(b["from"], iso(T0));
    assert_eq!(b["to"], iso(T0 + (count as i64 - 1) * 1000));
    // The new event itself was kept, and the overflow record follows it.
    assert_eq!(overflow.seq, i as u64 + 1);
    assert_eq!(store.stats().unwrap().dropped_total, count);
    let first_left = store.events_after(0, 1, false).unwrap()[0].seq;
    assert_eq!(first_left, count + 1);
}

#[test]
fn published_events_are_pruned_before_anything_pending_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir, MAX, FullPolicy::DropOldest);
    cfg.retention_secs = 365 * 24 * 3600; // retention alone would keep them
    let mut store = Store::open(&cfg, "dock-01").unwrap();
    let mut n = 0u64;
    // Fill to roughly 80 %, publish it all, then keep appending.
    while store.stats().unwrap().bytes < store.budget().db_limit() * 8 / 10 {
        n += store.append((0..20).map(draft).collect()).unwrap().len() as u64;
    }
    store.mark_published(n).unwrap();
    for _ in 0..(n / 20) {
        let evs = store.append((0..20).map(draft).collect()).unwrap();
        assert!(evs.iter().all(|e| e.event_type != "overflow"));
    }
    let s = store.stats().unwrap();
    assert_eq!(s.dropped_total, 0);
    assert!(s.bytes <= store.budget().db_max());
}

#[test]
fn reject_new_refuses_what_does_not_fit_without_using_a_seq() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, MAX, FullPolicy::RejectNew);
    let mut store = Store::open(&cfg, "dock-01").unwrap();
    let mut refused = 0u64;
    let mut overflow_events = Vec::new();
    let mut stored: Vec<StoredEvent> = Vec::new();
    let mut t = T0;
    for _ in 0..80 {
        let drafts: Vec<_> = (0..40)
            .map(|_| {
                t += 5;
                draft(t)
            })
            .collect();
        let out = store.append_detailed(&drafts).unwrap();
        refused += out.rejected;
        assert_eq!(out.dropped, 0);
        assert_eq!(
            out.events
                .iter()
                .filter(|e| e.event_type != "overflow")
                .count(),
            out.accepted_groups
        );
        for e in out.events {
            if e.event_type == "overflow" {
                overflow_events.push(e.clone());
            }
            stored.push(e);
        }
        assert!(store.stats().unwrap().bytes <= store.budget().db_max());
    }
    assert!(refused > 0, "the test must fill the store");

    // Seqs stay gap-free: refused drafts never got one, nothing was deleted.
    let seqs: Vec<u64> = store
        .events_after(0, 1_000_000, false)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    let n = seqs.len() as u64;
    assert_eq!(seqs, (1..=n).collect::<Vec<_>>());
    assert_eq!(stored.len() as u64, n);

    // Records so far have null seqs; with what is still accumulating, they
    // account for every refusal.
    assert!(!overflow_events.is_empty());
    let mut recorded = 0;
    for e in &overflow_events {
        let b = overflow_body(e);
        assert_eq!(b["policy"], "reject_new");
        assert!(b["first_seq"].is_null() && b["last_seq"].is_null());
        recorded += b["count"].as_u64().unwrap();
    }
    let s = store.stats().unwrap();
    assert_eq!(s.dropped_total, refused);
    // The headroom filled with records, later refusals wait in meta.
    assert!(recorded < refused, "recorded {recorded} of {refused}");

    // Publish everything: room comes back, the accumulated refusals are
    // written as one record, and new events are accepted again.
    store.mark_published(n).unwrap();
    let out = store.append_detailed(&[draft(t + 1)]).unwrap();
    assert_eq!(out.rejected, 0);
    assert_eq!(out.accepted_groups, 1);
    {
        let rec = out
            .events
            .iter()
            .find(|e| e.event_type == "overflow")
            .expect("accumulated refusals recorded once there is room");
        let b = overflow_body(rec);
        recorded += b["count"].as_u64().unwrap();
        // The record covers the time range of the refused drafts.
        assert!(b["to"].as_str().unwrap() <= iso(t).as_str());
    }
    assert_eq!(recorded, refused);
}

#[test]
fn reject_new_keeps_order_within_one_commit() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, MAX, FullPolicy::RejectNew);
    let mut store = Store::open(&cfg, "dock-01").unwrap();
    // One large commit: a prefix is taken, the rest refused.
    let drafts: Vec<_> = (0..2000).map(|i| draft(T0 + i)).collect();
    let out = store.append_detailed(&drafts).unwrap();
    assert!(out.accepted_groups > 0 && out.accepted_groups < 2000);
    assert_eq!(out.rejected, 2000 - out.accepted_groups as u64);
    let kept: Vec<i64> = out
        .events
        .iter()
        .filter(|e| e.event_type != "overflow")
        .map(|e| e.event_utc_ms)
        .collect();
    assert_eq!(
        kept,
        (0..out.accepted_groups as i64)
            .map(|i| T0 + i)
            .collect::<Vec<_>>()
    );
    let rec = out.events.last().unwrap();
    let b = overflow_body(rec);
    assert_eq!(b["count"].as_u64().unwrap(), out.rejected);
    assert_eq!(b["from"], iso(T0 + out.accepted_groups as i64));
    assert_eq!(b["to"], iso(T0 + 1999));
}

#[test]
fn a_commit_larger_than_the_store_keeps_its_newest_events_under_drop_oldest() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, MAX, FullPolicy::DropOldest);
    let mut store = Store::open(&cfg, "dock-01").unwrap();
    let drafts: Vec<_> = (0..3000).map(|i| draft(T0 + i)).collect();
    let evs = store.append(drafts).unwrap();
    let rec = evs.last().unwrap();
    let b = overflow_body(rec);
    let count = b["count"].as_u64().unwrap();
    assert_eq!(b["first_seq"], 1);
    assert_eq!(b["last_seq"].as_u64().unwrap(), count);
    // Returned = still stored: the newest drafts, then the record.
    assert_eq!(evs.len() as u64, 3000 - count + 1);
    assert_eq!(evs[0].seq, count + 1);
    assert_eq!(rec.seq, 3001);
    assert!(store.stats().unwrap().bytes <= store.budget().db_max());
}

/// The store's files as `du` would count them: database, WAL, WAL index
/// and space reserve.
fn on_disk(cfg: &tracegate::store::StoreConfig) -> [u64; 4] {
    let len = |suffix: &str| {
        std::fs::metadata(format!("{}{suffix}", cfg.path.display()))
            .map(|m| m.len())
            .unwrap_or(0)
    };
    [len(""), len("-wal"), len("-shm"), len("-reserve")]
}

#[test]
fn database_wal_index_and_reserve_together_stay_within_max_bytes_under_overflow() {
    const BOUND: u64 = 1 << 20;
    const PAGE: u64 = 4096 + 24;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, BOUND, FullPolicy::DropOldest);
    let mut store = Store::open(&cfg, "dock-01").unwrap();
    // A second connection reading now and then, as the daemon's publisher
    // does: a read in progress holds checkpoints back.
    let reader = Store::open_reader(&cfg, "dock-01").unwrap();
    let mut worst = [0u64; 4];
    let mut wal_growth = 0u64;
    for round in 0..400u64 {
        let wal_before = on_disk(&cfg)[1];
        store
            .append(
                (0..32)
                    .map(|i| draft(T0 + (round * 32 + i) as i64))
                    .collect(),
            )
            .unwrap();
        if round % 7 == 0 {
            reader.events_after(round * 16, 50, true).unwrap();
        }
        let now = on_disk(&cfg);
        wal_growth = wal_growth.max(now[1].saturating_sub(wal_before));
        if now.iter().sum::<u64>() > worst.iter().sum::<u64>() {
            worst = now;
        }
    }
    let stats = store.stats().unwrap();
    assert!(stats.dropped_total > 0, "the store overflowed: {stats:?}");
    // The documented margin: the WAL frames of one commit. 32 events of
    // about 400 bytes fill 4 pages, plus the index, meta and freelist pages
    // the commit touches; 12 pages is well above what one such commit writes.
    let margin = 12 * PAGE;
    let total: u64 = worst.iter().sum();
    eprintln!(
        "worst on disk: db {} + wal {} + shm {} + reserve {} = {total} for a bound of {BOUND} \
         ({:+} bytes); largest WAL growth of one commit {wal_growth}",
        worst[0],
        worst[1],
        worst[2],
        worst[3],
        total as i64 - BOUND as i64
    );
    assert!(
        total <= BOUND + margin,
        "db {} + wal {} + shm {} + reserve {} = {total} over {BOUND} + {margin}",
        worst[0],
        worst[1],
        worst[2],
        worst[3]
    );
    // The reserve is in place: a full disk can always be recovered from.
    assert_eq!(worst[3], store.budget().reserve_bytes());
}
