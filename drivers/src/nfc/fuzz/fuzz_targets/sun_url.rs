//! Any string as an NDEF URL to verify (against plain, URL-covering and
//! diversified products), bind to a tag, and redact.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracegate_drivers::nfc::diversify::Diversification;
use tracegate_drivers::nfc::sun::{self, AesKey, KeyFile, MacInput, SunKeys};
use tracegate_drivers::nfc::tag::TagType;

fuzz_target!(|data: &[u8]| {
    let Ok(url) = std::str::from_utf8(data) else {
        return;
    };
    let keys = KeyFile {
        products: vec![
            SunKeys {
                product: "zero".into(),
                url_prefix: None,
                meta_read: AesKey::from_bytes([0; 16]),
                file_read: AesKey::from_bytes([0; 16]),
                mac_input: MacInput::Auto,
                file_read_diversification: None,
            },
            SunKeys {
                product: "picc".into(),
                url_prefix: Some("https://".into()),
                meta_read: AesKey::from_bytes([1; 16]),
                file_read: AesKey::from_bytes([2; 16]),
                mac_input: MacInput::FromPicc,
                file_read_diversification: None,
            },
            SunKeys {
                product: "url-div".into(),
                url_prefix: None,
                meta_read: AesKey::from_bytes([3; 16]),
                file_read: AesKey::from_bytes([4; 16]),
                mac_input: MacInput::Url,
                file_read_diversification: Some(Diversification {
                    application_id: vec![0x30, 0x42, 0xF5],
                    system_identifier: b"fuzz".to_vec(),
                }),
            },
        ],
    };
    let check = sun::verify(url, &keys);
    let bound = sun::bind_to_tag(check, &[4, 1, 2, 3, 4, 5, 6], TagType::Ntag424Dna);
    assert!(bound.covers.is_empty() || bound.outcome.authentic());
    let redacted = sun::redact_sun_url(url);
    assert!(!redacted.is_empty() || url.is_empty());
});
