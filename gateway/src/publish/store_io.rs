//! The publisher's SQLite reader connection lives on its own thread so that
//! no rusqlite call ever runs on a tokio worker.

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
    /// Opens the reader connection on a new thread.
    pub async fn open(config: StoreConfig, gateway_id: String) -> Result<StoreIo, PublishError> {
        let (tx, rx) = std_mpsc::channel::<Cmd>();
        let (ready_tx, ready_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name("publish-store".into())
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
                        Cmd::Read {
                            after,
                            limit,
                            reply,
                        } => {
                            let _ = reply.send(store.events_after(after, limit, false));
                        }
                        Cmd::Mark { mut upto, reply } => {
                            // Coalesce queued fire-and-forget marks: only the highest matters.
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
                            let res = store.mark_published(upto);
                            if let Err(e) = &res {
                                tracing::error!(upto, error = %e, "cannot record the published watermark");
                            }
                            let res = res.map_err(|e| e.to_string());
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
            Ok(Ok(())) => Ok(StoreIo { tx }),
            Ok(Err(e)) => Err(PublishError::Store(format!(
                "cannot open the event store for publishing: {e}"
            ))),
            Err(_) => Err(gone()),
        }
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
        self.tx
            .send(Cmd::Mark { upto, reply: None })
            .map_err(|_| gone())
    }

    /// Writes the watermark and waits for the commit.
    pub async fn mark_now(&self, upto: u64) -> Result<(), PublishError> {
        let (reply, rx) = oneshot::channel();
        self.tx
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
