//! `Condvar`: a condition variable for [`Mutex`], on a sequence-counter futex.
//!
//! The whole state is one 32-bit counter, bumped by every notify. A waiter reads it,
//! unlocks the mutex, and sleeps while it is unchanged; a notify between the read
//! and the sleep makes the sleep return at once. There is no waiter list and no
//! waiter count: a process that dies while waiting leaves nothing behind, so it
//! cannot hang or confuse anyone.
//!
//! `notify_one` may wake more than one waiter (spurious wake-ups are allowed, as
//! with every condition variable): use [`Condvar::wait_while`], or re-check the
//! condition in a loop.

use std::time::{Duration, Instant};

use crate::layout::{ShmSafe, ShmShared};
use crate::loom::{AtomicU32, Ordering};
use crate::sync::futex;
use crate::sync::{Context, LockError, LockResult, Mutex, MutexGuard};

/// Longest single sleep (a wait re-checks between slices).
const SLICE: Duration = Duration::from_millis(100);

/// A condition variable working with [`Mutex`] across processes.
///
/// # Examples
///
/// ```
/// use shmkit::{SegmentOptions, sync::{Condvar, Mutex}};
/// let seg = SegmentOptions::heap().committed(64 << 10).create()?;
/// let (hm, hc) = (seg.find_or_create::<Mutex<u8>>("m", ())?, seg.find_or_create::<Condvar>("cv", ())?);
/// let (m, cv) = (hm.raw(), hc.raw()); // the low-level calls, which take the context
/// let peer = seg.try_clone()?;
/// std::thread::scope(|s| {
///     s.spawn(|| {
///         *m.lock(&peer).unwrap() = 1;
///         cv.notify_all();
///     });
///     let g = cv.wait_while(m.lock(&seg).unwrap(), &seg, |ready| *ready == 0).unwrap();
///     assert_eq!(*g, 1);
/// });
/// # Ok::<(), shmkit::Error>(())
/// ```
#[repr(C)]
#[derive(Debug)]
pub struct Condvar {
    seq: AtomicU32,
}

#[allow(unsafe_code)] // marker impl only
// SAFETY: repr(C), one atomic; every value is a valid counter.
unsafe impl ShmSafe for Condvar {}
#[allow(unsafe_code)] // marker impl only
// SAFETY: atomics only.
unsafe impl ShmShared for Condvar {}

/// Whether a timed wait returned because its deadline passed.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct WaitTimeoutResult(bool);

impl WaitTimeoutResult {
    /// True if the wait timed out.
    pub fn timed_out(self) -> bool {
        self.0
    }
}

impl Default for Condvar {
    fn default() -> Self {
        Self::new()
    }
}

impl Condvar {
    /// A new condition variable.
    pub fn new() -> Self {
        Self {
            seq: AtomicU32::new(0),
        }
    }

    /// Wakes one waiter (possibly more).
    ///
    /// # Examples
    ///
    /// See [`Condvar`].
    #[inline]
    pub fn notify_one(&self) {
        // SYNC: Release pairs with the Acquire load in `wait_deadline`; the
        // notifier's writes (under the mutex) are published by the mutex anyway.
        self.seq.fetch_add(1, Ordering::Release);
        futex::wake_one(&self.seq);
    }

    /// Wakes every waiter.
    ///
    /// # Examples
    ///
    /// See [`Condvar`].
    #[inline]
    pub fn notify_all(&self) {
        // SYNC: as in notify_one.
        self.seq.fetch_add(1, Ordering::Release);
        futex::wake_all(&self.seq);
    }

    /// Unlocks `guard`'s mutex, sleeps until notified (or spuriously), and locks it
    /// again.
    ///
    /// Call [`MutexGuard::make_consistent`] before waiting on a guard that came
    /// with `OwnerDied`: waiting releases the lock, and releasing an inconsistent
    /// lock makes it not recoverable.
    ///
    /// # Errors
    ///
    /// As [`Mutex::lock`] when relocking (e.g. `OwnerDied` if another holder died
    /// meanwhile).
    ///
    /// # Examples
    ///
    /// See [`Condvar`].
    pub fn wait<'a, T>(
        &self,
        guard: MutexGuard<'a, T>,
        cx: &'a impl Context,
    ) -> LockResult<MutexGuard<'a, T>> {
        self.wait_deadline(guard, cx, None)
            .map(|(g, _)| g)
            .map_err(strip)
    }

    /// Waits while `condition` holds, re-checking after every wake-up.
    ///
    /// # Errors
    ///
    /// As [`wait`](Self::wait).
    ///
    /// # Examples
    ///
    /// See [`Condvar`].
    pub fn wait_while<'a, T>(
        &self,
        mut guard: MutexGuard<'a, T>,
        cx: &'a impl Context,
        mut condition: impl FnMut(&mut T) -> bool,
    ) -> LockResult<MutexGuard<'a, T>> {
        while condition(&mut guard) {
            guard = self.wait(guard, cx)?;
        }
        Ok(guard)
    }

    /// As [`wait`](Self::wait), for at most `timeout`.
    ///
    /// # Errors
    ///
    /// As [`wait`](Self::wait).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use shmkit::{SegmentOptions, sync::{Condvar, Mutex}};
    /// let seg = SegmentOptions::heap().committed(64 << 10).create()?;
    /// let (hm, hc) = (seg.find_or_create::<Mutex<u8>>("m", ())?, seg.find_or_create::<Condvar>("cv", ())?);
    /// let (m, cv) = (hm.raw(), hc.raw()); // the low-level calls, which take the context
    /// let (_g, r) = cv.wait_for(m.lock(&seg).unwrap(), &seg, Duration::from_millis(5)).unwrap();
    /// assert!(r.timed_out());
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn wait_for<'a, T>(
        &self,
        guard: MutexGuard<'a, T>,
        cx: &'a impl Context,
        timeout: Duration,
    ) -> LockResult<(MutexGuard<'a, T>, WaitTimeoutResult)> {
        self.wait_deadline(guard, cx, Instant::now().checked_add(timeout))
    }

    /// As [`wait`](Self::wait), until `deadline` at the latest.
    ///
    /// # Errors
    ///
    /// As [`wait`](Self::wait).
    ///
    /// # Examples
    ///
    /// See [`wait_for`](Self::wait_for).
    pub fn wait_until<'a, T>(
        &self,
        guard: MutexGuard<'a, T>,
        cx: &'a impl Context,
        deadline: Instant,
    ) -> LockResult<(MutexGuard<'a, T>, WaitTimeoutResult)> {
        self.wait_deadline(guard, cx, Some(deadline))
    }

    fn wait_deadline<'a, T>(
        &self,
        guard: MutexGuard<'a, T>,
        cx: &'a impl Context,
        deadline: Option<Instant>,
    ) -> LockResult<(MutexGuard<'a, T>, WaitTimeoutResult)> {
        let mutex: &'a Mutex<T> = guard.mutex();
        // SYNC: Acquire pairs with the Release bump in notify_*; read before
        // unlocking, so a notify after our unlock changes the value we sleep on.
        let s = self.seq.load(Ordering::Acquire);
        drop(guard);
        // Sleep in slices until notified (the counter moved) or the deadline.
        let mut timed_out = false;
        while self.seq.load(Ordering::Acquire) == s {
            if !futex::wait(&self.seq, s, deadline, SLICE) {
                timed_out = true;
                break;
            }
        }
        // A timed wait relocks within its deadline too (behind a live holder it
        // returns TimedOut without the guard rather than overrun).
        let relocked = match deadline {
            Some(d) => mutex.lock_until(cx, d),
            None => mutex.lock(cx),
        };
        let flag = WaitTimeoutResult(timed_out);
        relocked
            .map(|g| (g, flag))
            .map_err(|e| e.map(|g| (g, flag)))
    }
}

/// Drops the timeout flag from an error's guard.
fn strip<G>(e: LockError<(G, WaitTimeoutResult)>) -> LockError<G> {
    e.map(|(g, _)| g)
}
