//! [`BroadcastWriter`]: the writer role of a [`Broadcast`].
#![allow(unsafe_code)]

use std::ptr::NonNull;

use zerocopy::{FromBytes, IntoBytes};

use super::broadcast::{Broadcast, Geometry, RawBroadcast};
use crate::error::Result;
use crate::layout::ShmSafe;
use crate::segment::OwnerTag;
use crate::sync::Context;

/// The writer role of a [`Broadcast`], held by this attachment until the handle is
/// dropped. Sending never waits and never fails: a slot no reader got to in time
/// is overwritten (its readers learn how much they lost).
///
/// # Examples
///
/// ```
/// use shmkit::queue::Broadcast;
/// let seg = shmkit::SegmentOptions::heap().create()?;
/// let b = seg.find_or_create::<Broadcast<u64>>("prices", 1024)?;
/// let mut w = b.writer()?;
/// w.send(100)?;
/// assert_eq!(w.sent(), 1);
/// assert!(b.writer().is_err()); // one writer at a time
/// # Ok::<(), shmkit::Error>(())
/// ```
pub struct BroadcastWriter<T> {
    block: NonNull<Broadcast<T>>,
    geometry: Geometry,
    /// The number of the next message (we are the only writer).
    next: u64,
    /// The bell's generation as we last set it.
    generation: u32,
    me: OwnerTag,
    /// The fork generation at the claim: in a forked child that inherited the
    /// handle it differs, and the handle acts for nobody.
    fork_gen: u64,
    /// What keeps the block mapped and held (the directory handle).
    _keep: Box<dyn Send + Sync>,
}

// SAFETY: the handle owns its role; the pointer is into a block kept mapped and
// held by `_keep` (Send); the values sent are T: Send.
unsafe impl<T: Send> Send for BroadcastWriter<T> {}

impl<T: ShmSafe + FromBytes + IntoBytes + Copy + Send + Sync> BroadcastWriter<T> {
    /// Claims the writer role of the block at `block` for `cx`.
    ///
    /// # Safety
    ///
    /// `block` is a block built by [`Broadcast::init`] for `geometry`, kept mapped
    /// and allocated for as long as `keep` lives.
    pub(crate) unsafe fn claim(
        block: NonNull<Broadcast<T>>,
        geometry: Geometry,
        cx: &dyn Context,
        keep: Box<dyn Send + Sync>,
    ) -> Result<Self> {
        // SAFETY: the caller's contract; `keep` moves into the handle below.
        let raw = unsafe { RawBroadcast::from_block(block, geometry) };
        let next = raw.claim_writer(cx)?;
        let generation = raw.bell_generation();
        Ok(Self {
            block,
            geometry,
            next,
            generation,
            me: cx.me(),
            fork_gen: crate::segment::fork_generation(),
            _keep: keep,
        })
    }

    #[inline]
    fn raw(&self) -> RawBroadcast<'_> {
        // SAFETY: `claim`'s contract, for as long as `_keep` (as long as self).
        unsafe { RawBroadcast::from_block(self.block, self.geometry) }
    }

    /// Sends `value` to every reader: one slot written, the head published, and a
    /// wake-up only if a reader sleeps.
    ///
    /// # Errors
    ///
    /// [`Error::NotAttached`](crate::Error::NotAttached) in a forked child that
    /// inherited the handle (it acts for nobody: take the role anew after
    /// [`after_fork`](crate::Segment::after_fork)).
    ///
    /// # Examples
    ///
    /// See [`BroadcastWriter`].
    #[inline]
    pub fn send(&mut self, value: T) -> Result<()> {
        if crate::segment::fork_generation() != self.fork_gen {
            return Err(crate::Error::NotAttached);
        }
        let n = self.next;
        let mut generation = self.generation;
        self.raw().send(n, value, &mut generation);
        self.generation = generation;
        self.next = n + 1;
        Ok(())
    }

    /// Messages sent through this ring so far (by every writer it has had).
    ///
    /// # Examples
    ///
    /// See [`BroadcastWriter`].
    pub fn sent(&self) -> u64 {
        self.next
    }

    /// Slots in the ring.
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let b = seg.find_or_create::<shmkit::queue::Broadcast<u8>>("b", 8)?;
    /// assert_eq!(b.writer()?.capacity(), 8);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn capacity(&self) -> u64 {
        self.geometry.capacity
    }
}

impl<T> Drop for BroadcastWriter<T> {
    fn drop(&mut self) {
        if crate::segment::fork_generation() != self.fork_gen {
            return; // an inherited handle in a forked child releases nothing
        }
        // SAFETY: as in `raw` (the block outlives `_keep`, dropped after this).
        let raw = unsafe { RawBroadcast::from_block(self.block, self.geometry) };
        raw.release_writer(self.me);
    }
}

impl<T> std::fmt::Debug for BroadcastWriter<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BroadcastWriter")
            .field("next", &self.next)
            .field("capacity", &self.geometry.capacity)
            .finish()
    }
}
