//! The EPCIS 2.0 document builder: hashes agree with the reference implementation's
//! derived gateway vectors, documents carry every field the EPCIS 2.0 JSON schema
//! requires with the right types, and bad input is refused with a reason.
//!
//! The GS1 JSON schema itself is not vendored: the gs1/EPCIS repository ships it under
//! a GS1 disclaimer rather than an open-source licence, so its required fields, enums
//! and patterns are asserted here instead.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{json, Value};
use tracegate_gs1::epcis::{
    document_hashes, valid_tz_offset, Action, EpcisDocument, EpcisError, ObjectEvent,
    CBV_BIZ_STEPS, CBV_DISPOSITIONS, EPCIS_CONTEXT,
};

const T0: i64 = 1_714_557_600_000; // 2024-05-01T10:00:00.000Z

fn commissioning() -> ObjectEvent {
    let mut ev = ObjectEvent::new(
        vec!["urn:epc:id:sgtin:0614141.812345.6789".into()],
        T0,
        Action::Add,
    );
    ev.event_time_zone_offset = "+02:00".into();
    ev.biz_step = Some("commissioning".into());
    ev.disposition = Some("active".into());
    ev.read_point = Some("urn:epc:id:sgln:0614141.12345.400".into());
    ev.biz_location = Some("urn:epc:id:sgln:0614141.12345.0".into());
    ev
}

#[test]
fn builder_event_ids_match_reference_implementation_vectors() {
    let mut doc = EpcisDocument::new(T0 + 1000);
    assert_eq!(
        doc.push(&commissioning()).unwrap(),
        "ni:///sha-256;b78bdfe546922b44ea2c92a8ea0f042c8acb02f15ecc693131edaf98a9e76353?ver=CBV2.0"
    );

    let mut doc = EpcisDocument::new(T0 + 1000)
        .with_namespace("gw", "https://example.org/rfid-gateway/")
        .unwrap();
    let mut ev = ObjectEvent::new(
        vec!["urn:epc:id:sgtin:0614141.812345.6789".into()],
        T0,
        Action::Observe,
    );
    ev.biz_step = Some("inspecting".into());
    ev.disposition = Some("non_conformant".into());
    ev.read_point = Some("urn:epc:id:sgln:0614141.12345.400".into());
    ev.extensions
        .push(("gw:tid".into(), json!("E2806894200050004A1B2C3D")));
    ev.extensions.push(("gw:antenna".into(), json!(2)));
    assert_eq!(
        doc.push(&ev).unwrap(),
        "ni:///sha-256;ed349f9ca7f117d4ce80a01d2f7e268f863acd51af26183a7305189c62798ad1?ver=CBV2.0"
    );
    // Re-hashing the emitted document gives the embedded IDs (eventID is excluded).
    let json = doc.to_json();
    let ids: Vec<String> = json["epcisBody"]["eventList"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["eventID"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(document_hashes(&json).unwrap(), ids);
}

fn is_uri(v: &Value) -> bool {
    v.as_str().is_some_and(|s| {
        s.split_once(':')
            .is_some_and(|(a, b)| !a.is_empty() && !b.is_empty())
            && !s.contains(' ')
    })
}

fn is_utc_ms(v: &Value) -> bool {
    let s = v.as_str().unwrap_or("");
    let b = s.as_bytes();
    s.len() == 24
        && s.ends_with('Z')
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'.'
        && s.bytes()
            .enumerate()
            .all(|(i, c)| [4, 7, 10, 13, 16, 19, 23].contains(&i) || c.is_ascii_digit())
}

#[test]
fn documents_satisfy_the_epcis_2_schema_requirements() {
    let mut doc = EpcisDocument::new(T0 + 1000)
        .with_namespace("gw", "https://example.org/rfid-gateway/")
        .unwrap();
    doc.push(&commissioning()).unwrap();
    let mut obs = ObjectEvent::new(
        vec![
            "urn:epc:id:sscc:0614141.1234567890".into(),
            "https://id.gs1.org/01/09506000134352/21/ABC%2F1".into(),
            "urn:epc:id:sscc:0614141.1234567890".into(),
        ],
        T0 + 123,
        Action::Observe,
    );
    obs.event_time_zone_offset = "-05:30".into();
    obs.biz_step = Some("https://example.org/vocab/custom-step".into());
    obs.extensions.push((
        "gw:reader".into(),
        json!({"id": "dock-1", "antennas": [1, 2]}),
    ));
    doc.push(&obs).unwrap();
    doc.push(&ObjectEvent::new(
        vec!["urn:epc:id:giai:0614141.5678".into()],
        T0,
        Action::Delete,
    ))
    .unwrap();

    let d: Value = serde_json::from_str(&doc.to_json_string()).unwrap();
    // EPCISDocument required: @context, type, schemaVersion, creationDate, epcisBody.
    assert_eq!(d["@context"][0], EPCIS_CONTEXT);
    assert_eq!(
        d["@context"][1],
        json!({"gw": "https://example.org/rfid-gateway/"})
    );
    assert_eq!(d["type"], "EPCISDocument");
    assert_eq!(d["schemaVersion"], "2.0");
    assert!(is_utc_ms(&d["creationDate"]));
    let events = d["epcisBody"]["eventList"].as_array().unwrap();
    assert_eq!(events.len(), 3);
    for e in events {
        // ObjectEvent required: type, action, eventTime, eventTimeZoneOffset, one of
        // epcList/quantityList/sensorElementList.
        assert_eq!(e["type"], "ObjectEvent");
        assert!(["ADD", "OBSERVE", "DELETE"].contains(&e["action"].as_str().unwrap()));
        assert!(is_utc_ms(&e["eventTime"]), "{e}");
        assert!(valid_tz_offset(e["eventTimeZoneOffset"].as_str().unwrap()));
        let epcs = e["epcList"].as_array().unwrap();
        assert!(!epcs.is_empty() && epcs.iter().all(is_uri));
        let unique: std::collections::BTreeSet<&str> =
            epcs.iter().map(|e| e.as_str().unwrap()).collect();
        assert_eq!(unique.len(), epcs.len(), "epcList must have unique items");
        let id = e["eventID"].as_str().unwrap();
        assert!(
            id.starts_with("ni:///sha-256;")
                && id.ends_with("?ver=CBV2.0")
                && id.len() == 14 + 64 + 11
        );
        if let Some(b) = e.get("bizStep") {
            assert!(CBV_BIZ_STEPS.contains(&b.as_str().unwrap()) || is_uri(b));
        }
        if let Some(b) = e.get("disposition") {
            assert!(CBV_DISPOSITIONS.contains(&b.as_str().unwrap()) || is_uri(b));
        }
        for k in ["readPoint", "bizLocation"] {
            if let Some(o) = e.get(k) {
                assert!(is_uri(&o["id"]) && o.as_object().unwrap().len() == 1);
            }
        }
        // Only schema properties or namespaced extensions.
        for k in e.as_object().unwrap().keys() {
            let known = [
                "type",
                "eventID",
                "eventTime",
                "eventTimeZoneOffset",
                "epcList",
                "action",
                "bizStep",
                "disposition",
                "readPoint",
                "bizLocation",
            ];
            assert!(known.contains(&k.as_str()) || k.starts_with("gw:"), "{k}");
        }
    }
    assert_eq!(events[1]["eventTime"], "2024-05-01T10:00:00.123Z");
    assert_eq!(events[1]["epcList"].as_array().unwrap().len(), 2);
    assert_eq!(events[1]["gw:reader"]["antennas"], json!([1, 2]));
}

#[test]
fn identical_inputs_give_identical_event_ids_and_extensions_change_them() {
    let a = EpcisDocument::new(0).push(&commissioning()).unwrap();
    let b = EpcisDocument::new(99).push(&commissioning()).unwrap();
    assert_eq!(a, b);
    let mut doc = EpcisDocument::new(0)
        .with_namespace("gw", "https://example.org/gw/")
        .unwrap();
    let mut ev = commissioning();
    ev.extensions.push(("gw:antenna".into(), json!(1)));
    assert_ne!(doc.push(&ev).unwrap(), a);
}

type ErrCheck = fn(&EpcisError) -> bool;

#[test]
fn bad_inputs_are_refused_with_reasons() {
    let mut doc = EpcisDocument::new(0)
        .with_namespace("gw", "https://example.org/gw/")
        .unwrap();
    let base = commissioning();
    let cases: Vec<(ObjectEvent, ErrCheck)> = vec![
        (
            ObjectEvent {
                epcs: vec![],
                ..base.clone()
            },
            |e| matches!(e, EpcisError::NoEpcs),
        ),
        (
            ObjectEvent {
                epcs: vec!["not a uri".into()],
                ..base.clone()
            },
            |e| matches!(e, EpcisError::NotUri { .. }),
        ),
        (
            ObjectEvent {
                event_time_zone_offset: "+2:00".into(),
                ..base.clone()
            },
            |e| matches!(e, EpcisError::BadTzOffset(_)),
        ),
        (
            ObjectEvent {
                event_time_ms: -1,
                ..base.clone()
            },
            |e| matches!(e, EpcisError::BadTime(_)),
        ),
        (
            ObjectEvent {
                biz_step: Some("teleporting".into()),
                ..base.clone()
            },
            |e| matches!(e, EpcisError::BadVocabulary { .. }),
        ),
        (
            ObjectEvent {
                disposition: Some("shipping".into()),
                ..base.clone()
            },
            |e| matches!(e, EpcisError::BadVocabulary { .. }),
        ),
        (
            ObjectEvent {
                read_point: Some("dock 1".into()),
                ..base.clone()
            },
            |e| matches!(e, EpcisError::NotUri { .. }),
        ),
        (
            ObjectEvent {
                extensions: vec![("xx:tid".into(), json!(1))],
                ..base.clone()
            },
            |e| matches!(e, EpcisError::BadExtensionKey(_)),
        ),
        (
            ObjectEvent {
                extensions: vec![("antenna".into(), json!(1))],
                ..base.clone()
            },
            |e| matches!(e, EpcisError::BadExtensionKey(_)),
        ),
    ];
    for (ev, want) in cases {
        let err = doc.push(&ev).unwrap_err();
        assert!(want(&err), "{err}");
        assert!(!err.to_string().is_empty());
    }
    assert!(doc.is_empty());
    assert!(EpcisDocument::new(0)
        .with_namespace("gs1", "https://x.org/")
        .is_err());
    assert!(EpcisDocument::new(0)
        .with_namespace("gw", "no-scheme")
        .is_err());
    assert_eq!("observe".parse::<Action>().unwrap(), Action::Observe);
    assert!("MOVE".parse::<Action>().is_err());
}
