//! The group-commit writer thread, the watermark it persists, the stats it
//! publishes, and the reader thread working beside it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod store_common;

use std::time::Duration;

use store_common::*;
use tokio::sync::mpsc;
use tracegate::store::{
    spawn_writer, FullPolicy, Store, StoreConfig, StoreReader, StoredEvent, WriteRequest, Writer,
};
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

/// A writer over a fresh store opened with `cfg`, its request channel
/// holding `capacity` requests, and the receiving end of its committed
/// events (one item per commit).
fn observed_writer(
    cfg: &StoreConfig,
    capacity: usize,
) -> (
    mpsc::Sender<WriteRequest>,
    mpsc::Receiver<Vec<StoredEvent>>,
    Writer,
) {
    let store = Store::open(cfg, "dock-01").unwrap();
    let (tx, rx) = mpsc::channel(capacity);
    let (ev_tx, ev_rx) = tracegate::Observer::channel(1024);
    let w = spawn_writer(store, rx, Some(ev_tx), None).unwrap();
    (tx, ev_rx, w)
}

/// Closes the writer's inputs (the caller has dropped its sender) and waits
/// for the thread, off the runtime.
async fn finish(w: Writer) {
    drop(w.watermark);
    let handle = w.handle;
    tokio::task::spawn_blocking(move || handle.join())
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_fires_acks_reports_seq_and_streams_committed_events() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir, 10 << 20, FullPolicy::DropOldest);
    cfg.commit_max_events = 50;
    let (tx, mut ev_rx, w) = observed_writer(&cfg, 1024);
    let mut committed = w.committed.clone();

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
    while streamed.len() < 600 {
        let batch = tokio::time::timeout(EVENTUALLY, ev_rx.recv())
            .await
            .unwrap()
            .unwrap();
        // A commit takes at most commit_max_events (+ the request that
        // crossed the line).
        assert!(batch.len() <= 50 + 3, "batch of {}", batch.len());
        streamed.extend(batch);
    }
    let seqs: Vec<u64> = streamed.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=600).collect::<Vec<_>>());

    drop(tx);
    finish(w).await;
    let store = Store::open(&cfg, "dock-01").unwrap();
    assert_eq!(store.events_after(0, 10_000, false).unwrap(), streamed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_writer_commits_a_lone_event_at_once_without_waiting_for_an_interval() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir, 10 << 20, FullPolicy::DropOldest);
    cfg.commit_max_events = 1000;
    // An hour: a writer that waited for the interval would time out below.
    cfg.commit_interval_ms = 3_600_000;
    let store = Store::open(&cfg, "dock-01").unwrap();
    let (tx, rx) = mpsc::channel(16);
    let w = spawn_writer(store, rx, None, None).unwrap();
    let (req, ack) = request(1, T0);
    tx.send(req).await.unwrap();
    // The channel stays open and far below commit_max_events.
    tokio::time::timeout(EVENTUALLY, ack)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(*w.committed.borrow(), 1);
    drop(tx);
    finish(w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_waiting_out_its_interval_commits_at_once_when_the_channel_closes() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir, 10 << 20, FullPolicy::DropOldest);
    // An hour: the writer sleeps while a group fills, and must still notice
    // shutdown instead of sleeping the interval out.
    cfg.commit_interval_ms = 3_600_000;
    let store = Store::open(&cfg, "dock-01").unwrap();
    let (tx, rx) = mpsc::channel(16);
    let mut w = spawn_writer(store, rx, None, None).unwrap();
    let (req, ack) = request(1, T0);
    tx.send(req).await.unwrap();
    ack.await.unwrap();
    let (req, ack) = request(2, T0 + 1);
    tx.send(req).await.unwrap();
    drop(tx);
    tokio::time::timeout(EVENTUALLY, w.handle.drained())
        .await
        .unwrap();
    tokio::time::timeout(EVENTUALLY, ack)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(*w.committed.borrow(), 3);
    finish(w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_reaching_commit_max_events_does_not_wait_out_the_interval() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir, 10 << 20, FullPolicy::DropOldest);
    cfg.commit_interval_ms = 3_600_000;
    cfg.commit_max_events = 10;
    let store = Store::open(&cfg, "dock-01").unwrap();
    let (tx, rx) = mpsc::channel(64);
    let w = spawn_writer(store, rx, None, None).unwrap();
    let (req, ack) = request(1, T0);
    tx.send(req).await.unwrap();
    ack.await.unwrap();
    // The next group fills up while the writer sleeps in its interval.
    let mut acks = Vec::new();
    for i in 0..10 {
        let (req, ack) = request(1, T0 + 1 + i);
        tx.send(req).await.unwrap();
        acks.push(ack);
    }
    for ack in acks {
        tokio::time::timeout(EVENTUALLY, ack)
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(*w.committed.borrow(), 11);
    drop(tx);
    finish(w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_queued_before_a_commit_are_grouped_up_to_commit_max_events() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir, 10 << 20, FullPolicy::DropOldest);
    cfg.commit_max_events = 30;
    let store = Store::open(&cfg, "dock-01").unwrap();
    let (tx, rx) = mpsc::channel(128);
    // Queue 100 single-event requests before the writer exists: this is
    // what piles up while a commit is running.
    for i in 0..100 {
        tx.try_send(WriteRequest {
            drafts: vec![draft(T0 + i)],
            ack: None,
        })
        .unwrap();
    }
    let (ev_tx, mut ev_rx) = tracegate::Observer::channel(1024);
    let w = spawn_writer(store, rx, Some(ev_tx), None).unwrap();
    let mut sizes = Vec::new();
    while sizes.iter().sum::<usize>() < 100 {
        let batch = tokio::time::timeout(EVENTUALLY, ev_rx.recv())
            .await
            .unwrap()
            .unwrap();
        sizes.push(batch.len());
    }
    assert_eq!(sizes, vec![30, 30, 30, 10], "one transaction per group");
    drop(tx);
    finish(w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_writer_starts_at_most_one_commit_per_commit_interval() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir, 10 << 20, FullPolicy::DropOldest);
    cfg.commit_interval_ms = 300;
    let (tx, mut ev_rx, w) = observed_writer(&cfg, 16);
    let (req, ack) = request(1, T0);
    tx.send(req).await.unwrap();
    ack.await.unwrap();
    let first = std::time::Instant::now();
    // Two more right behind it: they wait for the interval, then share one commit.
    let mut acks = Vec::new();
    for i in 1..3 {
        let (req, ack) = request(1, T0 + i);
        tx.send(req).await.unwrap();
        acks.push(ack);
    }
    for ack in acks {
        ack.await.unwrap();
    }
    assert!(
        first.elapsed() >= Duration::from_millis(200),
        "second commit after {:?}",
        first.elapsed()
    );
    let sizes = [
        ev_rx.recv().await.unwrap().len(),
        ev_rx.recv().await.unwrap().len(),
    ];
    assert_eq!(sizes, [1, 2]);
    drop(tx);
    finish(w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_writer_groups_fresh_events_until_the_oldest_reaches_commit_age() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir, 10 << 20, FullPolicy::DropOldest);
    cfg.commit_interval_ms = 50;
    cfg.commit_age_ms = 600;
    let (tx, mut ev_rx, w) = observed_writer(&cfg, 16);

    // Idle: committed at once, however fresh.
    let (req, ack) = request(1, tracegate_drivers::clock::utc_now_ms());
    let sent = std::time::Instant::now();
    tx.send(req).await.unwrap();
    ack.await.unwrap();
    assert!(
        sent.elapsed() < Duration::from_millis(500),
        "idle commit took {:?}",
        sent.elapsed()
    );

    // Busy (right behind that commit): events that happened just now wait
    // until the oldest of them is 600 ms old, and share one commit.
    let born = tracegate_drivers::clock::utc_now_ms();
    let sent = std::time::Instant::now();
    let mut acks = Vec::new();
    for i in 0..2 {
        let (req, ack) = request(1, born + i);
        tx.send(req).await.unwrap();
        acks.push(ack);
    }
    for ack in acks {
        ack.await.unwrap();
    }
    let waited = sent.elapsed();
    assert!(
        waited >= Duration::from_millis(450),
        "fresh group committed after {waited:?}"
    );
    assert_eq!(ev_rx.recv().await.unwrap().len(), 1);
    assert_eq!(
        ev_rx.recv().await.unwrap().len(),
        2,
        "one commit for the group"
    );

    // Busy again, but the events are older than the age already (a
    // reader's buffered reads): only the interval holds them.
    let sent = std::time::Instant::now();
    let (req, ack) = request(3, born - 60_000);
    tx.send(req).await.unwrap();
    ack.await.unwrap();
    let waited = sent.elapsed();
    assert!(
        waited < Duration::from_millis(450),
        "old events committed after {waited:?}"
    );
    assert_eq!(ev_rx.recv().await.unwrap().len(), 3);
    drop(tx);
    finish(w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_commits_everything_queued_when_the_channel_closes() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir, 10 << 20, FullPolicy::DropOldest);
    cfg.commit_max_events = 100_000;
    let store = Store::open(&cfg, "dock-01").unwrap();
    let (tx, rx) = mpsc::channel(64);
    let mut w = spawn_writer(store, rx, None, None).unwrap();
    let mut acks = Vec::new();
    for i in 0..20 {
        let (req, ack) = request(5, T0 + i * 100);
        tx.send(req).await.unwrap();
        acks.push(ack);
    }
    drop(tx);
    // Drained means committed, while the thread still waits for the watermark.
    tokio::time::timeout(EVENTUALLY, w.handle.drained())
        .await
        .unwrap();
    assert_eq!(*w.committed.borrow(), 100);
    for ack in acks {
        ack.await.unwrap();
    }
    let committed = w.committed.clone();
    finish(w).await;
    assert_eq!(*committed.borrow(), 100);
    let store = Store::open_reader(&cfg, "dock-01").unwrap();
    assert_eq!(store.stats().unwrap().last_seq, 100);
    assert_eq!(store.events_after(0, 1000, false).unwrap().len(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_drop_their_ack_unfired() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, tracegate::store::MIN_MAX_BYTES, FullPolicy::RejectNew);
    let store = Store::open(&cfg, "dock-01").unwrap();
    let (tx, rx) = mpsc::channel(64);
    let w = spawn_writer(store, rx, None, None).unwrap();
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
    finish(w).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_loop_over_reader_and_watermark_runs_beside_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir, 64 << 20, FullPolicy::DropOldest);
    cfg.commit_max_events = 64;
    let store = Store::open(&cfg, "dock-01").unwrap();
    let (tx, rx) = mpsc::channel(256);
    let w = spawn_writer(store, rx, None, None).unwrap();
    let reader = StoreReader::spawn(Store::open_reader(&cfg, "dock-01").unwrap()).unwrap();
    const N: u64 = 5000;

    // The publisher's loop: read what is committed, "publish", raise the
    // watermark. Reads and the watermark never touch the writer's lock.
    let Writer {
        committed,
        stats,
        watermark,
        handle,
    } = w;
    let publisher = tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut last = 0;
        let deadline = std::time::Instant::now() + EVENTUALLY;
        while last < N {
            assert!(
                std::time::Instant::now() < deadline,
                "reader stuck at {last}"
            );
            let evs = reader.read_after(last, 100).await.unwrap();
            for e in &evs {
                assert!(e.seq > last, "out of order");
                last = e.seq;
                seen.push(e.seq);
            }
            watermark.advance(last);
            let s = reader.stats().await.unwrap();
            assert!(s.published_upto <= s.last_seq);
            if evs.is_empty() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        // Dropping the watermark (and the reader) lets the writer finish.
        seen
    });

    for i in 0..N {
        tx.send(WriteRequest {
            drafts: vec![draft(T0 + i as i64)],
            ack: None,
        })
        .await
        .unwrap();
    }
    drop(tx);
    let seen = publisher.await.unwrap();
    assert_eq!(seen, (1..=N).collect::<Vec<_>>());
    tokio::task::spawn_blocking(move || handle.join())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(*committed.borrow(), N);
    let last_stats = stats.borrow().clone();
    assert_eq!(
        (last_stats.last_seq, last_stats.published_upto),
        (N, N),
        "the final stats include the final watermark"
    );
    let store = Store::open(&cfg, "dock-01").unwrap();
    let s = store.stats().unwrap();
    assert_eq!((s.last_seq, s.published_upto, s.pending), (N, N, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_persists_the_last_watermark_only_after_the_handle_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, 10 << 20, FullPolicy::DropOldest);
    let store = Store::open(&cfg, "dock-01").unwrap();
    let (tx, rx) = mpsc::channel(16);
    let mut w = spawn_writer(store, rx, None, None).unwrap();
    let (req, ack) = request(10, T0);
    tx.send(req).await.unwrap();
    ack.await.unwrap();
    drop(tx);
    w.handle.drained().await;
    // The publisher's last PUBACKs arrive after the pipeline has stopped.
    w.watermark.advance(4);
    w.watermark.advance(9);
    w.watermark.advance(7); // lower: ignored
    assert_eq!(w.watermark.get(), 9);
    let mut stats = w.stats.clone();
    finish(w).await;
    let s = stats.borrow_and_update().clone();
    assert_eq!((s.published_upto, s.pending), (9, 1));
    let store = Store::open_reader(&cfg, "dock-01").unwrap();
    assert_eq!(store.stats().unwrap().published_upto, 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_watch_follows_commits_and_the_watermark_without_a_query() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, 10 << 20, FullPolicy::DropOldest);
    let mut store = Store::open(&cfg, "dock-01").unwrap();
    store
        .append((0..3).map(|i| draft(T0 + i)).collect())
        .unwrap();
    let (tx, rx) = mpsc::channel(16);
    let w = spawn_writer(store, rx, None, None).unwrap();
    // True from the start, not zeros until the first commit.
    assert_eq!(w.stats.borrow().last_seq, 3);
    assert_eq!(*w.committed.borrow(), 3);

    let (req, ack) = request(10, T0 + 100);
    tx.send(req).await.unwrap();
    ack.await.unwrap();
    w.watermark.advance(5);
    let mut stats = w.stats.clone();
    let s = tokio::time::timeout(
        EVENTUALLY,
        stats.wait_for(|s| s.last_seq == 13 && s.published_upto == 5),
    )
    .await
    .unwrap()
    .unwrap()
    .clone();
    assert_eq!(s.pending, 8);
    assert_eq!(s.oldest_pending_utc_ms, Some(T0 + 100 + 2));
    assert!(s.bytes > 0);
    drop(tx);
    finish(w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_reader_thread_answers_reads_stats_and_many_concurrent_callers() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, 10 << 20, FullPolicy::DropOldest);
    let mut store = Store::open(&cfg, "dock-01").unwrap();
    store
        .append((0..5).map(|i| draft(T0 + i)).collect())
        .unwrap();
    let reader = StoreReader::spawn(Store::open_reader(&cfg, "dock-01").unwrap()).unwrap();
    let evs = reader.read_after(2, 10).await.unwrap();
    assert_eq!(evs.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3, 4, 5]);
    assert_eq!(reader.stats().await.unwrap().last_seq, 5);
    // Many callers at once share the one connection; each gets its answer.
    let answers = concurrent_reads(&reader).await;
    assert!(answers.iter().all(|n| *n == 5));
}

/// 200 concurrent reads through clones of one handle (more than the queue holds).
async fn concurrent_reads(reader: &StoreReader) -> Vec<usize> {
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let r = reader.clone();
            tokio::spawn(async move { r.read_after(0, 100).await.unwrap().len() })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[test]
fn idle_writer_keeps_its_heartbeat_fresh() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, 10 << 20, FullPolicy::DropOldest);
    let store = Store::open(&cfg, "dock-01").unwrap();
    let beats = tracegate::heartbeat::Heartbeats::new(tracegate_drivers::Clock::new());
    let hb = beats.register("store-writer");
    let (tx, rx) = mpsc::channel(4);
    let w = spawn_writer(store, rx, None, Some(hb)).unwrap();
    // Idle for several wake periods: the writer is alive, so it must beat.
    std::thread::sleep(Duration::from_millis(3500));
    let (_, age) = beats.ages()[0];
    assert!(age < 3000, "writer idle for 3.5 s, heartbeat {age} ms old");
    drop(tx);
    drop(w.watermark);
    w.handle.join().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_prunes_published_events_past_retention_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir, 10 << 20, FullPolicy::DropOldest);
    cfg.retention_secs = 1;
    let store = Store::open(&cfg, "dock-01").unwrap();
    let (tx, rx) = mpsc::channel(16);
    let w = spawn_writer(store, rx, None, None).unwrap();
    let (req, ack) = request(10, chrono::Utc::now().timestamp_millis() - 60_000);
    tx.send(req).await.unwrap();
    ack.await.unwrap();
    w.watermark.advance(6);
    let reader = Store::open_reader(&cfg, "dock-01").unwrap();
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
    finish(w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_reads_from_the_writers_recent_commits_equal_what_sqlite_returns() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, 10 << 20, FullPolicy::DropOldest);
    let store = Store::open(&cfg, "dock-01").unwrap();
    let (tx, rx) = mpsc::channel(16);
    let w = spawn_writer(store, rx, None, None).unwrap();
    let sql = StoreReader::spawn(Store::open_reader(&cfg, "dock-01").unwrap()).unwrap();
    let memory = StoreReader::spawn(Store::open_reader(&cfg, "dock-01").unwrap())
        .unwrap()
        .with_recent(w.handle.recent());
    for i in 0..3 {
        let (req, ack) = request(5, T0 + i * 10);
        tx.send(req).await.unwrap();
        ack.await.unwrap();
    }
    for (after, limit) in [(0, 100), (0, 4), (3, 4), (7, 100), (14, 100), (15, 100)] {
        assert_eq!(
            memory.read_after(after, limit).await.unwrap(),
            sql.read_after(after, limit).await.unwrap(),
            "after {after}, limit {limit}"
        );
    }
    drop(tx);
    finish(w).await;
}
