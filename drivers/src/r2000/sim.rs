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
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::codec::{cmd, code, Decoder, Event, Frame, TagRead, BROADCAST};
pub use crate::mercury::sim::{Faults, SimTag};
use crate::serial::{open_pty, PluggablePty};

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
    tag_frames: u64,
    stalled: bool,
    power: u8,
    region: (u8, u8, u8),
}

/// A simulated reader. Cloning shares the report and stored settings.
#[derive(Debug, Clone)]
pub struct R2000Sim {
    params: Arc<R2000SimParams>,
    shared: Arc<Mutex<Shared>>,
}

enum Flow {
    Continue,
    Unplug,
}

struct Conn<'a, T> {
    io: T,
    sim: &'a R2000Sim,
    rng: StdRng,
    frames: u64,
    work_antenna: u8,
    hop: u8,
    started: Instant,
}

impl R2000Sim {
    pub fn new(params: R2000SimParams) -> Self {
        let shared = Shared {
            report: SimReport::default(),
            tag_frames: 0,
            stalled: false,
            power: params.power_dbm,
            region: params.region,
        };
        Self {
            params: Arc::new(params),
            shared: Arc::new(Mutex::new(shared)),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Shared) -> R) -> R {
        let mut g = match self.shared.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&mut g)
    }

    pub fn report(&self) -> SimReport {
        self.with(|s| s.report.clone())
    }

    pub async fn serve<T>(&self, io: T, cancel: CancellationToken) -> io::Result<()>
    where
        T: AsyncRead + AsyncWrite + Unpin,
    {
        let n = self.with(|s| {
            s.report.connections += 1;
            s.report.connections
        });
        let mut c = Conn {
            io,
            sim: self,
            rng: StdRng::seed_from_u64(self.params.seed.wrapping_add(n)),
            frames: 0,
            work_antenna: 0,
            hop: 0,
            started: Instant::now(),
        };
        c.run(cancel).await
    }

    pub fn spawn_pty(
        &self,
        cancel: CancellationToken,
    ) -> io::Result<(PathBuf, JoinHandle<io::Result<()>>)> {
        let (master, path) = open_pty()?;
        let sim = self.clone();
        let task = tokio::spawn(async move { sim.serve(master, cancel).await });
        Ok((path, task))
    }

    pub fn pluggable(&self, link: impl Into<PathBuf>) -> PluggablePty {
        let sim = self.clone();
        PluggablePty::new(link, move |master, cancel| {
            let sim = sim.clone();
            async move { sim.serve(master, cancel).await }
        })
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
        let mut buf = vec![0u8; 512];
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
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                n = self.io.read(&mut buf) => {
                    let n = n?;
                    if n == 0 {
                        return Ok(());
                    }
                    dec.push(buf.get(..n).unwrap_or(&[]));
                }
            }
        }
    }

    async fn write(&mut self, f: &Frame, tag_epc: Option<&[u8]>) -> io::Result<()> {
        let mut bytes = f
            .encode()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        self.frames += 1;
        let faults = self.sim.params.faults.clone();
        let hit = |every: Option<u64>, n: u64| every.is_some_and(|e| e > 0 && n % e == 0);
        if hit(faults.garbage_every, self.frames) {
            let len = self.rng.gen_range(1..=16);
            let garbage: Vec<u8> = (0..len).map(|_| self.rng.gen()).collect();
            self.sim.with(|s| {
                s.report.garbage_bursts += 1;
                s.report.garbage_bytes += len;
            });
            self.io.write_all(&garbage).await?;
        }
        if let Some(epc) = tag_epc {
            let n = self.sim.with(|s| {
                s.tag_frames += 1;
                s.tag_frames
            });
            if hit(faults.bad_crc_every, n) {
                if let Some(last) = bytes.last_mut() {
                    *last = last.wrapping_add(0x33);
                }
                self.sim.with(|s| s.report.bad_crc_epcs.push(epc.to_vec()));
            } else {
                self.sim.with(|s| s.report.sent_epcs.push(epc.to_vec()));
            }
        }
        if hit(faults.split_every, self.frames) && bytes.len() > 1 {
            let cut = self.rng.gen_range(1..bytes.len());
            self.sim.with(|s| s.report.split_frames += 1);
            self.io.write_all(&bytes[..cut]).await?;
            self.io.flush().await?;
            tokio::time::sleep(Duration::from_millis(5)).await;
            self.io.write_all(&bytes[cut..]).await?;
        } else {
            self.io.write_all(&bytes).await?;
        }
        self.io.flush().await
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

    fn exhausted(&self) -> bool {
        let max = self.sim.params.max_tag_frames;
        self.sim.with(|s| max.is_some_and(|m| s.tag_frames >= m))
    }

    async fn after_tag_frame(&mut self) -> Flow {
        let f = &self.sim.params.faults;
        let n = self.sim.with(|s| s.tag_frames);
        if let Some((after, d)) = f.stall {
            let go = self.sim.with(|s| {
                let go = !s.stalled && n >= after;
                if go {
                    s.stalled = true;
                    s.report.stalls += 1;
                }
                go
            });
            if go {
                tokio::time::sleep(d).await;
            }
        }
        if f.unplug_after.is_some_and(|u| n >= u) {
            return Flow::Unplug;
        }
        Flow::Continue
    }

    /// Tag frames for every tag on `antenna_id`; returns how many.
    async fn tags_on(&mut self, c: u8, antenna_id: u8) -> io::Result<(u32, Flow)> {
        let tags = self.sim.params.tags.clone();
        let eight = self.sim.params.ports == 8;
        let mut n = 0;
        for t in tags.iter().filter(|t| t.antenna == antenna_id + 1) {
            if self.exhausted() {
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
            if let Flow::Unplug = self.after_tag_frame().await {
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
