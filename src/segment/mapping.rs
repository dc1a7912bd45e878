//! One mapped region: where it is, how long, and how to give it back.
#![allow(unsafe_code)]

use std::ptr::NonNull;

/// How a [`Mapping`] is released.
#[derive(Debug)]
pub(crate) enum Unmap {
    /// `munmap` (fd-backed and anonymous kinds).
    Munmap,
    /// `shmdt` (System V).
    Shmdt,
    /// `dealloc` with this layout (heap-backed).
    Dealloc(std::alloc::Layout),
}

/// A region of `len` bytes at `ptr`, valid until drop, never moved or resized.
#[derive(Debug)]
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    unmap: Unmap,
}

// SAFETY: the region is shared memory meant for concurrent use; every access
// through it goes through atomics or is documented as caller-synchronised. The
// handle itself holds no thread-affine state.
unsafe impl Send for Mapping {}
// SAFETY: as above; `&Mapping` only exposes the base pointer and length.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// # Safety
    ///
    /// `ptr..ptr+len` must be a live region obtained in the way `unmap` releases,
    /// owned by the new `Mapping` from now on.
    pub(crate) unsafe fn new(ptr: NonNull<u8>, len: usize, unmap: Unmap) -> Self {
        Self { ptr, len, unmap }
    }

    /// Base address.
    #[inline]
    pub(crate) fn ptr(&self) -> NonNull<u8> {
        self.ptr
    }

    /// Length in bytes.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        match self.unmap {
            // SAFETY: we own the mapping (constructor contract) and nothing borrows
            // it any more: every reference handed out borrows a Segment that holds
            // this Mapping alive.
            Unmap::Munmap => unsafe {
                let _ = rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len);
            },
            // SAFETY: as above; the address came from shmat.
            Unmap::Shmdt => unsafe {
                libc::shmdt(self.ptr.as_ptr().cast());
            },
            // SAFETY: as above; allocated by std::alloc with this layout.
            Unmap::Dealloc(layout) => unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout) },
        }
    }
}
