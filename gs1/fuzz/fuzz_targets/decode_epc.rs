//! EPC/TID decoding must never panic, and every successful decode must re-encode to
//! the same scheme bits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracegate_gs1::{decode_epc, decode_gen2, decode_tid, encode_tag_uri};

fuzz_target!(|data: &[u8]| {
    let d = decode_epc(data);
    if d.raw_reason.is_none() && !d.tag_uri.starts_with("urn:epc:raw:") {
        let again = encode_tag_uri(&d.tag_uri).expect("decoded tag URI must re-encode");
        assert_eq!(&again[..d.bits / 8], &data[..d.bits / 8], "{}", d.tag_uri);
        assert_eq!(decode_epc(&again).tag_uri, d.tag_uri);
    } else {
        assert!(d.tag_uri.starts_with("urn:epc:raw:"));
    }
    let _ = d.to_json();
    let _ = d.to_string();
    if data.len() >= 4 {
        let pc = u16::from_be_bytes([data[0], data[1]]);
        let xpc = u16::from_be_bytes([data[2], data[3]]);
        let g = decode_gen2(pc, Some(xpc), &data[4..]);
        assert!(g.tag_uri.starts_with("urn:epc:"));
    }
    let _ = decode_tid(data).to_json();
});
