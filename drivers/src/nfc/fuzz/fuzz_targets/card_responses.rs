//! A hostile or broken card: the tag reader fed arbitrary responses.
//!
//! Input: one ATR selector byte, then responses, each a length byte and
//! that many bytes; when they run out every command gets `6F 00`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracegate_drivers::nfc::card::{read_tag, Transmit, TransmitError};

struct Scripted<'a> {
    rest: &'a [u8],
}

impl Transmit for Scripted<'_> {
    fn transmit(&mut self, _apdu: &[u8]) -> Result<Vec<u8>, TransmitError> {
        let Some((&n, tail)) = self.rest.split_first() else {
            return Ok(vec![0x6F, 0x00]);
        };
        let n = usize::from(n).min(tail.len());
        let (resp, rest) = tail.split_at(n);
        self.rest = rest;
        Ok(resp.to_vec())
    }
}

const ATRS: [&[u8]; 3] = [
    &[0x3B, 0x8F, 0x80, 0x01, 0x80, 0x4F, 0x0C, 0xA0, 0x00, 0x00, 0x03, 0x06, 0x03, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x68],
    &[0x3B, 0x81, 0x80, 0x01, 0x80, 0x80],
    &[0x3B, 0x00],
];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let atr = ATRS[usize::from(sel) % ATRS.len()];
    let _ = read_tag(atr, &mut Scripted { rest });
});
