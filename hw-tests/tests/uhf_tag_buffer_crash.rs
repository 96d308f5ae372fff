//! `kill -9` loops against a Mercury module in tag-buffer mode.
//!
//! The simulated module lives in this test process, on a pty whose path the
//! gateway reopens after each restart, so its tag buffer (records, read
//! index, write index) survives the gateway's deaths as the module's RAM
//! does. Tags arrive one at a time: each stays in the field until the
//! module has handed it over in a GET_TAG_ID_BUFFER reply, then the next one
//! enters. Half the kills land at random moments; the other half land right
//! after the module has written a fetch reply (from the simulator's fetch
//! hook), before the gateway can have committed it: the window the issue
//! is about.
//!
//! With a module that honours the resend read option, every EPC the module
//! handed over must become an `arrived` event. With one that refuses it,
//! each kill may lose at most the one reply in flight (one record here),
//! and the test checks that bound, and that the loss is real (so the first
//! test is not passing by luck).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio_util::sync::CancellationToken;
use tracegate_drivers::mercury::sim::{
    Arrivals, FetchHook, MercurySim, MercurySimParams, SimReport, SimTag,
};
use tracegate_hw_tests::{signal, wait_exit, wait_for, TempGateway};

/// Tags passing the portal, one at a time. With `search_ms = 150` a
/// running gateway takes about six a second, so the killed runs use about
/// half of them and the last run drains the rest.
const TAGS: u16 = 100;
/// Gateway runs killed with SIGKILL before the last, clean one.
const KILLS: u32 = 12;
/// Records per GET_TAG_ID_BUFFER reply: the chunk committed at a time.
const CHUNK: usize = 1;

fn epc(serial: u16) -> Vec<u8> {
    let s = serial.to_be_bytes();
    vec![
        0x30, 0x34, 0x25, 0x7B, 0xF7, 0x19, 0x4E, 0x40, 0x00, 0x00, s[0], s[1],
    ]
}

fn hex(epc: &[u8]) -> String {
    epc.iter().map(|b| format!("{b:02X}")).collect()
}

const BODY: &str = r#"
[[readers]]
name = "uhf1"
kind = "mercury"
port = "PORT"
antennas = [1]
mode = "tag_buffer"
search_ms = 150

[[read_points]]
name = "door"
reader = "uhf1"

[dedup]
min_reads = 1
departure_timeout_ms = 300

[store]
commit_interval_ms = 20
"#;

fn arrived(gw: &TempGateway) -> BTreeSet<String> {
    gw.events(&[])
        .unwrap_or_default()
        .iter()
        .filter(|e| e["type"] == "arrived" && e["reader"] == "uhf1")
        .filter_map(|e| e["identity"]["epc"].as_str().map(str::to_owned))
        .collect()
}

fn handed_over(rep: &SimReport) -> BTreeSet<String> {
    rep.sent_epcs.iter().map(|e| hex(e)).collect()
}

/// Kills the gateway from the simulator's fetch hook when armed.
#[derive(Default)]
struct Trigger {
    pid: AtomicI32,
    armed: AtomicBool,
    fired: AtomicU64,
}

impl Trigger {
    fn hook(self: &Arc<Self>) -> FetchHook {
        let t = self.clone();
        FetchHook(Arc::new(move |epcs: &[Vec<u8>]| {
            if epcs.is_empty() || !t.armed.swap(false, Ordering::SeqCst) {
                return;
            }
            let pid = t.pid.load(Ordering::SeqCst);
            if pid > 0 && nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
                t.fired.fetch_add(1, Ordering::SeqCst);
            }
        }))
    }
}

/// A small deterministic generator for kill delays (no dependency needed).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// The simulator's state, for failure messages.
fn sim_state(sim: &MercurySim) -> String {
    let r = sim.report();
    let tail: Vec<String> = r
        .commands
        .iter()
        .rev()
        .take(16)
        .rev()
        .map(|c| format!("{c:02X}"))
        .collect();
    format!(
        "fetches {}, resends {}, clears {}, read index {}, write index {}, handed over {}, last commands {}",
        r.fetches,
        r.resends,
        r.buffer_clears,
        r.buffer_read_index,
        r.buffer_len,
        handed_over(&r).len(),
        tail.join(" ")
    )
}

struct Outcome {
    gw: TempGateway,
    report: SimReport,
    hook_kills: u64,
    kills: u32,
}

/// Runs `KILLS` killed gateway runs and a final one that lasts until every
/// tag has been handed over, then stops it with SIGTERM.
fn crash_loop(resend: bool, seed: u64) -> Outcome {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let _enter = rt.enter();
    let trigger = Arc::new(Trigger::default());
    let sim = MercurySim::new(MercurySimParams {
        tags: (1..=TAGS).map(|s| SimTag::new(epc(s), 1, -55)).collect(),
        arrivals: Arrivals::OneAtATime,
        resend,
        max_records_per_fetch: CHUNK,
        on_fetch: Some(trigger.hook()),
        ..MercurySimParams::default()
    });
    let cancel = CancellationToken::new();
    let (path, _task) = sim.spawn_pty(cancel.clone()).unwrap();
    let gw = TempGateway::new("gw-tagbuf", &BODY.replace("PORT", path.to_str().unwrap())).unwrap();
    let mut rng = Lcg(seed);
    for round in 0..KILLS {
        let before = sim.report().fetches;
        let mut child = gw.spawn().unwrap();
        trigger
            .pid
            .store(i32::try_from(child.id()).unwrap(), Ordering::SeqCst);
        if round % 2 == 0 {
            // Right after a fetch reply, once this run has fetched at all.
            wait_for(Duration::from_secs(20), || {
                (sim.report().fetches > before).then_some(())
            })
            .unwrap_or_else(|| {
                panic!(
                    "round {round}: no fetch; sim: {}; log:\n{}",
                    sim_state(&sim),
                    gw.log()
                )
            });
            std::thread::sleep(Duration::from_millis(rng.below(300)));
            trigger.armed.store(true, Ordering::SeqCst);
            if wait_exit(&mut child, Duration::from_secs(10)).is_none() {
                panic!(
                    "round {round}: the armed kill never fired; sim: {}; log:\n{}",
                    sim_state(&sim),
                    gw.log()
                );
            }
        } else {
            std::thread::sleep(Duration::from_millis(150 + rng.below(900)));
            trigger.armed.store(false, Ordering::SeqCst);
            let _ = signal(&child, Signal::SIGKILL);
            let _ = child.wait();
        }
        trigger.pid.store(0, Ordering::SeqCst);
    }
    // The last run: until every tag has passed and what was handed over
    // had its chance to be committed.
    let mut child = gw.spawn().unwrap();
    let last = hex(&epc(TAGS));
    wait_for(Duration::from_secs(40), || {
        let rep = sim.report();
        let done = handed_over(&rep).len() == usize::from(TAGS)
            && rep.buffer_len == 0
            && arrived(&gw).contains(&last);
        done.then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "not every tag passed: {} handed over; log:\n{}",
            handed_over(&sim.report()).len(),
            gw.log()
        )
    });
    signal(&child, Signal::SIGTERM).unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "log:\n{}", gw.log());
    cancel.cancel();
    let report = sim.report();
    // Shown with --nocapture: the figures behind the assertions.
    eprintln!(
        "resend={resend}: {} kills ({} right after a fetch), {}",
        KILLS,
        trigger.fired.load(Ordering::SeqCst),
        sim_state(&sim)
    );
    Outcome {
        report,
        hook_kills: trigger.fired.load(Ordering::SeqCst),
        kills: KILLS,
        gw,
    }
}

#[test]
fn every_epc_the_module_handed_over_is_stored_across_kill_9_when_it_can_resend() {
    let o = crash_loop(true, 0x5EED_0001);
    let handed = handed_over(&o.report);
    let stored = arrived(&o.gw);
    let missing: Vec<_> = handed.difference(&stored).collect();
    assert!(
        missing.is_empty(),
        "{} of {} handed-over EPCs never became events: {missing:?}",
        missing.len(),
        handed.len()
    );
    assert_eq!(handed.len(), usize::from(TAGS));
    // The window was hit: every kill right after a fetch left the read
    // index past an uncommitted reply, and the next run had it resent.
    assert!(o.hook_kills >= u64::from(o.kills / 2), "{}", o.hook_kills);
    assert!(
        o.report.resends >= o.hook_kills,
        "{} resends for {} kills after a fetch",
        o.report.resends,
        o.hook_kills
    );
}

#[test]
fn without_resend_each_kill_9_loses_at_most_the_one_reply_in_flight() {
    let o = crash_loop(false, 0x5EED_0002);
    let handed = handed_over(&o.report);
    let stored = arrived(&o.gw);
    let missing: Vec<_> = handed.difference(&stored).collect();
    eprintln!("without resend: {} of {} lost", missing.len(), handed.len());
    assert_eq!(handed.len(), usize::from(TAGS));
    assert_eq!(o.report.resends, 0);
    // The documented bound: one reply (CHUNK records) per crash.
    assert!(
        missing.len() <= o.kills as usize * CHUNK,
        "{} lost in {} kills: {missing:?}",
        missing.len(),
        o.kills
    );
    // And the loss is real without resend: the kills right after a fetch
    // each cost the record that reply carried.
    assert!(
        missing.len() as u64 >= o.hook_kills && o.hook_kills > 0,
        "{} lost, {} kills after a fetch",
        missing.len(),
        o.hook_kills
    );
}
