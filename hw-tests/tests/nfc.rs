//! NFC taps through the real binary: pcscd with vsmartcard's virtual reader,
//! emulated tags inserted over vpcd's socket, SUN verdicts and Digital Link
//! identities checked in the events `tracegate events` lists.
//!
//! Needs pcscd with vsmartcard-vpcd (`.ci/nfc-setup.sh`). Without it the
//! test prints "skipped: pcscd not running" and passes, unless
//! TRACEGATE_REQUIRE_PCSCD=1 (the test command sets it), when it fails.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use nix::sys::signal::Signal;
use tracegate_drivers::nfc::emu::{EmulatedCard, Ntag21x, Ntag424, SunBehaviour};
use tracegate_drivers::nfc::sun::{AesKey, MacInput, SunKeys};
use tracegate_hw_tests::{pcscd_available, place_card, signal, wait_exit, TempGateway};

const SLOT0_READER: &str = "Virtual PCD 00 00";
const DL: &str = "https://id.example.org/01/09506000134352/21/SER123";
const META: &str = "000102030405060708090A0B0C0D0E0F";
const FILE: &str = "F0E0D0C0B0A090807060504030201000";

fn keys() -> SunKeys {
    SunKeys {
        product: "widget".into(),
        url_prefix: Some("https://id.example.org/".into()),
        meta_read: AesKey::from_hex(META).unwrap(),
        file_read: AesKey::from_hex(FILE).unwrap(),
        mac_input: MacInput::Auto,
        file_read_diversification: None,
    }
}

/// Places a card until the gateway has stored one more tap, then removes it.
fn tap<C: EmulatedCard + 'static>(gw: &TempGateway, card: C) -> C {
    place_card(gw, card, 1).unwrap().0
}

#[test]
fn taps_carry_uid_digital_link_and_sun_verdicts() {
    if !pcscd_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("widget.toml");
    std::fs::write(
        &key_file,
        format!(
            "[[product]]\nname = \"widget\"\nurl_prefix = \"https://id.example.org/\"\nmeta_read_key = \"{META}\"\nfile_read_key = \"{FILE}\"\n"
        ),
    )
    .unwrap();
    let gw = TempGateway::new(
        "svc",
        &format!(
            "[[readers]]\nname = \"counter\"\nkind = \"pcsc\"\nreader_pattern = \"{SLOT0_READER}\"\n\n[[read_points]]\nname = \"counter-1\"\nreader = \"counter\"\n\n[nfc]\nsun_key_files = [\"{}\"]\n",
            key_file.display()
        ),
    )
    .unwrap();
    let mut child = gw.spawn().unwrap();
    std::thread::sleep(Duration::from_secs(2));

    let uid215 = [0x04, 0x11, 0x22, 0x33, 0x44, 0x55, 0x80];
    tap(&gw, Ntag21x::ntag215_with_uri(uid215, DL));
    let genuine = Ntag424::new(
        [0x04, 0x01, 0x02, 0x03, 0x04, 0x05, 0x80],
        keys(),
        DL,
        10,
        SunBehaviour::Genuine,
    );
    let genuine = tap(&gw, genuine);
    tap(&gw, genuine);
    let forged = Ntag424::new(
        [0x04, 0x0A, 0x0B, 0x0C, 0x0D, 0x0E, 0x80],
        keys(),
        DL,
        3,
        SunBehaviour::ForgedMac,
    );
    tap(&gw, forged);
    let replay = Ntag424::new(
        [0x04, 0x21, 0x22, 0x23, 0x24, 0x25, 0x80],
        keys(),
        DL,
        5,
        SunBehaviour::Replay,
    );
    let replay = tap(&gw, replay);
    tap(&gw, replay);

    signal(&child, Signal::SIGTERM).unwrap();
    wait_exit(&mut child, Duration::from_secs(8)).expect("gateway did not stop");
    let taps: Vec<_> = gw
        .events(&[])
        .unwrap()
        .into_iter()
        .filter(|e| e["type"] == "tap")
        .collect();
    assert_eq!(taps.len(), 6, "one tap per placement: {taps:#?}");

    let t215 = &taps[0];
    assert_eq!(t215["identity"]["uid"], "04112233445580");
    assert_eq!(t215["identity"]["gtin"], "09506000134352");
    assert_eq!(t215["identity"]["serial"], "SER123");
    assert_eq!(t215["tap"]["tag_type"], "ntag215");
    assert!(t215.get("sun").is_none(), "a plain URL has no SUN verdict");

    let verdict = |i: usize| {
        taps[i]["sun"]["verdict"]
            .as_str()
            .unwrap_or("none")
            .to_owned()
    };
    assert_eq!(verdict(1), "genuine");
    assert_eq!(
        verdict(2),
        "genuine",
        "the counter moved on, so the second tap is genuine too"
    );
    assert!(taps[2]["sun"]["counter"].as_u64() > taps[1]["sun"]["counter"].as_u64());
    assert_eq!(verdict(3), "invalid_mac");
    assert_eq!(taps[3]["flags"][0], "forged_nfc");
    assert_eq!(verdict(4), "genuine");
    assert_eq!(verdict(5), "replayed");
    assert_eq!(taps[5]["flags"][0], "replayed_nfc");
}
