//! Durable event throughput of the store (WAL, synchronous=FULL), with group
//! commit against one commit per event, in the same run.
//!
//! `cargo bench -p tracegate --bench store` (set `STORE_BENCH_DIR` to put the
//! database on the disk you care about; default: the system temp dir, which
//! must not be a tmpfs for the figures to mean anything).
//!
//! Modes:
//! - `one_per_commit`: `Store::append` with one event per call (one fsync each).
//! - `append_1000`: `Store::append` with 1000 events per call.
//! - `writer_1000`: single-event `WriteRequest`s through `spawn_writer`
//!   (commit_max_events = 1000), timed until the last seq is reported committed.
//! - `paced`: single-event requests at a steady rate through `spawn_writer`,
//!   request -> ack latency and CPU per event: 50/s (a quiet door: the
//!   writer is idle between events) and 1,500/s, with `commit_interval_ms`
//!   100 (the example configs) and 10.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracegate::event::Event;
use tracegate::store::{spawn_writer, EventDraft, FullPolicy, Store, StoreConfig, WriteRequest};

fn draft(i: u64) -> EventDraft {
    let epc = hex::decode(format!("3074257bf7194e40{i:08x}")).unwrap();
    EventDraft::new(Event::sample_arrival(
        "dock-01",
        "dc1",
        "door-3",
        &epc,
        1_795_823_999_123 + i as i64,
    ))
}

fn config(dir: &tempfile::TempDir) -> StoreConfig {
    StoreConfig {
        path: dir.path().join("events.db"),
        max_bytes: 2 << 30,
        full_policy: FullPolicy::DropOldest,
        commit_interval_ms: 250,
        commit_age_ms: 0,
        commit_max_events: 1000,
        retention_secs: 3600,
    }
}

fn tempdir() -> tempfile::TempDir {
    match std::env::var_os("STORE_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d).unwrap(),
        None => tempfile::tempdir().unwrap(),
    }
}

fn one_per_commit(n: u64) -> f64 {
    let dir = tempdir();
    let mut store = Store::open(&config(&dir), "dock-01").unwrap();
    let start = Instant::now();
    for i in 0..n {
        store.append(vec![draft(i)]).unwrap();
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn append_batches(n: u64, batch: u64) -> f64 {
    let dir = tempdir();
    let mut store = Store::open(&config(&dir), "dock-01").unwrap();
    let start = Instant::now();
    let mut i = 0;
    while i < n {
        store
            .append((i..(i + batch).min(n)).map(draft).collect())
            .unwrap();
        i += batch;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn through_writer(n: u64) -> f64 {
    let dir = tempdir();
    let store = Store::open(&config(&dir), "dock-01").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (tx, rx) = mpsc::channel(4096);
    let w = spawn_writer(store, rx, None, None).unwrap();
    let mut committed = w.committed;
    let start = Instant::now();
    rt.block_on(async {
        for i in 0..n {
            tx.send(WriteRequest {
                drafts: vec![draft(i)],
                ack: None,
            })
            .await
            .unwrap();
        }
        committed.wait_for(|s| *s >= n).await.unwrap();
    });
    let rate = n as f64 / start.elapsed().as_secs_f64();
    drop(tx);
    drop(w.watermark);
    w.handle.join().unwrap();
    rate
}

/// Request -> ack latency (ms, p50 and p99) at a steady `rate` of
/// single-event requests for `secs`: what one busy dock door sends, and what
/// an event's time -> PUBACK latency starts with.
/// Also returns the process's CPU time per event (µs), writer included.
fn paced_latency(rate: u64, secs: u64, commit_interval_ms: u64) -> (f64, f64, f64) {
    let dir = tempdir();
    let mut cfg = config(&dir);
    cfg.commit_interval_ms = commit_interval_ms;
    let store = Store::open(&cfg, "dock-01").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (tx, rx) = mpsc::channel(4096);
    let w = spawn_writer(store, rx, None, None).unwrap();
    let cpu_start = cpu_secs();
    let mut lat: Vec<f64> = rt.block_on(async {
        let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut waits = Vec::new();
        for i in 0..rate * secs {
            tick.tick().await;
            let (ack, acked) = tracegate_drivers::CommitAck::pair();
            let sent = Instant::now();
            tx.send(WriteRequest {
                drafts: vec![draft(i)],
                ack: Some(ack),
            })
            .await
            .unwrap();
            waits.push(tokio::spawn(async move {
                acked.await.unwrap();
                sent.elapsed().as_secs_f64() * 1000.0
            }));
        }
        let mut out = Vec::new();
        for w in waits {
            out.push(w.await.unwrap());
        }
        out
    });
    let cpu_us = (cpu_secs() - cpu_start) * 1e6 / (rate * secs) as f64;
    drop(tx);
    drop(w.watermark);
    w.handle.join().unwrap();
    lat.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize];
    (pct(0.5), pct(0.99), cpu_us)
}

/// User + system CPU time of this process so far (Linux `/proc/self/stat`,
/// clock ticks of 10 ms: fine over a run of seconds).
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing
    // special but should stay quick.
    let quick = !std::env::args().any(|a| a == "--bench");
    let (n_single, n_group, runs) = if quick {
        (200, 20_000, 1)
    } else {
        (3_000, 200_000, 3)
    };
    let dir = tempdir();
    println!("store bench: database in {}", dir.path().display());
    drop(dir);

    // Warm-up (page cache, CPU frequency).
    append_batches(10_000, 1000);
    std::thread::sleep(Duration::from_millis(100));

    let single = median((0..runs).map(|_| one_per_commit(n_single)).collect());
    let append = median((0..runs).map(|_| append_batches(n_group, 1000)).collect());
    let writer = median((0..runs).map(|_| through_writer(n_group)).collect());

    println!("one_per_commit : {single:>10.0} events/s ({n_single} events, median of {runs})");
    println!("append_1000    : {append:>10.0} events/s ({n_group} events, median of {runs})");
    println!("writer_1000    : {writer:>10.0} events/s ({n_group} events, median of {runs})");
    for (rate, interval) in [(50, 100), (50, 10), (1_500, 100), (1_500, 10)] {
        let (p50, p99, cpu) = paced_latency(rate, if quick { 1 } else { 5 }, interval);
        println!(
            "paced {rate:>5}/s  : commit_interval_ms {interval:>3}: request -> ack p50 {p50:.1} ms, \
             p99 {p99:.1} ms, {cpu:.1} µs CPU per event"
        );
    }
    println!(
        "ratio group/single: append {:.1}x, writer {:.1}x",
        append / single,
        writer / single
    );
}
