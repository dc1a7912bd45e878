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

#[cfg(all(test, not(shmkit_loom), not(miri)))]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use crate::loom::{AtomicU32, Ordering, futex_wait, futex_wake};

    /// Regression: `u32::MAX` as FUTEX_WAKE's count is -1 to the kernel, which
    /// woke exactly one sleeper; "wake all" must wake them all.
    #[test]
    #[allow(clippy::disallowed_types)]
    fn a_wake_of_all_wakes_every_sleeper() {
        let word = Arc::new(AtomicU32::new(0));
        let waiting = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let sleepers: Vec<_> = (0..3)
            .map(|_| {
                let (word, waiting) = (word.clone(), waiting.clone());
                std::thread::spawn(move || {
                    waiting.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    while word.load(Ordering::SeqCst) == 0 {
                        futex_wait(&word, 0, Some(Duration::from_secs(20)));
                    }
                })
            })
            .collect();
        while waiting.load(std::sync::atomic::Ordering::SeqCst) < 3 {
            std::thread::yield_now();
        }
        std::thread::sleep(Duration::from_millis(200)); // all three in the kernel
        word.store(1, Ordering::SeqCst);
        let woken = futex_wake(&word, u32::MAX);
        // One straggler not yet asleep would see the new value and not sleep;
        // the bug woke exactly one.
        assert!(woken >= 2, "a wake of all woke {woken} of 3 sleepers");
        for s in sleepers {
            s.join().unwrap();
        }
    }
}
