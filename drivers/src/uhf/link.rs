//! The driver side of a framed serial link: write a frame, then read until
//! a valid frame arrives or a deadline passes, counting checksum failures
//! and resyncs in the reader's health.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::ReaderHealth;

/// Longest silence inside a frame before the partial frame is dropped.
pub(crate) const INTER_BYTE_GAP: Duration = Duration::from_millis(250);

/// A wait for bytes is cut into slices of at most this, each counted as a
/// turn of the task (`ReaderHealth::alive`): a quiet line with a long
/// timeout is alive; a task blocked elsewhere stops counting.
const ALIVE_SLICE: Duration = Duration::from_secs(1);

/// Longest a frame may take to enter the port. The longest frame of either
/// protocol (about 260 bytes) takes 0.27 s at 9,600 baud, so a write still
/// pending after this is a line that takes nothing, not a slow one.
pub(crate) const SEND_DEADLINE: Duration = Duration::from_secs(2);

/// One decoder event, in the terms the link needs.
pub(crate) enum Decoded<F> {
    Frame(F),
    /// A frame-shaped run whose check failed; `code` is its opcode/command.
    BadCheck {
        code: u8,
        len: usize,
    },
    Skipped(usize),
}

/// A protocol's incremental frame decoder.
pub(crate) trait FrameDecoder {
    type Frame;
    fn push(&mut self, bytes: &[u8]);
    fn buffered(&self) -> usize;
    fn skip_stale(&mut self) -> bool;
    fn next_decoded(&mut self) -> Option<Decoded<Self::Frame>>;
}

/// Why no frame came.
#[derive(Debug)]
pub(crate) enum LinkError {
    Timeout,
    Io(io::Error),
    /// The stream ended (EOF): the port went away.
    Disconnected,
}

impl LinkError {
    /// Maps onto a protocol's error type; only the timeout needs context.
    pub(crate) fn into_error<E>(
        self,
        io: impl FnOnce(io::Error) -> E,
        disconnected: E,
        timeout: impl FnOnce() -> E,
    ) -> E {
        match self {
            Self::Timeout => timeout(),
            Self::Io(e) => io(e),
            Self::Disconnected => disconnected,
        }
    }
}

pub(crate) struct FrameLink<T, D> {
    io: T,
    dec: D,
    buf: Vec<u8>,
    health: Arc<ReaderHealth>,
    reader: Arc<str>,
    protocol: &'static str,
}

impl<T: AsyncRead + AsyncWrite + Unpin, D: FrameDecoder> FrameLink<T, D> {
    pub(crate) fn new(
        io: T,
        dec: D,
        health: Arc<ReaderHealth>,
        reader: Arc<str>,
        protocol: &'static str,
    ) -> Self {
        Self {
            io,
            dec,
            buf: vec![0; 1024],
            health,
            reader,
            protocol,
        }
    }

    /// Writes a frame into the port's kernel buffer. No `flush`: on a
    /// tokio-serial port it is a blocking `tcdrain()` on the runtime's
    /// worker (~270 ms per frame at 9600 baud, forever on a wedged USB
    /// adapter, where no timeout can interrupt it). The kernel sends what
    /// was written; the reply's deadline covers a reader that never answers.
    ///
    /// The write itself has a deadline: a module that stops reading (flow
    /// control held, a wedged USB adapter) fills the line and the write
    /// would never complete. Past [`SEND_DEADLINE`] it fails, and the reader
    /// reopens the port with backoff (`reader_down`) instead of hanging its
    /// task until the watchdog restarts the whole gateway, every door with it.
    pub(crate) async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        match tokio::time::timeout(SEND_DEADLINE, self.io.write_all(bytes)).await {
            Ok(sent) => sent,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the port took no bytes for {} s: the module or its USB adapter is not reading (flow control held, or the adapter is wedged); reopening the port, replug or power-cycle the reader if this repeats",
                    SEND_DEADLINE.as_secs()
                ),
            )),
        }
    }

    /// The next valid frame already buffered, counting check failures and
    /// resyncs.
    pub(crate) fn buffered_frame(&mut self) -> Option<D::Frame> {
        while let Some(ev) = self.dec.next_decoded() {
            match ev {
                Decoded::Frame(f) => {
                    self.health.frames_ok.fetch_add(1, Ordering::Relaxed);
                    return Some(f);
                }
                Decoded::BadCheck { code, len } => {
                    self.health.crc_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(reader = %self.reader, protocol = self.protocol, code, len, "frame with bad checksum dropped");
                }
                Decoded::Skipped(n) => {
                    self.health.resyncs.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(reader = %self.reader, protocol = self.protocol, skipped = n, "decoder resynchronised");
                }
            }
        }
        None
    }

    /// Waits for the next valid frame until `deadline`.
    pub(crate) async fn frame_until(&mut self, deadline: Instant) -> Result<D::Frame, LinkError> {
        loop {
            self.health.alive();
            if let Some(f) = self.buffered_frame() {
                return Ok(f);
            }
            // Bytes of a frame arrive back to back; a quiet line with a
            // partial frame buffered means a false header (garbage).
            let partial = self.dec.buffered() > 0;
            let now = Instant::now();
            let wait = if partial {
                deadline.min(now + INTER_BYTE_GAP)
            } else {
                deadline.min(now + ALIVE_SLICE)
            };
            let n = match tokio::time::timeout_at(wait, self.io.read(&mut self.buf)).await {
                Err(_) if partial && Instant::now() < deadline => {
                    if self.dec.skip_stale() {
                        self.health.resyncs.fetch_add(1, Ordering::Relaxed);
                    }
                    continue;
                }
                // Only a slice ran out: keep waiting (counted as a turn above).
                Err(_) if Instant::now() < deadline => continue,
                Err(_) => return Err(LinkError::Timeout),
                Ok(Err(e)) => return Err(LinkError::Io(e)),
                Ok(Ok(0)) => return Err(LinkError::Disconnected),
                Ok(Ok(n)) => n,
            };
            let chunk = self.buf.get(..n).unwrap_or(&[]);
            self.dec.push(chunk);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use super::*;
    use crate::r2000::codec::Decoder;

    /// A port whose writes land at once and whose flush never ends, like
    /// `tcdrain()` on a wedged USB serial adapter; with `full` set it takes
    /// no bytes at all (every write stays pending), like a line nobody
    /// drains. It never answers.
    struct WedgedDrain(Vec<u8>, bool);

    impl AsyncWrite for WedgedDrain {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            if self.1 {
                return Poll::Pending;
            }
            self.0.extend_from_slice(data);
            Poll::Ready(Ok(data.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Pending
        }
        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    impl AsyncRead for WedgedDrain {
        fn poll_read(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            _buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn a_write_to_a_line_that_takes_nothing_fails_at_its_deadline() {
        let health = ReaderHealth::new("r", "r2000");
        let mut link = FrameLink::new(
            WedgedDrain(Vec::new(), true),
            Decoder::new(),
            health,
            Arc::from("r"),
            "r2000",
        );
        let start = Instant::now();
        let sent = tokio::time::timeout(Duration::from_secs(10), link.send(&[0xA0, 0x03, 0x01]))
            .await
            .expect("the write has no deadline");
        let err = sent.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("took no bytes"), "{err}");
        assert!(start.elapsed() >= SEND_DEADLINE, "not before the deadline");
    }

    /// A reader waiting on a quiet line is alive: the watchdog sees a turn
    /// each second, even with a response timeout far above its limit.
    #[tokio::test]
    async fn a_quiet_line_counts_a_turn_every_second_until_the_deadline() {
        let health = ReaderHealth::new("r", "r2000");
        let mut link = FrameLink::new(
            WedgedDrain(Vec::new(), false),
            Decoder::new(),
            health.clone(),
            Arc::from("r"),
            "r2000",
        );
        let start = Instant::now();
        let r = link.frame_until(start + Duration::from_millis(2500)).await;
        assert!(matches!(r, Err(LinkError::Timeout)));
        assert!(
            start.elapsed() >= Duration::from_millis(2500),
            "the deadline holds"
        );
        let turns = health.progress.load(Ordering::Relaxed);
        assert!((3..=4).contains(&turns), "{turns} turns in 2.5 s");
    }

    #[tokio::test]
    async fn sending_a_frame_never_waits_for_the_port_to_drain() {
        let health = ReaderHealth::new("r", "r2000");
        let mut link = FrameLink::new(
            WedgedDrain(Vec::new(), false),
            Decoder::new(),
            health,
            Arc::from("r"),
            "r2000",
        );
        let sent = tokio::time::timeout(Duration::from_secs(5), link.send(&[0xA0, 0x03, 0x01]))
            .await
            .expect("send waited on the port's flush");
        sent.unwrap();
        assert_eq!(link.io.0, [0xA0, 0x03, 0x01]);
    }
}
