//! The channel from a driver into the gateway's pipeline.
//!
//! Policy when full: drivers wait (backpressure). A UHF reader's own buffer
//! (or the serial line) then absorbs the burst; reads are never dropped here.
//! Drivers that can lose nothing across a crash (Mercury tag-buffer mode)
//! attach a [`CommitAck`] and clear the reader's buffer only once it fires.

use tokio::sync::{mpsc, oneshot};

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

/// Sending half handed to a driver.
#[derive(Debug, Clone)]
pub struct ReadSink {
    tx: mpsc::Sender<ReaderMsg>,
}

/// The pipeline has shut down; the driver should return.
#[derive(Debug, thiserror::Error)]
#[error("the read pipeline is closed (gateway shutting down)")]
pub struct SinkClosed;

impl ReadSink {
    pub fn new(tx: mpsc::Sender<ReaderMsg>) -> Self {
        Self { tx }
    }

    /// A sink and its receiving end, with room for `capacity` messages.
    pub fn channel(capacity: usize) -> (Self, mpsc::Receiver<ReaderMsg>) {
        let (tx, rx) = mpsc::channel(capacity);
        (Self { tx }, rx)
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
            .blocking_send(ReaderMsg::Tap(tap))
            .map_err(|_| SinkClosed)
    }

    pub async fn send(&self, msg: ReaderMsg) -> Result<(), SinkClosed> {
        self.tx.send(msg).await.map_err(|_| SinkClosed)
    }
}
