//! Sorted disjoint runs of numbers, Elias-Fano coded in blocks: the
//! commissioned serials of one GTIN.
//!
//! Commissioning in sequence gives a few long runs; a registry that lists
//! unrelated serials gives millions of one-number runs spread over
//! SGTIN-96's 38-bit serial space, and that worst case decides the
//! gateway's memory (issue 13: 10 million serials within 32 MiB of RSS).
//! Varint gaps took ~3 bytes a serial there (a 17-bit gap plus the
//! "has a length" bit is 3 varint bytes). Elias-Fano takes 2 + log2(U/n)
//! bits a number whatever the gaps' distribution: the low `l` bits of each
//! start (relative to its block's first) packed at a fixed width, the rest
//! in unary; ~2.35 bytes a serial for that shape (2.46 with the blocks'
//! heads and offsets: 23.5 MiB for 10 million), close to the ~2.3 bytes any
//! encoding of a random subset of that size needs.
//!
//! Each block of up to [`BLOCK`] runs is, from its byte offset:
//!
//! | bytes | content |
//! |---|---|
//! | 1 | `l` (bits 0-5), bit 7: some run is longer than one number |
//! | ceil(n * l / 8) | low bits of each start - head, `l` bits each, LSB first |
//! | ceil(n / 8) | only with bit 7: bit i set when run i has a length |
//! | 1 | only with bit 7: `w`, the width of the lengths (1 to 64) |
//! | ceil(k * w / 8) | only with bit 7: last - first of the k runs with a length, `w` bits each |
//! | ceil((n + 1 + (u >> l)) / 8) | high bits: run i sets bit `((start - head) >> l) + i` |
//!
//! where n is the block's run count (known from the total), u the last
//! start minus the head, and `l = floor(log2(u / n))` (0 when u < n), which
//! bounds the high bits at 3n. A lookup binary-searches the blocks' heads,
//! then decodes at most [`BLOCK`] starts (a trailing-zeros scan of the high
//! bits and one fixed-width read each) and at most one length.

/// Runs per block: a lookup decodes at most this many starts.
pub const BLOCK: usize = 128;

/// Zero bytes after the last block, so every fixed-width read can load 16
/// bytes from any bit position inside the data without a length check.
const PAD: usize = 16;

/// Sorted, disjoint, non-adjacent inclusive runs of numbers, compressed
/// (module docs). Immutable once built; [`RangeSet::union`] builds a new
/// one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeSet {
    /// First number of each block.
    heads: Vec<u64>,
    /// Where each block starts in `bytes`.
    offsets: Vec<usize>,
    /// The blocks, then [`PAD`] zero bytes (empty for an empty set).
    bytes: Vec<u8>,
    runs: usize,
}

fn mask(width: u32) -> u128 {
    (1u128 << width) - 1
}

/// `width` (at most 64) bits at bit position `pos` of `bytes`, LSB first.
/// Zero past the data (never read for a well-formed set: [`PAD`]).
fn read_bits(bytes: &[u8], pos: usize, width: u32) -> u64 {
    let at = pos / 8;
    let Some(word) = bytes
        .get(at..at + 16)
        .and_then(|s| <[u8; 16]>::try_from(s).ok())
    else {
        return 0;
    };
    ((u128::from_le_bytes(word) >> (pos % 8)) & mask(width)) as u64
}

/// Appends bit fields to a byte vector, LSB first.
struct BitWriter<'a> {
    out: &'a mut Vec<u8>,
    acc: u128,
    bits: u32,
}

impl<'a> BitWriter<'a> {
    fn new(out: &'a mut Vec<u8>) -> Self {
        BitWriter {
            out,
            acc: 0,
            bits: 0,
        }
    }

    /// The low `width` (at most 64) bits of `v`.
    fn put(&mut self, v: u64, width: u32) {
        if width == 0 {
            return;
        }
        self.acc |= (u128::from(v) & mask(width)) << self.bits;
        self.bits += width;
        while self.bits >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.bits -= 8;
        }
    }

    fn zeros(&mut self, mut n: u64) {
        while n > 0 {
            let k = n.min(64);
            self.put(0, k as u32);
            n -= k;
        }
    }

    /// Pads to a whole byte.
    fn align(&mut self) {
        if self.bits > 0 {
            self.out.push(self.acc as u8);
            self.acc = 0;
            self.bits = 0;
        }
    }
}

/// Appends one block (`runs` sorted, disjoint, non-empty, at most
/// [`BLOCK`]) to `out`.
fn encode_block(out: &mut Vec<u8>, runs: &[(u64, u64)]) {
    let Some(&(head, _)) = runs.first() else {
        return;
    };
    let n = runs.len() as u64;
    let u = runs.last().map_or(0, |r| r.0 - head);
    let l = match u / n {
        0 => 0,
        q => 63 - q.leading_zeros(),
    };
    let lens = runs.iter().filter(|(a, z)| z > a).count();
    out.push(l as u8 | if lens > 0 { 0x80 } else { 0 });
    let mut w = BitWriter::new(out);
    for &(a, _) in runs {
        w.put(a - head, l);
    }
    w.align();
    if lens > 0 {
        for &(a, z) in runs {
            w.put(u64::from(z > a), 1);
        }
        w.align();
        let max = runs.iter().map(|(a, z)| z - a).max().unwrap_or(0);
        let width = 64 - max.leading_zeros();
        w.put(u64::from(width), 8);
        for &(a, z) in runs.iter().filter(|(a, z)| z > a) {
            w.put(z - a, width);
        }
        w.align();
    }
    let mut prev_high = 0;
    for &(a, _) in runs {
        let high = (a - head) >> l;
        w.zeros(high - prev_high);
        w.put(1, 1);
        prev_high = high;
    }
    w.align();
}

/// Decodes the runs of one block in order.
#[derive(Debug)]
struct Block<'a> {
    bytes: &'a [u8],
    head: u64,
    n: usize,
    l: u32,
    low_at: usize,
    /// Bit positions of the length bitmap and of the packed lengths, and
    /// their width (0: no run of this block has a length).
    bitmap_at: usize,
    lens_at: usize,
    width: u32,
    high_at: usize,
    /// Bit position (from `high_at`) where the next start's unary code
    /// begins, and how many starts were decoded.
    hp: usize,
    i: usize,
}

impl<'a> Block<'a> {
    fn new(bytes: &'a [u8], at: usize, head: u64, n: usize) -> Block<'a> {
        let first = bytes.get(at).copied().unwrap_or(0);
        let l = u32::from(first & 0x3F);
        let low_at = (at + 1) * 8;
        let after_low = low_at + (n * l as usize).div_ceil(8) * 8;
        let (bitmap_at, lens_at, width, high_at) = if first & 0x80 != 0 {
            let bitmap_at = after_low;
            let width_at = bitmap_at + n.div_ceil(8) * 8;
            let width = read_bits(bytes, width_at, 8) as u32;
            let lens_at = width_at + 8;
            let k = Self::ones_below(bytes, bitmap_at, n);
            let high_at = lens_at + (k * width as usize).div_ceil(8) * 8;
            (bitmap_at, lens_at, width.min(64), high_at)
        } else {
            (after_low, after_low, 0, after_low)
        };
        Block {
            bytes,
            head,
            n,
            l,
            low_at,
            bitmap_at,
            lens_at,
            width,
            high_at,
            hp: 0,
            i: 0,
        }
    }

    /// Set bits among the first `i` bits from bit position `at`.
    fn ones_below(bytes: &[u8], at: usize, i: usize) -> usize {
        let mut ones = 0;
        let mut done = 0;
        while done < i {
            let k = (i - done).min(64);
            ones += read_bits(bytes, at + done, k as u32).count_ones() as usize;
            done += k;
        }
        ones
    }

    /// The next start, relative to the head, and its index in the block.
    fn next_start(&mut self) -> Option<(usize, u64)> {
        if self.i >= self.n {
            return None;
        }
        // The unary codes of the block's starts end within 3n bits of
        // `high_at` (module docs); stop at the data's end whatever happens.
        let limit = self.bytes.len() * 8;
        loop {
            let pos = self.high_at + self.hp;
            if pos >= limit {
                return None;
            }
            let word = read_bits(self.bytes, pos, 64);
            if word == 0 {
                self.hp += 64;
                continue;
            }
            self.hp += word.trailing_zeros() as usize;
            break;
        }
        let i = self.i;
        let high = (self.hp - i) as u64;
        self.hp += 1;
        self.i += 1;
        let low = read_bits(self.bytes, self.low_at + i * self.l as usize, self.l);
        Some((i, (high << self.l) | low))
    }

    /// Last minus first of run `i`.
    fn len(&self, i: usize) -> u64 {
        if self.width == 0 || read_bits(self.bytes, self.bitmap_at + i, 1) == 0 {
            return 0;
        }
        let rank = Self::ones_below(self.bytes, self.bitmap_at, i);
        read_bits(
            self.bytes,
            self.lens_at + rank * self.width as usize,
            self.width,
        )
    }
}

impl Iterator for Block<'_> {
    type Item = (u64, u64);

    fn next(&mut self) -> Option<(u64, u64)> {
        let (i, v) = self.next_start()?;
        let start = self.head.wrapping_add(v);
        Some((start, start.wrapping_add(self.len(i))))
    }
}

/// Builds a [`RangeSet`] from runs pushed in order.
#[derive(Debug, Default)]
struct Writer {
    set: RangeSet,
    block: Vec<(u64, u64)>,
}

impl Writer {
    /// Appends a run that starts at least 2 above the last one's end.
    fn push(&mut self, run: (u64, u64)) {
        self.block.push(run);
        if self.block.len() == BLOCK {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if let Some(&(head, _)) = self.block.first() {
            self.set.heads.push(head);
            self.set.offsets.push(self.set.bytes.len());
            encode_block(&mut self.set.bytes, &self.block);
            self.set.runs += self.block.len();
            self.block.clear();
        }
    }

    fn finish(mut self) -> RangeSet {
        self.flush();
        let set = self.set;
        if set.runs == 0 {
            return RangeSet::default();
        }
        // Copied into allocations of the exact size: `shrink_to_fit` is a
        // realloc, which an allocator may answer by keeping the block
        // (mimalloc does when more than half is used), leaving up to half
        // of a doubled vector resident for as long as the index lives.
        let mut bytes = Vec::with_capacity(set.bytes.len() + PAD);
        bytes.extend_from_slice(&set.bytes);
        bytes.resize(set.bytes.len() + PAD, 0);
        RangeSet {
            heads: set.heads.as_slice().to_vec(),
            offsets: set.offsets.as_slice().to_vec(),
            bytes,
            runs: set.runs,
        }
    }
}

impl RangeSet {
    /// Merges overlapping and adjacent runs (sorting `runs` in place, so
    /// building from millions of single serials holds no second copy of
    /// them), then compresses them.
    pub fn from_ranges(mut runs: Vec<(u64, u64)>) -> RangeSet {
        runs.sort_unstable();
        Self::from_sorted(runs.into_iter())
    }

    /// This set plus `runs` (in any order), as a new set.
    pub fn union(&self, mut runs: Vec<(u64, u64)>) -> RangeSet {
        runs.sort_unstable();
        let mut a = self.iter_runs().peekable();
        let mut b = runs.into_iter().peekable();
        let merged = std::iter::from_fn(move || match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if x <= y => a.next(),
            (Some(_), Some(_)) | (None, _) => b.next(),
            (Some(_), None) => a.next(),
        });
        Self::from_sorted(merged)
    }

    /// Runs sorted by start (overlapping or adjacent ones are merged).
    fn from_sorted(sorted: impl Iterator<Item = (u64, u64)>) -> RangeSet {
        let mut w = Writer::default();
        let mut cur: Option<(u64, u64)> = None;
        for (a, z) in sorted.filter(|(a, z)| a <= z) {
            if let Some(c) = cur.as_mut() {
                if a <= c.1.saturating_add(1) {
                    c.1 = c.1.max(z);
                    continue;
                }
            }
            if let Some(done) = cur.replace((a, z)) {
                w.push(done);
            }
        }
        if let Some(done) = cur {
            w.push(done);
        }
        w.finish()
    }

    fn block(&self, b: usize) -> Block<'_> {
        Block::new(
            &self.bytes,
            self.offsets.get(b).copied().unwrap_or(usize::MAX),
            self.heads.get(b).copied().unwrap_or_default(),
            BLOCK.min(self.runs.saturating_sub(b * BLOCK)),
        )
    }

    pub fn contains(&self, x: u64) -> bool {
        let b = self.heads.partition_point(|&h| h <= x);
        let Some(b) = b.checked_sub(1) else {
            return false;
        };
        let mut block = self.block(b);
        let d = x - block.head;
        // The last start at or below x: x is in the set if it is x, or its
        // run reaches x.
        let mut last = None;
        while let Some((i, v)) = block.next_start() {
            if v > d {
                break;
            }
            last = Some((i, v));
            if v == d {
                break;
            }
        }
        match last {
            Some((_, v)) if v == d => true,
            Some((i, v)) => block.len(i) >= d - v,
            None => false,
        }
    }

    pub fn runs(&self) -> usize {
        self.runs
    }

    /// How many numbers the set holds (saturating).
    pub fn count(&self) -> u64 {
        self.iter_runs()
            .fold(0u64, |n, (a, z)| n.saturating_add(z - a).saturating_add(1))
    }

    pub fn iter_runs(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        (0..self.heads.len()).flat_map(|b| self.block(b))
    }

    /// Bytes the set holds (for the bench and status).
    pub fn heap_bytes(&self) -> usize {
        self.heads.capacity() * 8 + self.offsets.capacity() * 8 + self.bytes.capacity()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The merged runs, the plain way.
    fn plain(mut runs: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
        runs.retain(|(a, z)| a <= z);
        runs.sort_unstable();
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (a, z) in runs {
            match out.last_mut() {
                Some(l) if a <= l.1.saturating_add(1) => l.1 = l.1.max(z),
                _ => out.push((a, z)),
            }
        }
        out
    }

    fn inside(plain: &[(u64, u64)], x: u64) -> bool {
        let i = plain.partition_point(|&(a, _)| a <= x);
        i > 0 && plain[i - 1].1 >= x
    }

    /// Gaps of every scale in one set: dense, SGTIN-96-sparse, and huge,
    /// so blocks get every low-bit width from 0 to 63.
    fn gap() -> impl Strategy<Value = u64> {
        prop_oneof![
            2u64..4,
            2u64..300,
            50_000u64..250_000,
            2u64..(1 << 40),
            Just(1u64 << 62),
        ]
    }

    fn len() -> impl Strategy<Value = u64> {
        prop_oneof![
            4 => Just(0u64),
            2 => 0u64..200,
            1 => any::<u64>().prop_map(|l| l >> 20),
        ]
    }

    /// Runs built from gaps and lengths: sorted and disjoint by
    /// construction, up to several blocks.
    fn gapped_runs() -> impl Strategy<Value = Vec<(u64, u64)>> {
        (
            any::<u64>(),
            proptest::collection::vec((gap(), len()), 0..700),
        )
            .prop_map(|(first, steps)| {
                let mut at = first >> 2;
                let mut out = Vec::new();
                for (g, l) in steps {
                    let Some(z) = at.checked_add(l) else { break };
                    out.push((at, z));
                    let Some(next) = z.checked_add(g) else { break };
                    at = next;
                }
                out
            })
    }

    proptest! {
        /// Every run's ends, the numbers next to them and numbers in the
        /// gaps answer as a plain sorted list of runs does; decoding gives
        /// back exactly the runs.
        #[test]
        fn elias_fano_blocks_agree_with_a_plain_list_of_runs(runs in gapped_runs(), probes in proptest::collection::vec(any::<u64>(), 0..50)) {
            let set = RangeSet::from_ranges(runs.clone());
            let want = plain(runs);
            prop_assert_eq!(set.iter_runs().collect::<Vec<_>>(), want.clone());
            prop_assert_eq!(set.runs(), want.len());
            for (k, &(a, z)) in want.iter().enumerate() {
                let next = want.get(k + 1).map_or(u64::MAX, |r| r.0);
                let mid_gap = z + (next - z) / 2;
                for x in [a.wrapping_sub(1), a, a.saturating_add(1), a + (z - a) / 2, z.saturating_sub(1), z, z.wrapping_add(1), mid_gap] {
                    prop_assert_eq!(set.contains(x), inside(&want, x), "x = {}", x);
                }
            }
            for x in probes {
                prop_assert_eq!(set.contains(x), inside(&want, x), "x = {}", x);
            }
        }

        /// Lookups agree with a naive set of the numbers, on a small domain
        /// where runs overlap, touch and nest.
        #[test]
        fn lookups_agree_with_a_naive_set(runs in proptest::collection::vec((0u64..2_000, 0u64..30), 0..400)) {
            let runs: Vec<(u64, u64)> = runs.into_iter().map(|(a, l)| (a, a + l)).collect();
            let naive: std::collections::BTreeSet<u64> = runs.iter().flat_map(|&(a, z)| a..=z).collect();
            let set = RangeSet::from_ranges(runs);
            for x in 0..2_100 {
                prop_assert_eq!(set.contains(x), naive.contains(&x), "x = {}", x);
            }
            prop_assert_eq!(set.count(), naive.len() as u64);
        }
    }

    #[test]
    fn extreme_runs_and_widths_round_trip() {
        let cases: Vec<Vec<(u64, u64)>> = vec![
            vec![(0, u64::MAX)],
            vec![(0, 0), (u64::MAX, u64::MAX)],
            vec![(0, u64::MAX - 2), (u64::MAX, u64::MAX)],
            vec![(5, 5), (1 << 63, (1 << 63) + 7), (u64::MAX - 1, u64::MAX)],
            (0..BLOCK as u64 * 3 + 1).map(|i| (i * 2, i * 2)).collect(),
            (0..BLOCK as u64 + 1)
                .map(|i| (i << 56, (i << 56) + (1 << 55)))
                .collect(),
        ];
        for runs in cases {
            let set = RangeSet::from_ranges(runs.clone());
            let want = plain(runs);
            assert_eq!(set.iter_runs().collect::<Vec<_>>(), want);
            for &(a, z) in &want {
                for x in [a.wrapping_sub(1), a, z, z.wrapping_add(1)] {
                    assert_eq!(set.contains(x), inside(&want, x), "x = {x}");
                }
            }
        }
        assert!(!RangeSet::default().contains(0));
        assert_eq!(RangeSet::from_ranges(vec![]), RangeSet::default());
    }

    #[test]
    fn unrelated_serials_over_sgtin96_cost_under_2_5_bytes_each() {
        // 2.5 million serials per GTIN spread over SGTIN-96's 38-bit serial
        // space (one at a random place in each stride of ~110,000, as
        // .ci/masterdata-rss.py's random shape): Elias-Fano's
        // 2 + log2(U/n) bits plus block heads and offsets.
        let stride = (1u64 << 38) / 2_500_000;
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let runs: Vec<(u64, u64)> = (0..200_000u64)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let s = i * stride + 1 + x % (stride - 1);
                (s, s)
            })
            .collect();
        let set = RangeSet::from_ranges(runs.clone());
        assert_eq!(set.runs(), 200_000);
        assert!(
            set.heap_bytes() * 10 < 200_000 * 25,
            "{} bytes",
            set.heap_bytes()
        );
        for &(s, _) in runs.iter().step_by(997) {
            assert!(set.contains(s) && !set.contains(s + 1) && !set.contains(s - 1));
        }
    }
}
