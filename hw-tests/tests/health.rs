//! Health names the cause, end to end with the real binary:
//! - a silent partition of the uplink (a TCP proxy that keeps both sockets
//!   open and silently discards every byte, no RST, no FIN) is reported as
//!   `publish_stalled` and `broker_unreachable` within the configured PUBACK
//!   deadline, logged, and after the partition heals every stored event
//!   reaches a subscriber at a real mosquitto;
//! - an unplugged reader (a Mercury simulator on a pty) is `reader_down`
//!   with its age, the daemon stays up, its task keeps counting turns and
//!   the systemd watchdog pings go on (a fake notify socket) while the
//!   outage outlasts `stale_after_secs`, and the state clears on replug;
//! - a full filesystem under the store (a 4 MiB tmpfs, filled) is
//!   `disk_full`, fails `/healthz`, and clears when space comes back (needs
//!   root for the mount; prints `skipped: <reason>` otherwise).
//!
//! The uplink test needs mosquitto and prints `skipped: <reason>` without it
//! (fails instead with TRACEGATE_REQUIRE_MOSQUITTO=1).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::io::{BufRead, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tracegate_hw_tests::{peer_available, signal, wait_exit, wait_for, TempGateway, SIM_PORTAL};

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

/// Kills a child on drop so a failing assertion leaves nothing running.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
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
        let mut child = Command::new("mosquitto_sub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-q",
                "1",
                "-t",
                topic,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let ids = Arc::new(Mutex::new(HashSet::new()));
        let sink = ids.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                if let Some(evs) = v["events"].as_array() {
                    let mut g = sink.lock().unwrap();
                    for e in evs {
                        if let Some(id) = e["id"].as_str() {
                            g.insert(id.to_owned());
                        }
                    }
                }
            }
        });
        // mosquitto_sub has subscribed once it is connected; give it a moment.
        std::thread::sleep(Duration::from_millis(500));
        Subscriber {
            _child: Killed(child),
            ids,
        }
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
    proxy.blackhole.store(false, Ordering::SeqCst);
    let healed = Instant::now();
    wait_for(Duration::from_secs(30), || {
        let s = status(&gw)?;
        (s["publisher"]["connected"] == true && states(&s).is_empty()).then_some(())
    })
    .unwrap_or_else(|| panic!("states did not clear; log:\n{}", gw.log()));
    println!(
        "partition healed: states clear after {:.1} s",
        healed.elapsed().as_secs_f64()
    );
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

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn an_unplugged_reader_is_reader_down_with_its_age_and_the_daemon_stays_up() {
    use tracegate_drivers::mercury::sim::{MercurySim, MercurySimParams, SimTag};
    let rt = runtime();
    let _enter = rt.enter();
    let dir = tempfile::tempdir().unwrap();
    let link: PathBuf = dir.path().join("usb-ThingMagic_sim-if00-port0");
    let epc = vec![
        0x30, 0x34, 0x25, 0x7B, 0xF7, 0x19, 0x4E, 0x40, 0x00, 0x00, 0x1A, 1,
    ];
    let sim = MercurySim::new(MercurySimParams {
        tags: vec![SimTag::new(epc, 1, -55)],
        ..MercurySimParams::default()
    });
    let mut port = sim.pluggable(&link);
    port.plug().unwrap();
    let metrics_port = free_port();
    let gw = TempGateway::new(
        "gw-reader-down",
        &format!(
            "[[readers]]\nname = \"uhf1\"\nkind = \"mercury\"\nport = \"{}\"\nantennas = [1]\n\n\
             [[read_points]]\nname = \"door\"\nreader = \"uhf1\"\n\n\
             [[readers]]\nname = \"sim2\"\nkind = \"sim\"\n\n\
             [[read_points]]\nname = \"desk\"\nreader = \"sim2\"\n\n\
             [ops]\nmetrics_addr = \"127.0.0.1:{metrics_port}\"\nstale_after_secs = 5\n",
            link.display()
        ),
    )
    .unwrap();
    // A fake systemd: the notify socket, with the watchdog on (2 s).
    let sock_path = dir.path().join("notify.sock");
    let notify = Notify::bind(&sock_path);
    let log = std::fs::File::create(gw.dir.path().join("tracegate.log")).unwrap();
    let mut child = Command::new(tracegate_hw_tests::bin().unwrap())
        .args(["run", "--config"])
        .arg(&gw.config)
        .env("RUST_LOG", "info")
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "2000000")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(30), || {
        let s = status(&gw)?;
        (s["readers"][0]["state"] == "running" && states(&s).is_empty()).then_some(())
    })
    .unwrap_or_else(|| panic!("reader never ran; log:\n{}", gw.log()));

    rt.block_on(port.unplug()).unwrap();
    let unplugged = Instant::now();
    let down = wait_for(Duration::from_secs(10), || {
        let s = status(&gw)?;
        condition(&s, "reader_down").cloned()
    })
    .unwrap_or_else(|| panic!("reader_down never reported; log:\n{}", gw.log()));
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
        child.try_wait().unwrap().is_none(),
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
    signal(&child, Signal::SIGTERM).unwrap();
    wait_exit(&mut child, Duration::from_secs(10)).expect("gateway did not stop");
    rt.block_on(port.unplug()).unwrap();
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
