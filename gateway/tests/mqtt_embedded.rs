//! The in-process broker of `tracegate demo` (feature `demo-broker`).
#![cfg(feature = "demo-broker")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::*;
use tokio_util::sync::CancellationToken;
use tracegate::publish::embedded;
use tracegate::store::FullPolicy;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_broker_carries_events_from_store_to_subscriber() {
    let (addr, _broker) = embedded::start_broker().unwrap();
    let ids = Arc::new(Mutex::new(HashSet::new()));
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sub_cancel = CancellationToken::new();
    let (i, l) = (ids.clone(), lines.clone());
    let sub = tokio::spawn(embedded::subscribe(
        addr,
        "tracegate/#",
        sub_cancel.clone(),
        move |topic, payload| {
            let v: serde_json::Value = serde_json::from_slice(payload).unwrap();
            if let Some(evs) = v["events"].as_array() {
                for e in evs {
                    i.lock()
                        .unwrap()
                        .insert(e["id"].as_str().unwrap().to_string());
                }
            }
            l.lock()
                .unwrap()
                .extend(embedded::describe_message(topic, payload));
        },
    ));
    // Give the subscription a moment to be in place before events flow.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let dir = tempfile::tempdir().unwrap();
    let store_cfg = store_config(dir.path(), 64 * 1024 * 1024, FullPolicy::DropOldest);
    let mut writer = Writer::start(&store_cfg);
    let (ctx, _stats) = context(&store_cfg, writer.committed.clone(), writer.watermark());
    let (cancel, task) = spawn_publisher(mqtt_config(&format!("mqtt://{addr}")), ctx);
    writer.append(0, 5_000, 100).await;
    writer.wait_committed(5_000).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while ids.lock().unwrap().len() < 5_000 {
        assert!(
            Instant::now() < deadline,
            "only {} of 5000 events through the embedded broker",
            ids.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cancel.cancel();
    task.await.unwrap().unwrap();
    writer.stop();
    sub_cancel.cancel();
    sub.await.unwrap().unwrap();
    assert_eq!(*ids.lock().unwrap(), store_ids(&store_cfg));
    let lines = lines.lock().unwrap();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("arrived urn:epc:id:sgtin:0614141.812345.0 dock-door-1")),
        "printed lines: {:?}",
        &lines[..lines.len().min(3)]
    );
}
