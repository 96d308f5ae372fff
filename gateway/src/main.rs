//! The `tracegate` binary: argument parsing, logging, signals. Everything
//! else is in the library.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use tracegate::config;
use tracegate::ops::{self, LogFormat};
use tracegate::store::Store;

/// mimalloc instead of glibc malloc: the event path allocates and frees
/// small strings across threads (pipeline → writer → publisher), where
/// glibc's arenas spent about a tenth of the daemon's CPU on locking and
/// consolidating fast bins (BENCHMARKS.md, "Gateway internals rework").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "tracegate",
    version,
    about = "Edge gateway for RFID/NFC serial-number tracking"
)]
struct Cli {
    /// Log format: auto (journald under systemd, human on a terminal), human, json, journald.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Auto)]
    log_format: LogFormat,
    /// Log filter, e.g. `info` or `tracegate=debug` (default: RUST_LOG, else info).
    #[arg(long, global = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway with a configuration file.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration file and print a one-line summary.
    CheckConfig { file: PathBuf },
    /// Run the whole loop on simulated readers, no hardware or server needed.
    Demo {
        /// Stop after this many seconds (default: until Ctrl-C).
        #[arg(long)]
        duration: Option<u64>,
    },
    /// List stored events.
    Events {
        #[arg(long, short)]
        config: PathBuf,
        /// Only events not yet acknowledged by the MQTT broker.
        #[arg(long)]
        pending: bool,
        /// Only events with a seq above this one.
        #[arg(long, default_value_t = 0)]
        since: u64,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// Read this store file instead of the configured one, e.g. a store
        /// moved aside as corrupt (`events.db.corrupt-...`); it is only read.
        #[arg(long, value_name = "FILE")]
        store: Option<PathBuf>,
    },
    /// Decode an EPC (hex) into every GS1 representation.
    Decode {
        /// The EPC bank contents after the PC word, in hex.
        hex: String,
        /// One JSON object with stable keys.
        #[arg(long)]
        json: bool,
    },
    /// Master data from the registry: keys, signed datasets (docs/masterdata.md).
    Masterdata {
        #[command(subcommand)]
        command: MasterdataCommand,
    },
    /// Print a summary of the running daemon (from its status endpoint).
    Status {
        /// The daemon's config, to find its status address.
        #[arg(long, short, default_value = "/etc/tracegate/tracegate.toml")]
        config: PathBuf,
        /// The status address, instead of reading it from the config.
        #[arg(long)]
        addr: Option<std::net::SocketAddr>,
        /// Print the raw status JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum MasterdataCommand {
    /// Generate a signing key: PREFIX.key (secret, 0600) and PREFIX.pub.
    Keygen { prefix: PathBuf },
    /// Sign records (CSV, JSON array or JSON Lines) as a dataset directory.
    Build {
        /// Secret key file from `keygen`.
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        name: String,
        #[arg(long)]
        version: u64,
        /// Only gateways of this site (default: every gateway).
        #[arg(long)]
        site: Option<String>,
        /// Only this gateway (needs --site).
        #[arg(long, requires = "site")]
        gateway: Option<String>,
        /// Input records; CSV when the name ends in .csv.
        #[arg(long)]
        input: PathBuf,
        #[arg(long, default_value_t = tracegate::masterdata::format::DEFAULT_CHUNK)]
        chunk_bytes: u32,
        /// Output directory (manifest.tgmd and chunk-NNNNN.bin).
        #[arg(long)]
        out: PathBuf,
    },
    /// Publish a dataset directory, retained with QoS 1, to a broker.
    Publish {
        dir: PathBuf,
        /// mqtt://host[:port] (plain TCP).
        #[arg(long)]
        broker: String,
        #[arg(long, default_value = "tracegate")]
        topic_prefix: String,
    },
    /// Show the datasets in force in a gateway's store.
    Show {
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    // Freed memory back to the OS after 10 ms, not 1 s (allocator.rs).
    tracegate::allocator::configure();
    // Transparent huge pages (`always` on many kernels) made every 2 MiB
    // region the allocator touched resident as a whole: under overload RSS
    // was about 20 MiB higher with them (BENCHMARKS.md, overload section).
    // Best effort: an older kernel without the knob keeps them.
    #[cfg(target_os = "linux")]
    let _ = nix::sys::prctl::set_thp_disable(true);
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tracegate: {}", describe(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes in one line, each said once: library errors
/// often repeat their source in their own message.
fn describe(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn init_logging(cli_format: LogFormat, level: Option<&str>) -> anyhow::Result<()> {
    ops::init_logging(cli_format, level)?;
    // Metrics emitted before the recorder exists are lost: install it first.
    ops::install_metrics()?;
    Ok(())
}

/// Threads tokio may start for blocking work (tokio's default is 512). The
/// unit sets `TasksMax=64`, which counts threads: the one worker,
/// the store's writer and reader, a PC/SC thread per NFC reader and this
/// pool must stay under it, or a burst of blocking calls fails to spawn.
const MAX_BLOCKING_THREADS: usize = 16;

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    // One worker: the async side (readers, pipeline, publisher, endpoints)
    // needs a few percent of a core, and with a worker per core every wake-up
    // also woke an idle worker to look for work to steal, which cost more
    // than the work (BENCHMARKS.md). SQLite runs on its own two threads and
    // blocking work on the blocking pool, as before.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Cancels the token on SIGINT or SIGTERM.
fn on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers; stop with SIGKILL");
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!(event = "signal", signal = "SIGTERM", "stopping"),
            _ = int.recv() => tracing::info!(event = "signal", signal = "SIGINT", "stopping"),
        }
        token.cancel();
    });
}

fn real_main(cli: Cli) -> anyhow::Result<ExitCode> {
    let (log_format, log_level) = (cli.log_format, cli.log_level);
    match cli.command {
        Command::CheckConfig { file } => match config::load_and_check_files(&file) {
            Ok(c) => {
                to_stdout(|out| {
                    writeln!(out, "{}: ok: {}", file.display(), c.summary())?;
                    Ok(())
                })?;
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{e}");
                Ok(ExitCode::from(2))
            }
        },
        Command::Run { config: path } => {
            init_logging(log_format, log_level.as_deref())?;
            let config = config::load(&path)?;
            tracing::info!(event = "config.loaded", path = %path.display(), summary = %config.summary(), "configuration loaded");
            let rt = runtime()?;
            let result = rt.block_on(async move {
                let shutdown = CancellationToken::new();
                on_signals(shutdown.clone());
                tracegate::reload::run_with_reload(path, config, shutdown).await
            });
            // Do not wait for blocking work that outlived the shutdown
            // deadline (a store writer retrying on a full disk): the process
            // ends now, and what was unfinished is said in the log and the
            // exit code.
            rt.shutdown_timeout(Duration::from_millis(200));
            result?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Masterdata { command } => {
            masterdata(command)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Decode { hex, json } => {
            let decoded = tracegate_gs1::decode_epc_hex(&hex)
                .map_err(|e| anyhow::anyhow!("{hex:?} is not an EPC in hex: {e}"))?;
            to_stdout(|out| {
                if json {
                    writeln!(out, "{}", serde_json::to_string_pretty(&decoded)?)?;
                } else {
                    writeln!(out, "{decoded}")?;
                }
                Ok(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status {
            config: path,
            addr,
            json,
        } => {
            let (addr, auth) = match addr {
                Some(a) => (a, None),
                None => {
                    let ops_cfg = config::load(&path)?.ops;
                    let a = ops_cfg.metrics_addr.context(
                        "the status endpoint is off in this config ([ops] metrics_addr)",
                    )?;
                    // Beyond loopback the endpoint wants the credentials file's secret.
                    let auth = match &ops_cfg.credentials_file {
                        Some(f) if !a.ip().is_loopback() => {
                            Some(ops::Credentials::client_authorization(f)?)
                        }
                        _ => None,
                    };
                    (a, auth)
                }
            };
            let status = runtime()?
                .block_on(ops::fetch_status_with(addr, auth.as_deref()))
                .with_context(|| format!("cannot reach the daemon's status endpoint at {addr}: is tracegate running?"))?;
            to_stdout(|out| {
                if json {
                    writeln!(out, "{}", serde_json::to_string_pretty(&status)?)?;
                } else {
                    write!(out, "{}", ops::render_status_human(&status))?;
                }
                Ok(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { duration } => {
            // The embedded broker logs every client disconnect as an error.
            let level = log_level.unwrap_or_else(|| "info,rumqttd=off".to_owned());
            init_logging(log_format, Some(&level))?;
            runtime()?.block_on(demo(duration))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Events {
            config: path,
            pending,
            since,
            json,
            store: file,
        } => {
            let config = config::load(&path)?;
            let mut store_config = config.store.clone();
            if let Some(file) = file {
                store_config.path = file;
            }
            let store =
                Store::open_read_only(&store_config, &config.gateway_id).with_context(|| {
                    format!("cannot open the store at {}", store_config.path.display())
                })?;
            to_stdout(|out| {
                let mut after = since;
                loop {
                    let batch = store.events_after(after, 10_000, pending)?;
                    let Some(last) = batch.last() else { break };
                    after = last.seq;
                    for e in &batch {
                        if json {
                            writeln!(out, "{}", e.payload)?;
                        } else {
                            match serde_json::from_str::<tracegate::event::Event>(&e.payload) {
                                Ok(event) => writeln!(out, "{}", event.human_line())?,
                                // Written by a newer gateway: what every event has.
                                Err(_) => writeln!(
                                    out,
                                    "{:>8}  {}  {:<9} {}",
                                    e.seq,
                                    tracegate::event::iso_ms(e.event_utc_ms),
                                    e.event_type,
                                    e.id
                                )?,
                            }
                        }
                    }
                }
                Ok(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Runs `write` against a locked, buffered stdout. A reader that goes away
/// (`tracegate decode ... | head -1`) ends the output quietly: a closed pipe
/// is how a Unix pipeline says "enough", not an error worth a message. The
/// runtime ignores SIGPIPE, so it arrives here as `BrokenPipe`.
fn masterdata(command: MasterdataCommand) -> anyhow::Result<()> {
    use tracegate::masterdata::{format::Scope, tool};
    match command {
        MasterdataCommand::Keygen { prefix } => {
            let (secret, public) = tool::keygen(&prefix)?;
            println!(
                "secret key: {} (keep it off the gateways)",
                secret.display()
            );
            println!(
                "public key: {} (for [masterdata] trusted_keys)",
                public.display()
            );
        }
        MasterdataCommand::Build {
            key,
            name,
            version,
            site,
            gateway,
            input,
            chunk_bytes,
            out,
        } => {
            let key = tool::load_secret_key(&key)?;
            let text = std::fs::read_to_string(&input)
                .with_context(|| format!("cannot read {}", input.display()))?;
            let m = tool::build(tool::BuildArgs {
                key: &key,
                name: &name,
                version,
                scope: Scope { site, gateway },
                input: &text,
                csv: input.extension().is_some_and(|e| e == "csv"),
                chunk_bytes,
                out: &out,
            })?;
            println!(
                "{}: dataset {} version {} for {}: {} bytes in {} chunk(s)",
                out.display(),
                m.name,
                m.version,
                m.scope,
                m.payload_bytes,
                m.chunks.len()
            );
        }
        MasterdataCommand::Publish {
            dir,
            broker,
            topic_prefix,
        } => {
            let rest = broker
                .strip_prefix("mqtt://")
                .context("--broker must be mqtt://host[:port]")?;
            let (host, port) = match rest.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), p.parse().context("bad port")?),
                None => (rest.to_owned(), 1883),
            };
            let plan = tool::publish_plan(&topic_prefix, &dir)?;
            let manifest_topic = plan.last().map(|(t, _)| t.clone()).unwrap_or_default();
            let n = plan.len();
            runtime()?.block_on(tool::publish(&host, port, plan, Duration::from_secs(60)))?;
            println!("published {n} message(s), manifest on {manifest_topic}");
        }
        MasterdataCommand::Show { config: path } => {
            let c = config::load(&path)?;
            print!("{}", tracegate::masterdata::tool::show(&c)?);
        }
    }
    Ok(())
}

fn to_stdout(write: impl FnOnce(&mut dyn Write) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match write(&mut out).and_then(|()| out.flush().map_err(anyhow::Error::from)) {
        Err(e) if is_broken_pipe(&e) => Ok(()),
        other => other,
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

const DEMO_CONFIG: &str = include_str!("../../config/demo.toml");
/// Commits the demo's display may fall behind by before it skips some.
const DEMO_DISPLAY_BATCHES: usize = 1_024;

async fn demo(duration: Option<u64>) -> anyhow::Result<()> {
    let mut config = config::parse(DEMO_CONFIG, "config/demo.toml (embedded)")?;
    let dir = std::env::temp_dir().join(format!("tracegate-demo-{}", std::process::id()));
    config.set_data_dir(dir.clone());
    let shutdown = CancellationToken::new();
    on_signals(shutdown.clone());
    if let Some(secs) = duration {
        let t = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(secs)).await;
            t.cancel();
        });
    }
    // A simulated Mercury module behind a real pseudo-terminal, so the demo
    // exercises the serial path end to end: codec, driver, supervision.
    let sim_cancel = CancellationToken::new();
    let (pty, _sim) = tracegate_drivers::mercury::sim::spawn_pty(
        tracegate_drivers::mercury::sim::MercurySimParams::demo(),
        sim_cancel.clone(),
    )
    .context("cannot start the simulated Mercury reader on a pseudo-terminal")?;
    add_serial_demo_reader(&mut config, pty.display().to_string())?;
    let registry = CancellationToken::new();
    let subscriber = start_registry(&mut config, registry.clone())?;
    eprintln!(
        "tracegate demo: {} simulated reader(s), store in {}{}",
        config.readers.len(),
        dir.display(),
        if subscriber.is_some() {
            "; committed events print as JSON lines, then as the registry receives them (\"registry <-\")"
        } else {
            "; events print below as they are committed"
        }
    );
    // The display is best effort: when the terminal cannot keep up, whole
    // commits are skipped (and counted) rather than slowing the writer.
    let (tx, mut rx) =
        tracegate::Observer::<Vec<tracegate::store::StoredEvent>>::channel(DEMO_DISPLAY_BATCHES);
    let display = tx.drops();
    let printer = tokio::spawn(async move {
        let mut n = 0u64;
        while let Some(batch) = rx.recv().await {
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            for e in batch {
                n += 1;
                let _ = writeln!(out, "{}", e.payload);
            }
        }
        n
    });
    // One line per pass at a door with photo-eyes, with its stack light.
    let (door_tx, mut door_rx) = tracegate::Observer::<String>::channel(DEMO_DISPLAY_BATCHES);
    tokio::spawn(async move {
        while let Some(line) = door_rx.recv().await {
            eprintln!("tracegate demo: door {line}");
        }
    });
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let options = tracegate::RunOptions {
        on_commit: Some(tx),
        ready: Some(ready_tx),
        metrics_fallback_ephemeral: true,
        door_lines: Some(door_tx),
        ..Default::default()
    };
    tokio::spawn(async move {
        if let Ok(Some(addr)) = ready_rx.await {
            eprintln!(
                "tracegate demo: open the page at http://{addr}/ (metrics on /metrics, status on /status)"
            );
        }
    });
    let result = tracegate::run_with(config, shutdown, options).await;
    let printed = printer.await.unwrap_or(0);
    let skipped = display.get();
    if let Some(sub) = subscriber {
        // Let the last acknowledged messages reach the subscriber.
        tokio::time::sleep(Duration::from_millis(300)).await;
        registry.cancel();
        let _ = sub.await;
    }
    eprintln!(
        "tracegate demo: {printed} events shown{}; removing {}",
        if skipped > 0 {
            format!(" ({skipped} commits not shown: the display fell behind)")
        } else {
            String::new()
        },
        dir.display()
    );
    let _ = std::fs::remove_dir_all(&dir);
    result.map_err(Into::into)
}

/// Adds the pty-backed Mercury reader and a packing-station read point.
fn add_serial_demo_reader(config: &mut config::Config, port: String) -> anyhow::Result<()> {
    let reader = tracegate_drivers::mercury::MercuryConfig::new("packing-mercury", port);
    let expected = tracegate_gs1::EpcPattern::parse("urn:epc:pat:sgtin-96:*.0614141.812345.*")?;
    config.read_points.push(config::ReadPoint {
        name: "packing-station".into(),
        reader: reader.name.clone(),
        antennas: reader.antennas.clone(),
        direction: None,
        rssi_floor_dbm: None,
        epc_patterns: Vec::new(),
        expect_patterns: vec![expected],
        biz_step: Some("packing".into()),
        disposition: Some("in_progress".into()),
        read_point_id: Some("urn:epc:id:sgln:0614141.00777.9".into()),
        biz_location: Some("urn:epc:id:sgln:0614141.00777.0".into()),
        action: config::EpcisAction::Observe,
        door: None,
    });
    config.readers.push(config::ReaderConfig::Mercury(reader));
    Ok(())
}

/// Starts the in-process broker and a subscriber playing the registry, and
/// points the config's MQTT uplink at it.
#[cfg(feature = "demo-broker")]
fn start_registry(
    config: &mut config::Config,
    cancel: CancellationToken,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    use tracegate::publish::{embedded, MqttConfig};
    let (addr, broker) = embedded::start_broker()?;
    // The broker runs on its own threads until the process exits.
    std::mem::forget(broker);
    config.mqtt = Some(MqttConfig::with_url(format!("mqtt://{addr}"))?);
    eprintln!("tracegate demo: in-process MQTT broker on {addr}");
    Ok(Some(tokio::spawn(async move {
        if let Err(e) = embedded::subscribe_and_print(addr, "tracegate/#", cancel).await {
            eprintln!("tracegate demo: registry subscriber stopped: {e}");
        }
    })))
}

#[cfg(not(feature = "demo-broker"))]
fn start_registry(
    _config: &mut config::Config,
    _cancel: CancellationToken,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    Ok(None)
}
