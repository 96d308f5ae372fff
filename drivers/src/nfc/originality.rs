//! NTAG21x originality signature check (NXP AN11350), sans-IO.
//!
//! READ_SIG returns 32 bytes, `r ‖ s`, an ECDSA signature on secp128r1 over
//! the 7-byte UID taken as a big-endian integer (no hash), made with NXP's
//! key at manufacture. It proves the UID was issued by NXP, nothing more:
//! the signature is static and magic clone tags accept a copied one, so
//! anti-counterfeiting needs NTAG 424 DNA SUN ([`super::sun`]).
//!
//! RustCrypto has no secp128r1; verification uses only public data, so a
//! plain affine implementation on `num-bigint` is enough (not constant-time,
//! which public inputs do not need).

use num_bigint::BigUint;

struct Curve {
    p: BigUint,
    a: BigUint,
    n: BigUint,
    g: (BigUint, BigUint),
}

fn h(s: &str) -> BigUint {
    BigUint::parse_bytes(s.as_bytes(), 16).unwrap_or_default()
}

/// SEC 2 secp128r1.
fn secp128r1() -> Curve {
    let p = h("FFFFFFFDFFFFFFFFFFFFFFFFFFFFFFFF");
    let a = &p - 3u32;
    Curve {
        a,
        n: h("FFFFFFFE0000000075A30D1B9038A115"),
        g: (
            h("161FF7528B899B2D0C28607CA52C5B86"),
            h("CF5AC8395BAFEB13C02DA292DDED7A83"),
        ),
        p,
    }
}

/// NXP's NTAG21x originality public key (AN11350), uncompressed point.
const NTAG21X_KEY: (&str, &str) = (
    "494E1A386D3D3CFE3DC10E5DE68A499B",
    "1C202DB5B132393E89ED19FE5BE8BC61",
);

type Point = Option<(BigUint, BigUint)>;

impl Curve {
    fn sub(&self, x: &BigUint, y: &BigUint) -> BigUint {
        ((x + &self.p) - (y % &self.p)) % &self.p
    }

    /// Inverse modulo the prime `m` (Fermat).
    fn inv(x: &BigUint, m: &BigUint) -> BigUint {
        x.modpow(&(m - 2u32), m)
    }

    fn add(&self, a: &Point, b: &Point) -> Point {
        let (Some((x1, y1)), Some((x2, y2))) = (a, b) else {
            return a.clone().or_else(|| b.clone());
        };
        let p = &self.p;
        let lambda = if x1 == x2 {
            if (y1 + y2) % p == BigUint::ZERO {
                return None;
            }
            let num = (BigUint::from(3u32) * x1 * x1 + &self.a) % p;
            num * Self::inv(&((BigUint::from(2u32) * y1) % p), p) % p
        } else {
            self.sub(y2, y1) * Self::inv(&self.sub(x2, x1), p) % p
        };
        let x3 = self.sub(&self.sub(&(&lambda * &lambda % p), x1), x2);
        let y3 = self.sub(&(&lambda * self.sub(x1, &x3) % p), y1);
        Some((x3, y3))
    }

    fn mul(&self, k: &BigUint, pt: &Point) -> Point {
        let mut acc: Point = None;
        for i in (0..k.bits()).rev() {
            acc = self.add(&acc, &acc);
            if k.bit(i) {
                acc = self.add(&acc, pt);
            }
        }
        acc
    }
}

/// Whether `sig` (`r ‖ s`, 32 bytes) is NXP's originality signature for `uid`.
pub fn ntag21x_signature_valid(uid: &[u8], sig: &[u8]) -> bool {
    if uid.len() != 7 || sig.len() != 32 {
        return false;
    }
    let c = secp128r1();
    let r = BigUint::from_bytes_be(&sig[..16]);
    let s = BigUint::from_bytes_be(&sig[16..]);
    if r == BigUint::ZERO || s == BigUint::ZERO || r >= c.n || s >= c.n {
        return false;
    }
    let z = BigUint::from_bytes_be(uid);
    let w = Curve::inv(&s, &c.n);
    let u1 = z * &w % &c.n;
    let u2 = &r * &w % &c.n;
    let q = Some((h(NTAG21X_KEY.0), h(NTAG21X_KEY.1)));
    let g = Some(c.g.clone());
    match c.add(&c.mul(&u1, &g), &c.mul(&u2, &q)) {
        Some((x, _)) => x % &c.n == r,
        None => false,
    }
}

#[cfg(test)]
mod tests {
    //! Vectors: proxmark3 tools/recover_pk.py "NTAG21x" samples (GPL-3.0,
    //! public test data) and an npm originality-verifier test.
    use super::*;

    const VECTORS: [(&str, &str); 3] = [
        (
            "04E10CDA993C80",
            "8B76052EE42F5567BEB53238B3E3F9950707C0DCC956B5C5EFCFDB709B2D82B3",
        ),
        (
            "04DB0BDA993C80",
            "6048EFD9417CD10F6B7F1818D471A7FE5B46868D2EABDC6307A1E0AAE139D8D0",
        ),
        (
            "0453C652FE4A80",
            "EDFD3263E7DDB1730260B832605205FB40FB32D7BB06F1DB49F17706C2ED6727",
        ),
    ];

    #[test]
    fn nxp_signatures_verify_for_their_uids() {
        for (uid, sig) in VECTORS {
            assert!(
                ntag21x_signature_valid(&hex::decode(uid).unwrap(), &hex::decode(sig).unwrap()),
                "{uid}"
            );
        }
    }

    #[test]
    fn a_signature_fails_for_any_other_uid_or_a_flipped_bit() {
        let (uid, sig) = VECTORS[0];
        let uid = hex::decode(uid).unwrap();
        let sig = hex::decode(sig).unwrap();
        for bit in [0, 13, 55] {
            let mut u = uid.clone();
            u[bit / 8] ^= 1 << (bit % 8);
            assert!(!ntag21x_signature_valid(&u, &sig));
        }
        let mut s = sig.clone();
        s[31] ^= 1;
        assert!(!ntag21x_signature_valid(&uid, &s));
        assert!(!ntag21x_signature_valid(
            &hex::decode(VECTORS[1].0).unwrap(),
            &sig
        ));
        assert!(!ntag21x_signature_valid(&uid, &[0u8; 32]));
        assert!(!ntag21x_signature_valid(&uid, &sig[..31]));
    }
}
