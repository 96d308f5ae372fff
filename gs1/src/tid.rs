//! Gen2 TID memory decoding (TDS 1.13 §16): allocation class, MDID, TMN, XTID header
//! and serial, chip maker and model names.

use serde::{Deserialize, Serialize};

/// Decoded TID bank. Fields that the supplied bytes do not cover are `None`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TidInfo {
    /// ISO/IEC 15963 allocation class (0xE2 = GS1 EPCglobal).
    pub class: Option<u8>,
    /// X bit: an XTID follows the first two words.
    pub xtid: Option<bool>,
    /// S bit: the chip supports Authenticate/Challenge.
    pub security: Option<bool>,
    /// F bit: the chip supports FileOpen.
    pub file: Option<bool>,
    /// 9-bit mask-designer ID (TDS §16.2).
    pub mdid: Option<u16>,
    /// 12-bit tag model number.
    pub tmn: Option<u16>,
    /// Chip maker from the GS1 MDID list (a snapshot; the registry is authoritative).
    pub manufacturer: Option<String>,
    /// Chip model for well-known MDID/TMN pairs; vendor datasheets are the only
    /// authority and third-party lists conflict, so treat this as a hint.
    pub model: Option<String>,
    /// XTID header word.
    pub xtid_header: Option<u16>,
    /// Serial number bits announced by the XTID header (0 = not serialised).
    pub serial_bits: Option<usize>,
    /// XTID serial in uppercase hex when the TID carries one and enough bytes were read.
    pub serial: Option<String>,
    /// `urn:epc:stid:x{MDID}.x{TMN}.x{serial}` (TDS §16.3), present with a serial. Uses the
    /// literal 12-bit MDID field of TDS 1.13 §16.3.2 step 3 (e.g. `x806` for NXP).
    pub stid_uri: Option<String>,
    /// The TID bytes in uppercase hex.
    pub hex: String,
    /// Why the TID could not be (fully) decoded.
    pub note: Option<String>,
}

impl TidInfo {
    /// Compact JSON with stable snake_case keys.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Decodes TID bank bytes as read from word 0. Never fails: missing or non-GS1
/// data leave fields `None` and explain in `note`.
pub fn decode_tid(tid: &[u8]) -> TidInfo {
    let mut info = TidInfo {
        class: tid.first().copied(),
        xtid: None,
        security: None,
        file: None,
        mdid: None,
        tmn: None,
        manufacturer: None,
        model: None,
        xtid_header: None,
        serial_bits: None,
        serial: None,
        stid_uri: None,
        hex: hex::encode_upper(tid),
        note: None,
    };
    if tid.len() < 4 {
        info.note = Some(format!(
            "TID has {} bytes; at least 4 (2 words) are needed",
            tid.len()
        ));
        return info;
    }
    if tid[0] != 0xE2 {
        info.note = Some(format!(
            "allocation class 0x{:02X} is not GS1 EPCglobal (0xE2)",
            tid[0]
        ));
        return info;
    }
    let w = u32::from_be_bytes([tid[0], tid[1], tid[2], tid[3]]);
    let x = w >> 23 & 1 == 1;
    info.xtid = Some(x);
    info.security = Some(w >> 22 & 1 == 1);
    info.file = Some(w >> 21 & 1 == 1);
    let mdid = (w >> 12 & 0x1FF) as u16;
    let mdid12 = (w >> 12 & 0xFFF) as u16;
    let tmn = (w & 0xFFF) as u16;
    info.mdid = Some(mdid);
    info.tmn = Some(tmn);
    info.manufacturer = manufacturer(mdid).map(str::to_string);
    info.model = model(mdid, tmn).map(str::to_string);
    if !x {
        return info;
    }
    if tid.len() < 6 {
        info.note = Some("XTID announced but the XTID header word was not read".into());
        return info;
    }
    let hdr = u16::from_be_bytes([tid[4], tid[5]]);
    info.xtid_header = Some(hdr);
    let v = usize::from(hdr >> 13);
    let bits = if v == 0 { 0 } else { 48 + 16 * (v - 1) };
    info.serial_bits = Some(bits);
    if bits > 0 {
        let end = 6 + bits / 8;
        match tid.get(6..end) {
            Some(serial) => {
                let s = hex::encode_upper(serial);
                info.stid_uri = Some(format!("urn:epc:stid:x{mdid12:03X}.x{tmn:03X}.x{s}"));
                info.serial = Some(s);
            }
            None => {
                info.note = Some(format!(
                    "XTID serial needs {} bytes, only {} read",
                    end,
                    tid.len()
                ))
            }
        }
    }
    info
}

/// [`decode_tid`] for hex input.
pub fn decode_tid_hex(s: &str) -> Result<TidInfo, crate::HexError> {
    Ok(decode_tid(&crate::epc::parse_hex(s)?))
}

/// GS1 MDID list snapshot (as quoted in russss/rust-gs1 from gs1.org/epcglobal/standards/mdid).
pub fn manufacturer(mdid: u16) -> Option<&'static str> {
    Some(match mdid {
        0x001 => "Impinj",
        0x002 => "Texas Instruments",
        0x003 => "Alien Technology",
        0x004 => "Intelleflex",
        0x005 => "Atmel",
        0x006 => "NXP Semiconductors",
        0x007 => "ST Microelectronics",
        0x008 => "EP Microelectronics",
        0x009 => "Motorola (Symbol)",
        0x00A => "Sentech",
        0x00B => "EM Microelectronic",
        0x00C => "Renesas",
        0x00D => "Mstar",
        0x00E => "Tyco",
        0x00F => "Quanray",
        0x010 => "Fujitsu",
        0x011 => "LSIS",
        0x012 => "CAEN RFID",
        0x013 => "Productivity Engineering",
        0x014 => "Federal Electric",
        0x015 => "ON Semiconductor",
        0x016 => "Ramtron",
        0x017 => "Tego",
        0x018 => "Ceitec",
        0x019 => "CPA Wernher von Braun",
        0x01A => "TransCore",
        0x01B => "Nationz",
        0x01C => "Invengo",
        0x01D => "Kiloway",
        0x01E => "Longjing Microelectronics",
        0x024 => "RFMicron",
        0x027 => "Shanghai Fudan",
        0x028 => "Farsens",
        0x029 => "Giesecke & Devrient",
        0x02F => "ams",
        0x03C => "AXEM Technology",
        _ => return None,
    })
}

/// Model names where at least one published source gives the MDID/TMN pair; pairs
/// with conflicting sources (Impinj M7xx/M8xx) are left out on purpose.
pub fn model(mdid: u16, tmn: u16) -> Option<&'static str> {
    Some(match (mdid, tmn) {
        (0x001, 0x105) => "Impinj Monza 4QT",
        (0x001, 0x10C) => "Impinj Monza 4E",
        (0x001, 0x160) => "Impinj Monza R6",
        (0x003, 0x412) => "Alien Higgs-3",
        (0x003, 0x414) => "Alien Higgs-4",
        (0x003, 0x821) => "Alien Higgs-9",
        (0x003, 0x813) => "Alien Higgs-10",
        (0x006, 0x810) | (0x006, 0x890) => "NXP UCODE 7",
        (0x006, 0x894) => "NXP UCODE 8",
        (0x006, 0x994) => "NXP UCODE 8m",
        (0x006, 0x995) => "NXP UCODE 9",
        (0x006, 0xF12) => "NXP UCODE 7xm-2k",
        (0x00B, 0x044) => "EM Microelectronic EM4325",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ucode8_tid_with_serial() {
        let t = decode_tid_hex("E2806894200050004A1B2C3D").unwrap();
        assert_eq!(t.mdid, Some(6));
        assert_eq!(t.tmn, Some(0x894));
        assert_eq!(t.model.as_deref(), Some("NXP UCODE 8"));
        assert_eq!(t.serial.as_deref(), Some("50004A1B2C3D"));
        assert_eq!(
            t.stid_uri.as_deref(),
            Some("urn:epc:stid:x806.x894.x50004A1B2C3D")
        );
    }

    #[test]
    fn short_and_foreign_tids_are_explained() {
        assert!(decode_tid(&[0xE2]).note.is_some());
        let t = decode_tid(&[0xE0, 0x04, 0x01, 0x02]);
        assert_eq!(t.class, Some(0xE0));
        assert!(t.mdid.is_none() && t.note.is_some());
        let t = decode_tid_hex("E2806894200050").unwrap();
        assert!(t.serial.is_none() && t.note.is_some());
    }
}
