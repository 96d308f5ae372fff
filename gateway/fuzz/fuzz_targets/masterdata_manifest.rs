//! Manifest frames from the network: verification must refuse garbage
//! without panicking, and a manifest body (fuzzed past the signature, which
//! random input never passes) must parse or be refused cleanly.
#![no_main]

use ed25519_dalek::SigningKey;
use libfuzzer_sys::fuzz_target;
use tracegate::masterdata::format::{build, verify_manifest, Manifest, Scope, TrustedKeys};

fuzz_target!(|data: &[u8]| {
    let key = SigningKey::from_bytes(&[7; 32]);
    let trusted = TrustedKeys::new([key.verifying_key()]);
    let _ = verify_manifest(data, &trusted, 1 << 20);
    if let Ok(m) = serde_json_parse(data) {
        let _ = m.check(1 << 20);
        for i in 0..m.chunks.len().min(4) {
            let _ = m.check_chunk(i as u64, data);
        }
    }
    // A validly signed frame around the fuzzed bytes as payload verifies.
    if let Ok(b) = build(&key, "fuzz", 1, Scope::default(), "", data, 1024) {
        assert!(verify_manifest(&b.frame, &trusted, u64::MAX).is_ok());
    }
});

fn serde_json_parse(data: &[u8]) -> Result<Manifest, ()> {
    tracegate::masterdata::format::parse_manifest_body(data).map_err(|_| ())
}
