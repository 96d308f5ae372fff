//! Any string as an NDEF URL to verify, against two products' keys.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracegate_drivers::nfc::sun::{self, AesKey, KeyFile, MacInput, SunKeys};

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
        ],
    };
    let _ = sun::verify(url, &keys);
});
