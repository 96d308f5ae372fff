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
    tag_buffer, BufferIndices, Command, Decoder, ReadMultiple, Response, StreamItem, TagRecord,
    VersionInfo,
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

    /// Timed searches into the module's tag buffer, fetched one reply at a
    /// time; each reply's reads are committed before the next fetch, and
    /// the buffer is cleared once every record in it is committed.
    ///
    /// Every fetch moves the module's read index past the records it
    /// returned, so a gateway that dies between a fetch and its commit
    /// leaves records behind the read index that a plain fetch never
    /// returns again. [`Self::recover_tag_buffer`] asks for them again on
    /// start; committing reply by reply keeps what needs asking for to
    /// the one reply in flight.
    async fn tag_buffer(&mut self, cancel: &CancellationToken) -> Result<(), MercuryError> {
        self.health.set_state(ReaderState::Running);
        tracing::info!(reader = %self.reader, "mercury tag-buffer reading started");
        // Dropping the loop on cancellation is safe at any await: nothing is
        // cleared that is not committed, and the next start recovers.
        tokio::select! {
            biased;
            _ = cancel.cancelled() => Ok(()),
            r = self.tag_buffer_loop() => r,
        }
    }

    async fn tag_buffer_loop(&mut self) -> Result<(), MercuryError> {
        self.recover_tag_buffer().await?;
        let search_wait = Duration::from_millis(u64::from(self.config.search_ms));
        loop {
            let rm = self.read_multiple(0x0013);
            self.send(&cmd::read_multiple(&rm)).await?;
            // The reply comes after the search time.
            let deadline = Instant::now() + search_wait + self.response_timeout();
            let reply = loop {
                let r = self.frame_until(deadline, "READ_TAG_ID_MULTIPLE").await?;
                if r.opcode == op::READ_TAG_ID_MULTIPLE {
                    break r;
                }
                if r.opcode == op::BOOT_FIRMWARE {
                    return Err(MercuryError::ModuleReset);
                }
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
            // The count is the module's word; the buffer's u16 indices bound
            // what it can hold, so a corrupt count cannot run the loop on.
            self.drain_tag_buffer(found.min(tag_buffer::MAX_RECORDS))
                .await?;
            self.clear_tag_buffer().await?;
        }
    }

    /// On start, before anything is cleared: if a previous process fetched
    /// records and died before clearing them (read index > 0), ask the
    /// module to send its last reply again (read option `resend`), commit
    /// it, fetch what was never fetched, then clear.
    ///
    /// Records the previous process committed come again when the crash
    /// fell between its commit and its clear: at-least-once, as everywhere
    /// else in the gateway. A module that refuses `resend` loses at most the
    /// one reply the previous process had fetched and not committed; the
    /// health detail `tag_buffer_recovery` says which happened.
    async fn recover_tag_buffer(&mut self) -> Result<(), MercuryError> {
        let r = self
            .call(cmd::get_tag_buffer_indices(), "GET_TAG_ID_BUFFER indices")
            .await?;
        if r.status != status::SUCCESS {
            // Not every firmware may answer the bare form; without indices
            // the buffer is drained and cleared as after any search.
            tracing::info!(reader = %self.reader, status = r.status, meaning = status::meaning(r.status), "module does not report tag-buffer indices; draining the buffer without recovery");
            self.health
                .set_detail("tag_buffer_recovery", "indices not reported");
            self.drain_tag_buffer(tag_buffer::MAX_RECORDS).await?;
            return self.clear_tag_buffer().await;
        }
        let idx =
            BufferIndices::parse(&r.data).map_err(|e| MercuryError::Protocol(e.to_string()))?;
        if idx.write == 0 {
            return Ok(());
        }
        if idx.read > 0 {
            let resent = self
                .call(
                    cmd::get_tag_buffer_resend(self.metadata_flags()),
                    "GET_TAG_ID_BUFFER resend",
                )
                .await?;
            match resent.status {
                status::SUCCESS => {
                    let n = self.commit_reply(&resent).await?;
                    tracing::info!(reader = %self.reader, records = n, read_index = idx.read, write_index = idx.write, "recovered the tag-buffer reply a previous run fetched");
                    self.health
                        .set_detail("tag_buffer_recovery", format!("resent {n} records"));
                }
                s => {
                    tracing::warn!(reader = %self.reader, status = s, meaning = status::meaning(s), read_index = idx.read, "the module would not resend its last tag-buffer reply: the records of one reply a previous run fetched may be lost");
                    self.health.set_detail(
                        "tag_buffer_recovery",
                        format!("resend refused: 0x{s:04X} {}", status::meaning(s)),
                    );
                }
            }
        }
        self.drain_tag_buffer(u32::from(idx.remaining())).await?;
        self.clear_tag_buffer().await
    }

    async fn clear_tag_buffer(&mut self) -> Result<(), MercuryError> {
        self.call_ok(cmd::clear_tag_buffer(), "CLEAR_TAG_ID_BUFFER")
            .await
            .map(drop)
    }

    /// Fetches up to `limit` records, one reply at a time, committing each
    /// reply before the next fetch. Ends early when the module has no more.
    async fn drain_tag_buffer(&mut self, limit: u32) -> Result<(), MercuryError> {
        let meta = self.metadata_flags();
        let mut fetched: u32 = 0;
        while fetched < limit {
            let r = self
                .call(cmd::get_tag_buffer(meta), "GET_TAG_ID_BUFFER")
                .await?;
            match r.status {
                status::SUCCESS => {}
                status::NO_TAGS_FOUND | status::TAG_ID_BUFFER_NOT_ENOUGH_TAGS => break,
                s => {
                    self.note_status(s);
                    break;
                }
            }
            let n = self.commit_reply(&r).await?;
            if n == 0 {
                break;
            }
            fetched = fetched.saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
        }
        Ok(())
    }

    /// Hands one GET_TAG_ID_BUFFER reply's reads to the pipeline and waits
    /// until the store has committed them. Returns how many there were.
    async fn commit_reply(&mut self, r: &Response) -> Result<usize, MercuryError> {
        let recs = parse_tag_buffer(&r.data).map_err(|e| {
            self.health.protocol_errors.fetch_add(1, Ordering::Relaxed);
            MercuryError::Protocol(e.to_string())
        })?;
        let reads: Vec<RawRead> = recs.into_iter().map(|t| self.to_raw(t)).collect();
        let n = reads.len();
        if n == 0 {
            return Ok(0);
        }
        let utc = reads.last().map(|r| r.host.utc_ms).unwrap_or(0);
        let committed = self.sink.reads_acked(reads).await?;
        self.health.count_reads(n, utc);
        committed.await.map_err(|_| MercuryError::NotCommitted)?;
        Ok(n)
    }
}
