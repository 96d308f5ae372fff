//! `[gpio]` and the per-read-point `window` and `signal` tables: raw TOML
//! structs and their one validation step into typed settings. The caller
//! (`crate::config`) locates each problem as FILE:LINE:COL.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use serde::Deserialize;
use tracegate_gs1::EpcPattern;

use crate::door::signals::LightRules;
use crate::event::{BeamSide, Flag};

// ---------------------------------------------------------------- raw ----

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGpio {
    #[serde(default)]
    pub backend: BackendKind,
    /// The chip of pins that name none: its label (`pinctrl-rp1` on a Pi 5,
    /// `pinctrl-bcm2711` on a Pi 4) or a path (`/dev/gpiochip0`).
    pub chip: Option<String>,
    /// Amber while the oldest unpublished event is older than this (0: off).
    #[serde(default = "default_attention_outbox_secs")]
    pub attention_outbox_secs: u64,
    /// Every output on for this long at start (0: no lamp test).
    #[serde(default = "default_lamp_test_ms")]
    pub lamp_test_ms: u64,
    /// Flags that do not turn a light red.
    #[serde(default)]
    pub ignore_flags: Vec<Flag>,
    /// Sim backend: append every output change to this file as JSON lines.
    pub sim_record: Option<PathBuf>,
    #[serde(default)]
    pub inputs: BTreeMap<String, RawInput>,
    #[serde(default)]
    pub outputs: BTreeMap<String, RawOutput>,
}

fn default_attention_outbox_secs() -> u64 {
    120
}
fn default_lamp_test_ms() -> u64 {
    1_000
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// GPIO character device (`/dev/gpiochipN`).
    #[default]
    Cdev,
    /// Simulated pins: photo-eyes follow simulated readers, outputs are
    /// recorded (the demo, tests).
    Sim,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Bias {
    /// Leave the line's bias as the board configured it.
    #[default]
    AsIs,
    PullUp,
    PullDown,
    Disabled,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInput {
    pub line: u32,
    pub chip: Option<String>,
    /// The line reads low when the input is active (an opto-coupler
    /// pulling against a pull-up: the usual 24 V photo-eye wiring).
    #[serde(default)]
    pub active_low: bool,
    #[serde(default)]
    pub bias: Bias,
    #[serde(default = "default_debounce_ms")]
    pub debounce_ms: u64,
    /// Sim backend: the beam is broken while this simulated reader has a
    /// load in its field.
    pub sim_follows: Option<String>,
    /// Sim backend: which part of the load's passage breaks this beam
    /// (`outside`: the first 60 %, `inside`: the last 60 %; absent: all).
    pub sim_beam: Option<BeamSide>,
}

fn default_debounce_ms() -> u64 {
    5
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutput {
    pub line: u32,
    pub chip: Option<String>,
    /// The lamp is on when the line is low (many relay modules).
    #[serde(default)]
    pub active_low: bool,
}

/// `[read_points.window]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWindow {
    /// `input`, `first_read`, `schedule`.
    #[serde(default)]
    pub open_on: Vec<OpenOn>,
    /// One photo-eye (an input name) ...
    pub trigger: Option<String>,
    /// ... or two beams (input names) for direction.
    pub beams: Option<RawBeams>,
    #[serde(default = "default_clear_hold_ms")]
    pub beam_clear_hold_ms: u64,
    #[serde(default)]
    pub open_every_ms: u64,
    /// Close this long after the trigger releases.
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
    #[serde(default = "yes")]
    pub close_on_release: bool,
    /// Close after this long without a new tag (0: off).
    #[serde(default)]
    pub stable_ms: u64,
    #[serde(default = "default_max_duration_ms")]
    pub max_duration_ms: u64,
    #[serde(default = "default_window_max_tags")]
    pub max_tags: usize,
    /// Keep the per-tag `arrived`/`departed` events at this read point.
    #[serde(default = "yes")]
    pub tag_events: bool,
    /// EPCIS packing aggregation: the parent's pattern (an SSCC).
    pub parent_pattern: Option<String>,
}

fn default_clear_hold_ms() -> u64 {
    200
}
fn default_linger_ms() -> u64 {
    500
}
fn default_max_duration_ms() -> u64 {
    60_000
}
fn default_window_max_tags() -> usize {
    5_000
}
fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpenOn {
    Input,
    FirstRead,
    Schedule,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBeams {
    pub outside: String,
    pub inside: String,
}

/// `[read_points.signal]`: the read point's stack light (output names).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSignal {
    #[serde(default)]
    pub green: Vec<String>,
    #[serde(default = "default_green_ms")]
    pub green_ms: u64,
    #[serde(default)]
    pub amber: Vec<String>,
    #[serde(default)]
    pub red: Vec<String>,
    #[serde(default = "default_red_ms")]
    pub red_ms: u64,
}

fn default_green_ms() -> u64 {
    2_000
}
fn default_red_ms() -> u64 {
    3_000
}

// -------------------------------------------------------------- typed ----

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ChipRef {
    Label(String),
    Path(PathBuf),
}

impl std::fmt::Display for ChipRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChipRef::Label(l) => write!(f, "chip labelled {l:?}"),
            ChipRef::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputPin {
    pub name: String,
    pub chip: ChipRef,
    pub line: u32,
    pub active_low: bool,
    pub bias: Bias,
    pub debounce_ms: u64,
    pub sim_follows: Option<String>,
    pub sim_beam: Option<BeamSide>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputPin {
    pub name: String,
    pub chip: ChipRef,
    pub line: u32,
    pub active_low: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpioConfig {
    pub backend: BackendKind,
    pub inputs: Vec<InputPin>,
    pub outputs: Vec<OutputPin>,
    pub attention_outbox_secs: Option<u64>,
    pub lamp_test_ms: u64,
    pub ignore_flags: Vec<Flag>,
    pub sim_record: Option<PathBuf>,
}

/// What opens and closes a read point's windows (indices into
/// [`GpioConfig::inputs`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    None,
    Input(usize),
    Beams {
        outside: usize,
        inside: usize,
        clear_hold_ms: u64,
    },
}

#[derive(Debug, Clone)]
pub struct DoorPoint {
    pub trigger: Trigger,
    /// The trigger's input name(s), for events (`eye`, `eye-out+eye-in`).
    pub trigger_names: Option<String>,
    pub open_on_input: bool,
    pub open_on_first_read: bool,
    pub open_every_ms: Option<u64>,
    pub linger_ms: Option<u64>,
    pub stable_ms: Option<u64>,
    pub max_duration_ms: u64,
    pub max_tags: usize,
    pub tag_events: bool,
    pub parent_pattern: Option<EpcPattern>,
    /// Output indices per level.
    pub signal: Option<LightRules>,
}

/// Where a problem is, for the caller to turn into FILE:LINE:COL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    Gpio(&'static str),
    Input(String, &'static str),
    Output(String, &'static str),
    Window(&'static str),
    Signal(&'static str),
}

fn chip_ref(text: &str) -> ChipRef {
    if text.starts_with('/') {
        ChipRef::Path(PathBuf::from(text))
    } else {
        ChipRef::Label(text.to_owned())
    }
}

impl RawGpio {
    pub fn validate(&self, problems: &mut Vec<(Place, String)>) -> GpioConfig {
        let mut push = |place, msg: String| problems.push((place, msg));
        let mut lines: HashMap<(ChipRef, u32), String> = HashMap::new();
        let mut chip_of = |name: &str, chip: &Option<String>, line: u32, kind: &'static str| {
            let chip = match chip.as_ref().or(self.chip.as_ref()) {
                Some(c) => chip_ref(c),
                None => {
                    return Err(format!(
                        "[gpio.{kind}.{name}]: no chip: set `chip` here or in [gpio] (a label such as \"pinctrl-rp1\", or a path)"
                    ))
                }
            };
            // The pin stays in the list either way, so that names using it
            // are not reported as unknown as well.
            let duplicate = lines
                .insert((chip.clone(), line), name.to_owned())
                .map(|other| format!(
                    "[gpio.{kind}.{name}]: line {line} of {chip} is already pin {other:?}; name every pin once"
                ));
            Ok((chip, duplicate))
        };
        let mut inputs = Vec::new();
        for (name, i) in &self.inputs {
            if self.outputs.contains_key(name) {
                push(
                    Place::Input(name.clone(), "line"),
                    format!("[gpio] {name:?} is both an input and an output; name every pin once"),
                );
            }
            match chip_of(name, &i.chip, i.line, "inputs") {
                Ok((chip, duplicate)) => {
                    if let Some(m) = duplicate {
                        push(Place::Input(name.clone(), "line"), m);
                    }
                    inputs.push(InputPin {
                        name: name.clone(),
                        chip,
                        line: i.line,
                        active_low: i.active_low,
                        bias: i.bias,
                        debounce_ms: i.debounce_ms,
                        sim_follows: i.sim_follows.clone(),
                        sim_beam: i.sim_beam,
                    })
                }
                Err(m) => push(Place::Input(name.clone(), "line"), m),
            }
            if i.debounce_ms > 1_000 {
                push(
                    Place::Input(name.clone(), "debounce_ms"),
                    format!("[gpio.inputs.{name}]: debounce_ms {} is above 1000; use the window's linger_ms to hold a read window open", i.debounce_ms),
                );
            }
        }
        let mut outputs = Vec::new();
        for (name, o) in &self.outputs {
            match chip_of(name, &o.chip, o.line, "outputs") {
                Ok((chip, duplicate)) => {
                    if let Some(m) = duplicate {
                        push(Place::Output(name.clone(), "line"), m);
                    }
                    outputs.push(OutputPin {
                        name: name.clone(),
                        chip,
                        line: o.line,
                        active_low: o.active_low,
                    })
                }
                Err(m) => push(Place::Output(name.clone(), "line"), m),
            }
        }
        if self.backend == BackendKind::Cdev && self.sim_record.is_some() {
            push(
                Place::Gpio("sim_record"),
                "[gpio] sim_record needs backend = \"sim\"".to_owned(),
            );
        }
        GpioConfig {
            backend: self.backend,
            inputs,
            outputs,
            attention_outbox_secs: (self.attention_outbox_secs > 0)
                .then_some(self.attention_outbox_secs),
            lamp_test_ms: self.lamp_test_ms,
            ignore_flags: self.ignore_flags.clone(),
            sim_record: self.sim_record.clone(),
        }
    }
}

/// Checks a read point's `window` and `signal` tables against the pins.
pub fn door_point(
    rp: &str,
    window: Option<&RawWindow>,
    signal: Option<&RawSignal>,
    gpio: Option<&GpioConfig>,
    problems: &mut Vec<(Place, String)>,
) -> Option<DoorPoint> {
    let mut push = |place, msg: String| problems.push((place, msg));
    let input = |name: &str| gpio.and_then(|g| g.inputs.iter().position(|i| i.name == name));
    let output = |name: &str| gpio.and_then(|g| g.outputs.iter().position(|o| o.name == name));
    let signal = signal.map(|s| {
        let mut list = |key: &'static str, names: &[String]| -> Vec<usize> {
            names
                .iter()
                .filter_map(|n| {
                    let found = output(n);
                    if found.is_none() {
                        push(
                            Place::Signal(key),
                            format!("read point {rp:?}: signal {key} names output {n:?}, which is not in [gpio.outputs]"),
                        );
                    }
                    found
                })
                .collect()
        };
        LightRules {
            green: list("green", &s.green),
            green_ms: s.green_ms,
            amber: list("amber", &s.amber),
            red: list("red", &s.red),
            red_ms: s.red_ms,
        }
    });
    let Some(w) = window else {
        if signal.is_some() {
            push(
                Place::Signal("green"),
                format!("read point {rp:?}: a signal table needs a window table (passes drive the light)"),
            );
        }
        return None;
    };
    let mut named = |key: &'static str, name: &str| -> Option<usize> {
        let found = input(name);
        if found.is_none() {
            push(
                Place::Window(key),
                format!("read point {rp:?}: window {key} names input {name:?}, which is not in [gpio.inputs]"),
            );
        }
        found
    };
    let trigger = match (&w.trigger, &w.beams) {
        (Some(_), Some(_)) => {
            push(
                Place::Window("beams"),
                format!("read point {rp:?}: window has both trigger and beams; pick one"),
            );
            Trigger::None
        }
        (Some(t), None) => named("trigger", t).map_or(Trigger::None, Trigger::Input),
        (None, Some(b)) => {
            let (o, i) = (named("beams", &b.outside), named("beams", &b.inside));
            if b.outside == b.inside {
                push(
                    Place::Window("beams"),
                    format!("read point {rp:?}: beams need two different inputs"),
                );
            }
            match (o, i) {
                (Some(outside), Some(inside)) => Trigger::Beams {
                    outside,
                    inside,
                    clear_hold_ms: w.beam_clear_hold_ms,
                },
                _ => Trigger::None,
            }
        }
        (None, None) => Trigger::None,
    };
    let open_on = if w.open_on.is_empty() {
        // What the table implies: its trigger if it has one, else reads.
        if w.trigger.is_some() || w.beams.is_some() {
            vec![OpenOn::Input]
        } else if w.open_every_ms > 0 {
            vec![OpenOn::Schedule]
        } else {
            vec![OpenOn::FirstRead]
        }
    } else {
        w.open_on.clone()
    };
    let open_on_input = open_on.contains(&OpenOn::Input);
    if open_on_input && w.trigger.is_none() && w.beams.is_none() {
        push(
            Place::Window("open_on"),
            format!("read point {rp:?}: open_on includes \"input\" but the window names no trigger or beams"),
        );
    }
    if open_on.contains(&OpenOn::Schedule) != (w.open_every_ms > 0) {
        push(
            Place::Window("open_every_ms"),
            format!("read point {rp:?}: open_on \"schedule\" and open_every_ms > 0 go together"),
        );
    }
    if w.max_duration_ms == 0 || w.max_tags == 0 {
        push(
            Place::Window("max_duration_ms"),
            format!("read point {rp:?}: window max_duration_ms and max_tags must be above 0"),
        );
    }
    let parent_pattern = w
        .parent_pattern
        .as_deref()
        .and_then(|p| match EpcPattern::parse(p) {
            Ok(pat) => Some(pat),
            Err(e) => {
                push(
                    Place::Window("parent_pattern"),
                    format!("read point {rp:?}: parent_pattern {p:?} is invalid: {e}"),
                );
                None
            }
        });
    let trigger_names = match (&w.trigger, &w.beams) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(b)) => Some(format!("{}+{}", b.outside, b.inside)),
        (None, None) => None,
    };
    Some(DoorPoint {
        trigger,
        trigger_names,
        open_on_input,
        open_on_first_read: open_on.contains(&OpenOn::FirstRead),
        open_every_ms: (w.open_every_ms > 0).then_some(w.open_every_ms),
        linger_ms: w.close_on_release.then_some(w.linger_ms),
        stable_ms: (w.stable_ms > 0).then_some(w.stable_ms),
        max_duration_ms: w.max_duration_ms,
        max_tags: w.max_tags,
        tag_events: w.tag_events,
        parent_pattern,
        signal,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::parse;

    pub const DOOR: &str = r#"
[gateway]
id = "g"
site = "s"

[[readers]]
name = "dock"
kind = "sim"

[[read_points]]
name = "dock-door-1"
reader = "dock"
direction = { outside = 1, inside = 2 }

[read_points.window]
beams = { outside = "eye-out", inside = "eye-in" }
linger_ms = 300

[read_points.signal]
green = ["green"]
amber = ["amber"]
red = ["red", "buzzer"]

[gpio]
backend = "sim"
chip = "pinctrl-rp1"

[gpio.inputs.eye-out]
line = 17
active_low = true
bias = "pull_up"
sim_follows = "dock"
sim_beam = "outside"

[gpio.inputs.eye-in]
line = 27
active_low = true
sim_follows = "dock"
sim_beam = "inside"

[gpio.outputs.green]
line = 22
[gpio.outputs.amber]
line = 23
[gpio.outputs.red]
line = 24
[gpio.outputs.buzzer]
line = 25
active_low = true
"#;

    #[test]
    fn a_door_with_two_beams_and_a_stack_light_parses_into_pin_indices() {
        let c = parse(DOOR, "t.toml").unwrap();
        let g = c.gpio.as_ref().unwrap();
        assert_eq!(g.inputs.len(), 2);
        assert_eq!(g.outputs.len(), 4);
        let door = c.read_points[0].door.as_ref().unwrap();
        let name = |i: usize| g.inputs[i].name.as_str();
        match door.trigger {
            super::Trigger::Beams {
                outside, inside, ..
            } => assert_eq!((name(outside), name(inside)), ("eye-out", "eye-in")),
            other => panic!("{other:?}"),
        }
        assert!(door.open_on_input && !door.open_on_first_read);
        let light = door.signal.as_ref().unwrap();
        let out =
            |i: &[usize]| -> Vec<&str> { i.iter().map(|&o| g.outputs[o].name.as_str()).collect() };
        assert_eq!(out(&light.red), ["red", "buzzer"]);
        assert_eq!(door.linger_ms, Some(300));
    }

    #[test]
    fn a_pin_named_twice_or_an_unknown_pin_is_reported_with_its_place() {
        let text = DOOR
            .replace(
                "[gpio.outputs.amber]\nline = 23",
                "[gpio.outputs.amber]\nline = 22",
            )
            .replace("red = [\"red\", \"buzzer\"]", "red = [\"red\", \"siren\"]")
            .replace("inside = \"eye-in\" }", "inside = \"eye-inn\" }");
        let err = parse(&text, "t.toml").unwrap_err().to_string();
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 3, "{err}");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("t.toml:16:1: ") && l.contains("\"eye-inn\"")),
            "{err}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("t.toml:22:1: ") && l.contains("\"siren\"")),
            "{err}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.contains("line 22 of chip labelled \"pinctrl-rp1\" is already pin")),
            "{err}"
        );
    }

    #[test]
    fn a_window_trigger_without_gpio_and_an_unknown_window_key_are_errors() {
        let text = DOOR[..DOOR.find("[gpio]").unwrap()].to_owned();
        let err = parse(&text, "t.toml").unwrap_err().to_string();
        assert!(err.contains("not in [gpio.inputs]"), "{err}");
        let text = DOOR.replace("linger_ms = 300", "lingr_ms = 300");
        let err = parse(&text, "t.toml").unwrap_err().to_string();
        assert!(err.contains("unknown field `lingr_ms`"), "{err}");
    }
}
