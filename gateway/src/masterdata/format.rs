//! The signed dataset format (docs/masterdata.md is the specification; this
//! module is its one implementation, used by the gateway to verify and by
//! `tracegate masterdata build` to produce).
//!
//! A dataset is a **manifest frame** plus its **chunks**:
//! - manifest frame = `"TGMD"`, format byte `1`, key id (8 bytes: the first
//!   8 bytes of SHA-256 of the signer's 32-byte Ed25519 public key),
//!   Ed25519 signature (64 bytes), then the manifest body (UTF-8 JSON);
//! - the signature is over the digest `SHA-256("tracegate-masterdata-v1\0"
//!   || body)`, so the signer never needs the chunks in memory and the
//!   verifier checks it before it parses a byte of JSON;
//! - each chunk is raw payload bytes whose SHA-256 the manifest lists, so a
//!   chunk is checked on arrival, before it is kept;
//! - the payload (chunks concatenated) is JSON Lines (see `records.rs`),
//!   parsed only after every chunk and the whole-payload digest verified.

use std::collections::HashMap;
use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The first bytes of every manifest frame.
pub const MAGIC: &[u8; 4] = b"TGMD";
/// The frame layout this build reads and writes.
pub const FRAME_VERSION: u8 = 1;
/// Prefix of the signed digest: a signature made for anything else (another
/// protocol using the same key) can never verify as a manifest.
pub const DOMAIN: &[u8] = b"tracegate-masterdata-v1\0";
/// magic + version + key id + signature.
pub const HEADER_LEN: usize = 4 + 1 + 8 + 64;
/// Largest manifest body accepted: its chunk list is what grows (67 bytes a
/// chunk), 256 KiB leaves room for ~3,900 chunks.
pub const MAX_MANIFEST_BODY: usize = 256 * 1024;
/// Chunk sizes a manifest may declare (1 KiB to 512 KiB): an MQTT message
/// each, within the 1 MiB packet limit the gateway sets for its client.
pub const MIN_CHUNK: u32 = 1024;
pub const MAX_CHUNK: u32 = 512 * 1024;
/// The chunk size `build` uses unless told otherwise.
pub const DEFAULT_CHUNK: u32 = 256 * 1024;
/// Longest dataset name (it is an MQTT topic level).
pub const MAX_NAME: usize = 64;

/// 8 bytes naming a public key: the first 8 bytes of SHA-256(public key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; 8]);

impl KeyId {
    pub fn of(key: &VerifyingKey) -> KeyId {
        let d = Sha256::digest(key.as_bytes());
        let mut id = [0u8; 8];
        id.copy_from_slice(&d[..8]);
        KeyId(id)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// Where a dataset applies. It is inside the signed manifest, so a dataset
/// signed for one gateway cannot be replayed on another's topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Scope {
    /// Absent: every gateway of the fleet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// Absent: every gateway of `site`. Requires `site`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
}

impl Scope {
    /// Whether a gateway with this id at this site applies the dataset.
    pub fn covers(&self, site: &str, gateway: &str) -> bool {
        match (&self.site, &self.gateway) {
            (None, None) => true,
            (Some(s), None) => s == site,
            (Some(s), Some(g)) => s == site && g == gateway,
            (None, Some(_)) => false,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.site, &self.gateway) {
            (None, None) => f.write_str("fleet"),
            (Some(s), None) => write!(f, "site {s}"),
            (Some(s), Some(g)) => write!(f, "gateway {s}/{g}"),
            (None, Some(g)) => write!(f, "gateway ?/{g}"),
        }
    }
}

/// The manifest body (JSON), checked by [`Manifest::check`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always 1 for this layout.
    pub format: u32,
    /// The dataset's slot (`[a-z0-9_-]{1,64}`); versions compare per name.
    pub name: String,
    /// Strictly increasing per name: a version at or below the active one
    /// is refused (no rollback).
    pub version: u64,
    pub scope: Scope,
    /// When the registry built it (informational, RFC 3339).
    pub created: String,
    pub payload_bytes: u64,
    /// Lowercase hex SHA-256 of the whole payload.
    pub payload_sha256: String,
    /// Every chunk is this long except the last.
    pub chunk_bytes: u32,
    /// Lowercase hex SHA-256 of each chunk, in order.
    pub chunks: Vec<String>,
}

/// Why a dataset (or one of its pieces) is refused. The text is the log
/// line and the `masterdata_rejected` status; it never contains key bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("manifest frame of {0} bytes is too short")]
    Short(usize),
    #[error("not a tracegate master data frame (bad magic)")]
    Magic,
    #[error("frame format {0} is not supported (this build reads 1)")]
    FrameVersion(u8),
    #[error("manifest body of {0} bytes exceeds {MAX_MANIFEST_BODY}")]
    ManifestTooLarge(usize),
    #[error("signed by key {0}, which is not trusted")]
    UnknownKey(KeyId),
    #[error("bad signature (key {0})")]
    BadSignature(KeyId),
    #[error("manifest is not valid JSON: {0}")]
    ManifestJson(String),
    #[error("manifest: {0}")]
    Manifest(String),
    #[error("payload of {size} bytes exceeds the limit of {limit}")]
    TooLarge { size: u64, limit: u64 },
    #[error("chunk {index} does not belong to the manifest (it has {count})")]
    ChunkIndex { index: u64, count: usize },
    #[error("chunk {index} is {got} bytes, the manifest says {want}")]
    ChunkLength { index: u64, got: usize, want: u64 },
    #[error("chunk {index} does not match its digest")]
    ChunkDigest { index: u64 },
    #[error("payload does not match its digest")]
    PayloadDigest,
}

fn digest_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The 32 bytes that are signed for a manifest body.
pub fn signed_digest(body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    h.update(body);
    h.finalize().into()
}

/// Whether `name` can be a dataset name (and so an MQTT topic level).
pub fn name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

impl Manifest {
    /// The manifest's own consistency and the size limit. Called by
    /// [`verify_manifest`]; public for tools that build manifests.
    pub fn check(&self, max_payload: u64) -> Result<(), FormatError> {
        let bad = |m: String| Err(FormatError::Manifest(m));
        if self.format != 1 {
            return bad(format!("format {} is not supported", self.format));
        }
        if !name_ok(&self.name) {
            return bad(format!("name {:?} is not [a-z0-9_-]{{1,64}}", self.name));
        }
        if self.version == 0 {
            return bad("version must be at least 1".into());
        }
        if self.scope.gateway.is_some() && self.scope.site.is_none() {
            return bad("scope.gateway needs scope.site".into());
        }
        if self.payload_bytes > max_payload {
            return Err(FormatError::TooLarge {
                size: self.payload_bytes,
                limit: max_payload,
            });
        }
        if !(MIN_CHUNK..=MAX_CHUNK).contains(&self.chunk_bytes) {
            return bad(format!(
                "chunk_bytes {} is outside {MIN_CHUNK}..={MAX_CHUNK}",
                self.chunk_bytes
            ));
        }
        let want = self.payload_bytes.div_ceil(u64::from(self.chunk_bytes));
        if self.chunks.len() as u64 != want {
            return bad(format!(
                "{} chunk digests for {} bytes in chunks of {} (want {want})",
                self.chunks.len(),
                self.payload_bytes,
                self.chunk_bytes
            ));
        }
        let hex64 = |s: &str| {
            s.len() == 64
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !hex64(&self.payload_sha256) || !self.chunks.iter().all(|c| hex64(c)) {
            return bad("digests must be 64 lowercase hex digits".into());
        }
        Ok(())
    }

    /// How long chunk `index` must be.
    pub fn chunk_len(&self, index: usize) -> u64 {
        let size = u64::from(self.chunk_bytes);
        let start = index as u64 * size;
        self.payload_bytes.saturating_sub(start).min(size)
    }

    /// Checks one chunk against the manifest (length and digest).
    pub fn check_chunk(&self, index: u64, data: &[u8]) -> Result<(), FormatError> {
        let i = usize::try_from(index)
            .ok()
            .filter(|&i| i < self.chunks.len())
            .ok_or(FormatError::ChunkIndex {
                index,
                count: self.chunks.len(),
            })?;
        let want = self.chunk_len(i);
        if data.len() as u64 != want {
            return Err(FormatError::ChunkLength {
                index,
                got: data.len(),
                want,
            });
        }
        if self.chunks.get(i).map(String::as_str) != Some(digest_hex(data).as_str()) {
            return Err(FormatError::ChunkDigest { index });
        }
        Ok(())
    }
}

/// The public keys a gateway trusts, by key id.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    keys: HashMap<KeyId, VerifyingKey>,
}

impl TrustedKeys {
    pub fn new(keys: impl IntoIterator<Item = VerifyingKey>) -> Self {
        Self {
            keys: keys.into_iter().map(|k| (KeyId::of(&k), k)).collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn ids(&self) -> impl Iterator<Item = KeyId> + '_ {
        self.keys.keys().copied()
    }
}

/// A manifest whose signature verified with a trusted key and whose content
/// is consistent and within the size limit. Only [`verify_manifest`] makes
/// one, so holding it proves the checks ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedManifest {
    pub manifest: Manifest,
    pub key: KeyId,
    /// The frame as received (kept in the store and re-verified at start).
    pub frame: Vec<u8>,
}

/// Parses a manifest body. Only [`verify_manifest`] calls it on network
/// input, after the signature verified; public for the fuzz target.
pub fn parse_manifest_body(body: &[u8]) -> Result<Manifest, FormatError> {
    serde_json::from_slice(body).map_err(|e| FormatError::ManifestJson(e.to_string()))
}

/// Checks a manifest frame: length, magic, trusted key, signature over the
/// digest, and only then parses the JSON and checks it (limits included).
pub fn verify_manifest(
    frame: &[u8],
    trusted: &TrustedKeys,
    max_payload: u64,
) -> Result<VerifiedManifest, FormatError> {
    if frame.len() <= HEADER_LEN {
        return Err(FormatError::Short(frame.len()));
    }
    let (head, body) = frame.split_at(HEADER_LEN);
    if &head[..4] != MAGIC {
        return Err(FormatError::Magic);
    }
    if head[4] != FRAME_VERSION {
        return Err(FormatError::FrameVersion(head[4]));
    }
    if body.len() > MAX_MANIFEST_BODY {
        return Err(FormatError::ManifestTooLarge(body.len()));
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&head[5..13]);
    let id = KeyId(id);
    let key = trusted.keys.get(&id).ok_or(FormatError::UnknownKey(id))?;
    let mut sig = [0u8; 64];
    sig.copy_from_slice(&head[13..77]);
    key.verify(&signed_digest(body), &Signature::from_bytes(&sig))
        .map_err(|_| FormatError::BadSignature(id))?;
    let manifest = parse_manifest_body(body)?;
    manifest.check(max_payload)?;
    Ok(VerifiedManifest {
        manifest,
        key: id,
        frame: frame.to_vec(),
    })
}

/// A dataset as `build` produces it: the manifest frame and the chunks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    pub manifest: Manifest,
    pub frame: Vec<u8>,
    pub chunks: Vec<Vec<u8>>,
}

/// Signs `payload` as dataset `name` version `version` for `scope`.
pub fn build(
    key: &SigningKey,
    name: &str,
    version: u64,
    scope: Scope,
    created: &str,
    payload: &[u8],
    chunk_bytes: u32,
) -> Result<Built, FormatError> {
    let chunks: Vec<Vec<u8>> = payload
        .chunks(chunk_bytes.max(1) as usize)
        .map(<[u8]>::to_vec)
        .collect();
    let manifest = Manifest {
        format: 1,
        name: name.to_owned(),
        version,
        scope,
        created: created.to_owned(),
        payload_bytes: payload.len() as u64,
        payload_sha256: digest_hex(payload),
        chunk_bytes,
        chunks: chunks.iter().map(|c| digest_hex(c)).collect(),
    };
    manifest.check(u64::MAX)?;
    let body = serde_json::to_vec(&manifest).map_err(|e| FormatError::Manifest(e.to_string()))?;
    if body.len() > MAX_MANIFEST_BODY {
        return Err(FormatError::ManifestTooLarge(body.len()));
    }
    let sig = key.sign(&signed_digest(&body));
    let mut frame = Vec::with_capacity(HEADER_LEN + body.len());
    frame.extend_from_slice(MAGIC);
    frame.push(FRAME_VERSION);
    frame.extend_from_slice(&KeyId::of(&key.verifying_key()).0);
    frame.extend_from_slice(&sig.to_bytes());
    frame.extend_from_slice(&body);
    Ok(Built {
        manifest,
        frame,
        chunks,
    })
}

/// Checks the reassembled payload against the manifest's digest.
pub fn check_payload(manifest: &Manifest, payload: &[u8]) -> Result<(), FormatError> {
    check_chunks(manifest, &[payload])
}

/// [`check_payload`] over the payload as its chunks, in order, without
/// joining them (a large dataset is never held twice for its digest).
pub fn check_chunks<C: AsRef<[u8]>>(manifest: &Manifest, chunks: &[C]) -> Result<(), FormatError> {
    let mut d = PayloadDigest::default();
    for c in chunks {
        d.update(c.as_ref());
    }
    d.check(manifest)
}

/// The whole-payload digest, fed one chunk at a time.
#[derive(Debug, Clone, Default)]
pub struct PayloadDigest {
    h: Sha256,
    len: u64,
}

impl PayloadDigest {
    pub fn update(&mut self, chunk: &[u8]) {
        self.h.update(chunk);
        self.len += chunk.len() as u64;
    }

    pub fn check(self, manifest: &Manifest) -> Result<(), FormatError> {
        if self.len != manifest.payload_bytes
            || hex::encode(self.h.finalize()) != manifest.payload_sha256
        {
            return Err(FormatError::PayloadDigest);
        }
        Ok(())
    }
}

// ------------------------------------------------------------ key files ----

/// Key files are one line of lowercase hex: 64 digits (32 bytes), prefixed
/// `ed25519-secret:` or `ed25519-public:` so the two cannot be confused.
pub const SECRET_PREFIX: &str = "ed25519-secret:";
pub const PUBLIC_PREFIX: &str = "ed25519-public:";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyFileError {
    #[error("not a {kind} key file (expected one line `{prefix}<64 hex digits>`)")]
    Shape {
        kind: &'static str,
        prefix: &'static str,
    },
    #[error("not a valid Ed25519 public key")]
    Invalid,
}

fn key_bytes(text: &str, prefix: &'static str) -> Result<[u8; 32], KeyFileError> {
    let shape = KeyFileError::Shape {
        kind: if prefix == SECRET_PREFIX {
            "secret"
        } else {
            "public"
        },
        prefix,
    };
    let hexs = text.trim().strip_prefix(prefix).ok_or(shape.clone())?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(hexs, &mut out).map_err(|_| shape)?;
    Ok(out)
}

pub fn parse_public_key(text: &str) -> Result<VerifyingKey, KeyFileError> {
    VerifyingKey::from_bytes(&key_bytes(text, PUBLIC_PREFIX)?).map_err(|_| KeyFileError::Invalid)
}

pub fn parse_secret_key(text: &str) -> Result<SigningKey, KeyFileError> {
    Ok(SigningKey::from_bytes(&key_bytes(text, SECRET_PREFIX)?))
}

pub fn public_key_text(key: &VerifyingKey) -> String {
    format!("{PUBLIC_PREFIX}{}\n", hex::encode(key.as_bytes()))
}

pub fn secret_key_text(key: &SigningKey) -> String {
    format!("{SECRET_PREFIX}{}\n", hex::encode(key.to_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn built(payload: &[u8]) -> Built {
        build(
            &key(7),
            "blocked",
            3,
            Scope::default(),
            "2026-12-07T00:00:00.000Z",
            payload,
            1024,
        )
        .unwrap()
    }

    fn trusted() -> TrustedKeys {
        TrustedKeys::new([key(7).verifying_key()])
    }

    #[test]
    fn a_built_dataset_verifies_and_its_chunks_match() {
        let payload = vec![b'x'; 2500];
        let b = built(&payload);
        let v = verify_manifest(&b.frame, &trusted(), 10_000).unwrap();
        assert_eq!(v.manifest.chunks.len(), 3);
        for (i, c) in b.chunks.iter().enumerate() {
            v.manifest.check_chunk(i as u64, c).unwrap();
        }
        assert_eq!(v.manifest.chunk_len(2), 452);
        check_payload(&v.manifest, &payload).unwrap();
    }

    #[test]
    fn a_flipped_bit_anywhere_in_the_frame_is_refused() {
        let b = built(b"{\"t\":\"commissioned\"}\n");
        for i in 0..b.frame.len() {
            let mut f = b.frame.clone();
            f[i] ^= 0x01;
            assert!(verify_manifest(&f, &trusted(), 10_000).is_err(), "byte {i}");
        }
    }

    #[test]
    fn another_key_is_not_trusted_and_a_forged_signature_fails() {
        let b = built(b"x");
        let other = TrustedKeys::new([key(8).verifying_key()]);
        assert!(matches!(
            verify_manifest(&b.frame, &other, 10),
            Err(FormatError::UnknownKey(_))
        ));
        // The trusted key's id with another key's signature.
        let forged = build(&key(8), "blocked", 3, Scope::default(), "", b"x", 1024).unwrap();
        let mut f = b.frame.clone();
        f[13..77].copy_from_slice(&forged.frame[13..77]);
        assert!(matches!(
            verify_manifest(&f, &trusted(), 10),
            Err(FormatError::BadSignature(_))
        ));
    }

    #[test]
    fn an_oversized_dataset_is_refused_from_its_manifest() {
        let b = built(&[b'a'; 3000]);
        assert_eq!(
            verify_manifest(&b.frame, &trusted(), 2999),
            Err(FormatError::TooLarge {
                size: 3000,
                limit: 2999
            })
        );
    }

    #[test]
    fn a_truncated_or_altered_chunk_is_refused() {
        let b = built(&[b'a'; 2000]);
        let m = &b.manifest;
        assert!(matches!(
            m.check_chunk(0, &b.chunks[0][..1000]),
            Err(FormatError::ChunkLength { .. })
        ));
        let mut c = b.chunks[1].clone();
        c[0] = b'b';
        assert_eq!(
            m.check_chunk(1, &c),
            Err(FormatError::ChunkDigest { index: 1 })
        );
        assert!(matches!(
            m.check_chunk(2, &b.chunks[1]),
            Err(FormatError::ChunkIndex { .. })
        ));
    }

    #[test]
    fn key_files_round_trip_and_are_not_interchangeable() {
        let k = key(9);
        let s = secret_key_text(&k);
        let p = public_key_text(&k.verifying_key());
        assert_eq!(parse_secret_key(&s).unwrap().to_bytes(), k.to_bytes());
        assert_eq!(parse_public_key(&p).unwrap(), k.verifying_key());
        assert!(parse_public_key(&s).is_err());
        assert!(parse_secret_key(&p).is_err());
    }

    #[test]
    fn scopes_cover_what_they_name() {
        let fleet = Scope::default();
        let site = Scope {
            site: Some("s".into()),
            gateway: None,
        };
        let gw = Scope {
            site: Some("s".into()),
            gateway: Some("g".into()),
        };
        assert!(fleet.covers("x", "y"));
        assert!(site.covers("s", "y") && !site.covers("t", "y"));
        assert!(gw.covers("s", "g") && !gw.covers("s", "h") && !gw.covers("t", "g"));
    }

    proptest::proptest! {
        #[test]
        fn verify_never_panics_on_garbage(frame in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = verify_manifest(&frame, &trusted(), 1 << 20);
        }
    }
}

#[cfg(test)]
mod vector {
    use super::*;

    /// RFC 8032 section 7.1, test 1: a key any Ed25519 library knows.
    pub const SECRET: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
    pub const PAYLOAD: &[u8] = include_bytes!("../../tests/data/masterdata/vector.jsonl");

    pub fn built() -> Built {
        let mut seed = [0u8; 32];
        hex::decode_to_slice(SECRET, &mut seed).unwrap_or_default();
        build(
            &SigningKey::from_bytes(&seed),
            "demo",
            1,
            Scope {
                site: Some("plant-1".into()),
                gateway: None,
            },
            "2026-12-07T00:00:00.000Z",
            PAYLOAD,
            1024,
        )
        .unwrap()
    }

    pub const PUBLIC: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
    pub const KEY_ID: &str = "21fe31dfa154a261";
    pub const PAYLOAD_SHA256: &str =
        "9ef77eb64d78cf3f19fb823d4cc95cf9b1a234ad603a84f3d5b5d29d6288de44";
    pub const DIGEST: &str = "daef7b5919d8dffc751e67ec8ada25f9ba4d60b6c1d156a9c6c7e4b2cc205934";
    pub const SIGNATURE: &str = "560536b565065ede75c025bc9aa4493d561d83b99c5f52c0caf761c385c3cc93\
                                 d96fc24409ff1d475ff96077020b3de87cfbf594522a623d1ec09dbbee59b809";
    pub const BODY: &str = r#"{"format":1,"name":"demo","version":1,"scope":{"site":"plant-1"},"created":"2026-12-07T00:00:00.000Z","payload_bytes":359,"payload_sha256":"9ef77eb64d78cf3f19fb823d4cc95cf9b1a234ad603a84f3d5b5d29d6288de44","chunk_bytes":1024,"chunks":["9ef77eb64d78cf3f19fb823d4cc95cf9b1a234ad603a84f3d5b5d29d6288de44"]}"#;

    /// The vector in docs/masterdata.md is what this build produces and
    /// accepts (the values were also checked with Python's `cryptography`).
    #[test]
    fn the_documented_test_vector_is_what_build_produces_and_verify_accepts() {
        let b = built();
        let body = &b.frame[HEADER_LEN..];
        assert_eq!(std::str::from_utf8(body).unwrap_or_default(), BODY);
        assert_eq!(hex::encode(&b.frame[5..13]), KEY_ID);
        assert_eq!(hex::encode(signed_digest(body)), DIGEST);
        assert_eq!(hex::encode(&b.frame[13..77]), SIGNATURE);
        assert_eq!(b.manifest.payload_sha256, PAYLOAD_SHA256);
        let key = parse_public_key(&format!("{PUBLIC_PREFIX}{PUBLIC}")).unwrap();
        let v = verify_manifest(&b.frame, &TrustedKeys::new([key]), 1 << 20).unwrap();
        assert_eq!(v.manifest.payload_bytes, 359);
        let doc = include_str!("../../../docs/masterdata.md");
        for value in [
            SECRET,
            PUBLIC,
            KEY_ID,
            PAYLOAD_SHA256,
            DIGEST,
            &SIGNATURE[..64],
            &SIGNATURE[64..],
            BODY,
        ] {
            assert!(doc.contains(value), "docs/masterdata.md lacks {value}");
        }
        let mut count = 0;
        crate::masterdata::records::parse_payload(PAYLOAD, |_| count += 1).unwrap();
        assert_eq!(count, 5);
        assert!(doc.contains(std::str::from_utf8(PAYLOAD).unwrap_or_default()));
    }
}
