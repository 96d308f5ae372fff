use proptest::prelude::*;
use serde_json::json;

use super::*;

#[test]
fn times_are_utc_with_exactly_three_decimals() {
    assert_eq!(iso_ms(1_700_000_000_000), "2023-11-14T22:13:20.000Z");
    assert_eq!(iso_ms(1_700_000_000_120), "2023-11-14T22:13:20.120Z");
    assert_eq!(iso_ms(1_795_823_999_123), "2026-11-27T23:59:59.123Z");
    assert_eq!(iso_ms(0), "1970-01-01T00:00:00.000Z");
    assert_eq!(iso_ms(-1), "1969-12-31T23:59:59.999Z");
    assert_eq!(iso_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
}

#[test]
fn times_outside_four_digit_years_are_clamped_not_malformed() {
    assert_eq!(iso_ms(i64::MAX), "9999-12-31T23:59:59.999Z");
    assert_eq!(iso_ms(i64::MIN), "0000-01-01T00:00:00.000Z");
    assert_eq!(UtcMs::parse(&iso_ms(MIN_ISO_MS)), Some(UtcMs(MIN_ISO_MS)));
    assert_eq!(UtcMs::parse(&iso_ms(MAX_ISO_MS)), Some(UtcMs(MAX_ISO_MS)));
}

proptest! {
    #[test]
    fn the_time_formatter_agrees_with_chrono_and_parses_back(ms in MIN_ISO_MS..=MAX_ISO_MS) {
        let text = iso_ms(ms);
        let chrono = chrono::DateTime::from_timestamp_millis(ms)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        prop_assert_eq!(&text, &chrono);
        prop_assert_eq!(UtcMs::parse(&text), Some(UtcMs(ms)));
    }
}

#[test]
fn time_parsing_accepts_any_rfc3339_offset() {
    assert_eq!(
        UtcMs::parse("2026-11-28T01:07:12.345+01:00"),
        UtcMs::parse("2026-11-28T00:07:12.345Z")
    );
    assert_eq!(UtcMs::parse("yesterday"), None);
    assert_eq!(UtcMs::parse("2026-02-30T00:00:00.000Z"), None);
    assert_eq!(UtcMs::parse("2026-11-28T24:00:00.000Z"), None);
    assert_eq!(
        UtcMs::parse("2024-02-29T12:00:00.000Z").map(|t| t.0),
        Some(1_709_208_000_000)
    );
}

fn tap() -> Event {
    let mut t = TapEvent {
        at: ReadContext {
            site: "dc1".into(),
            read_point: "desk".into(),
            reader: "nfc-1".into(),
            clock_synced: false,
        },
        identity: NfcIdentity {
            uid: vec![0x04, 0xa1, 0xff],
            gtin: Some("09506000134352".into()),
            serial: Some("S1".into()),
            lot: None,
            digital_link: Some("https://id.example.com/01/09506000134352/21/S1".into()),
            source: Some(IdentitySource::Authenticated),
        },
        tap: TapDetails {
            tag_type: "ntag424dna".into(),
            ndef_uri: Some("https://id.example.com/01/09506000134352/21/S1".into()),
            ndef_text: None,
            atr: vec![0x3b, 0x8f],
        },
        flags: Vec::new(),
        masterdata: None,
        sun: Some(SunResult {
            verdict: SunVerdict::Genuine,
            counter: Some(7),
            product: Some("demo".into()),
            uid: Some(vec![0x04, 0xa1, 0xff]),
            covers: vec![SunCovered::Uid, SunCovered::Counter, SunCovered::Url],
        }),
    };
    t.set_sun_verdict(SunVerdict::Replayed);
    let mut e = Event::new("gw-7", UtcMs(1_795_823_999_123), EventBody::Tap(t));
    e.id = "gw-7:ab12:5".into();
    e.seq = 5;
    e
}

#[test]
fn a_tap_serialises_to_the_documented_fields() {
    let v: serde_json::Value = serde_json::to_value(tap()).unwrap();
    assert_eq!(
        v,
        json!({
            "id": "gw-7:ab12:5", "seq": 5, "type": "tap", "gateway": "gw-7",
            "time": "2026-11-27T23:59:59.123Z",
            "site": "dc1", "read_point": "desk", "reader": "nfc-1", "clock_synced": false,
            "identity": {"uid": "04A1FF", "gtin": "09506000134352", "serial": "S1",
                         "digital_link": "https://id.example.com/01/09506000134352/21/S1",
                         "source": "claimed"},
            "tap": {"tag_type": "ntag424dna",
                    "ndef_uri": "https://id.example.com/01/09506000134352/21/S1",
                    "atr": "3B8F"},
            "flags": ["replayed_nfc"],
            "sun": {"verdict": "replayed", "counter": 7, "product": "demo", "uid": "04A1FF",
                    "covers": ["uid", "counter", "url"]}
        })
    );
}

#[test]
fn the_envelope_leads_the_json_in_a_fixed_order() {
    let text = tap().to_json_numbered("x:y:9", 9).unwrap();
    assert!(
        text.starts_with(
            r#"{"id":"x:y:9","seq":9,"type":"tap","gateway":"gw-7","time":"2026-11-27T23:59:59.123Z","#
        ),
        "{text}"
    );
    let back: Event = serde_json::from_str(&text).unwrap();
    assert_eq!((back.id.as_str(), back.seq), ("x:y:9", 9));
}

#[test]
fn a_new_sun_verdict_replaces_the_flag_of_the_previous_one() {
    let Event {
        body: EventBody::Tap(mut t),
        ..
    } = tap()
    else {
        unreachable!()
    };
    assert_eq!(t.flags, vec![Flag::ReplayedNfc]);
    t.set_sun_verdict(SunVerdict::InvalidMac);
    assert_eq!(t.flags, vec![Flag::ForgedNfc]);
    t.set_sun_verdict(SunVerdict::Genuine);
    assert!(t.flags.is_empty());
    assert_eq!(t.sun.map(|s| s.verdict), Some(SunVerdict::Genuine));
}

#[test]
fn the_human_line_shows_read_point_identity_flags_and_verdicts() {
    let line = tap().human_line();
    for part in [
        "       5  2026-11-27T23:59:59.123Z  tap",
        "desk",
        "https://id.example.com/01/09506000134352/21/S1",
        "sun:replayed#7",
        "!replayed_nfc",
        "gw-7:ab12:5",
    ] {
        assert!(line.contains(part), "{part:?} missing from {line:?}");
    }

    let epc = hex::decode("3074257BF7194E4000001A85").unwrap();
    let mut e = Event::sample_arrival("gw", "dc1", "door-3", &epc, 0);
    if let EventBody::Arrived(b) = &mut e.body {
        b.flags = vec![Flag::Unexpected, Flag::Cloned];
        b.direction = Some(Direction::Out);
    }
    let line = e.human_line();
    assert!(
        line.contains("door-3")
            && line.contains("urn:epc:id:sgtin:0614141.812345.6789")
            && line.contains("dir:out")
            && line.contains("!unexpected,!cloned"),
        "{line}"
    );

    let raw = hex::decode("E2801170000002111111AAAA").unwrap();
    let line = Event::sample_arrival("gw", "dc1", "door-3", &raw, 0).human_line();
    assert!(line.contains("epc:E2801170000002111111AAAA"), "{line}");
}

fn arb_text() -> impl Strategy<Value = String> {
    // Plain text most of the time; quotes, backslashes, control characters
    // and non-ASCII often enough to exercise the escaping path.
    prop_oneof![
        3 => "[a-zA-Z0-9:./_-]{0,24}",
        1 => "[a-z\"\\\\\u{0}-\u{1f}\u{7f}é☃]{0,12}",
    ]
}

prop_compose! {
    fn arb_identity()(
        epc in proptest::collection::vec(any::<u8>(), 0..40),
        tid in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..16)),
        scheme in arb_text(),
        pure_identity in arb_text(),
        tag_uri in arb_text(),
        gtin in proptest::option::of(arb_text()),
        serial in proptest::option::of(arb_text()),
        element_string in proptest::option::of(arb_text()),
        digital_link in proptest::option::of(arb_text()),
    ) -> UhfIdentity {
        UhfIdentity {
            tid_info: tid.as_deref().map(tracegate_gs1::decode_tid),
            epc, tid, scheme, pure_identity, tag_uri, gtin, serial, element_string, digital_link,
        }
    }
}

prop_compose! {
    fn arb_uhf_event()(
        kind in 0..3u8,
        gateway in arb_text(),
        time in MIN_ISO_MS..=MAX_ISO_MS,
        site in arb_text(),
        read_point in arb_text(),
        reader in arb_text(),
        clock_synced in any::<bool>(),
        identity in arb_identity(),
        first_seen in MIN_ISO_MS..=MAX_ISO_MS,
        last_seen in any::<i64>(),
        read_count in any::<u64>(),
        peak_rssi_dbm in proptest::option::of(any::<i16>()),
        antennas in proptest::collection::vec(any::<u8>(), 0..4),
        direction in proptest::option::of(prop_oneof![Just(Direction::In), Just(Direction::Out)]),
        evicted in any::<bool>(),
        flags in proptest::sample::subsequence(
            vec![Flag::Unknown, Flag::Unexpected, Flag::Cloned, Flag::OverScanned, Flag::Blocked,
                 Flag::UnknownSerial, Flag::WrongMarket, Flag::NotExpected], 0..4),
        masterdata in proptest::option::of((proptest::option::of(arb_text()), proptest::option::of(arb_text()))),
        epcis in proptest::option::of((proptest::option::of(arb_text()), proptest::option::of(arb_text()), 0..3u8)),
    ) -> Event {
        let body = UhfEvent {
            at: ReadContext { site, read_point, reader, clock_synced },
            identity,
            first_seen: UtcMs(first_seen),
            last_seen: UtcMs(last_seen),
            read_count,
            peak_rssi_dbm,
            antennas,
            direction,
            reason: evicted.then_some(DepartureReason::Evicted),
            flags,
            masterdata: masterdata.map(|(g, s)| MasterdataDetail {
                blocked_reason: g.as_ref().map(|_| BlockReason::Recalled),
                bound_gtin: g,
                bound_serial: s,
            }),
            epcis: epcis.map(|(b, r, a)| EpcisContext {
                biz_step: b,
                disposition: None,
                read_point_id: r,
                biz_location: None,
                action: [EpcisAction::Add, EpcisAction::Observe, EpcisAction::Delete][usize::from(a)],
            }),
        };
        let body = match kind {
            0 => EventBody::Arrived(body),
            1 => EventBody::Departed(body),
            _ => EventBody::Present(body),
        };
        Event::new(gateway, UtcMs(time), body)
    }
}

proptest! {
    #[test]
    fn hand_written_uhf_json_is_byte_for_byte_what_serde_writes(
        event in arb_uhf_event(),
        id in arb_text(),
        seq in any::<u64>(),
    ) {
        let fast = event.to_json_numbered(&id, seq).unwrap();
        let serde = serde_json::to_string(&Numbered { id: &id, seq, event: &event }).unwrap();
        prop_assert_eq!(&fast, &serde);
        let back: Event = serde_json::from_str(&fast).unwrap();
        prop_assert_eq!((back.id.as_str(), back.seq), (id.as_str(), seq));
    }
}
