//! The registry as loom models see it: a table of "alive" flags, one per process
//! (slot). A death clears the flag, as the kernel releases a dead process's
//! liveness lock; a `Proc` is one process's `Context`.
#![allow(dead_code)] // each loom test binary uses a subset

use loom::sync::Arc;
use shmkit::OwnerTag;
use shmkit::loom::{AtomicU32, Ordering};
use shmkit::sync::{Context, HeldLocks};

/// Liveness of up to four "processes".
pub struct Registry {
    alive: [AtomicU32; 4],
}

impl Registry {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            alive: [
                AtomicU32::new(1),
                AtomicU32::new(1),
                AtomicU32::new(1),
                AtomicU32::new(1),
            ],
        })
    }

    /// The kernel's part of SIGKILL: the process's liveness lock is released.
    pub fn die(&self, slot: u32) {
        self.alive[slot as usize].store(0, Ordering::Release);
    }
}

/// One process (or one thread of it): a slot in the registry, and optionally the
/// process's lock record, shared by its threads (as a `Segment`'s clones share
/// their attachment's).
pub struct Proc {
    pub reg: Arc<Registry>,
    pub slot: u32,
    pub held: Option<Arc<HeldLocks>>,
}

fn tag(slot: u32) -> OwnerTag {
    OwnerTag::new(slot, 0x1000 * (u64::from(slot) + 1)).unwrap()
}

// SAFETY: tags are unique per slot; `die` is a Release store that the Acquire load
// in `is_alive_owner` observes, after every write of the dying thread.
unsafe impl Context for Proc {
    fn me(&self) -> OwnerTag {
        tag(self.slot)
    }

    fn is_alive_owner(&self, t: OwnerTag) -> bool {
        !t.is_nobody()
            && t.slot() < 4
            && t == tag(t.slot())
            && self.reg.alive[t.slot() as usize].load(Ordering::Acquire) == 1
    }

    fn held_locks(&self) -> Option<&HeldLocks> {
        self.held.as_deref()
    }
}

/// Process `slot` of `reg` (keeping no lock record).
pub fn proc(reg: &Arc<Registry>, slot: u32) -> Proc {
    Proc {
        reg: reg.clone(),
        slot,
        held: None,
    }
}

/// Process `slot` of `reg`, keeping a lock record (every address counts as
/// inside its "mapping": locks are told apart by address).
pub fn proc_with_record(reg: &Arc<Registry>, slot: u32) -> Proc {
    Proc {
        reg: reg.clone(),
        slot,
        held: Some(Arc::new(HeldLocks::new(0..usize::MAX))),
    }
}

/// Another thread of the process `p` (the same tag and lock record).
pub fn thread_of(p: &Proc) -> Proc {
    Proc {
        reg: p.reg.clone(),
        slot: p.slot,
        held: p.held.clone(),
    }
}
