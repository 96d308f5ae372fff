//! The Mercury driver: start-up handshake, then streaming or tag-buffer
//! inventory, over any `AsyncRead + AsyncWrite`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::codec::{
    self, cmd, op, parse_read_multiple_count, parse_stream_frame, parse_tag_buffer, status,
    Command, Decoder, ReadMultiple, Response, StreamItem, TagRecord, VersionInfo,
};
use super::{MercuryConfig, MercuryError, MercuryMode};
use crate::uhf::link::FrameLink;
use crate::{Clock, RawRead, ReadSink, ReaderHealth, ReaderState};

/// Reads handed to the pipeline in one message at most.
const MAX_BATCH: usize = 64;

pub(super) struct Driver<'a, T> {
    link: FrameLink<T, Decoder<Response>>,
    config: &'a MercuryConfig,
    sink: ReadSink,
    health: Arc<ReaderHealth>,
    clock: Clock,
    reader: Arc<str>,
    /// Streamed frames turned up while we expected command replies: a
    /// previous process left continuous reading on.
    saw_stream: bool,
}

impl<'a, T: AsyncRead + AsyncWrite + Unpin> Driver<'a, T> {
    pub(super) fn new(
        io: T,
        config: &'a MercuryConfig,
        sink: ReadSink,
        health: Arc<ReaderHealth>,
        clock: Clock,
    ) -> Self {
        let reader: Arc<str> = Arc::from(config.name.as_str());
        let link = FrameLink::new(
            io,
            Decoder::new(),
            health.clone(),
            reader.clone(),
            "mercury",
        );
        Self {
            link,
            config,
            sink,
            health,
            clock,
            reader,
            saw_stream: false,
        }
    }

    fn response_timeout(&self) -> Duration {
        Duration::from_millis(self.config.response_timeout_ms)
    }

    async fn send(&mut self, c: &Command) -> Result<(), MercuryError> {
        let bytes = c
            .encode()
            .map_err(|e| MercuryError::Protocol(e.to_string()))?;
        tracing::trace!(reader = %self.reader, opcode = c.opcode, "mercury send");
        self.link.send(&bytes).await.map_err(MercuryError::Io)
    }

    /// The next valid frame already buffered.
    fn buffered_frame(&mut self) -> Option<Response> {
        self.link.buffered_frame()
    }

    /// Waits for the next valid frame until `deadline`.
    async fn frame_until(
        &mut self,
        deadline: Instant,
        what: &'static str,
    ) -> Result<Response, MercuryError> {
        let baud = self.config.baud;
        self.link.frame_until(deadline).await.map_err(|e| {
            e.into_error(MercuryError::Io, MercuryError::Disconnected, || {
                MercuryError::Timeout { what, baud }
            })
        })
    }

    /// Sends `c` and returns its reply (same opcode). Streamed frames still in
    /// flight are skipped; a boot message means the module reset.
    async fn call(&mut self, c: Command, what: &'static str) -> Result<Response, MercuryError> {
        self.send(&c).await?;
        let deadline = Instant::now() + self.response_timeout();
        loop {
            let r = self.frame_until(deadline, what).await?;
            if r.opcode == c.opcode {
                return Ok(r);
            }
            if r.opcode == op::BOOT_FIRMWARE {
                return Err(MercuryError::ModuleReset);
            }
            if matches!(
                r.opcode,
                op::READ_TAG_ID_MULTIPLE | op::MULTI_PROTOCOL_TAG_OP
            ) {
                self.saw_stream = true;
            }
            tracing::debug!(reader = %self.reader, opcode = r.opcode, waiting_for = c.opcode, "skipping unrelated frame");
        }
    }

    async fn call_ok(&mut self, c: Command, what: &'static str) -> Result<Response, MercuryError> {
        let r = self.call(c, what).await?;
        if r.status != status::SUCCESS {
            self.health.protocol_errors.fetch_add(1, Ordering::Relaxed);
            return Err(MercuryError::Status {
                what,
                status: r.status,
                meaning: status::meaning(r.status),
            });
        }
        Ok(r)
    }

    pub(super) async fn run(mut self, cancel: CancellationToken) -> Result<(), MercuryError> {
        self.health.set_state(ReaderState::Starting);
        let started = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Ok(()),
            r = self.start_up() => r,
        };
        started?;
        let result = match self.config.mode {
            MercuryMode::Streaming => self.stream(&cancel).await,
            MercuryMode::TagBuffer => self.tag_buffer(&cancel).await,
        };
        // A failure racing with shutdown (the port closing as the process
        // exits) is not a reader fault.
        if result.is_ok() || cancel.is_cancelled() {
            self.health.set_state(ReaderState::Stopped);
            return Ok(());
        }
        result
    }

    /// VERSION (stopping a stream left running by a previous process), boot
    /// the application if in the bootloader, then protocol, antennas,
    /// region, power and Gen2 settings.
    async fn start_up(&mut self) -> Result<(), MercuryError> {
        let version = self.version_handshake().await?;
        let info =
            VersionInfo::parse(&version.data).map_err(|e| MercuryError::Protocol(e.to_string()))?;
        let hw = info.hardware;
        self.health.set_detail("model", info.model());
        self.health.set_detail("firmware", info.firmware());
        self.health.set_detail(
            "hardware",
            format!("{:02X}.{:02X}.{:02X}.{:02X}", hw[0], hw[1], hw[2], hw[3]),
        );
        tracing::info!(reader = %self.reader, model = info.model(), firmware = %info.firmware(), "mercury module identified");

        let program = self
            .call(cmd::get_current_program(), "GET_CURRENT_PROGRAM")
            .await?;
        if program.status == status::SUCCESS && program.data.first().map(|p| p & 0x03) == Some(1) {
            tracing::info!(reader = %self.reader, "module is in its bootloader; booting firmware");
            let saved = self.config.response_timeout_ms;
            let deadline = Instant::now() + Duration::from_millis(saved.max(5000));
            self.send(&cmd::boot_firmware()).await?;
            loop {
                let r = self.frame_until(deadline, "BOOT_FIRMWARE").await?;
                if r.opcode == op::BOOT_FIRMWARE {
                    if r.status != status::SUCCESS {
                        return Err(MercuryError::Status {
                            what: "BOOT_FIRMWARE",
                            status: r.status,
                            meaning: status::meaning(r.status),
                        });
                    }
                    break;
                }
            }
        }
        if !info.supports_gen2() && info.protocols != 0 {
            return Err(MercuryError::Protocol(format!(
                "module reports protocols 0x{:08X} without Gen2",
                info.protocols
            )));
        }

        self.call_ok(cmd::set_tag_protocol_gen2(), "SET_TAG_PROTOCOL Gen2")
            .await?;
        let antennas = self.config.antennas.clone();
        self.call_ok(cmd::set_antenna_list(&antennas), "SET_ANTENNA_PORT")
            .await?;
        if let Some(region) = self.config.region {
            self.call_ok(cmd::set_region(region.code()), "SET_REGION")
                .await?;
            self.health.set_detail("region", format!("{region:?}"));
        }
        self.call_ok(
            cmd::set_read_power(self.config.read_power_cdbm),
            "SET_READ_TX_POWER",
        )
        .await?;
        if let Some(s) = self.config.session {
            self.call_ok(cmd::gen2_session(s), "SET_PROTOCOL_PARAM session")
                .await?;
        }
        if self.saw_stream {
            tracing::info!(reader = %self.reader, "module was still streaming; stopping it before starting");
            self.stop_stream().await;
            self.saw_stream = false;
        }
        self.health
            .set_detail("mode", format!("{:?}", self.config.mode));
        Ok(())
    }

    async fn version_handshake(&mut self) -> Result<Response, MercuryError> {
        self.send(&cmd::version()).await?;
        let deadline = Instant::now() + self.response_timeout();
        let mut stop_sent = false;
        loop {
            let r = self.frame_until(deadline, "VERSION").await?;
            match r.opcode {
                op::VERSION if r.status == status::SUCCESS => return Ok(r),
                op::VERSION => {
                    return Err(MercuryError::Status {
                        what: "VERSION",
                        status: r.status,
                        meaning: status::meaning(r.status),
                    })
                }
                op::READ_TAG_ID_MULTIPLE | op::MULTI_PROTOCOL_TAG_OP if !stop_sent => {
                    // Still streaming from a previous run: stop it, as the
                    // Mercury API and SparkFun's library do, then ask again.
                    tracing::info!(reader = %self.reader, "module still streaming; stopping it");
                    self.send(&cmd::stop_continuous()).await?;
                    self.send(&cmd::version()).await?;
                    stop_sent = true;
                    self.saw_stream = false;
                }
                _ => {}
            }
        }
    }

    fn metadata_flags(&self) -> u16 {
        codec::meta::ALL_SUPPORTED
    }

    fn read_multiple(&self, search_flags: u16) -> ReadMultiple {
        ReadMultiple {
            search_flags,
            timeout_ms: self.config.search_ms,
            metadata: self.metadata_flags(),
            embedded_read: self.config.read_tid.then_some((
                codec::BANK_TID,
                0,
                self.config.tid_words,
            )),
        }
    }

    fn to_raw(&self, t: TagRecord) -> RawRead {
        let antenna = t
            .rx_antenna()
            .filter(|&a| a != 0)
            .or_else(|| self.config.antennas.first().copied())
            .unwrap_or(1);
        RawRead {
            reader: self.reader.clone(),
            antenna,
            tid: if self.config.read_tid { t.data } else { None },
            epc: t.epc,
            pc: Some(t.pc),
            rssi_dbm: t.rssi_dbm.map(i16::from),
            frequency_khz: t.frequency_khz,
            phase_deg: t.phase_deg,
            reader_timestamp_ms: t.timestamp_ms.map(u64::from),
            host: self.clock.now(),
        }
    }

    fn note_status(&self, s: u16) {
        self.health.protocol_errors.fetch_add(1, Ordering::Relaxed);
        self.health
            .set_detail("last_status", format!("0x{s:04X} {}", status::meaning(s)));
        tracing::warn!(reader = %self.reader, status = s, meaning = status::meaning(s), "mercury reader reported an error status");
    }

    async fn flush(&mut self, batch: &mut Vec<RawRead>) -> Result<(), MercuryError> {
        if batch.is_empty() {
            return Ok(());
        }
        let reads = std::mem::take(batch);
        let n = reads.len();
        let utc = reads.last().map(|r| r.host.utc_ms).unwrap_or(0);
        self.sink.reads(reads).await?;
        self.health.count_reads(n, utc);
        Ok(())
    }

    async fn stream(&mut self, cancel: &CancellationToken) -> Result<(), MercuryError> {
        self.call_ok(
            cmd::read_filter_off(),
            "SET_READER_OPTIONAL_PARAMS read filter off",
        )
        .await?;
        let rm = self.read_multiple(0x001B);
        self.send(&cmd::start_continuous(&rm)).await?;
        self.health.set_state(ReaderState::Running);
        tracing::info!(reader = %self.reader, "mercury continuous reading started");
        let idle = Duration::from_millis(self.config.idle_timeout_ms);
        let mut batch = Vec::new();
        loop {
            // Drain what is already decoded, then hand it over as one batch.
            let frame = match self.buffered_frame() {
                Some(f) => f,
                None => {
                    self.flush(&mut batch).await?;
                    let deadline = Instant::now() + idle;
                    tokio::select! {
                        biased;
                        _ = cancel.cancelled() => {
                            self.stop_stream().await;
                            return Ok(());
                        }
                        r = self.frame_until(deadline, "streamed frames (keep-alive)") => r?,
                    }
                }
            };
            self.handle_stream_frame(frame, &mut batch)?;
            if batch.len() >= MAX_BATCH {
                self.flush(&mut batch).await?;
            }
        }
    }

    fn handle_stream_frame(
        &mut self,
        r: Response,
        batch: &mut Vec<RawRead>,
    ) -> Result<(), MercuryError> {
        match r.opcode {
            op::READ_TAG_ID_MULTIPLE => match r.status {
                status::SUCCESS | status::NO_TAGS_FOUND => match parse_stream_frame(&r) {
                    Ok(StreamItem::Tag(t)) => batch.push(self.to_raw(t)),
                    Ok(StreamItem::CycleSummary { tags }) => {
                        tracing::trace!(reader = %self.reader, tags, "mercury cycle summary");
                    }
                    Ok(StreamItem::KeepAlive | StreamItem::StatusReport) => {}
                    Ok(StreamItem::EndOfStream) => {
                        return Err(MercuryError::Protocol(
                            "the module ended continuous reading on its own".into(),
                        ))
                    }
                    Err(e) => {
                        self.health.protocol_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(reader = %self.reader, error = %e, "undecodable streamed frame");
                    }
                },
                s => self.note_status(s),
            },
            op::MULTI_PROTOCOL_TAG_OP => {
                if r.status != status::SUCCESS {
                    return Err(MercuryError::Status {
                        what: "continuous reading",
                        status: r.status,
                        meaning: status::meaning(r.status),
                    });
                }
            }
            op::BOOT_FIRMWARE => return Err(MercuryError::ModuleReset),
            other => {
                self.health.protocol_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(reader = %self.reader, opcode = other, "unexpected frame while streaming");
            }
        }
        Ok(())
    }

    /// Best effort: the module keeps streaming into the void otherwise.
    async fn stop_stream(&mut self) {
        if self.send(&cmd::stop_continuous()).await.is_err() {
            return;
        }
        let deadline = Instant::now() + Duration::from_millis(500);
        while let Ok(r) = self.frame_until(deadline, "stop").await {
            if r.opcode == op::MULTI_PROTOCOL_TAG_OP && r.data.first() == Some(&0x02) {
                break;
            }
        }
    }

    async fn tag_buffer(&mut self, cancel: &CancellationToken) -> Result<(), MercuryError> {
        self.health.set_state(ReaderState::Running);
        tracing::info!(reader = %self.reader, "mercury tag-buffer reading started");
        let search_wait = Duration::from_millis(u64::from(self.config.search_ms));
        loop {
            let rm = self.read_multiple(0x0013);
            self.send(&cmd::read_multiple(&rm)).await?;
            // The reply comes after the search time.
            let deadline = Instant::now() + search_wait + self.response_timeout();
            let reply = tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                r = async {
                    loop {
                        let r = self.frame_until(deadline, "READ_TAG_ID_MULTIPLE").await?;
                        if r.opcode == op::READ_TAG_ID_MULTIPLE {
                            return Ok::<_, MercuryError>(r);
                        }
                        if r.opcode == op::BOOT_FIRMWARE {
                            return Err(MercuryError::ModuleReset);
                        }
                    }
                } => r?,
            };
            let found = match reply.status {
                status::SUCCESS => parse_read_multiple_count(&reply.data)
                    .map_err(|e| MercuryError::Protocol(e.to_string()))?,
                status::NO_TAGS_FOUND => 0,
                s => {
                    self.note_status(s);
                    continue;
                }
            };
            if found == 0 {
                continue;
            }
            let reads = tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                r = self.fetch_buffer(found) => r?,
            };
            if reads.is_empty() {
                continue;
            }
            let n = reads.len();
            let utc = reads.last().map(|r| r.host.utc_ms).unwrap_or(0);
            let committed = self.sink.reads_acked(reads).await?;
            self.health.count_reads(n, utc);
            // Clear only what the store has: if the gateway dies before the
            // ack, the reads stay in the module and are fetched again.
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                ack = committed => {
                    if ack.is_err() {
                        return Err(MercuryError::NotCommitted);
                    }
                }
            }
            self.call_ok(cmd::clear_tag_buffer(), "CLEAR_TAG_ID_BUFFER")
                .await?;
        }
    }

    async fn fetch_buffer(&mut self, found: u32) -> Result<Vec<RawRead>, MercuryError> {
        let mut reads = Vec::new();
        let meta = self.metadata_flags();
        while (reads.len() as u64) < u64::from(found) {
            let r = self
                .call(cmd::get_tag_buffer(meta), "GET_TAG_ID_BUFFER")
                .await?;
            if r.status == status::NO_TAGS_FOUND
                || r.status == status::TAG_ID_BUFFER_NOT_ENOUGH_TAGS
            {
                break;
            }
            if r.status != status::SUCCESS {
                self.note_status(r.status);
                break;
            }
            let recs = match parse_tag_buffer(&r.data) {
                Ok(recs) => recs,
                Err(e) => {
                    self.health.protocol_errors.fetch_add(1, Ordering::Relaxed);
                    return Err(MercuryError::Protocol(e.to_string()));
                }
            };
            if recs.is_empty() {
                break;
            }
            for t in recs {
                reads.push(self.to_raw(t));
            }
        }
        Ok(reads)
    }
}
