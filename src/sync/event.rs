//! `Event`: wake a sleeping consumer, auto-reset or manual-reset.
//!
//! # State word (`state`, the futex word)
//!
//! | bits  | meaning                                    |
//! |-------|--------------------------------------------|
//! | 0     | `SET`                                      |
//! | 1     | reserved                                   |
//! | 2..32 | number of sleepers (a hint for `set`)      |
//!
//! `set` is one `fetch_or`, plus a wake syscall only if the sleeper count is
//! non-zero. A waiter counts itself in before sleeping and out after. A process
//! dying while counted in leaves the count too high, which only costs later `set`s
//! a wake syscall each; it never makes anyone miss an event: every sleep re-checks
//! `SET` and is bounded by its deadline.

use std::time::Instant;

use crate::layout::{ShmSafe, ShmShared};
use crate::loom::{AtomicU32, Ordering};
use crate::sync::futex;

const SET: u32 = 1;
const SLEEPER: u32 = 4;
/// Longest single futex sleep (waits re-check between slices).
const SLICE: std::time::Duration = std::time::Duration::from_millis(100);

/// How an [`Event`] behaves when set.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// `set` releases one waiter and the event resets itself as that waiter
    /// returns (a wake-up token).
    AutoReset,
    /// `set` releases every waiter and stays set until `reset`.
    ManualReset,
}

/// A wake-up for sleeping consumers in any process, on a shared futex.
///
/// # Examples
///
/// ```
/// use shmkit::sync::{Event, EventKind};
/// let e = Event::new(EventKind::AutoReset);
/// e.set();
/// assert!(e.wait_for(std::time::Duration::ZERO)); // consumes the set
/// assert!(!e.wait_for(std::time::Duration::from_millis(1)));
/// ```
#[repr(C)]
#[derive(Debug)]
pub struct Event {
    state: AtomicU32,
    manual: AtomicU32,
}

#[allow(unsafe_code)] // marker impl only
// SAFETY: repr(C), two atomics, every bit pattern is a state the code handles.
unsafe impl ShmSafe for Event {}
#[allow(unsafe_code)] // marker impl only
// SAFETY: atomics only.
unsafe impl ShmShared for Event {}

impl Event {
    /// A new, unset event.
    pub fn new(kind: EventKind) -> Self {
        Self {
            state: AtomicU32::new(0),
            manual: AtomicU32::new(u32::from(kind == EventKind::ManualReset)),
        }
    }

    /// Its kind.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmkit::sync::{Event, EventKind};
    /// assert_eq!(Event::new(EventKind::ManualReset).kind(), EventKind::ManualReset);
    /// ```
    pub fn kind(&self) -> EventKind {
        if self.manual.load(Ordering::Relaxed) != 0 {
            EventKind::ManualReset
        } else {
            EventKind::AutoReset
        }
    }

    /// Sets the event: wakes one waiter (auto-reset) or all (manual-reset).
    ///
    /// # Examples
    ///
    /// See [`Event`].
    #[inline]
    pub fn set(&self) {
        // SYNC: Release publishes what the setter wrote before setting; pairs with
        // the Acquire loads/CAS in `try_take`.
        let prev = self.state.fetch_or(SET, Ordering::Release);
        if prev >= SLEEPER {
            self.wake();
        }
    }

    #[cold]
    fn wake(&self) {
        match self.kind() {
            EventKind::AutoReset => futex::wake_one(&self.state),
            EventKind::ManualReset => futex::wake_all(&self.state),
        }
    }

    /// Clears a manual-reset event (a no-op on an unset one).
    ///
    /// # Examples
    ///
    /// ```
    /// use shmkit::sync::{Event, EventKind};
    /// let e = Event::new(EventKind::ManualReset);
    /// e.set();
    /// assert!(e.is_set());
    /// e.reset();
    /// assert!(!e.is_set());
    /// ```
    pub fn reset(&self) {
        self.state.fetch_and(!SET, Ordering::Relaxed);
    }

    /// Whether it is set (a snapshot).
    pub fn is_set(&self) -> bool {
        self.state.load(Ordering::Acquire) & SET != 0
    }

    /// Waits until set (consuming it, for auto-reset).
    ///
    /// # Examples
    ///
    /// See [`Event`].
    pub fn wait(&self) {
        while !self.wait_deadline(None) {}
    }

    /// Waits at most `timeout`; returns whether the event was set.
    ///
    /// # Examples
    ///
    /// See [`Event`].
    pub fn wait_for(&self, timeout: std::time::Duration) -> bool {
        self.wait_deadline(Instant::now().checked_add(timeout))
    }

    /// Waits until `deadline` at the latest; returns whether the event was set.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmkit::sync::{Event, EventKind};
    /// let e = Event::new(EventKind::ManualReset);
    /// assert!(!e.wait_until(std::time::Instant::now()));
    /// ```
    pub fn wait_until(&self, deadline: Instant) -> bool {
        self.wait_deadline(Some(deadline))
    }

    /// Takes the event if set: true if it was (auto-reset clears it).
    #[inline]
    fn try_take(&self) -> bool {
        let manual = self.manual.load(Ordering::Relaxed) != 0;
        let mut s = self.state.load(Ordering::Acquire);
        loop {
            if s & SET == 0 {
                return false;
            }
            if manual {
                return true;
            }
            // SYNC: Acquire pairs with the Release fetch_or in `set`. Failure: the
            // new value is re-examined, Acquire for the same reason.
            match self.state.compare_exchange_weak(
                s,
                s & !SET,
                Ordering::Acquire,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(now) => s = now,
            }
        }
    }

    fn wait_deadline(&self, deadline: Option<Instant>) -> bool {
        if self.try_take() {
            return true;
        }
        loop {
            self.state.fetch_add(SLEEPER, Ordering::Relaxed);
            let s = self.state.load(Ordering::Acquire);
            let more = s & SET == 0 && futex::wait(&self.state, s, deadline, SLICE);
            self.state.fetch_sub(SLEEPER, Ordering::Relaxed);
            if self.try_take() {
                return true;
            }
            if !more && deadline.is_some_and(|d| Instant::now() >= d) {
                return false;
            }
        }
    }
}
