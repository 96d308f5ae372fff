//! The commit path: seq assignment, the size bound, full policies, overflow
//! events, and retention pruning. See the module docs of `store` for the rules.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

use super::{from_i64, to_i64, EventDraft, FullPolicy, Store, StoreError, StoredEvent};
use crate::event::{
    Event, EventBody, OverflowEvent, OverflowPolicy, SunReplayCheck, SunVerdict, UtcMs,
};

/// What one commit did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AppendOutcome {
    /// Events stored by this commit and still present, in seq order: the
    /// accepted drafts and any `overflow` event.
    pub events: Vec<StoredEvent>,
    /// How many leading groups (write requests; drafts for `append`) were
    /// stored. Groups after these were refused (`reject_new`).
    pub accepted_groups: usize,
    /// Drafts refused by `reject_new` in this commit.
    pub rejected: u64,
    /// Stored rows (events or older overflow records) deleted by
    /// `drop_oldest` in this commit.
    pub dropped: u64,
    /// `meta.last_seq` after the commit.
    pub last_seq: u64,
}

/// Counts not yet written as an `overflow` event (kept in meta as JSON).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LostRange {
    pub count: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub from_ms: i64,
    pub to_ms: i64,
}

impl LostRange {
    fn add(&mut self, seqs: Option<(u64, u64)>, count: u64, from_ms: i64, to_ms: i64) {
        if count == 0 {
            return;
        }
        if self.count == 0 {
            self.from_ms = from_ms;
            self.to_ms = to_ms;
        } else {
            self.from_ms = self.from_ms.min(from_ms);
            self.to_ms = self.to_ms.max(to_ms);
        }
        if let Some((a, b)) = seqs {
            self.first_seq = Some(self.first_seq.map_or(a, |f| f.min(a)));
            self.last_seq = Some(self.last_seq.map_or(b, |l| l.max(b)));
        }
        self.count += count;
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Meta {
    pub last_seq: u64,
    pub published_upto: u64,
    pub dropped_total: u64,
    pub overflow_pending: Option<LostRange>,
}

pub fn read_meta(conn: &Connection) -> rusqlite::Result<Meta> {
    let mut stmt = conn.prepare_cached(
        "SELECT key, value FROM meta
         WHERE key IN ('last_seq', 'published_upto', 'dropped_total', 'overflow_pending')",
    )?;
    let mut rows = stmt.query([])?;
    let mut meta = Meta::default();
    while let Some(row) = rows.next()? {
        let key: String = row.get(0)?;
        match key.as_str() {
            "last_seq" => meta.last_seq = from_i64(row.get(1)?),
            "published_upto" => meta.published_upto = from_i64(row.get(1)?),
            "dropped_total" => meta.dropped_total = from_i64(row.get(1)?),
            "overflow_pending" => {
                let text: Option<String> = row.get(1)?;
                meta.overflow_pending = text.and_then(|t| serde_json::from_str(&t).ok());
            }
            _ => {}
        }
    }
    Ok(meta)
}

/// Pages in use, in bytes; inside a write transaction this includes its own
/// uncommitted changes.
pub fn used_bytes(conn: &Connection, page_size: u64) -> rusqlite::Result<u64> {
    // Cached: run in every commit, and parsing them cost more than running them.
    let pages: i64 = conn
        .prepare_cached("PRAGMA page_count")?
        .query_row([], |r| r.get(0))?;
    let free: i64 = conn
        .prepare_cached("PRAGMA freelist_count")?
        .query_row([], |r| r.get(0))?;
    Ok(from_i64(pages.saturating_sub(free)).saturating_mul(page_size))
}

/// `BEGIN IMMEDIATE` … `COMMIT` with prepared statements kept in the
/// connection's cache: rusqlite's `Transaction` parses both again on every
/// commit, which cost about 1 % of the daemon at 1,500 events/s. Rolls
/// back when dropped uncommitted (an error on the way, or a failed COMMIT).
pub(super) struct WriteTx<'c> {
    conn: &'c Connection,
    open: bool,
}

impl<'c> WriteTx<'c> {
    pub(super) fn begin(conn: &'c Connection) -> rusqlite::Result<Self> {
        conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        Ok(Self { conn, open: true })
    }

    pub(super) fn commit(mut self) -> rusqlite::Result<()> {
        self.conn.prepare_cached("COMMIT")?.execute([])?;
        self.open = false;
        Ok(())
    }
}

impl std::ops::Deref for WriteTx<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.conn
    }
}

impl Drop for WriteTx<'_> {
    fn drop(&mut self) {
        // A failed COMMIT may already have ended the transaction (SQLite
        // rolls back by itself after some errors).
        if self.open && !self.conn.is_autocommit() {
            if let Err(e) = self.conn.execute_batch("ROLLBACK") {
                tracing::warn!(error = %e, "rolling back a failed commit failed");
            }
        }
    }
}

/// A draft turned into a row with its final seq.
struct Row {
    seq: u64,
    id: String,
    event_type: &'static str,
    event_utc_ms: i64,
    payload: String,
    /// The SUN replay decision of a tap, acted on if this row is stored.
    sun: Option<SunDecision>,
}

struct SunDecision {
    verdict: SunVerdict,
    check: SunReplayCheck,
    reader: String,
}

impl Row {
    /// Bytes the row takes in a table leaf, roughly (cell header, rowid and
    /// integer columns). Only used to choose how much to make room for; the
    /// bound itself is checked on real page counts.
    fn estimate(&self) -> u64 {
        (self.payload.len() + self.id.len() + self.event_type.len() + 24) as u64
    }

    fn into_event(self) -> StoredEvent {
        StoredEvent {
            seq: self.seq,
            id: self.id,
            event_type: self.event_type.to_owned(),
            event_utc_ms: self.event_utc_ms,
            payload: self.payload,
        }
    }
}

/// Numbers `event` and serialises it: the one serialisation of every event.
fn make_row(gateway_id: &str, store_id: &str, event: &Event, seq: u64) -> rusqlite::Result<Row> {
    // Pushed rather than `format!`ed: once per event on the commit path.
    let mut id = String::with_capacity(gateway_id.len() + store_id.len() + 22);
    id.push_str(gateway_id);
    id.push(':');
    id.push_str(store_id);
    id.push(':');
    id.push_str(itoa::Buffer::new().format(seq));
    // Serialising the event types cannot fail (string keys, no fallible
    // Serialize impls); should it ever, the commit fails and is retried
    // rather than storing an empty payload.
    let payload = event
        .to_json_numbered(&id, seq)
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    Ok(Row {
        seq,
        id,
        event_type: event.kind().as_str(),
        event_utc_ms: event.time.0,
        payload,
        sun: None,
    })
}

/// SUN replay decisions within one commit. The first time a UID comes up
/// its stored counter is read inside the transaction; later drafts of the
/// same commit see the counters of the earlier ones, and the drafts of one
/// tap (one per read point covering the reader) share one verdict.
#[derive(Default)]
struct SunCounters {
    /// UID → highest counter known so far in this commit.
    highest: HashMap<Vec<u8>, Option<u32>>,
    /// (check, reader, time) of taps decided in this commit.
    decided: HashMap<(SunReplayCheck, String, UtcMs), SunVerdict>,
}

impl SunCounters {
    fn verdict(
        &mut self,
        conn: &Connection,
        check: &SunReplayCheck,
        reader: &str,
        time: UtcMs,
    ) -> rusqlite::Result<SunVerdict> {
        let tap = (check.clone(), reader.to_owned(), time);
        if let Some(&v) = self.decided.get(&tap) {
            return Ok(v);
        }
        let last = match self.highest.get(&check.uid) {
            Some(&known) => known,
            None => stored_sun_counter(conn, &check.uid)?,
        };
        let verdict = if tracegate_drivers::nfc::sun::replay_verdict(check.counter, last) {
            SunVerdict::Replayed
        } else {
            SunVerdict::Genuine
        };
        let highest = last.map_or(check.counter, |l| l.max(check.counter));
        self.highest.insert(check.uid.clone(), Some(highest));
        self.decided.insert(tap, verdict);
        Ok(verdict)
    }
}

pub(super) fn stored_sun_counter(conn: &Connection, uid: &[u8]) -> rusqlite::Result<Option<u32>> {
    let mut stmt = conn.prepare_cached("SELECT counter FROM sun_counters WHERE uid = ?1")?;
    let v: Option<i64> = stmt.query_row([uid], |r| r.get(0)).optional()?;
    Ok(v.map(|c| u32::try_from(c).unwrap_or(u32::MAX)))
}

/// Keeps a SUN counter; the stored value only grows, so a replay can never
/// reopen a window.
pub(super) fn keep_sun_counter(
    conn: &Connection,
    uid: &[u8],
    counter: u32,
) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO sun_counters (uid, counter) VALUES (?1, ?2)
         ON CONFLICT (uid) DO UPDATE SET counter = max(counter, excluded.counter)",
    )?;
    stmt.execute(rusqlite::params![uid, i64::from(counter)])?;
    Ok(())
}

/// The row of one draft: a tap with a SUN replay check gets its verdict
/// (and `replayed_nfc` flag) here, inside the commit.
fn draft_row(
    conn: &Connection,
    gateway_id: &str,
    store_id: &str,
    draft: &EventDraft,
    seq: u64,
    sun: &mut SunCounters,
) -> rusqlite::Result<Row> {
    let (Some(check), EventBody::Tap(tap)) = (&draft.replay, &draft.event.body) else {
        return make_row(gateway_id, store_id, &draft.event, seq);
    };
    let verdict = sun.verdict(conn, check, &tap.at.reader, draft.event.time)?;
    let mut event = draft.event.clone();
    if let EventBody::Tap(tap) = &mut event.body {
        tap.set_sun_verdict(verdict);
    }
    let mut row = make_row(gateway_id, store_id, &event, seq)?;
    row.sun = Some(SunDecision {
        verdict,
        check: check.clone(),
        reader: tap.at.reader.clone(),
    });
    Ok(row)
}

/// Counts and logs the SUN verdicts decided in a commit, once it is durable.
fn report_sun_verdicts(decided: &[SunDecision]) {
    for d in decided {
        if d.verdict == SunVerdict::Replayed {
            tracing::warn!(event = "nfc.sun_suspicious", reader = %d.reader, uid = %hex::encode_upper(&d.check.uid), counter = d.check.counter, verdict = d.verdict.as_str(), "NFC tap failed authenticity verification");
        }
        metrics::counter!("tracegate_nfc_sun_total", "verdict" => d.verdict.as_str()).increment(1);
    }
}

fn insert_row(conn: &Connection, row: &Row) -> rusqlite::Result<()> {
    insert_event(
        conn,
        row.seq,
        &row.id,
        row.event_type,
        row.event_utc_ms,
        &row.payload,
    )
}

/// Inserts one event row; the commit path and salvage share it.
pub(super) fn insert_event(
    conn: &Connection,
    seq: u64,
    id: &str,
    event_type: &str,
    event_utc_ms: i64,
    payload: &str,
) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO events (seq, id, event_type, event_utc_ms, payload)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    stmt.execute(rusqlite::params![
        to_i64(seq),
        id,
        event_type,
        event_utc_ms,
        payload
    ])?;
    Ok(())
}

pub fn now_utc_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn overflow_event(gateway_id: &str, policy: FullPolicy, lost: &LostRange, now: i64) -> Event {
    Event::new(
        gateway_id,
        UtcMs(now),
        EventBody::Overflow(OverflowEvent {
            policy: match policy {
                FullPolicy::DropOldest => OverflowPolicy::DropOldest,
                FullPolicy::RejectNew => OverflowPolicy::RejectNew,
            },
            count: lost.count,
            first_seq: lost.first_seq,
            last_seq: lost.last_seq,
            from: UtcMs(lost.from_ms),
            to: UtcMs(lost.to_ms),
        }),
    )
}

/// Deletes every published event (the store is full; retention yields).
fn prune_all_published(conn: &Connection, published_upto: u64) -> rusqlite::Result<usize> {
    conn.execute(
        "DELETE FROM events WHERE seq <= ?1",
        [to_i64(published_upto)],
    )
}

/// Deletes the oldest pending events, at least `need` estimated bytes of
/// them, and records the deleted seq range in `lost`. Earlier `overflow`
/// records inside that range are kept (they are the only account of earlier
/// losses); only when nothing but overflow records is pending do those go,
/// oldest first. Returns how many rows went.
fn drop_oldest_pending(
    conn: &Connection,
    published_upto: u64,
    need: u64,
    lost: &mut LostRange,
) -> rusqlite::Result<u64> {
    for include_records in [false, true] {
        let mut first: Option<i64> = None;
        let mut last = 0i64;
        let mut min_t = i64::MAX;
        let mut max_t = i64::MIN;
        {
            let mut stmt = conn.prepare_cached(
                "SELECT seq, event_utc_ms,
                        length(CAST(payload AS BLOB)) + length(id) + length(event_type) + 24
                 FROM events WHERE seq > ?1 AND (?2 OR event_type != 'overflow')
                 ORDER BY seq",
            )?;
            let mut rows =
                stmt.query(rusqlite::params![to_i64(published_upto), include_records])?;
            let mut sum = 0u64;
            while let Some(row) = rows.next()? {
                let seq: i64 = row.get(0)?;
                let t: i64 = row.get(1)?;
                let size: i64 = row.get(2)?;
                first.get_or_insert(seq);
                last = seq;
                min_t = min_t.min(t);
                max_t = max_t.max(t);
                sum = sum.saturating_add(from_i64(size));
                if sum >= need {
                    break;
                }
            }
        }
        let Some(first) = first else {
            continue;
        };
        let n = conn.execute(
            "DELETE FROM events WHERE seq BETWEEN ?1 AND ?2 AND (?3 OR event_type != 'overflow')",
            rusqlite::params![first, last, include_records],
        )? as u64;
        lost.add(Some((from_i64(first), from_i64(last))), n, min_t, max_t);
        return Ok(n);
    }
    Ok(0)
}

/// Raises the persisted watermark; never lowers it.
pub(super) fn write_published(conn: &Connection, upto: u64) -> rusqlite::Result<()> {
    conn.prepare_cached("UPDATE meta SET value = max(value, ?1) WHERE key = 'published_upto'")?
        .execute([to_i64(upto)])?;
    Ok(())
}

/// Writes the counters of `meta` that differ from `before` (all of them
/// when `before` is not known).
fn write_meta(conn: &Connection, meta: &Meta, before: Option<&Meta>) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached("UPDATE meta SET value = ?2 WHERE key = ?1")?;
    if before.is_none_or(|b| b.last_seq != meta.last_seq) {
        stmt.execute(rusqlite::params!["last_seq", to_i64(meta.last_seq)])?;
    }
    if before.is_none_or(|b| b.dropped_total != meta.dropped_total) {
        stmt.execute(rusqlite::params![
            "dropped_total",
            to_i64(meta.dropped_total)
        ])?;
    }
    if before.is_some_and(|b| b.overflow_pending == meta.overflow_pending) {
        return Ok(());
    }
    let pending = meta
        .overflow_pending
        .filter(|p| p.count > 0)
        .and_then(|p| serde_json::to_string(&p).ok());
    conn.prepare_cached(
        "INSERT INTO meta (key, value) VALUES ('overflow_pending', ?1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?
    .execute([pending])?;
    Ok(())
}

/// `drop_oldest` frees at least the database's share of `max_bytes` /
/// `DROP_CHUNK_DIVISOR` at a time
/// (like segment deletion in Greengrass), so a store that stays full writes
/// one overflow record per chunk, not one per commit.
pub const DROP_CHUNK_DIVISOR: u64 = 16;

/// Minimum time between two overflow warnings of one store.
const WARN_EVERY: Duration = Duration::from_secs(10);

impl Store {
    /// Commits groups of drafts in one transaction (see the module docs),
    /// then holds the WAL to its share of `max_bytes` and puts the space
    /// reserve back if a full disk took it.
    ///
    /// `published_upto`, when given, raises the outbox watermark in the same
    /// transaction (as [`Store::mark_published`] would, clamped to the
    /// committed seqs): under load the writer persists the watermark with
    /// the events instead of paying a transaction and an fsync of its own.
    pub(crate) fn commit_groups(
        &mut self,
        groups: &[&[EventDraft]],
        published_upto: Option<u64>,
    ) -> Result<AppendOutcome, StoreError> {
        let outcome = self.commit_in_one_transaction(groups, published_upto)?;
        self.bound_wal();
        self.keep_reserve();
        Ok(outcome)
    }

    fn commit_in_one_transaction(
        &mut self,
        groups: &[&[EventDraft]],
        published_upto: Option<u64>,
    ) -> Result<AppendOutcome, StoreError> {
        let now = now_utc_ms();
        let Store {
            conn,
            config,
            gateway_id,
            store_id,
            page_size,
            budget,
            last_overflow_warn,
            meta_cache,
            ..
        } = self;
        let path = config.path.clone();
        let err = move |e: rusqlite::Error| StoreError::sqlite("committing events", &path, e);
        let page_size = *page_size;
        let tx = WriteTx::begin(conn).map_err(err.clone())?;
        // Only this connection writes `meta`; after its own commit it knows
        // the values (taken here: a failed commit leaves no cache behind).
        let before = meta_cache.take();
        let mut meta = match &before {
            Some(m) => m.clone(),
            None => read_meta(&tx).map_err(err.clone())?,
        };
        // Only seqs committed before this transaction can be acknowledged.
        let raised = published_upto
            .map(|w| w.min(meta.last_seq))
            .filter(|&w| w > meta.published_upto);
        if let Some(w) = raised {
            meta.published_upto = w;
        }
        let max = config.max_bytes;
        // The database's share: the WAL, its index and the reserve have
        // theirs (budget.rs), so the files together stay within `max`.
        let db_max = budget.db_max();
        let limit = budget.db_limit();

        let mut rows = Vec::new();
        let mut group_ends = Vec::with_capacity(groups.len());
        let mut seq = meta.last_seq;
        let mut sun = SunCounters::default();
        for group in groups {
            for d in group.iter() {
                seq += 1;
                rows.push(
                    draft_row(&tx, gateway_id, store_id, d, seq, &mut sun).map_err(err.clone())?,
                );
            }
            group_ends.push(rows.len());
        }
        if rows.is_empty() && meta.overflow_pending.is_none() {
            // Nothing to write (ack-only requests): no fsync needed, unless
            // the watermark moved.
            if raised.is_some() {
                write_published(&tx, meta.published_upto).map_err(err.clone())?;
            }
            tx.commit().map_err(err.clone())?;
            *meta_cache = Some(meta.clone());
            return Ok(AppendOutcome {
                accepted_groups: groups.len(),
                last_seq: meta.last_seq,
                ..AppendOutcome::default()
            });
        }
        let est_total: u64 = rows.iter().map(Row::estimate).sum();

        let mut used = used_bytes(&tx, page_size).map_err(err.clone())?;
        let mut pruned_published = false;
        if used + est_total > limit {
            prune_all_published(&tx, meta.published_upto).map_err(err.clone())?;
            pruned_published = true;
            used = used_bytes(&tx, page_size).map_err(err.clone())?;
        }

        let mut dropped = LostRange::default();
        let mut dropped_rows = 0u64;
        let mut rejected = LostRange::default();
        let accepted_groups;
        let accepted_rows;
        match config.full_policy {
            FullPolicy::DropOldest => {
                if used + est_total > limit {
                    // Make room before inserting so the file does not grow
                    // past the bound just to shrink again.
                    dropped_rows += drop_oldest_pending(
                        &tx,
                        meta.published_upto,
                        (used + est_total - limit).max(db_max / DROP_CHUNK_DIVISOR),
                        &mut dropped,
                    )
                    .map_err(err.clone())?;
                }
                for row in &rows {
                    insert_row(&tx, row).map_err(err.clone())?;
                }
                loop {
                    used = used_bytes(&tx, page_size).map_err(err.clone())?;
                    if used <= limit {
                        break;
                    }
                    if !pruned_published {
                        prune_all_published(&tx, meta.published_upto).map_err(err.clone())?;
                        pruned_published = true;
                        continue;
                    }
                    let n = drop_oldest_pending(
                        &tx,
                        meta.published_upto,
                        (used - limit + page_size).max(db_max / DROP_CHUNK_DIVISOR),
                        &mut dropped,
                    )
                    .map_err(err.clone())?;
                    if n == 0 {
                        break;
                    }
                    dropped_rows += n;
                }
                accepted_groups = groups.len();
                accepted_rows = rows.len();
            }
            FullPolicy::RejectNew => {
                let mut n = 0usize;
                let mut cum = 0u64;
                let mut start = 0usize;
                for &end in &group_ends {
                    cum += rows[start..end].iter().map(Row::estimate).sum::<u64>();
                    if used + cum > limit {
                        break;
                    }
                    n += 1;
                    start = end;
                }
                loop {
                    if n == 0 {
                        break;
                    }
                    let end = group_ends[n - 1];
                    tx.execute_batch("SAVEPOINT fit").map_err(err.clone())?;
                    for row in &rows[..end] {
                        insert_row(&tx, row).map_err(err.clone())?;
                    }
                    let after = used_bytes(&tx, page_size).map_err(err.clone())?;
                    if after <= limit {
                        tx.execute_batch("RELEASE fit").map_err(err.clone())?;
                        break;
                    }
                    tx.execute_batch("ROLLBACK TO fit; RELEASE fit")
                        .map_err(err.clone())?;
                    // Shrink in proportion to the overshoot (estimates are
                    // close), by at least one group.
                    let grew = after.saturating_sub(used).max(1);
                    let room = limit.saturating_sub(used);
                    let scaled = (n as u128 * room as u128 / grew as u128) as usize;
                    n = scaled.min(n - 1);
                }
                accepted_groups = n;
                accepted_rows = if n == 0 { 0 } else { group_ends[n - 1] };
                let refused = &rows[accepted_rows..];
                if let (Some(min_t), Some(max_t)) = (
                    refused.iter().map(|r| r.event_utc_ms).min(),
                    refused.iter().map(|r| r.event_utc_ms).max(),
                ) {
                    rejected.add(None, refused.len() as u64, min_t, max_t);
                }
            }
        }

        rows.truncate(accepted_rows);
        // Only the counters of stored taps are kept: a refused tap was not
        // observed as far as the registry knows.
        let mut sun_decided = Vec::new();
        for r in &mut rows {
            if let Some(d) = r.sun.take() {
                if d.verdict == SunVerdict::Genuine {
                    keep_sun_counter(&tx, &d.check.uid, d.check.counter).map_err(err.clone())?;
                }
                sun_decided.push(d);
            }
        }
        if let Some(last) = rows.last() {
            meta.last_seq = last.seq;
        }
        // drop_oldest may have removed some of this commit's own rows (a
        // commit larger than the store); those are not "stored".
        let gone_upto = dropped.last_seq.unwrap_or(0);
        let mut events: Vec<StoredEvent> = rows
            .into_iter()
            .filter(|r| r.seq > gone_upto)
            .map(Row::into_event)
            .collect();

        meta.dropped_total += dropped_rows + rejected.count;

        // The overflow record: drop_oldest made room for it below `db_max`;
        // reject_new may find the headroom used up and keeps it pending.
        let mut to_record = meta.overflow_pending.unwrap_or_default();
        let policy = config.full_policy;
        if dropped.count > 0 {
            let ev = write_overflow(&tx, gateway_id, store_id, &mut meta, &dropped, now)
                .map_err(err.clone())?;
            events.push(ev);
        }
        to_record.add(None, rejected.count, rejected.from_ms, rejected.to_ms);
        meta.overflow_pending = None;
        if to_record.count > 0 {
            tx.execute_batch("SAVEPOINT overflow")
                .map_err(err.clone())?;
            let event = overflow_event(gateway_id, FullPolicy::RejectNew, &to_record, now);
            let row =
                make_row(gateway_id, store_id, &event, meta.last_seq + 1).map_err(err.clone())?;
            insert_row(&tx, &row).map_err(err.clone())?;
            if used_bytes(&tx, page_size).map_err(err.clone())? <= db_max {
                tx.execute_batch("RELEASE overflow").map_err(err.clone())?;
                meta.last_seq = row.seq;
                events.push(row.into_event());
            } else {
                tx.execute_batch("ROLLBACK TO overflow; RELEASE overflow")
                    .map_err(err.clone())?;
                meta.overflow_pending = Some(to_record);
            }
        }
        write_meta(&tx, &meta, before.as_ref()).map_err(err.clone())?;
        if raised.is_some() {
            write_published(&tx, meta.published_upto).map_err(err.clone())?;
        }
        tx.commit().map_err(err)?;
        *meta_cache = Some(meta.clone());

        if dropped.count > 0 || rejected.count > 0 {
            let due = last_overflow_warn.is_none_or(|t| t.elapsed() >= WARN_EVERY);
            if due {
                *last_overflow_warn = Some(Instant::now());
                tracing::warn!(
                    path = %config.path.display(),
                    policy = policy.as_str(),
                    max_bytes = max,
                    dropped = dropped_rows,
                    rejected = rejected.count,
                    first_seq = ?dropped.first_seq,
                    last_seq = ?dropped.last_seq,
                    dropped_total = meta.dropped_total,
                    "event store full: events lost by the full policy (recorded as an overflow event)"
                );
            }
        }
        report_sun_verdicts(&sun_decided);
        Ok(AppendOutcome {
            events,
            accepted_groups,
            rejected: rejected.count,
            dropped: dropped.count,
            last_seq: meta.last_seq,
        })
    }

    pub(crate) fn prune_inner(&mut self, now_utc_ms: i64) -> Result<u64, StoreError> {
        let err = |e| StoreError::sqlite("pruning published events", &self.config.path, e);
        let retention_ms =
            i64::try_from(self.config.retention_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        let cutoff = now_utc_ms.saturating_sub(retention_ms);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        let meta = read_meta(&tx).map_err(err)?;
        // Everything below the first young published event goes, as one range.
        let keep_from: Option<i64> = tx
            .query_row(
                "SELECT seq FROM events WHERE seq <= ?1 AND event_utc_ms >= ?2
                 ORDER BY seq LIMIT 1",
                [to_i64(meta.published_upto), cutoff],
                |r| r.get(0),
            )
            .optional()
            .map_err(err)?;
        let upto = match keep_from {
            Some(s) => s - 1,
            None => to_i64(meta.published_upto),
        };
        let n = tx
            .execute("DELETE FROM events WHERE seq <= ?1", [upto])
            .map_err(err)?;
        tx.commit().map_err(err)?;
        if n > 0 {
            tracing::debug!(deleted = n, upto, "pruned published events");
        }
        Ok(n as u64)
    }
}

fn write_overflow(
    conn: &Connection,
    gateway_id: &str,
    store_id: &str,
    meta: &mut Meta,
    lost: &LostRange,
    now: i64,
) -> rusqlite::Result<StoredEvent> {
    let event = overflow_event(gateway_id, FullPolicy::DropOldest, lost, now);
    let row = make_row(gateway_id, store_id, &event, meta.last_seq + 1)?;
    insert_row(conn, &row)?;
    meta.last_seq = row.seq;
    Ok(row.into_event())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_ranges_widen_and_count_every_addition() {
        let mut r = LostRange::default();
        r.add(Some((10, 20)), 11, 500, 900);
        r.add(Some((21, 25)), 5, 400, 950);
        r.add(None, 3, 1000, 1100);
        r.add(None, 0, 1, 2); // nothing lost: no effect on the time range
        assert_eq!(
            r,
            LostRange {
                count: 19,
                first_seq: Some(10),
                last_seq: Some(25),
                from_ms: 400,
                to_ms: 1100,
            }
        );
    }

    #[test]
    fn used_bytes_sees_the_open_transactions_own_inserts() {
        // The size bound relies on this: the check runs before commit.
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (x BLOB)").unwrap();
        let before = used_bytes(&conn, 4096).unwrap();
        let tx = conn.transaction().unwrap();
        for _ in 0..100 {
            tx.execute("INSERT INTO t VALUES (zeroblob(1000))", [])
                .unwrap();
        }
        let inside = used_bytes(&tx, 4096).unwrap();
        assert!(inside >= before + 100 * 1000, "{before} -> {inside}");
        tx.execute("DELETE FROM t", []).unwrap();
        let after_delete = used_bytes(&tx, 4096).unwrap();
        assert!(
            after_delete < inside,
            "freed pages leave the count: {after_delete}"
        );
        tx.rollback().unwrap();
    }

    #[test]
    fn overflow_body_has_the_documented_fields() {
        let lost = LostRange {
            count: 3,
            first_seq: None,
            last_seq: None,
            from_ms: 1_795_823_999_000,
            to_ms: 1_795_823_999_123,
        };
        let e = overflow_event("dock-01", FullPolicy::RejectNew, &lost, 1_795_824_000_000);
        let row = make_row("dock-01", "ab", &e, 7).unwrap();
        assert_eq!(row.event_type, "overflow");
        let b: serde_json::Value = serde_json::from_str(&row.payload).unwrap();
        assert_eq!(b["id"], "dock-01:ab:7");
        assert_eq!(b["seq"], 7);
        assert_eq!(b["type"], "overflow");
        assert_eq!(b["policy"], "reject_new");
        assert_eq!(b["count"], 3);
        assert!(b["first_seq"].is_null() && b["last_seq"].is_null());
        assert_eq!(b["from"], "2026-11-27T23:59:59.000Z");
        assert_eq!(b["to"], "2026-11-27T23:59:59.123Z");
        assert_eq!(b["time"], "2026-11-28T00:00:00.000Z");
        assert!(b.get("site").is_none(), "an overflow has no read context");
    }

    fn tap_draft(read_point: &str, at_ms: i64, counter: u32) -> EventDraft {
        use crate::event::{NfcIdentity, ReadContext, SunResult, TapDetails, TapEvent};
        let uid = vec![0x04, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66];
        let body = TapEvent {
            at: ReadContext {
                site: "dc1".into(),
                read_point: read_point.into(),
                reader: "nfc-1".into(),
                clock_synced: true,
            },
            identity: NfcIdentity {
                uid: uid.clone(),
                gtin: None,
                serial: None,
                lot: None,
                digital_link: None,
                source: None,
            },
            tap: TapDetails {
                tag_type: "ntag424dna".into(),
                ndef_uri: None,
                ndef_text: None,
                atr: vec![0x3b],
            },
            flags: Vec::new(),
            masterdata: None,
            sun: Some(SunResult {
                verdict: SunVerdict::Genuine,
                counter: Some(counter),
                product: None,
                uid: Some(uid.clone()),
                covers: Vec::new(),
            }),
        };
        EventDraft {
            event: Event::new("gw", UtcMs(at_ms), EventBody::Tap(body)),
            replay: Some(SunReplayCheck { uid, counter }),
        }
    }

    fn verdicts(events: &[StoredEvent]) -> Vec<(String, Vec<String>)> {
        events
            .iter()
            .map(|e| {
                let v: serde_json::Value = serde_json::from_str(&e.payload).unwrap();
                let flags = v["flags"]
                    .as_array()
                    .map(|a| a.iter().map(|f| f.as_str().unwrap().to_owned()).collect())
                    .unwrap_or_default();
                (v["sun"]["verdict"].as_str().unwrap().to_owned(), flags)
            })
            .collect()
    }

    /// A 1 MiB store in `dir` (reopened by calling this again).
    fn test_store(dir: &tempfile::TempDir) -> Store {
        let config = super::super::StoreConfig {
            path: dir.path().join("events.db"),
            max_bytes: 1 << 20,
            full_policy: FullPolicy::DropOldest,
            commit_interval_ms: 10,
            commit_age_ms: 0,
            commit_max_events: 100,
            retention_secs: 3600,
        };
        Store::open(&config, "gw").unwrap()
    }

    #[test]
    fn the_sun_counter_is_checked_and_kept_in_the_commit_of_the_tap() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = test_store(&dir);
        let uid = [0x04, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66];
        let genuine = ("genuine".to_owned(), vec![]);
        let replayed = ("replayed".to_owned(), vec!["replayed_nfc".to_owned()]);

        // One tap seen by two read points: one observation, both genuine.
        let out = store
            .append(vec![
                tap_draft("desk", 1_000, 5),
                tap_draft("till", 1_000, 5),
            ])
            .unwrap();
        assert_eq!(verdicts(&out), vec![genuine.clone(), genuine.clone()]);
        assert_eq!(store.sun_counter(&uid).unwrap(), Some(5));

        // The same URL again (a copy), and an older one: replayed, and the
        // stored counter does not move.
        let out = store
            .append(vec![
                tap_draft("desk", 2_000, 5),
                tap_draft("desk", 3_000, 4),
            ])
            .unwrap();
        assert_eq!(verdicts(&out), vec![replayed.clone(), replayed.clone()]);
        assert_eq!(store.sun_counter(&uid).unwrap(), Some(5));

        // Two fresh taps in one commit: the second sees the first's counter.
        let out = store
            .append(vec![
                tap_draft("desk", 4_000, 6),
                tap_draft("desk", 5_000, 6),
                tap_draft("desk", 6_000, 7),
            ])
            .unwrap();
        assert_eq!(verdicts(&out), vec![genuine.clone(), replayed, genuine]);
        assert_eq!(store.sun_counter(&uid).unwrap(), Some(7));
    }

    fn drafts(n: i64) -> Vec<EventDraft> {
        (0..n)
            .map(|i| {
                EventDraft::new(Event::sample_arrival(
                    "gw",
                    "dc1",
                    "door-1",
                    &[0x30; 12],
                    1_795_651_200_000 + i,
                ))
            })
            .collect()
    }

    /// The cached `meta` is what the table holds after every kind of write
    /// the writer makes, including a store that overflows.
    #[test]
    fn the_cached_meta_always_equals_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = test_store(&dir);
        // Every write checked here leaves a cache behind: compare it.
        let check = |s: &Store, what: &str| {
            let cached = s.meta_cache.as_ref().expect("a cached meta");
            assert_eq!(cached, &read_meta(&s.conn).unwrap(), "after {what}");
        };
        for round in 0..40u64 {
            // Big enough to overflow the 1 MiB store after a few rounds.
            s.commit_groups(&[&drafts(200)], (round % 3 == 0).then_some(round * 150))
                .unwrap();
            check(&s, "a commit");
            if round % 5 == 0 {
                s.mark_published(round * 180).unwrap();
                assert!(s.meta_cache.is_none(), "another write to meta clears it");
                s.commit_groups(&[], Some(round * 190)).unwrap();
                check(&s, "an ack-only commit");
            }
            if round % 7 == 0 {
                s.prune_inner(i64::MAX).unwrap();
                check(&s, "a prune");
            }
        }
        let st = s.stats().unwrap();
        assert!(st.dropped_total > 0, "the store overflowed: {st:?}");
    }

    #[test]
    fn a_commit_carries_the_raised_watermark_and_only_up_to_what_was_committed_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = test_store(&dir);
        let first = drafts(5);
        s.commit_groups(&[&first], None).unwrap();
        assert_eq!(s.stats().unwrap().published_upto, 0);

        let second = drafts(3);
        let out = s.commit_groups(&[&second], Some(3)).unwrap();
        assert_eq!(out.last_seq, 8);
        assert_eq!(s.stats().unwrap().published_upto, 3);

        // A value beyond what was committed before this transaction cannot
        // acknowledge the transaction's own events.
        s.commit_groups(&[&drafts(2)], Some(100)).unwrap();
        let st = s.stats().unwrap();
        assert_eq!((st.last_seq, st.published_upto), (10, 8));

        // Never lowered; and an ack-only commit (no drafts) still writes it.
        s.commit_groups(&[], Some(2)).unwrap();
        assert_eq!(s.stats().unwrap().published_upto, 8);
        s.commit_groups(&[], Some(10)).unwrap();
        drop(s);
        assert_eq!(
            test_store(&dir).stats().unwrap().published_upto,
            10,
            "persisted"
        );
    }
}
