//! tracegate: an edge gateway daemon for RFID/NFC serial-number tracking.
//!
//! See ARCHITECTURE.md at the repository root for the bird's-eye view. The
//! entry point is [`run`]: it takes a validated [`config::Config`] and a
//! shutdown token, and returns once everything accepted has been committed.

pub mod allocator;
pub mod backoff;
pub mod config;
pub mod dedup;
pub mod door;
pub mod event;
pub mod gpio;
pub mod heartbeat;
pub mod masterdata;
pub mod nfc;
pub mod observer;
pub mod ops;
pub mod pipeline;
pub mod publish;
pub mod read_tap;
pub mod reload;
pub mod store;
pub mod supervisor;
pub mod suspect;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracegate_drivers::{Clock, ReadSink, ReaderHealth};

use crate::config::Config;
use crate::heartbeat::Heartbeats;
pub use crate::observer::Observer;
use crate::store::{Store, StoreReader, StoreStats, StoredEvent};

/// Room in the reader → pipeline channel, in messages; readers wait when
/// it is full. It is bounded in reads too (`sink::MAX_QUEUED_READS`).
const READ_CHANNEL: usize = 1_024;
/// Room in the pipeline → writer channel; the pipeline waits when it is full.
const WRITE_CHANNEL: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot create the data directory {path}: {source}; its parent must be writable by the service user (or set data_dir to /var/lib/tracegate, which systemd creates)")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot open the event store: {0}")]
    Store(#[from] store::StoreError),
    #[error("the store writer failed: {0}")]
    Writer(String),
    #[error("{0}")]
    Ops(#[from] ops::OpsError),
    #[error("NFC keys: {0}")]
    Keys(String),
    /// Shutdown went past its deadline; what was not finished stays where it
    /// is durable (SQLite, or the readers' own buffers) and is picked up at
    /// the next start.
    #[error("shutdown did not finish within its deadline: {} did not stop in time", .0.join(", "))]
    ShutdownIncomplete(Vec<&'static str>),
    #[error("master data: {0}")]
    Masterdata(String),
    #[error("{0}")]
    Gpio(#[from] gpio::GpioError),
}

/// Knobs for embedding the gateway (the demo, tests).
#[derive(Debug)]
pub struct RunOptions {
    /// Receives committed events, in commit order, while it keeps up: the
    /// writer never waits for it (see [`Observer`]).
    pub on_commit: Option<Observer<Vec<StoredEvent>>>,
    /// How long shutdown may take before the remaining work is abandoned
    /// (it is all in SQLite or still in the readers' buffers).
    pub shutdown_deadline: Duration,
    /// Told once the store is open and the readers are started, with the
    /// address the metrics endpoint listens on (if any).
    pub ready: Option<tokio::sync::oneshot::Sender<Option<std::net::SocketAddr>>>,
    /// When the configured metrics address is taken, listen on a free port
    /// instead of failing (the demo; a daemon should fail loudly).
    pub metrics_fallback_ephemeral: bool,
    /// Receives a notice for every batch the broker acknowledged, while it
    /// keeps up: the publisher never waits for it (see [`Observer`]).
    pub acks: Option<Observer<publish::AckNotice>>,
    /// Receives one readable line per pass ("dock-door-1 IN: 24 tags,
    /// green"), while it keeps up (see [`Observer`]).
    pub door_lines: Option<Observer<String>>,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            on_commit: None,
            shutdown_deadline: Duration::from_secs(5),
            ready: None,
            metrics_fallback_ephemeral: false,
            acks: None,
            door_lines: None,
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
    store::create_private_dir(&config.data_dir).map_err(|source| RunError::DataDir {
        path: config.data_dir.display().to_string(),
        source,
    })?;
    let clock = Clock::new();
    let heartbeats = Heartbeats::new(clock);

    let (write_tx, write_rx) = mpsc::channel(WRITE_CHANNEL);
    let (writer, reader, masterdata) =
        open_store(&config, write_rx, options.on_commit, &heartbeats).await?;
    let store::Writer {
        committed: committed_rx,
        stats: store_stats,
        watermark,
        handle: mut writer,
    } = writer;

    let (sink, read_rx) = ReadSink::channel(READ_CHANNEL);
    let readers_cancel = shutdown.child_token();
    let readers = TaskTracker::new();
    let mut healths = Vec::new();
    for reader in &config.readers {
        let health = ReaderHealth::new(reader.name(), reader.kind());
        healths.push(health.clone());
        // The reader task counts its turns; the watchdog and health see it.
        let turns = health.clone();
        heartbeats.watch_progress(format!("reader {}", reader.name()), move || {
            turns.progress.load(std::sync::atomic::Ordering::Relaxed)
        });
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

    // Pins are opened before anything reads: a pin that cannot be opened
    // fails the start with its chip, line and reason.
    let gpio_board = match &config.gpio {
        Some(g) => Some(gpio::task::open(&config, g, clock)?),
        None => None,
    };
    let enricher = nfc::TapVerifier::new(&config)?;
    let mut pipeline = pipeline::Pipeline::new(&config, clock, Box::new(enricher));
    let mut downlink = None;
    let mut masterdata_status = None;
    if let (Some(md), Some(cfg)) = (masterdata, &config.masterdata) {
        pipeline.set_masterdata(masterdata::verdict::Verdicts::new(
            md.views.active.clone(),
            cfg.clone(),
        ));
        tokio::spawn(masterdata::service::run(
            md.service,
            md.jobs,
            write_tx.clone(),
            config.gateway_id.clone(),
            shutdown.clone(),
        ));
        downlink = Some(md.downlink);
        masterdata_status = Some(md.views.status);
    }
    let read_tap = read_tap::ReadTap::new();
    let gpio_channels = gpio_board.as_ref().map(|_| {
        let (inputs_tx, inputs_rx) = mpsc::channel(gpio::task::INPUT_CHANNEL);
        let (notices, notices_rx) = Observer::channel(gpio::task::NOTICE_CHANNEL);
        pipeline.attach_gpio(inputs_rx, notices);
        (inputs_tx, notices_rx)
    });
    let pipeline_task = tokio::spawn(pipeline::run(
        pipeline,
        read_rx,
        write_tx,
        heartbeats.register("pipeline"),
        Some(read_tap.clone()),
    ));

    let publisher_stats = Arc::new(publish::PublisherStats::default());
    // The page reads recent events through the one read connection.
    let page = ops::PageSources::new(
        &config,
        read_tap,
        reader.clone().map(|r| (r, store_stats.clone())),
    );
    let status_source = status_source(
        &config,
        healths,
        store_stats,
        publisher_stats.clone(),
        masterdata_status,
    );
    let gpio_task = match (gpio_board, gpio_channels, &config.gpio) {
        (Some(board), Some((inputs_tx, notices_rx)), Some(g)) => {
            let attention = g.attention_outbox_secs.map(|secs| {
                let status = status_source.clone();
                let a: gpio::task::AttentionSource = Arc::new(move || attention(&status(), secs));
                a
            });
            Some(tokio::spawn(gpio::task::run(
                board,
                g.clone(),
                gpio::task::lights(&config),
                clock,
                gpio::task::Wiring {
                    inputs_tx,
                    notices: notices_rx,
                    attention,
                    lines: options.door_lines,
                },
                readers_cancel.clone(),
            )))
        }
        _ => None,
    };
    // Background services stop after the writer has committed everything.
    let services_cancel = CancellationToken::new();
    let services = TaskTracker::new();
    if let (Some(mqtt), Some(reader)) = (config.mqtt.clone(), reader) {
        let ctx = publish::PublisherContext {
            identity: publish::GatewayIdentity {
                gateway_id: config.gateway_id.clone(),
                site: config.site.clone(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                config_hash: config.hash.clone(),
                reader_names: config.readers.iter().map(|r| r.name().to_owned()).collect(),
            },
            reader,
            watermark,
            committed: committed_rx,
            // Health messages carry the same conditions as /status.
            health: {
                let (source, hb) = (status_source.clone(), heartbeats.clone());
                let max_age = u64::try_from(config.ops.stale_after.as_millis()).unwrap_or(u64::MAX);
                Arc::new(move || ops::with_health(source(), &hb, max_age))
            },
            heartbeat: heartbeats.register("publisher"),
            stats: publisher_stats,
            acks: options.acks,
            downlink,
        };
        let cancel = services_cancel.clone();
        services.spawn(async move {
            if let Err(e) = publish::run(&mqtt, ctx, cancel).await {
                tracing::error!(event = "publisher.failed", error = %e, "the MQTT publisher stopped; events stay in the outbox");
            }
        });
    } else {
        // No publisher: nothing will raise the watermark, and the writer
        // must not wait for it at shutdown.
        drop(watermark);
    }
    let mut metrics_addr = None;
    if let Some(addr) = config.ops.metrics_addr {
        let bound = match ops::OpsHttp::bind(addr).await {
            Ok(b) => b,
            Err(e) if options.metrics_fallback_ephemeral => {
                tracing::warn!(event = "ops.metrics_port_taken", error = %e, "using a free port instead");
                ops::OpsHttp::bind(std::net::SocketAddr::new(addr.ip(), 0)).await?
            }
            Err(e) => return Err(e.into()),
        }
        .with_access(&config.ops)?;
        metrics_addr = Some(bound.local_addr());
        let (ops_cfg, hb, st, cancel) = (
            config.ops.clone(),
            heartbeats.clone(),
            status_source.clone(),
            services_cancel.clone(),
        );
        services.spawn(async move {
            if let Err(e) = bound.serve_with(&ops_cfg, hb, st, page, cancel).await {
                tracing::error!(event = "ops.http_failed", error = %e, "the metrics endpoint stopped");
            }
        });
    }
    services.spawn(ops::watchdog(
        heartbeats.clone(),
        config.ops.stale_after,
        services_cancel.clone(),
    ));
    services.close();

    ops::notify_ready();
    if let Some(ready) = options.ready {
        let _ = ready.send(metrics_addr);
    }
    tracing::info!(
        event = "gateway.ready",
        gateway = %config.gateway_id,
        readers = config.readers.len(),
        read_points = config.read_points.len(),
        metrics = ?metrics_addr,
        "gateway running"
    );

    shutdown.cancelled().await;
    ops::notify_stopping();
    tracing::info!(
        event = "gateway.stopping",
        "shutting down: stopping readers, committing in-flight events"
    );
    let deadline = tokio::time::Instant::now() + options.shutdown_deadline;
    let mut unfinished: Vec<&'static str> = Vec::new();
    readers_cancel.cancel();
    if let Some(task) = gpio_task {
        // Outputs off before anything else takes time.
        if tokio::time::timeout_at(deadline, task).await.is_err() {
            tracing::warn!(
                event = "gateway.shutdown_timeout",
                stage = "gpio",
                "GPIO outputs may still be on"
            );
        }
    }
    if tokio::time::timeout_at(deadline, readers.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            event = "gateway.shutdown_timeout",
            stage = "readers",
            "readers did not stop in time"
        );
        unfinished.push("the readers");
    }
    if tokio::time::timeout_at(deadline, pipeline_task)
        .await
        .is_err()
    {
        tracing::warn!(
            event = "gateway.shutdown_timeout",
            stage = "pipeline",
            "pipeline did not drain in time"
        );
        unfinished.push("the pipeline");
    }
    // The pipeline has dropped its sender: the writer commits what is queued.
    if tokio::time::timeout_at(deadline, writer.drained())
        .await
        .is_err()
    {
        tracing::warn!(
            event = "gateway.shutdown_timeout",
            stage = "store",
            "store writer did not commit everything in time"
        );
        unfinished.push("the store writer (commit)");
    }
    // The publisher gets what is left of the deadline to collect PUBACKs for
    // the last batches; anything unacknowledged is resent on the next start.
    let publisher_grace = deadline
        .saturating_duration_since(tokio::time::Instant::now())
        .min(Duration::from_millis(500));
    tokio::time::sleep(publisher_grace).await;
    services_cancel.cancel();
    let late = deadline + Duration::from_secs(1);
    if tokio::time::timeout_at(late, services.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            event = "gateway.shutdown_timeout",
            stage = "services",
            "publisher or endpoints did not stop in time"
        );
        unfinished.push("the publisher or endpoints");
    }
    // The publisher has dropped its watermark handle: the writer persists
    // the last value, checkpoints and exits.
    let joined = tokio::task::spawn_blocking(move || writer.join());
    let result = match tokio::time::timeout_at(late, joined).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(e))) => Err(RunError::Writer(e.to_string())),
        Ok(Err(_)) => Err(RunError::Writer("the writer thread panicked".into())),
        Err(_) => {
            tracing::warn!(
                event = "gateway.shutdown_timeout",
                stage = "store",
                "store writer did not finish in time"
            );
            unfinished.push("the store writer (close)");
            Ok(())
        }
    };
    if unfinished.is_empty() {
        tracing::info!(event = "gateway.stopped", "gateway stopped");
        result
    } else {
        tracing::error!(
            event = "gateway.stopped_incomplete",
            unfinished = ?unfinished,
            "gateway stopped at its shutdown deadline; unfinished work stays in SQLite or the readers' buffers"
        );
        result.and(Err(RunError::ShutdownIncomplete(unfinished)))
    }
}

/// Opens the store off the async runtime (quick_check and migrations can
/// take a while on a large file), starts the writer on it, and opens the one
/// read connection when a publisher will need it.
async fn open_store(
    config: &Config,
    write_rx: mpsc::Receiver<store::WriteRequest>,
    on_commit: Option<Observer<Vec<StoredEvent>>>,
    heartbeats: &Heartbeats,
) -> Result<
    (
        store::Writer,
        Option<StoreReader>,
        Option<masterdata::service::Prepared>,
    ),
    RunError,
> {
    let store_cfg = config.store.clone();
    let gateway_id = config.gateway_id.clone();
    let want_reader = config.mqtt.is_some() || config.ops.metrics_addr.is_some();
    let heartbeat = heartbeats.register("store");
    let md = config.masterdata.clone().map(|m| {
        let prefix = config
            .mqtt
            .as_ref()
            .map_or_else(|| "tracegate".to_owned(), |q| q.topic_prefix.clone());
        (m, prefix, config.site.clone())
    });
    let opened = tokio::task::spawn_blocking(move || {
        let mut store = Store::open(&store_cfg, &gateway_id)?;
        let prepared = match md {
            Some((m, prefix, site)) => Some(
                masterdata::service::prepare(&mut store, &m, &prefix, &site, &gateway_id)
                    .map_err(RunError::Masterdata)?,
            ),
            None => None,
        };
        tracing::info!(
            event = "store.opened",
            path = %store_cfg.path.display(),
            store_id = store.store_id(),
            "event store open"
        );
        let writer = store::spawn_writer(store, write_rx, on_commit, Some(heartbeat))?;
        let reader = if want_reader {
            Some(
                StoreReader::spawn(Store::open_reader(&store_cfg, &gateway_id)?)?
                    .with_recent(writer.handle.recent()),
            )
        } else {
            None
        };
        Ok::<_, RunError>((writer, reader, prepared))
    })
    .await
    .map_err(|_| RunError::Writer("opening the store panicked".into()))?;
    opened
}

/// Amber at the door: a reader is reconnecting, or (with a publisher) the
/// oldest unpublished event is older than `outbox_secs`.
fn attention(status: &ops::Status, outbox_secs: u64) -> bool {
    let reader_down = status
        .readers
        .iter()
        .any(|r| r.state == tracegate_drivers::ReaderState::Reconnecting);
    let outbox_old = status.publisher.is_some()
        && status
            .store
            .as_ref()
            .and_then(|s| s.oldest_pending_age_secs)
            .is_some_and(|age| age > outbox_secs as f64);
    reader_down || outbox_old
}

/// Builds the status served on `/status`, merged into MQTT health messages,
/// and printed by `tracegate status`.
fn status_source(
    config: &Config,
    healths: Vec<Arc<ReaderHealth>>,
    store: watch::Receiver<StoreStats>,
    publisher: Arc<publish::PublisherStats>,
    masterdata: Option<watch::Receiver<masterdata::service::MasterdataStatus>>,
) -> ops::StatusSource {
    let gateway = config.gateway_id.clone();
    let site = config.site.clone();
    let hash = config.hash.clone();
    let mqtt = config.mqtt.is_some();
    let started = tracegate_drivers::clock::utc_now_ms();
    Arc::new(move || {
        let now = tracegate_drivers::clock::utc_now_ms();
        // The writer's latest figures: no SQL on the caller's task.
        let store = Some(ops::StoreStatus::new(store.borrow().clone(), now));
        ops::Status {
            gateway: gateway.clone(),
            site: site.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            config_hash: hash.clone(),
            started_at: event::UtcMs(started),
            uptime_secs: u64::try_from((now - started) / 1000).unwrap_or(0),
            readers: healths.iter().map(|h| h.snapshot()).collect(),
            store,
            // The publisher's counters arrive as JSON; a field it renames
            // shows up here as a zero, not as a crash.
            publisher: mqtt.then(|| publisher.snapshot()),
            health: None,
            heartbeats: Vec::new(),
            masterdata: masterdata.as_ref().map(|m| m.borrow().clone()),
        }
    })
}
