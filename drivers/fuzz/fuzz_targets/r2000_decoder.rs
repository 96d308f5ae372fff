//! Feeds arbitrary bytes, in arbitrary pieces, to the R2000 decoder and the
//! inventory parser, checking that nothing panics, that every byte is
//! accounted for, and that decoded frames re-encode to what was decoded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracegate_drivers::r2000::codec::{parse_inventory, Decoder, Event};

fuzz_target!(|input: &[u8]| {
    let Some((&ctl, bytes)) = input.split_first() else {
        return;
    };
    let chunk = usize::from(ctl & 0x3F).max(1);
    let stale = ctl & 0x40 != 0;
    let mut dec = if ctl & 0x80 != 0 {
        Decoder::with_address(0x01)
    } else {
        Decoder::new()
    };
    let mut accounted = 0usize;
    for piece in bytes.chunks(chunk) {
        dec.push(piece);
        while let Some(ev) = dec.next_event() {
            match ev {
                Event::Frame(f) => {
                    let again = f.encode().expect("decoded frame re-encodes");
                    assert_eq!(again.len(), f.data.len() + 5);
                    accounted += again.len();
                    let _ = parse_inventory(&f, false);
                    let _ = parse_inventory(&f, true);
                }
                Event::Skipped(n) => {
                    assert!(n > 0);
                    accounted += n;
                }
                Event::BadChecksum { .. } => accounted += 1,
            }
        }
        if stale && dec.skip_stale() {
            accounted += 1;
        }
    }
    assert_eq!(accounted + dec.buffered(), bytes.len());
});
