//! Telling tags apart: the PC/SC ATR and the tags' own version commands.
//!
//! An ACR122U-class reader reports every NTAG21x with the same "Ultralight"
//! ATR, so the ATR only gives the family; GET_VERSION (NTAG/Ultralight EV1)
//! or the DESFire-style GetVersion (NTAG 424 DNA) gives the part.

use std::fmt;

/// Identified tag type. [`TagType::as_str`] is the value put in `Tap::tag_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TagType {
    Ntag213,
    Ntag215,
    Ntag216,
    /// MIFARE Ultralight (original, or a part that did not answer GET_VERSION).
    MifareUltralight,
    MifareUltralightC,
    MifareUltralightEv1,
    MifareClassic1k,
    MifareClassic4k,
    Ntag424Dna,
    MifareDesfire,
    Unknown,
}

const ALL_TAG_TYPES: [TagType; 11] = [
    TagType::Ntag213,
    TagType::Ntag215,
    TagType::Ntag216,
    TagType::MifareUltralight,
    TagType::MifareUltralightC,
    TagType::MifareUltralightEv1,
    TagType::MifareClassic1k,
    TagType::MifareClassic4k,
    TagType::Ntag424Dna,
    TagType::MifareDesfire,
    TagType::Unknown,
];

impl TagType {
    pub fn as_str(self) -> &'static str {
        match self {
            TagType::Ntag213 => "ntag213",
            TagType::Ntag215 => "ntag215",
            TagType::Ntag216 => "ntag216",
            TagType::MifareUltralight => "mifare_ultralight",
            TagType::MifareUltralightC => "mifare_ultralight_c",
            TagType::MifareUltralightEv1 => "mifare_ultralight_ev1",
            TagType::MifareClassic1k => "mifare_classic_1k",
            TagType::MifareClassic4k => "mifare_classic_4k",
            TagType::Ntag424Dna => "ntag424dna",
            TagType::MifareDesfire => "mifare_desfire",
            TagType::Unknown => "unknown",
        }
    }

    /// The type whose [`TagType::as_str`] is `name` (as in `Tap::tag_type`).
    pub fn from_name(name: &str) -> Option<TagType> {
        ALL_TAG_TYPES.into_iter().find(|t| t.as_str() == name)
    }

    /// Whether the tag keeps NDEF in the Type 2 page layout (read with `FF B0`).
    pub fn is_type2(self) -> bool {
        matches!(
            self,
            TagType::Ntag213
                | TagType::Ntag215
                | TagType::Ntag216
                | TagType::MifareUltralight
                | TagType::MifareUltralightC
                | TagType::MifareUltralightEv1
        )
    }
}

impl fmt::Display for TagType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the ATR says about the card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AtrInfo {
    /// PC/SC part 3 storage card (ISO 14443-3 or FeliCa) with its card name.
    StorageCard {
        standard: u8,
        card_name: u16,
    },
    /// ISO 14443-4 card (DESFire, NTAG 424 DNA...), `3B 8N 80 01 <historical>`.
    Iso14443_4 {
        historical: Vec<u8>,
    },
    Other,
}

/// RID of the PC/SC workgroup, in the part 3 storage-card ATR.
const PCSC_RID: [u8; 5] = [0xA0, 0x00, 0x00, 0x03, 0x06];

/// Classifies an ATR (PC/SC part 3 §3.1.3.2.3; ACR122U API §3.1).
pub fn parse_atr(atr: &[u8]) -> AtrInfo {
    // 3B 8F 80 01 80 4F 0C A0 00 00 03 06 SS C0 C1 00 00 00 00 TCK
    if atr.len() >= 15
        && atr[0] == 0x3B
        && atr[1] & 0xF0 == 0x80
        && atr[2] == 0x80
        && atr[3] == 0x01
        && atr[4] == 0x80
        && atr[5] == 0x4F
        && atr[7..12] == PCSC_RID
    {
        return AtrInfo::StorageCard {
            standard: atr[12],
            card_name: u16::from_be_bytes([atr[13], atr[14]]),
        };
    }
    // 3B 8N 80 01 <N historical bytes> TCK
    if atr.len() >= 5 && atr[0] == 0x3B && atr[1] & 0xF0 == 0x80 && atr[2] == 0x80 && atr[3] == 0x01
    {
        let n = usize::from(atr[1] & 0x0F);
        if let Some(h) = atr.get(4..4 + n) {
            return AtrInfo::Iso14443_4 {
                historical: h.to_vec(),
            };
        }
    }
    AtrInfo::Other
}

/// The tag family from a storage-card ATR's card name (PC/SC part 3 list).
pub fn storage_card_type(card_name: u16) -> TagType {
    match card_name {
        0x0001 => TagType::MifareClassic1k,
        0x0002 => TagType::MifareClassic4k,
        // Ultralight, UL-C and all NTAG21x share this name on ACS readers.
        0x0003 => TagType::MifareUltralight,
        0x003A => TagType::MifareUltralightC,
        0x003D => TagType::MifareUltralightEv1,
        _ => TagType::Unknown,
    }
}

/// Refines an Ultralight-family tag from its 8-byte GET_VERSION reply
/// (vendor, product type, subtype, major, minor, storage size, protocol).
///
/// Only NXP parts (vendor 0x04) are named; clones answer with another
/// vendor byte and are reported as `Unknown` rather than as the part they mimic.
pub fn from_get_version(v: &[u8]) -> Option<TagType> {
    let v: &[u8; 8] = v.get(..8)?.try_into().ok()?;
    if v[1] != 0x04 {
        return Some(TagType::Unknown);
    }
    Some(match (v[2], v[6]) {
        (0x04, 0x0F) => TagType::Ntag213,
        (0x04, 0x11) => TagType::Ntag215,
        (0x04, 0x13) => TagType::Ntag216,
        (0x03, _) if v[4] == 0x00 => TagType::MifareUltralight,
        (0x03, _) => TagType::MifareUltralightEv1,
        _ => TagType::Unknown,
    })
}

/// Names an ISO 14443-4 NXP card from the first frame of its native
/// GetVersion reply (vendor, HW type, subtype, major, minor, storage, protocol).
pub fn from_desfire_version(hw: &[u8]) -> TagType {
    match hw {
        [0x04, 0x04, _, 0x30, ..] => TagType::Ntag424Dna,
        [0x04, 0x01, ..] => TagType::MifareDesfire,
        _ => TagType::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s.replace(' ', "")).unwrap()
    }

    #[test]
    fn storage_card_atrs_from_the_pcsc_list_give_their_family() {
        let cases = [
            (
                "3B 8F 80 01 80 4F 0C A0 00 00 03 06 03 00 01 00 00 00 00 6A",
                TagType::MifareClassic1k,
            ),
            (
                "3B 8F 80 01 80 4F 0C A0 00 00 03 06 03 00 02 00 00 00 00 69",
                TagType::MifareClassic4k,
            ),
            (
                "3B 8F 80 01 80 4F 0C A0 00 00 03 06 03 00 03 00 00 00 00 68",
                TagType::MifareUltralight,
            ),
        ];
        for (atr, want) in cases {
            let AtrInfo::StorageCard {
                standard,
                card_name,
            } = parse_atr(&h(atr))
            else {
                panic!("{atr} not a storage card")
            };
            assert_eq!(standard, 0x03);
            assert_eq!(storage_card_type(card_name), want);
        }
    }

    #[test]
    fn iso14443_4_atrs_expose_their_historical_bytes() {
        assert_eq!(
            parse_atr(&h("3B 81 80 01 80 80")),
            AtrInfo::Iso14443_4 {
                historical: vec![0x80]
            }
        );
        // ACS's DESFire example carries the whole ATS.
        assert_eq!(
            parse_atr(&h("3B 86 80 01 06 75 77 81 02 80 00")),
            AtrInfo::Iso14443_4 {
                historical: h("06 75 77 81 02 80")
            }
        );
        assert_eq!(
            parse_atr(&h("3B 95 13 81 01 80 73 FF 01 00 0B")),
            AtrInfo::Other
        );
        assert_eq!(parse_atr(&[]), AtrInfo::Other);
        assert_eq!(parse_atr(&h("3B 8F 80 01")), AtrInfo::Other);
    }

    #[test]
    fn get_version_tells_ntag21x_and_ultralight_apart() {
        let cases = [
            ("00 04 04 02 01 00 0F 03", TagType::Ntag213),
            ("00 04 04 02 01 00 11 03", TagType::Ntag215),
            ("00 04 04 02 01 00 13 03", TagType::Ntag216),
            ("00 04 04 04 01 00 0F 03", TagType::Ntag213), // NTAG213F
            ("00 04 03 01 01 00 0B 03", TagType::MifareUltralightEv1),
            ("00 04 03 01 01 00 0E 03", TagType::MifareUltralightEv1),
            ("00 04 03 01 00 00 0B 03", TagType::MifareUltralight),
            ("00 53 04 02 01 00 0F 03", TagType::Unknown), // a clone
        ];
        for (v, want) in cases {
            assert_eq!(from_get_version(&h(v)), Some(want), "{v}");
        }
        assert_eq!(from_get_version(&[0x00, 0x04]), None);
    }

    #[test]
    fn desfire_get_version_names_ntag424_and_desfire() {
        assert_eq!(
            from_desfire_version(&h("04 04 02 30 00 11 05")),
            TagType::Ntag424Dna
        );
        assert_eq!(
            from_desfire_version(&h("04 01 01 12 00 18 05")),
            TagType::MifareDesfire
        );
        assert_eq!(from_desfire_version(&h("04")), TagType::Unknown);
    }
}
