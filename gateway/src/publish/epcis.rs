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
//! Events with no GS1 identity (raw EPCs, taps without a Digital Link,
//! `overflow`) cannot be ObjectEvents; they travel verbatim in the same
//! document under `tg:otherEvents`, so nothing is silently left out.

use serde_json::{json, Value};
use tracegate_gs1::epcis::{Action, EpcisDocument, ObjectEvent};

use super::render::{BatchRenderer, BatchSource};
use super::PublishError;
use crate::store::StoredEvent;

/// The JSON-LD namespace of tracegate's extension fields.
pub const NAMESPACE: &str = "https://github.com/tracegate/tracegate/ns/epcis#";

#[derive(Debug, Default, Clone, Copy)]
pub struct EpcisRenderer;

fn utc_ms(iso: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(iso)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// The ObjectEvent for one stored event, or `None` when it has no GS1 identity.
pub fn object_event(event: &Value) -> Option<ObjectEvent> {
    let kind = event["type"].as_str()?;
    let identity = &event["identity"];
    let epc = match kind {
        "arrived" | "departed" | "present" => {
            if identity["scheme"].as_str() == Some("raw") {
                return None;
            }
            identity["pure_identity"].as_str()?
        }
        "tap" => identity["digital_link"].as_str()?,
        _ => return None,
    };
    let time = utc_ms(event["time"].as_str()?)?;
    let ctx = &event["epcis"];
    let action = match (kind, ctx["action"].as_str()) {
        ("arrived", Some("add")) => Action::Add,
        ("arrived", Some("delete")) => Action::Delete,
        _ => Action::Observe,
    };
    let mut ev = ObjectEvent::new(vec![epc.to_owned()], time, action);
    let text = |k: &str| ctx[k].as_str().map(str::to_owned);
    ev.biz_step = text("biz_step");
    ev.disposition = text("disposition");
    ev.read_point = text("read_point_id");
    ev.biz_location = text("biz_location");
    ev.extensions = vec![
        ("tg:eventId".to_owned(), event["id"].clone()),
        ("tg:eventType".to_owned(), json!(kind)),
    ];
    Some(ev)
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
            let event: Value = serde_json::from_str(&stored.payload).map_err(|e| {
                PublishError::Render(format!("stored event {} is not JSON: {e}", stored.id))
            })?;
            match object_event(&event) {
                Some(ev) => {
                    if let Err(e) = doc.push(&ev) {
                        // A read point configured with a value EPCIS rejects
                        // must not block the outbox: send the event as is.
                        tracing::warn!(event = "publish.epcis_invalid", id = %stored.id, error = %e, "event not expressible as EPCIS; sent under tg:otherEvents");
                        others.push(event);
                    }
                }
                None => others.push(event),
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

    fn stored(seq: u64, body: Value) -> StoredEvent {
        StoredEvent {
            seq,
            id: body["id"].as_str().unwrap_or("").to_owned(),
            event_type: body["type"].as_str().unwrap_or("").to_owned(),
            event_utc_ms: 0,
            payload: body.to_string(),
        }
    }

    fn arrived() -> Value {
        json!({
            "id": "gw:s:1", "seq": 1, "type": "arrived", "time": "2026-11-27T10:00:00.123Z",
            "identity": {"epc": "3074257BF7194E4000001A85", "scheme": "sgtin-96",
                         "pure_identity": "urn:epc:id:sgtin:0614141.812345.6789"},
            "epcis": {"action": "add", "biz_step": "commissioning", "disposition": "active",
                      "read_point_id": "urn:epc:id:sgln:0614141.00888.3",
                      "biz_location": "urn:epc:id:sgln:0614141.00888.0"}
        })
    }

    #[test]
    fn tag_events_become_object_events_with_reproducible_hash_ids() {
        let src = BatchSource {
            gateway: "gw".into(),
            site: "s".into(),
        };
        let overflow = json!({"id": "gw:s:2", "seq": 2, "type": "overflow", "count": 5});
        let out = EpcisRenderer
            .render(&src, &[stored(1, arrived()), stored(2, overflow)])
            .unwrap();
        let doc: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(doc["type"], "EPCISDocument");
        let ev = &doc["epcisBody"]["eventList"][0];
        assert_eq!(ev["type"], "ObjectEvent");
        assert_eq!(ev["action"], "ADD");
        assert_eq!(ev["epcList"][0], "urn:epc:id:sgtin:0614141.812345.6789");
        assert_eq!(ev["eventTime"], "2026-11-27T10:00:00.123Z");
        assert_eq!(ev["tg:eventId"], "gw:s:1");
        // The hash is recomputed by the reference algorithm's port in gs1.
        let id = ev["eventID"].as_str().unwrap();
        assert!(
            id.starts_with("ni:///sha-256;") && id.ends_with("?ver=CBV2.0"),
            "{id}"
        );
        let hashes = tracegate_gs1::epcis::document_hashes(&doc).unwrap();
        assert_eq!(hashes[0], id);
        assert_eq!(doc["tg:otherEvents"][0]["type"], "overflow");
        // Same event, same ID: the registry can deduplicate on eventID too.
        let again: Value =
            serde_json::from_slice(&EpcisRenderer.render(&src, &[stored(1, arrived())]).unwrap())
                .unwrap();
        assert_eq!(again["epcisBody"]["eventList"][0]["eventID"], ev["eventID"]);
    }

    #[test]
    fn departures_observe_and_raw_epcs_travel_outside_the_event_list() {
        let mut dep = arrived();
        dep["type"] = json!("departed");
        assert_eq!(object_event(&dep).unwrap().action, Action::Observe);
        let mut raw = arrived();
        raw["identity"]["scheme"] = json!("raw");
        assert!(object_event(&raw).is_none());
    }
}
