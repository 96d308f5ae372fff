//! NFC over PC/SC: tag identification, NDEF, NTAG 424 DNA SUN verification.
//!
//! # Layout
//! - `driver` (behind [`run`]): the PC/SC event loop on its own thread.
//! - [`card`]: reading UID, type and NDEF from a tag over any APDU transport.
//! - [`tag`], [`ndef`]: sans-IO identification and NDEF parsing.
//! - [`originality`]: NTAG21x originality signature check (secp128r1).
//! - [`sun`]: NTAG 424 DNA SUN verification and key files, sans-IO.
//! - [`diversify`]: AN10922 per-tag key derivation, sans-IO.
//! - [`emu`], [`vpcd`]: emulated tags and the bridge into vsmartcard's
//!   virtual reader, for tests and `tracegate demo`.

use std::sync::Arc;

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::{Clock, ReadSink, ReaderHealth};

pub mod card;
pub mod diversify;
mod driver;
pub mod emu;
pub mod ndef;
pub mod originality;
pub mod sun;
pub mod tag;
pub mod vpcd;

/// `[[readers]]` entry with `kind = "pcsc"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PcscConfig {
    pub name: String,
    /// Substring of the PC/SC reader name to use (case-insensitive), e.g.
    /// `"ACR122U"` or `"ACR1252 1S CL Reader PICC"`; the first reader if absent.
    pub reader_pattern: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PcscError {
    #[error("PC/SC call {op} failed: {source}")]
    Pcsc {
        op: &'static str,
        #[source]
        source: pcsc::Error,
    },
    #[error("the read pipeline is closed (gateway shutting down)")]
    PipelineClosed,
    #[error("cannot start the PC/SC reader thread: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("the PC/SC reader thread stopped unexpectedly (panicked)")]
    ThreadDied,
}

/// Runs the reader until `cancel` fires (returns `Ok`).
///
/// pcscd going away (restart, crash) is handled inside: the driver waits
/// for it with backoff, shown as `Reconnecting` in `health`. It returns
/// `Err` only on failures a restart might cure but waiting will not.
pub async fn run(
    config: &PcscConfig,
    sink: ReadSink,
    health: Arc<ReaderHealth>,
    cancel: CancellationToken,
) -> Result<(), PcscError> {
    run_with_clock(config, sink, health, Clock::new(), cancel).await
}

/// [`run`] with the gateway's clock, so taps share the monotonic origin of
/// every other reader's reads.
pub async fn run_with_clock(
    config: &PcscConfig,
    sink: ReadSink,
    health: Arc<ReaderHealth>,
    clock: Clock,
    cancel: CancellationToken,
) -> Result<(), PcscError> {
    driver::run(config.clone(), sink, health, clock, cancel).await
}
