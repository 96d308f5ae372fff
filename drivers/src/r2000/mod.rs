//! Impinj R2000 "CMD" serial protocol (header 0xA0): codec, driver, simulator.

use std::sync::Arc;

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::{ReadSink, ReaderHealth};

/// `[[readers]]` entry with `kind = "r2000"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct R2000Config {
    pub name: String,
    /// Serial device; prefer a stable `/dev/serial/by-id/...` path.
    pub port: String,
    #[serde(default = "default_baud")]
    pub baud: u32,
    /// Antenna ports to use, 1-based.
    #[serde(default = "default_antennas")]
    pub antennas: Vec<u8>,
}

fn default_baud() -> u32 {
    115_200
}

fn default_antennas() -> Vec<u8> {
    vec![1]
}

#[derive(Debug, thiserror::Error)]
pub enum R2000Error {
    #[error("r2000 driver not implemented yet")]
    NotImplemented,
}

/// Runs the reader until `cancel` fires (returns `Ok`) or the reader fails
/// (returns the cause; the supervisor reconnects with backoff).
pub async fn run(
    _config: &R2000Config,
    _sink: ReadSink,
    _health: Arc<ReaderHealth>,
    _cancel: CancellationToken,
) -> Result<(), R2000Error> {
    Err(R2000Error::NotImplemented)
}
