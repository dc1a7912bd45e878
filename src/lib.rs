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
//!   at a maximum size and committed as it grows;
//! - the **process registry**: each handle holds a slot whose liveness the kernel
//!   vouches for ([`Segment::slot_info`], [`Segment::reclaim_dead`]);
//! - [`Offset`]: base-relative references, checked on every resolve;
//!   [`Tagged`] / [`AtomicTagged`]: offset + 32-bit tag words for ABA-safe CAS;
//! - [`sync`]: robust process-shared locks (Mutex, RwLock, Condvar, Semaphore,
//!   Event): a holder that dies is detected within milliseconds and the next locker
//!   gets `OwnerDied`;
//! - [`alloc`]: the shared heap — a lock-free allocator in the segment whose
//!   blocks record their owner, so that [`alloc::Heap::reclaim_dead`] gives back
//!   what a killed process held; [`alloc::ShmBox`], [`alloc::ShmVec`],
//!   [`alloc::ShmString`] are stored as offsets and handed between processes;
//! - [`ShmSafe`]: the marker for types allowed in a segment; [`ShmShared`]: those
//!   that may be shared by reference (atomics only).
//!
//! # Example
//!
//! ```
//! use shmkit::{Offset, SegmentOptions};
//! use std::sync::atomic::{AtomicU64, Ordering};
//!
//! let name = shmkit::unique_name("example-")?;
//! let seg = SegmentOptions::posix(&name).max_size(1 << 20).committed(64 << 10).create()?;
//! let counter = Offset::<AtomicU64>::new(seg.user_offset());
//! // SAFETY: this program views the counter's offset as an AtomicU64 only.
//! unsafe { seg.resolve(counter)? }.fetch_add(1, Ordering::Relaxed);
//!
//! // Another process would do exactly this, by name:
//! let peer = SegmentOptions::posix(&name).open()?;
//! // SAFETY: as above.
//! assert_eq!(unsafe { peer.resolve(counter)? }.load(Ordering::Relaxed), 1);
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
//! - **Checked by:** loom models of the init-state protocol and the slot claim
//!   (including a thread that stops half-way); multi-process and `SIGKILL` tests of
//!   real segments; a fuzz target over segment images; miri over the heap-backed
//!   region.
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
mod directory;
mod error;
/// Fuzz entry points, shared by `fuzz/` and `tests/fuzz_replay.rs`: only with the
/// `testkit` feature, which is test support outside semver.
#[cfg(feature = "testkit")]
#[doc(hidden)]
pub mod fuzzing;
mod layout;
// The one door for atomics, UnsafeCell and futexes; public only to loom models.
#[cfg(loom)]
#[doc(hidden)]
pub mod loom;
#[cfg(not(loom))]
mod loom;
mod object;
mod ptr;
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

/// The lock-free state machines under the segment, exposed (under `cfg(loom)` only)
/// for the loom models in
/// `tests/loom_*.rs`. Not a stable API.
#[cfg(loom)]
#[doc(hidden)]
pub mod model {
    /// The directory's create-race decision.
    pub use crate::directory::protocol::{Found, Mode, Step, step};
    pub use crate::segment::init;
    pub use crate::segment::locks::{LockTable, MemHandle, MemLocks};
    pub use crate::segment::registry::{Identity, Slot, claim, reclaim, release};
}

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
