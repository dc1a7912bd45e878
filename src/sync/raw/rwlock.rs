//! `RawRwLock`: the lock words of [`RwLock<T, R>`](crate::sync::RwLock), many
//! readers or one writer, robust for writers *and* readers.
//!
//! # Layout
//!
//! - `state` (64 bits): `0` when no writer; the writer's [`OwnerTag`] while a writer
//!   holds the lock or is waiting for readers to leave; bit 63 `INCONSISTENT`: a
//!   writer died mid-update (alone, with no tag: "free but suspect");
//!   `NOT_RECOVERABLE` (bit 62 alone): a writer gave up on repair.
//! - `readers[slot]` (64 bits each, one per registry slot): the reader's incarnation
//!   bits and how many read locks that process holds. Only the slot's current
//!   owner increments it; a writer clears the entry of a dead reader, so **a dead
//!   reader's share is released**.
//! - `seq`: a futex word bumped by every change of `state` that may unblock
//!   someone (a writer's release, a timed-out writer's withdrawal, a dead writer
//!   marked); readers and writers waiting for `state` sleep on it. Its bit 31 is
//!   the `SLEEPERS` flag, set by a sleeper in the same word (so no wake can slip
//!   between its check and its sleep) and cleared by the waker; a sleeper killed
//!   while asleep costs the next waker one wake syscall, no more.
//! - `drain`: a futex word bumped by readers leaving while a writer is in `state`;
//!   only that writer sleeps on it (so blocked readers never wake each other).
//!
//! # Protocol
//!
//! A reader announces itself in its entry, then looks at `state`: no writer, it
//! has the lock; a writer, it withdraws and waits. A writer puts its tag in
//! `state` (from then on no new reader gets in), then waits until every entry is
//! zero or names a dead process (which it clears). Both sides put a `SeqCst` fence
//! between their store and their load (the store-load pattern of Dekker's
//! algorithm: without it a reader and a writer could each miss the other; loom
//! models fences, not `SeqCst` accesses, so the fences are what it checks).
//!
//! **Fairness:** writer-preferring. Once a writer is waiting, new readers wait too;
//! readers that already hold the lock finish. Writers queue on `state`.
//!
//! **Our own tag.** A caller that finds its own attachment's tag in `state`, or
//! shares in its own reader entry, waits if another thread of the attachment is
//! the writer or the reader (or is taking the lock), and fails at once with
//! [`RawLockError::Corrupt`] if none is (a peer wrote it): every call enters the lock
//! in the attachment's [`HeldLocks`](crate::sync::HeldLocks) record first, marks
//! itself waiting while it waits, and leaves after its release.
//!
//! # A process dying inside each operation
//!
//! - reader, anywhere (announced or holding): its entry names a dead process; the
//!   next writer clears it. A new process in the same registry slot also replaces
//!   it on its first read.
//! - writer, waiting for readers or holding: `state` names a dead writer; the next
//!   writer takes over with `OwnerDied`; a reader that finds it marks the lock
//!   `INCONSISTENT` and reads with `OwnerDied` (it cannot repair; a writer can).
//!
//! # Safety
//!
//! The unlock calls and `make_consistent` are `unsafe`: they act on the words as
//! the holder, so the caller must hold the lock through what it passes.
#![allow(unsafe_code)]

use std::time::{Duration, Instant};

use super::{Acquired, RawLockError};
use crate::layout::{ShmSafe, ShmShared};
use crate::loom::{AtomicU32, AtomicU64, Ordering, fence};
use crate::segment::OwnerTag;
use crate::sync::{Context, Held, futex};

const INCONSISTENT: u64 = 1 << 63;
const NOT_RECOVERABLE: u64 = 1 << 62;
/// `seq` bit 31: someone may be asleep on `seq`.
const SLEEPERS: u32 = 1 << 31;
const COUNT_BITS: u32 = 18;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
/// Longest sleep between two liveness checks.
const SLICE: Duration = Duration::from_millis(2);

/// The lock words of a robust reader-writer lock for up to `READERS` registry
/// slots (see the module docs): `state`, two futex words, and one reader entry
/// per slot; `24 + 8 * READERS` bytes, placed in a segment.
#[repr(C)]
pub struct RawRwLock<const READERS: usize> {
    state: AtomicU64,
    seq: AtomicU32,
    _reserved1: AtomicU32,
    drain: AtomicU32,
    _reserved: AtomicU32,
    readers: [AtomicU64; READERS],
}

// The segment layout: `state` at 0, `seq` at 8, `drain` at 16, the reader
// entries from 24 (the fuzz harness and hostile tests poke entries there).
#[cfg(not(shmkit_loom))]
const _: () = {
    assert!(std::mem::size_of::<RawRwLock<128>>() == 24 + 8 * 128);
    assert!(std::mem::align_of::<RawRwLock<128>>() == 8);
    assert!(std::mem::offset_of!(RawRwLock<128>, seq) == 8);
    assert!(std::mem::offset_of!(RawRwLock<128>, drain) == 16);
    assert!(std::mem::offset_of!(RawRwLock<128>, readers) == 24);
};

// SAFETY: repr(C): atomics and an array of atomics; every bit pattern of the
// words is handled.
unsafe impl<const R: usize> ShmSafe for RawRwLock<R> {}
// SAFETY: the words are atomics, shared by design.
unsafe impl<const R: usize> ShmShared for RawRwLock<R> {}

/// A held read share of a [`RawRwLock`]: the reader entry it was announced in,
/// under which incarnation bits, and the acquisition (its lock-record entry and
/// "inconsistent" flag). Handed back to [`RawRwLock::unlock_read`].
#[must_use = "dropping a ReadAcquired without unlocking leaves the share held"]
#[derive(Debug)]
pub struct ReadAcquired<'a> {
    entry: &'a AtomicU64,
    /// The incarnation bits our share was announced under.
    inc: u64,
    acquired: Acquired<'a>,
}

impl ReadAcquired<'_> {
    /// Whether a writer died mid-update and the data has not been repaired.
    #[inline]
    pub fn inconsistent(&self) -> bool {
        self.acquired.inconsistent()
    }
}

/// The incarnation bits of a tag, as kept in a reader entry.
fn entry_inc(tag: OwnerTag) -> u64 {
    tag.bits() & ((1 << 46) - 1)
}

impl<const READERS: usize> RawRwLock<READERS> {
    /// A new, unlocked lock.
    pub fn new() -> Self {
        Self {
            state: AtomicU64::new(0),
            seq: AtomicU32::new(0),
            _reserved1: AtomicU32::new(0),
            drain: AtomicU32::new(0),
            _reserved: AtomicU32::new(0),
            readers: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Builds an unlocked lock in place.
    ///
    /// # Safety
    ///
    /// `p` is valid for writes of `size_of::<Self>()` bytes, aligned, and used by
    /// nobody else until this returns.
    pub(crate) unsafe fn init_in_place(p: *mut Self) {
        // SAFETY: the caller's contract: in bounds, aligned, exclusive. Every
        // atomic is written (under loom an atomic is not its bytes).
        unsafe {
            std::ptr::addr_of_mut!((*p).state).write(AtomicU64::new(0));
            std::ptr::addr_of_mut!((*p).seq).write(AtomicU32::new(0));
            std::ptr::addr_of_mut!((*p)._reserved1).write(AtomicU32::new(0));
            std::ptr::addr_of_mut!((*p).drain).write(AtomicU32::new(0));
            std::ptr::addr_of_mut!((*p)._reserved).write(AtomicU32::new(0));
            let readers = std::ptr::addr_of_mut!((*p).readers).cast::<AtomicU64>();
            for i in 0..READERS {
                readers.add(i).write(AtomicU64::new(0));
            }
        }
    }

    /// Brings a not recoverable lock back to "free but suspect": the next writer's
    /// acquisition is inconsistent. Returns whether it was not recoverable. Always
    /// sound: such a lock has no writer and no reader inside.
    pub fn reset(&self) -> bool {
        // SYNC: SeqCst like every other change of `state` (the Dekker pairing with
        // readers' announcements); nothing is published.
        let ok = self
            .state
            .compare_exchange(
                NOT_RECOVERABLE,
                INCONSISTENT,
                Ordering::SeqCst,
                Ordering::Relaxed,
            )
            .is_ok();
        if ok {
            self.notify();
        }
        ok
    }

    /// The caller's reader entry.
    fn entry(&self, me: OwnerTag) -> Result<&AtomicU64, RawLockError> {
        if me.is_nobody() {
            return Err(RawLockError::NotAttached);
        }
        self.readers
            .get(me.slot() as usize)
            .ok_or(RawLockError::NoReaderEntry {
                slot: me.slot(),
                entries: READERS,
            })
    }

    /// Acquires a read share, waiting until `deadline` (`None`: as long as it
    /// takes) while a live writer is in the way.
    ///
    /// # Errors
    ///
    /// [`RawLockError::TimedOut`]; [`RawLockError::NotRecoverable`];
    /// [`RawLockError::NoReaderEntry`] if the caller's registry slot is `READERS`
    /// or more; [`RawLockError::NotAttached`]; [`RawLockError::Corrupt`] for a
    /// writer tag naming the caller's attachment while none of its threads writes;
    /// [`RawLockError::WouldBlock`] if the caller's entry is full (2^18 - 1 shares).
    #[inline]
    pub fn read<'a>(
        &'a self,
        cx: &'a impl Context,
        deadline: Option<Instant>,
    ) -> Result<ReadAcquired<'a>, RawLockError> {
        self.read_deadline(cx, deadline, false)
    }

    /// Acquires a read share if no live writer is in the way.
    ///
    /// # Errors
    ///
    /// [`RawLockError::WouldBlock`]; as [`read`](Self::read).
    pub fn try_read<'a>(&'a self, cx: &'a impl Context) -> Result<ReadAcquired<'a>, RawLockError> {
        self.read_deadline(cx, None, true)
    }

    /// Acquires the write lock, waiting until `deadline` (`None`: as long as it
    /// takes) for a live writer and live readers; dead ones are cleared.
    ///
    /// # Errors
    ///
    /// [`RawLockError::TimedOut`]; [`RawLockError::NotRecoverable`];
    /// [`RawLockError::NotAttached`]; [`RawLockError::Corrupt`] for a word naming
    /// the caller's attachment while none of its threads holds or takes the lock.
    #[inline]
    pub fn write<'a>(
        &'a self,
        cx: &'a impl Context,
        deadline: Option<Instant>,
    ) -> Result<Acquired<'a>, RawLockError> {
        self.write_deadline(cx, deadline, false)
    }

    /// Acquires the write lock if nobody live is in the way.
    ///
    /// # Errors
    ///
    /// [`RawLockError::WouldBlock`]; as [`write`](Self::write).
    pub fn try_write<'a>(&'a self, cx: &'a impl Context) -> Result<Acquired<'a>, RawLockError> {
        self.write_deadline(cx, None, true)
    }

    /// Releases a read share.
    ///
    /// # Safety
    ///
    /// `share` came from this lock's `read` or `try_read` and was not released yet.
    #[inline]
    pub unsafe fn unlock_read(&self, share: ReadAcquired<'_>) {
        // Withdraw the share we announced (never another incarnation's).
        withdraw(share.entry, share.inc);
        // SYNC: store-load pair with a writer's state CAS and entry loads: the
        // fence makes sure that either the writer sees our share gone or we see
        // the writer and wake it (loom's blocking futex model found the lost
        // wake-up without it).
        fence(Ordering::SeqCst);
        if !OwnerTag::from_word(self.state.load(Ordering::SeqCst)).is_nobody() {
            self.notify_drain(); // a writer may be waiting for us
        }
        // Leave the lock record after the withdrawal.
        drop(share);
    }

    /// Declares the data repaired after an inconsistent write acquisition. A
    /// no-op on a consistent one.
    ///
    /// # Safety
    ///
    /// `acquired` is the caller's current write hold of *this* lock.
    pub unsafe fn make_consistent(&self, acquired: &mut Acquired<'_>) {
        if acquired.inconsistent() {
            self.state.fetch_and(!INCONSISTENT, Ordering::Relaxed);
            acquired.set_inconsistent(false);
        }
    }

    /// Releases the write lock: free, or not recoverable if the acquisition is
    /// still inconsistent, or (called while panicking) free but suspect, so that
    /// the next writer repairs.
    ///
    /// # Safety
    ///
    /// `acquired` came from this lock's `write` or `try_write` and was not
    /// released yet.
    #[inline]
    pub unsafe fn unlock_write(&self, acquired: Acquired<'_>) {
        let end = if std::thread::panicking() {
            INCONSISTENT // free but suspect: the next writer repairs
        } else if acquired.inconsistent() {
            NOT_RECOVERABLE
        } else {
            0
        };
        // SYNC: Release (within SeqCst): our writes to the data happen before the
        // next reader's or writer's SeqCst load of `state`.
        self.state.store(end, Ordering::SeqCst);
        self.notify();
        // Leave the lock record after the release.
        drop(acquired);
    }

    /// Releases the write lock without declaring the data consistent, passing the
    /// repair on: the next writer's acquisition is inconsistent, readers' too.
    ///
    /// # Safety
    ///
    /// As [`unlock_write`](Self::unlock_write).
    pub unsafe fn abandon_write(&self, acquired: Acquired<'_>) {
        // SYNC: Release (within SeqCst), as in unlock_write.
        self.state.store(INCONSISTENT, Ordering::SeqCst);
        self.notify();
        // Leave the lock record after the release (as an unlock does).
        drop(acquired);
    }

    /// `state` now (a snapshot, for diagnostics).
    pub(crate) fn state(&self) -> u64 {
        self.state.load(Ordering::Relaxed)
    }

    /// Bumps `seq` and wakes sleepers, after a change that may unblock someone.
    #[inline]
    fn notify(&self) {
        // SYNC: SeqCst RMW: the state/entry change before it is visible to a waiter
        // that reads the new `seq`; the flag in the same word says whether anyone
        // may sleep (a waiter sets it with a CAS on the value it will sleep on).
        let prev = self
            .seq
            .fetch_update(Ordering::SeqCst, Ordering::Relaxed, |v| {
                Some(v.wrapping_add(1) & !SLEEPERS)
            })
            .unwrap_or(0);
        if prev & SLEEPERS != 0 {
            futex::wake_all(&self.seq);
        }
    }

    /// Sleeps one slice unless `seq` moved since `s`; false if the deadline passed.
    fn sleep(&self, s: u32, deadline: Option<Instant>) -> bool {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return false;
        }
        // Announce ourselves in the word we sleep on: if a notify came since `s`,
        // the CAS fails and we return to re-check at once.
        if s & SLEEPERS == 0
            && self
                .seq
                .compare_exchange(s, s | SLEEPERS, Ordering::SeqCst, Ordering::Relaxed)
                .is_err()
        {
            return true;
        }
        futex::wait(&self.seq, s | SLEEPERS, deadline, SLICE)
    }

    /// A reader left while a writer is in `state`: wake the draining writer.
    #[inline]
    fn notify_drain(&self) {
        // SYNC: SeqCst orders our withdrawal (entry store, fenced by the caller)
        // before the bump; the writer reads `drain` before scanning the entries.
        self.drain.fetch_add(1, Ordering::SeqCst);
        futex::wake_all(&self.drain);
    }

    /// The read side: announce, look at `state`, withdraw and wait while a
    /// writer is there. Inlined: a share returned through memory and repacked
    /// into the caller's guard costs a store-forwarding stall per read.
    #[inline]
    fn read_deadline<'a>(
        &'a self,
        cx: &'a impl Context,
        deadline: Option<Instant>,
        try_only: bool,
    ) -> Result<ReadAcquired<'a>, RawLockError> {
        let me = cx.me();
        let entry = self.entry(me)?;
        let inc = entry_inc(me);
        let mut held = Held::enter(cx.held_locks(), self.addr());
        loop {
            // Announce: our share, replacing a dead predecessor's entry in our slot.
            let e = entry.load(Ordering::Relaxed);
            let ours = if e >> COUNT_BITS == inc {
                e & COUNT_MASK
            } else {
                0
            };
            if ours == COUNT_MASK {
                return Err(RawLockError::WouldBlock); // 2^18 - 1 read locks held already
            }
            let announced = (inc << COUNT_BITS) | (ours + 1);
            held.trying(self.addr());
            // SYNC: SeqCst: the Dekker store-load pair with the writer's state CAS and
            // entry loads (see the module docs). Fails only if a writer cleared a
            // dead predecessor's entry meanwhile: retry.
            if entry
                .compare_exchange(e, announced, Ordering::SeqCst, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            // SYNC: the SeqCst fence orders our announce before our look at `state`
            // against the writer's fence in `write_deadline` (fence-based Dekker: a
            // store-load pair is the one thing Acquire/Release cannot order).
            fence(Ordering::SeqCst);
            let w = self.state.load(Ordering::SeqCst);
            if OwnerTag::from_word(w).is_nobody() && w & NOT_RECOVERABLE == 0 {
                let inconsistent = w & INCONSISTENT != 0;
                return Ok(ReadAcquired {
                    entry,
                    inc,
                    acquired: Acquired::new(held, inconsistent),
                });
            }
            // A writer (or a dead end): withdraw, and let a draining writer know.
            withdraw(entry, inc);
            if !OwnerTag::from_word(w).is_nobody() {
                self.notify_drain();
            }
            if w == NOT_RECOVERABLE {
                return Err(RawLockError::NotRecoverable);
            }
            let writer = OwnerTag::from_word(w);
            // Withdrawn: neither holding nor about to announce, until we retry.
            held.waiting(self.addr());
            if writer == me {
                // Our own attachment's tag: another of its threads writes (wait),
                // or nobody of ours does and a peer wrote it.
                if held.forged(self.addr(), || self.state_names(me)) {
                    return Err(RawLockError::Corrupt { word: w });
                }
            } else if !cx.is_alive_owner(writer) {
                // The writer died: free but suspect. A writer will repair.
                if self
                    .state
                    .compare_exchange(w, INCONSISTENT, Ordering::SeqCst, Ordering::Relaxed)
                    .is_ok()
                {
                    self.notify(); // other readers and writers may proceed now
                }
                continue;
            }
            if try_only {
                return Err(RawLockError::WouldBlock);
            }
            // Sleep on `seq` (state changes), only while the writer is still there.
            let s = self.seq.load(Ordering::SeqCst);
            if self.state.load(Ordering::SeqCst) == w && !self.sleep(s, deadline) {
                return Err(RawLockError::TimedOut);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(RawLockError::TimedOut);
            }
        }
    }

    /// The write side: put our tag in `state`, then wait for the readers to
    /// leave.
    fn write_deadline<'a>(
        &'a self,
        cx: &'a impl Context,
        deadline: Option<Instant>,
        try_only: bool,
    ) -> Result<Acquired<'a>, RawLockError> {
        let me = cx.me();
        if me.is_nobody() {
            return Err(RawLockError::NotAttached);
        }
        let mut held = Held::enter(cx.held_locks(), self.addr());
        // 1. Put our tag in `state`.
        let inconsistent = loop {
            let s = self.seq.load(Ordering::SeqCst);
            let w = self.state.load(Ordering::SeqCst);
            if w == NOT_RECOVERABLE {
                return Err(RawLockError::NotRecoverable);
            }
            let holder = OwnerTag::from_word(w);
            let free = holder.is_nobody();
            if holder == me && held.forged(self.addr(), || self.state_names(me)) {
                return Err(RawLockError::Corrupt { word: w });
            }
            if free || (holder != me && !cx.is_alive_owner(holder)) {
                let suspect = w & INCONSISTENT != 0 || !free;
                let new = me.bits() | if suspect { INCONSISTENT } else { 0 };
                held.trying(self.addr());
                // SYNC: SeqCst: the writer half of the Dekker pair (see module docs);
                // also Acquire of the previous writer's Release store in `unlock`,
                // and the release that publishes our lock-record entry.
                if self
                    .state
                    .compare_exchange(w, new, Ordering::SeqCst, Ordering::Relaxed)
                    .is_ok()
                {
                    break suspect;
                }
                continue;
            }
            // Neither holding nor about to CAS our tag in, until we retry.
            held.waiting(self.addr());
            if try_only {
                return Err(RawLockError::WouldBlock);
            }
            if !self.sleep(s, deadline) {
                return Err(RawLockError::TimedOut);
            }
        };
        // SYNC: pairs with the reader's SeqCst fence between announce and look.
        fence(Ordering::SeqCst);
        // 2. Wait for the readers to leave; clear the entries of dead readers.
        loop {
            // SYNC: read `drain` before scanning, so that a reader leaving after the
            // scan has bumped it past `s` (its futex wait then returns at once).
            let s = self.drain.load(Ordering::SeqCst);
            let gone = self.readers_gone(cx, &held);
            if gone == Ok(true) {
                return Ok(Acquired::new(held, inconsistent));
            }
            if gone.is_err() || try_only || !futex::wait(&self.drain, s, deadline, SLICE) {
                // Give up the claim, restoring what we found (before `held` is
                // left, on return).
                let back = if inconsistent { INCONSISTENT } else { 0 };
                self.state.store(back, Ordering::SeqCst);
                self.notify();
                return Err(match gone {
                    Err(word) => RawLockError::Corrupt { word },
                    Ok(_) if try_only => RawLockError::WouldBlock,
                    Ok(_) => RawLockError::TimedOut,
                });
            }
        }
    }

    /// Whether no live reader holds a share (dead readers' entries are cleared);
    /// `Err(entry)` if our own slot's entry shows shares that no thread of our
    /// attachment holds (a forged entry).
    fn readers_gone(&self, cx: &impl Context, held: &Held<'_>) -> Result<bool, u64> {
        let me = cx.me();
        let mut gone = true;
        for (slot, e) in self.readers.iter().enumerate() {
            // SYNC: SeqCst: the writer's loads of the Dekker pair; also acquires the
            // readers' Release decrements (their reads happen before our writes).
            let w = e.load(Ordering::SeqCst);
            if w & COUNT_MASK == 0 {
                continue;
            }
            let owner = OwnerTag::new(slot as u32, (w >> COUNT_BITS) << 2);
            if owner == Some(me) {
                // Our shares: another of our threads reads (wait), or forged.
                if held.forged(self.addr(), || Self::shares_of(e, me)) {
                    return Err(w);
                }
                gone = false;
            } else if owner.is_some_and(|o| cx.is_alive_owner(o)) {
                gone = false;
            } else {
                // A dead reader: release its share (only if the word is unchanged).
                let _ = e.compare_exchange(w, 0, Ordering::SeqCst, Ordering::Relaxed);
            }
        }
        Ok(gone)
    }

    /// The lock's identity in a lock record.
    #[inline]
    fn addr(&self) -> usize {
        std::ptr::from_ref(self).addr()
    }

    /// Whether `state` names `me` now. SYNC: SeqCst (an Acquire) pairs with the
    /// SeqCst CAS that put our tag there, if one of our threads did: its
    /// lock-record entry is then visible to the check that follows (`sync::held`).
    #[cold]
    fn state_names(&self, me: OwnerTag) -> bool {
        OwnerTag::from_word(self.state.load(Ordering::SeqCst)) == me
    }

    /// Whether reader entry `e` shows shares of `me` now. SYNC: SeqCst (an
    /// Acquire) pairs with the SeqCst announce of a reader of ours: its
    /// lock-record entry is then visible to the check that follows.
    #[cold]
    fn shares_of(e: &AtomicU64, me: OwnerTag) -> bool {
        let w = e.load(Ordering::SeqCst);
        w & COUNT_MASK != 0 && w >> COUNT_BITS == entry_inc(me)
    }
}

impl<const R: usize> Default for RawRwLock<R> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const R: usize> std::fmt::Debug for RawRwLock<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawRwLock")
            .field("state", &format_args!("{:#018x}", self.state()))
            .finish_non_exhaustive()
    }
}

/// Removes one of our read shares from `entry`.
fn withdraw(entry: &AtomicU64, inc: u64) {
    let mut e = entry.load(Ordering::Relaxed);
    loop {
        if e >> COUNT_BITS != inc || e & COUNT_MASK == 0 {
            return; // cleared by a writer that misjudged us dead: nothing to undo
        }
        // SYNC: Release: our reads of the data happen before a writer's Acquire load
        // of this entry sees the share gone.
        match entry.compare_exchange_weak(e, e - 1, Ordering::Release, Ordering::Relaxed) {
            Ok(_) => return,
            Err(now) => e = now,
        }
    }
}

/// A read share of a [`RawRwLock`] that protects no data of its own; released
/// on drop.
#[must_use = "the read lock is released as soon as the guard is dropped"]
#[derive(Debug)]
pub struct RawReadGuard<'a, const R: usize> {
    raw: &'a RawRwLock<R>,
    share: std::mem::ManuallyDrop<ReadAcquired<'a>>,
}

impl<'a, const R: usize> RawReadGuard<'a, R> {
    /// Takes a read share of `raw` (see [`RawRwLock::read`]) and wraps it.
    ///
    /// # Errors
    ///
    /// As [`RawRwLock::read`].
    pub fn read(
        raw: &'a RawRwLock<R>,
        cx: &'a impl Context,
        deadline: Option<Instant>,
    ) -> Result<Self, RawLockError> {
        let share = raw.read(cx, deadline)?;
        Ok(Self {
            raw,
            share: std::mem::ManuallyDrop::new(share),
        })
    }
}

impl<const R: usize> Drop for RawReadGuard<'_, R> {
    fn drop(&mut self) {
        // SAFETY: taken out once, here; the field is not used afterwards.
        let share = unsafe { std::mem::ManuallyDrop::take(&mut self.share) };
        // SAFETY: the guard holds `share` of `raw`, released once, here.
        unsafe { self.raw.unlock_read(share) }
    }
}

/// The write lock of a [`RawRwLock`] that protects no data of its own; released
/// on drop.
#[must_use = "the write lock is released as soon as the guard is dropped"]
#[derive(Debug)]
pub struct RawWriteGuard<'a, const R: usize> {
    raw: &'a RawRwLock<R>,
    acquired: Acquired<'a>,
}

impl<'a, const R: usize> RawWriteGuard<'a, R> {
    /// Takes the write lock of `raw` (see [`RawRwLock::write`]) and wraps it.
    ///
    /// # Errors
    ///
    /// As [`RawRwLock::write`].
    pub fn write(
        raw: &'a RawRwLock<R>,
        cx: &'a impl Context,
        deadline: Option<Instant>,
    ) -> Result<Self, RawLockError> {
        let acquired = raw.write(cx, deadline)?;
        Ok(Self { raw, acquired })
    }

    /// Whether the data is marked inconsistent (a writer died mid-update).
    pub fn inconsistent(&self) -> bool {
        self.acquired.inconsistent()
    }

    /// Declares the data repaired (see [`RawRwLock::make_consistent`]).
    pub fn make_consistent(&mut self) {
        // SAFETY: the guard holds `raw`'s write lock through `acquired` until its
        // drop.
        unsafe { self.raw.make_consistent(&mut self.acquired) }
    }
}

impl<const R: usize> Drop for RawWriteGuard<'_, R> {
    fn drop(&mut self) {
        let acquired = std::mem::take(&mut self.acquired);
        // SAFETY: the guard holds `raw`'s write lock through `acquired`, taken out
        // once, here.
        unsafe { self.raw.unlock_write(acquired) }
    }
}
