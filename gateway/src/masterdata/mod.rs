//! Master data from the registry: signed, versioned datasets of commissioned
//! serials, blocked serials, market rules, NFC bindings and expected
//! shipments, and the verdicts they give on every event.
//!
//! docs/masterdata.md specifies the format. The pieces, each sans-IO:
//! - `format`: manifest frames, Ed25519 over a digest, chunk digests, size
//!   limits, key files; verification runs before any JSON is parsed.
//! - `assemble`: topics, and reassembly of chunks that survives
//!   disconnects; refuses rollbacks and foreign scopes.
//! - `records`: the JSON Lines payload into typed records.
//! - `index`: the compact lookup structure and the per-event checks.
//! - `shipment`: pass verdicts (complete / missing / unexpected).

pub mod assemble;
pub mod config;
pub mod format;
pub mod index;
pub mod records;
pub mod service;
pub mod shipment;
pub mod tool;
pub mod verdict;

use std::sync::Arc;

pub use assemble::{Assembler, Complete, Rejection};
pub use format::{FormatError, TrustedKeys, VerifiedManifest};
pub use index::{Checks, IndexBuilder, IndexCounts, MasterIndex, Subject};

/// A dataset in force: its verified manifest and its payload.
#[derive(Debug, Clone)]
pub struct ActiveDataset {
    pub manifest: VerifiedManifest,
    pub payload: Arc<Vec<u8>>,
}

/// Builds the index over every active dataset. Fails on the first bad
/// record (each dataset was parsed once before it was applied, so this only
/// fails on a store written by a build that accepted more).
pub fn build_index<'a>(
    datasets: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> Result<MasterIndex, Rejection> {
    let mut b = IndexBuilder::default();
    for (name, payload) in datasets {
        records::parse_payload(payload, |r| b.add(r)).map_err(|e| Rejection::Records {
            name: name.to_owned(),
            version: 0,
            message: e.to_string(),
        })?;
    }
    Ok(b.finish())
}
