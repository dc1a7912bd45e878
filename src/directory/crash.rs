//! Simulated deaths inside directory changes (test support, `testkit` only).
//!
//! A test arms this thread to "die" at the `n`-th crash point the directory
//! passes: that call then returns at once with [`Error::SimulatedCrash`], and from
//! then on the directory's destructors on this thread do what a killed process's
//! do, nothing: the directory lock stays held, a half-built entry stays, holds are
//! not released. The test then marks the attachment dead
//! (`Segment::simulate_crash_now`) and checks what a survivor makes of it. Every
//! step between two crash points is one store or one heap call, so a model run
//! over every `n` kills the caller at every step of the journal protocol.
//!
//! Without the `testkit` feature, [`point`] is a compiler fence and `Ok(())`.

use crate::Result;

#[cfg(feature = "testkit")]
mod armed {
    use std::cell::Cell;

    thread_local! {
        /// Crash points left before this thread dies (0: not armed).
        pub static LEFT: Cell<u64> = const { Cell::new(0) };
        /// This thread has died (its destructors must do nothing).
        pub static DEAD: Cell<bool> = const { Cell::new(false) };
    }
}

/// A place where the caller may die (see the module docs).
///
/// # Errors
///
/// [`Error::SimulatedCrash`](crate::Error) when the armed count runs out.
#[inline]
pub(crate) fn point() -> Result<()> {
    // Also in shipped builds: the steps on either side stay in program order, so
    // a process killed between them leaves what the journal expects.
    std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
    #[cfg(feature = "testkit")]
    {
        if armed::DEAD.with(|d| d.get()) {
            // Dead already (a destructor swallowed the first error): stay dead.
            return Err(crate::Error::SimulatedCrash);
        }
        let left = armed::LEFT.with(|l| l.get());
        if left != 0 {
            armed::LEFT.with(|l| l.set(left - 1));
            if left == 1 {
                armed::DEAD.with(|d| d.set(true));
                return Err(crate::Error::SimulatedCrash);
            }
        }
    }
    Ok(())
}

/// Whether this thread has "died" (destructors skip their work).
#[inline]
pub(crate) fn dead() -> bool {
    #[cfg(feature = "testkit")]
    {
        armed::DEAD.with(|d| d.get())
    }
    #[cfg(not(feature = "testkit"))]
    {
        false
    }
}

/// Arms this thread to die at its `n`-th crash point from now (1 = the next);
/// 0 disarms. Clears an earlier death.
#[cfg(feature = "testkit")]
pub fn arm(n: u64) {
    armed::LEFT.with(|l| l.set(n));
    armed::DEAD.with(|d| d.set(false));
}

/// Whether this thread died at an armed crash point (and is still "dead").
#[cfg(feature = "testkit")]
pub fn died() -> bool {
    dead()
}

/// Disarms and revives this thread.
#[cfg(feature = "testkit")]
pub fn disarm() {
    arm(0);
}
