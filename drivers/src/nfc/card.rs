//! Reading a presented tag: UID, type and NDEF, over any APDU transport.
//!
//! The logic is written against [`Transmit`], so the same code runs over a
//! PC/SC card handle in the driver and directly against the emulated cards
//! of [`super::emu`] in unit tests. APDUs follow PC/SC part 3 (storage
//! cards, `FF CA`/`FF B0`), the ACR122U direct-transmit wrapper (`FF 00 00 00
//! Lc D4 42 …`) for NTAG commands without a pseudo-APDU, and ISO 7816-4 for
//! Type 4 tags.

use super::ndef::{self, TlvScan};
use super::originality;
use super::tag::{self, AtrInfo, TagType};

/// A failed exchange with the card or reader.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TransmitError {
    pub message: String,
    /// The card left the field or was reset: stop reading it.
    pub card_gone: bool,
}

/// Something that carries a command APDU to the card and returns the response
/// APDU (data followed by SW1 SW2).
pub trait Transmit {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, TransmitError>;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("sending {apdu} failed: {source}")]
    Transmit { apdu: String, source: TransmitError },
    #[error("the reader returned no UID (status {sw:04X}); the tag may have left the field")]
    NoUid { sw: u16 },
}

/// What was read from one tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagInfo {
    pub uid: Vec<u8>,
    pub tag_type: TagType,
    pub ndef_uri: Option<String>,
    pub ndef_text: Option<String>,
    /// Why the NDEF content could not be read, when it could not; the tap is
    /// still reported with UID and type.
    pub ndef_error: Option<String>,
    /// NTAG21x only: whether READ_SIG returned NXP's originality signature
    /// for this UID (`None`: not an NTAG21x, or the reader cannot send READ_SIG).
    pub nxp_signature_valid: Option<bool>,
}

const SW_OK: u16 = 0x9000;

/// How many times the NDEF area is read before a tap is reported without it.
/// A tag at the edge of the field (or a reader shared with another PC/SC
/// client) can answer one command and miss the next, and each read starts
/// again from the capability container. Another read costs a few APDUs; a
/// tap without its URL loses its identity and its SUN verdict.
pub const NDEF_ATTEMPTS: usize = 3;

fn split_sw(resp: &[u8]) -> (&[u8], u16) {
    match resp.len() {
        0 | 1 => (&[], 0),
        n => (
            &resp[..n - 2],
            u16::from_be_bytes([resp[n - 2], resp[n - 1]]),
        ),
    }
}

fn send<T: Transmit + ?Sized>(t: &mut T, apdu: &[u8]) -> Result<Vec<u8>, ReadError> {
    t.transmit(apdu).map_err(|source| ReadError::Transmit {
        apdu: hex::encode_upper(apdu),
        source,
    })
}

/// Sends an APDU; `Ok(Some(data))` on 90 00, `Ok(None)` on any other status.
fn send_ok<T: Transmit + ?Sized>(t: &mut T, apdu: &[u8]) -> Result<Option<Vec<u8>>, ReadError> {
    let resp = send(t, apdu)?;
    let (data, sw) = split_sw(&resp);
    Ok((sw == SW_OK).then(|| data.to_vec()))
}

/// GET UID pseudo-APDU (PC/SC part 3).
pub const GET_UID: [u8; 5] = [0xFF, 0xCA, 0x00, 0x00, 0x00];
/// NTAG/Ultralight GET_VERSION through the ACR122U's PN532 InCommunicateThru.
pub const DIRECT_GET_VERSION: [u8; 8] = [0xFF, 0x00, 0x00, 0x00, 0x03, 0xD4, 0x42, 0x60];
/// NTAG21x READ_SIG (originality signature) through the same wrapper.
pub const DIRECT_READ_SIG: [u8; 9] = [0xFF, 0x00, 0x00, 0x00, 0x04, 0xD4, 0x42, 0x3C, 0x00];
/// ISO SELECT of the NFC Forum NDEF application (D2760000850101).
pub const SELECT_NDEF_APP: [u8; 13] = [
    0x00, 0xA4, 0x04, 0x00, 0x07, 0xD2, 0x76, 0x00, 0x00, 0x85, 0x01, 0x01, 0x00,
];

/// Reads UID, type and NDEF content of the card whose ATR is `atr`.
///
/// Only a missing UID or a broken transport fails the read; an unreadable
/// NDEF area is reported in [`TagInfo::ndef_error`].
pub fn read_tag<T: Transmit + ?Sized>(atr: &[u8], t: &mut T) -> Result<TagInfo, ReadError> {
    let resp = send(t, &GET_UID)?;
    let (uid, sw) = split_sw(&resp);
    if sw != SW_OK || uid.is_empty() {
        return Err(ReadError::NoUid { sw });
    }
    let uid = uid.to_vec();
    let mut signature = None;
    let (tag_type, ndef) = match tag::parse_atr(atr) {
        AtrInfo::StorageCard { card_name, .. } => {
            let family = tag::storage_card_type(card_name);
            if family.is_type2() {
                // NDEF before GET_VERSION: an original Ultralight NAKs
                // GET_VERSION and drops to IDLE, after which reads fail.
                let ndef = attempts(|| read_type2(t));
                let tag_type = direct_get_version(t)?
                    .and_then(|v| tag::from_get_version(&v))
                    .unwrap_or(family);
                if matches!(
                    tag_type,
                    TagType::Ntag213 | TagType::Ntag215 | TagType::Ntag216
                ) {
                    signature = direct_read_sig(t)?
                        .map(|sig| originality::ntag21x_signature_valid(&uid, &sig));
                }
                (tag_type, ndef)
            } else {
                (family, Ok(None))
            }
        }
        AtrInfo::Iso14443_4 { .. } => {
            let tag_type = desfire_get_version(t)?
                .map(|v| tag::from_desfire_version(&v))
                .unwrap_or(TagType::Unknown);
            // An NTAG 424 DNA always has the NDEF application: failing to
            // select it is a read cut short, not a tag without NDEF.
            let must_have_ndef = tag_type == TagType::Ntag424Dna;
            (tag_type, attempts(|| read_type4(t, must_have_ndef)))
        }
        AtrInfo::Other => {
            // Readers that build ATRs differently: probe both NDEF layouts.
            let ndef = attempts(|| match read_type4(t, false) {
                Ok(None) => read_type2(t),
                other => other,
            });
            let tag_type = direct_get_version(t)?
                .and_then(|v| tag::from_get_version(&v))
                .unwrap_or(TagType::Unknown);
            (tag_type, ndef)
        }
    };
    let (summary, ndef_error) = match ndef {
        Ok(s) => (s.unwrap_or_default(), None),
        Err(NdefRead::Card(e)) => return Err(e),
        Err(NdefRead::Format(msg)) => (ndef::Summary::default(), Some(msg)),
    };
    Ok(TagInfo {
        uid,
        tag_type,
        ndef_uri: summary.uri,
        ndef_text: summary.text,
        ndef_error,
        nxp_signature_valid: signature,
    })
}

/// Runs an NDEF read up to [`NDEF_ATTEMPTS`] times while the card answers
/// but its content comes back unusable; a failed transport ends at once.
fn attempts(
    mut read: impl FnMut() -> Result<Option<ndef::Summary>, NdefRead>,
) -> Result<Option<ndef::Summary>, NdefRead> {
    let mut last = String::new();
    for _ in 0..NDEF_ATTEMPTS {
        match read() {
            Err(NdefRead::Format(why)) => last = why,
            done => return done,
        }
    }
    Err(NdefRead::Format(format!(
        "{last} ({NDEF_ATTEMPTS} attempts)"
    )))
}

enum NdefRead {
    /// The transport failed: the whole read fails.
    Card(ReadError),
    /// The tag answered but its content is not usable NDEF.
    Format(String),
}

impl From<ReadError> for NdefRead {
    fn from(e: ReadError) -> Self {
        NdefRead::Card(e)
    }
}

fn direct_get_version<T: Transmit + ?Sized>(t: &mut T) -> Result<Option<Vec<u8>>, ReadError> {
    let Some(data) = send_ok(t, &DIRECT_GET_VERSION)? else {
        return Ok(None);
    };
    // D5 43 <PN532 status> <8 version bytes>; status 00 = the tag answered.
    Ok(match data.as_slice() {
        [0xD5, 0x43, 0x00, v @ ..] if v.len() >= 8 => Some(v[..8].to_vec()),
        _ => None,
    })
}

/// NTAG21x READ_SIG through the direct-transmit wrapper: 32 bytes `r ‖ s`.
fn direct_read_sig<T: Transmit + ?Sized>(t: &mut T) -> Result<Option<Vec<u8>>, ReadError> {
    let Some(data) = send_ok(t, &DIRECT_READ_SIG)? else {
        return Ok(None);
    };
    Ok(match data.as_slice() {
        [0xD5, 0x43, 0x00, sig @ ..] if sig.len() >= 32 => Some(sig[..32].to_vec()),
        _ => None,
    })
}

/// Native GetVersion (wrapped in ISO 7816-4), first frame: the hardware info.
fn desfire_get_version<T: Transmit + ?Sized>(t: &mut T) -> Result<Option<Vec<u8>>, ReadError> {
    let resp = send(t, &[0x90, 0x60, 0x00, 0x00, 0x00])?;
    let (hw, sw) = split_sw(&resp);
    if sw != 0x91AF || hw.len() < 7 {
        return Ok(None);
    }
    let hw = hw.to_vec();
    // Finish the three-frame exchange so the card is not left mid-command.
    for _ in 0..2 {
        let resp = send(t, &[0x90, 0xAF, 0x00, 0x00, 0x00])?;
        if split_sw(&resp).1 != 0x91AF {
            break;
        }
    }
    Ok(Some(hw))
}

/// Type 2: capability container on page 3, TLVs from page 4, 4 pages per read.
fn read_type2<T: Transmit + ?Sized>(t: &mut T) -> Result<Option<ndef::Summary>, NdefRead> {
    let Some(cc) = send_ok(t, &[0xFF, 0xB0, 0x00, 0x03, 0x04])? else {
        return Err(NdefRead::Format(
            "reading the capability container (page 3) failed".into(),
        ));
    };
    if cc.first() != Some(&0xE1) {
        return Ok(None); // not NDEF-formatted
    }
    let size = usize::from(cc.get(2).copied().unwrap_or(0)) * 8;
    let mut area: Vec<u8> = Vec::with_capacity(size.min(1024));
    let mut page: usize = 4;
    loop {
        match ndef::scan_type2_tlvs(&area) {
            TlvScan::Ndef(r) => {
                return ndef::summarize(&area[r])
                    .map(Some)
                    .map_err(|e| NdefRead::Format(e.to_string()));
            }
            TlvScan::NoNdef => return Ok(None),
            TlvScan::NeedMore(n) if n > size => {
                return Err(NdefRead::Format(format!(
                    "NDEF TLV runs past the {size}-byte data area the capability container declares"
                )));
            }
            TlvScan::NeedMore(_) => {}
        }
        let Ok(p) = u8::try_from(page) else {
            return Err(NdefRead::Format("NDEF area extends beyond page 255".into()));
        };
        let Some(chunk) = send_ok(t, &[0xFF, 0xB0, 0x00, p, 0x10])? else {
            return Err(NdefRead::Format(format!(
                "reading page {p} failed (password-protected or past the end)"
            )));
        };
        if chunk.is_empty() {
            return Err(NdefRead::Format(format!(
                "reading page {p} returned no data"
            )));
        }
        area.extend_from_slice(&chunk);
        page += 4;
    }
}

/// Type 4: NDEF application, capability container file, NDEF file.
fn read_type4<T: Transmit + ?Sized>(
    t: &mut T,
    must_have_ndef: bool,
) -> Result<Option<ndef::Summary>, NdefRead> {
    if send_ok(t, &SELECT_NDEF_APP)?.is_none() {
        if must_have_ndef {
            return Err(NdefRead::Format(
                "the NDEF application cannot be selected".into(),
            ));
        }
        return Ok(None);
    }
    // Defaults for NTAG 424 DNA when the CC cannot be read.
    let mut file_id = [0xE1, 0x04];
    let mut max_le: usize = 0xFF;
    if send_ok(t, &[0x00, 0xA4, 0x00, 0x0C, 0x02, 0xE1, 0x03])?.is_some() {
        if let Some(cc) = send_ok(t, &[0x00, 0xB0, 0x00, 0x00, 0x0F])? {
            // CCLEN(2) version(1) MLe(2) MLc(2) then the NDEF File Control TLV 04 06 id(2) size(2) r w.
            if let [_, _, _, le0, le1, _, _, 0x04, 0x06, id0, id1, ..] = cc.as_slice() {
                file_id = [*id0, *id1];
                max_le = usize::from(u16::from_be_bytes([*le0, *le1])).clamp(0x0F, 0xFF);
            }
        }
    }
    let select = [0x00, 0xA4, 0x00, 0x0C, 0x02, file_id[0], file_id[1]];
    if send_ok(t, &select)?.is_none() {
        return Err(NdefRead::Format(format!(
            "NDEF file {} cannot be selected",
            hex::encode_upper(file_id)
        )));
    }
    let Some(nlen) = send_ok(t, &[0x00, 0xB0, 0x00, 0x00, 0x02])? else {
        return Err(NdefRead::Format("reading NLEN failed".into()));
    };
    let [n0, n1] = nlen.as_slice() else {
        return Err(NdefRead::Format(format!(
            "NLEN is {} bytes, not 2",
            nlen.len()
        )));
    };
    let nlen = usize::from(u16::from_be_bytes([*n0, *n1]));
    if nlen == 0 {
        return Ok(None);
    }
    let mut msg = Vec::with_capacity(nlen);
    while msg.len() < nlen {
        let offset = 2 + msg.len();
        let Ok(off) = u16::try_from(offset) else {
            break;
        };
        if off > 0x7FFF {
            break;
        }
        let le = (nlen - msg.len()).min(max_le) as u8;
        let [p1, p2] = off.to_be_bytes();
        let Some(chunk) = send_ok(t, &[0x00, 0xB0, p1, p2, le])? else {
            return Err(NdefRead::Format(format!(
                "READ BINARY at offset {offset} failed"
            )));
        };
        if chunk.is_empty() {
            break;
        }
        msg.extend_from_slice(&chunk);
    }
    msg.truncate(nlen);
    ndef::summarize(&msg)
        .map(Some)
        .map_err(|e| NdefRead::Format(e.to_string()))
}
