//! Overload and stalls never invent or silently drop events: a store that
//! stalls for 5 s, and simulated readers offering ten times what this
//! machine sustains, delay events but every tag still gets exactly one
//! arrival and one departure, and memory stays within the issue's bound.
//!
//! The simulated tags stay in the field for 100 to 300 ms and the departure
//! timeout is longer than that, so by the reads' own time no tag can ever
//! depart and come back: any second arrival would be invented by the
//! gateway. (A simulated reader that has to wait for room stops reading,
//! as a module that is not polled does; tags that pass meanwhile are never
//! read and have no events, which is not a loss in the gateway.)

// Helpers fail the calling test with the gateway's log.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::process::Child;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tracegate_hw_tests::{signal, wait_exit, wait_for, TempGateway};

/// Arrivals and departures per EPC.
fn per_tag(events: &[serde_json::Value]) -> HashMap<String, (u32, u32)> {
    let mut tags: HashMap<String, (u32, u32)> = HashMap::new();
    for e in events {
        let Some(epc) = e["identity"]["epc"].as_str() else {
            continue;
        };
        let slot = tags.entry(epc.to_owned()).or_default();
        match e["type"].as_str() {
            Some("arrived") => slot.0 += 1,
            Some("departed") => slot.1 += 1,
            _ => {}
        }
    }
    tags
}

/// EPCs whose events are not exactly one arrival and one departure.
fn wrong_tags(tags: &HashMap<String, (u32, u32)>) -> Vec<(&String, &(u32, u32))> {
    tags.iter().filter(|(_, &c)| c != (1, 1)).collect()
}

/// Resident set size of a process, in MiB.
fn rss_mib(child: &Child) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

fn wait_ready(gw: &TempGateway) {
    wait_for(Duration::from_secs(30), || {
        gw.log().contains("gateway.ready").then_some(())
    })
    .unwrap_or_else(|| panic!("gateway not ready; log:\n{}", gw.log()));
}

fn stop(gw: &TempGateway, mut child: Child) {
    signal(&child, Signal::SIGTERM).unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(15)).unwrap_or_else(|| {
        let _ = child.kill();
        panic!("still running 15 s after SIGTERM; log:\n{}", gw.log())
    });
    assert!(status.success(), "exit {status}; log:\n{}", gw.log());
}

#[test]
fn a_store_stalled_for_5_s_under_1000_reads_per_s_delays_events_but_never_changes_them() {
    // 400 tags, one every 20 ms, each read for 300 ms out of 1,000 reads/s.
    let gw = TempGateway::new(
        "gw-stall",
        r#"
[[readers]]
name = "sim1"
kind = "sim"
antennas = [1, 2]
read_rate = 1000
arrival_interval_ms = 20
dwell_ms = 300
max_tags = 400
seed = 11

[[read_points]]
name = "door"
reader = "sim1"

[dedup]
min_reads = 1
departure_timeout_ms = 500

[store]
commit_interval_ms = 20
"#,
    )
    .unwrap();
    let child = gw.spawn().unwrap();
    wait_ready(&gw);
    let started = Instant::now();
    wait_for(Duration::from_secs(10), || {
        gw.events(&[]).ok().filter(|e| e.len() >= 10)
    })
    .unwrap_or_else(|| panic!("no events; log:\n{}", gw.log()));

    // Another connection holds the write lock for 5 s: every commit of the
    // writer waits (busy timeout, then retries), as on a stalled SD card.
    let db = gw.dir.path().join("data/events.db");
    let locker = rusqlite::Connection::open(&db).unwrap();
    locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let before = gw.events(&[]).unwrap().len();
    std::thread::sleep(Duration::from_millis(4_800));
    let during = gw.events(&[]).unwrap().len();
    std::thread::sleep(Duration::from_millis(200));
    locker.execute_batch("ROLLBACK").unwrap();
    drop(locker);
    assert_eq!(before, during, "the store was not stalled");

    // The simulator is done after 8.3 s; then everything departs.
    let left = Duration::from_secs(10).saturating_sub(started.elapsed());
    std::thread::sleep(left);
    let events = wait_for(Duration::from_secs(20), || {
        let events = gw.events(&[]).ok()?;
        let tags = per_tag(&events);
        (tags.len() == 400 && tags.values().all(|&(a, d)| a == d)).then_some(events)
    })
    .unwrap_or_else(|| {
        let tags = per_tag(&gw.events(&[]).unwrap());
        panic!(
            "{} tags, wrong: {:?}; log:\n{}",
            tags.len(),
            wrong_tags(&tags).into_iter().take(10).collect::<Vec<_>>(),
            gw.log()
        )
    });
    stop(&gw, child);
    let tags = per_tag(&events);
    let wrong = wrong_tags(&tags);
    assert!(
        wrong.is_empty(),
        "{} of {} tags without exactly one arrival and one departure: {:?}",
        wrong.len(),
        tags.len(),
        wrong.into_iter().take(10).collect::<Vec<_>>()
    );
    // Every tag the simulator introduced was read, and so none was lost:
    // the stall was absorbed by the bounded queues, the readers never waited.
    assert_eq!(tags.len(), 400);
    assert!(!gw.log().contains("pipeline.backpressure"), "{}", gw.log());
}

/// A gateway with two simulated portals offering `tags_per_s` tags for
/// `secs` seconds, in pallets every 10 ms, each tag in the field for 100 ms
/// and read about eight times.
fn portals(id: &str, tags_per_s: u64, secs: u64) -> TempGateway {
    let pallet = (tags_per_s / 200).max(1);
    let read_rate = pallet * 100 * 8;
    // Each simulator introduces its last tag after `secs`: the test then
    // waits for every tag to depart instead of stopping tags in the field.
    let max_tags = pallet * 100 * secs;
    let mut body = String::new();
    for i in 1..=2 {
        body.push_str(&format!(
            r#"
[[readers]]
name = "sim{i}"
kind = "sim"
antennas = [1, 2]
read_rate = {read_rate}
arrival_interval_ms = 10
pallet_size = {pallet}
max_tags = {max_tags}
dwell_ms = 100
seed = {i}

[[read_points]]
name = "door{i}"
reader = "sim{i}"
"#
        ));
    }
    body.push_str("\n[dedup]\nmin_reads = 1\ndeparture_timeout_ms = 300\n");
    TempGateway::new(id, &body).unwrap()
}

/// Runs `gw` while its simulators offer their tags (`secs`), then until
/// every tag that arrived has departed (at most 30 s more: the backlog
/// drains and the last tags time out), sampling RSS throughout. Returns the
/// peak RSS and the events committed per second while the tags were offered.
fn run_for(gw: &TempGateway, secs: u64) -> (f64, f64) {
    let child = gw.spawn().unwrap();
    wait_ready(gw);
    let started = Instant::now();
    let mut peak: f64 = 0.0;
    let sample = |peak: &mut f64| {
        if let Some(r) = rss_mib(&child) {
            *peak = peak.max(r);
        }
    };
    while started.elapsed() < Duration::from_secs(secs) {
        sample(&mut peak);
        std::thread::sleep(Duration::from_millis(100));
    }
    let committed = gw.events(&[]).map(|e| e.len()).unwrap_or(0);
    let rate = committed as f64 / started.elapsed().as_secs_f64();
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_secs(30) {
        sample(&mut peak);
        let balanced = gw
            .events(&[])
            .is_ok_and(|e| per_tag(&e).values().all(|&(a, d)| a == d));
        if balanced {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    stop(gw, child);
    (peak, rate)
}

/// The issue's bound: at ten times the sustainable rate a release build
/// stays within 64 MiB (BENCHMARKS.md, "Memory at saturation": 45 to 55 MiB
/// at 10x and 40x). The debug build these tests run maps about 16 MiB more
/// code and debug info (RssFile 27.8 against 12.1 MiB idle, 34.4 against
/// 17.4 MiB RSS in all), so its bound is 64 MiB plus that gap; its heap is
/// smaller than a release build's, which commits three times the events.
/// With `TRACEGATE_BIN` pointing at a release build, set
/// `TRACEGATE_RSS_BOUND_MIB=64`.
const RSS_BOUND_MIB: f64 = 80.0;

fn rss_bound_mib() -> f64 {
    std::env::var("TRACEGATE_RSS_BOUND_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(RSS_BOUND_MIB)
}

/// The most tags per second the simulators can offer: two portals of
/// `pallet` tags every 10 ms, read eight times each, within the simulator's
/// 2,048 reads per 10 ms step (`sim::MAX_STEP_READS`).
const MAX_OFFERED_TAGS: u64 = 2 * 100 * 256;

#[test]
fn overload_at_ten_times_the_sustainable_rate_keeps_every_tag_to_one_arrival_and_one_departure_in_bounded_memory(
) {
    // The sustainable rate of this machine: what the gateway commits while
    // offered far more (40,000 events/s) for a few seconds.
    let probe = portals("gw-probe", 20_000, 5);
    let (probe_peak, sustainable) = run_for(&probe, 5);
    let sustainable = sustainable.max(200.0);
    let probed = per_tag(&probe.events(&[]).unwrap());
    let wrong = wrong_tags(&probed);
    assert!(
        wrong.is_empty(),
        "probe: {} tags without exactly one arrival and one departure: {:?}",
        wrong.len(),
        wrong.into_iter().take(10).collect::<Vec<_>>()
    );

    // Ten times that (events are two per tag), for 10 s.
    let offered_tags = ((sustainable * 5.0) as u64).clamp(200, MAX_OFFERED_TAGS);
    let gw = portals("gw-overload", offered_tags, 10);
    let (peak, rate) = run_for(&gw, 10);
    let events = gw.events(&[]).unwrap();
    let tags = per_tag(&events);
    let wrong = wrong_tags(&tags);
    let committed = tags.values().map(|&(a, d)| a + d).sum::<u32>();
    let bound = rss_bound_mib();
    let line = format!(
        "sustainable {sustainable:.0} events/s (probe peak RSS {probe_peak:.1} MiB); offered {} events/s ({:.1}x): {} tags, {committed} events ({:.0}/s), peak RSS {peak:.1} MiB (bound {bound} MiB)",
        offered_tags * 2,
        (offered_tags * 2) as f64 / sustainable,
        tags.len(),
        rate
    );
    eprintln!("{line}");
    assert!(
        wrong.is_empty(),
        "{line}: {} tags without exactly one arrival and one departure: {:?}",
        wrong.len(),
        wrong.into_iter().take(10).collect::<Vec<_>>()
    );
    assert!(tags.len() > 100, "{line}; log:\n{}", gw.log());
    assert!(peak < bound, "{line}");
    assert!(probe_peak < bound, "{line}");
}

#[test]
fn sigterm_under_a_backlog_commits_every_event_made_from_the_reads_already_accepted() {
    let gw = TempGateway::new(
        "gw-drain",
        r#"
[[readers]]
name = "sim1"
kind = "sim"
antennas = [1, 2]
read_rate = 1000
arrival_interval_ms = 20
dwell_ms = 300
seed = 13

[[read_points]]
name = "door"
reader = "sim1"

[dedup]
min_reads = 1
departure_timeout_ms = 500

[store]
commit_interval_ms = 20
"#,
    )
    .unwrap();
    let mut child = gw.spawn().unwrap();
    wait_ready(&gw);
    wait_for(Duration::from_secs(10), || {
        gw.events(&[]).ok().filter(|e| e.len() >= 10)
    })
    .unwrap_or_else(|| panic!("no events; log:\n{}", gw.log()));

    // A stalled store for 3 s builds a backlog of reads and events; SIGTERM
    // arrives during the stall, which ends 1 s later, inside the deadline.
    let db = gw.dir.path().join("data/events.db");
    let locker = rusqlite::Connection::open(&db).unwrap();
    locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    std::thread::sleep(Duration::from_secs(3));
    signal(&child, Signal::SIGTERM).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    locker.execute_batch("ROLLBACK").unwrap();
    drop(locker);
    let status = wait_exit(&mut child, Duration::from_secs(15)).unwrap_or_else(|| {
        let _ = child.kill();
        panic!("still running 15 s after SIGTERM; log:\n{}", gw.log())
    });
    let log = gw.log();
    assert!(status.success(), "exit {status}; log:\n{log}");

    // What the pipeline made from every read it accepted is what the store
    // holds: nothing in memory was dropped by the stop.
    let made: u64 = log
        .lines()
        .find(|l| l.contains("pipeline.stopped"))
        .and_then(|l| l.split("events=").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no pipeline.stopped line with events=; log:\n{log}"));
    let events = gw.events(&[]).unwrap();
    assert_eq!(events.len() as u64, made, "log:\n{log}");
    let tags = per_tag(&events);
    assert!(
        tags.values().all(|&(a, d)| a == 1 && d <= 1),
        "{:?}",
        wrong_tags(&tags)
            .into_iter()
            .filter(|(_, c)| c.0 != 1 || c.1 > 1)
            .take(10)
            .collect::<Vec<_>>()
    );
}
