//! Liveness of long-running components, for the systemd watchdog and
//! `/healthz`.
//!
//! Each component that must make progress (the pipeline, the store writer,
//! the publisher) owns a [`Heartbeat`] and calls [`Heartbeat::beat`] whenever
//! it completes a unit of work or finds it has nothing to do. Reader tasks
//! live in the drivers crate, which knows nothing of heartbeats: each
//! counts its turns in `ReaderHealth::progress` (a frame, a read timeout, a
//! one-second slice of waiting, a reconnect attempt), and
//! [`Heartbeats::watch_progress`] turns that counter into an age with the
//! sans-IO [`Progress`]. A reader that is disconnected and retrying keeps
//! counting (it is alive; health says `reader_down`); one that is wedged
//! (blocked in a call that never returns) stops, and so do the pings.
//!
//! The watchdog pings systemd only while every heartbeat is fresh, so a
//! stuck store, publisher or reader stops the pings and systemd restarts
//! the service.
//!
//! A heartbeat can also carry a [`Fault`]: the cause its component knows
//! for not making progress (the store writer: `disk_full`, `read_only`),
//! which health reports by name.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tracegate_drivers::Clock;

use crate::ops::HealthState;
use crate::store::StoreError;

/// Why a component cannot do its work, as it reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub state: HealthState,
    pub since_utc_ms: i64,
    /// The error, for people (never parsed).
    pub detail: String,
}

#[derive(Debug)]
pub struct Heartbeat {
    pub name: &'static str,
    clock: Clock,
    last_mono_ms: AtomicU64,
    fault: Mutex<Option<Fault>>,
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

    /// Reports (`Some`) or clears (`None`) the component's fault. A fault
    /// of the same state keeps its first `since`.
    pub fn set_fault(&self, fault: Option<Fault>) {
        let mut g = match self.fault.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        match (&*g, fault) {
            (Some(old), Some(new)) if old.state == new.state => {
                let since = old.since_utc_ms;
                *g = Some(Fault {
                    since_utc_ms: since,
                    ..new
                });
            }
            (_, new) => *g = new,
        }
    }

    pub fn fault(&self) -> Option<Fault> {
        match self.fault.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

/// Names the cause of a failed store write: `disk_full` (SQLite's
/// SQLITE_FULL, or a write error on a filesystem with no space left),
/// `read_only` (SQLITE_READONLY, the store's own `ReadOnly`, or a write
/// error on a filesystem mounted read-only), otherwise `store_failing`.
/// `fs` is what `statvfs` says of the store's directory, when known: SQLite
/// reports a write refused with EROFS, and a full disk met by fsync, as a
/// generic I/O error.
pub fn store_fault_state(e: &StoreError, fs: Option<FsState>) -> HealthState {
    use rusqlite::ErrorCode;
    let code = match e {
        StoreError::ReadOnly { .. } => return HealthState::ReadOnly,
        StoreError::Sqlite {
            source: rusqlite::Error::SqliteFailure(f, _),
            ..
        } => Some(f.code),
        _ => None,
    };
    match code {
        Some(ErrorCode::DiskFull) => HealthState::DiskFull,
        Some(ErrorCode::ReadOnly) => HealthState::ReadOnly,
        _ => match fs {
            Some(FsState {
                read_only: true, ..
            }) => HealthState::ReadOnly,
            Some(FsState {
                available_bytes: 0, ..
            }) => HealthState::DiskFull,
            _ => HealthState::StoreFailing,
        },
    }
}

/// The store writer's report of a failed write: the fault named from the
/// error and from `statvfs` of the store's directory (called on the
/// writer's thread, never on a tokio worker).
///
/// A writer retrying a full or read-only disk is alive, like a reader
/// retrying an unplugged port: the attempt counts as a beat, so the
/// watchdog does not restart the daemon into the same disk (a restart
/// cannot free space, and systemd's start limit would end in a stopped
/// service). Any other failure does not beat: a restart reopens and checks
/// the database.
///
/// Returns the state, for the writer's log.
pub fn report_store_error(
    hb: &Heartbeat,
    e: &StoreError,
    store_path: &std::path::Path,
) -> HealthState {
    let state = store_error_state(e, store_path);
    if matches!(state, HealthState::DiskFull | HealthState::ReadOnly) {
        hb.beat();
    }
    hb.set_fault(Some(Fault {
        state,
        since_utc_ms: tracegate_drivers::clock::utc_now_ms(),
        detail: e.to_string(),
    }));
    state
}

/// [`store_fault_state`] with the filesystem of the store's directory
/// looked at now (blocking: the writer's thread only).
pub fn store_error_state(e: &StoreError, store_path: &std::path::Path) -> HealthState {
    store_fault_state(e, store_path.parent().and_then(FsState::of))
}

/// What `statvfs` says of a filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsState {
    pub read_only: bool,
    /// Bytes an unprivileged writer may still use.
    pub available_bytes: u64,
}

impl FsState {
    /// `statvfs(path)`; `None` when it fails. Read-only also when the
    /// mount flags still say read-write but the filesystem refuses writes:
    /// ext4 mounted `errors=remount-ro` after an error (a failing SD card)
    /// is marked `emergency_ro` on Linux 6.x, and statvfs does not show it
    /// (see [`refuses_writes`]).
    pub fn of(path: &std::path::Path) -> Option<FsState> {
        let s = nix::sys::statvfs::statvfs(path).ok()?;
        // The block count's type is u32 on some 32-bit targets.
        #[allow(clippy::useless_conversion)]
        Some(FsState {
            read_only: s.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY)
                || refuses_writes(path),
            available_bytes: u64::from(s.blocks_available()).saturating_mul(s.fragment_size()),
        })
    }
}

/// Whether the filesystem of directory `dir` answers an fsync of the
/// directory with EROFS. That changes nothing on disk and touches no file
/// SQLite has open (closing another descriptor of the database file would
/// drop SQLite's POSIX locks), and it is how an ext4 that remounted itself
/// read-only after an error answers; SQLite reports the same EROFS from its
/// own write as a generic disk I/O error.
fn refuses_writes(dir: &std::path::Path) -> bool {
    match std::fs::File::open(dir).and_then(|d| d.sync_all()) {
        Err(e) => e.raw_os_error() == Some(nix::libc::EROFS),
        Ok(()) => false,
    }
}

/// The age of a progress counter, sans-IO: time (monotonic ms) is passed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    last_value: u64,
    changed_ms: u64,
}

impl Progress {
    pub fn new(value: u64, now_ms: u64) -> Progress {
        Progress {
            last_value: value,
            changed_ms: now_ms,
        }
    }

    /// Records the counter's current value; returns ms since it last
    /// changed. A change is dated when it is seen, so the age is at most
    /// one observation interval too young, never too old.
    pub fn observe(&mut self, value: u64, now_ms: u64) -> u64 {
        if value != self.last_value {
            self.last_value = value;
            self.changed_ms = now_ms;
        }
        now_ms.saturating_sub(self.changed_ms)
    }
}

type Counter = Arc<dyn Fn() -> u64 + Send + Sync>;

struct Probe {
    name: Arc<str>,
    counter: Counter,
    progress: Progress,
}

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probe")
            .field("name", &self.name)
            .field("progress", &self.progress)
            .finish_non_exhaustive()
    }
}

/// The set of heartbeats the watchdog checks.
#[derive(Debug, Clone)]
pub struct Heartbeats {
    clock: Clock,
    all: Arc<Mutex<Vec<Arc<Heartbeat>>>>,
    probes: Arc<Mutex<Vec<Probe>>>,
}

impl Heartbeats {
    pub fn new(clock: Clock) -> Self {
        Self {
            clock,
            all: Arc::new(Mutex::new(Vec::new())),
            probes: Arc::new(Mutex::new(Vec::new())),
        }
    }

    pub fn register(&self, name: &'static str) -> Arc<Heartbeat> {
        let hb = Arc::new(Heartbeat {
            name,
            clock: self.clock,
            last_mono_ms: AtomicU64::new(self.clock.mono_ms()),
            fault: Mutex::new(None),
        });
        match self.all.lock() {
            Ok(mut g) => g.push(hb.clone()),
            Err(p) => p.into_inner().push(hb.clone()),
        }
        hb
    }

    /// Watches a counter that a component raises on every turn of its work
    /// (a reader's `ReaderHealth::progress`): its age is the time since the
    /// counter last changed.
    pub fn watch_progress(
        &self,
        name: impl Into<Arc<str>>,
        counter: impl Fn() -> u64 + Send + Sync + 'static,
    ) {
        let counter: Counter = Arc::new(counter);
        let probe = Probe {
            name: name.into(),
            progress: Progress::new(counter(), self.clock.mono_ms()),
            counter,
        };
        match self.probes.lock() {
            Ok(mut g) => g.push(probe),
            Err(p) => p.into_inner().push(probe),
        }
    }

    /// Names and ages (ms) of every heartbeat and watched counter.
    pub fn ages(&self) -> Vec<(Arc<str>, u64)> {
        let mut out: Vec<(Arc<str>, u64)> = {
            let g = match self.all.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            g.iter().map(|h| (Arc::from(h.name), h.age_ms())).collect()
        };
        let now = self.clock.mono_ms();
        let mut g = match self.probes.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        for p in g.iter_mut() {
            let v = (p.counter)();
            out.push((p.name.clone(), p.progress.observe(v, now)));
        }
        out
    }

    /// The faults components report, with their names.
    pub fn faults(&self) -> Vec<(&'static str, Fault)> {
        let g = match self.all.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        g.iter()
            .filter_map(|h| h.fault().map(|f| (h.name, f)))
            .collect()
    }

    /// The first heartbeat older than `max_age_ms`, if any.
    pub fn stale(&self, max_age_ms: u64) -> Option<(Arc<str>, u64)> {
        self.ages().into_iter().find(|(_, age)| *age > max_age_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_ages_only_while_the_counter_stands_still() {
        let mut p = Progress::new(0, 1_000);
        assert_eq!(p.observe(0, 1_500), 500);
        assert_eq!(p.observe(0, 9_000), 8_000, "no turn for 8 s");
        assert_eq!(p.observe(1, 9_100), 0, "a turn resets the age");
        assert_eq!(p.observe(1, 30_100), 21_000);
    }

    #[test]
    fn a_watched_counter_ages_until_it_moves() {
        use std::sync::atomic::AtomicU64;
        let hb = Heartbeats::new(Clock::new());
        let turns = Arc::new(AtomicU64::new(0));
        let t = turns.clone();
        hb.watch_progress("reader door", move || t.load(Ordering::Relaxed));
        std::thread::sleep(std::time::Duration::from_millis(30));
        let ages = hb.ages();
        assert_eq!(&*ages[0].0, "reader door");
        assert!(ages[0].1 >= 30, "{ages:?}");
        turns.fetch_add(1, Ordering::Relaxed);
        assert!(hb.ages()[0].1 < 30);
    }

    #[test]
    fn a_fault_keeps_its_first_since_until_it_changes_or_clears() {
        let hb = Heartbeats::new(Clock::new());
        let store = hb.register("store");
        let f = |state, since| {
            Some(Fault {
                state,
                since_utc_ms: since,
                detail: "x".into(),
            })
        };
        store.set_fault(f(HealthState::DiskFull, 100));
        store.set_fault(f(HealthState::DiskFull, 200));
        assert_eq!(hb.faults()[0].1.since_utc_ms, 100, "the same fault goes on");
        store.set_fault(f(HealthState::ReadOnly, 300));
        assert_eq!(hb.faults()[0].1.state, HealthState::ReadOnly);
        assert_eq!(hb.faults()[0].1.since_utc_ms, 300);
        store.set_fault(None);
        assert!(hb.faults().is_empty());
    }

    fn sqlite(code: i32) -> StoreError {
        StoreError::Sqlite {
            context: "commit",
            path: "/data/events.db".into(),
            source: rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None),
        }
    }

    #[test]
    fn store_errors_map_to_the_state_that_names_their_cause() {
        use rusqlite::ffi;
        assert_eq!(
            store_fault_state(&sqlite(ffi::SQLITE_FULL), None),
            HealthState::DiskFull
        );
        assert_eq!(
            store_fault_state(&sqlite(ffi::SQLITE_READONLY), None),
            HealthState::ReadOnly
        );
        let ro = StoreError::ReadOnly {
            path: "/data/events.db".into(),
            why: "attempt to write a readonly database".into(),
        };
        assert_eq!(store_fault_state(&ro, None), HealthState::ReadOnly);
        // A generic I/O error: the filesystem says which.
        let io = sqlite(ffi::SQLITE_IOERR_WRITE);
        assert_eq!(store_fault_state(&io, None), HealthState::StoreFailing);
        let full = FsState {
            read_only: false,
            available_bytes: 0,
        };
        let ro_fs = FsState {
            read_only: true,
            available_bytes: 1 << 20,
        };
        let fine = FsState {
            read_only: false,
            available_bytes: 1 << 30,
        };
        assert_eq!(store_fault_state(&io, Some(full)), HealthState::DiskFull);
        assert_eq!(store_fault_state(&io, Some(ro_fs)), HealthState::ReadOnly);
        assert_eq!(
            store_fault_state(&io, Some(fine)),
            HealthState::StoreFailing
        );
        assert_eq!(
            store_fault_state(&sqlite(ffi::SQLITE_FULL), Some(fine)),
            HealthState::DiskFull,
            "SQLite's own code wins"
        );
    }

    #[test]
    fn retrying_a_full_disk_is_alive_but_another_store_error_is_not() {
        let hb = Heartbeats::new(Clock::new());
        let store = hb.register("store");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        std::thread::sleep(std::time::Duration::from_millis(30));
        report_store_error(&store, &sqlite(rusqlite::ffi::SQLITE_FULL), &path);
        assert!(store.age_ms() < 30, "an attempt on a full disk is a beat");
        assert_eq!(store.fault().unwrap().state, HealthState::DiskFull);
        std::thread::sleep(std::time::Duration::from_millis(30));
        report_store_error(&store, &sqlite(rusqlite::ffi::SQLITE_CORRUPT), &path);
        assert!(store.age_ms() >= 30, "a failing store is not kept alive");
        assert_eq!(store.fault().unwrap().state, HealthState::StoreFailing);
    }

    #[test]
    fn statvfs_of_a_writable_directory_is_not_read_only() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FsState::of(dir.path()).unwrap();
        assert!(!fs.read_only);
    }
}
