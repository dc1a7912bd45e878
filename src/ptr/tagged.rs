//! A tagged offset in one 64-bit word, for ABA-safe compare-and-swap.
//!
//! Layout of the word: the high 32 bits are the tag, the low 32 bits are the offset
//! divided by [`Tagged::GRANULE`]. Every successful CAS that changes the offset bumps
//! the tag, so a head that went A → B → A between a load and a CAS fails the CAS
//! unless exactly 2^32 updates happened in between.
#![allow(unsafe_code)]

use crate::loom::{AtomicU64, Ordering};

/// An offset (a multiple of [`Tagged::GRANULE`], below [`Tagged::MAX_OFFSET`]) plus a
/// 32-bit ABA tag.
///
/// # Examples
///
/// ```
/// use shmkit::Tagged;
/// let t = Tagged::new(4096, 7).unwrap();
/// let u = t.with_offset(64).unwrap();
/// assert_eq!((u.offset(), u.tag()), (64, 8));
/// ```
#[derive(Copy, Clone, PartialEq, Eq, Debug, Default)]
pub struct Tagged(u64);

impl Tagged {
    /// Offsets in a tagged word are multiples of this many bytes.
    pub const GRANULE: u64 = 16;
    /// The first offset that does not fit (64 GiB).
    pub const MAX_OFFSET: u64 = (1u64 << 32) * Self::GRANULE;

    /// Packs `offset` and `tag`, or `None` if the offset is misaligned or too large.
    #[inline]
    pub const fn new(offset: u64, tag: u32) -> Option<Self> {
        if offset % Self::GRANULE != 0 || offset >= Self::MAX_OFFSET {
            return None;
        }
        Some(Self(((tag as u64) << 32) | (offset / Self::GRANULE)))
    }

    /// The offset in bytes (always a multiple of [`Self::GRANULE`]).
    #[inline]
    pub const fn offset(self) -> u64 {
        (self.0 & 0xffff_ffff) * Self::GRANULE
    }

    /// The ABA tag.
    #[inline]
    pub const fn tag(self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// The successor word: `offset` with the tag bumped by one (wrapping).
    #[inline]
    pub const fn with_offset(self, offset: u64) -> Option<Self> {
        Self::new(offset, self.tag().wrapping_add(1))
    }

    /// The raw word.
    #[inline]
    pub const fn to_bits(self) -> u64 {
        self.0
    }

    /// From a raw word (any value is a valid `Tagged`; its offset is still checked
    /// when resolved).
    #[inline]
    pub const fn from_bits(bits: u64) -> Self {
        Self(bits)
    }
}

/// An atomic [`Tagged`] word, to be placed in a segment.
///
/// # Examples
///
/// ```
/// use shmkit::{AtomicTagged, Tagged};
/// use std::sync::atomic::Ordering;
/// let head = AtomicTagged::new(Tagged::new(0, 0).unwrap());
/// let cur = head.load(Ordering::Acquire);
/// let next = cur.with_offset(32).unwrap();
/// assert!(head.compare_exchange(cur, next, Ordering::AcqRel, Ordering::Acquire).is_ok());
/// assert!(head.compare_exchange(cur, next, Ordering::AcqRel, Ordering::Acquire).is_err());
/// ```
#[repr(transparent)]
#[derive(Debug)]
pub struct AtomicTagged(AtomicU64);

// SAFETY: repr(transparent) over an AtomicU64; every bit pattern is a valid Tagged.
unsafe impl crate::ShmSafe for AtomicTagged {}
// SAFETY: its only byte range is the AtomicU64.
unsafe impl crate::ShmShared for AtomicTagged {}

impl AtomicTagged {
    /// A new word (use `ptr::write` to place it in a segment).
    pub fn new(value: Tagged) -> Self {
        Self(AtomicU64::new(value.0))
    }

    /// Loads the word.
    #[inline]
    pub fn load(&self, order: Ordering) -> Tagged {
        Tagged(self.0.load(order))
    }

    /// Stores the word.
    #[inline]
    pub fn store(&self, value: Tagged, order: Ordering) {
        self.0.store(value.0, order);
    }

    /// Compare-and-swap on the whole word (offset and tag).
    ///
    /// # Errors
    ///
    /// The current value if it was not `current`.
    #[inline]
    pub fn compare_exchange(
        &self,
        current: Tagged,
        new: Tagged,
        success: Ordering,
        failure: Ordering,
    ) -> Result<Tagged, Tagged> {
        self.0
            .compare_exchange(current.0, new.0, success, failure)
            .map(Tagged)
            .map_err(Tagged)
    }
}
