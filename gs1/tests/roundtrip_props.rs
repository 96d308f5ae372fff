//! Property tests: encode → decode round trips for every supported scheme and
//! partition, and no panic on arbitrary bytes, PC words, links or hash inputs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::prelude::*;
use serde_json::json;
use tracegate_gs1::{
    decode_epc, decode_gen2, decode_tid, digital_link, encode_tag_uri, urn_escape, EpcPattern,
};

/// (scheme, company-prefix digits by partition, other-field digits, serial kind)
#[derive(Debug, Clone, Copy)]
enum Serial {
    Int(u32),
    Str(usize),
    None,
}

const CP: [usize; 7] = [12, 11, 10, 9, 8, 7, 6];
const SCHEMES: [(&str, [usize; 7], Serial); 9] = [
    ("sgtin-96", [1, 2, 3, 4, 5, 6, 7], Serial::Int(38)),
    ("sgtin-198", [1, 2, 3, 4, 5, 6, 7], Serial::Str(20)),
    ("sscc-96", [5, 6, 7, 8, 9, 10, 11], Serial::None),
    ("sgln-96", [0, 1, 2, 3, 4, 5, 6], Serial::Int(41)),
    ("sgln-195", [0, 1, 2, 3, 4, 5, 6], Serial::Str(20)),
    ("grai-96", [0, 1, 2, 3, 4, 5, 6], Serial::Int(38)),
    ("grai-170", [0, 1, 2, 3, 4, 5, 6], Serial::Str(16)),
    ("giai-96", [42, 45, 48, 52, 55, 58, 62], Serial::None),
    ("giai-202", [18, 19, 20, 21, 22, 23, 24], Serial::None),
];

const CS82: &[u8] =
    b"!\"%&'()*+,-./0123456789:;<=>?ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz";

fn digits(n: usize, seed: &[u8]) -> String {
    (0..n)
        .map(|i| char::from(b'0' + seed.get(i).copied().unwrap_or(0) % 10))
        .collect()
}

fn text(len: usize, seed: &[u8]) -> String {
    (0..len)
        .map(|i| char::from(CS82[usize::from(seed.get(i).copied().unwrap_or(0)) % CS82.len()]))
        .collect()
}

fn tag_uri(scheme: usize, part: usize, filter: u8, seed: &[u8], num: u64, len: usize) -> String {
    let (name, other, serial) = SCHEMES[scheme];
    let cp = digits(CP[part], seed);
    let o = other[part];
    let body = match name {
        "giai-96" => format!("{cp}.{}", num & ((1u64 << o) - 1)),
        "giai-202" => format!("{cp}.{}", urn_escape(&text(1 + len % o, &seed[12..]))),
        _ => {
            let r = digits(o, &seed[12..]);
            match serial {
                Serial::Int(bits) => format!("{cp}.{r}.{}", num & ((1u64 << bits) - 1)),
                Serial::Str(max) => {
                    format!("{cp}.{r}.{}", urn_escape(&text(1 + len % max, &seed[24..])))
                }
                Serial::None => format!("{cp}.{r}"),
            }
        }
    };
    format!("urn:epc:tag:{name}:{filter}.{body}")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_scheme_and_partition_round_trips(
        scheme in 0usize..9, part in 0usize..7, filter in 0u8..8,
        seed in proptest::collection::vec(any::<u8>(), 48), num in any::<u64>(), len in 0usize..64,
    ) {
        let uri = tag_uri(scheme, part, filter, &seed, num, len);
        let bytes = encode_tag_uri(&uri).unwrap_or_else(|e| panic!("{uri}: {e}"));
        prop_assert_eq!(bytes.len() % 2, 0);
        let d = decode_epc(&bytes);
        prop_assert_eq!(&d.tag_uri, &uri);
        prop_assert!(d.raw_reason.is_none());
        // The pure identity URI drops the scheme size and the filter.
        let fam = SCHEMES[scheme].0.split('-').next().unwrap();
        let body = uri.split_once(':').unwrap().1.splitn(4, ':').nth(3).unwrap().split_once('.').unwrap().1;
        prop_assert_eq!(&d.pure_identity_uri, &format!("urn:epc:id:{fam}:{body}"));
        prop_assert!(d.element_string.is_some() && d.digital_link.is_some());
        let pat = format!("urn:epc:pat:{}:{filter}.*.*{}", SCHEMES[scheme].0, if matches!(fam, "sscc" | "giai") { "" } else { ".*" });
        prop_assert!(EpcPattern::parse(&pat).unwrap().matches(&d));
        if let (Some(link), Some(gtin)) = (d.digital_link.as_deref(), d.gtin.as_deref()) {
            let dl = digital_link::parse(link).unwrap();
            prop_assert_eq!(dl.gtin.as_str(), gtin);
            prop_assert_eq!(dl.serial.as_deref(), d.serial.as_deref());
            let sgtin = dl.to_sgtin_uri(CP[part]);
            prop_assert_eq!(sgtin.as_deref(), Some(d.pure_identity_uri.as_str()));
        }
    }

    #[test]
    fn arbitrary_bytes_decode_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..40), pc in any::<u16>(), xpc in any::<u16>()) {
        let d = decode_epc(&bytes);
        if d.raw_reason.is_none() && !d.tag_uri.starts_with("urn:epc:raw:") {
            // A successful decode re-encodes to the same scheme bits.
            let again = encode_tag_uri(&d.tag_uri).unwrap();
            let full = d.bits / 8;
            prop_assert_eq!(&again[..full], &bytes[..full]);
        } else {
            // Raw reads and the + schemes keep every bit in the raw URI.
            prop_assert!(d.tag_uri.starts_with("urn:epc:raw:"));
        }
        let g = decode_gen2(pc, Some(xpc), &bytes);
        prop_assert!(g.tag_uri.starts_with("urn:epc:"));
        let _ = decode_tid(&bytes);
        let _ = d.to_json();
        let _ = d.to_string();
    }

    #[test]
    fn arbitrary_strings_never_panic_parsers(s in "\\PC{0,60}", t in "(https?://[a-z.]{1,10}/|urn:epc:(id|idpat|class|pat|tag):)[a-z0-9./%*\\[\\]-]{0,40}") {
        for input in [s.as_str(), t.as_str()] {
            let _ = digital_link::parse(input);
            let _ = EpcPattern::parse(input);
            let _ = encode_tag_uri(input);
            let _ = tracegate_gs1::epcis::canonical_gs1_uri(input);
            let ev = json!({"type": "ObjectEvent", "eventTime": input, "epcList": [input], "bizStep": input, "x:y": input});
            let ctx = json!([{"x": "https://x/"}]);
            let pre = tracegate_gs1::epcis::event_prehash(&ev, &ctx);
            prop_assert!(pre.is_ok());
        }
    }
}
