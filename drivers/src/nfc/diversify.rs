//! NXP AN10922 AES-128 key diversification, sans-IO.
//!
//! A brand that writes one key into every tag of a product loses every tag
//! when one key leaks. With diversification each tag holds its own key,
//! derived from a master key (kept only by the verifier) and the tag's UID:
//!
//! 1. `L = AES(K, 0^16)`, `K1 = dbl(L)`, `K2 = dbl(K1)` (the NIST SP 800-38B
//!    CMAC subkeys);
//! 2. `D = 0x01 || M` (0x01 is AN10922's constant for AES-128);
//! 3. shorter than 32 bytes: append `0x80`, zero-fill to exactly 32 bytes
//!    and XOR `K2` into the second block; exactly 32 bytes: XOR `K1`;
//! 4. the diversified key is the last block of `AES-CBC(K, IV 0, D)`.
//!
//! Step 3 always pads to two blocks, where RFC 4493 CMAC pads only to the
//! next block boundary: the two agree only for `M` of 16 bytes or more, so
//! using `Cmac<Aes128>` directly gives wrong keys for short inputs (the bug
//! libfreefare shipped and fixed as its issue 91). Hence the explicit
//! construction here.
//!
//! The input layout follows AN10922's example: `M = UID || application id ||
//! system identifier`, 1 to 31 bytes.

use aes::cipher::{generic_array::GenericArray, BlockEncrypt};
use zeroize::Zeroize;

use super::sun::AesKey;

/// The AN10922 diversification constant for AES-128 keys.
const DIV_AES128: u8 = 0x01;

/// Longest diversification input AN10922 allows (32-byte block pair minus
/// the constant byte).
pub const MAX_INPUT: usize = 31;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiversifyError {
    #[error("AN10922 diversification input must be 1 to {MAX_INPUT} bytes, this one has {0}")]
    InputLength(usize),
}

/// Multiplication by x in GF(2^128) as CMAC defines it (the subkey step).
fn dbl(block: &[u8; 16]) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut carry = 0u8;
    for i in (0..16).rev() {
        out[i] = (block[i] << 1) | carry;
        carry = block[i] >> 7;
    }
    if carry != 0 {
        out[15] ^= 0x87;
    }
    out
}

/// Derives the AES-128 key of one tag (AN10922 §2.2) from `master` and the
/// diversification input `input` (1 to 31 bytes).
pub fn diversify_aes128(master: &AesKey, input: &[u8]) -> Result<AesKey, DiversifyError> {
    if input.is_empty() || input.len() > MAX_INPUT {
        return Err(DiversifyError::InputLength(input.len()));
    }
    let cipher = master.cipher();
    let mut l = GenericArray::from([0u8; 16]);
    cipher.encrypt_block(&mut l);
    let mut l_bytes: [u8; 16] = l.into();
    let mut k1 = dbl(&l_bytes);
    let mut k2 = dbl(&k1);

    let mut d = [0u8; 32];
    d[0] = DIV_AES128;
    d[1..=input.len()].copy_from_slice(input);
    let padded = input.len() + 1 < d.len();
    if padded {
        d[input.len() + 1] = 0x80;
    }
    let sub = if padded { &k2 } else { &k1 };
    for (b, s) in d[16..].iter_mut().zip(sub.iter()) {
        *b ^= s;
    }

    // CBC with a zero IV over two blocks; only the last block is kept.
    let mut block = GenericArray::clone_from_slice(&d[..16]);
    cipher.encrypt_block(&mut block);
    for (b, x) in block.iter_mut().zip(d[16..].iter()) {
        *b ^= x;
    }
    cipher.encrypt_block(&mut block);
    let mut out: [u8; 16] = block.into();
    let key = AesKey::from_bytes(out);

    // Every intermediate here reveals the master key's behaviour.
    block.zeroize();
    out.zeroize();
    l.zeroize();
    l_bytes.zeroize();
    k1.zeroize();
    k2.zeroize();
    d.zeroize();
    Ok(key)
}

/// How a product's file-read (SDM MAC) key is diversified per tag: AN10922
/// with `M = UID || application_id || system_identifier`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diversification {
    /// AN10922's "AID" part (3 bytes for a DESFire application id; any
    /// length the provisioning used). May be empty.
    pub application_id: Vec<u8>,
    /// The deployment's constant system identifier. May be empty.
    pub system_identifier: Vec<u8>,
}

impl Diversification {
    /// The diversification input for one tag.
    pub fn input(&self, uid: &[u8]) -> Vec<u8> {
        let mut m = Vec::with_capacity(
            uid.len() + self.application_id.len() + self.system_identifier.len(),
        );
        m.extend_from_slice(uid);
        m.extend_from_slice(&self.application_id);
        m.extend_from_slice(&self.system_identifier);
        m
    }

    /// The tag's key: AN10922 of `master` over [`Self::input`].
    pub fn tag_key(&self, master: &AesKey, uid: &[u8]) -> Result<AesKey, DiversifyError> {
        diversify_aes128(master, &self.input(uid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cmac::{Cmac, Mac};

    fn key(h: &str) -> AesKey {
        AesKey::from_hex(h).unwrap()
    }

    fn bytes(h: &str) -> Vec<u8> {
        hex::decode(h).unwrap()
    }

    /// NXP AN10922 §2.2.1, the application note's own AES-128 example
    /// (also the vector of libfreefare's test_mifare_key_deriver_an10922.c,
    /// proxmark3's TestAn10922KDFAES and the ntag424 crate's
    /// an10922_aes128_vector): master key, UID 04782E21801D80, AID 3042F5,
    /// system identifier "NXP Abu".
    #[test]
    fn an10922_worked_example_gives_the_published_key() {
        let master = key("00112233445566778899AABBCCDDEEFF");
        let div = Diversification {
            application_id: bytes("3042F5"),
            system_identifier: b"NXP Abu".to_vec(),
        };
        let uid = bytes("04782E21801D80");
        assert_eq!(div.input(&uid), bytes("04782E21801D803042F54E585020416275"));
        let k = div.tag_key(&master, &uid).unwrap();
        assert_eq!(
            k.bytes().to_vec(),
            bytes("A8DD63A3B89D54B37CA802473FDA9175")
        );
    }

    /// The CMAC subkeys of the AN10922 §2.2.1 example (the note lists them).
    #[test]
    fn subkeys_match_the_an10922_example() {
        let l = bytes("FDE4FBAE4A09E020EFF722969F83832B");
        let k1 = dbl(&l.clone().try_into().unwrap());
        assert_eq!(k1.to_vec(), bytes("FBC9F75C9413C041DFEE452D3F0706D1"));
        assert_eq!(dbl(&k1).to_vec(), bytes("F793EEB928278083BFDC8A5A7E0E0D25"));
    }

    /// Short input (7 bytes, so `D` is padded to 32 bytes with K2): NXP
    /// AN10957 pp. 13-14 as carried by libfreefare's
    /// test_mifare_key_deriver_an10922_aes128_short_m. Plain AES-CMAC of
    /// `01 || M` gives 721E2C01… instead (libfreefare issue 91,
    /// test_mifare_key_deriver_an10922_aes128_issue_91): this test fails if
    /// the derivation falls back to it.
    #[test]
    fn short_input_pads_to_two_blocks_unlike_plain_cmac() {
        let master = key("F3F9377698707B688EAF84ABE39E3791");
        let m = bytes("04DEADBEEFFEED");
        let k = diversify_aes128(&master, &m).unwrap();
        assert_eq!(
            k.bytes().to_vec(),
            bytes("0BB408BAFF98B6EE9F2E1585777F6A51")
        );

        let mut plain = <Cmac<aes::Aes128> as cmac::digest::KeyInit>::new_from_slice(&bytes(
            "F3F9377698707B688EAF84ABE39E3791",
        ))
        .unwrap();
        plain.update(&[&[0x01][..], &m].concat());
        let wrong = plain.finalize().into_bytes().to_vec();
        assert_eq!(wrong, bytes("721E2C01E81AF85D815633969CEA2607"));
        assert_ne!(k.bytes().to_vec(), wrong);
    }

    /// A 31-byte input fills `D` exactly (K1, no padding); then AN10922
    /// equals plain CMAC. Regression value computed for the project, no
    /// external source.
    #[test]
    fn full_length_input_uses_k1_and_equals_plain_cmac() {
        let master = key("00112233445566778899AABBCCDDEEFF");
        let m: Vec<u8> = (0u8..31).collect();
        let k = diversify_aes128(&master, &m).unwrap();
        assert_eq!(
            k.bytes().to_vec(),
            bytes("21C28CD89BB3147F66C7DBD4851CAB20")
        );
    }

    #[test]
    fn empty_and_overlong_inputs_are_refused() {
        let master = key("00112233445566778899AABBCCDDEEFF");
        assert_eq!(
            diversify_aes128(&master, &[]).unwrap_err(),
            DiversifyError::InputLength(0)
        );
        assert_eq!(
            diversify_aes128(&master, &[0; 32]).unwrap_err(),
            DiversifyError::InputLength(32)
        );
    }

    #[test]
    fn different_uids_give_different_keys() {
        let master = key("00112233445566778899AABBCCDDEEFF");
        let div = Diversification::default();
        let a = div.tag_key(&master, &bytes("04782E21801D80")).unwrap();
        let b = div.tag_key(&master, &bytes("04782E21801D81")).unwrap();
        assert_ne!(a.bytes(), b.bytes());
        assert_ne!(a.bytes(), master.bytes());
    }
}
