//! The publisher process is SIGKILLed mid-stream and restarted: nothing is
//! lost, because the watermark only moves after PUBACK and a restart resends
//! everything above it. The publisher runs in a child process: this test
//! binary re-executed with `publisher_child_process`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::*;
use tracegate::store::{FullPolicy, Store, StoreConfig};

const ENV_DB: &str = "TRACEGATE_MQTT_CHILD_DB";
const ENV_URL: &str = "TRACEGATE_MQTT_CHILD_URL";

/// Entry point of the child process (run only by the test below).
#[test]
#[ignore = "child process of publisher_killed_with_sigkill_and_restarted_loses_nothing"]
fn publisher_child_process() {
    let (Ok(db), Ok(url)) = (std::env::var(ENV_DB), std::env::var(ENV_URL)) else {
        return;
    };
    let dir = std::path::PathBuf::from(db);
    let store_cfg = store_config(&dir, 512 * 1024 * 1024, FullPolicy::DropOldest);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        // No writer in this process: follow the store's last seq instead.
        let (tx, rx) = tokio::sync::watch::channel(0u64);
        let cfg2 = store_cfg.clone();
        tokio::spawn(async move {
            let reader = Store::open_reader(&cfg2, GATEWAY).unwrap();
            loop {
                if let Ok(s) = reader.stats() {
                    tx.send_replace(s.last_seq);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        // Nor a writer to persist the watermark: a connection of its own
        // does it here (the parent's writer keeps committing events).
        let mut marker = Store::open_reader(&store_cfg, GATEWAY).unwrap();
        let (watermark, wm) = tracegate::store::Watermark::channel(0);
        std::thread::spawn(move || {
            let mut marked = 0;
            loop {
                let upto = *wm.borrow();
                if upto > marked {
                    marker.mark_published(upto).unwrap();
                    marked = upto;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let (ctx, _stats) = context(&store_cfg, rx, watermark);
        let (_cancel, task) = spawn_publisher(mqtt_config(&url), ctx);
        task.await.unwrap().unwrap();
    });
}

fn spawn_child(store_dir: &std::path::Path, url: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "publisher_child_process",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ENV_DB, store_dir)
        .env(ENV_URL, url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn sigkill(child: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    child.wait().unwrap();
}

fn published_upto(cfg: &StoreConfig) -> u64 {
    Store::open_reader(cfg, GATEWAY)
        .unwrap()
        .stats()
        .unwrap()
        .published_upto
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_killed_with_sigkill_and_restarted_loses_nothing() {
    if !mosquitto_available() {
        return;
    }
    let broker = Mosquitto::start();
    let registry = Registry::start(broker.addr(), "tracegate/+/+/events").await;
    let dir = tempfile::tempdir().unwrap();
    let store_cfg = store_config(dir.path(), 512 * 1024 * 1024, FullPolicy::DropOldest);
    let mut writer = Writer::start(&store_cfg);

    const KILLS: u64 = 3;
    // Events keep committing (500 every 20 ms) until the last restart, so
    // every kill lands while the publisher has messages in flight.
    let tx = writer.tx.clone().unwrap();
    let streaming = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let go = streaming.clone();
    let feeder = tokio::spawn(async move {
        let mut i = 0u64;
        while go.load(std::sync::atomic::Ordering::Relaxed) || i < 40_000 {
            let drafts = (i..i + 500).map(draft).collect();
            tx.send(tracegate::store::WriteRequest { drafts, ack: None })
                .await
                .unwrap();
            i += 500;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        i
    });
    let mut child = spawn_child(dir.path(), &broker.url());
    let mut watermarks = Vec::new();
    for _ in 0..KILLS {
        let seen = registry.got.lock().unwrap().unique.len();
        registry
            .wait_until(Duration::from_secs(60), "progress before the kill", |r| {
                r.unique.len() >= seen + 2_000
            })
            .await;
        tokio::task::block_in_place(|| sigkill(&mut child));
        watermarks.push(published_upto(&store_cfg));
        // Dead for a while: events pile up.
        tokio::time::sleep(Duration::from_millis(200)).await;
        child = spawn_child(dir.path(), &broker.url());
    }
    streaming.store(false, std::sync::atomic::Ordering::Relaxed);
    let appended = feeder.await.unwrap();
    writer.wait_committed(appended).await;
    registry
        .wait_until(
            Duration::from_secs(120),
            "everything after the kills",
            |r| r.unique.len() as u64 >= appended,
        )
        .await;
    tokio::task::block_in_place(|| sigkill(&mut child));
    writer.stop();

    let expected = store_ids(&store_cfg);
    {
        let got = registry.got.lock().unwrap();
        let missing: HashSet<_> = expected.difference(&got.unique).collect();
        assert!(
            missing.is_empty(),
            "{} events missing after SIGKILLs",
            missing.len()
        );
        assert_eq!(got.unique.len(), expected.len());
        // The kills happened mid-stream, with the watermark between 0 and the end.
        assert!(
            watermarks.iter().all(|&w| w < appended),
            "watermarks at the kills: {watermarks:?}"
        );
        assert!(
            watermarks.windows(2).all(|w| w[0] <= w[1]),
            "watermark went backwards: {watermarks:?}"
        );
        println!(
            "kills={KILLS} events={appended} duplicates={} watermarks={watermarks:?}",
            got.duplicates()
        );
    }
    registry.stop().await;

    // The publisher vanished without DISCONNECT: the broker published the
    // last will, retained, so a newcomer learns the gateway is offline.
    let late = Registry::start(broker.addr(), "tracegate/+/+/status").await;
    late.wait_until(Duration::from_secs(10), "retained status", |r| {
        !r.statuses.is_empty()
    })
    .await;
    let st = late.got.lock().unwrap().statuses[0].clone();
    assert_eq!(st["online"], false, "{st}");
    assert_eq!(st["reason"], "connection lost", "{st}");
    assert_valid(&events_schema(), &st);
    late.stop().await;
}
