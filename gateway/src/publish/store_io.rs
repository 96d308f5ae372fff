//! The publisher's SQLite connections live on their own threads so that no
//! rusqlite call ever runs on a tokio worker.

use std::sync::mpsc as std_mpsc;

use tokio::sync::oneshot;

use crate::store::{Store, StoreConfig, StoreError, StoreStats, StoredEvent};

use super::PublishError;

enum Cmd {
    Read {
        after: u64,
        limit: usize,
        reply: oneshot::Sender<Result<Vec<StoredEvent>, StoreError>>,
    },
    Mark {
        upto: u64,
        reply: Option<oneshot::Sender<Result<(), String>>>,
    },
    Stats {
        reply: oneshot::Sender<Result<StoreStats, StoreError>>,
    },
}

#[derive(Debug, Clone)]
pub struct StoreIo {
    tx: std_mpsc::Sender<Cmd>,
    mark_tx: std_mpsc::Sender<Cmd>,
}

async fn start_thread(
    name: &str,
    config: StoreConfig,
    gateway_id: String,
    rx: std_mpsc::Receiver<Cmd>,
) -> Result<(), PublishError> {
    let (ready_tx, ready_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let mut store = match Store::open_reader(&config, &gateway_id) {
                Ok(s) => {
                    let _ = ready_tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            while let Ok(cmd) = rx.recv() {
                match cmd {
                    Cmd::Mark { mut upto, reply } => {
                        // Coalesce queued marks: only the highest matters.
                        let mut replies = Vec::new();
                        replies.extend(reply);
                        let mut deferred = Vec::new();
                        while let Ok(next) = rx.try_recv() {
                            match next {
                                Cmd::Mark { upto: u, reply: r } => {
                                    upto = upto.max(u);
                                    replies.extend(r);
                                }
                                other => deferred.push(other),
                            }
                        }
                        let res = store.mark_published(upto).map_err(|e| e.to_string());
                        if let Err(e) = &res {
                            tracing::error!(upto, error = %e, "cannot record the published watermark");
                        }
                        for r in replies {
                            let _ = r.send(res.clone());
                        }
                        for cmd in deferred {
                            serve_simple(&store, cmd);
                        }
                    }
                    other => serve_simple(&store, other),
                }
            }
        })
        .map_err(|e| PublishError::Store(format!("cannot start the store thread: {e}")))?;
    match ready_rx.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(PublishError::Store(format!(
            "cannot open the event store for publishing: {e}"
        ))),
        Err(_) => Err(gone()),
    }
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cmd")
    }
}

fn gone() -> PublishError {
    PublishError::Store("the publisher's store thread stopped".into())
}

impl StoreIo {
    /// Opens two connections on two threads: one serves reads, the other
    /// raises the watermark. A watermark write waits for SQLite's write lock
    /// (the store writer commits constantly); reads must never queue behind it.
    pub async fn open(config: StoreConfig, gateway_id: String) -> Result<StoreIo, PublishError> {
        let (tx, rx) = std_mpsc::channel::<Cmd>();
        let (mark_tx, mark_rx) = std_mpsc::channel::<Cmd>();
        start_thread("publish-store", config.clone(), gateway_id.clone(), rx).await?;
        start_thread("publish-mark", config, gateway_id, mark_rx).await?;
        Ok(StoreIo { tx, mark_tx })
    }

    pub async fn read_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, PublishError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Read {
                after,
                limit,
                reply,
            })
            .map_err(|_| gone())?;
        rx.await
            .map_err(|_| gone())?
            .map_err(|e| PublishError::Store(format!("reading events after seq {after}: {e}")))
    }

    /// Queues a watermark update without waiting for it.
    pub fn mark_soon(&self, upto: u64) -> Result<(), PublishError> {
        self.mark_tx
            .send(Cmd::Mark { upto, reply: None })
            .map_err(|_| gone())
    }

    /// Writes the watermark and waits for the commit.
    pub async fn mark_now(&self, upto: u64) -> Result<(), PublishError> {
        let (reply, rx) = oneshot::channel();
        self.mark_tx
            .send(Cmd::Mark {
                upto,
                reply: Some(reply),
            })
            .map_err(|_| gone())?;
        rx.await
            .map_err(|_| gone())?
            .map_err(|e| PublishError::Store(format!("recording published seq {upto}: {e}")))
    }

    pub async fn stats(&self) -> Result<StoreStats, PublishError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Cmd::Stats { reply }).map_err(|_| gone())?;
        rx.await
            .map_err(|_| gone())?
            .map_err(|e| PublishError::Store(format!("reading store stats: {e}")))
    }
}

fn serve_simple(store: &Store, cmd: Cmd) {
    match cmd {
        Cmd::Read {
            after,
            limit,
            reply,
        } => {
            let _ = reply.send(store.events_after(after, limit, false));
        }
        Cmd::Stats { reply } => {
            let _ = reply.send(store.stats());
        }
        Cmd::Mark { .. } => {}
    }
}
