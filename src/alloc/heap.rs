//! [`Heap`]: the shared allocator's handle.
#![allow(unsafe_code)]

use crate::loom::{AtomicU64, Ordering};
use crate::segment::Segment;
use crate::sync::raw::RawMutexGuard;
use crate::{Error, Offset, OwnerTag, PAGE_SIZE, Result};

use super::class::{GEOMETRY, class_of};
use super::large_cache::LargeCache;
use super::mem::Mem;
use super::owner::BlockState;
use super::pages::{self, FREE, Run, SPAN, Table};
use super::pool::{self, Cache, Deadline, LOCK_WAIT, lock_error};
use super::seg_mem::SegMem;

mod handoff;
mod large;
mod upkeep;

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
