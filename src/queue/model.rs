//! The MPMC ring over plain memory, for loom models (`cfg(shmkit_loom)` only).

use super::mpmc_ring::{DATA, FREE, PosLine, Ring, Step, stamp};
use crate::Result;
use crate::loom::{AtomicU32, AtomicU64, Ordering};
use crate::sync::Context;

/// A ring of `u64` messages with the queue's algorithm, its words in this
/// process's memory.
pub struct MpmcModel {
    tail: PosLine,
    head: PosLine,
    slots: Vec<AtomicU64>,
    cap: u64,
}

fn line() -> PosLine {
    PosLine {
        pos: AtomicU64::new(0),
        wake: AtomicU32::new(0),
        sleepers: AtomicU32::new(0),
        _pad: std::array::from_fn(|_| AtomicU64::new(0)),
    }
}

impl MpmcModel {
    /// An empty ring of `cap` (a power of two) slots.
    pub fn new(cap: u64) -> Self {
        let stride = DATA + 1;
        let slots = (0..cap as usize * stride)
            .map(|i| {
                let v = if i % stride == 0 {
                    stamp((i / stride) as u64, FREE)
                } else {
                    0
                };
                AtomicU64::new(v)
            })
            .collect();
        Self {
            tail: line(),
            head: line(),
            slots,
            cap,
        }
    }

    fn ring(&self) -> Ring<'_> {
        Ring {
            tail: &self.tail,
            head: &self.head,
            slots: &self.slots,
            stride: DATA + 1,
            cap: self.cap,
        }
    }

    /// Pushes `v` as `cx`: `Ok(Ok(()))` pushed, `Ok(Err(v))` full or busy.
    ///
    /// # Errors
    ///
    /// As the queue's; `SimulatedCrash`-like errors when `cx`'s thread dies at a
    /// crash point.
    pub fn try_push<C: Context>(&self, cx: &C, v: u64) -> Result<std::result::Result<(), u64>> {
        match self.ring().push(cx, |w| w[0].store(v, Ordering::Relaxed))? {
            Step::Done(()) => Ok(Ok(())),
            Step::WouldBlock => Ok(Err(v)),
            Step::Died => Err(super::mpmc_ring::died_error()),
        }
    }

    /// Pops as `cx`: `Ok(None)` empty or busy.
    ///
    /// # Errors
    ///
    /// As [`try_push`](Self::try_push).
    pub fn pop<C: Context>(&self, cx: &C) -> Result<Option<u64>> {
        match self.ring().pop(cx, |w| w[0].load(Ordering::Relaxed))? {
            Step::Done(v) => Ok(Some(v)),
            Step::WouldBlock => Ok(None),
            Step::Died => Err(super::mpmc_ring::died_error()),
        }
    }
}
