//! Emulated NFC tags as an ACR122U-class PC/SC reader presents them.
//!
//! Used by the vpcd bridge ([`super::vpcd`]) to test the driver against a
//! real pcscd, by `tracegate demo`, and directly (through
//! [`super::card::Transmit`]) by unit tests. Replies follow the ACR122U API
//! (pseudo-APDUs, PN532 direct transmit) and, for the NTAG 424 DNA, ISO
//! 7816-4 plus the native GetVersion.

use super::card::{Transmit, TransmitError};
use super::diversify::DiversifyError;
use super::ndef::{self, RecordBuf};
use super::sun::{self, SunKeys};

/// A card behind the virtual reader.
pub trait EmulatedCard: Send {
    /// Answer-to-reset as the reader reports it.
    fn atr(&self) -> Vec<u8>;
    /// Field off/on or reset: volatile state (selected file...) is lost.
    fn reset(&mut self);
    /// One command APDU in, one response APDU out (never empty).
    fn apdu(&mut self, cmd: &[u8]) -> Vec<u8>;
}

impl<C: EmulatedCard + ?Sized> Transmit for C {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, TransmitError> {
        Ok(self.apdu(apdu))
    }
}

const OK: [u8; 2] = [0x90, 0x00];
const SW_FAIL: [u8; 2] = [0x63, 0x00];

fn ok(mut data: Vec<u8>) -> Vec<u8> {
    data.extend_from_slice(&OK);
    data
}

/// ATR of ISO 14443-3 "Ultralight" storage cards (all NTAG21x on an ACR122U).
pub const ATR_ULTRALIGHT: [u8; 20] = [
    0x3B, 0x8F, 0x80, 0x01, 0x80, 0x4F, 0x0C, 0xA0, 0x00, 0x00, 0x03, 0x06, 0x03, 0x00, 0x03, 0x00,
    0x00, 0x00, 0x00, 0x68,
];
/// A generic ISO 14443-4 ATR, as many readers report DESFire-class cards.
pub const ATR_ISO14443_4: [u8; 6] = [0x3B, 0x81, 0x80, 0x01, 0x80, 0x80];

/// NTAG21x model: GET_VERSION reply, total pages, capability container size byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NtagModel {
    Ntag213,
    Ntag215,
    Ntag216,
}

impl NtagModel {
    fn version(self) -> [u8; 8] {
        let size = match self {
            NtagModel::Ntag213 => 0x0F,
            NtagModel::Ntag215 => 0x11,
            NtagModel::Ntag216 => 0x13,
        };
        [0x00, 0x04, 0x04, 0x02, 0x01, 0x00, size, 0x03]
    }

    fn pages(self) -> usize {
        match self {
            NtagModel::Ntag213 => 45,
            NtagModel::Ntag215 => 135,
            NtagModel::Ntag216 => 231,
        }
    }

    fn cc_size(self) -> u8 {
        match self {
            NtagModel::Ntag213 => 0x12,
            NtagModel::Ntag215 => 0x3E,
            NtagModel::Ntag216 => 0x6D,
        }
    }
}

/// An NTAG213/215/216 holding an NDEF message, with no password protection.
#[derive(Debug, Clone)]
pub struct Ntag21x {
    uid: [u8; 7],
    version: [u8; 8],
    mem: Vec<u8>,
    signature: [u8; 32],
}

impl Ntag21x {
    /// A tag whose NDEF message is the given bytes (truncated to fit).
    pub fn new(model: NtagModel, uid: [u8; 7], ndef_message: &[u8]) -> Self {
        let pages = model.pages();
        let mut mem = vec![0u8; pages * 4];
        mem[..3].copy_from_slice(&uid[..3]);
        mem[3] = 0x88 ^ uid[0] ^ uid[1] ^ uid[2];
        mem[4..8].copy_from_slice(&uid[3..]);
        mem[8] = uid[3] ^ uid[4] ^ uid[5] ^ uid[6];
        mem[9] = 0x48;
        mem[12..16].copy_from_slice(&[0xE1, 0x10, model.cc_size(), 0x00]);
        let user_end = 16 + usize::from(model.cc_size()) * 8;
        let tlv = ndef::type2_tlv(ndef_message);
        let n = tlv.len().min(user_end - 16);
        mem[16..16 + n].copy_from_slice(&tlv[..n]);
        // CFG0 (AUTH0 = FF: no page protected) sits 4 pages before the end.
        let cfg0 = (pages - 4) * 4;
        mem[cfg0 + 3] = 0xFF;
        Self {
            uid,
            version: model.version(),
            mem,
            // No NXP signature unless one is given: all zero, as on some clones.
            signature: [0; 32],
        }
    }

    /// Sets what READ_SIG returns (a real tag's originality signature).
    pub fn with_signature(mut self, signature: [u8; 32]) -> Self {
        self.signature = signature;
        self
    }

    /// An NTAG215 whose only record is this URI.
    pub fn ntag215_with_uri(uid: [u8; 7], uri: &str) -> Self {
        let msg = ndef::encode_message(&[RecordBuf::uri(uri)]);
        Self::new(NtagModel::Ntag215, uid, &msg)
    }

    pub fn uid(&self) -> [u8; 7] {
        self.uid
    }

    /// 16 bytes from `page`, wrapping round at the end of memory as the tag does.
    fn read4(&self, page: usize) -> Vec<u8> {
        let len = self.mem.len();
        (0..16).map(|i| self.mem[(page * 4 + i) % len]).collect()
    }

    fn native(&self, cmd: &[u8]) -> Vec<u8> {
        let pages = self.mem.len() / 4;
        let mut out = vec![0xD5, 0x43, 0x00];
        match cmd {
            [0x60] => out.extend_from_slice(&self.version),
            [0x3C, 0x00] => out.extend_from_slice(&self.signature),
            [0x30, p] if usize::from(*p) < pages => out.extend(self.read4(usize::from(*p))),
            _ => return vec![0xD5, 0x43, 0x01, 0x90, 0x00],
        }
        ok(out)
    }
}

impl EmulatedCard for Ntag21x {
    fn atr(&self) -> Vec<u8> {
        ATR_ULTRALIGHT.to_vec()
    }

    fn reset(&mut self) {}

    fn apdu(&mut self, cmd: &[u8]) -> Vec<u8> {
        let pages = self.mem.len() / 4;
        match cmd {
            [0xFF, 0xCA, 0x00, 0x00, ..] => ok(self.uid.to_vec()),
            [0xFF, 0xB0, 0x00, p, le] if usize::from(*p) < pages && (1..=16).contains(le) => {
                let mut d = self.read4(usize::from(*p));
                d.truncate(usize::from(*le));
                ok(d)
            }
            [0xFF, 0x00, 0x00, 0x00, lc, 0xD4, 0x42, rest @ ..]
                if usize::from(*lc) == rest.len() + 2 =>
            {
                self.native(rest)
            }
            // Firmware version: ASCII with no status word, as the real reader answers.
            [0xFF, 0x00, 0x48, 0x00, 0x00] => b"ACR122U216".to_vec(),
            _ => SW_FAIL.to_vec(),
        }
    }
}

/// How an emulated NTAG 424 DNA produces its SUN URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SunBehaviour {
    /// Counter +1 per NDEF read, correct MAC: a genuine tag.
    Genuine,
    /// Counter +1 per read, but a MAC that does not verify: a forgery.
    ForgedMac,
    /// Always the same URL (the counter never moves): a copied URL replayed.
    Replay,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum File {
    None,
    Cc,
    Ndef,
}

/// An NTAG 424 DNA whose NDEF file is a URL with a SUN message (AES mode,
/// `picc_data=…&cmac=…`), recomputed at each selection of the NDEF file.
#[derive(Debug, Clone)]
pub struct Ntag424 {
    uid: [u8; 7],
    keys: SunKeys,
    base_url: String,
    counter: u32,
    behaviour: SunBehaviour,
    mirror_counter: bool,
    /// Applied to each URL after the tag computed its MAC: a URL altered
    /// on the way (`from`, `to`, first occurrence).
    edit: Option<(String, String)>,
    app_selected: bool,
    file: File,
    ndef_file: Vec<u8>,
    version_frame: u8,
}

/// The NTAG 424 DNA's capability container file (E103).
const CC_FILE: [u8; 23] = [
    0x00, 0x17, 0x20, 0x01, 0x00, 0x00, 0xFF, 0x04, 0x06, 0xE1, 0x04, 0x01, 0x00, 0x00, 0x00, 0x05,
    0x06, 0xE1, 0x05, 0x00, 0x80, 0x82, 0x83,
];

impl Ntag424 {
    /// `counter` is the tag's SDMReadCtr before the first read (0 when new).
    pub fn new(
        uid: [u8; 7],
        keys: SunKeys,
        base_url: &str,
        counter: u32,
        behaviour: SunBehaviour,
    ) -> Self {
        Self {
            uid,
            keys,
            base_url: base_url.to_owned(),
            counter,
            behaviour,
            mirror_counter: true,
            edit: None,
            app_selected: false,
            file: File::None,
            ndef_file: Vec::new(),
            version_frame: 0,
        }
    }

    /// A tag of a product whose file-read key is diversified per tag: the
    /// tag holds the key derived for its UID (as provisioning wrote it).
    pub fn diversified(
        uid: [u8; 7],
        product: &SunKeys,
        base_url: &str,
        counter: u32,
        behaviour: SunBehaviour,
    ) -> Result<Self, DiversifyError> {
        Ok(Self::new(
            uid,
            product.for_tag(&uid)?,
            base_url,
            counter,
            behaviour,
        ))
    }

    /// The tag does not mirror its read counter into the URL (the counter
    /// still rises inside the tag).
    pub fn without_counter(mut self) -> Self {
        self.mirror_counter = false;
        self
    }

    /// Every URL served is altered after the MAC was computed: the first
    /// `from` is replaced with `to` (e.g. one character of the serial).
    pub fn with_url_edit(mut self, from: &str, to: &str) -> Self {
        self.edit = Some((from.to_owned(), to.to_owned()));
        self
    }

    /// Reads the NDEF URL as a phone would (the counter rises): what a
    /// forger copies onto another chip, e.g. `Ntag21x::ntag215_with_uri`.
    pub fn read_url(&mut self) -> String {
        self.next_url()
    }

    pub fn uid(&self) -> [u8; 7] {
        self.uid
    }

    /// SDMReadCtr as of the last read (the value in the last URL produced).
    pub fn counter(&self) -> u32 {
        self.counter
    }

    /// The URL the next NDEF read would produce, without reading.
    pub fn peek_next_url(&self) -> String {
        let mut c = self.clone();
        c.next_url()
    }

    fn next_url(&mut self) -> String {
        if self.behaviour != SunBehaviour::Replay {
            self.counter = (self.counter + 1).min(0xFF_FFFF);
        }
        let counter = self.mirror_counter.then_some(self.counter);
        let mut url = sun::sun_url_with(&self.base_url, &self.keys, &self.uid, counter);
        if let Some((from, to)) = &self.edit {
            url = url.replacen(from.as_str(), to, 1);
        }
        if self.behaviour == SunBehaviour::ForgedMac {
            // Flip the last MAC digit, as a forger without the key must guess it.
            if let Some(last) = url.pop() {
                url.push(if last == '0' { '1' } else { '0' });
            }
        }
        url
    }

    fn select_ndef(&mut self) {
        let url = self.next_url();
        let msg = ndef::encode_message(&[RecordBuf::uri(&url)]);
        let mut f = (msg.len() as u16).to_be_bytes().to_vec();
        f.extend_from_slice(&msg);
        self.ndef_file = f;
    }
}

impl EmulatedCard for Ntag424 {
    fn atr(&self) -> Vec<u8> {
        ATR_ISO14443_4.to_vec()
    }

    fn reset(&mut self) {
        self.app_selected = false;
        self.file = File::None;
        self.version_frame = 0;
    }

    fn apdu(&mut self, cmd: &[u8]) -> Vec<u8> {
        let chained = std::mem::take(&mut self.version_frame);
        match cmd {
            [0xFF, 0xCA, 0x00, 0x00, ..] => ok(self.uid.to_vec()),
            [0x00, 0xA4, 0x04, 0x00, 0x07, 0xD2, 0x76, 0x00, 0x00, 0x85, 0x01, 0x01, ..] => {
                self.app_selected = true;
                self.file = File::None;
                OK.to_vec()
            }
            [0x00, 0xA4, 0x04, ..] => vec![0x6A, 0x82],
            [0x00, 0xA4, 0x00, 0x0C, 0x02, 0xE1, id] if self.app_selected => match id {
                0x03 => {
                    self.file = File::Cc;
                    OK.to_vec()
                }
                0x04 => {
                    self.file = File::Ndef;
                    self.select_ndef();
                    OK.to_vec()
                }
                _ => vec![0x6A, 0x82],
            },
            [0x00, 0xA4, ..] => vec![0x6A, 0x82],
            [0x00, 0xB0, p1, p2, le] if p1 & 0x80 == 0 => {
                let data: &[u8] = match self.file {
                    File::Cc => &CC_FILE,
                    File::Ndef => &self.ndef_file,
                    File::None => return vec![0x69, 0x86],
                };
                let off = usize::from(u16::from_be_bytes([*p1, *p2]));
                let le = if *le == 0 { 256 } else { usize::from(*le) };
                match data.get(off..) {
                    Some(rest) if !rest.is_empty() || off == data.len() => {
                        ok(rest[..le.min(rest.len())].to_vec())
                    }
                    _ => vec![0x6B, 0x00],
                }
            }
            // Native GetVersion, ISO-wrapped: three frames (hardware, software, production).
            [0x90, 0x60, 0x00, 0x00, 0x00] => {
                self.version_frame = 1;
                vec![0x04, 0x04, 0x02, 0x30, 0x00, 0x11, 0x05, 0x91, 0xAF]
            }
            [0x90, 0xAF, 0x00, 0x00, 0x00] if chained == 1 => {
                self.version_frame = 2;
                vec![0x04, 0x04, 0x02, 0x01, 0x02, 0x11, 0x05, 0x91, 0xAF]
            }
            [0x90, 0xAF, 0x00, 0x00, 0x00] if chained == 2 => {
                let mut v = self.uid.to_vec();
                v.extend_from_slice(&[0xBA, 0x7C, 0x00, 0x00, 0x00, 0x20, 0x26, 0x91, 0x00]);
                v
            }
            [0x90, ..] => vec![0x91, 0x1C],
            _ => vec![0x6D, 0x00],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nfc::card::read_tag;
    use crate::nfc::sun::{verify, AesKey, KeyFile, MacInput, SunOutcome};
    use crate::nfc::tag::TagType;

    const UID: [u8; 7] = [0x04, 0xA2, 0x2B, 0x3C, 0x4D, 0x5E, 0x80];
    const DL: &str = "https://id.example.org/01/09506000134352/21/SER123";

    fn keys() -> SunKeys {
        SunKeys {
            product: "demo".into(),
            url_prefix: Some("https://id.example.org/".into()),
            meta_read: AesKey::from_bytes([0x11; 16]),
            file_read: AesKey::from_bytes([0x22; 16]),
            mac_input: MacInput::Auto,
            file_read_diversification: None,
        }
    }

    #[test]
    fn ntag215_reads_back_uid_type_and_uri() {
        let mut tag = Ntag21x::ntag215_with_uri(UID, DL);
        let info = read_tag(&tag.atr(), &mut tag).unwrap();
        assert_eq!(info.uid, UID.to_vec());
        assert_eq!(info.tag_type, TagType::Ntag215);
        assert_eq!(info.ndef_uri.as_deref(), Some(DL));
        assert_eq!(info.ndef_error, None);
    }

    /// A card whose answers to one kind of command are lost a number of
    /// times (status 64 00), as when the tag sits at the edge of the field.
    struct Flaky<C> {
        card: C,
        ins: u8,
        failures: usize,
    }

    impl<C: EmulatedCard> Transmit for Flaky<C> {
        fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, TransmitError> {
            if apdu.get(1) == Some(&self.ins) && self.failures > 0 {
                self.failures -= 1;
                return Ok(vec![0x64, 0x00]);
            }
            Ok(self.card.apdu(apdu))
        }
    }

    #[test]
    fn an_ndef_read_cut_short_is_read_again_and_the_tap_keeps_its_url() {
        for (ins, failures) in [(0xB0, 1), (0xB0, 2), (0xA4, 1)] {
            let tag = Ntag424::new(UID, keys(), DL, 0, SunBehaviour::Genuine);
            let atr = tag.atr();
            let mut flaky = Flaky {
                card: tag,
                ins,
                failures,
            };
            let info = read_tag(&atr, &mut flaky).unwrap();
            let url = info
                .ndef_uri
                .unwrap_or_else(|| panic!("INS {ins:02X} lost {failures}x: {:?}", info.ndef_error));
            assert_eq!(info.ndef_error, None);
            let check = verify(
                &url,
                &KeyFile {
                    products: vec![keys()],
                },
            );
            assert_eq!(check.outcome, SunOutcome::Genuine);
        }
        let tag = Ntag21x::ntag215_with_uri(UID, DL);
        let atr = tag.atr();
        let mut flaky = Flaky {
            card: tag,
            ins: 0xB0,
            failures: 2,
        };
        assert_eq!(
            read_tag(&atr, &mut flaky).unwrap().ndef_uri.as_deref(),
            Some(DL)
        );
    }

    #[test]
    fn an_ndef_area_that_never_reads_gives_a_tap_with_uid_and_the_reason() {
        let tag = Ntag424::new(UID, keys(), DL, 0, SunBehaviour::Genuine);
        let atr = tag.atr();
        let mut flaky = Flaky {
            card: tag,
            ins: 0xB0,
            failures: usize::MAX,
        };
        let info = read_tag(&atr, &mut flaky).unwrap();
        assert_eq!(info.uid, UID.to_vec());
        assert_eq!(info.ndef_uri, None);
        let why = info.ndef_error.unwrap();
        assert!(why.contains("3 attempts"), "{why}");
    }

    #[test]
    fn ntag21x_originality_signature_is_checked_against_the_uid() {
        // UID and signature of a real NTAG21x (proxmark3 recover_pk.py sample).
        let uid = [0x04, 0xE1, 0x0C, 0xDA, 0x99, 0x3C, 0x80];
        let sig: [u8; 32] =
            hex::decode("8B76052EE42F5567BEB53238B3E3F9950707C0DCC956B5C5EFCFDB709B2D82B3")
                .unwrap()
                .try_into()
                .unwrap();
        let mut genuine = Ntag21x::ntag215_with_uri(uid, DL).with_signature(sig);
        let info = read_tag(&genuine.atr(), &mut genuine).unwrap();
        assert_eq!(info.nxp_signature_valid, Some(true));
        let mut clone = Ntag21x::ntag215_with_uri(UID, DL).with_signature(sig);
        let info = read_tag(&clone.atr(), &mut clone).unwrap();
        assert_eq!(info.nxp_signature_valid, Some(false));
        let mut tag424 = Ntag424::new(UID, keys(), DL, 0, SunBehaviour::Genuine);
        assert_eq!(
            read_tag(&tag424.atr(), &mut tag424)
                .unwrap()
                .nxp_signature_valid,
            None
        );
    }

    #[test]
    fn every_ntag21x_model_is_told_apart_and_long_messages_span_many_reads() {
        let long = format!("{DL}?x={}", "a".repeat(600));
        for (model, want) in [
            (NtagModel::Ntag213, TagType::Ntag213),
            (NtagModel::Ntag215, TagType::Ntag215),
            (NtagModel::Ntag216, TagType::Ntag216),
        ] {
            let msg =
                ndef::encode_message(&[RecordBuf::text("en", "lot 7"), RecordBuf::uri(&long)]);
            let mut tag = Ntag21x::new(model, UID, &msg);
            let info = read_tag(&tag.atr(), &mut tag).unwrap();
            assert_eq!(info.tag_type, want);
            if model == NtagModel::Ntag216 {
                assert_eq!(info.ndef_text.as_deref(), Some("lot 7"));
                assert_eq!(info.ndef_uri.as_deref(), Some(long.as_str()));
            } else {
                // Does not fit: the TLV is cut, so the reader reports why.
                assert!(info.ndef_error.is_some(), "{model:?}: {info:?}");
            }
        }
    }

    #[test]
    fn ntag424_tap_urls_verify_and_count_up() {
        let kf = KeyFile {
            products: vec![keys()],
        };
        let mut tag = Ntag424::new(UID, keys(), DL, 0, SunBehaviour::Genuine);
        for want_ctr in 1..=3 {
            tag.reset();
            let info = read_tag(&tag.atr(), &mut tag).unwrap();
            assert_eq!(info.tag_type, TagType::Ntag424Dna);
            assert_eq!(info.uid, UID.to_vec());
            let uri = info.ndef_uri.unwrap();
            assert!(uri.starts_with(DL), "{uri}");
            let c = verify(&uri, &kf);
            assert_eq!(c.outcome, SunOutcome::Genuine);
            assert_eq!(c.counter, Some(want_ctr));
        }
    }

    #[test]
    fn forged_and_replayed_ntag424_urls_are_caught() {
        let kf = KeyFile {
            products: vec![keys()],
        };
        let mut forged = Ntag424::new(UID, keys(), DL, 5, SunBehaviour::ForgedMac);
        let uri = read_tag(&forged.atr(), &mut forged)
            .unwrap()
            .ndef_uri
            .unwrap();
        assert_eq!(verify(&uri, &kf).outcome, SunOutcome::InvalidMac);

        let mut replay = Ntag424::new(UID, keys(), DL, 9, SunBehaviour::Replay);
        let first = read_tag(&replay.atr(), &mut replay)
            .unwrap()
            .ndef_uri
            .unwrap();
        replay.reset();
        let second = read_tag(&replay.atr(), &mut replay)
            .unwrap()
            .ndef_uri
            .unwrap();
        assert_eq!(first, second);
        let c1 = verify(&first, &kf);
        let c2 = verify(&second, &kf);
        assert_eq!(
            (c1.outcome, c2.outcome),
            (SunOutcome::Genuine, SunOutcome::Genuine)
        );
        assert!(!sun::replay_verdict(c1.counter.unwrap(), None));
        assert!(sun::replay_verdict(c2.counter.unwrap(), c1.counter));
    }

    fn tap_of<C: EmulatedCard>(card: &mut C) -> crate::Tap {
        card.reset();
        let info = read_tag(&card.atr(), card).unwrap();
        crate::Tap {
            reader: "emu".into(),
            uid: info.uid,
            tag_type: info.tag_type.as_str().to_owned(),
            ndef_uri: info.ndef_uri,
            ndef_text: info.ndef_text,
            atr: card.atr(),
            host: crate::HostTime {
                mono_ms: 0,
                utc_ms: 0,
                clock_synced: true,
            },
        }
    }

    fn checked(tap: &crate::Tap, kf: &KeyFile) -> sun::SunCheck {
        sun::bind_to_tap(verify(tap.ndef_uri.as_deref().unwrap(), kf), tap)
    }

    #[test]
    fn tag_a_url_served_by_an_ntag215_with_another_uid_is_uid_mismatch() {
        let kf = KeyFile {
            products: vec![keys()],
        };
        let mut tag_a = Ntag424::new(UID, keys(), DL, 0, SunBehaviour::Genuine);
        let a = checked(&tap_of(&mut tag_a), &kf);
        assert_eq!(a.outcome, SunOutcome::Genuine);
        assert_eq!(a.covers.names(), vec!["uid", "counter"]);

        let fresh = tag_a.read_url();
        let other = [0x04, 0x99, 0x88, 0x77, 0x66, 0x55, 0x44];
        let mut copy = Ntag21x::ntag215_with_uri(other, &fresh);
        let tap = tap_of(&mut copy);
        assert_eq!(
            (tap.tag_type.as_str(), tap.uid.clone()),
            ("ntag215", other.to_vec())
        );
        // The URL alone verifies; bound to the chip it does not.
        assert_eq!(verify(&fresh, &kf).outcome, SunOutcome::Genuine);
        assert_eq!(checked(&tap, &kf).outcome, SunOutcome::UidMismatch);
        // Even a clone NTAG215 that copies tag A's UID.
        let mut clone = Ntag21x::ntag215_with_uri(UID, &tag_a.read_url());
        assert_eq!(
            checked(&tap_of(&mut clone), &kf).outcome,
            SunOutcome::UidMismatch
        );
    }

    #[test]
    fn url_mac_input_tag_covers_url_and_an_altered_serial_is_invalid_mac() {
        let mut k = keys();
        k.mac_input = MacInput::Url;
        let kf = KeyFile {
            products: vec![k.clone()],
        };
        let mut tag = Ntag424::new(UID, k.clone(), DL, 0, SunBehaviour::Genuine);
        let c = checked(&tap_of(&mut tag), &kf);
        assert_eq!(c.outcome, SunOutcome::Genuine);
        assert_eq!(c.covers.names(), vec!["uid", "counter", "url"]);

        let mut altered =
            Ntag424::new(UID, k, DL, 0, SunBehaviour::Genuine).with_url_edit("SER123", "SER124");
        let tap = tap_of(&mut altered);
        assert!(tap.ndef_uri.as_deref().unwrap().contains("/21/SER124"));
        assert_eq!(checked(&tap, &kf).outcome, SunOutcome::InvalidMac);
    }

    #[test]
    fn default_mac_input_tag_with_another_serial_is_about_tag_a_only() {
        let kf = KeyFile {
            products: vec![keys()],
        };
        let mut tag = Ntag424::new(UID, keys(), DL, 0, SunBehaviour::Genuine)
            .with_url_edit("SER123", "SER777");
        let tap = tap_of(&mut tag);
        let c = checked(&tap, &kf);
        assert_eq!(c.outcome, SunOutcome::Genuine);
        assert_eq!(c.uid.as_deref(), Some(&UID[..]));
        assert!(!c.covers.url);
    }

    #[test]
    fn a_tag_without_counter_mirroring_is_genuine_no_counter() {
        let kf = KeyFile {
            products: vec![keys()],
        };
        let mut tag = Ntag424::new(UID, keys(), DL, 0, SunBehaviour::Genuine).without_counter();
        let c = checked(&tap_of(&mut tag), &kf);
        assert_eq!(c.outcome, SunOutcome::GenuineNoCounter);
        assert_eq!(c.counter, None);
        assert_eq!(c.covers.names(), vec!["uid"]);
    }

    #[test]
    fn a_diversified_key_tag_verifies_with_the_master_and_not_as_a_plain_key() {
        let text = r#"
            [[product]]
            name = "div"
            meta_read_master_key = "11111111111111111111111111111111"
            meta_read_batch = "01"
            file_read_master_key = "22222222222222222222222222222222"
            system_identifier = "74726163656761746531"
        "#;
        let kf = KeyFile::from_toml(text, "div.toml").unwrap();
        let mut tag =
            Ntag424::diversified(UID, &kf.products[0], DL, 0, SunBehaviour::Genuine).unwrap();
        let c = checked(&tap_of(&mut tag), &kf);
        assert_eq!(
            (c.outcome, c.product.as_deref()),
            (SunOutcome::Genuine, Some("div"))
        );
        let masters = KeyFile::from_toml(
            r#"
            [[product]]
            name = "masters"
            meta_read_key = "11111111111111111111111111111111"
            file_read_key = "22222222222222222222222222222222"
            "#,
            "m.toml",
        )
        .unwrap();
        assert_eq!(
            checked(&tap_of(&mut tag), &masters).outcome,
            SunOutcome::UnknownKey
        );
    }

    #[test]
    fn emulated_replies_are_never_empty() {
        let mut a = Ntag21x::ntag215_with_uri(UID, DL);
        let mut b = Ntag424::new(UID, keys(), DL, 0, SunBehaviour::Genuine);
        for cmd in [
            &[][..],
            &[0x00],
            &[0xFF, 0xB0, 0x00, 0xFF, 0x10],
            &[0x00, 0xB0, 0x00, 0x00, 0x00],
            &[0x90, 0xAF, 0, 0, 0],
        ] {
            assert!(!a.apdu(cmd).is_empty());
            assert!(!b.apdu(cmd).is_empty());
        }
    }
}
