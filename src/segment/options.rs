//! `SegmentOptions`: one builder for every kind of segment.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::layout::{PAGE_SIZE, align_up};
use crate::segment::header::{HEADER_SIZE, MAX_SEGMENT_SIZE, MAX_SLOTS};
use crate::segment::registry::Slot;

/// Default maximum size: 64 MiB of address space (not memory: only the committed
/// part is backed).
pub const DEFAULT_MAX_SIZE: u64 = 64 << 20;
/// Default number of registry slots (concurrently attached handles).
pub const DEFAULT_SLOTS: u32 = 128;
/// Default bound on how long `open` waits for a segment being created.
pub const DEFAULT_OPEN_TIMEOUT: Duration = Duration::from_secs(1);

/// Which kind of segment, and how it is found.
#[derive(Clone, Debug)]
pub(crate) enum Spec {
    Posix(String),
    File(PathBuf),
    Memfd,
    Anonymous,
    SysV(Option<i32>),
    SysVId(i32),
    Heap,
}

impl Spec {
    /// The kind this spec makes or opens.
    pub(crate) fn kind(&self) -> SegmentKind {
        match self {
            Spec::Posix(_) => SegmentKind::Posix,
            Spec::File(_) => SegmentKind::File,
            Spec::Memfd => SegmentKind::Memfd,
            Spec::Anonymous => SegmentKind::Anonymous,
            Spec::SysV(_) | Spec::SysVId(_) => SegmentKind::SysV,
            Spec::Heap => SegmentKind::Heap,
        }
    }
}

/// The kind of a segment.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SegmentKind {
    /// Named POSIX shared memory (`/dev/shm/<name>`).
    Posix,
    /// A regular file: persists after every process has exited.
    File,
    /// A memfd, shared by passing its descriptor (sealed against resizing).
    Memfd,
    /// Anonymous shared memory inherited across `fork`.
    Anonymous,
    /// System V shared memory (`shmget`).
    SysV,
    /// Process memory laid out like a segment (tests, miri, loom).
    Heap,
}

/// Whether [`SegmentOptions::open_or_create`] created the segment or opened an
/// existing one.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Opened {
    /// This call created it.
    Created,
    /// It already existed (possibly after reclaiming a half-made one).
    Existing,
    /// This call created it in place of a stale segment of the same name, whose
    /// every attached process was dead (only with
    /// [`SegmentOptions::replace_stale`]).
    Replaced,
}

/// Builder for every kind of [`Segment`](crate::Segment).
///
/// A segment reserves `max_size` bytes of address space, mapped once and never
/// remapped, of which the first `committed` bytes are backed; it grows with
/// [`Segment::commit`](crate::Segment::commit).
///
/// # Examples
///
/// ```
/// use shmkit::SegmentOptions;
///
/// let name = shmkit::unique_name("doc-")?;
/// let seg = SegmentOptions::posix(&name).max_size(1 << 20).create()?;
/// let peer = SegmentOptions::posix(&name).open()?;
/// assert_eq!(peer.seed(), seg.seed());
/// # Ok::<(), shmkit::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct SegmentOptions {
    pub(crate) spec: Spec,
    pub(crate) max_size: u64,
    pub(crate) committed: Option<u64>,
    pub(crate) mode: u32,
    pub(crate) slots: u32,
    pub(crate) open_timeout: Duration,
    pub(crate) allow_foreign_owner: bool,
    pub(crate) allow_shared_write: bool,
    pub(crate) init_hook: Option<fn()>,
    /// Whether the user region holds a heap (the default).
    pub(crate) heap: bool,
    /// Bytes of raw region before the heap (rounded up to pages).
    pub(crate) raw_bytes: u64,
    /// Whether `create` may replace a same-named segment nobody alive uses.
    pub(crate) replace_stale: bool,
}

/// The sizes a new segment will have.
#[derive(Copy, Clone, Debug)]
pub(crate) struct Plan {
    pub max_size: u64,
    pub committed: u64,
    pub registry_offset: u64,
    pub slots: u32,
    pub user_offset: u64,
    /// End of the raw region (`max_size` without a heap).
    pub raw_end: u64,
    /// The heap's layout, if the segment has one.
    pub heap: Option<crate::alloc::HeapLayout>,
}

impl SegmentOptions {
    fn new(spec: Spec) -> Self {
        Self {
            spec,
            max_size: DEFAULT_MAX_SIZE,
            committed: None,
            mode: 0o600,
            slots: DEFAULT_SLOTS,
            open_timeout: DEFAULT_OPEN_TIMEOUT,
            allow_foreign_owner: false,
            allow_shared_write: false,
            init_hook: None,
            heap: true,
            raw_bytes: 0,
            replace_stale: false,
        }
    }

    /// A named POSIX shared-memory object, `/dev/shm/<name>`. A leading `/` is
    /// accepted. Use [`unique_name`](crate::unique_name) for names others must not guess.
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::posix(&shmkit::unique_name("doc-")?).create()?;
    /// assert_eq!(seg.kind(), shmkit::SegmentKind::Posix);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn posix(name: &str) -> Self {
        Self::new(Spec::Posix(name.to_owned()))
    }

    /// A regular file at `path`: the segment persists, with its contents, after
    /// every process has exited, and is reopened with [`open`](Self::open).
    ///
    /// # Examples
    ///
    /// ```
    /// let path = std::env::temp_dir().join(shmkit::unique_name("doc-")?);
    /// let seg = shmkit::SegmentOptions::file(&path).create()?;
    /// assert!(path.exists());
    /// drop(seg);
    /// assert!(!path.exists()); // not persisted: removed with its creator
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn file(path: impl Into<PathBuf>) -> Self {
        // Absolute, so that a later chdir cannot make the creator's drop miss it.
        let path = path.into();
        Self::new(Spec::File(std::path::absolute(&path).unwrap_or(path)))
    }

    /// A memfd: create it, then hand its descriptor to another process with
    /// [`Segment::send_fd`](crate::Segment::send_fd); that process opens it with
    /// [`open_fd`](Self::open_fd).
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::memfd().create()?;
    /// assert!(seg.as_fd().is_some());
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn memfd() -> Self {
        Self::new(Spec::Memfd)
    }

    /// Anonymous shared memory for a process and the children it `fork`s (each
    /// child calls [`Segment::after_fork`](crate::Segment::after_fork)).
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::anonymous().create()?;
    /// assert_eq!(seg.kind(), shmkit::SegmentKind::Anonymous);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn anonymous() -> Self {
        Self::new(Spec::Anonymous)
    }

    /// System V shared memory under `key` (create or open by key).
    ///
    /// # Examples
    ///
    /// ```
    /// let key = 0x5d0c_0000 | (std::process::id() as i32 & 0xffff);
    /// let seg = shmkit::SegmentOptions::sysv(key).max_size(1 << 20).create()?;
    /// let peer = shmkit::SegmentOptions::sysv(key).open()?;
    /// assert_eq!(peer.seed(), seg.seed());
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn sysv(key: i32) -> Self {
        Self::new(Spec::SysV(Some(key)))
    }

    /// A new private System V segment (`IPC_PRIVATE`); hand its id
    /// ([`Segment::sysv_id`](crate::Segment::sysv_id)) to children, for example in
    /// an environment variable read by [`Segment::sysv_from_env`](crate::Segment::sysv_from_env).
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::sysv_private().max_size(1 << 20).create()?;
    /// assert!(seg.sysv_id().is_some());
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn sysv_private() -> Self {
        Self::new(Spec::SysV(None))
    }

    /// The existing System V segment with this id (open only).
    ///
    /// # Examples
    ///
    /// ```
    /// let r = shmkit::SegmentOptions::sysv_id(i32::MAX).open();
    /// assert!(matches!(r, Err(shmkit::Error::NotFound(_))));
    /// ```
    pub fn sysv_id(id: i32) -> Self {
        Self::new(Spec::SysVId(id))
    }

    /// Process memory laid out like a segment: for tests, miri and loom. Other
    /// handles come from [`Segment::try_clone`](crate::Segment::try_clone).
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let peer = seg.try_clone()?;
    /// assert!(peer.is_alive(seg.slot())?);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn heap() -> Self {
        Self::new(Spec::Heap)
    }

    /// The maximum size in bytes (a multiple of 4096, at most 64 GiB). Default 64 MiB.
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().max_size(8 << 20).create()?;
    /// assert_eq!(seg.max_size(), 8 << 20);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn max_size(mut self, bytes: u64) -> Self {
        self.max_size = bytes;
        self
    }

    /// The initially committed (backed) size, a multiple of 4096. Never less than
    /// what the creator writes: the header and registry, and with a heap (the
    /// default) the heap's header too — a smaller value is raised to that, which
    /// is also the default. (`Heap::attach` commits the heap's tables as well.)
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().committed(1 << 20).create()?;
    /// assert_eq!(seg.committed(), 1 << 20);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn committed(mut self, bytes: u64) -> Self {
        self.committed = Some(bytes);
        self
    }

    /// Permission bits of a created object (default `0o600`), set with `fchmod` so
    /// the umask does not change them.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::os::unix::fs::PermissionsExt;
    /// let name = shmkit::unique_name("doc-mode-")?;
    /// let _seg = shmkit::SegmentOptions::posix(&name).mode(0o640).create()?;
    /// let mode = std::fs::metadata(format!("/dev/shm/{name}")).unwrap().permissions().mode();
    /// assert_eq!(mode & 0o777, 0o640);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }

    /// Number of registry slots, 1 to 65536 (default 128).
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().registry_slots(2).create()?;
    /// let _b = seg.try_clone()?;
    /// assert!(matches!(seg.try_clone(), Err(shmkit::Error::RegistryFull { slots: 2 })));
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn registry_slots(mut self, slots: u32) -> Self {
        self.slots = slots;
        self
    }

    /// How long `open` waits for a segment that is being created (default 1 s).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let opts = shmkit::SegmentOptions::posix("doc-missing").open_timeout(Duration::from_millis(100));
    /// assert!(opts.open().is_err());
    /// ```
    pub fn open_timeout(mut self, timeout: Duration) -> Self {
        self.open_timeout = timeout;
        self
    }

    /// Accept, on open, an object owned by another user (refused by default).
    ///
    /// # Examples
    ///
    /// ```
    /// let opts = shmkit::SegmentOptions::posix("shared-with-a-service-user").allow_foreign_owner(true);
    /// # let _ = opts;
    /// ```
    pub fn allow_foreign_owner(mut self, allow: bool) -> Self {
        self.allow_foreign_owner = allow;
        self
    }

    /// Accept, on open, an object that group or others may write (refused by default).
    ///
    /// # Examples
    ///
    /// ```
    /// let opts = shmkit::SegmentOptions::posix("group-shared").allow_shared_write(true);
    /// # let _ = opts;
    /// ```
    pub fn allow_shared_write(mut self, allow: bool) -> Self {
        self.allow_shared_write = allow;
        self
    }

    /// Makes a segment without a heap: the whole user region, from
    /// [`Segment::user_offset`](crate::Segment::user_offset) to `max_size`, is the
    /// raw region, for objects placed at fixed offsets with
    /// [`Segment::resolve`](crate::Segment::resolve) and its relatives. Recorded in
    /// the checksummed header: [`Heap::attach`](crate::alloc::Heap::attach) (and so
    /// the directory) refuses such a segment with [`Error::RegionInUse`].
    ///
    /// By default a segment has a heap, built by its creator before anyone can open
    /// it, and raw placement is allowed only in the region reserved with
    /// [`raw_region`](Self::raw_region).
    ///
    /// # Examples
    ///
    /// ```
    /// use shmkit::{Offset, SegmentOptions};
    /// let seg = SegmentOptions::memfd().no_heap().committed(64 << 10).create()?;
    /// assert!(!seg.has_heap());
    /// assert_eq!(seg.raw_region(), seg.user_offset()..seg.max_size());
    /// assert!(seg.resolve_ptr(Offset::<u64>::new(seg.user_offset())).is_ok());
    /// assert!(matches!(shmkit::alloc::Heap::attach(&seg), Err(shmkit::Error::RegionInUse { .. })));
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn no_heap(mut self) -> Self {
        self.heap = false;
        self
    }

    /// Reserves `bytes` (rounded up to whole pages) at the start of the user region
    /// for raw placement at fixed offsets; the heap begins after it. The region is
    /// recorded in the checksummed header and the heap never touches it; raw
    /// placement outside it is refused with [`Error::RegionInUse`]. Ignored with
    /// [`no_heap`](Self::no_heap), where the whole user region is raw.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmkit::SegmentOptions;
    /// let seg = SegmentOptions::memfd().raw_region(100).create()?;
    /// let raw = seg.raw_region();
    /// assert_eq!((raw.start, raw.end - raw.start), (seg.user_offset(), 4096));
    /// assert_eq!(seg.heap_offset(), Some(raw.end));
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn raw_region(mut self, bytes: u64) -> Self {
        self.raw_bytes = bytes;
        self
    }

    /// Lets [`create`](Self::create) and [`open_or_create`](Self::open_or_create)
    /// replace an existing named segment (POSIX name, file, System V key) whose
    /// every attached process is dead, instead of failing with
    /// [`Error::AlreadyExists`] or opening it.
    ///
    /// "Dead" is the kernel's word, never a guess: each attached process holds a
    /// lock that the kernel releases when it exits, and the segment is replaced only
    /// if no such lock is held (one `F_OFD_GETLK` probe over all of them; the
    /// registry's words, ages and `kill(pid, 0)` are not consulted). A segment with
    /// any live process attached — in this process too — is never replaced:
    /// `create` fails with [`Error::InUse`] naming how many, and `open_or_create`
    /// opens it. Only a shmkit segment that passes the ownership checks is
    /// replaced; anything else at the name is refused as `open` would.
    ///
    /// # Which lifetime to choose
    ///
    /// - **Drop removes** (the default): the creator's handle removes the name when
    ///   it is dropped; attached peers keep their mapping. Right for a segment that
    ///   lives as long as its creator.
    /// - [`Segment::persist`](crate::Segment::persist): the name outlives every
    ///   process, with its data, until [`remove`](Self::remove). Right for state
    ///   that must survive restarts: reopen it with `open_or_create` and never
    ///   replace it.
    /// - **`replace_stale(true)`**: a server that may be SIGKILLed (so its drop
    ///   never runs) and starts afresh each time: the dead run's segment is removed
    ///   and a new one created, while a second live instance is refused.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmkit::{Error, SegmentOptions};
    /// let name = shmkit::unique_name("doc-stale-")?;
    /// let mut first = SegmentOptions::posix(&name).create()?;
    /// first.persist(); // as if its drop never ran
    /// // Live: never replaced.
    /// let live = SegmentOptions::posix(&name).replace_stale(true).create();
    /// assert!(matches!(live, Err(Error::InUse { live: 1, .. })));
    /// drop(first); // now nobody is attached
    /// let second = SegmentOptions::posix(&name).replace_stale(true).create()?;
    /// # drop(second);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn replace_stale(mut self, replace: bool) -> Self {
        self.replace_stale = replace;
        self
    }

    /// Test hook: called by a creator half-way through initialisation (after the
    /// object exists and the header is partly written, before it is `Ready`).
    #[cfg(any(test, feature = "testkit"))]
    #[doc(hidden)]
    pub fn init_hook(mut self, hook: fn()) -> Self {
        self.init_hook = Some(hook);
        self
    }

    /// The kind these options make or open.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(shmkit::SegmentOptions::memfd().kind(), shmkit::SegmentKind::Memfd);
    /// ```
    pub fn kind(&self) -> SegmentKind {
        self.spec.kind()
    }

    /// Checks the sizes and works out the layout of a new segment.
    pub(crate) fn plan(&self) -> Result<Plan> {
        if self.slots == 0 || self.slots > MAX_SLOTS {
            return Err(Error::InvalidArgument("registry_slots must be 1..=65536"));
        }
        if self.mode & !0o777 != 0 {
            return Err(Error::InvalidArgument("mode has bits outside 0o777"));
        }
        let registry_offset = HEADER_SIZE;
        let reg_bytes = u64::from(self.slots) * size_of::<Slot>() as u64;
        let user_offset = align_up(registry_offset + reg_bytes, PAGE_SIZE)
            .ok_or(Error::InvalidArgument("registry too large"))?;
        let max = self.max_size;
        let size_err = |size, reason| Err(Error::InvalidSize { size, reason });
        if max == 0 {
            return size_err(max, "max_size is 0");
        }
        if max % PAGE_SIZE != 0 {
            return size_err(max, "max_size is not a multiple of 4096");
        }
        if max > MAX_SEGMENT_SIZE {
            return size_err(max, "max_size exceeds 64 GiB");
        }
        if max < user_offset {
            return size_err(max, "max_size cannot hold the header and registry");
        }
        let committed = self.committed.unwrap_or(user_offset);
        if committed % PAGE_SIZE != 0 {
            return size_err(committed, "committed is not a multiple of 4096");
        }
        if committed > max {
            return size_err(committed, "committed exceeds max_size");
        }
        let (raw_end, heap) = if self.heap {
            let raw_end = align_up(user_offset.saturating_add(self.raw_bytes), PAGE_SIZE)
                .filter(|&e| e <= max)
                .ok_or(Error::InvalidSize {
                    size: self.raw_bytes,
                    reason: "raw_region does not fit in max_size",
                })?;
            let lay =
                crate::alloc::HeapLayout::new(raw_end, max).map_err(|_| Error::InvalidSize {
                    size: max,
                    reason: "too small for a heap (header, tables and one 256 KiB span): \
                             make it larger, or use no_heap() for raw placement only",
                })?;
            (raw_end, Some(lay))
        } else {
            (max, None)
        };
        // The creator builds the heap header before Ready: its pages are committed.
        let floor = heap.map_or(user_offset, |l| l.pd_off);
        Ok(Plan {
            max_size: max,
            committed: committed.max(floor),
            registry_offset,
            slots: self.slots,
            user_offset,
            raw_end,
            heap,
        })
    }
}
