//! `[[readers]]` entries for the UHF serial drivers: defaults, unknown keys,
//! and values serde cannot check.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use tracegate_drivers::mercury::{MercuryConfig, MercuryMode, MercuryRegion};
use tracegate_drivers::r2000::{R2000Config, R2000Mode, R2000Region};

#[test]
fn a_minimal_mercury_entry_gets_documented_defaults() {
    let c: MercuryConfig =
        serde_json::from_str(r#"{"name": "m", "port": "/dev/serial/by-id/x"}"#).unwrap();
    assert_eq!(c, MercuryConfig::new("m", "/dev/serial/by-id/x"));
    assert_eq!(c.baud, 115_200);
    assert_eq!(c.antennas, vec![1]);
    assert_eq!(c.mode, MercuryMode::Streaming);
    assert_eq!(c.read_power_cdbm, 2000);
    assert_eq!((c.region, c.session, c.read_tid), (None, None, false));
    assert_eq!(
        (c.search_ms, c.response_timeout_ms, c.idle_timeout_ms),
        (500, 2000, 5000)
    );
    c.validate().unwrap();
}

#[test]
fn mercury_options_parse_and_unknown_keys_are_rejected() {
    let c: MercuryConfig = serde_json::from_str(
        r#"{"name": "m", "port": "p", "mode": "tag_buffer", "region": "eu3", "read_tid": true, "session": 2}"#,
    )
    .unwrap();
    assert_eq!(c.mode, MercuryMode::TagBuffer);
    assert_eq!(c.region.map(MercuryRegion::code), Some(8));
    let err = serde_json::from_str::<MercuryConfig>(r#"{"name": "m", "port": "p", "powr": 1}"#)
        .unwrap_err();
    assert!(err.to_string().contains("powr"), "{err}");
}

#[test]
fn mercury_values_out_of_range_are_explained() {
    let mut c = MercuryConfig::new("m", "p");
    c.session = Some(4);
    assert!(c.validate().unwrap_err().to_string().contains("session 4"));
    let mut c = MercuryConfig::new("m", "p");
    c.antennas = vec![];
    assert!(c.validate().unwrap_err().to_string().contains("antennas"));
}

#[test]
fn a_minimal_r2000_entry_gets_documented_defaults() {
    let c: R2000Config = serde_json::from_str(r#"{"name": "r", "port": "p"}"#).unwrap();
    assert_eq!(c, R2000Config::new("r", "p"));
    assert_eq!((c.address, c.ports, c.repeat), (0xFF, 4, 1));
    assert_eq!(c.mode, R2000Mode::RealTime);
    assert_eq!((c.read_power_dbm, c.region, c.session), (None, None, None));
    c.validate().unwrap();
    let c: R2000Config = serde_json::from_str(
        r#"{"name": "r", "port": "p", "mode": "fast_switch", "region": "etsi", "antennas": [1,2,3,4]}"#,
    )
    .unwrap();
    assert_eq!(c.region.map(R2000Region::setting), Some((2, 0, 6)));
    c.validate().unwrap();
}

#[test]
fn r2000_fast_switch_beyond_port_four_is_refused_with_the_alternative() {
    let mut c = R2000Config::new("r", "p");
    c.ports = 8;
    c.antennas = vec![1, 5];
    c.validate().unwrap();
    c.mode = R2000Mode::FastSwitch;
    let msg = c.validate().unwrap_err().to_string();
    assert!(msg.contains("real_time"), "{msg}");
    c.ports = 6;
    assert!(c.validate().is_err());
    assert!(
        serde_json::from_str::<R2000Config>(r#"{"name": "r", "port": "p", "adress": 1}"#).is_err()
    );
}
