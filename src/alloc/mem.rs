//! What the lock-free part of the heap needs from memory: words at offsets, and
//! where a small block's owner word is. The heap implements it over a segment; the
//! loom models implement it over an arena of loom atomics.

use crate::loom::AtomicU64;

/// Where a small block lives: its class and the offset of its owner word.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Loc {
    /// Size class.
    pub class: usize,
    /// Offset of the block's owner word.
    pub owner: u64,
}

/// Memory the free lists and caches work on. Offsets are untrusted input: both
/// methods check them and answer `None` for anything that is not what was asked.
pub trait Mem {
    /// The 8-byte-aligned word at `off`, if `off` is inside memory the heap may touch.
    fn word(&self, off: u64) -> Option<&AtomicU64>;
    /// The class and owner word of the small block that starts at `off`, if one does.
    fn locate(&self, off: u64) -> Option<Loc>;
}
