//! [`ShmVec`]: a growable array in the shared heap.
#![allow(unsafe_code)]

use std::cell::Cell;
use std::marker::PhantomData;

use crate::loom::{AtomicU64, Ordering};
use crate::{Error, Offset, Result, ShmSafe};

use crate::alloc::Heap;
use crate::alloc::Mem;

/// Words of the header block: data offset, length, capacity.
const HEADER: usize = 24;

/// The header block of a [`ShmVec<T>`] in the segment (data offset, length and
/// capacity words): what the typed offset from [`ShmVec::into_shared`] points at.
/// Only ever named through an [`Offset`]; its words are read by
/// [`ShmVec::from_shared`], which checks them.
#[repr(C, align(8))]
pub struct VecHeader<T> {
    _words: [u64; 3],
    _t: PhantomData<T>,
}

/// A growable array of `T` in the shared heap, reallocating through it.
///
/// In the segment it is a 24-byte header block (data offset, length, capacity)
/// and a data block; the header's offset names it to other processes
/// ([`into_shared`](Self::into_shared) / [`from_shared`](Self::from_shared), as
/// for [`ShmBox`](super::ShmBox)). The handle keeps its own copy of the data
/// offset, length and capacity and only writes the header: a peer scribbling on
/// the header cannot make this handle write out of bounds. Like `Vec`, it has one
/// owner at a time: a process works on it through its handle, then hands it on
/// whole (`into_shared` → `from_shared`). Zero-sized element types are refused
/// at compile time.
///
/// # Examples
///
/// ```
/// use shmkit::{SegmentOptions, alloc::Heap, containers::ShmVec};
/// let seg = SegmentOptions::heap().create()?;
/// let heap = Heap::attach(&seg)?;
/// let mut v = ShmVec::new(&heap)?;
/// for i in 0..1000u64 {
///     v.push(i)?;
/// }
/// assert_eq!(v.len(), 1000);
/// assert_eq!(v.get(999), Some(999));
/// let off = v.into_shared()?;
/// let v = ShmVec::<u64>::from_shared(&heap, off)?;
/// assert_eq!(v.to_vec().iter().sum::<u64>(), 999 * 1000 / 2);
/// # Ok::<(), shmkit::Error>(())
/// ```
pub struct ShmVec<'h, T: ShmSafe + Copy> {
    heap: &'h Heap,
    header: u64,
    data: Cell<u64>,
    len: Cell<u64>,
    cap: Cell<u64>,
    _t: PhantomData<T>,
}

impl<'h, T: ShmSafe + Copy> ShmVec<'h, T> {
    /// An empty vector (allocates only its header).
    ///
    /// # Errors
    ///
    /// As [`Heap::alloc`].
    ///
    /// # Examples
    ///
    /// See [`ShmVec`].
    pub fn new(heap: &'h Heap) -> Result<Self> {
        const { assert!(size_of::<T>() > 0, "ShmVec of a zero-sized type") };
        let header = heap.alloc_raw(HEADER, 8)?;
        let v = Self {
            heap,
            header,
            data: Cell::new(0),
            len: Cell::new(0),
            cap: Cell::new(0),
            _t: PhantomData,
        };
        v.store_header()?;
        Ok(v)
    }

    /// An empty vector with room for `n` elements.
    ///
    /// # Errors
    ///
    /// As [`Heap::alloc`].
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let heap = shmkit::alloc::Heap::attach(&seg)?;
    /// let v = shmkit::containers::ShmVec::<u32>::with_capacity(&heap, 100)?;
    /// assert!(v.capacity() >= 100);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn with_capacity(heap: &'h Heap, n: usize) -> Result<Self> {
        let mut v = Self::new(heap)?;
        v.reserve(n)?;
        Ok(v)
    }

    fn word(&self, i: u64) -> Result<&AtomicU64> {
        self.heap
            .mem
            .word(self.header + 8 * i)
            .ok_or_else(|| Error::corrupt("ShmVec", "header out of range"))
    }

    fn store_header(&self) -> Result<()> {
        self.word(0)?.store(self.data.get(), Ordering::Relaxed);
        self.word(1)?.store(self.len.get(), Ordering::Relaxed);
        self.word(2)?.store(self.cap.get(), Ordering::Relaxed);
        Ok(())
    }

    /// Takes over a published vector (header and data become this process's).
    ///
    /// # Errors
    ///
    /// [`Error::BadBlock`] if `header` or its data block is not a published block,
    /// or the header's length and capacity do not fit its data block.
    ///
    /// # Examples
    ///
    /// See [`ShmVec`].
    pub fn from_shared(heap: &'h Heap, header: Offset<VecHeader<T>>) -> Result<Self> {
        const { assert!(size_of::<T>() > 0, "ShmVec of a zero-sized type") };
        let header = header.get();
        // Adopt first, then check: once ours, the block cannot change under us.
        heap.adopt(header)?;
        if heap.usable_size(header)? < HEADER as u64 {
            let _ = heap.publish(header);
            return Err(Error::BadBlock {
                offset: header,
                reason: "too small for a ShmVec header",
            });
        }
        let w = |i: u64| -> Result<u64> {
            heap.mem
                .word(header + 8 * i)
                .map(|w| w.load(Ordering::Relaxed))
                .ok_or_else(|| Error::corrupt("ShmVec", "header out of range"))
        };
        let (data, len, cap) = (w(0)?, w(1)?, w(2)?);
        let check = || -> Result<()> {
            let bytes = cap.checked_mul(size_of::<T>() as u64);
            let ok = len <= cap
                && match (data, bytes) {
                    (0, _) => cap == 0,
                    (_, Some(b)) => {
                        data % align_of::<T>() as u64 == 0 && heap.usable_size(data)? >= b
                    }
                    (_, None) => false,
                };
            if !ok {
                return Err(Error::BadBlock {
                    offset: header,
                    reason: "ShmVec header does not fit its data block",
                });
            }
            if data != 0 {
                heap.adopt(data)?;
            }
            Ok(())
        };
        if let Err(e) = check() {
            let _ = heap.publish(header); // give it back as we found it
            return Err(e);
        }
        Ok(Self {
            heap,
            header,
            data: Cell::new(data),
            len: Cell::new(len),
            cap: Cell::new(cap),
            _t: PhantomData,
        })
    }

    /// Publishes header and data and gives up the handle: returns the header's
    /// offset for another process.
    ///
    /// # Errors
    ///
    /// [`Error::BadBlock`] if a block is no longer ours (a peer tampered with it).
    ///
    /// # Examples
    ///
    /// See [`ShmVec`].
    pub fn into_shared(self) -> Result<Offset<VecHeader<T>>> {
        let (heap, header, data) = (self.heap, self.header, self.data.get());
        self.store_header()?;
        std::mem::forget(self);
        if data != 0 {
            heap.publish(data)?;
        }
        heap.publish(header)?;
        Ok(Offset::new(header))
    }

    /// The header's offset.
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let heap = shmkit::alloc::Heap::attach(&seg)?;
    /// let v = shmkit::containers::ShmVec::<u8>::new(&heap)?;
    /// assert!(v.offset().get() > 0);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn offset(&self) -> Offset<VecHeader<T>> {
        Offset::new(self.header)
    }

    /// Number of elements.
    ///
    /// # Examples
    ///
    /// See [`ShmVec`].
    pub fn len(&self) -> usize {
        self.len.get() as usize
    }

    /// Whether it has no elements.
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let heap = shmkit::alloc::Heap::attach(&seg)?;
    /// assert!(shmkit::containers::ShmVec::<u8>::new(&heap)?.is_empty());
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len.get() == 0
    }

    /// Elements it can hold without reallocating.
    ///
    /// # Examples
    ///
    /// See [`with_capacity`](Self::with_capacity).
    pub fn capacity(&self) -> usize {
        self.cap.get() as usize
    }

    fn slot(&self, i: u64) -> *mut T {
        self.heap
            .mem
            .ptr(self.data.get() + i * size_of::<T>() as u64)
            .cast()
    }

    /// Makes room for `extra` more elements.
    ///
    /// # Errors
    ///
    /// As [`Heap::alloc`]; [`Error::InvalidSize`] if the size overflows.
    ///
    /// # Examples
    ///
    /// See [`with_capacity`](Self::with_capacity).
    pub fn reserve(&mut self, extra: usize) -> Result<()> {
        let need = self.len.get().checked_add(extra as u64).ok_or(overflow())?;
        if need <= self.cap.get() {
            return Ok(());
        }
        let cap = need.max(self.cap.get() * 2).max(4);
        let bytes = cap
            .checked_mul(size_of::<T>().max(1) as u64)
            .ok_or(overflow())?;
        let bytes = usize::try_from(bytes).map_err(|_| overflow())?;
        let new = self.heap.alloc_raw(bytes, align_of::<T>())?;
        let old = self.data.get();
        if old != 0 {
            let n = self.len.get() as usize * size_of::<T>();
            // SAFETY: the old block holds len elements (ours, checked on adoption);
            // the new one is at least cap >= len elements; distinct blocks.
            unsafe {
                std::ptr::copy_nonoverlapping(self.heap.mem.ptr(old), self.heap.mem.ptr(new), n)
            };
        }
        self.data.set(new);
        self.cap.set(cap);
        self.store_header()?;
        if old != 0 {
            self.heap.free(old)?;
        }
        Ok(())
    }

    /// Appends an element.
    ///
    /// # Errors
    ///
    /// As [`reserve`](Self::reserve).
    ///
    /// # Examples
    ///
    /// See [`ShmVec`].
    pub fn push(&mut self, value: T) -> Result<()> {
        self.reserve(1)?;
        let i = self.len.get();
        // SAFETY: i < cap: the slot lies in our data block, aligned for T.
        unsafe { self.slot(i).write_volatile(value) };
        self.len.set(i + 1);
        self.word(1)?.store(i + 1, Ordering::Relaxed);
        Ok(())
    }

    /// Appends every element of `items`.
    ///
    /// # Errors
    ///
    /// As [`reserve`](Self::reserve).
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let heap = shmkit::alloc::Heap::attach(&seg)?;
    /// let mut v = shmkit::containers::ShmVec::new(&heap)?;
    /// v.extend_from_slice(&[1u8, 2, 3])?;
    /// assert_eq!(v.to_vec(), [1, 2, 3]);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn extend_from_slice(&mut self, items: &[T]) -> Result<()> {
        self.reserve(items.len())?;
        let start = self.len.get();
        for (k, item) in items.iter().enumerate() {
            // SAFETY: start + k < cap after reserve; aligned slot in our block.
            unsafe { self.slot(start + k as u64).write_volatile(*item) };
        }
        self.len.set(start + items.len() as u64);
        self.word(1)?.store(self.len.get(), Ordering::Relaxed);
        Ok(())
    }

    /// Removes and returns the last element.
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let heap = shmkit::alloc::Heap::attach(&seg)?;
    /// let mut v = shmkit::containers::ShmVec::new(&heap)?;
    /// v.push(5u16)?;
    /// assert_eq!(v.pop(), Some(5));
    /// assert_eq!(v.pop(), None);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn pop(&mut self) -> Option<T> {
        let n = self.len.get().checked_sub(1)?;
        let v = self.get(n as usize)?;
        self.len.set(n);
        if let Ok(w) = self.word(1) {
            w.store(n, Ordering::Relaxed);
        }
        Some(v)
    }

    /// A copy of element `i`.
    ///
    /// # Examples
    ///
    /// See [`ShmVec`].
    pub fn get(&self, i: usize) -> Option<T> {
        if i as u64 >= self.len.get() {
            return None;
        }
        // SAFETY: i < len <= cap: inside our data block, aligned; T: ShmSafe makes
        // any bytes valid.
        Some(unsafe { self.slot(i as u64).read_volatile() })
    }

    /// Replaces element `i`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] if `i` is out of bounds.
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let heap = shmkit::alloc::Heap::attach(&seg)?;
    /// let mut v = shmkit::containers::ShmVec::new(&heap)?;
    /// v.push(1u32)?;
    /// v.set(0, 9)?;
    /// assert_eq!(v.get(0), Some(9));
    /// assert!(v.set(1, 0).is_err());
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn set(&mut self, i: usize, value: T) -> Result<()> {
        if i as u64 >= self.len.get() {
            return Err(Error::InvalidArgument("ShmVec index out of bounds"));
        }
        // SAFETY: as in `get`, and `&mut self` is the only handle writing.
        unsafe { self.slot(i as u64).write_volatile(value) };
        Ok(())
    }

    /// Removes every element (keeps the capacity).
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let heap = shmkit::alloc::Heap::attach(&seg)?;
    /// let mut v = shmkit::containers::ShmVec::new(&heap)?;
    /// v.push(1u8)?;
    /// v.clear();
    /// assert!(v.is_empty());
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn clear(&mut self) {
        self.len.set(0);
        if let Ok(w) = self.word(1) {
            w.store(0, Ordering::Relaxed);
        }
    }

    /// Copies the elements into a process-local `Vec`.
    ///
    /// # Examples
    ///
    /// See [`ShmVec`].
    pub fn to_vec(&self) -> Vec<T> {
        (0..self.len()).filter_map(|i| self.get(i)).collect()
    }
}

impl<T: ShmSafe + Copy> Drop for ShmVec<'_, T> {
    fn drop(&mut self) {
        if self.data.get() != 0 {
            let _ = self.heap.free(self.data.get());
        }
        let _ = self.heap.free(self.header);
    }
}

impl<T: ShmSafe + Copy> std::fmt::Debug for ShmVec<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmVec")
            .field("header", &self.header)
            .field("len", &self.len.get())
            .field("cap", &self.cap.get())
            .finish()
    }
}

fn overflow() -> Error {
    Error::InvalidSize {
        size: u64::MAX,
        reason: "ShmVec capacity overflows",
    }
}
