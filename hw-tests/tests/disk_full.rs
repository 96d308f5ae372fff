//! A full disk under the store: once space comes back, commits resume
//! within seconds and stay resumed, and nothing committed is lost.
//!
//! Runs on a 4 MiB tmpfs mounted by the test (root only; skipped with a
//! reason elsewhere unless `TRACEGATE_REQUIRE_ROOT=1`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tracegate_hw_tests::{
    seqs, signal, wait_exit, wait_for, SmallFs, TempGateway, SIM_PORTAL as SIM,
};

/// The filesystem: smaller than the default `max_bytes` many times over.
const FS_BYTES: u64 = 4 << 20;

/// The gateway's own bound, with room left on the filesystem for a filler:
/// the simulated portal stores about 100 events/s (50 KB/s), which the
/// test's half minute does not overflow.
fn config() -> String {
    format!("{SIM}max_bytes = {}\n", 3u64 << 20)
}

/// Episodes of "disk full" the writer has logged, and how many ended.
fn episodes(gw: &TempGateway) -> (usize, usize) {
    let log = gw.log();
    (
        log.matches("store.disk_full").count(),
        log.matches("store.disk_recovered").count(),
    )
}

/// Highest committed seq, read through `tracegate events` (a read-only
/// connection, which works on a full disk).
fn last_seq(gw: &TempGateway, since: u64) -> u64 {
    let out = gw
        .cli(
            &[
                "events",
                "--json",
                "--since",
                &since.to_string(),
                "--config",
            ],
            true,
        )
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|e| e["seq"].as_u64())
        .max()
        .unwrap_or(since)
}

#[test]
fn after_a_full_disk_commits_resume_within_seconds_and_stay_resumed_losing_nothing() {
    let gw = TempGateway::new("gw-full", &config()).unwrap();
    let Some(fs) = SmallFs::mount(&gw.dir.path().join("data"), FS_BYTES) else {
        return;
    };
    let mut child = gw.spawn().unwrap();
    wait_for(Duration::from_secs(20), || {
        gw.events(&[]).ok().filter(|e| !e.is_empty())
    })
    .unwrap_or_else(|| panic!("no events; log:\n{}", gw.log()));

    // Fill the disk. The writer keeps going while the WAL's file has room,
    // then fails, releases its reserve, runs on that, and fails again.
    let filler = fs.fill("filler").unwrap();
    wait_for(Duration::from_secs(60), || {
        let (full, recovered) = episodes(&gw);
        (full > recovered).then_some(())
    })
    .unwrap_or_else(|| panic!("the writer never met the full disk; log:\n{}", gw.log()));
    // Stuck for a while: commits wait, the readers' buffers fill.
    std::thread::sleep(Duration::from_secs(2));
    let (full, recovered) = episodes(&gw);
    assert!(full > recovered, "still full after 2 s; log:\n{}", gw.log());
    let committed_before: BTreeSet<u64> = seqs(&gw.events(&[]).unwrap()).into_iter().collect();
    let stuck_at = *committed_before.last().unwrap();

    // Space comes back.
    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    let resumed = wait_for(Duration::from_secs(15), || {
        (last_seq(&gw, stuck_at) > stuck_at).then(|| freed.elapsed())
    })
    .unwrap_or_else(|| {
        panic!(
            "no commit within 15 s of freeing the disk; log:\n{}",
            gw.log()
        )
    });
    eprintln!("commits resumed {resumed:?} after the disk was freed");
    assert!(
        resumed < Duration::from_secs(5),
        "resumed only after {resumed:?}; log:\n{}",
        gw.log()
    );

    // ... and stay resumed: every 2 s of the next 12 commits more.
    let mut last = last_seq(&gw, stuck_at);
    for _ in 0..6 {
        std::thread::sleep(Duration::from_secs(2));
        let now = last_seq(&gw, last);
        assert!(
            now > last,
            "commits stopped again at seq {now}; log:\n{}",
            gw.log()
        );
        last = now;
    }
    let (full_after, recovered_after) = episodes(&gw);
    assert_eq!(
        full_after,
        recovered_after,
        "the disk filled again; log:\n{}",
        gw.log()
    );

    signal(&child, Signal::SIGTERM).unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(15)).unwrap_or_else(|| {
        let _ = child.kill();
        panic!("still running 15 s after SIGTERM; log:\n{}", gw.log())
    });
    assert!(status.success(), "exit {status}; log:\n{}", gw.log());

    // Nothing committed is lost: every seq seen before, gap-free throughout,
    // and nothing dropped by the full policy.
    let events = gw.events(&[]).unwrap();
    let all = seqs(&events);
    assert_eq!(all, (1..=all.len() as u64).collect::<Vec<_>>(), "gaps");
    assert!(committed_before.iter().all(|s| all.contains(s)));
    assert!(
        events.iter().all(|e| e["type"] != "overflow"),
        "the full policy dropped events"
    );
    drop(fs);
}
