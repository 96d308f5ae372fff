//! Unit-test support for the UHF codecs: hex vectors and driving a decoder
//! over a byte stream the way a serial port delivers it.

use super::link::{Decoded, FrameDecoder};

/// Bytes from a hex string with whitespace between bytes (`"A0 04 01"`).
pub(crate) fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect()
}

/// What decoding a whole stream produced.
#[derive(Debug)]
pub(crate) struct Tally<F> {
    pub(crate) frames: Vec<F>,
    /// Bytes skipped while resynchronising.
    pub(crate) skipped: usize,
    /// Frame-shaped runs whose check failed.
    pub(crate) bad_checks: usize,
    /// Bytes consumed, counting each frame as `frame_len` says.
    pub(crate) consumed: usize,
    /// Bytes left waiting for the rest of a frame.
    pub(crate) buffered: usize,
}

/// Pushes `bytes` into `dec` in pieces of `chunk` bytes, draining events
/// after each piece.
pub(crate) fn decode_in_pieces<D: FrameDecoder>(
    dec: &mut D,
    bytes: &[u8],
    chunk: usize,
    mut frame_len: impl FnMut(&D::Frame) -> usize,
) -> Tally<D::Frame> {
    let mut t = Tally {
        frames: Vec::new(),
        skipped: 0,
        bad_checks: 0,
        consumed: 0,
        buffered: 0,
    };
    for piece in bytes.chunks(chunk.max(1)) {
        dec.push(piece);
        while let Some(e) = dec.next_decoded() {
            match e {
                Decoded::Frame(f) => {
                    t.consumed += frame_len(&f);
                    t.frames.push(f);
                }
                Decoded::Skipped(n) => {
                    t.skipped += n;
                    t.consumed += n;
                }
                Decoded::BadCheck { .. } => {
                    t.bad_checks += 1;
                    t.consumed += 1;
                }
            }
        }
    }
    t.buffered = dec.buffered();
    t
}
