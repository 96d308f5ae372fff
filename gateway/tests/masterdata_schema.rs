//! The master-data additions to events (the `masterdata_applied` kind, the
//! master-data flags and their details) match docs/events.schema.json and
//! survive JSON unchanged.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use tracegate::event::{
    BlockReason, Event, EventBody, Flag, MasterdataAppliedEvent, MasterdataDetail, UtcMs,
};

fn batch(events: &[Event]) -> serde_json::Value {
    serde_json::json!({
        "schema": "tracegate.events/1",
        "gateway": "gw1",
        "site": "plant",
        "events": events.iter().enumerate().map(|(i, e)| {
            serde_json::from_str::<serde_json::Value>(&e.to_json_numbered(&format!("gw1:00ff:{}", i + 1), i as u64 + 1).unwrap()).unwrap()
        }).collect::<Vec<_>>(),
    })
}

#[test]
fn masterdata_events_and_flags_match_the_schema_and_round_trip() {
    let applied = Event::new(
        "gw1",
        UtcMs(1_765_000_000_000),
        EventBody::MasterdataApplied(MasterdataAppliedEvent {
            site: "plant".into(),
            name: "recalls".into(),
            version: 7,
            previous_version: Some(6),
            scope: "site plant".into(),
            records: 12,
            apply_ms: 40,
        }),
    );
    let mut flagged = Event::sample_arrival(
        "gw1",
        "plant",
        "dock",
        &hex::decode("3074257BF7194E4000001A85").unwrap(),
        1_765_000_000_000,
    );
    if let EventBody::Arrived(b) = &mut flagged.body {
        b.flags = vec![
            Flag::Blocked,
            Flag::UnknownSerial,
            Flag::WrongMarket,
            Flag::NotExpected,
            Flag::SerialMismatch,
        ];
        b.masterdata = Some(MasterdataDetail {
            blocked_reason: Some(BlockReason::Recalled),
            bound_gtin: Some("09506000134352".into()),
            bound_serial: Some("42".into()),
        });
    }
    let doc = batch(&[applied.clone(), flagged.clone()]);
    support::assert_valid(&support::events_schema(), &doc);
    assert_eq!(doc["events"][0]["type"], "masterdata_applied");
    assert_eq!(doc["events"][1]["flags"][0], "blocked");
    assert_eq!(doc["events"][1]["masterdata"]["blocked_reason"], "recalled");
    for (i, e) in [applied, flagged].into_iter().enumerate() {
        let mut back: Event = serde_json::from_value(doc["events"][i].clone()).unwrap();
        back.id.clear();
        back.seq = 0;
        assert_eq!(back, e);
    }
}
