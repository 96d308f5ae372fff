//! EPCIS 2.0 JSON-LD documents of ObjectEvents with CBV 2.0 event hash IDs.
//!
//! ```
//! use tracegate_gs1::epcis::{Action, EpcisDocument, ObjectEvent};
//! let mut doc = EpcisDocument::new(1_714_557_601_000)
//!     .with_namespace("gw", "https://example.org/rfid-gateway/").unwrap();
//! let mut ev = ObjectEvent::new(vec!["urn:epc:id:sgtin:0614141.812345.6789".into()], 1_714_557_600_000, Action::Observe);
//! ev.biz_step = Some("inspecting".into());
//! ev.read_point = Some("urn:epc:id:sgln:0614141.12345.400".into());
//! ev.extensions.push(("gw:antenna".into(), 2.into()));
//! let event_id = doc.push(&ev).unwrap();
//! assert!(event_id.starts_with("ni:///sha-256;"));
//! let json = doc.to_json_string();
//! assert!(json.contains("\"eventTime\":\"2024-05-01T10:00:00.000Z\""));
//! ```

pub mod hash;
mod normalise;
mod time;

use serde_json::{json, Map, Value};

pub use hash::{document_hashes, event_hash, event_prehash, hash_prehash, HashError};
pub use normalise::canonical_gs1_uri;
pub use time::{format_tz_offset, format_utc_ms, valid_tz_offset};

/// The EPCIS 2.0.0 JSON-LD context URL.
pub const EPCIS_CONTEXT: &str = "https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld";

/// CBV 2.0 business steps (bare-word form), per the EPCIS 2.0 JSON schema enum.
pub const CBV_BIZ_STEPS: [&str; 41] = [
    "accepting",
    "arriving",
    "assembling",
    "collecting",
    "commissioning",
    "consigning",
    "creating_class_instance",
    "cycle_counting",
    "decommissioning",
    "departing",
    "destroying",
    "disassembling",
    "dispensing",
    "encoding",
    "entering_exiting",
    "holding",
    "inspecting",
    "installing",
    "killing",
    "loading",
    "other",
    "packing",
    "picking",
    "receiving",
    "removing",
    "repackaging",
    "repairing",
    "replacing",
    "reserving",
    "retail_selling",
    "shipping",
    "staging_outbound",
    "stock_taking",
    "stocking",
    "storing",
    "transporting",
    "unloading",
    "unpacking",
    "void_shipping",
    "sensor_reporting",
    "sampling",
];

/// CBV 2.0 dispositions (bare-word form), per the EPCIS 2.0 JSON schema enum.
pub const CBV_DISPOSITIONS: [&str; 33] = [
    "active",
    "container_closed",
    "damaged",
    "destroyed",
    "dispensed",
    "disposed",
    "encoded",
    "expired",
    "in_progress",
    "in_transit",
    "inactive",
    "no_pedigree_match",
    "non_sellable_other",
    "partially_dispensed",
    "recalled",
    "reserved",
    "retail_sold",
    "returned",
    "sellable_accessible",
    "sellable_not_accessible",
    "stolen",
    "unknown",
    "available",
    "completeness_verified",
    "completeness_inferred",
    "conformant",
    "container_open",
    "mismatch_instance",
    "mismatch_class",
    "mismatch_quantity",
    "needs_replacement",
    "non_conformant",
    "unavailable",
];

/// ObjectEvent action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Action {
    Add,
    Observe,
    Delete,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Add => "ADD",
            Action::Observe => "OBSERVE",
            Action::Delete => "DELETE",
        }
    }
}

impl std::str::FromStr for Action {
    type Err = EpcisError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "ADD" => Ok(Action::Add),
            "OBSERVE" => Ok(Action::Observe),
            "DELETE" => Ok(Action::Delete),
            _ => Err(EpcisError::BadAction(s.to_string())),
        }
    }
}

/// Plain inputs for one ObjectEvent.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectEvent {
    /// EPC pure identity URIs (or GS1 Digital Link URIs). Exact duplicates are dropped
    /// (the schema requires unique items). Raw URIs are accepted by the schema but are
    /// not identities; keep them out of published events.
    pub epcs: Vec<String>,
    /// Event time, UTC milliseconds since the Unix epoch.
    pub event_time_ms: i64,
    /// Local offset at the read point, `+HH:MM` / `-HH:MM`.
    pub event_time_zone_offset: String,
    pub action: Action,
    /// CBV bare word (e.g. `"inspecting"`) or a URI.
    pub biz_step: Option<String>,
    /// CBV bare word (e.g. `"in_progress"`) or a URI.
    pub disposition: Option<String>,
    /// Read point id URI (e.g. `urn:epc:id:sgln:0614141.12345.400`).
    pub read_point: Option<String>,
    /// Business location id URI.
    pub biz_location: Option<String>,
    /// User extension fields as `("prefix:name", value)`; the prefix must be declared
    /// with [`EpcisDocument::with_namespace`]. They are part of the event hash, so
    /// volatile values (RSSI, antenna) give every read a different eventID.
    pub extensions: Vec<(String, Value)>,
}

impl ObjectEvent {
    /// An event with offset `+00:00` and no optional fields.
    pub fn new(epcs: Vec<String>, event_time_ms: i64, action: Action) -> ObjectEvent {
        ObjectEvent {
            epcs,
            event_time_ms,
            event_time_zone_offset: "+00:00".into(),
            action,
            biz_step: None,
            disposition: None,
            read_point: None,
            biz_location: None,
            extensions: Vec::new(),
        }
    }
}

/// Error building an EPCIS document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EpcisError {
    #[error("ObjectEvent needs at least one EPC in epcList")]
    NoEpcs,
    #[error("{field} must be an absolute URI (scheme:rest, no spaces), got {value:?}")]
    NotUri { field: &'static str, value: String },
    #[error("eventTimeZoneOffset {0:?} must look like +02:00 or -05:30 (range -14:00..+14:00)")]
    BadTzOffset(String),
    #[error("event time {0} ms is outside years 0000-9999")]
    BadTime(i64),
    #[error("{field} {value:?} is neither a CBV 2.0 bare word nor a URI")]
    BadVocabulary { field: &'static str, value: String },
    #[error("action {0:?} must be ADD, OBSERVE or DELETE")]
    BadAction(String),
    #[error("extension key {0:?} must be prefix:name with a declared namespace prefix")]
    BadExtensionKey(String),
    #[error("namespace prefix {prefix:?} / IRI {iri:?} is invalid: the prefix must be letters, digits, '_' or '-' and not gs1/cbv/epcis, the IRI absolute")]
    BadNamespace { prefix: String, iri: String },
    #[error("computing the event hash failed: {0}")]
    Hash(#[from] HashError),
}

fn is_uri(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once(':') else {
        return false;
    };
    let mut sb = scheme.bytes();
    sb.next().is_some_and(|c| c.is_ascii_alphabetic())
        && sb.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'))
        && !rest.is_empty()
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn check_uri(field: &'static str, v: &str) -> Result<(), EpcisError> {
    if is_uri(v) {
        Ok(())
    } else {
        Err(EpcisError::NotUri {
            field,
            value: v.to_string(),
        })
    }
}

fn check_vocab(field: &'static str, v: &str, words: &[&str]) -> Result<(), EpcisError> {
    if words.contains(&v) || is_uri(v) {
        Ok(())
    } else {
        Err(EpcisError::BadVocabulary {
            field,
            value: v.to_string(),
        })
    }
}

const MAX_MS: i64 = 253_402_300_799_999; // 9999-12-31T23:59:59.999Z

/// An EPCIS 2.0 document under construction.
#[derive(Debug, Clone)]
pub struct EpcisDocument {
    creation_date_ms: i64,
    namespaces: Vec<(String, String)>,
    events: Vec<Value>,
}

impl EpcisDocument {
    /// `creation_date_ms` is the document's creation time, UTC ms since the epoch.
    pub fn new(creation_date_ms: i64) -> EpcisDocument {
        EpcisDocument {
            creation_date_ms,
            namespaces: Vec::new(),
            events: Vec::new(),
        }
    }

    /// Declares a namespace prefix for user extension fields (added to `@context`).
    pub fn with_namespace(mut self, prefix: &str, iri: &str) -> Result<EpcisDocument, EpcisError> {
        let ok_prefix = !prefix.is_empty()
            && prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            && !matches!(prefix, "gs1" | "cbv" | "epcis");
        if !ok_prefix || !is_uri(iri) {
            return Err(EpcisError::BadNamespace {
                prefix: prefix.into(),
                iri: iri.into(),
            });
        }
        self.namespaces.retain(|(p, _)| p != prefix);
        self.namespaces.push((prefix.into(), iri.into()));
        Ok(self)
    }

    /// The `@context` value: the EPCIS 2.0.0 context plus one object per namespace.
    pub fn context(&self) -> Value {
        let mut c = vec![Value::String(EPCIS_CONTEXT.into())];
        for (p, iri) in &self.namespaces {
            c.push(json!({ p.as_str(): iri }));
        }
        Value::Array(c)
    }

    /// Validates the event, computes its CBV 2.0 hash as `eventID`, appends it and
    /// returns the eventID.
    pub fn push(&mut self, ev: &ObjectEvent) -> Result<String, EpcisError> {
        let mut event = self.event_json(ev)?;
        let id = event_hash(&event, &self.context())?;
        if let Value::Object(m) = &mut event {
            m.insert("eventID".into(), Value::String(id.clone()));
        }
        self.events.push(event);
        Ok(id)
    }

    /// Like [`EpcisDocument::push`], as an `AggregationEvent`: `parent_id`
    /// (an SSCC, say) is `parentID` and `ev.epcs` are the `childEPCs`; the
    /// other fields are the ObjectEvent's. Returns the eventID.
    pub fn push_aggregation(
        &mut self,
        ev: &ObjectEvent,
        parent_id: &str,
    ) -> Result<String, EpcisError> {
        check_uri("parentID", parent_id)?;
        let mut event = self.event_json(ev)?;
        if let Value::Object(m) = &mut event {
            m.insert("type".into(), "AggregationEvent".into());
            if let Some(children) = m.remove("epcList") {
                m.insert("childEPCs".into(), children);
            }
            m.insert("parentID".into(), parent_id.into());
        }
        let id = event_hash(&event, &self.context())?;
        if let Value::Object(m) = &mut event {
            m.insert("eventID".into(), Value::String(id.clone()));
        }
        self.events.push(event);
        Ok(id)
    }

    fn event_json(&self, ev: &ObjectEvent) -> Result<Value, EpcisError> {
        if ev.epcs.is_empty() {
            return Err(EpcisError::NoEpcs);
        }
        for e in &ev.epcs {
            check_uri("epcList entry", e)?;
        }
        if !(0..=MAX_MS).contains(&ev.event_time_ms) {
            return Err(EpcisError::BadTime(ev.event_time_ms));
        }
        if !valid_tz_offset(&ev.event_time_zone_offset) {
            return Err(EpcisError::BadTzOffset(ev.event_time_zone_offset.clone()));
        }
        let mut m = Map::new();
        m.insert("type".into(), "ObjectEvent".into());
        m.insert("eventTime".into(), format_utc_ms(ev.event_time_ms).into());
        m.insert(
            "eventTimeZoneOffset".into(),
            ev.event_time_zone_offset.clone().into(),
        );
        // The schema requires uniqueItems; repeated reads of one tag are one EPC.
        let mut epcs: Vec<&String> = Vec::with_capacity(ev.epcs.len());
        for e in &ev.epcs {
            if !epcs.contains(&e) {
                epcs.push(e);
            }
        }
        m.insert(
            "epcList".into(),
            epcs.into_iter().cloned().collect::<Vec<String>>().into(),
        );
        m.insert("action".into(), ev.action.as_str().into());
        if let Some(b) = &ev.biz_step {
            check_vocab("bizStep", b, &CBV_BIZ_STEPS)?;
            m.insert("bizStep".into(), b.clone().into());
        }
        if let Some(d) = &ev.disposition {
            check_vocab("disposition", d, &CBV_DISPOSITIONS)?;
            m.insert("disposition".into(), d.clone().into());
        }
        if let Some(r) = &ev.read_point {
            check_uri("readPoint id", r)?;
            m.insert("readPoint".into(), json!({ "id": r }));
        }
        if let Some(l) = &ev.biz_location {
            check_uri("bizLocation id", l)?;
            m.insert("bizLocation".into(), json!({ "id": l }));
        }
        for (k, v) in &ev.extensions {
            let declared = k.split_once(':').is_some_and(|(p, local)| {
                !local.is_empty()
                    && local
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
                    && self.namespaces.iter().any(|(np, _)| np == p)
            });
            if !declared || m.contains_key(k) {
                return Err(EpcisError::BadExtensionKey(k.clone()));
            }
            m.insert(k.clone(), v.clone());
        }
        Ok(Value::Object(m))
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The document as JSON-LD.
    pub fn to_json(&self) -> Value {
        json!({
            "@context": self.context(),
            "type": "EPCISDocument",
            "schemaVersion": "2.0",
            "creationDate": format_utc_ms(self.creation_date_ms.clamp(0, MAX_MS)),
            "epcisBody": { "eventList": self.events },
        })
    }

    /// The document serialised compactly.
    pub fn to_json_string(&self) -> String {
        self.to_json().to_string()
    }
}
