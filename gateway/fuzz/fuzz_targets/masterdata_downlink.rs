//! The whole MQTT downlink as the publisher's I/O loop drives it: a hostile
//! broker sends any sequence of messages (topic + payload) and the
//! gateway's `Downlink::on_message` must never panic; every dataset it
//! declares complete is handed on (`deliver`, as the loop does) and parsed
//! and indexed as the applying task would, then judged against.
//!
//! Random bytes never pass an Ed25519 signature, so besides raw messages the
//! input can ask for a dataset that IS validly signed (by the trusted key,
//! or by an untrusted one) around fuzzed payload bytes, and then send its
//! manifest and chunks on chosen topics, in any order, duplicated,
//! truncated or altered: that reaches scope, rollback, resumption,
//! reassembly, the payload digest and the record parser.
#![no_main]

use ed25519_dalek::SigningKey;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use tracegate::masterdata::format::{build, Scope, TrustedKeys};
use tracegate::masterdata::index::{Checks, Subject};
use tracegate::masterdata::service::{start, DownlinkAction, Setup};
use tracegate::masterdata::shipment::evaluate_pass;

const NAMES: [&str; 3] = ["blocked", "asn", "x"];

#[derive(Debug, Arbitrary)]
enum Op {
    /// Any topic (under one of the three manifest bases, or none) and bytes.
    Raw {
        base: u8,
        rest: String,
        payload: Vec<u8>,
    },
    /// A signed dataset, sent as `sends` says.
    Signed {
        trusted: bool,
        name: u8,
        version: u8,
        scope: u8,
        base: u8,
        chunk_kib: u8,
        payload: Vec<u8>,
        sends: Vec<Send>,
    },
    /// A reconnection: the loop asks for the filters again.
    Reconnect,
}

#[derive(Debug, Arbitrary)]
enum Send {
    Manifest,
    /// Chunk `index` (modulo the count, or past it), possibly damaged.
    Chunk {
        index: u16,
        damage: Damage,
        version_delta: i8,
    },
}

#[derive(Debug, Arbitrary)]
enum Damage {
    None,
    Truncate(u16),
    Flip(u16),
    Empty,
}

fn base(i: u8) -> &'static str {
    match i % 4 {
        0 => "tg/masterdata/",
        1 => "tg/s/masterdata/",
        2 => "tg/s/g/masterdata/",
        _ => "tg/s/other/masterdata/",
    }
}

fn scope(i: u8) -> Scope {
    let s = |v: &str| Some(v.to_owned());
    match i % 5 {
        0 => Scope::default(),
        1 => Scope {
            site: s("s"),
            gateway: None,
        },
        2 => Scope {
            site: s("s"),
            gateway: s("g"),
        },
        3 => Scope {
            site: s("s"),
            gateway: s("h"),
        },
        _ => Scope {
            site: None,
            gateway: s("g"),
        },
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let key = SigningKey::from_bytes(&[7; 32]);
    let other = SigningKey::from_bytes(&[8; 32]);
    let (downlink, views, _service) = start(Setup {
        trusted: TrustedKeys::new([key.verifying_key()]),
        max_payload: 1 << 16,
        prefix: "tg".into(),
        site: "s".into(),
        gateway: "g".into(),
        stored: Vec::new(),
    });
    let mut handle = |topic: &str, payload: &[u8]| {
        let _ = downlink.wants(topic);
        for action in downlink.on_message(topic, payload) {
            if let DownlinkAction::Deliver(c) = action {
                let payload = c.payload();
                if let Ok(index) = tracegate::masterdata::build_index([(
                    c.manifest.manifest.name.as_str(),
                    &payload[..],
                )]) {
                    let s = Subject {
                        gtin: Some("09506000134352"),
                        serial: Some("17"),
                        sscc: Some("106141412345678908"),
                        uid: Some(&[4, 1, 2, 3]),
                    };
                    let mut flags = Vec::new();
                    let _ = index.check(&s, "dock-1", Checks::ALL, Some("DE"), &mut flags);
                    let _ = evaluate_pass(&index, "dock-1", &[s]);
                }
                // As the I/O loop does: the queue fills (nobody applies
                // here), then datasets are dropped and forgotten.
                downlink.deliver(*c);
            }
        }
    };
    for op in ops.into_iter().take(64) {
        match op {
            Op::Raw {
                base: b,
                rest,
                payload,
            } => {
                let topic = if b >= 200 {
                    rest
                } else {
                    format!("{}{rest}", base(b))
                };
                handle(&topic, &payload);
            }
            Op::Signed {
                trusted,
                name,
                version,
                scope: sc,
                base: b,
                chunk_kib,
                payload,
                sends,
            } => {
                let name = NAMES[usize::from(name) % NAMES.len()];
                let signer = if trusted { &key } else { &other };
                let chunk = 1024 * u32::from(chunk_kib % 4 + 1);
                let Ok(built) = build(
                    signer,
                    name,
                    u64::from(version),
                    scope(sc),
                    "",
                    &payload,
                    chunk,
                ) else {
                    continue;
                };
                let topic = format!("{}{name}", base(b));
                for send in sends.into_iter().take(32) {
                    match send {
                        Send::Manifest => handle(&topic, &built.frame),
                        Send::Chunk {
                            index,
                            damage,
                            version_delta,
                        } => {
                            let n = built.chunks.len().max(1);
                            let i = usize::from(index) % (n + 1);
                            let mut data = built.chunks.get(i).cloned().unwrap_or_default();
                            match damage {
                                Damage::None => {}
                                Damage::Truncate(k) => data.truncate(usize::from(k)),
                                Damage::Flip(k) => {
                                    if !data.is_empty() {
                                        let at = usize::from(k) % data.len();
                                        data[at] ^= 1;
                                    }
                                }
                                Damage::Empty => data.clear(),
                            }
                            let v =
                                u64::from(version).wrapping_add_signed(i64::from(version_delta));
                            handle(&format!("{topic}/{v}/{i}"), &data);
                        }
                    }
                }
            }
            Op::Reconnect => {
                let _ = downlink.filters();
            }
        }
    }
    let _ = views.status.borrow().rejected_total;
});
