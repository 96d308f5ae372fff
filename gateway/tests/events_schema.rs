//! What the real pipeline commits (the bytes the publisher sends verbatim)
//! matches docs/events.schema.json: a simulated portal with TIDs, direction,
//! re-reports, flags, EPCIS context and read windows (pass events) runs
//! through `tracegate::run_with`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_committed_event_matches_the_published_schema() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
[gateway]
id = "schema-gw"
site = "dc1"
data_dir = "{}"

[[readers]]
name = "portal"
kind = "sim"
read_rate = 2000
arrival_interval_ms = 40
dwell_ms = 400
max_tags = 15
with_tid = true

[[read_points]]
name = "door"
reader = "portal"
direction = {{ outside = 1, inside = 2 }}
expect_patterns = ["urn:epc:pat:sgtin-96:*.0614141.999999.*"]
biz_step = "receiving"
read_point_id = "urn:epc:id:sgln:0614141.00777.1"

[read_points.window]
open_on = ["first_read"]
stable_ms = 200
max_duration_ms = 300

[dedup]
departure_timeout_ms = 150
report_interval_ms = 100

[ops]
metrics_addr = "off"
"#,
        dir.path().display()
    );
    let config = tracegate::config::parse(&text, "schema.toml").unwrap();
    // Read only after the run: room for every commit of it.
    let (tx, mut rx) = tracegate::Observer::channel(100_000);
    let shutdown = CancellationToken::new();
    let options = tracegate::RunOptions {
        on_commit: Some(tx),
        ..Default::default()
    };
    let gw = tokio::spawn(tracegate::run_with(config, shutdown.clone(), options));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    shutdown.cancel();
    gw.await.unwrap().unwrap();

    let mut events = Vec::new();
    while let Ok(batch) = rx.try_recv() {
        for e in batch {
            events.push(serde_json::from_str::<serde_json::Value>(&e.payload).unwrap());
        }
    }
    let kinds: std::collections::HashSet<_> = events
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    for k in ["arrived", "present", "departed", "pass"] {
        assert!(kinds.contains(k), "no {k} event among {kinds:?}");
    }
    assert!(events.iter().any(|e| e["flags"][0] == "unexpected"));
    assert!(events.iter().any(|e| e["identity"]["tid"].is_string()));
    // The typed model reads every committed event and writes it back unchanged.
    for e in &events {
        let typed: tracegate::event::Event = serde_json::from_value(e.clone()).unwrap();
        assert_eq!(&serde_json::to_value(&typed).unwrap(), e);
    }
    let batch = serde_json::json!({
        "schema": "tracegate.events/1",
        "gateway": "schema-gw",
        "site": "dc1",
        "events": events,
    });
    support::assert_valid(&support::events_schema(), &batch);
}

mod generated {
    //! Every event the types can express: JSON → `Event` → JSON is lossless,
    //! and the JSON matches docs/events.schema.json.
    use proptest::collection::vec;
    use proptest::option::of;
    use proptest::prelude::*;
    use tracegate::event::*;

    use super::support;

    /// Real EPC encodings (SGTIN-96, DSGTIN+ with a Digital Link identity,
    /// a non-GS1 EPC) and random bytes, all through the real decoder.
    fn epc() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(hex::decode("3074257BF7194E4000001A85").unwrap()),
            Just(hex::decode("FB342CDE795211411234538566CB0AFC4000").unwrap()),
            Just(hex::decode("E2801170000002111111AAAA").unwrap()),
            vec(any::<u8>(), 0..32),
        ]
    }

    fn time() -> impl Strategy<Value = UtcMs> {
        prop_oneof![
            (MIN_ISO_MS..=MAX_ISO_MS).prop_map(UtcMs),
            (1_700_000_000_000i64..1_900_000_000_000).prop_map(UtcMs),
        ]
    }

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![any::<String>(), "[a-z0-9 -]{0,12}"]
    }

    fn at() -> impl Strategy<Value = ReadContext> {
        (text(), text(), text(), any::<bool>()).prop_map(
            |(site, read_point, reader, clock_synced)| ReadContext {
                site,
                read_point,
                reader,
                clock_synced,
            },
        )
    }

    fn flags(choices: &'static [Flag]) -> impl Strategy<Value = Vec<Flag>> {
        proptest::sample::subsequence(choices, 0..=choices.len())
    }

    fn uhf() -> BoxedStrategy<UhfEvent> {
        let epcis = (of(text()), of(text()), of(text()), of(text()), 0..3u8).prop_map(
            |(biz_step, disposition, read_point_id, biz_location, a)| EpcisContext {
                biz_step,
                disposition,
                read_point_id,
                biz_location,
                action: [EpcisAction::Add, EpcisAction::Observe, EpcisAction::Delete]
                    [usize::from(a)],
            },
        );
        (
            at(),
            (epc(), of(vec(any::<u8>(), 0..12))),
            (time(), time(), 1..u64::MAX / 2),
            (of(any::<i16>()), vec(any::<u8>(), 0..4)),
            (
                of(prop_oneof![Just(Direction::In), Just(Direction::Out)]),
                of(Just(DepartureReason::Evicted)),
            ),
            flags(&[
                Flag::Unknown,
                Flag::Unexpected,
                Flag::Cloned,
                Flag::OverScanned,
            ]),
            of(epcis),
        )
            .prop_map(
                |(
                    at,
                    (epc, tid),
                    (first_seen, last_seen, read_count),
                    (peak, antennas),
                    (direction, reason),
                    flags,
                    epcis,
                )| {
                    let decoded = tracegate_gs1::decode_epc(&epc);
                    UhfEvent {
                        at,
                        identity: UhfIdentity::new(&epc, &decoded, tid.as_deref()),
                        first_seen,
                        last_seen,
                        read_count,
                        peak_rssi_dbm: peak,
                        antennas,
                        direction,
                        reason,
                        flags,
                        masterdata: None,
                        epcis,
                    }
                },
            )
            .boxed()
    }

    fn verdict() -> impl Strategy<Value = SunVerdict> {
        proptest::sample::select(vec![
            SunVerdict::Genuine,
            SunVerdict::GenuineNoCounter,
            SunVerdict::UidMismatch,
            SunVerdict::Replayed,
            SunVerdict::InvalidMac,
            SunVerdict::UnknownKey,
            SunVerdict::Unsupported,
            SunVerdict::Unverified,
        ])
    }

    fn tap() -> BoxedStrategy<TapEvent> {
        let identity = (
            vec(any::<u8>(), 1..10),
            of("[0-9]{14}"),
            of(text()),
            of(text()),
            of(text()),
            of(prop::sample::select(vec![
                IdentitySource::Authenticated,
                IdentitySource::Claimed,
            ])),
        )
            .prop_map(
                |(uid, gtin, serial, lot, digital_link, source)| NfcIdentity {
                    uid,
                    gtin,
                    serial,
                    lot,
                    digital_link,
                    source,
                },
            );
        let details = (text(), of(text()), of(text()), vec(any::<u8>(), 0..20)).prop_map(
            |(tag_type, ndef_uri, ndef_text, atr)| TapDetails {
                tag_type,
                ndef_uri,
                ndef_text,
                atr,
            },
        );
        let sun = (
            verdict(),
            of(any::<u32>()),
            of(text()),
            of(vec(any::<u8>(), 0..8)),
            prop::sample::subsequence(
                vec![SunCovered::Uid, SunCovered::Counter, SunCovered::Url],
                0..=3,
            ),
        )
            .prop_map(|(verdict, counter, product, uid, covers)| SunResult {
                verdict,
                counter,
                product,
                uid,
                covers,
            });
        (at(), identity, details, of(sun))
            .prop_map(|(at, identity, tap, sun)| {
                let mut t = TapEvent {
                    at,
                    identity,
                    tap,
                    flags: Vec::new(),
                    masterdata: None,
                    sun: sun.clone(),
                };
                if let Some(s) = sun {
                    t.set_sun_verdict(s.verdict);
                }
                t
            })
            .boxed()
    }

    fn overflow() -> BoxedStrategy<OverflowEvent> {
        (
            any::<bool>(),
            1..u64::MAX / 2,
            of((1..u64::MAX / 4, 0..1_000_000u64)),
            time(),
            time(),
        )
            .prop_map(|(drop, count, range, from, to)| OverflowEvent {
                policy: if drop {
                    OverflowPolicy::DropOldest
                } else {
                    OverflowPolicy::RejectNew
                },
                count,
                first_seq: range.map(|(a, _)| a),
                last_seq: range.map(|(a, n)| a + n),
                from,
                to,
            })
            .boxed()
    }

    fn salvage() -> BoxedStrategy<SalvageEvent> {
        (
            of("[0-9a-f]{16}"),
            0..u64::MAX / 2,
            vec((1..u64::MAX / 4, 0..1_000u64), 0..5),
            any::<bool>(),
        )
            .prop_map(|(from_store, carried, ranges, bounds_known)| {
                let missing: Vec<(u64, u64)> = ranges.iter().map(|&(a, n)| (a, a + n)).collect();
                SalvageEvent {
                    from_store,
                    moved_to: "/var/lib/tracegate/events.db.corrupt-20261207T073000.000Z".into(),
                    reason: "quick_check: database disk image is malformed".into(),
                    carried,
                    lost: missing.iter().map(|(a, b)| b - a + 1).sum(),
                    missing,
                    bounds_known,
                }
            })
            .boxed()
    }

    fn pass() -> BoxedStrategy<PassEvent> {
        let evidence = (
            0..4u8,
            0..3u8,
            of((any::<bool>(), 0..4u8, 0..5u32)),
            (0..100u32, 0..100u32),
        )
            .prop_map(|(source, confidence, beams, (inward, outward))| {
                let passage = [
                    BeamPassage::In,
                    BeamPassage::Out,
                    BeamPassage::Reversed,
                    BeamPassage::OneBeam,
                ];
                DirectionEvidence {
                    direction: [Some(Direction::In), Some(Direction::Out), None, None]
                        [usize::from(source)],
                    source: [
                        DirectionSource::Both,
                        DirectionSource::Beams,
                        DirectionSource::Antennas,
                        DirectionSource::None,
                    ][usize::from(source)],
                    confidence: [Confidence::High, Confidence::Medium, Confidence::Low]
                        [usize::from(confidence)],
                    beams: beams.map(|(outside, p, rebreaks)| BeamReading {
                        first: if outside {
                            BeamSide::Outside
                        } else {
                            BeamSide::Inside
                        },
                        passage: passage[usize::from(p)],
                        rebreaks,
                    }),
                    antennas: AntennaVotes { inward, outward },
                }
            });
        (
            uhf(),
            vec(uhf(), 0..4),
            (time(), time(), 0..3u8, 0..4u8, of(text())),
            of(evidence),
            of((1..1_000u64, 0..1_000u64, 1..10_000u64)),
            of(text()),
        )
            .prop_map(
                |(
                    head,
                    tags,
                    (opened_at, closed_at, o, c, trigger),
                    evidence,
                    overflow,
                    parent,
                )| {
                    let tags: Vec<PassTag> = tags
                        .into_iter()
                        .map(|t| PassTag {
                            identity: t.identity,
                            antennas: t.antennas,
                            read_count: t.read_count,
                            first_seen: t.first_seen,
                            last_seen: t.last_seen,
                            peak_rssi_dbm: t.peak_rssi_dbm,
                            flags: t.flags,
                        })
                        .collect();
                    PassEvent {
                        at: head.at,
                        opened_at,
                        closed_at,
                        opened_by: [
                            WindowOpened::Input,
                            WindowOpened::FirstRead,
                            WindowOpened::Schedule,
                        ][usize::from(o)],
                        closed_by: [
                            WindowClosed::Release,
                            WindowClosed::Stable,
                            WindowClosed::MaxDuration,
                            WindowClosed::Shutdown,
                        ][usize::from(c)],
                        trigger,
                        direction: evidence.and_then(|e| e.direction),
                        direction_evidence: evidence,
                        tag_count: tags.len() as u64,
                        read_count: tags
                            .iter()
                            .fold(0u64, |a, t| a.saturating_add(t.read_count)),
                        tags,
                        overflow: overflow.map(|(max_tags, tags_not_listed, reads_not_listed)| {
                            PassOverflow {
                                max_tags,
                                tags_not_listed,
                                reads_not_listed,
                            }
                        }),
                        flags: head.flags,
                        parent,
                        shipment: None,
                        epcis: head.epcis,
                    }
                },
            )
            .boxed()
    }

    fn event() -> BoxedStrategy<Event> {
        let body = prop_oneof![
            pass().prop_map(EventBody::Pass),
            uhf().prop_map(EventBody::Arrived),
            uhf().prop_map(EventBody::Departed),
            uhf().prop_map(EventBody::Present),
            tap().prop_map(EventBody::Tap),
            overflow().prop_map(EventBody::Overflow),
            salvage().prop_map(EventBody::Salvage),
        ];
        (
            "[A-Za-z0-9._-]{1,16}",
            "[0-9a-f]{16}",
            1..u64::MAX / 2,
            time(),
            body,
        )
            .prop_map(|(gateway, store, seq, time, body)| {
                let mut e = Event::new(gateway.clone(), time, body);
                e.id = format!("{gateway}:{store}:{seq}");
                e.seq = seq;
                e
            })
            .boxed()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn an_event_survives_json_unchanged(e in event()) {
            let text = serde_json::to_string(&e).unwrap();
            let back: Event = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(&back, &e);
            // What the store writes is the same bytes.
            prop_assert_eq!(e.to_json_numbered(&e.id, e.seq).unwrap(), text);
        }

        #[test]
        fn every_event_matches_the_published_schema(events in vec(event(), 1..4)) {
            let batch = serde_json::json!({
                "schema": "tracegate.events/1",
                "gateway": "gw",
                "site": "dc1",
                "events": events,
            });
            support::assert_valid(&SCHEMA, &batch);
        }
    }

    static SCHEMA: std::sync::LazyLock<jsonschema::Validator> =
        std::sync::LazyLock::new(support::events_schema);
}

/// A health message as the daemon sends it, with conditions of every kind
/// of subject (a store fault, a reader, the uplink), matches the schema.
#[test]
fn a_health_message_with_conditions_matches_the_schema() {
    use tracegate::heartbeat::{Fault, Heartbeats};
    use tracegate::ops::{HealthState, PublisherStatus, Status};
    let now = tracegate_drivers::clock::utc_now_ms();
    let hb = Heartbeats::new(tracegate_drivers::Clock::new());
    hb.register("store").set_fault(Some(Fault {
        state: HealthState::DiskFull,
        since_utc_ms: now - 2_000,
        detail: "database or disk is full".into(),
    }));
    hb.watch_progress("reader door-1", || 0);
    let door = tracegate_drivers::ReaderHealth::new("door-1", "mercury");
    door.record_failure(&"serial port gone");
    let status = Status {
        gateway: support::GATEWAY.into(),
        site: support::SITE.into(),
        version: "0.1.0".into(),
        config_hash: "sha256:00".into(),
        started_at: tracegate::event::UtcMs(now - 60_000),
        uptime_secs: 60,
        readers: vec![door.snapshot()],
        store: None,
        publisher: Some(PublisherStatus {
            backlog: Some(12),
            in_flight: Some(3),
            unreachable_since_utc_ms: Some(now - 5_000),
            stalled_since_utc_ms: Some(now - 13_000),
            ..PublisherStatus::default()
        }),
        health: None,
        heartbeats: Vec::new(),
        masterdata: None,
    };
    let status = tracegate::ops::with_health(status, &hb, 20_000);
    let states: Vec<_> = status
        .health
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .map(|c| c.state)
        .collect();
    assert_eq!(
        states,
        [
            HealthState::DiskFull,
            HealthState::ReaderDown,
            HealthState::BrokerUnreachable,
            HealthState::PublishStalled
        ]
    );
    let msg = tracegate::publish::HealthMessage {
        schema: tracegate::publish::HEALTH_SCHEMA.into(),
        time: tracegate::event::UtcMs(now),
        status,
    };
    let v = serde_json::to_value(&msg).unwrap();
    support::assert_valid(&support::events_schema(), &v);
    assert_eq!(v["health"]["conditions"][0]["state"], "disk_full");
    assert_eq!(v["health"]["ok"], false);
}
