//! Pass verdicts against a real broker: the real `tracegate` binary at a
//! simulated dock door (the `sim` GPIO backend, as in door.rs) receives an
//! expected shipment as a signed dataset (`tracegate masterdata keygen`,
//! `build`, `publish`) through a real mosquitto, and judges each pallet:
//! - the pallet with every expected tag and nothing else: `shipment:
//!   complete`, no flags, a green light;
//! - against a shipment that lacks one of its tags and lists one it does
//!   not carry: the missing and unexpected serials, the flags
//!   `shipment_incomplete` and `not_expected`, the same pass (same id) on
//!   the `alerts` topic, and a red light.
//!
//! The simulator's first pallet enters the moment the reader starts, before
//! a dataset could arrive over MQTT; so each dataset is applied by a run
//! without the door first, and the door run loads it from masterdata.db at
//! start (the path a restarted gateway takes).
//!
//! Needs mosquitto and mosquitto_sub: without them it prints `skipped: ...`
//! (unless TRACEGATE_REQUIRE_MOSQUITTO=1).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use tracegate_hw_tests::{bin, peer_available, signal, wait_exit, wait_for, TempGateway};

const ID: &str = "gw-md-door";
const SITE: &str = "test-site";
/// GTIN of the simulator's SGTIN-96 EPCs (company prefix 0614141, item
/// reference 812345).
const GTIN: &str = "80614141123458";
/// The simulator's first pallet (seed 42): serials 42000001 to 42000008.
const FIRST: u64 = 42_000_001;

fn tools() -> Option<(&'static str, &'static str)> {
    let find = |names: [&'static str; 2]| names.into_iter().find(|p| Path::new(p).exists());
    let broker = find(["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]);
    let sub = find(["/usr/bin/mosquitto_sub", "/usr/local/bin/mosquitto_sub"]);
    let probe = match (broker, sub) {
        (Some(_), Some(_)) => Ok(()),
        _ => Err("mosquitto or mosquitto_sub not installed".to_owned()),
    };
    peer_available("TRACEGATE_REQUIRE_MOSQUITTO", probe).then(|| (broker.unwrap(), sub.unwrap()))
}

/// The door of door.rs (one pallet of 8 tags per arrival, photo-eyes
/// following it, a stack light), plus the broker and master data. Pallets
/// come every 8 s, so a run sees exactly one before it is stopped. Without
/// `door`, the same reader and read point but no window, GPIO or lights:
/// a run that only takes a dataset.
fn config(broker_port: u16, key: &Path, record: &Path, door: bool) -> String {
    let door_part = format!(
        r#"
[read_points.window]
beams = {{ outside = "eye-out", inside = "eye-in" }}
beam_clear_hold_ms = 100
linger_ms = 300
tag_events = false

[read_points.signal]
green = ["green"]
green_ms = 500
amber = ["amber"]
red = ["red", "buzzer"]
red_ms = 500

[gpio]
backend = "sim"
chip = "pinctrl-rp1"
lamp_test_ms = 200
sim_record = "{record}"

[gpio.inputs.eye-out]
line = 17
active_low = true
sim_follows = "dock"
sim_beam = "outside"

[gpio.inputs.eye-in]
line = 27
active_low = true
sim_follows = "dock"
sim_beam = "inside"

[gpio.outputs.green]
line = 22
[gpio.outputs.amber]
line = 23
[gpio.outputs.red]
line = 24
[gpio.outputs.buzzer]
line = 25
active_low = true
"#,
        record = record.display()
    );
    format!(
        r#"
[[readers]]
name = "dock"
kind = "sim"
read_rate = 400
pallet_size = 8
arrival_interval_ms = 8000
dwell_ms = 1200
max_tags = 16

[[read_points]]
name = "dock-door-1"
reader = "dock"
direction = {{ outside = 1, inside = 2 }}
{door}
[mqtt]
url = "mqtt://127.0.0.1:{broker_port}"
linger_ms = 5
reconnect_min_ms = 100
reconnect_max_ms = 500

[masterdata]
trusted_keys = ["{key}"]
"#,
        door = if door { door_part.as_str() } else { "" },
        key = key.display(),
    )
}

/// Rewrites the gateway's config (same id, site and data directory).
fn rewrite(gw: &TempGateway, body: &str) {
    std::fs::write(
        &gw.config,
        format!(
            "[gateway]\nid = \"{ID}\"\nsite = \"{SITE}\"\ndata_dir = \"{}\"\n\n{body}\n[ops]\nmetrics_addr = \"off\"\n",
            gw.dir.path().join("data").display()
        ),
    )
    .unwrap();
}

fn tg(args: &[&str]) {
    let out = Command::new(bin().unwrap()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "tracegate {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `tracegate masterdata build` + `publish`: an expected shipment through
/// `dock-door-1` listing `serials`, as dataset `asn` version `version`.
fn publish_asn(dir: &Path, key: &Path, port: u16, version: u64, serials: &[u64]) {
    let list: Vec<String> = serials.iter().map(|s| s.to_string()).collect();
    let csv = dir.join(format!("asn-{version}.csv"));
    std::fs::write(
        &csv,
        format!(
            "t,read_point,shipment,gtin,serials\nexpected,dock-door-1,ASN-{version},{GTIN},{}\n",
            list.join("|")
        ),
    )
    .unwrap();
    let out = dir.join(format!("asn-v{version}"));
    let v = version.to_string();
    tg(&[
        "masterdata",
        "build",
        "--key",
        key.to_str().unwrap(),
        "--name",
        "asn",
        "--version",
        &v,
        "--site",
        SITE,
        "--input",
        csv.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    tg(&[
        "masterdata",
        "publish",
        out.to_str().unwrap(),
        "--broker",
        &format!("mqtt://127.0.0.1:{port}"),
    ]);
}

/// Runs the gateway without the door until dataset `asn` `version` is
/// applied (stored in masterdata.db), then stops it.
fn take_dataset(gw: &TempGateway, body: &str, version: u64) {
    rewrite(gw, body);
    let mut child = gw.spawn().unwrap();
    let applied = wait_for(Duration::from_secs(20), || {
        gw.events(&[]).unwrap_or_default().into_iter().find(|e| {
            e["type"] == "masterdata_applied" && e["name"] == "asn" && e["version"] == version
        })
    });
    signal(&child, Signal::SIGTERM).unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(10));
    assert!(
        applied.is_some(),
        "asn v{version} not applied; log:\n{}",
        gw.log()
    );
    assert!(status.is_some_and(|s| s.success()), "{}", gw.log());
}

/// Runs the door until one more pass than `before` is stored, lets the
/// light's rule run out, stops the gateway and returns that pass.
fn door_pass(gw: &TempGateway, body: &str, before: usize) -> serde_json::Value {
    rewrite(gw, body);
    let mut child = gw.spawn().unwrap();
    let pass = wait_for(Duration::from_secs(20), || {
        gw.events(&[])
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e["type"] == "pass")
            .nth(before)
    });
    std::thread::sleep(Duration::from_millis(800));
    signal(&child, Signal::SIGTERM).unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(10));
    let pass = pass.unwrap_or_else(|| panic!("no pass; log:\n{}", gw.log()));
    assert!(status.is_some_and(|s| s.success()), "{}", gw.log());
    pass
}

/// The outputs switched after the lamp test (4 on, 4 off), in order.
fn light_sequence(record: &Path) -> Vec<(String, bool)> {
    let text = std::fs::read_to_string(record).unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .skip(8)
        .map(|v| {
            (
                v["output"].as_str().unwrap().to_owned(),
                v["on"].as_bool().unwrap(),
            )
        })
        .collect()
}

fn label(serial: u64) -> String {
    format!("(01){GTIN}(21){serial}")
}

#[test]
fn passes_are_judged_against_an_expected_shipment_received_from_a_real_broker() {
    let Some((_, mosquitto_sub)) = tools() else {
        return;
    };
    let broker = tracegate_hw_tests::broker::Broker::start().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let prefix = keys.path().join("registry");
    tg(&["masterdata", "keygen", prefix.to_str().unwrap()]);
    let secret = prefix.with_extension("key");
    let public = prefix.with_extension("pub");
    let gw = TempGateway::new(ID, "").unwrap();
    let record_ok: PathBuf = gw.dir.path().join("outputs-complete.jsonl");
    let record_bad: PathBuf = gw.dir.path().join("outputs-flagged.jsonl");
    let setup = config(broker.port, &public, &record_ok, false);

    // 1. The shipment is exactly the first pallet: complete, green.
    let pallet: Vec<u64> = (FIRST..FIRST + 8).collect();
    publish_asn(keys.path(), &secret, broker.port, 1, &pallet);
    take_dataset(&gw, &setup, 1);
    let pass = door_pass(&gw, &config(broker.port, &public, &record_ok, true), 0);
    let serials: BTreeSet<String> = pass["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["identity"]["serial"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        serials,
        pallet.iter().map(u64::to_string).collect(),
        "the simulator's first pallet: {pass}"
    );
    assert_eq!(pass["tags"][0]["identity"]["gtin"], GTIN, "{pass}");
    let s = &pass["shipment"];
    assert_eq!(s["complete"], true, "{pass}");
    assert_eq!(
        (s["missing_count"].as_u64(), s["unexpected_count"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(s["shipments"], serde_json::json!(["ASN-1"]));
    assert!(
        pass.get("flags").is_none(),
        "a complete pass is not flagged: {pass}"
    );
    assert_eq!(
        light_sequence(&record_ok),
        [("green".to_owned(), true), ("green".to_owned(), false)],
        "a complete pass lights green, nothing else"
    );

    // 2. A shipment that lacks the pallet's last tag and lists a tag the
    //    pallet does not carry.
    let missing = FIRST + 98;
    let stray = FIRST + 7;
    let asn2: Vec<u64> = (FIRST..stray).chain([missing]).collect();
    publish_asn(keys.path(), &secret, broker.port, 2, &asn2);
    take_dataset(&gw, &setup, 2);

    let alerts_file = gw.dir.path().join("alerts.jsonl");
    let mut sub = Command::new(mosquitto_sub)
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string(), "-q", "1"])
        .args(["-t", &format!("tracegate/{SITE}/{ID}/alerts")])
        .stdout(std::fs::File::create(&alerts_file).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let pass = door_pass(&gw, &config(broker.port, &public, &record_bad, true), 1);
    let s = &pass["shipment"];
    assert_eq!(s["complete"], false, "{pass}");
    assert_eq!(s["missing_count"], 1, "{pass}");
    assert_eq!(s["missing"], serde_json::json!([label(missing)]), "{pass}");
    assert_eq!(s["unexpected_count"], 1, "{pass}");
    assert_eq!(s["unexpected"], serde_json::json!([label(stray)]), "{pass}");
    assert_eq!(s["shipments"], serde_json::json!(["ASN-2"]));
    let flags: BTreeSet<&str> = pass["flags"]
        .as_array()
        .unwrap_or_else(|| panic!("flagged pass without flags: {pass}"))
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert_eq!(
        flags,
        BTreeSet::from(["shipment_incomplete", "not_expected"]),
        "{pass}"
    );
    // The stray tag carries its own flag; the expected ones none.
    let stray_serial = stray.to_string();
    for t in pass["tags"].as_array().unwrap() {
        let want = if t["identity"]["serial"] == stray_serial.as_str() {
            serde_json::json!(["not_expected"])
        } else {
            serde_json::Value::Null
        };
        assert_eq!(t["flags"], want, "{t}");
    }

    // The same pass, same id, on the alerts topic.
    let id = pass["id"].as_str().unwrap().to_owned();
    let alerted = wait_for(Duration::from_secs(5), || {
        let text = std::fs::read_to_string(&alerts_file).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .flat_map(|b| b["events"].as_array().cloned().unwrap_or_default())
            .find(|e| e["id"] == id.as_str())
    });
    let _ = sub.kill();
    let _ = sub.wait();
    let alerted = alerted.unwrap_or_else(|| {
        panic!(
            "pass {id} not on the alerts topic; received:\n{}",
            std::fs::read_to_string(&alerts_file).unwrap_or_default()
        )
    });
    assert_eq!(alerted["type"], "pass");
    assert_eq!(alerted["shipment"], pass["shipment"]);

    // Red (with the buzzer) for the flagged pass, never green.
    let seq = light_sequence(&record_bad);
    let on: BTreeSet<&str> = seq.iter().filter(|c| c.1).map(|c| c.0.as_str()).collect();
    assert_eq!(on, BTreeSet::from(["red", "buzzer"]), "{seq:?}");
    assert!(
        seq.iter().rev().take(2).all(|c| !c.1),
        "red and buzzer go off after red_ms: {seq:?}"
    );
}
