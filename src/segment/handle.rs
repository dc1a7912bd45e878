//! `Segment`: one process's handle on a shared-memory segment.
#![allow(unsafe_code)]

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc as StdArc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::layout::{PAGE_SIZE, ShmSafe, align_up};
use crate::loom::{AtomicU32, Ordering, futex_wait};
use crate::ptr::Offset;
use crate::segment::header::{
    FORMAT_VERSION, HEADER_SIZE, Header, HeaderFields, MAGIC, check_committed, fingerprint,
};
use crate::segment::locks::{LockTable, MemLocks};
use crate::segment::mapping::Mapping;
use crate::segment::options::{Opened, Plan, SegmentKind, SegmentOptions, Spec};
use crate::segment::os::{fd, heap, memfd, sysv};
use crate::segment::registry::{self, ACTIVE, CLAIMING, Identity, STATUS_MASK, Slot};
use crate::segment::store::Store;
use crate::segment::{init, names, proc};

/// Init lock index (registry slot `i` uses lock `i + 1`).
const INIT_LOCK: u32 = 0;
/// How long an unready segment whose init lock is free may stay so before `open`
/// concludes that its creator died (covers the instant between a creator's
/// exclusive create and its taking the lock).
const CREATOR_GRACE: Duration = Duration::from_millis(100);

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
/// Dropping a handle detaches it; dropping the handle that *created* a named segment
/// also removes the name, unless [`persist`](Segment::persist) was called.
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
    map: StdArc<Mapping>,
    store: Store,
    spec: Spec,
    ident: Option<fd::Identity>,
    fields: HeaderFields,
    slot: u32,
    incarnation: u64,
    pid: u32,
    created: bool,
    persist: bool,
}

/// The state of one registry slot, as seen by a peer.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SlotState {
    /// Nobody holds it.
    Free,
    /// A process is attaching (or died attaching and nobody reclaimed it yet).
    Claiming,
    /// Held by a live process.
    Alive,
    /// Held by a process that has died; [`Segment::reclaim_dead`] frees it.
    Dead,
}

/// What the registry says of one slot.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct SlotInfo {
    /// Slot index.
    pub index: u32,
    /// Verdict.
    pub state: SlotState,
    /// Owner's pid (in its pid namespace), 0 if free.
    pub pid: u32,
    /// Owner's random incarnation, 0 if free.
    pub incarnation: u64,
    /// When the owner attached, ns since the Unix epoch.
    pub attached_ns: u64,
    /// Whether it is this handle's own slot.
    pub own: bool,
}

impl SegmentOptions {
    /// Creates a new segment; fails if it exists.
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyExists`], [`Error::InvalidName`], [`Error::InvalidSize`],
    /// [`Error::NoSpace`] when the backing store cannot hold the committed size, and
    /// [`Error::Os`] for other OS failures.
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::memfd().create()?;
    /// assert_eq!(seg.kind(), shmkit::SegmentKind::Memfd);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn create(&self) -> Result<Segment> {
        let plan = self.plan()?;
        match &self.spec {
            Spec::Posix(name) => {
                let bare = names::validate(name)?;
                self.create_named(plan, shm_path(bare), name)
            }
            Spec::File(path) => self.create_named(plan, path.clone(), &path.display().to_string()),
            Spec::Memfd | Spec::Anonymous => {
                let fd = memfd::create(if matches!(self.spec, Spec::Memfd) {
                    "shmkit"
                } else {
                    "shmkit-anon"
                })?;
                rustix::fs::fchmod(&fd, rustix::fs::Mode::from_raw_mode(self.mode))
                    .map_err(Error::at("fchmod"))?;
                fd::set_size(fd.as_fd(), plan.max_size)?;
                memfd::seal(fd.as_fd())?;
                fd::commit(fd.as_fd(), 0, plan.committed)?;
                let map = fd::map(fd.as_fd(), plan.max_size)?;
                self.initialise(plan, map, Store::Fd(fd), None)
            }
            Spec::SysV(key) => self.create_sysv(plan, *key),
            Spec::SysVId(_) => Err(Error::InvalidArgument(
                "a System V id names an existing segment: use sysv(key) or sysv_private() to create",
            )),
            Spec::Heap => {
                let map = heap::alloc(plan.max_size)?;
                let locks = MemLocks::new(plan.slots + 1);
                let token = locks.token();
                self.initialise(plan, map, Store::Heap { locks, token }, None)
            }
        }
    }

    /// Opens an existing segment, waiting (at most the open timeout) for a creator
    /// that is still initialising it.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`]; [`Error::ForeignOwner`], [`Error::InsecureMode`] or
    /// [`Error::NotRegularFile`] for an object we should not trust;
    /// [`Error::NotReady`] if a live creator did not finish in time;
    /// [`Error::CreatorDied`] if the creator died during initialisation; any header
    /// mismatch ([`Error::BadMagic`], [`Error::VersionMismatch`],
    /// [`Error::FingerprintMismatch`], [`Error::ChecksumMismatch`],
    /// [`Error::Corrupt`]); [`Error::RegistryFull`].
    ///
    /// # Examples
    ///
    /// ```
    /// let r = shmkit::SegmentOptions::posix("shmkit-doc-no-such-segment").open();
    /// assert!(matches!(r, Err(shmkit::Error::NotFound(_))));
    /// ```
    pub fn open(&self) -> Result<Segment> {
        match &self.spec {
            Spec::Posix(name) => {
                let bare = names::validate(name)?;
                self.open_named(&shm_path(bare), name)
            }
            Spec::File(path) => self.open_named(path, &path.display().to_string()),
            Spec::SysV(Some(key)) => self.open_sysv(sysv::lookup(*key)?),
            Spec::SysVId(id) => self.open_sysv(*id),
            Spec::Memfd => Err(Error::InvalidArgument(
                "a memfd has no name: receive its descriptor and use open_fd",
            )),
            Spec::Anonymous | Spec::SysV(None) => Err(Error::InvalidArgument(
                "an anonymous or private segment has no name to open: share the handle by fork, or its id",
            )),
            Spec::Heap => Err(Error::InvalidArgument(
                "a heap-backed segment is opened with Segment::try_clone",
            )),
        }
    }

    /// Opens the segment if it exists, otherwise creates it; says which happened.
    /// A segment left half-made by a creator that died is reclaimed (removed and
    /// created afresh).
    ///
    /// # Errors
    ///
    /// As [`create`](Self::create) and [`open`](Self::open).
    ///
    /// # Examples
    ///
    /// ```
    /// use shmkit::{Opened, SegmentOptions};
    /// let name = shmkit::unique_name("doc-ooc-")?;
    /// let (a, how_a) = SegmentOptions::posix(&name).open_or_create()?;
    /// let (b, how_b) = SegmentOptions::posix(&name).open_or_create()?;
    /// assert_eq!((how_a, how_b), (Opened::Created, Opened::Existing));
    /// # drop(b); drop(a);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn open_or_create(&self) -> Result<(Segment, Opened)> {
        if !matches!(
            self.spec,
            Spec::Posix(_) | Spec::File(_) | Spec::SysV(Some(_))
        ) {
            return self.create().map(|s| (s, Opened::Created));
        }
        let mut last = None;
        for _ in 0..16 {
            match self.create() {
                Ok(s) => return Ok((s, Opened::Created)),
                Err(Error::AlreadyExists(_)) => {}
                Err(e @ Error::NotFound(_)) => {
                    // Our fresh object was reclaimed before we locked it: go again.
                    last = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            }
            match self.open() {
                Ok(s) => return Ok((s, Opened::Existing)),
                Err(Error::NotFound(w)) => last = Some(Error::NotFound(w)),
                Err(e @ Error::CreatorDied { .. }) => {
                    self.reclaim_half_made()?;
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(Error::InvalidArgument("open_or_create did not converge")))
    }

    /// Opens a memfd segment from a descriptor received from another process (see
    /// [`recv_fd`](crate::recv_fd)). The descriptor must carry shmkit's seals
    /// (no shrinking, no growing, no further seal changes).
    ///
    /// # Errors
    ///
    /// [`Error::SealsMissing`] for an unsealed or non-memfd descriptor, then as
    /// [`open`](Self::open).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::os::unix::net::UnixStream;
    /// let (a, b) = UnixStream::pair().unwrap();
    /// let seg = shmkit::SegmentOptions::memfd().create()?;
    /// seg.send_fd(&a)?;
    /// let fd = shmkit::recv_fd(&b)?;
    /// let peer = shmkit::SegmentOptions::memfd().open_fd(fd)?;
    /// assert_eq!(peer.seed(), seg.seed());
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn open_fd(&self, fd: OwnedFd) -> Result<Segment> {
        memfd::check_seals(fd.as_fd())?;
        fd::check_object(
            fd.as_fd(),
            "received memfd",
            self.allow_foreign_owner,
            self.allow_shared_write,
        )?;
        // A fresh open file description, so our OFD locks are ours and not the
        // sender's (SCM_RIGHTS shares the description).
        let own = fd::reopen(fd.as_fd())?;
        drop(fd);
        self.open_store(Store::Fd(own), Spec::Memfd, None)
    }

    /// Opens a heap-backed copy of a segment image (a fuzzing and inspection aid):
    /// every check `open` does runs on it.
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open); never panics, whatever the bytes.
    #[doc(hidden)]
    pub fn open_image(&self, image: &[u8]) -> Result<Segment> {
        let len = align_up(image.len() as u64, PAGE_SIZE).unwrap_or(0);
        if len < HEADER_SIZE {
            return Err(Error::corrupt(
                "image",
                format!("{} bytes, smaller than the header", image.len()),
            ));
        }
        let map = heap::alloc(len)?;
        // SAFETY: the fresh region is `len >= image.len()` bytes and does not
        // overlap the caller's slice.
        unsafe {
            std::ptr::copy_nonoverlapping(image.as_ptr(), map.ptr().as_ptr(), image.len());
        }
        let state = header_state(&map);
        let s = init::observe(state);
        if s != init::READY {
            return Err(Error::NotReady {
                state: s,
                waited: Duration::ZERO,
            });
        }
        let fields = snapshot(&map)?;
        let locks = MemLocks::new(fields.registry_slots + 1);
        let token = locks.token();
        Segment::attach(
            StdArc::new(map),
            Store::Heap { locks, token },
            Spec::Heap,
            None,
            fields,
            false,
        )
    }

    /// Removes the named object (POSIX name, file, System V key or id). Handles that
    /// are open keep working; new opens fail.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`], [`Error::InvalidName`], [`Error::InvalidArgument`] for
    /// kinds without a name, [`Error::Os`].
    ///
    /// # Examples
    ///
    /// ```
    /// let name = shmkit::unique_name("doc-rm-")?;
    /// let mut seg = shmkit::SegmentOptions::posix(&name).create()?;
    /// seg.persist();
    /// drop(seg);
    /// shmkit::SegmentOptions::posix(&name).remove()?;
    /// assert!(shmkit::SegmentOptions::posix(&name).open().is_err());
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn remove(&self) -> Result<()> {
        match &self.spec {
            Spec::Posix(name) => fd::unlink(&shm_path(names::validate(name)?), name),
            Spec::File(path) => fd::unlink(path, &path.display().to_string()),
            Spec::SysV(Some(key)) => sysv::remove(sysv::lookup(*key)?),
            Spec::SysVId(id) => sysv::remove(*id),
            _ => Err(Error::InvalidArgument(
                "this kind of segment has no name to remove",
            )),
        }
    }

    /// Creates a named object. Preferred path: build the whole segment in an unnamed
    /// file (`O_TMPFILE`) and give it its name only once it is `Ready`, with an
    /// exclusive `linkat`: no peer can ever see it half-made, and a creator killed
    /// during initialisation leaves nothing behind. On file systems without unnamed
    /// files, fall back to an exclusive create guarded by the init lock.
    fn create_named(&self, plan: Plan, path: PathBuf, what: &str) -> Result<Segment> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let Some(fd) = fd::open_unnamed(dir, self.mode)? else {
            return self.create_named_in_place(plan, path, what);
        };
        fd::set_size(fd.as_fd(), plan.max_size)?;
        fd::commit(fd.as_fd(), 0, plan.committed)?;
        let map = fd::map(fd.as_fd(), plan.max_size)?;
        let store = Store::Fd(fd);
        store.locks().try_lock(INIT_LOCK)?; // nobody else can see the file yet
        let mut seg = self.initialise(plan, map, store, None)?;
        let fd = seg
            .as_fd()
            .ok_or(Error::Unsupported("fd-backed segment without fd"))?;
        fd::link_unnamed(fd, &path, what)?;
        seg.ident = Some(fd::identity(fd)?.0);
        seg.created = true;
        Ok(seg)
    }

    fn create_named_in_place(&self, plan: Plan, path: PathBuf, what: &str) -> Result<Segment> {
        let fd = fd::open(&path, true, self.mode, what)?;
        let (ident, _) = fd::identity(fd.as_fd())?;
        // From here until Ready, a failure must not leave a half-made object under
        // the name: remove it (only if it is still ours).
        let cleanup = |e: Error| {
            let _ = fd::unlink_if_same(&path, ident);
            e
        };
        let store = Store::Fd(fd);
        self.take_init_lock(&store).map_err(cleanup)?;
        let Store::Fd(fd) = &store else {
            unreachable!("constructed as Store::Fd above")
        };
        if fd::identity(fd.as_fd()).map_err(cleanup)?.1 == 0 {
            // A peer reclaimed the object before we held its init lock.
            return Err(Error::NotFound(format!(
                "{what} (reclaimed during creation)"
            )));
        }
        fd::set_size(fd.as_fd(), plan.max_size).map_err(cleanup)?;
        fd::commit(fd.as_fd(), 0, plan.committed).map_err(cleanup)?;
        let map = fd::map(fd.as_fd(), plan.max_size).map_err(cleanup)?;
        let mut seg = self
            .initialise(plan, map, store, Some(ident))
            .map_err(cleanup)?;
        seg.created = true;
        Ok(seg)
    }

    fn create_sysv(&self, plan: Plan, key: Option<i32>) -> Result<Segment> {
        let id = sysv::create(key, plan.max_size, self.mode)?;
        let cleanup = |e: Error| {
            let _ = sysv::remove(id);
            e
        };
        let lock = sysv::lock_file(id, false, false).map_err(cleanup)?;
        let store = Store::SysV { id, lock };
        self.take_init_lock(&store).map_err(cleanup)?;
        if sysv::stat(id).map_err(cleanup)?.dest {
            return Err(cleanup(Error::NotFound(format!(
                "System V segment {id} (reclaimed during creation)"
            ))));
        }
        let map = sysv::attach(id, plan.max_size).map_err(cleanup)?;
        sysv::populate(&map, 0, plan.committed).map_err(cleanup)?;
        let mut seg = self.initialise(plan, map, store, None).map_err(cleanup)?;
        seg.created = true;
        Ok(seg)
    }

    fn take_init_lock(&self, store: &Store) -> Result<()> {
        let deadline = Instant::now() + self.open_timeout;
        loop {
            if store.locks().try_lock(INIT_LOCK)? {
                return Ok(());
            }
            // Only a reclaimer holds it, briefly.
            if Instant::now() >= deadline {
                return Err(Error::NotReady {
                    state: init::UNINIT,
                    waited: self.open_timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Writes header and registry into a fresh, zeroed, committed region, publishes
    /// `Ready`, attaches, and releases the init lock.
    fn initialise(
        &self,
        plan: Plan,
        map: Mapping,
        store: Store,
        ident: Option<fd::Identity>,
    ) -> Result<Segment> {
        let header = map.ptr().as_ptr().cast::<Header>();
        let state = header_state(&map);
        if !init::begin(state) {
            return Err(Error::corrupt("state", "a fresh object was not Uninit"));
        }
        let mut fields = HeaderFields {
            fingerprint: fingerprint(),
            header_size: HEADER_SIZE,
            max_size: plan.max_size,
            seed: names::random_u64()?,
            creator_pid: proc::self_pid(),
            creator_uid: rustix::process::geteuid().as_raw(),
            creator_start_time: proc::self_start_time(),
            creator_incarnation: 0,
            created_ns: now_ns(),
            registry_offset: plan.registry_offset,
            registry_slots: plan.slots,
            slot_size: size_of::<Slot>() as u32,
            user_offset: plan.user_offset,
            heap_offset: 0,
            directory_offset: 0,
            reserved: [0; 4],
            checksum: 0,
        };
        fields.checksum = fields.compute_checksum();
        // SAFETY: (1) the region is at least `plan.user_offset` bytes and committed
        // (checked by `plan`, backed by the caller), so the header and every slot lie
        // inside it; (2) it is page-aligned, so the header (align 8) and slots (64 B
        // apart from a page boundary) are aligned; (3) nobody else reads these fields
        // before `publish`: openers wait for Ready.
        unsafe {
            std::ptr::addr_of_mut!((*header).magic).write_volatile(MAGIC);
            std::ptr::addr_of_mut!((*header).version).write_volatile(FORMAT_VERSION);
            std::ptr::addr_of_mut!((*header).fields).write_volatile(fields);
            (*header).committed.store(plan.committed, Ordering::Relaxed);
            let slots = map
                .ptr()
                .as_ptr()
                .add(plan.registry_offset as usize)
                .cast::<Slot>();
            for i in 0..plan.slots as usize {
                slots.add(i).write(Slot::new());
            }
        }
        if let Some(hook) = self.init_hook {
            hook();
        }
        init::publish(state);
        let seg = Segment::attach(
            StdArc::new(map),
            store,
            self.spec.clone(),
            ident,
            fields,
            true,
        )?;
        seg.store.locks().unlock(INIT_LOCK);
        Ok(seg)
    }

    fn open_named(&self, path: &Path, what: &str) -> Result<Segment> {
        let fd = fd::open(path, false, 0, what)?;
        fd::check_object(
            fd.as_fd(),
            what,
            self.allow_foreign_owner,
            self.allow_shared_write,
        )?;
        let (ident, _) = fd::identity(fd.as_fd())?;
        self.open_store(Store::Fd(fd), self.spec.clone(), Some(ident))
    }

    fn open_sysv(&self, id: i32) -> Result<Segment> {
        let st = sysv::stat(id)?;
        let me = rustix::process::geteuid().as_raw();
        if !self.allow_foreign_owner && st.uid != me {
            return Err(Error::ForeignOwner {
                found: st.uid,
                expected: me,
            });
        }
        if !self.allow_shared_write && st.mode & 0o022 != 0 {
            return Err(Error::InsecureMode { mode: st.mode });
        }
        let lock = sysv::lock_file(id, self.allow_foreign_owner, self.allow_shared_write)?;
        self.open_store(Store::SysV { id, lock }, Spec::SysVId(id), None)
    }

    /// The common open path: wait for a size, map, wait for Ready, check, attach.
    fn open_store(&self, store: Store, spec: Spec, ident: Option<fd::Identity>) -> Result<Segment> {
        let start = Instant::now();
        let deadline = start + self.open_timeout;
        let mut unready_since: Option<Instant> = None;
        // 1. Size: the creator sets it once (to max_size) right after creating.
        let len = loop {
            let len = match &store {
                Store::Fd(f) => fd::size(f.as_fd())?,
                Store::SysV { id, .. } => sysv::stat(*id)?.size,
                Store::Heap { .. } => unreachable!("heap segments are not opened"),
            };
            if len != 0 {
                break len;
            }
            self.judge_unready(&store, init::UNINIT, start, deadline, &mut unready_since)?;
            std::thread::sleep(Duration::from_millis(1));
        };
        if len < HEADER_SIZE
            || len % PAGE_SIZE != 0
            || len > crate::segment::header::MAX_SEGMENT_SIZE
        {
            return Err(Error::corrupt(
                "size",
                format!("object is {len} bytes: not a page-aligned size between 4 KiB and 64 GiB"),
            ));
        }
        let map = match &store {
            Store::Fd(f) => fd::map(f.as_fd(), len)?,
            Store::SysV { id, .. } => sysv::attach(*id, len)?,
            Store::Heap { .. } => unreachable!("heap segments are not opened"),
        };
        // 2. Wait for Ready.
        let state = header_state(&map);
        loop {
            match init::observe(state) {
                init::READY => break,
                init::POISONED => return Err(Error::Poisoned),
                s @ (init::UNINIT | init::INITIALIZING) => {
                    self.judge_unready(&store, s, start, deadline, &mut unready_since)?;
                    futex_wait(state, s, Some(Duration::from_millis(2)));
                }
                s => {
                    return Err(Error::corrupt(
                        "state",
                        format!("impossible state word {s}"),
                    ));
                }
            }
        }
        // 3. Copy the immutable header once, check it, then use only the copy.
        let fields = snapshot(&map)?;
        Segment::attach(StdArc::new(map), store, spec, ident, fields, false)
    }

    /// Decides, while a segment is not ready, whether to keep waiting.
    fn judge_unready(
        &self,
        store: &Store,
        state: u32,
        start: Instant,
        deadline: Instant,
        unready_since: &mut Option<Instant>,
    ) -> Result<()> {
        let now = Instant::now();
        if store.locks().held_elsewhere(INIT_LOCK)? {
            *unready_since = None;
        } else {
            let since = *unready_since.get_or_insert(now);
            if now.duration_since(since) >= CREATOR_GRACE.min(self.open_timeout) {
                return Err(Error::CreatorDied { state });
            }
        }
        if now >= deadline {
            return Err(Error::NotReady {
                state,
                waited: now.duration_since(start),
            });
        }
        Ok(())
    }

    /// Removes a named object left unready by a dead creator, under its init lock.
    fn reclaim_half_made(&self) -> Result<()> {
        match &self.spec {
            Spec::Posix(_) | Spec::File(_) => {
                let path = match &self.spec {
                    Spec::Posix(n) => shm_path(names::validate(n)?),
                    Spec::File(p) => p.clone(),
                    _ => unreachable!("matched above"),
                };
                let fd = match fd::open(&path, false, 0, "half-made segment") {
                    Ok(fd) => fd,
                    Err(Error::NotFound(_)) => return Ok(()),
                    Err(e) => return Err(e),
                };
                let store = Store::Fd(fd);
                if !store.locks().try_lock(INIT_LOCK)? {
                    return Ok(()); // someone is initialising or reclaiming it
                }
                let Store::Fd(fd) = &store else {
                    unreachable!("constructed as Store::Fd above")
                };
                let still_unready = fd::size(fd.as_fd())? < HEADER_SIZE
                    || fd::read_state(fd.as_fd())? != init::READY;
                if still_unready {
                    let (ident, _) = fd::identity(fd.as_fd())?;
                    fd::unlink_if_same(&path, ident)?;
                }
                Ok(()) // dropping the store releases the lock
            }
            Spec::SysV(Some(key)) => {
                let id = match sysv::lookup(*key) {
                    Ok(id) => id,
                    Err(Error::NotFound(_)) => return Ok(()),
                    Err(e) => return Err(e),
                };
                let store = Store::SysV {
                    id,
                    lock: sysv::lock_file(id, self.allow_foreign_owner, self.allow_shared_write)?,
                };
                if !store.locks().try_lock(INIT_LOCK)? {
                    return Ok(());
                }
                let map = sysv::attach(id, HEADER_SIZE)?;
                if init::observe(header_state(&map)) != init::READY {
                    sysv::remove(id)?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// `/dev/shm/<bare name>`.
fn shm_path(bare: &str) -> PathBuf {
    Path::new(fd::SHM_DIR).join(bare)
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The state word of the header at the start of `map`.
fn header_state(map: &Mapping) -> &AtomicU32 {
    // SAFETY: every mapping is at least HEADER_SIZE bytes (checked before mapping or
    // by construction) and page-aligned; `state` is an AtomicU32 at offset 8, valid
    // for any bit pattern, and lives as long as `map`.
    unsafe { &(*map.ptr().as_ptr().cast::<Header>()).state }
}

/// Copies the header once (volatile: a peer may be writing it) and validates it.
fn snapshot(map: &Mapping) -> Result<HeaderFields> {
    let header = map.ptr().as_ptr().cast::<Header>();
    // SAFETY: the mapping holds a whole Header (len >= HEADER_SIZE, page-aligned);
    // the fields read are plain integers, valid for every bit pattern, read as
    // volatile copies since a misbehaving peer may write them concurrently.
    let (magic, version, fields) = unsafe {
        (
            std::ptr::addr_of!((*header).magic).read_volatile(),
            std::ptr::addr_of!((*header).version).read_volatile(),
            std::ptr::addr_of!((*header).fields).read_volatile(),
        )
    };
    fields.validate(magic, version, map.len() as u64)?;
    Ok(fields)
}

impl Segment {
    /// Takes a registry slot for a new handle on `map`.
    fn attach(
        map: StdArc<Mapping>,
        store: Store,
        spec: Spec,
        ident: Option<fd::Identity>,
        fields: HeaderFields,
        created: bool,
    ) -> Result<Segment> {
        let mut seg = Segment {
            map,
            store,
            spec,
            ident,
            fields,
            slot: u32::MAX,
            incarnation: 0,
            pid: proc::self_pid(),
            created: false,
            persist: false,
        };
        seg.claim_slot()?;
        seg.created = created;
        Ok(seg)
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
            start_time: proc::self_start_time(),
            pidns: proc::self_pidns(),
            now_ns: now_ns(),
        };
        let slot = match registry::claim(self.slots(), &self.store.locks(), &who) {
            Ok(s) => s,
            Err(Error::RegistryFull { .. }) => {
                self.reclaim_dead()?;
                registry::claim(self.slots(), &self.store.locks(), &who)?
            }
            Err(e) => return Err(e),
        };
        self.slot = slot;
        self.incarnation = who.incarnation;
        Ok(())
    }

    /// The registry slots (validated offsets from the header snapshot).
    fn slots(&self) -> &[Slot] {
        // SAFETY: `fields` passed `validate`: registry_offset is 64-aligned, and
        // registry_offset + slots * 64 <= user_offset <= max_size == mapping length,
        // and the registry lies below user_offset, which is committed. Slots are
        // atomics only (any bit pattern valid) and live as long as `self.map`.
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

    fn header(&self) -> &Header {
        // SAFETY: the mapping starts with a validated Header and outlives `self`.
        unsafe { &*self.map.ptr().as_ptr().cast::<Header>() }
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
        self.map.ptr().as_ptr()
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
        self.fields.max_size
    }

    /// Bytes currently backed. Only these may be touched.
    ///
    /// A value a peer corrupted is clamped to `[user_offset, max_size]`.
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().committed(64 << 10).create()?;
    /// assert_eq!(seg.committed(), 64 << 10);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn committed(&self) -> u64 {
        // SYNC: Acquire pairs with the Release fetch_max in `commit`: the backing
        // store for the new range was allocated before it was published.
        let c = self.header().committed.load(Ordering::Acquire);
        check_committed(c, &self.fields).unwrap_or(self.fields.user_offset)
    }

    /// Grows the committed size to at least `bytes` (rounded up to a page). Every
    /// attached process sees the new size at once; nothing is remapped.
    ///
    /// # Errors
    ///
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
        let want = align_up(bytes, PAGE_SIZE).unwrap_or(u64::MAX);
        if want > self.fields.max_size {
            return Err(Error::InvalidSize {
                size: bytes,
                reason: "beyond the segment's max_size",
            });
        }
        let cur = self.committed();
        if want <= cur {
            return Ok(cur);
        }
        self.store.commit(&self.map, cur, want)?;
        // SYNC: Release pairs with the Acquire load in `committed`; publishes that
        // [cur, want) is backed.
        let prev = self.header().committed.fetch_max(want, Ordering::Release);
        Ok(prev.max(want))
    }

    /// The first offset past the header and registry: where the heap begins.
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().registry_slots(8).create()?;
    /// assert_eq!(seg.user_offset(), 8192); // header page + one registry page
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn user_offset(&self) -> u64 {
        self.fields.user_offset
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
        self.fields.seed
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
        self.fields.creator_pid
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
        match self.spec {
            Spec::Posix(_) => SegmentKind::Posix,
            Spec::File(_) => SegmentKind::File,
            Spec::Memfd => SegmentKind::Memfd,
            Spec::Anonymous => SegmentKind::Anonymous,
            Spec::SysV(_) | Spec::SysVId(_) => SegmentKind::SysV,
            Spec::Heap => SegmentKind::Heap,
        }
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
        match self.store {
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
        match &self.store {
            Store::Fd(f) => Some(f.as_fd()),
            _ => None,
        }
    }

    /// Sends a memfd or anonymous segment's descriptor over a connected Unix socket.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for other kinds; [`Error::Os`] if `sendmsg` fails.
    ///
    /// # Examples
    ///
    /// See [`SegmentOptions::open_fd`].
    pub fn send_fd(&self, socket: &impl AsFd) -> Result<()> {
        match (&self.spec, &self.store) {
            (Spec::Memfd | Spec::Anonymous, Store::Fd(f)) => {
                memfd::send_fd(socket.as_fd(), f.as_fd())
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
        self.persist = true;
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
        self.slot
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
        self.incarnation
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
        self.fields.registry_slots
    }

    /// Whether the holder of `slot` is alive (false for a free slot).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for an index out of range; [`Error::Os`] if the
    /// lock probe fails.
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
        Ok(self.slot_info(slot)?.state == SlotState::Alive)
    }

    /// The verdict on one slot.
    ///
    /// The verdict comes from the slot's liveness lock, which the kernel releases
    /// when its holder dies, so a reused pid or a zombie is never taken for the
    /// owner. A held lock is cross-checked against the recorded pid and start time
    /// (same pid namespace only), which catches a forked child that inherited the
    /// lock and outlived its parent.
    ///
    /// # Errors
    ///
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
        let s = self
            .slots()
            .get(slot as usize)
            .ok_or(Error::InvalidArgument("slot index out of range"))?;
        // SYNC: Acquire pairs with the Release CAS in registry::claim; the identity
        // fields below are those the claimer published.
        let word = s.state.load(Ordering::Acquire);
        let pid = s.pid.load(Ordering::Relaxed);
        let start_time = s.start_time.load(Ordering::Relaxed);
        let pidns = s.pidns.load(Ordering::Relaxed);
        let attached_ns = s.attached_ns.load(Ordering::Relaxed);
        let own = slot == self.slot && word == (self.incarnation | ACTIVE);
        let state = if word == 0 {
            SlotState::Free
        } else if own {
            SlotState::Alive
        } else if !self
            .store
            .locks()
            .held_elsewhere(registry::lock_index(slot))?
        {
            if word & STATUS_MASK == CLAIMING {
                SlotState::Claiming
            } else {
                SlotState::Dead
            }
        } else if word & STATUS_MASK != ACTIVE {
            SlotState::Claiming
        } else if pidns != 0 && pidns == proc::self_pidns() {
            match proc::stat(pid) {
                Some(st) if st.start_time == start_time && st.state != b'Z' && st.state != b'X' => {
                    SlotState::Alive
                }
                _ => SlotState::Dead,
            }
        } else {
            SlotState::Alive
        };
        Ok(SlotInfo {
            index: slot,
            state,
            pid: if word == 0 { 0 } else { pid },
            incarnation: word & !STATUS_MASK,
            attached_ns,
            own,
        })
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
        for i in 0..self.fields.registry_slots {
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
        let locks = self.store.locks();
        let mut freed = Vec::new();
        for i in 0..self.fields.registry_slots {
            if registry::reclaim(self.slots(), &locks, i, Some(self.slot))? {
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
        let store = self.store.duplicate()?;
        Segment::attach(
            self.map.clone(),
            store,
            self.spec.clone(),
            self.ident,
            self.fields,
            false,
        )
    }

    /// Makes a handle inherited across `fork` usable in the child: gives the child
    /// its own open file description (so the parent's liveness locks are not shared
    /// any more) and its own registry slot. A no-op in the process that made the
    /// handle. The child never removes the segment on drop.
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
        if self.pid == proc::self_pid() {
            return Ok(());
        }
        if matches!(self.store, Store::Heap { .. }) {
            return Err(Error::Unsupported(
                "a heap-backed segment is not shared across fork",
            ));
        }
        let store = self.store.duplicate()?;
        // The inherited mapping was made through the parent's open file description
        // and holds a reference to it, which would keep the parent's OFD locks (its
        // slot's liveness lock) held for as long as we live, descriptor closed or
        // not: map the same range again, in place, through our own description.
        if let Store::Fd(f) = &store {
            fd::remap_in_place(f.as_fd(), &self.map)?;
        }
        // Closing our copy of the inherited descriptor leaves the parent's open file
        // description (and its locks) to the parent alone.
        let old = std::mem::replace(&mut self.store, store);
        drop(old);
        self.pid = proc::self_pid();
        self.created = false;
        self.persist = true;
        self.claim_slot()
    }

    fn check_pid(&self) -> Result<()> {
        if self.pid != proc::self_pid() {
            return Err(Error::ForkedHandle { parent: self.pid });
        }
        Ok(())
    }

    /// Resolves `offset` to a reference into the committed region.
    ///
    /// # Errors
    ///
    /// [`Error::BadOffset`] if the offset is null, misaligned for `T`, or if the `T`
    /// would extend past the committed size.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmkit::{Offset, SegmentOptions};
    /// use std::sync::atomic::{AtomicU32, Ordering};
    /// let seg = SegmentOptions::heap().committed(64 << 10).create()?;
    /// let word = seg.resolve(Offset::<AtomicU32>::new(seg.user_offset()))?;
    /// word.store(5, Ordering::Relaxed);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn resolve<T: ShmSafe>(&self, offset: Offset<T>) -> Result<&T> {
        let off = offset.check(self.committed())?;
        // SAFETY: `check` proved off + size_of::<T>() <= committed <= mapping length
        // and off % align_of::<T>() == 0; the base is page-aligned (>= align of any
        // ShmSafe type we place); T: ShmSafe is valid for every bit pattern and
        // shares mutation only through atomics; the reference borrows `self`, which
        // keeps the mapping alive.
        Ok(unsafe { &*self.map.ptr().as_ptr().add(off).cast::<T>() })
    }

    /// Detaches explicitly (as drop does), reporting whether the slot was still ours.
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
        let mut s = self;
        let ours = s.release_slot();
        drop(s);
        ours
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

    /// Test support: drop the handle as if its process had been killed: liveness
    /// locks are released (as the kernel would), but the registry slot is not
    /// cleared and nothing is removed.
    #[doc(hidden)]
    pub fn simulate_crash(mut self) {
        self.store.release_like_exit();
        self.slot = u32::MAX;
        self.created = false;
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        if self.pid != proc::self_pid() {
            // An inherited copy in a forked child that never called after_fork:
            // touch nothing shared.
            return;
        }
        self.release_slot();
        if self.created && !self.persist {
            match &self.spec {
                Spec::Posix(name) => {
                    if let (Ok(bare), Some(id)) = (names::validate(name), self.ident) {
                        let _ = fd::unlink_if_same(&shm_path(bare), id);
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
            .field("max_size", &self.fields.max_size)
            .field("committed", &self.committed())
            .field("slot", &self.slot)
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
