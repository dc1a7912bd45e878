//! Creating and opening segments: the init protocol as the OS sees it.
//!
//! POSIX and file segments are built in an unnamed file and linked under their
//! name once `Ready`; System V segments and the fallback path hold the init lock
//! while they initialise (see `init` for the state machine).
#![allow(unsafe_code)]

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc as StdArc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::layout::PAGE_SIZE;
use crate::loom::{AtomicU32, Ordering, futex_wait};
use crate::segment::handle::Segment;
use crate::segment::header::{
    FORMAT_VERSION, HEADER_SIZE, Header, HeaderFields, MAGIC, fingerprint,
};
use crate::segment::locks::{LockTable, MemLocks};
use crate::segment::mapping::Mapping;
use crate::segment::options::{Opened, Plan, SegmentOptions, Spec};
use crate::segment::os::{fd, heap, memfd, sysv};
use crate::segment::registry::Slot;
use crate::segment::store::Store;
use crate::segment::{init, names, proc};

/// Init lock index (registry slot `i` uses lock `i + 1`).
const INIT_LOCK: u32 = 0;
/// How long an unready segment whose init lock is free may stay so before `open`
/// concludes that its creator died (covers the instant between a creator's
/// exclusive create and its taking the lock).
const CREATOR_GRACE: Duration = Duration::from_millis(100);

impl SegmentOptions {
    /// Creates a new segment; fails if it exists (unless
    /// [`replace_stale`](Self::replace_stale) is set and nobody alive uses it).
    /// Unless made with [`no_heap`](Self::no_heap), the segment's heap is built
    /// here, before anyone can open it.
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyExists`] (also with `replace_stale`, when another process
    /// keeps creating, reclaiming or replacing the object meanwhile),
    /// [`Error::InUse`] (with `replace_stale`, a live segment), [`Error::BadMagic`]
    /// (with `replace_stale`, a foreign object at the name),
    /// [`Error::InvalidName`], [`Error::InvalidSize`],
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
        if !self.replace_stale {
            return self.create_once();
        }
        let mut last = None;
        for _ in 0..8 {
            match self.create_once() {
                Err(Error::AlreadyExists(w)) => {
                    if !self.replace_if_stale()? {
                        // Someone else is creating, reclaiming or replacing it.
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    last = Some(Error::AlreadyExists(w));
                }
                r => return r,
            }
        }
        Err(last.unwrap_or(Error::InvalidArgument("create did not converge")))
    }

    fn create_once(&self) -> Result<Segment> {
        let plan = self.plan()?;
        match &self.spec {
            Spec::Posix(name) => {
                let bare = names::validate(name)?;
                self.create_named(plan, fd::shm_path(bare), name)
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
                self.open_named(&fd::shm_path(bare), name)
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
    /// created afresh); with [`replace_stale`](Self::replace_stale), so is a
    /// complete one whose every attached process is dead.
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
        let mut replaced = false;
        for _ in 0..16 {
            match self.create_once() {
                Ok(s) if replaced => return Ok((s, Opened::Replaced)),
                Ok(s) => return Ok((s, Opened::Created)),
                Err(Error::AlreadyExists(_)) => {}
                Err(e @ Error::NotFound(_)) => {
                    // Our fresh object was reclaimed before we locked it: go again.
                    last = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            }
            if self.replace_stale {
                match self.replace_if_stale() {
                    Ok(true) => {
                        replaced = true;
                        continue;
                    }
                    Ok(false) | Err(Error::InUse { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            match self.open() {
                Ok(s) => return Ok((s, Opened::Existing)),
                Err(Error::NotFound(w)) => last = Some(Error::NotFound(w)),
                Err(e @ Error::CreatorDied { .. }) => {
                    if !self.reclaim_half_made()? {
                        // Not provably ours, or someone else is on it.
                        last = Some(e);
                        std::thread::sleep(Duration::from_millis(1));
                        continue;
                    }
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
    #[cfg(any(test, feature = "testkit"))]
    #[doc(hidden)]
    pub fn open_image(&self, image: &[u8]) -> Result<Segment> {
        let len = crate::layout::align_up(image.len() as u64, PAGE_SIZE).unwrap_or(0);
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
    /// are open keep working; new opens fail. (A handle removes its own segment with
    /// [`Segment::remove_now`].)
    ///
    /// System V: only a segment that carries shmkit's magic is removed; a foreign one
    /// (another program's) is left alone and reported as [`Error::BadMagic`]. Either
    /// way, and also when the segment is already gone (removed with `ipcrm`, or its
    /// last holder was killed), its companion lock file
    /// `/dev/shm/.shmkit-sysv-<id>.lock` is deleted if it is ours and no live handle
    /// uses it (one that does deletes it at its last detach). A gone segment whose
    /// lock file this call deleted counts as removed.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when nothing of it was left (for System V also when it was
    /// already removed and is still attached somewhere), [`Error::BadMagic`] for a
    /// foreign System V segment, [`Error::InvalidName`], [`Error::InvalidArgument`] for
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
            Spec::Posix(name) => fd::unlink(&fd::shm_path(names::validate(name)?), name),
            Spec::File(path) => fd::unlink(path, &path.display().to_string()),
            Spec::SysV(Some(key)) => remove_sysv(sysv::lookup(*key)?),
            Spec::SysVId(id) => remove_sysv(*id),
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
        let ident = Some(fd::identity(fd)?.0);
        let inner = seg.inner_mut();
        inner.ident = ident;
        inner.created = true;
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
        fd::write_magic(fd.as_fd(), MAGIC).map_err(cleanup)?;
        fd::set_size(fd.as_fd(), plan.max_size).map_err(cleanup)?;
        fd::commit(fd.as_fd(), 0, plan.committed).map_err(cleanup)?;
        let map = fd::map(fd.as_fd(), plan.max_size).map_err(cleanup)?;
        let mut seg = self
            .initialise(plan, map, store, Some(ident))
            .map_err(cleanup)?;
        seg.inner_mut().created = true;
        Ok(seg)
    }

    fn create_sysv(&self, plan: Plan, key: Option<i32>) -> Result<Segment> {
        let id = sysv::create(key, plan.max_size, self.mode)?;
        let mut own = None;
        let r = self.build_sysv(plan, id, &mut own);
        if r.is_err() {
            // Ours, exclusively created: remove it, then its lock file, unless an
            // opener is using it.
            let _ = sysv::remove(id);
            let _ = sysv::discard_lock_file(id, own.as_ref().map(AsFd::as_fd));
        }
        r
    }

    /// The creation of System V segment `id` after `shmget`; the caller cleans up,
    /// through `own`: a copy of the lock-file descriptor (the same open file
    /// description, whose locks are ours), once there is one.
    fn build_sysv(&self, plan: Plan, id: i32, own: &mut Option<OwnedFd>) -> Result<Segment> {
        let lock = sysv::lock_file(id, false, false)?;
        *own =
            Some(rustix::io::fcntl_dupfd_cloexec(&lock, 0).map_err(Error::at("dup(lock file)"))?);
        let store = Store::SysV { id, lock };
        self.take_init_lock(&store)?;
        if sysv::stat(id)?.dest {
            return Err(Error::NotFound(format!(
                "System V segment {id} (reclaimed during creation)"
            )));
        }
        let map = sysv::attach(id, plan.max_size)?;
        // First write, right after attaching: the magic, so that a half-made
        // segment is recognisably ours as early as possible.
        // SAFETY: the mapping is max_size >= HEADER_SIZE bytes, page-aligned; a
        // System V page is supplied on first touch; nobody reads it as Ready before
        // publish.
        unsafe { map.ptr().as_ptr().cast::<[u8; 8]>().write_volatile(MAGIC) };
        sysv::populate(&map, 0, plan.committed)?;
        let mut seg = self.initialise(plan, map, store, None)?;
        seg.inner_mut().created = true;
        Ok(seg)
    }

    fn take_init_lock(&self, store: &Store) -> Result<()> {
        let deadline = Instant::now().checked_add(self.open_timeout);
        loop {
            if store.locks().try_lock(INIT_LOCK)? {
                return Ok(());
            }
            // Only a reclaimer holds it, briefly.
            if deadline.is_some_and(|d| Instant::now() >= d) {
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
            created_ns: proc::now_ns(),
            registry_offset: plan.registry_offset,
            registry_slots: plan.slots,
            slot_size: size_of::<Slot>() as u32,
            user_offset: plan.user_offset,
            heap_offset: plan.heap.map_or(0, |l| l.heap_off),
            raw_end: plan.raw_end,
            reserved: [0; 4],
            checksum: 0,
        };
        fields.checksum = fields.compute_checksum();
        // SAFETY: the committed, page-aligned region holds the header and every slot
        // (`plan` checked user_offset <= committed), aligned; nobody reads these
        // fields before `publish` (openers wait for Ready).
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
        if let Some(lay) = &plan.heap {
            // SAFETY: `plan` made committed >= pd_off, the heap header's end; the
            // segment is not Ready, so nobody else reads or writes it yet.
            unsafe { crate::alloc::build_heap(map.ptr().as_ptr(), lay) };
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
        seg.inner.store.locks().unlock(INIT_LOCK);
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

    /// Opens System V segment `id`. A failed open leaves nothing behind: the lock
    /// file it may have created is deleted again, unless another handle uses it.
    fn open_sysv(&self, id: i32) -> Result<Segment> {
        let mut own = None;
        let r = self.open_sysv_checked(id, &mut own);
        if r.is_err() {
            // Through our own open file description (`own`, a copy of the store's
            // descriptor): only other handles' locks keep the file.
            let _ = sysv::discard_lock_file(id, own.as_ref().map(AsFd::as_fd));
        }
        r
    }

    /// `open_sysv` but for the cleanup; `own` gets a copy of the lock-file
    /// descriptor once there is one.
    fn open_sysv_checked(&self, id: i32, own: &mut Option<OwnedFd>) -> Result<Segment> {
        let st = sysv::stat(id)?;
        if st.dest {
            // Removed (IPC_RMID) but still attached somewhere: new opens fail.
            return Err(Error::NotFound(format!(
                "System V segment id {id} (removed)"
            )));
        }
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
        *own =
            Some(rustix::io::fcntl_dupfd_cloexec(&lock, 0).map_err(Error::at("dup(lock file)"))?);
        if sysv::stat(id)?.dest {
            // Removed while we made our way to its lock file.
            return Err(Error::NotFound(format!(
                "System V segment id {id} (removed)"
            )));
        }
        self.open_store(Store::SysV { id, lock }, Spec::SysVId(id), None)
    }

    /// The common open path: wait for a size, map, wait for Ready, check, attach.
    fn open_store(&self, store: Store, spec: Spec, ident: Option<fd::Identity>) -> Result<Segment> {
        let mut wait = Unready::new(self.open_timeout);
        // 1. Size: the creator sets it once (to max_size) right after creating (the
        //    in-place fallback writes the magic first, so a short object that
        //    carries it is still being made).
        let len = loop {
            let len = match &store {
                Store::Fd(f) => fd::size(f.as_fd())?,
                Store::SysV { id, .. } => sysv::stat(*id)?.size,
                Store::Heap { .. } => unreachable!("heap segments are not opened"),
            };
            if len >= HEADER_SIZE {
                break len;
            }
            let magic = match &store {
                Store::Fd(f) if len > 0 => fd::read_magic(f.as_fd())?,
                _ => [0; 8],
            };
            if len > 0 && magic != MAGIC {
                return Err(Error::corrupt(
                    "size",
                    format!("object is {len} bytes, smaller than a header"),
                ));
            }
            wait.judge(&store, init::UNINIT, magic)?;
            std::thread::sleep(Duration::from_millis(1));
        };
        if len % PAGE_SIZE != 0 || len > crate::segment::header::MAX_SEGMENT_SIZE {
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
        // 2. Wait for Ready. Something that is neither ours nor blank is refused at
        //    once.
        let state = header_state(&map);
        loop {
            let s = init::observe(state);
            let magic = header_magic(&map);
            if magic != MAGIC && magic != [0; 8] {
                return Err(Error::BadMagic { found: magic });
            }
            match s {
                init::READY => break,
                init::POISONED => return Err(Error::Poisoned),
                init::UNINIT | init::INITIALIZING => {
                    if let Err(e) = wait.judge(&store, s, magic) {
                        return Err(published_evidence(&map, &store, s)?.unwrap_or(e));
                    }
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
        let seg = Segment::attach(StdArc::new(map), store, spec, ident, fields, false)?;
        // 4. A replacer (`replace_stale`) holds the init lock from its check for
        //    live slots to its unlink: once we hold a slot and the lock is free,
        //    either it saw us (and refused) or the object is already unlinked.
        self.check_not_replaced(&seg, &mut wait)?;
        Ok(seg)
    }

    /// Step 4 of `open_store`: fails with `NotFound` if the object we attached was
    /// removed under us by a replacer.
    fn check_not_replaced(&self, seg: &Segment, wait: &mut Unready) -> Result<()> {
        let store = &seg.inner.store;
        while store.locks().held_elsewhere(INIT_LOCK)? {
            if wait.deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Error::NotReady {
                    state: init::READY,
                    waited: wait.start.elapsed(),
                });
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let gone = match store {
            Store::Fd(f) if seg.inner.ident.is_some() => fd::identity(f.as_fd())?.1 == 0,
            Store::SysV { id, .. } => sysv::stat(*id)?.dest,
            _ => false,
        };
        if gone {
            return Err(Error::NotFound(
                "the segment (removed or replaced while it was being opened)".into(),
            ));
        }
        Ok(())
    }

    /// With `replace_stale`: removes the existing object at our name if it is a
    /// shmkit segment that no live process is attached to. `Ok(true)` if it removed
    /// it; `Ok(false)` if there was nothing to remove, someone else is creating,
    /// reclaiming or replacing it, it is not provably ours yet (no magic: a creator
    /// at work, or a dead one's, which `open` judges), or it vanished meanwhile;
    /// [`Error::InUse`] if live processes use it; [`Error::BadMagic`] for a foreign
    /// object. Everything is decided under the object's init lock.
    fn replace_if_stale(&self) -> Result<bool> {
        match self.replace_if_stale_inner() {
            Err(Error::NotFound(_)) => Ok(false), // vanished between two steps
            r => r,
        }
    }

    fn replace_if_stale_inner(&self) -> Result<bool> {
        let (store, what, map) = match &self.spec {
            Spec::Posix(_) | Spec::File(_) => {
                let (path, what) = match &self.spec {
                    Spec::Posix(n) => (fd::shm_path(names::validate(n)?), n.clone()),
                    Spec::File(p) => (p.clone(), p.display().to_string()),
                    _ => unreachable!("matched above"),
                };
                let fd = fd::open(&path, false, 0, &what)?;
                fd::check_object(
                    fd.as_fd(),
                    &what,
                    self.allow_foreign_owner,
                    self.allow_shared_write,
                )?;
                (Store::Fd(fd), what, None)
            }
            Spec::SysV(Some(key)) => {
                let id = sysv::lookup(*key)?;
                let st = sysv::stat(id)?;
                let me = rustix::process::geteuid().as_raw();
                if st.uid != me && !self.allow_foreign_owner {
                    return Err(Error::ForeignOwner {
                        found: st.uid,
                        expected: me,
                    });
                }
                let map = sysv::attach(id, st.size.max(HEADER_SIZE))?;
                let lock = sysv::lock_file(id, self.allow_foreign_owner, self.allow_shared_write)?;
                (
                    Store::SysV { id, lock },
                    format!("System V segment {id}"),
                    Some(map),
                )
            }
            _ => return Ok(false),
        };
        if !store.locks().try_lock(INIT_LOCK)? {
            return Ok(false); // a creator, reclaimer or replacer is at work
        }
        // Under the init lock: still the object at our name, and ours?
        let magic = match (&store, &map) {
            (Store::Fd(f), _) => {
                if fd::identity(f.as_fd())?.1 == 0 {
                    return Ok(false); // already unlinked by another replacer
                }
                fd::read_magic(f.as_fd())?
            }
            (Store::SysV { id, .. }, Some(m)) => {
                if sysv::stat(*id)?.dest {
                    return Ok(false); // already removed
                }
                header_magic(m)
            }
            _ => unreachable!("built above"),
        };
        if magic == [0; 8] {
            return Ok(false); // not provably ours yet: `open` waits or judges it
        }
        if magic != MAGIC {
            return Err(Error::BadMagic { found: magic });
        }
        if any_live(&store)? {
            return Err(Error::InUse {
                live: count_live(&store)?.max(1),
                what,
            });
        }
        // Dropping the store afterwards releases the init lock.
        match &store {
            Store::Fd(f) => {
                let path = match &self.spec {
                    Spec::Posix(n) => fd::shm_path(names::validate(n)?),
                    Spec::File(p) => p.clone(),
                    _ => unreachable!("an fd store is a posix or file spec"),
                };
                fd::unlink_if_same(&path, fd::identity(f.as_fd())?.0)
            }
            Store::SysV { id, .. } => sysv::remove(*id).map(|()| true),
            Store::Heap { .. } => unreachable!("not built above"),
        }
    }

    /// Removes a named object left unready by a dead creator, under its init lock.
    /// Only what is provably a half-made shmkit segment is removed: it carries our
    /// magic, is not Ready, passes the ownership checks, and nobody holds its init
    /// lock. Returns whether it removed something.
    fn reclaim_half_made(&self) -> Result<bool> {
        match &self.spec {
            Spec::Posix(_) | Spec::File(_) => {
                let path = match &self.spec {
                    Spec::Posix(n) => fd::shm_path(names::validate(n)?),
                    Spec::File(p) => p.clone(),
                    _ => unreachable!("matched above"),
                };
                let fd = match fd::open(&path, false, 0, "half-made segment") {
                    Ok(fd) => fd,
                    Err(Error::NotFound(_)) => return Ok(false),
                    Err(e) => return Err(e),
                };
                fd::check_object(
                    fd.as_fd(),
                    "half-made segment",
                    self.allow_foreign_owner,
                    self.allow_shared_write,
                )?;
                let store = Store::Fd(fd);
                if !store.locks().try_lock(INIT_LOCK)? {
                    return Ok(false); // someone is initialising or reclaiming it
                }
                let Store::Fd(fd) = &store else {
                    unreachable!("constructed as Store::Fd above")
                };
                let ours_and_unready = fd::read_magic(fd.as_fd())? == MAGIC
                    && (fd::size(fd.as_fd())? < HEADER_SIZE
                        || fd::read_state(fd.as_fd())? != init::READY);
                if !ours_and_unready {
                    return Ok(false);
                }
                if any_live(&store)? {
                    return Err(Error::corrupt(
                        "segment state",
                        "not Ready (or truncated) while live processes are attached to it: \
                         a peer damaged it; not reclaimed",
                    ));
                }
                let len = fd::size(fd.as_fd())?;
                if len >= HEADER_SIZE && len % PAGE_SIZE == 0 {
                    let map = fd::map(fd.as_fd(), len)?;
                    let state = init::observe(header_state(&map));
                    if let Some(e) = published_evidence(&map, &store, state)? {
                        return Err(e); // not half-made: damaged, never removed
                    }
                }
                let (ident, _) = fd::identity(fd.as_fd())?;
                fd::unlink_if_same(&path, ident) // dropping the store releases the lock
            }
            Spec::SysV(Some(key)) => {
                let id = match sysv::lookup(*key) {
                    Ok(id) => id,
                    Err(Error::NotFound(_)) => return Ok(false),
                    Err(e) => return Err(e),
                };
                let st = sysv::stat(id)?;
                let me = rustix::process::geteuid().as_raw();
                if st.uid != me && !self.allow_foreign_owner {
                    return Err(Error::ForeignOwner {
                        found: st.uid,
                        expected: me,
                    });
                }
                let store = Store::SysV {
                    id,
                    lock: sysv::lock_file(id, self.allow_foreign_owner, self.allow_shared_write)?,
                };
                if !store.locks().try_lock(INIT_LOCK)? {
                    return Ok(false);
                }
                let map = sysv::attach(id, st.size.max(HEADER_SIZE))?;
                let state = init::observe(header_state(&map));
                if header_magic(&map) != MAGIC || state == init::READY {
                    return Ok(false);
                }
                if let Some(e) = published_evidence(&map, &store, state)? {
                    return Err(e);
                }
                sysv::remove(id)?;
                drop(map);
                if let Store::SysV { lock, .. } = &store {
                    // Unless an opener is still looking at it (it will fail, and
                    // discard it then).
                    let _ = sysv::discard_lock_file(id, Some(lock.as_fd()));
                }
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

/// `SegmentOptions::remove` of System V segment `id`: removes it only if it carries
/// shmkit's magic (a foreign segment is [`Error::BadMagic`] and stays), and deletes
/// its lock file whatever the segment's state, unless a handle still uses it.
fn remove_sysv(id: i32) -> Result<()> {
    let r = match sysv::attach_read_only(id) {
        // Our attachment keeps the id from being destroyed and given to another
        // segment between the look at its magic and the removal.
        Ok(map) => match (sysv::stat(id), sysv::head(&map)) {
            (Err(e), _) => Err(e),
            (Ok(st), _) if st.dest => Err(Error::NotFound(format!(
                "System V segment id {id} (already removed)"
            ))),
            (Ok(_), MAGIC) => sysv::remove(id),
            (Ok(_), found) => Err(Error::BadMagic { found }),
        },
        Err(e) => Err(e),
    };
    match (r, sysv::discard_lock_file(id, None)) {
        // The segment was already gone, but its lock file was left: that was
        // what remained to remove.
        (Err(Error::NotFound(_)), Ok(true)) => Ok(()),
        (Ok(()), Err(e)) => Err(e),
        (r, _) => r,
    }
}

/// The magic bytes at the start of `map` (a volatile copy: a creator may be writing).
fn header_magic(map: &Mapping) -> [u8; 8] {
    // SAFETY: every mapping is at least HEADER_SIZE bytes and page-aligned; the
    // magic is 8 plain bytes at offset 0, valid for any bit pattern.
    unsafe { map.ptr().as_ptr().cast::<[u8; 8]>().read_volatile() }
}

/// The bounded wait of an opener for a segment that is not ready yet.
struct Unready {
    start: Instant,
    /// `None`: no deadline (a timeout too large to add to now).
    deadline: Option<Instant>,
    grace: Duration,
    free_since: Option<Instant>,
}

impl Unready {
    fn new(timeout: Duration) -> Self {
        let start = Instant::now();
        Self {
            start,
            deadline: start.checked_add(timeout),
            grace: CREATOR_GRACE,
            free_since: None,
        }
    }

    /// Decides, while a segment is not ready, whether to keep waiting: a live
    /// creator (init lock held elsewhere) is waited for until the deadline; an
    /// unready object whose lock stays free past the grace period has no creator:
    /// [`Error::CreatorDied`] if it carries our magic (reclaimable), otherwise
    /// [`Error::BadMagic`] (never initialised: not provably a shmkit segment).
    fn judge(&mut self, store: &Store, state: u32, magic: [u8; 8]) -> Result<()> {
        let now = Instant::now();
        if store.locks().held_elsewhere(INIT_LOCK)? {
            self.free_since = None;
        } else {
            let since = *self.free_since.get_or_insert(now);
            if now.duration_since(since) >= self.grace {
                return Err(if magic == MAGIC {
                    Error::CreatorDied { state }
                } else {
                    Error::BadMagic { found: magic }
                });
            }
        }
        if self.deadline.is_some_and(|d| now >= d) {
            return Err(Error::NotReady {
                state,
                waited: now.duration_since(self.start),
            });
        }
        Ok(())
    }
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

/// Whether another handle holds a registry slot's lock: a live attachment, by
/// the kernel's evidence alone (no registry word is read). One probe over the
/// slot locks of the largest registry (the init lock and a System V lock file's
/// presence lock lie outside it).
fn any_live(store: &Store) -> Result<bool> {
    let slots = crate::segment::header::MAX_SLOTS;
    store
        .locks()
        .any_held_elsewhere(crate::segment::registry::lock_index(0), slots)
}

/// How many registry slots' locks other handles hold (one probe per slot, up to
/// the largest registry): for messages only, decisions use [`any_live`].
fn count_live(store: &Store) -> Result<u32> {
    let locks = store.locks();
    let mut live = 0;
    for slot in 0..crate::segment::header::MAX_SLOTS {
        if locks.held_elsewhere(crate::segment::registry::lock_index(slot))? {
            live += 1;
        }
    }
    Ok(live)
}

/// For a segment whose state word says it is not `Ready`: evidence that it was
/// published all the same (so a peer overwrote the word), as the error to give
/// instead of reclaiming it. Nobody attaches before `Ready`, and an attach leaves
/// its pid and time in its registry slot (kept after detach); so a live attached
/// process (the kernel's evidence), or a complete checksummed header whose
/// registry shows an attach, proves the state word lies. Only an object with
/// neither is half-made (its creator died before publishing) and may be
/// reclaimed: one forged word is never enough to lose a segment.
fn published_evidence(map: &Mapping, store: &Store, state: u32) -> Result<Option<Error>> {
    let live = any_live(store)?;
    let attached_once = !live && snapshot(map).is_ok_and(|f| ever_attached(store, map, &f));
    if !live && !attached_once {
        return Ok(None);
    }
    Ok(Some(Error::corrupt(
        "segment state",
        format!(
            "state word {state} (not Ready) in a segment that {}: a peer overwrote it; \
             not reclaimed (remove it by hand once nobody needs its data)",
            if live {
                "live processes are attached to".to_owned()
            } else {
                "processes have attached to (its registry says so)".to_owned()
            }
        ),
    )))
}

/// Whether any registry slot of a validated header shows that a process attached
/// (a claimed word, or the pid and time an attach leaves behind). Read with
/// `pread` where there is a descriptor (a hole in a sparse file then reads as
/// zeros instead of faulting in a page a full store cannot supply).
fn ever_attached(store: &Store, map: &Mapping, f: &HeaderFields) -> bool {
    let len = f.registry_slots as usize * size_of::<Slot>();
    let mut bytes = vec![0u8; len];
    match store {
        Store::Fd(fd) => {
            let mut done = 0;
            while done < len {
                let at = f.registry_offset + done as u64;
                match rustix::io::pread(fd, &mut bytes[done..], at) {
                    Ok(0) | Err(_) => break, // short or unreadable: zeros, "never"
                    Ok(n) => done += n,
                }
            }
        }
        _ => {
            // SAFETY: `validate` proved the registry lies below user_offset <=
            // max_size == the mapping's length; System V and heap segments have no
            // size-limited store to fault on. Volatile byte copies: peers may write.
            let src = unsafe { map.ptr().as_ptr().add(f.registry_offset as usize) };
            for (i, b) in bytes.iter_mut().enumerate() {
                // SAFETY: i < len, inside the registry (above).
                *b = unsafe { src.add(i).read_volatile() };
            }
        }
    }
    // A slot: state u64, pid u32, uid u32, start_time u64, pidns u64, attached_ns
    // u64, ... (src/segment/registry.rs); any of state, pid or attached_ns set.
    bytes.chunks_exact(size_of::<Slot>()).any(|slot| {
        let word = |at: usize, n: usize| slot[at..at + n].iter().any(|&b| b != 0);
        word(0, 8) || word(8, 4) || word(32, 8)
    })
}
