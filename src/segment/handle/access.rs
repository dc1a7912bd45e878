//! Typed access to the raw region: resolving, placing, reading and writing values
//! at offsets (the escape hatch beside the heap and the directory).
#![allow(unsafe_code)]

use std::ptr::NonNull;

use crate::error::{Error, Result};
use crate::layout::{PAGE_SIZE, ShmSafe, ShmShared};
use crate::ptr::Offset;

use super::Segment;

impl Segment {
    /// The raw region: the offsets where [`resolve`](Self::resolve),
    /// [`resolve_ptr`](Self::resolve_ptr), [`place`](Self::place),
    /// [`read`](Self::read) and [`write`](Self::write) may place objects at fixed
    /// offsets. The whole user region in a segment made with
    /// [`no_heap`](crate::SegmentOptions::no_heap); the part reserved with
    /// [`raw_region`](crate::SegmentOptions::raw_region) before the heap otherwise
    /// (empty by default). Only its committed part can be used.
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().raw_region(8192).create()?;
    /// assert_eq!(seg.raw_region(), seg.user_offset()..seg.user_offset() + 8192);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn raw_region(&self) -> std::ops::Range<u64> {
        self.inner.fields.user_offset..self.inner.fields.raw_end
    }

    /// The error for a raw access that failed the bounds check: `RegionInUse` if it
    /// reached into the heap, the check's own error otherwise.
    #[cold]
    pub(super) fn outside_raw(&self, off: u64, size: u64, e: Error) -> Error {
        let f = &self.inner.fields;
        let reaches_heap = f.heap_offset != 0
            && off >= f.user_offset
            && off.saturating_add(size) > f.raw_end
            && off < f.max_size;
        if reaches_heap {
            Error::RegionInUse {
                by: "the heap",
                detail: format!(
                    "raw placement at {off:#x} (+{size} B) reaches past the raw region \
                     [{:#x}, {:#x}) into the heap; reserve room with \
                     SegmentOptions::raw_region, make the segment with no_heap(), \
                     or allocate the object from the heap or the directory",
                    f.user_offset, f.raw_end
                ),
            }
        } else {
            e
        }
    }

    /// Resolves `offset` to a shared reference into the
    /// [raw region](Self::raw_region) (past the header and registry, outside any
    /// heap, inside the committed size), for types made of atomics only.
    ///
    /// # Safety
    ///
    /// Within this process, while the returned value is in use, the bytes of the
    /// `T` must not be accessed through an overlapping view of another type (a
    /// differently sized atomic, or a plain read or write through `read`/`write`):
    /// Rust forbids such mixed accesses even though the hardware allows them.
    /// Writes by *other processes* are not this caller's concern: they are what a
    /// peer can always do, and `T: ShmSafe` makes every value they leave valid.
    /// Typed objects handed out by name (the directory) will make this safe.
    ///
    /// # Errors
    ///
    /// [`Error::BadOffset`] if the offset is null, misaligned for `T`, below
    /// [`user_offset`](Self::user_offset), or if the `T` would extend past the
    /// committed size; [`Error::RegionInUse`] if it would reach past the raw
    /// region into the heap.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmkit::{Offset, SegmentOptions};
    /// use std::sync::atomic::{AtomicU32, Ordering};
    /// let seg = SegmentOptions::heap().no_heap().committed(64 << 10).create()?;
    /// // SAFETY: this program views this offset as an AtomicU32 only.
    /// let word = unsafe { seg.resolve(Offset::<AtomicU32>::new(seg.user_offset()))? };
    /// word.store(5, Ordering::Relaxed);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub unsafe fn resolve<T: ShmShared>(&self, offset: Offset<T>) -> Result<&T> {
        let p = self.resolve_ptr(offset)?;
        // SAFETY: in bounds and aligned (resolve_ptr); T: ShmShared (atomics or
        // lock-protected cells, any bits valid) and no overlapping other-typed view
        // (our caller's contract); the reference borrows `self`, keeping the map.
        Ok(unsafe { p.as_ref() })
    }

    /// Checks `offset` as [`resolve`](Self::resolve) does and returns a raw pointer
    /// to the `T`, for any [`ShmSafe`] type. Dereferencing it is the caller's
    /// business (peers may be writing it).
    ///
    /// # Errors
    ///
    /// As [`resolve`](Self::resolve).
    ///
    /// # Examples
    ///
    /// ```
    /// use shmkit::{Offset, SegmentOptions};
    /// let seg = SegmentOptions::heap().no_heap().committed(64 << 10).create()?;
    /// let p = seg.resolve_ptr(Offset::<[u8; 16]>::new(seg.user_offset()))?;
    /// assert_eq!(p.as_ptr() as usize, seg.as_ptr() as usize + seg.user_offset() as usize);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn resolve_ptr<T: ShmSafe>(&self, offset: Offset<T>) -> Result<NonNull<T>> {
        const {
            assert!(
                align_of::<T>() <= PAGE_SIZE as usize,
                "segment types may not be aligned above the page size"
            )
        };
        let f = &self.inner.fields;
        let hi = self.committed().min(f.raw_end);
        let off = match offset.check(f.user_offset, hi) {
            Ok(off) => off,
            Err(e) => return Err(self.outside_raw(offset.get(), size_of::<T>() as u64, e)),
        };
        // SAFETY: `check` proved user_offset <= off and off + size_of::<T>() <=
        // committed <= mapping length, so the pointer stays inside our mapping (one
        // allocation); the base is non-null.
        Ok(unsafe { NonNull::new_unchecked(self.inner.map.ptr().as_ptr().add(off).cast::<T>()) })
    }

    /// Moves `value` into the user region at `offset` and returns a shared
    /// reference to it there: how segment-resident objects (locks, queues) are
    /// initialised in place.
    ///
    /// # Safety
    ///
    /// Nobody may access the `T` at `offset` (in this process or another) while it
    /// is being written; the caller's protocol (a directory entry, an offset
    /// published afterwards with Release) makes it reachable only once placed. Any
    /// value previously there is overwritten without being dropped.
    ///
    /// # Errors
    ///
    /// As [`resolve`](Self::resolve).
    ///
    /// # Examples
    ///
    /// See [`sync::Mutex`](crate::sync::Mutex).
    pub unsafe fn place<T: ShmShared>(&self, offset: Offset<T>, value: T) -> Result<&T> {
        let p = self.resolve_ptr(offset)?;
        // SAFETY: in bounds and aligned (resolve_ptr); exclusive access for the
        // write is the caller's promise; the reference then is as in `resolve`.
        unsafe {
            p.as_ptr().write(value);
            Ok(p.as_ref())
        }
    }

    /// Copies a `T` out of the user region (a volatile read: a peer may be writing
    /// it, and the copy is taken once).
    ///
    /// # Safety
    ///
    /// Within this process, during the copy, the bytes of the
    /// `T` must not be accessed through an overlapping view of another type (a
    /// differently sized atomic, or a plain read or write through `read`/`write`):
    /// Rust forbids such mixed accesses even though the hardware allows them.
    /// Writes by *other processes* are not this caller's concern: they are what a
    /// peer can always do, and `T: ShmSafe` makes every value they leave valid.
    /// Typed objects handed out by name (the directory) will make this safe.
    ///
    /// # Errors
    ///
    /// As [`resolve`](Self::resolve).
    ///
    /// # Examples
    ///
    /// ```
    /// use shmkit::{Offset, SegmentOptions};
    /// let seg = SegmentOptions::heap().no_heap().committed(64 << 10).create()?;
    /// let at = Offset::<[u32; 4]>::new(seg.user_offset());
    /// // SAFETY: this program views this offset as [u32; 4] only, from one thread.
    /// unsafe {
    ///     seg.write(at, [1, 2, 3, 4])?;
    ///     assert_eq!(seg.read(at)?, [1, 2, 3, 4]);
    /// }
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub unsafe fn read<T: ShmSafe + Copy>(&self, offset: Offset<T>) -> Result<T> {
        let p = self.resolve_ptr(offset)?;
        // SAFETY: in bounds and aligned (resolve_ptr); every bit pattern is a valid T
        // (ShmSafe). A racing peer write may tear the copy, never make it invalid.
        Ok(unsafe { p.as_ptr().read_volatile() })
    }

    /// Copies `value` into the user region (a volatile write).
    ///
    /// # Safety
    ///
    /// Within this process, during the copy, the bytes of the
    /// `T` must not be accessed through an overlapping view of another type (a
    /// differently sized atomic, or a plain read or write through `read`/`write`):
    /// Rust forbids such mixed accesses even though the hardware allows them.
    /// Writes by *other processes* are not this caller's concern: they are what a
    /// peer can always do, and `T: ShmSafe` makes every value they leave valid.
    /// Typed objects handed out by name (the directory) will make this safe.
    ///
    /// # Errors
    ///
    /// As [`resolve`](Self::resolve).
    ///
    /// # Examples
    ///
    /// See [`read`](Self::read).
    pub unsafe fn write<T: ShmSafe + Copy>(&self, offset: Offset<T>, value: T) -> Result<()> {
        let p = self.resolve_ptr(offset)?;
        // SAFETY: in bounds and aligned (resolve_ptr), in the user region, which no
        // reference handed out by this crate covers except through ShmShared
        // (atomic-only) types; synchronising with peers is the caller's protocol.
        unsafe { p.as_ptr().write_volatile(value) };
        Ok(())
    }
}
