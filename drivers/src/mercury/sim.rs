//! A simulated Mercury module, serving the module side of any byte stream
//! (normally the master of a pty, see [`spawn_pty`]).
//!
//! It answers the start-up commands the driver sends, streams tag frames
//! after a continuous-read start, keeps a tag buffer for timed searches, and
//! injects faults on request. Its [`SimReport`] records exactly which EPCs it
//! sent in frames with a valid CRC, so tests can compare them with the reads
//! the driver produced.
//!
//! Assumptions where the reference has no capture: the 0x2F acknowledgement
//! DATA is `[option]`; GET_CURRENT_PROGRAM answers `0x01` in the bootloader
//! and `0x02` in the application (the driver only tests `& 0x03 == 1`).
//!
//! The tag buffer lives in the simulator, not in a connection, so it
//! survives the gateway's restarts as the module's RAM does. It keeps a
//! read index that every GET_TAG_ID_BUFFER fetch moves past the records it
//! returns and a write index (the records held); CLEAR_TAG_ID_BUFFER resets
//! both. The bare `29` answers `[read u16][write u16]`. Read option `01`
//! (resend) rewinds the read index to the start of the previous fetch and
//! fetches again; that the module's firmware does exactly this is an
//! assumption (see docs/hardware-testing.md), so `resend: false` makes the
//! simulator refuse it with 0x0105 as a module without it would.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::codec::{
    encode_stream_tag, encode_tag_buffer, op, parse_start_continuous, status, tag_buffer,
    BufferIndices, Command, Decoder, Event, ReadMultiple, Response, TagRecord, VersionInfo,
    MAX_RESPONSE_DATA,
};
use crate::serial::{PluggablePty, PtyMaster};
use crate::uhf::sim::{
    self as uhf_sim, fill_fault_fields, FaultPlan, Flow, Input, Locked, ServePty, SharedFaultLog,
    SimPort,
};
pub use crate::uhf::sim::{Faults, SimTag};

#[derive(Debug, Clone)]
pub struct MercurySimParams {
    pub tags: Vec<SimTag>,
    /// Time between inventory rounds while streaming.
    pub cycle: Duration,
    /// Stop reporting tags after this many tag frames (then keep-alives only),
    /// so a test can wait for the driver to catch up and compare totals.
    pub max_tag_frames: Option<u64>,
    pub faults: Faults,
    pub seed: u64,
    /// Power up in the bootloader (tag commands fail with 0x0101 until 0x04).
    pub start_in_bootloader: bool,
    pub version: VersionInfo,
    /// How the tags enter the field of the timed searches (tag-buffer mode).
    pub arrivals: Arrivals,
    /// Honour GET_TAG_ID_BUFFER's resend option (default true).
    pub resend: bool,
    /// Records in one GET_TAG_ID_BUFFER reply at most (the frame size
    /// limits it too). Default: as many as fit.
    pub max_records_per_fetch: usize,
    /// Called after each GET_TAG_ID_BUFFER reply with records has been
    /// written, with the EPCs it handed over (tests kill the host there).
    pub on_fetch: Option<FetchHook>,
}

/// Which of `tags` a timed search finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Arrivals {
    /// All of them, every search.
    #[default]
    AllPresent,
    /// One at a time, in order: each stays in the field until the module
    /// has handed it over in a fetch reply, then the next one enters.
    OneAtATime,
}

/// Called with the EPCs of one fetch reply.
pub type FetchFn = dyn Fn(&[Vec<u8>]) + Send + Sync;

/// See [`MercurySimParams::on_fetch`].
#[derive(Clone)]
pub struct FetchHook(pub Arc<FetchFn>);

impl fmt::Debug for FetchHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FetchHook")
    }
}

impl Default for MercurySimParams {
    fn default() -> Self {
        Self {
            tags: Vec::new(),
            cycle: Duration::from_millis(100),
            max_tag_frames: None,
            faults: Faults::default(),
            seed: 1,
            start_in_bootloader: false,
            // The M6e Nano-style VERSION reply from the reference (V2), with
            // hardware[0] = 0x30 (M6e Nano).
            version: VersionInfo {
                bootloader: [0x23, 0x01, 0x06, 0x00],
                hardware: [0x30, 0x00, 0x02, 0x01],
                fw_date: [0x20, 0x24, 0x09, 0x13],
                fw_version: [0x02, 0x01, 0x06, 0x08],
                protocols: 0x10,
            },
            arrivals: Arrivals::AllPresent,
            resend: true,
            max_records_per_fetch: usize::MAX,
            on_fetch: None,
        }
    }
}

impl MercurySimParams {
    /// A small SGTIN-96 population on antenna 1, for `tracegate demo`.
    pub fn demo() -> Self {
        let tags = (1u8..=5)
            .map(|serial| {
                // SGTIN-96 urn:epc:id:sgtin:0614141.812345.67xx (TDS example).
                let epc = vec![
                    0x30, 0x34, 0x25, 0x7B, 0xF7, 0x19, 0x4E, 0x40, 0x00, 0x00, 0x1A, serial,
                ];
                SimTag::new(epc, 1, -50 - i8::try_from(serial).unwrap_or(0))
            })
            .collect();
        Self {
            tags,
            cycle: Duration::from_millis(500),
            ..Self::default()
        }
    }
}

/// What the simulator did, shared across connections (re-plugs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimReport {
    /// EPCs in tag frames sent with a valid CRC (streamed frames and
    /// tag-buffer fetch replies), in order.
    pub sent_epcs: Vec<Vec<u8>>,
    /// EPCs in streamed tag frames sent with a corrupted CRC.
    pub bad_crc_epcs: Vec<Vec<u8>>,
    pub garbage_bursts: u64,
    pub garbage_bytes: u64,
    pub split_frames: u64,
    pub keepalives: u64,
    /// Opcodes of the valid commands received, in order.
    pub commands: Vec<u8>,
    pub buffer_clears: u64,
    /// Tags currently in the simulated tag buffer (its write index).
    pub buffer_len: usize,
    /// The tag buffer's read index.
    pub buffer_read_index: usize,
    /// GET_TAG_ID_BUFFER replies that carried records.
    pub fetches: u64,
    /// Fetches with the resend option that were honoured.
    pub resends: u64,
    pub connections: u64,
    pub stalls: u64,
}

#[derive(Debug, Default)]
struct Shared {
    report: SimReport,
    /// Tag buffer: survives reconnects, like the module's RAM. Its length
    /// is the write index.
    buffer: Vec<SimTag>,
    /// Records before it were fetched since the last clear.
    read_index: usize,
    /// Where the previous fetch started, for the resend option.
    last_fetch_start: Option<usize>,
    /// With [`Arrivals::OneAtATime`], the tag in the field.
    next_arrival: usize,
}

/// A simulated module. Cloning shares the report and tag buffer.
#[derive(Debug, Clone)]
pub struct MercurySim {
    params: Arc<MercurySimParams>,
    shared: Locked<Shared>,
    log: SharedFaultLog,
}

struct Conn<'a, T> {
    out: SimPort<T>,
    sim: &'a MercurySim,
    booted: bool,
    streaming: Option<ReadMultiple>,
    next_round: Instant,
    started: Instant,
    hop: u32,
    sync_rm: Option<ReadMultiple>,
}

impl MercurySim {
    pub fn new(params: MercurySimParams) -> Self {
        Self {
            params: Arc::new(params),
            shared: Locked::default(),
            log: SharedFaultLog::default(),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Shared) -> R) -> R {
        self.shared.with(f)
    }

    pub fn report(&self) -> SimReport {
        let mut r = self.with(|s| {
            let mut r = s.report.clone();
            r.buffer_len = s.buffer.len();
            r.buffer_read_index = s.read_index;
            r
        });
        fill_fault_fields!(r, self.log.snapshot());
        r
    }

    /// Serves one connection until `cancel`, EOF/error, or an injected unplug.
    pub async fn serve<T>(&self, io: T, cancel: CancellationToken) -> io::Result<()>
    where
        T: AsyncRead + AsyncWrite + Unpin,
    {
        let plan = FaultPlan {
            faults: self.params.faults.clone(),
            seed: self.params.seed,
            max_tag_frames: self.params.max_tag_frames,
            corrupt: |b| *b ^= 0x5A,
        };
        let now = Instant::now();
        let mut c = Conn {
            out: SimPort::connect(io, plan, &self.log),
            sim: self,
            booted: !self.params.start_in_bootloader,
            streaming: None,
            next_round: now,
            started: now,
            hop: 0,
            sync_rm: None,
        };
        c.run(cancel).await
    }

    /// Opens a pty and serves its master in a task. Returns the slave path
    /// (e.g. `/dev/pts/5`) to configure as the reader's `port`.
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

impl ServePty for MercurySim {
    async fn serve_pty(&self, master: PtyMaster, cancel: CancellationToken) -> io::Result<()> {
        self.serve(master, cancel).await
    }
}

/// One-call helper for `tracegate demo`: a simulated Mercury module behind a
/// real pty. Returns the device path and the serving task.
pub fn spawn_pty(
    params: MercurySimParams,
    cancel: CancellationToken,
) -> io::Result<(PathBuf, JoinHandle<io::Result<()>>)> {
    MercurySim::new(params).spawn_pty(cancel)
}

impl<T: AsyncRead + AsyncWrite + Unpin> Conn<'_, T> {
    async fn run(&mut self, cancel: CancellationToken) -> io::Result<()> {
        let mut dec = Decoder::<Command>::new();
        loop {
            while let Some(ev) = dec.next_event() {
                if let Event::Frame(c) = ev {
                    self.sim.with(|s| s.report.commands.push(c.opcode));
                    if let Flow::Unplug = self.handle(c).await? {
                        return Ok(());
                    }
                }
            }
            let tick = self.streaming.is_some().then_some(self.next_round);
            match self.out.next_input(&mut dec, &cancel, tick).await? {
                Input::Closed => return Ok(()),
                Input::Pushed => {}
                Input::Tick => {
                    if let Flow::Unplug = self.round().await? {
                        return Ok(());
                    }
                    self.next_round = Instant::now() + self.sim.params.cycle;
                }
            }
        }
    }

    fn record(&self, t: &SimTag, rm: &ReadMultiple) -> TagRecord {
        let mut r = TagRecord::gen2(&t.epc);
        r.read_count = Some(1);
        r.rssi_dbm = Some(t.rssi_dbm);
        r.antenna = Some((t.antenna << 4) | (t.antenna & 0x0F));
        r.frequency_khz = Some(902_750 + 500 * (self.hop % 50));
        r.timestamp_ms =
            Some(u32::try_from(self.started.elapsed().as_millis()).unwrap_or(u32::MAX));
        r.phase_deg = Some(u16::try_from((self.hop * 37) % 360).unwrap_or(0));
        r.gpio = Some(0);
        if let Some((_, _, words)) = rm.embedded_read {
            let want = usize::from(words) * 2;
            r.data = t.tid.as_ref().map(|tid| {
                let mut d = tid.clone();
                d.resize(want, 0);
                d
            });
        }
        r
    }

    async fn write_frame(&mut self, resp: &Response, tag_epc: Option<&[u8]>) -> io::Result<()> {
        let bytes = resp
            .encode()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        self.out.write_frame(bytes, tag_epc).await
    }

    /// One streamed inventory round: a frame per tag, or a keep-alive.
    async fn round(&mut self) -> io::Result<Flow> {
        let Some(rm) = self.streaming.clone() else {
            return Ok(Flow::Continue);
        };
        self.hop = self.hop.wrapping_add(1);
        let mut sent_any = false;
        let tags = self.sim.params.tags.clone();
        for t in &tags {
            if self.out.tags_exhausted() {
                break;
            }
            let rec = self.record(t, &rm);
            let data = encode_stream_tag(rm.search_flags, rm.metadata, &rec);
            let resp = Response::new(op::READ_TAG_ID_MULTIPLE, status::SUCCESS, data);
            self.write_frame(&resp, Some(&t.epc)).await?;
            sent_any = true;
            if let Flow::Unplug = self.out.after_tag_frame().await {
                return Ok(Flow::Unplug);
            }
        }
        if !sent_any {
            let ka = Response::new(op::READ_TAG_ID_MULTIPLE, status::NO_TAGS_FOUND, []);
            self.sim.with(|s| s.report.keepalives += 1);
            self.write_frame(&ka, None).await?;
        }
        Ok(Flow::Continue)
    }

    async fn reply(&mut self, opcode: u8, st: u16, data: Vec<u8>) -> io::Result<Flow> {
        self.write_frame(&Response::new(opcode, st, data), None)
            .await?;
        Ok(Flow::Continue)
    }

    async fn handle(&mut self, c: Command) -> io::Result<Flow> {
        let ok = status::SUCCESS;
        if self.streaming.is_some() && c.opcode != op::MULTI_PROTOCOL_TAG_OP {
            // While streaming, a reply queues behind the tag frames already
            // in the module's output ("buried in tag frames").
            if let Flow::Unplug = self.round().await? {
                return Ok(Flow::Unplug);
            }
        }
        match c.opcode {
            op::VERSION => {
                self.reply(op::VERSION, ok, self.sim.params.version.encode())
                    .await
            }
            op::GET_CURRENT_PROGRAM => {
                let program = if self.booted { 0x02 } else { 0x01 };
                self.reply(c.opcode, ok, vec![program]).await
            }
            op::BOOT_FIRMWARE => {
                self.booted = true;
                self.reply(op::BOOT_FIRMWARE, ok, self.sim.params.version.encode())
                    .await
            }
            _ if !self.booted => self.reply(c.opcode, status::INVALID_OPCODE, vec![]).await,
            op::SET_TAG_PROTOCOL
            | op::SET_ANTENNA_PORT
            | op::SET_REGION
            | op::SET_READ_TX_POWER
            | op::SET_READER_OPTIONAL_PARAMS
            | op::SET_PROTOCOL_PARAM
            | op::SET_POWER_MODE => self.reply(c.opcode, ok, vec![]).await,
            op::MULTI_PROTOCOL_TAG_OP => match c.data.get(2) {
                Some(0x01) => match parse_start_continuous(&c.data) {
                    Ok(rm) => {
                        self.streaming = Some(rm);
                        self.next_round = Instant::now();
                        self.reply(c.opcode, ok, vec![0x01]).await
                    }
                    Err(_) => self.reply(c.opcode, 0x0105, vec![]).await,
                },
                Some(0x02) => {
                    self.streaming = None;
                    self.reply(c.opcode, ok, vec![0x02]).await
                }
                _ => self.reply(c.opcode, 0x0105, vec![]).await,
            },
            op::READ_TAG_ID_MULTIPLE => self.sync_search(&c).await,
            op::GET_TAG_ID_BUFFER => self.fetch(&c).await,
            op::CLEAR_TAG_ID_BUFFER => {
                self.sim.with(|s| {
                    s.buffer.clear();
                    s.read_index = 0;
                    s.last_fetch_start = None;
                    s.report.buffer_clears += 1;
                });
                self.reply(c.opcode, ok, vec![]).await
            }
            other => self.reply(other, 0x0102, vec![]).await,
        }
    }

    async fn sync_search(&mut self, c: &Command) -> io::Result<Flow> {
        let rm = match ReadMultiple::parse(&c.data) {
            Ok(rm) => rm,
            Err(_) => return self.reply(c.opcode, 0x0105, vec![]).await,
        };
        // The module answers when the search time is up.
        tokio::time::sleep(Duration::from_millis(u64::from(rm.timeout_ms).min(2000))).await;
        let exhausted = self.out.tags_exhausted();
        let params = &self.sim.params;
        let count = self.sim.with(|s| {
            if !exhausted {
                let field = match params.arrivals {
                    Arrivals::AllPresent => &params.tags[..],
                    Arrivals::OneAtATime => params
                        .tags
                        .get(s.next_arrival..)
                        .and_then(|rest| rest.get(..1))
                        .unwrap_or(&[]),
                };
                for t in field {
                    // The buffer holds each EPC once until it is cleared.
                    if s.buffer.len() < usize::from(u16::MAX)
                        && !s.buffer.iter().any(|b| b.epc == t.epc)
                    {
                        s.buffer.push(t.clone());
                    }
                }
            }
            // Records not fetched yet (the buffer may hold fetched ones).
            s.buffer.len().saturating_sub(s.read_index)
        });
        self.streaming = None;
        if count == 0 {
            return self.reply(c.opcode, status::NO_TAGS_FOUND, vec![]).await;
        }
        let mut d = vec![0x10];
        d.extend_from_slice(&rm.search_flags.to_be_bytes());
        d.extend_from_slice(&u32::try_from(count).unwrap_or(u32::MAX).to_be_bytes());
        self.sync_rm = Some(rm);
        self.reply(c.opcode, status::SUCCESS, d).await
    }

    async fn fetch(&mut self, c: &Command) -> io::Result<Flow> {
        let (flags, option) = match c.data.as_slice() {
            [] => {
                let idx = self.sim.with(|s| BufferIndices {
                    read: u16::try_from(s.read_index).unwrap_or(u16::MAX),
                    write: u16::try_from(s.buffer.len()).unwrap_or(u16::MAX),
                });
                return self.reply(c.opcode, status::SUCCESS, idx.encode()).await;
            }
            [a, b, option] => (u16::from_be_bytes([*a, *b]), *option),
            // The legacy count and index forms (no metadata) are not simulated.
            _ => return self.reply(c.opcode, 0x0109, vec![]).await,
        };
        let resend = match option {
            0x00 => false,
            tag_buffer::READ_OPTION_RESEND if self.sim.params.resend => true,
            _ => return self.reply(c.opcode, 0x0105, vec![]).await,
        };
        let rm = self.sync_rm.clone().unwrap_or(ReadMultiple {
            search_flags: 0x0013,
            timeout_ms: 0,
            metadata: flags,
            embedded_read: None,
        });
        let (start, pending): (usize, Vec<SimTag>) = self.sim.with(|s| {
            if resend {
                if let Some(start) = s.last_fetch_start {
                    s.read_index = start;
                }
            }
            let pending = s
                .buffer
                .iter()
                .skip(s.read_index)
                .take(self.sim.params.max_records_per_fetch)
                .cloned()
                .collect();
            (s.read_index, pending)
        });
        if pending.is_empty() {
            return self.reply(c.opcode, status::NO_TAGS_FOUND, vec![]).await;
        }
        let mut recs = Vec::new();
        let mut epcs = Vec::new();
        for t in pending {
            let rec = self.record(&t, &rm);
            recs.push(rec);
            if encode_tag_buffer(flags, &recs).len() > MAX_RESPONSE_DATA {
                recs.pop();
                break;
            }
            epcs.push(t.epc.clone());
        }
        if recs.is_empty() {
            return self.reply(c.opcode, 0x040B, vec![]).await;
        }
        let tags = &self.sim.params.tags;
        self.sim.with(|s| {
            s.last_fetch_start = Some(start);
            s.read_index = start + recs.len();
            s.report.fetches += 1;
            if resend {
                s.report.resends += 1;
            }
            // The tag in the field has been handed over: the next arrives.
            if let Some(t) = tags.get(s.next_arrival) {
                if epcs.contains(&t.epc) {
                    s.next_arrival += 1;
                }
            }
        });
        let data = encode_tag_buffer(flags, &recs);
        self.write_frame(&Response::new(c.opcode, status::SUCCESS, data), None)
            .await?;
        self.out
            .log()
            .with(|l| l.sent_epcs.extend(epcs.iter().cloned()));
        if let Some(hook) = &self.sim.params.on_fetch {
            (hook.0)(&epcs);
        }
        Ok(Flow::Continue)
    }
}
