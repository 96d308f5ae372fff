//! Liveness of long-running components, for the systemd watchdog.
//!
//! Each component that must make progress (the pipeline, the store writer,
//! the publisher) owns a [`Heartbeat`] and calls [`Heartbeat::beat`] whenever
//! it completes a unit of work or finds it has nothing to do. The watchdog
//! pings systemd only while every registered heartbeat is fresh, so a stuck
//! store or publisher stops the pings and systemd restarts the service.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tracegate_drivers::Clock;

#[derive(Debug)]
pub struct Heartbeat {
    pub name: &'static str,
    clock: Clock,
    last_mono_ms: AtomicU64,
}

impl Heartbeat {
    pub fn beat(&self) {
        self.last_mono_ms
            .store(self.clock.mono_ms(), Ordering::Relaxed);
    }

    /// Milliseconds since the last beat.
    pub fn age_ms(&self) -> u64 {
        self.clock
            .mono_ms()
            .saturating_sub(self.last_mono_ms.load(Ordering::Relaxed))
    }
}

/// The set of heartbeats the watchdog checks.
#[derive(Debug, Clone)]
pub struct Heartbeats {
    clock: Clock,
    all: Arc<Mutex<Vec<Arc<Heartbeat>>>>,
}

impl Heartbeats {
    pub fn new(clock: Clock) -> Self {
        Self {
            clock,
            all: Arc::new(Mutex::new(Vec::new())),
        }
    }

    pub fn register(&self, name: &'static str) -> Arc<Heartbeat> {
        let hb = Arc::new(Heartbeat {
            name,
            clock: self.clock,
            last_mono_ms: AtomicU64::new(self.clock.mono_ms()),
        });
        match self.all.lock() {
            Ok(mut g) => g.push(hb.clone()),
            Err(p) => p.into_inner().push(hb.clone()),
        }
        hb
    }

    /// Names and ages (ms) of every heartbeat.
    pub fn ages(&self) -> Vec<(&'static str, u64)> {
        let g = match self.all.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        g.iter().map(|h| (h.name, h.age_ms())).collect()
    }

    /// The first heartbeat older than `max_age_ms`, if any.
    pub fn stale(&self, max_age_ms: u64) -> Option<(&'static str, u64)> {
        self.ages().into_iter().find(|&(_, age)| age > max_age_ms)
    }
}
