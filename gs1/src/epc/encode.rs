//! EPC tag URI → binary encoding (TDS §14.3), the inverse of the decoder.

use super::{scheme_by_name, Family, Identity, Other, Tail};
use crate::bits::Writer;

/// Error from encoding a tag URI to EPC binary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("{0:?} is not an EPC tag URI: expected urn:epc:tag:<scheme>-<bits>:<filter>.<fields>")]
    NotTagUri(String),
    #[error("unsupported coding scheme {0:?}: supported are sgtin-96, sgtin-198, sscc-96, sgln-96, sgln-195, grai-96, grai-170, giai-96, giai-202")]
    UnsupportedScheme(String),
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> EncodeError {
    EncodeError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// Encodes an EPC tag URI such as `urn:epc:tag:sgtin-96:3.0614141.812345.6789` into EPC
/// bank bytes, zero-padded to a whole number of 16-bit words (as written to a tag).
/// Control fields (`[att=..]` etc.) are not accepted; they belong to the PC word.
pub fn encode_tag_uri(uri: &str) -> Result<Vec<u8>, EncodeError> {
    let rest = uri
        .strip_prefix("urn:epc:tag:")
        .ok_or_else(|| EncodeError::NotTagUri(uri.to_string()))?;
    let (name, body) = rest
        .split_once(':')
        .ok_or_else(|| EncodeError::NotTagUri(uri.to_string()))?;
    let def =
        scheme_by_name(name).ok_or_else(|| EncodeError::UnsupportedScheme(name.to_string()))?;
    let (f, fields) = body
        .split_once('.')
        .ok_or_else(|| invalid("filter", "missing"))?;
    let filter: u8 = f
        .parse()
        .ok()
        .filter(|v| *v <= 7)
        .ok_or_else(|| invalid("filter", format!("{f:?} is not 0-7")))?;
    let id = Identity::parse_body(def.family, fields).map_err(|e| invalid("identity", e))?;
    let part = def
        .partition
        .iter()
        .position(|r| r.1 == id.company_prefix.len())
        .ok_or_else(|| invalid("company prefix", "length has no partition value"))?;
    let (cp_bits, _, o_bits, o_digits) = def.partition[part];

    let mut w = Writer::default();
    w.push(u64::from(def.header), 8);
    w.push(u64::from(filter), 3);
    w.push(part as u64, 3);
    w.push(parse_u64(&id.company_prefix, "company prefix")?, cp_bits);

    let other_text = match def.family {
        Family::Sgtin | Family::Sgln | Family::Grai => {
            id.item_reference.clone().unwrap_or_default()
        }
        Family::Sscc | Family::Giai => id.serial.clone(),
    };
    match def.other {
        Other::Padded => {
            let v = if other_text.is_empty() {
                0
            } else {
                parse_u64(&other_text, "reference")?
            };
            if other_text.len() != o_digits {
                return Err(invalid("reference", format!("must have {o_digits} digits")));
            }
            w.push(v, o_bits);
        }
        Other::Unpadded => w.push(
            parse_integer(&other_text, o_bits, "asset reference")?,
            o_bits,
        ),
        Other::Str => push_string(&mut w, &other_text, o_bits, o_digits, "asset reference")?,
    }
    match def.tail {
        Tail::Int(b) => w.push(parse_integer(&id.serial, b, "serial")?, b),
        Tail::Str(b, max) => push_string(&mut w, &id.serial, b, max, "serial")?,
        Tail::Reserved(b) => w.push(0, b),
        Tail::None => {}
    }
    debug_assert_eq!(w.len, def.bits);
    let words = def.bits.div_ceil(16);
    let mut out = w.bytes;
    out.resize(words * 2, 0);
    Ok(out)
}

fn parse_u64(s: &str, field: &'static str) -> Result<u64, EncodeError> {
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(field, format!("{s:?} is not a decimal number")));
    }
    s.parse()
        .map_err(|_| invalid(field, format!("{s:?} is out of range")))
}

/// TDS "Integer" fields: no leading zeros and must fit the bit width.
fn parse_integer(s: &str, bits: usize, field: &'static str) -> Result<u64, EncodeError> {
    let v = parse_u64(s, field)?;
    if s.len() > 1 && s.starts_with('0') {
        return Err(invalid(
            field,
            format!("{s:?} has leading zeros; use the string scheme (-198/-195/-170/-202)"),
        ));
    }
    if bits < 64 && v >> bits != 0 {
        return Err(invalid(field, format!("{s} does not fit in {bits} bits")));
    }
    Ok(v)
}

fn push_string(
    w: &mut Writer,
    s: &str,
    bits: usize,
    max: usize,
    field: &'static str,
) -> Result<(), EncodeError> {
    if s.len() > max {
        return Err(invalid(
            field,
            format!("{s:?} is longer than {max} characters"),
        ));
    }
    for b in s.bytes() {
        w.push(u64::from(b), 7);
    }
    w.push(0, bits - 7 * s.len());
    Ok(())
}

/// Encodes an SGTIN-96. `item_reference` includes the indicator digit and, with the
/// company prefix, must make 13 digits; `serial` must fit in 38 bits.
pub fn encode_sgtin96(
    filter: u8,
    company_prefix: &str,
    item_reference: &str,
    serial: u64,
) -> Result<Vec<u8>, EncodeError> {
    encode_tag_uri(&format!(
        "urn:epc:tag:sgtin-96:{filter}.{company_prefix}.{item_reference}.{serial}"
    ))
}

/// Encodes an SSCC-96. `serial_reference` includes the extension digit and, with the
/// company prefix, must make 17 digits.
pub fn encode_sscc96(
    filter: u8,
    company_prefix: &str,
    serial_reference: &str,
) -> Result<Vec<u8>, EncodeError> {
    encode_tag_uri(&format!(
        "urn:epc:tag:sscc-96:{filter}.{company_prefix}.{serial_reference}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sgtin96_encodes_tds_example() {
        let b = encode_sgtin96(3, "0614141", "812345", 6789).unwrap();
        assert_eq!(hex::encode_upper(b), "3074257BF7194E4000001A85");
    }

    #[test]
    fn sscc96_encodes_tds_example() {
        let b = encode_sscc96(3, "0614141", "1234567890").unwrap();
        assert_eq!(hex::encode_upper(b), "3174257BF4499602D2000000");
    }

    #[test]
    fn encode_rejects_bad_input_with_reasons() {
        assert!(matches!(
            encode_tag_uri("urn:epc:id:sgtin:0614141.812345.6789"),
            Err(EncodeError::NotTagUri(_))
        ));
        assert!(matches!(
            encode_tag_uri("urn:epc:tag:gid-96:1.2.3"),
            Err(EncodeError::UnsupportedScheme(_))
        ));
        assert!(encode_tag_uri("urn:epc:tag:sgtin-96:8.0614141.812345.6789").is_err());
        assert!(encode_tag_uri("urn:epc:tag:sgtin-96:3.0614141.812345.06789").is_err());
        assert!(encode_tag_uri("urn:epc:tag:sgtin-96:3.0614141.812345.274877906944").is_err());
        assert!(encode_tag_uri("urn:epc:tag:sgtin-96:3.0614141.81234.1").is_err());
        assert!(
            encode_tag_uri("urn:epc:tag:sgtin-198:3.0614141.812345.123456789012345678901").is_err()
        );
    }
}
