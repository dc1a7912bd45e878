//! Why a lock was not simply acquired.

use std::fmt;

/// A guard that can be released *unrepaired but marked*, so that the next locker
/// is told the data may be inconsistent (instead of the lock becoming not
/// recoverable). What converting a [`LockError::OwnerDied`] into
/// [`Error`](crate::Error) does with the guard.
pub trait Abandon {
    /// Releases the lock, leaving it marked inconsistent.
    fn abandon(self);
}

impl<G: Abandon, X> Abandon for (G, X) {
    fn abandon(self) {
        self.0.abandon();
    }
}

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
    /// The caller's handle holds no registry slot (a forked child that has not
    /// called `after_fork`, or whose `after_fork` failed).
    NotAttached,
    /// An `RwLock` has no reader entry for the caller's registry slot (it was
    /// sized for fewer slots than the segment's registry).
    NoReaderEntry {
        /// The caller's slot.
        slot: u32,
        /// Reader entries in the lock.
        entries: usize,
    },
    /// The lock word names the caller's own attachment, yet none of the
    /// attachment's threads holds or is taking the lock: a peer (or a stray write)
    /// put the caller's tag there. Not waited on: the locks are not reentrant, so
    /// no hold of ours can ever release it.
    Corrupt {
        /// The word seen (a lock word, or an `RwLock`'s reader entry).
        word: u64,
    },
}

impl<G> LockError<G> {
    /// The same error, with the guard of `OwnerDied` mapped through `f`.
    pub fn map<H>(self, f: impl FnOnce(G) -> H) -> LockError<H> {
        match self {
            LockError::OwnerDied(g) => LockError::OwnerDied(f(g)),
            LockError::NotRecoverable => LockError::NotRecoverable,
            LockError::WouldBlock => LockError::WouldBlock,
            LockError::TimedOut => LockError::TimedOut,
            LockError::NotAttached => LockError::NotAttached,
            LockError::NoReaderEntry { slot, entries } => {
                LockError::NoReaderEntry { slot, entries }
            }
            LockError::Corrupt { word } => LockError::Corrupt { word },
        }
    }

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
            LockError::NotAttached => "NotAttached",
            LockError::NoReaderEntry { .. } => "NoReaderEntry",
            LockError::Corrupt { word } => return write!(f, "Corrupt {{ word: {word:#018x} }}"),
        })
    }
}

impl<G> fmt::Display for LockError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockError::OwnerDied(_) => f.write_str(
                "the previous holder died holding the lock: repair the data, then make_consistent",
            ),
            LockError::NotRecoverable => {
                f.write_str("the lock is not recoverable: a holder gave up on repair")
            }
            LockError::WouldBlock => f.write_str("the lock is held by a live process"),
            LockError::TimedOut => f.write_str("timed out waiting for the lock"),
            LockError::NotAttached => {
                f.write_str("the handle holds no registry slot (call after_fork in a forked child)")
            }
            LockError::NoReaderEntry { slot, entries } => write!(
                f,
                "the RwLock has {entries} reader entries but the caller holds registry slot {slot}"
            ),
            LockError::Corrupt { word } => write!(
                f,
                "lock word {word:#018x} names the caller's own attachment, which neither holds \
                 nor is taking the lock (a forged or stray write)"
            ),
        }
    }
}

impl<G> std::error::Error for LockError<G> {}
