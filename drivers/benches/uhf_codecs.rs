//! Decoded tag-read frames per second for the Mercury and R2000 codecs,
//! against what a 921,600-baud serial link can physically carry.
//!
//! `cargo bench -p tracegate-drivers --bench uhf_codecs`
//!
//! The input is a stream of typical tag-read frames fed to the decoder in
//! 64-byte pieces (roughly what a USB-serial adapter delivers per read), and
//! every frame is interpreted down to EPC and metadata, as the drivers do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use tracegate_drivers::mercury::codec::{
    encode_stream_tag, op, parse_stream_frame, Decoder as MercuryDecoder, Event as MEvent,
    Response, StreamItem, TagRecord,
};
use tracegate_drivers::r2000::codec::{
    cmd, parse_inventory, Decoder as R2000Decoder, Event as REvent, Frame, InventoryItem, TagRead,
};

const FRAMES: usize = 1000;
/// 8N1: ten bit times per byte.
const BAUD: f64 = 921_600.0;

fn mercury_stream() -> (Vec<u8>, usize) {
    let mut out = Vec::new();
    let mut frame_len = 0;
    for i in 0..FRAMES {
        let mut epc = vec![0x30, 0x08, 0x33, 0xB2, 0xDD, 0xD9, 0x01, 0x40, 0, 0, 0, 0];
        epc[8..].copy_from_slice(&(i as u32).to_be_bytes());
        let mut t = TagRecord::gen2(&epc);
        t.read_count = Some(1);
        t.rssi_dbm = Some(-60);
        t.antenna = Some(0x11);
        t.frequency_khz = Some(915_250);
        t.timestamp_ms = Some(i as u32);
        t.phase_deg = Some(90);
        t.gpio = Some(0);
        let data = encode_stream_tag(0x001B, 0x01FF, &t);
        let before = out.len();
        Response::new(op::READ_TAG_ID_MULTIPLE, 0, data)
            .encode_into(&mut out)
            .unwrap();
        frame_len = out.len() - before;
    }
    (out, frame_len)
}

fn r2000_stream() -> (Vec<u8>, usize) {
    let mut out = Vec::new();
    let mut frame_len = 0;
    for i in 0..FRAMES {
        let mut epc = vec![0xE2, 0x00, 0x30, 0x16, 0x66, 0x13, 0x01, 0x21, 0, 0, 0, 0];
        epc[8..].copy_from_slice(&(i as u32).to_be_bytes());
        let t = TagRead {
            antenna_id: (i % 4) as u8,
            freq_index: (i % 50) as u8,
            pc: 0x3000,
            epc,
            rssi_raw: 0x45,
            phase: None,
        };
        let before = out.len();
        Frame::new(1, cmd::REAL_TIME_INVENTORY, t.encode(false))
            .encode_into(&mut out)
            .unwrap();
        frame_len = out.len() - before;
    }
    (out, frame_len)
}

fn wire_limit(frame_len: usize) -> f64 {
    BAUD / 10.0 / frame_len as f64
}

fn bench(c: &mut Criterion) {
    let (m, m_len) = mercury_stream();
    let (r, r_len) = r2000_stream();
    eprintln!(
        "wire limit at 921600 baud: mercury {m_len}-byte tag frame = {:.0} frames/s; r2000 {r_len}-byte tag frame = {:.0} frames/s",
        wire_limit(m_len),
        wire_limit(r_len)
    );

    let mut g = c.benchmark_group("uhf_decode");
    g.throughput(Throughput::Elements(FRAMES as u64));
    g.bench_function("mercury_streamed_tag_frames", |b| {
        b.iter(|| {
            let mut dec = MercuryDecoder::<Response>::new();
            let mut tags = 0usize;
            for piece in black_box(&m).chunks(64) {
                dec.push(piece);
                while let Some(ev) = dec.next_event() {
                    if let MEvent::Frame(f) = ev {
                        if let Ok(StreamItem::Tag(t)) = parse_stream_frame(&f) {
                            tags += t.epc.len() / 12;
                        }
                    }
                }
            }
            assert_eq!(tags, FRAMES);
            tags
        })
    });
    g.bench_function("r2000_tag_frames", |b| {
        b.iter(|| {
            let mut dec = R2000Decoder::new();
            let mut tags = 0usize;
            for piece in black_box(&r).chunks(64) {
                dec.push(piece);
                while let Some(ev) = dec.next_event() {
                    if let REvent::Frame(f) = ev {
                        if let Ok(InventoryItem::Tag(t)) = parse_inventory(&f, false) {
                            tags += t.epc.len() / 12;
                        }
                    }
                }
            }
            assert_eq!(tags, FRAMES);
            tags
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
