//! Blocks between processes: a block's state and size, its address, publishing
//! it and adopting a published one.

use std::ptr::NonNull;

use crate::alloc::class::GEOMETRY;
use crate::alloc::mem::Mem;
use crate::alloc::owner::BlockState;
use crate::alloc::pages::Table;
use crate::loom::{AtomicU64, Ordering};
use crate::{Error, PAGE_SIZE, Result};

use super::{Heap, used};

impl Heap {
    /// The owner word and usable size of the block at `off`.
    pub(super) fn owner_of(&self, off: u64) -> Result<(&AtomicU64, u64)> {
        if let Some(loc) = self.mem.locate(off) {
            let w = self.mem.word(loc.owner).ok_or_else(|| {
                Error::corrupt("heap span", format!("owner word of {off:#x} out of range"))
            })?;
            return Ok((w, GEOMETRY[loc.class].size));
        }
        match self.large_at(off) {
            Some(r) => Ok((self.mem.owner(r.start), r.len * PAGE_SIZE)),
            None => Err(Error::BadBlock {
                offset: off,
                reason: "not the start of a block of this heap",
            }),
        }
    }

    /// The state of the block at `off`.
    ///
    /// # Errors
    ///
    /// [`Error::BadBlock`] if `off` is not the start of a block; [`Error::Corrupt`]
    /// for an impossible owner word.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmkit::{SegmentOptions, alloc::{BlockState, Heap}};
    /// let seg = SegmentOptions::heap().create()?;
    /// let heap = Heap::attach(&seg)?;
    /// let off = heap.alloc(24, 8)?;
    /// assert_eq!(heap.state(off)?, BlockState::Owned(seg.owner_tag()));
    /// heap.publish(off)?;
    /// assert_eq!(heap.state(off)?, BlockState::Shared);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn state(&self, off: impl Into<u64>) -> Result<BlockState> {
        let off = off.into();
        let (w, _) = self.owner_of(off)?;
        let v = w.load(Ordering::Acquire);
        BlockState::from_word(v)
            .ok_or_else(|| Error::corrupt("heap owner word", format!("block {off:#x}: {v:#018x}")))
    }

    /// Usable bytes of the allocated block at `off` (its class size, or its pages).
    ///
    /// # Errors
    ///
    /// [`Error::BadBlock`] if `off` is not an allocated block.
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let heap = shmkit::alloc::Heap::attach(&seg)?;
    /// let off = heap.alloc(100, 8)?;
    /// assert_eq!(heap.usable_size(off)?, 112);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn usable_size(&self, off: impl Into<u64>) -> Result<u64> {
        let off = off.into();
        let (w, size) = self.owner_of(off)?;
        used(w.load(Ordering::Acquire), off)?;
        Ok(size)
    }

    /// A pointer, in this process, to offset `off` of the heap: for a block, valid
    /// for [`usable_size`](Self::usable_size) bytes while the block stays
    /// allocated. Cheap: it only checks that `off` lies in the heap's committed data
    /// pages (so the pointer is inside this process's mapping); whether `off` is a
    /// live block of yours is what dereferencing it assumes (use
    /// [`usable_size`](Self::usable_size) or [`state`](Self::state) to check).
    ///
    /// # Errors
    ///
    /// [`Error::BadBlock`] if `off` is outside the heap's committed data pages.
    ///
    /// # Examples
    ///
    /// See [`Heap`].
    #[inline]
    pub fn ptr(&self, off: impl Into<u64>) -> Result<NonNull<u8>> {
        let off = off.into();
        let ok = off >= self.mem.lay.data_off && off < self.mem.seg.committed();
        match NonNull::new(self.mem.ptr(off)) {
            Some(p) if ok => Ok(p),
            _ => Err(Error::BadBlock {
                offset: off,
                reason: "outside the heap's committed pages",
            }),
        }
    }

    /// Publishes a block this process owns: re-tags it `Shared`, so that it
    /// survives this process's death. Do it *before* linking the block into a
    /// structure other processes reach (a crash in between then leaks the block
    /// instead of freeing one that is in use).
    ///
    /// # Errors
    ///
    /// [`Error::BadBlock`] if the block is not owned by this process.
    ///
    /// # Examples
    ///
    /// See [`state`](Self::state).
    pub fn publish(&self, off: impl Into<u64>) -> Result<()> {
        let off = off.into();
        self.publish_word(off, BlockState::Shared.to_word())
    }

    /// As [`publish`](Self::publish), with a stamp in the `Shared` word; returns
    /// the word. A structure that journals a published block records the word, so
    /// that its recovery acts on the block only while the word is still exactly
    /// that (a block freed and reused since has another word).
    pub(crate) fn publish_stamped(&self, off: u64, stamp: u64) -> Result<u64> {
        let word = crate::alloc::owner::shared_stamped(stamp);
        self.publish_word(off, word).map(|()| word)
    }

    pub(super) fn publish_word(&self, off: u64, to: u64) -> Result<()> {
        let me = self.me()?;
        let (w, _) = self.owner_of(off)?;
        // SYNC: Release pairs with the Acquire of `adopt`/`free` in the process that
        // takes the block over: our writes to it happen before their use.
        w.compare_exchange(
            BlockState::Owned(me).to_word(),
            to,
            Ordering::Release,
            Ordering::Relaxed,
        )
        .map(drop)
        .map_err(|_| Error::BadBlock {
            offset: off,
            reason: "not owned by this process",
        })
    }

    /// The raw owner word of the block at `off` (see `publish_stamped`).
    pub(crate) fn owner_word(&self, off: u64) -> Result<u64> {
        let (w, _) = self.owner_of(off)?;
        // SYNC: Acquire pairs with the Release of a publish.
        Ok(w.load(Ordering::Acquire))
    }

    /// Takes a published block back into this process's private ownership (so that
    /// it is reclaimed if we die holding it): the receiving side of a hand-off.
    ///
    /// # Errors
    ///
    /// [`Error::BadBlock`] if the block is not in the shared state (someone else
    /// adopted or freed it).
    ///
    /// # Examples
    ///
    /// ```
    /// use shmkit::{SegmentOptions, alloc::{BlockState, Heap}};
    /// let seg = SegmentOptions::heap().create()?;
    /// let heap = Heap::attach(&seg)?;
    /// let off = heap.alloc(24, 8)?;
    /// heap.publish(off)?;
    /// let peer = seg.try_clone()?; // another process, as far as the heap can tell
    /// let peer_heap = Heap::attach(&peer)?;
    /// peer_heap.adopt(off)?;
    /// assert_eq!(heap.state(off)?, BlockState::Owned(peer.owner_tag()));
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn adopt(&self, off: impl Into<u64>) -> Result<()> {
        let off = off.into();
        let (w, _) = self.owner_of(off)?;
        // SYNC: Acquire pairs with the Release of the publish whose word we CAS.
        let cur = w.load(Ordering::Acquire);
        if BlockState::from_word(cur) != Some(BlockState::Shared) {
            return Err(Error::BadBlock {
                offset: off,
                reason: "not a published block",
            });
        }
        self.adopt_word(off, cur)
    }

    /// Takes the block over only if its owner word is exactly `word`, a *stamped*
    /// `Shared` word (see `publish_stamped`): a structure's recovery can act only
    /// on blocks it published itself, whatever words a peer wrote into it.
    ///
    /// # Errors
    ///
    /// [`Error::BadBlock`] if `word` is not a stamped `Shared` word, or the
    /// block's word is another.
    pub(crate) fn adopt_if(&self, off: u64, word: u64) -> Result<()> {
        if !crate::alloc::owner::is_stamped(word) {
            return Err(Error::BadBlock {
                offset: off,
                reason: "not a stamped published block",
            });
        }
        self.adopt_word(off, word)
    }

    pub(super) fn adopt_word(&self, off: u64, word: u64) -> Result<()> {
        let me = self.me()?;
        let (w, _) = self.owner_of(off)?;
        // SYNC: Acquire pairs with the Release in `publish`.
        w.compare_exchange(
            word,
            BlockState::Owned(me).to_word(),
            Ordering::Acquire,
            Ordering::Relaxed,
        )
        .map(drop)
        .map_err(|_| Error::BadBlock {
            offset: off,
            reason: "not a published block",
        })
    }
}
