//! URI-side parsers (Digital Link, EPC patterns, tag URI encoder, CBV hash
//! canonicaliser) must never panic on arbitrary text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracegate_gs1::{digital_link, encode_tag_uri, epcis, EpcPattern};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let _ = digital_link::parse(s);
    let _ = EpcPattern::parse(s);
    if let Ok(b) = encode_tag_uri(s) {
        let _ = tracegate_gs1::decode_epc(&b);
    }
    let _ = epcis::canonical_gs1_uri(s);
    let ev = serde_json::json!({"type": "ObjectEvent", "eventTime": s, "epcList": [s], "bizStep": s,
        "bizTransactionList": [{"type": s, "bizTransaction": s}], "ilmd": {"x:lot": s}});
    let _ = epcis::event_prehash(&ev, &serde_json::json!([{"x": s}]));
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(s) {
        let _ = epcis::event_prehash(&v, &serde_json::Value::Null);
    }
});
