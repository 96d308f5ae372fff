//! Reader supervision: each reader runs in its own task; when it fails, the
//! cause is logged, its health shows the outage, and it is restarted after an
//! exponential backoff with jitter (0.5 s doubling to 30 s, reset once a run
//! has lasted a minute). Shutdown cancels the token; a reader then returns `Ok`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracegate_drivers::{Clock, ReadSink, ReaderHealth, ReaderState};

use crate::backoff::Backoff;
use crate::config::ReaderConfig;

const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const STABLE_RUN: Duration = Duration::from_secs(60);

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
    loop {
        if cancel.is_cancelled() {
            break;
        }
        health.set_state(ReaderState::Starting);
        tracing::info!(event = "reader.starting", reader = %name, kind, "starting reader");
        let started = Instant::now();
        let result = run_once(&config, &sink, &health, clock, &cancel).await;
        match result {
            Ok(()) if cancel.is_cancelled() => break,
            Ok(()) => {
                tracing::warn!(event = "reader.ended", reader = %name, kind, "reader stopped by itself; restarting");
                health.record_failure(&"the reader stopped by itself");
            }
            Err(cause) => {
                if cancel.is_cancelled() {
                    break;
                }
                tracing::warn!(event = "reader.failed", reader = %name, kind, error = %cause, "reader failed; will reconnect");
                health.record_failure(&cause);
            }
        }
        metrics::counter!("tracegate_reader_restarts_total", "reader" => name.clone()).increment(1);
        if started.elapsed() >= STABLE_RUN {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }
    health.set_state(ReaderState::Stopped);
    tracing::info!(event = "reader.stopped", reader = %name, kind, "reader stopped");
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
