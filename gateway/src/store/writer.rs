//! The group-commit writer thread: the only connection that writes.
//!
//! An idle writer commits a request as soon as it arrives. Grouping happens
//! under load only, in two ways: while one commit (one fsync) runs, new
//! requests queue up and the next commit takes everything queued; and a
//! commit starts at most once per `commit_interval_ms`, so on a disk whose
//! fsync is fast a steady stream still forms groups instead of paying a
//! transaction (CPU, WAL pages, checkpoints) per event. While a group
//! fills, the thread sleeps instead of waking for each request (see
//! [`fill_until`]). A group never exceeds `commit_max_events` drafts;
//! reaching it commits at once (noticed within [`FILL_SLICE`] while the
//! writer sleeps). Under load a group also fills until its oldest event,
//! by its own time, will be `commit_age_ms` old once committed
//! ([`group_due`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, oneshot, watch};

use super::append::now_utc_ms;
use super::recent::RecentCommits;
use super::{Store, StoreError, StoreStats, StoredEvent, WriteRequest};
use crate::backoff::Backoff;
use crate::heartbeat::Heartbeat;

/// How often the writer deletes published events past their retention.
const PRUNE_EVERY: Duration = Duration::from_secs(10);

/// The published watermark is written in a transaction of its own at most
/// this often (each such write has its own fsync; a watermark a moment old
/// only means a few events are resent after a crash, which at-least-once
/// delivery allows). Under load it rides in every event commit instead.
pub const WATERMARK_EVERY: Duration = Duration::from_millis(250);

/// The stats watch is refreshed at most this often while commits keep
/// coming (reading them costs a few queries; status does not need more).
pub const STATS_EVERY: Duration = Duration::from_millis(100);

/// Commit retries back off from this...
const BACKOFF_START: Duration = Duration::from_millis(50);
/// ...up to this.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// While the disk is full, commits are retried at least this often, so they
/// resume within a second of space coming back.
const DISK_FULL_RETRY: Duration = Duration::from_secs(1);
/// After `rx` closed, give up on a failing commit after this many attempts
/// so shutdown cannot hang; the unfired acks tell drivers to keep the data.
const SHUTDOWN_ATTEMPTS: u32 = 5;

/// While idle the writer still wakes this often, to beat its heartbeat.
const IDLE_WAKE: Duration = Duration::from_secs(1);

/// Raises the outbox watermark (`published_upto`) without touching SQLite:
/// the writer thread persists the value in its own time (in the next event
/// commit, or on its own at most every [`WATERMARK_EVERY`], and always
/// before it exits). Owned by the publisher.
#[derive(Debug)]
pub struct Watermark {
    tx: watch::Sender<u64>,
}

impl Watermark {
    /// Records that every event up to `upto` is acknowledged. Never blocks
    /// and never fails; values below the current one are ignored, and values
    /// given in quick succession collapse into the highest.
    pub fn advance(&self, upto: u64) {
        self.tx.send_if_modified(|v| {
            if upto > *v {
                *v = upto;
                true
            } else {
                false
            }
        });
    }

    /// The highest value given so far (or the persisted one at start).
    pub fn get(&self) -> u64 {
        *self.tx.borrow()
    }

    /// A watermark and its receiving end, for a writer other than
    /// [`spawn_writer`] (test harnesses): apply `*rx.borrow()` with
    /// [`Store::mark_published`].
    pub fn channel(initial: u64) -> (Watermark, watch::Receiver<u64>) {
        let (tx, rx) = watch::channel(initial);
        (Watermark { tx }, rx)
    }
}

/// What [`spawn_writer`] hands back: the outputs of the writer thread.
#[derive(Debug)]
pub struct Writer {
    /// Highest committed seq, updated after every commit (before the acks
    /// fire and before `on_commit` is sent).
    pub committed: watch::Receiver<u64>,
    /// The store's counters, refreshed after commits, watermark writes and
    /// prunes (at most every [`STATS_EVERY`]; never more stale than that).
    pub stats: watch::Receiver<StoreStats>,
    /// The outbox watermark; the writer exits only once this is dropped.
    pub watermark: Watermark,
    pub handle: WriterHandle,
}

/// Handle to the writer thread.
#[derive(Debug)]
pub struct WriterHandle {
    thread: std::thread::JoinHandle<Result<(), StoreError>>,
    drained: Option<oneshot::Receiver<()>>,
    recent: RecentCommits,
}

impl WriterHandle {
    /// The writer's last commits in memory, for [`StoreReader::with_recent`]
    /// (the publisher's live reads then skip SQLite).
    ///
    /// [`StoreReader::with_recent`]: super::StoreReader::with_recent
    pub fn recent(&self) -> RecentCommits {
        self.recent.clone()
    }

    /// Resolves once the request channel is closed and everything that was
    /// queued in it is committed (or the thread has stopped). The thread
    /// itself keeps running until the [`Watermark`] is dropped too.
    pub async fn drained(&mut self) {
        if let Some(rx) = self.drained.as_mut() {
            // An error means the thread is gone: nothing more will commit.
            let _ = rx.await;
            self.drained = None;
        }
    }

    /// Waits for the writer to commit what it holds, persist the final
    /// watermark and stop. Blocks: call it off the async runtime. A panicked
    /// writer thread is reported as an error, not propagated.
    pub fn join(self) -> Result<(), StoreError> {
        match self.thread.join() {
            Ok(r) => r,
            Err(_) => Err(StoreError::WriterPanicked),
        }
    }
}

/// Starts the group-commit writer on its own thread and returns its outputs.
///
/// Reads the store's current counters first, so the watches start with true
/// values; that is SQL on the calling thread, so call this where blocking is
/// allowed (a `spawn_blocking` closure, together with [`Store::open`]).
///
/// The thread commits every request it receives, sends the committed events
/// on `on_commit` (if given, for the demo), fires the acks, persists the
/// watermark, prunes, and beats `heartbeat` after every commit and at least
/// once a second while idle (it stops beating while a commit keeps failing,
/// so systemd restarts the daemon, whose next open checks the database;
/// except on a full or read-only disk, named in the heartbeat's fault,
/// where each retry beats: `heartbeat::report_store_error`). It
/// exits after `rx` is closed and drained AND the [`Watermark`] is dropped,
/// applying the watermark's last value first.
pub fn spawn_writer(
    store: Store,
    rx: mpsc::Receiver<WriteRequest>,
    on_commit: Option<crate::Observer<Vec<StoredEvent>>>,
    heartbeat: Option<Arc<Heartbeat>>,
) -> Result<Writer, StoreError> {
    let stats = store.stats()?;
    let (committed_tx, committed) = watch::channel(stats.last_seq);
    let (watermark, wm_rx) = Watermark::channel(stats.published_upto);
    let (stats_tx, stats_rx) = watch::channel(stats);
    let (drained_tx, drained) = oneshot::channel();
    let recent = RecentCommits::new();
    let out = Outputs {
        committed: committed_tx,
        recent: recent.clone(),
        stats: stats_tx,
        on_commit,
        heartbeat,
    };
    let thread = std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || run(store, rx, wm_rx, out, drained_tx))
        .map_err(StoreError::Runtime)?;
    Ok(Writer {
        committed,
        stats: stats_rx,
        watermark,
        handle: WriterHandle {
            thread,
            drained: Some(drained),
            recent,
        },
    })
}

struct Outputs {
    committed: watch::Sender<u64>,
    recent: RecentCommits,
    stats: watch::Sender<StoreStats>,
    on_commit: Option<crate::Observer<Vec<StoredEvent>>>,
    heartbeat: Option<Arc<Heartbeat>>,
}

impl Outputs {
    fn beat(&self) {
        if let Some(h) = &self.heartbeat {
            h.beat();
        }
    }
}

/// What woke the idle writer.
enum Wake {
    Request(WriteRequest),
    RequestsClosed,
    Watermark,
    WatermarkClosed,
    Timer,
    /// A master-data job arrived (queued in the applier).
    Masterdata,
}

/// The writer's bookkeeping between loop turns.
struct State {
    requests_open: bool,
    watermark_open: bool,
    /// The watermark value last written to SQLite.
    watermark_written: u64,
    next_watermark: Instant,
    next_prune: Instant,
    /// When the last commit started.
    last_commit: Option<Instant>,
    /// How long the last event commit took (its fsync, mostly).
    last_commit_took: Duration,
    /// Something changed since the stats watch was last refreshed.
    stats_dirty: bool,
    next_stats: Instant,
}

impl State {
    /// Whether a new watermark may be written now. Until then the idle
    /// writer does not even watch it: the publisher raises it with every
    /// PUBACK, and waking for each of those only to go back to sleep cost
    /// more wake-ups than the commits themselves.
    fn watermark_due(&self, now: Instant) -> bool {
        self.watermark_open && now >= self.next_watermark
    }

    /// How long the idle writer may sleep before it has timed work to do.
    fn idle_wait(&self, watermark_wanted: u64, now: Instant) -> Duration {
        let mut until = self.next_prune.min(now + IDLE_WAKE);
        // Not yet due: wake when it is, to write a value that moved
        // meanwhile or to start watching again.
        if watermark_wanted > self.watermark_written
            || (self.watermark_open && !self.watermark_due(now))
        {
            until = until.min(self.next_watermark);
        }
        if self.stats_dirty {
            until = until.min(self.next_stats);
        }
        until.saturating_duration_since(now)
    }
}

fn run(
    mut store: Store,
    mut rx: mpsc::Receiver<WriteRequest>,
    mut wm_rx: watch::Receiver<u64>,
    out: Outputs,
    drained_tx: oneshot::Sender<()>,
) -> Result<(), StoreError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(StoreError::Runtime)?;
    let max_events = store.config.commit_max_events.max(1);
    let gap = Duration::from_millis(store.config.commit_interval_ms);
    let age = Duration::from_millis(store.config.commit_age_ms);
    let now = Instant::now();
    let mut st = State {
        requests_open: true,
        watermark_open: true,
        watermark_written: *wm_rx.borrow_and_update(),
        next_watermark: now,
        next_prune: now + PRUNE_EVERY,
        last_commit: None,
        last_commit_took: Duration::ZERO,
        stats_dirty: false,
        next_stats: now,
    };
    let mut drained_tx = Some(drained_tx);
    // Master data is applied one small transaction per loop turn, between
    // event commits (store/masterdata.rs).
    let mut applier = store.masterdata.take();

    while st.requests_open || st.watermark_open {
        out.beat();
        let mut batch: Vec<WriteRequest> = Vec::new();
        let mut waiting = 0usize;
        if st.requests_open {
            take_queued(&mut rx, &mut batch, &mut waiting, max_events, &mut st);
        }
        let applier_busy = applier.as_ref().is_some_and(|a| a.busy());
        // Under load a commit starts at most once per `gap`: let the group
        // fill until the gap is over. This runs whether or not a request is
        // queued yet: right after a commit the next requests are on their
        // way, and waking for the first of them only to sleep again cost a
        // second wake-up per commit. Not while master data waits for its
        // next step and nothing is queued.
        let mut under_load = false;
        if st.requests_open && waiting < max_events && !(batch.is_empty() && applier_busy) {
            if let Some(not_before) = st.last_commit.map(|t| t + gap) {
                if Instant::now() < not_before {
                    under_load = true;
                    fill_until(
                        &mut rx,
                        &mut batch,
                        &mut waiting,
                        max_events,
                        not_before,
                        &mut st,
                    );
                }
            }
        }
        // Still under load: the group fills on until its oldest event will
        // be `commit_age_ms` old, by its own time, when the commit is done
        // (the last commit's duration tells how long that takes). Events
        // reach the writer already a few ms old (a reader's batch, the
        // departure grid), so this spaces commits by about `commit_age_ms`
        // less that, where the interval alone started one every
        // `commit_interval_ms` whatever the events' age: fewer fsyncs, and
        // every event's wait bounded by its own age rather than by when the
        // last commit happened. On a disk whose fsync takes as long as the
        // age, only the interval is left.
        let age = age.saturating_sub(st.last_commit_took);
        if under_load && st.requests_open && waiting < max_events && !age.is_zero() {
            let oldest = batch
                .iter()
                .flat_map(|r| r.drafts.iter())
                .map(|d| d.event.time.0)
                .min();
            if let Some(due) = oldest.and_then(|t| group_due(t, age, now_utc_ms(), Instant::now()))
            {
                fill_until(&mut rx, &mut batch, &mut waiting, max_events, due, &mut st);
            }
        }
        if batch.is_empty() && (st.requests_open || st.watermark_open) {
            let now = Instant::now();
            let mut wait = st.idle_wait(*wm_rx.borrow(), now);
            if applier_busy {
                wait = Duration::ZERO;
            }
            let watch_watermark = st.watermark_due(now);
            let wake = rt.block_on(async {
                tokio::select! {
                    w = wait_for_work(&mut rx, st.requests_open, &mut wm_rx, watch_watermark, wait) => w,
                    () = async { match applier.as_mut() { Some(a) => a.recv().await, None => std::future::pending().await } } => Wake::Masterdata,
                }
            });
            match wake {
                Wake::Request(req) => {
                    waiting += req.drafts.len();
                    batch.push(req);
                    // Whatever queued up meanwhile joins this commit.
                    take_queued(&mut rx, &mut batch, &mut waiting, max_events, &mut st);
                }
                Wake::RequestsClosed => st.requests_open = false,
                Wake::WatermarkClosed => st.watermark_open = false,
                Wake::Watermark | Wake::Timer | Wake::Masterdata => {}
            }
        }
        if !batch.is_empty() {
            let started = Instant::now();
            st.last_commit = Some(started);
            // The watermark rides along with the events (no transaction of
            // its own) whenever it moved.
            let wanted = *wm_rx.borrow_and_update();
            let watermark = (wanted > st.watermark_written).then_some(wanted);
            commit_batch(&mut store, batch, !st.requests_open, &out, watermark)?;
            st.last_commit_took = started.elapsed();
            if let Some(w) = watermark {
                st.watermark_written = w;
                st.next_watermark = Instant::now() + WATERMARK_EVERY;
            }
            st.stats_dirty = true;
        }
        if let Some(a) = applier.as_mut() {
            store.masterdata_step(a);
        }
        if !st.requests_open {
            if let Some(tx) = drained_tx.take() {
                // Nobody may be waiting for this; that is fine.
                let _ = tx.send(());
            }
        }
        let now = Instant::now();
        let wanted = *wm_rx.borrow_and_update();
        if wanted > st.watermark_written && now >= st.next_watermark {
            write_watermark(&mut store, wanted, &mut st);
        }
        if now >= st.next_prune {
            match store.prune(now_utc_ms()) {
                Ok(n) => st.stats_dirty |= n > 0,
                Err(e) => {
                    tracing::warn!(error = %e, "pruning published events failed; will retry")
                }
            }
            st.next_prune = now + PRUNE_EVERY;
        }
        if st.stats_dirty && now >= st.next_stats {
            refresh_stats(&store, &out, &mut st);
        }
    }

    // Both inputs are closed: persist the publisher's last word.
    let wanted = *wm_rx.borrow();
    if wanted > st.watermark_written {
        write_watermark(&mut store, wanted, &mut st);
    }
    refresh_stats(&store, &out, &mut st);
    if let Err(e) = store.checkpoint() {
        tracing::warn!(error = %e, "final WAL checkpoint failed (harmless: replayed at next open)");
    }
    Ok(())
}

/// Moves already-queued requests into `batch` without waiting, until
/// `max_events` drafts are waiting or the queue is empty.
fn take_queued(
    rx: &mut mpsc::Receiver<WriteRequest>,
    batch: &mut Vec<WriteRequest>,
    waiting: &mut usize,
    max_events: usize,
    st: &mut State,
) {
    while *waiting < max_events {
        match rx.try_recv() {
            Ok(req) => {
                *waiting += req.drafts.len();
                batch.push(req);
            }
            Err(TryRecvError::Empty) => break,
            Err(TryRecvError::Disconnected) => {
                st.requests_open = false;
                break;
            }
        }
    }
}

/// When a busy writer's group is due: once its oldest event, which
/// happened at `oldest_utc_ms`, is `age` old. Counted on the wall clock
/// (the events' own time), so the wait is clamped to `0..=age`: a clock
/// that jumped back cannot hold a group longer than `age`, one that jumped
/// forward only commits sooner. `None`: due now.
pub(crate) fn group_due(
    oldest_utc_ms: i64,
    age: Duration,
    now_utc_ms: i64,
    now: Instant,
) -> Option<Instant> {
    let age_ms = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
    let happened = u64::try_from(now_utc_ms.saturating_sub(oldest_utc_ms)).unwrap_or(0);
    let left = age_ms.saturating_sub(happened);
    (left > 0).then(|| now + Duration::from_millis(left))
}

/// The longest the writer sleeps in one go while a group fills.
const FILL_SLICE: Duration = Duration::from_millis(50);

/// Lets the group fill until `deadline`, then takes what queued meanwhile.
///
/// The thread sleeps rather than waking for every request: at 1,500 events/s
/// a wake-up per request cost more CPU than inserting the events. It looks
/// at the channel between slices of at most [`FILL_SLICE`] and stops
/// waiting early when the channel closed (shutdown), or when the queued
/// requests alone reach `max_events` or fill half the channel (the senders
/// would soon wait: under such load the group is big enough already).
fn fill_until(
    rx: &mut mpsc::Receiver<WriteRequest>,
    batch: &mut Vec<WriteRequest>,
    waiting: &mut usize,
    max_events: usize,
    deadline: Instant,
    st: &mut State,
) {
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        std::thread::sleep((deadline - now).min(FILL_SLICE));
        let queued = rx.len();
        if rx.is_closed() || *waiting + queued >= max_events || queued * 2 >= rx.max_capacity() {
            break;
        }
    }
    take_queued(rx, batch, waiting, max_events, st);
}

async fn wait_for_work(
    rx: &mut mpsc::Receiver<WriteRequest>,
    requests_open: bool,
    wm_rx: &mut watch::Receiver<u64>,
    watermark_open: bool,
    wait: Duration,
) -> Wake {
    tokio::select! {
        req = rx.recv(), if requests_open => match req {
            Some(req) => Wake::Request(req),
            None => Wake::RequestsClosed,
        },
        changed = wm_rx.changed(), if watermark_open => match changed {
            Ok(()) => Wake::Watermark,
            Err(_) => Wake::WatermarkClosed,
        },
        () = tokio::time::sleep(wait) => Wake::Timer,
    }
}

fn write_watermark(store: &mut Store, upto: u64, st: &mut State) {
    match store.mark_published(upto) {
        Ok(()) => {
            st.watermark_written = upto;
            st.stats_dirty = true;
        }
        // Kept in the watch: the next turn tries again.
        Err(e) => tracing::error!(upto, error = %e, "cannot record the published watermark"),
    }
    st.next_watermark = Instant::now() + WATERMARK_EVERY;
}

fn refresh_stats(store: &Store, out: &Outputs, st: &mut State) {
    match store.stats() {
        Ok(s) => {
            out.stats.send_replace(s);
            st.stats_dirty = false;
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the store stats; status shows older ones")
        }
    }
    st.next_stats = Instant::now() + STATS_EVERY;
}

fn commit_batch(
    store: &mut Store,
    batch: Vec<WriteRequest>,
    closed: bool,
    out: &Outputs,
    published_upto: Option<u64>,
) -> Result<(), StoreError> {
    let groups: Vec<&[super::EventDraft]> = batch.iter().map(|r| r.drafts.as_slice()).collect();
    let mut backoff = Backoff::new(BACKOFF_START, BACKOFF_MAX);
    let mut attempt = 0u32;
    let mut disk_full: Option<Instant> = None;
    let mut read_only: Option<Instant> = None;
    let outcome = loop {
        attempt += 1;
        match store.commit_groups(&groups, published_upto) {
            Ok(o) => break o,
            Err(e) if e.is_disk_full() => {
                // Health names the cause (disk_full) while it lasts, and the
                // attempt counts as a beat: a restart cannot free space.
                if let Some(h) = &out.heartbeat {
                    crate::heartbeat::report_store_error(h, &e, &store.config.path);
                }
                if disk_full.is_none() {
                    disk_full = Some(Instant::now());
                    tracing::error!(event = "store.disk_full", error = %e, requests = groups.len(), "the disk is full: nothing acknowledged; checkpointing the WAL and retrying every second");
                }
                match store.recover_space() {
                    Ok(true) => tracing::debug!("disk full: WAL checkpointed and truncated"),
                    Ok(false) => {
                        tracing::debug!("disk full: a reader held the WAL checkpoint back")
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "disk full: the WAL checkpoint failed too")
                    }
                }
                if closed && attempt >= SHUTDOWN_ATTEMPTS {
                    return Err(e);
                }
                std::thread::sleep(backoff.next_delay().min(DISK_FULL_RETRY));
            }
            Err(e) => {
                // Health names the cause (disk_full, read_only) while it lasts.
                let state = match &out.heartbeat {
                    Some(h) => crate::heartbeat::report_store_error(h, &e, &store.config.path),
                    None => crate::heartbeat::store_error_state(&e, &store.config.path),
                };
                if state == crate::ops::HealthState::ReadOnly {
                    // Once per episode: it lasts until someone remounts.
                    if read_only.is_none() {
                        read_only = Some(Instant::now());
                        tracing::error!(event = "store.read_only", error = %e, requests = groups.len(), "the store's filesystem is read-only (ext4 remounts itself read-only after a disk or SD-card error: see dmesg): nothing acknowledged, reads wait in the readers' buffers; stop tracegate, unmount, fsck and mount the filesystem read-write (or give the service user write access), then start it again; retrying meanwhile");
                    } else {
                        tracing::debug!(error = %e, attempt, "store still read-only");
                    }
                } else {
                    tracing::error!(
                        error = %e,
                        attempt,
                        requests = groups.len(),
                        "store commit failed; nothing acknowledged, retrying"
                    );
                }
                if closed && attempt >= SHUTDOWN_ATTEMPTS {
                    return Err(e);
                }
                std::thread::sleep(backoff.next_delay());
            }
        }
    };
    if let Some(since) = disk_full {
        tracing::warn!(
            event = "store.disk_recovered",
            after_ms = u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX),
            attempts = attempt,
            "the disk has room again: commits resumed"
        );
    }
    if let Some(since) = read_only {
        tracing::warn!(
            event = "store.writable",
            after_ms = u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX),
            "the store can be written again: commits resumed"
        );
    }
    drop(groups);
    if attempt > 1 {
        if let Some(h) = &out.heartbeat {
            h.set_fault(None);
        }
    }
    if !outcome.events.is_empty() {
        metrics::counter!("tracegate_store_commits_total").increment(1);
    }
    // The publisher's live lane reads these from memory; they must be there
    // before the new seq is announced.
    let dropped = outcome.dropped > 0;
    match &out.on_commit {
        Some(tx) if !outcome.events.is_empty() => {
            out.recent
                .push(outcome.last_seq, dropped, outcome.events.clone());
            out.committed.send_replace(outcome.last_seq);
            // The demo may have stopped listening; the commit stands regardless.
            let _ = tx.send(outcome.events);
        }
        _ => {
            out.recent.push(outcome.last_seq, dropped, outcome.events);
            out.committed.send_replace(outcome.last_seq);
        }
    }
    for (i, req) in batch.into_iter().enumerate() {
        if i < outcome.accepted_groups {
            if let Some(ack) = req.ack {
                ack.fire();
            }
        }
        // Refused requests (reject_new): the ack is dropped unfired, which
        // tells the driver the data is not committed.
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const AGE: Duration = Duration::from_millis(40);

    #[test]
    fn a_group_is_due_when_its_oldest_event_reaches_the_age() {
        let now = Instant::now();
        let t = 1_795_824_000_000;
        // Happened 15 ms ago: 25 ms to go.
        assert_eq!(
            group_due(t - 15, AGE, t, now),
            Some(now + Duration::from_millis(25))
        );
        // Just happened: the whole age.
        assert_eq!(group_due(t, AGE, t, now), Some(now + AGE));
        // Already that old, or older: due now.
        assert_eq!(group_due(t - 40, AGE, t, now), None);
        assert_eq!(group_due(t - 60_000, AGE, t, now), None);
    }

    #[test]
    fn a_clock_that_jumped_back_cannot_hold_a_group_longer_than_the_age() {
        let now = Instant::now();
        let t = 1_795_824_000_000;
        // The event's time lies an hour ahead of the clock now.
        assert_eq!(group_due(t + 3_600_000, AGE, t, now), Some(now + AGE));
        assert_eq!(group_due(i64::MAX, AGE, i64::MIN, now), Some(now + AGE));
        assert_eq!(group_due(i64::MIN, AGE, i64::MAX, now), None);
    }
}
