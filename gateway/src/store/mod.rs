//! The SQLite event store and outbox: the durability point of the gateway.
//!
//! - [`Store::open`] opens or creates the database (WAL, synchronous=FULL,
//!   migrations by `user_version`, `PRAGMA quick_check`; a corrupt file is
//!   moved aside and a fresh one started, with an error logged).
//! - [`Store::append`] commits drafts in ONE transaction, assigning gap-free
//!   `seq` and the stable `id` (`{gateway_id}:{store_id}:{seq}`), enforcing
//!   `max_bytes` with the full policy and recording `overflow` events.
//! - [`Store::pending`] / [`Store::mark_published`]: the outbox, kept as a
//!   watermark (`published_upto`), not per-row flags.
//! - [`spawn_writer`]: the group-commit thread the pipeline feeds; it also
//!   persists the publisher's [`Watermark`] and publishes [`StoreStats`].
//! - [`StoreReader`]: the one read connection, on its own thread.
//!
//! # Design
//!
//! **Durability.** `journal_mode=WAL`, `synchronous=FULL` (every commit
//! fsyncs the WAL), checked after setting. A commit that returned is on disk;
//! `kill -9` and power cuts lose nothing committed (the crash test in
//! `tests/store_crash.rs` kills a writer 20+ times and checks this).
//!
//! **Connections.** The daemon holds two, each owned by one thread, so no
//! rusqlite call runs on a tokio worker:
//! - the writer ([`Store::open`], moved into [`spawn_writer`]'s thread): the
//!   only one that creates, migrates, checks or writes the file. Events,
//!   the published watermark and pruning all go through it, so writes never
//!   wait for another connection's lock.
//! - the reader ([`Store::open_reader`], moved into [`StoreReader::spawn`]'s
//!   thread): the publisher's reads. WAL readers never block the writer and
//!   see only committed transactions.
//!
//! Status needs neither: the writer sends fresh [`StoreStats`] on a watch
//! channel. Other processes (the `tracegate events` CLI, tests) open their
//! own second connections with [`Store::open_reader`]; those may write (the
//! API allows it) and then wait up to [`BUSY_TIMEOUT`] for the lock.
//!
//! **Corruption.** If opening, `quick_check` or the migration fails with
//! SQLite's corruption codes ("file is not a database", "database disk image
//! is malformed") or `quick_check` reports problems, the file and its
//! `-wal`/`-shm` are renamed to `{path}.corrupt-{UTC timestamp}` (never
//! deleted), `tracing::error!` names both paths, and a fresh store starts.
//! A file without the SQLite header is caught before SQLite opens it, since
//! SQLite would otherwise discard a `-wal` lying next to it on close.
//! Other failures (permissions, locks, a schema newer than this build) are
//! returned as errors and the file is left alone.
//!
//! **Sequence numbers.** `meta.last_seq` holds the last seq ever assigned; a
//! commit assigns `last_seq + 1 ..` and stores the new `last_seq` in the same
//! transaction, so seqs are gap-free in assignment and never reused, even
//! after every row has been deleted. Rows disappear only by [`Store::prune`]
//! (published and old) or by the `drop_oldest` policy, which always reports
//! the exact range in an `overflow` event. `store_id` (8 random bytes, hex)
//! is chosen when the database is created, so a store that was moved aside
//! and restarted at seq 1 still yields fresh event ids.
//!
//! **Outbox.** `meta.published_upto` is a watermark raised by
//! [`Store::mark_published`]; nothing is updated per row. Invariant: the
//! pending rows (seq > watermark) are a few kept `overflow` records followed
//! by every seq from the first pending ordinary event to `last_seq` (prune
//! never touches pending rows, `drop_oldest` removes a prefix of the
//! ordinary ones), so [`Store::stats`] counts them without a scan.
//!
//! **Size bound.** `max_bytes` covers every file of the store together:
//! the database, its `-wal`, its `-shm` and the space reserve `-reserve`.
//! [`DiskBudget`] gives the WAL, the index and the reserve fixed shares
//! (the WAL an eighth of `max_bytes`, 16 to 2,048 pages; the index what
//! SQLite maps for that WAL; the reserve as much as the WAL) and the
//! database the rest. `bytes` = pages in use in the database =
//! `(page_count - freelist_count) * page_size`, read inside the write
//! transaction, so the check sees the transaction's own inserts. Ordinary
//! events may use up to the database's share less the headroom
//! ([`HEADROOM_PAGES`] pages), the rest is reserved for `overflow` events
//! so the record of a drop always fits. Every commit that would exceed the
//! limit first deletes all published events (regardless of retention),
//! then applies the policy, and re-measures after inserting (estimates
//! never decide alone). Free pages are reused before the file grows. The
//! WAL is held to its share by checkpoints: SQLite's PASSIVE
//! autocheckpoint once it holds half its share, `journal_size_limit` at
//! the share, and a TRUNCATE checkpoint after any commit that leaves the
//! file above it (a reader held a checkpoint back). The margin: the total
//! can pass `max_bytes` by the WAL frames of one commit (its events plus a
//! few table and index pages), written before the checkpoint after it.
//!
//! **A full disk.** A commit that fails for lack of space (SQLite's
//! `SQLITE_FULL`) deletes the reserve and checkpoints and truncates the
//! WAL (`Store::recover_space`): the reserve is room for the pages the
//! checkpoint copies into the database, the truncated WAL is room for the
//! next commits. The writer retries every second at most while the disk
//! stays full; the reserve is put back once there is room
//! (`Store::keep_reserve`). On a filesystem smaller than `max_bytes` the
//! store can fill the disk itself: commits then wait (backpressure to the
//! readers) until space comes back.
//!
//! **Full policies and `overflow` events.** The body is
//! `{"type":"overflow","gateway","time","policy","count","first_seq",
//! "last_seq","from","to"}` plus `id`/`seq`; `from`/`to` are the UTC
//! ISO-8601 (ms) `event_utc_ms` range of the lost events, `count` is exact.
//! - `drop_oldest`: the oldest pending events are deleted, at least a
//!   sixteenth of the database's share at a time so a store that stays full writes one record
//!   per chunk rather than per commit. The new events are always stored,
//!   unless one commit is larger than the whole store, in which case its own
//!   oldest events go too. `first_seq`/`last_seq` bound the deleted seqs and
//!   `count` is exactly how many events were deleted; earlier `overflow`
//!   records inside the range are kept, not deleted or counted (only when
//!   nothing but overflow records is pending are they dropped, oldest first).
//!   So every pending seq missing from the table lies in the range of a
//!   (pending) overflow record. Acks fire: the data was committed and then dropped by policy.
//! - `reject_new`: new events that do not fit are refused before they get a
//!   seq, so seq stays gap-free; `first_seq` and `last_seq` are `null`.
//!   Refusal is per write request (per draft for [`Store::append`]): a
//!   request is stored whole or not at all, and the first refused request
//!   refuses all later ones in the same commit (order is kept). The ack of a
//!   refused request is dropped unfired, which tells the driver to keep the
//!   data. While the store stays full the overflow record itself may not
//!   fit; counts then accumulate in `meta.overflow_pending` (persisted) and
//!   are written as one `overflow` event as soon as there is room.
//!
//! Every drop adds to `meta.dropped_total` in the same transaction and is
//! announced with `tracing::warn!` (at most every 10 s per store, with
//! totals).
//!
//! **Retention.** [`Store::prune`] deletes the prefix of published events
//! whose `event_utc_ms` is older than `retention_secs`, as one seq range; it
//! stops at the first young published event, so its cost is proportional to
//! what it deletes. The writer thread calls it every 10 s.
//!
//! **Writer.** [`spawn_writer`] owns the writer `Store` on its own thread
//! (with a small current-thread runtime for timed waits). When idle it
//! commits a request as soon as it arrives, together with whatever else is
//! already queued, in one transaction. Under load it groups: requests that
//! arrive during a commit form the next group, and a commit starts at most
//! once per `commit_interval_ms` (default 25 ms: on a disk with fast fsync a
//! steady stream then still forms groups instead of paying a transaction
//! per event; the thread sleeps while a group fills rather than waking for
//! each request; right after a commit it sleeps out the interval before
//! looking for the next group, one wake-up per commit under load). Still
//! under load, the group then fills on until its oldest event, by its own
//! `time`, will be `commit_age_ms` old (default 40 ms) when the commit is
//! done (the last commit's duration is the estimate): events reach the
//! writer already some milliseconds old (a reader's batch, the departure
//! grid), so commits come about every 28 ms instead of every 25 while each
//! event's time-to-commit stays bounded by its own age. The wait is clamped
//! to `0..=commit_age_ms` against clock jumps; events older than that (a
//! reader's buffered reads) wait for the interval only, and the slower the
//! fsync the less the rule holds a group back (BENCHMARKS.md).
//! `commit_max_events` drafts waiting commit at once. After a
//! commit it appends the stored events to [`RecentCommits`] (the publisher's
//! live reads come from there, see `recent.rs`), sends the new `last_seq` on
//! [`Writer::committed`], sends the stored events on `on_commit`, then fires
//! the acks. A failing commit is logged and retried
//! with [`crate::backoff::Backoff`] (50 ms doubling to 5 s, at most 1 s
//! while the disk is full, see "A full disk"); nothing is acknowledged
//! until it succeeds. Each failure is reported to the writer's heartbeat
//! ([`crate::heartbeat::report_store_error`]), which names the cause
//! (`disk_full`, `read_only`) for health.
//!
//! The publisher raises the watermark through [`Watermark::advance`] (never
//! blocks); the writer persists it in the next event commit's transaction
//! when there is one, otherwise at most every [`WATERMARK_EVERY`] in a
//! small transaction of its own (and only then watches the watermark, so a
//! PUBACK does not wake it). [`Writer::stats`] is refreshed after
//! commits, watermark writes and prunes, at most every [`STATS_EVERY`].
//!
//! Shutdown: when the request channel closes, the writer commits what is
//! queued and signals [`WriterHandle::drained`]; it keeps persisting the
//! watermark until the [`Watermark`] is dropped, writes its last value,
//! checkpoints the WAL and returns.

mod append;
mod budget;
pub mod masterdata;
mod reader;
mod recent;
mod salvage;
mod schema;
mod writer;

use std::path::PathBuf;
use std::time::Instant;

use rusqlite::{Connection, OptionalExtension};
use tracegate_drivers::CommitAck;

pub use append::AppendOutcome;
pub use budget::DiskBudget;
pub use reader::StoreReader;
pub use recent::RecentCommits;
pub use schema::{BUSY_TIMEOUT, SCHEMA_VERSION};
pub use writer::{spawn_writer, Watermark, Writer, WriterHandle, STATS_EVERY, WATERMARK_EVERY};

/// Pages kept free for `overflow` events (see the module docs).
pub const HEADROOM_PAGES: u64 = 4;

/// The smallest `max_bytes` accepted: the WAL's, index's and reserve's
/// shares ([`DiskBudget`]), schema pages, headroom and room for a useful
/// number of events (about 80 KiB of them at this minimum).
pub const MIN_MAX_BYTES: u64 = 256 * 1024;

/// How long a checkpoint that truncates the WAL after a commit waits for a
/// reader in the middle of a transaction (commits wait meanwhile)...
const WAL_TRUNCATE_WAIT: std::time::Duration = std::time::Duration::from_millis(200);
/// ...and how soon it is tried again when a reader held it back.
const WAL_TRUNCATE_RETRY: std::time::Duration = std::time::Duration::from_secs(1);
/// How often a missing space reserve is tried again (the disk was full).
const RESERVE_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FullPolicy {
    DropOldest,
    RejectNew,
}

impl FullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            FullPolicy::DropOldest => "drop_oldest",
            FullPolicy::RejectNew => "reject_new",
        }
    }
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The database file (`{data_dir}/events.db`).
    pub path: PathBuf,
    /// Upper bound on the store's files together (database, WAL, WAL
    /// index, space reserve), bytes; see [`DiskBudget`] for the shares and
    /// the margin.
    pub max_bytes: u64,
    pub full_policy: FullPolicy,
    /// Commits start at most this often: an idle writer commits a request
    /// at once, a busy one groups what arrives within this time (see
    /// "Writer" above). 0 commits whenever the previous commit is done.
    pub commit_interval_ms: u64,
    /// Under load (a commit started within the last `commit_interval_ms`),
    /// a group fills on until its oldest event, by its own `time`, will be
    /// this old when the commit is done (see "Writer" above). 0: groups fill
    /// for the interval only.
    pub commit_age_ms: u64,
    /// The most drafts one group commit takes from the queue.
    pub commit_max_events: usize,
    /// Published events older than this are deleted (in ranges).
    pub retention_secs: u64,
}

/// An event before it is committed: the store sets `id` and `seq` and
/// serialises it once, in the commit.
#[derive(Debug, Clone)]
pub struct EventDraft {
    /// The event, with `id` and `seq` still unset (`overflow` is the
    /// store's own kind).
    pub event: crate::event::Event,
    /// For a tap whose SUN verified: the counter to check against the
    /// highest one stored for its UID. The store sets the verdict
    /// (`genuine` or `replayed`) and keeps the counter in the same commit.
    pub replay: Option<crate::event::SunReplayCheck>,
}

impl EventDraft {
    pub fn new(event: crate::event::Event) -> Self {
        Self {
            event,
            replay: None,
        }
    }
}

/// A committed event as the outbox and the CLI see it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub seq: u64,
    pub id: String,
    pub event_type: String,
    pub event_utc_ms: i64,
    /// Complete JSON of the event, `id` and `seq` included.
    pub payload: String,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StoreStats {
    pub last_seq: u64,
    pub published_upto: u64,
    pub pending: u64,
    /// `event_utc_ms` of the first (lowest seq) pending event.
    pub oldest_pending_utc_ms: Option<i64>,
    /// Events dropped by the full policy since the store was created.
    pub dropped_total: u64,
    /// Pages in use in the main database file, in bytes: bounded by the
    /// database's share of `max_bytes` ([`DiskBudget::db_max`]).
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {context} failed: {source}")]
    Sqlite {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("store {path}: {what}")]
    Pragma { path: PathBuf, what: String },
    #[error(
        "store {path} has schema version {found}, this build supports {supported}; \
         run the matching tracegate version or move the file aside"
    )]
    SchemaMismatch {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("no store at {path}: start the gateway once to create it, or check data_dir")]
    NotFound { path: PathBuf },
    #[error("store {path} is corrupt ({reason}) and could not be replaced")]
    Corrupt { path: PathBuf, reason: String },
    #[error("could not move the corrupt store file {path} aside: {source}")]
    MoveAside {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not read the store file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not create the store directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "store {path} cannot be written ({why}): its directory is read-only or not writable \
         by this user. tracegate writes every event there first: remount it read-write, give \
         the service user write access, or set data_dir to a writable directory \
         (/var/lib/tracegate under systemd)"
    )]
    ReadOnly { path: PathBuf, why: String },
    #[error("invalid store configuration: {0}")]
    Config(String),
    #[error("master data: {0}")]
    Masterdata(String),
    #[error("the store writer thread panicked (a bug: please report it)")]
    WriterPanicked,
    #[error("the store reader thread has stopped")]
    ReaderStopped,
    #[error("could not start a store thread or its timer runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

impl StoreError {
    /// Whether SQLite failed for lack of space on the disk (not the store's
    /// own bound, which never fails a commit).
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StoreError::Sqlite { source, .. }
            if source.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull))
    }

    fn sqlite(context: &'static str, path: &std::path::Path, source: rusqlite::Error) -> Self {
        StoreError::Sqlite {
            context,
            path: path.to_path_buf(),
            source,
        }
    }
}

#[derive(Debug)]
pub struct Store {
    conn: Connection,
    config: StoreConfig,
    gateway_id: String,
    store_id: String,
    page_size: u64,
    /// The shares of `max_bytes` (database, WAL, index, reserve).
    budget: DiskBudget,
    /// Files beside the database: its WAL and the space reserve.
    wal_path: PathBuf,
    reserve_path: PathBuf,
    /// Whether the reserve is in place; when not, the next attempt to
    /// create it is not before this.
    reserve_present: bool,
    next_reserve_try: Option<Instant>,
    /// A reader held the last WAL truncation back: not again before this.
    next_wal_truncate: Option<Instant>,
    /// When the last overflow warning was logged (rate limit).
    last_overflow_warn: Option<Instant>,
    /// `meta` as this connection's last event commit left it, so the next
    /// commit need not read it back (see `append.rs`). Taken at the start
    /// of a commit and put back only after it committed, so a failed commit
    /// reads the table again; any other write to `meta` clears it.
    meta_cache: Option<append::Meta>,
    /// Master-data jobs for the writer thread (see `masterdata.rs`).
    masterdata: Option<masterdata::Applier>,
}

fn validate(config: &StoreConfig, gateway_id: &str) -> Result<(), StoreError> {
    if gateway_id.is_empty() || gateway_id.contains(':') {
        return Err(StoreError::Config(format!(
            "gateway_id {gateway_id:?} must be non-empty and contain no ':' \
             (it is the first part of every event id)"
        )));
    }
    if config.max_bytes < MIN_MAX_BYTES {
        return Err(StoreError::Config(format!(
            "max_bytes {} is below the minimum {MIN_MAX_BYTES}",
            config.max_bytes
        )));
    }
    Ok(())
}

/// Creates `dir` and its missing parents readable by tracegate's user only
/// (0700): the store holds every serial the site has seen. Directories that
/// exist keep their mode (under systemd, `StateDirectoryMode` decides).
pub fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

impl Store {
    pub fn open(config: &StoreConfig, gateway_id: &str) -> Result<Store, StoreError> {
        validate(config, gateway_id)?;
        let path = &config.path;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_private_dir(dir).map_err(|e| StoreError::CreateDir {
                path: dir.to_path_buf(),
                source: e,
            })?;
        }
        let (conn, store_id) = match schema::open_writer(path) {
            Ok(ok) => ok,
            Err(schema::OpenFailure::Other(e)) => return Err(e),
            Err(schema::OpenFailure::Corrupt(reason)) => {
                let moved_to = schema::move_aside(path)?;
                tracing::error!(
                    path = %path.display(),
                    moved_to = %moved_to.display(),
                    reason = %reason,
                    "event store is corrupt: moved it aside and started a fresh store; \
                     carrying its unpublished events and NFC counters over"
                );
                let (mut conn, store_id) = match schema::open_writer(path) {
                    Ok(ok) => ok,
                    Err(schema::OpenFailure::Other(e)) => return Err(e),
                    Err(schema::OpenFailure::Corrupt(reason)) => {
                        return Err(StoreError::Corrupt {
                            path: path.clone(),
                            reason,
                        })
                    }
                };
                let salvaged = salvage::salvage(&moved_to, &mut conn, &reason);
                let mut store = Self::from_conn(conn, config, gateway_id, store_id, true)?;
                store.keep_reserve();
                store.announce_salvage(salvaged, &moved_to, &reason)?;
                return Ok(store);
            }
        };
        let mut store = Self::from_conn(conn, config, gateway_id, store_id, true)?;
        store.keep_reserve();
        Ok(store)
    }

    /// Opens an existing store as a second connection alongside the writer
    /// (for [`StoreReader::spawn`], the CLI, tests).
    pub fn open_reader(config: &StoreConfig, gateway_id: &str) -> Result<Store, StoreError> {
        let (conn, store_id) = schema::open_second(&config.path)?;
        Self::from_conn(conn, config, gateway_id, store_id, true)
    }

    /// A connection that only reads (`tracegate events`): works on a
    /// read-only mount and on a file moved aside after corruption.
    pub fn open_read_only(config: &StoreConfig, gateway_id: &str) -> Result<Store, StoreError> {
        let (conn, store_id) = schema::open_read_only(&config.path)?;
        Self::from_conn(conn, config, gateway_id, store_id, false)
    }

    fn from_conn(
        conn: Connection,
        config: &StoreConfig,
        gateway_id: &str,
        store_id: String,
        writable: bool,
    ) -> Result<Store, StoreError> {
        let page_size: i64 = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(|e| StoreError::sqlite("reading page_size", &config.path, e))?;
        let page_size = u64::try_from(page_size).unwrap_or(4096);
        let budget = DiskBudget::new(config.max_bytes, page_size);
        if !budget.is_usable() {
            return Err(StoreError::Config(format!(
                "max_bytes {} leaves the database too little room at its page size of {page_size} \
                 bytes (the WAL, its index and the space reserve take {}): raise max_bytes",
                config.max_bytes,
                config.max_bytes - budget.db_max()
            )));
        }
        if writable {
            // Both are per connection: a connection that commits
            // checkpoints (PASSIVE) once the WAL holds half its share, and
            // truncates the file back to the share when it restarts it.
            let set = |name: &str, value: u64| {
                conn.pragma_update(None, name, i64::try_from(value).unwrap_or(i64::MAX))
                    .map_err(|e| StoreError::sqlite("bounding the WAL", &config.path, e))
            };
            set("wal_autocheckpoint", budget.autocheckpoint_frames())?;
            set("journal_size_limit", budget.wal_bytes())?;
        }
        let beside = |suffix: &str| PathBuf::from(format!("{}{suffix}", config.path.display()));
        Ok(Store {
            conn,
            config: config.clone(),
            gateway_id: gateway_id.to_owned(),
            store_id,
            page_size,
            budget,
            wal_path: beside("-wal"),
            reserve_path: beside("-reserve"),
            reserve_present: false,
            next_reserve_try: None,
            next_wal_truncate: None,
            last_overflow_warn: None,
            meta_cache: None,
            masterdata: None,
        })
    }

    /// Logs what salvage carried from the corrupt file and records it as a
    /// `salvage` event (committed like any event, so the registry hears it).
    fn announce_salvage(
        &mut self,
        salvaged: Result<salvage::Salvaged, String>,
        moved_to: &std::path::Path,
        reason: &str,
    ) -> Result<(), StoreError> {
        let body = match salvaged {
            Ok(s) => {
                match &s.counters {
                    Ok(n) => tracing::warn!(
                        counters = n,
                        from = %moved_to.display(),
                        "NFC replay counters copied from the corrupt store"
                    ),
                    Err(e) => tracing::error!(
                        from = %moved_to.display(),
                        error = %e,
                        "NFC replay counters could not be read from the corrupt store: \
                         URLs tapped here before may verify as genuine once more \
                         (the registry's own counters still catch them)"
                    ),
                }
                if s.event.lost > 0 {
                    tracing::error!(event = "store.salvaged", carried = s.event.carried, lost = s.event.lost, from = %moved_to.display(), "unpublished events carried from the corrupt store; some could not be read and are lost");
                } else {
                    tracing::warn!(event = "store.salvaged", carried = s.event.carried, from = %moved_to.display(), "every unpublished event carried from the corrupt store");
                }
                s.event
            }
            Err(e) => {
                tracing::error!(event = "store.salvage_failed", from = %moved_to.display(), error = %e, "nothing could be read from the corrupt store: its unpublished events are lost");
                crate::event::SalvageEvent {
                    from_store: None,
                    moved_to: moved_to.display().to_string(),
                    reason: format!("{reason}; salvage failed: {e}"),
                    carried: 0,
                    missing: Vec::new(),
                    lost: 0,
                    bounds_known: false,
                }
            }
        };
        let event = crate::event::Event::new(
            self.gateway_id.clone(),
            crate::event::UtcMs(chrono::Utc::now().timestamp_millis()),
            crate::event::EventBody::Salvage(body),
        );
        self.append(vec![EventDraft::new(event)])?;
        Ok(())
    }

    /// Lets the writer thread this store moves into apply master data sent
    /// on the returned channel (see `masterdata.rs`).
    pub fn masterdata_channel(&mut self) -> tokio::sync::mpsc::Sender<masterdata::MasterdataJob> {
        let (tx, applier) = masterdata::Applier::channel();
        self.masterdata = Some(applier);
        tx
    }

    /// Random id chosen when the database was created; part of every event id.
    pub fn store_id(&self) -> &str {
        &self.store_id
    }

    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// Commits `drafts` in one transaction. Returns the events now stored:
    /// the accepted drafts in order, plus an `overflow` event if the full
    /// policy dropped or refused anything (see the module docs; with
    /// `reject_new` refused drafts are simply absent from the result, use
    /// [`Store::append_detailed`] to see how many).
    pub fn append(&mut self, drafts: Vec<EventDraft>) -> Result<Vec<StoredEvent>, StoreError> {
        let groups: Vec<&[EventDraft]> = drafts.iter().map(std::slice::from_ref).collect();
        Ok(self.commit_groups(&groups, None)?.events)
    }

    /// Like [`Store::append`], with the policy outcome. Each draft is its own
    /// refusal unit under `reject_new`.
    pub fn append_detailed(&mut self, drafts: &[EventDraft]) -> Result<AppendOutcome, StoreError> {
        let groups: Vec<&[EventDraft]> = drafts.iter().map(std::slice::from_ref).collect();
        self.commit_groups(&groups, None)
    }

    /// Committed events with `seq > after_seq`, oldest first, at most `limit`.
    /// With `pending_only`, only those above the published watermark.
    pub fn events_after(
        &self,
        after_seq: u64,
        limit: usize,
        pending_only: bool,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let err = |e| StoreError::sqlite("reading events", &self.config.path, e);
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT seq, id, event_type, event_utc_ms, payload FROM events
                 WHERE seq > max(?1, CASE WHEN ?2 THEN
                     (SELECT value FROM meta WHERE key = 'published_upto') ELSE 0 END)
                 ORDER BY seq LIMIT ?3",
            )
            .map_err(err)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt
            .query_map(
                rusqlite::params![to_i64(after_seq), pending_only, limit],
                row_to_event,
            )
            .map_err(err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(err)
    }

    /// Pending (unpublished) events, oldest first, at most `limit`.
    pub fn pending(&self, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        self.events_after(0, limit, true)
    }

    /// Raises the published watermark (never lowers it, never above the
    /// last committed seq).
    pub fn mark_published(&mut self, upto_seq: u64) -> Result<(), StoreError> {
        self.meta_cache = None;
        let err = |e| StoreError::sqlite("raising the published watermark", &self.config.path, e);
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(err)?;
        tx.prepare_cached(
            "UPDATE meta SET value = max(value,
                 min(?1, (SELECT value FROM meta WHERE key = 'last_seq')))
             WHERE key = 'published_upto'",
        )
        .and_then(|mut st| st.execute([to_i64(upto_seq)]))
        .map_err(err)?;
        tx.commit().map_err(err)
    }

    pub fn stats(&self) -> Result<StoreStats, StoreError> {
        let err = |e| StoreError::sqlite("reading stats", &self.config.path, e);
        // One read transaction: a consistent snapshot while the writer commits.
        let tx = self.conn.unchecked_transaction().map_err(err)?;
        let meta = append::read_meta(&tx).map_err(err)?;
        let pu = to_i64(meta.published_upto);
        let oldest_pending_utc_ms: Option<i64> = tx
            .prepare_cached("SELECT event_utc_ms FROM events WHERE seq > ?1 ORDER BY seq LIMIT 1")
            .and_then(|mut st| st.query_row([pu], |r| r.get(0)))
            .optional()
            .map_err(err)?;
        // Pending rows: a few kept overflow records below the first pending
        // event, then every seq up to last_seq (see "Outbox" above).
        let first_event: Option<i64> = tx
            .prepare_cached(
                "SELECT seq FROM events WHERE seq > ?1 AND event_type != 'overflow'
                 ORDER BY seq LIMIT 1",
            )
            .and_then(|mut st| st.query_row([pu], |r| r.get(0)))
            .optional()
            .map_err(err)?;
        let below: i64 = tx
            .prepare_cached("SELECT count(*) FROM events WHERE seq > ?1 AND seq < ?2")
            .and_then(|mut st| st.query_row([pu, first_event.unwrap_or(i64::MAX)], |r| r.get(0)))
            .map_err(err)?;
        let pending = from_i64(below)
            + first_event.map_or(0, |f| meta.last_seq.saturating_sub(from_i64(f)) + 1);
        let bytes = append::used_bytes(&tx, self.page_size).map_err(err)?;
        tx.finish().map_err(err)?;
        Ok(StoreStats {
            last_seq: meta.last_seq,
            published_upto: meta.published_upto,
            pending,
            oldest_pending_utc_ms,
            dropped_total: meta.dropped_total,
            bytes,
        })
    }

    /// Deletes published events older than the retention age, in seq ranges.
    pub fn prune(&mut self, now_utc_ms: i64) -> Result<u64, StoreError> {
        self.prune_inner(now_utc_ms)
    }

    /// Highest NTAG 424 SUN read counter seen for a tag UID (replay protection).
    pub fn sun_counter(&self, uid: &[u8]) -> Result<Option<u32>, StoreError> {
        append::stored_sun_counter(&self.conn, uid)
            .map_err(|e| StoreError::sqlite("reading a SUN counter", &self.config.path, e))
    }

    /// Records a SUN read counter for a tag. The stored value only grows: a
    /// lower counter leaves it unchanged, so a replay can never reopen a window.
    pub fn set_sun_counter(&mut self, uid: &[u8], counter: u32) -> Result<(), StoreError> {
        let err = |e| StoreError::sqlite("writing a SUN counter", &self.config.path, e);
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(err)?;
        append::keep_sun_counter(&tx, uid, counter).map_err(err)?;
        tx.commit().map_err(err)
    }

    /// Highest seq ever assigned (0 for a new store).
    pub fn last_seq(&self) -> Result<u64, StoreError> {
        let v: i64 = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'last_seq'", [], |r| {
                r.get(0)
            })
            .map_err(|e| StoreError::sqlite("reading last_seq", &self.config.path, e))?;
        Ok(from_i64(v))
    }

    /// Runs `PRAGMA quick_check`; `Ok(true)` when the database is intact.
    pub fn quick_check(&self) -> Result<bool, StoreError> {
        let err = |e| StoreError::sqlite("running quick_check", &self.config.path, e);
        let mut stmt = self.conn.prepare("PRAGMA quick_check").map_err(err)?;
        let rows: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .map_err(err)?
            .collect::<Result<_, _>>()
            .map_err(err)?;
        Ok(rows.len() == 1 && rows[0] == "ok")
    }

    /// Checkpoints the WAL into the main file and truncates it (clean shutdown).
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(|e| StoreError::sqlite("checkpointing the WAL", &self.config.path, e))
    }

    /// The shares of `max_bytes` this store keeps to.
    pub fn budget(&self) -> DiskBudget {
        self.budget
    }

    /// Checkpoints the WAL and truncates it to zero, waiting at most `wait`
    /// for a reader in the middle of a transaction. `Ok(false)`: a reader
    /// held it back, nothing was truncated.
    fn truncate_wal(&self, wait: std::time::Duration) -> Result<bool, StoreError> {
        let err = |e| StoreError::sqlite("checkpointing the WAL", &self.config.path, e);
        self.conn.busy_timeout(wait).map_err(err)?;
        let busy = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                r.get::<_, i64>(0)
            });
        self.conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
        Ok(busy.map_err(err)? == 0)
    }

    /// After a commit: a WAL file above its share (a reader held the
    /// automatic checkpoints back, or one commit was larger than the share)
    /// is checkpointed and truncated. Costs one `stat` otherwise.
    pub(crate) fn bound_wal(&mut self) {
        let Ok(len) = std::fs::metadata(&self.wal_path).map(|m| m.len()) else {
            return;
        };
        if len <= self.budget.wal_bytes() {
            return;
        }
        let now = Instant::now();
        if self.next_wal_truncate.is_some_and(|t| now < t) {
            return;
        }
        match self.truncate_wal(WAL_TRUNCATE_WAIT) {
            Ok(true) => self.next_wal_truncate = None,
            Ok(false) => {
                tracing::debug!(
                    wal_bytes = len,
                    "WAL above its share; a reader held the checkpoint back, trying again"
                );
                self.next_wal_truncate = Some(now + WAL_TRUNCATE_RETRY);
            }
            Err(e) => {
                tracing::warn!(wal_bytes = len, error = %e, "WAL above its share and the checkpoint failed; trying again");
                self.next_wal_truncate = Some(now + WAL_TRUNCATE_RETRY);
            }
        }
    }

    /// For a write that failed for lack of disk space: deletes the space
    /// reserve, so the checkpoint has room to copy the WAL into the
    /// database, then checkpoints and truncates the WAL, which frees its
    /// file. Returns whether the WAL was truncated. The reserve comes back
    /// once there is room again ([`Store::keep_reserve`]).
    pub(crate) fn recover_space(&mut self) -> Result<bool, StoreError> {
        match std::fs::remove_file(&self.reserve_path) {
            Ok(()) => {
                tracing::warn!(path = %self.reserve_path.display(), bytes = self.budget.reserve_bytes(), "disk full: released the store's space reserve to checkpoint the WAL")
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %self.reserve_path.display(), error = %e, "cannot delete the space reserve")
            }
        }
        self.reserve_present = false;
        self.next_reserve_try = Some(Instant::now() + RESERVE_RETRY);
        self.truncate_wal(WAL_TRUNCATE_WAIT)
    }

    /// Puts the space reserve back when it is missing (at open, and after
    /// commits once the disk had been full), at most every few seconds
    /// while there is no room for it. Best effort: without it a full disk
    /// still recovers whenever the checkpoint finds room.
    pub(crate) fn keep_reserve(&mut self) {
        if self.reserve_present {
            return;
        }
        let now = Instant::now();
        if self.next_reserve_try.is_some_and(|t| now < t) {
            return;
        }
        // Only with room to spare: a reserve that fills the disk again would
        // make commits fail until it is released once more.
        let bytes = self.budget.reserve_bytes();
        let room = self.reserve_path.parent().and_then(|d| {
            let d = if d.as_os_str().is_empty() {
                std::path::Path::new(".")
            } else {
                d
            };
            nix::sys::statvfs::statvfs(d).ok()
        });
        if let Some(v) = room {
            // Both are 32-bit on some targets (armhf).
            #[allow(clippy::useless_conversion)]
            let free = u64::from(v.blocks_available()).saturating_mul(u64::from(v.fragment_size()));
            if free < bytes.saturating_mul(2) {
                self.next_reserve_try = Some(now + RESERVE_RETRY);
                return;
            }
        }
        match create_reserve(&self.reserve_path, bytes) {
            Ok(()) => {
                self.reserve_present = true;
                self.next_reserve_try = None;
            }
            Err(e) => {
                tracing::debug!(path = %self.reserve_path.display(), error = %e, "no room for the space reserve yet");
                self.next_reserve_try = Some(now + RESERVE_RETRY);
            }
        }
    }
}

/// Creates (or completes) the reserve file with its blocks allocated, 0600
/// like the database. A reserve that cannot be completed is removed, so a
/// nearly full disk is not filled further by it.
fn create_reserve(path: &std::path::Path, bytes: u64) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    let len = i64::try_from(bytes).unwrap_or(i64::MAX);
    let done = match nix::fcntl::posix_fallocate(std::os::fd::AsRawFd::as_raw_fd(&f), 0, len) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::ENOSPC) => Err(std::io::Error::from_raw_os_error(nix::libc::ENOSPC)),
        // A filesystem without fallocate: write the zeros.
        Err(_) => {
            let zeros = vec![0u8; 64 * 1024];
            let mut left = bytes;
            let mut r = Ok(());
            while left > 0 && r.is_ok() {
                let n = usize::try_from(left.min(zeros.len() as u64)).unwrap_or(zeros.len());
                r = f.write_all(&zeros[..n]);
                left -= n as u64;
            }
            r
        }
    }
    .and_then(|()| f.sync_all());
    if done.is_err() {
        drop(f);
        let _ = std::fs::remove_file(path);
    }
    done
}

fn row_to_event(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredEvent> {
    Ok(StoredEvent {
        seq: from_i64(r.get(0)?),
        id: r.get(1)?,
        event_type: r.get(2)?,
        event_utc_ms: r.get(3)?,
        payload: r.get(4)?,
    })
}

/// SQLite integers are i64; seqs never get near the top, so clamp.
fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn from_i64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// One group of drafts for the writer; `ack` fires after its commit.
#[derive(Debug)]
pub struct WriteRequest {
    pub drafts: Vec<EventDraft>,
    pub ack: Option<CommitAck>,
}
