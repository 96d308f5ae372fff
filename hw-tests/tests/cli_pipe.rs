//! The CLI behaves like a Unix tool when its reader goes away: `decode`,
//! `events` and `status` piped into `head` exit quietly, without a panic
//! or an error message, however much output was left.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use tracegate_hw_tests::{bin, signal, wait_exit, wait_for, TempGateway};

/// Runs the binary with a stdout whose reading end is already closed, so
/// its first write fails with EPIPE; asserts a clean, silent exit.
fn assert_quiet_on_closed_pipe(args: &[&str]) {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(bin().unwrap())
        .args(args)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "tracegate {args:?} into a closed pipe: {}; stderr:\n{stderr}",
        out.status
    );
    assert!(
        stderr.is_empty(),
        "tracegate {args:?} into a closed pipe wrote to stderr:\n{stderr}"
    );
}

#[test]
fn decode_into_a_closed_pipe_exits_quietly() {
    assert_quiet_on_closed_pipe(&["decode", "3074257BF7194E4000001A85"]);
    assert_quiet_on_closed_pipe(&["decode", "--json", "3074257BF7194E4000001A85"]);
}

#[test]
fn events_and_status_into_a_closed_pipe_exit_quietly() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let gw = TempGateway::new(
        "gw-pipe",
        &format!(
            "[[readers]]\nname = \"sim1\"\nkind = \"sim\"\nread_rate = 2000\n\
             arrival_interval_ms = 20\ndwell_ms = 200\n\n\
             [[read_points]]\nname = \"door\"\nreader = \"sim1\"\n\n\
             [dedup]\ndeparture_timeout_ms = 100\n\n\
             [ops]\nmetrics_addr = \"{addr}\"\n"
        ),
    )
    .unwrap();
    let mut child = gw.spawn().unwrap();
    // More than a pipe buffer's worth would not matter: the reader is gone
    // before the first byte.
    wait_for(Duration::from_secs(20), || {
        gw.events(&[]).ok().filter(|e| e.len() > 20)
    })
    .unwrap_or_else(|| panic!("no events; log:\n{}", gw.log()));
    let config = gw.config.to_str().unwrap();
    assert_quiet_on_closed_pipe(&["events", "--config", config]);
    assert_quiet_on_closed_pipe(&["events", "--json", "--config", config]);
    assert_quiet_on_closed_pipe(&["status", "--addr", &addr]);
    assert_quiet_on_closed_pipe(&["status", "--json", "--addr", &addr]);
    signal(&child, Signal::SIGTERM).unwrap();
    wait_exit(&mut child, Duration::from_secs(8)).expect("did not stop");
}
