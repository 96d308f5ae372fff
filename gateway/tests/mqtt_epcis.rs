//! `payload_format = "epcis2"` end to end: a simulated portal runs through
//! the real gateway (`tracegate::run_with`), the publisher sends EPCIS 2.0
//! documents to a real mosquitto, and every received `eventID` is
//! recomputed with the CBV 2.0 hash algorithm (the port in tracegate-gs1
//! that reproduces the reference implementation's vectors).
#![cfg(feature = "demo-broker")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::Mosquitto;
use tokio_util::sync::CancellationToken;
use tracegate::publish::embedded;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_epcis_documents_carry_reproducible_hash_ids() {
    if !support::mosquitto_available() {
        return;
    }
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
[gateway]
id = "epcis-gw"
site = "plant2"
data_dir = "{}"

[[readers]]
name = "tunnel"
kind = "sim"
antennas = [1, 2]
read_rate = 1000
arrival_interval_ms = 50
dwell_ms = 300
max_tags = 20

[[read_points]]
name = "line-3"
reader = "tunnel"
biz_step = "commissioning"
disposition = "active"
action = "add"
read_point_id = "urn:epc:id:sgln:0614141.00888.3"
biz_location = "urn:epc:id:sgln:0614141.00888.0"

[dedup]
departure_timeout_ms = 200

[mqtt]
url = "{}"
payload_format = "epcis2"
linger_ms = 5

[ops]
metrics_addr = "off"
"#,
        dir.path().display(),
        broker.url()
    );
    let config = tracegate::config::parse(&text, "epcis.toml").unwrap();

    let docs = Arc::new(Mutex::new(Vec::<serde_json::Value>::new()));
    let sub_cancel = CancellationToken::new();
    let addr = format!("127.0.0.1:{}", broker.port).parse().unwrap();
    let d = docs.clone();
    let sub = tokio::spawn(embedded::subscribe(
        addr,
        "tracegate/plant2/epcis-gw/events",
        sub_cancel.clone(),
        move |_topic, payload| {
            d.lock()
                .unwrap()
                .push(serde_json::from_slice(payload).unwrap());
        },
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let shutdown = CancellationToken::new();
    let gateway = tokio::spawn(tracegate::run_with(
        config,
        shutdown.clone(),
        tracegate::RunOptions::default(),
    ));
    // 20 tags arrive and depart: 40 ObjectEvents.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let count = |docs: &[serde_json::Value]| -> usize {
        docs.iter()
            .map(|d| d["epcisBody"]["eventList"].as_array().map_or(0, Vec::len))
            .sum()
    };
    while count(&docs.lock().unwrap()) < 40 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} events received",
            count(&docs.lock().unwrap())
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    gateway.await.unwrap().unwrap();
    sub_cancel.cancel();
    sub.await.unwrap().unwrap();

    let docs = docs.lock().unwrap();
    let mut adds = 0;
    for doc in docs.iter() {
        assert_eq!(doc["type"], "EPCISDocument");
        assert_eq!(doc["schemaVersion"], "2.0");
        let recomputed = tracegate_gs1::epcis::document_hashes(doc).unwrap();
        let events = doc["epcisBody"]["eventList"].as_array().unwrap();
        for (ev, hash) in events.iter().zip(&recomputed) {
            assert_eq!(&ev["eventID"], hash, "eventID must be the CBV 2.0 hash");
            assert!(ev["epcList"][0]
                .as_str()
                .unwrap()
                .starts_with("urn:epc:id:sgtin:0614141.812345."));
            assert_eq!(ev["bizStep"], "commissioning");
            assert_eq!(ev["readPoint"]["id"], "urn:epc:id:sgln:0614141.00888.3");
            assert!(ev["tg:eventId"].as_str().unwrap().starts_with("epcis-gw:"));
            if ev["action"] == "ADD" {
                adds += 1;
                assert_eq!(ev["tg:eventType"], "arrived");
            } else {
                assert_eq!(ev["action"], "OBSERVE");
            }
        }
    }
    assert_eq!(adds, 20, "one ADD per commissioned tag");
}
