//! `Semaphore`: a counting semaphore across processes, optionally with a per-owner
//! permit ledger so that a dead process's permits come back.
//!
//! # Plain (`LEDGER = 0`)
//!
//! `count` (the futex word) holds the available permits in its low 31 bits and a
//! `SLEEPERS` flag in bit 31. `acquire` is one CAS `c → c - 1`; `release` one
//! `fetch_add`, plus a wake syscall only if the flag is set. A sleeper sets the
//! flag (only on an empty count, in the same word, so no wake can slip between its
//! check and its sleep); a waker clears it and wakes everyone. A sleeper killed
//! while asleep leaves the flag set, which costs the next release one wake and is
//! then gone. Permits taken by a process that dies are gone: use the ledger if
//! that matters.
//!
//! # With a ledger (`LEDGER = n`)
//!
//! Every acquire and release runs under an internal robust [`RawMutex`] and updates
//! both `count` and the holder's ledger entry (indexed by registry slot: incarnation
//! bits and a count in one word). The invariant `count + Σ ledger = total` holds
//! whenever the mutex is free, so:
//! - a process killed mid-operation leaves the mutex to the next caller with
//!   `OwnerDied`, who rebuilds `count` from the ledger;
//! - permits held by a dead process are returned when someone finds no permit
//!   available (it checks the holders' liveness) or when a new process takes over
//!   the dead one's registry slot.

use std::time::{Duration, Instant};

use crate::layout::{ShmSafe, ShmShared};
use crate::loom::{AtomicU32, AtomicU64, Ordering};
use crate::segment::OwnerTag;
use crate::sync::raw::{RawLockError, RawMutex, RawMutexGuard};
use crate::sync::{Context, futex};

/// Longest single sleep (waits re-check, and reclaim dead holders, between slices).
const SLICE: Duration = Duration::from_millis(2);
/// `count` bit 31: someone may be asleep on the word.
const SLEEPERS: u32 = 1 << 31;
/// `count` bits 0..31: available permits.
const PERMITS: u32 = SLEEPERS - 1;
/// Ledger entry: count in the low bits, incarnation bits above.
const COUNT_BITS: u32 = 18;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

/// Why a semaphore call did not succeed.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SemaphoreError {
    /// `try_acquire`: no permit available.
    #[error("no permit available")]
    WouldBlock,
    /// A timed call reached its deadline.
    #[error("timed out waiting for a permit")]
    TimedOut,
    /// `release` (ledger) by a process that holds no permit.
    #[error("this process holds no permit of this semaphore")]
    NotHeld,
    /// The caller's registry slot has no ledger entry (the ledger is smaller than
    /// the registry).
    #[error("registry slot {slot} has no entry in a ledger of {ledger}")]
    SlotOutsideLedger {
        /// The caller's slot.
        slot: u32,
        /// Ledger entries.
        ledger: usize,
    },
    /// `release` would overflow the permit count.
    #[error("too many permits")]
    Overflow,
    /// The caller's handle holds no registry slot (ledger only; a forked child
    /// that has not called `after_fork`).
    #[error("the handle holds no registry slot (call after_fork in a forked child)")]
    NotAttached,
    /// The ledger lock is not recoverable: a peer corrupted it (shmkit itself always
    /// repairs it).
    #[error("the semaphore's ledger lock was corrupted")]
    Corrupt,
}

/// A counting semaphore in shared memory; `LEDGER > 0` adds a per-owner permit
/// ledger of that many registry slots, so that a dead process's permits come back.
///
/// # Examples
///
/// ```
/// use shmkit::sync::Semaphore;
/// let seg = shmkit::SegmentOptions::heap().create()?;
/// let s = Semaphore::new(1);
/// s.acquire(&seg).unwrap();
/// assert!(s.try_acquire(&seg).is_err());
/// s.release(&seg, 1).unwrap();
/// assert_eq!(s.available(), 1);
/// # Ok::<(), shmkit::Error>(())
/// ```
#[repr(C)]
pub struct Semaphore<const LEDGER: usize = 0> {
    count: AtomicU32,
    _reserved1: AtomicU32,
    total: AtomicU32,
    _reserved: AtomicU32,
    lock: RawMutex,
    ledger: [AtomicU64; LEDGER],
}

#[allow(unsafe_code)] // marker impl only
// SAFETY: repr(C); atomics, a RawMutex (ShmSafe) and an array of atomics; every
// bit pattern is handled (counts are clamped, entries checked against the registry).
unsafe impl<const L: usize> ShmSafe for Semaphore<L> {}
#[allow(unsafe_code)] // marker impl only
// SAFETY: atomics and a RawMutex, itself ShmShared.
unsafe impl<const L: usize> ShmShared for Semaphore<L> {}

impl Semaphore<0> {
    /// A plain semaphore with `permits` available.
    pub fn new(permits: u32) -> Self {
        Self::build(permits)
    }
}

impl<const LEDGER: usize> Semaphore<LEDGER> {
    /// A semaphore with `permits` in circulation and a ledger of `LEDGER` registry
    /// slots (use at least the segment's `registry_slots`).
    ///
    /// # Examples
    ///
    /// ```
    /// use shmkit::sync::Semaphore;
    /// let seg = shmkit::SegmentOptions::heap().registry_slots(8).create()?;
    /// let s = Semaphore::<8>::with_ledger(2);
    /// let peer = seg.try_clone()?;
    /// s.acquire(&peer).unwrap();
    /// s.acquire(&peer).unwrap();
    /// // `peer`'s process is killed here (kill -9), holding both permits
    /// # peer.simulate_crash(); // test support: the same as a SIGKILL
    /// s.acquire(&seg).unwrap(); // they come back
    /// assert_eq!(s.held_by(seg.owner_tag()), 1);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn with_ledger(permits: u32) -> Self {
        Self::build(permits)
    }

    fn build(permits: u32) -> Self {
        Self {
            count: AtomicU32::new(permits.min(PERMITS)),
            _reserved1: AtomicU32::new(0),
            total: AtomicU32::new(permits.min(PERMITS)),
            _reserved: AtomicU32::new(0),
            lock: RawMutex::new(),
            ledger: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Permits available now (a snapshot).
    pub fn available(&self) -> u32 {
        self.count.load(Ordering::Relaxed) & PERMITS
    }

    /// Permits the ledger records for `owner` (0 without a ledger).
    pub fn held_by(&self, owner: OwnerTag) -> u32 {
        self.ledger.get(owner.slot() as usize).map_or(0, |e| {
            let w = e.load(Ordering::Relaxed);
            if w >> COUNT_BITS == entry_inc(owner) {
                (w & COUNT_MASK) as u32
            } else {
                0
            }
        })
    }

    /// Takes a permit, waiting as long as it takes.
    ///
    /// # Errors
    ///
    /// [`SemaphoreError::SlotOutsideLedger`] (ledger only).
    ///
    /// # Examples
    ///
    /// See [`Semaphore`].
    pub fn acquire(&self, cx: &impl Context) -> Result<(), SemaphoreError> {
        self.acquire_deadline(cx, None, false)
    }

    /// Takes a permit if one is available now.
    ///
    /// # Errors
    ///
    /// [`SemaphoreError::WouldBlock`]; as [`acquire`](Self::acquire).
    ///
    /// # Examples
    ///
    /// See [`Semaphore`].
    pub fn try_acquire(&self, cx: &impl Context) -> Result<(), SemaphoreError> {
        self.acquire_deadline(cx, None, true)
    }

    /// Takes a permit, waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`SemaphoreError::TimedOut`]; as [`acquire`](Self::acquire).
    ///
    /// # Examples
    ///
    /// ```
    /// use shmkit::sync::{Semaphore, SemaphoreError};
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let s = Semaphore::new(0);
    /// let r = s.acquire_for(&seg, std::time::Duration::from_millis(5));
    /// assert_eq!(r, Err(SemaphoreError::TimedOut));
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn acquire_for(&self, cx: &impl Context, timeout: Duration) -> Result<(), SemaphoreError> {
        self.acquire_deadline(cx, Instant::now().checked_add(timeout), false)
    }

    /// Takes a permit, waiting until `deadline` at the latest.
    ///
    /// # Errors
    ///
    /// As [`acquire_for`](Self::acquire_for).
    ///
    /// # Examples
    ///
    /// See [`acquire_for`](Self::acquire_for).
    pub fn acquire_until(
        &self,
        cx: &impl Context,
        deadline: Instant,
    ) -> Result<(), SemaphoreError> {
        self.acquire_deadline(cx, Some(deadline), false)
    }

    /// Returns `n` permits (ledger: permits this process holds).
    ///
    /// # Errors
    ///
    /// [`SemaphoreError::NotHeld`] (ledger) if this process holds fewer than `n`;
    /// [`SemaphoreError::Overflow`].
    ///
    /// # Examples
    ///
    /// See [`Semaphore`].
    pub fn release(&self, cx: &impl Context, n: u32) -> Result<(), SemaphoreError> {
        if LEDGER == 0 {
            self.add(n)?;
        } else {
            let me = cx.me();
            let entry = self.entry(me)?;
            let _g = self.locked(cx, None, false)?;
            let held = self.own_held(entry, me);
            if held < u64::from(n) {
                return Err(SemaphoreError::NotHeld);
            }
            self.add(n)?;
            entry.store(
                (entry_inc(me) << COUNT_BITS) | (held - u64::from(n)),
                Ordering::Relaxed,
            );
        }
        self.wake_sleepers();
        Ok(())
    }

    fn add(&self, n: u32) -> Result<(), SemaphoreError> {
        // SYNC: Release publishes the releaser's work to the next acquirer (Acquire
        // CAS in `take`).
        self.count
            .fetch_update(Ordering::Release, Ordering::Relaxed, |c| {
                let p = (c & PERMITS).checked_add(n).filter(|&p| p <= PERMITS)?;
                Some((c & SLEEPERS) | p)
            })
            .map(|_| ())
            .map_err(|_| SemaphoreError::Overflow)
    }

    /// Takes one permit from `count` if there is one.
    #[inline]
    fn take(&self) -> bool {
        let mut c = self.count.load(Ordering::Relaxed);
        while c & PERMITS > 0 {
            // SYNC: Acquire pairs with the Release in `add`.
            match self
                .count
                .compare_exchange_weak(c, c - 1, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(now) => c = now,
            }
        }
        false
    }

    fn entry(&self, me: OwnerTag) -> Result<&AtomicU64, SemaphoreError> {
        if me.is_nobody() {
            return Err(SemaphoreError::NotAttached);
        }
        self.ledger
            .get(me.slot() as usize)
            .ok_or(SemaphoreError::SlotOutsideLedger {
                slot: me.slot(),
                ledger: LEDGER,
            })
    }

    /// One attempt under the ledger lock: returns whether a permit was taken.
    fn take_ledgered(
        &self,
        cx: &impl Context,
        entry: &AtomicU64,
        deadline: Option<Instant>,
        try_only: bool,
    ) -> Result<bool, SemaphoreError> {
        let me = cx.me();
        let g = self.locked(cx, deadline, try_only)?;
        let held = self.own_held(entry, me);
        if held >= COUNT_MASK {
            return Err(SemaphoreError::Overflow); // the entry cannot count one more
        }
        let got = self.take_counted(cx, entry, me, held);
        drop(g);
        // Repairs, reclaims and a dead predecessor's permits may have raised the
        // count: let sleepers see it now rather than after their slice.
        if self.count.load(Ordering::Relaxed) & PERMITS != 0 {
            self.wake_sleepers();
        }
        Ok(got)
    }

    /// Under the ledger lock: takes a permit (reclaiming dead holders' if none is
    /// free) and records it in our entry.
    fn take_counted(&self, cx: &impl Context, entry: &AtomicU64, me: OwnerTag, held: u64) -> bool {
        if !self.take() {
            self.reclaim_dead(cx);
            if !self.take() {
                entry.store((entry_inc(me) << COUNT_BITS) | held, Ordering::Relaxed);
                return false;
            }
        }
        entry.store(
            (entry_inc(me) << COUNT_BITS) | (held + 1),
            Ordering::Relaxed,
        );
        true
    }

    /// Wakes every sleeper if the flag says someone may sleep, clearing it (the
    /// flag and the permits share one word: no store-load race to fence against).
    fn wake_sleepers(&self) {
        if self.count.load(Ordering::Relaxed) & SLEEPERS != 0
            && self.count.fetch_and(!SLEEPERS, Ordering::Relaxed) & SLEEPERS != 0
        {
            futex::wake_all(&self.count);
        }
    }

    /// Loom model support: what a process killed half-way through a ledgered
    /// acquire leaves behind (a permit taken from `count`, the ledger not updated,
    /// the internal lock still held by the dead process).
    #[cfg(shmkit_loom)]
    #[doc(hidden)]
    pub fn die_half_way_through_acquire(&self, cx: &impl Context) {
        if let Ok(g) = self.locked(cx, None, false) {
            let _ = self.take();
            std::mem::forget(g);
        }
    }

    /// Under the ledger lock: the permits our entry records for us. An entry left
    /// by a dead previous holder of our registry slot is ours now: its permits go
    /// back to `count` first (whatever we are about to do with the entry).
    fn own_held(&self, entry: &AtomicU64, me: OwnerTag) -> u64 {
        let w = entry.load(Ordering::Relaxed);
        if w >> COUNT_BITS == entry_inc(me) {
            return w & COUNT_MASK;
        }
        let stale = w & COUNT_MASK;
        if stale != 0 {
            self.count.fetch_add(stale as u32, Ordering::Relaxed);
        }
        entry.store(entry_inc(me) << COUNT_BITS, Ordering::Relaxed);
        0
    }

    /// Under the ledger lock: returns the permits of dead holders.
    #[cold]
    fn reclaim_dead(&self, cx: &impl Context) {
        for (slot, e) in self.ledger.iter().enumerate() {
            let w = e.load(Ordering::Relaxed);
            let held = w & COUNT_MASK;
            if held == 0 {
                continue;
            }
            let owner = OwnerTag::new(slot as u32, (w >> COUNT_BITS) << 2);
            if owner.is_some_and(|o| !cx.is_alive_owner(o)) || owner.is_none() {
                e.store(0, Ordering::Relaxed);
                self.count.fetch_add(held as u32, Ordering::Relaxed);
            }
        }
    }

    /// The ledger lock, repaired if its holder died mid-operation: `count` is
    /// rebuilt from the invariant `count + Σ ledger = total`. Honours the caller's
    /// deadline (a live holder that is stopped must not make a timed call wait
    /// longer than asked).
    fn locked<'a>(
        &'a self,
        cx: &'a impl Context,
        deadline: Option<Instant>,
        try_only: bool,
    ) -> Result<RawMutexGuard<'a>, SemaphoreError> {
        // `try_acquire` may wait a moment for the internal lock (held by a live
        // peer for a few instructions), not for a permit.
        let r = if try_only {
            let moment = Instant::now().checked_add(Duration::from_millis(1));
            match RawMutexGuard::lock(&self.lock, cx, moment) {
                Err(RawLockError::TimedOut) => Err(RawLockError::WouldBlock),
                r => r,
            }
        } else {
            RawMutexGuard::lock(&self.lock, cx, deadline)
        };
        match r {
            Ok(mut g) => {
                if g.inconsistent() {
                    self.repair_count();
                    g.make_consistent();
                }
                Ok(g)
            }
            Err(RawLockError::WouldBlock) => Err(SemaphoreError::WouldBlock),
            Err(RawLockError::TimedOut) => Err(SemaphoreError::TimedOut),
            // Always made consistent above and never held across a panic, so it is
            // not recoverable only if a peer corrupted it.
            Err(_) => Err(SemaphoreError::Corrupt),
        }
    }

    /// Under the ledger lock taken over from a dead holder: rebuilds `count` from
    /// the invariant `count + Σ ledger = total`.
    #[cold]
    fn repair_count(&self) {
        let held: u64 = self
            .ledger
            .iter()
            .map(|e| e.load(Ordering::Relaxed) & COUNT_MASK)
            .sum();
        let total = u64::from(self.total.load(Ordering::Relaxed));
        let permits = (total.saturating_sub(held) as u32).min(PERMITS);
        let _ = self
            .count
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                Some((c & SLEEPERS) | permits)
            });
    }

    fn acquire_deadline(
        &self,
        cx: &impl Context,
        deadline: Option<Instant>,
        try_only: bool,
    ) -> Result<(), SemaphoreError> {
        let entry = if LEDGER == 0 {
            None
        } else {
            Some(self.entry(cx.me())?)
        };
        loop {
            let got = match entry {
                None => self.take(),
                Some(e) => self.take_ledgered(cx, e, deadline, try_only)?,
            };
            if got {
                return Ok(());
            }
            if try_only {
                return Err(SemaphoreError::WouldBlock);
            }
            // Sleep only on an empty count, with the flag set in the same word: a
            // release changes the word, so its wake cannot be missed.
            let c = self.count.load(Ordering::Acquire);
            if c & PERMITS != 0 {
                continue;
            }
            if c & SLEEPERS == 0
                && self
                    .count
                    .compare_exchange(c, c | SLEEPERS, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err()
            {
                continue;
            }
            let more = futex::wait(&self.count, c | SLEEPERS, deadline, SLICE);
            if !more {
                return Err(SemaphoreError::TimedOut);
            }
        }
    }
}

/// The ledger entry's incarnation bits for `owner`.
fn entry_inc(owner: OwnerTag) -> u64 {
    owner.bits() & ((1 << 46) - 1)
}

impl<const L: usize> std::fmt::Debug for Semaphore<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Semaphore")
            .field("available", &self.available())
            .field("ledger", &L)
            .finish_non_exhaustive()
    }
}
