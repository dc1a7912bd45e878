//! Why a lock was not simply acquired.

use std::fmt;

/// The result of acquiring a robust lock.
pub type LockResult<G> = Result<G, LockError<G>>;

/// Why a robust lock call did not simply return a guard.
///
/// `OwnerDied` still carries the guard: the lock *is* held, but the previous holder
/// died (or panicked) while holding it, so the protected data may be half-updated.
/// Repair it, then call `make_consistent` on the guard; dropping the guard without
/// doing so makes the lock [`NotRecoverable`](LockError::NotRecoverable) for
/// everyone (POSIX robust-mutex semantics).
#[non_exhaustive]
pub enum LockError<G> {
    /// Acquired, but the previous holder died holding it: repair, then
    /// `make_consistent`.
    OwnerDied(G),
    /// A holder gave up on repairing the data: the lock can never be acquired again.
    NotRecoverable,
    /// `try_lock`: held by a live process.
    WouldBlock,
    /// A timed call reached its deadline.
    TimedOut,
}

impl<G> LockError<G> {
    /// The guard of an `OwnerDied` error, if that is what this is.
    pub fn into_owner_died(self) -> Option<G> {
        match self {
            LockError::OwnerDied(g) => Some(g),
            _ => None,
        }
    }
}

impl<G> fmt::Debug for LockError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LockError::OwnerDied(_) => "OwnerDied(..)",
            LockError::NotRecoverable => "NotRecoverable",
            LockError::WouldBlock => "WouldBlock",
            LockError::TimedOut => "TimedOut",
        })
    }
}

impl<G> fmt::Display for LockError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LockError::OwnerDied(_) => {
                "the previous holder died holding the lock: repair the data, then make_consistent"
            }
            LockError::NotRecoverable => "the lock is not recoverable: a holder gave up on repair",
            LockError::WouldBlock => "the lock is held by a live process",
            LockError::TimedOut => "timed out waiting for the lock",
        })
    }
}

impl<G> std::error::Error for LockError<G> {}
