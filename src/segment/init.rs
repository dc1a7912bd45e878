//! The init-state word: `Uninit → Initializing → Ready` (or `Poisoned`).
//!
//! A creator holds the segment's init lock (a liveness lock, see `locks`) from the
//! moment the object exists until it has published `Ready`. An opener therefore
//! knows, whenever the state is not `Ready`:
//! - init lock held elsewhere → a live creator is at work: wait (bounded);
//! - init lock free → the creator died (or has not yet taken the lock, a window of a
//!   few instructions after `O_EXCL` creation): `open` reports
//!   [`Error::CreatorDied`](crate::Error::CreatorDied) once the state stays unready
//!   with the lock free for a grace period, and `open_or_create` reclaims the object
//!   while holding its init lock (a creator that then takes the lock sees its object
//!   was reclaimed and starts over).

use crate::loom::{AtomicU32, Ordering, futex_wake};

/// Nothing written yet (a fresh zero-filled object).
pub const UNINIT: u32 = 0;
/// The creator is writing the header and registry.
pub const INITIALIZING: u32 = 1;
/// The header is complete and immutable; the segment is usable.
pub const READY: u32 = 2;
/// The creator gave up; nobody may use the segment.
pub const POISONED: u32 = 3;

/// Moves `Uninit → Initializing`. Returns false if the state was anything else
/// (someone else initialised, or is initialising, this object).
#[doc(hidden)]
pub fn begin(state: &AtomicU32) -> bool {
    // SYNC: Acquire pairs with the Release store in `reset` by a reclaimer, so our
    // writes come after everything before the reset. Failure: Relaxed, we give up.
    state
        .compare_exchange(UNINIT, INITIALIZING, Ordering::Acquire, Ordering::Relaxed)
        .is_ok()
}

/// Publishes `Ready` and wakes every waiting opener.
#[doc(hidden)]
pub fn publish(state: &AtomicU32) {
    // SYNC: Release publishes the header and registry writes; pairs with the Acquire
    // load in `observe`.
    state.store(READY, Ordering::Release);
    futex_wake(state, u32::MAX);
}

/// Marks the segment unusable and wakes every waiting opener.
// Only the loom models poison (no production path does yet).
#[cfg_attr(not(shmkit_loom), allow(dead_code))]
pub fn poison(state: &AtomicU32) {
    // SYNC: Release pairs with the Acquire load in `observe` (nothing to publish, but
    // keeps the state a single total order).
    state.store(POISONED, Ordering::Release);
    futex_wake(state, u32::MAX);
}

/// Resets a half-made state to `Uninit` (reclaim in place, under the init lock).
/// Returns false if the state was `Ready` after all.
// Only the loom models reset in place (open.rs reclaims by recreating).
#[cfg_attr(not(shmkit_loom), allow(dead_code))]
pub fn reset(state: &AtomicU32) -> bool {
    let cur = state.load(Ordering::Acquire);
    // SYNC: Release pairs with the Acquire CAS in `begin` of the next creator.
    cur != READY
        && state
            .compare_exchange(cur, UNINIT, Ordering::Release, Ordering::Relaxed)
            .is_ok()
}

/// Reads the state; `READY` observed here makes the creator's writes visible.
#[doc(hidden)]
pub fn observe(state: &AtomicU32) -> u32 {
    // SYNC: Acquire pairs with the Release store in `publish`.
    state.load(Ordering::Acquire)
}
