//! The reader side of tracegate.
//!
//! Everything here turns a physical (or simulated) reader into a stream of
//! [`ReaderMsg`]s: raw UHF reads, NFC taps and health updates. This crate
//! knows nothing of SQLite, MQTT or event semantics; the gateway crate owns
//! those. Protocol codecs are sans-IO and live next to the drivers that use
//! them.
//!
//! # Layout
//! - [`read`]: the raw-read and tap types every driver produces.
//! - [`sink`]: the bounded channel a driver writes into, and commit acks.
//! - [`health`]: per-reader counters and state, shared with status and metrics.
//! - [`clock`]: host time (monotonic and UTC) stamped on every read.
//! - [`sim`]: a deterministic simulated tag population (tests and `demo`).
//! - [`mercury`], [`r2000`]: UHF serial protocols, drivers and simulators.
//! - [`nfc`]: PC/SC tag reading, NDEF and NTAG 424 DNA SUN verification.
//! - [`uhf`]: what the two UHF protocols share: the frame buffer with resync,
//!   the driver's request/response link, simulator faults and config checks.
//! - [`serial`]: opening serial ports and pseudo-terminal pairs.
//! - [`backoff`]: the exponential backoff with jitter every retry uses.

pub mod backoff;
pub mod clock;
pub mod health;
pub mod mercury;
pub mod nfc;
pub mod r2000;
pub mod read;
pub mod secret_file;
pub mod serial;
pub mod sim;
pub mod sink;
pub mod uhf;

pub use clock::{Clock, HostTime};
pub use health::{ReaderHealth, ReaderState};
pub use read::{RawRead, Tap};
pub use sink::{CommitAck, ReadReceiver, ReadSink, ReaderMsg};
