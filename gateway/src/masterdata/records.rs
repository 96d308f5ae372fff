//! The payload: JSON Lines, one record per line (docs/masterdata.md,
//! "Records"). Parsed line by line into typed [`Record`]s without holding a
//! document tree, so a 100 MB payload costs its records, not a DOM.

use serde::{Deserialize, Serialize};

use crate::event::BlockReason;

/// A serial as the index keys it. A serial written in canonical decimal
/// (digits, no leading zero, fits in 64 bits: every SGTIN-96 serial) is a
/// number, so ranges and lists agree on it; anything else is text.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Serial {
    Num(u64),
    Text(Box<str>),
}

impl Serial {
    pub fn parse(s: &str) -> Serial {
        match canonical_number(s) {
            Some(n) => Serial::Num(n),
            None => Serial::Text(s.into()),
        }
    }
}

impl std::fmt::Display for Serial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Serial::Num(n) => write!(f, "{n}"),
            Serial::Text(t) => f.write_str(t),
        }
    }
}

/// `s` as a number when it is canonical decimal ("0", or digits without a
/// leading zero) and fits in a u64.
pub fn canonical_number(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.is_empty() || b.len() > 20 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if b.len() > 1 && b[0] == b'0' {
        return None;
    }
    s.parse().ok()
}

/// A GTIN-14 as a number (14 digits fit in 47 bits); the check digit is
/// verified, so a typo in a dataset is refused rather than matching nothing.
pub fn parse_gtin(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 14 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let sum: u32 = b[..13]
        .iter()
        .enumerate()
        .map(|(i, d)| u32::from(d - b'0') * if i % 2 == 0 { 3 } else { 1 })
        .sum();
    if (10 - sum % 10) % 10 != u32::from(b[13] - b'0') {
        return None;
    }
    s.parse().ok()
}

/// Which serials of a GTIN a record covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Serials {
    /// Numeric serials `from..=to`.
    Range(u64, u64),
    List(Vec<Serial>),
    /// Every serial (market rules only).
    All,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExpectedItem {
    /// An SSCC (18 digits): a pallet or case.
    Sscc(String),
    Items {
        gtin: u64,
        serials: Serials,
    },
}

/// One line of the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// Serials known to exist.
    Commissioned { gtin: u64, serials: Serials },
    /// Serials that must not be in circulation.
    Blocked {
        gtin: u64,
        serials: Serials,
        reason: BlockReason,
    },
    /// The markets (ISO 3166 codes or any market names) serials are meant for.
    Market {
        gtin: u64,
        serials: Serials,
        markets: Vec<String>,
    },
    /// An NFC tag UID bound to the serial it was commissioned on.
    Nfc {
        uid: Vec<u8>,
        gtin: u64,
        serial: Serial,
    },
    /// An item on an expected shipment through a read point.
    Expected {
        read_point: String,
        shipment: String,
        item: ExpectedItem,
    },
}

/// The record as written, before its checks.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRecord {
    pub t: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gtin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serials: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<BlockReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub markets: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_point: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shipment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sscc: Option<String>,
}

/// A bad line, by 1-based line number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("payload line {line}: {message}")]
pub struct RecordError {
    pub line: u64,
    pub message: String,
}

/// GS1 AI 21 allows 20 characters; market and shipment names are labels.
const MAX_SERIAL: usize = 20;
const MAX_LABEL: usize = 64;

fn label_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_LABEL && !s.chars().any(char::is_control)
}

fn serial_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_SERIAL && s.bytes().all(|b| b.is_ascii_graphic())
}

impl RawRecord {
    fn serials(&self, all_allowed: bool) -> Result<Serials, String> {
        let parse_list = |list: &[String]| -> Result<Vec<Serial>, String> {
            list.iter()
                .map(|s| {
                    serial_ok(s).then(|| Serial::parse(s)).ok_or_else(|| {
                        format!("serial {s:?} is not 1-20 printable ASCII characters")
                    })
                })
                .collect()
        };
        match (self.from, self.to, &self.serial, &self.serials) {
            (Some(a), Some(z), None, None) if a <= z => Ok(Serials::Range(a, z)),
            (Some(_), Some(_), None, None) => Err("`from` is above `to`".into()),
            (None, None, Some(s), None) => Ok(Serials::List(parse_list(std::slice::from_ref(s))?)),
            (None, None, None, Some(l)) => Ok(Serials::List(parse_list(l)?)),
            (None, None, None, None) if all_allowed => Ok(Serials::All),
            _ => Err("give exactly one of `from`+`to`, `serial`, `serials`".into()),
        }
    }

    fn gtin(&self) -> Result<u64, String> {
        let g = self.gtin.as_deref().ok_or("`gtin` is missing")?;
        parse_gtin(g).ok_or_else(|| format!("gtin {g:?} is not a GTIN-14 with a valid check digit"))
    }

    fn unused(&self, allowed: &[&str]) -> Result<(), String> {
        let present = [
            ("gtin", self.gtin.is_some()),
            ("from", self.from.is_some()),
            ("to", self.to.is_some()),
            ("serial", self.serial.is_some()),
            ("serials", self.serials.is_some()),
            ("reason", self.reason.is_some()),
            ("markets", self.markets.is_some()),
            ("uid", self.uid.is_some()),
            ("read_point", self.read_point.is_some()),
            ("shipment", self.shipment.is_some()),
            ("sscc", self.sscc.is_some()),
        ];
        match present.iter().find(|(k, p)| *p && !allowed.contains(k)) {
            Some((k, _)) => Err(format!("`{k}` does not belong in a `{}` record", self.t)),
            None => Ok(()),
        }
    }

    /// The checked record.
    pub fn check(&self) -> Result<Record, String> {
        const SEL: [&str; 4] = ["gtin", "from", "to", "serial"];
        match self.t.as_str() {
            "commissioned" => {
                self.unused(&[SEL.as_slice(), &["serials"]].concat())?;
                Ok(Record::Commissioned {
                    gtin: self.gtin()?,
                    serials: self.serials(false)?,
                })
            }
            "blocked" => {
                self.unused(&[SEL.as_slice(), &["serials", "reason"]].concat())?;
                Ok(Record::Blocked {
                    gtin: self.gtin()?,
                    serials: self.serials(false)?,
                    reason: self.reason.ok_or("`reason` is missing")?,
                })
            }
            "market" => {
                self.unused(&[SEL.as_slice(), &["serials", "markets"]].concat())?;
                let markets = self.markets.clone().ok_or("`markets` is missing")?;
                if markets.is_empty() || !markets.iter().all(|m| label_ok(m)) {
                    return Err("`markets` must be 1 or more names of 1-64 characters".into());
                }
                Ok(Record::Market {
                    gtin: self.gtin()?,
                    serials: self.serials(true)?,
                    markets,
                })
            }
            "nfc" => {
                self.unused(&["uid", "gtin", "serial"])?;
                let uid = self.uid.as_deref().ok_or("`uid` is missing")?;
                let uid = hex::decode(uid)
                    .ok()
                    .filter(|u| (4..=10).contains(&u.len()))
                    .ok_or_else(|| format!("uid {uid:?} is not 4-10 bytes of hex"))?;
                let serial = self.serial.as_deref().ok_or("`serial` is missing")?;
                if !serial_ok(serial) {
                    return Err(format!(
                        "serial {serial:?} is not 1-20 printable ASCII characters"
                    ));
                }
                Ok(Record::Nfc {
                    uid,
                    gtin: self.gtin()?,
                    serial: Serial::parse(serial),
                })
            }
            "expected" => {
                self.unused(
                    &[
                        SEL.as_slice(),
                        &["serials", "read_point", "shipment", "sscc"],
                    ]
                    .concat(),
                )?;
                let read_point = self.read_point.clone().ok_or("`read_point` is missing")?;
                let shipment = self.shipment.clone().ok_or("`shipment` is missing")?;
                if !label_ok(&read_point) || !label_ok(&shipment) {
                    return Err("`read_point` and `shipment` must be 1-64 characters".into());
                }
                let item = match &self.sscc {
                    Some(s) if self.gtin.is_none() => {
                        if s.len() != 18 || !s.bytes().all(|b| b.is_ascii_digit()) {
                            return Err(format!("sscc {s:?} is not 18 digits"));
                        }
                        ExpectedItem::Sscc(s.clone())
                    }
                    Some(_) => return Err("give either `sscc` or `gtin`, not both".into()),
                    None => ExpectedItem::Items {
                        gtin: self.gtin()?,
                        serials: self.serials(false)?,
                    },
                };
                Ok(Record::Expected {
                    read_point,
                    shipment,
                    item,
                })
            }
            other => Err(format!(
                "unknown record type {other:?} (commissioned, blocked, market, nfc, expected)"
            )),
        }
    }
}

/// Parses a payload, handing each record to `each`. Empty lines are
/// skipped. Returns the number of records, or the first bad line.
pub fn parse_payload(payload: &[u8], each: impl FnMut(Record)) -> Result<u64, RecordError> {
    parse_chunks(&[payload], each)
}

/// [`parse_payload`] over the payload as its chunks, in order, without
/// joining them: a 100 MB dataset is parsed where it lies (the chunks the
/// store writes), and only a line cut by a chunk boundary is copied.
pub fn parse_chunks<C: AsRef<[u8]>>(
    chunks: &[C],
    mut each: impl FnMut(Record),
) -> Result<u64, RecordError> {
    let mut p = ChunkParser::default();
    for c in chunks {
        p.feed(c.as_ref(), &mut each)?;
    }
    p.finish(&mut each)
}

/// The payload parser fed one chunk at a time (the gateway re-verifies and
/// parses a stored dataset chunk by chunk, holding one chunk at a time).
#[derive(Debug, Default)]
pub struct ChunkParser {
    /// The start of a line that continues in the next chunk.
    carry: Vec<u8>,
    line_no: u64,
    count: u64,
}

impl ChunkParser {
    fn line(&mut self, line: &[u8], each: &mut impl FnMut(Record)) -> Result<(), RecordError> {
        self.line_no += 1;
        let line_no = self.line_no;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        let raw: RawRecord = serde_json::from_slice(line).map_err(|e| RecordError {
            line: line_no,
            message: e.to_string(),
        })?;
        let record = raw.check().map_err(|message| RecordError {
            line: line_no,
            message,
        })?;
        each(record);
        self.count += 1;
        Ok(())
    }

    /// The next chunk of the payload.
    pub fn feed(&mut self, chunk: &[u8], each: &mut impl FnMut(Record)) -> Result<(), RecordError> {
        let mut rest = chunk;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            let (line, tail) = rest.split_at(nl);
            if self.carry.is_empty() {
                self.line(line, each)?;
            } else {
                let mut carry = std::mem::take(&mut self.carry);
                carry.extend_from_slice(line);
                self.line(&carry, each)?;
                carry.clear();
                self.carry = carry;
            }
            rest = tail.get(1..).unwrap_or_default();
        }
        self.carry.extend_from_slice(rest);
        Ok(())
    }

    /// The end of the payload; returns the number of records.
    pub fn finish(mut self, each: &mut impl FnMut(Record)) -> Result<u64, RecordError> {
        let last = std::mem::take(&mut self.carry);
        self.line(&last, each)?;
        Ok(self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GTIN: &str = "09506000134352";

    #[test]
    fn gtins_need_a_valid_check_digit() {
        assert_eq!(parse_gtin(GTIN), Some(9_506_000_134_352));
        assert_eq!(parse_gtin("09506000134353"), None);
        assert_eq!(parse_gtin("9506000134352"), None);
    }

    #[test]
    fn canonical_decimal_serials_are_numbers_and_others_text() {
        assert_eq!(Serial::parse("0"), Serial::Num(0));
        assert_eq!(Serial::parse("1234"), Serial::Num(1234));
        assert_eq!(Serial::parse("01234"), Serial::Text("01234".into()));
        assert_eq!(Serial::parse("A1"), Serial::Text("A1".into()));
        assert_eq!(
            Serial::parse("99999999999999999999"),
            Serial::Text("99999999999999999999".into())
        );
    }

    #[test]
    fn every_record_type_parses() {
        let payload = format!(
            "{{\"t\":\"commissioned\",\"gtin\":\"{GTIN}\",\"from\":1,\"to\":10}}\n\
             \n\
             {{\"t\":\"blocked\",\"gtin\":\"{GTIN}\",\"serial\":\"7\",\"reason\":\"stolen\"}}\r\n\
             {{\"t\":\"market\",\"gtin\":\"{GTIN}\",\"markets\":[\"DE\"]}}\n\
             {{\"t\":\"nfc\",\"uid\":\"04A1B2C3D4E5F6\",\"gtin\":\"{GTIN}\",\"serial\":\"A1\"}}\n\
             {{\"t\":\"expected\",\"read_point\":\"dock\",\"shipment\":\"ASN1\",\"sscc\":\"106141412345678908\"}}\n"
        );
        let mut out = Vec::new();
        assert_eq!(parse_payload(payload.as_bytes(), |r| out.push(r)), Ok(5));
        assert_eq!(
            out[1],
            Record::Blocked {
                gtin: 9_506_000_134_352,
                serials: Serials::List(vec![Serial::Num(7)]),
                reason: BlockReason::Stolen
            }
        );
        assert!(matches!(
            out[2],
            Record::Market {
                serials: Serials::All,
                ..
            }
        ));
    }

    #[test]
    fn chunks_cut_anywhere_parse_like_the_whole_payload() {
        let payload = format!(
            "{{\"t\":\"commissioned\",\"gtin\":\"{GTIN}\",\"from\":1,\"to\":10}}\r\n\n\
             {{\"t\":\"blocked\",\"gtin\":\"{GTIN}\",\"serial\":\"7\",\"reason\":\"stolen\"}}\n\
             {{\"t\":\"nfc\",\"uid\":\"04A1B2C3D4E5F6\",\"gtin\":\"{GTIN}\",\"serial\":\"A1\"}}"
        );
        let b = payload.as_bytes();
        let mut whole = Vec::new();
        assert_eq!(parse_payload(b, |r| whole.push(r)), Ok(3));
        for size in 1..b.len() {
            let chunks: Vec<&[u8]> = b.chunks(size).collect();
            let mut got = Vec::new();
            assert_eq!(parse_chunks(&chunks, |r| got.push(r)), Ok(3), "size {size}");
            assert_eq!(got, whole, "size {size}");
        }
        // A bad line keeps its number whatever the cut.
        let bad = "\n\n{\"t\":\"zap\"}\n";
        for size in 1..bad.len() {
            let chunks: Vec<&[u8]> = bad.as_bytes().chunks(size).collect();
            assert_eq!(parse_chunks(&chunks, |_| {}).unwrap_err().line, 3);
        }
    }

    #[test]
    fn bad_lines_are_reported_with_their_number() {
        for (line, why) in [
            (
                r#"{"t":"commissioned","gtin":"09506000134352"}"#,
                "exactly one",
            ),
            (
                r#"{"t":"commissioned","gtin":"09506000134352","from":5,"to":1}"#,
                "above",
            ),
            (
                r#"{"t":"blocked","gtin":"09506000134352","serial":"1"}"#,
                "reason",
            ),
            (
                r#"{"t":"blocked","gtin":"09506000134352","serial":"1","reason":"lost"}"#,
                "unknown variant",
            ),
            (
                r#"{"t":"nfc","uid":"04","gtin":"09506000134352","serial":"1"}"#,
                "4-10 bytes",
            ),
            (
                r#"{"t":"commissioned","gtin":"09506000134352","serial":"1","uid":"04"}"#,
                "does not belong",
            ),
            (r#"{"t":"zap"}"#, "unknown record type"),
            (r#"{"t":"commissioned","extra":1}"#, "unknown field"),
            ("not json", "expected"),
        ] {
            let payload = format!("\n{line}\n");
            let err = parse_payload(payload.as_bytes(), |_| {}).unwrap_err();
            assert_eq!(err.line, 2, "{line}");
            assert!(err.message.contains(why), "{line}: {}", err.message);
        }
    }
}
