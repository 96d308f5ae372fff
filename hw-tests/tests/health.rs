//! Health names the cause, end to end with the real binary:
//! - a silent partition of the uplink (a TCP proxy that keeps both sockets
//!   open and silently discards every byte, no RST, no FIN) is reported as
//!   `publish_stalled` and `broker_unreachable` within the configured PUBACK
//!   deadline, logged, and after the partition heals every stored event
//!   reaches a subscriber at a real mosquitto;
//! - the same partition with no events flowing is `broker_unreachable`
//!   within 1.5 × the PUBACK deadline (the idle connection's probe), not at
//!   the keep-alive, and clears when it heals;
//! - an unplugged reader (a Mercury simulator on a pty) is `reader_down`
//!   with its age, the daemon stays up, its task keeps counting turns and
//!   the systemd watchdog pings go on (a fake notify socket) while the
//!   outage outlasts `stale_after_secs`, and the state clears on replug;
//! - a reader whose line takes no bytes (a Mercury module that stops
//!   draining it) is `reader_down`, not `stuck`: the driver's write fails
//!   at its deadline and the port is reopened with backoff, so the watchdog
//!   pings go on (one full line must not restart every door); it runs
//!   again once the port is replugged;
//! - a full filesystem under the store (a 4 MiB tmpfs, filled) is
//!   `disk_full`, fails `/healthz`, and clears when space comes back (needs
//!   root for the mount; prints `skipped: <reason>` otherwise).
//!
//! The uplink test needs mosquitto and prints `skipped: <reason>` without it
//! (fails instead with TRACEGATE_REQUIRE_MOSQUITTO=1).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tracegate_hw_tests::{
    peer_available, signal, subscribe_event_ids, wait_exit, wait_for, Killed, TempGateway,
    SIM_PORTAL,
};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn mosquitto() -> Option<&'static str> {
    let found = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let sub = ["/usr/bin/mosquitto_sub", "/usr/local/bin/mosquitto_sub"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let probe = match (found, sub) {
        (Some(_), Some(_)) => Ok(()),
        (None, _) => Err("mosquitto not installed".to_owned()),
        (_, None) => Err("mosquitto_sub not installed (mosquitto-clients)".to_owned()),
    };
    peer_available("TRACEGATE_REQUIRE_MOSQUITTO", probe).then(|| found.unwrap())
}

fn start_broker(bin: &str, dir: &Path) -> (Killed, u16) {
    let port = free_port();
    let conf = dir.join("mosquitto.conf");
    let root = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) == 0;
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n{}",
            if root { "user root\n" } else { "" }
        ),
    )
    .unwrap();
    let child = Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(5), || {
        TcpStream::connect(("127.0.0.1", port)).ok()
    })
    .expect("mosquitto did not start");
    (Killed(child), port)
}

/// A TCP proxy whose partition is silent: while `blackhole` is set it reads
/// and discards everything either way, keeps every socket open and accepts
/// new connections (whose CONNECT then goes nowhere).
struct Proxy {
    port: u16,
    blackhole: Arc<AtomicBool>,
}

impl Proxy {
    fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let blackhole = Arc::new(AtomicBool::new(false));
        let bh = blackhole.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                for (from, to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let bh = bh.clone();
                    std::thread::spawn(move || pump(from, to, &bh));
                }
            }
        });
        Proxy { port, blackhole }
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, blackhole: &AtomicBool) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if blackhole.load(Ordering::SeqCst) {
                    continue; // dropped on the floor, nobody told
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// A registry-side subscriber (`mosquitto_sub`, QoS 1, directly at the
/// broker): collects every event id it receives.
struct Subscriber {
    _child: Killed,
    ids: Arc<Mutex<HashSet<String>>>,
}

impl Subscriber {
    fn start(port: u16, topic: &str) -> Subscriber {
        let (child, ids) = subscribe_event_ids(port, topic).unwrap();
        Subscriber { _child: child, ids }
    }

    fn len(&self) -> usize {
        self.ids.lock().unwrap().len()
    }
}

/// `tracegate status --json`, parsed; `None` while the endpoint is not up.
fn status(gw: &TempGateway) -> Option<serde_json::Value> {
    let out = gw.cli(&["status", "--json", "--config"], true).ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

/// The states in force, by name.
fn states(status: &serde_json::Value) -> Vec<String> {
    status["health"]["conditions"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .filter_map(|c| c["state"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Lets the proxy forward again and waits until the gateway is connected
/// with no state in force.
fn heal_partition(proxy: &Proxy, gw: &TempGateway) {
    proxy.blackhole.store(false, Ordering::SeqCst);
    let healed = Instant::now();
    wait_for(Duration::from_secs(30), || {
        let s = status(gw)?;
        (s["publisher"]["connected"] == true && states(&s).is_empty()).then_some(())
    })
    .unwrap_or_else(|| panic!("states did not clear; log:\n{}", gw.log()));
    println!(
        "partition healed: states clear after {:.1} s",
        healed.elapsed().as_secs_f64()
    );
}

fn condition<'a>(status: &'a serde_json::Value, state: &str) -> Option<&'a serde_json::Value> {
    status["health"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["state"] == state)
}

/// `mqtt.puback_timeout_secs`'s default (publish/config.rs).
const DEFAULT_PUBACK_TIMEOUT_SECS: u64 = 10;

#[test]
fn a_silent_partition_is_named_within_the_puback_deadline_and_loses_nothing() {
    silent_partition(Some(3));
}

#[test]
fn with_the_default_deadline_a_silent_partition_is_named_within_15_s() {
    silent_partition(None);
}

/// `puback_timeout`: `None` leaves the key out (the default).
fn silent_partition(puback_timeout: Option<u64>) {
    let Some(bin) = mosquitto() else { return };
    let secs = puback_timeout.unwrap_or(DEFAULT_PUBACK_TIMEOUT_SECS);
    let key = puback_timeout
        .map(|s| format!("puback_timeout_secs = {s}\n"))
        .unwrap_or_default();
    let dir = tempfile::tempdir().unwrap();
    let (_broker, broker_port) = start_broker(bin, dir.path());
    let proxy = Proxy::start(broker_port);
    let metrics_port = free_port();
    // keep_alive 60 s: the keep-alive alone would take up to 90 s.
    let gw = TempGateway::new(
        "gw-health",
        &format!(
            "{SIM_PORTAL}\n[mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\nkeep_alive_secs = 60\n\
             connect_timeout_secs = 2\n{key}\
             reconnect_min_ms = 200\nreconnect_max_ms = 1000\nhealth_interval_secs = 1\n\n\
             [ops]\nmetrics_addr = \"127.0.0.1:{metrics_port}\"\n",
            proxy.port
        ),
    )
    .unwrap();
    let sub = Subscriber::start(broker_port, "tracegate/test-site/gw-health/events");
    let mut child = gw.spawn().unwrap();

    // Healthy and delivering first.
    wait_for(Duration::from_secs(30), || {
        let s = status(&gw)?;
        (s["publisher"]["connected"] == true && sub.len() >= 20 && states(&s).is_empty())
            .then_some(())
    })
    .unwrap_or_else(|| panic!("never healthy and delivering; log:\n{}", gw.log()));

    // The partition: bytes vanish, sockets stay open.
    proxy.blackhole.store(true, Ordering::SeqCst);
    let cut = Instant::now();
    let mut stalled_after = None;
    let mut unreachable_after = None;
    let mut healthz_ok_meanwhile = true;
    let mut last = serde_json::Value::Null;
    while cut.elapsed() < Duration::from_secs(secs + 12)
        && (stalled_after.is_none() || unreachable_after.is_none())
    {
        if let Some(s) = status(&gw) {
            let at = cut.elapsed();
            if condition(&s, "publish_stalled").is_some() {
                stalled_after.get_or_insert(at);
            }
            if condition(&s, "broker_unreachable").is_some() {
                unreachable_after.get_or_insert(at);
            }
            healthz_ok_meanwhile &= s["health"]["ok"] == true;
            last = s;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (Some(stalled), Some(unreachable)) = (stalled_after, unreachable_after) else {
        panic!(
            "partition not named: stalled {stalled_after:?}, unreachable {unreachable_after:?}; status {last}\nlog:\n{}",
            gw.log()
        );
    };
    // Only warnings: the store keeps the events (docs/operations.md).
    assert!(
        healthz_ok_meanwhile,
        "an uplink state failed /healthz: {last}"
    );
    let c = condition(&last, "publish_stalled").unwrap();
    assert_eq!(c["severity"], "warn");
    assert!(c["age_secs"].as_f64().unwrap() >= secs as f64, "{c}");
    assert!(c["since"].is_string(), "{c}");
    // Within the configured deadline (plus the status poll and a turn of
    // the publisher's loop), not at the 60 s keep-alive.
    let bound = Duration::from_secs(secs + 3);
    assert!(stalled <= bound, "publish_stalled after {stalled:?}");
    assert!(
        unreachable <= bound,
        "broker_unreachable after {unreachable:?}"
    );
    let log = gw.log();
    assert!(log.contains("publishing stalled"), "{log}");
    assert!(log.contains(&format!("no PUBACK for {secs} s")), "{log}");
    println!(
        "silent partition: publish_stalled after {:.1} s, broker_unreachable after {:.1} s (puback_timeout_secs = {secs})",
        stalled.as_secs_f64(),
        unreachable.as_secs_f64()
    );

    // The partition heals: delivery resumes and the states clear.
    std::thread::sleep(Duration::from_secs(2));
    heal_partition(&proxy, &gw);
    assert!(gw.log().contains("publishing moves again"));

    // Stop, then every stored event must have reached the subscriber.
    signal(&child, Signal::SIGTERM).unwrap();
    wait_exit(&mut child, Duration::from_secs(15)).expect("gateway did not stop");
    let stored: HashSet<String> = gw
        .events(&[])
        .unwrap()
        .iter()
        .filter_map(|e| e["id"].as_str().map(str::to_owned))
        .collect();
    assert!(stored.len() > 100, "{} events stored", stored.len());
    let all_arrived = wait_for(Duration::from_secs(10), || {
        let got = sub.ids.lock().unwrap();
        stored.is_subset(&got).then_some(())
    });
    let got = sub.ids.lock().unwrap().clone();
    let missing: Vec<_> = stored.difference(&got).take(5).collect();
    assert!(
        all_arrived.is_some(),
        "{} of {} stored events never reached the subscriber, e.g. {missing:?}",
        stored.difference(&got).count(),
        stored.len()
    );
}

/// No events flowing: the simulated reader reads, but its read point
/// accepts only a company prefix the simulator never uses. The only MQTT
/// traffic is the birth message, QoS 0 health messages, the keep-alive
/// (60 s here) and the publisher's idle probe.
#[test]
fn with_no_events_flowing_a_silent_partition_is_named_within_15_s_and_clears_when_it_heals() {
    let Some(bin) = mosquitto() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (_broker, broker_port) = start_broker(bin, dir.path());
    let proxy = Proxy::start(broker_port);
    let metrics_port = free_port();
    let gw = TempGateway::new(
        "gw-idle",
        &format!(
            "[[readers]]\nname = \"sim1\"\nkind = \"sim\"\n\n\
             [[read_points]]\nname = \"door\"\nreader = \"sim1\"\n\
             epc_patterns = [\"urn:epc:idpat:sgtin:9999999.*.*\"]\n\n\
             [mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\nkeep_alive_secs = 60\n\
             connect_timeout_secs = 2\nreconnect_min_ms = 200\nreconnect_max_ms = 1000\n\n\
             [ops]\nmetrics_addr = \"127.0.0.1:{metrics_port}\"\n",
            proxy.port
        ),
    )
    .unwrap();
    // Killed on drop: a failed assertion leaves no gateway running.
    let mut child = Killed(gw.spawn().unwrap());
    let connected = wait_for(Duration::from_secs(30), || {
        let s = status(&gw)?;
        (s["publisher"]["connected"] == true && states(&s).is_empty()).then_some(Instant::now())
    })
    .unwrap_or_else(|| panic!("never connected; log:\n{}", gw.log()));
    // Long enough for the connection to be idle and probed once.
    std::thread::sleep(Duration::from_secs(7).saturating_sub(connected.elapsed()));
    let s = status(&gw).unwrap();
    assert!(states(&s).is_empty(), "{s}");
    assert_eq!(s["store"]["last_seq"], 0, "events are flowing: {s}");

    proxy.blackhole.store(true, Ordering::SeqCst);
    let cut = Instant::now();
    let mut last = serde_json::Value::Null;
    let mut named = None;
    while cut.elapsed() < Duration::from_secs(30) {
        if let Some(s) = status(&gw) {
            let at = cut.elapsed();
            let st = states(&s);
            if st
                .iter()
                .any(|c| c == "broker_unreachable" || c == "publish_stalled")
            {
                named = Some((at, st));
                last = s;
                break;
            }
            last = s;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let Some((after, st)) = named else {
        panic!(
            "idle partition not named within 30 s; status {last}\nlog:\n{}",
            gw.log()
        );
    };
    println!(
        "idle silent partition: {st:?} after {:.1} s (puback_timeout_secs = {DEFAULT_PUBACK_TIMEOUT_SECS}, keep_alive_secs = 60)",
        after.as_secs_f64()
    );
    // 1.5 × the default deadline (the 15 s), plus the status poll
    // and a turn of the publisher's loop; the keep-alive alone would take
    // 60 to 120 s.
    assert!(
        after <= Duration::from_millis(DEFAULT_PUBACK_TIMEOUT_SECS * 1_500 + 2_000),
        "named after {after:?}"
    );
    assert_eq!(
        last["health"]["ok"], true,
        "uplink states only warn: {last}"
    );
    assert!(
        gw.log().contains(&format!(
            "no PUBACK for {DEFAULT_PUBACK_TIMEOUT_SECS} s with 1 message(s) in flight"
        )),
        "{}",
        gw.log()
    );

    heal_partition(&proxy, &gw);
    signal(&child.0, Signal::SIGTERM).unwrap();
    let exit = wait_exit(&mut child.0, Duration::from_secs(15)).expect("gateway did not stop");
    assert!(exit.success(), "{exit}; log:\n{}", gw.log());
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn an_unplugged_reader_is_reader_down_with_its_age_and_the_daemon_stays_up() {
    let rt = runtime();
    let _enter = rt.enter();
    let dir = tempfile::tempdir().unwrap();
    let link: PathBuf = dir.path().join("usb-ThingMagic_sim-if00-port0");
    let sim = one_tag_mercury();
    let mut port = sim.pluggable(&link);
    port.plug().unwrap();
    let gw = mercury_and_sim_gateway("gw-reader-down", &link);
    // A fake systemd: the notify socket, with the watchdog on (2 s).
    let sock_path = dir.path().join("notify.sock");
    let notify = Notify::bind(&sock_path);
    let mut child = spawn_watched(&gw, &sock_path);
    wait_reader_running(&gw, "reader never ran");

    rt.block_on(port.unplug()).unwrap();
    let unplugged = Instant::now();
    let down = wait_reader_down(&gw, Duration::from_secs(10));
    println!(
        "reader_down reported {:.1} s after the unplug",
        unplugged.elapsed().as_secs_f64()
    );
    assert_eq!(down["subject"], "uhf1");
    assert_eq!(down["severity"], "warn", "the other reader runs");
    // Retrying for longer than stale_after_secs: alive, not stuck.
    std::thread::sleep(Duration::from_secs(7));
    let s = status(&gw).expect("daemon still serving");
    let down = condition(&s, "reader_down").expect("still down");
    assert!(down["age_secs"].as_f64().unwrap() >= 7.0, "{down}");
    assert!(
        condition(&s, "stuck").is_none(),
        "a retrying reader is not stuck: {s}"
    );
    assert_eq!(s["health"]["ok"], true, "{s}");
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "the daemon must stay up"
    );
    // The reader task counts its retries: young, and the watchdog pings on.
    let hb = s["heartbeats"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "reader uhf1")
        .unwrap_or_else(|| panic!("no reader heartbeat: {s}"));
    assert!(hb["age_ms"].as_u64().unwrap() < 5_000, "{hb}");
    // Pings every second all through the outage, also after it outlasted
    // stale_after_secs (5 s).
    let during = notify.pings_since(unplugged);
    let late = notify.pings_since(unplugged + Duration::from_millis(5_500));
    assert!(
        during >= 5 && late >= 1,
        "WATCHDOG=1 during a 7 s outage (period 1 s): {during}, after 5.5 s: {late}"
    );

    port.plug().unwrap();
    wait_for(Duration::from_secs(10), || {
        let s = status(&gw)?;
        states(&s).is_empty().then_some(())
    })
    .unwrap_or_else(|| panic!("reader_down did not clear; log:\n{}", gw.log()));
    signal(&child.0, Signal::SIGTERM).unwrap();
    wait_exit(&mut child.0, Duration::from_secs(10)).expect("gateway did not stop");
    rt.block_on(port.unplug()).unwrap();
}

/// A line that takes nothing, without any hook in the gateway: the
/// simulated module stops reading and answering while the line stays up,
/// and its receive side fills (18 KiB of a pty's buffer, written here; on a
/// real adapter the driver's own unanswered commands fill it, or flow
/// control holds it). The driver's next write would never complete; it
/// fails at its deadline instead, so the reader is down and retrying, not a
/// task stuck until the watchdog restarts the gateway. (`stuck` and the
/// withheld pings are for a task that no longer moves at all: unit-tested
/// in `ops::notify`, since no real input produces one any more.)
#[test]
fn a_reader_whose_line_takes_no_bytes_is_reader_down_and_the_watchdog_keeps_pinging() {
    use tokio_util::sync::CancellationToken;
    use tracegate_drivers::serial::PluggablePty;
    let rt = runtime();
    let _enter = rt.enter();
    let dir = tempfile::tempdir().unwrap();
    let link: PathBuf = dir.path().join("usb-ThingMagic_sim-if00-port0");
    let sim = one_tag_mercury();
    // Serves like the simulator until `freeze` fires, then holds the line
    // open and never reads or writes it again (until unplugged). Each plug
    // takes the token in place then.
    let freeze = Arc::new(Mutex::new(CancellationToken::new()));
    let tokens = freeze.clone();
    let mut port = PluggablePty::new(&link, move |mut master, cancel| {
        let sim = sim.clone();
        let frozen = tokens.lock().unwrap().clone();
        async move {
            tokio::select! {
                r = sim.serve(&mut master, cancel.clone()) => return r,
                () = frozen.cancelled() => {}
            }
            cancel.cancelled().await;
            drop(master);
            Ok(())
        }
    });
    let slave = port.plug().unwrap();
    // The module's receive side, as the driver's writes reach it: opened
    // before the gateway takes the port (exclusively).
    let line = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open(&slave)
        .unwrap();
    let gw = mercury_and_sim_gateway("gw-wedged", &link);
    let sock_path = dir.path().join("notify.sock");
    let notify = Notify::bind(&sock_path);
    let mut child = spawn_watched(&gw, &sock_path);
    wait_reader_running(&gw, "reader never ran");
    let running = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        notify.pings_since(running) >= 2,
        "WATCHDOG=1 while healthy (period 1 s)"
    );

    // The module hangs: nothing read, nothing answered, its buffer full.
    freeze.lock().unwrap().cancel();
    // Until it takes nothing twice in a row: the kernel moves bytes from
    // the pty's flip buffer into the line discipline's behind our back,
    // which frees room for a while after the first EAGAIN.
    let mut filled = 0usize;
    let mut idle_rounds = 0;
    while idle_rounds < 2 {
        let mut round = 0usize;
        loop {
            match (&line).write(&[0u8; 1024]) {
                Ok(n) => round += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("filling the line: {e}"),
            }
        }
        filled += round;
        idle_rounds = if round == 0 { idle_rounds + 1 } else { 0 };
        std::thread::sleep(Duration::from_millis(200));
    }
    let wedged = Instant::now();
    let down = wait_reader_down(&gw, Duration::from_secs(20));
    println!(
        "line full ({filled} bytes): reader_down uhf1 after {:.1} s",
        wedged.elapsed().as_secs_f64()
    );
    assert_eq!(down["subject"], "uhf1", "{down}");
    assert_eq!(down["severity"], "warn", "the other reader runs: {down}");
    // Longer than stale_after_secs (5 s): the task keeps moving (each write
    // fails at its deadline and the port is reopened), so it is not stuck
    // and the watchdog pings go on: one full line does not restart every door.
    let watched = Instant::now();
    std::thread::sleep(Duration::from_secs(7));
    let s = status(&gw).expect("daemon still serving");
    assert!(condition(&s, "reader_down").is_some(), "still down: {s}");
    assert!(
        condition(&s, "stuck").is_none(),
        "a reader whose writes time out is not stuck: {s}"
    );
    assert_eq!(s["health"]["ok"], true, "{s}");
    let pings = notify.pings_since(watched);
    assert!(
        pings >= 5,
        "WATCHDOG=1 while the line is full (period 1 s): {pings} in 7 s"
    );
    assert!(gw.log().contains("took no bytes"), "{}", gw.log());
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "the daemon must stay up"
    );

    // The adapter goes away and comes back (replugged, or reset): the
    // reader runs again.
    rt.block_on(port.unplug()).unwrap();
    drop(line);
    *freeze.lock().unwrap() = CancellationToken::new();
    port.plug().unwrap();
    wait_reader_running(&gw, "the reader did not recover");
    signal(&child.0, Signal::SIGTERM).unwrap();
    let exit = wait_exit(&mut child.0, Duration::from_secs(15)).expect("gateway did not stop");
    assert!(exit.success(), "{exit}; log:\n{}", gw.log());
    rt.block_on(port.unplug()).unwrap();
}

/// A simulated Mercury module with one tag in its field.
fn one_tag_mercury() -> tracegate_drivers::mercury::sim::MercurySim {
    use tracegate_drivers::mercury::sim::{MercurySim, MercurySimParams, SimTag};
    let epc = vec![
        0x30, 0x34, 0x25, 0x7B, 0xF7, 0x19, 0x4E, 0x40, 0x00, 0x00, 0x1A, 1,
    ];
    MercurySim::new(MercurySimParams {
        tags: vec![SimTag::new(epc, 1, -55)],
        ..MercurySimParams::default()
    })
}

/// A gateway with a Mercury reader `uhf1` on `link` and a simulated reader
/// beside it (so one reader down is a warning), `stale_after_secs = 5`.
fn mercury_and_sim_gateway(id: &str, link: &Path) -> TempGateway {
    let metrics_port = free_port();
    TempGateway::new(
        id,
        &format!(
            "[[readers]]\nname = \"uhf1\"\nkind = \"mercury\"\nport = \"{}\"\nantennas = [1]\n\n\
             [[read_points]]\nname = \"door\"\nreader = \"uhf1\"\n\n\
             [[readers]]\nname = \"sim2\"\nkind = \"sim\"\n\n\
             [[read_points]]\nname = \"desk\"\nreader = \"sim2\"\n\n\
             [ops]\nmetrics_addr = \"127.0.0.1:{metrics_port}\"\nstale_after_secs = 5\n",
            link.display()
        ),
    )
    .unwrap()
}

/// Runs the gateway as systemd would with `WatchdogSec=2`: notifications
/// to `sock`, the log into its data directory.
/// Waits (30 s at most) until the first reader runs and no state is in
/// force; panics with `what`, the status and the log otherwise.
fn wait_reader_running(gw: &TempGateway, what: &str) {
    wait_for(Duration::from_secs(30), || {
        let s = status(gw)?;
        (s["readers"][0]["state"] == "running" && states(&s).is_empty()).then_some(())
    })
    .unwrap_or_else(|| panic!("{what}; status {:?}\nlog:\n{}", status(gw), gw.log()));
}

/// The `reader_down` condition once it is reported, within `within`.
fn wait_reader_down(gw: &TempGateway, within: Duration) -> serde_json::Value {
    wait_for(within, || condition(&status(gw)?, "reader_down").cloned()).unwrap_or_else(|| {
        panic!(
            "reader_down never reported; status {:?}\nlog:\n{}",
            status(gw),
            gw.log()
        )
    })
}

fn spawn_watched(gw: &TempGateway, sock: &Path) -> Killed {
    let log = std::fs::File::create(gw.dir.path().join("tracegate.log")).unwrap();
    Killed(
        Command::new(tracegate_hw_tests::bin().unwrap())
            .args(["run", "--config"])
            .arg(&gw.config)
            .env("RUST_LOG", "info")
            .env("NOTIFY_SOCKET", sock)
            .env("WATCHDOG_USEC", "2000000")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

/// systemd's notify socket, as far as the test needs it: every datagram
/// received, with the time it came.
struct Notify {
    got: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Notify {
    fn bind(path: &Path) -> Notify {
        let sock = std::os::unix::net::UnixDatagram::bind(path).unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = got.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                sink.lock().unwrap().push((Instant::now(), text));
            }
        });
        Notify { got }
    }

    fn pings_since(&self, t: Instant) -> usize {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, m)| *at >= t && m.lines().any(|l| l == "WATCHDOG=1"))
            .count()
    }
}

/// Unmounts on drop, so a failing assertion does not leave the mount.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_is_named_disk_full_and_fails_healthz() {
    let metrics_port = free_port();
    let gw = TempGateway::new(
        "gw-full",
        &format!("{SIM_PORTAL}\n[ops]\nmetrics_addr = \"127.0.0.1:{metrics_port}\"\nstale_after_secs = 120\n"),
    )
    .unwrap();
    let data = gw.dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs"])
        .arg(&data)
        .output()
        .map_err(|e| e.to_string())
        .and_then(|o| {
            if o.status.success() {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&o.stderr).trim().to_owned())
            }
        });
    if let Err(why) = mounted {
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "skipped: cannot mount a small tmpfs here ({why}); needs root"
        );
        return;
    }
    let _mounted = Mounted(data.clone());
    let mut child = gw.spawn().unwrap();
    wait_for(Duration::from_secs(30), || {
        let s = status(&gw)?;
        (s["store"]["last_seq"].as_u64()? > 20 && states(&s).is_empty()).then_some(())
    })
    .unwrap_or_else(|| panic!("never stored events; log:\n{}", gw.log()));

    // Take every byte left.
    let filler = data.join("filler");
    {
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 16 * 1024];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }
    let full = Instant::now();
    let s = wait_for(Duration::from_secs(20), || {
        let s = status(&gw)?;
        condition(&s, "disk_full").is_some().then_some(s)
    })
    .unwrap_or_else(|| panic!("disk_full never reported; log:\n{}", gw.log()));
    println!(
        "disk_full reported {:.1} s after the filesystem filled",
        full.elapsed().as_secs_f64()
    );
    let c = condition(&s, "disk_full").unwrap();
    assert_eq!(c["severity"], "fail");
    assert_eq!(c["subject"], "store");
    assert_eq!(s["health"]["ok"], false, "{s}");
    assert!(
        s["health"]["reasons"][0]
            .as_str()
            .unwrap()
            .starts_with("disk_full store for"),
        "{s}"
    );

    // Space again: the state clears once a commit goes through.
    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    let cleared = wait_for(Duration::from_secs(30), || {
        let s = status(&gw)?;
        condition(&s, "disk_full").is_none().then_some(())
    });
    assert!(
        cleared.is_some(),
        "disk_full did not clear after space came back; log:\n{}",
        gw.log()
    );
    println!(
        "disk_full cleared {:.1} s after space came back",
        freed.elapsed().as_secs_f64()
    );
    signal(&child, Signal::SIGTERM).unwrap();
    wait_exit(&mut child, Duration::from_secs(15)).expect("gateway did not stop");
}
