//! `Offset<T>`: a base-relative reference that is checked every time it is used.
#![allow(unsafe_code)]

use std::fmt;
use std::marker::PhantomData;

use crate::error::{Error, Result};
use crate::layout::ShmSafe;

/// A position-independent reference to a `T` inside a segment: a byte offset from
/// the segment base, with `0` meaning null.
///
/// An `Offset` means nothing on its own: it is used only through a segment
/// ([`Segment::resolve`](crate::Segment::resolve) for shared atomics,
/// [`Segment::read`](crate::Segment::read) / [`Segment::write`](crate::Segment::write)
/// for plain data), which checks that it is non-null, aligned for `T` and that the
/// whole `T` lies inside the segment's [raw region](crate::Segment::raw_region)
/// (past the header and registry, outside any heap, below the committed size). An `Offset` read from shared memory is therefore safe to use
/// whatever a peer wrote into it.
///
/// # Examples
///
/// ```
/// use shmkit::{Offset, SegmentOptions};
///
/// let seg = SegmentOptions::heap().no_heap().committed(64 << 10).create()?;
/// let off: Offset<u64> = Offset::new(seg.user_offset());
/// // SAFETY: this program views these offsets as u64 only, from one thread.
/// unsafe {
///     seg.write(off, 7)?;
///     assert_eq!(seg.read(off)?, 7);
///     assert!(seg.read(Offset::<u64>::new(seg.user_offset() + 3)).is_err()); // misaligned
///     assert!(seg.read(Offset::<u64>::new(8)).is_err()); // inside the header
/// }
/// # Ok::<(), shmkit::Error>(())
/// ```
#[repr(transparent)]
pub struct Offset<T> {
    raw: u64,
    _type: PhantomData<fn() -> T>,
}

// SAFETY: a plain u64 with no process-local meaning; every bit pattern is a valid
// (possibly unresolvable) offset.
unsafe impl<T: 'static> ShmSafe for Offset<T> {}

impl<T> Offset<T> {
    /// The null offset.
    pub const NULL: Self = Self::new(0);

    /// An offset of `raw` bytes from the segment base (unchecked until resolved).
    #[inline]
    pub const fn new(raw: u64) -> Self {
        Self {
            raw,
            _type: PhantomData,
        }
    }

    /// The byte offset.
    #[inline]
    pub const fn get(self) -> u64 {
        self.raw
    }

    /// Whether this is the null offset.
    #[inline]
    pub const fn is_null(self) -> bool {
        self.raw == 0
    }

    /// Checks that a `T` at this offset lies wholly inside `[lo, hi)` of a region
    /// whose base is aligned to at least `align_of::<T>()`, and returns the offset
    /// as a `usize` ready to add to the base.
    ///
    /// # Errors
    ///
    /// [`Error::BadOffset`] if the offset is null, misaligned for `T`, below `lo`, or
    /// if `offset + size_of::<T>()` exceeds `hi` (overflow included).
    ///
    /// # Examples
    ///
    /// ```
    /// use shmkit::Offset;
    /// assert_eq!(Offset::<u32>::new(8).check(0, 12)?, 8);
    /// assert!(Offset::<u32>::new(12).check(0, 12).is_err()); // past the end
    /// assert!(Offset::<u32>::new(4).check(8, 12).is_err()); // below the start
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn check(self, lo: u64, hi: u64) -> Result<usize> {
        let size = size_of::<T>();
        let align = align_of::<T>();
        let bad = |reason| Error::BadOffset {
            offset: self.raw,
            size,
            align,
            reason,
        };
        if self.raw == 0 {
            return Err(bad("null"));
        }
        if self.raw % align as u64 != 0 {
            return Err(bad("misaligned"));
        }
        if self.raw < lo {
            return Err(bad("below the user region"));
        }
        match self.raw.checked_add(size as u64) {
            Some(end) if end <= hi => {}
            _ => return Err(bad("out of bounds")),
        }
        usize::try_from(self.raw).map_err(|_| bad("exceeds the address space"))
    }

    /// Reinterprets the offset as pointing to another type.
    #[inline]
    pub const fn cast<U>(self) -> Offset<U> {
        Offset::new(self.raw)
    }
}

impl<T> Clone for Offset<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Offset<T> {}
impl<T> PartialEq for Offset<T> {
    fn eq(&self, other: &Self) -> bool {
        self.raw == other.raw
    }
}
impl<T> Eq for Offset<T> {}
impl<T> std::hash::Hash for Offset<T> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.raw.hash(state);
    }
}
impl<T> fmt::Debug for Offset<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Offset<{}>({:#x})", std::any::type_name::<T>(), self.raw)
    }
}
impl<T> From<Offset<T>> for u64 {
    /// The raw offset, for calls that take any block (see
    /// [`Heap::free`](crate::alloc::Heap::free)).
    #[inline]
    fn from(o: Offset<T>) -> u64 {
        o.raw
    }
}

impl<T> fmt::Display for Offset<T> {
    /// The offset as a number.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.raw, f)
    }
}

impl<T> fmt::LowerHex for Offset<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::LowerHex::fmt(&self.raw, f)
    }
}

impl<T> Default for Offset<T> {
    fn default() -> Self {
        Self::NULL
    }
}
