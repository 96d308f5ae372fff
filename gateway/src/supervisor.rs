//! Reader supervision: each reader runs in its own task; when it fails, the
//! cause is logged, its health shows the outage, and it is restarted after an
//! exponential backoff with jitter (0.5 s doubling to 1.5 s, back to 0.5 s
//! once a run has delivered data). Shutdown cancels the token; a reader then
//! returns `Ok`.
//!
//! The cap is short on purpose: a replugged USB adapter should be read again
//! within a second or two however long it was away, and a retry costs one
//! `open()`. What would be costly is the log, so a failure that repeats the
//! previous one is logged at debug level, with a warning once a minute.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracegate_drivers::{Clock, ReadSink, ReaderHealth, ReaderState};

use crate::backoff::Backoff;
use crate::config::ReaderConfig;

const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_millis(1500);
/// How often a failure that keeps repeating is still logged as a warning.
const REPEAT_WARN_EVERY: Duration = Duration::from_secs(60);

/// Runs one reader until `cancel` fires, restarting it when it fails.
pub async fn supervise(
    config: ReaderConfig,
    sink: ReadSink,
    health: Arc<ReaderHealth>,
    clock: Clock,
    cancel: CancellationToken,
) {
    let name = config.name().to_owned();
    let kind = config.kind();
    let mut backoff = Backoff::new(BACKOFF_START, BACKOFF_MAX);
    let mut last_warned: Option<(String, Instant)> = None;
    loop {
        if cancel.is_cancelled() {
            break;
        }
        // Each attempt is a turn: a reader that is down and retried is alive.
        health.alive();
        health.set_state(ReaderState::Starting);
        tracing::info!(event = "reader.starting", reader = %name, kind, "starting reader");
        let delivered_before = delivered(&health);
        let result = run_once(&config, &sink, &health, clock, &cancel).await;
        let cause = match result {
            Ok(()) if cancel.is_cancelled() => break,
            Ok(()) => "the reader stopped by itself".to_owned(),
            Err(_) if cancel.is_cancelled() => break,
            Err(cause) => cause,
        };
        health.record_failure(&cause);
        let repeat = last_warned
            .as_ref()
            .is_some_and(|(c, at)| *c == cause && at.elapsed() < REPEAT_WARN_EVERY);
        if repeat {
            tracing::debug!(event = "reader.failed", reader = %name, kind, error = %cause, "reader failed again; will reconnect");
        } else {
            tracing::warn!(event = "reader.failed", reader = %name, kind, error = %cause, "reader failed; will reconnect");
            last_warned = Some((cause, Instant::now()));
        }
        metrics::counter!("tracegate_reader_restarts_total", "reader" => name.clone()).increment(1);
        // A run that got frames or reads from the reader was a recovery:
        // the next failure (an unplug) starts the backoff from the bottom.
        if delivered(&health) > delivered_before {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        health.alive();
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }
    health.set_state(ReaderState::Stopped);
    tracing::info!(event = "reader.stopped", reader = %name, kind, "reader stopped");
}

/// Frames and tag reads the reader has delivered so far.
fn delivered(health: &ReaderHealth) -> u64 {
    use std::sync::atomic::Ordering::Relaxed;
    health
        .frames_ok
        .load(Relaxed)
        .saturating_add(health.reads.load(Relaxed))
}

/// One run of the configured driver; its error rendered for logs and health.
async fn run_once(
    config: &ReaderConfig,
    sink: &ReadSink,
    health: &Arc<ReaderHealth>,
    clock: Clock,
    cancel: &CancellationToken,
) -> Result<(), String> {
    use tracegate_drivers::{mercury, nfc, r2000, sim};
    let (sink, health, cancel) = (sink.clone(), health.clone(), cancel.clone());
    fn text<E: std::fmt::Display>(r: Result<(), E>) -> Result<(), String> {
        r.map_err(|e| e.to_string())
    }
    match config {
        ReaderConfig::Sim(c) => text(sim::run(c, sink, health, clock, cancel).await),
        ReaderConfig::Mercury(c) => {
            text(mercury::run_with_clock(c, sink, health, clock, cancel).await)
        }
        ReaderConfig::R2000(c) => text(r2000::run_with_clock(c, sink, health, clock, cancel).await),
        ReaderConfig::Pcsc(c) => text(nfc::run_with_clock(c, sink, health, clock, cancel).await),
    }
}
