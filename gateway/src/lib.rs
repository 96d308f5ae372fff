//! tracegate: an edge gateway daemon for RFID/NFC serial-number tracking.
//!
//! See ARCHITECTURE.md at the repository root for the bird's-eye view.

pub mod config;
pub mod dedup;
pub mod event;
pub mod heartbeat;
pub mod ops;
pub mod pipeline;
pub mod publish;
pub mod store;
pub mod supervisor;
