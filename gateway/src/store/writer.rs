//! The group-commit writer thread.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, watch};

use super::append::now_utc_ms;
use crate::heartbeat::Heartbeat;

use super::{EventDraft, Store, StoreError, StoredEvent, WriteRequest, WriterHandle};

/// How often the writer deletes published events past their retention.
pub const PRUNE_EVERY: Duration = Duration::from_secs(10);

/// Commit retries back off from this...
const BACKOFF_START: Duration = Duration::from_millis(50);
/// ...up to this.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// After `rx` closed, give up on a failing commit after this many attempts
/// so shutdown cannot hang; the unfired acks tell drivers to keep the data.
const SHUTDOWN_ATTEMPTS: u32 = 5;

/// While idle the writer still wakes this often, to beat its heartbeat.
const IDLE_WAKE: Duration = Duration::from_secs(1);

pub fn spawn(
    store: Store,
    rx: mpsc::Receiver<WriteRequest>,
    committed: watch::Sender<u64>,
    on_commit: Option<crate::Observer<Vec<StoredEvent>>>,
    heartbeat: Option<Arc<Heartbeat>>,
) -> WriterHandle {
    let spawned = std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || run(store, rx, committed, on_commit, heartbeat));
    let thread = match spawned {
        Ok(t) => t,
        Err(e) => {
            let msg = e.to_string();
            std::thread::spawn(move || Err(StoreError::Runtime(std::io::Error::other(msg))))
        }
    };
    WriterHandle { thread }
}

fn run(
    mut store: Store,
    mut rx: mpsc::Receiver<WriteRequest>,
    committed: watch::Sender<u64>,
    on_commit: Option<crate::Observer<Vec<StoredEvent>>>,
    heartbeat: Option<Arc<Heartbeat>>,
) -> Result<(), StoreError> {
    let beat = || {
        if let Some(h) = &heartbeat {
            h.beat();
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(StoreError::Runtime)?;
    let interval = Duration::from_millis(store.config.commit_interval_ms.max(1));
    let max_events = store.config.commit_max_events.max(1);
    committed.send_replace(store.last_seq()?);
    let mut next_prune = Instant::now() + PRUNE_EVERY;
    let mut closed = false;

    while !closed {
        let mut batch: Vec<WriteRequest> = Vec::new();
        let mut waiting = 0usize;
        beat();
        let wait = next_prune
            .saturating_duration_since(Instant::now())
            .min(IDLE_WAKE);
        match rt.block_on(async { tokio::time::timeout(wait, rx.recv()).await }) {
            Ok(Some(req)) => {
                waiting += req.drafts.len();
                batch.push(req);
            }
            Ok(None) => closed = true,
            Err(_) => {} // idle: beat, maybe prune
        }
        if !batch.is_empty() {
            // The interval counts from the first uncommitted request.
            let deadline = tokio::time::Instant::now() + interval;
            while waiting < max_events {
                let next = match rx.try_recv() {
                    Ok(req) => Some(req),
                    Err(TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                    Err(TryRecvError::Empty) => {
                        match rt
                            .block_on(async { tokio::time::timeout_at(deadline, rx.recv()).await })
                        {
                            Ok(Some(req)) => Some(req),
                            Ok(None) => {
                                closed = true;
                                break;
                            }
                            Err(_) => None,
                        }
                    }
                };
                match next {
                    Some(req) => {
                        waiting += req.drafts.len();
                        batch.push(req);
                    }
                    None => break,
                }
            }
            commit_batch(&mut store, batch, closed, &committed, on_commit.as_ref())?;
        }
        if Instant::now() >= next_prune {
            if let Err(e) = store.prune(now_utc_ms()) {
                tracing::warn!(error = %e, "pruning published events failed; will retry");
            }
            next_prune = Instant::now() + PRUNE_EVERY;
        }
    }
    if let Err(e) = store.checkpoint() {
        tracing::warn!(error = %e, "final WAL checkpoint failed (harmless: replayed at next open)");
    }
    Ok(())
}

fn commit_batch(
    store: &mut Store,
    batch: Vec<WriteRequest>,
    closed: bool,
    committed: &watch::Sender<u64>,
    on_commit: Option<&crate::Observer<Vec<StoredEvent>>>,
) -> Result<(), StoreError> {
    let groups: Vec<&[EventDraft]> = batch.iter().map(|r| r.drafts.as_slice()).collect();
    let mut backoff = BACKOFF_START;
    let mut attempt = 0u32;
    let outcome = loop {
        attempt += 1;
        match store.commit_groups(&groups) {
            Ok(o) => break o,
            Err(e) => {
                tracing::error!(
                    error = %e,
                    attempt,
                    requests = groups.len(),
                    "store commit failed; nothing acknowledged, retrying"
                );
                if closed && attempt >= SHUTDOWN_ATTEMPTS {
                    return Err(e);
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    };
    drop(groups);
    committed.send_replace(outcome.last_seq);
    if let Some(tx) = on_commit {
        if !outcome.events.is_empty() {
            // The demo may have stopped listening; the commit stands regardless.
            let _ = tx.send(outcome.events);
        }
    }
    for (i, req) in batch.into_iter().enumerate() {
        if i < outcome.accepted_groups {
            if let Some(ack) = req.ack {
                ack.fire();
            }
        }
        // Refused requests (reject_new): the ack is dropped unfired, which
        // tells the driver the data is not committed.
    }
    Ok(())
}
