//! MQTT uplink benchmarks against a real mosquitto (started here on a free
//! loopback port). Run: `cargo bench -p tracegate --bench mqtt`.
//!
//! 1. Throughput: store -> publisher -> mosquitto -> subscriber (events/s)
//!    vs a bare rumqttc QoS 1 publish loop (messages/s) to the same broker,
//!    in the same run. Target ratio >= 0.5.
//! 2. Drain after an outage: 1,000,000 events stored, then the publisher
//!    starts; events/s until all are acknowledged (target >= 10,000/s), and
//!    commit -> PUBACK latency of live events committed during the drain
//!    (target <= 100 ms).
//! 3. Commit -> PUBACK latency at a steady 1,000 events/s (p99 <= 50 ms).
//!
//! Sizes can be scaled down with TRACEGATE_BENCH_SCALE (e.g. 0.1).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use tokio::sync::{mpsc, watch};

use support::*;
use tracegate::publish::AckNotice;
use tracegate::store::{FullPolicy, Store, StoreConfig, Watermark, WATERMARK_EVERY};

fn scale(n: u64) -> u64 {
    let s: f64 = std::env::var("TRACEGATE_BENCH_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    ((n as f64 * s) as u64).max(1_000)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// A bare rumqttc QoS 1 loop: `n` messages of `payload` bytes, window 32.
async fn bare_rumqttc(addr: std::net::SocketAddr, n: u64, payload: usize) -> f64 {
    let mut opts = MqttOptions::new("bench-bare", addr.ip().to_string(), addr.port());
    opts.set_inflight(34);
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut el) = AsyncClient::new(opts, 40);
    let body = vec![b'x'; payload];
    let mut sent = 0u64;
    let mut acked = 0u64;
    let mut outstanding = 0u64;
    let mut connected = false;
    let start = Instant::now();
    while acked < n {
        while connected && outstanding < 32 && sent < n {
            client
                .try_publish("bench/bare", QoS::AtLeastOnce, false, body.clone())
                .unwrap();
            sent += 1;
            outstanding += 1;
        }
        match el.poll().await.unwrap() {
            Event::Incoming(Incoming::ConnAck(_)) => connected = true,
            Event::Incoming(Incoming::PubAck(_)) => {
                acked += 1;
                outstanding -= 1;
            }
            _ => {}
        }
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// A writer thread that commits each request with `Store::append` and
/// remembers when each seq was committed.
struct TimedWriter {
    tx: mpsc::UnboundedSender<Vec<tracegate::store::EventDraft>>,
    committed: watch::Receiver<u64>,
    commits: Arc<Mutex<Vec<(u64, Instant)>>>,
    thread: std::thread::JoinHandle<()>,
    /// For the publisher; persisted by the thread, as the real writer does.
    watermark: Option<Watermark>,
}

impl TimedWriter {
    fn start(cfg: &StoreConfig) -> TimedWriter {
        let mut store = Store::open(cfg, GATEWAY).unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<tracegate::store::EventDraft>>();
        let stats = store.stats().unwrap();
        let (ctx, crx) = watch::channel(stats.last_seq);
        let (watermark, wm_rx) = Watermark::channel(stats.published_upto);
        let commits = Arc::new(Mutex::new(Vec::new()));
        let c = commits.clone();
        let thread = std::thread::spawn(move || {
            let mut marked = (stats.published_upto, Instant::now());
            while let Some(mut drafts) = rx.blocking_recv() {
                while let Ok(more) = rx.try_recv() {
                    drafts.extend(more);
                }
                let stored = store.append(drafts).unwrap();
                let now = Instant::now();
                if let Some(last) = stored.last() {
                    ctx.send_replace(last.seq);
                    c.lock().unwrap().push((last.seq, now));
                }
                let upto = *wm_rx.borrow();
                if upto > marked.0 && now >= marked.1 + WATERMARK_EVERY {
                    store.mark_published(upto).unwrap();
                    marked = (upto, now);
                }
            }
        });
        TimedWriter {
            tx,
            committed: crx,
            commits,
            thread,
            watermark: Some(watermark),
        }
    }
}

/// Commit -> PUBACK latency (ms) of each seq in `commits` at or after `from_seq`.
fn ack_latencies(commits: &[(u64, Instant)], acks: &[AckNotice], from_seq: u64) -> Vec<f64> {
    // Each commit record names the last seq of that commit; a commit is
    // acknowledged when the ack of a batch containing that seq arrives.
    let mut ranges: Vec<&AckNotice> = acks.iter().collect();
    ranges.sort_by_key(|a| a.after);
    let mut out = Vec::new();
    for &(seq, at) in commits.iter().filter(|(s, _)| *s >= from_seq) {
        let i = ranges.partition_point(|a| a.last < seq);
        if let Some(a) = ranges.get(i).filter(|a| a.after < seq) {
            out.push(a.acked_at.saturating_duration_since(at).as_secs_f64() * 1000.0);
        }
    }
    out.sort_by(|a, b| a.partial_cmp(b).unwrap());
    out
}

async fn throughput(broker: &Mosquitto) {
    let n = scale(200_000);
    let one_event = serde_json::to_string(&draft(1).event).unwrap().len() + 60;
    let bare = bare_rumqttc(broker.addr(), n, one_event).await;

    let registry = Registry::start(broker.addr(), "tracegate/+/+/events").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = store_config(dir.path(), 4 * 1024 * 1024 * 1024, FullPolicy::DropOldest);
    let mut w = TimedWriter::start(&cfg);
    let (ctx, _stats) = context(&cfg, w.committed.clone(), w.watermark.take().unwrap());
    let (cancel, task) = spawn_publisher(mqtt_config(&broker.url()), ctx);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = Instant::now();
    let mut i = 0;
    while i < n {
        w.tx.send((i..i + 500).map(draft).collect()).unwrap();
        i += 500;
        if i % 5_000 == 0 {
            tokio::task::yield_now().await;
        }
    }
    registry
        .wait_until(Duration::from_secs(600), "throughput run", |r| {
            r.unique.len() as u64 >= n
        })
        .await;
    let e2e = n as f64 / start.elapsed().as_secs_f64();
    cancel.cancel();
    task.await.unwrap().unwrap();
    drop(w.tx);
    w.thread.join().unwrap();
    registry.stop().await;
    println!(
        "throughput: end-to-end {e2e:.0} events/s (store -> publisher -> mosquitto -> subscriber, {n} events); \
         bare rumqttc QoS 1 {bare:.0} msgs/s ({one_event} B payload, window 32); ratio {:.2}",
        e2e / bare
    );
}

async fn drain(broker: &Mosquitto) {
    let n = scale(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let cfg = store_config(dir.path(), 8 * 1024 * 1024 * 1024, FullPolicy::DropOldest);
    // The outage: events pile up with no publisher running.
    let fill_start = Instant::now();
    {
        let mut store = Store::open(&cfg, GATEWAY).unwrap();
        let mut i = 0;
        while i < n {
            store.append((i..i + 5_000).map(draft).collect()).unwrap();
            i += 5_000;
        }
    }
    println!(
        "drain: stored {n} events in {:.1} s",
        fill_start.elapsed().as_secs_f64()
    );

    let mut w = TimedWriter::start(&cfg);
    let live_from = *w.committed.borrow() + 1;
    let (mut ctx, stats) = context(&cfg, w.committed.clone(), w.watermark.take().unwrap());
    let (ack_tx, mut ack_rx) = tracegate::Observer::channel(1 << 20);
    ctx.acks = Some(ack_tx);
    let acks = Arc::new(Mutex::new(Vec::new()));
    let a = acks.clone();
    let collector = tokio::spawn(async move {
        while let Some(x) = ack_rx.recv().await {
            a.lock().unwrap().push(x);
        }
    });
    let start = Instant::now();
    let (cancel, task) = spawn_publisher(mqtt_config(&broker.url()), ctx);
    // Live traffic during the drain: 100 events/s, one per commit.
    let mut k = n;
    let mut drained_at = None;
    loop {
        w.tx.send(vec![draft(k)]).unwrap();
        k += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
        let upto = stats
            .published_upto
            .load(std::sync::atomic::Ordering::Relaxed);
        if drained_at.is_none() && upto >= n {
            drained_at = Some(start.elapsed());
        }
        if let Some(d) = drained_at {
            if start.elapsed() > d + Duration::from_millis(500) {
                break;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(900),
            "drain did not finish"
        );
    }
    let drained = drained_at.unwrap();
    cancel.cancel();
    task.await.unwrap().unwrap();
    drop(w.tx);
    w.thread.join().unwrap();
    collector.await.unwrap();
    let commits = w.commits.lock().unwrap().clone();
    let acks = acks.lock().unwrap().clone();
    let lat = ack_latencies(&commits, &acks, live_from);
    println!(
        "drain: {n} backlog events acknowledged in {:.2} s = {:.0} events/s; \
         live events during the drain: {} samples, commit->PUBACK p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        drained.as_secs_f64(),
        n as f64 / drained.as_secs_f64(),
        lat.len(),
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN)
    );
}

async fn steady_latency(broker: &Mosquitto) {
    let secs = 10u64;
    let dir = tempfile::tempdir().unwrap();
    let cfg = store_config(dir.path(), 1024 * 1024 * 1024, FullPolicy::DropOldest);
    let mut w = TimedWriter::start(&cfg);
    let (mut ctx, _stats) = context(&cfg, w.committed.clone(), w.watermark.take().unwrap());
    let (ack_tx, mut ack_rx) = tracegate::Observer::channel(1 << 20);
    ctx.acks = Some(ack_tx);
    let (cancel, task) = spawn_publisher(mqtt_config(&broker.url()), ctx);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // 1,000 events/s: one event per millisecond, each its own commit.
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut pending: VecDeque<u64> = VecDeque::new();
    for i in 0..secs * 1000 {
        tick.tick().await;
        w.tx.send(vec![draft(i)]).unwrap();
        pending.push_back(i);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    cancel.cancel();
    task.await.unwrap().unwrap();
    drop(w.tx);
    w.thread.join().unwrap();
    let mut acks = Vec::new();
    while let Ok(a) = ack_rx.try_recv() {
        acks.push(a);
    }
    let commits = w.commits.lock().unwrap().clone();
    let lat = ack_latencies(&commits, &acks, 1);
    println!(
        "steady 1000 events/s for {secs} s: {} commits, commit->PUBACK p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (linger_ms 20)",
        lat.len(),
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN)
    );
}

fn main() {
    if !mosquitto_available() {
        return;
    }
    // `cargo bench` passes --bench; a filter argument picks one part.
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let want = |name: &str| filter.as_deref().is_none_or(|f| name.contains(f));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let broker = Mosquitto::start();
        if want("throughput") {
            throughput(&broker).await;
        }
        if want("drain") {
            drain(&broker).await;
        }
        if want("latency") {
            steady_latency(&broker).await;
        }
    });
}
