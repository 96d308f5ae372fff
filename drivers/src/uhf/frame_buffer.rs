//! The byte-stream half of a header + length framed protocol decoder.
//!
//! Both UHF protocols frame as `HEADER | LEN | ...` with a check at the end;
//! they differ in what makes a header plausible, how LEN maps to the frame
//! size and how the check is computed. [`FrameBuffer`] owns the buffering,
//! the resync scan and the stale-partial skip; the protocol decoder owns the
//! rest. Sans-IO and panic-free whatever it is fed.

/// What [`FrameBuffer::scan`] found at the front of the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan<'a> {
    /// This many bytes were discarded to reach the next plausible header (or
    /// the end of the buffer): one resync.
    Skipped(usize),
    /// A complete frame-shaped run, header first, not yet checked. Call
    /// [`FrameBuffer::advance`] with its length if the check passes, or with
    /// 1 if it fails, so a corrupted LEN cannot swallow good frames behind it.
    Frame(&'a [u8]),
}

/// Bytes pushed but not yet decoded. Memory use is bounded by what is pushed
/// between scans plus one frame.
#[derive(Debug, Clone, Default)]
pub struct FrameBuffer {
    buf: Vec<u8>,
    pos: usize,
}

impl FrameBuffer {
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            buf: Vec::with_capacity(capacity),
            pos: 0,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held waiting for the rest of a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// Drops everything buffered (after a port reopen).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.pos = 0;
    }

    /// Gives up on the partial frame at the front: skips its first byte so
    /// the next scan looks after it. Call this when the line has gone quiet
    /// with bytes still buffered: a header-like byte in garbage must not hold
    /// back the real reply behind it until the command times out. Returns
    /// whether anything was skipped.
    pub fn skip_stale(&mut self) -> bool {
        if self.pos < self.buf.len() {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// Consumes `n` bytes from the front (at most what is buffered).
    pub fn advance(&mut self, n: usize) {
        self.pos = self.pos.saturating_add(n).min(self.buf.len());
    }

    /// The next event at the front, or `None` when more bytes are needed.
    ///
    /// `plausible` is given the buffer from a candidate header onwards (as
    /// many bytes as have arrived) and says whether a frame could start
    /// there. A plausible frame's total size is its LEN byte (the second)
    /// plus `overhead`.
    pub fn scan(&mut self, overhead: usize, plausible: impl Fn(&[u8]) -> bool) -> Option<Scan<'_>> {
        let end = self.buf.len();
        if self.pos >= end {
            return None;
        }
        let at = |i: usize| self.buf.get(i..).is_some_and(&plausible);
        if !at(self.pos) {
            let mut i = self.pos + 1;
            while i < end && !at(i) {
                i += 1;
            }
            let skipped = i - self.pos;
            self.pos = i;
            return Some(Scan::Skipped(skipped));
        }
        let total = usize::from(*self.buf.get(self.pos + 1)?) + overhead;
        self.buf.get(self.pos..self.pos + total).map(Scan::Frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_a0(w: &[u8]) -> bool {
        w.first() == Some(&0xA0)
    }

    #[test]
    fn garbage_before_a_header_is_skipped_in_one_resync() {
        let mut b = FrameBuffer::default();
        b.push(&[1, 2, 3, 0xA0, 1, 9, 9]);
        assert_eq!(b.scan(2, header_a0), Some(Scan::Skipped(3)));
        assert_eq!(b.scan(2, header_a0), Some(Scan::Frame(&[0xA0, 1, 9][..])));
        b.advance(3);
        assert_eq!(b.buffered(), 1);
    }

    #[test]
    fn a_partial_frame_waits_for_more_bytes_and_can_be_given_up() {
        let mut b = FrameBuffer::default();
        b.push(&[0xA0, 5, 1]);
        assert_eq!(b.scan(2, header_a0), None);
        assert!(b.skip_stale());
        assert_eq!(b.scan(2, header_a0), Some(Scan::Skipped(2)));
        assert_eq!(b.buffered(), 0);
        assert!(!b.skip_stale());
    }
}
