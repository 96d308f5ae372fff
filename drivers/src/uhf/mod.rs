//! What the two UHF serial protocols ([`crate::mercury`], [`crate::r2000`])
//! have in common. Each protocol keeps its own framing, commands, start-up
//! sequence, config fields and errors in its module; this holds the parts
//! where the logic is the same:
//!
//! - [`frame_buffer`]: the resynchronising byte buffer under both frame
//!   decoders (header scan, length-bounded frames, stale-partial skip).
//! - `link`: the driver's write-then-read-until-frame loop with its
//!   timeout, inter-byte gap and EOF-as-disconnect handling.
//! - [`sim`]: the simulated tag and fault plan, the fault-injecting
//!   connection both simulators serve through, and pty (re)plugging.
//! - `config`: shared `[[readers]]` defaults and checks, and opening the port.

pub(crate) mod config;
pub mod frame_buffer;
pub(crate) mod link;
pub mod sim;
#[cfg(test)]
pub(crate) mod testing;

pub use frame_buffer::{FrameBuffer, Scan};
