//! A store corrupted in the middle of its outbox: every unpublished event
//! that can still be read reaches a real mosquitto subscriber with its
//! original id, and what could not be read is exactly what the `salvage`
//! event announces.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::HashSet;
use std::time::Duration;

use serde_json::Value;
use support::*;
use tracegate::store::{FullPolicy, Store};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpublished_events_of_a_corrupt_store_reach_the_registry_with_their_ids() {
    if !mosquitto_available() {
        return;
    }
    const N: u64 = 3000;
    let dir = tempfile::tempdir().unwrap();
    let store_cfg = store_config(dir.path(), 64 * 1024 * 1024, FullPolicy::DropOldest);
    let originals: Vec<String> = {
        let mut store = Store::open(&store_cfg, GATEWAY).unwrap();
        let stored = store.append((0..N).map(draft).collect()).unwrap();
        store.checkpoint().unwrap();
        stored.into_iter().map(|e| e.id).collect()
    };
    // A failing SD card: pages in the middle of the outbox are garbage.
    let mut bytes = std::fs::read(&store_cfg.path).unwrap();
    assert!(bytes.len() > 96 * 1024);
    for b in &mut bytes[40 * 1024..72 * 1024] {
        *b = 0xA5;
    }
    std::fs::write(&store_cfg.path, &bytes).unwrap();

    let broker = Mosquitto::start();
    let registry = Registry::start(broker.addr(), "tracegate/#").await;
    // Opening the store finds the damage, moves the file aside and salvages.
    let mut writer = Writer::start(&store_cfg);
    let salvage: Value = {
        let reader = Store::open_reader(&store_cfg, GATEWAY).unwrap();
        let all = reader.events_after(0, 100_000, false).unwrap();
        let last = all.last().unwrap();
        assert_eq!(last.event_type, "salvage");
        serde_json::from_str(&last.payload).unwrap()
    };
    let carried = salvage["carried"].as_u64().unwrap();
    let lost = salvage["lost"].as_u64().unwrap();
    assert_eq!(carried + lost, N, "{salvage}");
    assert!(lost > 0, "the damage cost some events: {salvage}");

    let (ctx, _stats) = context(&store_cfg, writer.committed.clone(), writer.watermark());
    let (cancel, task) = spawn_publisher(mqtt_config(&broker.url()), ctx);
    let original_set: HashSet<&String> = originals.iter().collect();
    registry
        .wait_until(
            Duration::from_secs(60),
            "the carried events and the announcement",
            |r| {
                r.unique
                    .iter()
                    .filter(|id| original_set.contains(id))
                    .count() as u64
                    == carried
                    && r.unique.len() as u64 == carried + 1
            },
        )
        .await;
    cancel.cancel();
    task.await.unwrap().unwrap();
    writer.stop();

    let received = registry.got.lock().unwrap().unique.clone();
    registry.stop().await;
    // The ids that did not arrive are exactly the announced missing seqs.
    let missing: HashSet<u64> = salvage["missing"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r[0].as_u64().unwrap()..=r[1].as_u64().unwrap())
        .collect();
    for (i, id) in originals.iter().enumerate() {
        let seq = i as u64 + 1;
        assert_eq!(
            received.contains(id),
            !missing.contains(&seq),
            "seq {seq} ({id}): received and announced as missing must be exclusive"
        );
    }
}
