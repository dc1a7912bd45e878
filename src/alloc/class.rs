//! Size classes and the geometry of the spans that hold them.
//!
//! Forty classes from 16 B to 32 KiB: multiples of 16 up to 128, then four steps
//! per doubling. Every power of two in that range is a class, so a request aligned
//! to `a <= 4096` is served by the power-of-two class `>= max(size, a)` (blocks of a
//! span start on a page and are spaced by their size). Everything larger is a
//! page-granular large block.
//!
//! A span of class `c` is `SPAN_PAGES[c]` pages: first its owner words (8 bytes per
//! block, page-rounded), then the blocks. The geometry is a pure function of the
//! class, so a block's span is found from the page table alone and never from a
//! header a peer could rewrite.

use crate::PAGE_SIZE;

/// Number of small size classes.
pub const CLASSES: usize = 40;

/// Largest small block; bigger requests are large blocks (whole pages).
pub const MAX_SMALL: u64 = 32 << 10;

/// Block size of each class.
pub const SIZES: [u64; CLASSES] = sizes();

const fn sizes() -> [u64; CLASSES] {
    let mut out = [0u64; CLASSES];
    let mut i = 0;
    while i < 8 {
        out[i] = 16 * (i as u64 + 1);
        i += 1;
    }
    let mut base = 128u64;
    while i < CLASSES {
        let mut k = 1;
        while k <= 4 && i < CLASSES {
            out[i] = base + base / 4 * k;
            k += 1;
            i += 1;
        }
        base *= 2;
    }
    out
}

/// Geometry of a span of one class.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct SpanGeometry {
    /// Pages in the span.
    pub pages: u64,
    /// Pages at the start holding the owner words.
    pub meta_pages: u64,
    /// Blocks in the span.
    pub blocks: u64,
    /// Block size.
    pub size: u64,
    /// Blocks moved between a process cache and the shared list at a time.
    pub batch: u32,
    /// Fixed-point reciprocal of `size` (index = delta * recip >> 32).
    pub recip: u64,
}

/// Geometry per class.
pub const GEOMETRY: [SpanGeometry; CLASSES] = geometry();

const fn geometry() -> [SpanGeometry; CLASSES] {
    let mut out = [SpanGeometry {
        pages: 0,
        meta_pages: 0,
        blocks: 0,
        size: 0,
        batch: 0,
        recip: 0,
    }; CLASSES];
    let mut c = 0;
    while c < CLASSES {
        let size = SIZES[c];
        // At least 64 KiB and at least 8 blocks of data.
        let want = if size * 8 > 64 << 10 {
            size * 8
        } else {
            64 << 10
        };
        let pages = want.div_ceil(PAGE_SIZE) + 1;
        let bytes = pages * PAGE_SIZE;
        let mut best_blocks = 0;
        let mut best_meta = 1;
        let mut meta = 1;
        while meta < pages {
            let room = (bytes - meta * PAGE_SIZE) / size;
            let fits = meta * PAGE_SIZE / 8;
            let n = if room < fits { room } else { fits };
            if n > best_blocks {
                best_blocks = n;
                best_meta = meta;
            }
            meta += 1;
        }
        // At least 8: one cache line of owner words, so two processes working on
        // their own batches do not share a line.
        let batch = {
            let b = (16 << 10) / size;
            if b < 8 {
                8
            } else if b > 64 {
                64
            } else {
                b
            }
        };
        out[c] = SpanGeometry {
            pages,
            meta_pages: best_meta,
            blocks: best_blocks,
            size,
            batch: batch as u32,
            recip: (1u64 << 32).div_ceil(size),
        };
        c += 1;
    }
    out
}

/// The class serving `size` bytes aligned to `align` (a power of two), or `None` if
/// it is a large block.
#[inline]
pub fn class_of(size: u64, align: u64) -> Option<usize> {
    if align <= 16 {
        if size <= 128 {
            return Some((size.max(1) as usize - 1) / 16);
        }
        if size > MAX_SMALL {
            return None;
        }
        // Four classes per doubling above 128: find the doubling, then the step.
        let log = 63 - (size - 1).leading_zeros() as usize; // 2^log < size <= 2^(log+1)
        let base = 1u64 << log;
        let step = (size - base).div_ceil(base / 4) as usize; // 1..=4
        Some(8 + (log - 7) * 4 + step - 1)
    } else {
        let want = size.max(align).next_power_of_two();
        if want > MAX_SMALL {
            return None;
        }
        class_of(want, 16)
    }
}

/// Index of the block at `delta` bytes into the block area of class `c`, if `delta`
/// is exactly on a block boundary inside the span.
#[inline]
pub fn block_index(c: usize, delta: u64) -> Option<u64> {
    let g = &GEOMETRY[c];
    // delta < 2^20 (spans are at most 256 KiB of blocks), so the product fits.
    let idx = (delta * g.recip) >> 32;
    (idx < g.blocks && idx * g.size == delta).then_some(idx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_cover_every_size_and_alignment() {
        assert_eq!(SIZES[0], 16);
        assert_eq!(SIZES[CLASSES - 1], MAX_SMALL);
        for w in SIZES.windows(2) {
            assert!(w[0] < w[1] && w[1] % 16 == 0);
        }
        for size in 1..=MAX_SMALL {
            let c = class_of(size, 8).unwrap();
            assert!(SIZES[c] >= size, "size {size} class {c}");
            assert!(c == 0 || SIZES[c - 1] < size, "size {size} not tight");
        }
        assert_eq!(class_of(MAX_SMALL + 1, 8), None);
        for align in [32u64, 64, 256, 4096] {
            for size in [1u64, 17, 100, 4000, 5000] {
                match class_of(size, align) {
                    Some(c) => {
                        assert!(SIZES[c].is_power_of_two() && SIZES[c] % align == 0);
                        assert!(SIZES[c] >= size);
                    }
                    None => assert!(size.max(align).next_power_of_two() > MAX_SMALL),
                }
            }
        }
    }

    #[test]
    fn spans_are_sane() {
        for (c, g) in GEOMETRY.iter().enumerate() {
            assert!(g.blocks >= 8, "class {c}: {g:?}");
            assert!(g.blocks * 8 <= g.meta_pages * PAGE_SIZE);
            assert!(g.meta_pages * PAGE_SIZE + g.blocks * g.size <= g.pages * PAGE_SIZE);
            assert!(g.pages <= 64 + 1);
            for i in [0, 1, g.blocks / 2, g.blocks - 1] {
                assert_eq!(block_index(c, i * g.size), Some(i));
                if g.size > 16 {
                    assert_eq!(block_index(c, i * g.size + 16), None);
                }
            }
            assert_eq!(block_index(c, g.blocks * g.size), None);
        }
    }
}
