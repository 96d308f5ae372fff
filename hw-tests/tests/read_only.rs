//! A store on a read-only mount: `tracegate events` still reads it, and
//! `tracegate run` refuses with one message that says read-only and what to
//! do. Needs root and a kernel that allows bind mounts here; prints
//! `skipped: <reason>` otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use tracegate_hw_tests::{bin, signal, wait_exit, wait_for, TempGateway, SIM_PORTAL as SIM};

fn mount(args: &[&str]) -> Result<(), String> {
    let out = Command::new("mount")
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// Written to stderr directly: libtest captures `eprintln!` of passing tests.
fn skip(why: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "skipped: {why}");
}

/// Unmounts on drop, so a failing assertion does not leave the mount.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_store_on_a_read_only_mount_is_read_by_events_and_refused_by_run_with_one_clear_message() {
    let gw = TempGateway::new("gw-ro", SIM).unwrap();
    let data = gw.dir.path().join("data");
    let mut child = gw.spawn().unwrap();
    let stored = wait_for(Duration::from_secs(20), || {
        gw.events(&[]).ok().filter(|e| e.len() >= 3)
    })
    .unwrap_or_else(|| panic!("no events; log:\n{}", gw.log()));
    signal(&child, Signal::SIGTERM).unwrap();
    wait_exit(&mut child, Duration::from_secs(10)).expect("gateway did not stop");
    let stored = gw.events(&[]).unwrap().len().max(stored.len());

    let data_s = data.to_str().unwrap();
    if let Err(why) = mount(&["--bind", data_s, data_s]) {
        skip(&format!("cannot bind-mount here ({why}); needs root"));
        return;
    }
    let _mounted = Mounted(data.clone());
    if let Err(why) = mount(&["-o", "remount,bind,ro", data_s]) {
        skip(&format!("cannot remount read-only here ({why})"));
        return;
    }

    assert_eq!(gw.events(&[]).unwrap().len(), stored);

    let out = Command::new(bin().unwrap())
        .args(["run", "--config"])
        .arg(&gw.config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let line = err
        .lines()
        .find(|l| l.starts_with("tracegate: "))
        .unwrap_or_else(|| panic!("no error line: {err}"));
    assert!(line.contains("read-only"), "{line}");
    assert!(line.contains("data_dir"), "{line}");
    assert_eq!(
        line.matches("attempt to write a readonly database").count(),
        1,
        "{line}"
    );
}
