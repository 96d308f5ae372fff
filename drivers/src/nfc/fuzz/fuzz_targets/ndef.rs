//! Any bytes as a Type 2 TLV area, an NDEF message, and record payloads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracegate_drivers::nfc::ndef;

fuzz_target!(|data: &[u8]| {
    if let ndef::TlvScan::Ndef(r) = ndef::scan_type2_tlvs(data) {
        let _ = ndef::summarize(&data[r]);
    }
    if let Ok(records) = ndef::parse_message(data) {
        for r in records {
            let _ = ndef::parse_uri_payload(r.payload);
            let _ = ndef::parse_text_payload(r.payload);
        }
    }
    let _ = ndef::summarize(data);
});
