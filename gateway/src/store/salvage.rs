//! Salvage after corruption. When the store is found corrupt at start it is
//! moved aside (kept byte for byte as evidence) and a fresh store started;
//! then everything that can still be read from the old file and matters
//! is carried over:
//!
//! - the NFC replay counters (without them every URL ever tapped here would
//!   verify as genuine once more);
//! - every unpublished event, unchanged: its payload keeps its original `id`
//!   and `seq`, so the registry deduplicates it like any resend. In the
//!   fresh store it gets the next local seq, which only orders the outbox.
//!
//! What could not be read is counted and announced in a `salvage` event,
//! the way `overflow` announces what a full store dropped.
//!
//! The old file is read through a copy: opening the moved file itself would
//! replay its WAL into it and create a `-shm`. A damaged B-tree can fail a
//! scan in the middle, so events are read in chunks by seq, and past a
//! chunk that cannot be read the scan skips ahead (doubling the step) until
//! rows come back or the old store's last seq is passed.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::append::{insert_event, keep_sun_counter, read_meta};
use crate::event::{EventKind, OverflowEvent, SalvageEvent};

/// One unpublished event as the old store held it.
struct OldRow {
    seq: u64,
    id: String,
    event_type: String,
    event_utc_ms: i64,
    payload: String,
}

/// What could be read from the moved file.
#[derive(Default)]
struct OldStore {
    store_id: Option<String>,
    /// `(published_upto, last_seq)` when the meta table could be read.
    bounds: Option<(u64, u64)>,
    counters: Vec<(Vec<u8>, i64)>,
    counters_error: Option<String>,
    events: Vec<OldRow>,
}

/// What salvage carried; logged by the caller and turned into the
/// `salvage` event.
#[derive(Debug)]
pub struct Salvaged {
    pub counters: Result<usize, String>,
    pub event: SalvageEvent,
}

/// Rows read per query.
const CHUNK: i64 = 512;
/// Largest skip over unreadable seqs before giving up when the old store's
/// last seq is unknown.
const MAX_BLIND_SKIPS: u32 = 32;

/// Reads the moved-aside file `moved` and carries its counters and
/// unpublished events into `fresh` (a store just created, in one
/// transaction). `Err` only when nothing at all could be read.
pub fn salvage(moved: &Path, fresh: &mut Connection, reason: &str) -> Result<Salvaged, String> {
    let old = read_copy(moved)?;
    let tx = fresh.transaction().map_err(|e| e.to_string())?;
    let mut counters = 0;
    for (uid, counter) in &old.counters {
        // Counters are u32 on the tag; anything else in the table is damage.
        let Ok(counter) = u32::try_from(*counter) else {
            continue;
        };
        keep_sun_counter(&tx, uid, counter).map_err(|e| e.to_string())?;
        counters += 1;
    }
    let meta = read_meta(&tx).map_err(|e| e.to_string())?;
    let mut seq = meta.last_seq;
    for row in &old.events {
        seq += 1;
        insert_event(
            &tx,
            seq,
            &row.id,
            &row.event_type,
            row.event_utc_ms,
            &row.payload,
        )
        .map_err(|e| e.to_string())?;
    }
    tx.execute(
        "UPDATE meta SET value = ?1 WHERE key = 'last_seq'",
        [i64::try_from(seq).unwrap_or(i64::MAX)],
    )
    .map_err(|e| e.to_string())?;
    tx.commit().map_err(|e| e.to_string())?;

    let (missing, lost) = missing_seqs(&old);
    Ok(Salvaged {
        counters: match old.counters_error {
            Some(e) if old.counters.is_empty() => Err(e),
            _ => Ok(counters),
        },
        event: SalvageEvent {
            from_store: old.store_id.clone(),
            moved_to: moved.display().to_string(),
            reason: reason.to_owned(),
            carried: old.events.len() as u64,
            missing,
            lost,
            bounds_known: old.bounds.is_some(),
        },
    })
}

/// Unpublished seqs that were neither carried nor announced by a carried
/// `overflow` event, as ranges (capped) and their total.
fn missing_seqs(old: &OldStore) -> (Vec<(u64, u64)>, u64) {
    let carried_max = old.events.last().map_or(0, |r| r.seq);
    let (from, to) = match old.bounds {
        // Read from a damaged file: no arithmetic on them may overflow.
        Some((published, last)) => (published.saturating_add(1), last.max(carried_max)),
        None => (old.events.first().map_or(1, |r| r.seq), carried_max),
    };
    let mut announced: Vec<(u64, u64)> = old
        .events
        .iter()
        .filter(|r| r.event_type == EventKind::Overflow.as_str())
        .filter_map(|r| {
            let v: serde_json::Value = serde_json::from_str(&r.payload).ok()?;
            let o: OverflowEvent = serde_json::from_value(v).ok()?;
            Some((o.first_seq?, o.last_seq?))
        })
        .collect();
    announced.sort_unstable();
    let mut ranges = Vec::new();
    let mut lost = 0u64;
    let mut push = |a: u64, b: u64| {
        // Remove what an overflow event already announced.
        let mut start = a;
        for &(x, y) in &announced {
            if y < start || x > b {
                continue;
            }
            if x > start {
                lost += x - start;
                if ranges.len() < SalvageEvent::MAX_RANGES {
                    ranges.push((start, x - 1));
                }
            }
            start = start.max(y.saturating_add(1));
        }
        if start <= b {
            lost += b - start + 1;
            if ranges.len() < SalvageEvent::MAX_RANGES {
                ranges.push((start, b));
            }
        }
    };
    let mut expect = from;
    for r in &old.events {
        if r.seq > expect {
            push(expect, r.seq - 1);
        }
        expect = expect.max(r.seq.saturating_add(1));
    }
    if expect <= to {
        push(expect, to);
    }
    (ranges, lost)
}

/// Copies the moved file (and its WAL) and reads the copy.
fn read_copy(moved: &Path) -> Result<OldStore, String> {
    let copy = PathBuf::from(format!("{}.salvage", moved.display()));
    let copy_wal = PathBuf::from(format!("{}-wal", copy.display()));
    let result = (|| {
        std::fs::copy(moved, &copy).map_err(|e| format!("copying the file: {e}"))?;
        let wal = PathBuf::from(format!("{}-wal", moved.display()));
        if wal.exists() {
            std::fs::copy(&wal, &copy_wal).map_err(|e| format!("copying its WAL: {e}"))?;
        }
        read_old(&copy)
    })();
    for p in [
        copy.clone(),
        copy_wal,
        PathBuf::from(format!("{}-shm", copy.display())),
    ] {
        let _ = std::fs::remove_file(p);
    }
    result
}

fn read_old(path: &Path) -> Result<OldStore, String> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| e.to_string())?;
    let mut old = OldStore {
        store_id: conn
            .query_row("SELECT value FROM meta WHERE key = 'store_id'", [], |r| {
                r.get(0)
            })
            .optional()
            .ok()
            .flatten(),
        bounds: read_meta(&conn)
            .ok()
            .map(|m| (m.published_upto, m.last_seq)),
        ..OldStore::default()
    };
    match read_counters(&conn) {
        Ok(c) => old.counters = c,
        Err(e) => old.counters_error = Some(e),
    }
    let after = old.bounds.map_or(0, |(published, _)| published);
    old.events = read_events(&conn, after, old.bounds.map(|(_, last)| last));
    if old.store_id.is_none()
        && old.bounds.is_none()
        && old.events.is_empty()
        && old.counters.is_empty()
    {
        return Err(old
            .counters_error
            .unwrap_or_else(|| "nothing in the file could be read".into()));
    }
    Ok(old)
}

fn read_counters(conn: &Connection) -> Result<Vec<(Vec<u8>, i64)>, String> {
    let mut stmt = conn
        .prepare("SELECT uid, counter FROM sun_counters")
        .map_err(|e| e.to_string())?;
    let mapped = stmt
        .query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?)))
        .map_err(|e| e.to_string())?;
    mapped.collect::<Result<_, _>>().map_err(|e| e.to_string())
}

/// Every readable event with a seq above `after`, in seq order.
fn read_events(conn: &Connection, after: u64, last_seq: Option<u64>) -> Vec<OldRow> {
    let mut rows: Vec<OldRow> = Vec::new();
    let mut next = after;
    let mut skip = 1u64;
    let mut blind_skips = 0;
    loop {
        let (chunk, failed) = read_chunk(conn, next);
        let got = chunk.len();
        if let Some(last) = chunk.last() {
            next = last.seq;
            skip = 1;
        }
        rows.extend(chunk);
        if !failed {
            if (got as i64) < CHUNK {
                break;
            }
            continue;
        }
        // The scan hit damage after `next`: step over it.
        next = next.saturating_add(skip);
        skip = skip.saturating_mul(2).min(1 << 16);
        match last_seq {
            Some(last) if next >= last => break,
            None => {
                blind_skips += 1;
                if blind_skips > MAX_BLIND_SKIPS {
                    break;
                }
            }
            Some(_) => {}
        }
    }
    rows
}

/// Up to [`CHUNK`] rows above `after`; `true` when the read stopped on an
/// error (the rows before it are returned).
fn read_chunk(conn: &Connection, after: u64) -> (Vec<OldRow>, bool) {
    let mut out = Vec::new();
    let Ok(mut stmt) = conn.prepare(
        "SELECT seq, id, event_type, event_utc_ms, payload FROM events
         WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    ) else {
        return (out, true);
    };
    let Ok(mut rows) = stmt.query(rusqlite::params![
        i64::try_from(after).unwrap_or(i64::MAX),
        CHUNK
    ]) else {
        return (out, true);
    };
    loop {
        match rows.next() {
            Ok(Some(r)) => {
                let row = (|| {
                    Ok::<_, rusqlite::Error>(OldRow {
                        seq: u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
                        id: r.get(1)?,
                        event_type: r.get(2)?,
                        event_utc_ms: r.get(3)?,
                        payload: r.get(4)?,
                    })
                })();
                match row {
                    // A row with a mangled payload is not an event to send.
                    Ok(row) if serde_json::from_str::<serde_json::Value>(&row.payload).is_ok() => {
                        out.push(row)
                    }
                    Ok(_) | Err(_) => {}
                }
            }
            Ok(None) => return (out, false),
            Err(_) => return (out, true),
        }
    }
}
