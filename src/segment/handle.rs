//! `Segment`: one process's handle on a shared-memory segment.
#![allow(unsafe_code)]

use std::os::fd::AsFd;
use std::sync::Arc as StdArc;

use crate::error::{Error, Result};
use crate::layout::{PAGE_SIZE, align_up};
use crate::loom::{AtomicU64, Ordering};
use crate::segment::header::{Header, HeaderFields, check_committed};
use crate::segment::mapping::Mapping;
use crate::segment::options::{SegmentKind, SegmentOptions, Spec};
use crate::segment::os::{fd, sysv};
use crate::segment::registry::{self, Identity, STATUS_MASK, Slot};
use crate::segment::store::Store;
use crate::segment::{names, proc};

mod access;
mod attachments;
mod lifetime;
mod sharing;

pub use sharing::recv_fd;

/// A process's handle on a shared-memory segment.
///
/// Every handle holds one slot of the segment's process registry for its lifetime;
/// the slot's liveness lock is released by the kernel if the process dies, so peers
/// can tell a dead holder from a live one (see [`Segment::slot_info`]).
///
/// The mapping covers `max_size` bytes at a fixed address for the handle's
/// lifetime; only the first [`committed`](Segment::committed) bytes are backed and
/// may be touched.
///
/// Clones (`Clone`) share one attachment: one registry slot, one owner tag. Heaps
/// and object handles ([`Shared`](crate::Shared)) keep a clone. Dropping the *last*
/// clone detaches; if the attachment *created* a named segment, that also removes
/// the name, unless [`persist`](Segment::persist) was called.
/// [`try_clone`](Segment::try_clone) makes a second attachment instead.
///
/// # Examples
///
/// ```
/// use shmkit::SegmentOptions;
///
/// let seg = SegmentOptions::anonymous().max_size(1 << 20).create()?;
/// assert!(seg.committed() <= seg.max_size());
/// let me = seg.slot();
/// assert!(seg.is_alive(me)?);
/// # Ok::<(), shmkit::Error>(())
/// ```
pub struct Segment {
    pub(super) inner: StdArc<Inner>,
}

/// What the clones of one [`Segment`] share: the mapping, the store and the
/// registry slot. Dropping the last clone detaches.
pub(crate) struct Inner {
    pub(super) map: StdArc<Mapping>,
    pub(super) store: Store,
    pub(super) spec: Spec,
    pub(super) ident: Option<fd::Identity>,
    pub(super) fields: HeaderFields,
    pub(super) slot: u32,
    pub(super) incarnation: u64,
    pub(super) pid: u32,
    pub(super) created: bool,
    /// Set by `persist` (process-local).
    pub(super) persist: crate::loom::AtomicU32,
    /// Set by `simulate_crash_now`: the handle behaves as a dead process's (test
    /// support); process-local.
    pub(super) crashed: crate::loom::AtomicU32,
    /// The fork generation this handle acts for (see `os::fork`).
    pub(super) fork_gen: u64,
    /// Set when a forked child's `after_fork` gave another handle a new
    /// attachment and pointed this one's descriptors at /dev/null (process-local).
    pub(super) disowned: crate::loom::AtomicU32,
    /// Process-local state of the directory (which objects this handle holds).
    pub(crate) local: std::sync::Mutex<crate::segment::Local>,
    /// Bytes from offset 0 that this attachment has backed itself (`fallocate`),
    /// whatever the header's `committed` claims: `u64::MAX` for kinds that have
    /// nothing to back this way (see [`Segment::back_observed`]). Process-local.
    pub(super) ensured: AtomicU64,
    /// The last committed value read from the header that could not be backed (so
    /// that it is tried once, not on every read). Process-local.
    pub(super) refused: AtomicU64,
    /// The robust locks this attachment's threads are taking or holding (tells a
    /// lock word forged with our tag from a hold by another of our threads).
    pub(super) held: crate::sync::HeldLocks,
}

/// The initial `ensured` of a handle on `store`: 0 where the attachment must back
/// what it uses with `fallocate` (descriptor-backed kinds), `u64::MAX` where there
/// is nothing to back (heap-backed) or where pages come on demand from memory and
/// are not on a size-limited store (System V).
fn initial_ensured(store: &Store) -> u64 {
    match store {
        Store::Fd(_) => 0,
        Store::SysV { .. } | Store::Heap { .. } => u64::MAX,
    }
}

impl Clone for Segment {
    /// Another handle on the same attachment: the same registry slot and owner
    /// tag, the same mapping. Cheap (a reference count); the slot is released when
    /// the last clone is dropped. [`try_clone`](Segment::try_clone) instead takes a
    /// new slot.
    fn clone(&self) -> Self {
        Segment {
            inner: self.inner.clone(),
        }
    }
}

impl Segment {
    /// Takes a registry slot for a new handle on `map`.
    pub(super) fn attach(
        map: StdArc<Mapping>,
        store: Store,
        spec: Spec,
        ident: Option<fd::Identity>,
        fields: HeaderFields,
        created: bool,
    ) -> Result<Segment> {
        let ensured = initial_ensured(&store);
        let held = super::owner::held_record(&map);
        let mut seg = Segment {
            inner: StdArc::new(Inner {
                map,
                store,
                spec,
                ident,
                fields,
                slot: u32::MAX,
                incarnation: 0,
                pid: proc::self_pid(),
                created: false,
                persist: crate::loom::AtomicU32::new(0),
                crashed: crate::loom::AtomicU32::new(0),
                fork_gen: crate::segment::os::fork::generation(),
                disowned: crate::loom::AtomicU32::new(0),
                local: std::sync::Mutex::new(crate::segment::Local::default()),
                ensured: AtomicU64::new(ensured),
                refused: AtomicU64::new(0),
                held,
            }),
        };
        seg.back_at_attach()?;
        seg.claim_slot()?;
        seg.inner_mut().created = created;
        Ok(seg)
    }

    /// The shared state, while this is its only handle (construction, after_fork).
    ///
    /// # Panics
    ///
    /// If another clone exists: callers only use it on a handle they just made.
    pub(super) fn inner_mut(&mut self) -> &mut Inner {
        StdArc::get_mut(&mut self.inner).expect("a segment handle under construction has no clones")
    }

    fn claim_slot(&mut self) -> Result<()> {
        let who = Identity {
            incarnation: loop {
                let v = names::random_u64()? & !STATUS_MASK;
                if v != 0 {
                    break v;
                }
            },
            pid: proc::self_pid(),
            uid: rustix::process::geteuid().as_raw(),
            start_time: proc::self_start_time(),
            pidns: proc::self_pidns(),
            now_ns: proc::now_ns(),
        };
        let slot = match registry::claim(self.slots(), &self.inner.store.locks(), &who) {
            Ok(s) => s,
            Err(Error::RegistryFull { .. }) => {
                self.reclaim_dead()?;
                registry::claim(self.slots(), &self.inner.store.locks(), &who)?
            }
            Err(e) => return Err(e),
        };
        let inner = self.inner_mut();
        inner.slot = slot;
        inner.incarnation = who.incarnation;
        Ok(())
    }

    /// The registry slots (validated offsets from the header snapshot).
    fn slots(&self) -> &[Slot] {
        self.inner.slots()
    }

    /// Process-local bookkeeping shared by this attachment's clones.
    pub(crate) fn local(&self) -> &std::sync::Mutex<crate::segment::Local> {
        &self.inner.local
    }

    /// The header's `committed` word (projected: no reference to the header's plain
    /// fields, which a misbehaving peer may write, is ever made).
    fn committed_word(&self) -> &AtomicU64 {
        let header = self.inner.map.ptr().as_ptr().cast::<Header>();
        // SAFETY: the mapping starts with a Header (len >= HEADER_SIZE, page-aligned);
        // `committed` is an atomic, valid for any bit pattern, living as long as
        // `self.inner.map`, which `self` keeps alive.
        unsafe { &*std::ptr::addr_of!((*header).committed) }
    }

    /// Base address of the mapping in this process. Addresses differ between
    /// processes: store [`Offset`](crate::Offset)s in the segment, never pointers.
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// assert_eq!(seg.as_ptr() as usize % 4096, 0);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn as_ptr(&self) -> *mut u8 {
        self.inner.map.ptr().as_ptr()
    }

    /// Bytes of address space reserved (and mapped) for the segment.
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().max_size(1 << 20).create()?;
    /// assert_eq!(seg.max_size(), 1 << 20);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn max_size(&self) -> u64 {
        self.inner.fields.max_size
    }

    /// Bytes currently backed. Only these may be touched.
    ///
    /// A value a peer corrupted is clamped to `[user_offset, max_size]`. The value
    /// comes from the shared header, which any peer may write, so a descriptor-backed
    /// segment backs every growth it observes there with `fallocate` before
    /// reporting it (once per value seen; nothing is allocated over pages already
    /// backed); if the store cannot hold it (a peer claimed more than it backed),
    /// only what this handle's attachment backed is reported, and growing past it is
    /// [`Error::NoSpace`] from [`commit`](Self::commit), never a SIGBUS.
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().no_heap().committed(64 << 10).create()?;
    /// assert_eq!(seg.committed(), 64 << 10);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn committed(&self) -> u64 {
        // SYNC: Acquire pairs with the Release fetch_max in `commit`: the committer
        // backed the new range before it published it. (Not trusted for backing:
        // see below.)
        let c = self.committed_word().load(Ordering::Acquire);
        let c = check_committed(c, &self.inner.fields).unwrap_or(self.inner.fields.user_offset);
        // SYNC: Acquire pairs with the Release fetch_max after our own fallocate (in
        // `back_observed`, `back_at_attach`, `commit`), in whichever thread ran it.
        if c <= self.inner.ensured.load(Ordering::Acquire) {
            return c;
        }
        self.back_observed(c)
    }

    /// The header claims `c` bytes committed, more than this attachment has backed
    /// itself: back the difference first, since a peer may write any value there
    /// and touching an unbacked page of a full store is a SIGBUS. `fallocate` over
    /// pages a peer really backed allocates nothing and succeeds at once; over a
    /// lie it either makes the backing real or fails, and then only what this
    /// attachment backed is reported (growing past it is then
    /// [`Error::NoSpace`] from [`commit`](Self::commit)). One syscall per value
    /// observed: a value that could not be backed is not tried again.
    #[cold]
    #[inline(never)]
    fn back_observed(&self, c: u64) -> u64 {
        let inner = &*self.inner;
        // SYNC: Acquire as in `committed`.
        let ensured = inner.ensured.load(Ordering::Acquire);
        if c <= ensured {
            return c; // another thread backed it meanwhile
        }
        if inner.refused.load(Ordering::Relaxed) == c {
            return ensured;
        }
        match inner.store.commit(&inner.map, ensured, c) {
            Ok(()) => {
                // SYNC: Release pairs with the Acquire loads in `committed`: [0, c)
                // is backed before any thread of ours relies on it.
                inner.ensured.fetch_max(c, Ordering::Release);
                c
            }
            Err(_) => {
                inner.refused.store(c, Ordering::Relaxed);
                ensured
            }
        }
    }

    /// At attach, before anything is written: backs the whole range the header
    /// claims committed (nothing another process wrote is trusted), so a lie there
    /// fails the attach with [`Error::NoSpace`] instead of a later SIGBUS. Over
    /// pages really backed it allocates nothing.
    #[cold]
    fn back_at_attach(&self) -> Result<()> {
        let inner = &*self.inner;
        // SYNC: Acquire as in `committed` (here: our own initial value).
        if inner.ensured.load(Ordering::Acquire) == u64::MAX {
            return Ok(());
        }
        // SYNC: Acquire as in `committed`.
        let c = self.committed_word().load(Ordering::Acquire);
        let c = check_committed(c, &inner.fields).unwrap_or(inner.fields.user_offset);
        inner.store.commit(&inner.map, 0, c)?;
        // SYNC: Release pairs with the Acquire loads in `committed`.
        inner.ensured.fetch_max(c, Ordering::Release);
        Ok(())
    }

    /// Grows the committed size to at least `bytes` (rounded up to a page). Every
    /// attached process sees the new size at once; nothing is remapped.
    ///
    /// # Errors
    ///
    /// [`Error::ForkedHandle`] in a forked child that has not called
    /// [`after_fork`](Self::after_fork).
    /// [`Error::InvalidSize`] beyond `max_size`; [`Error::NoSpace`] if the backing
    /// store (/dev/shm, the file system) is full, in which case nothing changes.
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::memfd().max_size(1 << 20).create()?;
    /// let c = seg.commit(seg.committed() + 5000)?;
    /// assert_eq!(c % 4096, 0);
    /// assert!(seg.commit(2 << 20).is_err());
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn commit(&self, bytes: u64) -> Result<u64> {
        self.check_pid()?;
        let want = align_up(bytes, PAGE_SIZE).unwrap_or(u64::MAX);
        if want > self.inner.fields.max_size {
            return Err(Error::InvalidSize {
                size: bytes,
                reason: "beyond the segment's max_size",
            });
        }
        let cur = self.committed();
        if want <= cur {
            return Ok(cur);
        }
        self.inner.store.commit(&self.inner.map, cur, want)?;
        // SYNC: Release pairs with the Acquire loads of `ensured` in `committed`:
        // this attachment backed [0, want) itself (`cur` is at most what it had).
        self.inner.ensured.fetch_max(want, Ordering::Release);
        // SYNC: Release pairs with the Acquire load in `committed`; publishes that
        // [cur, want) is backed.
        self.committed_word().fetch_max(want, Ordering::Release);
        Ok(self.committed())
    }

    /// The first offset past the header and registry: where the user region (the
    /// [raw region](Self::raw_region), then the heap) begins.
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().registry_slots(8).create()?;
    /// assert_eq!(seg.user_offset(), 8192); // header page + one registry page
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn user_offset(&self) -> u64 {
        self.inner.fields.user_offset
    }

    /// Whether the segment has a heap (the default; see
    /// [`SegmentOptions::no_heap`](crate::SegmentOptions::no_heap)). Fixed at
    /// creation and recorded in the checksummed header.
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(shmkit::SegmentOptions::heap().create()?.has_heap());
    /// assert!(!shmkit::SegmentOptions::heap().no_heap().create()?.has_heap());
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn has_heap(&self) -> bool {
        self.inner.fields.heap_offset != 0
    }

    /// Where the heap's header is, if the segment has a heap: the end of the
    /// [raw region](Self::raw_region).
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// assert_eq!(seg.heap_offset(), Some(seg.user_offset()));
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn heap_offset(&self) -> Option<u64> {
        Some(self.inner.fields.heap_offset).filter(|&o| o != 0)
    }

    /// The segment's random seed (for hash maps), the same in every process.
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// assert_eq!(seg.try_clone()?.seed(), seg.seed());
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn seed(&self) -> u64 {
        self.inner.fields.seed
    }

    /// The creator's pid (in its pid namespace).
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// assert_eq!(seg.creator_pid(), std::process::id());
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn creator_pid(&self) -> u32 {
        self.inner.fields.creator_pid
    }

    /// The kind of segment.
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// assert_eq!(seg.kind(), shmkit::SegmentKind::Heap);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn kind(&self) -> SegmentKind {
        self.inner.spec.kind()
    }

    /// The System V id, for System V segments.
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::sysv_private().max_size(1 << 20).create()?;
    /// let id = seg.sysv_id().unwrap();
    /// // A child would get it as, e.g., `Command::env("MY_SHM_ID", id.to_string())`.
    /// let peer = shmkit::SegmentOptions::sysv_id(id).open()?;
    /// assert_eq!(peer.seed(), seg.seed());
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn sysv_id(&self) -> Option<i32> {
        match self.inner.store {
            Store::SysV { id, .. } => Some(id),
            _ => None,
        }
    }

    /// Opens the System V segment whose id is in environment variable `var` (as
    /// AFL++ passes `__AFL_SHM_ID` to its targets).
    ///
    /// # Errors
    ///
    /// [`Error::BadEnv`] if the variable is unset, not UTF-8 or not a non-negative
    /// integer; then as [`SegmentOptions::open`].
    ///
    /// # Examples
    ///
    /// ```
    /// let r = shmkit::Segment::sysv_from_env("SHMKIT_DOC_UNSET_VARIABLE");
    /// assert!(matches!(r, Err(shmkit::Error::BadEnv { .. })));
    /// ```
    pub fn sysv_from_env(var: &str) -> Result<Segment> {
        let bad = |reason: String| Error::BadEnv {
            var: var.to_owned(),
            reason,
        };
        let value = std::env::var(var).map_err(|e| bad(e.to_string()))?;
        let id: i32 = value
            .trim()
            .parse()
            .map_err(|e| bad(format!("{value:?} is not an id: {e}")))?;
        if id < 0 {
            return Err(bad(format!("{id} is negative")));
        }
        SegmentOptions::sysv_id(id).open()
    }

    /// Test support: drop the handle as if its process had been killed: liveness
    /// locks are released (as the kernel would), but the registry slot is not
    /// cleared and nothing is removed.
    ///
    /// # Panics
    ///
    /// If other clones of this attachment exist (inside a `Heap` or a `Shared`,
    /// say): a guard borrowed from one of them could outlive the "death". Drop
    /// them first, or use the `unsafe` [`simulate_crash_now`](Self::simulate_crash_now).
    #[cfg(any(test, feature = "testkit"))]
    #[doc(hidden)]
    pub fn simulate_crash(self) {
        assert_eq!(
            StdArc::strong_count(&self.inner),
            1,
            "simulate_crash needs the only handle of its attachment (drop clones, heaps and \
             object handles first, or use simulate_crash_now)"
        );
        // SAFETY: this is the only handle of the attachment and we own it, so no
        // guard borrows it or any clone of it.
        unsafe { self.simulate_crash_now() };
    }

    /// Test support: from now on this handle is a dead process's: its liveness
    /// locks are released (as the kernel would), and dropping it later clears
    /// nothing. Guards taken through it must be forgotten, not dropped (a dead
    /// process unlocks nothing). Usable while such guards still borrow it.
    ///
    /// # Safety
    ///
    /// Every guard taken through this handle must be forgotten (never dropped or
    /// used again): another handle may now take the locks over, and a guard still
    /// used would give two holders.
    #[cfg(any(test, feature = "testkit"))]
    #[doc(hidden)]
    pub unsafe fn simulate_crash_now(&self) {
        self.inner.crashed.store(1, Ordering::Relaxed);
        self.inner.store.release_like_exit(self.inner.slot);
    }
}

impl Inner {
    /// The registry slots (validated offsets from the header snapshot).
    pub(super) fn slots(&self) -> &[Slot] {
        // SAFETY: `validate` proved the registry 64-aligned and inside the committed
        // part of our mapping (below user_offset); Slot is atomics only (any bits
        // valid), and the slice borrows `self`, which keeps the mapping alive.
        unsafe {
            std::slice::from_raw_parts(
                self.map
                    .ptr()
                    .as_ptr()
                    .add(self.fields.registry_offset as usize)
                    .cast::<Slot>(),
                self.fields.registry_slots as usize,
            )
        }
    }

    fn release_slot(&mut self) -> bool {
        if self.slot == u32::MAX || self.pid != proc::self_pid() {
            return false;
        }
        let ours = registry::release(
            self.slots(),
            &self.store.locks(),
            self.slot,
            self.incarnation,
        );
        self.slot = u32::MAX;
        ours
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if self.pid != proc::self_pid() || self.crashed.load(Ordering::Relaxed) != 0 {
            // An inherited copy in a forked child that never called after_fork, or
            // a handle playing a dead process: touch nothing shared.
            return;
        }
        self.release_slot();
        if self.created && self.persist.load(Ordering::Relaxed) == 0 {
            match &self.spec {
                Spec::Posix(name) => {
                    if let (Ok(bare), Some(id)) = (names::validate(name), self.ident) {
                        let _ = fd::unlink_if_same(&fd::shm_path(bare), id);
                    }
                }
                Spec::File(path) => {
                    if let Some(id) = self.ident {
                        let _ = fd::unlink_if_same(path, id);
                    }
                }
                Spec::SysV(_) => {
                    if let Store::SysV { id, .. } = self.store {
                        let _ = sysv::remove(id);
                    }
                }
                _ => {}
            }
        }
        if let Store::SysV { id, lock } = &self.store {
            // The last shmkit handle on a removed segment takes its lock file along.
            sysv::discard_if_removed(*id, lock.as_fd());
        }
    }
}

// Handles are shared between threads (everything in them is immutable or atomic).
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Segment>();
};

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("kind", &self.kind())
            .field("max_size", &self.inner.fields.max_size)
            .field("committed", &self.committed())
            .field("slot", &self.inner.slot)
            .finish_non_exhaustive()
    }
}
