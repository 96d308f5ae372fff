//! The simulated GPIO backend (the demo, tests): pins that are ordinary
//! memory behind the same embedded-hal traits as the real ones.
//!
//! Inputs with `sim_follows` break their beam while the named simulated
//! reader has a load in its field ([`SimConfig::load_at`]), so photo-eyes
//! and tags move in step: an `outside` beam during the first 60 % of the
//! load's passage, an `inside` beam during the last 60 %. Outputs record
//! every change (logical on/off with the monotonic time), in memory and,
//! with `sim_record`, as JSON lines in a file a test can read after the
//! daemon stopped.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use tracegate_drivers::sim::SimConfig;
use tracegate_drivers::Clock;

use crate::event::BeamSide;

/// One output change as the sim backend saw it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OutputChange {
    /// Monotonic ms of the gateway clock.
    pub at_ms: u64,
    pub output: String,
    /// Logical: the lamp or buzzer is on.
    pub on: bool,
}

#[derive(Debug, Default)]
struct State {
    /// Physical level per pin name.
    levels: HashMap<String, bool>,
    /// `active_low` per output, to record logical changes.
    active_low: HashMap<String, bool>,
    log: Vec<OutputChange>,
    record: Option<std::fs::File>,
}

/// The simulated board: every sim pin shares it.
#[derive(Debug, Clone)]
pub struct SimBoard {
    state: Arc<Mutex<State>>,
    clock: Clock,
}

impl SimBoard {
    pub fn new(clock: Clock, record: Option<&Path>) -> std::io::Result<Self> {
        let record = match record {
            Some(p) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            ),
            None => None,
        };
        Ok(Self {
            state: Arc::new(Mutex::new(State {
                record,
                ..State::default()
            })),
            clock,
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        // A poisoned lock only means a panic elsewhere mid-update; the
        // levels are plain booleans and still usable.
        let mut g = match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&mut g)
    }

    pub fn pin(&self, name: &str, initial_high: bool) -> SimPin {
        self.with(|s| s.levels.insert(name.to_owned(), initial_high));
        SimPin {
            name: name.to_owned(),
            board: self.clone(),
        }
    }

    pub fn output_pin(&self, name: &str, active_low: bool) -> SimPin {
        self.with(|s| s.active_low.insert(name.to_owned(), active_low));
        // Inactive from the start, like a real request's initial value.
        self.pin(name, active_low)
    }

    /// Sets an input's physical level (what a photo-eye's wiring does).
    pub fn set_level(&self, name: &str, high: bool) {
        self.with(|s| s.levels.insert(name.to_owned(), high));
    }

    /// Every output change so far.
    pub fn log(&self) -> Vec<OutputChange> {
        self.with(|s| s.log.clone())
    }

    fn write(&self, name: &str, high: bool) {
        let at_ms = self.clock.mono_ms();
        self.with(|s| {
            let before = s.levels.insert(name.to_owned(), high);
            if before == Some(high) {
                return;
            }
            let Some(&active_low) = s.active_low.get(name) else {
                return;
            };
            let change = OutputChange {
                at_ms,
                output: name.to_owned(),
                on: high != active_low,
            };
            if let Some(f) = &mut s.record {
                if let Ok(line) = serde_json::to_string(&change) {
                    // Best effort: the record is a test aid, not delivery.
                    let _ = writeln!(f, "{line}");
                }
            }
            s.log.push(change);
        });
    }
}

/// A simulated pin: an input, an output, or both.
#[derive(Debug, Clone)]
pub struct SimPin {
    name: String,
    board: SimBoard,
}

impl embedded_hal::digital::ErrorType for SimPin {
    type Error = Infallible;
}

impl embedded_hal::digital::InputPin for SimPin {
    fn is_high(&mut self) -> Result<bool, Infallible> {
        Ok(self
            .board
            .with(|s| s.levels.get(&self.name).copied().unwrap_or(false)))
    }
    fn is_low(&mut self) -> Result<bool, Infallible> {
        self.is_high().map(|h| !h)
    }
}

impl embedded_hal::digital::OutputPin for SimPin {
    fn set_low(&mut self) -> Result<(), Infallible> {
        self.board.write(&self.name, false);
        Ok(())
    }
    fn set_high(&mut self) -> Result<(), Infallible> {
        self.board.write(&self.name, true);
        Ok(())
    }
}

/// Whether a beam following `reader` is broken at `t_ms` since the
/// reader's start (see the module docs).
pub fn beam_broken(reader: &SimConfig, beam: Option<BeamSide>, t_ms: u64) -> bool {
    let Some((enter, leave)) = reader.load_at(t_ms) else {
        return false;
    };
    let span = leave.saturating_sub(enter);
    let part = span * 6 / 10;
    match beam {
        None => true,
        Some(BeamSide::Outside) => t_ms < enter + part,
        Some(BeamSide::Inside) => t_ms >= leave.saturating_sub(part),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_hal::digital::OutputPin;

    #[test]
    fn outputs_record_logical_changes_only() {
        let board = SimBoard::new(Clock::new(), None).unwrap();
        let mut red = board.output_pin("red", true);
        red.set_low().unwrap(); // active-low: on
        red.set_low().unwrap(); // no change
        red.set_high().unwrap();
        let log: Vec<bool> = board.log().iter().map(|c| c.on).collect();
        assert_eq!(log, [true, false]);
    }

    #[test]
    fn beams_follow_the_load_outside_first_inside_last() {
        let mut r = SimConfig::named("dock");
        r.arrival_interval_ms = 10_000;
        r.dwell_ms = 1_000;
        let out = |t| beam_broken(&r, Some(BeamSide::Outside), t);
        let ins = |t| beam_broken(&r, Some(BeamSide::Inside), t);
        assert!(out(0) && !ins(0));
        assert!(out(500) && ins(500), "both broken mid-passage");
        assert!(!out(700) && ins(700));
        assert!(!out(1_000) && !ins(1_000));
    }
}
