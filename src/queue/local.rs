//! [`LocalSpsc`]: an [`SpscQueue`] in process-local heap memory, for loom models,
//! miri and in-process tests (test support, `testkit` only).
#![allow(unsafe_code)]

use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::Arc;

use super::spsc::{RawSpsc, Slot, SpscQueue};
use super::{Consumer, Producer};
use crate::error::{Error, Result};
use crate::layout::ShmSafe;
use crate::sync::Context;

/// The heap block of a [`LocalSpsc`].
struct Block<T: ShmSafe + Copy + Send> {
    q: NonNull<SpscQueue<T>>,
    layout: Layout,
    cap: u64,
}

// SAFETY: the block is shared memory in all but name: its words are atomics, its
// slots are reached by the role handles only.
unsafe impl<T: ShmSafe + Copy + Send> Send for Block<T> {}
// SAFETY: as above.
unsafe impl<T: ShmSafe + Copy + Send> Sync for Block<T> {}

impl<T: ShmSafe + Copy + Send> Drop for Block<T> {
    fn drop(&mut self) {
        // SAFETY: built by `SpscQueue::init` in this allocation; nobody uses it
        // any more (the last Arc is going, and every handle holds one). Dropping
        // the header and slots in place ends loom's objects; std's have no drop.
        unsafe {
            std::ptr::drop_in_place(self.q.as_ptr());
            let ring = self
                .q
                .cast::<u8>()
                .add(SpscQueue::<T>::RING)
                .cast::<Slot<T>>();
            for i in 0..self.cap as usize {
                std::ptr::drop_in_place(ring.add(i).as_ptr());
            }
            std::alloc::dealloc(self.q.as_ptr().cast(), self.layout);
        }
    }
}

/// An [`SpscQueue`] on the heap, with the roles claimed for any
/// [`Context`] (test support: loom models play processes with it).
pub struct LocalSpsc<T: ShmSafe + Copy + Send> {
    block: Arc<Block<T>>,
}

impl<T: ShmSafe + Copy + Send> LocalSpsc<T> {
    /// An empty queue of `capacity` slots.
    ///
    /// # Errors
    ///
    /// As the directory's create ([`Error::InvalidSize`]), or
    /// [`Error::OutOfMemory`].
    pub fn new(capacity: u64) -> Result<Self> {
        let bytes = SpscQueue::<T>::bytes(capacity)?;
        let layout = usize::try_from(bytes)
            .ok()
            .and_then(|b| Layout::from_size_align(b, align_of::<SpscQueue<T>>()).ok())
            .ok_or(Error::InvalidSize {
                size: bytes,
                reason: "too large for this address space",
            })?;
        // SAFETY: the layout is not zero-sized (the header is 384 bytes).
        let p = unsafe { std::alloc::alloc_zeroed(layout) };
        let q = NonNull::new(p.cast::<SpscQueue<T>>()).ok_or(Error::OutOfMemory {
            requested: bytes,
            available: 0,
        })?;
        // SAFETY: a fresh zeroed allocation of `bytes`, aligned, ours alone.
        unsafe { SpscQueue::init(q, capacity) };
        Ok(Self {
            block: Arc::new(Block {
                q,
                layout,
                cap: capacity,
            }),
        })
    }

    fn raw(&self) -> RawSpsc<T> {
        // SAFETY: built by init with `cap` slots; each handle keeps the block
        // alive through its Arc.
        unsafe { RawSpsc::new(self.block.q, self.block.cap) }
    }

    /// Claims the producer role for `cx`.
    ///
    /// # Errors
    ///
    /// As [`Shared::producer`](crate::Shared::producer).
    pub fn producer(&self, cx: impl Context + Send + Sync + 'static) -> Result<Producer<T>> {
        Producer::claim(self.raw(), Box::new(cx), Box::new(self.block.clone()))
    }

    /// Claims the consumer role for `cx`.
    ///
    /// # Errors
    ///
    /// As [`Shared::consumer`](crate::Shared::consumer).
    pub fn consumer(&self, cx: impl Context + Send + Sync + 'static) -> Result<Consumer<T>> {
        Consumer::claim(self.raw(), Box::new(cx), Box::new(self.block.clone()))
    }

    /// Messages in the queue (at most the capacity).
    pub fn len(&self) -> usize {
        self.raw().len() as usize
    }

    /// Whether the queue is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Overwrites the indices, as a peer could (test support).
    pub fn set_indices(&self, tail: u64, head: u64) {
        self.raw().set_indices(tail, head);
    }
}

impl<T: ShmSafe + Copy + Send> Clone for LocalSpsc<T> {
    fn clone(&self) -> Self {
        Self {
            block: self.block.clone(),
        }
    }
}
