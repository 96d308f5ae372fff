//! A simulated R2000 reader serving the reader side of any byte stream
//! (normally a pty master, see [`spawn_pty`]).
//!
//! It answers the start-up commands (firmware, region, power, work antenna),
//! runs 0x89/0x8B rounds on the work antenna and 0x8A fast-switch cycles,
//! reports missing antennas with error 0x22, and injects the same faults as
//! the Mercury simulator. [`SimReport::sent_epcs`] lists exactly the EPCs sent
//! in frames with a valid checksum.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::codec::{cmd, code, Decoder, Event, Frame, TagRead, BROADCAST};
use crate::serial::{PluggablePty, PtyMaster};
use crate::uhf::sim::{
    self as uhf_sim, fill_fault_fields, FaultPlan, Flow, Input, Locked, ServePty, SharedFaultLog,
    SimPort,
};
pub use crate::uhf::sim::{Faults, SimTag};

#[derive(Debug, Clone)]
pub struct R2000SimParams {
    /// Tags with 1-based antenna ports (1..=8).
    pub tags: Vec<SimTag>,
    /// The reader's own address (replies carry it).
    pub address: u8,
    /// 4 or 8 antenna ports.
    pub ports: u8,
    /// Ports that answer 0x22 "antenna missing".
    pub missing_antennas: Vec<u8>,
    /// Time one inventory round takes.
    pub round_time: Duration,
    /// Stop reporting tags after this many tag frames.
    pub max_tag_frames: Option<u64>,
    pub faults: Faults,
    pub seed: u64,
    pub firmware: (u8, u8),
    /// Stored output power (dBm) and region `(code, start, end)`.
    pub power_dbm: u8,
    pub region: (u8, u8, u8),
}

impl Default for R2000SimParams {
    fn default() -> Self {
        Self {
            tags: Vec::new(),
            address: 0x01,
            ports: 4,
            missing_antennas: Vec::new(),
            round_time: Duration::from_millis(20),
            max_tag_frames: None,
            faults: Faults::default(),
            seed: 1,
            firmware: (1, 9),
            power_dbm: 30,
            region: (1, 7, 59),
        }
    }
}

/// What the simulator did, shared across connections.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimReport {
    pub sent_epcs: Vec<Vec<u8>>,
    pub bad_crc_epcs: Vec<Vec<u8>>,
    pub garbage_bursts: u64,
    pub garbage_bytes: u64,
    pub split_frames: u64,
    /// Command codes received, in order.
    pub commands: Vec<u8>,
    /// Times the output power was written (to flash on real readers).
    pub power_writes: u64,
    pub region_writes: u64,
    pub antenna_errors: u64,
    pub connections: u64,
    pub stalls: u64,
}

#[derive(Debug)]
struct Shared {
    report: SimReport,
    power: u8,
    region: (u8, u8, u8),
}

/// A simulated reader. Cloning shares the report and stored settings.
#[derive(Debug, Clone)]
pub struct R2000Sim {
    params: Arc<R2000SimParams>,
    shared: Locked<Shared>,
    log: SharedFaultLog,
}

struct Conn<'a, T> {
    out: SimPort<T>,
    sim: &'a R2000Sim,
    work_antenna: u8,
    hop: u8,
    started: Instant,
}

impl R2000Sim {
    pub fn new(params: R2000SimParams) -> Self {
        let shared = Shared {
            report: SimReport::default(),
            power: params.power_dbm,
            region: params.region,
        };
        Self {
            params: Arc::new(params),
            shared: Locked::new(shared),
            log: SharedFaultLog::default(),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Shared) -> R) -> R {
        self.shared.with(f)
    }

    pub fn report(&self) -> SimReport {
        let mut r = self.with(|s| s.report.clone());
        fill_fault_fields!(r, self.log.snapshot());
        r
    }

    pub async fn serve<T>(&self, io: T, cancel: CancellationToken) -> io::Result<()>
    where
        T: AsyncRead + AsyncWrite + Unpin,
    {
        let plan = FaultPlan {
            faults: self.params.faults.clone(),
            seed: self.params.seed,
            max_tag_frames: self.params.max_tag_frames,
            corrupt: |b| *b = b.wrapping_add(0x33),
        };
        let mut c = Conn {
            out: SimPort::connect(io, plan, &self.log),
            sim: self,
            work_antenna: 0,
            hop: 0,
            started: Instant::now(),
        };
        c.run(cancel).await
    }

    /// Opens a pty and serves its master in a task. Returns the slave path.
    pub fn spawn_pty(
        &self,
        cancel: CancellationToken,
    ) -> io::Result<(PathBuf, JoinHandle<io::Result<()>>)> {
        uhf_sim::spawn_pty(self, cancel)
    }

    /// A pty behind the stable symlink `link`, which tests can unplug and
    /// re-plug. Call `plug()` on the result to start.
    pub fn pluggable(&self, link: impl Into<PathBuf>) -> PluggablePty {
        uhf_sim::pluggable(self, link)
    }
}

impl ServePty for R2000Sim {
    async fn serve_pty(&self, master: PtyMaster, cancel: CancellationToken) -> io::Result<()> {
        self.serve(master, cancel).await
    }
}

/// One-call helper: a simulated R2000 reader behind a real pty.
pub fn spawn_pty(
    params: R2000SimParams,
    cancel: CancellationToken,
) -> io::Result<(PathBuf, JoinHandle<io::Result<()>>)> {
    R2000Sim::new(params).spawn_pty(cancel)
}

impl<T: AsyncRead + AsyncWrite + Unpin> Conn<'_, T> {
    async fn run(&mut self, cancel: CancellationToken) -> io::Result<()> {
        let mut dec = Decoder::new();
        loop {
            while let Some(ev) = dec.next_event() {
                if let Event::Frame(f) = ev {
                    if f.address != self.sim.params.address && f.address != BROADCAST {
                        continue;
                    }
                    self.sim.with(|s| s.report.commands.push(f.cmd));
                    let flow = tokio::select! {
                        _ = cancel.cancelled() => return Ok(()),
                        r = self.handle(f) => r?,
                    };
                    if let Flow::Unplug = flow {
                        return Ok(());
                    }
                }
            }
            if let Input::Closed = self.out.next_input(&mut dec, &cancel, None).await? {
                return Ok(());
            }
        }
    }

    async fn write(&mut self, f: &Frame, tag_epc: Option<&[u8]>) -> io::Result<()> {
        let bytes = f
            .encode()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        self.out.write_frame(bytes, tag_epc).await
    }

    async fn reply(&mut self, c: u8, data: Vec<u8>) -> io::Result<Flow> {
        let f = Frame::new(self.sim.params.address, c, data);
        self.write(&f, None).await?;
        Ok(Flow::Continue)
    }

    async fn handle(&mut self, f: Frame) -> io::Result<Flow> {
        let p = self.sim.params.clone();
        match f.cmd {
            cmd::GET_FIRMWARE_VERSION => self.reply(f.cmd, vec![p.firmware.0, p.firmware.1]).await,
            cmd::SET_WORK_ANTENNA => match f.data.first() {
                Some(&a) if a < p.ports => {
                    self.work_antenna = a;
                    self.reply(f.cmd, vec![code::SUCCESS]).await
                }
                _ => self.reply(f.cmd, vec![0x47]).await,
            },
            cmd::GET_WORK_ANTENNA => self.reply(f.cmd, vec![self.work_antenna]).await,
            cmd::GET_OUTPUT_POWER => {
                let pw = self.sim.with(|s| s.power);
                self.reply(f.cmd, vec![pw]).await
            }
            cmd::SET_OUTPUT_POWER => match f.data.as_slice() {
                [pw, ..] if *pw <= 33 => {
                    let pw = *pw;
                    self.sim.with(|s| {
                        s.power = pw;
                        s.report.power_writes += 1;
                    });
                    // Real readers write flash here.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    self.reply(f.cmd, vec![code::SUCCESS]).await
                }
                _ => self.reply(f.cmd, vec![0x48]).await,
            },
            cmd::GET_FREQUENCY_REGION => {
                let (r, s, e) = self.sim.with(|s| s.region);
                self.reply(f.cmd, vec![r, s, e]).await
            }
            cmd::SET_FREQUENCY_REGION => match f.data.as_slice() {
                [r @ 1..=3, s, e] if s <= e && *e < 60 => {
                    let v = (*r, *s, *e);
                    self.sim.with(|sh| {
                        sh.region = v;
                        sh.report.region_writes += 1;
                    });
                    self.reply(f.cmd, vec![code::SUCCESS]).await
                }
                _ => self.reply(f.cmd, vec![0x49]).await,
            },
            cmd::REAL_TIME_INVENTORY | cmd::CUSTOMIZED_SESSION_TARGET_INVENTORY => {
                self.real_time_round(f.cmd).await
            }
            cmd::FAST_SWITCH_ANT_INVENTORY => self.fast_switch(&f).await,
            other => self.reply(other, vec![code::FAIL]).await,
        }
    }

    /// Tag frames for every tag on `antenna_id`; returns how many.
    async fn tags_on(&mut self, c: u8, antenna_id: u8) -> io::Result<(u32, Flow)> {
        let tags = self.sim.params.tags.clone();
        let eight = self.sim.params.ports == 8;
        let mut n = 0;
        for t in tags.iter().filter(|t| t.antenna == antenna_id + 1) {
            if self.out.tags_exhausted() {
                break;
            }
            self.hop = (self.hop + 1) % 60;
            let words = u16::try_from(t.epc.len().div_ceil(2)).unwrap_or(0) & 0x1F;
            let read = TagRead {
                antenna_id,
                freq_index: self.hop,
                pc: words << 11,
                epc: t.epc.clone(),
                rssi_raw: u8::try_from((i16::from(t.rssi_dbm) + 129).clamp(0, 127)).unwrap_or(0),
                phase: None,
            };
            let frame = Frame::new(self.sim.params.address, c, read.encode(eight));
            self.write(&frame, Some(&t.epc)).await?;
            n += 1;
            if let Flow::Unplug = self.out.after_tag_frame().await {
                return Ok((n, Flow::Unplug));
            }
        }
        Ok((n, Flow::Continue))
    }

    async fn real_time_round(&mut self, c: u8) -> io::Result<Flow> {
        let ant = self.work_antenna;
        tokio::time::sleep(self.sim.params.round_time).await;
        if self.sim.params.missing_antennas.contains(&(ant + 1)) {
            self.sim.with(|s| s.report.antenna_errors += 1);
            return self.reply(c, vec![code::ANTENNA_MISSING]).await;
        }
        let (n, flow) = self.tags_on(c, ant).await?;
        if let Flow::Unplug = flow {
            return Ok(Flow::Unplug);
        }
        let ms = u32::try_from(self.sim.params.round_time.as_millis().max(1)).unwrap_or(1);
        let rate = u16::try_from(n * 1000 / ms).unwrap_or(u16::MAX);
        let mut d = vec![ant];
        d.extend_from_slice(&rate.to_be_bytes());
        d.extend_from_slice(&n.to_be_bytes());
        self.reply(c, d).await
    }

    async fn fast_switch(&mut self, f: &Frame) -> io::Result<Flow> {
        let c = f.cmd;
        let Some(slots) = f.data.get(..8) else {
            return self.reply(c, vec![0x41]).await;
        };
        let ants: Vec<u8> = slots.chunks(2).map(|s| s[0]).filter(|&a| a < 4).collect();
        let mut total = 0u32;
        for ant in ants {
            tokio::time::sleep(self.sim.params.round_time).await;
            if self.sim.params.missing_antennas.contains(&(ant + 1)) {
                self.sim.with(|s| s.report.antenna_errors += 1);
                let e = Frame::new(self.sim.params.address, c, vec![ant, code::ANTENNA_MISSING]);
                self.write(&e, None).await?;
                continue;
            }
            let (n, flow) = self.tags_on(c, ant).await?;
            total += n;
            if let Flow::Unplug = flow {
                return Ok(Flow::Unplug);
            }
        }
        let elapsed = u32::try_from(self.started.elapsed().as_millis() % 100_000).unwrap_or(0);
        let mut d = total.to_be_bytes()[1..].to_vec();
        d.extend_from_slice(&elapsed.to_be_bytes());
        self.reply(c, d).await
    }
}
