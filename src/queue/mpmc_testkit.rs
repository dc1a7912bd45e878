//! Test stops inside MPMC operations (`testkit` only): a thread armed for a
//! [`Point`] returns from its next operation that reaches it with
//! `Error::SimulatedCrash`, leaving the slot claimed exactly as a process killed
//! there would (a test then marks the attachment dead, or a child process waits
//! to be SIGKILLed). Without the feature, [`hit`] is always false.

use super::mpmc_ring::Point;

#[cfg(feature = "testkit")]
mod armed {
    use std::cell::Cell;

    use super::Point;

    thread_local! {
        /// The point this thread stops at (once), if armed.
        pub static AT: Cell<Option<Point>> = const { Cell::new(None) };
    }
}

/// Whether the calling thread is armed for `point` (disarming it).
#[inline]
pub(crate) fn hit(point: Point) -> bool {
    #[cfg(feature = "testkit")]
    {
        armed::AT.with(|a| {
            if a.get() == Some(point) {
                a.set(None);
                return true;
            }
            false
        })
    }
    #[cfg(not(feature = "testkit"))]
    {
        let _ = point;
        false
    }
}

/// Where an armed producer or consumer stops.
#[cfg(feature = "testkit")]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Stop {
    /// A producer, after moving the tail past its slot, before writing.
    ProducerClaimed,
    /// A consumer, after moving the head past its slot, before releasing it.
    ConsumerClaimed,
}

/// Arms this thread to stop at `stop` in its next MPMC operation that reaches it.
#[cfg(feature = "testkit")]
pub fn arm_stop(stop: Stop) {
    let p = match stop {
        Stop::ProducerClaimed => Point::ProducerClaimed,
        Stop::ConsumerClaimed => Point::ConsumerClaimed,
    };
    armed::AT.with(|a| a.set(Some(p)));
}

/// Disarms this thread's stop, if it was not reached.
#[cfg(feature = "testkit")]
pub fn disarm_stop() {
    armed::AT.with(|a| a.set(None));
}
