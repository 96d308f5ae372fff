//! The group-commit writer thread and a second connection working beside it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod store_common;

use std::time::Duration;

use store_common::*;
use tokio::sync::{mpsc, watch};
use tracegate::store::{spawn_writer, FullPolicy, Store, WriteRequest};
use tracegate_drivers::CommitAck;

/// Generous bound for "eventually" in tests; never a performance assertion.
const EVENTUALLY: Duration = Duration::from_secs(20);

fn request(n: usize, t: i64) -> (WriteRequest, tokio::sync::oneshot::Receiver<()>) {
    let (ack, rx) = CommitAck::pair();
    (
        WriteRequest {
            drafts: (0..n).map(|i| draft(t + i as i64)).collect(),
            ack: Some(ack),
        },
        rx,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_fires_acks_reports_seq_and_streams_committed_events() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir, 10 << 20, FullPolicy::DropOldest);
    cfg.commit_max_events = 50;
    cfg.commit_interval_ms = 20;
    let store = Store::open(&cfg, "dock-01").unwrap();
    let (tx, rx) = mpsc::channel(1024);
    let (committed_tx, mut committed) = watch::channel(0u64);
    let (ev_tx, mut ev_rx) = tracegate::Observer::channel(1024);
    let writer = spawn_writer(store, rx, committed_tx, Some(ev_tx));

    let mut acks = Vec::new();
    for i in 0..200 {
        let (req, ack) = request(3, T0 + i * 10);
        tx.send(req).await.unwrap();
        acks.push(ack);
    }
    for ack in acks {
        tokio::time::timeout(EVENTUALLY, ack)
            .await
            .unwrap()
            .unwrap();
    }
    // Every ack fired means every event is committed and reported.
    tokio::time::timeout(EVENTUALLY, committed.wait_for(|s| *s == 600))
        .await
        .unwrap()
        .unwrap();

    let mut streamed = Vec::new();
    let mut commits = 0;
    while streamed.len() < 600 {
        let batch = tokio::time::timeout(EVENTUALLY, ev_rx.recv())
            .await
            .unwrap()
            .unwrap();
        // A commit never waits for more than commit_max_events (+ the request
        // that crossed the line).
        assert!(batch.len() <= 50 + 3, "batch of {}", batch.len());
        commits += 1;
        streamed.extend(batch);
    }
    assert!(commits >= 600 / 53);
    let seqs: Vec<u64> = streamed.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=600).collect::<Vec<_>>());

    drop(tx);
    tokio::task::spawn_blocking(move || writer.join())
        .await
        .unwrap()
        .unwrap();
    let store = Store::open(&cfg, "dock-01").unwrap();
    assert_eq!(store.events_after(0, 10_000, false).unwrap(), streamed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_commits_as_soon_as_commit_max_events_are_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir, 10 << 20, FullPolicy::DropOldest);
    cfg.commit_max_events = 10;
    cfg.commit_interval_ms = 3_600_000; // an hour: only the count can trigger
    let store = Store::open(&cfg, "dock-01").unwrap();
    let (tx, rx) = mpsc::channel(16);
    let (committed_tx, _committed) = watch::channel(0u64);
    let writer = spawn_writer(store, rx, committed_tx, None);
    let (req, ack) = request(10, T0);
    tx.send(req).await.unwrap();
    tokio::time::timeout(EVENTUALLY, ack)
        .await
        .unwrap()
        .unwrap();
    drop(tx);
    tokio::task::spawn_blocking(move || writer.join())
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_commits_a_lone_event_after_the_interval() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir, 10 << 20, FullPolicy::DropOldest);
    cfg.commit_max_events = 1000;
    cfg.commit_interval_ms = 50;
    let store = Store::open(&cfg, "dock-01").unwrap();
    let (tx, rx) = mpsc::channel(16);
    let (committed_tx, mut committed) = watch::channel(0u64);
    let writer = spawn_writer(store, rx, committed_tx, None);
    let (req, ack) = request(1, T0);
    tx.send(req).await.unwrap();
    // The channel stays open: only the interval can trigger this commit.
    tokio::time::timeout(EVENTUALLY, ack)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(*committed.borrow_and_update(), 1);
    drop(tx);
    tokio::task::spawn_blocking(move || writer.join())
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_commits_everything_queued_when_the_channel_closes() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir, 10 << 20, FullPolicy::DropOldest);
    cfg.commit_max_events = 100_000;
    cfg.commit_interval_ms = 3_600_000;
    let store = Store::open(&cfg, "dock-01").unwrap();
    let (tx, rx) = mpsc::channel(64);
    let (committed_tx, committed) = watch::channel(0u64);
    let writer = spawn_writer(store, rx, committed_tx, None);
    let mut acks = Vec::new();
    for i in 0..20 {
        let (req, ack) = request(5, T0 + i * 100);
        tx.send(req).await.unwrap();
        acks.push(ack);
    }
    drop(tx);
    tokio::task::spawn_blocking(move || writer.join())
        .await
        .unwrap()
        .unwrap();
    for ack in acks {
        ack.await.unwrap();
    }
    assert_eq!(*committed.borrow(), 100);
    let store = Store::open_reader(&cfg, "dock-01").unwrap();
    assert_eq!(store.stats().unwrap().last_seq, 100);
    assert_eq!(store.events_after(0, 1000, false).unwrap().len(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_drop_their_ack_unfired() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir, 64 * 1024, FullPolicy::RejectNew);
    cfg.commit_interval_ms = 5;
    let store = Store::open(&cfg, "dock-01").unwrap();
    let (tx, rx) = mpsc::channel(64);
    let (committed_tx, _committed) = watch::channel(0u64);
    let writer = spawn_writer(store, rx, committed_tx, None);
    let mut fired = 0;
    let mut refused = 0;
    for i in 0..200 {
        let (req, ack) = request(20, T0 + i * 100);
        tx.send(req).await.unwrap();
        match tokio::time::timeout(EVENTUALLY, ack).await.unwrap() {
            Ok(()) => fired += 1,
            Err(_) => refused += 1,
        }
    }
    assert!(fired > 0 && refused > 0, "fired {fired} refused {refused}");
    drop(tx);
    tokio::task::spawn_blocking(move || writer.join())
        .await
        .unwrap()
        .unwrap();
    let store = Store::open(&cfg, "dock-01").unwrap();
    let s = store.stats().unwrap();
    assert_eq!(s.dropped_total, refused * 20);
    assert_eq!(
        store
            .events_after(0, 100_000, false)
            .unwrap()
            .iter()
            .filter(|e| e.event_type != "overflow")
            .count(),
        fired * 20
    );
}

#[test]
fn reader_and_writer_work_concurrently_without_busy_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir, 64 << 20, FullPolicy::DropOldest);
    cfg.commit_interval_ms = 2;
    cfg.commit_max_events = 64;
    let store = Store::open(&cfg, "dock-01").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (tx, rx) = mpsc::channel(256);
    let (committed_tx, committed) = watch::channel(0u64);
    let writer = spawn_writer(store, rx, committed_tx, None);
    const N: u64 = 5000;

    // The publisher's loop: read pending, "publish", raise the watermark.
    let reader_cfg = cfg.clone();
    let publisher = std::thread::spawn(move || {
        let mut reader = Store::open_reader(&reader_cfg, "dock-01").unwrap();
        let mut seen = Vec::new();
        let mut last = 0;
        let deadline = std::time::Instant::now() + EVENTUALLY;
        while last < N {
            assert!(
                std::time::Instant::now() < deadline,
                "reader stuck at {last}"
            );
            let evs = reader.events_after(last, 100, true).unwrap();
            for e in &evs {
                assert!(e.seq > last, "out of order");
                last = e.seq;
                seen.push(e.seq);
            }
            if let Some(e) = evs.last() {
                reader.mark_published(e.seq).unwrap();
            }
            // The CLI's view at the same time.
            let s = reader.stats().unwrap();
            assert!(s.published_upto <= s.last_seq);
        }
        seen
    });

    rt.block_on(async {
        for i in 0..N {
            tx.send(WriteRequest {
                drafts: vec![draft(T0 + i as i64)],
                ack: None,
            })
            .await
            .unwrap();
        }
    });
    drop(tx);
    writer.join().unwrap();
    assert_eq!(*committed.borrow(), N);
    let seen = publisher.join().unwrap();
    assert_eq!(seen, (1..=N).collect::<Vec<_>>());
    let store = Store::open(&cfg, "dock-01").unwrap();
    let s = store.stats().unwrap();
    assert_eq!((s.last_seq, s.published_upto, s.pending), (N, N, 0));
}

#[test]
fn idle_writer_keeps_its_heartbeat_fresh() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, 10 << 20, FullPolicy::DropOldest);
    let store = Store::open(&cfg, "dock-01").unwrap();
    let beats = tracegate::heartbeat::Heartbeats::new(tracegate_drivers::Clock::new());
    let hb = beats.register("store-writer");
    let (tx, rx) = mpsc::channel(4);
    let (committed_tx, _committed) = watch::channel(0u64);
    let writer = tracegate::store::spawn_writer_with_heartbeat(store, rx, committed_tx, None, hb);
    // Idle for several wake periods: the writer is alive, so it must beat.
    std::thread::sleep(Duration::from_millis(3500));
    let (_, age) = beats.ages()[0];
    assert!(age < 3000, "writer idle for 3.5 s, heartbeat {age} ms old");
    drop(tx);
    writer.join().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_prunes_published_events_past_retention_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir, 10 << 20, FullPolicy::DropOldest);
    cfg.retention_secs = 1;
    let store = Store::open(&cfg, "dock-01").unwrap();
    let (tx, rx) = mpsc::channel(16);
    let (committed_tx, mut committed) = watch::channel(0u64);
    let writer = spawn_writer(store, rx, committed_tx, None);
    let (req, ack) = request(10, chrono::Utc::now().timestamp_millis() - 60_000);
    tx.send(req).await.unwrap();
    ack.await.unwrap();
    committed.wait_for(|s| *s == 10).await.unwrap();
    let mut reader = Store::open_reader(&cfg, "dock-01").unwrap();
    reader.mark_published(6).unwrap();
    // The writer prunes every 10 s; nobody calls prune here.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left: Vec<u64> = reader
            .events_after(0, 100, false)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        if left == (7..=10).collect::<Vec<_>>() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never pruned: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(tx);
    tokio::task::spawn_blocking(move || writer.join())
        .await
        .unwrap()
        .unwrap();
}
