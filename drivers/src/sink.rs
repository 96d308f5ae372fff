//! The channel from a driver into the gateway's pipeline.
//!
//! Bounded twice: in messages, and in reads (a batch weighs its number of
//! reads), so the memory it holds is bounded whatever the batch sizes.
//! Policy when full: drivers wait (backpressure). A UHF reader's own buffer
//! (or the serial line) then absorbs the burst; reads are never dropped here.
//! Drivers that can lose nothing across a crash (Mercury tag-buffer mode)
//! attach a [`CommitAck`] and clear the reader's buffer only once it fires.
//!
//! The channel also knows the batches *in flight*: handed to a send (even
//! one still waiting for room) and not yet taken by the pipeline, and the
//! oldest read time among them. The dedup engine's time never moves past
//! it, by the clock or by newer reads of another reader that got through
//! first: those reads are judged on their own time when they come (see the
//! gateway's `dedup.rs`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::read::{RawRead, Tap};

/// Fires once every event derived from a batch of reads is committed to the
/// store. Dropping it unfired means "not committed": keep the data.
#[derive(Debug)]
pub struct CommitAck(pub oneshot::Sender<()>);

impl CommitAck {
    /// A pair: the ack to send along, and the receiver the driver waits on.
    pub fn pair() -> (CommitAck, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        (CommitAck(tx), rx)
    }

    pub fn fire(self) {
        // The driver may have given up waiting (shutdown); nothing to do then.
        let _ = self.0.send(());
    }
}

#[derive(Debug)]
pub enum ReaderMsg {
    Reads {
        reads: Vec<RawRead>,
        ack: Option<CommitAck>,
    },
    Tap(Tap),
}

/// Reads the channel holds at most (queued, not yet taken by the
/// pipeline), unless [`ReadSink::bounded`] says otherwise: about 1.5 MiB
/// of reads, 8 s of a busy portal at 1,000 reads/s (a stalled store holds
/// more as drafts on the way to it), and little enough that a slow
/// pipeline still drains it well within the shutdown deadline.
pub const MAX_QUEUED_READS: usize = 8_192;

/// What the sending and receiving halves share.
#[derive(Debug)]
struct Shared {
    /// Room for reads: a batch holds as many permits as it has reads
    /// (at most all of them, so an oversized batch still passes alone).
    room: Arc<Semaphore>,
    capacity: usize,
    /// Batches of reads handed to a send and not yet received: oldest read
    /// time (host monotonic ms) → number of batches. A lock per batch, on
    /// both sides: a few hundred a second at most.
    in_flight: Mutex<BTreeMap<u64, usize>>,
    /// Sends of reads that found the channel full and had to wait.
    waits: AtomicU64,
}

/// A message with the room it takes; the room is given back when the
/// pipeline receives it.
#[derive(Debug)]
struct Queued {
    msg: ReaderMsg,
    _room: Option<OwnedSemaphorePermit>,
    /// The batch's oldest read time, while it counts as in flight.
    oldest: Option<u64>,
}

impl Shared {
    fn in_flight(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, usize>> {
        // A panic while holding this lock cannot leave the map torn (each
        // change is one insert or remove); carry on with it.
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add(&self, oldest: u64) {
        *self.in_flight().entry(oldest).or_insert(0) += 1;
    }

    fn remove(&self, oldest: u64) {
        let mut m = self.in_flight();
        if let Some(n) = m.get_mut(&oldest) {
            *n -= 1;
            if *n == 0 {
                m.remove(&oldest);
            }
        }
    }
}

/// Sending half handed to a driver.
#[derive(Debug, Clone)]
pub struct ReadSink {
    tx: mpsc::Sender<Queued>,
    shared: Arc<Shared>,
}

/// The pipeline's receiving half.
#[derive(Debug)]
pub struct ReadReceiver {
    rx: mpsc::Receiver<Queued>,
    shared: Arc<Shared>,
}

impl ReadReceiver {
    /// The next message; `None` once every sink is dropped and the queue
    /// is empty.
    pub async fn recv(&mut self) -> Option<ReaderMsg> {
        let q = self.rx.recv().await?;
        Some(self.taken(q))
    }

    /// The next message if one is queued.
    pub fn try_recv(&mut self) -> Result<ReaderMsg, mpsc::error::TryRecvError> {
        let q = self.rx.try_recv()?;
        Ok(self.taken(q))
    }

    fn taken(&self, q: Queued) -> ReaderMsg {
        if let Some(oldest) = q.oldest {
            self.shared.remove(oldest);
        }
        q.msg
    }

    /// The oldest read time (host monotonic ms) of the batches queued or
    /// being sent (a reader waiting for room counts too); `None`: none.
    pub fn oldest_in_flight(&self) -> Option<u64> {
        self.shared.in_flight().keys().next().copied()
    }

    /// Reads queued now (room taken).
    pub fn queued_reads(&self) -> usize {
        self.shared
            .capacity
            .saturating_sub(self.shared.room.available_permits())
    }

    /// The most reads the channel holds.
    pub fn capacity_reads(&self) -> usize {
        self.shared.capacity
    }

    /// Sends of reads so far that found the channel full and waited.
    pub fn waits(&self) -> u64 {
        self.shared.waits.load(Ordering::Relaxed)
    }
}

/// Counts a batch in flight until the receiver takes it; a send that is
/// abandoned (its future dropped at shutdown) uncounts it.
struct InFlight<'a> {
    shared: &'a Shared,
    oldest: u64,
    armed: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.shared.remove(self.oldest);
        }
    }
}

/// The pipeline has shut down; the driver should return.
#[derive(Debug, thiserror::Error)]
#[error("the read pipeline is closed (gateway shutting down)")]
pub struct SinkClosed;

impl ReadSink {
    /// A sink and its receiving end, with room for `capacity` messages
    /// and [`MAX_QUEUED_READS`] reads.
    pub fn channel(capacity: usize) -> (Self, ReadReceiver) {
        Self::bounded(capacity, MAX_QUEUED_READS)
    }

    /// A sink and its receiving end, with room for `messages` messages and
    /// `reads` reads.
    pub fn bounded(messages: usize, reads: usize) -> (Self, ReadReceiver) {
        let (tx, rx) = mpsc::channel(messages.max(1));
        let capacity = reads.clamp(1, Semaphore::MAX_PERMITS);
        let shared = Arc::new(Shared {
            room: Arc::new(Semaphore::new(capacity)),
            capacity,
            in_flight: Mutex::new(BTreeMap::new()),
            waits: AtomicU64::new(0),
        });
        (
            Self {
                tx,
                shared: shared.clone(),
            },
            ReadReceiver { rx, shared },
        )
    }

    pub async fn reads(&self, reads: Vec<RawRead>) -> Result<(), SinkClosed> {
        if reads.is_empty() {
            return Ok(());
        }
        self.send(ReaderMsg::Reads { reads, ack: None }).await
    }

    /// Sends reads and returns a receiver that completes once they are committed.
    pub async fn reads_acked(
        &self,
        reads: Vec<RawRead>,
    ) -> Result<oneshot::Receiver<()>, SinkClosed> {
        let (ack, rx) = CommitAck::pair();
        self.send(ReaderMsg::Reads {
            reads,
            ack: Some(ack),
        })
        .await?;
        Ok(rx)
    }

    pub async fn tap(&self, tap: Tap) -> Result<(), SinkClosed> {
        self.send(ReaderMsg::Tap(tap)).await
    }

    /// Blocking send for drivers on their own thread (PC/SC).
    pub fn blocking_tap(&self, tap: Tap) -> Result<(), SinkClosed> {
        self.tx
            .blocking_send(Queued {
                msg: ReaderMsg::Tap(tap),
                _room: None,
                oldest: None,
            })
            .map_err(|_| SinkClosed)
    }

    /// Sends a message, waiting while the channel is full (in messages or,
    /// for reads, in reads).
    pub async fn send(&self, msg: ReaderMsg) -> Result<(), SinkClosed> {
        let (weight, oldest) = match &msg {
            ReaderMsg::Reads { reads, .. } => (
                reads.len().clamp(1, self.shared.capacity),
                reads.iter().map(|r| r.host.mono_ms).min(),
            ),
            ReaderMsg::Tap(_) => (0, None),
        };
        let Some(oldest) = oldest else {
            return self
                .tx
                .send(Queued {
                    msg,
                    _room: None,
                    oldest: None,
                })
                .await
                .map_err(|_| SinkClosed);
        };
        // In flight from before the wait for room: the reads are stamped.
        self.shared.add(oldest);
        let mut guard = InFlight {
            shared: &self.shared,
            oldest,
            armed: true,
        };
        let n = u32::try_from(weight).unwrap_or(u32::MAX);
        let room = match self.shared.room.clone().try_acquire_many_owned(n) {
            Ok(p) => p,
            Err(_) => {
                self.shared.waits.fetch_add(1, Ordering::Relaxed);
                self.shared
                    .room
                    .clone()
                    .acquire_many_owned(n)
                    .await
                    .map_err(|_| SinkClosed)?
            }
        };
        self.tx
            .send(Queued {
                msg,
                _room: Some(room),
                oldest: Some(oldest),
            })
            .await
            .map_err(|_| SinkClosed)?;
        // Queued: the receiver uncounts it when it takes it.
        guard.armed = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::HostTime;

    fn batch(n: usize, at_ms: u64) -> Vec<RawRead> {
        (0..n)
            .map(|i| RawRead {
                reader: Arc::from("r"),
                antenna: 1,
                epc: vec![0x30, i as u8],
                tid: None,
                pc: None,
                rssi_dbm: None,
                frequency_khz: None,
                phase_deg: None,
                reader_timestamp_ms: None,
                host: HostTime {
                    mono_ms: at_ms + i as u64,
                    utc_ms: 0,
                    clock_synced: true,
                },
            })
            .collect()
    }

    #[tokio::test]
    async fn a_batch_waiting_for_room_holds_back_time_until_the_pipeline_takes_it() {
        let (sink, mut rx) = ReadSink::bounded(16, 10);
        sink.reads(batch(8, 100)).await.unwrap();
        assert_eq!((rx.queued_reads(), rx.oldest_in_flight()), (8, Some(100)));
        // Room for 2 more reads only: this one waits, yet counts.
        let waiting = tokio::spawn({
            let sink = sink.clone();
            async move { sink.reads(batch(5, 50)).await }
        });
        tokio::task::yield_now().await;
        while rx.waits() == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(rx.oldest_in_flight(), Some(50));
        let ReaderMsg::Reads { reads, .. } = rx.recv().await.unwrap() else {
            panic!("not reads")
        };
        assert_eq!(reads.len(), 8);
        waiting.await.unwrap().unwrap();
        assert_eq!((rx.queued_reads(), rx.oldest_in_flight()), (5, Some(50)));
        rx.recv().await.unwrap();
        assert_eq!((rx.queued_reads(), rx.oldest_in_flight()), (0, None));
    }

    #[tokio::test]
    async fn an_abandoned_send_no_longer_counts_as_in_flight() {
        let (sink, rx) = ReadSink::bounded(16, 4);
        sink.reads(batch(4, 10)).await.unwrap();
        let send = sink.reads(batch(2, 5));
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(20), send)
                .await
                .is_err(),
            "no room: the send waits"
        );
        assert_eq!(rx.oldest_in_flight(), Some(10));
    }
}
