//! SIGTERM ends the process within its deadline whatever the store is
//! doing, and the log and exit code say what was left unfinished.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tracegate_hw_tests::{signal, wait_exit, wait_for, SmallFs, TempGateway, SIM_PORTAL as SIM};

#[test]
fn sigterm_with_a_stuck_store_exits_within_the_deadline_and_says_what_was_unfinished() {
    let gw = TempGateway::new("gw-stop", SIM).unwrap();
    let mut child = gw.spawn().unwrap();
    wait_for(Duration::from_secs(20), || {
        gw.events(&[]).ok().filter(|e| !e.is_empty())
    })
    .unwrap_or_else(|| panic!("no events; log:\n{}", gw.log()));

    // Another process holds the database's write lock: every commit of the
    // writer waits out its busy timeout and retries, as on a stalled disk.
    let db = gw.dir.path().join("data/events.db");
    let locker = rusqlite::Connection::open(&db).unwrap();
    locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    std::thread::sleep(Duration::from_secs(2));

    let asked = Instant::now();
    signal(&child, Signal::SIGTERM).unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(15));
    let took = asked.elapsed();
    locker.execute_batch("ROLLBACK").unwrap();
    let log = gw.log();
    let status = status.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("still running 15 s after SIGTERM; log:\n{log}")
    });
    // The deadline is 5 s, plus 1 s for the publisher and endpoints.
    assert!(
        took < Duration::from_secs(8),
        "exited after {took:?}; log:\n{log}"
    );
    assert!(!status.success(), "exit status {status}; log:\n{log}");
    assert!(log.contains("gateway.stopped_incomplete"), "{log}");
    assert!(log.contains("store writer"), "{log}");
    assert!(!log.contains("event=\"gateway.stopped\""), "{log}");
}

#[test]
fn sigterm_while_the_disk_is_full_exits_within_the_deadline_and_says_what_was_unfinished() {
    let gw = TempGateway::new("gw-stop-full", SIM).unwrap();
    // A 4 MiB tmpfs as the data directory, filled below.
    let Some(fs) = SmallFs::mount(&gw.dir.path().join("data"), 4 << 20) else {
        return;
    };
    let mut child = gw.spawn().unwrap();
    wait_for(Duration::from_secs(20), || {
        gw.events(&[]).ok().filter(|e| !e.is_empty())
    })
    .unwrap_or_else(|| panic!("no events; log:\n{}", gw.log()));
    let _filler = fs.fill("filler").unwrap();
    // The writer retries a commit that fails for lack of space.
    let stuck = || {
        let log = gw.log();
        (log.matches("store.disk_full").count() > log.matches("store.disk_recovered").count())
            .then_some(())
    };
    wait_for(Duration::from_secs(60), stuck)
        .unwrap_or_else(|| panic!("the writer never met the full disk; log:\n{}", gw.log()));
    std::thread::sleep(Duration::from_secs(2));

    let asked = Instant::now();
    signal(&child, Signal::SIGTERM).unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(15));
    let took = asked.elapsed();
    let log = gw.log();
    let status = status.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("still running 15 s after SIGTERM; log:\n{log}")
    });
    // The deadline is 5 s, plus 1 s for the publisher and endpoints.
    assert!(
        took < Duration::from_secs(8),
        "exited after {took:?}; log:\n{log}"
    );
    eprintln!("exited {took:?} after SIGTERM with {status}");
    assert!(!status.success(), "exit status {status}; log:\n{log}");
    assert!(log.contains("gateway.stopped_incomplete"), "{log}");
    assert!(log.contains("store writer"), "{log}");
    assert!(!log.contains("event=\"gateway.stopped\""), "{log}");
    drop(fs);
}
