//! The GPIO task: the thin I/O loop around the door cores. It opens the
//! pins (every failure names chip, line and reason), turns raw input edges
//! into debounced [`DoorInput`]s for the pipeline, and drives the outputs
//! from the signal rules: a lamp test at start, what happened at each read
//! point (notices from the pipeline), the attention condition (a reader
//! down, the outbox too old) checked once a second, and every output off
//! on shutdown.
//!
//! Channels: input edges → pipeline is bounded and waits when full (an
//! edge is part of a window, never dropped); pipeline → this task is an
//! [`Observer`] (the pipeline never waits for a lamp; a notice missed when
//! it is full is counted).

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracegate_drivers::sim::SimConfig;
use tracegate_drivers::{Clock, HostTime};

use super::cdev;
use super::config::{BackendKind, GpioConfig};
use super::pins::{Input, Logical, Output};
use super::sim::{beam_broken, SimBoard};
use crate::config::{Config, ReaderConfig};
use crate::door::debounce::Debouncer;
use crate::door::signals::{Happening, Level, LightRules, Signals};
use crate::door::DoorInput;
use crate::event::{Direction, Flag};
use crate::observer::Observer;

/// Room for debounced edges towards the pipeline (waits when full).
pub const INPUT_CHANNEL: usize = 256;
/// Room for notices towards this task (dropped and counted when full).
pub const NOTICE_CHANNEL: usize = 1_024;
/// Room for raw edges from the backend's readers (waits when full).
const RAW_CHANNEL: usize = 256;

/// What happened at a read point, for its stack light.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalNotice {
    pub read_point: usize,
    pub read_point_name: String,
    pub pass: bool,
    pub tag_count: u64,
    pub direction: Option<Direction>,
    pub flags: Vec<Flag>,
}

/// A raw level change from a backend.
#[derive(Debug, Clone, Copy)]
struct RawEdge {
    input: usize,
    active: bool,
    at_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum GpioError {
    #[error("{0}")]
    Open(#[from] cdev::OpenError),
    #[error("GPIO pin {pin:?}: {reason}")]
    Pin { pin: String, reason: String },
    #[error("gpio sim_record {path}: {source}")]
    Record {
        path: String,
        source: std::io::Error,
    },
}

/// The opened pins.
#[derive(Debug)]
pub struct Board {
    inputs: Vec<Box<dyn Input>>,
    outputs: Vec<Box<dyn Output>>,
    /// Per input: its debounce (ms).
    debounce: Vec<u64>,
    raw_rx: mpsc::Receiver<RawEdge>,
    raw_tx: mpsc::Sender<RawEdge>,
    /// The sim backend's board, with the inputs that follow sim readers.
    sim: Option<(SimBoard, Vec<Follower>)>,
    /// cdev inputs whose edges are read by their own task.
    cdev_inputs: Vec<(usize, cdev::CdevLine)>,
}

/// Opens every pin `config` names; the first that cannot be opened fails
/// the start with its chip, line and reason.
pub fn open(config: &Config, gpio: &GpioConfig, clock: Clock) -> Result<Board, GpioError> {
    let (raw_tx, raw_rx) = mpsc::channel(RAW_CHANNEL);
    let mut inputs: Vec<Box<dyn Input>> = Vec::new();
    let mut outputs: Vec<Box<dyn Output>> = Vec::new();
    let mut sim = None;
    let mut cdev_inputs = Vec::new();
    match gpio.backend {
        BackendKind::Sim => {
            let board = SimBoard::new(clock, gpio.sim_record.as_deref()).map_err(|source| {
                GpioError::Record {
                    path: gpio
                        .sim_record
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                    source,
                }
            })?;
            let mut followers = Vec::new();
            for (i, pin) in gpio.inputs.iter().enumerate() {
                // Idle level: inactive.
                inputs.push(Box::new(Logical {
                    name: pin.name.clone(),
                    pin: board.pin(&pin.name, pin.active_low),
                    active_low: pin.active_low,
                }));
                if let Some(reader) = &pin.sim_follows {
                    let sim_cfg = config.readers.iter().find_map(|r| match r {
                        ReaderConfig::Sim(c) if c.name == *reader => Some(c.clone()),
                        _ => None,
                    });
                    let Some(sim_cfg) = sim_cfg else {
                        return Err(GpioError::Pin {
                            pin: pin.name.clone(),
                            reason: format!("sim_follows {reader:?} is not a sim reader"),
                        });
                    };
                    followers.push((i, pin.name.clone(), sim_cfg, pin.sim_beam, pin.active_low));
                }
            }
            for pin in &gpio.outputs {
                outputs.push(Box::new(Logical {
                    name: pin.name.clone(),
                    pin: board.output_pin(&pin.name, pin.active_low),
                    active_low: pin.active_low,
                }));
            }
            sim = Some((board, followers));
        }
        BackendKind::Cdev => {
            for (i, pin) in gpio.inputs.iter().enumerate() {
                // The kernel applies active_low: the line reads logically.
                let line =
                    cdev::open_input(&pin.name, &pin.chip, pin.line, pin.active_low, pin.bias)?;
                cdev_inputs.push((i, line));
            }
            for pin in &gpio.outputs {
                let line = cdev::open_output(&pin.name, &pin.chip, pin.line, pin.active_low)?;
                outputs.push(Box::new(Logical {
                    name: pin.name.clone(),
                    pin: line,
                    active_low: false,
                }));
            }
        }
    }
    Ok(Board {
        inputs,
        outputs,
        debounce: gpio.inputs.iter().map(|i| i.debounce_ms).collect(),
        raw_rx,
        raw_tx,
        sim,
        cdev_inputs,
    })
}

impl Board {
    /// The sim backend's board (tests read its output log).
    pub fn sim_board(&self) -> Option<SimBoard> {
        self.sim.as_ref().map(|(b, _)| b.clone())
    }

    /// Replaces the outputs (benchmarks stamp output changes precisely).
    pub fn replace_outputs(&mut self, outputs: Vec<Box<dyn Output>>) {
        self.outputs = outputs;
    }
}

/// The lights of the read points that have one: (read point, rules).
pub fn lights(config: &Config) -> Vec<(usize, LightRules)> {
    config
        .read_points
        .iter()
        .enumerate()
        .filter_map(|(i, rp)| {
            rp.door
                .as_ref()
                .and_then(|d| d.signal.clone())
                .map(|s| (i, s))
        })
        .collect()
}

/// Reads whether the gateway needs attention (amber): a reader down, or
/// the oldest unpublished event older than the threshold.
pub type AttentionSource = std::sync::Arc<dyn Fn() -> bool + Send + Sync>;

/// The GPIO task's connections to the rest of the gateway.
pub struct Wiring {
    /// Debounced edges to the pipeline.
    pub inputs_tx: mpsc::Sender<DoorInput>,
    /// Passes and flagged events from the pipeline.
    pub notices: mpsc::Receiver<SignalNotice>,
    /// Whether the gateway needs attention (amber), checked once a second.
    pub attention: Option<AttentionSource>,
    /// One readable line per pass (the demo).
    pub lines: Option<Observer<String>>,
}

impl std::fmt::Debug for Wiring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wiring")
            .field("attention", &self.attention.is_some())
            .finish_non_exhaustive()
    }
}

/// Runs until `cancel`; all outputs are off when it returns.
pub async fn run(
    mut board: Board,
    gpio: GpioConfig,
    lights: Vec<(usize, LightRules)>,
    clock: Clock,
    wiring: Wiring,
    cancel: CancellationToken,
) {
    let Wiring {
        inputs_tx,
        mut notices,
        attention,
        lines,
    } = wiring;
    let readers = CancellationToken::new();
    let mut threads = Vec::new();
    // Edge readers: cdev lines in their own threads, sim followers in a task.
    for (i, line) in std::mem::take(&mut board.cdev_inputs) {
        let (tx, cancel) = (board.raw_tx.clone(), readers.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("gpio-in-{i}"))
            .spawn(move || read_cdev_edges(i, line, tx, clock, cancel));
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => {
                tracing::error!(event = "gpio.input_failed", input = i, error = %e, "cannot start the input thread");
            }
        }
    }
    if let Some((sim_board, followers)) = board.sim.take() {
        if !followers.is_empty() {
            tokio::spawn(follow_sim(
                sim_board,
                followers,
                board.raw_tx.clone(),
                clock,
                readers.clone(),
            ));
        }
    }
    let start = clock.mono_ms();
    let mut debouncers: Vec<Debouncer> = board
        .inputs
        .iter_mut()
        .zip(&board.debounce)
        .map(|(pin, &d)| Debouncer::new(d, pin.is_active().unwrap_or(false)))
        .collect();
    // cdev inputs have no `Input` here: they start inactive and their
    // reader task reports the first level as an edge.
    while debouncers.len() < board.debounce.len() {
        let d = board.debounce.get(debouncers.len()).copied().unwrap_or(0);
        debouncers.push(Debouncer::new(d, false));
    }
    let light_of = |rp: usize| lights.iter().position(|(i, _)| *i == rp);
    let mut signals = Signals::new(
        lights.iter().map(|(_, r)| r.clone()).collect(),
        board.outputs.len(),
        gpio.ignore_flags.clone(),
    );
    let mut current: Vec<Option<bool>> = vec![None; board.outputs.len()];
    signals.lamp_test(start, gpio.lamp_test_ms);
    apply(&signals, &mut board.outputs, &mut current, clock.mono_ms());
    // Initially active inputs (a beam blocked at start) count as edges.
    for (i, d) in debouncers.iter().enumerate() {
        if d.level() {
            let _ = inputs_tx
                .send(DoorInput {
                    input: i,
                    active: true,
                    at: clock.now(),
                })
                .await;
        }
    }
    let mut attention_at = tokio::time::Instant::now();
    loop {
        let now_ms = clock.mono_ms();
        let next = debouncers
            .iter()
            .filter_map(Debouncer::deadline_ms)
            .chain(signals.deadline_ms(now_ms))
            .min()
            .map(|t| Duration::from_millis(t.saturating_sub(now_ms)))
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_secs(1));
        let wake = tokio::time::Instant::now() + next;
        tokio::select! {
            _ = cancel.cancelled() => break,
            Some(raw) = board.raw_rx.recv() => {
                if let Some(d) = debouncers.get_mut(raw.input) {
                    if let Some(edge) = d.sample(raw.active, raw.at_ms) {
                        send_edge(&inputs_tx, raw.input, edge, clock).await;
                    }
                }
            }
            Some(n) = notices.recv() => {
                let now = clock.mono_ms();
                if let Some(light) = light_of(n.read_point) {
                    signals.on_happening(&Happening { light, pass: n.pass, tag_count: n.tag_count, flags: &n.flags }, now);
                    apply(&signals, &mut board.outputs, &mut current, now);
                    if n.pass {
                        let line = pass_line(&n, signals.level(light, now));
                        tracing::info!(event = "door.pass", read_point = %n.read_point_name, "{line}");
                        if let Some(o) = &lines { let _ = o.send(line); }
                    }
                } else if n.pass {
                    let line = pass_line(&n, Level::Off);
                    tracing::info!(event = "door.pass", read_point = %n.read_point_name, "{line}");
                    if let Some(o) = &lines { let _ = o.send(line); }
                }
            }
            _ = tokio::time::sleep_until(wake) => {}
        }
        let now = clock.mono_ms();
        for (i, d) in debouncers.iter_mut().enumerate() {
            if let Some(edge) = d.poll(now) {
                send_edge(&inputs_tx, i, edge, clock).await;
            }
        }
        if let Some(a) = &attention {
            if attention_at.elapsed() >= Duration::from_secs(1) {
                attention_at = tokio::time::Instant::now();
                signals.set_attention(a());
            }
        }
        apply(&signals, &mut board.outputs, &mut current, now);
    }
    readers.cancel();
    signals.shutdown();
    apply(&signals, &mut board.outputs, &mut current, clock.mono_ms());
    // Lines are released when their threads end (within EDGE_WAIT) and the
    // board drops: a reload's new run can then request them again.
    // A thread waiting to hand over an edge is let go first.
    board.raw_rx.close();
    let _ = tokio::task::spawn_blocking(move || {
        for t in threads {
            let _ = t.join();
        }
    })
    .await;
    drop(board);
    tracing::info!(event = "gpio.stopped", "all outputs off, lines released");
}

async fn send_edge(
    tx: &mpsc::Sender<DoorInput>,
    input: usize,
    edge: crate::door::debounce::Edge,
    clock: Clock,
) {
    let now = clock.now();
    let back = now.mono_ms.saturating_sub(edge.at_ms);
    let at = HostTime {
        mono_ms: edge.at_ms.min(now.mono_ms),
        utc_ms: now.utc_ms - i64::try_from(back).unwrap_or(0),
        clock_synced: now.clock_synced,
    };
    // Waits when full: an edge is part of a window.
    let _ = tx
        .send(DoorInput {
            input,
            active: edge.active,
            at,
        })
        .await;
}

/// "dock-door-1 IN: 24 tags, green".
pub fn pass_line(n: &SignalNotice, level: Level) -> String {
    let dir = match n.direction {
        Some(Direction::In) => " IN",
        Some(Direction::Out) => " OUT",
        None => "",
    };
    let mut line = format!(
        "{}{dir}: {} tags, {}",
        n.read_point_name,
        n.tag_count,
        level.as_str()
    );
    if !n.flags.is_empty() {
        let names: Vec<&str> = n.flags.iter().map(|f| f.as_str()).collect();
        line.push_str(&format!(" (!{})", names.join(", !")));
    }
    line
}

fn apply(
    signals: &Signals,
    outputs: &mut [Box<dyn Output>],
    current: &mut [Option<bool>],
    now: u64,
) {
    for ((o, want), cur) in outputs
        .iter_mut()
        .zip(signals.outputs(now))
        .zip(current.iter_mut())
    {
        if *cur == Some(want) {
            continue;
        }
        match o.set_active(want) {
            Ok(()) => *cur = Some(want),
            Err(e) => {
                // Retried on the next change; logged once per failure.
                if cur.is_some() || want {
                    tracing::warn!(event = "gpio.output_failed", error = %e, "cannot set output");
                }
                *cur = None;
            }
        }
    }
}

/// Reads one cdev input's edges on its own thread: the kernel queues them,
/// the thread waits up to [`EDGE_WAIT`] at a time so that it notices
/// shutdown (a few wake-ups a second per input, nothing measurable).
fn read_cdev_edges(
    input: usize,
    line: cdev::CdevLine,
    tx: mpsc::Sender<RawEdge>,
    clock: Clock,
    cancel: CancellationToken,
) {
    use embedded_hal::digital::InputPin;
    let mut line = line;
    // The first level, then every edge the kernel queued.
    if let Ok(active) = line.is_high() {
        if tx
            .blocking_send(RawEdge {
                input,
                active,
                at_ms: clock.mono_ms(),
            })
            .is_err()
        {
            return;
        }
    }
    while !cancel.is_cancelled() {
        match line.request.wait_edge_event(EDGE_WAIT) {
            Ok(false) => continue,
            Ok(true) => {}
            Err(e) => {
                tracing::error!(event = "gpio.input_failed", input, error = %e, "cannot watch input edges");
                return;
            }
        }
        match line.request.read_edge_event() {
            Ok(ev) => {
                let active = ev.kind == gpiocdev::line::EdgeKind::Rising;
                let edge = RawEdge {
                    input,
                    active,
                    at_ms: clock.mono_ms(),
                };
                if tx.blocking_send(edge).is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(event = "gpio.input_failed", input, error = %e, "cannot read an input edge");
            }
        }
    }
}

const EDGE_WAIT: Duration = Duration::from_millis(200);

type Follower = (
    usize,
    String,
    SimConfig,
    Option<crate::event::BeamSide>,
    bool,
);

async fn follow_sim(
    board: SimBoard,
    followers: Vec<Follower>,
    tx: mpsc::Sender<RawEdge>,
    clock: Clock,
    cancel: CancellationToken,
) {
    let origin = clock.mono_ms();
    let mut levels = vec![false; followers.len()];
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = clock.mono_ms();
        for ((input, name, cfg, beam, active_low), level) in followers.iter().zip(levels.iter_mut())
        {
            let broken = beam_broken(cfg, *beam, now.saturating_sub(origin));
            if broken != *level {
                *level = broken;
                board.set_level(name, broken != *active_low);
                if tx
                    .send(RawEdge {
                        input: *input,
                        active: broken,
                        at_ms: now,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}
