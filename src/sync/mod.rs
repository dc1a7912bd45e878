//! Robust process-shared synchronisation: locks that no dying process can
//! deadlock.
//!
//! Every type here lives in a segment, holds no process-local state, and names its
//! holder with an [`OwnerTag`](crate::OwnerTag) (registry slot + incarnation), so a
//! waiter can ask the registry whether the holder is still alive. Waiting is a
//! shared futex (see [`futex`]) with a bounded sleep slice: a dead holder is
//! noticed within a few milliseconds even if nobody wakes the waiter.

mod condvar;
mod context;
mod event;
pub mod futex;
mod held;
mod lock_error;
mod mutex;
pub(crate) mod raw;
mod rwlock;
mod semaphore;

pub use condvar::{Condvar, WaitTimeoutResult};
pub use context::Context;
pub use event::{Event, EventKind};
pub(crate) use held::Held;
pub use held::HeldLocks;
pub use lock_error::{Abandon, LockError, LockResult};
pub use mutex::{Mutex, MutexGuard};
pub use rwlock::{RwLock, RwLockReadGuard, RwLockWriteGuard};
pub use semaphore::{Semaphore, SemaphoreError};
