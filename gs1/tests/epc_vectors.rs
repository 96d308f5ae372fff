//! Every EPC vector in testdata/ (TDS 1.13 Appendix E.3, epcpy, epctagcoder, rust-gs1
//! facts, derived gen2-bank cases) run through the decoder and encoder.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use tracegate_gs1::{decode_epc_hex, decode_gen2, encode_tag_uri, pure_uri_to_element_string};

fn load(name: &str) -> Value {
    let path = format!("{}/testdata/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).expect(&path)).unwrap()
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str()
        .unwrap_or_else(|| panic!("missing {k} in {v}"))
}

#[test]
fn tds_decode_vectors_produce_every_representation() {
    let v = load("epc_tds_vectors.json");
    let cases = v["decode_ok"].as_array().unwrap();
    assert_eq!(cases.len(), 45);
    for c in cases {
        let d = decode_epc_hex(s(c, "hex")).unwrap();
        assert_eq!(d.scheme, s(c, "scheme"), "{c}");
        assert_eq!(
            u64::from(d.filter.unwrap()),
            c["filter"].as_u64().unwrap(),
            "{c}"
        );
        assert_eq!(d.tag_uri, s(c, "tag_uri"), "{c}");
        assert_eq!(d.pure_identity_uri, s(c, "pure_uri"), "{c}");
        assert_eq!(
            d.element_string.as_deref(),
            Some(s(c, "element_string")),
            "{c}"
        );
        assert_eq!(d.digital_link.as_deref(), Some(s(c, "digital_link")), "{c}");
        assert!(d.raw_reason.is_none());
    }
}

#[test]
fn tds_vectors_encode_back_to_the_same_bits() {
    let v = load("epc_tds_vectors.json");
    for c in v["decode_ok"].as_array().unwrap() {
        let bytes = encode_tag_uri(s(c, "tag_uri")).unwrap();
        let scheme_bits: usize = s(c, "scheme").rsplit('-').next().unwrap().parse().unwrap();
        let want = hex::decode(format!(
            "{:0<width$}",
            s(c, "hex"),
            width = scheme_bits.div_ceil(16) * 4
        ))
        .unwrap();
        // Compare only the scheme's bits: printed vectors may be shorter than a word.
        let full = scheme_bits / 8;
        assert_eq!(&bytes[..full], &want[..full], "{c}");
        let d = tracegate_gs1::decode_epc(&bytes);
        assert_eq!(d.tag_uri, s(c, "tag_uri"));
    }
}

#[test]
fn must_fail_vectors_become_raw_uris_not_errors() {
    let v = load("epc_tds_vectors.json");
    for c in v["decode_must_fail"].as_array().unwrap() {
        let hex = s(c, "hex");
        let d = decode_epc_hex(hex).unwrap();
        assert_eq!(d.scheme, "raw", "{c}");
        assert!(d.raw_reason.is_some());
        assert_eq!(d.tag_uri, format!("urn:epc:raw:96.x{hex}"));
        assert_eq!(d.pure_identity_uri, d.tag_uri);
        assert!(d.element_string.is_none() && d.digital_link.is_none());
    }
}

#[test]
fn gen2_pc_word_adds_control_fields_and_iso_raw_form() {
    let v = load("epc_tds_vectors.json");
    for c in v["gen2_bank_to_uri_derived"].as_array().unwrap() {
        let pc = u16::from_str_radix(s(c, "pc"), 16).unwrap();
        let epc = hex::decode(s(c, "epc_hex")).unwrap();
        let d = decode_gen2(pc, None, &epc);
        assert_eq!(d.tag_uri, s(c, "uri"), "{c}");
    }
    // TDS 1.13 §12.2.2 verbatim examples.
    let epc = hex::decode("1234567890ABCDEF01234567").unwrap();
    assert_eq!(
        decode_gen2(0x3601 | 0x0200, Some(0x0004), &epc).tag_uri,
        "urn:epc:raw:[att=x01][umi=1][xpc=x0004]:96.x1234567890ABCDEF01234567"
    );
    assert_eq!(
        decode_gen2(0x3300 | 0x00C1, Some(0x0001), &epc).tag_uri,
        "urn:epc:raw:[xpc=x0001]:96.xC1.x1234567890ABCDEF01234567"
    );
    let sgtin = encode_tag_uri("urn:epc:tag:sgtin-96:3.0614141.112345.400").unwrap();
    assert_eq!(
        decode_gen2(0x3001, None, &sgtin).tag_uri,
        "urn:epc:tag:[att=x01]:sgtin-96:3.0614141.112345.400"
    );
}

const SUPPORTED: [&str; 9] = [
    "sgtin-96",
    "sgtin-198",
    "sscc-96",
    "sgln-96",
    "sgln-195",
    "grai-96",
    "grai-170",
    "giai-96",
    "giai-202",
];

#[test]
fn epcpy_tag_vectors_decode_or_fall_back_to_raw_for_unsupported_schemes() {
    let v = load("epcpy_test_vectors_extracted.json");
    let (mut decoded, mut raw) = (0, 0);
    for c in v.as_array().unwrap() {
        let Some(hex) = c["hex"].as_str() else {
            continue;
        };
        let d = decode_epc_hex(hex).unwrap();
        let tag = s(c, "tag_uri");
        let scheme = tag
            .trim_start_matches("urn:epc:tag:")
            .split(':')
            .next()
            .unwrap();
        if SUPPORTED.contains(&scheme) {
            assert_eq!(d.tag_uri, tag, "{c}");
            assert_eq!(d.pure_identity_uri, s(c, "uri"), "{c}");
            assert_eq!(
                encode_tag_uri(tag).unwrap()[..d.bits / 8],
                hex::decode(hex).unwrap()[..d.bits / 8]
            );
            decoded += 1;
        } else {
            // GDTI, GSRN, GID, CPI, ITIP, ADI, USDoD, SGCN: outside this decoder's scope,
            // so they must survive as raw URIs carrying every bit.
            assert_eq!(d.scheme, "raw", "{c}");
            assert!(d.tag_uri.ends_with(&hex.to_uppercase()), "{c}");
            raw += 1;
        }
    }
    assert_eq!((decoded, raw), (30, 42));
}

#[test]
fn epcpy_element_strings_match_pure_uris() {
    let v = load("epcpy_test_vectors_extracted.json");
    let mut checked = 0;
    for c in v.as_array().unwrap() {
        let (Some(uri), Some(es)) = (c["uri"].as_str(), c["gs1_element_string"].as_str()) else {
            continue;
        };
        let fam = uri.split(':').nth(3).unwrap();
        if !["sgtin", "sscc", "sgln", "grai", "giai"].contains(&fam)
            || !uri.starts_with("urn:epc:id:")
        {
            continue;
        }
        // epcpy writes (254)0 for an SGLN without extension; TDS §7.4 and the CBV hash
        // normaliser omit (254) when the extension is "0", and so do we.
        let want = es.strip_suffix("(254)0").unwrap_or(es);
        assert_eq!(
            pure_uri_to_element_string(uri).as_deref(),
            Some(want),
            "{c}"
        );
        checked += 1;
    }
    assert_eq!(checked, 30);
}

#[test]
fn tid_vectors_decode_mdid_tmn_and_serial() {
    let v = load("epc_tds_vectors.json");
    let cases = v["tid_derived"].as_array().unwrap();
    assert_eq!(cases.len(), 4);
    for c in cases {
        let t = tracegate_gs1::decode_tid_hex(s(c, "tid_hex")).unwrap();
        assert_eq!(t.class, Some(0xE2));
        assert_eq!(t.xtid, Some(c["xtid"] == 1), "{c}");
        assert_eq!(t.security, Some(c["security"] == 1));
        assert_eq!(t.file, Some(c["file"] == 1));
        assert_eq!(
            u64::from(t.mdid.unwrap()),
            c["mdid"].as_u64().unwrap(),
            "{c}"
        );
        assert_eq!(u64::from(t.tmn.unwrap()), c["tmn"].as_u64().unwrap(), "{c}");
        assert!(t.manufacturer.is_some());
        if let Some(serial) = c["serial"].as_str() {
            assert_eq!(t.serial.as_deref(), Some(serial));
            assert_eq!(t.serial_bits, c["serial_bits"].as_u64().map(|b| b as usize));
            assert_eq!(
                format!("0x{:04X}", t.xtid_header.unwrap()),
                s(c, "xtid_header")
            );
            assert_eq!(t.stid_uri.as_deref(), Some(s(c, "stid_uri_tds113_literal")));
        } else {
            assert!(t.serial.is_none());
        }
    }
    let t = tracegate_gs1::decode_tid_hex("E2003412").unwrap();
    assert_eq!(t.manufacturer.as_deref(), Some("Alien Technology"));
    assert_eq!(t.model.as_deref(), Some("Alien Higgs-3"));
    let json: Value = serde_json::from_str(&t.to_json()).unwrap();
    assert_eq!(json["mdid"], 3);
}

#[test]
fn decoded_json_has_stable_snake_case_keys_and_display_lists_every_form() {
    let d = decode_epc_hex("3074257BF7194E4000001A85").unwrap();
    let json: Value = serde_json::from_str(&d.to_json()).unwrap();
    // Sorted so the check holds whether or not serde_json's preserve_order is enabled.
    let mut keys: Vec<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "bits",
            "company_prefix",
            "digital_link",
            "element_string",
            "filter",
            "gtin",
            "hex",
            "item_reference",
            "pure_identity_uri",
            "raw_reason",
            "scheme",
            "serial",
            "tag_uri"
        ]
    );
    assert_eq!(json["scheme"], "sgtin-96");
    assert_eq!(json["raw_reason"], Value::Null);
    let text = d.to_string();
    for needle in [
        "sgtin-96 (96 bits)",
        "urn:epc:id:sgtin:0614141.812345.6789",
        "urn:epc:tag:sgtin-96:3.0614141.812345.6789",
        "(01)80614141123458(21)6789",
        "https://id.gs1.org/01/80614141123458/21/6789",
        "80614141123458",
    ] {
        assert!(text.contains(needle), "{needle} missing from\n{text}");
    }
    assert_eq!(d.identity(), Some("urn:epc:id:sgtin:0614141.812345.6789"));
    let raw = decode_epc_hex("E2000019060C02090690D3C2").unwrap();
    assert!(raw.to_string().contains("not decodable:"));
    assert_eq!(raw.identity(), None);
    let back: tracegate_gs1::Decoded = serde_json::from_str(&d.to_json()).unwrap();
    assert_eq!(back, d);
}

#[test]
fn tds2_sgtin_plus_and_dsgtin_plus_decode_to_digital_links() {
    let v = load("epc_tds_vectors.json");
    let cases = v["tds2_plus_derived"].as_array().unwrap();
    assert_eq!(cases.len(), 4);
    for c in cases {
        let hex = s(c, "hex");
        let d = decode_epc_hex(hex).unwrap();
        assert_eq!(d.scheme, s(c, "scheme").to_lowercase(), "{c}");
        assert_eq!(u64::from(d.filter.unwrap()), c["filter"].as_u64().unwrap());
        assert_eq!(d.gtin.as_deref(), Some(s(c, "gtin")));
        assert_eq!(d.serial.as_deref(), Some(s(c, "serial")));
        assert_eq!(d.digital_link.as_deref(), Some(s(c, "digital_link")), "{c}");
        assert_eq!(
            &d.pure_identity_uri,
            s(c, "digital_link").split('?').next().unwrap()
        );
        assert_eq!(d.tag_uri, format!("urn:epc:raw:{}.x{hex}", hex.len() * 4));
        assert!(d.company_prefix.is_none() && d.raw_reason.is_none());
    }
    let dated = decode_epc_hex("FB342CDE795211411234538566CB0AFC4000").unwrap();
    assert_eq!(
        dated.element_string.as_deref(),
        Some("(01)79521141123453(17)220630(21)32a/b")
    );
    // The TDS 2.3 '++' schemes (hostname appended) stay raw.
    let pp = decode_epc_hex("FD3795211411234538566CB0AFC525065F1876F0D996D800").unwrap();
    assert!(pp.is_raw());
    // A wrong GTIN check digit makes an SGTIN+ raw rather than a false identity.
    let bad = decode_epc_hex("F7380614141123459046A140").unwrap();
    assert!(bad.is_raw(), "{bad}");
}
