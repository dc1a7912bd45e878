//! The shared heap: a lock-free allocator inside a segment that survives kill -9
//! and gives back what dead processes held.
//!
//! # Design
//!
//! * **Pages** (`pages`): the user region after the heap header and its two page
//!   tables is a run of 4 KiB pages tiled by *runs* (free, span, large). The table
//!   changes only under a robust mutex, in journalled transactions that the next
//!   locker replays if a holder dies.
//! * **Small blocks** (16 B … 32 KiB, 40 classes): carved from spans whose
//!   geometry is a function of the class. Each block has an out-of-line *owner
//!   word* ([`BlockState`]): `Owned(p)`, `Cached(p)`, `Shared` or `Free`.
//! * **Free lists** (`list`): per class, a Treiber stack of batches whose head is
//!   an offset plus a 32-bit ABA tag in one 64-bit word. Processes push and pop
//!   concurrently with a CAS as the only commit point.
//! * **Caches** (`pool`): each [`Heap`] handle keeps free blocks per class in a
//!   process-local cache, tagged `Cached(me)`, moving them to and from the lists a
//!   batch at a time. The common alloc and free are a few loads and stores plus
//!   one CAS (on free), on cache lines no other process touches.
//! * **Large blocks** (> 32 KiB): whole page runs, with an owner word per run.
//!
//! # What a crash leaves
//!
//! The owner word is the truth about a block, and every path orders its writes so
//! that a process killed at any instruction leaves each block it touched either
//! tagged with its (dead) owner tag, or `Free` and on no list. `reclaim_dead` takes
//! the free-list transfer lock in write mode, so the lists are still and no live
//! process is half-way through a transfer, and returns both kinds. Nothing live is
//! ever freed: a block is reclaimed only if its owner is dead, or it is `Free`.
//! A block published (`Shared`) belongs to the structure holding it and is never
//! reclaimed by owner.
//!
//! # Limits
//!
//! * Owner words cost 8 bytes per small block (50 % for 16-byte blocks, 6 % for
//!   128-byte ones); the page tables 16 bytes per page of the segment's maximum,
//!   committed up front.
//! * Spans go back to the page level only through [`Heap::trim`] (run automatically
//!   before an out-of-memory error). Pages are never returned to the OS.
//! * Blocks in a live handle's cache are that process's until it frees them back
//!   (dropping the handle or [`Heap::flush`]); another process cannot use them.
//! * Transfers between caches and the shared lists pause while `reclaim_dead`,
//!   `trim` or `verify` run (they hold the transfer lock in write mode).
//! * Free-list links live in the free blocks themselves and are read with atomic
//!   loads, also while a racing popper may have just handed the block to a user who
//!   writes it plainly: a data race by the letter of Rust's memory model (the value
//!   read is discarded by the failing CAS), harmless on the hardware, as in every
//!   intrusive lock-free free list.

mod class;
mod heap;
mod large_cache;
mod list;
mod mem;
mod owner;
mod pages;
mod pool;
mod seg_mem;
mod stats;
mod verify;

pub use class::{CLASSES, MAX_SMALL, SIZES};
pub use heap::{Heap, MAX_ALLOC};
pub(crate) use mem::Mem;
pub use owner::BlockState;
pub(crate) use owner::{is_stamped, shared_stamped};
pub use pool::Reclaimed;
#[cfg(not(shmkit_loom))]
pub(crate) use seg_mem::ROOT_WORDS;
pub(crate) use seg_mem::{Layout as HeapLayout, build as build_heap};
pub use stats::{ClassStats, OwnerStats, Stats};
pub use verify::{Report, Violation};

/// The lock-free core, for the loom models in `tests/loom_heap.rs`. Not a stable
/// API.
#[cfg(any(shmkit_loom, feature = "testkit"))]
#[doc(hidden)]
pub mod model {
    pub use super::class::{GEOMETRY, SpanGeometry};
    pub use super::list::{link, pop, push, walk};
    pub use super::mem::{Loc, Mem};
    pub use super::owner::BlockState;
    pub use super::owner::FREE_WORD;
    pub use super::pool::{
        Cache, Deadline, LOCK_WAIT, TransferLock, exclusive, free_small, reclaim, transfer_lock,
    };
}
