//! Rendering a batch of stored events into one MQTT payload.
//!
//! The seam for a second format (`payload_format = "epcis2"`, EPCIS 2.0
//! documents built with tracegate-gs1): implement [`BatchRenderer`] and return
//! it from `publish::renderer_for`. The publisher only needs bytes and never looks
//! inside them.

use crate::store::StoredEvent;

use super::PublishError;

/// Who is publishing, for the batch envelope.
#[derive(Debug, Clone)]
pub struct BatchSource {
    pub gateway: String,
    pub site: String,
}

pub trait BatchRenderer: Send + Sync + std::fmt::Debug {
    /// Renders `events` (oldest first, at least one) into one message payload.
    fn render(&self, source: &BatchSource, events: &[StoredEvent])
        -> Result<Vec<u8>, PublishError>;
}

/// `{"schema":"tracegate.events/1","gateway":..,"site":..,"events":[..]}`
/// with each event's stored JSON copied verbatim (no re-serialisation, so
/// what the registry sees is byte-for-byte what was committed).
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonRenderer;

pub const EVENTS_SCHEMA: &str = "tracegate.events/1";

/// The batch envelope before `events`.
#[derive(serde::Serialize)]
struct BatchHeader<'a> {
    schema: &'static str,
    gateway: &'a str,
    site: &'a str,
}

impl BatchRenderer for JsonRenderer {
    fn render(
        &self,
        source: &BatchSource,
        events: &[StoredEvent],
    ) -> Result<Vec<u8>, PublishError> {
        let header = serde_json::to_string(&BatchHeader {
            schema: EVENTS_SCHEMA,
            gateway: &source.gateway,
            site: &source.site,
        })
        .map_err(|e| PublishError::Render(format!("batch header: {e}")))?;
        // `{"schema":..,"gateway":..,"site":..}` -> reopen the object to append `events`.
        let Some(open) = header.strip_suffix('}') else {
            return Err(PublishError::Render("batch header is not an object".into()));
        };
        let size = open.len() + 12 + events.iter().map(|e| e.payload.len() + 1).sum::<usize>();
        let mut out = String::with_capacity(size);
        out.push_str(open);
        out.push_str(",\"events\":[");
        for (i, e) in events.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&e.payload);
        }
        out.push_str("]}");
        Ok(out.into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_batch_embeds_stored_payloads_verbatim() {
        let ev = |seq: u64| StoredEvent {
            seq,
            id: format!("gw:s:{seq}"),
            event_type: "tap".into(),
            event_utc_ms: 0,
            payload: format!("{{\"id\":\"gw:s:{seq}\",\"seq\":{seq},\"x\":1.50}}"),
        };
        let src = BatchSource {
            gateway: "gw \"1\"".into(),
            site: "dock".into(),
        };
        let out = JsonRenderer.render(&src, &[ev(1), ev(2)]).unwrap();
        let text = String::from_utf8(out).unwrap();
        // Verbatim: the number keeps its trailing zero.
        assert!(text.contains("\"x\":1.50"), "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["schema"], EVENTS_SCHEMA);
        assert_eq!(v["gateway"], "gw \"1\"");
        assert_eq!(v["events"].as_array().unwrap().len(), 2);
        assert_eq!(v["events"][1]["seq"], 2);
    }
}
