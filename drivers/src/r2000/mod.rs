//! Impinj-Indy-R2000 "CMD" serial protocol (header 0xA0), spoken by many
//! low-cost modules and 4/8-port fixed readers: codec, driver, simulator.
//!
//! # Connecting a reader
//!
//! Fixed readers usually have an RS-232/RS-485 port behind a CH340 or FTDI
//! USB adapter, or a built-in USB-serial bridge. Use the stable udev path:
//!
//! ```toml
//! [[readers]]
//! kind = "r2000"
//! name = "gate-3"
//! port = "/dev/serial/by-id/usb-1a86_USB_Serial-if00-port0"   # or /dev/serial/by-path/...
//! baud = 115200          # the protocol's default
//! antennas = [1, 2, 3, 4]
//! mode = "fast_switch"   # 0x8A over ports 1–4; "real_time" = 0x74 + 0x89 per port (4 or 8 ports)
//! ports = 4              # 8 for 8-port readers (antenna high bit in RSSI)
//! read_power_dbm = 30    # written only if the reader's stored value differs (it goes to flash)
//! region = "etsi"        # "fcc", "etsi", "chn"; omit to keep the stored region
//! ```
//!
//! CH340 adapters often have no serial number, so two of them share a
//! `by-id` name; use `/dev/serial/by-path/...` then (see [`crate::serial`]).
//! Unplugging makes reads fail (EIO/ENODEV/EOF) and [`run`] return at once;
//! the supervisor reopens the path with backoff.
//!
//! Reader error codes (e.g. 0x22 antenna missing) and end-of-round summaries
//! go to the reader's health (`protocol_errors`, details), not to the log
//! alone.

pub mod codec;
mod driver;
pub mod sim;

use std::sync::Arc;

use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use crate::uhf::config as uhf_config;
use crate::{Clock, ReadSink, ReaderHealth};

/// `[[readers]]` entry with `kind = "r2000"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct R2000Config {
    pub name: String,
    /// Serial device; prefer a stable `/dev/serial/by-id/...` path.
    pub port: String,
    /// Default 115200.
    #[serde(default = "uhf_config::default_baud")]
    pub baud: u32,
    /// Antenna ports to use, 1-based. Default `[1]`.
    #[serde(default = "uhf_config::default_antennas")]
    pub antennas: Vec<u8>,
    /// Reader address; 0xFF (default) is the public address every reader
    /// answers, whatever its stored address.
    #[serde(default = "default_address")]
    pub address: u8,
    /// Antenna ports the reader has: 4 (default) or 8.
    #[serde(default = "default_ports")]
    pub ports: u8,
    /// Default `real_time`.
    #[serde(default)]
    pub mode: R2000Mode,
    /// Output power for all ports, 0–33 dBm; `None` (default) keeps the
    /// stored value. Only written when it differs: the reader saves it to flash.
    #[serde(default)]
    pub read_power_dbm: Option<u8>,
    /// Frequency region; `None` (default) keeps the stored one.
    #[serde(default)]
    pub region: Option<R2000Region>,
    /// Gen2 session 0–3 for `real_time` mode (uses 0x8B, target A);
    /// `None` (default) uses plain 0x89.
    #[serde(default)]
    pub session: Option<u8>,
    /// Inventory rounds per command (per antenna in `real_time`). Default 1.
    #[serde(default = "default_repeat")]
    pub repeat: u8,
    /// How long to wait for a reply to a command. Default 2000.
    #[serde(default = "uhf_config::default_response_timeout_ms")]
    pub response_timeout_ms: u64,
    /// How long an inventory round may take before the link counts as dead.
    /// Default 5000.
    #[serde(default = "default_round_timeout_ms")]
    pub round_timeout_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum R2000Mode {
    /// 0x74 set work antenna + 0x89 (or 0x8B) real-time inventory per port.
    #[default]
    RealTime,
    /// 0x8A fast antenna switching over up to four of ports 1–4.
    FastSwitch,
}

/// System frequency regions with their full channel-index ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum R2000Region {
    /// FCC, 902–928 MHz (indexes 7..=59).
    Fcc,
    /// ETSI, 865–868 MHz (indexes 0..=6).
    Etsi,
    /// China, 920–925 MHz (indexes 43..=53).
    Chn,
}

impl R2000Region {
    /// `(region code, start index, end index)` for 0x78.
    pub fn setting(self) -> (u8, u8, u8) {
        match self {
            Self::Fcc => (1, 7, 59),
            Self::Etsi => (2, 0, 6),
            Self::Chn => (3, 43, 53),
        }
    }
}

fn default_address() -> u8 {
    codec::BROADCAST
}
fn default_ports() -> u8 {
    4
}
fn default_repeat() -> u8 {
    1
}
fn default_round_timeout_ms() -> u64 {
    5000
}

impl R2000Config {
    /// A config with every default, for tests and the demo.
    pub fn new(name: impl Into<String>, port: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            port: port.into(),
            baud: uhf_config::default_baud(),
            antennas: uhf_config::default_antennas(),
            address: default_address(),
            ports: default_ports(),
            mode: R2000Mode::default(),
            read_power_dbm: None,
            region: None,
            session: None,
            repeat: default_repeat(),
            response_timeout_ms: uhf_config::default_response_timeout_ms(),
            round_timeout_ms: default_round_timeout_ms(),
        }
    }

    pub fn validate(&self) -> Result<(), R2000Error> {
        self.check().map_err(R2000Error::Config)
    }

    fn check(&self) -> Result<(), String> {
        if self.ports != 4 && self.ports != 8 {
            return Err(format!(
                "ports = {} but R2000 readers have 4 or 8",
                self.ports
            ));
        }
        uhf_config::check_antennas(&self.antennas, self.ports)?;
        if self.mode == R2000Mode::FastSwitch
            && (self.antennas.len() > 4 || self.antennas.iter().any(|&a| a > 4))
        {
            return Err(
                "fast_switch (0x8A) covers at most four of ports 1-4; use mode = \"real_time\" for ports 5-8"
                    .into(),
            );
        }
        if let Some(p) = self.read_power_dbm.filter(|&p| p > 33) {
            return Err(format!("read_power_dbm {p} is out of range 0..=33"));
        }
        uhf_config::check_session(self.session)?;
        if self.repeat == 0 {
            return Err("repeat must be at least 1".into());
        }
        uhf_config::check_timeouts(&[self.response_timeout_ms, self.round_timeout_ms])
    }
}

#[derive(Debug, thiserror::Error)]
pub enum R2000Error {
    #[error("invalid r2000 reader configuration: {0}")]
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
    #[error("timed out waiting for {what} (see response_timeout_ms / round_timeout_ms); check power, cabling, the baud rate ({baud} configured) and the reader address")]
    Timeout { what: &'static str, baud: u32 },
    #[error("the reader rejected {what}: code 0x{code:02X} ({meaning})")]
    Rejected {
        what: &'static str,
        code: u8,
        meaning: &'static str,
    },
    #[error("r2000 protocol error: {0}")]
    Protocol(String),
    #[error(transparent)]
    SinkClosed(#[from] crate::sink::SinkClosed),
}

/// Runs the reader until `cancel` fires (returns `Ok`) or the reader fails
/// (returns the cause; the supervisor reconnects with backoff).
pub async fn run(
    config: &R2000Config,
    sink: ReadSink,
    health: Arc<ReaderHealth>,
    cancel: CancellationToken,
) -> Result<(), R2000Error> {
    run_with_clock(config, sink, health, Clock::new(), cancel).await
}

/// [`run`] with the gateway's clock.
pub async fn run_with_clock(
    config: &R2000Config,
    sink: ReadSink,
    health: Arc<ReaderHealth>,
    clock: Clock,
    cancel: CancellationToken,
) -> Result<(), R2000Error> {
    config.validate()?;
    health.set_state(crate::ReaderState::Starting);
    let port = uhf_config::open_port(
        "r2000",
        &config.name,
        &config.port,
        config.baud,
        |port, source| R2000Error::Open { port, source },
    )?;
    run_on(port, config, sink, health, clock, cancel).await
}

/// The driver over any byte stream.
pub async fn run_on<T>(
    transport: T,
    config: &R2000Config,
    sink: ReadSink,
    health: Arc<ReaderHealth>,
    clock: Clock,
    cancel: CancellationToken,
) -> Result<(), R2000Error>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    config.validate()?;
    driver::Driver::new(transport, config, sink, health, clock)
        .run(cancel)
        .await
}
