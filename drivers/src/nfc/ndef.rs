//! NDEF (NFC Forum Data Exchange Format): sans-IO parsing and encoding.
//!
//! Parsing covers what a track-and-trace gateway needs from a tag: the
//! Type 2 TLV area (Ultralight/NTAG), NDEF records, and the URI and Text
//! well-known record types. Every length is checked; malformed input gives an
//! [`NdefError`], never a panic (the parser is fuzzed, see `nfc/fuzz/`).
//! Encoding exists for the card emulator and the tests.

use std::ops::Range;

/// Why bytes could not be read as NDEF.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NdefError {
    #[error("NDEF data ends early: needed {needed} bytes at offset {offset}, have {available}")]
    Truncated {
        offset: usize,
        needed: usize,
        available: usize,
    },
    #[error("NDEF message is empty")]
    Empty,
    #[error("NDEF record at offset {offset} declares a type length of 0 with TNF {tnf}, which requires a type")]
    MissingType { offset: usize, tnf: u8 },
    #[error("URI record payload is empty (no prefix code)")]
    EmptyUri,
    #[error("Text record payload is malformed: {0}")]
    BadText(&'static str),
    #[error("record payload is not valid UTF-8")]
    NotUtf8,
}

/// Type Name Format values (NFC Forum NDEF 1.0, §3.2.6).
pub mod tnf {
    pub const EMPTY: u8 = 0;
    pub const WELL_KNOWN: u8 = 1;
    pub const MIME: u8 = 2;
    pub const ABSOLUTE_URI: u8 = 3;
    pub const EXTERNAL: u8 = 4;
    pub const UNKNOWN: u8 = 5;
    pub const UNCHANGED: u8 = 6;
}

const MB: u8 = 0x80;
const ME: u8 = 0x40;
const CF: u8 = 0x20;
const SR: u8 = 0x10;
const IL: u8 = 0x08;

/// One NDEF record, borrowing from the message bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    pub tnf: u8,
    /// The record is a chunk of a larger payload (CF flag, or the
    /// continuation of a chunked record). Chunked payloads are not
    /// reassembled; such records are skipped when summarising.
    pub chunked: bool,
    pub record_type: &'a [u8],
    pub id: &'a [u8],
    pub payload: &'a [u8],
}

/// The longest URI prefix code matching `uri` and its length (code 0,
/// length 0 when none does): what [`RecordBuf::uri`] writes.
fn longest_prefix(uri: &str) -> (usize, usize) {
    URI_PREFIXES
        .iter()
        .enumerate()
        .skip(1)
        .filter(|(_, p)| uri.starts_with(**p))
        .max_by_key(|(_, p)| p.len())
        .map(|(i, p)| (i, p.len()))
        .unwrap_or((0, 0))
}

/// The expanded prefix [`RecordBuf::uri`] would abbreviate `uri` with.
pub fn longest_uri_prefix(uri: &str) -> &str {
    &uri[..longest_prefix(uri).1]
}

/// The lengths of every prefix code's expansion that `uri` starts with,
/// 0 (code 0, or an absolute-URI record) included, without repeats: where
/// the record's text may start, when only the expanded URI is known.
pub fn uri_prefix_lengths(uri: &str) -> Vec<usize> {
    let mut out: Vec<usize> = URI_PREFIXES
        .iter()
        .filter(|p| uri.starts_with(**p))
        .map(|p| p.len())
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// URI prefix codes, index = code (NFC Forum URI RTD 1.0, Table 3).
const URI_PREFIXES: [&str; 0x24] = [
    "",
    "http://www.",
    "https://www.",
    "http://",
    "https://",
    "tel:",
    "mailto:",
    "ftp://anonymous:anonymous@",
    "ftp://ftp.",
    "ftps://",
    "sftp://",
    "smb://",
    "nfs://",
    "ftp://",
    "dav://",
    "news:",
    "telnet://",
    "imap:",
    "rtsp://",
    "urn:",
    "pop:",
    "sip:",
    "sips:",
    "tftp:",
    "btspp://",
    "btl2cap://",
    "btgoep://",
    "tcpobex://",
    "irdaobex://",
    "file://",
    "urn:epc:id:",
    "urn:epc:tag:",
    "urn:epc:pat:",
    "urn:epc:raw:",
    "urn:epc:",
    "urn:nfc:",
];

fn take(buf: &[u8], at: usize, n: usize) -> Result<&[u8], NdefError> {
    at.checked_add(n)
        .and_then(|end| buf.get(at..end))
        .ok_or(NdefError::Truncated {
            offset: at,
            needed: n,
            available: buf.len().saturating_sub(at),
        })
}

fn byte(buf: &[u8], at: usize) -> Result<u8, NdefError> {
    take(buf, at, 1).map(|b| b[0])
}

/// Parses an NDEF message into its records.
///
/// Parsing stops after the record with the ME flag; trailing bytes are
/// ignored (tags often pad the NDEF area).
pub fn parse_message(msg: &[u8]) -> Result<Vec<Record<'_>>, NdefError> {
    if msg.is_empty() {
        return Err(NdefError::Empty);
    }
    let mut records = Vec::new();
    let mut at = 0usize;
    let mut in_chunk = false;
    loop {
        let start = at;
        let header = byte(msg, at)?;
        let type_len = usize::from(byte(msg, at + 1)?);
        at += 2;
        let payload_len = if header & SR != 0 {
            let n = usize::from(byte(msg, at)?);
            at += 1;
            n
        } else {
            let b = take(msg, at, 4)?;
            at += 4;
            // A 4 GiB payload cannot fit anyway; `take` below rejects it.
            usize::try_from(u32::from_be_bytes([b[0], b[1], b[2], b[3]])).unwrap_or(usize::MAX)
        };
        let id_len = if header & IL != 0 {
            let n = usize::from(byte(msg, at)?);
            at += 1;
            n
        } else {
            0
        };
        let record_type = take(msg, at, type_len)?;
        at += type_len;
        let id = take(msg, at, id_len)?;
        at += id_len;
        let payload = take(msg, at, payload_len)?;
        at += payload_len;
        let tnf_v = header & 0x07;
        if type_len == 0
            && matches!(
                tnf_v,
                tnf::WELL_KNOWN | tnf::MIME | tnf::ABSOLUTE_URI | tnf::EXTERNAL
            )
        {
            return Err(NdefError::MissingType {
                offset: start,
                tnf: tnf_v,
            });
        }
        let chunked = in_chunk || header & CF != 0;
        // A chunked payload continues until a record without CF.
        in_chunk = header & CF != 0;
        records.push(Record {
            tnf: tnf_v,
            chunked,
            record_type,
            id,
            payload,
        });
        if header & ME != 0 || at >= msg.len() {
            return Ok(records);
        }
    }
}

/// Expands a URI record payload (prefix code + rest) into the full URI.
///
/// Reserved prefix codes (0x24..=0xFF) expand to nothing, as the RTD says.
pub fn parse_uri_payload(payload: &[u8]) -> Result<String, NdefError> {
    let (&code, rest) = payload.split_first().ok_or(NdefError::EmptyUri)?;
    let rest = std::str::from_utf8(rest).map_err(|_| NdefError::NotUtf8)?;
    let prefix = URI_PREFIXES.get(usize::from(code)).copied().unwrap_or("");
    Ok(format!("{prefix}{rest}"))
}

/// A decoded Text record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text {
    /// IANA language code, e.g. `en`.
    pub lang: String,
    pub text: String,
}

/// Decodes a Text record payload (NFC Forum Text RTD 1.0).
pub fn parse_text_payload(payload: &[u8]) -> Result<Text, NdefError> {
    let (&status, rest) = payload
        .split_first()
        .ok_or(NdefError::BadText("empty payload"))?;
    let lang_len = usize::from(status & 0x3F);
    let lang = rest
        .get(..lang_len)
        .ok_or(NdefError::BadText("language code longer than the payload"))?;
    let lang = std::str::from_utf8(lang)
        .map_err(|_| NdefError::BadText("language code is not ASCII"))?
        .to_owned();
    let body = &rest[lang_len..];
    let text = if status & 0x80 != 0 {
        decode_utf16(body)?
    } else {
        std::str::from_utf8(body)
            .map_err(|_| NdefError::NotUtf8)?
            .to_owned()
    };
    Ok(Text { lang, text })
}

fn decode_utf16(body: &[u8]) -> Result<String, NdefError> {
    if !body.len().is_multiple_of(2) {
        return Err(NdefError::BadText("UTF-16 text has an odd number of bytes"));
    }
    // Big-endian unless a byte-order mark says otherwise (Text RTD §3.4).
    let (little, body) = match body {
        [0xFF, 0xFE, rest @ ..] => (true, rest),
        [0xFE, 0xFF, rest @ ..] => (false, rest),
        _ => (false, body),
    };
    let units = body.chunks_exact(2).map(|c| {
        if little {
            u16::from_le_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], c[1]])
        }
    });
    char::decode_utf16(units)
        .collect::<Result<String, _>>()
        .map_err(|_| NdefError::BadText("invalid UTF-16"))
}

/// What the gateway wants from a tag's NDEF message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// First URI record (well-known `U`, or an absolute-URI record), expanded.
    pub uri: Option<String>,
    /// First Text record's text.
    pub text: Option<String>,
}

/// Parses a message and picks out the first URI and the first Text record.
///
/// A record that is malformed inside (bad UTF-8 in a URI) is skipped rather
/// than failing the whole message; a message whose framing is broken fails.
pub fn summarize(msg: &[u8]) -> Result<Summary, NdefError> {
    let mut out = Summary::default();
    for r in parse_message(msg)? {
        if r.chunked {
            continue;
        }
        match (r.tnf, r.record_type) {
            (tnf::WELL_KNOWN, b"U") if out.uri.is_none() => {
                out.uri = parse_uri_payload(r.payload).ok();
            }
            (tnf::ABSOLUTE_URI, t) if out.uri.is_none() => {
                out.uri = std::str::from_utf8(t).ok().map(str::to_owned);
            }
            (tnf::WELL_KNOWN, b"T") if out.text.is_none() => {
                out.text = parse_text_payload(r.payload).ok().map(|t| t.text);
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Result of scanning a Type 2 tag's data area (from page 4) for the NDEF TLV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlvScan {
    /// The NDEF message occupies this byte range of the area.
    Ndef(Range<usize>),
    /// The area read so far ends inside a TLV; read at least this many bytes in total.
    NeedMore(usize),
    /// A terminator (or an NDEF TLV of length 0) came first: the tag holds no message.
    NoNdef,
}

/// Walks the TLV blocks of a Type 2 tag (NFC Forum Type 2 Tag spec §2.3).
///
/// Call it with what has been read so far; `NeedMore` says how much to read.
pub fn scan_type2_tlvs(area: &[u8]) -> TlvScan {
    let mut at = 0usize;
    loop {
        let Some(&t) = area.get(at) else {
            return TlvScan::NeedMore(at + 1);
        };
        match t {
            0x00 => {
                at += 1;
                continue;
            }
            0xFE => return TlvScan::NoNdef,
            _ => {}
        }
        let Some(&l0) = area.get(at + 1) else {
            return TlvScan::NeedMore(at + 2);
        };
        let (len, hdr) = if l0 == 0xFF {
            match area.get(at + 2..at + 4) {
                Some(b) => (usize::from(u16::from_be_bytes([b[0], b[1]])), 4),
                None => return TlvScan::NeedMore(at + 4),
            }
        } else {
            (usize::from(l0), 2)
        };
        let start = at + hdr;
        let end = start + len;
        if t == 0x03 {
            if len == 0 {
                return TlvScan::NoNdef;
            }
            return if end <= area.len() {
                TlvScan::Ndef(start..end)
            } else {
                TlvScan::NeedMore(end)
            };
        }
        // Lock control, memory control and proprietary TLVs: skip over.
        at = end;
    }
}

/// A record to encode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordBuf {
    pub tnf: u8,
    pub record_type: Vec<u8>,
    pub payload: Vec<u8>,
}

impl RecordBuf {
    /// A well-known URI record, using the longest matching prefix code.
    pub fn uri(uri: &str) -> Self {
        let (code, prefix) = longest_prefix(uri);
        let mut payload = Vec::with_capacity(uri.len() + 1);
        payload.push(u8::try_from(code).unwrap_or(0));
        payload.extend_from_slice(&uri.as_bytes()[prefix..]);
        Self {
            tnf: tnf::WELL_KNOWN,
            record_type: b"U".to_vec(),
            payload,
        }
    }

    /// A well-known UTF-8 Text record. Language codes longer than 63 bytes are cut.
    pub fn text(lang: &str, text: &str) -> Self {
        let lang = &lang.as_bytes()[..lang.len().min(0x3F)];
        let mut payload = vec![lang.len() as u8];
        payload.extend_from_slice(lang);
        payload.extend_from_slice(text.as_bytes());
        Self {
            tnf: tnf::WELL_KNOWN,
            record_type: b"T".to_vec(),
            payload,
        }
    }
}

/// Encodes records as one NDEF message (short records where they fit).
pub fn encode_message(records: &[RecordBuf]) -> Vec<u8> {
    let mut out = Vec::new();
    let last = records.len().saturating_sub(1);
    for (i, r) in records.iter().enumerate() {
        let mut header = r.tnf & 0x07;
        if i == 0 {
            header |= MB;
        }
        if i == last {
            header |= ME;
        }
        let short = r.payload.len() < 256;
        if short {
            header |= SR;
        }
        out.push(header);
        out.push(r.record_type.len().min(255) as u8);
        if short {
            out.push(r.payload.len() as u8);
        } else {
            out.extend_from_slice(&(r.payload.len() as u32).to_be_bytes());
        }
        out.extend_from_slice(&r.record_type[..r.record_type.len().min(255)]);
        out.extend_from_slice(&r.payload);
    }
    out
}

/// Wraps a message in an NDEF TLV followed by a terminator TLV (Type 2 layout).
pub fn type2_tlv(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 5);
    out.push(0x03);
    if message.len() < 0xFF {
        out.push(message.len() as u8);
    } else {
        out.push(0xFF);
        out.extend_from_slice(&(message.len().min(0xFFFE) as u16).to_be_bytes());
    }
    out.extend_from_slice(message);
    out.push(0xFE);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // Worked example from the project's reference (§1.4), as read from an NTAG215.
    const REFERENCE_TLV: &str = "031CD1011855046578616D706C652E636F6D2F702F534E2D303030313233FE";

    #[test]
    fn reference_tlv_decodes_to_its_uri() {
        let area = hex::decode(REFERENCE_TLV).unwrap();
        let TlvScan::Ndef(r) = scan_type2_tlvs(&area) else {
            panic!("no NDEF TLV found")
        };
        assert_eq!(r, 2..30);
        let s = summarize(&area[r]).unwrap();
        assert_eq!(s.uri.as_deref(), Some("https://example.com/p/SN-000123"));
        assert_eq!(s.text, None);
    }

    #[test]
    fn every_prefix_code_expands_per_the_uri_rtd() {
        assert_eq!(parse_uri_payload(b"\x00urn:x").unwrap(), "urn:x");
        assert_eq!(parse_uri_payload(b"\x02a.b").unwrap(), "https://www.a.b");
        assert_eq!(parse_uri_payload(b"\x05+123").unwrap(), "tel:+123");
        assert_eq!(
            parse_uri_payload(b"\x1esgtin:1.2.3").unwrap(),
            "urn:epc:id:sgtin:1.2.3"
        );
        assert_eq!(parse_uri_payload(b"\x23x").unwrap(), "urn:nfc:x");
        // Reserved codes expand to nothing rather than failing.
        assert_eq!(parse_uri_payload(b"\x24x").unwrap(), "x");
        assert_eq!(parse_uri_payload(b"\xffx").unwrap(), "x");
        assert_eq!(parse_uri_payload(b""), Err(NdefError::EmptyUri));
        assert_eq!(parse_uri_payload(b"\x04\xff"), Err(NdefError::NotUtf8));
    }

    #[test]
    fn text_records_decode_utf8_and_utf16_with_either_byte_order() {
        let t = parse_text_payload(b"\x02enHello").unwrap();
        assert_eq!((t.lang.as_str(), t.text.as_str()), ("en", "Hello"));
        let be = parse_text_payload(b"\x82de\x00H\x00i").unwrap();
        assert_eq!(be.text, "Hi");
        let le = parse_text_payload(b"\x82de\xff\xfeH\x00i\x00").unwrap();
        assert_eq!(le.text, "Hi");
        assert!(parse_text_payload(b"\x82deH").is_err());
        assert!(parse_text_payload(b"\x05en").is_err());
        assert!(parse_text_payload(b"").is_err());
    }

    #[test]
    fn summary_takes_the_first_uri_and_first_text_of_a_multi_record_message() {
        let msg = encode_message(&[
            RecordBuf::text("en", "Batch 42"),
            RecordBuf::uri("https://id.example.org/01/09506000134352/21/SER123"),
            RecordBuf::uri("https://second.example"),
            RecordBuf::text("en", "second"),
        ]);
        let s = summarize(&msg).unwrap();
        assert_eq!(
            s.uri.as_deref(),
            Some("https://id.example.org/01/09506000134352/21/SER123")
        );
        assert_eq!(s.text.as_deref(), Some("Batch 42"));
    }

    #[test]
    fn absolute_uri_records_count_as_uris() {
        // TNF 3, type = the URI, empty payload.
        let msg = b"\xd3\x0d\x00urn:nfc:x:abc";
        let s = summarize(msg).unwrap();
        assert_eq!(s.uri.as_deref(), Some("urn:nfc:x:abc"));
    }

    #[test]
    fn long_records_and_ids_parse() {
        let payload = vec![b'a'; 300];
        let mut msg = vec![0xC0 | IL | tnf::MIME, 4];
        msg.extend_from_slice(&300u32.to_be_bytes());
        msg.push(2);
        msg.extend_from_slice(b"te/x");
        msg.extend_from_slice(b"id");
        msg.extend_from_slice(&payload);
        let recs = parse_message(&msg).unwrap();
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].id, b"id");
        assert_eq!(recs[0].payload.len(), 300);
    }

    #[test]
    fn truncated_and_typeless_records_are_errors_not_panics() {
        assert_eq!(parse_message(b""), Err(NdefError::Empty));
        assert!(matches!(
            parse_message(b"\xd1\x01\x20U\x04abc"),
            Err(NdefError::Truncated { .. })
        ));
        assert!(matches!(
            parse_message(b"\xc1\x00\xff\xff\xff\xff"),
            Err(NdefError::Truncated { .. })
        ));
        assert!(matches!(
            parse_message(b"\xd1\x00\x00"),
            Err(NdefError::MissingType { .. })
        ));
    }

    #[test]
    fn chunked_records_are_skipped_by_the_summary() {
        // First chunk (CF) of a URI, then the final chunk: not reassembled.
        let msg = b"\xb1\x01\x02U\x04a\x56\x00\x01b";
        let recs = parse_message(msg).unwrap();
        assert_eq!(recs.len(), 2);
        assert!(recs.iter().all(|r| r.chunked));
        assert_eq!(summarize(msg).unwrap(), Summary::default());
    }

    #[test]
    fn tlv_scan_skips_null_lock_and_memory_tlvs_and_asks_for_more() {
        let mut area = vec![
            0x00, 0x01, 0x03, 0xA0, 0x0C, 0x34, 0x02, 0x03, 0x00, 0x00, 0x00,
        ];
        let ndef_at = area.len();
        area.extend_from_slice(&type2_tlv(&encode_message(&[RecordBuf::uri(
            "https://a.example/x",
        )])));
        // The last byte is the terminator, after the NDEF TLV.
        for cut in 0..area.len() - 1 {
            match scan_type2_tlvs(&area[..cut]) {
                TlvScan::NeedMore(n) => assert!(n > cut, "NeedMore({n}) at {cut}"),
                other => panic!("cut {cut}: {other:?}"),
            }
        }
        let TlvScan::Ndef(r) = scan_type2_tlvs(&area) else {
            panic!()
        };
        assert_eq!(r.start, ndef_at + 2);
        assert_eq!(scan_type2_tlvs(&[0xFE, 0x03, 0x05]), TlvScan::NoNdef);
        assert_eq!(scan_type2_tlvs(&[0x03, 0x00, 0xFE]), TlvScan::NoNdef);
        // Three-byte length form.
        let long = type2_tlv(&vec![0xD1; 300]);
        assert_eq!(scan_type2_tlvs(&long), TlvScan::Ndef(4..304));
    }

    proptest! {
        #[test]
        fn uri_records_round_trip(uri in "[ -~]{0,300}") {
            let msg = encode_message(&[RecordBuf::uri(&uri)]);
            let tlv = type2_tlv(&msg);
            let TlvScan::Ndef(r) = scan_type2_tlvs(&tlv) else { panic!() };
            let s = summarize(&tlv[r]).unwrap();
            prop_assert_eq!(s.uri.as_deref(), Some(uri.as_str()));
        }

        #[test]
        fn text_records_round_trip(lang in "[a-z]{2}", text in "\\PC{0,100}") {
            let msg = encode_message(&[RecordBuf::text(&lang, &text)]);
            let s = summarize(&msg).unwrap();
            prop_assert_eq!(s.text.as_deref(), Some(text.as_str()));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = summarize(&bytes);
            let _ = scan_type2_tlvs(&bytes);
            let _ = parse_text_payload(&bytes);
        }
    }
}
