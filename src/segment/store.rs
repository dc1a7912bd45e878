//! What backs a segment handle: a descriptor, a System V id, or process memory;
//! and the liveness locks each offers.

use std::os::fd::{AsFd, OwnedFd};

use crate::error::Result;
use crate::loom::Arc;
use crate::segment::locks::{LockTable, MemHandle, MemLocks, OfdLocks, Witness};
use crate::segment::mapping::Mapping;
use crate::segment::os::{fd, sysv};

/// The backing of one handle.
pub(crate) enum Store {
    /// posix, file, memfd, anonymous: the object's descriptor (its own open file
    /// description, which carries this handle's OFD locks).
    Fd(OwnedFd),
    /// System V: the id and the companion lock file.
    SysV { id: i32, lock: OwnedFd },
    /// Heap-backed: the shared in-process lock table and this handle's token.
    Heap { locks: Arc<MemLocks>, token: u64 },
}

/// The lock table a store offers.
pub(crate) enum Locks<'a> {
    Ofd(OfdLocks<'a>),
    Mem(MemHandle<'a>),
}

impl LockTable for Locks<'_> {
    fn try_lock(&self, i: u32) -> Result<bool> {
        match self {
            Locks::Ofd(l) => l.try_lock(i),
            Locks::Mem(l) => l.try_lock(i),
        }
    }
    fn unlock(&self, i: u32) {
        match self {
            Locks::Ofd(l) => l.unlock(i),
            Locks::Mem(l) => l.unlock(i),
        }
    }
    fn held_elsewhere(&self, i: u32) -> Result<bool> {
        match self {
            Locks::Ofd(l) => l.held_elsewhere(i),
            Locks::Mem(l) => l.held_elsewhere(i),
        }
    }
    fn any_held_elsewhere(&self, i: u32, n: u32) -> Result<bool> {
        match self {
            Locks::Ofd(l) => l.any_held_elsewhere(i, n),
            Locks::Mem(l) => l.any_held_elsewhere(i, n),
        }
    }
    fn try_lock_witness(&self, w: Witness) -> Result<bool> {
        match self {
            Locks::Ofd(l) => l.try_lock_witness(w),
            Locks::Mem(l) => l.try_lock_witness(w),
        }
    }
    fn unlock_witness(&self, w: Witness) {
        match self {
            Locks::Ofd(l) => l.unlock_witness(w),
            Locks::Mem(l) => l.unlock_witness(w),
        }
    }
    fn unlock_identity_witnesses(&self, slot: u32) {
        match self {
            Locks::Ofd(l) => l.unlock_identity_witnesses(slot),
            Locks::Mem(l) => l.unlock_identity_witnesses(slot),
        }
    }
    fn witness_held_elsewhere(&self, w: Witness) -> Result<bool> {
        match self {
            Locks::Ofd(l) => l.witness_held_elsewhere(w),
            Locks::Mem(l) => l.witness_held_elsewhere(w),
        }
    }
}

impl Store {
    /// This handle's liveness locks.
    pub(crate) fn locks(&self) -> Locks<'_> {
        match self {
            Store::Fd(f) => Locks::Ofd(OfdLocks(f.as_fd())),
            Store::SysV { lock, .. } => Locks::Ofd(OfdLocks(lock.as_fd())),
            Store::Heap { locks, token } => Locks::Mem(MemHandle {
                table: locks,
                token: *token,
            }),
        }
    }

    /// Backs `[from, to)` so that touching it cannot fault.
    pub(crate) fn commit(&self, map: &Mapping, from: u64, to: u64) -> Result<()> {
        match self {
            Store::Fd(f) => fd::commit(f.as_fd(), from, to),
            Store::SysV { .. } => sysv::populate(map, from, to),
            Store::Heap { .. } => Ok(()),
        }
    }

    /// A store for a second handle in this process: a new open file description
    /// (so the two handles' locks are distinct), or a new lock token.
    pub(crate) fn duplicate(&self) -> Result<Store> {
        Ok(match self {
            Store::Fd(f) => Store::Fd(fd::reopen(f.as_fd())?),
            // The same lock file (by descriptor, not by path: the path may have been
            // removed, and a new file there would split the lock namespace), with
            // its own presence lock.
            Store::SysV { id, lock } => Store::SysV {
                id: *id,
                lock: sysv::reopen_lock_file(lock.as_fd())?,
            },
            Store::Heap { locks, .. } => Store::Heap {
                locks: locks.clone(),
                token: locks.token(),
            },
        })
    }

    /// Lets go of an inherited descriptor that other handles still own (see
    /// [`fd::disown`]).
    pub(crate) fn disown(&self) -> Result<()> {
        match self {
            Store::Fd(f) => fd::disown(f.as_fd()),
            Store::SysV { lock, .. } => fd::disown(lock.as_fd()),
            Store::Heap { .. } => Ok(()),
        }
    }

    /// Releases this handle's locks without detaching anything: what the kernel does
    /// when a process dies (test support for heap-backed segments).
    #[cfg(any(test, feature = "testkit"))]
    pub(crate) fn release_like_exit(&self, slot: u32) {
        match self {
            Store::Heap { locks, token } => locks.release_all(*token),
            Store::Fd(_) | Store::SysV { .. } => {
                if slot != u32::MAX {
                    self.locks()
                        .unlock(crate::segment::registry::lock_index(slot));
                }
                self.locks().unlock(0);
                if let Locks::Ofd(l) = self.locks() {
                    l.unlock_all_witnesses();
                }
            }
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // Descriptors close themselves (releasing their OFD locks); a heap store
        // gives its locks back the same way.
        if let Store::Heap { locks, token } = self {
            locks.release_all(*token);
        }
    }
}
