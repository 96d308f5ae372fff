//! The daemon's one read connection, owned by its own thread.
//!
//! Every read the daemon makes after startup (the publisher's live and
//! backlog reads, its visibility checks) goes through a [`StoreReader`], so
//! no rusqlite call runs on a tokio worker and the process holds exactly two
//! SQLite connections: this one and the writer's. Status needs no reads at
//! all: the writer publishes [`StoreStats`] on a watch channel.

use tokio::sync::{mpsc, oneshot};

use super::recent::RecentCommits;
use super::{Store, StoreError, StoreStats, StoredEvent};

/// Room for queued read requests. When it is full, callers wait (the send
/// awaits): readers are few (the publisher, the odd status probe), so a full
/// queue means the disk is slow, and waiting is the back-pressure we want
/// rather than memory growing without bound.
const QUEUE: usize = 64;

enum Request {
    ReadAfter {
        after: u64,
        limit: usize,
        reply: oneshot::Sender<Result<Vec<StoredEvent>, StoreError>>,
    },
    Stats {
        reply: oneshot::Sender<Result<StoreStats, StoreError>>,
    },
}

/// Cloneable async handle to the reader thread. The thread closes its
/// connection and exits when the last handle is dropped.
#[derive(Debug, Clone)]
pub struct StoreReader {
    tx: mpsc::Sender<Request>,
    /// The writer's last commits: live reads are answered from there
    /// without SQL when it covers them.
    recent: Option<RecentCommits>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::ReadAfter { after, limit, .. } => f
                .debug_struct("ReadAfter")
                .field("after", after)
                .field("limit", limit)
                .finish_non_exhaustive(),
            Request::Stats { .. } => f.write_str("Stats"),
        }
    }
}

impl StoreReader {
    /// Moves `store` (opened with [`Store::open_reader`]) onto a new thread
    /// and returns the handle. Does no SQL itself.
    pub fn spawn(store: Store) -> Result<StoreReader, StoreError> {
        let (tx, rx) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("store-reader".into())
            .spawn(move || serve(store, rx))
            .map_err(StoreError::Runtime)?;
        Ok(StoreReader { tx, recent: None })
    }

    /// Answers reads of the writer's most recent commits from memory
    /// ([`super::WriterHandle::recent`]); everything else still goes to
    /// SQLite on the reader thread.
    pub fn with_recent(mut self, recent: RecentCommits) -> Self {
        self.recent = Some(recent);
        self
    }

    /// Committed events with `seq > after`, oldest first, at most `limit`
    /// (published or not: the publisher tracks what it still needs).
    pub async fn read_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        if let Some(events) = self
            .recent
            .as_ref()
            .and_then(|r| r.read_after(after, limit))
        {
            return Ok(events);
        }
        let (reply, rx) = oneshot::channel();
        self.ask(Request::ReadAfter {
            after,
            limit,
            reply,
        })
        .await?;
        rx.await.map_err(|_| StoreError::ReaderStopped)?
    }

    /// A fresh snapshot of the store's counters, read from SQLite. Status
    /// displays should prefer the writer's stats watch, which costs nothing.
    pub async fn stats(&self) -> Result<StoreStats, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.ask(Request::Stats { reply }).await?;
        rx.await.map_err(|_| StoreError::ReaderStopped)?
    }

    async fn ask(&self, req: Request) -> Result<(), StoreError> {
        self.tx
            .send(req)
            .await
            .map_err(|_| StoreError::ReaderStopped)
    }
}

fn serve(store: Store, mut rx: mpsc::Receiver<Request>) {
    while let Some(req) = rx.blocking_recv() {
        // A caller that gave up (dropped its reply) is not an error.
        match req {
            Request::ReadAfter {
                after,
                limit,
                reply,
            } => {
                let _ = reply.send(store.events_after(after, limit, false));
            }
            Request::Stats { reply } => {
                let _ = reply.send(store.stats());
            }
        }
    }
}
