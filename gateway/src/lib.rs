//! tracegate: an edge gateway daemon for RFID/NFC serial-number tracking.
//!
//! See ARCHITECTURE.md at the repository root for the bird's-eye view. The
//! entry point is [`run`]: it takes a validated [`config::Config`] and a
//! shutdown token, and returns once everything accepted has been committed.

pub mod config;
pub mod dedup;
pub mod event;
pub mod heartbeat;
pub mod ops;
pub mod pipeline;
pub mod publish;
pub mod store;
pub mod supervisor;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracegate_drivers::{Clock, ReadSink, ReaderHealth};

use crate::config::Config;
use crate::heartbeat::Heartbeats;
use crate::store::{Store, StoredEvent};

/// Room in the reader → pipeline channel; readers wait when it is full.
const READ_CHANNEL: usize = 1_024;
/// Room in the pipeline → writer channel; the pipeline waits when it is full.
const WRITE_CHANNEL: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot open the event store: {0}")]
    Store(#[from] store::StoreError),
    #[error("the store writer failed: {0}")]
    Writer(String),
}

/// Knobs for embedding the gateway (the demo, tests).
#[derive(Debug)]
pub struct RunOptions {
    /// Receives every committed event, in commit order.
    pub on_commit: Option<mpsc::UnboundedSender<Vec<StoredEvent>>>,
    /// How long shutdown may take before the remaining work is abandoned
    /// (it is all in SQLite or still in the readers' buffers).
    pub shutdown_deadline: Duration,
    /// Told once the store is open and the readers are started.
    pub ready: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            on_commit: None,
            shutdown_deadline: Duration::from_secs(5),
            ready: None,
        }
    }
}

/// Runs the gateway until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), RunError> {
    run_with(config, shutdown, RunOptions::default()).await
}

pub async fn run_with(
    config: Config,
    shutdown: CancellationToken,
    options: RunOptions,
) -> Result<(), RunError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| RunError::DataDir {
        path: config.data_dir.display().to_string(),
        source,
    })?;
    let clock = Clock::new();
    let heartbeats = Heartbeats::new(clock);

    let store = Store::open(&config.store, &config.gateway_id)?;
    tracing::info!(
        event = "store.opened",
        path = %config.store.path.display(),
        store_id = store.store_id(),
        "event store open"
    );
    let (write_tx, write_rx) = mpsc::channel(WRITE_CHANNEL);
    let (committed_tx, _committed_rx) = watch::channel(0u64);
    let writer = store::spawn_writer(store, write_rx, committed_tx, options.on_commit);

    let (sink, read_rx) = ReadSink::channel(READ_CHANNEL);
    let readers_cancel = shutdown.child_token();
    let readers = TaskTracker::new();
    let mut healths = Vec::new();
    for reader in &config.readers {
        let health = ReaderHealth::new(reader.name(), reader.kind());
        healths.push(health.clone());
        readers.spawn(supervisor::supervise(
            reader.clone(),
            sink.clone(),
            health,
            clock,
            readers_cancel.clone(),
        ));
    }
    readers.close();
    // Only the readers hold senders now: the pipeline ends when they do.
    drop(sink);

    let pipeline = pipeline::Pipeline::new(&config, clock, Box::new(pipeline::NoEnrichment));
    let pipeline_task = tokio::spawn(pipeline::run(
        pipeline,
        read_rx,
        write_tx,
        heartbeats.register("pipeline"),
    ));
    if let Some(ready) = options.ready {
        let _ = ready.send(());
    }
    tracing::info!(
        event = "gateway.ready",
        gateway = %config.gateway_id,
        readers = config.readers.len(),
        read_points = config.read_points.len(),
        "gateway running"
    );

    shutdown.cancelled().await;
    tracing::info!(event = "gateway.stopping", "shutting down: stopping readers, committing in-flight events");
    let deadline = tokio::time::Instant::now() + options.shutdown_deadline;
    readers_cancel.cancel();
    if tokio::time::timeout_at(deadline, readers.wait()).await.is_err() {
        tracing::warn!(event = "gateway.shutdown_timeout", stage = "readers", "readers did not stop in time");
    }
    if tokio::time::timeout_at(deadline, pipeline_task).await.is_err() {
        tracing::warn!(event = "gateway.shutdown_timeout", stage = "pipeline", "pipeline did not drain in time");
    }
    let joined = tokio::task::spawn_blocking(move || writer.thread.join());
    match tokio::time::timeout_at(deadline, joined).await {
        Ok(Ok(Ok(Ok(())))) => {}
        Ok(Ok(Ok(Err(e)))) => return Err(RunError::Writer(e.to_string())),
        Ok(Ok(Err(_))) | Ok(Err(_)) => return Err(RunError::Writer("the writer thread panicked".into())),
        Err(_) => tracing::warn!(event = "gateway.shutdown_timeout", stage = "store", "store writer did not finish in time"),
    }
    drop(healths);
    tracing::info!(event = "gateway.stopped", "gateway stopped");
    Ok(())
}

/// Shared handle type for reader health, used by status and metrics.
pub type Healths = Vec<Arc<ReaderHealth>>;
