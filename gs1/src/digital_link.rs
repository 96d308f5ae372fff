//! GS1 Digital Link URI parsing for GTIN-based links (as found in NFC NDEF URI
//! records), e.g. `https://id.example.com/01/09506000134352/21/ABC%2F1?17=261231`.

use serde::{Deserialize, Serialize};

use crate::check::gs1_check_digit_valid;
use crate::escape::{dl_escape, is_cs82, urn_escape, urn_unescape};

/// A parsed GTIN-based GS1 Digital Link. Strings are percent-decoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigitalLink {
    /// GTIN-14 (GTIN-8/12/13 are left-padded with zeros), check digit verified.
    pub gtin: String,
    /// AI 21 serial.
    pub serial: Option<String>,
    /// AI 10 batch/lot.
    pub lot: Option<String>,
    /// AI 22 consumer product variant.
    pub cpv: Option<String>,
    /// Numeric-AI query attributes in order of appearance, e.g. `("17", "261231")`.
    pub attributes: Vec<(String, String)>,
    /// The host the link points at (e.g. `id.example.com`).
    pub host: String,
    /// Canonical form on `https://id.gs1.org` without query string.
    pub canonical: String,
}

impl DigitalLink {
    /// The EPC pure identity URI for a serialised GTIN. The GS1 Company Prefix length
    /// is not in the link, so the caller supplies it (6-12 digits).
    pub fn to_sgtin_uri(&self, company_prefix_len: usize) -> Option<String> {
        let serial = self.serial.as_ref()?;
        if !(6..=12).contains(&company_prefix_len) {
            return None;
        }
        let g = &self.gtin;
        let cp = g.get(1..1 + company_prefix_len)?;
        let item = format!("{}{}", g.get(0..1)?, g.get(1 + company_prefix_len..13)?);
        Some(format!(
            "urn:epc:id:sgtin:{cp}.{item}.{}",
            urn_escape(serial)
        ))
    }
}

fn valid_text(s: &str) -> bool {
    !s.is_empty() && s.len() <= 20 && s.bytes().all(is_cs82)
}

/// Parses a GS1 Digital Link URI whose primary key is a GTIN (AI 01 or `gtin`).
/// Returns `None` for anything else, including a wrong GTIN check digit, unknown
/// path qualifiers or values outside GS1 character set 82.
pub fn parse(uri: &str) -> Option<DigitalLink> {
    let rest = uri
        .strip_prefix("https://")
        .or_else(|| uri.strip_prefix("http://"))?;
    let rest = rest.split('#').next()?;
    let (hostpath, query) = match rest.split_once('?') {
        Some((a, b)) => (a, Some(b)),
        None => (rest, None),
    };
    let (host, path) = hostpath.split_once('/')?;
    if host.is_empty() {
        return None;
    }
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    // A DL may carry a path prefix before the primary key.
    let start = segs.iter().position(|s| *s == "01" || *s == "gtin")?;
    let pairs = &segs[start..];
    if !pairs.len().is_multiple_of(2) {
        return None;
    }
    let mut gtin = urn_unescape(pairs[1])?;
    if !matches!(gtin.len(), 8 | 12 | 13 | 14) || !gtin.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    gtin = format!("{gtin:0>14}");
    if !gs1_check_digit_valid(&gtin) {
        return None;
    }
    let (mut serial, mut lot, mut cpv) = (None, None, None);
    for kv in pairs[2..].chunks(2) {
        let v = urn_unescape(kv[1])?;
        if !valid_text(&v) {
            return None;
        }
        let slot = match kv[0] {
            "21" | "ser" => &mut serial,
            "10" | "lot" => &mut lot,
            "22" | "cpv" => &mut cpv,
            _ => return None,
        };
        if slot.replace(v).is_some() {
            return None;
        }
    }
    let mut attributes = Vec::new();
    for kv in query.unwrap_or("").split('&').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        if !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()) {
            attributes.push((k.to_string(), urn_unescape(v)?));
        }
    }
    let mut canonical = format!("https://id.gs1.org/01/{gtin}");
    for (ai, v) in [("22", &cpv), ("10", &lot), ("21", &serial)] {
        if let Some(v) = v {
            canonical.push_str(&format!("/{ai}/{}", dl_escape(v)));
        }
    }
    Some(DigitalLink {
        gtin,
        serial,
        lot,
        cpv,
        attributes,
        host: host.to_string(),
        canonical,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nfc_link_with_escaped_serial_and_query() {
        let dl =
            parse("https://id.example.com/01/09506000134352/21/ABC%2F1?17=261231&foo=bar").unwrap();
        assert_eq!(dl.gtin, "09506000134352");
        assert_eq!(dl.serial.as_deref(), Some("ABC/1"));
        assert_eq!(
            dl.attributes,
            vec![("17".to_string(), "261231".to_string())]
        );
        assert_eq!(
            dl.canonical,
            "https://id.gs1.org/01/09506000134352/21/ABC%2F1"
        );
        assert_eq!(
            dl.to_sgtin_uri(11).as_deref(),
            Some("urn:epc:id:sgtin:95060001343.05.ABC%2F1")
        );
    }

    #[test]
    fn short_gtins_path_prefix_and_lot() {
        let dl = parse("http://example.org/shop/gtin/9506000134352/lot/L1/ser/7/").unwrap();
        assert_eq!(dl.gtin, "09506000134352");
        assert_eq!(dl.lot.as_deref(), Some("L1"));
        assert_eq!(
            dl.canonical,
            "https://id.gs1.org/01/09506000134352/10/L1/21/7"
        );
    }

    #[test]
    fn rejects_bad_check_digit_and_non_gtin_links() {
        assert!(parse("https://id.gs1.org/01/09506000134353/21/1").is_none());
        assert!(parse("https://id.gs1.org/00/106141412345678908").is_none());
        assert!(parse("https://id.gs1.org/01/09506000134352/99/1").is_none());
        assert!(parse("https://id.gs1.org/01/09506000134352/21").is_none());
        assert!(parse("https://id.gs1.org/01/09506000134352/21/%zz").is_none());
        assert!(parse("ftp://id.gs1.org/01/09506000134352").is_none());
        assert!(parse("https://id.gs1.org/01/09506000134352/21/a%20b").is_none());
    }
}
