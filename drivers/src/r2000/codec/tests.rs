//! Every frame from the reference's §2.6 (verbatim V1–V11, derived D1–D16)
//! plus property tests.

use proptest::prelude::*;

use super::*;
use crate::uhf::testing::{decode_in_pieces, hex as h};

fn events(bytes: &[u8]) -> Vec<Event> {
    let mut d = Decoder::new();
    d.push(bytes);
    std::iter::from_fn(|| d.next_event()).collect()
}

/// Decodes exactly one valid frame and checks it re-encodes byte for byte.
fn frame(s: &str) -> Frame {
    let bytes = h(s);
    let ev = events(&bytes);
    assert_eq!(ev.len(), 1, "{s}: {ev:?}");
    let Event::Frame(f) = ev.into_iter().next().unwrap() else {
        panic!("{s}: not a valid frame")
    };
    assert_eq!(f.encode().unwrap(), bytes, "{s}: re-encoding differs");
    f
}

fn tag(s: &str) -> TagRead {
    match parse_inventory(&frame(s), false).unwrap() {
        InventoryItem::Tag(t) => t,
        other => panic!("{s}: {other:?}"),
    }
}

#[test]
fn v1_get_firmware_and_reply_v1_9() {
    assert_eq!(frame("A0 03 01 72 EA"), build::get_firmware_version(1));
    assert_eq!(frame("A0 05 01 72 01 09 DE").data, vec![1, 9]);
}

#[test]
fn v2_set_work_antenna_and_success() {
    assert_eq!(frame("A0 04 01 74 00 E7"), build::set_work_antenna(1, 0));
    assert_eq!(
        frame("A0 04 01 74 10 D7").result_code(),
        Some(code::SUCCESS)
    );
}

#[test]
fn v3_real_time_inventory_repeat_1() {
    assert_eq!(frame("A0 04 01 89 01 D1"), build::real_time_inventory(1, 1));
}

#[test]
fn v4_tag_port_1_865_5_mhz_minus_60_dbm() {
    let t = tag("A0 13 01 89 04 30 00 E2 00 30 16 66 13 01 21 15 50 74 EF 45 BF");
    assert_eq!(t.antenna_id, 0);
    assert_eq!(t.freq_index, 1);
    assert_eq!(t.frequency_khz(), 865_500);
    assert_eq!(t.pc, 0x3000);
    assert_eq!(t.epc, h("E2 00 30 16 66 13 01 21 15 50 74 EF"));
    assert_eq!(t.rssi_dbm(), -60);
    assert_eq!(t.phase, None);
    assert_eq!(
        t.encode(false),
        frame("A0 13 01 89 04 30 00 E2 00 30 16 66 13 01 21 15 50 74 EF 45 BF").data
    );
}

#[test]
fn v5_to_v7_tags_from_race_timing_captures() {
    let t = tag("A0 13 01 89 8C 30 00 30 08 33 B2 DD D9 01 40 00 00 00 01 37 BB");
    assert_eq!(
        (t.freq_index, t.frequency_khz(), t.antenna_id),
        (35, 916_000, 0)
    );
    assert_eq!(t.epc, h("30 08 33 B2 DD D9 01 40 00 00 00 01"));
    assert_eq!(t.rssi_dbm(), -74);
    let t = tag("A0 13 01 89 74 30 00 E2 00 40 74 85 0A 01 03 16 30 70 E1 36 29");
    assert_eq!((t.freq_index, t.frequency_khz()), (29, 913_000));
    assert_eq!(t.rssi_raw, 54);
    let t = tag("A0 13 01 89 D4 30 00 E2 00 40 74 85 0A 01 03 16 90 67 DD 2F 7D");
    assert_eq!((t.freq_index, t.frequency_khz()), (53, 925_000));
    assert_eq!(t.rssi_dbm(), -82);
}

#[test]
fn v8_end_of_round() {
    let f = frame("A0 0A 01 89 00 00 11 00 00 00 05 B6");
    assert_eq!(
        parse_inventory(&f, false).unwrap(),
        InventoryItem::RoundEnd {
            antenna_id: 0,
            read_rate: 17,
            total_reads: 5
        }
    );
}

#[test]
fn v9_readme_typo_fails_the_checksum_and_yields_no_frame() {
    let ev = events(&h("A0 0A 01 89 00 00 1D 00 00 00 01 BC"));
    assert!(matches!(ev[0], Event::BadChecksum { cmd: 0x89, len: 10 }));
    assert!(!ev.iter().any(|e| matches!(e, Event::Frame(_))));
    // With the corrected checksum it is a valid end-of-round frame.
    frame("A0 0A 01 89 00 00 1D 00 00 00 01 AE");
}

#[test]
fn v10_session_inventory_tag_and_end() {
    assert_eq!(
        frame("A0 06 01 8B 01 00 01 CC"),
        build::session_inventory(1, 1, 0, 1)
    );
    let t = tag("A0 13 01 8B 10 30 00 30 09 66 37 81 DB 02 97 48 76 FC 6A 67 2B");
    assert_eq!(t.epc, h("30 09 66 37 81 DB 02 97 48 76 FC 6A"));
    assert_eq!(t.rssi_raw, 0x67);
    let f = frame("A0 0A 01 8B 00 00 19 00 00 00 01 B0");
    assert_eq!(
        parse_inventory(&f, false).unwrap(),
        InventoryItem::RoundEnd {
            antenna_id: 0,
            read_rate: 25,
            total_reads: 1
        }
    );
}

#[test]
fn v11_buffered_inventory() {
    assert_eq!(frame("A0 04 01 80 01 DA").cmd, cmd::INVENTORY);
}

#[test]
fn d1_to_d8_control_commands() {
    assert_eq!(frame("A0 03 01 70 EC"), build::reset(1));
    assert_eq!(
        frame("A0 03 FF 72 EC"),
        build::get_firmware_version(BROADCAST)
    );
    assert_eq!(frame("A0 04 01 76 1E C7"), build::set_output_power(1, 30));
    assert_eq!(
        frame("A0 07 01 76 1E 1E 1E 1E 6A"),
        build::set_output_power_per_port(1, [30; 4])
    );
    assert_eq!(frame("A0 03 01 77 E5"), build::get_output_power(1));
    assert_eq!(
        frame("A0 06 01 78 01 07 3B 9E"),
        build::set_frequency_region(1, 1, 7, 59)
    );
    assert_eq!(
        frame("A0 06 01 78 02 00 06 D9"),
        build::set_frequency_region(1, 2, 0, 6)
    );
    assert_eq!(
        frame("A0 04 01 89 FF D3"),
        build::real_time_inventory(1, 0xFF)
    );
}

#[test]
fn d9_d10_fast_switch_commands() {
    assert_eq!(
        frame("A0 0D 01 8A 00 01 01 01 02 01 03 01 00 01 BD"),
        build::fast_switch(1, [(0, 1), (1, 1), (2, 1), (3, 1)], 0, 1)
    );
    assert_eq!(
        frame("A0 0D 01 8A 00 01 FF 01 FF 01 FF 01 00 01 C6"),
        build::fast_switch(1, [(0, 1), (0xFF, 1), (0xFF, 1), (0xFF, 1)], 0, 1)
    );
}

#[test]
fn d11_antenna_missing_error() {
    let f = frame("A0 04 01 89 22 B0");
    assert_eq!(
        parse_inventory(&f, false).unwrap(),
        InventoryItem::Error(code::ANTENNA_MISSING)
    );
    assert_eq!(code::meaning(0x22), "antenna missing");
}

#[test]
fn d12_d13_tag_on_port_2_and_end_of_round() {
    let t = tag("A0 13 01 89 29 30 00 E2 80 68 94 00 00 50 0A 9D 22 98 C6 4A 4B");
    assert_eq!(
        (t.antenna_id, t.freq_index, t.frequency_khz()),
        (1, 10, 903_500)
    );
    assert_eq!(t.rssi_raw, 0x4A);
    let f = frame("A0 0A 01 89 01 00 1E 00 00 00 0C A1");
    assert_eq!(
        parse_inventory(&f, false).unwrap(),
        InventoryItem::RoundEnd {
            antenna_id: 1,
            read_rate: 30,
            total_reads: 12
        }
    );
}

#[test]
fn d14_to_d16_fast_switch_replies() {
    let f = frame("A0 13 01 8A 52 30 00 30 08 33 B2 DD D9 01 40 00 00 00 00 50 DC");
    let InventoryItem::Tag(t) = parse_inventory(&f, false).unwrap() else {
        panic!()
    };
    assert_eq!((t.antenna_id, t.freq_index), (2, 20));
    let f = frame("A0 0A 01 8A 00 00 05 00 00 04 B0 12");
    assert_eq!(
        parse_inventory(&f, false).unwrap(),
        InventoryItem::FastSwitchEnd {
            total_reads: 5,
            duration_ms: 1200
        }
    );
    let f = frame("A0 05 01 8A 01 22 AD");
    assert_eq!(
        parse_inventory(&f, false).unwrap(),
        InventoryItem::AntennaError {
            antenna_id: 1,
            code: 0x22
        }
    );
}

#[test]
fn eight_port_readers_carry_the_antenna_high_bit_in_rssi() {
    let t = TagRead {
        antenna_id: 6,
        freq_index: 3,
        pc: 0x3000,
        epc: vec![0x11; 12],
        rssi_raw: 0x45,
        phase: None,
    };
    let f = Frame::new(1, cmd::REAL_TIME_INVENTORY, t.encode(true));
    assert_eq!(parse_inventory(&f, true).unwrap(), InventoryItem::Tag(t));
}

#[test]
fn phase_bytes_are_recognised_from_the_pc_length() {
    let t = TagRead {
        antenna_id: 1,
        freq_index: 9,
        pc: 0x3000,
        epc: vec![0xA0; 12],
        rssi_raw: 0x50,
        phase: Some(0x1234),
    };
    let f = Frame::new(1, cmd::CUSTOMIZED_SESSION_TARGET_INVENTORY, t.encode(false));
    assert_eq!(parse_inventory(&f, false).unwrap(), InventoryItem::Tag(t));
}

#[test]
fn an_address_filter_skips_frames_for_other_readers() {
    let mut bytes = h("A0 04 02 74 10 D6");
    bytes.extend(h("A0 04 01 74 10 D7"));
    let mut d = Decoder::with_address(1);
    d.push(&bytes);
    let ev: Vec<_> = std::iter::from_fn(|| d.next_event()).collect();
    assert_eq!(ev[0], Event::Skipped(6));
    assert!(matches!(&ev[1], Event::Frame(f) if f.address == 1));
}

fn known_cmd() -> impl Strategy<Value = u8> {
    (0u8..=255).prop_filter("known", |c| cmd::is_known(*c))
}

proptest! {
    #[test]
    fn frames_round_trip_through_any_split_and_leading_garbage(
        frames in proptest::collection::vec(
            (any::<u8>(), known_cmd(), proptest::collection::vec(any::<u8>(), 0..=MAX_DATA)), 1..6),
        garbage in proptest::collection::vec(any::<u8>().prop_filter("no header", |b| *b != HEADER), 0..20),
        chunk in 1usize..64,
    ) {
        let frames: Vec<Frame> = frames.into_iter().map(|(a, c, d)| Frame::new(a, c, d)).collect();
        let mut bytes = garbage.clone();
        for f in &frames {
            f.encode_into(&mut bytes).unwrap();
        }
        let t = decode_in_pieces(&mut Decoder::new(), &bytes, chunk, |f| f.data.len() + 5);
        prop_assert_eq!(t.skipped, garbage.len());
        prop_assert_eq!(t.frames, frames);
    }

    #[test]
    fn a_corrupted_checksum_never_yields_that_frame(
        c in known_cmd(),
        data in proptest::collection::vec(any::<u8>(), 0..30),
        delta in 1u8..=255,
    ) {
        let mut bytes = Frame::new(1, c, data).encode().unwrap();
        let n = bytes.len();
        bytes[n - 1] = bytes[n - 1].wrapping_add(delta);
        let ev = events(&bytes);
        let first_is_bad = matches!(ev[0], Event::BadChecksum { .. });
        prop_assert!(first_is_bad);
    }

    #[test]
    fn the_decoder_never_panics_and_accounts_for_every_byte(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let len = bytes.len().max(1);
        let t = decode_in_pieces(&mut Decoder::new(), &bytes, len, |f| {
            let _ = parse_inventory(f, true);
            let _ = parse_inventory(f, false);
            f.data.len() + 5
        });
        prop_assert_eq!(t.consumed + t.buffered, bytes.len());
    }

    #[test]
    fn tag_reads_round_trip(
        ant in 0u8..4, freq in 0u8..60, words in 0u16..=31, rssi in 0u8..128,
        phase in proptest::option::of(any::<u16>()), seed in any::<u8>(),
    ) {
        let epc: Vec<u8> = (0..words * 2).map(|i| seed.wrapping_add(i as u8)).collect();
        let t = TagRead { antenna_id: ant, freq_index: freq, pc: words << 11, epc, rssi_raw: rssi, phase };
        let f = Frame::new(1, cmd::REAL_TIME_INVENTORY, t.encode(false));
        prop_assert_eq!(parse_inventory(&f, false).unwrap(), InventoryItem::Tag(t));
    }
}
