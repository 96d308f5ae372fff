//! At the door, in process: how long from a photo-eye edge to the stack
//! light, with 1,000 reads/s flowing through the same pipeline task, and
//! what the GPIO task costs at idle.
//!
//! cargo bench -p tracegate --bench door
//!
//! 1. Edge → window → pass → output set. The pipeline task runs as in the
//!    daemon (reads from a simulated reader at 1,000 reads/s, batches every
//!    10 ms), the GPIO task runs on the sim backend. Each round sends the
//!    beam's break and release (linger 0) into the pipeline's input channel
//!    and waits for the green output. Measured in microseconds: time from
//!    the break to the window being open (the pipeline has taken the edge:
//!    observed as the release's turn, see below), and from the window's
//!    close deadline to the output set. The debounce time (configured,
//!    5 ms by default) comes before this and is not part of it.
//! 2. Idle CPU of the process with the GPIO task running and no reads,
//!    against the same process without `[gpio]` (user + system time from
//!    /proc/self/stat over 10 s each).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracegate::door::DoorInput;
use tracegate::gpio::pins::{Output, PinError};
use tracegate_drivers::{Clock, RawRead, ReadSink};

const CONFIG: &str = r#"
[gateway]
id = "bench"
site = "s"

[[readers]]
name = "dock"
kind = "sim"

[[read_points]]
name = "door"
reader = "dock"
direction = { outside = 1, inside = 2 }

[read_points.window]
trigger = "eye"
linger_ms = 0

# The window is open for an instant and usually holds no tag (red), or
# catches one (green): either lights the one output, for 1 ms.
[read_points.signal]
green = ["green"]
green_ms = 1
red = ["green"]
red_ms = 1

[gpio]
backend = "sim"
chip = "x"
lamp_test_ms = 0
attention_outbox_secs = 0

[gpio.inputs.eye]
line = 1

[gpio.outputs.green]
line = 2
"#;

/// An output that stamps when it was set (the sim backend's own log has
/// millisecond resolution; this has the `Instant`).
#[derive(Debug)]
struct Stamping(Arc<Mutex<Vec<(Instant, bool)>>>);

impl Output for Stamping {
    fn name(&self) -> &str {
        "green"
    }
    fn set_active(&mut self, on: bool) -> Result<(), PinError> {
        self.0.lock().unwrap().push((Instant::now(), on));
        Ok(())
    }
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 (1-based); 12 and 13 here.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

async fn latency() {
    let config = tracegate::config::parse(CONFIG, "bench.toml").unwrap();
    let clock = Clock::new();
    let mut pipeline = tracegate::pipeline::Pipeline::new(
        &config,
        clock,
        Box::new(tracegate::pipeline::NoEnrichment),
    );
    let (inputs_tx, inputs_rx) = mpsc::channel(tracegate::gpio::task::INPUT_CHANNEL);
    let (notices, notices_rx) = tracegate::Observer::channel(tracegate::gpio::task::NOTICE_CHANNEL);
    pipeline.attach_gpio(inputs_rx, notices);
    let (sink, read_rx) = ReadSink::channel(1_024);
    let (write_tx, mut write_rx) = mpsc::channel::<tracegate::store::WriteRequest>(256);
    // The store is not part of this path: drain the writer's channel.
    tokio::spawn(async move { while write_rx.recv().await.is_some() {} });
    let hb = tracegate::heartbeat::Heartbeats::new(clock).register("pipeline");
    tokio::spawn(tracegate::pipeline::run(
        pipeline, read_rx, write_tx, hb, None,
    ));

    let stamps = Arc::new(Mutex::new(Vec::new()));
    let g = config.gpio.clone().unwrap();
    let mut board = tracegate::gpio::task::open(&config, &g, clock).unwrap();
    board.replace_outputs(vec![Box::new(Stamping(stamps.clone()))]);
    let cancel = CancellationToken::new();
    let (lines_tx, _lines) = tracegate::Observer::channel(16);
    tokio::spawn(tracegate::gpio::task::run(
        board,
        g,
        tracegate::gpio::task::lights(&config),
        clock,
        tracegate::gpio::task::Wiring {
            inputs_tx: inputs_tx.clone(),
            notices: notices_rx,
            attention: None,
            lines: Some(lines_tx),
        },
        cancel.clone(),
    ));

    // 1,000 reads/s: 10 reads every 10 ms over 200 tags on two antennas.
    let feeding = CancellationToken::new();
    let stop = feeding.clone();
    tokio::spawn(async move {
        let reader: Arc<str> = Arc::from("dock");
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let mut n = 0u64;
        loop {
            tokio::select! { _ = stop.cancelled() => return, _ = tick.tick() => {} }
            let host = clock.now();
            let batch: Vec<RawRead> = (0..10)
                .map(|_| {
                    n += 1;
                    RawRead {
                        reader: reader.clone(),
                        antenna: 1 + (n % 2) as u8,
                        epc: tracegate_drivers::sim::sgtin96(614_141, 812_345, n % 200).to_vec(),
                        tid: None,
                        pc: Some(0x3000),
                        rssi_dbm: Some(-60),
                        frequency_khz: None,
                        phase_deg: None,
                        reader_timestamp_ms: None,
                        host,
                    }
                })
                .collect();
            if sink.reads(batch).await.is_err() {
                return;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    let rounds = 500;
    let mut total = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let seen = stamps.lock().unwrap().len();
        let t0 = Instant::now();
        let at = clock.now();
        inputs_tx
            .send(DoorInput {
                input: 0,
                active: true,
                at,
            })
            .await
            .unwrap();
        inputs_tx
            .send(DoorInput {
                input: 0,
                active: false,
                at,
            })
            .await
            .unwrap();
        // Wait for green on.
        let on = loop {
            if let Some(&(t, true)) = stamps.lock().unwrap().get(seen) {
                break t;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        };
        total.push(on.duration_since(t0).as_secs_f64() * 1e6);
        // Let green (1 ms) run out before the next round.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    feeding.cancel();
    cancel.cancel();
    let (p50, p99, max) = (
        percentile(&mut total, 0.5),
        percentile(&mut total, 0.99),
        percentile(&mut total, 1.0),
    );
    println!(
        "edge -> window open -> close (linger 0) -> pass -> output set, {rounds} rounds, 1,000 reads/s flowing: p50 {p50:.0} us, p99 {p99:.0} us, max {max:.0} us"
    );
}

async fn idle(with_gpio: bool) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let text = CONFIG.replace(
        "[gateway]\n",
        &format!("[gateway]\ndata_dir = \"{}\"\n", dir.path().display()),
    ) + "\n[ops]\nmetrics_addr = \"off\"\n";
    // The sim reader idles: no tags at all.
    let text = text.replace(
        "kind = \"sim\"",
        "kind = \"sim\"\nmax_tags = 1\narrival_interval_ms = 1",
    );
    let mut config = tracegate::config::parse(&text, "bench.toml").unwrap();
    if !with_gpio {
        config.gpio = None;
        config.read_points[0].door = None;
    }
    let shutdown = CancellationToken::new();
    let gw = tokio::spawn(tracegate::run(config, shutdown.clone()));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (c0, t0) = (cpu_ticks(), Instant::now());
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (c1, t1) = (cpu_ticks(), Instant::now());
    shutdown.cancel();
    gw.await.unwrap().unwrap();
    // Clock ticks are 1/100 s on Linux.
    (c1 - c0) as f64 / 100.0 / t1.duration_since(t0).as_secs_f64() * 100.0
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(latency());
    let without = rt.block_on(idle(false));
    let with = rt.block_on(idle(true));
    println!(
        "idle CPU over 10 s: without [gpio] {without:.2} % of a core, with the GPIO task (sim backend, no followers) {with:.2} %, difference {:.2} points",
        with - without
    );
}
