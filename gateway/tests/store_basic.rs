//! Event store behaviour: seq/id assignment, the outbox watermark, retention,
//! SUN counters, schema migrations, corruption handling.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod store_common;

use rusqlite::Connection;
use serde_json::Value;
use store_common::*;
use tracegate::store::{FullPolicy, Store, StoreError, SCHEMA_VERSION};

#[test]
fn seqs_are_gap_free_and_ids_combine_gateway_store_and_seq() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, 10 << 20, FullPolicy::DropOldest);
    let mut store = Store::open(&cfg, "dock-01").unwrap();
    let sid = store.store_id().to_owned();
    assert_eq!(sid.len(), 16);
    assert!(sid.chars().all(|c| c.is_ascii_hexdigit()));

    let mut all = Vec::new();
    for batch in 0..5 {
        let drafts = (0..7).map(|i| draft(1_000 * batch + i)).collect();
        all.extend(store.append(drafts).unwrap());
    }
    let seqs: Vec<u64> = all.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=35).collect::<Vec<_>>());
    for e in &all {
        assert_eq!(e.id, format!("dock-01:{sid}:{}", e.seq));
        let v: Value = serde_json::from_str(&e.payload).unwrap();
        assert_eq!(v["id"], Value::String(e.id.clone()));
        assert_eq!(v["seq"], Value::from(e.seq));
        assert_eq!(v["type"], "arrived");
        assert_eq!(v["identity"]["epc"], "3074257BF7194E4000001A85");
        assert_eq!(e.event_type, "arrived");
    }
    // What was returned is what is stored.
    assert_eq!(store.events_after(0, 1000, false).unwrap(), all);
}

#[test]
fn store_id_and_seq_continue_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, 10 << 20, FullPolicy::DropOldest);
    let mut store = Store::open(&cfg, "dock-01").unwrap();
    let sid = store.store_id().to_owned();
    store.append(vec![draft(1), draft(2)]).unwrap();
    drop(store);

    let mut store = Store::open(&cfg, "dock-01").unwrap();
    assert_eq!(store.store_id(), sid);
    let evs = store.append(vec![draft(3)]).unwrap();
    assert_eq!(evs[0].seq, 3);
    assert_eq!(evs[0].id, format!("dock-01:{sid}:3"));
}

#[test]
fn two_stores_get_different_store_ids() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let sa = Store::open(&config(&a, 1 << 20, FullPolicy::DropOldest), "g").unwrap();
    let sb = Store::open(&config(&b, 1 << 20, FullPolicy::DropOldest), "g").unwrap();
    assert_ne!(sa.store_id(), sb.store_id());
}

#[test]
fn seq_is_not_reused_after_every_row_was_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, 10 << 20, FullPolicy::DropOldest);
    let mut store = Store::open(&cfg, "dock-01").unwrap();
    store.append((0..10).map(draft).collect()).unwrap();
    store.mark_published(10).unwrap();
    // Far in the future: everything published is past retention.
    assert_eq!(store.prune(i64::MAX / 2).unwrap(), 10);
    assert!(store.events_after(0, 100, false).unwrap().is_empty());
    drop(store);

    let mut store = Store::open(&cfg, "dock-01").unwrap();
    let evs = store.append(vec![draft(11)]).unwrap();
    assert_eq!(evs[0].seq, 11);
    assert_eq!(store.stats().unwrap().last_seq, 11);
}

#[test]
fn watermark_only_rises_and_selects_pending_events() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, 10 << 20, FullPolicy::DropOldest);
    let mut store = Store::open(&cfg, "dock-01").unwrap();
    store
        .append((0..10).map(|i| draft(T0 + i * 1000)).collect())
        .unwrap();

    let s = store.stats().unwrap();
    assert_eq!((s.last_seq, s.published_upto, s.pending), (10, 0, 10));
    assert_eq!(s.oldest_pending_utc_ms, Some(T0));

    store.mark_published(4).unwrap();
    store.mark_published(2).unwrap(); // lower: ignored
    let s = store.stats().unwrap();
    assert_eq!((s.published_upto, s.pending), (4, 6));
    assert_eq!(s.oldest_pending_utc_ms, Some(T0 + 4000));

    let pending = store.events_after(0, 100, true).unwrap();
    assert_eq!(pending.first().map(|e| e.seq), Some(5));
    assert_eq!(pending.len(), 6);
    assert_eq!(store.pending(3).unwrap().len(), 3);
    // after_seq above the watermark wins.
    let after7: Vec<u64> = store
        .events_after(7, 100, true)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(after7, vec![8, 9, 10]);
    // Not pending-only: published events are still readable (CLI).
    assert_eq!(store.events_after(0, 100, false).unwrap().len(), 10);

    // Never above what exists.
    store.mark_published(1_000).unwrap();
    let s = store.stats().unwrap();
    assert_eq!(
        (s.published_upto, s.pending, s.oldest_pending_utc_ms),
        (10, 0, None)
    );
}

#[test]
fn prune_deletes_only_published_events_past_retention() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir, 10 << 20, FullPolicy::DropOldest);
    cfg.retention_secs = 60;
    let mut store = Store::open(&cfg, "dock-01").unwrap();
    // seq 1..=10 at T0 + 0..9 s; seq 11..=20 at T0 + 100 s.
    store
        .append((0..10).map(|i| draft(T0 + i * 1000)).collect())
        .unwrap();
    store
        .append((0..10).map(|_| draft(T0 + 100_000)).collect())
        .unwrap();
    store.mark_published(15).unwrap();

    // At T0 + 65 s only seq 1..=5 are older than 60 s.
    assert_eq!(store.prune(T0 + 65_000).unwrap(), 5);
    let first = store.events_after(0, 1, false).unwrap();
    assert_eq!(first[0].seq, 6);
    // Much later: everything published goes, nothing pending.
    assert_eq!(store.prune(T0 + 1_000_000).unwrap(), 10);
    let left: Vec<u64> = store
        .events_after(0, 100, false)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(left, (16..=20).collect::<Vec<_>>());
    assert_eq!(store.stats().unwrap().pending, 5);
}

#[test]
fn sun_counters_are_stored_per_uid_and_never_lowered() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, 1 << 20, FullPolicy::DropOldest);
    let mut store = Store::open(&cfg, "dock-01").unwrap();
    let uid = [0x04, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66];
    assert_eq!(store.sun_counter(&uid).unwrap(), None);
    store.set_sun_counter(&uid, 5).unwrap();
    store.set_sun_counter(&uid, 3).unwrap();
    assert_eq!(store.sun_counter(&uid).unwrap(), Some(5));
    store.set_sun_counter(&uid, 0x00ff_ffff).unwrap();
    assert_eq!(store.sun_counter(&uid).unwrap(), Some(0x00ff_ffff));
    assert_eq!(store.sun_counter(&[1, 2, 3]).unwrap(), None);
    drop(store);
    // Persisted, and visible to a second connection.
    let reader = Store::open_reader(&cfg, "dock-01").unwrap();
    assert_eq!(reader.sun_counter(&uid).unwrap(), Some(0x00ff_ffff));
}

#[test]
fn garbage_file_is_moved_aside_and_a_fresh_store_started() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, 1 << 20, FullPolicy::DropOldest);
    let garbage: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + 13) as u8).collect();
    std::fs::write(&cfg.path, &garbage).unwrap();
    let wal = dir.path().join("events.db-wal");
    std::fs::write(&wal, b"not a wal either").unwrap();

    let logs = capture_logs(|| {
        let mut store = Store::open(&cfg, "dock-01").unwrap();
        // Nothing could be read from garbage: the fresh store starts with
        // the `salvage` event saying so.
        let first = store.events_after(0, 10, false).unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].event_type, "salvage");
        let v: Value = serde_json::from_str(&first[0].payload).unwrap();
        assert_eq!(v["carried"], 0);
        assert!(
            v["reason"].as_str().unwrap().contains("salvage failed"),
            "{v}"
        );
        let evs = store.append(vec![draft(1)]).unwrap();
        assert_eq!(evs[0].seq, 2);
        assert!(store.quick_check().unwrap());
    });

    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let moved: Vec<&String> = names
        .iter()
        .filter(|n| n.starts_with("events.db.corrupt-") && !n.ends_with("-wal"))
        .collect();
    assert_eq!(moved.len(), 1, "{names:?}");
    // Moved, never deleted: the bytes are intact.
    assert_eq!(std::fs::read(dir.path().join(moved[0])).unwrap(), garbage);
    eprintln!("{names:?}");
    let moved_wal = format!("{}-wal", moved[0]);
    assert_eq!(
        std::fs::read(dir.path().join(&moved_wal)).unwrap(),
        b"not a wal either"
    );
    assert!(logs.contains("ERROR"), "{logs}");
    assert!(logs.contains(&cfg.path.display().to_string()), "{logs}");
    assert!(logs.contains(moved[0].as_str()), "{logs}");
}

#[test]
fn damaged_pages_move_the_file_aside_and_every_readable_unpublished_event_is_carried_with_its_id() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, 10 << 20, FullPolicy::DropOldest);
    let (old_store, written) = {
        let mut store = Store::open(&cfg, "dock-01").unwrap();
        let written = store.append((0..2000).map(draft).collect()).unwrap();
        store.checkpoint().unwrap();
        (store.store_id().to_owned(), written)
    };
    // Scribble over the middle of the file, keeping the header valid.
    let mut bytes = std::fs::read(&cfg.path).unwrap();
    assert!(bytes.len() > 64 * 1024);
    for b in &mut bytes[16 * 1024..48 * 1024] {
        *b = 0xA5;
    }
    std::fs::write(&cfg.path, &bytes).unwrap();

    let mut store = Store::open(&cfg, "dock-01").unwrap();
    assert_ne!(store.store_id(), old_store, "a fresh store started");
    let all = store.events_after(0, 10_000, false).unwrap();
    let (announce, carried) = all.split_last().unwrap();
    assert_eq!(announce.event_type, "salvage");
    let v: Value = serde_json::from_str(&announce.payload).unwrap();
    assert_eq!(v["from_store"], old_store.as_str());
    assert_eq!(v["bounds_known"], true);
    let lost = v["lost"].as_u64().unwrap();
    assert_eq!(v["carried"].as_u64().unwrap(), carried.len() as u64);
    assert_eq!(carried.len() as u64 + lost, 2000, "{v}");
    assert!(lost > 0 && carried.len() > 1000, "{v}");
    let listed: u64 = v["missing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[1].as_u64().unwrap() - r[0].as_u64().unwrap() + 1)
        .sum();
    assert_eq!(listed, lost);
    // Carried unchanged, in order: the payload keeps the old id and seq.
    let originals: std::collections::HashMap<&str, &str> = written
        .iter()
        .map(|e| (e.id.as_str(), e.payload.as_str()))
        .collect();
    let mut last_old_seq = 0;
    for e in carried {
        assert_eq!(originals.get(e.id.as_str()), Some(&e.payload.as_str()));
        let old_seq: u64 = serde_json::from_str::<Value>(&e.payload).unwrap()["seq"]
            .as_u64()
            .unwrap();
        assert!(old_seq > last_old_seq);
        last_old_seq = old_seq;
    }
    assert_eq!(
        store.append(vec![draft(1)]).unwrap()[0].seq,
        all.len() as u64 + 1
    );
    let moved = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            let n = e.as_ref().unwrap().file_name();
            let n = n.to_string_lossy();
            n.starts_with("events.db.corrupt-") && !n.ends_with("-wal") && !n.ends_with("-shm")
        })
        .count();
    assert_eq!(moved, 1);
}

#[test]
fn replay_counters_survive_a_corrupt_store_being_moved_aside() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, 10 << 20, FullPolicy::DropOldest);
    let uid = [0x04, 0x21, 0x22, 0x23, 0x24, 0x25, 0x80];
    let root_page: u64 = {
        let mut store = Store::open(&cfg, "dock-01").unwrap();
        store.set_sun_counter(&uid, 41).unwrap();
        store.append((0..2000).map(draft).collect()).unwrap();
        store.checkpoint().unwrap();
        let c = Connection::open(&cfg.path).unwrap();
        c.query_row(
            "SELECT rootpage FROM sqlite_master WHERE name = 'sun_counters'",
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    // Damage 8 pages of events well past the counters' own page (and page 1,
    // the schema), as a failing SD card would.
    let page = 4096usize;
    let start = (root_page as usize + 8) * page;
    let mut bytes = std::fs::read(&cfg.path).unwrap();
    assert!(bytes.len() > start + 8 * page, "{} bytes", bytes.len());
    for b in &mut bytes[start..start + 8 * page] {
        *b = 0xA5;
    }
    std::fs::write(&cfg.path, &bytes).unwrap();

    let store = Store::open(&cfg, "dock-01").unwrap();
    let salvage = store.events_after(0, 10_000, false).unwrap().pop().unwrap();
    assert_eq!(salvage.event_type, "salvage", "a fresh store started");
    assert_eq!(
        store.sun_counter(&uid).unwrap(),
        Some(41),
        "the counter came along, so an old URL is still a replay"
    );
}

#[test]
fn empty_database_at_user_version_0_is_migrated_to_the_current_schema() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, 1 << 20, FullPolicy::DropOldest);
    {
        let c = Connection::open(&cfg.path).unwrap();
        c.execute_batch("CREATE TABLE unrelated (x); INSERT INTO unrelated VALUES (1);")
            .unwrap();
        let v: i64 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, 0);
    }
    let mut store = Store::open(&cfg, "dock-01").unwrap();
    store.append(vec![draft(1)]).unwrap();
    store.set_sun_counter(&[1], 1).unwrap();
    drop(store);
    let c = Connection::open(&cfg.path).unwrap();
    let v: i64 = c
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, SCHEMA_VERSION);
    let mode: String = c
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    // Not treated as corrupt: other content is left alone.
    let x: i64 = c
        .query_row("SELECT x FROM unrelated", [], |r| r.get(0))
        .unwrap();
    assert_eq!(x, 1);
}

#[test]
fn version_1_database_is_migrated_forward_keeping_its_events() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, 1 << 20, FullPolicy::DropOldest);
    {
        // The version-1 schema as released (events + meta, no SUN table), with
        // a meta table that predates last_seq tracking.
        let c = Connection::open(&cfg.path).unwrap();
        c.execute_batch(
            "CREATE TABLE meta (key TEXT PRIMARY KEY NOT NULL, value) WITHOUT ROWID;
             CREATE TABLE events (seq INTEGER PRIMARY KEY NOT NULL, id TEXT NOT NULL,
                 event_type TEXT NOT NULL, event_utc_ms INTEGER NOT NULL,
                 payload TEXT NOT NULL);
             INSERT INTO meta VALUES ('store_id', '00112233aabbccdd');
             INSERT INTO events VALUES (41, 'old:00112233aabbccdd:41', 'arrived', 5, '{}');
             INSERT INTO events VALUES (42, 'old:00112233aabbccdd:42', 'arrived', 6, '{}');
             PRAGMA user_version = 1;",
        )
        .unwrap();
    }
    let mut store = Store::open(&cfg, "dock-01").unwrap();
    assert_eq!(store.store_id(), "00112233aabbccdd");
    let old = store.events_after(0, 10, false).unwrap();
    assert_eq!(
        old.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        vec!["old:00112233aabbccdd:41", "old:00112233aabbccdd:42"]
    );
    // Seq continues above existing rows, never reusing them.
    assert_eq!(store.append(vec![draft(7)]).unwrap()[0].seq, 43);
    store.set_sun_counter(&[9], 9).unwrap();
    assert_eq!(store.sun_counter(&[9]).unwrap(), Some(9));
}

#[test]
fn newer_schema_is_refused_and_left_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, 1 << 20, FullPolicy::DropOldest);
    {
        let c = Connection::open(&cfg.path).unwrap();
        c.execute_batch(&format!("PRAGMA user_version = {};", SCHEMA_VERSION + 1))
            .unwrap();
    }
    match Store::open(&cfg, "dock-01") {
        Err(StoreError::SchemaMismatch { found, .. }) => assert_eq!(found, SCHEMA_VERSION + 1),
        other => panic!("expected SchemaMismatch, got {other:?}"),
    }
    let names = std::fs::read_dir(dir.path()).unwrap().count();
    assert!(cfg.path.exists());
    assert!(names >= 1);
    assert!(!std::fs::read_dir(dir.path()).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .contains("corrupt")));
}

#[test]
fn reader_on_a_missing_store_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, 1 << 20, FullPolicy::DropOldest);
    let err = Store::open_reader(&cfg, "dock-01").unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("events.db"));
    assert!(!cfg.path.exists(), "a reader must not create the store");
}

#[test]
fn invalid_configuration_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, 1 << 20, FullPolicy::DropOldest);
    let e = Store::open(&cfg, "dock:01").unwrap_err();
    assert!(e.to_string().contains("gateway_id"), "{e}");
    let small = config(&dir, 4096, FullPolicy::DropOldest);
    let e = Store::open(&small, "dock-01").unwrap_err();
    assert!(e.to_string().contains("max_bytes"), "{e}");
}

#[test]
fn reader_sees_writer_commits_and_can_raise_the_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, 10 << 20, FullPolicy::DropOldest);
    let mut writer = Store::open(&cfg, "dock-01").unwrap();
    let mut reader = Store::open_reader(&cfg, "dock-01").unwrap();
    assert_eq!(reader.store_id(), writer.store_id());
    writer.append((0..5).map(draft).collect()).unwrap();
    assert_eq!(reader.events_after(0, 10, true).unwrap().len(), 5);
    reader.mark_published(3).unwrap();
    assert_eq!(writer.stats().unwrap().published_upto, 3);
    assert_eq!(writer.events_after(0, 10, true).unwrap().len(), 2);
}

#[test]
fn an_empty_append_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, 1 << 20, FullPolicy::DropOldest);
    let mut store = Store::open(&cfg, "dock-01").unwrap();
    store.append(vec![draft(1)]).unwrap();
    assert!(store.append(Vec::new()).unwrap().is_empty());
    let out = store.append_detailed(&[]).unwrap();
    assert_eq!(out.last_seq, 1);
    assert_eq!(store.append(vec![draft(2)]).unwrap()[0].seq, 2);
}

#[test]
fn a_new_store_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir, 10 << 20, FullPolicy::DropOldest);
    cfg.path = dir.path().join("new/data/events.db");
    let mut store = Store::open(&cfg, "dock-01").unwrap();
    store.append(vec![draft(1)]).unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir.path().join("new")), 0o700);
    assert_eq!(mode(&dir.path().join("new/data")), 0o700);
    for file in [
        "events.db",
        "events.db-wal",
        "events.db-shm",
        "events.db-reserve",
    ] {
        let p = dir.path().join("new/data").join(file);
        assert_eq!(mode(&p), 0o600, "{file}");
    }
}

#[test]
fn a_store_whose_shm_cannot_be_created_is_still_read_without_writing_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, 10 << 20, FullPolicy::DropOldest);
    {
        let mut store = Store::open(&cfg, "dock-01").unwrap();
        store.append(vec![draft(1), draft(2)]).unwrap();
    }
    // As on a read-only mount after a clean stop: no -wal, no -shm, and no
    // way to create one (a directory is in the way).
    for leftover in ["events.db-wal", "events.db-shm"] {
        let _ = std::fs::remove_file(dir.path().join(leftover));
    }
    std::fs::create_dir(dir.path().join("events.db-shm")).unwrap();
    let before = std::fs::read(&cfg.path).unwrap();
    let store = Store::open_read_only(&cfg, "dock-01").unwrap();
    let events = store.events_after(0, 100, false).unwrap();
    assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
    drop(store);
    assert_eq!(
        std::fs::read(&cfg.path).unwrap(),
        before,
        "the file was written"
    );
}
