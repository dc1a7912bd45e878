//! Raw robust lock words: the lock protocols of [`Mutex`](crate::sync::Mutex) and
//! [`RwLock`](crate::sync::RwLock) without the data they protect.
//!
//! The split is lock_api's (Amanieu/parking_lot `lock_api/src/mutex.rs`: a raw
//! lock under a data wrapper), with our own calls, which carry the caller's
//! [`Context`](crate::sync::Context) and tell a dead holder from a live one:
//!
//! - `lock(cx, deadline)` returns [`Acquired`] (the caller now holds the lock;
//!   [`Acquired::inconsistent`] says the previous holder died holding it) or a
//!   [`RawLockError`] (not held);
//! - `unsafe fn unlock(acquired)` releases it; the caller promises the
//!   `Acquired` came from this lock.
//!
//! The data wrappers (`Mutex<T>`, `RwLock<T, R>`) turn an inconsistent
//! acquisition into [`LockError::OwnerDied`]
//! carrying their guard; the crate's internal locks, which protect no data of
//! their own (the heap's page and transfer locks, the semaphore's ledger lock),
//! use the raw words with the small RAII guards [`RawMutexGuard`],
//! [`RawReadGuard`] and [`RawWriteGuard`].

mod mutex;
mod rwlock;

pub use mutex::{RawMutex, RawMutexGuard};
pub use rwlock::{RawReadGuard, RawRwLock, RawWriteGuard, ReadAcquired};

use crate::sync::{Held, LockError, LockResult};

/// A held raw lock: proof of one acquisition, handed back to `unlock`.
///
/// It carries the call's entry in the attachment's lock record (left when the
/// `Acquired` is dropped, after the release), whose owner bit holds the
/// "inconsistent" flag, so that a guard over it stays two words.
#[must_use = "dropping an Acquired without unlocking leaves the lock held"]
#[derive(Default)]
pub struct Acquired<'a> {
    held: Held<'a>,
}

impl<'a> Acquired<'a> {
    /// A new acquisition whose data is (`inconsistent`) or is not marked suspect.
    #[inline]
    fn new(mut held: Held<'a>, inconsistent: bool) -> Self {
        held.set_flag(inconsistent);
        Self { held }
    }

    /// Whether the data is marked inconsistent: the previous holder died (or
    /// panicked) holding the lock, and nobody has declared it repaired yet.
    #[inline]
    pub fn inconsistent(&self) -> bool {
        self.held.flag()
    }

    #[inline]
    fn set_inconsistent(&mut self, on: bool) {
        self.held.set_flag(on);
    }
}

impl std::fmt::Debug for Acquired<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acquired")
            .field("inconsistent", &self.inconsistent())
            .finish()
    }
}

/// Why a raw lock call did not acquire the lock (a dead previous holder is not
/// an error at this level: see [`Acquired::inconsistent`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawLockError {
    /// A holder gave up on repairing the data: the lock can never be acquired again.
    NotRecoverable,
    /// A try call: held by a live process.
    WouldBlock,
    /// A timed call reached its deadline.
    TimedOut,
    /// The caller's context holds no registry slot.
    NotAttached,
    /// An `RwLock` has no reader entry for the caller's registry slot.
    NoReaderEntry {
        /// The caller's slot.
        slot: u32,
        /// Reader entries in the lock.
        entries: usize,
    },
    /// The word names the caller's own attachment, which neither holds nor is
    /// taking the lock.
    Corrupt {
        /// The word seen (a lock word, or an `RwLock`'s reader entry).
        word: u64,
    },
}

impl RawLockError {
    /// The same cause, as the data wrappers report it.
    #[cold]
    pub fn into_lock_error<G>(self) -> LockError<G> {
        match self {
            RawLockError::NotRecoverable => LockError::NotRecoverable,
            RawLockError::WouldBlock => LockError::WouldBlock,
            RawLockError::TimedOut => LockError::TimedOut,
            RawLockError::NotAttached => LockError::NotAttached,
            RawLockError::NoReaderEntry { slot, entries } => {
                LockError::NoReaderEntry { slot, entries }
            }
            RawLockError::Corrupt { word } => LockError::Corrupt { word },
        }
    }
}

/// A raw acquisition as a data wrapper reports it: `Ok(guard)`, or
/// `Err(OwnerDied(guard))` if the data is marked inconsistent, the guard built by
/// `guard` in both cases.
#[inline]
pub(crate) fn to_lock_result<A, G>(
    r: Result<A, RawLockError>,
    inconsistent: impl FnOnce(&A) -> bool,
    guard: impl FnOnce(A) -> G,
) -> LockResult<G> {
    match r {
        Ok(a) if !inconsistent(&a) => Ok(guard(a)),
        Ok(a) => Err(LockError::OwnerDied(guard(a))),
        Err(e) => Err(e.into_lock_error()),
    }
}
