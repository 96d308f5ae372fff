//! MSB-first bit access over a byte slice.

/// Reads `n` (≤ 64) bits starting at bit `pos`; `None` if they run past the end.
pub(crate) fn read(bytes: &[u8], pos: usize, n: usize) -> Option<u64> {
    if n > 64 || pos.checked_add(n)? > bytes.len() * 8 {
        return None;
    }
    let mut v: u64 = 0;
    for i in pos..pos + n {
        let bit = (bytes[i / 8] >> (7 - i % 8)) & 1;
        v = (v << 1) | u64::from(bit);
    }
    Some(v)
}

/// Appends bits MSB first; the final partial byte is zero-padded.
#[derive(Debug, Default)]
pub(crate) struct Writer {
    pub(crate) bytes: Vec<u8>,
    pub(crate) len: usize,
}

impl Writer {
    pub(crate) fn push(&mut self, value: u64, n: usize) {
        for i in (0..n).rev() {
            let bit = if i >= 64 { 0 } else { ((value >> i) & 1) as u8 };
            if self.len.is_multiple_of(8) {
                self.bytes.push(0);
            }
            if bit == 1 {
                if let Some(last) = self.bytes.last_mut() {
                    *last |= 1 << (7 - self.len % 8);
                }
            }
            self.len += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_and_write_agree() {
        let mut w = Writer::default();
        w.push(0x30, 8);
        w.push(3, 3);
        w.push(5, 3);
        w.push(0x3FF_FFFF_FFFF, 42);
        assert_eq!(w.len, 56);
        assert_eq!(read(&w.bytes, 0, 8), Some(0x30));
        assert_eq!(read(&w.bytes, 8, 3), Some(3));
        assert_eq!(read(&w.bytes, 11, 3), Some(5));
        assert_eq!(read(&w.bytes, 14, 42), Some(0x3FF_FFFF_FFFF));
        assert_eq!(read(&w.bytes, 50, 7), None);
    }
}
