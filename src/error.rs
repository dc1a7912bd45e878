//! Errors: every failure names its cause.

use std::time::Duration;

/// The result type of every fallible shmkit call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong when making, opening or reading a segment.
///
/// Shared memory is untrusted input: whatever a peer writes into a segment, reading
/// it yields one of these errors, never undefined behaviour or a panic.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A system call failed.
    #[error("{op} failed: {errno}")]
    Os {
        /// The operation, e.g. `"shm_open"` or `"fallocate"`.
        op: &'static str,
        /// The OS error.
        errno: rustix::io::Errno,
    },
    /// The backing store (/dev/shm, the file system, shm limits) is full.
    #[error(
        "no space to commit {requested} bytes: {available} bytes available on the backing store"
    )]
    NoSpace {
        /// Bytes asked for.
        requested: u64,
        /// Bytes the backing store reported free (0 if unknown).
        available: u64,
    },
    /// A name is not acceptable.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A size is not acceptable.
    #[error("invalid size {size}: {reason}")]
    InvalidSize {
        /// The size given.
        size: u64,
        /// Why it was refused.
        reason: &'static str,
    },
    /// An option or argument does not fit this kind of segment.
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// The object does not exist.
    #[error("{0} does not exist")]
    NotFound(String),
    /// The object already exists (create with exclusive semantics).
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The object is owned by another user.
    #[error("owned by uid {found}, expected {expected} (use allow_foreign_owner to accept)")]
    ForeignOwner {
        /// The owner found.
        found: u32,
        /// Our uid.
        expected: u32,
    },
    /// The object is writable by group or others.
    #[error("mode {mode:#o} lets group or others write (use allow_shared_write to accept)")]
    InsecureMode {
        /// The permission bits found.
        mode: u32,
    },
    /// The name refers to something that is not a regular file (a symlink, a fifo...).
    #[error("{0} is not a regular file (symlinks are never followed)")]
    NotRegularFile(String),
    /// A received memfd lacks the seals shmkit requires.
    #[error("memfd seals {found:#x} lack the required {required:#x}")]
    SealsMissing {
        /// Seals found.
        found: u32,
        /// Seals required.
        required: u32,
    },
    /// The magic number is wrong: this is not a shmkit segment.
    #[error("not a shmkit segment: magic {found:02x?}")]
    BadMagic {
        /// The first bytes found.
        found: [u8; 8],
    },
    /// The segment was made by an incompatible format version.
    #[error("segment format version {found}, this build reads {expected}")]
    VersionMismatch {
        /// Version in the segment.
        found: u32,
        /// Version of this build.
        expected: u32,
    },
    /// The segment was made on another architecture, endianness or build layout.
    #[error("layout fingerprint {found:#018x} does not match this build's {expected:#018x}")]
    FingerprintMismatch {
        /// Fingerprint in the segment.
        found: u64,
        /// Fingerprint of this build.
        expected: u64,
    },
    /// The header checksum does not match its contents.
    #[error("header checksum {found:#018x}, contents hash to {computed:#018x}")]
    ChecksumMismatch {
        /// Stored checksum.
        found: u64,
        /// Checksum of the stored fields.
        computed: u64,
    },
    /// A value read from the segment is impossible.
    #[error("corrupt segment: {what}: {detail}")]
    Corrupt {
        /// The field or structure.
        what: &'static str,
        /// What was wrong with it.
        detail: String,
    },
    /// The segment did not become ready in time, and its creator may still be alive.
    #[error("not ready after {waited:?} (state {state}): its live creator is still building it")]
    NotReady {
        /// The state word seen last.
        state: u32,
        /// How long we waited.
        waited: Duration,
    },
    /// The creator died before the segment was ready.
    #[error("the creator died during initialisation (state {state}); open_or_create reclaims it")]
    CreatorDied {
        /// The state word seen.
        state: u32,
    },
    /// The segment was marked poisoned by its creator.
    #[error("the segment is poisoned")]
    Poisoned,
    /// Every registry slot is held by a live process.
    #[error("all {slots} registry slots are held by live processes")]
    RegistryFull {
        /// Number of slots.
        slots: u32,
    },
    /// An environment variable is missing or malformed.
    #[error("environment variable {var}: {reason}")]
    BadEnv {
        /// The variable.
        var: String,
        /// What was wrong.
        reason: String,
    },
    /// An offset does not resolve to a valid reference.
    #[error("offset {offset:#x} for {size} bytes aligned {align}: {reason}")]
    BadOffset {
        /// The offset.
        offset: u64,
        /// Size of the target type.
        size: usize,
        /// Alignment of the target type.
        align: usize,
        /// Why it does not resolve.
        reason: &'static str,
    },
    /// The handle belongs to the parent of a fork: call `after_fork` first.
    #[error("this handle was made by pid {parent}; call after_fork() in the child")]
    ForkedHandle {
        /// The pid that made the handle.
        parent: u32,
    },
    /// The heap cannot satisfy an allocation within the segment's maximum size.
    #[error("out of memory: {requested} bytes requested, {available} bytes free in pages")]
    OutOfMemory {
        /// Bytes asked for.
        requested: u64,
        /// Bytes still free at the page level (small-block free space not counted).
        available: u64,
    },
    /// An offset given to the heap is not a block in the state the call needs.
    #[error("bad heap block {offset:#x}: {reason}")]
    BadBlock {
        /// The offset.
        offset: u64,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The operation is not supported by this kind of segment or platform.
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
    /// An object found by name is of another type (name, size, alignment or format
    /// version) than the one asked for.
    #[error("object {name:?} is a {found}, not a {expected}")]
    WrongType {
        /// The object's name.
        name: String,
        /// The identity recorded in the directory.
        found: String,
        /// The identity asked for.
        expected: String,
    },
    /// An object found by name was created with another configuration (a capacity,
    /// a number of permits...) than the one asked for.
    #[error("object {name:?} was created with config {found}, not {expected}")]
    WrongConfig {
        /// The object's name.
        name: String,
        /// The configuration recorded in the directory.
        found: String,
        /// The configuration asked for.
        expected: String,
    },
    /// A lock's previous holder died holding it, and this call did not repair the
    /// data: the lock was released still marked, so the next locker is told too.
    /// Take such locks with `lock_or_recover` (or match `LockError::OwnerDied`
    /// on the low-level calls) to repair.
    #[error(
        "the previous holder of the lock died holding it; released unrepaired and still marked, so the next locker is told too (repair with lock_or_recover)"
    )]
    OwnerDied,
    /// A holder gave up on repairing a lock's data: nobody can take it until it is
    /// `reset`.
    #[error("the lock is not recoverable: a holder dropped it unrepaired (see reset)")]
    NotRecoverable,
    /// A non-blocking call would have had to wait for a live process.
    #[error("would block: held by a live process")]
    WouldBlock,
    /// A timed call reached its deadline.
    #[error("timed out")]
    TimedOut,
    /// The handle holds no registry slot (a forked child that has not called
    /// `after_fork`).
    #[error("the handle holds no registry slot (call after_fork in a forked child)")]
    NotAttached,
    /// An `RwLock` has no reader entry for the caller's registry slot.
    #[error("the RwLock has {entries} reader entries but the caller holds registry slot {slot}")]
    NoReaderEntry {
        /// The caller's slot.
        slot: u32,
        /// Reader entries in the lock.
        entries: usize,
    },
    /// The segment's user region belongs to something else: raw placement reached
    /// into the heap, or a heap was asked of a segment made without one. Who owns
    /// the region is fixed at creation and recorded in the checksummed header
    /// (see [`SegmentOptions::no_heap`](crate::SegmentOptions::no_heap) and
    /// [`SegmentOptions::raw_region`](crate::SegmentOptions::raw_region)).
    #[error("the segment's user region is in use by {by}: {detail}")]
    RegionInUse {
        /// What owns the region: `"the heap"` or `"raw placement"`.
        by: &'static str,
        /// The offending request and what to do instead.
        detail: String,
    },
    /// A segment was not replaced because processes attached to it are alive
    /// (see [`SegmentOptions::replace_stale`](crate::SegmentOptions::replace_stale)).
    #[error("{what} is in use by {live} live process(es): not replaced")]
    InUse {
        /// The segment.
        what: String,
        /// Registry slots held by live processes (at least one).
        live: u32,
    },
    /// Test support (`testkit`): the caller "died" at an armed crash point.
    #[cfg(feature = "testkit")]
    #[doc(hidden)]
    #[error("simulated crash (test support)")]
    SimulatedCrash,
    /// A queue role (producer, consumer) is held by a live process: a second
    /// claimant is refused (a dead holder's role is taken over instead).
    #[error("the {role} role is held by the live owner {holder:#x} (registry slot {slot})")]
    RoleTaken {
        /// Which role.
        role: &'static str,
        /// The holder's owner tag bits (see [`OwnerTag`](crate::OwnerTag)).
        holder: u64,
        /// The holder's registry slot.
        slot: u32,
    },
    /// The other side of a queue died while this call waited on it.
    #[error("the {role} of the queue died")]
    PeerDied {
        /// The role of the peer that died.
        role: &'static str,
    },
    /// An internal lock stayed held by a live process past shmkit's wait bound
    /// (a peer stopped, or stuck, while holding it).
    #[error("{what} stayed held by a live process for {waited:?}")]
    LockTimeout {
        /// Which lock.
        what: &'static str,
        /// How long this call waited.
        waited: Duration,
    },
    // MPMC queue
    /// A queue capacity that is not a power of two in `1..=max`.
    #[error("queue capacity {capacity} is not a power of two in 1..={max}")]
    InvalidCapacity {
        /// The capacity asked for.
        capacity: u64,
        /// The largest capacity of the queue type.
        max: u64,
    },
}

impl<G: crate::sync::Abandon> From<crate::sync::LockError<G>> for Error {
    /// A `'static` error for `?`. An `OwnerDied` guard is released on the way with
    /// [`Abandon::abandon`](crate::sync::Abandon): unrepaired but still marked, so
    /// the next locker gets `OwnerDied` in turn (nothing becomes not recoverable).
    fn from(e: crate::sync::LockError<G>) -> Self {
        use crate::sync::LockError;
        match e {
            LockError::OwnerDied(g) => {
                g.abandon();
                Error::OwnerDied
            }
            LockError::NotRecoverable => Error::NotRecoverable,
            LockError::WouldBlock => Error::WouldBlock,
            LockError::TimedOut => Error::TimedOut,
            LockError::NotAttached => Error::NotAttached,
            LockError::NoReaderEntry { slot, entries } => Error::NoReaderEntry { slot, entries },
            LockError::Corrupt { word } => Error::corrupt(
                "lock word",
                format!(
                    "{word:#018x} names this attachment, which neither holds nor is taking the \
                     lock (a forged or stray write)"
                ),
            ),
        }
    }
}

impl Error {
    /// An [`Error::Os`] for `op`, turning `ENOSPC` into [`Error::NoSpace`] is left to callers.
    pub(crate) fn os(op: &'static str, errno: rustix::io::Errno) -> Self {
        Error::Os { op, errno }
    }

    /// A closure for `map_err` that wraps an errno as [`Error::Os`].
    pub(crate) fn at(op: &'static str) -> impl FnOnce(rustix::io::Errno) -> Self {
        move |errno| Error::Os { op, errno }
    }

    pub(crate) fn corrupt(what: &'static str, detail: impl Into<String>) -> Self {
        Error::Corrupt {
            what,
            detail: detail.into(),
        }
    }
}
