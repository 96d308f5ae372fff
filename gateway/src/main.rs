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
use tracegate::store::Store;

#[derive(Debug, Parser)]
#[command(name = "tracegate", version, about = "Edge gateway for RFID/NFC serial-number tracking")]
struct Cli {
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

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
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
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
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
    match cli.command {
        Command::CheckConfig { file } => match config::load(&file) {
            Ok(c) => {
                println!("{}: ok: {}", file.display(), c.summary());
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{e}");
                Ok(ExitCode::from(2))
            }
        },
        Command::Run { config: path } => {
            init_logging();
            let config = config::load(&path)?;
            runtime()?.block_on(async move {
                let shutdown = CancellationToken::new();
                on_signals(shutdown.clone());
                tracegate::run(config, shutdown).await
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { duration } => {
            init_logging();
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
            let store = Store::open_reader(&config.store, &config.gateway_id)
                .with_context(|| format!("cannot open the store at {}", config.store.path.display()))?;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let mut after = since;
            loop {
                let batch = store.events_after(after, 10_000, pending)?;
                let Some(last) = batch.last() else { break };
                after = last.seq;
                for e in &batch {
                    if json {
                        writeln!(out, "{}", e.payload)?;
                    } else {
                        writeln!(
                            out,
                            "{:>8}  {}  {:<9} {}",
                            e.seq,
                            tracegate::event::iso_ms(e.event_utc_ms),
                            e.event_type,
                            e.id
                        )?;
                    }
                }
            }
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

const DEMO_CONFIG: &str = include_str!("../../config/demo.toml");

async fn demo(duration: Option<u64>) -> anyhow::Result<()> {
    let mut config = config::parse(DEMO_CONFIG, "config/demo.toml (embedded)")?;
    let dir = std::env::temp_dir().join(format!("tracegate-demo-{}", std::process::id()));
    config.set_data_dir(dir.clone());
    eprintln!(
        "tracegate demo: {} simulated reader(s), store in {}; events print below as they are committed",
        config.readers.len(),
        dir.display()
    );
    let shutdown = CancellationToken::new();
    on_signals(shutdown.clone());
    if let Some(secs) = duration {
        let t = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(secs)).await;
            t.cancel();
        });
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<tracegate::store::StoredEvent>>();
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
    let options = tracegate::RunOptions {
        on_commit: Some(tx),
        ..Default::default()
    };
    let result = tracegate::run_with(config, shutdown, options).await;
    let printed = printer.await.unwrap_or(0);
    eprintln!("tracegate demo: {printed} events committed; removing {}", dir.display());
    let _ = std::fs::remove_dir_all(&dir);
    result.map_err(Into::into)
}
