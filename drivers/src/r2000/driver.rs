//! The R2000 driver: start-up, then real-time (0x89/0x8B per antenna) or
//! fast-switch (0x8A) inventory rounds, over any `AsyncRead + AsyncWrite`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::codec::{self, build, cmd, code, parse_inventory, Decoder, Frame, InventoryItem};
use super::{R2000Config, R2000Error, R2000Mode};
use crate::uhf::link::FrameLink;
use crate::{Clock, RawRead, ReadSink, ReaderHealth, ReaderState};

pub(super) struct Driver<'a, T> {
    link: FrameLink<T, Decoder>,
    config: &'a R2000Config,
    sink: ReadSink,
    health: Arc<ReaderHealth>,
    clock: Clock,
    reader: Arc<str>,
    /// The work antenna last set with 0x74.
    work_antenna: Option<u8>,
}

impl<'a, T: AsyncRead + AsyncWrite + Unpin> Driver<'a, T> {
    pub(super) fn new(
        io: T,
        config: &'a R2000Config,
        sink: ReadSink,
        health: Arc<ReaderHealth>,
        clock: Clock,
    ) -> Self {
        // With the public address the reply carries the reader's own
        // address, which we do not know: accept any then.
        let dec = if config.address == codec::BROADCAST {
            Decoder::new()
        } else {
            Decoder::with_address(config.address)
        };
        let reader: Arc<str> = Arc::from(config.name.as_str());
        let link = FrameLink::new(io, dec, health.clone(), reader.clone(), "r2000");
        Self {
            link,
            config,
            sink,
            health,
            clock,
            reader,
            work_antenna: None,
        }
    }

    async fn send(&mut self, f: &Frame) -> Result<(), R2000Error> {
        let bytes = f
            .encode()
            .map_err(|e| R2000Error::Protocol(e.to_string()))?;
        tracing::trace!(reader = %self.reader, cmd = f.cmd, "r2000 send");
        self.link.send(&bytes).await.map_err(R2000Error::Io)
    }

    async fn frame_until(
        &mut self,
        deadline: Instant,
        what: &'static str,
    ) -> Result<Frame, R2000Error> {
        let baud = self.config.baud;
        self.link.frame_until(deadline).await.map_err(|e| {
            e.into_error(R2000Error::Io, R2000Error::Disconnected, || {
                R2000Error::Timeout { what, baud }
            })
        })
    }

    /// Sends `f` and returns the reply with the same command code.
    async fn call(&mut self, f: Frame, what: &'static str) -> Result<Frame, R2000Error> {
        self.send(&f).await?;
        let deadline = Instant::now() + Duration::from_millis(self.config.response_timeout_ms);
        loop {
            let r = self.frame_until(deadline, what).await?;
            if r.cmd == f.cmd {
                return Ok(r);
            }
            tracing::debug!(reader = %self.reader, cmd = r.cmd, waiting_for = f.cmd, "skipping unrelated frame");
        }
    }

    /// A command whose reply is a single result code that must be success.
    async fn call_ok(&mut self, f: Frame, what: &'static str) -> Result<(), R2000Error> {
        let r = self.call(f, what).await?;
        match r.result_code() {
            Some(code::SUCCESS) => Ok(()),
            Some(c) => {
                self.note_code(c, None);
                Err(R2000Error::Rejected {
                    what,
                    code: c,
                    meaning: code::meaning(c),
                })
            }
            None => Err(R2000Error::Protocol(format!(
                "{what}: expected a one-byte result, got {} bytes",
                r.data.len()
            ))),
        }
    }

    fn note_code(&self, c: u8, antenna: Option<u16>) {
        self.health.protocol_errors.fetch_add(1, Ordering::Relaxed);
        let text = format!("0x{c:02X} {}", code::meaning(c));
        match antenna {
            Some(a) => self
                .health
                .set_detail(&format!("antenna_{a}"), text.clone()),
            None => self.health.set_detail("last_error_code", text.clone()),
        }
        tracing::warn!(reader = %self.reader, code = c, antenna, meaning = code::meaning(c), "r2000 reader reported an error");
    }

    pub(super) async fn run(mut self, cancel: CancellationToken) -> Result<(), R2000Error> {
        self.health.set_state(ReaderState::Starting);
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return Ok(()),
            r = self.start_up() => r?,
        }
        self.health.set_state(ReaderState::Running);
        tracing::info!(reader = %self.reader, mode = ?self.config.mode, "r2000 inventory started");
        loop {
            let round = async {
                match self.config.mode {
                    R2000Mode::RealTime => self.real_time_cycle().await,
                    R2000Mode::FastSwitch => self.fast_switch_round().await,
                }
            };
            // Rounds are short and the reader stops by itself at their end,
            // so abandoning one mid-way on shutdown leaves nothing running.
            let r = tokio::select! {
                biased;
                _ = cancel.cancelled() => Ok(()),
                r = round => r,
            };
            // A failure racing with shutdown is not a reader fault.
            if cancel.is_cancelled() {
                self.health.set_state(ReaderState::Stopped);
                return Ok(());
            }
            r?;
        }
    }

    async fn start_up(&mut self) -> Result<(), R2000Error> {
        let a = self.config.address;
        let fw = self
            .call(build::get_firmware_version(a), "GET_FIRMWARE_VERSION")
            .await?;
        let [major, minor] = fw.data.as_slice() else {
            return Err(R2000Error::Protocol(format!(
                "firmware version reply has {} bytes, expected 2",
                fw.data.len()
            )));
        };
        let version = format!("{major}.{minor}");
        self.health.set_detail("firmware", version.clone());
        self.health
            .set_detail("address", format!("0x{:02X}", fw.address));
        tracing::info!(reader = %self.reader, firmware = %version, address = fw.address, "r2000 reader identified");

        if let Some(region) = self.config.region {
            let (r, s, e) = region.setting();
            let cur = self
                .call(build::get_frequency_region(a), "GET_FREQUENCY_REGION")
                .await?;
            if cur.data.get(..3) != Some(&[r, s, e][..]) {
                self.call_ok(
                    build::set_frequency_region(a, r, s, e),
                    "SET_FREQUENCY_REGION",
                )
                .await?;
            }
            self.health.set_detail("region", format!("{region:?}"));
        }
        if let Some(p) = self.config.read_power_dbm {
            let cur = self
                .call(build::get_output_power(a), "GET_OUTPUT_POWER")
                .await?;
            let ports = usize::from(self.config.ports);
            let matches =
                !cur.data.is_empty() && cur.data.len() <= ports && cur.data.iter().all(|&v| v == p);
            if !matches {
                // 0x76 writes flash (and takes 100 ms+): only when needed.
                tracing::info!(reader = %self.reader, dbm = p, "setting r2000 output power");
                self.call_ok(build::set_output_power(a, p), "SET_OUTPUT_POWER")
                    .await?;
            }
            self.health.set_detail("read_power_dbm", p.to_string());
        }
        Ok(())
    }

    fn to_raw(&self, t: codec::TagRead, fallback_antenna: u8) -> RawRead {
        let antenna = if self.config.ports == 8 || t.antenna_id < 4 {
            t.antenna_id + 1
        } else {
            fallback_antenna
        };
        RawRead {
            reader: self.reader.clone(),
            antenna,
            frequency_khz: Some(t.frequency_khz()),
            rssi_dbm: Some(t.rssi_dbm()),
            phase_deg: t.phase,
            pc: Some(t.pc),
            epc: t.epc,
            tid: None,
            reader_timestamp_ms: None,
            host: self.clock.now(),
        }
    }

    async fn deliver(&mut self, reads: Vec<RawRead>) -> Result<(), R2000Error> {
        if reads.is_empty() {
            return Ok(());
        }
        let n = reads.len();
        let utc = reads.last().map(|r| r.host.utc_ms).unwrap_or(0);
        self.sink.reads(reads).await?;
        self.health.count_reads(n, utc);
        Ok(())
    }

    async fn real_time_cycle(&mut self) -> Result<(), R2000Error> {
        let a = self.config.address;
        let antennas = self.config.antennas.clone();
        for port in antennas {
            let id = port - 1;
            if self.work_antenna != Some(id) {
                self.call_ok(build::set_work_antenna(a, id), "SET_WORK_ANTENNA")
                    .await?;
                self.work_antenna = Some(id);
            }
            let f = match self.config.session {
                Some(s) => build::session_inventory(a, s, 0, self.config.repeat),
                None => build::real_time_inventory(a, self.config.repeat),
            };
            let inv_cmd = f.cmd;
            self.send(&f).await?;
            let reads = self.collect_round(inv_cmd, port).await?;
            self.deliver(reads).await?;
        }
        Ok(())
    }

    async fn fast_switch_round(&mut self) -> Result<(), R2000Error> {
        let mut slots = [(0xFF, 1); 4];
        for (slot, &port) in slots.iter_mut().zip(&self.config.antennas) {
            *slot = (port - 1, 1);
        }
        let f = build::fast_switch(self.config.address, slots, 0, self.config.repeat);
        self.send(&f).await?;
        let first = self.config.antennas.first().copied().unwrap_or(1);
        let reads = self
            .collect_round(cmd::FAST_SWITCH_ANT_INVENTORY, first)
            .await?;
        self.deliver(reads).await
    }

    /// Collects tag frames until the round's end (or an error frame).
    async fn collect_round(&mut self, inv_cmd: u8, port: u8) -> Result<Vec<RawRead>, R2000Error> {
        let deadline = Instant::now() + Duration::from_millis(self.config.round_timeout_ms);
        let mut reads = Vec::new();
        let eight = self.config.ports == 8;
        loop {
            let f = self.frame_until(deadline, "end of inventory round").await?;
            if f.cmd != inv_cmd {
                self.health.protocol_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(reader = %self.reader, cmd = f.cmd, "unexpected frame during inventory");
                continue;
            }
            match parse_inventory(&f, eight) {
                Ok(InventoryItem::Tag(t)) => reads.push(self.to_raw(t, port)),
                Ok(InventoryItem::RoundEnd {
                    antenna_id,
                    read_rate,
                    total_reads,
                }) => {
                    self.health.set_detail(
                        &format!("antenna_{}", u16::from(antenna_id) + 1),
                        format!("ok, {read_rate} tags/s, {total_reads} reads last round"),
                    );
                    return Ok(reads);
                }
                Ok(InventoryItem::FastSwitchEnd {
                    total_reads,
                    duration_ms,
                }) => {
                    self.health.set_detail(
                        "last_round",
                        format!("{total_reads} reads in {duration_ms} ms"),
                    );
                    return Ok(reads);
                }
                Ok(InventoryItem::AntennaError { antenna_id, code }) => {
                    // Antenna ids come from the wire: 0xFF + 1 must not overflow.
                    self.note_code(code, Some(u16::from(antenna_id) + 1));
                }
                Ok(InventoryItem::Error(code::NO_TAG)) => return Ok(reads),
                Ok(InventoryItem::Error(c)) => {
                    let ant = (inv_cmd != cmd::FAST_SWITCH_ANT_INVENTORY).then_some(port);
                    self.note_code(c, ant.map(u16::from));
                    // Do not spin on a reader that errors every round (an
                    // antenna unplugged): the error is in health already.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    return Ok(reads);
                }
                Err(e) => {
                    self.health.protocol_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(reader = %self.reader, error = %e, "undecodable inventory frame");
                }
            }
        }
    }
}
