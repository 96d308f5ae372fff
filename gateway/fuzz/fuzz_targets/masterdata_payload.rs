//! Payload records: any bytes either parse into records or are refused with
//! a line number; whatever parses builds an index that answers lookups.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracegate::masterdata::index::{Checks, IndexBuilder, Subject};
use tracegate::masterdata::records::parse_payload;
use tracegate::masterdata::shipment::evaluate_pass;

fuzz_target!(|data: &[u8]| {
    let mut b = IndexBuilder::default();
    if parse_payload(data, |r| b.add(r)).is_err() {
        return;
    }
    let idx = b.finish();
    let s = Subject {
        gtin: Some("09506000134352"),
        serial: Some("17"),
        sscc: Some("106141412345678908"),
        uid: Some(&[4, 1, 2, 3, 4, 5, 6]),
    };
    let mut flags = Vec::new();
    let _ = idx.check(&s, "dock-1", Checks::ALL, Some("DE"), &mut flags);
    let _ = evaluate_pass(&idx, "dock-1", &[s]);
});
