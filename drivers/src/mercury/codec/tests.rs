//! Every frame from the reference's §1.8 (verbatim V1–V23 and derived
//! D1–D19), plus property tests of the encoder/decoder pair.

use proptest::prelude::*;

use super::*;
use crate::uhf::testing::{decode_in_pieces, hex as h};

fn decode_all<F: FrameKind>(bytes: &[u8]) -> Vec<Event<F>> {
    let mut d = Decoder::<F>::new();
    d.push(bytes);
    std::iter::from_fn(|| d.next_event()).collect()
}

/// Decodes exactly one valid command and checks it re-encodes byte for byte.
fn command(s: &str) -> Command {
    let bytes = h(s);
    let ev = decode_all::<Command>(&bytes);
    assert_eq!(ev.len(), 1, "{s}: {ev:?}");
    let Event::Frame(c) = ev.into_iter().next().unwrap() else {
        panic!("{s}: not a valid frame")
    };
    assert_eq!(c.encode().unwrap(), bytes, "{s}: re-encoding differs");
    c
}

fn response(s: &str) -> Response {
    let bytes = h(s);
    let ev = decode_all::<Response>(&bytes);
    assert_eq!(ev.len(), 1, "{s}: {ev:?}");
    let Event::Frame(r) = ev.into_iter().next().unwrap() else {
        panic!("{s}: not a valid frame")
    };
    assert_eq!(r.encode().unwrap(), bytes, "{s}: re-encoding differs");
    r
}

#[test]
fn crc_check_value_is_thingmagic_not_ccitt_false() {
    assert_eq!(crc(b"123456789"), 0xA69D);
    assert_ne!(crc(b"123456789"), 0x29B1);
}

#[test]
fn gen2_tag_crc_matches_the_records_in_v13_and_v23() {
    let mut v13 = h("30 00");
    v13.extend(h("E2 00 32 2F E2 0D F9 31 13 28 B7 E3"));
    assert_eq!(gen2_crc(&v13), 0xD100);
    let mut v23 = h("30 00");
    v23.extend(h("00 00 00 00 00 00 00 00 00 00 15 45"));
    assert_eq!(gen2_crc(&v23), 0xE94A);
}

#[test]
fn v1_version_command() {
    let c = command("FF 00 03 1D 0C");
    assert_eq!(c, cmd::version());
}

#[test]
fn v2_version_reply_decodes_firmware_and_gen2() {
    let r = response(
        "FF 14 03 00 00 23 01 06 00 38 00 02 01 20 24 09 13 02 01 06 08 00 00 00 10 CB 65",
    );
    assert_eq!(r.status, status::SUCCESS);
    let v = VersionInfo::parse(&r.data).unwrap();
    assert_eq!(v.bootloader, [0x23, 0x01, 0x06, 0x00]);
    assert_eq!(v.hardware, [0x38, 0x00, 0x02, 0x01]);
    assert_eq!(v.fw_date, [0x20, 0x24, 0x09, 0x13]);
    assert_eq!(v.firmware(), "02.01.06.08");
    assert_eq!(v.protocols, 0x10);
    assert!(v.supports_gen2());
    assert_eq!(v.encode(), r.data);
}

#[test]
fn v3_boot_firmware_and_reply_from_an_m5e_compact() {
    assert_eq!(command("FF 00 04 1D 0B"), cmd::boot_firmware());
    let r = response(
        "FF 14 04 00 00 07 10 23 00 01 00 00 03 20 14 10 07 01 07 02 09 00 00 00 10 52 51",
    );
    let v = VersionInfo::parse(&r.data).unwrap();
    assert_eq!(v.model(), "M5e-Compact");
    assert_eq!(v.firmware(), "01.07.02.09");
}

#[test]
fn v4_version_reply_m5e() {
    let r = response(
        "FF 14 03 00 00 07 10 23 00 01 00 00 03 20 14 10 07 01 07 02 09 00 00 00 10 5B D1",
    );
    assert_eq!(r.opcode, op::VERSION);
    assert_eq!(
        VersionInfo::parse(&r.data).unwrap().fw_date,
        [0x20, 0x14, 0x10, 0x07]
    );
}

#[test]
fn v5_set_region_eu_and_ok_and_the_datasheet_typo_fails_crc() {
    assert_eq!(command("FF 01 97 02 4B BF"), cmd::set_region(2));
    let r = response("FF 00 97 00 00 77 9E");
    assert_eq!((r.opcode, r.status, r.data.len()), (op::SET_REGION, 0, 0));
    let ev = decode_all::<Command>(&h("FF 01 97 02 4B BE"));
    assert!(
        matches!(
            ev[0],
            Event::BadCrc {
                opcode: 0x97,
                len: 1
            }
        ),
        "{ev:?}"
    );
    assert!(!ev.iter().any(|e| matches!(e, Event::Frame(_))));
}

#[test]
fn v6_v7_set_region_na_and_prc() {
    assert_eq!(command("FF 01 97 01 4B BC"), cmd::set_region(1));
    assert_eq!(command("FF 01 97 06 4B BB"), cmd::set_region(6));
}

#[test]
fn v8_get_tag_protocol_none_then_gen2() {
    let c = command("FF 00 63 1D 6C");
    assert_eq!(c.opcode, op::GET_TAG_PROTOCOL);
    assert_eq!(response("FF 02 63 00 00 00 00 21 43").data, vec![0, 0]);
    assert_eq!(response("FF 02 63 00 00 00 05 21 46").data, vec![0, 5]);
}

#[test]
fn v9_set_tag_protocol_gen2() {
    assert_eq!(
        command("FF 02 93 00 05 51 7D"),
        cmd::set_tag_protocol_gen2()
    );
    assert_eq!(response("FF 00 93 00 00 37 1A").status, 0);
}

#[test]
fn v10_get_read_power_with_limits() {
    let c = command("FF 01 62 01 BE BC");
    assert_eq!(c.data, vec![1]);
    let r = response("FF 07 62 00 00 01 08 FC 08 FC 03 E8 7A C9");
    assert_eq!(u16::from_be_bytes([r.data[1], r.data[2]]), 2300);
    assert_eq!(u16::from_be_bytes([r.data[5], r.data[6]]), 1000);
}

#[test]
fn v11_set_read_power_10_dbm() {
    assert_eq!(command("FF 02 92 03 E8 42 B1"), cmd::set_read_power(1000));
    assert_eq!(
        response("FF 00 92 00 00 27 3B").opcode,
        op::SET_READ_TX_POWER
    );
}

#[test]
fn v12_get_antenna_port() {
    assert_eq!(command("FF 01 61 01 BD BC").opcode, op::GET_ANTENNA_PORT);
    assert_eq!(
        response("FF 03 61 00 00 01 01 00 21 5B").data,
        vec![1, 1, 0]
    );
}

#[test]
fn v13_read_single_legacy_reply_carries_epc_and_tag_crc() {
    assert_eq!(command("FF 02 21 03 E8 D5 09").data, vec![0x03, 0xE8]);
    let r = response("FF 0E 21 00 00 E2 00 32 2F E2 0D F9 31 13 28 B7 E3 D1 00 AA D0");
    assert_eq!(&r.data[..12], &h("E2 00 32 2F E2 0D F9 31 13 28 B7 E3")[..]);
    assert_eq!(&r.data[12..], &[0xD1, 0x00]);
}

#[test]
fn v14_no_tags_found_status() {
    let r = response("FF 00 21 04 00 B4 83");
    assert_eq!(r.status, status::NO_TAGS_FOUND);
    assert_eq!(status::meaning(r.status), "no tags found");
}

#[test]
fn v15_power_mode_get_and_set() {
    assert_eq!(command("FF 00 68 1D 67").opcode, op::GET_POWER_MODE);
    assert_eq!(response("FF 01 68 00 00 00 A4 BF").data, vec![0]);
    assert_eq!(command("FF 01 98 03 44 BE").data, vec![3]);
    assert_eq!(response("FF 00 98 00 00 86 71").opcode, op::SET_POWER_MODE);
}

#[test]
fn v16_write_tag_data() {
    let c = command("FF 0A 24 03 E8 00 00 00 00 00 03 00 EE 58 9D");
    assert_eq!(c.opcode, op::WRITE_TAG_DATA);
    assert_eq!(&c.data[c.data.len() - 2..], &[0x00, 0xEE]);
}

#[test]
fn v17_read_filter_off() {
    assert_eq!(command("FF 03 9A 01 0C 00 A3 5D"), cmd::read_filter_off());
}

#[test]
fn v18_start_continuous_matches_sparkfun_blob_and_parses_back() {
    let rm = ReadMultiple {
        search_flags: 0x001B,
        timeout_ms: 1000,
        metadata: 0x01FF,
        embedded_read: None,
    };
    let c = command("FF 10 2F 00 00 01 22 00 00 05 07 22 10 00 1B 03 E8 01 FF DD 2B");
    assert_eq!(c, cmd::start_continuous(&rm));
    assert_eq!(parse_start_continuous(&c.data).unwrap(), rm);
}

#[test]
fn v19_stop_continuous() {
    assert_eq!(command("FF 03 2F 00 00 02 5E 86"), cmd::stop_continuous());
}

#[test]
fn v20_antenna_list_and_clear_buffer() {
    assert_eq!(
        command("FF 03 91 02 01 01 42 C5"),
        cmd::set_antenna_list(&[1])
    );
    assert_eq!(command("FF 00 2A 1D 25"), cmd::clear_tag_buffer());
}

#[test]
fn v21_sync_read_without_metadata_parses() {
    let c = command("FF 05 22 00 00 13 01 F4 2B 19");
    let rm = ReadMultiple::parse(&c.data).unwrap();
    assert_eq!(
        (rm.search_flags, rm.timeout_ms, rm.metadata),
        (0x13, 500, 0)
    );
    let c = command("FF 05 22 00 00 13 00 0A 2A E7");
    assert_eq!(ReadMultiple::parse(&c.data).unwrap().timeout_ms, 10);
}

#[test]
fn v22_get_tag_buffer_all_metadata() {
    assert_eq!(
        command("FF 03 29 01 FF 00 1B 03"),
        cmd::get_tag_buffer(0x01FF)
    );
}

#[test]
fn v23_streamed_tag_record_decodes_every_field() {
    let r = response(
        "FF 28 22 00 00 10 00 1B 01 FF 01 01 C4 11 0E 16 40 00 00 01 27 00 00 05 00 00 0F 00 80 30 00 00 00 00 00 00 00 00 00 00 00 15 45 E9 4A 56 1D",
    );
    let StreamItem::Tag(t) = parse_stream_frame(&r).unwrap() else {
        panic!("not a tag")
    };
    assert_eq!(t.read_count, Some(1));
    assert_eq!(t.rssi_dbm, Some(-60));
    assert_eq!(t.antenna, Some(0x11));
    assert_eq!(t.rx_antenna(), Some(1));
    assert_eq!(t.frequency_khz, Some(923_200));
    assert_eq!(t.timestamp_ms, Some(295));
    assert_eq!(t.phase_deg, Some(0));
    assert_eq!(t.protocol, Some(PROTOCOL_GEN2));
    assert_eq!(t.data, None);
    assert_eq!(t.gpio, Some(0x0F));
    assert_eq!(t.pc, 0x3000);
    assert_eq!(t.epc, h("00 00 00 00 00 00 00 00 00 00 15 45"));
    assert_eq!(t.tag_crc, 0xE94A);
    assert_eq!(encode_stream_tag(0x001B, 0x01FF, &t), r.data);
}

#[test]
fn d1_to_d4_program_baud_region() {
    assert_eq!(command("FF 00 0C 1D 03"), cmd::get_current_program());
    assert_eq!(
        command("FF 04 06 00 01 C2 00 A4 60").data,
        115_200u32.to_be_bytes()
    );
    assert_eq!(command("FF 01 97 0D 4B B0"), cmd::set_region(0x0D));
    assert_eq!(command("FF 01 97 08 4B B5"), cmd::set_region(0x08));
    assert_eq!(command("FF 00 67 1D 68").opcode, op::GET_REGION);
}

#[test]
fn d5_to_d11_power_antenna_gen2_params() {
    assert_eq!(command("FF 02 92 0A 8C 4B D5"), cmd::set_read_power(2700));
    assert_eq!(command("FF 02 92 01 F4 40 AD"), cmd::set_read_power(500));
    assert_eq!(command("FF 01 62 00 BE BD").data, vec![0]);
    assert_eq!(command("FF 02 91 01 01 70 3B").data, vec![1, 1]);
    assert_eq!(
        command("FF 05 91 02 01 01 02 02 2D C0"),
        cmd::set_antenna_list(&[1, 2])
    );
    assert_eq!(command("FF 03 9B 05 00 01 DC E9"), cmd::gen2_session(1));
    assert_eq!(command("FF 04 9B 05 01 01 00 A2 FD").data, h("05 01 01 00"));
    assert_eq!(command("FF 03 9B 05 12 00 CE E8").data, h("05 12 00"));
    assert_eq!(command("FF 04 9B 05 12 01 04 80 AB").data, h("05 12 01 04"));
}

#[test]
fn d12_d13_sync_read_with_metadata_and_its_count_reply() {
    let rm = ReadMultiple {
        search_flags: 0x0013,
        timeout_ms: 1000,
        metadata: 0x0057,
        embedded_read: None,
    };
    let c = command("FF 07 22 10 00 13 03 E8 00 57 88 35");
    assert_eq!(c, cmd::read_multiple(&rm));
    assert_eq!(ReadMultiple::parse(&c.data).unwrap(), rm);
    let r = response("FF 07 22 00 00 10 00 13 00 00 00 02 8F 01");
    assert_eq!(parse_read_multiple_count(&r.data).unwrap(), 2);
}

#[test]
fn tag_buffer_indices_and_resend_commands_follow_the_mercury_api_layout() {
    // TMR_SR_cmdGetTagsRemaining: the bare opcode, no data.
    assert_eq!(
        cmd::get_tag_buffer_indices().encode().unwrap()[..3],
        [0xFF, 0x00, 0x29]
    );
    // The Java API's cmdGetTagBuffer(metadata, resend): option byte 01.
    assert_eq!(
        cmd::get_tag_buffer_resend(0x0057).data,
        vec![0x00, 0x57, 0x01]
    );
    assert_eq!(cmd::get_tag_buffer(0x0057).data, vec![0x00, 0x57, 0x00]);
    // Reply DATA = frame offsets 5.. : read index, then write index.
    let idx = BufferIndices::parse(&[0x00, 0x03, 0x00, 0x05]).unwrap();
    assert_eq!(idx, BufferIndices { read: 3, write: 5 });
    assert_eq!(idx.remaining(), 2);
    assert_eq!(BufferIndices::parse(&idx.encode()).unwrap(), idx);
}

#[test]
fn tag_buffer_indices_with_the_read_index_past_the_write_index_are_rejected_not_wrapped() {
    let e = BufferIndices::parse(&[0x00, 0x05, 0x00, 0x03]).unwrap_err();
    assert!(e.to_string().contains("past write index"), "{e}");
    assert!(matches!(
        BufferIndices::parse(&[0x00, 0x05, 0x00]),
        Err(ParseError::Truncated { .. })
    ));
}

#[test]
fn one_tag_buffer_reply_holds_seven_96_bit_records_with_all_metadata_five_with_a_tid() {
    // The crash bound documented for tag-buffer mode is one reply: pin
    // what fits in it with the metadata the driver asks for.
    let rec = TagRecord::gen2(&[0x30; 12]);
    let fits = |n: usize| encode_tag_buffer(meta::ALL_SUPPORTED, &vec![rec.clone(); n]).len();
    assert!(fits(7) <= MAX_RESPONSE_DATA);
    assert!(fits(8) > MAX_RESPONSE_DATA);
    // With read_tid's default 6 TID words alongside: five.
    let mut with_tid = rec;
    with_tid.data = Some(vec![0xE2; 12]);
    let fits = |n: usize| encode_tag_buffer(meta::ALL_SUPPORTED, &vec![with_tid.clone(); n]).len();
    assert!(fits(5) <= MAX_RESPONSE_DATA);
    assert!(fits(6) > MAX_RESPONSE_DATA);
}

#[test]
fn a_tag_buffer_reply_claiming_more_records_than_its_bytes_hold_is_rejected() {
    // flags 0, options 0, count 200, then 12 bytes: room for 2 records.
    let mut d = vec![0x00, 0x00, 0x00, 200];
    d.extend_from_slice(&[0u8; 12]);
    let e = parse_tag_buffer(&d).unwrap_err();
    assert!(e.to_string().contains("cannot fit"), "{e}");
}

#[test]
fn d14_d15_tag_buffer_fetch_and_two_records() {
    assert_eq!(
        command("FF 03 29 00 57 00 A3 22"),
        cmd::get_tag_buffer(0x0057)
    );
    let r = response(
        "FF 38 29 00 00 00 57 00 02 03 C6 11 00 00 00 78 05 00 80 30 00 E2 80 68 94 00 00 50 0A 9D 22 98 C6 E3 1E 01 B9 22 00 00 00 F0 05 00 80 30 00 30 08 33 B2 DD D9 01 40 00 00 00 00 39 BB EF 5B",
    );
    let recs = parse_tag_buffer(&r.data).unwrap();
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[0].read_count, Some(3));
    assert_eq!(recs[0].rssi_dbm, Some(-58));
    assert_eq!(recs[0].antenna, Some(0x11));
    assert_eq!(recs[0].timestamp_ms, Some(120));
    assert_eq!(recs[0].epc, h("E2 80 68 94 00 00 50 0A 9D 22 98 C6"));
    assert_eq!(recs[0].tag_crc, 0xE31E);
    assert_eq!(recs[1].read_count, Some(1));
    assert_eq!(recs[1].rssi_dbm, Some(-71));
    assert_eq!(recs[1].rx_antenna(), Some(2));
    assert_eq!(recs[1].timestamp_ms, Some(240));
    assert_eq!(recs[1].epc, h("30 08 33 B2 DD D9 01 40 00 00 00 00"));
    assert_eq!(recs[1].tag_crc, 0x39BB);
    assert_eq!(encode_tag_buffer(0x0057, &recs), r.data);
    // The records are what a simulator builds from the EPC alone.
    assert_eq!(TagRecord::gen2(&recs[1].epc).tag_crc, 0x39BB);
}

#[test]
fn d16_keepalive_d17_bootloader_status_d18_ok() {
    let r = response("FF 00 22 04 00 84 E0");
    assert_eq!(parse_stream_frame(&r).unwrap(), StreamItem::KeepAlive);
    let r = response("FF 00 22 01 01 81 E1");
    assert_eq!(r.status, status::INVALID_OPCODE);
    assert_eq!(response("FF 00 97 00 00 77 9E").status, 0);
}

#[test]
fn d19_streamed_record_with_phase_and_frequency() {
    let r = response(
        "FF 28 22 00 00 10 00 1B 01 FF 01 02 D3 11 0D C6 5E 00 00 03 E8 00 5A 05 00 00 0F 00 80 30 00 E2 80 68 94 00 00 50 0A 9D 22 98 C6 E3 1E 9C E1",
    );
    let StreamItem::Tag(t) = parse_stream_frame(&r).unwrap() else {
        panic!("not a tag")
    };
    assert_eq!(t.read_count, Some(2));
    assert_eq!(t.rssi_dbm, Some(-45));
    assert_eq!(t.frequency_khz, Some(902_750));
    assert_eq!(t.timestamp_ms, Some(1000));
    assert_eq!(t.phase_deg, Some(90));
    assert_eq!(t.epc, h("E2 80 68 94 00 00 50 0A 9D 22 98 C6"));
}

#[test]
fn garbage_and_stray_preambles_are_skipped_and_counted_before_a_frame() {
    let mut bytes = h("01 02 FF FF FF 7E");
    bytes.extend(h("FF 00 22 04 00 84 E0"));
    let ev = decode_all::<Response>(&bytes);
    let skipped: usize = ev
        .iter()
        .map(|e| if let Event::Skipped(n) = e { *n } else { 0 })
        .sum();
    assert_eq!(skipped, 6);
    assert!(matches!(ev.last(), Some(Event::Frame(r)) if r.status == 0x0400));
}

#[test]
fn a_bad_crc_frame_does_not_hide_the_good_frame_after_it() {
    let mut bytes = h("FF 00 97 00 00 77 9F");
    bytes.extend(h("FF 00 93 00 00 37 1A"));
    let ev = decode_all::<Response>(&bytes);
    assert!(matches!(ev[0], Event::BadCrc { .. }));
    let frames: Vec<_> = ev
        .iter()
        .filter_map(|e| {
            if let Event::Frame(f) = e {
                Some(f)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].opcode, op::SET_TAG_PROTOCOL);
}

#[test]
fn oversized_data_is_refused_by_the_encoder() {
    let r = Response::new(op::GET_TAG_ID_BUFFER, 0, vec![0; MAX_RESPONSE_DATA + 1]);
    assert!(matches!(r.encode(), Err(EncodeError::TooLong { .. })));
    let c = Command::new(op::VERSION, vec![0; MAX_COMMAND_DATA + 1]);
    assert!(c.encode().is_err());
}

#[test]
fn embedded_tid_read_round_trips_through_the_start_command() {
    let rm = ReadMultiple {
        search_flags: 0x001B | search::EMBEDDED_COMMAND,
        timeout_ms: 500,
        metadata: 0x01FF,
        embedded_read: Some((BANK_TID, 0, 6)),
    };
    let c = cmd::start_continuous(&rm);
    assert_eq!(parse_start_continuous(&c.data).unwrap(), rm);
}

fn known_opcode() -> impl Strategy<Value = u8> {
    proptest::sample::select(op::ALL.to_vec())
}

fn record_strategy() -> impl Strategy<Value = (u16, TagRecord)> {
    (
        0u16..=meta::ALL_SUPPORTED,
        proptest::collection::vec(any::<u8>(), 0..=31),
        any::<(u8, i8, u8, u32, u32, u16, u8)>(),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 1..=16)),
    )
        .prop_map(|(flags, epc, (n, rssi, ant, f, ts, ph, gpio), data)| {
            let mut t = TagRecord::gen2(&epc);
            // Odd-length EPCs do not exist on air; keep the PC consistent.
            t.read_count = Some(n);
            t.rssi_dbm = Some(rssi);
            t.antenna = Some(ant);
            t.frequency_khz = Some(f & 0x00FF_FFFF);
            t.timestamp_ms = Some(ts);
            t.phase_deg = Some(ph);
            t.gpio = Some(gpio);
            t.data = data;
            (flags, t)
        })
}

fn keep_flagged(flags: u16, t: &TagRecord) -> TagRecord {
    let mut e = t.clone();
    let f = |bit: u16| flags & bit != 0;
    if !f(meta::READCOUNT) {
        e.read_count = None;
    }
    if !f(meta::RSSI) {
        e.rssi_dbm = None;
    }
    if !f(meta::ANTENNAID) {
        e.antenna = None;
    }
    if !f(meta::FREQUENCY) {
        e.frequency_khz = None;
    }
    if !f(meta::TIMESTAMP) {
        e.timestamp_ms = None;
    }
    if !f(meta::PHASE) {
        e.phase_deg = None;
    }
    if !f(meta::PROTOCOL) {
        e.protocol = None;
    }
    if !f(meta::DATA) {
        e.data = None;
    }
    if !f(meta::GPIO_STATUS) {
        e.gpio = None;
    }
    e
}

proptest! {
    #[test]
    fn responses_round_trip_through_any_split_and_leading_garbage(
        frames in proptest::collection::vec(
            (known_opcode(), any::<u16>(), proptest::collection::vec(any::<u8>(), 0..=MAX_RESPONSE_DATA)),
            1..6),
        garbage in proptest::collection::vec(any::<u8>().prop_filter("no header", |b| *b != HEADER), 0..20),
        chunk in 1usize..64,
    ) {
        let frames: Vec<Response> = frames.into_iter().map(|(o, s, d)| Response::new(o, s, d)).collect();
        let mut bytes = garbage.clone();
        for f in &frames {
            f.encode_into(&mut bytes).unwrap();
        }
        let t = decode_in_pieces(&mut Decoder::<Response>::new(), &bytes, chunk, |f| f.data.len() + 7);
        prop_assert_eq!(t.skipped, garbage.len());
        prop_assert_eq!(t.frames, frames);
    }

    #[test]
    fn commands_round_trip(opcode in known_opcode(), data in proptest::collection::vec(any::<u8>(), 0..=MAX_COMMAND_DATA)) {
        let c = Command::new(opcode, data);
        let ev = decode_all::<Command>(&c.encode().unwrap());
        prop_assert_eq!(ev, vec![Event::Frame(c)]);
    }

    #[test]
    fn a_flipped_crc_bit_is_always_reported_and_never_yields_a_frame(
        opcode in known_opcode(),
        data in proptest::collection::vec(any::<u8>(), 0..40),
        bit in 0u8..16,
    ) {
        let mut bytes = Response::new(opcode, 0, data).encode().unwrap();
        let n = bytes.len();
        let v = u16::from_be_bytes([bytes[n - 2], bytes[n - 1]]) ^ (1 << bit);
        bytes[n - 2..].copy_from_slice(&v.to_be_bytes());
        let ev = decode_all::<Response>(&bytes);
        let first_is_bad = matches!(ev[0], Event::BadCrc { .. });
        prop_assert!(first_is_bad);
        let any_frame = ev.iter().any(|e| matches!(e, Event::Frame(_)));
        prop_assert!(!any_frame);
    }

    #[test]
    fn the_decoder_never_panics_and_accounts_for_every_byte(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let len = bytes.len().max(1);
        let t = decode_in_pieces(&mut Decoder::<Response>::new(), &bytes, len, |f| f.data.len() + 7);
        prop_assert_eq!(t.consumed + t.buffered, bytes.len());
        let _ = parse_tag_buffer(&bytes);
        let _ = BufferIndices::parse(&bytes);
        let _ = ReadMultiple::parse(&bytes);
        let _ = parse_start_continuous(&bytes);
        let _ = VersionInfo::parse(&bytes);
    }

    #[test]
    fn tag_records_round_trip_for_any_metadata_subset((flags, rec) in record_strategy()) {
        let mut buf = Vec::new();
        rec.encode_into(flags, &mut buf);
        let (back, used) = TagRecord::parse(flags, &buf).unwrap();
        prop_assert_eq!(used, buf.len());
        prop_assert_eq!(back, keep_flagged(flags, &rec));
    }
}
