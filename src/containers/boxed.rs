//! [`ShmBox`]: one value in a heap block.
#![allow(unsafe_code)]

use std::marker::PhantomData;
use std::ops::Deref;

use crate::{Error, Offset, Result, ShmSafe, ShmShared};

use crate::alloc::Heap;

/// A value of type `T` in a block of the shared heap, owned by this process and
/// freed when the box is dropped.
///
/// Another process reaches it by offset: [`into_shared`](Self::into_shared)
/// publishes the block and returns its offset, and the receiver takes it over with
/// [`from_shared`](Self::from_shared) (which checks the block and makes it the
/// receiver's). Values are read and written by copy ([`get`](Self::get),
/// [`set`](Self::set)); `T: ShmShared` (atomics, locks) also derefs.
///
/// # Examples
///
/// ```
/// use shmkit::{SegmentOptions, alloc::Heap, containers::ShmBox};
/// let seg = SegmentOptions::heap().create()?;
/// let heap = Heap::attach(&seg)?;
/// let mut b = ShmBox::new(&heap, [1u32, 2, 3])?;
/// b.set([4, 5, 6]);
/// let off = b.into_shared()?;                 // hand the offset to another process...
/// let peer = seg.try_clone()?;
/// let peer_heap = Heap::attach(&peer)?;
/// let got = ShmBox::<[u32; 3]>::from_shared(&peer_heap, off)?; // ...which takes it over
/// assert_eq!(got.get(), [4, 5, 6]);
/// # Ok::<(), shmkit::Error>(())
/// ```
pub struct ShmBox<'h, T: ShmSafe> {
    heap: &'h Heap,
    off: u64,
    _t: PhantomData<T>,
}

impl<'h, T: ShmSafe> ShmBox<'h, T> {
    /// Allocates a block for `value` and moves it there.
    ///
    /// # Errors
    ///
    /// As [`Heap::alloc`].
    ///
    /// # Examples
    ///
    /// See [`ShmBox`].
    pub fn new(heap: &'h Heap, value: T) -> Result<Self> {
        let off = heap.alloc_raw(size_of::<T>().max(1), align_of::<T>())?;
        let p = heap.mem.ptr(off).cast::<T>();
        // SAFETY: a fresh block of at least size_of::<T>() bytes, aligned for T
        // (alloc honours align_of::<T>()), owned by us and reached by nobody else.
        unsafe { p.write(value) };
        Ok(Self {
            heap,
            off,
            _t: PhantomData,
        })
    }

    /// Takes over a published block holding a `T` (the receiving end of a hand-off):
    /// checks that `off` is a published block big enough and aligned for `T`, and
    /// makes it owned by this process.
    ///
    /// # Errors
    ///
    /// [`Error::BadBlock`] if `off` is not a published block, is too small or
    /// misaligned for `T`.
    ///
    /// # Examples
    ///
    /// See [`ShmBox`].
    pub fn from_shared(heap: &'h Heap, off: Offset<T>) -> Result<Self> {
        let off = off.get();
        if off % align_of::<T>() as u64 != 0 {
            return Err(Error::BadBlock {
                offset: off,
                reason: "misaligned for the type",
            });
        }
        // Adopt first, then check: once ours, the block cannot change under us.
        heap.adopt(off)?;
        if heap.usable_size(off)? < size_of::<T>() as u64 {
            let _ = heap.publish(off); // give it back as we found it
            return Err(Error::BadBlock {
                offset: off,
                reason: "smaller than the type",
            });
        }
        Ok(Self {
            heap,
            off,
            _t: PhantomData,
        })
    }

    /// Publishes the block (it then outlives this process) and gives up the box
    /// without freeing: returns the offset to hand to another process.
    ///
    /// # Errors
    ///
    /// [`Error::BadBlock`] if the block is no longer owned by this process (a peer
    /// tampered with it); the box is then leaked, not freed.
    ///
    /// # Examples
    ///
    /// See [`ShmBox`].
    pub fn into_shared(self) -> Result<Offset<T>> {
        let off = self.off;
        let heap = self.heap;
        std::mem::forget(self);
        heap.publish(off)?;
        Ok(Offset::new(off))
    }

    /// The block's offset.
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let heap = shmkit::alloc::Heap::attach(&seg)?;
    /// let b = shmkit::containers::ShmBox::new(&heap, 7u64)?;
    /// assert!(b.offset().get() >= seg.user_offset());
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn offset(&self) -> Offset<T> {
        Offset::new(self.off)
    }

    /// A raw pointer to the value in this process.
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let heap = shmkit::alloc::Heap::attach(&seg)?;
    /// let b = shmkit::containers::ShmBox::new(&heap, 7u64)?;
    /// // SAFETY: the box owns the block; nobody else writes it.
    /// assert_eq!(unsafe { b.as_ptr().read() }, 7);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn as_ptr(&self) -> *mut T {
        self.heap.mem.ptr(self.off).cast()
    }

    /// A copy of the value (read once, volatile: a misbehaving peer may be writing).
    ///
    /// # Examples
    ///
    /// See [`ShmBox`].
    pub fn get(&self) -> T
    where
        T: Copy,
    {
        // SAFETY: the block holds a T (written by `new` or checked by
        // `from_shared`), aligned; T: ShmSafe makes any bytes a valid T.
        unsafe { self.as_ptr().read_volatile() }
    }

    /// Replaces the value.
    ///
    /// # Examples
    ///
    /// See [`ShmBox`].
    pub fn set(&mut self, value: T)
    where
        T: Copy,
    {
        // SAFETY: as in `get`; `&mut self` is the only handle on the block here.
        unsafe { self.as_ptr().write_volatile(value) }
    }
}

impl<T: ShmShared> Deref for ShmBox<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: aligned, in a live block for the box's life; T: ShmShared makes
        // shared access through & sound whatever peers do.
        unsafe { &*self.as_ptr() }
    }
}

impl<T: ShmSafe> Drop for ShmBox<'_, T> {
    fn drop(&mut self) {
        // A block a peer tampered with is leaked rather than freed twice.
        let _ = self.heap.free(self.off);
    }
}

impl<T: ShmSafe> std::fmt::Debug for ShmBox<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmBox").field("offset", &self.off).finish()
    }
}
