//! Who is locking, and how to tell whether a holder is alive.

use crate::segment::{OwnerTag, Segment};
use crate::sync::HeldLocks;

/// The caller's identity and a liveness oracle, as the locks need them.
///
/// A [`Segment`] is the context in real use: its registry slot is the caller's
/// identity and its registry answers liveness. Loom models implement it with
/// threads that "die".
///
/// # Safety
///
/// The locks' mutual exclusion rests on the answers, so an implementation must
/// guarantee:
/// 1. `me()` is unique among live contexts (or names nobody, which the locks
///    refuse), and stable for the context's life;
/// 2. `is_alive_owner(t)` returns false only for an owner that can never act
///    again (dead, or detached for good);
/// 3. a false verdict happens-after every write that owner made (the registry's
///    liveness lock, released by the kernel at exit and probed by us, gives this;
///    a model must give it with Release/Acquire).
///
/// # Examples
///
/// ```
/// use shmkit::sync::Context;
/// let seg = shmkit::SegmentOptions::heap().create()?;
/// assert!(seg.is_alive_owner(seg.me()));
/// # Ok::<(), shmkit::Error>(())
/// ```
#[allow(unsafe_code)] // declaring the contract
pub unsafe trait Context {
    /// The caller's owner tag.
    fn me(&self) -> OwnerTag;
    /// Whether the holder `tag` names is alive (false for a tag naming nobody).
    fn is_alive_owner(&self, tag: OwnerTag) -> bool;

    /// The record of the locks this context's attachment is taking or holding,
    /// if it keeps one. With it, a lock word that names [`me`](Self::me) while no
    /// thread of the attachment holds or is taking that lock (a forged or stray
    /// write) fails at once with [`LockError::Corrupt`](crate::sync::LockError);
    /// without it (`None`, the default) such a word is waited on like any live
    /// holder, until the call's deadline.
    ///
    /// Every context with the same `me()` must return the same record (clones of
    /// one attachment share it), and contexts with other tags other records: a
    /// record shared with another tag, or a tag spread over several records, can
    /// make a legitimate hold look forged (an error, never unsoundness).
    fn held_locks(&self) -> Option<&HeldLocks> {
        None
    }
}

#[allow(unsafe_code)] // the registry keeps the contract
// SAFETY: (1) the owner tag is (registry slot, incarnation), unique while attached;
// (2) `is_owner_alive` says dead only when the kernel released the tag's witness
// lock (the owner detached for good or its process exited; no segment word is
// consulted), or /proc proves gone a pid the identity witness vouches for; (3) the
// kernel releases the locks after the process's last write, and our probe (a
// syscall) observes that release.
unsafe impl Context for Segment {
    #[inline]
    fn me(&self) -> OwnerTag {
        self.owner_tag()
    }

    fn is_alive_owner(&self, tag: OwnerTag) -> bool {
        self.is_owner_alive(tag)
    }

    #[inline]
    fn held_locks(&self) -> Option<&HeldLocks> {
        Some(self.held_locks_record())
    }
}
