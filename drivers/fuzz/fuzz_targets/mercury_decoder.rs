//! Feeds arbitrary bytes, in arbitrary pieces, to the Mercury decoders and
//! to every DATA parser, checking that nothing panics and that every byte is
//! accounted for (a frame, a skip, or one byte after a bad CRC).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracegate_drivers::mercury::codec::{
    parse_read_multiple_count, parse_start_continuous, parse_stream_frame, parse_tag_buffer,
    Command, Decoder, Event, ReadMultiple, Response, TagRecord, VersionInfo,
};

fuzz_target!(|input: &[u8]| {
    let Some((&chunk, bytes)) = input.split_first() else {
        return;
    };
    // Low 7 bits: chunk size; high bit: give up on partial frames between
    // chunks, as the driver does when the line goes quiet.
    let stale = chunk & 0x80 != 0;
    let chunk = usize::from(chunk & 0x7F).max(1);

    let mut responses = Decoder::<Response>::new();
    let mut accounted = 0usize;
    for piece in bytes.chunks(chunk) {
        responses.push(piece);
        while let Some(ev) = responses.next_event() {
            match ev {
                Event::Frame(r) => {
                    accounted += r.data.len() + 7;
                    let again = r.encode().expect("decoded frame re-encodes");
                    assert_eq!(again.len(), r.data.len() + 7);
                    let _ = parse_stream_frame(&r);
                    let _ = parse_tag_buffer(&r.data);
                    let _ = parse_read_multiple_count(&r.data);
                    let _ = VersionInfo::parse(&r.data);
                    if r.data.len() >= 2 {
                        let flags = u16::from_be_bytes([r.data[0], r.data[1]]);
                        let _ = TagRecord::parse(flags, &r.data[2..]);
                    }
                }
                Event::Skipped(n) => {
                    assert!(n > 0);
                    accounted += n;
                }
                Event::BadCrc { .. } => accounted += 1,
            }
        }
        if stale && responses.skip_stale() {
            accounted += 1;
        }
    }
    assert_eq!(accounted + responses.buffered(), bytes.len());

    let mut commands = Decoder::<Command>::new();
    commands.push(bytes);
    while let Some(ev) = commands.next_event() {
        if let Event::Frame(c) = ev {
            let _ = ReadMultiple::parse(&c.data);
            let _ = parse_start_continuous(&c.data);
        }
    }
});
