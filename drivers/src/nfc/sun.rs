//! NTAG 424 DNA Secure Unique NFC (SUN) message verification, sans-IO.
//!
//! An NTAG 424 DNA configured for Secure Dynamic Messaging mirrors into its
//! NDEF URL, on every read, the encrypted PICC data (UID and read counter)
//! and a MAC over it, both computed with keys only the brand owner holds.
//! A copied URL still verifies, so a check is only worth something bound to
//! the chip that was on the reader ([`bind_to_tag`]: same UID, an NTAG 424
//! DNA) and with a counter above the last one seen for the UID
//! ([`replay_verdict`]; the gateway persists the counters). What the MAC
//! authenticates (UID, counter, and the URL itself only with
//! [`MacInput::Url`]) is in [`SunCheck::covers`]. A product's file-read key
//! may be diversified per tag (AN10922, [`super::diversify`]).
//!
//! Algorithm: NXP AN12196 §3 (AES mode), on RustCrypto `aes` + `cmac`:
//! 1. `PICCData = AES-CBC-Decrypt(K_SDMMetaRead, IV 0, PICCENCData)`:
//!    tag byte, UID (7), SDMReadCtr (3, LSB first), padding.
//! 2. `SV2 = 3C C3 00 01 00 80 || UID || SDMReadCtr`, zero-padded to 16;
//!    `KSesSDMFileReadMAC = CMAC(K_SDMFileRead, SV2)` (SV1 = `C3 3C ...` gives the ENC key).
//! 3. `SDMMAC` = the odd-indexed bytes of `CMAC(KSesSDMFileReadMAC, MACinput)`.
//!
//! LRP mode (24-byte PICCENCData) is recognised and reported as
//! [`SunOutcome::Unsupported`]. The `ntag424` crate implements more (LRP,
//! originality checks) but needs aes 0.9 / cmac 0.8 (a second RustCrypto
//! stack beside the workspace's) and Rust 1.88, above this workspace's MSRV.

use std::borrow::Cow;
use std::ops::Range;
use std::path::Path;

use aes::cipher::{generic_array::GenericArray, BlockDecrypt, BlockEncrypt, KeyInit};
use aes::Aes128;
use cmac::{Cmac, Mac};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

use super::diversify::{diversify_aes128, Diversification, DiversifyError, MAX_INPUT};
use super::ndef;
use super::tag::TagType;
use crate::Tap;

/// Length of an NTAG 424 DNA UID as mirrored in AES-mode PICC data.
const UID_LEN: usize = 7;

/// A 128-bit AES key. Zeroed on drop; its `Debug` never shows the bytes.
#[derive(Clone)]
pub struct AesKey([u8; 16]);

impl AesKey {
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// Parses 32 hex digits (case-insensitive; spaces ignored).
    pub fn from_hex(s: &str) -> Result<Self, KeyError> {
        let mut compact: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        let mut out = [0u8; 16];
        let res = if compact.len() != 32 {
            Err(KeyError::Length(compact.len()))
        } else {
            hex::decode_to_slice(&compact, &mut out).map_err(|_| KeyError::NotHex)
        };
        compact.zeroize();
        res.map(|()| Self(out))
    }

    /// The raw bytes, for tests that compare derived keys with vectors.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> &[u8; 16] {
        &self.0
    }

    pub(crate) fn cipher(&self) -> Aes128 {
        Aes128::new(GenericArray::from_slice(&self.0))
    }

    fn cmac(&self) -> Cmac<Aes128> {
        <Cmac<Aes128> as KeyInit>::new(GenericArray::from_slice(&self.0))
    }
}

impl Drop for AesKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl std::fmt::Debug for AesKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AesKey(<redacted>)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("an AES-128 key is 32 hex digits, this one has {0}")]
    Length(usize),
    #[error("the key contains characters that are not hex digits")]
    NotHex,
}

/// Which bytes of the URL the tag MACs (its SDMMACInputOffset), since the
/// verifier cannot read the tag's file settings from the URL.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MacInput {
    /// `from_enc` when the URL carries encrypted file data, `empty` otherwise
    /// (NXP's and sdm-backend's default layouts).
    #[default]
    Auto,
    /// SDMMACInputOffset = SDMMACOffset: the MAC covers nothing but the session.
    Empty,
    /// From the start of the encrypted file data up to the MAC value
    /// (e.g. `CEE9…8962&cmac=`).
    FromEnc,
    /// From the start of the PICC data up to the MAC value.
    FromPicc,
    /// Exactly the encrypted file data's hex.
    EncOnly,
    /// From the first byte of the URI record's text (right after the URI
    /// identifier code) up to the MAC value: host, path, GTIN and serial
    /// are all authenticated.
    Url,
}

/// The keys of one product (one tag configuration).
#[derive(Debug, Clone)]
pub struct SunKeys {
    /// Product name, reported with a genuine verdict.
    pub product: String,
    /// Only URLs starting with this are checked against these keys.
    pub url_prefix: Option<String>,
    /// K_SDMMetaRead: decrypts the PICC data.
    pub meta_read: AesKey,
    /// K_SDMFileRead: derives the session MAC (and file-data ENC) keys.
    /// With `file_read_diversification` set, this is the master key and each
    /// tag's own key is derived from it and the tag's UID.
    pub file_read: AesKey,
    pub mac_input: MacInput,
    /// AN10922 per-tag diversification of the file-read key, or `None` for
    /// one key shared by every tag of the product.
    pub file_read_diversification: Option<Diversification>,
}

impl SunKeys {
    /// K_SDMFileRead of the tag with this (decrypted, permanent) UID.
    pub fn file_read_key(&self, uid: &[u8]) -> Result<Cow<'_, AesKey>, DiversifyError> {
        match &self.file_read_diversification {
            None => Ok(Cow::Borrowed(&self.file_read)),
            Some(d) => d.tag_key(&self.file_read, uid).map(Cow::Owned),
        }
    }

    /// The keys one tag of this product holds (diversification resolved):
    /// what an emulator or a provisioning test writes into the tag.
    pub fn for_tag(&self, uid: &[u8]) -> Result<SunKeys, DiversifyError> {
        Ok(SunKeys {
            product: self.product.clone(),
            url_prefix: self.url_prefix.clone(),
            meta_read: self.meta_read.clone(),
            file_read: self.file_read_key(uid)?.into_owned(),
            mac_input: self.mac_input,
            file_read_diversification: None,
        })
    }
}

/// Verification keys for one or more products, from a TOML key file.
#[derive(Debug, Clone, Default)]
pub struct KeyFile {
    pub products: Vec<SunKeys>,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read SUN key file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("SUN key file {path} is not valid: {message}")]
    Parse { path: String, message: String },
    #[error("SUN key file {path}, product {product:?}, {field}: {source}")]
    BadKey {
        path: String,
        product: String,
        field: &'static str,
        source: KeyError,
    },
    #[error("SUN key file {path} defines no [[product]]")]
    Empty { path: String },
    #[error("SUN key file {path}, product {product:?}: {problem}")]
    Product {
        path: String,
        product: String,
        problem: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeyFile {
    #[serde(default)]
    product: Vec<RawProduct>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProduct {
    name: String,
    url_prefix: Option<String>,
    meta_read_key: Option<String>,
    meta_read_master_key: Option<String>,
    meta_read_batch: Option<String>,
    file_read_key: Option<String>,
    file_read_master_key: Option<String>,
    application_id: Option<String>,
    system_identifier: Option<String>,
    #[serde(default)]
    mac_input: MacInput,
}

impl Drop for RawProduct {
    fn drop(&mut self) {
        self.meta_read_key.zeroize();
        self.meta_read_master_key.zeroize();
        self.file_read_key.zeroize();
        self.file_read_master_key.zeroize();
    }
}

/// Hex of a diversification-input part (spaces ignored).
fn hex_field(s: &str) -> Option<Vec<u8>> {
    let compact: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    hex::decode(compact).ok()
}

impl RawProduct {
    fn keys(&self, origin: &str) -> Result<SunKeys, KeyFileError> {
        let bad = |field, source| KeyFileError::BadKey {
            path: origin.to_owned(),
            product: self.name.clone(),
            field,
            source,
        };
        let problem = |problem: String| KeyFileError::Product {
            path: origin.to_owned(),
            product: self.name.clone(),
            problem,
        };
        let hex_part = |field: &str, v: &Option<String>| -> Result<Vec<u8>, KeyFileError> {
            match v {
                None => Ok(Vec::new()),
                Some(h) => hex_field(h).ok_or_else(|| problem(format!("{field} is not hex"))),
            }
        };
        // The meta-read key decrypts the UID, so it cannot depend on the UID:
        // it is shared by a batch, given as is or derived from a master key
        // and the batch's diversification input.
        let meta_read = match (
            &self.meta_read_key,
            &self.meta_read_master_key,
            &self.meta_read_batch,
        ) {
            (Some(k), None, None) => AesKey::from_hex(k).map_err(|e| bad("meta_read_key", e))?,
            (None, Some(master), Some(_)) => {
                let master =
                    AesKey::from_hex(master).map_err(|e| bad("meta_read_master_key", e))?;
                let batch = hex_part("meta_read_batch", &self.meta_read_batch)?;
                diversify_aes128(&master, &batch)
                    .map_err(|e| problem(format!("meta_read_batch: {e}")))?
            }
            _ => {
                return Err(problem(
                    "give meta_read_key, or meta_read_master_key with meta_read_batch".into(),
                ))
            }
        };
        let div_given = self.application_id.is_some() || self.system_identifier.is_some();
        let (file_read, file_read_diversification) =
            match (&self.file_read_key, &self.file_read_master_key) {
                (Some(k), None) if !div_given => (
                    AesKey::from_hex(k).map_err(|e| bad("file_read_key", e))?,
                    None,
                ),
                (None, Some(master)) => {
                    let div = Diversification {
                        application_id: hex_part("application_id", &self.application_id)?,
                        system_identifier: hex_part("system_identifier", &self.system_identifier)?,
                    };
                    let len = div.input(&[0; UID_LEN]).len();
                    if len > MAX_INPUT {
                        return Err(problem(format!(
                            "UID, application_id and system_identifier make {len} bytes \
                         of diversification input, more than AN10922's {MAX_INPUT}"
                        )));
                    }
                    (
                        AesKey::from_hex(master).map_err(|e| bad("file_read_master_key", e))?,
                        Some(div),
                    )
                }
                (Some(_), None) => {
                    return Err(problem(
                        "application_id and system_identifier need file_read_master_key".into(),
                    ))
                }
                _ => {
                    return Err(problem(
                        "give either file_read_key or file_read_master_key".into(),
                    ))
                }
            };
        Ok(SunKeys {
            product: self.name.clone(),
            url_prefix: self.url_prefix.clone(),
            meta_read,
            file_read,
            mac_input: self.mac_input,
            file_read_diversification,
        })
    }
}

impl KeyFile {
    /// Loads a key file (format: see `docs/nfc.md`).
    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        let shown = path.display().to_string();
        crate::secret_file::warn_if_readable_by_others(path, "SUN key");
        let mut text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Io {
            path: shown.clone(),
            source,
        })?;
        let res = Self::from_toml(&text, &shown);
        text.zeroize();
        res
    }

    /// Parses key-file text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, KeyFileError> {
        let raw: RawKeyFile = toml::from_str(text).map_err(|e| KeyFileError::Parse {
            path: origin.to_owned(),
            // toml's message quotes the offending line, which may hold a key.
            message: e.message().to_owned(),
        })?;
        if raw.product.is_empty() {
            return Err(KeyFileError::Empty {
                path: origin.to_owned(),
            });
        }
        let products = raw
            .product
            .iter()
            .map(|p| p.keys(origin))
            .collect::<Result<_, _>>()?;
        Ok(Self { products })
    }
}

/// The verdict on one URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SunOutcome {
    /// The MAC verifies with a product's keys and the tag mirrors its read
    /// counter. Still check [`replay_verdict`] (and [`bind_to_tag`]).
    Genuine,
    /// The MAC verifies, but the tag does not mirror its read counter: a
    /// copied URL cannot be told from a fresh one (no replay check).
    GenuineNoCounter,
    /// The MAC verifies, but the tag on the reader is not the tag that made
    /// the URL: its reported UID differs from the decrypted one, or it is not
    /// an NTAG 424 DNA (a copied URL on another chip, or a phone). From
    /// [`bind_to_tag`], never from [`verify`].
    UidMismatch,
    /// The PICC data decrypted with a product's key (or was plain), but the MAC
    /// does not match: a forged or altered URL.
    InvalidMac,
    /// The URL carries SUN parameters but no configured product's key fits.
    UnknownKey,
    /// The URL carries no (well-formed) SUN parameters.
    NotSun,
    /// A SUN variant this verifier does not implement (LRP mode).
    Unsupported,
}

impl SunOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            SunOutcome::Genuine => "genuine",
            SunOutcome::GenuineNoCounter => "genuine_no_counter",
            SunOutcome::UidMismatch => "uid_mismatch",
            SunOutcome::InvalidMac => "invalid_mac",
            SunOutcome::UnknownKey => "unknown_key",
            SunOutcome::NotSun => "not_sun",
            SunOutcome::Unsupported => "unsupported",
        }
    }

    /// `true` for the outcomes whose MAC verified with a product's keys on
    /// the tag that made it (`genuine`, `genuine_no_counter`).
    pub fn authentic(self) -> bool {
        matches!(self, SunOutcome::Genuine | SunOutcome::GenuineNoCounter)
    }
}

impl std::fmt::Display for SunOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a verified SUN MAC authenticates. Serialised as a list, e.g.
/// `["uid","counter","url"]`; empty when nothing is authenticated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Covers {
    /// The tag's UID (always, when the MAC verified).
    pub uid: bool,
    /// The read counter (when the tag mirrors it).
    pub counter: bool,
    /// The URL from the first byte of the URI record's text up to the MAC
    /// (`mac_input = "url"`): host, path, GTIN and serial. Without it the
    /// URL's identity is only claimed.
    pub url: bool,
}

impl Covers {
    /// The names of the covered items, in a fixed order.
    pub fn names(self) -> Vec<&'static str> {
        [
            (self.uid, "uid"),
            (self.counter, "counter"),
            (self.url, "url"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect()
    }

    pub fn is_empty(self) -> bool {
        self == Covers::default()
    }
}

impl Serialize for Covers {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.names())
    }
}

impl<'de> Deserialize<'de> for Covers {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let names = Vec::<String>::deserialize(d)?;
        let mut c = Covers::default();
        for n in &names {
            match n.as_str() {
                "uid" => c.uid = true,
                "counter" => c.counter = true,
                "url" => c.url = true,
                other => {
                    return Err(serde::de::Error::unknown_variant(
                        other,
                        &["uid", "counter", "url"],
                    ))
                }
            }
        }
        Ok(c)
    }
}

/// Result of [`verify`]. `uid` and `counter` are authenticated only when the
/// outcome is `Genuine`; with `InvalidMac` they are what the URL claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SunCheck {
    pub outcome: SunOutcome,
    /// What the MAC authenticates; empty unless [`SunOutcome::authentic`].
    pub covers: Covers,
    pub product: Option<String>,
    pub uid: Option<Vec<u8>>,
    pub counter: Option<u32>,
    /// Decrypted SDMENCFileData, when the URL carries it and the MAC verified.
    pub file_data: Option<Vec<u8>>,
}

impl SunCheck {
    fn bare(outcome: SunOutcome) -> Self {
        Self {
            outcome,
            covers: Covers::default(),
            product: None,
            uid: None,
            counter: None,
            file_data: None,
        }
    }
}

/// `true` when the counter is not above the last one seen for the UID: the
/// URL was read before (copied, or replayed from a log). `last_seen` is
/// `None` for a UID never seen.
pub fn replay_verdict(counter: u32, last_seen: Option<u32>) -> bool {
    last_seen.is_some_and(|last| counter <= last)
}

enum Picc {
    Encrypted([u8; 16]),
    Plain { uid: Vec<u8>, counter: Option<u32> },
}

struct Params {
    picc: Picc,
    picc_value: Range<usize>,
    enc: Option<(Vec<u8>, Range<usize>)>,
    mac: [u8; 8],
    mac_value: Range<usize>,
}

enum Parsed {
    Sun(Params),
    NotSun,
    Lrp,
}

/// Query parameters with the byte range of each value in the URL.
fn query_params(uri: &str) -> Vec<(&str, Range<usize>)> {
    let Some(q) = uri.find('?') else {
        return Vec::new();
    };
    let end = uri.find('#').filter(|&h| h > q).unwrap_or(uri.len());
    let mut out = Vec::new();
    let mut at = q + 1;
    for part in uri[q + 1..end].split('&') {
        if let Some(eq) = part.find('=') {
            out.push((&part[..eq], at + eq + 1..at + part.len()));
        }
        at += part.len() + 1;
    }
    out
}

fn hex_array<const N: usize>(s: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

fn parse_params(uri: &str) -> Parsed {
    let params = query_params(uri);
    let get = |names: &[&str]| {
        params
            .iter()
            .find(|(k, _)| names.contains(k))
            .map(|(_, r)| (&uri[r.clone()], r.clone()))
    };
    let Some((mac_hex, mac_value)) = get(&["cmac", "c", "m"]) else {
        return Parsed::NotSun;
    };
    let Some(mac) = hex_array::<8>(mac_hex) else {
        return Parsed::NotSun;
    };
    let enc = match get(&["enc"]) {
        Some((h, r)) => match hex::decode(h) {
            Ok(b) if !b.is_empty() && b.len() % 16 == 0 => Some((b, r)),
            _ => return Parsed::NotSun,
        },
        None => None,
    };
    if let Some((picc_hex, picc_value)) = get(&["picc_data", "e", "p"]) {
        if picc_hex.len() == 48 && hex::decode(picc_hex).is_ok() {
            return Parsed::Lrp;
        }
        let Some(block) = hex_array::<16>(picc_hex) else {
            return Parsed::NotSun;
        };
        return Parsed::Sun(Params {
            picc: Picc::Encrypted(block),
            picc_value,
            enc,
            mac,
            mac_value,
        });
    }
    // Plain mirroring: the URL shows the counter most significant byte first;
    // a tag may mirror the UID without the counter.
    if let Some((uid_hex, uid_value)) = get(&["uid", "u"]) {
        let Some(uid) = hex_array::<7>(uid_hex) else {
            return Parsed::NotSun;
        };
        let counter = match get(&["ctr"]) {
            Some((ctr_hex, _)) => match hex_array::<3>(ctr_hex) {
                Some(ctr) => Some(u32::from_be_bytes([0, ctr[0], ctr[1], ctr[2]])),
                None => return Parsed::NotSun,
            },
            None => None,
        };
        return Parsed::Sun(Params {
            picc: Picc::Plain {
                uid: uid.to_vec(),
                counter,
            },
            picc_value: uid_value,
            enc,
            mac,
            mac_value,
        });
    }
    Parsed::NotSun
}

/// Decoded PICCData: which fields the tag mirrored, and their values.
struct PiccData {
    uid: Option<Vec<u8>>,
    counter: Option<u32>,
}

fn decrypt_picc(key: &AesKey, block: &[u8; 16]) -> Option<PiccData> {
    let mut b = GenericArray::clone_from_slice(block);
    // CBC with a zero IV over one block is plain ECB decryption.
    key.cipher().decrypt_block(&mut b);
    let tag = b[0];
    let uid_mirrored = tag & 0x80 != 0;
    let ctr_mirrored = tag & 0x40 != 0;
    // Bits 5..4 are RFU (zero) and a UID is 7 bytes in AES mode. The UID
    // must be mirrored: replay detection is per UID. A wrong key passes these
    // checks for about 1 block in 128; the MAC check then fails (InvalidMac).
    if tag & 0x30 != 0 || !uid_mirrored || tag & 0x0F != 7 {
        return None;
    }
    let mut at = 1;
    let uid = uid_mirrored.then(|| {
        at += 7;
        b[1..8].to_vec()
    });
    let counter = ctr_mirrored.then(|| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], 0]));
    Some(PiccData { uid, counter })
}

fn session_vector(prefix: [u8; 2], uid: Option<&[u8]>, counter: Option<u32>) -> [u8; 16] {
    let mut sv = [0u8; 16];
    sv[..6].copy_from_slice(&[prefix[0], prefix[1], 0x00, 0x01, 0x00, 0x80]);
    let mut at = 6;
    if let Some(uid) = uid {
        let n = uid.len().min(7);
        sv[at..at + n].copy_from_slice(&uid[..n]);
        at += n;
    }
    if let Some(c) = counter {
        sv[at..at + 3].copy_from_slice(&c.to_le_bytes()[..3]);
    }
    sv
}

fn cmac16(key: &AesKey, data: &[u8]) -> [u8; 16] {
    let mut m = key.cmac();
    m.update(data);
    m.finalize().into_bytes().into()
}

/// KSesSDMFileReadENC and KSesSDMFileReadMAC (AN12196 §3.3).
pub fn session_keys(
    file_read: &AesKey,
    uid: Option<&[u8]>,
    counter: Option<u32>,
) -> (AesKey, AesKey) {
    let enc = cmac16(file_read, &session_vector([0xC3, 0x3C], uid, counter));
    let mac = cmac16(file_read, &session_vector([0x3C, 0xC3], uid, counter));
    (AesKey(enc), AesKey(mac))
}

/// MACt: the odd-indexed bytes of the full CMAC.
fn sdm_mac(session_mac: &AesKey, input: &[u8]) -> [u8; 8] {
    let full = cmac16(session_mac, input);
    let mut out = [0u8; 8];
    for (o, i) in out.iter_mut().zip((1..16).step_by(2)) {
        *o = full[i];
    }
    out
}

/// The byte strings the tag may have MACed under `mode`. One, except for
/// [`MacInput::Url`]: the URL arrives with its NDEF prefix code expanded, and
/// the tag's MAC input starts after that code, so each abbreviation the URL
/// could have been written with ("", "https://", "https://www." ...) is a
/// candidate. That adds at most a few guesses to a forger's 2^64.
fn mac_inputs<'u>(uri: &'u str, p: &Params, mode: MacInput) -> Vec<&'u [u8]> {
    let mac_start = p.mac_value.start;
    let from = |start: usize| uri.as_bytes().get(start..mac_start).unwrap_or(&[]);
    let one = match (mode, &p.enc) {
        (MacInput::Url, _) => {
            return ndef::uri_prefix_lengths(uri)
                .into_iter()
                .map(from)
                .collect()
        }
        (MacInput::Empty, _) | (MacInput::Auto, None) => &[][..],
        (MacInput::Auto | MacInput::FromEnc, Some((_, r))) => from(r.start),
        (MacInput::FromEnc | MacInput::EncOnly, None) => &[],
        (MacInput::FromPicc, _) => from(p.picc_value.start),
        (MacInput::EncOnly, Some((_, r))) => uri.as_bytes().get(r.clone()).unwrap_or(&[]),
    };
    vec![one]
}

fn decrypt_file_data(session_enc: &AesKey, counter: Option<u32>, data: &[u8]) -> Vec<u8> {
    let cipher = session_enc.cipher();
    let mut iv = [0u8; 16];
    iv[..3].copy_from_slice(&counter.unwrap_or(0).to_le_bytes()[..3]);
    let mut ivb = GenericArray::clone_from_slice(&iv);
    cipher.encrypt_block(&mut ivb);
    let mut prev: [u8; 16] = ivb.into();
    let mut out = Vec::with_capacity(data.len());
    for chunk in data.chunks_exact(16) {
        let mut b = GenericArray::clone_from_slice(chunk);
        cipher.decrypt_block(&mut b);
        out.extend(b.iter().zip(prev.iter()).map(|(x, y)| x ^ y));
        prev.copy_from_slice(chunk);
    }
    out
}

/// Verifies the SUN message in an NDEF URL against the key file's products.
///
/// Only products whose `url_prefix` the URL starts with (or that have none)
/// are tried. The comparison of MACs is constant-time.
pub fn verify(uri: &str, keys: &KeyFile) -> SunCheck {
    let p = match parse_params(uri) {
        Parsed::Sun(p) => p,
        Parsed::NotSun => return SunCheck::bare(SunOutcome::NotSun),
        Parsed::Lrp => return SunCheck::bare(SunOutcome::Unsupported),
    };
    let candidates = keys.products.iter().filter(|k| {
        k.url_prefix
            .as_deref()
            .is_none_or(|pre| uri.starts_with(pre))
    });
    let mut first_failure: Option<SunCheck> = None;
    for k in candidates {
        let (uid, counter) = match &p.picc {
            Picc::Encrypted(block) => match decrypt_picc(&k.meta_read, block) {
                Some(d) => (d.uid, d.counter),
                None => continue,
            },
            Picc::Plain { uid, counter } => (Some(uid.clone()), *counter),
        };
        // A diversified product's MAC key is the tag's own, derived from the
        // UID the PICC data carries.
        let Ok(file_read) = k.file_read_key(uid.as_deref().unwrap_or(&[])) else {
            continue;
        };
        let (ses_enc, ses_mac) = session_keys(&file_read, uid.as_deref(), counter);
        let matched = mac_inputs(uri, &p, k.mac_input)
            .into_iter()
            .fold(subtle::Choice::from(0), |acc, input| {
                acc | sdm_mac(&ses_mac, input).ct_eq(&p.mac)
            });
        if bool::from(matched) {
            return SunCheck {
                outcome: if counter.is_some() {
                    SunOutcome::Genuine
                } else {
                    SunOutcome::GenuineNoCounter
                },
                covers: Covers {
                    uid: uid.is_some(),
                    counter: counter.is_some(),
                    url: k.mac_input == MacInput::Url,
                },
                product: Some(k.product.clone()),
                file_data: p
                    .enc
                    .as_ref()
                    .map(|(data, _)| decrypt_file_data(&ses_enc, counter, data)),
                uid,
                counter,
            };
        }
        first_failure.get_or_insert(SunCheck {
            outcome: SunOutcome::InvalidMac,
            covers: Covers::default(),
            product: Some(k.product.clone()),
            uid,
            counter,
            file_data: None,
        });
    }
    first_failure.unwrap_or_else(|| SunCheck::bare(SunOutcome::UnknownKey))
}

fn with_query(base: &str) -> String {
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}")
}

/// Builds the URL an NTAG 424 DNA with these keys would produce for `uid` at
/// read counter `counter` (encrypted PICC data, `picc_data=…&cmac=…`).
///
/// For emulators and tests; the padding bytes a real tag randomises are zero.
/// `keys` are the keys the tag holds: resolve a diversified product with
/// [`SunKeys::for_tag`] first (`file_read_diversification` is ignored here).
pub fn sun_url(base: &str, keys: &SunKeys, uid: &[u8; 7], counter: u32) -> String {
    sun_url_with(base, keys, uid, Some(counter))
}

/// [`sun_url`] for a tag that may not mirror its read counter (`None`: the
/// PICC data holds only the UID, and the MAC session omits the counter).
pub fn sun_url_with(base: &str, keys: &SunKeys, uid: &[u8; 7], counter: Option<u32>) -> String {
    let mut plain = [0u8; 16];
    plain[0] = if counter.is_some() { 0xC7 } else { 0x87 };
    plain[1..8].copy_from_slice(uid);
    if let Some(c) = counter {
        plain[8..11].copy_from_slice(&c.to_le_bytes()[..3]);
    }
    let mut b = GenericArray::clone_from_slice(&plain);
    keys.meta_read.cipher().encrypt_block(&mut b);
    let head = format!(
        "{}picc_data={}&cmac=",
        with_query(base),
        hex::encode_upper(b)
    );
    let mac = built_mac(&head, head.len() - 32 - 6, keys, uid, counter);
    format!("{head}{}", hex::encode_upper(mac))
}

/// The MAC of a built URL whose text before the MAC value is `head`;
/// `picc_at` is where the PICC data (or plain UID) value starts.
fn built_mac(
    head: &str,
    picc_at: usize,
    keys: &SunKeys,
    uid: &[u8],
    counter: Option<u32>,
) -> [u8; 8] {
    let input: &[u8] = match keys.mac_input {
        MacInput::FromPicc => head.as_bytes().get(picc_at..).unwrap_or(&[]),
        // As the emulator writes the record: the longest prefix code.
        MacInput::Url => head
            .as_bytes()
            .get(ndef::longest_uri_prefix(head).len()..)
            .unwrap_or(&[]),
        _ => &[],
    };
    let (_, ses_mac) = session_keys(&keys.file_read, Some(uid), counter);
    sdm_mac(&ses_mac, input)
}

/// Like [`sun_url`] for plain mirroring (`uid=…&ctr=…&cmac=…`).
pub fn sun_url_plain(base: &str, keys: &SunKeys, uid: &[u8; 7], counter: u32) -> String {
    let head = format!(
        "{}uid={}&ctr={}&cmac=",
        with_query(base),
        hex::encode_upper(uid),
        hex::encode_upper(&counter.to_be_bytes()[1..]),
    );
    let picc_at = head.len() - (14 + "&ctr=".len() + 6 + "&cmac=".len());
    let mac = built_mac(&head, picc_at, keys, uid, Some(counter));
    format!("{head}{}", hex::encode_upper(mac))
}

/// Binds a verification to the tag that was on the reader.
///
/// A SUN URL is just text: copied onto another chip (or served by a phone)
/// its MAC still verifies. So an authentic check only stays authentic when
/// the UID the reader reported (PC/SC GET DATA) equals the decrypted one and
/// the tag identifies as an NTAG 424 DNA; otherwise the outcome becomes
/// [`SunOutcome::UidMismatch`] and `covers` is cleared. Other outcomes pass
/// through unchanged.
///
/// An NTAG 424 DNA with "random ID" enabled reports a fresh random UID on
/// each activation, so it always gives `uid_mismatch`: tags verified here
/// must keep their fixed UID.
pub fn bind_to_tag(mut check: SunCheck, reported_uid: &[u8], tag_type: TagType) -> SunCheck {
    if !check.outcome.authentic() {
        return check;
    }
    let same_uid = check.uid.as_deref() == Some(reported_uid);
    if !same_uid || tag_type != TagType::Ntag424Dna {
        check.outcome = SunOutcome::UidMismatch;
        check.covers = Covers::default();
        check.file_data = None;
    }
    check
}

/// [`bind_to_tag`] with the UID and tag type of a tap.
pub fn bind_to_tap(check: SunCheck, tap: &Tap) -> SunCheck {
    let tag_type = TagType::from_name(&tap.tag_type).unwrap_or(TagType::Unknown);
    bind_to_tag(check, &tap.uid, tag_type)
}

/// Verifies a tap's NDEF URL and binds the result to the tap's chip
/// ([`verify`] then [`bind_to_tap`]); `None` for a tap without a URL.
/// Call it once per tap and give every event of the tap the same result:
/// checking the same URL twice would see its own counter as a replay.
pub fn verify_tap(tap: &Tap, keys: &KeyFile) -> Option<SunCheck> {
    let uri = tap.ndef_uri.as_deref()?;
    Some(bind_to_tap(verify(uri, keys), tap))
}

/// Query parameters whose values are SUN secret material: the encrypted
/// PICC data, the encrypted file data and the MAC. A valid URL in a log can
/// be replayed once at any verifier whose counter for the UID is still lower.
const SECRET_PARAMS: [&str; 7] = ["picc_data", "e", "p", "enc", "cmac", "c", "m"];

/// The URL with every SUN parameter value (`picc_data`/`e`, `enc`,
/// `cmac`/`c` and their aliases) replaced by `<redacted>`, for logs and
/// error messages. Everything else, including `uid`/`ctr` of plain
/// mirroring, is kept.
pub fn redact_sun_url(uri: &str) -> String {
    let Some(q) = uri.find('?') else {
        return uri.to_owned();
    };
    let end = uri[q..].find('#').map_or(uri.len(), |h| q + h);
    let mut out = String::with_capacity(uri.len());
    out.push_str(&uri[..=q]);
    for (i, part) in uri[q + 1..end].split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match part.split_once('=') {
            Some((name, value))
                if !value.is_empty()
                    && SECRET_PARAMS.iter().any(|s| s.eq_ignore_ascii_case(name)) =>
            {
                out.push_str(name);
                out.push_str("=<redacted>");
            }
            _ => out.push_str(part),
        }
    }
    out.push_str(&uri[end..]);
    out
}

#[cfg(test)]
mod tests {
    //! Vectors: NXP AN12196 as carried by nfc-developer/sdm-backend
    //! (tests/test_libsdm.py, MIT) and the ntag424 crate (MIT OR Apache-2.0);
    //! intermediate values cross-checked in the project's reference notes.
    use super::*;

    fn key(h: &str) -> AesKey {
        AesKey::from_hex(h).unwrap()
    }

    fn zero_keys() -> KeyFile {
        keys_with(
            "00000000000000000000000000000000",
            "00000000000000000000000000000000",
            MacInput::Auto,
        )
    }

    fn keys_with(meta: &str, file: &str, mac_input: MacInput) -> KeyFile {
        KeyFile {
            products: vec![SunKeys {
                product: "test".into(),
                url_prefix: None,
                meta_read: key(meta),
                file_read: key(file),
                mac_input,
                file_read_diversification: None,
            }],
        }
    }

    fn bytes(h: &str) -> Vec<u8> {
        hex::decode(h).unwrap()
    }

    #[test]
    fn an12196_t1_session_keys() {
        let k = key("5ACE7E50AB65D5D51FD5BF5A16B8205B");
        let (enc, mac) = session_keys(&k, Some(&bytes("04C767F2066180")), Some(1));
        assert_eq!(enc.0.to_vec(), bytes("66DA61797E23DECA5D8ECA13BBADF7A9"));
        assert_eq!(mac.0.to_vec(), bytes("3A3E8110E05311F7A3FCF0D969BF2B48"));
    }

    #[test]
    fn an12196_t2_t4_encrypted_picc_with_empty_mac_input_is_genuine() {
        let url = "https://sdm.example/tag?picc_data=EF963FF7828658A599F3041510671E88&cmac=94EED9EE65337086";
        let c = verify(url, &zero_keys());
        assert_eq!(c.outcome, SunOutcome::Genuine);
        assert_eq!(c.uid, Some(bytes("04DE5F1EACC040")));
        assert_eq!(c.counter, Some(61));
        assert_eq!(c.file_data, None);
        // Intermediate: the session MAC key of T4.
        let (_, mac) = session_keys(
            &key("00000000000000000000000000000000"),
            Some(&bytes("04DE5F1EACC040")),
            Some(61),
        );
        assert_eq!(mac.0.to_vec(), bytes("3FB5F6E3A807A03D5E3570ACE393776F"));
    }

    #[test]
    fn nxp_style_short_parameter_names_are_recognised() {
        let url = "https://ntag.nxp.com/424?e=EF963FF7828658A599F3041510671E88&c=94EED9EE65337086";
        assert_eq!(verify(url, &zero_keys()).outcome, SunOutcome::Genuine);
    }

    #[test]
    fn an12196_t5_mac_over_enc_data_is_genuine_and_file_data_decrypts() {
        let url = "https://sdm.example/tag?picc_data=FD91EC264309878BE6345CBE53BADF40&enc=CEE9A53E3E463EF1F459635736738962&cmac=ECC1E7F6C6C73BF6";
        let c = verify(url, &zero_keys());
        assert_eq!(c.outcome, SunOutcome::Genuine);
        assert_eq!(c.uid, Some(bytes("04958CAA5C5E80")));
        assert_eq!(c.counter, Some(8));
        assert_eq!(c.file_data.as_deref(), Some(&b"xxxxxxxxxxxxxxxx"[..]));
    }

    #[test]
    fn an12196_t3_enc_file_data() {
        let url = "https://sdm.example/?picc_data=FDE4AFA99B5C820A2C1BB0F1C792D0EB&enc=94592FDE69FA06E8E3B6CA686A22842B&cmac=C48B89C17A233B2C";
        let c = verify(url, &zero_keys());
        assert_eq!(c.outcome, SunOutcome::Genuine);
        assert_eq!(c.counter, Some(1));
        assert_eq!(c.file_data, Some(vec![0x78; 16]));
    }

    #[test]
    fn a_wrong_mac_is_invalid_mac_and_still_reports_the_claimed_uid() {
        let url = "https://sdm.example/tag?picc_data=FD91EC264309878BE6345CBE53BADF40&enc=CEE9A53E3E463EF1F459635736738962&cmac=3CC1E7F6C6C33B33";
        let c = verify(url, &zero_keys());
        assert_eq!(c.outcome, SunOutcome::InvalidMac);
        assert_eq!(c.uid, Some(bytes("04958CAA5C5E80")));
        assert_eq!(c.file_data, None);
    }

    #[test]
    fn plain_mirroring_with_a_big_endian_counter_is_genuine() {
        let url = "https://sdm.example/tagpt?uid=041E3C8A2D6B80&ctr=000006&cmac=4B00064004B0B3D3";
        let c = verify(url, &zero_keys());
        assert_eq!(c.outcome, SunOutcome::Genuine);
        assert_eq!(c.counter, Some(6));
        let forged = url.replace("ctr=000006", "ctr=000007");
        assert_eq!(
            verify(&forged, &zero_keys()).outcome,
            SunOutcome::InvalidMac
        );
    }

    #[test]
    fn custom_keys_with_enc_only_mac_input() {
        let keys = keys_with(
            "42aff114f2cb3b6141be6dc95dfc5416",
            "b62a9baf092439bd43c62aee96b970c5",
            MacInput::EncOnly,
        );
        let url = "https://sdm.example/tag?picc_data=8ACADDEF0A9B62CDAE39A16B83FC14DE&enc=B8436E11F627BB7F543FCC0C1E0D1A89&cmac=238B2543A8DEBAD8";
        let c = verify(url, &keys);
        assert_eq!(c.outcome, SunOutcome::Genuine);
        assert_eq!(c.uid, Some(bytes("041d3c8a2d6b80")));
        assert_eq!(c.counter, Some(291));
        assert_eq!(c.file_data, Some(bytes("4e545858716e6f5f6f42467077792d56")));
        // The same URL with the zero keys: the PICC data does not decrypt.
        assert_eq!(verify(url, &zero_keys()).outcome, SunOutcome::UnknownKey);
    }

    #[test]
    fn lrp_mode_is_reported_unsupported_and_other_urls_not_sun() {
        let lrp = "https://sdm.example/?picc_data=07D9CA2545881D4BFDD920BE1603268C0714420DD893A497&enc=D6E921C47DB4C17C56F979F81559BB83&cmac=F9481AC7D855BDB6";
        assert_eq!(verify(lrp, &zero_keys()).outcome, SunOutcome::Unsupported);
        for url in [
            "https://id.example.org/01/09506000134352/21/SER123",
            "https://x/?picc_data=ZZ&cmac=94EED9EE65337086",
            "https://x/?picc_data=EF963FF7828658A599F3041510671E88",
            "https://x/?picc_data=EF963FF7828658A599F3041510671E88&cmac=94EE",
            "https://x/?picc_data=EF963FF7828658A599F3041510671E88&enc=ABC&cmac=94EED9EE65337086",
            "",
            "?",
            "?&&=&cmac",
        ] {
            assert_eq!(
                verify(url, &zero_keys()).outcome,
                SunOutcome::NotSun,
                "{url}"
            );
        }
    }

    #[test]
    fn url_prefix_selects_which_products_are_tried() {
        let mut keys = zero_keys();
        keys.products[0].url_prefix = Some("https://other.example/".into());
        let url = "https://sdm.example/tag?picc_data=EF963FF7828658A599F3041510671E88&cmac=94EED9EE65337086";
        assert_eq!(verify(url, &keys).outcome, SunOutcome::UnknownKey);
        keys.products[0].url_prefix = Some("https://sdm.example/".into());
        assert_eq!(verify(url, &keys).outcome, SunOutcome::Genuine);
    }

    #[test]
    fn built_urls_verify_for_every_counter_and_layout() {
        let uid = [0x04, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66];
        for mode in [MacInput::Auto, MacInput::FromPicc] {
            let keys = keys_with(
                "0102030405060708090A0B0C0D0E0F10",
                "A0A1A2A3A4A5A6A7A8A9AAABACADAEAF",
                mode,
            );
            for ctr in [0, 1, 2, 0xFFFF, 0xFF_FFFF] {
                let url = sun_url(
                    "https://id.example.org/01/09506000134352/21/SER123",
                    &keys.products[0],
                    &uid,
                    ctr,
                );
                let c = verify(&url, &keys);
                assert_eq!(
                    (c.outcome, c.counter),
                    (SunOutcome::Genuine, Some(ctr)),
                    "{url}"
                );
                assert_eq!(c.uid.as_deref(), Some(&uid[..]));
                if mode == MacInput::Auto {
                    let plain =
                        sun_url_plain("https://x.example/p?a=1", &keys.products[0], &uid, ctr);
                    assert_eq!(
                        verify(&plain, &keys).outcome,
                        SunOutcome::Genuine,
                        "{plain}"
                    );
                }
            }
        }
    }

    proptest::proptest! {
        /// Changing any one hex digit of the PICC data or the MAC of a
        /// genuine URL must never leave it genuine.
        #[test]
        fn no_single_digit_change_of_a_genuine_url_verifies(
            uid in proptest::array::uniform7(proptest::prelude::any::<u8>()),
            ctr in 0u32..=0xFF_FFFF,
            pos in 0usize..48,
            delta in 1u8..16,
        ) {
            let keys = keys_with("0102030405060708090A0B0C0D0E0F10", "A0A1A2A3A4A5A6A7A8A9AAABACADAEAF", MacInput::Auto);
            let url = sun_url("https://id.example.org/01/09506000134352", &keys.products[0], &uid, ctr);
            let picc_at = url.find("picc_data=").unwrap() + 10;
            let mac_at = url.find("cmac=").unwrap() + 5;
            let at = if pos < 32 { picc_at + pos } else { mac_at + pos - 32 };
            let digit = u8::from_str_radix(&url[at..at + 1], 16).unwrap();
            let changed = format!("{:X}", (digit + delta) % 16);
            let mut forged = url.clone();
            forged.replace_range(at..at + 1, &changed);
            proptest::prop_assert_ne!(verify(&forged, &keys).outcome, SunOutcome::Genuine);
        }
    }

    #[test]
    fn replay_verdict_flags_counters_not_above_the_last_seen() {
        assert!(!replay_verdict(0, None));
        assert!(!replay_verdict(62, Some(61)));
        assert!(replay_verdict(61, Some(61)));
        assert!(replay_verdict(3, Some(61)));
    }

    #[test]
    fn key_file_loads_and_never_prints_keys() {
        let text = r#"
            [[product]]
            name = "Widget"
            url_prefix = "https://id.example.org/"
            meta_read_key = "42aff114f2cb3b6141be6dc95dfc5416"
            file_read_key = "B62A 9BAF 0924 39BD 43C6 2AEE 96B9 70C5"
            mac_input = "enc_only"
        "#;
        let kf = KeyFile::from_toml(text, "test").unwrap();
        assert_eq!(kf.products[0].mac_input, MacInput::EncOnly);
        let shown = format!("{kf:?}");
        assert!(!shown.to_lowercase().contains("42aff114"), "{shown}");
        assert!(!shown.to_lowercase().contains("b62a"), "{shown}");
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn bad_key_files_give_errors_naming_product_and_field() {
        let short = "[[product]]\nname = \"W\"\nmeta_read_key = \"00\"\nfile_read_key = \"00000000000000000000000000000000\"\n";
        let e = KeyFile::from_toml(short, "k.toml").unwrap_err().to_string();
        assert!(
            e.contains("meta_read_key") && e.contains("\"W\"") && e.contains("32 hex digits"),
            "{e}"
        );
        let unknown =
            "[[product]]\nname = \"W\"\nmeta_read_key = \"x\"\nfile_read_key = \"y\"\nextra = 1\n";
        assert!(KeyFile::from_toml(unknown, "k.toml").is_err());
        assert!(matches!(
            KeyFile::from_toml("", "k.toml"),
            Err(KeyFileError::Empty { .. })
        ));
        let e = KeyFile::load(Path::new("/nonexistent/keys.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/keys.toml"), "{e}");
    }

    // --- covers, MAC input "url", binding, diversification, redaction ---

    const DL: &str = "https://id.example.org/01/09506000134352/21/SER123";
    const TAG_A: [u8; 7] = [0x04, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66];

    fn product(mac_input: MacInput) -> SunKeys {
        SunKeys {
            product: "widget".into(),
            url_prefix: Some("https://id.example.org/".into()),
            meta_read: key("0102030405060708090A0B0C0D0E0F10"),
            file_read: key("A0A1A2A3A4A5A6A7A8A9AAABACADAEAF"),
            mac_input,
            file_read_diversification: None,
        }
    }

    fn file_of(p: SunKeys) -> KeyFile {
        KeyFile { products: vec![p] }
    }

    #[test]
    fn genuine_tap_covers_uid_and_counter_serialised_as_a_list() {
        let url = sun_url(DL, &product(MacInput::Auto), &TAG_A, 7);
        let c = verify(&url, &file_of(product(MacInput::Auto)));
        assert_eq!(c.outcome, SunOutcome::Genuine);
        assert_eq!(
            c.covers,
            Covers {
                uid: true,
                counter: true,
                url: false
            }
        );
        assert_eq!(
            serde_json::to_string(&c.covers).unwrap(),
            r#"["uid","counter"]"#
        );
        let back: Covers = serde_json::from_str(r#"["uid","counter","url"]"#).unwrap();
        assert_eq!(back.names(), vec!["uid", "counter", "url"]);
        assert!(serde_json::from_str::<Covers>(r#"["serial"]"#).is_err());
    }

    #[test]
    fn url_mac_input_covers_the_url_and_one_changed_serial_character_is_invalid_mac() {
        let keys = product(MacInput::Url);
        let url = sun_url(DL, &keys, &TAG_A, 12);
        let c = verify(&url, &file_of(keys.clone()));
        assert_eq!(c.outcome, SunOutcome::Genuine, "{url}");
        assert_eq!(c.covers.names(), vec!["uid", "counter", "url"]);
        assert_eq!(
            serde_json::to_string(&c.covers).unwrap(),
            r#"["uid","counter","url"]"#
        );
        // SER123 -> SER124: the PICC data still decrypts, the MAC fails.
        let forged = url.replace("/21/SER123", "/21/SER124");
        assert_ne!(forged, url);
        let f = verify(&forged, &file_of(keys.clone()));
        assert_eq!(f.outcome, SunOutcome::InvalidMac);
        assert!(f.covers.is_empty());
        // Host and GTIN are covered too.
        let other_gtin = url.replace("09506000134352", "09506000134353");
        assert_eq!(
            verify(&other_gtin, &file_of(keys)).outcome,
            SunOutcome::InvalidMac
        );
    }

    #[test]
    fn url_mac_input_verifies_whichever_prefix_code_the_record_used() {
        // A tag whose URI record uses code 0x00 MACs the whole text,
        // "https://" included; one using 0x04 MACs from "id.example.org".
        let keys = product(MacInput::Url);
        let uid = TAG_A;
        for skip in ["", "https://"] {
            let mut plain = [0u8; 16];
            plain[0] = 0xC7;
            plain[1..8].copy_from_slice(&uid);
            plain[8] = 3;
            let mut b = GenericArray::clone_from_slice(&plain);
            keys.meta_read.cipher().encrypt_block(&mut b);
            let head = format!("{DL}?picc_data={}&cmac=", hex::encode_upper(b));
            let (_, ses_mac) = session_keys(&keys.file_read, Some(&uid), Some(3));
            let mac = sdm_mac(&ses_mac, &head.as_bytes()[skip.len()..]);
            let url = format!("{head}{}", hex::encode_upper(mac));
            let c = verify(&url, &file_of(keys.clone()));
            assert_eq!(c.outcome, SunOutcome::Genuine, "prefix {skip:?}");
            assert!(c.covers.url);
        }
    }

    #[test]
    fn default_mac_input_verifies_a_pasted_serial_but_does_not_cover_the_url() {
        let keys = product(MacInput::Auto);
        let url = sun_url(DL, &keys, &TAG_A, 5);
        let pasted = url.replace("/21/SER123", "/21/SER999");
        let c = verify(&pasted, &file_of(keys));
        // The verdict is about tag A (UID and counter), not about SER999.
        assert_eq!(c.outcome, SunOutcome::Genuine);
        assert_eq!(c.uid.as_deref(), Some(&TAG_A[..]));
        assert!(!c.covers.url);
        assert_eq!(c.covers.names(), vec!["uid", "counter"]);
    }

    #[test]
    fn a_tag_without_a_mirrored_counter_is_genuine_no_counter() {
        let keys = product(MacInput::Auto);
        let url = sun_url_with(DL, &keys, &TAG_A, None);
        let c = verify(&url, &file_of(keys.clone()));
        assert_eq!(c.outcome, SunOutcome::GenuineNoCounter);
        assert_eq!(c.outcome.as_str(), "genuine_no_counter");
        assert!(c.outcome.authentic());
        assert_eq!(c.counter, None);
        assert_eq!(c.covers.names(), vec!["uid"]);
        // Plain mirroring of the UID alone, likewise.
        let (_, ses_mac) = session_keys(&keys.file_read, Some(&TAG_A), None);
        let plain = format!(
            "{DL}?uid={}&cmac={}",
            hex::encode_upper(TAG_A),
            hex::encode_upper(sdm_mac(&ses_mac, &[]))
        );
        let c = verify(&plain, &file_of(keys));
        assert_eq!(c.outcome, SunOutcome::GenuineNoCounter, "{plain}");
    }

    #[test]
    fn a_copied_url_on_another_uid_or_chip_is_uid_mismatch_never_genuine() {
        let keys = product(MacInput::Auto);
        let url = sun_url(DL, &keys, &TAG_A, 9);
        let check = verify(&url, &file_of(keys));
        assert_eq!(check.outcome, SunOutcome::Genuine);

        let on_a = bind_to_tag(check.clone(), &TAG_A, TagType::Ntag424Dna);
        assert_eq!(on_a.outcome, SunOutcome::Genuine);
        assert_eq!(on_a.covers.names(), vec!["uid", "counter"]);

        // The URL written onto an NTAG215 with another UID.
        let other_uid = [0x04, 0xA2, 0x2B, 0x3C, 0x4D, 0x5E, 0x80];
        let copied = bind_to_tag(check.clone(), &other_uid, TagType::Ntag215);
        assert_eq!(copied.outcome, SunOutcome::UidMismatch);
        assert_eq!(copied.outcome.as_str(), "uid_mismatch");
        assert!(copied.covers.is_empty());
        assert!(!copied.outcome.authentic());
        // The right UID (a clone that copies it) on the wrong chip.
        assert_eq!(
            bind_to_tag(check.clone(), &TAG_A, TagType::Ntag215).outcome,
            SunOutcome::UidMismatch
        );
        // A real NTAG 424 DNA with another UID (or random ID enabled).
        assert_eq!(
            bind_to_tag(check.clone(), &[0x08, 1, 2, 3], TagType::Ntag424Dna).outcome,
            SunOutcome::UidMismatch
        );
        // Through a Tap as the driver produces it.
        let tap = Tap {
            reader: "door".into(),
            uid: other_uid.to_vec(),
            tag_type: "ntag215".into(),
            ndef_uri: Some(url.clone()),
            ndef_text: None,
            atr: Vec::new(),
            host: crate::HostTime {
                utc_ms: 0,
                mono_ms: 0,
                clock_synced: true,
            },
        };
        assert_eq!(bind_to_tap(check, &tap).outcome, SunOutcome::UidMismatch);
        let kf = file_of(product(MacInput::Auto));
        assert_eq!(
            verify_tap(&tap, &kf).map(|c| c.outcome),
            Some(SunOutcome::UidMismatch)
        );
        let on_a = Tap {
            uid: TAG_A.to_vec(),
            tag_type: "ntag424dna".into(),
            ..tap.clone()
        };
        assert_eq!(
            verify_tap(&on_a, &kf).map(|c| c.outcome),
            Some(SunOutcome::Genuine)
        );
        let no_uri = Tap {
            ndef_uri: None,
            ..tap.clone()
        };
        assert_eq!(verify_tap(&no_uri, &kf), None);
        // A tap printed into a log does not carry the replayable values.
        let shown = format!("{tap:?}");
        let mac = &url[url.find("cmac=").unwrap() + 5..];
        assert!(
            !shown.contains(mac) && shown.contains("<redacted>"),
            "{shown}"
        );
    }

    #[test]
    fn binding_leaves_unauthentic_outcomes_as_they_are() {
        let keys = product(MacInput::Auto);
        let mut url = sun_url(DL, &keys, &TAG_A, 9);
        let last = url.pop().unwrap();
        url.push(if last == '0' { '1' } else { '0' });
        let check = verify(&url, &file_of(keys));
        assert_eq!(check.outcome, SunOutcome::InvalidMac);
        assert_eq!(
            bind_to_tag(check, &[1, 2, 3, 4], TagType::Ntag215).outcome,
            SunOutcome::InvalidMac
        );
        let not_sun = verify(DL, &zero_keys());
        assert_eq!(
            bind_to_tag(not_sun, &[1, 2, 3, 4], TagType::Ntag215).outcome,
            SunOutcome::NotSun
        );
    }

    const DIVERSIFIED_KEYS: &str = r#"
        [[product]]
        name = "widget-div"
        url_prefix = "https://id.example.org/"
        meta_read_master_key = "C9EB67DF090AFF47C3B19A2516680B9D"
        meta_read_batch = "42 41 54 43 48 30 31"
        file_read_master_key = "00112233445566778899AABBCCDDEEFF"
        application_id = "3042F5"
        system_identifier = "4E585020416275"
        mac_input = "url"
    "#;

    /// The keys a provisioning tool would have written into tag A: each
    /// derived with AN10922 on its own, independently of the key file.
    fn provisioned_tag_a() -> SunKeys {
        let meta = crate::nfc::diversify::diversify_aes128(
            &key("C9EB67DF090AFF47C3B19A2516680B9D"),
            b"BATCH01",
        )
        .unwrap();
        let mut m = TAG_A.to_vec();
        m.extend_from_slice(&bytes("3042F5"));
        m.extend_from_slice(b"NXP Abu");
        let file =
            crate::nfc::diversify::diversify_aes128(&key("00112233445566778899AABBCCDDEEFF"), &m)
                .unwrap();
        SunKeys {
            product: "tag-a".into(),
            url_prefix: None,
            meta_read: meta,
            file_read: file,
            mac_input: MacInput::Url,
            file_read_diversification: None,
        }
    }

    #[test]
    fn a_diversified_key_tag_is_genuine_and_the_undiversified_masters_are_unknown_key() {
        let kf = KeyFile::from_toml(DIVERSIFIED_KEYS, "div.toml").unwrap();
        let p = &kf.products[0];
        assert_eq!(
            p.file_read_diversification,
            Some(Diversification {
                application_id: bytes("3042F5"),
                system_identifier: b"NXP Abu".to_vec(),
            })
        );
        let url = sun_url(DL, &provisioned_tag_a(), &TAG_A, 40);
        let c = verify(&url, &kf);
        assert_eq!(c.outcome, SunOutcome::Genuine, "{url}");
        assert_eq!(c.product.as_deref(), Some("widget-div"));
        assert_eq!(c.covers.names(), vec!["uid", "counter", "url"]);
        // for_tag gives the same keys the provisioning derived.
        let built = sun_url(DL, &p.for_tag(&TAG_A).unwrap(), &TAG_A, 40);
        assert_eq!(built, url);

        // Checked against the master keys as plain keys: nothing fits.
        let masters = KeyFile::from_toml(
            r#"
            [[product]]
            name = "masters"
            meta_read_key = "C9EB67DF090AFF47C3B19A2516680B9D"
            file_read_key = "00112233445566778899AABBCCDDEEFF"
            mac_input = "url"
            "#,
            "masters.toml",
        )
        .unwrap();
        assert_eq!(verify(&url, &masters).outcome, SunOutcome::UnknownKey);

        // Another tag's diversified key does not verify tag A's URL.
        let mut other = TAG_A;
        other[6] ^= 1;
        let wrong = sun_url(DL, &p.for_tag(&other).unwrap(), &TAG_A, 41);
        assert_eq!(verify(&wrong, &kf).outcome, SunOutcome::InvalidMac);
    }

    #[test]
    fn key_file_diversification_fields_are_checked() {
        let head =
            "[[product]]\nname = \"W\"\nmeta_read_key = \"00000000000000000000000000000000\"\n";
        let k = "\"00000000000000000000000000000000\"";
        for (extra, want) in [
            (
                format!("file_read_key = {k}\nfile_read_master_key = {k}\n"),
                "either file_read_key or file_read_master_key",
            ),
            (
                String::new(),
                "either file_read_key or file_read_master_key",
            ),
            (
                format!("file_read_key = {k}\napplication_id = \"3042F5\"\n"),
                "need file_read_master_key",
            ),
            (
                format!("file_read_master_key = {k}\napplication_id = \"30G2F5\"\n"),
                "application_id is not hex",
            ),
            (
                format!(
                    "file_read_master_key = {k}\nsystem_identifier = \"{}\"\n",
                    "00".repeat(25)
                ),
                "more than AN10922's 31",
            ),
        ] {
            let e = KeyFile::from_toml(&format!("{head}{extra}"), "k.toml")
                .unwrap_err()
                .to_string();
            assert!(e.contains(want) && e.contains("\"W\""), "{extra}: {e}");
        }
        let no_meta =
            format!("[[product]]\nname = \"W\"\nfile_read_key = {k}\nmeta_read_master_key = {k}\n");
        let e = KeyFile::from_toml(&no_meta, "k.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("meta_read_batch"), "{e}");
        let e = KeyFile::from_toml(&format!("{head}file_read_master_key = \"00\"\n"), "k.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("file_read_master_key") && e.contains("32 hex digits"),
            "{e}"
        );
    }

    #[test]
    fn diversified_key_files_never_print_keys() {
        let kf = KeyFile::from_toml(DIVERSIFIED_KEYS, "div.toml").unwrap();
        let shown = format!("{kf:?}").to_lowercase();
        assert!(!shown.contains("c9eb67df"), "{shown}");
        assert!(!shown.contains("00112233"), "{shown}");
        assert!(shown.contains("redacted"));
        let tag = kf.products[0].for_tag(&TAG_A).unwrap();
        assert!(format!("{tag:?}").contains("redacted"));
    }

    #[test]
    fn redact_sun_url_hides_every_sun_value_and_keeps_the_rest() {
        let keys = product(MacInput::Auto);
        let url = sun_url(DL, &keys, &TAG_A, 5);
        let picc = &url[url.find("picc_data=").unwrap() + 10..url.find("&cmac").unwrap()];
        let mac = &url[url.find("cmac=").unwrap() + 5..];
        let shown = redact_sun_url(&url);
        assert!(!shown.contains(picc) && !shown.contains(mac), "{shown}");
        assert_eq!(shown, format!("{DL}?picc_data=<redacted>&cmac=<redacted>"));
        assert_eq!(
            redact_sun_url(
                "https://ntag.nxp.com/424?e=EF963FF7828658A599F3041510671E88&c=94EED9EE65337086#x"
            ),
            "https://ntag.nxp.com/424?e=<redacted>&c=<redacted>#x"
        );
        assert_eq!(
            redact_sun_url("https://x/?a=1&picc_data=FD91EC264309878BE6345CBE53BADF40&enc=CEE9A53E3E463EF1F459635736738962&CMAC=ECC1E7F6C6C73BF6&b"),
            "https://x/?a=1&picc_data=<redacted>&enc=<redacted>&CMAC=<redacted>&b"
        );
        assert_eq!(
            redact_sun_url("https://x/tag?uid=041E3C8A2D6B80&ctr=000006&cmac=4B00064004B0B3D3"),
            "https://x/tag?uid=041E3C8A2D6B80&ctr=000006&cmac=<redacted>"
        );
        for plain in [DL, "", "?", "https://x/?#", "tel:+1234", "https://x/?&&=&c"] {
            assert_eq!(redact_sun_url(plain), plain);
        }
    }

    #[test]
    fn new_verdicts_have_stable_names() {
        for (o, name) in [
            (SunOutcome::Genuine, "genuine"),
            (SunOutcome::GenuineNoCounter, "genuine_no_counter"),
            (SunOutcome::UidMismatch, "uid_mismatch"),
            (SunOutcome::InvalidMac, "invalid_mac"),
            (SunOutcome::UnknownKey, "unknown_key"),
            (SunOutcome::NotSun, "not_sun"),
            (SunOutcome::Unsupported, "unsupported"),
        ] {
            assert_eq!(o.as_str(), name);
            assert_eq!(serde_json::to_string(&o).unwrap(), format!("\"{name}\""));
        }
    }

    proptest::proptest! {
        /// With `mac_input = "url"`, changing any one character of the URL
        /// text after the prefix, up to the MAC, never leaves it genuine.
        #[test]
        fn no_single_character_change_of_a_url_covered_url_verifies(
            pos in 0usize..200,
            replacement in proptest::char::range('!', '~'),
        ) {
            let keys = product(MacInput::Url);
            let url = sun_url(DL, &keys, &TAG_A, 77);
            let from = "https://".len();
            let to = url.find("&cmac=").unwrap();
            let at = from + pos % (to - from);
            let mut forged = url.clone();
            forged.replace_range(at..at + 1, &replacement.to_string());
            proptest::prop_assume!(forged != url);
            let kf = file_of(keys);
            proptest::prop_assert_ne!(verify(&forged, &kf).outcome, SunOutcome::Genuine);
        }
    }
}
