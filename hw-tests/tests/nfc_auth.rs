//! NFC authenticity as a forger would test it, through the real binary, a
//! real pcscd and vsmartcard's virtual reader: the SUN verdict is bound to the
//! tag on the reader and says what it covers, per-tag (AN10922) keys verify,
//! taps are verified once however many read points share the reader, SUN
//! secrets never reach the log, and a broken key file never takes a running
//! gateway down.
//!
//! Needs pcscd with vsmartcard-vpcd (`.ci/nfc-setup.sh`); without it every
//! test prints "skipped: ..." and passes, unless TRACEGATE_REQUIRE_PCSCD=1
//! (the test command sets it).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Child;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;
use tracegate_drivers::nfc::emu::{EmulatedCard, Ntag21x, Ntag424, SunBehaviour};
use tracegate_drivers::nfc::sun::{KeyFile, SunKeys};
use tracegate_hw_tests::{pcscd_available, place_card, signal, wait_exit, wait_for, TempGateway};

/// The virtual reader has one slot: tests in this file take turns.
static SLOT: Mutex<()> = Mutex::new(());

const DL: &str = "https://id.example.org/01/09506000134352/21/SER123";
const SEALED_DL: &str = "https://sealed.example.org/01/09506000134352/21/SER777";
const DIV_DL: &str = "https://div.example.org/01/09506000134352/21/DIV001";
const META: &str = "000102030405060708090A0B0C0D0E0F";
const FILE: &str = "F0E0D0C0B0A090807060504030201000";
const META_MASTER: &str = "00112233445566778899AABBCCDDEEFF";
const FILE_MASTER: &str = "FFEEDDCCBBAA99887766554433221100";

/// Three products: the NXP default layout (the MAC covers UID and counter
/// only), a layout whose MAC covers the whole URL, and per-tag keys.
fn key_file_text() -> String {
    format!(
        r#"[[product]]
name = "widget"
url_prefix = "https://id.example.org/"
meta_read_key = "{META}"
file_read_key = "{FILE}"

[[product]]
name = "sealed"
url_prefix = "https://sealed.example.org/"
meta_read_key = "{META}"
file_read_key = "{FILE}"
mac_input = "url"

[[product]]
name = "diversified"
url_prefix = "https://div.example.org/"
meta_read_master_key = "{META_MASTER}"
meta_read_batch = "0B0C0D"
file_read_master_key = "{FILE_MASTER}"
application_id = "3042F5"
system_identifier = "4E585020416275"
"#
    )
}

/// The keys a tag of `product` holds, as provisioning wrote them.
fn product(name: &str) -> SunKeys {
    let file = KeyFile::from_toml(&key_file_text(), "test").unwrap();
    file.products
        .into_iter()
        .find(|p| p.product == name)
        .unwrap()
}

fn reader_config(key_file: &std::path::Path, read_points: &[&str]) -> String {
    let mut body = "[[readers]]\nname = \"counter\"\nkind = \"pcsc\"\nreader_pattern = \"Virtual PCD 00 00\"\n\n".to_owned();
    for rp in read_points {
        body.push_str(&format!(
            "[[read_points]]\nname = \"{rp}\"\nreader = \"counter\"\n\n"
        ));
    }
    body.push_str(&format!(
        "[nfc]\nsun_key_files = [\"{}\"]\n",
        key_file.display()
    ));
    body
}

fn tap<C: EmulatedCard + 'static>(gw: &TempGateway, card: C, events: usize) -> (C, Vec<Value>) {
    place_card(gw, card, events).unwrap()
}

/// A gateway on the virtual reader, holding the reader for the test.
struct Running {
    _slot: MutexGuard<'static, ()>,
    gw: TempGateway,
    child: Child,
    key_file: PathBuf,
    _keys_dir: tempfile::TempDir,
}

/// Takes the virtual reader and starts a gateway on it with `keys` (the key
/// file's text); `None` when pcscd is not there (the test then skips).
fn start(id: &str, keys: &str, read_points: &[&str]) -> Option<Running> {
    let slot = SLOT.lock().unwrap_or_else(|e| e.into_inner());
    if !pcscd_available() {
        return None;
    }
    let keys_dir = tempfile::tempdir().unwrap();
    let key_file = keys_dir.path().join("keys.toml");
    std::fs::write(&key_file, keys).unwrap();
    let gw = TempGateway::new(id, &reader_config(&key_file, read_points)).unwrap();
    let child = gw.spawn().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    Some(Running {
        _slot: slot,
        gw,
        child,
        key_file,
        _keys_dir: keys_dir,
    })
}

fn verdict(e: &Value) -> &str {
    e["sun"]["verdict"].as_str().unwrap_or("none")
}

fn covers(e: &Value) -> Vec<&str> {
    e["sun"]["covers"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn flags(e: &Value) -> Vec<&str> {
    e["flags"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// The values of the SUN query parameters of a URL.
fn sun_values(url: &str) -> Vec<String> {
    let query = url.split_once('?').map_or("", |(_, q)| q);
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| {
            ["picc_data", "e", "enc", "cmac", "c"].contains(&k.to_ascii_lowercase().as_str())
        })
        .map(|(_, v)| v.to_owned())
        .collect()
}

#[test]
fn sun_verdicts_are_bound_to_the_tag_and_say_what_they_cover() {
    let Some(mut run) = start("svc", &key_file_text(), &["counter-in", "counter-audit"]) else {
        return;
    };
    let gw = &run.gw;
    let mut urls = Vec::new();

    // A genuine NTAG 424 DNA, seen by two read points on one reader: one
    // verification, the same verdict on both events, nothing "replayed".
    let mut tag_a = Ntag424::new(
        [0x04, 0x01, 0x02, 0x03, 0x04, 0x05, 0x80],
        product("widget"),
        DL,
        10,
        SunBehaviour::Genuine,
    );
    urls.push(tag_a.peek_next_url());
    let (card, evs) = tap(gw, tag_a, 2);
    tag_a = card;
    assert_eq!(evs.len(), 2);
    for e in &evs {
        assert_eq!(verdict(e), "genuine", "{e:#}");
        assert_eq!(covers(e), ["uid", "counter"], "{e:#}");
        assert!(flags(e).is_empty(), "{e:#}");
        // The default MAC input does not cover the URL: the serial is a claim.
        assert_eq!(e["identity"]["source"], "claimed", "{e:#}");
    }
    let read_points: Vec<_> = evs.iter().map(|e| e["read_point"].clone()).collect();
    assert!(
        read_points.contains(&"counter-in".into()) && read_points.contains(&"counter-audit".into())
    );

    // A fresh, valid URL of tag A, copied onto a cheap NTAG215 with another UID.
    let copied = tag_a.read_url();
    urls.push(copied.clone());
    let clone = Ntag21x::ntag215_with_uri([0x04, 0x99, 0x98, 0x97, 0x96, 0x95, 0x80], &copied);
    let (_, evs) = tap(gw, clone, 2);
    for e in &evs {
        assert_eq!(verdict(e), "uid_mismatch", "{e:#}");
        assert!(flags(e).contains(&"forged_nfc"), "{e:#}");
        assert!(covers(e).is_empty(), "{e:#}");
    }

    // Tag A whose URL path was altered (another serial) after the tag
    // computed its MAC: the MAC still verifies, because it never covered the
    // path; the verdict is about tag A and the serial stays a claim.
    let altered = Ntag424::new(
        [0x04, 0x01, 0x02, 0x03, 0x04, 0x05, 0x80],
        product("widget"),
        DL,
        40,
        SunBehaviour::Genuine,
    )
    .with_url_edit("SER123", "SER999");
    urls.push(altered.peek_next_url());
    let (_, evs) = tap(gw, altered, 2);
    for e in &evs {
        assert_eq!(verdict(e), "genuine", "{e:#}");
        assert_eq!(e["sun"]["uid"], "04010203040580", "{e:#}");
        assert_eq!(e["identity"]["serial"], "SER999");
        assert_eq!(e["identity"]["source"], "claimed", "{e:#}");
        assert!(!covers(e).contains(&"url"), "{e:#}");
    }

    // A tag whose MAC covers the URL: `covers` says so and the serial is
    // authenticated; one changed character of the serial breaks the MAC.
    let sealed_uid = [0x04, 0x31, 0x32, 0x33, 0x34, 0x35, 0x80];
    let sealed = Ntag424::new(
        sealed_uid,
        product("sealed"),
        SEALED_DL,
        5,
        SunBehaviour::Genuine,
    );
    urls.push(sealed.peek_next_url());
    let (_, evs) = tap(gw, sealed, 2);
    for e in &evs {
        assert_eq!(verdict(e), "genuine", "{e:#}");
        assert_eq!(covers(e), ["uid", "counter", "url"], "{e:#}");
        assert_eq!(e["identity"]["source"], "authenticated", "{e:#}");
    }
    let tampered = Ntag424::new(
        sealed_uid,
        product("sealed"),
        SEALED_DL,
        9,
        SunBehaviour::Genuine,
    )
    .with_url_edit("SER777", "SER778");
    urls.push(tampered.peek_next_url());
    let (_, evs) = tap(gw, tampered, 2);
    for e in &evs {
        assert_eq!(verdict(e), "invalid_mac", "{e:#}");
        assert!(flags(e).contains(&"forged_nfc"), "{e:#}");
    }

    // Per-tag keys (AN10922): the tag holds the key derived for its UID.
    let div = Ntag424::diversified(
        [0x04, 0x51, 0x52, 0x53, 0x54, 0x55, 0x80],
        &product("diversified"),
        DIV_DL,
        1,
        SunBehaviour::Genuine,
    )
    .unwrap();
    urls.push(div.peek_next_url());
    let (_, evs) = tap(gw, div, 2);
    for e in &evs {
        assert_eq!(verdict(e), "genuine", "{e:#}");
        assert_eq!(e["sun"]["product"], "diversified", "{e:#}");
    }

    // No mirrored counter: the MAC is fine, but no replay check is possible.
    let no_counter = Ntag424::new(
        [0x04, 0x61, 0x62, 0x63, 0x64, 0x65, 0x80],
        product("widget"),
        DL,
        3,
        SunBehaviour::Genuine,
    )
    .without_counter();
    urls.push(no_counter.peek_next_url());
    let (_, evs) = tap(gw, no_counter, 2);
    for e in &evs {
        assert_eq!(verdict(e), "genuine_no_counter", "{e:#}");
        assert_eq!(covers(e), ["uid"], "{e:#}");
        assert!(flags(e).is_empty(), "{e:#}");
    }

    signal(&run.child, Signal::SIGTERM).unwrap();
    wait_exit(&mut run.child, Duration::from_secs(8)).expect("gateway did not stop");

    // Nothing a forger could replay reaches the log: no PICC data, no MAC.
    let log = gw.log();
    assert!(log.contains("tap"), "the log shows the taps: {log}");
    for url in &urls {
        for v in sun_values(url) {
            assert!(
                !log.to_ascii_uppercase().contains(&v.to_ascii_uppercase()),
                "SUN value {v} of {url} found in the log"
            );
        }
    }
}

#[test]
fn a_diversified_tag_does_not_verify_against_the_master_key_alone() {
    // The master keys used as if they were the tags' own keys.
    let keys = format!(
        "[[product]]\nname = \"master-only\"\nurl_prefix = \"https://div.example.org/\"\nmeta_read_key = \"{META_MASTER}\"\nfile_read_key = \"{FILE_MASTER}\"\n"
    );
    let Some(mut run) = start("svc-master", &keys, &["counter"]) else {
        return;
    };
    let gw = &run.gw;
    let div = Ntag424::diversified(
        [0x04, 0x51, 0x52, 0x53, 0x54, 0x55, 0x80],
        &product("diversified"),
        DIV_DL,
        1,
        SunBehaviour::Genuine,
    )
    .unwrap();
    let (_, evs) = tap(gw, div, 1);
    assert_eq!(verdict(&evs[0]), "unknown_key", "{:#}", evs[0]);
    assert!(flags(&evs[0]).contains(&"forged_nfc"));
    signal(&run.child, Signal::SIGTERM).unwrap();
    wait_exit(&mut run.child, Duration::from_secs(8)).expect("gateway did not stop");
}

#[test]
fn a_broken_key_file_is_refused_by_check_config_and_survived_by_sighup() {
    let Some(mut run) = start("svc-reload", &key_file_text(), &["counter"]) else {
        return;
    };
    let (gw, key_file) = (&run.gw, run.key_file.clone());

    // Break the key file under the running gateway, then ask it to reload.
    std::fs::write(
        &key_file,
        format!("[[product]]\nname = \"widget\"\nmeta_read_key = \"nothex\"\nfile_read_key = \"{FILE}\"\n"),
    )
    .unwrap();
    signal(&run.child, Signal::SIGHUP).unwrap();
    let shown = key_file.display().to_string();
    wait_for(Duration::from_secs(10), || {
        gw.log().contains(&shown).then_some(())
    })
    .unwrap_or_else(|| panic!("the reload error does not name {shown}:\n{}", gw.log()));
    assert!(
        run.child.try_wait().unwrap().is_none(),
        "a broken key file stopped the gateway:\n{}",
        gw.log()
    );

    // Still running, on the old keys.
    let tag = Ntag424::new(
        [0x04, 0x71, 0x72, 0x73, 0x74, 0x75, 0x80],
        product("widget"),
        DL,
        2,
        SunBehaviour::Genuine,
    );
    let (_, evs) = tap(gw, tag, 1);
    assert_eq!(verdict(&evs[0]), "genuine", "{:#}", evs[0]);

    let out = std::process::Command::new(tracegate_hw_tests::bin().unwrap())
        .arg("check-config")
        .arg(&gw.config)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "check-config accepted a broken key file"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&shown),
        "check-config does not name the file: {stderr}"
    );
    assert!(
        !stderr.contains(FILE),
        "key material in the error: {stderr}"
    );

    signal(&run.child, Signal::SIGTERM).unwrap();
    wait_exit(&mut run.child, Duration::from_secs(8)).expect("gateway did not stop");
}
