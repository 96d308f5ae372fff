//! End-to-end behaviour of the real binary: demo, config checking, running
//! with a simulated reader, surviving SIGKILL, clean shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use tracegate_hw_tests::{bin, seqs, signal, wait_exit, wait_for, TempGateway, SIM_PORTAL as SIM};

#[test]
fn demo_prints_arrived_and_departed_events_without_hardware_or_server() {
    let out = Command::new(bin().unwrap())
        .args(["demo", "--duration", "6"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let types: Vec<String> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["type"].as_str().map(str::to_owned))
        .collect();
    assert!(
        types.iter().any(|t| t == "arrived"),
        "no arrival in:\n{stdout}"
    );
    assert!(
        types.iter().any(|t| t == "departed"),
        "no departure in:\n{stdout}"
    );
}

#[test]
fn check_config_accepts_every_example_and_locates_unknown_keys() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let out = Command::new(bin().unwrap())
            .arg("check-config")
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        // check-config opens every file a config names; the examples name
        // key files that only exist on a configured gateway. Those may be
        // the only problems, each naming its field and file.
        assert!(
            out.status.success()
                || err.lines().all(|l| l.contains("[nfc] sun_key_files")
                    && l.contains("cannot read SUN key file /etc/tracegate/")),
            "{}: {err}",
            path.display()
        );
    }
    let gw = TempGateway::new("gw", &SIM.replace("seed = 7", "seed = 7\nsede = 8")).unwrap();
    let out = Command::new(bin().unwrap())
        .arg("check-config")
        .arg(&gw.config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let expected = format!(
        "{}:15:1: readers[0]: unknown field `sede`",
        gw.config.display()
    );
    assert!(err.starts_with(&expected), "{err}");
}

#[test]
fn sigterm_commits_in_flight_events_and_exits_zero() {
    let gw = TempGateway::new("gw-term", SIM).unwrap();
    let mut child = gw.spawn().unwrap();
    wait_for(Duration::from_secs(20), || {
        gw.events(&[]).ok().filter(|e| e.len() > 20)
    })
    .unwrap_or_else(|| panic!("no events stored; log:\n{}", gw.log()));
    signal(&child, Signal::SIGTERM).unwrap();
    let status =
        wait_exit(&mut child, Duration::from_secs(6)).expect("did not stop within the deadline");
    assert!(status.success(), "exit status {status}; log:\n{}", gw.log());
    let events = gw.events(&[]).unwrap();
    let s = seqs(&events);
    assert_eq!(s, (1..=s.len() as u64).collect::<Vec<_>>(), "seq has gaps");
}

#[test]
fn events_stay_gap_free_across_sigkill_and_restart() {
    let gw = TempGateway::new("gw-kill", SIM).unwrap();
    let mut last_count = 0;
    for round in 0..3 {
        let mut child = gw.spawn().unwrap();
        let want = last_count + 30;
        wait_for(Duration::from_secs(20), || {
            gw.events(&[]).ok().filter(|e| e.len() >= want)
        })
        .unwrap_or_else(|| panic!("round {round}: no new events; log:\n{}", gw.log()));
        signal(&child, Signal::SIGKILL).unwrap();
        let _ = child.wait();
        let events = gw.events(&[]).unwrap();
        let s = seqs(&events);
        assert_eq!(
            s,
            (1..=s.len() as u64).collect::<Vec<_>>(),
            "round {round}: seq has gaps"
        );
        let ids: std::collections::HashSet<_> = events
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(ids.len(), events.len(), "ids are unique");
        assert!(events.len() >= last_count);
        last_count = events.len();
    }
}

#[test]
fn sighup_keeps_the_running_config_when_the_new_one_is_invalid_and_applies_a_valid_one() {
    let gw = TempGateway::new("gw-hup", SIM).unwrap();
    let original = std::fs::read_to_string(&gw.config).unwrap();
    let mut child = gw.spawn().unwrap();
    wait_for(Duration::from_secs(20), || {
        gw.events(&[]).ok().filter(|e| !e.is_empty())
    })
    .unwrap_or_else(|| panic!("no events; log:\n{}", gw.log()));

    std::fs::write(&gw.config, format!("{original}\nnot_a_key = 1\n")).unwrap();
    signal(&child, Signal::SIGHUP).unwrap();
    wait_for(Duration::from_secs(10), || {
        gw.log().contains("config.reload_rejected").then_some(())
    })
    .unwrap_or_else(|| panic!("reload not rejected; log:\n{}", gw.log()));
    assert!(
        child.try_wait().unwrap().is_none(),
        "an invalid reload must not stop the gateway"
    );
    // Put the file back (the CLI below reads it too); the gateway has kept
    // running on the old config all along.
    std::fs::write(&gw.config, &original).unwrap();
    let before = gw.events(&[]).unwrap().len();
    wait_for(Duration::from_secs(10), || {
        (gw.events(&[]).ok()?.len() > before).then_some(())
    })
    .expect("the old config keeps running");

    std::fs::write(
        &gw.config,
        original.replace("name = \"door\"", "name = \"door-b\""),
    )
    .unwrap();
    signal(&child, Signal::SIGHUP).unwrap();
    wait_for(Duration::from_secs(20), || {
        gw.events(&[])
            .ok()?
            .iter()
            .any(|e| e["read_point"] == "door-b")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("new read point never used; log:\n{}", gw.log()));

    signal(&child, Signal::SIGTERM).unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(8)).expect("did not stop");
    assert!(status.success());
    let s = seqs(&gw.events(&[]).unwrap());
    assert_eq!(
        s,
        (1..=s.len() as u64).collect::<Vec<_>>(),
        "seq stays gap-free across reloads"
    );
}

fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn a_running_gateway_serves_metrics_health_and_status() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let gw = TempGateway::new(
        "gw-metrics",
        &format!("{SIM}\n[ops]\nmetrics_addr = \"{addr}\"\n"),
    )
    .unwrap();
    let mut child = gw.spawn().unwrap();
    wait_for(Duration::from_secs(20), || {
        gw.events(&[]).ok().filter(|e| e.len() > 5)
    })
    .unwrap_or_else(|| panic!("no events; log:\n{}", gw.log()));

    let metrics = http_get(&addr, "/metrics");
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    for needle in [
        "tracegate_reads_total{reader=\"sim1\",antenna=\"1\"}",
        "tracegate_events_total{type=\"arrived\"}",
        "tracegate_outbox_depth",
        "tracegate_outbox_oldest_pending_age_seconds",
        "tracegate_store_dropped_total",
        "tracegate_store_commits_total",
    ] {
        assert!(
            metrics.contains(needle),
            "{needle} missing from /metrics:\n{metrics}"
        );
    }
    let health = http_get(&addr, "/healthz");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");

    let out = Command::new(bin().unwrap())
        .args(["status", "--addr", &addr])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("sim1") && text.contains("running"), "{text}");

    signal(&child, Signal::SIGTERM).unwrap();
    wait_exit(&mut child, Duration::from_secs(8)).expect("did not stop");
}
