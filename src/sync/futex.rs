//! Waiting on and waking a shared futex word, with deadlines.
//!
//! The syscalls themselves are made by `crate::loom` (the one door, with loom
//! stand-ins); this module gives them the shapes the locks need. The futex is
//! always the *shared* kind (no `FUTEX_PRIVATE_FLAG`): a wake from another process
//! reaches us.

use std::time::{Duration, Instant};

use crate::loom::{AtomicU32, futex_wait, futex_wake};

/// Sleeps while `word == expected`, until woken, until `deadline`, or for at most
/// `slice` (whichever comes first). Returns false if the deadline has passed.
/// Spurious returns happen; callers re-check their condition.
#[inline]
pub fn wait(word: &AtomicU32, expected: u32, deadline: Option<Instant>, slice: Duration) -> bool {
    let timeout = match deadline {
        None => slice,
        Some(d) => match d.checked_duration_since(Instant::now()) {
            None => return false,
            Some(left) if left.is_zero() => return false,
            Some(left) => left.min(slice),
        },
    };
    futex_wait(word, expected, Some(timeout));
    true
}

/// Wakes one sleeper on `word`, in any process.
#[inline]
pub fn wake_one(word: &AtomicU32) {
    futex_wake(word, 1);
}

/// Wakes every sleeper on `word`, in any process.
#[inline]
pub fn wake_all(word: &AtomicU32) {
    futex_wake(word, u32::MAX);
}
