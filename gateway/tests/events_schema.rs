//! What the real pipeline commits (the bytes the publisher sends verbatim)
//! matches docs/events.schema.json: a simulated portal with TIDs, direction,
//! re-reports, flags and EPCIS context runs through `tracegate::run_with`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_committed_event_matches_the_published_schema() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
[gateway]
id = "schema-gw"
site = "dc1"
data_dir = "{}"

[[readers]]
name = "portal"
kind = "sim"
read_rate = 2000
arrival_interval_ms = 40
dwell_ms = 400
max_tags = 15
with_tid = true

[[read_points]]
name = "door"
reader = "portal"
direction = {{ outside = 1, inside = 2 }}
expect_patterns = ["urn:epc:pat:sgtin-96:*.0614141.999999.*"]
biz_step = "receiving"
read_point_id = "urn:epc:id:sgln:0614141.00777.1"

[dedup]
departure_timeout_ms = 150
report_interval_ms = 100

[ops]
metrics_addr = "off"
"#,
        dir.path().display()
    );
    let config = tracegate::config::parse(&text, "schema.toml").unwrap();
    // Read only after the run: room for every commit of it.
    let (tx, mut rx) = tracegate::Observer::channel(100_000);
    let shutdown = CancellationToken::new();
    let options = tracegate::RunOptions {
        on_commit: Some(tx),
        ..Default::default()
    };
    let gw = tokio::spawn(tracegate::run_with(config, shutdown.clone(), options));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    shutdown.cancel();
    gw.await.unwrap().unwrap();

    let mut events = Vec::new();
    while let Ok(batch) = rx.try_recv() {
        for e in batch {
            events.push(serde_json::from_str::<serde_json::Value>(&e.payload).unwrap());
        }
    }
    let kinds: std::collections::HashSet<_> = events
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    for k in ["arrived", "present", "departed"] {
        assert!(kinds.contains(k), "no {k} event among {kinds:?}");
    }
    assert!(events.iter().any(|e| e["flags"][0] == "unexpected"));
    assert!(events.iter().any(|e| e["identity"]["tid"].is_string()));
    let batch = serde_json::json!({
        "schema": "tracegate.events/1",
        "gateway": "schema-gw",
        "site": "dc1",
        "events": events,
    });
    support::assert_valid(&support::events_schema(), &batch);
}
