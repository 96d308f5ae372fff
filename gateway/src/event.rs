//! One event model for UHF and NFC, rendered to the JSON the store keeps and
//! the registry receives (documented in docs/events.md).
//!
//! The store adds `id` and `seq`; everything else is decided here, once, so
//! that what `tracegate events` prints, what the demo shows and what MQTT
//! carries are the same bytes.

use serde_json::{json, Map, Value};
use tracegate_gs1::Decoded;

use crate::config::ReadPoint;
use crate::dedup::{Kind, TagEvent};
use crate::store::EventDraft;

/// Who is speaking: stamped on every event.
#[derive(Debug, Clone)]
pub struct Origin {
    pub gateway: String,
    pub site: String,
}

/// UTC ISO-8601 with exactly three decimals, the form EPCIS hashing expects.
pub fn iso_ms(utc_ms: i64) -> String {
    match chrono::DateTime::from_timestamp_millis(utc_ms) {
        Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        None => "1970-01-01T00:00:00.000Z".to_owned(),
    }
}

/// The identity block of a UHF tag: raw hex plus what GS1 decoding finds.
/// Undecodable EPCs keep their hex and get an `urn:epc:raw:` identity and the
/// `unknown_scheme` flag from [`suspicion_flags`]; no read is lost to decoding.
pub fn uhf_identity(epc: &[u8], d: &Decoded, tid: Option<&[u8]>) -> Map<String, Value> {
    let mut id = Map::new();
    id.insert("epc".into(), Value::String(hex::encode_upper(epc)));
    id.insert("scheme".into(), json!(d.scheme));
    id.insert("pure_identity".into(), json!(d.pure_identity_uri));
    id.insert("tag_uri".into(), json!(d.tag_uri));
    if let Some(gtin) = &d.gtin {
        id.insert("gtin".into(), json!(gtin));
    }
    if let Some(serial) = &d.serial {
        id.insert("serial".into(), json!(serial));
    }
    if let Some(es) = &d.element_string {
        id.insert("element_string".into(), json!(es));
    }
    if let Some(dl) = &d.digital_link {
        id.insert("digital_link".into(), json!(dl));
    }
    if let Some(tid) = tid {
        id.insert("tid".into(), Value::String(hex::encode_upper(tid)));
        let info = tracegate_gs1::decode_tid(tid);
        if let Ok(v) = serde_json::to_value(&info) {
            id.insert("tid_info".into(), v);
        }
    }
    id
}

/// The body of a `tap` event, before enrichment.
pub fn tap_body(
    origin: &Origin,
    read_point: &str,
    tap: &tracegate_drivers::Tap,
) -> Map<String, Value> {
    let mut body = Map::new();
    body.insert("type".into(), json!("tap"));
    body.insert("gateway".into(), json!(origin.gateway));
    body.insert("site".into(), json!(origin.site));
    body.insert("read_point".into(), json!(read_point));
    body.insert("reader".into(), json!(&*tap.reader));
    body.insert("time".into(), json!(iso_ms(tap.host.utc_ms)));
    body.insert("clock_synced".into(), json!(tap.host.clock_synced));
    let mut id = Map::new();
    id.insert("uid".into(), json!(hex::encode_upper(&tap.uid)));
    body.insert("identity".into(), Value::Object(id));
    let mut t = Map::new();
    t.insert("tag_type".into(), json!(tap.tag_type));
    if let Some(u) = &tap.ndef_uri {
        t.insert("ndef_uri".into(), json!(u));
    }
    if let Some(x) = &tap.ndef_text {
        t.insert("ndef_text".into(), json!(x));
    }
    t.insert("atr".into(), json!(hex::encode_upper(&tap.atr)));
    body.insert("tap".into(), Value::Object(t));
    body
}

/// Renders a dedup event for the store.
pub fn tag_event_draft(
    origin: &Origin,
    point: &ReadPoint,
    e: &TagEvent,
    decoded: &Decoded,
    flags: &[&str],
) -> EventDraft {
    let t = &e.tag;
    let mut body = Map::new();
    body.insert("type".into(), json!(e.kind.as_str()));
    body.insert("gateway".into(), json!(origin.gateway));
    body.insert("site".into(), json!(origin.site));
    body.insert("read_point".into(), json!(point.name));
    body.insert("reader".into(), json!(&*t.reader));
    body.insert("time".into(), json!(iso_ms(e.at.utc_ms)));
    body.insert(
        "clock_synced".into(),
        json!(t.clock_synced && e.at.clock_synced),
    );
    body.insert(
        "identity".into(),
        Value::Object(uhf_identity(&t.epc, decoded, t.tid.as_deref())),
    );
    body.insert("first_seen".into(), json!(iso_ms(t.first_seen.utc_ms)));
    body.insert("last_seen".into(), json!(iso_ms(t.last_seen.utc_ms)));
    body.insert("read_count".into(), json!(t.read_count));
    if let Some(r) = t.peak_rssi_dbm {
        body.insert("peak_rssi_dbm".into(), json!(r));
    }
    body.insert("antennas".into(), json!(t.antennas));
    if let Some(d) = e.direction {
        body.insert("direction".into(), json!(d));
    }
    if let Some(r) = e.reason {
        body.insert("reason".into(), json!(r));
    }
    if !flags.is_empty() {
        body.insert("flags".into(), json!(flags));
    }
    if e.kind == Kind::Present || e.kind == Kind::Arrived || e.kind == Kind::Departed {
        // EPCIS context travels with the event so the registry (and the
        // epcis2 payload format) need no copy of the gateway's config.
        let mut ctx = Map::new();
        for (k, v) in [
            ("biz_step", &point.biz_step),
            ("disposition", &point.disposition),
            ("read_point_id", &point.read_point_id),
            ("biz_location", &point.biz_location),
        ] {
            if let Some(v) = v {
                ctx.insert(k.into(), json!(v));
            }
        }
        ctx.insert("action".into(), json!(point.action));
        body.insert("epcis".into(), Value::Object(ctx));
    }
    EventDraft {
        event_type: e.kind.as_str().to_owned(),
        event_utc_ms: e.at.utc_ms,
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc_with_exactly_three_decimals() {
        assert_eq!(iso_ms(1_700_000_000_000), "2023-11-14T22:13:20.000Z");
        assert_eq!(iso_ms(1_700_000_000_120), "2023-11-14T22:13:20.120Z");
    }
}
