//! Master data in SQLite: the verified datasets in force, kept across
//! restarts and power cuts, written only by the writer thread.
//!
//! **Own file.** The datasets live in `masterdata.db` next to `events.db`,
//! ATTACHed to the writer's connection (schema `md`), so a 100 MB dataset
//! never counts against the event store's `max_bytes` and has its own
//! schema version. It is still the writer's one connection that writes it.
//!
//! **Apply without stalling events.** A dataset is applied as a job: each
//! writer loop turn stages ONE piece of a chunk (at most [`PIECE`] bytes) in
//! its own small transaction, between event commits; when every chunk is staged, one short
//! transaction points `md.active` at the new version. The old version's
//! chunks are deleted afterwards, a few rows per transaction (deleting
//! 100 MB in the switch would hold the write lock for a long time). Readers of the index (the pipeline) see the new dataset
//! only after that commit, so a SIGKILL at any moment leaves the old dataset
//! or the new one, never a mix; staged chunks of a version that never became
//! active are deleted at the next start.
//!
//! **Re-verified at start.** What is loaded is checked again against the
//! trusted keys and digests by the caller: a file edited on disk is no
//! way around the signature.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{params, OptionalExtension};
use tokio::sync::{mpsc, oneshot};

use super::{Store, StoreError};

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS md.active (
        name           TEXT PRIMARY KEY NOT NULL,
        version        INTEGER NOT NULL,
        manifest       BLOB NOT NULL,
        applied_utc_ms INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS md.chunks (
        name    TEXT NOT NULL,
        version INTEGER NOT NULL,
        idx     INTEGER NOT NULL,
        part    INTEGER NOT NULL,
        data    BLOB NOT NULL,
        UNIQUE (name, version, idx, part)
    );";

/// Bytes staged per transaction: small enough that an event commit queued
/// behind it waits only a few milliseconds (one 64 KiB write and fsync).
pub const PIECE: usize = 64 * 1024;

/// The master-data file beside the event store.
pub fn path_for(events_db: &Path) -> PathBuf {
    events_db.with_file_name("masterdata.db")
}

/// A dataset to apply: verified (signature, digests, records) by the caller.
#[derive(Debug)]
pub struct MasterdataJob {
    pub name: String,
    pub version: u64,
    /// The signed manifest frame.
    pub manifest: Vec<u8>,
    pub chunks: Vec<Vec<u8>>,
    /// Told once the new version is committed as the one in force (or why
    /// not).
    pub reply: oneshot::Sender<Result<ApplyReport, String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApplyReport {
    pub applied_utc_ms: i64,
    /// From the first staged chunk to the switch.
    pub took: Duration,
    pub transactions: u32,
}

/// A dataset in force as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDataset {
    pub name: String,
    pub version: u64,
    pub manifest: Vec<u8>,
    pub chunks: Vec<Vec<u8>>,
    pub applied_utc_ms: i64,
}

/// Room for jobs in the channel to the writer; the sender waits when full
/// (datasets are rare and large: one being applied and one waiting).
pub const JOB_CHANNEL: usize = 1;

/// The writer's master-data side: the inbox and the job in progress.
#[derive(Debug)]
pub struct Applier {
    inbox: mpsc::Receiver<MasterdataJob>,
    open: bool,
    queue: VecDeque<Progress>,
    /// Datasets switched to a new version whose older chunks are still to
    /// delete.
    cleanup: VecDeque<String>,
}

/// Old chunks deleted per transaction after a switch (each up to 512 KiB).
const CLEANUP_ROWS: i64 = 16;

#[derive(Debug)]
struct Progress {
    job: MasterdataJob,
    /// Next chunk and byte offset in it to stage.
    next: usize,
    offset: usize,
    started: Instant,
    transactions: u32,
    /// The payload's length: each chunk is freed once staged (a 100 MB
    /// dataset is not held in memory through the whole apply), so the
    /// switch checks the staged bytes against this.
    want_bytes: usize,
}

impl Applier {
    pub fn channel() -> (mpsc::Sender<MasterdataJob>, Applier) {
        let (tx, rx) = mpsc::channel(JOB_CHANNEL);
        (
            tx,
            Applier {
                inbox: rx,
                open: true,
                queue: VecDeque::new(),
                cleanup: VecDeque::new(),
            },
        )
    }

    /// A job is in progress: the writer must not sleep.
    pub fn busy(&self) -> bool {
        !self.queue.is_empty() || !self.cleanup.is_empty()
    }

    /// Waits for a job (for the idle writer's select); pending forever once
    /// the senders are gone.
    pub async fn recv(&mut self) {
        if !self.open {
            return std::future::pending().await;
        }
        match self.inbox.recv().await {
            Some(job) => self.queue.push_back(progress(job)),
            None => self.open = false,
        }
    }
}

fn progress(job: MasterdataJob) -> Progress {
    Progress {
        want_bytes: job.chunks.iter().map(Vec::len).sum(),
        job,
        next: 0,
        offset: 0,
        started: Instant::now(),
        transactions: 0,
    }
}

fn sql(context: &'static str, store: &Store) -> impl Fn(rusqlite::Error) -> StoreError {
    let path = store.config.path.clone();
    move |e| StoreError::sqlite(context, &path, e)
}

impl Store {
    /// Attaches `masterdata.db` (created if missing) to this connection.
    /// Idempotent.
    fn md_attach(&self) -> Result<(), StoreError> {
        let attached: bool = self
            .conn
            .query_row(
                "SELECT count(*) FROM pragma_database_list WHERE name = 'md'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_err(sql("checking the master-data attachment", self))?
            > 0;
        if attached {
            return Ok(());
        }
        let path = path_for(&self.config.path);
        self.conn
            .execute("ATTACH DATABASE ?1 AS md", [path.to_string_lossy()])
            .map_err(sql("attaching masterdata.db", self))?;
        self.conn
            // A small page cache for masterdata.db (SQLite's default is
            // 2 MB per attached database): it is written in 64 KiB pieces
            // and read once at start, sequentially, so a cache only held
            // staged pages resident after an apply (issue 13's RSS bound).
            .execute_batch(
                "PRAGMA md.journal_mode = WAL; PRAGMA md.synchronous = FULL; \
                 PRAGMA md.cache_size = -256;",
            )
            .map_err(sql("setting up masterdata.db", self))?;
        self.conn
            .execute_batch(SCHEMA)
            .map_err(sql("creating the master-data tables", self))?;
        Ok(())
    }

    /// Deletes chunks staged for versions that never became active (an
    /// apply cut short by a crash).
    fn md_drop_unfinished(&self) -> Result<(), StoreError> {
        self.conn
            .execute(
                "DELETE FROM md.chunks WHERE NOT EXISTS (SELECT 1 FROM md.active a \
                 WHERE a.name = md.chunks.name AND a.version = md.chunks.version)",
                [],
            )
            .map_err(sql("deleting unfinished master data", self))?;
        Ok(())
    }

    /// The datasets in force, after deleting chunks staged for versions
    /// that never became active (an apply cut short by a crash). Call
    /// before [`super::spawn_writer`], on the thread that opened the store.
    pub fn masterdata_load(&mut self) -> Result<Vec<StoredDataset>, StoreError> {
        self.md_attach()?;
        self.md_drop_unfinished()?;
        load_active(&self.conn).map_err(sql("loading master data", self))
    }

    /// [`Store::masterdata_load`] without the chunks (`chunks` is empty):
    /// the gateway reads them one at a time with
    /// [`Store::masterdata_chunk`] while it re-verifies and indexes them, so
    /// a 100 MB dataset is never in memory at start.
    pub fn masterdata_heads(&mut self) -> Result<Vec<StoredDataset>, StoreError> {
        self.md_attach()?;
        self.md_drop_unfinished()?;
        load_heads(&self.conn).map_err(sql("loading master data", self))
    }

    /// Chunk `idx` of a stored dataset (its pieces joined); `None` when it
    /// is not stored.
    pub fn masterdata_chunk(
        &self,
        name: &str,
        version: u64,
        idx: usize,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT data FROM md.chunks WHERE name = ?1 AND version = ?2 AND idx = ?3 \
                 ORDER BY part",
            )
            .map_err(sql("reading master data", self))?;
        let mut rows = stmt
            .query(params![name, version as i64, idx as i64])
            .map_err(sql("reading master data", self))?;
        let mut chunk: Option<Vec<u8>> = None;
        while let Some(r) = rows.next().map_err(sql("reading master data", self))? {
            let piece = r.get_ref(0).map_err(sql("reading master data", self))?;
            let piece = piece.as_blob().map_err(|e| {
                StoreError::Masterdata(format!("master data chunk {idx} of {name}: {e}"))
            })?;
            chunk.get_or_insert_with(Vec::new).extend_from_slice(piece);
        }
        Ok(chunk)
    }

    /// Stages one chunk (or switches versions once all are staged) of the
    /// oldest job. Failures end the job with the error, the old dataset
    /// stays in force.
    pub fn masterdata_step(&mut self, applier: &mut Applier) {
        while let Ok(job) = applier.inbox.try_recv() {
            applier.queue.push_back(progress(job));
        }
        let Some(p) = applier.queue.front_mut() else {
            if let Some(name) = applier.cleanup.front() {
                match self.md_cleanup(name) {
                    Ok(0) => {
                        applier.cleanup.pop_front();
                    }
                    Ok(_) => {}
                    Err(e) => {
                        // Harmless: the next start deletes them.
                        tracing::warn!(error = %e, "cannot delete old master data chunks");
                        applier.cleanup.pop_front();
                    }
                }
            }
            return;
        };
        let result = self.md_attach().and_then(|()| {
            if p.next < p.job.chunks.len() {
                let len = p.job.chunks.get(p.next).map_or(0, Vec::len);
                self.md_stage(&p.job, p.next, p.offset)?;
                p.offset += PIECE;
                if p.offset >= len {
                    // Staged: SQLite has it now.
                    if let Some(c) = p.job.chunks.get_mut(p.next) {
                        *c = Vec::new();
                    }
                    p.next += 1;
                    p.offset = 0;
                }
                p.transactions += 1;
                Ok(None)
            } else {
                let at = super::append::now_utc_ms();
                self.md_activate(&p.job, p.want_bytes, at)?;
                p.transactions += 1;
                Ok(Some(ApplyReport {
                    applied_utc_ms: at,
                    took: p.started.elapsed(),
                    transactions: p.transactions,
                }))
            }
        });
        match result {
            Ok(None) => {}
            Ok(Some(report)) => {
                if let Some(p) = applier.queue.pop_front() {
                    applier.cleanup.push_back(p.job.name.clone());
                    // The service may have stopped waiting; the apply stands.
                    let _ = p.job.reply.send(Ok(report));
                }
                // This thread freed every received chunk while staging
                // (they were allocated on a tokio worker); memory freed
                // from another thread goes back to the OS only when a heap
                // collects (`allocator::release_freed`). Once per dataset, never
                // per event.
                crate::allocator::release_freed();
            }
            Err(e) => {
                if let Some(p) = applier.queue.pop_front() {
                    let _ = p.job.reply.send(Err(e.to_string()));
                }
            }
        }
    }

    fn md_stage(
        &mut self,
        job: &MasterdataJob,
        idx: usize,
        offset: usize,
    ) -> Result<(), StoreError> {
        let chunk = job.chunks.get(idx).map(Vec::as_slice).unwrap_or_default();
        let data = chunk
            .get(offset..(offset + PIECE).min(chunk.len()))
            .unwrap_or_default();
        self.conn
            .execute(
                "INSERT OR REPLACE INTO md.chunks (name, version, idx, part, data) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    job.name,
                    job.version as i64,
                    idx as i64,
                    (offset / PIECE) as i64,
                    data
                ],
            )
            .map_err(sql("staging master data", self))?;
        Ok(())
    }

    fn md_activate(
        &mut self,
        job: &MasterdataJob,
        want_bytes: usize,
        at: i64,
    ) -> Result<(), StoreError> {
        let tx = self
            .conn
            .unchecked_transaction()
            .map_err(sql("switching master data", self))?;
        let (staged, bytes): (i64, i64) = tx
            .query_row(
                "SELECT count(DISTINCT idx), coalesce(sum(length(data)), 0) FROM md.chunks \
                 WHERE name = ?1 AND version = ?2",
                params![job.name, job.version as i64],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(sql("switching master data", self))?;
        if staged != job.chunks.len() as i64 || bytes as usize != want_bytes {
            return Err(StoreError::Masterdata(format!(
                "master data {} version {}: {staged} chunks staged, {} expected",
                job.name,
                job.version,
                job.chunks.len()
            )));
        }
        let current: Option<i64> = tx
            .query_row(
                "SELECT version FROM md.active WHERE name = ?1",
                [&job.name],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql("switching master data", self))?;
        if current.is_some_and(|v| v as u64 >= job.version) {
            return Err(StoreError::Masterdata(format!(
                "master data {}: version {} is not above the stored {}",
                job.name,
                job.version,
                current.unwrap_or_default()
            )));
        }
        tx.execute(
            "INSERT OR REPLACE INTO md.active (name, version, manifest, applied_utc_ms) \
             VALUES (?1, ?2, ?3, ?4)",
            params![job.name, job.version as i64, job.manifest, at],
        )
        .and_then(|_| tx.commit())
        .map_err(sql("switching master data", self))?;
        Ok(())
    }
}

impl Store {
    /// Deletes up to [`CLEANUP_ROWS`] chunks of `name` older than the
    /// version in force; returns how many. Older than the version *in
    /// force*, not "other than the version this cleanup was queued for": a
    /// second apply can land before the first one's cleanup runs, and the
    /// first cleanup would then delete the new dataset's chunks.
    fn md_cleanup(&mut self, name: &str) -> Result<usize, StoreError> {
        self.conn
            .execute(
                "DELETE FROM md.chunks WHERE rowid IN (SELECT rowid FROM md.chunks \
                 WHERE name = ?1 AND version < \
                 (SELECT a.version FROM md.active a WHERE a.name = ?1) LIMIT ?2)",
                params![name, CLEANUP_ROWS],
            )
            .map_err(sql("deleting old master data", self))
    }
}

fn load_heads(conn: &rusqlite::Connection) -> rusqlite::Result<Vec<StoredDataset>> {
    let mut stmt = conn
        .prepare("SELECT name, version, manifest, applied_utc_ms FROM md.active ORDER BY name")?;
    let heads = stmt.query_map([], |r| {
        Ok(StoredDataset {
            name: r.get(0)?,
            version: r.get::<_, i64>(1)? as u64,
            manifest: r.get(2)?,
            chunks: Vec::new(),
            applied_utc_ms: r.get(3)?,
        })
    })?;
    heads.collect()
}

fn load_active(conn: &rusqlite::Connection) -> rusqlite::Result<Vec<StoredDataset>> {
    let mut stmt = conn
        .prepare("SELECT name, version, manifest, applied_utc_ms FROM md.active ORDER BY name")?;
    let heads: Vec<(String, i64, Vec<u8>, i64)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<Result<_, _>>()?;
    let mut chunks = conn.prepare(
        "SELECT idx, data FROM md.chunks WHERE name = ?1 AND version = ?2 ORDER BY idx, part",
    )?;
    heads
        .into_iter()
        .map(|(name, version, manifest, applied_utc_ms)| {
            // Pieces of one chunk are concatenated back (see PIECE).
            let mut data: Vec<Vec<u8>> = Vec::new();
            let mut last_idx = None;
            let mut rows = chunks.query(params![name, version])?;
            while let Some(r) = rows.next()? {
                let idx: i64 = r.get(0)?;
                let piece: Vec<u8> = r.get(1)?;
                match data.last_mut() {
                    Some(cur) if last_idx == Some(idx) => cur.extend_from_slice(&piece),
                    _ => data.push(piece),
                }
                last_idx = Some(idx);
            }
            Ok(StoredDataset {
                name,
                version: version as u64,
                manifest,
                chunks: data,
                applied_utc_ms,
            })
        })
        .collect()
}

/// The datasets in force in the store at `events_db`, read with a
/// connection of its own (`tracegate masterdata show`, tests).
pub fn read_active(events_db: &Path) -> Result<Vec<StoredDataset>, StoreError> {
    let path = path_for(events_db);
    let err = |context| move |e| StoreError::sqlite(context, &path_for(events_db), e);
    if !path.exists() {
        return Ok(Vec::new());
    }
    let conn = rusqlite::Connection::open_in_memory().map_err(err("opening masterdata.db"))?;
    conn.busy_timeout(super::BUSY_TIMEOUT)
        .map_err(err("opening masterdata.db"))?;
    conn.execute("ATTACH DATABASE ?1 AS md", [path.to_string_lossy()])
        .map_err(err("opening masterdata.db"))?;
    load_active(&conn).map_err(err("reading masterdata.db"))
}
