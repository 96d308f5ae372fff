//! Master data end to end against a real mosquitto: the real gateway
//! (`tracegate::run_with`, a simulated portal) receives signed datasets
//! published retained by `tracegate masterdata publish`'s code, applies
//! them, and flags the next events; hostile datasets are refused and the
//! dataset in force keeps working; what was applied survives a restart with
//! the broker down; a dataset published while the gateway was down is
//! applied at its next start.
#![cfg(feature = "demo-broker")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use support::Mosquitto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracegate::masterdata::format::{build, public_key_text, Built, Scope};
use tracegate::masterdata::tool;
use tracegate::store::StoredEvent;

const PREFIX: &str = "tracegate";
/// The largest SGTIN-96 serial.
const MAX_SERIAL: u64 = 274_877_906_943;

struct Gateway {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), tracegate::RunError>>,
    events: mpsc::Receiver<Vec<StoredEvent>>,
    status_addr: std::net::SocketAddr,
}

async fn start(dir: &Path, broker_url: &str, key_file: &Path) -> Gateway {
    let text = format!(
        r#"
[gateway]
id = "gw1"
site = "plant"
data_dir = "{dir}"

[[readers]]
name = "door"
kind = "sim"
antennas = [1, 2]
read_rate = 500
arrival_interval_ms = 100
dwell_ms = 200

[[read_points]]
name = "dock"
reader = "door"

[dedup]
departure_timeout_ms = 300

[mqtt]
url = "{broker_url}"
linger_ms = 5
reconnect_min_ms = 100
reconnect_max_ms = 500

[ops]
metrics_addr = "127.0.0.1:0"

[masterdata]
trusted_keys = ["{key}"]
market = "DE"
"#,
        dir = dir.display(),
        key = key_file.display(),
    );
    let config = tracegate::config::parse(&text, "md.toml").unwrap();
    let (observer, events) = tracegate::Observer::channel(10_000);
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(tracegate::run_with(
        config,
        shutdown.clone(),
        tracegate::RunOptions {
            on_commit: Some(observer),
            ready: Some(ready_tx),
            ..tracegate::RunOptions::default()
        },
    ));
    let status_addr = ready_rx.await.unwrap().unwrap();
    Gateway {
        shutdown,
        task,
        events,
        status_addr,
    }
}

impl Gateway {
    /// The next committed event matching `pred`, within `within`.
    async fn next(
        &mut self,
        within: Duration,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let batch = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .unwrap_or_else(|_| panic!("no {what} within {within:?}"))
                .unwrap();
            for e in batch {
                let v: serde_json::Value = serde_json::from_str(&e.payload).unwrap();
                if pred(&v) {
                    return v;
                }
            }
        }
    }

    async fn arrival(&mut self, within: Duration) -> serde_json::Value {
        self.next(within, "arrival", |v| v["type"] == "arrived")
            .await
    }

    async fn status(&self) -> serde_json::Value {
        let mut s = tokio::net::TcpStream::connect(self.status_addr)
            .await
            .unwrap();
        s.write_all(b"GET /status HTTP/1.0\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        let text = String::from_utf8(buf).unwrap();
        let body = text.split_once("\r\n\r\n").unwrap().1;
        serde_json::from_str(body).unwrap()
    }

    async fn rejected_total(&self) -> u64 {
        self.status().await["masterdata"]["rejected_total"]
            .as_u64()
            .unwrap()
    }

    async fn wait_rejected(&self, n: u64, what: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = self.status().await;
            if s["masterdata"]["rejected_total"].as_u64().unwrap() >= n {
                return s["masterdata"]["last_rejected"]["reason"]
                    .as_str()
                    .unwrap()
                    .to_owned();
            }
            assert!(Instant::now() < deadline, "{what} was not refused: {s}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

fn blocked(key: &SigningKey, gtin: &str, version: u64, reason: &str) -> Built {
    let payload = format!(
        "{{\"t\":\"blocked\",\"gtin\":\"{gtin}\",\"from\":0,\"to\":{MAX_SERIAL},\"reason\":\"{reason}\"}}\n"
    );
    // Padded to several chunks, so reassembly is exercised.
    let padding =
        format!("{{\"t\":\"commissioned\",\"gtin\":\"{gtin}\",\"from\":0,\"to\":{MAX_SERIAL}}}\n")
            .repeat(60);
    build(
        key,
        "recalls",
        version,
        Scope {
            site: Some("plant".into()),
            gateway: None,
        },
        "",
        format!("{payload}{padding}").as_bytes(),
        1024,
    )
    .unwrap()
}

fn plan(b: &Built) -> Vec<(String, Vec<u8>)> {
    let topic = tool::manifest_topic(PREFIX, &b.manifest);
    let mut p: Vec<(String, Vec<u8>)> = b
        .chunks
        .iter()
        .enumerate()
        .map(|(i, c)| (format!("{topic}/{}/{i}", b.manifest.version), c.clone()))
        .collect();
    p.push((topic, b.frame.clone()));
    p
}

async fn publish(broker: &Mosquitto, plan: Vec<(String, Vec<u8>)>) {
    tool::publish("127.0.0.1", broker.port, plan, Duration::from_secs(10))
        .await
        .unwrap();
}

fn reason_of(v: &serde_json::Value) -> Option<&str> {
    let flagged = v["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == "blocked"));
    flagged
        .then(|| v["masterdata"]["blocked_reason"].as_str())
        .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_datasets_flag_events_and_hostile_ones_are_refused() {
    if !support::mosquitto_available() {
        return;
    }
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::from_bytes(&[21; 32]);
    let stranger = SigningKey::from_bytes(&[22; 32]);
    let key_file = dir.path().join("registry.pub");
    std::fs::write(&key_file, public_key_text(&key.verifying_key())).unwrap();

    // A consumer of the alerts topic only.
    let alerts = std::sync::Arc::new(std::sync::Mutex::new(Vec::<serde_json::Value>::new()));
    let sub_cancel = CancellationToken::new();
    let sub = tokio::spawn(tracegate::publish::embedded::subscribe(
        broker.addr(),
        "tracegate/plant/gw1/alerts",
        sub_cancel.clone(),
        {
            let alerts = alerts.clone();
            move |_topic, payload| {
                alerts
                    .lock()
                    .unwrap()
                    .push(serde_json::from_slice(payload).unwrap());
            }
        },
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut gw = start(dir.path(), &broker.url(), &key_file).await;
    let first = gw.arrival(Duration::from_secs(10)).await;
    assert!(first.get("flags").is_none(), "{first}");
    let gtin = first["identity"]["gtin"].as_str().unwrap().to_owned();

    // A retained dataset reaches the running gateway; the next events carry
    // the flag within a second of the publish.
    let published = Instant::now();
    publish(&broker, plan(&blocked(&key, &gtin, 1, "stolen"))).await;
    let applied = gw
        .next(Duration::from_secs(5), "masterdata_applied", |v| {
            v["type"] == "masterdata_applied"
        })
        .await;
    assert_eq!(
        (applied["name"].as_str(), applied["version"].as_u64()),
        (Some("recalls"), Some(1))
    );
    let flagged = gw
        .next(Duration::from_secs(5), "blocked arrival", |v| {
            v["type"] == "arrived" && reason_of(v).is_some()
        })
        .await;
    assert!(
        published.elapsed() < Duration::from_secs(1),
        "flags after {:?}",
        published.elapsed()
    );
    assert_eq!(reason_of(&flagged), Some("stolen"));
    let status = gw.status().await;
    assert_eq!(status["masterdata"]["active"][0]["version"], 1, "{status}");
    // The flagged event also reached the alerts topic, with the same id;
    // unflagged ones did not.
    let id = flagged["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = alerts.lock().unwrap().clone();
        let events: Vec<&serde_json::Value> = got
            .iter()
            .flat_map(|b| b["events"].as_array().unwrap())
            .collect();
        assert!(
            events.iter().all(|e| e["flags"].as_array().is_some()),
            "unflagged alert"
        );
        if events.iter().any(|e| e["id"] == id.as_str()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "alert {id} not received: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    publish(&broker, plan(&blocked(&key, &gtin, 2, "recalled"))).await;
    gw.next(Duration::from_secs(5), "version 2", |v| {
        v["type"] == "masterdata_applied" && v["version"] == 2
    })
    .await;
    gw.next(Duration::from_secs(5), "recalled arrival", |v| {
        reason_of(v) == Some("recalled")
    })
    .await;

    // Hostile datasets: each refused, version 2 stays in force.
    let mut refused = gw.rejected_total().await;
    let mut bad_sig = blocked(&key, &gtin, 3, "other");
    bad_sig.frame[20] ^= 0x40;
    let truncated = {
        let b = blocked(&key, &gtin, 3, "other");
        let mut p = plan(&b);
        p[0].1.truncate(100);
        p
    };
    type Messages = Vec<(String, Vec<u8>)>;
    let cases: Vec<(&str, Messages, &str)> = vec![
        (
            "rollback",
            plan(&blocked(&key, &gtin, 1, "other")),
            "rollback",
        ),
        ("bad signature", plan(&bad_sig), "bad signature"),
        (
            "wrong key",
            plan(&blocked(&stranger, &gtin, 3, "other")),
            "not trusted",
        ),
        ("truncated chunk", truncated, "chunk 0 is 100 bytes"),
        (
            "garbage",
            vec![(
                format!("{PREFIX}/plant/gw1/masterdata/recalls"),
                b"\x00garbage{}".to_vec(),
            )],
            "",
        ),
    ];
    for (what, messages, reason) in cases {
        publish(&broker, messages).await;
        refused += 1;
        let got = gw.wait_rejected(refused, what).await;
        assert!(got.contains(reason), "{what}: {got}");
        let after = gw.arrival(Duration::from_secs(5)).await;
        assert_eq!(reason_of(&after), Some("recalled"), "{what}: {after}");
    }
    assert_eq!(gw.status().await["masterdata"]["active"][0]["version"], 2);
    gw.stop().await;

    // Restart with the broker unreachable: the stored dataset still applies.
    let mut gw = start(
        dir.path(),
        &format!("mqtt://127.0.0.1:{}", support::free_port()),
        &key_file,
    )
    .await;
    let after = gw.arrival(Duration::from_secs(10)).await;
    assert_eq!(reason_of(&after), Some("recalled"), "{after}");
    gw.stop().await;

    // Published while the gateway is down: applied at its next start.
    publish(&broker, plan(&blocked(&key, &gtin, 4, "destroyed"))).await;
    let mut gw = start(dir.path(), &broker.url(), &key_file).await;
    gw.next(Duration::from_secs(10), "version 4", |v| {
        v["type"] == "masterdata_applied" && v["version"] == 4
    })
    .await;
    gw.next(Duration::from_secs(5), "destroyed arrival", |v| {
        reason_of(v) == Some("destroyed")
    })
    .await;
    gw.stop().await;
    sub_cancel.cancel();
    let _ = sub.await;
}
