//! [`Heap`]: the shared allocator's handle.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::ptr::NonNull;

use crate::loom::{AtomicU64, Ordering};
use crate::segment::Segment;
use crate::sync::raw::RawMutexGuard;
use crate::{Error, Offset, OwnerTag, PAGE_SIZE, Result};

use super::class::{CLASSES, GEOMETRY, class_of};
use super::large_cache::{LargeCache, MAX_RUN_PAGES};
use super::list;
use super::mem::Mem;
use super::owner::{BlockState, FREE_WORD};
use super::pages::{self, FREE, LARGE, Op, Run, SPAN, Table};
use super::pool::{self, Cache, Deadline, LOCK_WAIT, Reclaimed, exclusive, lock_error};
use super::seg_mem::SegMem;

/// A process's handle on the shared heap of a segment.
///
/// The heap manages the segment's user region (from
/// [`Segment::user_offset`] to `max_size`): small blocks (16 B … 32 KiB) in
/// size-class spans with lock-free shared free lists, large blocks as whole pages.
/// Blocks are named by their offset from the segment base, which is the same in
/// every process; [`Heap::ptr`] turns one into an address in this process.
///
/// Every block records its owner: a block allocated here is `Owned` by this
/// process (registry slot + incarnation) until it is freed or
/// [`publish`](Heap::publish)ed (re-tagged shared, before it is linked into a
/// shared structure). If this process dies, [`reclaim_dead`](Heap::reclaim_dead)
/// in any survivor returns its owned blocks and its cache: a process killed at any
/// instruction leaks only what it held privately, and only until then.
///
/// A handle keeps a process-local cache of free blocks per class (so the common
/// alloc and free touch no shared cache line); it is `Send` but not `Sync`: use one
/// handle per thread (handles are cheap; all of a process's handles share its
/// owner tag). Dropping a handle gives its cache back.
///
/// # Examples
///
/// ```
/// use shmkit::{SegmentOptions, alloc::Heap, containers::{ShmString, ShmVec}};
/// let seg = SegmentOptions::heap().max_size(16 << 20).create()?;
/// let heap = Heap::attach(&seg)?;
/// let mut v = ShmVec::<u64>::new(&heap)?;   // typed blocks: no raw memory
/// v.push(7)?;
/// let s = ShmString::from_str(&heap, "hello")?;
/// let off = heap.alloc(100, 8)?;             // raw blocks: offsets (see `ptr`)
/// heap.free(off)?;
/// drop((v, s));
/// assert!(heap.verify().is_clean());
/// # Ok::<(), shmkit::Error>(())
/// ```
pub struct Heap {
    pub(crate) mem: SegMem,
    cache: Cache,
    large: LargeCache,
}

impl std::fmt::Debug for Heap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Heap")
            .field("layout", &self.mem.lay)
            .finish()
    }
}

/// How long an allocation that ran out of memory waits to reclaim and trim.
const RECOVERY_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Largest single allocation the heap would accept on any segment (64 GiB).
pub const MAX_ALLOC: u64 = crate::Tagged::MAX_OFFSET;

impl Heap {
    /// Attaches to the heap in `seg`'s user region. The heap was built by the
    /// segment's creator before anyone could open it (see
    /// [`SegmentOptions::no_heap`](crate::SegmentOptions::no_heap)); attaching
    /// never builds or rebuilds anything: it checks the heap header against the
    /// segment header's record of it.
    ///
    /// # Errors
    ///
    /// [`Error::RegionInUse`] for a segment made without a heap;
    /// [`Error::Corrupt`] naming the heap header if it is not the heap the segment
    /// header records (a peer overwrote its state, magic, version or layout);
    /// [`Error::NoSpace`] if its tables cannot be committed;
    /// [`Error::InvalidArgument`] for a forked handle without `after_fork`.
    ///
    /// # Examples
    ///
    /// See [`Heap`].
    pub fn attach(seg: &Segment) -> Result<Self> {
        Ok(Self {
            mem: SegMem::attach(seg)?,
            cache: Cache::default(),
            large: LargeCache::default(),
        })
    }

    /// The segment.
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let heap = shmkit::alloc::Heap::attach(&seg)?;
    /// assert_eq!(heap.segment().max_size(), seg.max_size());
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn segment(&self) -> &Segment {
        &self.mem.seg
    }

    /// Test support (`testkit`): the offsets from the segment base of the heap's
    /// page lock and transfer lock (`(page, transfer)`), where the hostile-peer
    /// tests write.
    #[cfg(feature = "testkit")]
    #[doc(hidden)]
    pub fn lock_offsets(&self) -> (u64, u64) {
        let base = self.mem.seg.as_ptr().addr();
        let h = self.mem.hdr();
        let at = |p: usize| (p - base) as u64;
        (
            at(std::ptr::from_ref(&h.page_lock).addr()),
            at(std::ptr::from_ref(&h.transfer).addr()),
        )
    }

    /// The root words of the structures built on the heap (zeroed at build).
    #[cfg(not(shmkit_loom))]
    pub(crate) fn roots(&self) -> &[AtomicU64; super::seg_mem::ROOT_WORDS] {
        &self.mem.hdr().roots
    }

    #[inline]
    fn me(&self) -> Result<OwnerTag> {
        let me = self.mem.seg.owner_tag();
        if me.is_nobody() {
            return Err(not_attached());
        }
        Ok(me)
    }

    /// Allocates `size` bytes aligned to `align` and returns the block's offset
    /// (an `Offset<u8>`: the block's first byte; every call that takes a block
    /// accepts it, or a raw `u64` received from a peer). The block is owned by this
    /// process until freed or published; its contents are unspecified.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidSize`] for a size of 0 or above 64 GiB;
    /// [`Error::InvalidArgument`] for an alignment that is not a power of two up to
    /// 4096; [`Error::OutOfMemory`] when the segment's maximum is reached (after
    /// reclaiming dead processes' blocks and trimming); [`Error::NoSpace`] when the
    /// backing store is full; [`Error::Corrupt`] if heap metadata was overwritten
    /// (a heap lock word naming this handle's attachment while none of its threads
    /// holds the lock is such damage, reported at once); [`Error::LockTimeout`] if
    /// a live process (stopped, say) holds a heap lock the call needs past the
    /// heap's lock bound (5 s), which bounds all the waits of one call together.
    ///
    /// # Examples
    ///
    /// See [`Heap`].
    #[inline]
    pub fn alloc(&self, size: usize, align: usize) -> Result<Offset<u8>> {
        self.alloc_raw(size, align).map(Offset::new)
    }

    /// [`alloc`](Self::alloc), as a bare offset (for the crate's own structures).
    #[inline]
    pub(crate) fn alloc_raw(&self, size: usize, align: usize) -> Result<u64> {
        let (size, align) = (size as u64, align as u64);
        check_request(size, align)?;
        let me = self.me()?;
        match class_of(size, align) {
            Some(c) => match self.cache.pop(&self.mem, c, me)? {
                Some(b) => Ok(b),
                None => self.alloc_small_slow(c, me, size),
            },
            None => self.alloc_large(size, me),
        }
    }

    #[cold]
    fn alloc_small_slow(&self, c: usize, me: OwnerTag, size: u64) -> Result<u64> {
        let head = self.mem.head(c);
        // One bound for every lock this call takes.
        let d = Deadline::after(LOCK_WAIT);
        for attempt in 0..2 {
            if !self.cache.refill(
                &self.mem,
                head,
                &self.mem.hdr().transfer,
                &self.mem.seg,
                c,
                d,
            )? {
                match self.carve(c, me, d) {
                    Ok(span) => {
                        let g = GEOMETRY[c];
                        let blocks = span + g.meta_pages * PAGE_SIZE;
                        self.cache.adopt(
                            &self.mem,
                            head,
                            &self.mem.hdr().transfer,
                            &self.mem.seg,
                            c,
                            (0..g.blocks)
                                .rev()
                                .map(|i| (blocks + i * g.size, span + 8 * i)),
                            d,
                        )?;
                    }
                    Err(Error::OutOfMemory { .. }) if attempt == 0 => {
                        self.recover_space(d)?;
                        continue;
                    }
                    Err(Error::OutOfMemory { .. }) => return Err(self.oom(size)),
                    Err(e) => return Err(e),
                }
            }
            if let Some(b) = self.cache.pop(&self.mem, c, me)? {
                return Ok(b);
            }
        }
        Err(self.oom(size))
    }

    /// Reclaims dead processes' blocks and gives whole free spans back to the page
    /// level, before an out-of-memory error: within the call's deadline `d`, and
    /// [`RECOVERY_WAIT`] at most.
    ///
    /// # Errors
    ///
    /// As [`reclaim_dead`](Self::reclaim_dead) and [`trim`](Self::trim), but not
    /// a lock held past the deadline: a live process stopped inside a transfer
    /// holds the write side up, and the caller then reports `OutOfMemory`.
    #[cold]
    fn recover_space(&self, d: Deadline) -> Result<()> {
        let d = d.within(RECOVERY_WAIT);
        // Our own cached blocks pin their spans: give them back first (a failure
        // only leaves them cached).
        let _ = self.flush_until(d);
        // Ok(false): the deadline passed (stop there).
        let done = |r: Result<()>| match r {
            Ok(()) => Ok(true),
            Err(Error::LockTimeout { .. }) => Ok(false),
            Err(e) => Err(e),
        };
        if done(self.reclaim_dead_until(d).map(drop))? {
            done(self.trim_until(d).map(drop))?;
        }
        Ok(())
    }

    fn oom(&self, requested: u64) -> Error {
        let t = &self.mem;
        let brk = t.brk().load(Ordering::Relaxed);
        let free = t
            .free_pages()
            .load(Ordering::Relaxed)
            .min(t.lay.npages)
            .saturating_add(t.lay.npages.saturating_sub(brk));
        Error::OutOfMemory {
            requested,
            available: free.saturating_mul(PAGE_SIZE),
        }
    }

    /// Takes the page lock (waiting [`LOCK_WAIT`] at most), replaying the journal
    /// of a holder that died.
    pub(crate) fn page_lock(&self) -> Result<RawMutexGuard<'_>> {
        self.page_lock_until(Deadline::after(LOCK_WAIT))
    }

    /// As [`page_lock`](Self::page_lock), waiting until `d` at the latest.
    fn page_lock_until(&self, d: Deadline) -> Result<RawMutexGuard<'_>> {
        match RawMutexGuard::lock(&self.mem.hdr().page_lock, &self.mem.seg, Some(d.at())) {
            Ok(mut g) => {
                if g.inconsistent() {
                    pages::replay(&self.mem);
                    g.make_consistent();
                }
                Ok(g)
            }
            Err(e) => Err(lock_error("the heap's page lock", e.into_lock_error(), d)),
        }
    }

    /// Takes `n` pages for a run of `kind`: from the first free run that fits, or
    /// from the break (committing more of the segment). `prepare(first_page)` runs
    /// before the commit point; `extra` ops join the transaction.
    fn take_pages(
        &self,
        n: u64,
        kind: u64,
        class: usize,
        prepare: impl FnOnce(u64) -> Result<()>,
        extra: impl FnOnce(u64) -> Vec<Op>,
    ) -> Result<u64> {
        let t = &self.mem;
        let from = pages::find_free(t, n)?;
        let (start, mut ops) = pages::take_ops(t, from, n, kind, class)?;
        if start.checked_add(n).is_none_or(|end| end > t.lay.npages) {
            return Err(self.oom(n * PAGE_SIZE));
        }
        t.ensure_pages(start + n)?;
        prepare(start)?;
        ops.extend(extra(start));
        pages::commit(t, &ops);
        Ok(start)
    }

    /// Carves a span of class `c` whose blocks are all `Cached(me)`; returns its
    /// offset.
    fn carve(&self, c: usize, me: OwnerTag, d: Deadline) -> Result<u64> {
        let g = GEOMETRY[c];
        let _pl = self.page_lock_until(d)?;
        let cached = BlockState::Cached(me).to_word();
        let start = self.take_pages(
            g.pages,
            SPAN,
            c,
            |start| {
                // The pages are not a span until the commit: a crash here leaves
                // them free, whatever we wrote.
                let span = self.mem.page_off(start);
                for i in 0..g.blocks {
                    word(&self.mem, span + 8 * i)?.store(cached, Ordering::Relaxed);
                }
                Ok(())
            },
            |_| Vec::new(),
        )?;
        Ok(self.mem.page_off(start))
    }

    #[cold]
    fn alloc_large(&self, size: u64, me: OwnerTag) -> Result<u64> {
        let n = size.div_ceil(PAGE_SIZE);
        if n > self.mem.lay.npages {
            return Err(self.oom(size));
        }
        if n <= MAX_RUN_PAGES {
            while let Some(start) = self.large.take(n) {
                let ow = self.mem.owner(start);
                let ok = pages::run_at(&self.mem, start)
                    .is_some_and(|r| r.kind == LARGE && r.start == start && r.len == n);
                // The CAS (not a load) catches a peer that rewrote the word: a
                // tampered cache entry is dropped and the run left alone.
                // SYNC: Acquire, as every owner-word claim: pairs with the Release
                // of a publish or of the journal's owner store.
                if ok
                    && ow
                        .compare_exchange(
                            BlockState::Cached(me).to_word(),
                            BlockState::Owned(me).to_word(),
                            Ordering::Acquire,
                            Ordering::Relaxed,
                        )
                        .is_ok()
                {
                    return Ok(self.mem.page_off(start));
                }
            }
        }
        let d = Deadline::after(LOCK_WAIT);
        for attempt in 0..2 {
            let r = {
                let _pl = self.page_lock_until(d)?;
                self.take_pages(
                    n,
                    LARGE,
                    0,
                    |_| Ok(()),
                    |start| {
                        vec![Op::Owner {
                            page: start,
                            word: BlockState::Owned(me).to_word(),
                        }]
                    },
                )
            };
            match r {
                Ok(start) => return Ok(self.mem.page_off(start)),
                Err(Error::OutOfMemory { .. }) if attempt == 0 => self.recover_space(d)?,
                Err(Error::OutOfMemory { .. }) => return Err(self.oom(size)),
                Err(e) => return Err(e),
            }
        }
        Err(self.oom(size))
    }

    /// Frees the block at `off`, whoever allocated it (a block handed over by
    /// another process is freed like our own).
    ///
    /// # Errors
    ///
    /// [`Error::BadBlock`] if `off` is not the start of a block of this heap that is
    /// allocated (a double free, an interior or foreign offset); nothing changes
    /// then. [`Error::Corrupt`] if heap metadata was overwritten;
    /// [`Error::LockTimeout`] for a large block whose pages go back while a live
    /// process holds the page lock past the heap's lock bound (5 s).
    ///
    /// # Examples
    ///
    /// ```
    /// use shmkit::{Error, SegmentOptions, alloc::Heap};
    /// let seg = SegmentOptions::heap().create()?;
    /// let heap = Heap::attach(&seg)?;
    /// let off = heap.alloc(64, 8)?;
    /// heap.free(off)?;
    /// assert!(matches!(heap.free(off), Err(Error::BadBlock { .. })));
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    #[inline]
    pub fn free(&self, off: impl Into<u64>) -> Result<()> {
        let off = off.into();
        let me = self.me()?;
        match self.mem.locate(off) {
            Some(loc) => {
                let n = pool::free_small(&self.mem, &self.cache, off, loc, me)?;
                let batch = GEOMETRY[loc.class].batch as usize;
                if n > 2 * batch {
                    // The block is freed (the CAS above was the commit point): a
                    // failed flush only leaves more blocks in our cache.
                    let _ = self.flush_class(loc.class, batch, Deadline::after(LOCK_WAIT));
                }
                Ok(())
            }
            None => self.free_large(off, me),
        }
    }

    #[cold]
    fn flush_class(&self, c: usize, keep: usize, d: Deadline) -> Result<()> {
        self.cache.flush(
            &self.mem,
            self.mem.head(c),
            &self.mem.hdr().transfer,
            &self.mem.seg,
            c,
            keep,
            d,
        )
    }

    /// The large run starting at `off`, if there is one.
    fn large_at(&self, off: u64) -> Option<Run> {
        let rel = off.checked_sub(self.mem.lay.data_off)?;
        if rel % PAGE_SIZE != 0 {
            return None;
        }
        let page = rel / PAGE_SIZE;
        pages::run_at(&self.mem, page).filter(|r| r.kind == LARGE && r.start == page)
    }

    #[cold]
    fn free_large(&self, off: u64, me: OwnerTag) -> Result<()> {
        let bad = || Error::BadBlock {
            offset: off,
            reason: "not the start of a block of this heap",
        };
        let r = self.large_at(off).ok_or_else(bad)?;
        if self.large.has_room(r.len) {
            // Keep the run: the CAS to Cached(me) is the commit point.
            claim(self.mem.owner(r.start), off, BlockState::Cached(me))?;
            self.large.put(r.start, r.len);
            return Ok(());
        }
        let _pl = self.page_lock_until(Deadline::after(LOCK_WAIT))?;
        let r = self.large_at(off).ok_or_else(bad)?;
        // Cached(me), not a used state: a racing free of the same block gets
        // BadBlock; a crash before the commit leaves it ours to reclaim.
        claim(self.mem.owner(r.start), off, BlockState::Cached(me))?;
        self.release_run(r);
        Ok(())
    }

    /// Frees large run `r` at the page level (page lock held, owner word claimed).
    fn release_run(&self, r: Run) {
        let mut ops = pages::free_ops(&self.mem, r);
        ops.push(Op::Owner {
            page: r.start,
            word: FREE_WORD,
        });
        pages::commit(&self.mem, &ops);
    }

    /// Gives the cached large runs back to the page level (the page lock waited
    /// for until `d`; the runs stay cached if it cannot be had).
    fn flush_large(&self, d: Deadline) -> Result<()> {
        if self.large.is_empty() {
            return Ok(());
        }
        let me = self.me()?;
        let _pl = self.page_lock_until(d)?;
        let runs = self.large.drain();
        for (start, n) in runs {
            let Some(r) = pages::run_at(&self.mem, start)
                .filter(|r| r.kind == LARGE && r.start == start && r.len == n)
            else {
                continue;
            };
            // Claim it back before releasing it (it is ours only if the word still
            // says so; a crash after the CAS leaves it Owned(me) for reclaim).
            // SYNC: Acquire pairs with the Release of the journal's owner store.
            if self
                .mem
                .owner(start)
                .compare_exchange(
                    BlockState::Cached(me).to_word(),
                    BlockState::Owned(me).to_word(),
                    Ordering::Acquire,
                    Ordering::Relaxed,
                )
                .is_ok()
            {
                self.release_run(r);
            }
        }
        Ok(())
    }

    /// The owner word and usable size of the block at `off`.
    fn owner_of(&self, off: u64) -> Result<(&AtomicU64, u64)> {
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
        let word = super::owner::shared_stamped(stamp);
        self.publish_word(off, word).map(|()| word)
    }

    fn publish_word(&self, off: u64, to: u64) -> Result<()> {
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
        if !super::owner::is_stamped(word) {
            return Err(Error::BadBlock {
                offset: off,
                reason: "not a stamped published block",
            });
        }
        self.adopt_word(off, word)
    }

    fn adopt_word(&self, off: u64, word: u64) -> Result<()> {
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

    /// Resizes the block at `off` to `new_size` bytes (alignment `align`), keeping
    /// its contents up to the smaller size; returns the (possibly new) offset. A
    /// block that already fits stays where it is.
    ///
    /// # Errors
    ///
    /// As [`alloc`](Self::alloc) and [`free`](Self::free); on error the old block
    /// is untouched.
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let heap = shmkit::alloc::Heap::attach(&seg)?;
    /// let a = heap.alloc(16, 8)?;
    /// let b = heap.realloc(a, 5000, 8)?;
    /// assert!(heap.usable_size(b)? >= 5000);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn realloc(
        &self,
        off: impl Into<u64>,
        new_size: usize,
        align: usize,
    ) -> Result<Offset<u8>> {
        self.realloc_raw(off.into(), new_size, align)
            .map(Offset::new)
    }

    pub(crate) fn realloc_raw(&self, off: u64, new_size: usize, align: usize) -> Result<u64> {
        check_request(new_size as u64, align as u64)?;
        let me = self.me()?;
        let (ow, old) = self.owner_of(off)?;
        let want = new_size as u64;
        let w = ow.load(Ordering::Acquire);
        used(w, off)?;
        // Stay in place if it fits without wasting more than half the block.
        if want <= old && want * 2 > old && off % (align as u64) == 0 {
            return Ok(off);
        }
        // Take the block over first (Owned(me)): while we copy, a reclaim of its
        // old owner (dead, perhaps) must not free it, nor a racing free.
        let mine = BlockState::Owned(me).to_word();
        // SYNC: Acquire pairs with the Release of a publish: its writes are
        // visible before we copy.
        if w != mine
            && ow
                .compare_exchange(w, mine, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
        {
            return Err(Error::BadBlock {
                offset: off,
                reason: "changed hands during realloc",
            });
        }
        let new = match self.alloc_raw(new_size, align) {
            Ok(new) => new,
            Err(e) => {
                // Give it back as we found it. SYNC: Release pairs with the Acquire
                // of whoever claims it next (free, adopt).
                let _ = ow.compare_exchange(mine, w, Ordering::Release, Ordering::Relaxed);
                return Err(e);
            }
        };
        let n = old.min(want) as usize;
        // SAFETY: both blocks are allocated and ours (`off` claimed above, `new`
        // just allocated) and at least `n` bytes long; distinct blocks never
        // overlap.
        unsafe { std::ptr::copy_nonoverlapping(self.mem.ptr(off), self.mem.ptr(new), n) };
        // Ours since the claim: the free cannot fail before its commit point
        // except on corrupt metadata, and then the new block is still valid.
        let _ = self.free(off);
        Ok(new)
    }

    /// Returns the private blocks (owned and cached) of every dead process to the
    /// free lists, with any free block a death left off them. Any process may call
    /// it at any time; allocation elsewhere goes on meanwhile (free-list transfers
    /// pause for the pass).
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] if the metadata is broken (see [`verify`](Self::verify));
    /// [`Error::LockTimeout`] if a live process holds the transfer or page lock
    /// past the heap's lock bound (5 s, both waits together).
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let heap = shmkit::alloc::Heap::attach(&seg)?;
    /// assert_eq!(heap.reclaim_dead()?.blocks, 0);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn reclaim_dead(&self) -> Result<Reclaimed> {
        self.reclaim_dead_until(Deadline::after(LOCK_WAIT))
    }

    /// [`reclaim_dead`](Self::reclaim_dead), waiting for its locks until `d`.
    fn reclaim_dead_until(&self, d: Deadline) -> Result<Reclaimed> {
        let seg = &self.mem.seg;
        let _w = exclusive(&self.mem.hdr().transfer, seg, d)?;
        let _pl = self.page_lock_until(d)?;
        let runs = self.runs()?;
        let mut verdicts: HashMap<OwnerTag, bool> = HashMap::new();
        let mut is_dead =
            |t: OwnerTag| !*verdicts.entry(t).or_insert_with(|| seg.is_owner_alive(t));
        let budget: u64 = runs
            .iter()
            .filter(|r| r.kind == SPAN)
            .map(|r| GEOMETRY[r.class].blocks)
            .sum::<u64>()
            + 1;
        let heads = self.mem.heads();
        let mut out = pool::reclaim(
            &self.mem,
            &heads,
            span_blocks(&self.mem, &runs),
            budget,
            &mut is_dead,
        )?;
        let me = self.me()?;
        for r in runs.iter().filter(|r| r.kind == LARGE) {
            let ow = self.mem.owner(r.start);
            let w = ow.load(Ordering::Acquire);
            let owner = match BlockState::from_word(w) {
                // A large run is never Free outside a page-lock transaction (every
                // release writes Free in the transaction that frees the pages): a
                // Free one was left by an older build's reclaimer that died; free it.
                Some(BlockState::Free) => None,
                Some(s) => match s.private_owner() {
                    Some(t) if is_dead(t) => Some(t),
                    _ => continue,
                },
                None => continue,
            };
            // Claim it for us first (a crash from here on leaves it ours, dead, for
            // the next reclaim), then free it in one journalled transaction.
            // SYNC: Acquire pairs with the journal's Release owner store; the dead
            // owner's own writes are ordered by the registry's liveness verdict.
            if ow
                .compare_exchange(
                    w,
                    BlockState::Owned(me).to_word(),
                    Ordering::Acquire,
                    Ordering::Relaxed,
                )
                .is_err()
            {
                continue;
            }
            // Re-read the neighbours for each free (the previous one may have merged).
            self.release_run(*r);
            out.blocks += 1;
            out.bytes += r.len * PAGE_SIZE;
            if let Some(t) = owner {
                if !out.owners.contains(&t) {
                    out.owners.push(t);
                }
            }
        }
        Ok(out)
    }

    /// Gives spans whose blocks are all free back to the page level (so their pages
    /// can serve other classes and large blocks). Runs automatically before an
    /// out-of-memory error. Returns the pages released.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] if the metadata is broken; [`Error::LockTimeout`] as
    /// [`reclaim_dead`](Self::reclaim_dead).
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let heap = shmkit::alloc::Heap::attach(&seg)?;
    /// let off = heap.alloc(100, 8)?;
    /// heap.free(off)?;
    /// heap.flush()?; // give the cached blocks back first
    /// assert!(heap.trim()? > 0);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn trim(&self) -> Result<u64> {
        self.trim_until(Deadline::after(LOCK_WAIT))
    }

    /// [`trim`](Self::trim), waiting for its locks until `d`.
    fn trim_until(&self, d: Deadline) -> Result<u64> {
        let seg = &self.mem.seg;
        let _w = exclusive(&self.mem.hdr().transfer, seg, d)?;
        let _pl = self.page_lock_until(d)?;
        let runs = self.runs()?;
        let mut empty: Vec<Run> = Vec::new();
        for r in runs.iter().filter(|r| r.kind == SPAN) {
            let g = &GEOMETRY[r.class];
            let span = self.mem.page_off(r.start);
            let all_free = (0..g.blocks).all(|i| {
                self.mem
                    .word(span + 8 * i)
                    .is_some_and(|w| w.load(Ordering::Relaxed) == FREE_WORD)
            });
            if all_free {
                empty.push(*r);
            }
        }
        if empty.is_empty() {
            return Ok(0);
        }
        let in_empty = |b: u64| {
            empty.iter().any(|r| {
                let s = self.mem.page_off(r.start);
                b >= s && b < s + r.len * PAGE_SIZE
            })
        };
        // Take the empty spans' blocks off the lists (they become Free and
        // unlisted: a crash from here on is repaired by reclaim), then free the
        // spans.
        for (c, g) in GEOMETRY.iter().enumerate() {
            if !empty.iter().any(|r| r.class == c) {
                continue;
            }
            let head = self.mem.head(c);
            let mut keep = Vec::new();
            let budget = runs
                .iter()
                .filter(|r| r.kind == SPAN && r.class == c)
                .count() as u64
                * g.blocks
                + 1;
            list::walk(&self.mem, head, c, budget, |b| {
                if !in_empty(b) {
                    keep.push(b);
                }
                true
            })?;
            list::reset(head);
            for chunk in keep.chunks(g.batch as usize) {
                for pair in chunk.windows(2) {
                    word(&self.mem, pair[0])?.store(pair[1], Ordering::Relaxed);
                }
                word(&self.mem, chunk[chunk.len() - 1])?.store(0, Ordering::Relaxed);
                list::push(&self.mem, head, chunk[0], chunk.len() as u32)?;
            }
        }
        let mut released = 0;
        for r in empty {
            pages::commit(&self.mem, &pages::free_ops(&self.mem, r));
            released += r.len;
        }
        Ok(released)
    }

    /// Gives this handle's cached free blocks back to the shared lists (dropping
    /// the handle does it too). Waits for the locks the heap's lock bound (5 s) at
    /// most *in all*, however many size classes are cached: once a lock has made
    /// it wait that long, the remaining classes are tried once, without waiting.
    /// What could not be given back stays cached (and is reclaimed once this
    /// process is dead, if it never is).
    ///
    /// # Errors
    ///
    /// The first failure: [`Error::Corrupt`] if a cached chain was overwritten, or
    /// a lock word names this handle's attachment while none of its threads holds
    /// it (a forged or stray write: reported at once, not waited on);
    /// [`Error::LockTimeout`] if a live process (stopped, say) held a heap lock
    /// past the bound.
    ///
    /// # Examples
    ///
    /// See [`trim`](Self::trim).
    pub fn flush(&self) -> Result<()> {
        self.flush_until(Deadline::after(LOCK_WAIT))
    }

    /// [`flush`](Self::flush), waiting for the locks until `d`.
    fn flush_until(&self, d: Deadline) -> Result<()> {
        let mut first = Ok(());
        for c in 0..CLASSES {
            if let Err(e) = self.flush_class(c, 0, d) {
                first = first.and(Err(e));
            }
        }
        let large = self.flush_large(d);
        first.and(large)
    }

    /// Every run of the tiling, in order (bounded by the break).
    pub(crate) fn runs(&self) -> Result<Vec<Run>> {
        let brk = self.mem.brk().load(Ordering::Acquire);
        let mut out = Vec::new();
        let mut p = 0;
        while p < brk {
            let r = pages::run_starting(&self.mem, p)?;
            out.push(r);
            p = r.end();
        }
        Ok(out)
    }
}

impl Drop for Heap {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// Every small block of the spans among `runs`, with its class.
pub(crate) fn span_blocks<'a>(
    mem: &'a SegMem,
    runs: &'a [Run],
) -> impl Iterator<Item = (u64, usize)> + 'a {
    runs.iter().filter(|r| r.kind == SPAN).flat_map(move |r| {
        let g = GEOMETRY[r.class];
        let blocks = mem.page_off(r.start) + g.meta_pages * PAGE_SIZE;
        (0..g.blocks).map(move |i| (blocks + i * g.size, r.class))
    })
}

fn word(mem: &SegMem, off: u64) -> Result<&AtomicU64> {
    mem.word(off)
        .ok_or_else(|| Error::corrupt("heap", format!("word {off:#x} out of range")))
}

/// Checks an owner word says the block is handed out.
fn used(w: u64, off: u64) -> Result<()> {
    match BlockState::from_word(w) {
        Some(s) if s.is_used() => Ok(()),
        Some(_) => Err(Error::BadBlock {
            offset: off,
            reason: "not allocated",
        }),
        None => Err(Error::corrupt(
            "heap owner word",
            format!("block {off:#x}: {w:#018x}"),
        )),
    }
}

/// CASes a used owner word to `to` (the commit point of a large free).
fn claim(ow: &AtomicU64, off: u64, to: BlockState) -> Result<()> {
    let mut w = ow.load(Ordering::Acquire);
    loop {
        used(w, off)?;
        // SYNC: Acquire pairs with the Release of a publish (the last user's writes
        // happen before the block is reused).
        match ow.compare_exchange(w, to.to_word(), Ordering::Acquire, Ordering::Acquire) {
            Ok(_) => return Ok(()),
            Err(seen) => w = seen,
        }
    }
}

/// Checks a size and alignment as `alloc` accepts them.
#[inline]
fn check_request(size: u64, align: u64) -> Result<()> {
    if size == 0 || size > MAX_ALLOC {
        return Err(Error::InvalidSize {
            size,
            reason: "an allocation must be 1 byte to 64 GiB",
        });
    }
    if !align.is_power_of_two() || align > PAGE_SIZE {
        return Err(Error::InvalidArgument(
            "alignment must be a power of two no greater than 4096",
        ));
    }
    Ok(())
}

fn not_attached() -> Error {
    Error::InvalidArgument("this handle acts for no registry slot (forked without after_fork?)")
}

const _: () = assert!(FREE == 1);

#[cfg(test)]
mod tests {
    //! Unit tests over a heap-backed segment (the ones miri runs).
    use super::*;
    use crate::SegmentOptions;

    /// Small under miri (every instruction is interpreted there).
    const MAX: u64 = if cfg!(miri) { 1 << 20 } else { 4 << 20 };

    /// A small block size (a class with few blocks per span under miri).
    const SMALL: usize = if cfg!(miri) { 1000 } else { 48 };

    fn seg() -> Segment {
        SegmentOptions::heap().max_size(MAX).create().unwrap()
    }

    #[test]
    fn blocks_of_every_kind_round_trip_and_verify() {
        let s = seg();
        let h = Heap::attach(&s).unwrap();
        let start = h.stats().unwrap().used;
        let mut live = Vec::new();
        // Under miri, fewer tiny classes (their spans hold thousands of blocks).
        let sizes: &[usize] = if cfg!(miri) {
            &[100, 1000, 4096, 20_000, 40_000, 150_000]
        } else {
            &[
                1,
                16,
                17,
                100,
                1000,
                4096,
                20_000,
                32 << 10,
                40_000,
                150_000,
            ]
        };
        for (k, &size) in sizes.iter().enumerate() {
            let off = h.alloc_raw(size, 8).unwrap();
            assert!(h.usable_size(off).unwrap() >= size as u64);
            // SAFETY: a live block of `size` bytes we own.
            unsafe { h.ptr(off).unwrap().as_ptr().write_bytes(k as u8, size) };
            live.push((off, size, k as u8));
        }
        let r = h.verify();
        assert!(r.is_clean(), "{r}");
        for (off, size, k) in live {
            // SAFETY: as above; nobody else wrote it.
            let last = unsafe { h.ptr(off).unwrap().as_ptr().add(size - 1).read() };
            assert_eq!(last, k);
            h.free(off).unwrap();
            assert!(matches!(h.free(off), Err(Error::BadBlock { .. })));
        }
        assert_eq!(h.stats().unwrap().used, start);
        h.flush().unwrap();
        assert!(h.verify().is_clean());
    }

    #[test]
    fn a_dead_handles_blocks_come_back_and_live_ones_stay() {
        let s = seg();
        let h = Heap::attach(&s).unwrap();
        let mine = h.alloc_raw(SMALL, 8).unwrap();
        let peer = s.try_clone().unwrap();
        {
            let p = Heap::attach(&peer).unwrap();
            let shared = p.alloc_raw(64, 8).unwrap();
            p.publish(shared).unwrap();
            for _ in 0..20 {
                p.alloc_raw(SMALL, 8).unwrap();
            }
            p.alloc_raw(100_000, 8).unwrap();
            // Its cache goes back (a kill would leave it to reclaim too; the crash
            // tests cover that); what it allocated stays Owned by it.
            drop(p);
        }
        peer.simulate_crash();
        let back = h.reclaim_dead().unwrap();
        assert_eq!(back.owners.len(), 1);
        assert!(back.bytes >= 20 * SMALL as u64 + 100_000);
        assert_eq!(h.state(mine).unwrap(), BlockState::Owned(s.owner_tag()));
        let r = h.verify();
        assert!(r.is_clean(), "{r}");
        assert!(r.stats.owners.iter().all(|o| o.alive));
        assert_eq!(h.reclaim_dead().unwrap().blocks, 0);
    }

    #[test]
    fn out_of_memory_is_an_error_and_trim_makes_room_again() {
        let s = seg();
        let h = Heap::attach(&s).unwrap();
        let mut small = Vec::new();
        let err = loop {
            match h.alloc_raw(2000, 8) {
                Ok(off) => small.push(off),
                Err(e) => break e,
            }
        };
        assert!(
            matches!(
                err,
                Error::OutOfMemory {
                    requested: 2000,
                    ..
                }
            ),
            "{err}"
        );
        assert!(h.verify().is_clean());
        for off in small {
            h.free(off).unwrap();
        }
        // The pages went to 2 KiB spans; a large block needs them back.
        let big = h.alloc_raw(MAX as usize / 4, 4096).unwrap();
        assert_eq!(big % 4096, 0);
        h.free(big).unwrap();
        h.flush().unwrap();
        assert!(h.verify().is_clean());
    }

    #[test]
    fn bad_offsets_are_refused_without_damage() {
        let s = seg();
        let h = Heap::attach(&s).unwrap();
        let a = h.alloc_raw(100, 8).unwrap();
        let big = h.alloc_raw(50_000, 8).unwrap();
        for bad in [
            0,
            8,
            a + 16,
            a + 1,
            big + 4096,
            big + 8,
            u64::MAX,
            s.committed(),
        ] {
            assert!(
                matches!(h.free(bad), Err(Error::BadBlock { .. })),
                "{bad:#x}"
            );
        }
        assert!(h.adopt(a).is_err()); // not published
        h.publish(a).unwrap();
        assert!(h.publish(a).is_err()); // no longer ours
        h.adopt(a).unwrap();
        h.free(a).unwrap();
        h.free(big).unwrap();
        assert!(matches!(h.free(big), Err(Error::BadBlock { .. })));
        assert!(matches!(h.alloc_raw(0, 8), Err(Error::InvalidSize { .. })));
        assert!(matches!(h.alloc_raw(8, 3), Err(Error::InvalidArgument(_))));
        assert!(matches!(
            h.alloc_raw(8, 8192),
            Err(Error::InvalidArgument(_))
        ));
        assert!(h.verify().is_clean());
    }
}
