//! The SQLite event store and outbox: the durability point of the gateway.
//!
//! CONTRACT (used by the pipeline, the publisher, the CLI and the demo; keep
//! these signatures, extend freely):
//! - [`Store::open`] opens or creates the database (WAL, synchronous=FULL,
//!   migrations by `user_version`, `PRAGMA quick_check`; a corrupt file is
//!   moved aside and a fresh one started, with an error logged).
//! - [`Store::append`] commits drafts in ONE transaction, assigning gap-free
//!   `seq` and the stable `id` (`{gateway_id}:{store_id}:{seq}`), enforcing
//!   `max_bytes` with the full policy and recording `overflow` events.
//! - [`Store::pending`] / [`Store::mark_published`]: the outbox, kept as a
//!   watermark (`published_upto`), not per-row flags.
//! - [`spawn_writer`]: the group-commit thread the pipeline feeds.

use std::path::PathBuf;

use tokio::sync::{mpsc, watch};
use tracegate_drivers::CommitAck;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FullPolicy {
    DropOldest,
    RejectNew,
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The database file (`{data_dir}/events.db`).
    pub path: PathBuf,
    /// Upper bound on the database size (pages in use), bytes.
    pub max_bytes: u64,
    pub full_policy: FullPolicy,
    /// Group commit: commit at least this often while events are waiting...
    pub commit_interval_ms: u64,
    /// ...or as soon as this many events are waiting.
    pub commit_max_events: usize,
    /// Published events older than this are deleted (in ranges).
    pub retention_secs: u64,
}

/// An event before it is committed: the store adds `id` and `seq`.
#[derive(Debug, Clone)]
pub struct EventDraft {
    /// `arrived`, `departed`, `present`, `tap`, ... (`overflow` is the store's own).
    pub event_type: String,
    /// When the event happened (UTC ms), used for retention and age metrics.
    pub event_utc_ms: i64,
    /// The event's JSON object without `id` and `seq`; the store inserts both.
    pub body: serde_json::Map<String, serde_json::Value>,
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

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StoreStats {
    pub last_seq: u64,
    pub published_upto: u64,
    pub pending: u64,
    pub oldest_pending_utc_ms: Option<i64>,
    /// Events dropped by the full policy since the store was created.
    pub dropped_total: u64,
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store not implemented yet")]
    NotImplemented,
}

#[derive(Debug)]
pub struct Store {
    _private: (),
}

impl Store {
    pub fn open(_config: &StoreConfig, _gateway_id: &str) -> Result<Store, StoreError> {
        Err(StoreError::NotImplemented)
    }

    /// Opens an existing store for reading (CLI, publisher) alongside the writer.
    pub fn open_reader(_config: &StoreConfig, _gateway_id: &str) -> Result<Store, StoreError> {
        Err(StoreError::NotImplemented)
    }

    /// Random id chosen when the database was created; part of every event id.
    pub fn store_id(&self) -> &str {
        ""
    }

    pub fn append(&mut self, _drafts: Vec<EventDraft>) -> Result<Vec<StoredEvent>, StoreError> {
        Err(StoreError::NotImplemented)
    }

    /// Committed events with `seq > after_seq`, oldest first, at most `limit`.
    /// With `pending_only`, only those above the published watermark.
    pub fn events_after(
        &self,
        _after_seq: u64,
        _limit: usize,
        _pending_only: bool,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        Err(StoreError::NotImplemented)
    }

    /// Raises the published watermark (never lowers it).
    pub fn mark_published(&mut self, _upto_seq: u64) -> Result<(), StoreError> {
        Err(StoreError::NotImplemented)
    }

    pub fn stats(&self) -> Result<StoreStats, StoreError> {
        Err(StoreError::NotImplemented)
    }

    /// Deletes published events older than the retention age, in seq ranges.
    pub fn prune(&mut self, _now_utc_ms: i64) -> Result<u64, StoreError> {
        Err(StoreError::NotImplemented)
    }

    /// Highest NTAG 424 SUN read counter seen for a tag UID (replay protection).
    pub fn sun_counter(&self, _uid: &[u8]) -> Result<Option<u32>, StoreError> {
        Err(StoreError::NotImplemented)
    }

    pub fn set_sun_counter(&mut self, _uid: &[u8], _counter: u32) -> Result<(), StoreError> {
        Err(StoreError::NotImplemented)
    }
}

/// One group of drafts for the writer; `ack` fires after its commit.
#[derive(Debug)]
pub struct WriteRequest {
    pub drafts: Vec<EventDraft>,
    pub ack: Option<CommitAck>,
}

/// Handle to the writer thread; `join` waits for it to flush and stop.
#[derive(Debug)]
pub struct WriterHandle {
    pub thread: std::thread::JoinHandle<Result<(), StoreError>>,
}

/// Starts the group-commit writer on its own thread. It commits when
/// `commit_max_events` are waiting or `commit_interval_ms` has passed, sends
/// the highest committed seq on `committed` and every committed event on
/// `on_commit` (if given, for the demo), fires acks, and exits after `rx`
/// closes and the last batch is committed.
pub fn spawn_writer(
    _store: Store,
    _rx: mpsc::Receiver<WriteRequest>,
    _committed: watch::Sender<u64>,
    _on_commit: Option<mpsc::UnboundedSender<Vec<StoredEvent>>>,
) -> WriterHandle {
    WriterHandle {
        thread: std::thread::spawn(|| Err(StoreError::NotImplemented)),
    }
}
