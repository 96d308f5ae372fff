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
    },
    /// Decode an EPC (hex) into every GS1 representation.
    Decode {
        /// The EPC bank contents after the PC word, in hex.
        hex: String,
        /// One JSON object with stable keys.
        #[arg(long)]
        json: bool,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tracegate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(cli_format: LogFormat, level: Option<&str>) -> anyhow::Result<()> {
    ops::init_logging(cli_format, level)?;
    // Metrics emitted before the recorder exists are lost: install it first.
    ops::install_metrics()?;
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
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
            runtime()?.block_on(async move {
                let shutdown = CancellationToken::new();
                on_signals(shutdown.clone());
                tracegate::reload::run_with_reload(path, config, shutdown).await
            })?;
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
            let addr = match addr {
                Some(a) => a,
                None => config::load(&path)?
                    .ops
                    .metrics_addr
                    .context("the status endpoint is off in this config ([ops] metrics_addr)")?,
            };
            let status = runtime()?
                .block_on(ops::fetch_status(addr))
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
        } => {
            let config = config::load(&path)?;
            let store =
                Store::open_reader(&config.store, &config.gateway_id).with_context(|| {
                    format!("cannot open the store at {}", config.store.path.display())
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
                "tracegate demo: metrics on http://{addr}/metrics, status on http://{addr}/status"
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
