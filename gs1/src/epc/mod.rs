//! EPC binary decoding per GS1 EPC Tag Data Standard 1.13 §14, with the raw-URI
//! fallback of §12.1/§15.2.2 for anything that does not decode.

pub mod encode;
pub mod identity;
mod plus;

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::bits;
use crate::escape::{self, is_cs82};
pub(crate) use identity::{Family, Identity};

/// How the field after the company prefix is coded.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Other {
    /// Decimal integer zero-padded to the partition's digit count K (K = 0 means empty).
    Padded,
    /// Decimal integer without padding (GIAI-96 "Unpadded Partition Table").
    Unpadded,
    /// 7-bit string of at most the partition's digit column in characters (GIAI-202).
    Str,
}

/// What follows the partitioned fields.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Tail {
    /// "Integer" coding: decimal, no leading zeros.
    Int(usize),
    /// "String" coding: 7-bit characters, zero-terminated (bits, max characters).
    Str(usize, usize),
    /// Reserved bits that must be zero (SSCC-96).
    Reserved(usize),
    None,
}

/// One row of a partition table: company prefix bits/digits, other field bits/digits.
pub(crate) type PartRow = (usize, usize, usize, usize);

#[derive(Debug)]
pub(crate) struct SchemeDef {
    pub(crate) header: u8,
    pub(crate) name: &'static str,
    pub(crate) family: Family,
    pub(crate) bits: usize,
    pub(crate) partition: &'static [PartRow; 7],
    pub(crate) other: Other,
    pub(crate) tail: Tail,
}

// TDS 1.13 Tables 14-2, 14-5, 14-7, 14-10, 14-13, 14-15.
const SGTIN_P: [PartRow; 7] = [
    (40, 12, 4, 1),
    (37, 11, 7, 2),
    (34, 10, 10, 3),
    (30, 9, 14, 4),
    (27, 8, 17, 5),
    (24, 7, 20, 6),
    (20, 6, 24, 7),
];
const SSCC_P: [PartRow; 7] = [
    (40, 12, 18, 5),
    (37, 11, 21, 6),
    (34, 10, 24, 7),
    (30, 9, 28, 8),
    (27, 8, 31, 9),
    (24, 7, 34, 10),
    (20, 6, 38, 11),
];
const SGLN_P: [PartRow; 7] = [
    (40, 12, 1, 0),
    (37, 11, 4, 1),
    (34, 10, 7, 2),
    (30, 9, 11, 3),
    (27, 8, 14, 4),
    (24, 7, 17, 5),
    (20, 6, 21, 6),
];
const GRAI_P: [PartRow; 7] = [
    (40, 12, 4, 0),
    (37, 11, 7, 1),
    (34, 10, 10, 2),
    (30, 9, 14, 3),
    (27, 8, 17, 4),
    (24, 7, 20, 5),
    (20, 6, 24, 6),
];
const GIAI96_P: [PartRow; 7] = [
    (40, 12, 42, 13),
    (37, 11, 45, 14),
    (34, 10, 48, 15),
    (30, 9, 52, 16),
    (27, 8, 55, 17),
    (24, 7, 58, 18),
    (20, 6, 62, 19),
];
const GIAI202_P: [PartRow; 7] = [
    (40, 12, 148, 18),
    (37, 11, 151, 19),
    (34, 10, 154, 20),
    (30, 9, 158, 21),
    (27, 8, 161, 22),
    (24, 7, 164, 23),
    (20, 6, 168, 24),
];

pub(crate) static SCHEMES: [SchemeDef; 9] = [
    SchemeDef {
        header: 0x30,
        name: "sgtin-96",
        family: Family::Sgtin,
        bits: 96,
        partition: &SGTIN_P,
        other: Other::Padded,
        tail: Tail::Int(38),
    },
    SchemeDef {
        header: 0x36,
        name: "sgtin-198",
        family: Family::Sgtin,
        bits: 198,
        partition: &SGTIN_P,
        other: Other::Padded,
        tail: Tail::Str(140, 20),
    },
    SchemeDef {
        header: 0x31,
        name: "sscc-96",
        family: Family::Sscc,
        bits: 96,
        partition: &SSCC_P,
        other: Other::Padded,
        tail: Tail::Reserved(24),
    },
    SchemeDef {
        header: 0x32,
        name: "sgln-96",
        family: Family::Sgln,
        bits: 96,
        partition: &SGLN_P,
        other: Other::Padded,
        tail: Tail::Int(41),
    },
    SchemeDef {
        header: 0x39,
        name: "sgln-195",
        family: Family::Sgln,
        bits: 195,
        partition: &SGLN_P,
        other: Other::Padded,
        tail: Tail::Str(140, 20),
    },
    SchemeDef {
        header: 0x33,
        name: "grai-96",
        family: Family::Grai,
        bits: 96,
        partition: &GRAI_P,
        other: Other::Padded,
        tail: Tail::Int(38),
    },
    SchemeDef {
        header: 0x37,
        name: "grai-170",
        family: Family::Grai,
        bits: 170,
        partition: &GRAI_P,
        other: Other::Padded,
        tail: Tail::Str(112, 16),
    },
    SchemeDef {
        header: 0x34,
        name: "giai-96",
        family: Family::Giai,
        bits: 96,
        partition: &GIAI96_P,
        other: Other::Unpadded,
        tail: Tail::None,
    },
    SchemeDef {
        header: 0x38,
        name: "giai-202",
        family: Family::Giai,
        bits: 202,
        partition: &GIAI202_P,
        other: Other::Str,
        tail: Tail::None,
    },
];

pub(crate) fn scheme_by_header(h: u8) -> Option<&'static SchemeDef> {
    SCHEMES.iter().find(|s| s.header == h)
}

pub(crate) fn scheme_by_name(n: &str) -> Option<&'static SchemeDef> {
    SCHEMES.iter().find(|s| s.name == n)
}

pub(crate) const POW10: [u64; 20] = {
    let mut t = [1u64; 20];
    let mut i = 1;
    while i < 20 {
        t[i] = t[i - 1] * 10;
        i += 1;
    }
    t
};

/// The result of decoding an EPC. Decoding never fails: an EPC that is not a valid
/// TDS 1.13 encoding of a supported scheme has `scheme == "raw"` and carries its EPC
/// Raw URI in both `pure_identity_uri` and `tag_uri`, with the reason in `raw_reason`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decoded {
    /// Coding scheme, e.g. `"sgtin-96"`, `"sgtin+"`, `"dsgtin+"`, or `"raw"`.
    pub scheme: String,
    /// Number of EPC bits the scheme uses (for raw: the bits the URI covers).
    pub bits: usize,
    /// Filter value (control information; not part of the identity).
    pub filter: Option<u8>,
    /// GS1 Company Prefix as written in the URI (zero-padded to its length).
    pub company_prefix: Option<String>,
    /// The scheme's reference after the company prefix: SGTIN indicator digit and
    /// item reference, SGLN location reference, GRAI asset type. `None` for SSCC and GIAI.
    pub item_reference: Option<String>,
    /// Serial part, unescaped: SGTIN/GRAI serial, SSCC extension digit + serial
    /// reference, SGLN extension, GIAI individual asset reference.
    pub serial: Option<String>,
    /// GTIN-14 with check digit (SGTIN, SGTIN+, DSGTIN+).
    pub gtin: Option<String>,
    /// `urn:epc:id:...` (the EPC Raw URI for raw reads). For the TDS 2.x SGTIN+/DSGTIN+
    /// schemes, which carry no company-prefix length, the canonical GS1 Digital Link
    /// without query string (EPCIS 2.0 accepts it in `epcList` and hashes it like the URN).
    pub pure_identity_uri: String,
    /// `urn:epc:tag:...` including control fields when decoded with a PC word
    /// (the EPC Raw URI for raw reads and for SGTIN+/DSGTIN+).
    pub tag_uri: String,
    /// GS1 element string, e.g. `(01)80614141123458(21)6789`.
    pub element_string: Option<String>,
    /// Canonical GS1 Digital Link URI on `https://id.gs1.org`.
    pub digital_link: Option<String>,
    /// The EPC bits in uppercase hex.
    pub hex: String,
    /// Why the EPC was reported raw.
    pub raw_reason: Option<String>,
}

impl Decoded {
    /// True if the EPC did not decode and is represented by its raw URI.
    pub fn is_raw(&self) -> bool {
        self.raw_reason.is_some()
    }

    /// The identifier to publish (e.g. in an EPCIS `epcList`): the pure identity URI,
    /// or `None` for raw reads, which are not identities.
    pub fn identity(&self) -> Option<&str> {
        (!self.is_raw()).then_some(self.pure_identity_uri.as_str())
    }

    /// Compact JSON with stable snake_case keys (for `tracegate decode --json`).
    pub fn to_json(&self) -> String {
        // Serialising a struct of strings and integers cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl fmt::Display for Decoded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let row = |f: &mut fmt::Formatter<'_>, k: &str, v: &str| writeln!(f, "{k:<20}{v}");
        row(
            f,
            "scheme:",
            &format!("{} ({} bits)", self.scheme, self.bits),
        )?;
        if let Some(r) = &self.raw_reason {
            row(f, "not decodable:", r)?;
        }
        if let Some(v) = self.filter {
            row(f, "filter:", &v.to_string())?;
        }
        if let Some(v) = &self.company_prefix {
            row(f, "company prefix:", v)?;
        }
        if let Some(v) = &self.item_reference {
            row(f, "item reference:", v)?;
        }
        if let Some(v) = &self.serial {
            row(f, "serial:", v)?;
        }
        if let Some(v) = &self.gtin {
            row(f, "GTIN:", v)?;
        }
        row(f, "pure identity URI:", &self.pure_identity_uri)?;
        row(f, "tag URI:", &self.tag_uri)?;
        if let Some(v) = &self.element_string {
            row(f, "GS1 element string:", v)?;
        }
        if let Some(v) = &self.digital_link {
            row(f, "GS1 Digital Link:", v)?;
        }
        write!(f, "{:<20}{}", "hex:", self.hex)
    }
}

/// Error from [`decode_epc_hex`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HexError {
    #[error("EPC hex is empty: give the EPC as hex digits, e.g. 3074257BF7194E4000001A85")]
    Empty,
    #[error(
        "EPC hex has invalid character {ch:?} at position {pos}: only 0-9, A-F and a-f are allowed"
    )]
    InvalidChar { pos: usize, ch: char },
}

fn to_hex(bytes: &[u8]) -> String {
    hex::encode_upper(bytes)
}

/// Decodes an EPC given as hex. Whitespace and a leading `0x` are ignored; an odd
/// number of digits is read as a left-aligned bit string (TDS prints some examples so).
pub fn decode_epc_hex(s: &str) -> Result<Decoded, HexError> {
    Ok(decode_epc(&parse_hex(s)?))
}

pub(crate) fn parse_hex(s: &str) -> Result<Vec<u8>, HexError> {
    let t = s.trim();
    let t = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    let mut nibbles = Vec::with_capacity(t.len());
    for (pos, ch) in t.char_indices() {
        if ch.is_ascii_whitespace() {
            continue;
        }
        match ch.to_digit(16) {
            Some(d) => nibbles.push(d as u8),
            None => return Err(HexError::InvalidChar { pos, ch }),
        }
    }
    if nibbles.is_empty() {
        return Err(HexError::Empty);
    }
    if nibbles.len() % 2 == 1 {
        nibbles.push(0);
    }
    Ok(nibbles.chunks(2).map(|p| p[0] << 4 | p[1]).collect())
}

/// Decodes the EPC bits of a tag (no PC word). Trailing pad bits beyond the scheme's
/// length are ignored, as TDS §14.3.9 step 3 prescribes.
pub fn decode_epc(epc: &[u8]) -> Decoded {
    decode_with_ctl(epc, "")
}

/// Decodes an EPC with its Gen2 PC word (and XPC_W1 when the tag reports one), so the
/// tag URI carries the `[att=..][umi=1][xpc=..]` control fields and ISO (toggle = 1)
/// UIIs get the `N.xAFI.xHEX` raw form (TDS §15.2.2). The EPC length is taken from the
/// PC word, capped at the bytes actually supplied.
pub fn decode_gen2(pc: u16, xpc: Option<u16>, epc: &[u8]) -> Decoded {
    let words = usize::from(pc >> 11);
    let umi = pc >> 10 & 1 == 1;
    let xi = pc >> 9 & 1 == 1;
    let toggle = pc >> 8 & 1 == 1;
    let low = (pc & 0xFF) as u8;
    let nbytes = (words * 2).min(epc.len());
    let epc = &epc[..nbytes];

    let mut ctl = String::new();
    if !toggle && low != 0 {
        ctl.push_str(&format!("[att=x{low:02X}]"));
    }
    if umi {
        ctl.push_str("[umi=1]");
    }
    if let (true, Some(x)) = (xi, xpc) {
        ctl.push_str(&format!("[xpc=x{x:04X}]"));
    }
    if !ctl.is_empty() {
        ctl.push(':');
    }
    if toggle {
        let uri = format!(
            "urn:epc:raw:{ctl}{}.x{low:02X}.x{}",
            nbytes * 8,
            to_hex(epc)
        );
        return raw(
            epc,
            uri,
            format!("ISO/IEC 15961 UII (PC toggle bit set, AFI 0x{low:02X}), not a GS1 EPC"),
        );
    }
    decode_with_ctl(epc, &ctl)
}

fn raw(epc: &[u8], uri: String, reason: String) -> Decoded {
    Decoded {
        scheme: "raw".into(),
        bits: epc.len() * 8,
        filter: None,
        company_prefix: None,
        item_reference: None,
        serial: None,
        gtin: None,
        pure_identity_uri: uri.clone(),
        tag_uri: uri,
        element_string: None,
        digital_link: None,
        hex: to_hex(epc),
        raw_reason: Some(reason),
    }
}

fn raw_uri(epc: &[u8], ctl: &str) -> String {
    if epc.is_empty() {
        format!("urn:epc:raw:{ctl}0")
    } else {
        format!("urn:epc:raw:{ctl}{}.x{}", epc.len() * 8, to_hex(epc))
    }
}

fn decode_with_ctl(epc: &[u8], ctl: &str) -> Decoded {
    if matches!(epc.first(), Some(0xF7 | 0xFB)) {
        return match plus::decode(epc) {
            Ok(p) => Decoded {
                scheme: p.scheme.into(),
                bits: p.bits,
                filter: Some(p.filter),
                company_prefix: None,
                item_reference: None,
                serial: Some(p.serial.clone()),
                gtin: Some(p.gtin.clone()),
                pure_identity_uri: p.identity_link(),
                tag_uri: raw_uri(epc, ctl),
                element_string: Some(p.element_string()),
                digital_link: Some(p.digital_link()),
                hex: to_hex(epc),
                raw_reason: None,
            },
            Err(reason) => raw(epc, raw_uri(epc, ctl), reason),
        };
    }
    let result = match epc.first() {
        None => Err("no EPC bits".to_string()),
        Some(&h) => match scheme_by_header(h) {
            Some(def) => decode_scheme(def, epc).map(|(f, id)| (def, f, id)),
            None => Err(header_reason(h)),
        },
    };
    match result {
        Ok((def, filter, id)) => {
            // The key (with its check digit) once for the GTIN, the element
            // string and the Digital Link.
            let parts = id.ai_parts();
            let gtin = match (&parts, id.family) {
                (Some((_, key, _)), identity::Family::Sgtin) => Some(key.clone()),
                _ => None,
            };
            let pure_identity_uri = id.pure_uri();
            let mut tag_uri = String::with_capacity(16 + ctl.len() + pure_identity_uri.len());
            tag_uri.push_str("urn:epc:tag:");
            tag_uri.push_str(ctl);
            tag_uri.push_str(def.name);
            tag_uri.push(':');
            escape::push_decimal(&mut tag_uri, u64::from(filter), 1);
            tag_uri.push('.');
            id.push_uri_body(&mut tag_uri);
            Decoded {
                scheme: def.name.into(),
                bits: def.bits,
                filter: Some(filter),
                gtin,
                pure_identity_uri,
                tag_uri,
                element_string: parts.as_ref().map(|p| id.element_string_of(p)),
                digital_link: parts.as_ref().map(|p| id.digital_link_of(p)),
                hex: to_hex(epc),
                raw_reason: None,
                company_prefix: Some(id.company_prefix),
                item_reference: id.item_reference,
                serial: Some(id.serial),
            }
        }
        Err(reason) => raw(epc, raw_uri(epc, ctl), reason),
    }
}

fn header_reason(h: u8) -> String {
    let what = match h {
        0x00 => "unprogrammed tag",
        0xE2 => "permanently reserved (looks like TID memory)",
        0x2C..=0x2F | 0x35 | 0x3A..=0x3F | 0x40 | 0x41 => {
            "a TDS 1.13 scheme this decoder does not support"
        }
        0xE6..=0xFD => {
            "a TDS 2.x '+'/'++' scheme this decoder does not support (only SGTIN+ and DSGTIN+ are)"
        }
        _ => "reserved / not in TDS 1.13 Table 14-1",
    };
    format!("header 0x{h:02X}: {what}")
}

pub(crate) fn decode_scheme(def: &SchemeDef, epc: &[u8]) -> Result<(u8, Identity), String> {
    let n = def.name;
    if epc.len() * 8 < def.bits {
        return Err(format!(
            "{n} needs {} bits, only {} present",
            def.bits,
            epc.len() * 8
        ));
    }
    let rd =
        |pos: usize, len: usize| bits::read(epc, pos, len).ok_or_else(|| format!("{n}: truncated"));
    let filter = rd(8, 3)? as u8;
    let part = rd(11, 3)? as usize;
    let &(cp_bits, cp_digits, o_bits, o_digits) = def
        .partition
        .get(part)
        .ok_or_else(|| format!("{n}: partition value {part} is invalid"))?;
    let cp = rd(14, cp_bits)?;
    if cp >= POW10[cp_digits] {
        return Err(format!(
            "{n}: company prefix {cp} has more than {cp_digits} digits"
        ));
    }
    let mut company_prefix = String::with_capacity(cp_digits);
    escape::push_decimal(&mut company_prefix, cp, cp_digits);
    let mut pos = 14 + cp_bits;
    let other = match def.other {
        Other::Padded => {
            let v = rd(pos, o_bits)?;
            if v >= POW10[o_digits] {
                return Err(format!(
                    "{n}: reference {v} has more than {o_digits} digits"
                ));
            }
            let mut s = String::with_capacity(o_digits);
            if o_digits > 0 {
                escape::push_decimal(&mut s, v, o_digits);
            }
            s
        }
        Other::Unpadded => {
            let mut s = String::with_capacity(20);
            escape::push_decimal(&mut s, rd(pos, o_bits)?, 0);
            s
        }
        Other::Str => decode_string(epc, pos, o_bits, o_digits).map_err(|e| format!("{n}: {e}"))?,
    };
    pos += o_bits;
    let tail = match def.tail {
        Tail::Int(b) => {
            let mut s = String::with_capacity(20);
            escape::push_decimal(&mut s, rd(pos, b)?, 0);
            Some(s)
        }
        Tail::Str(b, max) => {
            Some(decode_string(epc, pos, b, max).map_err(|e| format!("{n}: {e}"))?)
        }
        Tail::Reserved(b) => {
            if rd(pos, b)? != 0 {
                return Err(format!("{n}: reserved bits are not zero"));
            }
            None
        }
        Tail::None => None,
    };
    let (item_reference, serial) = match (def.family, tail) {
        (Family::Sgtin | Family::Sgln | Family::Grai, Some(t)) => (Some(other), t),
        _ => (None, other),
    };
    Ok((
        filter,
        Identity {
            family: def.family,
            company_prefix,
            item_reference,
            serial,
        },
    ))
}

/// TDS §14.3.9 "String" decoding: 7-bit characters from character set 82, then only
/// zero bits; at least one character.
fn decode_string(epc: &[u8], pos: usize, nbits: usize, max_chars: usize) -> Result<String, String> {
    let mut s = String::new();
    let mut ended = false;
    let nchars = nbits / 7;
    for i in 0..nchars {
        let c = bits::read(epc, pos + 7 * i, 7).ok_or("truncated string")? as u8;
        if c == 0 {
            ended = true;
        } else if ended {
            return Err("non-zero character after the string terminator".into());
        } else if i >= max_chars {
            return Err(format!("string longer than {max_chars} characters"));
        } else if !is_cs82(c) {
            return Err(format!(
                "character 0x{c:02X} is not in GS1 character set 82"
            ));
        } else {
            s.push(char::from(c));
        }
    }
    let rest = nbits % 7;
    if rest > 0 && bits::read(epc, pos + 7 * nchars, rest).ok_or("truncated string")? != 0 {
        return Err("non-zero padding after the string".into());
    }
    if s.is_empty() {
        return Err("empty string field".into());
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sgtin96_tds_example_decodes_to_all_representations() {
        let d = decode_epc_hex("3074257BF7194E4000001A85").unwrap();
        assert_eq!(d.scheme, "sgtin-96");
        assert_eq!(d.pure_identity_uri, "urn:epc:id:sgtin:0614141.812345.6789");
        assert_eq!(d.tag_uri, "urn:epc:tag:sgtin-96:3.0614141.812345.6789");
        assert_eq!(d.gtin.as_deref(), Some("80614141123458"));
        assert!(!d.is_raw());
        let text = d.to_string();
        assert!(
            text.contains("https://id.gs1.org/01/80614141123458/21/6789"),
            "{text}"
        );
    }

    #[test]
    fn hex_errors_are_reported() {
        assert_eq!(decode_epc_hex("  "), Err(HexError::Empty));
        assert!(matches!(
            decode_epc_hex("30zz"),
            Err(HexError::InvalidChar { ch: 'z', .. })
        ));
    }

    #[test]
    fn short_sgtin_becomes_raw() {
        let d = decode_epc_hex("3074257BF7194E40").unwrap();
        assert!(d.is_raw());
        assert_eq!(d.tag_uri, "urn:epc:raw:64.x3074257BF7194E40");
    }
}
