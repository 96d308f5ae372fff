//! Read-only stores, end to end with the real binary:
//! - a store on a read-only mount: `tracegate events` still reads it, and
//!   `tracegate run` refuses with one message that says read-only and what
//!   to do;
//! - an ext4 filesystem that remounts itself read-only under a running
//!   gateway (`errors=remount-ro` and a filesystem error, as after an
//!   SD-card fault) is named `read_only` in `/healthz` and `/status`, the
//!   log says so and what to do, no committed event is lost, and after
//!   fsck and a read-write mount the restarted gateway resumes and delivers
//!   everything to a subscriber at a real mosquitto.
//!
//! Both need root (mounts, loop devices); they print `skipped: <reason>`
//! otherwise, or fail with TRACEGATE_REQUIRE_ROOT=1.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeSet, HashSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tracegate_hw_tests::broker::{mosquitto_available, Broker};
use tracegate_hw_tests::{
    bin, peer_available, seqs, signal, subscribe_event_ids, wait_exit, wait_for, Killed,
    TempGateway, SIM_PORTAL as SIM,
};

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

/// Runs a command; its stderr as the error.
fn run(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {cmd}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(format!(
            "{cmd} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A small ext4 filesystem in an image file on a loop device, mounted with
/// `errors=remount-ro` (what a Pi's root filesystem uses). Dropping it
/// unmounts it and detaches the loop device, also after a failed assertion.
struct Ext4Loop {
    image: PathBuf,
    dev: String,
    mnt: PathBuf,
}

impl Ext4Loop {
    /// `None` (after `skipped: <reason>`) without root or the tools.
    fn mount(image: &Path, mnt: &Path, bytes: u64) -> Option<Ext4Loop> {
        let made = (|| {
            let img = image.to_str().unwrap();
            run("truncate", &["-s", &bytes.to_string(), img])?;
            run("mkfs.ext4", &["-q", "-F", img])?;
            let dev = run("losetup", &["-f", "--show", img])?;
            let fs = Ext4Loop {
                image: image.to_path_buf(),
                dev,
                mnt: mnt.to_path_buf(),
            };
            std::fs::create_dir_all(mnt).map_err(|e| e.to_string())?;
            fs.mount_rw()?;
            // The test's way to make the filesystem fail, as a card error
            // would (Linux has had it since 4.x).
            if !fs.trigger().exists() {
                return Err(format!("{} does not exist", fs.trigger().display()));
            }
            Ok(fs)
        })();
        let probe = made.as_ref().map(|_| ()).map_err(|e| {
            format!("cannot make an ext4 filesystem on a loop device (needs root): {e}")
        });
        peer_available("TRACEGATE_REQUIRE_ROOT", probe)
            .then(|| made.ok())
            .flatten()
    }

    fn mount_rw(&self) -> Result<String, String> {
        run(
            "mount",
            &[
                "-t",
                "ext4",
                "-o",
                "errors=remount-ro",
                &self.dev,
                self.mnt.to_str().unwrap(),
            ],
        )
    }

    fn trigger(&self) -> PathBuf {
        let name = Path::new(&self.dev).file_name().unwrap();
        Path::new("/sys/fs/ext4")
            .join(name)
            .join("trigger_fs_error")
    }

    /// A filesystem error: ext4 aborts its journal and refuses every write
    /// from now on (`emergency_ro`), as after an I/O error on the card.
    fn fail(&self) {
        std::fs::write(self.trigger(), "1").unwrap();
    }

    /// What an operator does: unmount, fsck, mount read-write again. The
    /// gateway must have stopped (its files keep the mount busy).
    fn repair(&self) {
        run("umount", &[self.mnt.to_str().unwrap()]).unwrap();
        // Exit code 1 means "errors corrected".
        let _ = Command::new("e2fsck")
            .args(["-f", "-y", &self.dev])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        self.mount_rw().unwrap();
    }
}

impl Drop for Ext4Loop {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
        let _ = std::fs::remove_file(&self.image);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Status line and body of a GET.
fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

fn status(addr: &str) -> Option<serde_json::Value> {
    let r = http_get(addr, "/status")?;
    serde_json::from_str(r.split_once("\r\n\r\n")?.1).ok()
}

fn condition<'a>(status: &'a serde_json::Value, state: &str) -> Option<&'a serde_json::Value> {
    status["health"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["state"] == state)
}

fn ids(events: &[serde_json::Value]) -> HashSet<String> {
    events
        .iter()
        .filter_map(|e| e["id"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn ext4_remounted_read_only_under_the_gateway_is_named_read_only_and_loses_no_committed_event() {
    if !mosquitto_available() {
        return;
    }
    let metrics = format!("127.0.0.1:{}", free_port());
    let broker = Broker::start().unwrap();
    let gw = TempGateway::new(
        "gw-ro-ext4",
        &format!(
            "{SIM}\n[mqtt]\nurl = \"{}\"\nreconnect_min_ms = 200\nreconnect_max_ms = 1000\n\n\
             [ops]\nmetrics_addr = \"{metrics}\"\n",
            broker.url()
        ),
    )
    .unwrap();
    let Some(fs) = Ext4Loop::mount(
        &gw.dir.path().join("ext4.img"),
        &gw.dir.path().join("data"),
        64 << 20,
    ) else {
        return;
    };
    let (_sub, received) =
        subscribe_event_ids(broker.port, "tracegate/test-site/gw-ro-ext4/events").unwrap();
    let mut child = Killed(gw.spawn().unwrap());

    // Committing and delivering first.
    wait_for(Duration::from_secs(30), || {
        let s = status(&metrics)?;
        (s["store"]["last_seq"].as_u64()? > 50 && received.lock().unwrap().len() > 20).then_some(())
    })
    .unwrap_or_else(|| panic!("never committed and delivered; log:\n{}", gw.log()));

    fs.fail();
    let failed = Instant::now();
    // What was committed up to here must survive the filesystem's failure.
    let committed_before = ids(&gw.events(&[]).unwrap());
    let s = wait_for(Duration::from_secs(20), || {
        let s = status(&metrics)?;
        condition(&s, "read_only").is_some().then_some(s)
    })
    .unwrap_or_else(|| panic!("read_only never reported; log:\n{}", gw.log()));
    println!(
        "read_only reported {:.1} s after the filesystem error",
        failed.elapsed().as_secs_f64()
    );
    let c = condition(&s, "read_only").unwrap();
    assert_eq!(c["severity"], "fail", "{c}");
    assert_eq!(c["subject"], "store", "{c}");
    assert!(
        condition(&s, "store_failing").is_none(),
        "named as a generic failure too: {s}"
    );
    assert_eq!(s["health"]["ok"], false, "{s}");
    let healthz = http_get(&metrics, "/healthz").unwrap();
    assert!(healthz.starts_with("HTTP/1.1 503"), "{healthz}");
    assert!(healthz.contains("read_only store"), "{healthz}");
    let log = gw.log();
    assert_eq!(
        log.matches("store.read_only").count(),
        1,
        "logged once per episode; log:\n{log}"
    );
    assert!(log.contains("read-only"), "{log}");
    assert!(
        log.contains("fsck and mount the filesystem read-write"),
        "{log}"
    );

    // Retrying a read-only disk is alive: no `stuck`, the daemon stays up.
    std::thread::sleep(Duration::from_secs(3));
    let s = status(&metrics).expect("daemon still serving");
    assert!(condition(&s, "stuck").is_none(), "{s}");
    assert!(condition(&s, "read_only").is_some(), "{s}");
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "the daemon must stay up"
    );

    // The operator stops it, repairs the filesystem and starts it again.
    signal(&child.0, Signal::SIGTERM).unwrap();
    let exit = wait_exit(&mut child.0, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("still running 30 s after SIGTERM; log:\n{}", gw.log()));
    println!("stopped on a read-only store: {exit}");
    fs.repair();
    let stored = gw.events(&[]).unwrap();
    let all = seqs(&stored);
    assert_eq!(
        all,
        (1..=all.len() as u64).collect::<Vec<_>>(),
        "gaps after the repair"
    );
    let stored_ids = ids(&stored);
    let lost: Vec<_> = committed_before.difference(&stored_ids).take(5).collect();
    assert!(
        lost.is_empty(),
        "{} committed events lost, e.g. {lost:?}",
        committed_before.difference(&stored_ids).count()
    );
    let got = received.lock().unwrap().clone();
    let lost: Vec<_> = got.difference(&stored_ids).take(5).collect();
    assert!(
        lost.is_empty(),
        "delivered events missing from the store after the repair, e.g. {lost:?}"
    );

    let before = *BTreeSet::from_iter(all.iter().copied()).last().unwrap();
    let mut child = Killed(gw.spawn().unwrap());
    let restarted = Instant::now();
    wait_for(Duration::from_secs(30), || {
        let s = status(&metrics)?;
        (s["store"]["last_seq"].as_u64()? > before + 20
            && s["health"]["conditions"].as_array()?.is_empty())
        .then_some(())
    })
    .unwrap_or_else(|| panic!("did not resume after the repair; log:\n{}", gw.log()));
    println!(
        "resumed {:.1} s after the restart",
        restarted.elapsed().as_secs_f64()
    );
    signal(&child.0, Signal::SIGTERM).unwrap();
    let exit = wait_exit(&mut child.0, Duration::from_secs(15)).expect("gateway did not stop");
    assert!(exit.success(), "{exit}; log:\n{}", gw.log());
    // Every stored event, from before the failure and after, reaches the
    // subscriber.
    let stored = ids(&gw.events(&[]).unwrap());
    let delivered = wait_for(Duration::from_secs(10), || {
        stored.is_subset(&received.lock().unwrap()).then_some(())
    });
    let got = received.lock().unwrap().clone();
    assert!(
        delivered.is_some(),
        "{} of {} stored events never reached the subscriber",
        stored.difference(&got).count(),
        stored.len()
    );
    drop(fs);
}
