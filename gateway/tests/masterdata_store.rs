//! Master data in the store: applied by the writer thread between event
//! commits, kept across restarts, old or new after a crash, never a mix.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use support::*;
use tokio::sync::{mpsc, oneshot};
use tracegate::masterdata::format::{build, Built, Scope};
use tracegate::store::masterdata::{read_active, MasterdataJob};
use tracegate::store::{spawn_writer, FullPolicy, Store, WriteRequest};

fn dataset(version: u64, size: usize) -> Built {
    let key = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
    let line = b"{\"t\":\"commissioned\",\"gtin\":\"09506000134352\",\"from\":1,\"to\":9}\n";
    let payload: Vec<u8> = line
        .iter()
        .copied()
        .cycle()
        .take(line.len() * (size / line.len()))
        .collect();
    build(
        &key,
        "commissioned",
        version,
        Scope::default(),
        "",
        &payload,
        4096,
    )
    .unwrap()
}

fn job(
    b: &Built,
) -> (
    MasterdataJob,
    oneshot::Receiver<Result<tracegate::store::masterdata::ApplyReport, String>>,
) {
    let (tx, rx) = oneshot::channel();
    (
        MasterdataJob {
            name: b.manifest.name.clone(),
            version: b.manifest.version,
            manifest: b.frame.clone(),
            chunks: b.chunks.clone(),
            reply: tx,
        },
        rx,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dataset_is_applied_between_event_commits_and_kept_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = store_config(dir.path(), 64 * 1024 * 1024, FullPolicy::DropOldest);
    let mut store = Store::open(&cfg, GATEWAY).unwrap();
    assert!(store.masterdata_load().unwrap().is_empty());
    let jobs = store.masterdata_channel();
    let (tx, rx) = mpsc::channel::<WriteRequest>(64);
    let w = spawn_writer(store, rx, None, None).unwrap();

    let v1 = dataset(1, 200_000);
    let (j, reply) = job(&v1);
    jobs.send(j).await.unwrap();
    // Events keep committing while the 49 chunks are staged.
    for i in 0..20 {
        tx.send(WriteRequest {
            drafts: vec![draft(i)],
            ack: None,
        })
        .await
        .unwrap();
    }
    let report = tokio::time::timeout(Duration::from_secs(30), reply)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(report.transactions as usize, v1.chunks.len() + 1);
    let active = read_active(&cfg.path).unwrap();
    assert_eq!(active.len(), 1);
    assert_eq!((active[0].version, &active[0].chunks), (1, &v1.chunks));

    // An older version is refused by the store too.
    let (j, reply) = job(&dataset(1, 1000));
    jobs.send(j).await.unwrap();
    assert!(reply.await.unwrap().is_err());
    // A newer one replaces it, and the old chunks are deleted after the
    // switch, a few per transaction.
    let v2 = dataset(2, 10_000);
    let (j, reply) = job(&v2);
    jobs.send(j).await.unwrap();
    reply.await.unwrap().unwrap();
    let md = rusqlite::Connection::open(tracegate::store::masterdata::path_for(&cfg.path)).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let rows: i64 = md
            .query_row("SELECT count(*) FROM chunks", [], |r| r.get(0))
            .unwrap();
        if rows as usize == v2.chunks.len() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{rows} chunk rows left"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(md);
    drop((tx, jobs, w.watermark));
    let committed = *w.committed.borrow();
    tokio::task::spawn_blocking(move || w.handle.join())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(committed, 20);

    let mut again = Store::open(&cfg, GATEWAY).unwrap();
    let loaded = again.masterdata_load().unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(
        (loaded[0].version, &loaded[0].chunks, &loaded[0].manifest),
        (2, &v2.chunks, &v2.frame)
    );
    // The event store's size does not include master data.
    assert!(again.stats().unwrap().bytes < 1024 * 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_staged_for_an_apply_that_never_finished_are_dropped_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = store_config(dir.path(), 64 * 1024 * 1024, FullPolicy::DropOldest);
    let mut store = Store::open(&cfg, GATEWAY).unwrap();
    store.masterdata_load().unwrap();
    let jobs = store.masterdata_channel();
    let (tx, rx) = mpsc::channel::<WriteRequest>(64);
    let w = spawn_writer(store, rx, None, None).unwrap();
    let v1 = dataset(1, 5_000);
    let (j, reply) = job(&v1);
    jobs.send(j).await.unwrap();
    reply.await.unwrap().unwrap();
    // A job whose chunk list does not match its staged count cannot switch:
    // here the writer stops before the big job finishes.
    let big = dataset(2, 2_000_000);
    let (j, _reply) = job(&big);
    jobs.send(j).await.unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    drop((tx, jobs, w.watermark));
    tokio::task::spawn_blocking(move || w.handle.join())
        .await
        .unwrap()
        .unwrap();
    let mut again = Store::open(&cfg, GATEWAY).unwrap();
    let loaded = again.masterdata_load().unwrap();
    // Old or new, never a mix: each is complete.
    assert_eq!(loaded.len(), 1);
    let want = if loaded[0].version == 1 { &v1 } else { &big };
    assert_eq!(loaded[0].chunks, want.chunks);
    let conn =
        rusqlite::Connection::open(tracegate::store::masterdata::path_for(&cfg.path)).unwrap();
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM chunks", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        rows as usize,
        want.chunks.len(),
        "unfinished chunks left behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_larger_than_a_piece_are_staged_in_pieces_and_read_back_whole() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = store_config(dir.path(), 64 * 1024 * 1024, FullPolicy::DropOldest);
    let mut store = Store::open(&cfg, GATEWAY).unwrap();
    store.masterdata_load().unwrap();
    let jobs = store.masterdata_channel();
    let (tx, rx) = mpsc::channel::<WriteRequest>(64);
    let w = spawn_writer(store, rx, None, None).unwrap();
    let key = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
    let line = b"{\"t\":\"commissioned\",\"gtin\":\"09506000134352\",\"from\":1,\"to\":9}\n";
    let payload: Vec<u8> = line
        .iter()
        .copied()
        .cycle()
        .take(line.len() * 8000)
        .collect();
    let b = build(&key, "big", 1, Scope::default(), "", &payload, 200_000).unwrap();
    let (j, reply) = job(&b);
    jobs.send(j).await.unwrap();
    let report = reply.await.unwrap().unwrap();
    let pieces: usize = b
        .chunks
        .iter()
        .map(|c| c.len().div_ceil(tracegate::store::masterdata::PIECE))
        .sum();
    assert_eq!(report.transactions as usize, pieces + 1);
    let active = read_active(&cfg.path).unwrap();
    assert_eq!(active[0].chunks, b.chunks);
    drop((tx, jobs, w.watermark));
    tokio::task::spawn_blocking(move || w.handle.join())
        .await
        .unwrap()
        .unwrap();
}

/// A second dataset applied before the first one's old chunks are cleaned
/// up keeps its own chunks (the first cleanup once deleted every chunk not
/// of *its* version, the new dataset's included).
#[test]
fn a_second_apply_before_the_first_cleanup_keeps_the_new_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = store_config(dir.path(), 64 * 1024 * 1024, FullPolicy::DropOldest);
    let mut store = Store::open(&cfg, GATEWAY).unwrap();
    assert!(store.masterdata_load().unwrap().is_empty());
    let (jobs, mut applier) = tracegate::store::masterdata::Applier::channel();
    let (v1, v2) = (dataset(1, 20_000), dataset(2, 10_000));
    let (j, mut reply) = job(&v1);
    jobs.try_send(j).unwrap();
    while reply.try_recv().is_err() {
        store.masterdata_step(&mut applier);
    }
    // v1's cleanup is queued, not run: v2 arrives first.
    let (j, mut reply) = job(&v2);
    jobs.try_send(j).unwrap();
    let report = loop {
        store.masterdata_step(&mut applier);
        if let Ok(r) = reply.try_recv() {
            break r;
        }
    };
    report.unwrap();
    while applier.busy() {
        store.masterdata_step(&mut applier);
    }
    let md = rusqlite::Connection::open(tracegate::store::masterdata::path_for(&cfg.path)).unwrap();
    let rows: Vec<(u64, i64)> = md
        .prepare("SELECT version, count(*) FROM chunks GROUP BY version")
        .unwrap()
        .query_map([], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows, [(2, v2.chunks.len() as i64)]);
    drop(store);
    let mut store = Store::open(&cfg, GATEWAY).unwrap();
    let active = store.masterdata_load().unwrap();
    assert_eq!((active[0].version, &active[0].chunks), (2, &v2.chunks));
}
