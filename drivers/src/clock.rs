//! Host time stamped on reads.
//!
//! A Raspberry Pi has no real-time clock: until NTP (or GPS) has synchronised
//! the system clock, wall-clock time can be years off. Every read therefore
//! carries a monotonic timestamp (used for all windows and timeouts) and a UTC
//! timestamp with a flag saying whether the clock was synchronised.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Time of one observation, as the host saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HostTime {
    /// Milliseconds on the process's monotonic clock (see [`Clock`]).
    pub mono_ms: u64,
    /// Milliseconds since the Unix epoch, UTC, as the system clock said.
    pub utc_ms: i64,
    /// Whether the system clock was synchronised (NTP) when this was taken.
    pub clock_synced: bool,
}

/// A monotonic clock with a fixed origin, plus UTC and sync state.
///
/// Cloning is cheap; all clones share the origin so timestamps compare.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock {
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
        }
    }

    /// The instant `mono_ms` counts from (shared by every clone).
    pub fn origin(&self) -> Instant {
        self.origin
    }

    pub fn mono_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub fn now(&self) -> HostTime {
        HostTime {
            mono_ms: self.mono_ms(),
            utc_ms: utc_now_ms(),
            clock_synced: clock_synchronised(),
        }
    }
}

pub fn utc_now_ms() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

/// Whether the system clock is known to be synchronised.
///
/// systemd-timesyncd creates `/run/systemd/timesync/synchronized` once it has
/// synchronised (the default on Raspberry Pi OS). Deployments using chrony or
/// ntpd, containers and tests set `TRACEGATE_ASSUME_CLOCK_SYNCED=1` (or `0`).
///
/// Every read is stamped with this, thousands of times a second at a busy
/// portal, so the answer is cached for [`SYNC_RECHECK_MS`]: a stat and an
/// environment lookup per read showed up in profiles, and synchronisation
/// changes once per boot, not per millisecond.
pub fn clock_synchronised() -> bool {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::OnceLock;
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    // Milliseconds since ORIGIN of the last check, plus one (0: never checked).
    static CHECKED_AT: AtomicU64 = AtomicU64::new(0);
    static SYNCED: AtomicBool = AtomicBool::new(false);
    let now =
        u64::try_from(ORIGIN.get_or_init(Instant::now).elapsed().as_millis()).unwrap_or(u64::MAX);
    let at = CHECKED_AT.load(Ordering::Acquire);
    if at != 0 && now.saturating_sub(at - 1) < SYNC_RECHECK_MS {
        return SYNCED.load(Ordering::Relaxed);
    }
    let synced = probe_clock_synchronised();
    SYNCED.store(synced, Ordering::Relaxed);
    CHECKED_AT.store(now.saturating_add(1), Ordering::Release);
    synced
}

/// How long [`clock_synchronised`] trusts its last answer.
pub const SYNC_RECHECK_MS: u64 = 1_000;

fn probe_clock_synchronised() -> bool {
    if let Ok(v) = std::env::var("TRACEGATE_ASSUME_CLOCK_SYNCED") {
        return v == "1" || v.eq_ignore_ascii_case("true");
    }
    std::path::Path::new("/run/systemd/timesync/synchronized").exists()
}
