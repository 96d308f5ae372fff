//! What drivers produce: raw UHF reads and NFC taps.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::clock::HostTime;

/// One singulation of a UHF tag by one antenna, as the reader reported it.
///
/// Fields a given reader cannot supply are `None`; nothing is invented.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RawRead {
    /// Configured name of the reader that produced the read.
    pub reader: Arc<str>,
    /// Antenna port, 1-based as printed on the reader.
    pub antenna: u8,
    /// EPC bank contents after the PC word (the EPC itself).
    #[serde(with = "hex_bytes")]
    pub epc: Vec<u8>,
    /// TID bank contents, when the reader was configured to read it.
    #[serde(with = "opt_hex_bytes", default)]
    pub tid: Option<Vec<u8>>,
    /// Protocol-control word (length, UMI, XPC, numbering system).
    pub pc: Option<u16>,
    /// Received signal strength in dBm.
    pub rssi_dbm: Option<i16>,
    /// Carrier frequency in kHz.
    pub frequency_khz: Option<u32>,
    /// Backscatter phase in degrees (0..360), where the reader measures it.
    pub phase_deg: Option<u16>,
    /// The reader's own timestamp in milliseconds, where it sends one.
    pub reader_timestamp_ms: Option<u64>,
    /// When the host received the read.
    pub host: HostTime,
}

/// An NFC tag presented to a PC/SC reader: one per placement, however long
/// the tag is held there.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Tap {
    pub reader: Arc<str>,
    /// Tag UID (7 bytes for NTAG, 4 or 7 for others).
    #[serde(with = "hex_bytes")]
    pub uid: Vec<u8>,
    /// Identified tag type, e.g. `ntag215`, `ntag424dna`, `mifare_ultralight`, `unknown`.
    pub tag_type: String,
    /// The first NDEF URI record, with its prefix expanded.
    pub ndef_uri: Option<String>,
    /// The first NDEF Text record.
    pub ndef_text: Option<String>,
    /// ATR of the card as the reader reported it.
    #[serde(with = "hex_bytes")]
    pub atr: Vec<u8>,
    pub host: HostTime,
}

/// Redacts the SUN values of `ndef_uri`: a tap printed into a log must not
/// hand out a replayable URL.
impl std::fmt::Debug for Tap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tap")
            .field("reader", &self.reader)
            .field("uid", &hex::encode_upper(&self.uid))
            .field("tag_type", &self.tag_type)
            .field(
                "ndef_uri",
                &self
                    .ndef_uri
                    .as_deref()
                    .map(crate::nfc::sun::redact_sun_url),
            )
            .field("ndef_text", &self.ndef_text)
            .field("atr", &hex::encode_upper(&self.atr))
            .field("host", &self.host)
            .finish()
    }
}

pub(crate) mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode_upper(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(s).map_err(serde::de::Error::custom)
    }
}

pub(crate) mod opt_hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_str(&hex::encode_upper(b)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        let s = Option::<String>::deserialize(d)?;
        s.map(|s| hex::decode(s).map_err(serde::de::Error::custom))
            .transpose()
    }
}
