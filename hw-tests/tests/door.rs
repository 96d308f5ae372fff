//! The real `tracegate` binary at a dock door: simulated photo-eyes (the
//! `sim` GPIO backend) break their beams in step with simulated pallets,
//! each pallet becomes one `pass` event with exactly its tags, and the
//! stack-light sequence the sim backend records follows the rules.
//!
//! `gpio_chardev_loopback` runs the same daemon on real character-device
//! lines: with `TRACEGATE_HW_GPIOCHIP=/dev/gpiochipN` (a Pi, wired as
//! docs/hardware-testing.md says) it runs; without it, and without the
//! kernel's gpio-sim (configfs), it prints `skipped: ...`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::time::Duration;

use nix::sys::signal::Signal;
use tracegate_hw_tests::{signal, wait_exit, wait_for, TempGateway};

fn sim_door(record: &std::path::Path) -> String {
    format!(
        r#"
[[readers]]
name = "dock"
kind = "sim"
read_rate = 400
pallet_size = 8
arrival_interval_ms = 2500
dwell_ms = 1200
max_tags = 16

[[read_points]]
name = "dock-door-1"
reader = "dock"
direction = {{ outside = 1, inside = 2 }}

[read_points.window]
beams = {{ outside = "eye-out", inside = "eye-in" }}
beam_clear_hold_ms = 100
linger_ms = 300
tag_events = false

[read_points.signal]
green = ["green"]
green_ms = 500
amber = ["amber"]
red = ["red", "buzzer"]

[gpio]
backend = "sim"
chip = "pinctrl-rp1"
lamp_test_ms = 200
sim_record = "{}"

[gpio.inputs.eye-out]
line = 17
active_low = true
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
"#,
        record.display()
    )
}

#[derive(Debug)]
struct Change {
    output: String,
    on: bool,
}

fn change(line: &str) -> Change {
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    Change {
        output: v["output"].as_str().unwrap().to_owned(),
        on: v["on"].as_bool().unwrap(),
    }
}

#[test]
fn each_simulated_pallet_is_one_pass_with_exactly_its_tags_and_a_green_light() {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("outputs.jsonl");
    let gw = TempGateway::new("gw-door", &sim_door(&record)).unwrap();
    let mut child = gw.spawn().unwrap();
    let passes = wait_for(Duration::from_secs(20), || {
        let passes: Vec<_> = gw
            .events(&[])
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e["type"] == "pass")
            .collect();
        (passes.len() >= 2).then_some(passes)
    });
    // Let the second green run out before stopping.
    std::thread::sleep(Duration::from_millis(700));
    signal(&child, Signal::SIGTERM).unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(10));
    let passes = passes.unwrap_or_else(|| panic!("no two passes; log:\n{}", gw.log()));
    assert!(status.is_some_and(|s| s.success()), "{}", gw.log());

    // The simulator's serials: seed 42 starts at 42000001, eight per pallet.
    for (i, pass) in passes.iter().take(2).enumerate() {
        let want: BTreeSet<String> = (1..=8)
            .map(|k| (42_000_000 + i as u64 * 8 + k).to_string())
            .collect();
        let got: BTreeSet<String> = pass["tags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["identity"]["serial"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(got, want, "pass {i}: {pass}");
        assert_eq!(pass["tag_count"], 8);
        assert_eq!(pass["opened_by"], "input");
        assert_eq!(pass["closed_by"], "release");
        assert_eq!(pass["direction"], "in", "{pass}");
        assert_eq!(pass["direction_evidence"]["beams"]["passage"], "in");
        assert!(pass.get("overflow").is_none());
    }
    let events = gw.events(&[]).unwrap();
    assert!(
        events.iter().all(|e| e["type"] == "pass"),
        "tag_events = false: only passes"
    );

    let text = std::fs::read_to_string(&record).unwrap();
    let changes: Vec<Change> = text.lines().map(change).collect();
    let names = ["green", "amber", "red", "buzzer"];
    // Lamp test: every output on, then off.
    let first: BTreeSet<&str> = changes
        .iter()
        .take(4)
        .filter(|c| c.on)
        .map(|c| c.output.as_str())
        .collect();
    assert_eq!(first, names.into_iter().collect(), "{text}");
    let after: Vec<(&str, bool)> = changes
        .iter()
        .skip(8)
        .map(|c| (c.output.as_str(), c.on))
        .collect();
    assert_eq!(
        after,
        [
            ("green", true),
            ("green", false),
            ("green", true),
            ("green", false)
        ],
        "two clean passes: green twice, nothing else; record:\n{text}"
    );
    for name in names {
        let last = changes.iter().rev().find(|c| c.output == name).unwrap();
        assert!(!last.on, "{name} left on after shutdown");
    }
}

/// A real GPIO character device. Wiring (docs/hardware-testing.md): the
/// `green` output line jumpered to the `eye` input line, so the lamp test
/// breaks the "beam": the daemon must open a window, close it after the
/// linger, record an empty pass, and leave every output off at exit.
#[test]
fn gpio_chardev_loopback() {
    let Ok(chip) = std::env::var("TRACEGATE_HW_GPIOCHIP") else {
        let why = if std::path::Path::new("/sys/kernel/config/gpio-sim").exists() {
            "TRACEGATE_HW_GPIOCHIP unset (gpio-sim is present: create a chip and point the variable at it, see docs/hardware-testing.md)"
        } else {
            "no GPIO character device to test: TRACEGATE_HW_GPIOCHIP unset and no gpio-sim (configfs) in this kernel"
        };
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "skipped: {why}");
        return;
    };
    let out_line: u32 = std::env::var("TRACEGATE_HW_GPIO_OUT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(22);
    let in_line: u32 = std::env::var("TRACEGATE_HW_GPIO_IN")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(17);
    let body = format!(
        r#"
[[readers]]
name = "dock"
kind = "sim"
max_tags = 1

[[read_points]]
name = "door"
reader = "dock"

[read_points.window]
trigger = "eye"
linger_ms = 100

[read_points.signal]
green = ["green"]

[gpio]
chip = "{chip}"
lamp_test_ms = 500

[gpio.inputs.eye]
line = {in_line}
bias = "pull_down"
debounce_ms = 5

[gpio.outputs.green]
line = {out_line}
"#
    );
    let gw = TempGateway::new("gw-gpio", &body).unwrap();
    let check = gw.cli(&["check-config"], true);
    assert!(check.is_ok(), "check-config: {check:?}");
    let mut child = gw.spawn().unwrap();
    let pass = wait_for(Duration::from_secs(10), || {
        gw.events(&[])
            .unwrap_or_default()
            .into_iter()
            .find(|e| e["type"] == "pass")
    });
    signal(&child, Signal::SIGTERM).unwrap();
    wait_exit(&mut child, Duration::from_secs(10));
    let pass = pass
        .unwrap_or_else(|| panic!("no pass from the looped-back lamp test; log:\n{}", gw.log()));
    assert_eq!(pass["opened_by"], "input");
    assert_eq!(pass["closed_by"], "release");
}
