//! A hostile broker: a sequence of messages on masterdata topics, each
//! either a manifest or a chunk, never panics the reassembly.
#![no_main]

use ed25519_dalek::SigningKey;
use libfuzzer_sys::fuzz_target;
use tracegate::masterdata::assemble::{parse_topic, Assembler, TopicKind};
use tracegate::masterdata::format::TrustedKeys;

fuzz_target!(|data: &[u8]| {
    let key = SigningKey::from_bytes(&[7; 32]);
    let mut a = Assembler::new(TrustedKeys::new([key.verifying_key()]), 1 << 16, "s", "g");
    // Messages: [topic length][topic][payload length: 2 bytes][payload]...
    let mut rest = data;
    while let Some((&tl, r)) = rest.split_first() {
        let (topic, r) = r.split_at(usize::from(tl).min(r.len()));
        if r.len() < 2 {
            break;
        }
        let pl = usize::from(u16::from_be_bytes([r[0], r[1]])).min(r.len() - 2);
        let (payload, r) = r[2..].split_at(pl);
        rest = r;
        let topic = String::from_utf8_lossy(topic);
        match parse_topic("tg", "s", "g", &topic) {
            Some(TopicKind::Manifest { name }) => {
                let _ = a.on_manifest(&topic, &name, payload);
            }
            Some(TopicKind::Chunk { name, version, index, .. }) => {
                let _ = a.on_chunk(&name, version, index, payload);
            }
            None => {}
        }
    }
});
