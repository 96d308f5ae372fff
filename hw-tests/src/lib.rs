//! Helpers shared by the end-to-end tests: locating the `tracegate` binary,
//! temporary gateways with their own config and data directory, and running
//! the CLI against them.
//!
//! The binary is the one cargo built for this workspace
//! (`target/<profile>/tracegate`); `.ci/run` builds it before the tests.
//! `TRACEGATE_BIN` points elsewhere (an installed or cross-built binary).

use std::collections::HashSet;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

pub mod broker;

/// Path of the `tracegate` binary under test.
pub fn bin() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("TRACEGATE_BIN") {
        return Ok(PathBuf::from(p));
    }
    // The test executable lives in target/<profile>/deps/.
    let exe = std::env::current_exe().context("cannot locate the test executable")?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("unexpected test executable location")?;
    let candidate = profile_dir.join("tracegate");
    if !candidate.exists() {
        bail!(
            "{} does not exist: build it first with `cargo build -p tracegate` (the test command does)",
            candidate.display()
        );
    }
    Ok(candidate)
}

/// A simulated two-antenna portal and its read point, for tests that need
/// events flowing: tags every 20 ms, each read for 300 ms.
pub const SIM_PORTAL: &str = r#"
[[readers]]
name = "sim1"
kind = "sim"
antennas = [1, 2]
read_rate = 2000
arrival_interval_ms = 20
dwell_ms = 300
seed = 7

[[read_points]]
name = "door"
reader = "sim1"
direction = { outside = 1, inside = 2 }

[dedup]
min_reads = 1
departure_timeout_ms = 200

[store]
commit_interval_ms = 20
"#;

/// A gateway with its own temporary data directory and config file.
#[derive(Debug)]
pub struct TempGateway {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl TempGateway {
    /// Writes `body` (everything after the `[gateway]` table) to a config
    /// whose data_dir is a fresh temporary directory.
    pub fn new(id: &str, body: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("tracegate.toml");
        // Tests run in parallel: no shared metrics port unless the body asks.
        let ops = if body.contains("[ops]") {
            ""
        } else {
            "\n[ops]\nmetrics_addr = \"off\"\n"
        };
        let text = format!(
            "[gateway]\nid = \"{id}\"\nsite = \"test-site\"\ndata_dir = \"{}\"\n\n{body}\n{ops}",
            dir.path().join("data").display()
        );
        std::fs::write(&config, text)?;
        Ok(Self { dir, config })
    }

    /// Starts `tracegate run` in the background, logging to a file in the dir.
    pub fn spawn(&self) -> anyhow::Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("tracegate.log"))?;
        let child = Command::new(bin()?)
            .args(["run", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start tracegate run")?;
        Ok(child)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tracegate.log")).unwrap_or_default()
    }

    /// `tracegate events --config FILE --json [extra]`, parsed.
    pub fn events(&self, extra: &[&str]) -> anyhow::Result<Vec<serde_json::Value>> {
        let out = self.cli(&[&["events", "--json", "--config"], extra].concat(), true)?;
        let text = String::from_utf8(out.stdout)?;
        text.lines()
            .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l}")))
            .collect()
    }

    /// Runs a CLI subcommand with `--config` appended when `with_config`.
    pub fn cli(&self, args: &[&str], with_config: bool) -> anyhow::Result<Output> {
        let mut cmd = Command::new(bin()?);
        cmd.args(args);
        if with_config {
            cmd.arg(&self.config);
        }
        let out = cmd.output().context("cannot run tracegate")?;
        if !out.status.success() {
            bail!(
                "tracegate {:?} failed: {}",
                args,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(out)
    }
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sends a signal to a child process.
pub fn signal(child: &Child, sig: nix::sys::signal::Signal) -> anyhow::Result<()> {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
    nix::sys::signal::kill(pid, sig)?;
    Ok(())
}

/// Waits for a child to exit, up to `timeout`.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    wait_for(timeout, || child.try_wait().ok().flatten())
}

/// The `seq` of each event, in order.
pub fn seqs(events: &[serde_json::Value]) -> Vec<u64> {
    events.iter().filter_map(|e| e["seq"].as_u64()).collect()
}

/// Decides what a test that needs a peer outside this process (pcscd, a
/// real broker) does when `probe` says it is missing: print
/// `skipped: <reason>` and return false, so `cargo test` passes on a bare
/// machine; or, with `require_var=1` (CI sets it), fail loudly so a missing
/// service cannot pass as a skip.
#[allow(clippy::panic)] // failing the calling test is the point
pub fn peer_available(require_var: &str, probe: Result<(), String>) -> bool {
    let Err(why) = probe else { return true };
    if std::env::var(require_var).as_deref() == Ok("1") {
        panic!("{require_var}=1 but {why}");
    }
    // Written to stderr directly: libtest captures `println!`/`eprintln!` of
    // passing tests, and a skip must show in a plain `cargo test` run.
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "skipped: {why}");
    false
}

/// The reader vsmartcard's vpcd registers with pcscd (slot 0).
pub const VPCD_READER: &str = "Virtual PCD 00 00";

/// Whether pcscd runs with vpcd's virtual reader; see [`peer_available`]
/// for what happens when it does not.
pub fn pcscd_available() -> bool {
    let found = pcsc::Context::establish(pcsc::Scope::User)
        .and_then(|ctx| ctx.list_readers_owned())
        .map(|rs| rs.iter().any(|r| r.to_string_lossy().contains(VPCD_READER)));
    let probe = match found {
        Ok(true) => Ok(()),
        Ok(false) => Err(format!(
            "pcscd runs but has no {VPCD_READER:?} reader (install vsmartcard-vpcd, restart pcscd; .ci/nfc-setup.sh)"
        )),
        Err(e) => Err(format!("pcscd not running ({e}); .ci/nfc-setup.sh starts it")),
    };
    peer_available("TRACEGATE_REQUIRE_PCSCD", probe)
}

/// The `tap` events the gateway has stored so far.
pub fn tap_events(gw: &TempGateway) -> Vec<serde_json::Value> {
    gw.events(&[])
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e["type"] == "tap")
        .collect()
}

/// Places `card` on vpcd's virtual reader until the gateway has stored
/// `events` more tap events (one per read point the reader feeds), removes
/// it, and returns the card with those events.
///
/// Fails, with the gateway's log, when a tap was stored without its URL.
pub fn place_card<C: tracegate_drivers::nfc::emu::EmulatedCard + 'static>(
    gw: &TempGateway,
    card: C,
    events: usize,
) -> anyhow::Result<(C, Vec<serde_json::Value>)> {
    let (card, got) = place_once(gw, card, events)?;
    // Every emulated card carries a URL: a tap without one is a read the
    // driver gave up on, which the test must show rather than place again
    // (a second placement changes what a replayed or counted tag proves).
    if let Some(bare) = got.iter().find(|e| !e["tap"]["ndef_uri"].is_string()) {
        bail!(
            "tap stored without the URL the card carries: {bare}\ngateway log:\n{}",
            gw.log()
        );
    }
    Ok((card, got))
}

fn place_once<C: tracegate_drivers::nfc::emu::EmulatedCard + 'static>(
    gw: &TempGateway,
    card: C,
    events: usize,
) -> anyhow::Result<(C, Vec<serde_json::Value>)> {
    use tracegate_drivers::nfc::vpcd;
    let before = tap_events(gw).len();
    let inserted = vpcd::insert(vpcd::VPCD_SLOT0, card, Duration::from_secs(5))?;
    let got = wait_for(Duration::from_secs(20), || {
        let all = tap_events(gw);
        (all.len() >= before + events).then(|| all[before..].to_vec())
    });
    let card = inserted.remove()?;
    let Some(got) = got else {
        bail!("no tap event stored; log:\n{}", gw.log());
    };
    // Let the driver see the removal before the next placement.
    std::thread::sleep(Duration::from_millis(1200));
    Ok((card, got))
}

/// A small tmpfs mounted for one test, so the test can fill the disk the
/// gateway writes to; unmounted when dropped.
#[derive(Debug)]
pub struct SmallFs {
    pub path: PathBuf,
}

impl SmallFs {
    /// Mounts a tmpfs of `bytes` at `path` (created if missing). Mounting
    /// needs root: otherwise this prints `skipped: <reason>` and returns
    /// `None`, or fails the test when `TRACEGATE_REQUIRE_ROOT=1` (CI runs as
    /// root and sets it, so a skip cannot pass unnoticed there).
    pub fn mount(path: &Path, bytes: u64) -> Option<SmallFs> {
        let probe = std::fs::create_dir_all(path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))
            .and_then(|()| {
                let out = Command::new("mount")
                    .args(["-t", "tmpfs", "-o"])
                    .arg(format!("size={bytes},mode=0700"))
                    .arg("tmpfs")
                    .arg(path)
                    .output()
                    .map_err(|e| format!("cannot run mount: {e}"))?;
                if out.status.success() {
                    Ok(())
                } else {
                    Err(format!(
                        "cannot mount a {bytes}-byte tmpfs (needs root): {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    ))
                }
            });
        peer_available("TRACEGATE_REQUIRE_ROOT", probe).then(|| SmallFs {
            path: path.to_path_buf(),
        })
    }

    /// Writes zeros to `name` until the filesystem has no room left;
    /// returns the file's path.
    pub fn fill(&self, name: &str) -> anyhow::Result<PathBuf> {
        use std::io::Write as _;
        let file = self.path.join(name);
        let mut f = std::fs::File::create(&file)?;
        let chunk = vec![0u8; 4096];
        loop {
            match f.write_all(&chunk) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => break,
                Err(e) => return Err(e.into()),
            }
        }
        // Whatever a partial write left is full too.
        let _ = f.flush();
        Ok(file)
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        // Lazy: a process still holding a file there must not keep it mounted.
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Kills a child on drop so a failing assertion leaves nothing running.
#[derive(Debug)]
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A registry-side subscriber (`mosquitto_sub`, QoS 1, straight at the
/// broker on `port`): the id of every event it receives on `topic`.
pub fn subscribe_event_ids(
    port: u16,
    topic: &str,
) -> anyhow::Result<(Killed, Arc<Mutex<HashSet<String>>>)> {
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
        .context("starting mosquitto_sub (apt-get install -y mosquitto-clients)")?;
    let out = child.stdout.take().context("mosquitto_sub has no stdout")?;
    let ids = Arc::new(Mutex::new(HashSet::new()));
    let sink = ids.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            for e in v["events"].as_array().into_iter().flatten() {
                if let Some(id) = e["id"].as_str() {
                    if let Ok(mut got) = sink.lock() {
                        got.insert(id.to_owned());
                    }
                }
            }
        }
    });
    // mosquitto_sub has subscribed once it is connected; give it a moment.
    std::thread::sleep(Duration::from_millis(500));
    Ok((Killed(child), ids))
}
