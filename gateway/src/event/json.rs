//! The JSON of `arrived`, `departed` and `present` events, written by hand.
//!
//! These are nearly every event a portal produces, and serde's path for them
//! (a flattened map: every key escaped at run time, every value through the
//! serializer) was the largest part of the store's commit after SQLite. The
//! writer below produces exactly the bytes serde writes for the same event
//! (a property test compares the two), in the same field order: keys are
//! literals, strings are copied whole unless they need escaping, and the
//! rarely present structured parts (TID info, master-data details, EPCIS
//! context) still go through serde_json into the same buffer.

use serde::Serialize;

use super::{EpcisAction, EpcisContext, Event, UhfEvent, UhfIdentity, UtcMs};

/// The event's JSON with `id` and `seq` (see [`Event::to_json_numbered`]).
pub(super) fn uhf_event(
    id: &str,
    seq: u64,
    event: &Event,
    b: &UhfEvent,
) -> Result<String, serde_json::Error> {
    let mut out = String::with_capacity(1_280);
    out.push_str("{\"id\":");
    push_str(&mut out, id)?;
    out.push_str(",\"seq\":");
    push_u64(&mut out, seq);
    out.push_str(",\"type\":\"");
    out.push_str(event.kind().as_str());
    out.push_str("\",\"gateway\":");
    push_str(&mut out, &event.gateway)?;
    out.push_str(",\"time\":");
    push_time(&mut out, event.time);
    out.push_str(",\"site\":");
    push_str(&mut out, &b.at.site)?;
    out.push_str(",\"read_point\":");
    push_str(&mut out, &b.at.read_point)?;
    out.push_str(",\"reader\":");
    push_str(&mut out, &b.at.reader)?;
    out.push_str(if b.at.clock_synced {
        ",\"clock_synced\":true"
    } else {
        ",\"clock_synced\":false"
    });
    out.push_str(",\"identity\":");
    push_identity(&mut out, &b.identity)?;
    out.push_str(",\"first_seen\":");
    push_time(&mut out, b.first_seen);
    out.push_str(",\"last_seen\":");
    push_time(&mut out, b.last_seen);
    out.push_str(",\"read_count\":");
    push_u64(&mut out, b.read_count);
    if let Some(rssi) = b.peak_rssi_dbm {
        out.push_str(",\"peak_rssi_dbm\":");
        if rssi < 0 {
            out.push('-');
        }
        push_u64(&mut out, u64::from(rssi.unsigned_abs()));
    }
    out.push_str(",\"antennas\":[");
    for (i, a) in b.antennas.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_u64(&mut out, u64::from(*a));
    }
    out.push(']');
    if let Some(d) = &b.direction {
        out.push_str(",\"direction\":");
        push_serde(&mut out, d)?;
    }
    if let Some(r) = &b.reason {
        out.push_str(",\"reason\":");
        push_serde(&mut out, r)?;
    }
    if !b.flags.is_empty() {
        out.push_str(",\"flags\":[");
        for (i, f) in b.flags.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push('"');
            out.push_str(f.as_str());
            out.push('"');
        }
        out.push(']');
    }
    if let Some(m) = &b.masterdata {
        out.push_str(",\"masterdata\":");
        push_serde(&mut out, m)?;
    }
    if let Some(e) = &b.epcis {
        out.push_str(",\"epcis\":");
        push_epcis(&mut out, e)?;
    }
    out.push('}');
    Ok(out)
}

fn push_identity(out: &mut String, id: &UhfIdentity) -> Result<(), serde_json::Error> {
    out.push_str("{\"epc\":");
    push_hex(out, &id.epc);
    if let Some(tid) = &id.tid {
        out.push_str(",\"tid\":");
        push_hex(out, tid);
    }
    out.push_str(",\"scheme\":");
    push_str(out, &id.scheme)?;
    out.push_str(",\"pure_identity\":");
    push_str(out, &id.pure_identity)?;
    out.push_str(",\"tag_uri\":");
    push_str(out, &id.tag_uri)?;
    for (key, value) in [
        (",\"gtin\":", &id.gtin),
        (",\"serial\":", &id.serial),
        (",\"element_string\":", &id.element_string),
        (",\"digital_link\":", &id.digital_link),
    ] {
        if let Some(v) = value {
            out.push_str(key);
            push_str(out, v)?;
        }
    }
    if let Some(t) = &id.tid_info {
        out.push_str(",\"tid_info\":");
        push_serde(out, t)?;
    }
    out.push('}');
    Ok(())
}

/// The read point's EPCIS context (on every event of a read point that has
/// one).
fn push_epcis(out: &mut String, e: &EpcisContext) -> Result<(), serde_json::Error> {
    out.push('{');
    for (key, value) in [
        ("\"biz_step\":", &e.biz_step),
        ("\"disposition\":", &e.disposition),
        ("\"read_point_id\":", &e.read_point_id),
        ("\"biz_location\":", &e.biz_location),
    ] {
        if let Some(v) = value {
            out.push_str(key);
            push_str(out, v)?;
            out.push(',');
        }
    }
    out.push_str(match e.action {
        EpcisAction::Add => "\"action\":\"add\"}",
        EpcisAction::Observe => "\"action\":\"observe\"}",
        EpcisAction::Delete => "\"action\":\"delete\"}",
    });
    Ok(())
}

/// A JSON string. Text without `"`, `\` or control characters (serde_json
/// escapes exactly those) is copied whole; anything else goes through
/// serde_json, so the escaping is its own.
fn push_str(out: &mut String, s: &str) -> Result<(), serde_json::Error> {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push('"');
        out.push_str(s);
        out.push('"');
        Ok(())
    } else {
        push_serde(out, s)
    }
}

fn push_time(out: &mut String, t: UtcMs) {
    let b = t.iso_bytes();
    out.push('"');
    // ASCII digits and separators.
    out.extend(b.iter().map(|&c| char::from(c)));
    out.push('"');
}

fn push_u64(out: &mut String, v: u64) {
    out.push_str(itoa::Buffer::new().format(v));
}

/// Upper-case hex in quotes, as `hex_upper` writes it.
fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    out.reserve(bytes.len() * 2 + 2);
    out.push('"');
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0F)]));
    }
    out.push('"');
}

/// Any other value through serde_json (the same bytes serde would write in
/// place).
fn push_serde<T: Serialize + ?Sized>(out: &mut String, v: &T) -> Result<(), serde_json::Error> {
    append(out, serde_json::to_vec(v)?)
}

fn append(out: &mut String, bytes: Vec<u8>) -> Result<(), serde_json::Error> {
    // serde_json writes UTF-8 only.
    let text = String::from_utf8(bytes).map_err(serde::ser::Error::custom)?;
    out.push_str(&text);
    Ok(())
}
