//! A bounded, lossy channel for watching the gateway from outside: the
//! demo's display of committed events, tests and benchmarks listening for
//! PUBACKs. The producer (the store writer, the publisher) must never wait
//! for a watcher, so when the watcher falls behind and the channel is full
//! the item is dropped and counted instead. Watching is never part of
//! delivery: every committed event is in SQLite and goes out over MQTT
//! whether or not anyone sees it here.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

/// The sending side; cheap to clone (clones share the drop counter).
#[derive(Debug)]
pub struct Observer<T> {
    tx: mpsc::Sender<T>,
    dropped: Arc<AtomicU64>,
}

impl<T> Clone for Observer<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            dropped: self.dropped.clone(),
        }
    }
}

/// The watcher has gone away; nothing more needs sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the observer's receiver is closed")]
pub struct ObserverClosed;

impl<T> Observer<T> {
    /// A channel holding up to `capacity` items (at least one).
    pub fn channel(capacity: usize) -> (Observer<T>, mpsc::Receiver<T>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (
            Observer {
                tx,
                dropped: Arc::new(AtomicU64::new(0)),
            },
            rx,
        )
    }

    /// Hands `item` to the watcher without waiting; when the channel is full
    /// the item is dropped and counted (see [`Observer::dropped`]).
    pub fn send(&self, item: T) -> Result<(), ObserverClosed> {
        match self.tx.try_send(item) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(ObserverClosed),
        }
    }

    /// Items dropped so far because the watcher fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The drop count, readable after every sender is gone. Keeping a
    /// clone of the `Observer` for that would keep the channel open, and a
    /// watcher waiting for the end of the stream would wait forever.
    pub fn drops(&self) -> Drops {
        Drops(self.dropped.clone())
    }
}

/// How many items an [`Observer`] dropped; does not keep the channel open.
#[derive(Debug, Clone)]
pub struct Drops(Arc<AtomicU64>);

impl Drops {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_channel_drops_and_counts_instead_of_waiting() {
        let (tx, mut rx) = Observer::channel(2);
        for i in 0..5 {
            assert_eq!(tx.send(i), Ok(()));
        }
        assert_eq!(tx.dropped(), 3);
        let drops = tx.drops();
        assert_eq!((rx.try_recv(), rx.try_recv()), (Ok(0), Ok(1)));
        assert!(rx.try_recv().is_err());
        assert_eq!(tx.send(5), Ok(()));
        drop(tx);
        assert_eq!(rx.try_recv(), Ok(5));
        assert!(
            rx.try_recv().is_err(),
            "closed once the last sender is gone"
        );
        assert_eq!(drops.get(), 3);
        let (tx, rx) = Observer::channel(1);
        drop(rx);
        assert_eq!(tx.send(9), Err(ObserverClosed));
    }
}
