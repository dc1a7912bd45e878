//! `Segment`: one process's handle on a shared-memory segment.
#![allow(unsafe_code)]

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::Arc as StdArc;

use crate::error::{Error, Result};
use crate::layout::{PAGE_SIZE, ShmSafe, ShmShared, align_up};
use crate::loom::{AtomicU64, Ordering};
use crate::ptr::Offset;
use crate::segment::header::{Header, HeaderFields, check_committed};
use crate::segment::liveness::{SLOT_CHANGES, SUSPECT_RETRIES, corrupt_slot, read_slot};
use crate::segment::mapping::Mapping;
use crate::segment::options::{SegmentKind, SegmentOptions, Spec};
use crate::segment::os::{fd, memfd, sysv};
use crate::segment::registry::{self, ACTIVE, Identity, STATUS_MASK, Slot};
use crate::segment::slot_info::{SlotInfo, SlotState};
use crate::segment::store::Store;
use crate::segment::{names, proc};

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
    /// processes: store [`Offset`]s in the segment, never pointers.
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
    fn outside_raw(&self, off: u64, size: u64, e: Error) -> Error {
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

    /// The descriptor of a descriptor-backed segment (posix, file, memfd, anonymous).
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::memfd().create()?;
    /// assert!(seg.as_fd().is_some());
    /// assert!(shmkit::SegmentOptions::heap().create()?.as_fd().is_none());
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn as_fd(&self) -> Option<BorrowedFd<'_>> {
        match &self.inner.store {
            Store::Fd(f) => Some(f.as_fd()),
            _ => None,
        }
    }

    /// Sends a memfd or anonymous segment's descriptor over a connected Unix socket.
    ///
    /// # Errors
    ///
    /// [`Error::ForkedHandle`] in a forked child that has not called
    /// [`after_fork`](Self::after_fork).
    /// [`Error::InvalidArgument`] for other kinds; [`Error::Os`] if `sendmsg` fails.
    ///
    /// # Examples
    ///
    /// See [`SegmentOptions::open_fd`].
    pub fn send_fd(&self, socket: &impl AsFd) -> Result<()> {
        self.check_pid()?;
        match (&self.inner.spec, &self.inner.store) {
            (Spec::Memfd | Spec::Anonymous, Store::Fd(f)) => {
                // A fresh description: ours carries our liveness locks, which must
                // not live on in a message in flight or in the receiver.
                let fresh = fd::reopen(f.as_fd())?;
                memfd::send_fd(socket.as_fd(), fresh.as_fd())
            }
            _ => Err(Error::InvalidArgument(
                "only memfd segments are sent as descriptors",
            )),
        }
    }

    /// Keeps a created named segment after this handle is dropped.
    ///
    /// # Examples
    ///
    /// ```
    /// let name = shmkit::unique_name("doc-persist-")?;
    /// let mut seg = shmkit::SegmentOptions::posix(&name).create()?;
    /// seg.persist();
    /// drop(seg);
    /// assert!(shmkit::SegmentOptions::posix(&name).open().is_ok());
    /// shmkit::SegmentOptions::posix(&name).remove()?;
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn persist(&mut self) {
        self.inner.persist.store(1, Ordering::Relaxed);
    }

    /// Removes the segment's name *now* and stays attached: "remove now, stay
    /// attached".
    ///
    /// From this call on, opening the name (POSIX name, file path, System V key or
    /// id) fails with [`Error::NotFound`], and a POSIX or file name can be created
    /// anew. Every handle already attached (this one, its clones, other handles and
    /// other processes') keeps a fully working mapping until it detaches; the memory
    /// goes away with the last detach, however that process ends (a POSIX or file
    /// object is unlinked and lives while mapped; a System V segment is marked with
    /// `shmctl(IPC_RMID)`, which Linux applies at its last `shmdt`). So nothing is
    /// leaked when every process is then killed: what a fuzzing harness wants once
    /// its targets have attached (or right after creating a segment that its forked
    /// children inherit), since a SIGKILLed parent never runs its cleanup. A System
    /// V segment's companion lock file goes with the last handle's detach.
    ///
    /// A POSIX or file name is removed only while it still names this segment.
    /// Dropping the creating handle afterwards removes nothing more.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] if the name is already removed (or names another object
    /// now); [`Error::InvalidArgument`] for kinds without a name (memfd, anonymous,
    /// heap); [`Error::ForkedHandle`] in a forked child that has not called
    /// [`after_fork`](Self::after_fork); [`Error::Os`].
    ///
    /// # Examples
    ///
    /// ```
    /// use shmkit::{Error, SegmentOptions};
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// let seg = SegmentOptions::sysv_private().max_size(1 << 20).create()?;
    /// let word = seg.find_or_create::<AtomicU64>("word", ())?;
    /// let id = seg.sysv_id().unwrap();
    /// seg.remove_now()?;
    /// assert!(matches!(SegmentOptions::sysv_id(id).open(), Err(Error::NotFound(_))));
    /// // Still attached, still usable, until the last handle detaches.
    /// word.store(7, Ordering::Relaxed);
    /// assert_eq!(word.load(Ordering::Relaxed), 7);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn remove_now(&self) -> Result<()> {
        self.check_pid()?;
        match (&self.inner.spec, &self.inner.store) {
            (_, Store::SysV { id, .. }) => {
                if sysv::stat(*id)?.dest {
                    return Err(Error::NotFound(format!(
                        "System V segment id {id} (already removed)"
                    )));
                }
                sysv::remove(*id)
            }
            (Spec::Posix(name), _) => self.unlink_own(&fd::shm_path(names::validate(name)?), name),
            (Spec::File(path), _) => self.unlink_own(path, &path.display().to_string()),
            _ => Err(Error::InvalidArgument(
                "this kind of segment has no name to remove",
            )),
        }
    }

    /// Unlinks `path` if it still names this handle's object.
    fn unlink_own(&self, path: &std::path::Path, what: &str) -> Result<()> {
        let gone = || Error::NotFound(format!("{what} (no longer names this segment)"));
        let ident = self.inner.ident.ok_or_else(gone)?;
        if fd::unlink_if_same(path, ident)? {
            Ok(())
        } else {
            Err(gone())
        }
    }

    /// This handle's registry slot.
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// assert_ne!(seg.try_clone()?.slot(), seg.slot());
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn slot(&self) -> u32 {
        self.inner.slot
    }

    /// This handle's random incarnation: `(slot, incarnation)` tags what it owns.
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let info = seg.slot_info(seg.slot())?;
    /// assert_eq!(info.incarnation, seg.incarnation());
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn incarnation(&self) -> u64 {
        self.inner.incarnation
    }

    /// Number of registry slots.
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().registry_slots(4).create()?;
    /// assert_eq!(seg.registry_slots(), 4);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn registry_slots(&self) -> u32 {
        self.inner.fields.registry_slots
    }

    /// Whether the holder of `slot` is alive (false for a free slot).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for an index out of range; [`Error::Os`] if the
    /// lock probe fails; [`Error::Corrupt`] if the slot's words disagree with the
    /// kernel's evidence ([`SlotState::Corrupt`]: somebody live holds the slot, but
    /// not as the words say).
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::memfd().create()?;
    /// let peer = seg.try_clone()?;
    /// assert!(seg.is_alive(peer.slot())?);
    /// let slot = peer.slot();
    /// drop(peer);
    /// assert!(!seg.is_alive(slot)?); // detached: the slot is free
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn is_alive(&self, slot: u32) -> Result<bool> {
        let info = self.slot_info(slot)?;
        if info.state == SlotState::Corrupt {
            return Err(corrupt_slot(&info));
        }
        Ok(info.state == SlotState::Alive)
    }

    /// The verdict on one slot.
    ///
    /// The verdict comes from the kernel: the tag witness of the incarnation the
    /// slot word names (a lock its owner holds while attached) and the slot's
    /// liveness lock, both released by the kernel when their holder dies, so a
    /// reused pid or a zombie is never taken for the owner. A held witness is
    /// cross-checked against the recorded pid and start time (same pid namespace
    /// only), which catches a forked child that inherited the locks and outlived
    /// its parent, and the identity witness must vouch for those fields first.
    /// A slot word that disagrees with the locks (the slot lock is held, but not
    /// by the incarnation the word names) is [`SlotState::Corrupt`], never `Dead`.
    ///
    /// # Errors
    ///
    /// [`Error::ForkedHandle`] in a forked child that has not called
    /// [`after_fork`](Self::after_fork).
    /// As [`is_alive`](Self::is_alive).
    ///
    /// # Examples
    ///
    /// ```
    /// use shmkit::SlotState;
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let peer = seg.try_clone()?;
    /// let slot = peer.slot();
    /// peer.simulate_crash(); // as if its process had been killed
    /// assert_eq!(seg.slot_info(slot)?.state, SlotState::Dead);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn slot_info(&self, slot: u32) -> Result<SlotInfo> {
        self.check_pid()?;
        let s = self
            .slots()
            .get(slot as usize)
            .ok_or(Error::InvalidArgument("slot index out of range"))?;
        let mut suspect = 0;
        let mut changes = 0;
        loop {
            let (word, fields, attached_ns) = read_slot(s);
            let own = slot == self.inner.slot && word == (self.inner.incarnation | ACTIVE);
            let state = if word == 0 {
                SlotState::Free
            } else if own {
                SlotState::Alive
            } else {
                self.slot_verdict(slot, word, fields)?
            };
            // The verdict is on `word`: if the slot changed during the probes, judge
            // the new word (a slot keeps changing only under a misbehaving peer).
            // SYNC: Acquire pairs with the Release CAS in registry::claim/release.
            if s.state.load(Ordering::Acquire) != word && changes < SLOT_CHANGES {
                changes += 1;
                crate::loom::spin_loop();
                continue;
            }
            // A reclaimer holds a dead owner's slot lock for a moment: give it time
            // to finish before calling the slot corrupt.
            if state == SlotState::Corrupt && suspect < SUSPECT_RETRIES {
                suspect += 1;
                std::thread::sleep(std::time::Duration::from_millis(1));
                continue;
            }
            return Ok(SlotInfo {
                index: slot,
                state,
                pid: if word == 0 { 0 } else { fields.pid },
                incarnation: word & !STATUS_MASK,
                attached_ns,
                own,
            });
        }
    }

    /// Every slot that is not free, with its verdict.
    ///
    /// # Errors
    ///
    /// [`Error::Os`] if a lock probe fails.
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let _peer = seg.try_clone()?;
    /// assert_eq!(seg.slot_list()?.len(), 2);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn slot_list(&self) -> Result<Vec<SlotInfo>> {
        let mut v = Vec::new();
        for i in 0..self.inner.fields.registry_slots {
            let info = self.slot_info(i)?;
            if info.state != SlotState::Free {
                v.push(info);
            }
        }
        Ok(v)
    }

    /// Frees the slots of dead processes (and of processes that died attaching).
    /// Returns the indices freed.
    ///
    /// # Errors
    ///
    /// [`Error::ForkedHandle`] in a forked child that has not called
    /// [`after_fork`](Self::after_fork).
    /// [`Error::Os`] if a lock operation fails.
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let peer = seg.try_clone()?;
    /// let slot = peer.slot();
    /// peer.simulate_crash();
    /// assert_eq!(seg.reclaim_dead()?, vec![slot]);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn reclaim_dead(&self) -> Result<Vec<u32>> {
        self.check_pid()?;
        let locks = self.inner.store.locks();
        let mut freed = Vec::new();
        for i in 0..self.inner.fields.registry_slots {
            if registry::reclaim(self.slots(), &locks, i, Some(self.inner.slot))? {
                freed.push(i);
                continue;
            }
            // The lock is held, yet its recorded owner is dead: a forked child that
            // never called after_fork holds an inherited copy of it. Free the word
            // judged dead (exactly that word: a new owner has a new incarnation).
            // Nobody can claim the slot until that holder lets go of the lock
            // (`claim` backs off), but it no longer names a dead process.
            let info = self.slot_info(i)?;
            if info.state == SlotState::Dead && !info.own {
                let word = info.incarnation | ACTIVE;
                // SYNC: Release pairs with the Acquire CAS in registry::claim.
                if self.slots()[i as usize]
                    .state
                    .compare_exchange(word, 0, Ordering::Release, Ordering::Relaxed)
                    .is_ok()
                {
                    freed.push(i);
                }
            }
        }
        Ok(freed)
    }

    /// A second handle on the same segment in this process, with its own registry
    /// slot (and, for descriptor-backed kinds, its own open file description).
    ///
    /// # Errors
    ///
    /// [`Error::RegistryFull`], [`Error::Os`].
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::memfd().create()?;
    /// let other = seg.try_clone()?;
    /// std::thread::spawn(move || assert!(other.committed() > 0)).join().unwrap();
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn try_clone(&self) -> Result<Segment> {
        self.check_pid()?;
        let store = self.inner.store.duplicate()?;
        Segment::attach(
            self.inner.map.clone(),
            store,
            self.inner.spec.clone(),
            self.inner.ident,
            self.inner.fields,
            false,
        )
    }

    /// Makes a handle inherited across `fork` usable in the child: gives the child
    /// its own open file description (so the parent's liveness locks are not shared
    /// any more) and its own registry slot. A no-op in the process that made the
    /// handle. The child never removes the segment on drop.
    ///
    /// Other clones of the inherited attachment (heaps and object handles made
    /// before the fork, or held by threads the child does not have) are left
    /// acting for nobody: their lock calls say `NotAttached`. Find the objects
    /// again through this handle after the call.
    ///
    /// # Errors
    ///
    /// [`Error::RegistryFull`], [`Error::Os`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let mut seg = shmkit::SegmentOptions::anonymous().create()?;
    /// // SAFETY: the child only calls after_fork and exits.
    /// if unsafe { libc::fork() } == 0 {
    ///     seg.after_fork()?;      // now the child has its own slot
    ///     std::process::exit(0);
    /// }
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn after_fork(&mut self) -> Result<()> {
        if self.inner.pid == proc::self_pid() {
            return Ok(());
        }
        if self.inner.disowned.load(Ordering::Relaxed) != 0 {
            return Err(Error::InvalidArgument(
                "another handle's after_fork already took this attachment over in this \
                 process: use that handle (or clone it)",
            ));
        }
        if matches!(self.inner.store, Store::Heap { .. }) {
            return Err(Error::Unsupported(
                "a heap-backed segment is not shared across fork",
            ));
        }
        if StdArc::strong_count(&self.inner) != 1 {
            return self.after_fork_shared();
        }
        let inner = self.inner_mut();
        let store = inner.store.duplicate()?;
        // The inherited mapping was made through the parent's open file description
        // and holds a reference to it, which would keep the parent's OFD locks (its
        // slot's liveness lock) held for as long as we live, descriptor closed or
        // not: map the same range again, in place, through our own description.
        if let Store::Fd(f) = &store {
            fd::remap_in_place(f.as_fd(), &inner.map)?;
        }
        // Our copy of the inherited descriptor goes once our own claim holds: until
        // then it keeps the parent's open file description (and a dead parent's
        // slot lock) in place, so that the kernel never shows the segment as
        // unattached in between (a `replace_stale` could take it then). Closing it
        // leaves the parent's description to the parent alone.
        let old = std::mem::replace(&mut inner.store, store);
        // The parent's slot is the parent's: forget it before anything can fail, so
        // that our Drop never releases it. Until our own claim succeeds the handle
        // names nobody (locks refuse it) and still fails the pid check.
        inner.slot = u32::MAX;
        inner.incarnation = 0;
        inner.created = false;
        inner.persist.store(1, Ordering::Relaxed);
        // The parent's holds on directory objects are the parent's.
        *inner.local.get_mut().unwrap_or_else(|e| e.into_inner()) = Default::default();
        // So are the locks its threads held (no guard of ours can borrow this
        // record now: we hold the only handle, mutably).
        inner.held = super::owner::held_record(&inner.map);
        let claimed = self.claim_slot();
        drop(old);
        claimed?;
        let inner = self.inner_mut();
        inner.pid = proc::self_pid();
        inner.fork_gen = crate::segment::os::fork::generation();
        Ok(())
    }

    /// `after_fork` while other clones of the inherited attachment exist (heaps and
    /// object handles made before the fork, or held by threads that do not exist
    /// in the child): they keep the inherited attachment, acting for nobody; this
    /// handle gets a new one.
    #[cold]
    fn after_fork_shared(&mut self) -> Result<()> {
        let old = &self.inner;
        let store = old.store.duplicate()?;
        if let Store::Fd(f) = &store {
            fd::remap_in_place(f.as_fd(), &old.map)?;
        }
        let mut seg = Segment {
            inner: StdArc::new(Inner {
                map: old.map.clone(),
                store,
                spec: old.spec.clone(),
                ident: old.ident,
                fields: old.fields,
                slot: u32::MAX,
                incarnation: 0,
                pid: proc::self_pid(),
                created: false,
                persist: crate::loom::AtomicU32::new(1),
                crashed: crate::loom::AtomicU32::new(0),
                fork_gen: crate::segment::os::fork::generation(),
                disowned: crate::loom::AtomicU32::new(0),
                local: std::sync::Mutex::new(crate::segment::Local::default()),
                // The same mapping of the same object: what it backed is backed.
                ensured: AtomicU64::new(old.ensured.load(Ordering::Acquire)),
                refused: AtomicU64::new(old.refused.load(Ordering::Relaxed)),
                held: super::owner::held_record(&old.map),
            }),
        };
        seg.claim_slot()?;
        // Only now (our own slot is claimed, through our own descriptor): the
        // inherited descriptor would keep the parent's open file description
        // (its liveness locks) alive for as long as a stale clone lives here.
        self.inner.disowned.store(1, Ordering::Relaxed);
        self.inner.store.disown()?;
        *self = seg;
        Ok(())
    }

    /// Refuses identity-bearing operations on a handle inherited across `fork`
    /// until the child called [`after_fork`](Self::after_fork).
    fn check_pid(&self) -> Result<()> {
        if self.inner.pid != proc::self_pid() {
            return Err(Error::ForkedHandle {
                parent: self.inner.pid,
            });
        }
        Ok(())
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

    /// Detaches explicitly (as dropping the last clone does), reporting whether the
    /// slot was released by this call: `false` if it was no longer ours, or if other
    /// clones of this attachment (in heaps, object handles) still hold it, which
    /// then detach when the last of them is dropped.
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let peer = seg.try_clone()?;
    /// assert!(peer.detach());
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn detach(self) -> bool {
        match StdArc::try_unwrap(self.inner) {
            Ok(mut inner) => {
                let ours = inner.release_slot();
                drop(inner);
                ours
            }
            // Other clones keep the attachment (and the slot).
            Err(_) => false,
        }
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

/// Receives a segment descriptor sent with [`Segment::send_fd`]; open it with
/// [`SegmentOptions::open_fd`].
///
/// # Errors
///
/// [`Error::Os`] if `recvmsg` fails; [`Error::InvalidArgument`] if the message
/// carried no descriptor or the socket closed.
///
/// # Examples
///
/// See [`SegmentOptions::open_fd`].
pub fn recv_fd(socket: &impl AsFd) -> Result<OwnedFd> {
    memfd::recv_fd(socket.as_fd())
}
