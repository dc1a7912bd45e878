//! # shmkit
//!
//! Concurrent data structures that live inside a shared-memory segment and are used
//! by many processes at once, and that stay consistent when any of those processes
//! is killed with `kill -9`.
//!
//! This release provides the foundation every structure stands on:
//!
//! - [`SegmentOptions`] / [`Segment`]: shared memory of every kind (named POSIX
//!   shm, memfd passed over a Unix socket, System V, file-backed, anonymous across
//!   `fork`, and heap-backed for tests), created with a safe init protocol, reserved
//!   at a maximum size and committed as it grows; a `Segment` is a cheap `Clone`;
//! - the **directory** ([`Segment::find_or_create`], [`Segment::find`],
//!   [`Directory`]): objects by name, type-checked ([`ShmObject`],
//!   [`TypeIdentity`]), built once among racing processes, handed out as
//!   [`Shared`] handles that deref to the object and own what they need;
//! - the **process registry**: each attachment holds a slot whose liveness the
//!   kernel vouches for ([`Segment::slot_info`], [`Segment::reclaim_dead`]);
//! - [`sync`]: robust process-shared locks (Mutex, RwLock, Condvar, Semaphore,
//!   Event): a holder that dies is detected within milliseconds and the next locker
//!   gets `OwnerDied` (on a handle: [`Shared::lock_or_recover`](Shared) repairs);
//! - [`queue`]: [`queue::SpscQueue`], a single-producer single-consumer ring
//!   whose roles are recorded with their holder's owner tag (a second claimant is
//!   refused, a dead holder's role taken over), with batch and blocking forms that
//!   make a wake syscall only when the peer sleeps, and `PeerDied` for a sleeper
//!   whose peer was killed;
//! - [`alloc`]: the shared heap — a lock-free allocator in the segment whose
//!   blocks record their owner, so that [`alloc::Heap::reclaim_dead`] gives back
//!   what a killed process held; [`containers::ShmBox`], [`containers::ShmVec`],
//!   [`containers::ShmString`] are stored as offsets and handed between processes;
//! - [`queue`]: [`queue::MpmcQueue`], a bounded multi-producer multi-consumer
//!   queue whose slots a killed producer or consumer cannot wedge (at most its
//!   one in-flight message is lost);
//! - [`ShmSafe`]: the marker for types allowed in a segment, derived through
//!   zerocopy (no `unsafe`); [`ShmShared`]: those that may be shared by reference;
//!   [`Offset`], [`Tagged`] / [`AtomicTagged`]: base-relative references and
//!   offset + tag words for ABA-safe CAS.
//!
//! # Example
//!
//! ```
//! use shmkit::{SegmentOptions, sync::Mutex};
//! use std::sync::atomic::{AtomicU64, Ordering};
//!
//! let name = shmkit::unique_name("example-")?;
//! let seg = SegmentOptions::posix(&name).max_size(16 << 20).create()?;
//! let hits = seg.find_or_create::<AtomicU64>("hits", ())?;
//! hits.fetch_add(1, Ordering::Relaxed);
//! let total = seg.find_or_create::<Mutex<u64>>("total", ())?;
//! *total.lock_or_recover(|t| *t = 0)? += 10;
//!
//! // Another process would do exactly this, by name:
//! let peer = SegmentOptions::posix(&name).open()?;
//! assert_eq!(peer.find::<AtomicU64>("hits")?.load(Ordering::Relaxed), 1);
//! assert_eq!(*peer.find::<Mutex<u64>>("total")?.lock()?, 10);
//! assert!(peer.is_alive(seg.slot())?);
//! # Ok::<(), shmkit::Error>(())
//! ```
//!
//! # Guarantees and limitations
//!
//! - **Untrusted memory.** Opening a segment copies the header once and checks
//!   magic, version, layout fingerprint, checksum and every size and offset before
//!   use; anything wrong is a typed [`Error`]. [`Offset`]s are bounds- and
//!   alignment-checked against the user region on every use; shared references are
//!   handed out only for atomic-only types ([`ShmShared`]), plain data is copied
//!   once ([`Segment::read`], [`Segment::write`]). A peer that *truncates* a POSIX
//!   or file object under a mapping can still make others fault (SIGBUS); memfd
//!   segments are sealed against that.
//! - **Crash safety.** A creator killed during initialisation never leaves a
//!   segment that opens as `Ready`: named segments are built unnamed and linked
//!   when complete; elsewhere openers get [`Error::CreatorDied`] and
//!   [`SegmentOptions::open_or_create`] reclaims what carries our magic (and
//!   nothing else). A process killed while attaching or attached leaves a registry
//!   slot that peers see as dead and reclaim.
//! - **Checked by:** loom models of the init-state protocol, the slot claim, the
//!   locks, the heap and the directory's create race (including threads that stop
//!   half-way); proptest models against std references; multi-process and
//!   `SIGKILL` tests of real segments; fuzz targets over segment images, heap
//!   metadata and directory entries; miri over the heap-backed region.
//! - **Platform:** Linux only (x86_64, aarch64), with `/proc` mounted. Segments are
//!   at most 64 GiB. The README lists every known limitation.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(unsafe_code)]
#![warn(missing_docs)]

#[cfg(not(target_os = "linux"))]
compile_error!(
    "shmkit supports Linux only (futex, memfd, OFD locks); other platforms are not implemented yet"
);

pub mod alloc;
pub mod containers;
mod directory;
mod error;
/// Fuzz entry points, shared by `fuzz/` and `tests/fuzz_replay.rs`: only with the
/// `testkit` feature, which is test support outside semver.
#[cfg(feature = "testkit")]
#[doc(hidden)]
pub mod fuzzing;
/// Test support outside semver (`testkit` feature): simulated deaths inside
/// directory changes.
#[cfg(feature = "testkit")]
#[doc(hidden)]
pub mod testkit {
    pub use crate::directory::crash::{arm, died, disarm};

    /// The byte offset of registry slot `slot` in `seg` (its 64-bit state word
    /// first, then the `u32` pid and uid and the `u64` start time and pid
    /// namespace), `None` out of range: for tests that play a peer overwriting the
    /// registry.
    pub fn registry_slot_offset(seg: &crate::Segment, slot: u32) -> Option<u64> {
        seg.registry_slot_offset(slot)
    }

    pub use crate::directory::{spsc_set_indices, spsc_set_roles, spsc_waiters};
    pub use crate::queue::{LocalSpsc, wake_count as queue_wake_count};
}
mod layout;
// The one door for atomics, UnsafeCell and futexes; public only to loom models.
#[cfg(shmkit_loom)]
#[doc(hidden)]
pub mod loom;
#[cfg(not(shmkit_loom))]
mod loom;
mod object;
mod ptr;
pub mod queue;
mod segment;
pub mod sync;

pub use directory::{
    CREATE_WAIT, DirReport, Directory, MAX_NAME as MAX_OBJECT_NAME, ObjectInfo, ObjectState, Shared,
};
pub use error::{Error, Result};
pub use layout::{PAGE_SIZE, ShmSafe, ShmShared};
pub use object::{ObjectConfig, ShmObject, TypeIdentity};
pub use ptr::{AtomicTagged, Offset, Tagged};
pub use segment::{
    DEFAULT_MAX_SIZE, DEFAULT_OPEN_TIMEOUT, DEFAULT_SLOTS, MAX_NAME_LEN, Opened, OwnerTag, Segment,
    SegmentKind, SegmentOptions, SlotInfo, SlotState, recv_fd, unique_name,
};
/// zerocopy, whose derives make a type [`ShmSafe`] (re-exported so that the
/// derives' paths resolve through shmkit: `#[zerocopy(crate = "shmkit::zerocopy")]`).
pub use zerocopy;

/// The lock-free state machines under the segment, exposed (under `cfg(shmkit_loom)` only)
/// for the loom models in
/// `tests/loom_*.rs`. Not a stable API.
#[cfg(shmkit_loom)]
#[doc(hidden)]
pub mod model {
    /// The directory's create-race decision.
    pub use crate::directory::protocol::{Found, Mode, Step, step};
    /// The MPMC queue's ring over plain memory.
    pub use crate::queue::model::MpmcModel;
    pub use crate::segment::init;
    pub use crate::segment::locks::{LockTable, MemHandle, MemLocks, Witness};
    pub use crate::segment::registry::{Identity, Slot, claim, reclaim, release};
}

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
