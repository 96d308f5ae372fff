//! EPC decode throughput over a mix of schemes (criterion). Figures: BENCH-NOTES.md.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use serde_json::json;
use tracegate_gs1::epcis::{event_hash, Action, EpcisDocument, ObjectEvent};
use tracegate_gs1::{decode_epc, decode_tid, encode_sgtin96};

const MIX: [&str; 10] = [
    "3074257BF7194E4000001A85",                             // sgtin-96
    "30396062C3A1A800006B33F4",                             // sgtin-96
    "3674257BF6B7A659B2C2BF100000000000000000000000000000", // sgtin-198
    "3174257BF4499602D2000000",                             // sscc-96
    "3274257BF46072000000162E",                             // sgln-96
    "3374257BF40C0E400000162E",                             // grai-96
    "3474257BF40000000000162E",                             // giai-96
    "3874257BF59B2C2BF10000000000000000000000000000000000", // giai-202
    "E2000019060C02090690D3C2",                             // raw (reserved header)
    "303C83F1B7DD441678901234",                             // raw (partition 7)
];

fn benches(c: &mut Criterion) {
    let epcs: Vec<Vec<u8>> = MIX.iter().map(|h| hex::decode(h).unwrap()).collect();
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(epcs.len() as u64));
    g.bench_function("epc_mix_10", |b| {
        b.iter(|| {
            for e in &epcs {
                black_box(decode_epc(black_box(e)));
            }
        })
    });
    let sgtin = &epcs[0];
    g.throughput(Throughput::Elements(1));
    g.bench_function("sgtin96", |b| {
        b.iter(|| black_box(decode_epc(black_box(sgtin))))
    });
    let tid = hex::decode("E2806894200050004A1B2C3D").unwrap();
    g.bench_function("tid_xtid", |b| {
        b.iter(|| black_box(decode_tid(black_box(&tid))))
    });
    g.bench_function("encode_sgtin96", |b| {
        b.iter(|| black_box(encode_sgtin96(3, "0614141", "812345", black_box(6789))))
    });
    g.finish();

    let mut g = c.benchmark_group("epcis");
    let ev = json!({"type": "ObjectEvent", "eventTime": "2024-05-01T10:00:00.000Z", "eventTimeZoneOffset": "+00:00",
        "epcList": ["urn:epc:id:sgtin:0614141.812345.6789"], "action": "OBSERVE", "bizStep": "inspecting",
        "readPoint": {"id": "urn:epc:id:sgln:0614141.12345.400"}});
    let ctx = json!(["https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"]);
    g.bench_function("event_hash", |b| {
        b.iter(|| black_box(event_hash(black_box(&ev), &ctx).unwrap()))
    });
    g.bench_function("document_one_event", |b| {
        b.iter(|| {
            let mut doc = EpcisDocument::new(1_714_557_601_000);
            let mut e = ObjectEvent::new(
                vec!["urn:epc:id:sgtin:0614141.812345.6789".into()],
                1_714_557_600_000,
                Action::Observe,
            );
            e.read_point = Some("urn:epc:id:sgln:0614141.12345.400".into());
            doc.push(&e).unwrap();
            black_box(doc.to_json_string())
        })
    });
    g.finish();
}

criterion_group!(decode, benches);
criterion_main!(decode);
