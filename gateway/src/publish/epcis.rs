//! `payload_format = "epcis2"`: each MQTT message is an EPCIS 2.0 document
//! (JSON-LD) of ObjectEvents, one per tracegate event that carries a GS1
//! identity, with `eventID` the CBV 2.0 event hash.
//!
//! Mapping:
//! - `arrived` → the read point's `action` (ADD when commissioning, DELETE when
//!   decommissioning, OBSERVE otherwise); `departed` and `present` → OBSERVE.
//! - `bizStep`, `disposition`, `readPoint`, `bizLocation` from the read
//!   point's EPCIS settings (carried on every event).
//! - `epcList`: the EPC pure identity URI; for NFC taps the GS1 Digital Link
//!   from the tag's NDEF URI.
//! - extensions `tg:eventId` (the tracegate id, for deduplication and
//!   correlation) and `tg:eventType`.
//!
//! - `pass` (a read window): with a `parent` (exactly one SSCC matching the
//!   read point's `parent_pattern`, the other tags SGTINs) an
//!   `AggregationEvent`: `parentID` the SSCC, `childEPCs` the items, action
//!   ADD, bizStep the read point's (`packing` when it sets none). Any other
//!   pass is one ObjectEvent with every GS1 EPC it carried.
//!
//! Events with no GS1 identity (raw EPCs, taps without a Digital Link,
//! `overflow`) cannot be ObjectEvents; they travel verbatim in the same
//! document under `tg:otherEvents`, so nothing is silently left out.

use serde_json::{json, Value};
use tracegate_gs1::epcis::{Action, EpcisDocument, ObjectEvent};

use super::render::{BatchRenderer, BatchSource};
use super::PublishError;
use crate::event::{EpcisAction, Event, EventBody};
use crate::store::StoredEvent;

/// The JSON-LD namespace of tracegate's extension fields.
pub const NAMESPACE: &str = "https://github.com/tracegate/tracegate/ns/epcis#";

#[derive(Debug, Default, Clone, Copy)]
pub struct EpcisRenderer;

/// The packing aggregation a pass stands for: (parentID, the event with
/// the children as its EPCs), or `None` for anything else.
pub fn aggregation_event(event: &Event) -> Option<(String, ObjectEvent)> {
    let EventBody::Pass(p) = &event.body else {
        return None;
    };
    let parent = p.parent.as_ref()?;
    let children: Vec<String> = p
        .tags
        .iter()
        .filter(|t| t.identity.is_gs1() && t.identity.pure_identity != *parent)
        .map(|t| t.identity.pure_identity.clone())
        .collect();
    let mut ev = ObjectEvent::new(children, event.time.0, Action::Add);
    fill(&mut ev, event, p.epcis.as_ref());
    if ev.biz_step.is_none() {
        ev.biz_step = Some("packing".to_owned());
    }
    Some((parent.clone(), ev))
}

fn fill(ev: &mut ObjectEvent, event: &Event, ctx: Option<&crate::event::EpcisContext>) {
    if let Some(ctx) = ctx {
        ev.biz_step = ctx.biz_step.clone();
        ev.disposition = ctx.disposition.clone();
        ev.read_point = ctx.read_point_id.clone();
        ev.biz_location = ctx.biz_location.clone();
    }
    ev.extensions = vec![
        ("tg:eventId".to_owned(), json!(event.id)),
        ("tg:eventType".to_owned(), json!(event.kind())),
    ];
}

/// The ObjectEvent for one event, or `None` when it has no GS1 identity.
pub fn object_event(event: &Event) -> Option<ObjectEvent> {
    if let EventBody::Pass(p) = &event.body {
        let epcs: Vec<String> = p
            .tags
            .iter()
            .filter(|t| t.identity.is_gs1())
            .map(|t| t.identity.pure_identity.clone())
            .collect();
        if epcs.is_empty() {
            return None;
        }
        let action = match p.epcis.as_ref().map(|c| c.action) {
            Some(EpcisAction::Add) => Action::Add,
            Some(EpcisAction::Delete) => Action::Delete,
            _ => Action::Observe,
        };
        let mut ev = ObjectEvent::new(epcs, event.time.0, action);
        fill(&mut ev, event, p.epcis.as_ref());
        return Some(ev);
    }
    let (epc, ctx) = match &event.body {
        EventBody::Arrived(b) | EventBody::Departed(b) | EventBody::Present(b) => {
            if !b.identity.is_gs1() {
                return None;
            }
            (b.identity.pure_identity.as_str(), b.epcis.as_ref())
        }
        EventBody::Tap(b) => (b.identity.digital_link.as_deref()?, None),
        EventBody::Overflow(_)
        | EventBody::Salvage(_)
        | EventBody::MasterdataApplied(_)
        | EventBody::Pass(_) => return None,
    };
    let action = match (&event.body, ctx.map(|c| c.action)) {
        (EventBody::Arrived(_), Some(EpcisAction::Add)) => Action::Add,
        (EventBody::Arrived(_), Some(EpcisAction::Delete)) => Action::Delete,
        _ => Action::Observe,
    };
    let mut ev = ObjectEvent::new(vec![epc.to_owned()], event.time.0, action);
    fill(&mut ev, event, ctx);
    Some(ev)
}

/// The stored event as JSON, verbatim, for `tg:otherEvents`.
fn verbatim(stored: &StoredEvent) -> Result<Value, PublishError> {
    serde_json::from_str(&stored.payload)
        .map_err(|e| PublishError::Render(format!("stored event {} is not JSON: {e}", stored.id)))
}

impl BatchRenderer for EpcisRenderer {
    fn render(
        &self,
        source: &BatchSource,
        events: &[StoredEvent],
    ) -> Result<Vec<u8>, PublishError> {
        let now = tracegate_drivers::clock::utc_now_ms();
        let mut doc = EpcisDocument::new(now)
            .with_namespace("tg", NAMESPACE)
            .map_err(|e| PublishError::Render(e.to_string()))?;
        let mut others = Vec::new();
        for stored in events {
            // An event this build cannot read (written by a newer gateway)
            // still travels, verbatim.
            let typed = serde_json::from_str::<Event>(&stored.payload).ok();
            if let Some((parent, ev)) = typed.as_ref().and_then(aggregation_event) {
                if let Err(e) = doc.push_aggregation(&ev, &parent) {
                    tracing::warn!(event = "publish.epcis_invalid", id = %stored.id, error = %e, "pass not expressible as an EPCIS AggregationEvent; sent under tg:otherEvents");
                    others.push(verbatim(stored)?);
                }
                continue;
            }
            let object = typed.as_ref().and_then(object_event);
            match object {
                Some(ev) => {
                    if let Err(e) = doc.push(&ev) {
                        // A read point configured with a value EPCIS rejects
                        // must not block the outbox: send the event as is.
                        tracing::warn!(event = "publish.epcis_invalid", id = %stored.id, error = %e, "event not expressible as EPCIS; sent under tg:otherEvents");
                        others.push(verbatim(stored)?);
                    }
                }
                None => others.push(verbatim(stored)?),
            }
        }
        let mut out = doc.to_json();
        out["tg:gateway"] = json!(source.gateway);
        out["tg:site"] = json!(source.site);
        if !others.is_empty() {
            out["tg:otherEvents"] = Value::Array(others);
        }
        serde_json::to_vec(&out).map_err(|e| PublishError::Render(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{
        EpcisContext, OverflowEvent, OverflowPolicy, ReadContext, UhfEvent, UhfIdentity, UtcMs,
    };

    fn stored(seq: u64, event: &Event) -> StoredEvent {
        let id = format!("gw:s:{seq}");
        StoredEvent {
            seq,
            payload: event.to_json_numbered(&id, seq).unwrap(),
            id,
            event_type: event.kind().as_str().to_owned(),
            event_utc_ms: event.time.0,
        }
    }

    fn arrived() -> Event {
        let epc = hex::decode("3074257BF7194E4000001A85").unwrap();
        let decoded = tracegate_gs1::decode_epc(&epc);
        let t = UtcMs::parse("2026-11-27T10:00:00.123Z").unwrap();
        let mut e = Event::new(
            "gw",
            t,
            EventBody::Arrived(UhfEvent {
                at: ReadContext {
                    site: "s".into(),
                    read_point: "door".into(),
                    reader: "r".into(),
                    clock_synced: true,
                },
                identity: UhfIdentity::new(&epc, &decoded, None),
                first_seen: t,
                last_seen: t,
                read_count: 2,
                peak_rssi_dbm: None,
                antennas: vec![1],
                direction: None,
                reason: None,
                flags: vec![],
                masterdata: None,
                epcis: Some(EpcisContext {
                    biz_step: Some("commissioning".into()),
                    disposition: Some("active".into()),
                    read_point_id: Some("urn:epc:id:sgln:0614141.00888.3".into()),
                    biz_location: Some("urn:epc:id:sgln:0614141.00888.0".into()),
                    action: EpcisAction::Add,
                }),
            }),
        );
        e.id = "gw:s:1".into();
        e.seq = 1;
        e
    }

    #[test]
    fn tag_events_become_object_events_with_reproducible_hash_ids() {
        let src = BatchSource {
            gateway: "gw".into(),
            site: "s".into(),
        };
        let overflow = Event::new(
            "gw",
            UtcMs(0),
            EventBody::Overflow(OverflowEvent {
                policy: OverflowPolicy::RejectNew,
                count: 5,
                first_seq: None,
                last_seq: None,
                from: UtcMs(0),
                to: UtcMs(0),
            }),
        );
        let out = EpcisRenderer
            .render(&src, &[stored(1, &arrived()), stored(2, &overflow)])
            .unwrap();
        let doc: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(doc["type"], "EPCISDocument");
        let ev = &doc["epcisBody"]["eventList"][0];
        assert_eq!(ev["type"], "ObjectEvent");
        assert_eq!(ev["action"], "ADD");
        assert_eq!(ev["epcList"][0], "urn:epc:id:sgtin:0614141.812345.6789");
        assert_eq!(ev["eventTime"], "2026-11-27T10:00:00.123Z");
        assert_eq!(
            ev["bizStep"].as_str().map(|s| s.contains("commissioning")),
            Some(true)
        );
        assert_eq!(ev["tg:eventId"], "gw:s:1");
        assert_eq!(ev["tg:eventType"], "arrived");
        // The hash is recomputed by the reference algorithm's port in gs1.
        let id = ev["eventID"].as_str().unwrap();
        assert!(
            id.starts_with("ni:///sha-256;") && id.ends_with("?ver=CBV2.0"),
            "{id}"
        );
        let hashes = tracegate_gs1::epcis::document_hashes(&doc).unwrap();
        assert_eq!(hashes[0], id);
        // The overflow travels verbatim.
        assert_eq!(doc["tg:otherEvents"][0]["type"], "overflow");
        assert_eq!(doc["tg:otherEvents"][0]["id"], "gw:s:2");
        assert_eq!(doc["tg:otherEvents"][0]["count"], 5);
        // Same event, same ID: the registry can deduplicate on eventID too.
        let again: Value = serde_json::from_slice(
            &EpcisRenderer
                .render(&src, &[stored(1, &arrived())])
                .unwrap(),
        )
        .unwrap();
        assert_eq!(again["epcisBody"]["eventList"][0]["eventID"], ev["eventID"]);
    }

    fn pass(parent: Option<&str>, epcs: &[&str]) -> Event {
        let t = UtcMs::parse("2026-11-27T10:05:00.000Z").unwrap();
        let tags = epcs
            .iter()
            .map(|h| {
                let epc = hex::decode(h).unwrap();
                let decoded = tracegate_gs1::decode_epc(&epc);
                crate::event::PassTag {
                    identity: UhfIdentity::new(&epc, &decoded, None),
                    antennas: vec![1],
                    read_count: 3,
                    first_seen: t,
                    last_seen: t,
                    peak_rssi_dbm: Some(-50),
                    flags: vec![],
                }
            })
            .collect::<Vec<_>>();
        let mut e = Event::new(
            "gw",
            t,
            EventBody::Pass(crate::event::PassEvent {
                at: ReadContext {
                    site: "s".into(),
                    read_point: "packing-1".into(),
                    reader: "r".into(),
                    clock_synced: true,
                },
                opened_at: t,
                closed_at: t,
                opened_by: crate::event::WindowOpened::Input,
                closed_by: crate::event::WindowClosed::Release,
                trigger: None,
                direction: None,
                direction_evidence: None,
                tag_count: tags.len() as u64,
                read_count: 3 * tags.len() as u64,
                tags,
                overflow: None,
                flags: vec![],
                parent: parent.map(str::to_owned),
                shipment: None,
                epcis: Some(EpcisContext {
                    biz_step: None,
                    disposition: Some("in_progress".into()),
                    read_point_id: Some("urn:epc:id:sgln:0614141.00777.9".into()),
                    biz_location: None,
                    action: EpcisAction::Observe,
                }),
            }),
        );
        e.id = "gw:s:7".into();
        e.seq = 7;
        e
    }

    // SSCC-96 0614141.1234567890 and two SGTIN-96 items.
    const SSCC: &str = "3114257BF4499602D2000000";
    const ITEM_A: &str = "3074257BF7194E4000001A85";
    const ITEM_B: &str = "3074257BF7194E4000001A86";

    #[test]
    fn a_packing_pass_is_an_aggregation_event_with_a_reproducible_hash_id() {
        let sscc = tracegate_gs1::decode_epc(&hex::decode(SSCC).unwrap());
        assert_eq!(sscc.scheme, "sscc-96", "{sscc:?}");
        let parent = UhfIdentity::new(&hex::decode(SSCC).unwrap(), &sscc, None).pure_identity;
        let src = BatchSource {
            gateway: "gw".into(),
            site: "s".into(),
        };
        let e = pass(Some(&parent), &[SSCC, ITEM_A, ITEM_B]);
        let doc: Value =
            serde_json::from_slice(&EpcisRenderer.render(&src, &[stored(7, &e)]).unwrap()).unwrap();
        let ev = &doc["epcisBody"]["eventList"][0];
        assert_eq!(ev["type"], "AggregationEvent", "{doc}");
        assert_eq!(ev["parentID"], parent.as_str());
        assert_eq!(
            ev["childEPCs"],
            json!([
                "urn:epc:id:sgtin:0614141.812345.6789",
                "urn:epc:id:sgtin:0614141.812345.6790"
            ])
        );
        assert!(ev.get("epcList").is_none());
        assert_eq!(ev["action"], "ADD");
        assert_eq!(ev["bizStep"], "packing");
        assert_eq!(ev["tg:eventType"], "pass");
        let hashes = tracegate_gs1::epcis::document_hashes(&doc).unwrap();
        assert_eq!(hashes[0], ev["eventID"].as_str().unwrap());
    }

    #[test]
    fn a_pass_without_a_parent_is_one_object_event_with_every_epc() {
        let src = BatchSource {
            gateway: "gw".into(),
            site: "s".into(),
        };
        let e = pass(None, &[ITEM_A, ITEM_B]);
        let doc: Value =
            serde_json::from_slice(&EpcisRenderer.render(&src, &[stored(7, &e)]).unwrap()).unwrap();
        let ev = &doc["epcisBody"]["eventList"][0];
        assert_eq!(ev["type"], "ObjectEvent");
        assert_eq!(ev["epcList"].as_array().unwrap().len(), 2);
        assert_eq!(ev["action"], "OBSERVE");
        let hashes = tracegate_gs1::epcis::document_hashes(&doc).unwrap();
        assert_eq!(hashes[0], ev["eventID"].as_str().unwrap());
    }

    #[test]
    fn departures_observe_and_raw_epcs_travel_outside_the_event_list() {
        let mut dep = arrived();
        let EventBody::Arrived(body) = dep.body else {
            unreachable!()
        };
        dep.body = EventBody::Departed(body);
        assert_eq!(object_event(&dep).unwrap().action, Action::Observe);
        let mut raw = arrived();
        if let EventBody::Arrived(b) = &mut raw.body {
            b.identity.scheme = "raw".into();
        }
        assert!(object_event(&raw).is_none());
    }

    #[test]
    fn an_unreadable_stored_event_still_travels_verbatim() {
        let src = BatchSource {
            gateway: "gw".into(),
            site: "s".into(),
        };
        let future = StoredEvent {
            seq: 3,
            id: "gw:s:3".into(),
            event_type: "pallet".into(),
            event_utc_ms: 0,
            payload: r#"{"id":"gw:s:3","seq":3,"type":"pallet","gateway":"gw"}"#.into(),
        };
        let doc: Value =
            serde_json::from_slice(&EpcisRenderer.render(&src, &[future]).unwrap()).unwrap();
        assert_eq!(doc["tg:otherEvents"][0]["type"], "pallet");
    }
}
