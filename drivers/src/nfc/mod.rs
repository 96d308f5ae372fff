//! NFC over PC/SC: tag identification, NDEF, NTAG 424 DNA SUN verification.

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use std::sync::Arc;

use crate::{ReadSink, ReaderHealth};

/// `[[readers]]` entry with `kind = "pcsc"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PcscConfig {
    pub name: String,
    /// Substring of the PC/SC reader name to use; the first reader if absent.
    pub reader_pattern: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PcscError {
    #[error("pcsc driver not implemented yet")]
    NotImplemented,
}

pub async fn run(
    _config: &PcscConfig,
    _sink: ReadSink,
    _health: Arc<ReaderHealth>,
    _cancel: CancellationToken,
) -> Result<(), PcscError> {
    Err(PcscError::NotImplemented)
}
