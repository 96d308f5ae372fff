//! ThingMagic / JADAK Mercury serial protocol (M6e, M6e Nano / SparkFun
//! Simultaneous RFID Reader, M6e Micro, M7e Hecto): codec, driver, simulator.
//!
//! # Connecting a reader
//!
//! The SparkFun board and most M6e carrier boards present an FTDI or CH340
//! USB-serial adapter. Configure the stable path udev creates for it, not
//! `/dev/ttyUSB0` (which changes with enumeration order):
//!
//! ```toml
//! [[readers]]
//! kind = "mercury"
//! name = "dock-1"
//! port = "/dev/serial/by-id/usb-FTDI_FT231X_USB_UART_DN05XXXX-if00-port0"
//! baud = 115200            # M6e Nano / M7e ship at 115200
//! antennas = [1]
//! mode = "streaming"       # or "tag_buffer"
//! read_power_cdbm = 2000   # 20.00 dBm; USB-powered boards brown out above ~23 dBm
//! region = "eu3"           # omit to keep the module's stored region
//! ```
//!
//! `ls -l /dev/serial/by-id/` lists the links; see [`crate::serial`] for
//! adapters without serial numbers. Unplugging the adapter makes the port
//! read fail (EIO/ENODEV) or hit EOF; [`run`] then returns an error at once
//! and the gateway's supervisor reopens the path with backoff, so re-plugging
//! resumes reading without a restart.
//!
//! # Modes
//!
//! * `streaming`: continuous reading (`2F … 01`), the module pushes a frame
//!   per tag read. Lowest latency; reads in flight when the gateway dies
//!   are lost (the gateway's store then has everything it acknowledged).
//! * `tag_buffer`: timed search (`22`), fetch the module's tag buffer (`29`)
//!   one reply at a time, each reply committed by the store before the next
//!   fetch, and clear the buffer (`2A`) once all of it is committed. Every
//!   fetch moves the module's read index past what it returned, so records
//!   fetched by a process that died before committing them are behind the
//!   read index after a restart. On start the driver reads the indices
//!   (bare `29`) and, if the read index is not 0, asks the module to resend
//!   its last reply (read option `01`) before anything is cleared. A module
//!   that refuses the resend loses at most the records of that one reply
//!   (up to what fits in a frame: about 7 records with the metadata this
//!   driver asks for). The health detail `tag_buffer_recovery` says which
//!   happened; docs/hardware-testing.md has the evidence and how to check a
//!   module.

pub mod codec;
mod driver;
pub mod sim;

use std::sync::Arc;

use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use crate::uhf::config as uhf_config;
use crate::{Clock, ReadSink, ReaderHealth};

/// `[[readers]]` entry with `kind = "mercury"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MercuryConfig {
    pub name: String,
    /// Serial device; prefer a stable `/dev/serial/by-id/...` path.
    pub port: String,
    /// Default 115200.
    #[serde(default = "uhf_config::default_baud")]
    pub baud: u32,
    /// Antenna ports to use, 1-based. Default `[1]`.
    #[serde(default = "uhf_config::default_antennas")]
    pub antennas: Vec<u8>,
    /// Default `streaming`.
    #[serde(default)]
    pub mode: MercuryMode,
    /// Read power in centi-dBm (2000 = 20.00 dBm). Default 2000.
    #[serde(default = "default_power")]
    pub read_power_cdbm: i16,
    /// Regulatory region; `None` (default) keeps the module's stored one.
    #[serde(default)]
    pub region: Option<MercuryRegion>,
    /// Read the TID bank with every EPC (embedded read). Default false.
    #[serde(default)]
    pub read_tid: bool,
    /// TID words to read when `read_tid` (6 words = 96 bits). Default 6.
    #[serde(default = "default_tid_words")]
    pub tid_words: u8,
    /// Gen2 session 0–3; `None` (default) keeps the module's setting.
    #[serde(default)]
    pub session: Option<u8>,
    /// Search duration per cycle in ms (streaming sub-command timeout, or the
    /// timed search in tag-buffer mode). Default 500.
    #[serde(default = "default_search_ms")]
    pub search_ms: u16,
    /// How long to wait for a reply to a command. Default 2000.
    #[serde(default = "uhf_config::default_response_timeout_ms")]
    pub response_timeout_ms: u64,
    /// While streaming, how long without any frame (the module sends a
    /// keep-alive every cycle) before the link counts as dead. Default 5000.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MercuryMode {
    #[default]
    Streaming,
    TagBuffer,
}

/// Regions (`tmr_region.h`). The M6e Nano supports only `na2`/`na3` for
/// North America.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MercuryRegion {
    Na,
    Eu,
    Kr,
    In,
    Jp,
    Prc,
    Eu2,
    Eu3,
    Kr2,
    Prc2,
    Au,
    Nz,
    Na2,
    Na3,
    Open,
}

impl MercuryRegion {
    pub fn code(self) -> u8 {
        match self {
            Self::Na => 1,
            Self::Eu => 2,
            Self::Kr => 3,
            Self::In => 4,
            Self::Jp => 5,
            Self::Prc => 6,
            Self::Eu2 => 7,
            Self::Eu3 => 8,
            Self::Kr2 => 9,
            Self::Prc2 => 10,
            Self::Au => 11,
            Self::Nz => 12,
            Self::Na2 => 13,
            Self::Na3 => 14,
            Self::Open => 0xFF,
        }
    }
}

fn default_power() -> i16 {
    2000
}
fn default_tid_words() -> u8 {
    6
}
fn default_search_ms() -> u16 {
    500
}
fn default_idle_timeout_ms() -> u64 {
    5000
}

impl MercuryConfig {
    /// A config with every default, for tests and the demo.
    pub fn new(name: impl Into<String>, port: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            port: port.into(),
            baud: uhf_config::default_baud(),
            antennas: uhf_config::default_antennas(),
            mode: MercuryMode::default(),
            read_power_cdbm: default_power(),
            region: None,
            read_tid: false,
            tid_words: default_tid_words(),
            session: None,
            search_ms: default_search_ms(),
            response_timeout_ms: uhf_config::default_response_timeout_ms(),
            idle_timeout_ms: default_idle_timeout_ms(),
        }
    }

    /// Checks values serde cannot; the gateway may call this at config load.
    pub fn validate(&self) -> Result<(), MercuryError> {
        self.check().map_err(MercuryError::Config)
    }

    fn check(&self) -> Result<(), String> {
        uhf_config::check_antennas(&self.antennas, 15)?;
        if !(0..=3300).contains(&self.read_power_cdbm) {
            return Err(format!(
                "read_power_cdbm {} is out of range 0..=3300 (centi-dBm)",
                self.read_power_cdbm
            ));
        }
        uhf_config::check_session(self.session)?;
        if self.read_tid && !(1..=32).contains(&self.tid_words) {
            return Err(format!(
                "tid_words {} is out of range 1..=32",
                self.tid_words
            ));
        }
        uhf_config::check_timeouts(&[self.response_timeout_ms, self.idle_timeout_ms])
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MercuryError {
    #[error("invalid mercury reader configuration: {0}")]
    Config(String),
    #[error("cannot open serial port {port}: {source}; check the path (prefer /dev/serial/by-id/...), that the reader is plugged in and that tracegate's user is in the dialout group")]
    Open {
        port: String,
        #[source]
        source: tokio_serial::Error,
    },
    #[error("serial I/O failed ({0}); the reader was probably unplugged")]
    Io(#[source] std::io::Error),
    #[error("the serial port reached end of file; the reader was unplugged or the port closed")]
    Disconnected,
    #[error("timed out waiting for {what} (see response_timeout_ms / idle_timeout_ms); check power, cabling and the baud rate ({baud} configured)")]
    Timeout { what: &'static str, baud: u32 },
    #[error("the reader rejected {what}: status 0x{status:04X} ({meaning})")]
    Status {
        what: &'static str,
        status: u16,
        meaning: &'static str,
    },
    #[error("mercury protocol error: {0}")]
    Protocol(String),
    #[error("the reader restarted (boot message received); reconnecting")]
    ModuleReset,
    #[error("the pipeline did not commit the reads fetched from the tag buffer; leaving them in the reader's buffer")]
    NotCommitted,
    #[error(transparent)]
    SinkClosed(#[from] crate::sink::SinkClosed),
}

/// Runs the reader until `cancel` fires (returns `Ok`) or the reader fails
/// (returns the cause; the supervisor reconnects with backoff).
pub async fn run(
    config: &MercuryConfig,
    sink: ReadSink,
    health: Arc<ReaderHealth>,
    cancel: CancellationToken,
) -> Result<(), MercuryError> {
    run_with_clock(config, sink, health, Clock::new(), cancel).await
}

/// [`run`] with the gateway's clock, so reads share the monotonic origin of
/// every other reader's reads.
pub async fn run_with_clock(
    config: &MercuryConfig,
    sink: ReadSink,
    health: Arc<ReaderHealth>,
    clock: Clock,
    cancel: CancellationToken,
) -> Result<(), MercuryError> {
    config.validate()?;
    health.set_state(crate::ReaderState::Starting);
    let port = uhf_config::open_port(
        "mercury",
        &config.name,
        &config.port,
        config.baud,
        |port, source| MercuryError::Open { port, source },
    )?;
    run_on(port, config, sink, health, clock, cancel).await
}

/// The driver over any byte stream (a serial port, a pty, an in-memory
/// duplex): start-up sequence, then inventory until cancelled or failed.
pub async fn run_on<T>(
    transport: T,
    config: &MercuryConfig,
    sink: ReadSink,
    health: Arc<ReaderHealth>,
    clock: Clock,
    cancel: CancellationToken,
) -> Result<(), MercuryError>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    config.validate()?;
    driver::Driver::new(transport, config, sink, health, clock)
        .run(cancel)
        .await
}
