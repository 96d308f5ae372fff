//! What the Mercury and R2000 simulators share: the simulated tag, the fault
//! plan, the fault-injecting connection with its log, and serving a
//! simulator behind a pty (fixed or pluggable).
//!
//! Each simulator keeps its own command handling and report; the fault
//! counters of its report come from the fault log kept here.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::link::FrameDecoder;
use crate::serial::{open_pty, PluggablePty, PtyMaster};

/// One tag in the simulated field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimTag {
    pub epc: Vec<u8>,
    /// 1-based antenna port that sees it.
    pub antenna: u8,
    pub rssi_dbm: i8,
    /// TID bank, returned when the driver asks for an embedded TID read.
    pub tid: Option<Vec<u8>>,
}

impl SimTag {
    pub fn new(epc: impl Into<Vec<u8>>, antenna: u8, rssi_dbm: i8) -> Self {
        Self {
            epc: epc.into(),
            antenna,
            rssi_dbm,
            tid: None,
        }
    }
}

/// Faults to inject. Counters ("every n-th") count frames the simulator
/// writes; `None` disables a fault.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Write every n-th frame in two pieces with a short pause between.
    pub split_every: Option<u64>,
    /// Write 1–16 random bytes before every n-th frame.
    pub garbage_every: Option<u64>,
    /// Corrupt the CRC of every n-th streamed tag frame.
    pub bad_crc_every: Option<u64>,
    /// Once `after` tag frames have been sent, send nothing for `for`.
    pub stall: Option<(u64, Duration)>,
    /// Drop the connection (serve returns) after this many tag frames:
    /// the pty closes under the driver, as when a USB adapter is pulled.
    pub unplug_after: Option<u64>,
}

/// Whether a connection goes on after a step.
pub(crate) enum Flow {
    Continue,
    Unplug,
}

/// What the fault injection did, shared across a simulator's connections.
#[derive(Debug, Clone, Default)]
pub(crate) struct FaultLog {
    /// EPCs in tag frames sent with a valid check, in order.
    pub(crate) sent_epcs: Vec<Vec<u8>>,
    /// EPCs in tag frames sent with a corrupted check.
    pub(crate) bad_crc_epcs: Vec<Vec<u8>>,
    pub(crate) garbage_bursts: u64,
    pub(crate) garbage_bytes: u64,
    pub(crate) split_frames: u64,
    pub(crate) connections: u64,
    pub(crate) stalls: u64,
    /// Tag frames written so far (valid and corrupted).
    tag_frames: u64,
    stalled: bool,
}

/// Copies the [`FaultLog`] counters into a simulator report with fields of
/// the same names.
macro_rules! fill_fault_fields {
    ($report:expr, $log:expr) => {{
        let log = $log;
        $report.sent_epcs = log.sent_epcs;
        $report.bad_crc_epcs = log.bad_crc_epcs;
        $report.garbage_bursts = log.garbage_bursts;
        $report.garbage_bytes = log.garbage_bytes;
        $report.split_frames = log.split_frames;
        $report.connections = log.connections;
        $report.stalls = log.stalls;
    }};
}
pub(crate) use fill_fault_fields;

/// Simulator state shared by its clones and connections. A panic while it
/// was held (a failed test assertion) does not make it unusable.
#[derive(Debug, Default)]
pub(crate) struct Locked<S>(Arc<Mutex<S>>);

impl<S> Clone for Locked<S> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<S> Locked<S> {
    pub(crate) fn new(state: S) -> Self {
        Self(Arc::new(Mutex::new(state)))
    }

    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut S) -> R) -> R {
        let mut g = match self.0.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&mut g)
    }
}

/// The fault log of one simulator, shared by its clones and connections.
pub(crate) type SharedFaultLog = Locked<FaultLog>;

impl SharedFaultLog {
    pub(crate) fn snapshot(&self) -> FaultLog {
        self.with(|l| l.clone())
    }
}

/// What a connection's writer needs to know of its simulator.
pub(crate) struct FaultPlan {
    pub(crate) faults: Faults,
    pub(crate) seed: u64,
    /// Stop reporting tags after this many tag frames.
    pub(crate) max_tag_frames: Option<u64>,
    /// Breaks a frame's check (applied to its last byte).
    pub(crate) corrupt: fn(&mut u8),
}

/// One connection of a simulator: reads commands into its decoder, writes
/// frames injecting the planned faults, and logs what was sent.
pub(crate) struct SimPort<T> {
    io: T,
    /// Read buffer.
    buf: Vec<u8>,
    rng: StdRng,
    /// Frames written on this connection.
    frames: u64,
    plan: FaultPlan,
    log: SharedFaultLog,
}

fn hit(every: Option<u64>, n: u64) -> bool {
    every.is_some_and(|e| e > 0 && n.is_multiple_of(e))
}

impl<T: AsyncWrite + Unpin> SimPort<T> {
    /// Counts a new connection and seeds its randomness from the plan's seed
    /// and the connection number, so runs are repeatable.
    pub(crate) fn connect(io: T, plan: FaultPlan, log: &SharedFaultLog) -> Self {
        let conn_no = log.with(|l| {
            l.connections += 1;
            l.connections
        });
        Self {
            io,
            buf: vec![0; 512],
            rng: StdRng::seed_from_u64(plan.seed.wrapping_add(conn_no)),
            frames: 0,
            plan,
            log: log.clone(),
        }
    }

    pub(crate) fn log(&self) -> &SharedFaultLog {
        &self.log
    }

    /// Writes one encoded frame. `tag_epc` marks a tag frame: it counts
    /// towards the tag-frame faults and lands in the log as sent or corrupted.
    pub(crate) async fn write_frame(
        &mut self,
        mut bytes: Vec<u8>,
        tag_epc: Option<&[u8]>,
    ) -> io::Result<()> {
        self.frames += 1;
        let f = &self.plan.faults;
        if hit(f.garbage_every, self.frames) {
            let len = self.rng.gen_range(1..=16);
            let garbage: Vec<u8> = (0..len).map(|_| self.rng.gen()).collect();
            self.log.with(|l| {
                l.garbage_bursts += 1;
                l.garbage_bytes += len;
            });
            self.io.write_all(&garbage).await?;
        }
        if let Some(epc) = tag_epc {
            let tag_no = self.log.with(|l| {
                l.tag_frames += 1;
                l.tag_frames
            });
            if hit(f.bad_crc_every, tag_no) {
                if let Some(last) = bytes.last_mut() {
                    (self.plan.corrupt)(last);
                }
                self.log.with(|l| l.bad_crc_epcs.push(epc.to_vec()));
            } else {
                self.log.with(|l| l.sent_epcs.push(epc.to_vec()));
            }
        }
        if hit(f.split_every, self.frames) && bytes.len() > 1 {
            let cut = self.rng.gen_range(1..bytes.len());
            self.log.with(|l| l.split_frames += 1);
            self.io.write_all(&bytes[..cut]).await?;
            self.io.flush().await?;
            tokio::time::sleep(Duration::from_millis(5)).await;
            self.io.write_all(&bytes[cut..]).await?;
        } else {
            self.io.write_all(&bytes).await?;
        }
        self.io.flush().await
    }

    /// Whether the plan's tag-frame budget is spent.
    pub(crate) fn tags_exhausted(&self) -> bool {
        let max = self.plan.max_tag_frames;
        self.log.with(|l| max.is_some_and(|m| l.tag_frames >= m))
    }

    /// Applies the stall and unplug faults after a tag frame.
    pub(crate) async fn after_tag_frame(&mut self) -> Flow {
        let f = &self.plan.faults;
        let n = self.log.with(|l| l.tag_frames);
        if let Some((after, d)) = f.stall {
            let stall_now = self.log.with(|l| {
                let go = !l.stalled && n >= after;
                if go {
                    l.stalled = true;
                    l.stalls += 1;
                }
                go
            });
            if stall_now {
                tokio::time::sleep(d).await;
            }
        }
        if f.unplug_after.is_some_and(|u| n >= u) {
            return Flow::Unplug;
        }
        Flow::Continue
    }
}

/// What woke a connection up.
pub(crate) enum Input {
    /// Bytes arrived and went into the decoder.
    Pushed,
    /// The round timer fired.
    Tick,
    /// Cancelled, or the host closed the stream.
    Closed,
}

impl<T: AsyncRead + AsyncWrite + Unpin> SimPort<T> {
    /// Waits for bytes from the host (pushed into `dec`), for `tick` if
    /// given, or for `cancel`.
    pub(crate) async fn next_input<D: FrameDecoder>(
        &mut self,
        dec: &mut D,
        cancel: &CancellationToken,
        tick: Option<Instant>,
    ) -> io::Result<Input> {
        let tick_at = tick.unwrap_or_else(Instant::now);
        tokio::select! {
            _ = cancel.cancelled() => Ok(Input::Closed),
            n = self.io.read(&mut self.buf) => match n? {
                0 => Ok(Input::Closed),
                n => {
                    dec.push(self.buf.get(..n).unwrap_or(&[]));
                    Ok(Input::Pushed)
                }
            },
            _ = tokio::time::sleep_until(tick_at), if tick.is_some() => Ok(Input::Tick),
        }
    }
}

/// A simulator that can serve the module side of a pty.
pub(crate) trait ServePty: Clone + Send + Sync + 'static {
    fn serve_pty(
        &self,
        master: PtyMaster,
        cancel: CancellationToken,
    ) -> impl Future<Output = io::Result<()>> + Send;
}

/// Opens a pty and serves its master in a task. Returns the slave path.
pub(crate) fn spawn_pty<S: ServePty>(
    sim: &S,
    cancel: CancellationToken,
) -> io::Result<(PathBuf, JoinHandle<io::Result<()>>)> {
    let (master, path) = open_pty()?;
    let sim = sim.clone();
    let task = tokio::spawn(async move { sim.serve_pty(master, cancel).await });
    Ok((path, task))
}

/// A pty behind the stable symlink `link`, which tests can unplug and re-plug.
pub(crate) fn pluggable<S: ServePty>(sim: &S, link: impl Into<PathBuf>) -> PluggablePty {
    let sim = sim.clone();
    PluggablePty::new(link, move |master, cancel| {
        let sim = sim.clone();
        async move { sim.serve_pty(master, cancel).await }
    })
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    #[tokio::test]
    async fn every_nth_tag_frame_is_corrupted_and_logged_apart_from_the_valid_ones() {
        let (mut host, module) = tokio::io::duplex(1024);
        let log = SharedFaultLog::default();
        let plan = FaultPlan {
            faults: Faults {
                bad_crc_every: Some(2),
                unplug_after: Some(3),
                ..Faults::default()
            },
            seed: 7,
            max_tag_frames: Some(3),
            corrupt: |b| *b ^= 0xFF,
        };
        let mut w = SimPort::connect(module, plan, &log);
        let mut flows = Vec::new();
        for epc in [[1u8], [2], [3]] {
            w.write_frame(vec![0xAA, epc[0], 0x10], Some(&epc))
                .await
                .unwrap();
            flows.push(matches!(w.after_tag_frame().await, Flow::Unplug));
        }
        w.write_frame(vec![0xAA, 0x00, 0x20], None).await.unwrap();
        assert!(w.tags_exhausted());
        assert_eq!(flows, [false, false, true]);

        let mut got = [0u8; 12];
        host.read_exact(&mut got).await.unwrap();
        assert_eq!(
            got,
            [0xAA, 1, 0x10, 0xAA, 2, 0xEF, 0xAA, 3, 0x10, 0xAA, 0, 0x20]
        );
        let l = log.snapshot();
        assert_eq!(l.sent_epcs, vec![vec![1], vec![3]]);
        assert_eq!(l.bad_crc_epcs, vec![vec![2]]);
        assert_eq!((l.connections, l.tag_frames), (1, 3));
    }
}
