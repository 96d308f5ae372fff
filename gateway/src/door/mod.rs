//! At the door: read windows ("passes"), two-beam direction, input
//! debounce and stack-light rules. Every part here is sans-IO (monotonic
//! time in, decisions out); the GPIO backends and the task that drives
//! them live in `crate::gpio`, the wiring into events in `crate::pipeline`.

pub mod beams;
pub mod debounce;
pub mod signals;
pub mod window;
