//! The real `tracegate` binary reading a UHF reader over a serial port.
//!
//! By default each test serves a protocol simulator on a pseudo-terminal and
//! checks that exactly the simulated EPCs become `arrived` events. With
//! `TRACEGATE_HW_MERCURY=/dev/serial/by-id/...` or
//! `TRACEGATE_HW_R2000=/dev/serial/by-id/...` set, the same test runs
//! against that real reader instead and only checks that events appear
//! (put a few tags in the field). See docs/hardware-testing.md.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio_util::sync::CancellationToken;
use tracegate_drivers::mercury::sim::{MercurySim, MercurySimParams, SimTag};
use tracegate_drivers::r2000::sim::{R2000Sim, R2000SimParams};
use tracegate_hw_tests::{signal, wait_exit, wait_for, TempGateway};

/// EPCs the simulators serve: SGTIN-96 with serials 1..=3.
fn sim_epcs() -> Vec<Vec<u8>> {
    (1u8..=3)
        .map(|s| {
            vec![
                0x30, 0x34, 0x25, 0x7B, 0xF7, 0x19, 0x4E, 0x40, 0x00, 0x00, 0x1A, s,
            ]
        })
        .collect()
}

fn body(kind: &str, port: &str, extra: &str) -> String {
    format!(
        r#"
[[readers]]
name = "uhf1"
kind = "{kind}"
port = "{port}"
antennas = [1]
{extra}

[[read_points]]
name = "door"
reader = "uhf1"

[dedup]
min_reads = 1
departure_timeout_ms = 300

[store]
commit_interval_ms = 20

# Tests run in parallel: no fixed metrics port.
[ops]
metrics_addr = "off"
"#
    )
}

fn arrived_epcs(gw: &TempGateway) -> Vec<String> {
    gw.events(&[])
        .unwrap_or_default()
        .iter()
        .filter(|e| e["type"] == "arrived" && e["reader"] == "uhf1")
        .filter_map(|e| e["identity"]["epc"].as_str().map(str::to_owned))
        .collect()
}

/// Runs the gateway on `port` until every EPC in `want` has arrived (or,
/// with `want` empty, until any arrival), then stops it with SIGTERM.
fn run_gateway_until_arrivals(kind: &str, port: &str, extra: &str, want: &BTreeSet<String>) {
    let gw = TempGateway::new("gw-uhf", &body(kind, port, extra)).unwrap();
    let mut child = gw.spawn().unwrap();
    let got = wait_for(Duration::from_secs(30), || {
        let got: BTreeSet<String> = arrived_epcs(&gw).into_iter().collect();
        let done = if want.is_empty() {
            !got.is_empty()
        } else {
            want.is_subset(&got)
        };
        done.then_some(got)
    });
    signal(&child, Signal::SIGTERM).unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(10));
    let got =
        got.unwrap_or_else(|| panic!("no arrivals from the {kind} reader; log:\n{}", gw.log()));
    if !want.is_empty() {
        assert_eq!(&got, want, "only the simulated EPCs may arrive");
    }
    assert!(status.is_some_and(|s| s.success()), "log:\n{}", gw.log());
}

fn hex(epcs: &[Vec<u8>]) -> BTreeSet<String> {
    epcs.iter()
        .map(|e| e.iter().map(|b| format!("{b:02X}")).collect())
        .collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn mercury_reads_become_arrival_events() {
    if let Ok(dev) = std::env::var("TRACEGATE_HW_MERCURY") {
        run_gateway_until_arrivals("mercury", &dev, "", &BTreeSet::new());
        return;
    }
    let rt = runtime();
    let _enter = rt.enter();
    let sim = MercurySim::new(MercurySimParams {
        tags: sim_epcs()
            .into_iter()
            .map(|e| SimTag::new(e, 1, -55))
            .collect(),
        ..MercurySimParams::default()
    });
    let cancel = CancellationToken::new();
    let (path, _task) = sim.spawn_pty(cancel.clone()).unwrap();
    run_gateway_until_arrivals("mercury", path.to_str().unwrap(), "", &hex(&sim_epcs()));
    assert!(sim.report().commands.contains(&0x2F));
    cancel.cancel();
}

#[test]
fn mercury_tag_buffer_mode_reads_become_arrival_events() {
    if std::env::var("TRACEGATE_HW_MERCURY").is_ok() {
        // Covered by the streaming test on real hardware; tag-buffer mode
        // needs the same reader, run it by hand with mode = "tag_buffer".
        return;
    }
    let rt = runtime();
    let _enter = rt.enter();
    let sim = MercurySim::new(MercurySimParams {
        tags: sim_epcs()
            .into_iter()
            .map(|e| SimTag::new(e, 1, -55))
            .collect(),
        ..MercurySimParams::default()
    });
    let cancel = CancellationToken::new();
    let (path, _task) = sim.spawn_pty(cancel.clone()).unwrap();
    let extra = "mode = \"tag_buffer\"\nsearch_ms = 50";
    run_gateway_until_arrivals("mercury", path.to_str().unwrap(), extra, &hex(&sim_epcs()));
    // The buffer was cleared only after the gateway committed the events.
    assert!(sim.report().buffer_clears >= 1);
    cancel.cancel();
}

#[test]
fn r2000_reads_become_arrival_events() {
    if let Ok(dev) = std::env::var("TRACEGATE_HW_R2000") {
        run_gateway_until_arrivals("r2000", &dev, "", &BTreeSet::new());
        return;
    }
    let rt = runtime();
    let _enter = rt.enter();
    let sim = R2000Sim::new(R2000SimParams {
        tags: sim_epcs()
            .into_iter()
            .map(|e| SimTag::new(e, 1, -55))
            .collect(),
        ..R2000SimParams::default()
    });
    let cancel = CancellationToken::new();
    let (path, _task) = sim.spawn_pty(cancel.clone()).unwrap();
    run_gateway_until_arrivals("r2000", path.to_str().unwrap(), "", &hex(&sim_epcs()));
    cancel.cancel();
}

#[test]
fn the_gateway_resumes_reading_within_2_s_of_each_replug_of_the_reader() {
    if std::env::var("TRACEGATE_HW_MERCURY").is_ok() {
        // Unplugging real hardware is a manual step (docs/hardware-testing.md).
        return;
    }
    let rt = runtime();
    let _enter = rt.enter();
    let dir = tempfile::tempdir().unwrap();
    let link: PathBuf = dir.path().join("usb-ThingMagic_sim-if00-port0");
    let sim = MercurySim::new(MercurySimParams {
        tags: sim_epcs()
            .into_iter()
            .take(1)
            .map(|e| SimTag::new(e, 1, -55))
            .collect(),
        ..MercurySimParams::default()
    });
    let mut port = sim.pluggable(&link);
    port.plug().unwrap();

    let gw = TempGateway::new("gw-uhf", &body("mercury", link.to_str().unwrap(), "")).unwrap();
    let mut child = gw.spawn().unwrap();
    wait_for(Duration::from_secs(30), || {
        (!arrived_epcs(&gw).is_empty()).then_some(())
    })
    .unwrap_or_else(|| panic!("no first arrival; log:\n{}", gw.log()));

    // Five short unplugs, each longer than the departure timeout (the tag
    // departs): the reader is read again within 2 s of each replug, not
    // slower each time.
    const CYCLES: u64 = 5;
    let mut resumed_ms = Vec::new();
    for cycle in 0..CYCLES {
        rt.block_on(port.unplug()).unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        port.plug().unwrap();
        let plugged = Instant::now();
        // The tag departed while the reader was away; reading again is
        // its next arrival.
        let back = wait_for(Duration::from_secs(10), || {
            (arrived_epcs(&gw).len() as u64 >= cycle + 2).then_some(())
        });
        assert!(
            back.is_some(),
            "no arrival after replug {cycle}; log:\n{}",
            gw.log()
        );
        resumed_ms.push(plugged.elapsed().as_millis());
    }

    signal(&child, Signal::SIGTERM).unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "log:\n{}", gw.log());
    assert_eq!(sim.report().connections, CYCLES + 1);
    assert!(
        resumed_ms.iter().all(|&ms| ms <= 2000),
        "replug to reconnect, ms per cycle: {resumed_ms:?}"
    );
    rt.block_on(port.unplug()).unwrap();
}
