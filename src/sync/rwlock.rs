//! `RwLock<T>`: many readers or one writer, robust for writers *and* readers.
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
//! [`LockError::Corrupt`] if none is (a peer wrote it): every call enters the lock
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

use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

use crate::layout::{ShmSafe, ShmShared};
use crate::loom::{AtomicU32, AtomicU64, Ordering, UnsafeCell, fence};
use crate::segment::OwnerTag;
use crate::sync::{Context, Held, LockError, LockResult, futex};

const INCONSISTENT: u64 = 1 << 63;
const NOT_RECOVERABLE: u64 = 1 << 62;
/// `seq` bit 31: someone may be asleep on `seq`.
const SLEEPERS: u32 = 1 << 31;
const COUNT_BITS: u32 = 18;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
/// Longest sleep between two liveness checks.
const SLICE: Duration = Duration::from_millis(2);

/// A robust reader-writer lock protecting a `T`, for up to `READERS` registry slots
/// (at least the segment's `registry_slots`; 128 by default, as the registry).
///
/// # Examples
///
/// ```
/// use shmkit::{SegmentOptions, sync::RwLock};
/// let seg = SegmentOptions::heap().committed(64 << 10).create()?;
/// let h = seg.find_or_create::<RwLock<u64>>("l", ())?;
/// let l = h.raw(); // the low-level calls, which take the context
/// *l.write(&seg).unwrap() = 7;
/// let peer = seg.try_clone()?;
/// {
///     let a = l.read(&seg).unwrap();
///     let b = l.read(&peer).unwrap(); // many readers
///     assert_eq!(*a + *b, 14);
/// }
/// *l.write(&seg).unwrap() = 8; // one writer
/// assert_eq!(*l.read(&peer).unwrap(), 8);
/// # Ok::<(), shmkit::Error>(())
/// ```
#[repr(C)]
pub struct RwLock<T, const READERS: usize = 128> {
    state: AtomicU64,
    seq: AtomicU32,
    _reserved1: AtomicU32,
    drain: AtomicU32,
    _reserved: AtomicU32,
    readers: [AtomicU64; READERS],
    data: UnsafeCell<T>,
}

#[allow(unsafe_code)] // marker impl only
// SAFETY: repr(C): atomics, an array of atomics, and the ShmSafe data in a
// repr(transparent) UnsafeCell; every bit pattern of the words is handled.
unsafe impl<T: ShmSafe, const R: usize> ShmSafe for RwLock<T, R> {}
#[allow(unsafe_code)] // marker impl only
// SAFETY: the words are atomics; the data is reached only through guards.
unsafe impl<T: ShmSafe + Send + Sync, const R: usize> ShmShared for RwLock<T, R> {}
#[allow(unsafe_code)] // marker impl only
// SAFETY: as std's RwLock: readers share &T, a writer has &mut T alone.
unsafe impl<T: Send + Sync, const R: usize> Sync for RwLock<T, R> {}

/// Shared access to an [`RwLock`]'s data; releases the read lock on drop.
#[must_use = "the read lock is released as soon as the guard is dropped"]
pub struct RwLockReadGuard<'a, T, const R: usize = 128> {
    lock: &'a RwLock<T, R>,
    entry: &'a AtomicU64,
    /// The incarnation bits our share was announced under.
    inc: u64,
    /// Our entry in the attachment's lock record, left after the withdrawal; its
    /// owner bit says whether the data is marked inconsistent.
    held: Held<'a>,
}

/// Exclusive access to an [`RwLock`]'s data; releases the write lock on drop.
#[must_use = "the write lock is released as soon as the guard is dropped"]
pub struct RwLockWriteGuard<'a, T, const R: usize = 128> {
    lock: &'a RwLock<T, R>,
    /// Our entry in the attachment's lock record, left after the release; its
    /// owner bit says whether the data is marked inconsistent.
    held: Held<'a>,
}

/// The incarnation bits of a tag, as kept in a reader entry.
fn entry_inc(tag: OwnerTag) -> u64 {
    tag.bits() & ((1 << 46) - 1)
}

impl<T, const READERS: usize> RwLock<T, READERS> {
    /// A new, unlocked lock (build it in place with
    /// [`Segment::place`](crate::Segment::place)).
    pub fn new(value: T) -> Self {
        Self {
            state: AtomicU64::new(0),
            seq: AtomicU32::new(0),
            _reserved1: AtomicU32::new(0),
            drain: AtomicU32::new(0),
            _reserved: AtomicU32::new(0),
            readers: std::array::from_fn(|_| AtomicU64::new(0)),
            data: UnsafeCell::new(value),
        }
    }

    /// Builds an unlocked lock in place over zeroed memory, leaving the data's
    /// zeroed bytes as its value.
    ///
    /// # Safety
    ///
    /// `at` is valid for writes of `size_of::<Self>()` bytes, aligned, zeroed, and
    /// used by nobody else until this returns; zeroed bytes are a valid `T`.
    #[allow(unsafe_code)]
    pub(crate) unsafe fn init_in_place(at: std::ptr::NonNull<Self>) {
        let p = at.as_ptr();
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
            #[cfg(shmkit_loom)]
            std::ptr::addr_of_mut!((*p).data).write(UnsafeCell::new(std::mem::zeroed()));
        }
    }

    /// Brings a [not recoverable](LockError::NotRecoverable) lock back to "free but
    /// suspect": the next writer gets [`LockError::OwnerDied`] and must rebuild
    /// the data (readers see [`is_inconsistent`](RwLockReadGuard::is_inconsistent)
    /// until then). Returns whether it was not recoverable. Always sound: such a
    /// lock has no writer and no reader inside.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmkit::sync::{LockError, RwLock};
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let h = seg.find_or_create::<RwLock<u8>>("l", ())?;
    /// let l = h.raw();
    /// let peer = seg.try_clone()?;
    /// std::mem::forget(l.write(&peer).unwrap());
    /// // `peer`'s process is killed here (kill -9)
    /// # peer.simulate_crash(); // test support: the same as a SIGKILL
    /// drop(l.write(&seg).unwrap_err().into_owner_died()); // dropped unrepaired
    /// assert!(matches!(l.write(&seg), Err(LockError::NotRecoverable)));
    /// assert!(l.reset());
    /// let mut g = l.write(&seg).unwrap_err().into_owner_died().unwrap();
    /// *g = 0;
    /// g.make_consistent();
    /// # Ok::<(), shmkit::Error>(())
    /// ```
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
    fn entry<G>(&self, me: OwnerTag) -> Result<&AtomicU64, LockError<G>> {
        if me.is_nobody() {
            return Err(LockError::NotAttached);
        }
        self.readers
            .get(me.slot() as usize)
            .ok_or(LockError::NoReaderEntry {
                slot: me.slot(),
                entries: READERS,
            })
    }

    /// Acquires a read lock, waiting as long as it takes.
    ///
    /// # Errors
    ///
    /// [`LockError::OwnerDied`] (holding a read lock) if a writer died mid-update
    /// and nobody has repaired the data yet; [`LockError::NotRecoverable`].
    ///
    /// [`LockError::NoReaderEntry`] if the caller's registry slot is `READERS` or
    /// more; [`LockError::NotAttached`].
    ///
    /// # Examples
    ///
    /// See [`RwLock`].
    pub fn read<'a>(&'a self, cx: &'a impl Context) -> LockResult<RwLockReadGuard<'a, T, READERS>> {
        self.read_deadline(cx, None, false)
    }

    /// Acquires a read lock if no writer is in the way.
    ///
    /// # Errors
    ///
    /// [`LockError::WouldBlock`]; as [`read`](Self::read).
    ///
    /// # Examples
    ///
    /// ```
    /// use shmkit::{SegmentOptions, sync::{LockError, RwLock}};
    /// let seg = SegmentOptions::heap().committed(64 << 10).create()?;
    /// let h = seg.find_or_create::<RwLock<u8>>("l", ())?;
    /// let l = h.raw(); // the low-level calls, which take the context
    /// let peer = seg.try_clone()?;
    /// let w = l.write(&seg).unwrap();
    /// assert!(matches!(l.try_read(&peer), Err(LockError::WouldBlock)));
    /// drop(w);
    /// assert!(l.try_read(&peer).is_ok());
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn try_read<'a>(
        &'a self,
        cx: &'a impl Context,
    ) -> LockResult<RwLockReadGuard<'a, T, READERS>> {
        self.read_deadline(cx, None, true)
    }

    /// Acquires a read lock, waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`LockError::TimedOut`]; as [`read`](Self::read).
    ///
    /// # Examples
    ///
    /// See [`write_for`](Self::write_for).
    pub fn read_for<'a>(
        &'a self,
        cx: &'a impl Context,
        timeout: Duration,
    ) -> LockResult<RwLockReadGuard<'a, T, READERS>> {
        self.read_deadline(cx, Instant::now().checked_add(timeout), false)
    }

    /// Acquires a read lock, waiting until `deadline` at the latest.
    ///
    /// # Errors
    ///
    /// [`LockError::TimedOut`]; as [`read`](Self::read).
    ///
    /// # Examples
    ///
    /// See [`write_for`](Self::write_for).
    pub fn read_until<'a>(
        &'a self,
        cx: &'a impl Context,
        deadline: Instant,
    ) -> LockResult<RwLockReadGuard<'a, T, READERS>> {
        self.read_deadline(cx, Some(deadline), false)
    }

    /// Acquires the write lock, waiting as long as it takes.
    ///
    /// # Errors
    ///
    /// [`LockError::OwnerDied`] (holding the write lock) if a writer died
    /// mid-update: repair, then [`RwLockWriteGuard::make_consistent`];
    /// [`LockError::NotRecoverable`].
    ///
    /// # Examples
    ///
    /// See [`RwLock`].
    pub fn write<'a>(
        &'a self,
        cx: &'a impl Context,
    ) -> LockResult<RwLockWriteGuard<'a, T, READERS>> {
        self.write_deadline(cx, None, false)
    }

    /// Acquires the write lock if nobody is in the way (dead holders are cleared).
    ///
    /// # Errors
    ///
    /// [`LockError::WouldBlock`]; as [`write`](Self::write).
    ///
    /// # Examples
    ///
    /// See [`try_read`](Self::try_read).
    pub fn try_write<'a>(
        &'a self,
        cx: &'a impl Context,
    ) -> LockResult<RwLockWriteGuard<'a, T, READERS>> {
        self.write_deadline(cx, None, true)
    }

    /// Acquires the write lock, waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`LockError::TimedOut`]; as [`write`](Self::write).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use shmkit::{SegmentOptions, sync::{LockError, RwLock}};
    /// let seg = SegmentOptions::heap().committed(64 << 10).create()?;
    /// let h = seg.find_or_create::<RwLock<u8>>("l", ())?;
    /// let l = h.raw(); // the low-level calls, which take the context
    /// let peer = seg.try_clone()?;
    /// let r = l.read(&seg).unwrap();
    /// assert!(matches!(l.write_for(&peer, Duration::from_millis(5)), Err(LockError::TimedOut)));
    /// drop(r);
    /// assert!(l.write_for(&peer, Duration::from_millis(5)).is_ok());
    /// assert!(l.read_for(&peer, Duration::from_millis(5)).is_ok());
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn write_for<'a>(
        &'a self,
        cx: &'a impl Context,
        timeout: Duration,
    ) -> LockResult<RwLockWriteGuard<'a, T, READERS>> {
        self.write_deadline(cx, Instant::now().checked_add(timeout), false)
    }

    /// Acquires the write lock, waiting until `deadline` at the latest.
    ///
    /// # Errors
    ///
    /// [`LockError::TimedOut`]; as [`write`](Self::write).
    ///
    /// # Examples
    ///
    /// See [`write_for`](Self::write_for).
    pub fn write_until<'a>(
        &'a self,
        cx: &'a impl Context,
        deadline: Instant,
    ) -> LockResult<RwLockWriteGuard<'a, T, READERS>> {
        self.write_deadline(cx, Some(deadline), false)
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

    fn read_deadline<'a>(
        &'a self,
        cx: &'a impl Context,
        deadline: Option<Instant>,
        try_only: bool,
    ) -> LockResult<RwLockReadGuard<'a, T, READERS>> {
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
                return Err(LockError::WouldBlock); // 2^18 - 1 read locks held already
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
                held.set_flag(inconsistent);
                let g = RwLockReadGuard {
                    lock: self,
                    entry,
                    inc,
                    held,
                };
                return if inconsistent {
                    Err(LockError::OwnerDied(g))
                } else {
                    Ok(g)
                };
            }
            // A writer (or a dead end): withdraw, and let a draining writer know.
            withdraw(entry, inc);
            if !OwnerTag::from_word(w).is_nobody() {
                self.notify_drain();
            }
            if w == NOT_RECOVERABLE {
                return Err(LockError::NotRecoverable);
            }
            let writer = OwnerTag::from_word(w);
            // Withdrawn: neither holding nor about to announce, until we retry.
            held.waiting(self.addr());
            if writer == me {
                // Our own attachment's tag: another of its threads writes (wait),
                // or nobody of ours does and a peer wrote it.
                if held.forged(self.addr(), || self.state_names(me)) {
                    return Err(LockError::Corrupt { word: w });
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
                return Err(LockError::WouldBlock);
            }
            // Sleep on `seq` (state changes), only while the writer is still there.
            let s = self.seq.load(Ordering::SeqCst);
            if self.state.load(Ordering::SeqCst) == w && !self.sleep(s, deadline) {
                return Err(LockError::TimedOut);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(LockError::TimedOut);
            }
        }
    }

    fn write_deadline<'a>(
        &'a self,
        cx: &'a impl Context,
        deadline: Option<Instant>,
        try_only: bool,
    ) -> LockResult<RwLockWriteGuard<'a, T, READERS>> {
        let me = cx.me();
        if me.is_nobody() {
            return Err(LockError::NotAttached);
        }
        let mut held = Held::enter(cx.held_locks(), self.addr());
        // 1. Put our tag in `state`.
        let inconsistent = loop {
            let s = self.seq.load(Ordering::SeqCst);
            let w = self.state.load(Ordering::SeqCst);
            if w == NOT_RECOVERABLE {
                return Err(LockError::NotRecoverable);
            }
            let holder = OwnerTag::from_word(w);
            let free = holder.is_nobody();
            if holder == me && held.forged(self.addr(), || self.state_names(me)) {
                return Err(LockError::Corrupt { word: w });
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
                return Err(LockError::WouldBlock);
            }
            if !self.sleep(s, deadline) {
                return Err(LockError::TimedOut);
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
                held.set_flag(inconsistent);
                let g = RwLockWriteGuard { lock: self, held };
                return if inconsistent {
                    Err(LockError::OwnerDied(g))
                } else {
                    Ok(g)
                };
            }
            if gone.is_err() || try_only || !futex::wait(&self.drain, s, deadline, SLICE) {
                // Give up the claim, restoring what we found (before `held` is
                // left, on return).
                let back = if inconsistent { INCONSISTENT } else { 0 };
                self.state.store(back, Ordering::SeqCst);
                self.notify();
                return Err(match gone {
                    Err(word) => LockError::Corrupt { word },
                    Ok(_) if try_only => LockError::WouldBlock,
                    Ok(_) => LockError::TimedOut,
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

    /// Mutable access without locking, through exclusive ownership.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut l: shmkit::sync::RwLock<u8> = shmkit::sync::RwLock::new(1);
    /// *l.get_mut() += 1;
    /// ```
    pub fn get_mut(&mut self) -> &mut T {
        #[allow(unsafe_code)]
        // SAFETY: `&mut self` excludes every other access.
        self.data.with_mut(|p| unsafe { &mut *p })
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

impl<T, const R: usize> RwLockReadGuard<'_, T, R> {
    /// Whether a writer died mid-update and the data has not been repaired.
    pub fn is_inconsistent(&self) -> bool {
        self.held.flag()
    }
}

impl<T, const R: usize> RwLockWriteGuard<'_, T, R> {
    /// Declares the data repaired after `OwnerDied`. A no-op on a consistent lock.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmkit::{SegmentOptions, sync::RwLock};
    /// let seg = SegmentOptions::heap().committed(64 << 10).create()?;
    /// let h = seg.find_or_create::<RwLock<u8>>("l", ())?;
    /// let l = h.raw(); // the low-level calls, which take the context
    /// let peer = seg.try_clone()?;
    /// std::mem::forget(l.write(&peer).unwrap());
    /// // `peer`'s process is killed here (kill -9), mid-update
    /// # peer.simulate_crash(); // test support: the same as a SIGKILL
    /// let mut g = l.write(&seg).unwrap_err().into_owner_died().unwrap();
    /// *g = 0;
    /// g.make_consistent();
    /// drop(g);
    /// assert!(l.read(&seg).is_ok());
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn make_consistent(&mut self) {
        if self.held.flag() {
            self.lock.state.fetch_and(!INCONSISTENT, Ordering::Relaxed);
            self.held.set_flag(false);
        }
    }

    /// Whether the data is still marked inconsistent.
    pub fn is_inconsistent(&self) -> bool {
        self.held.flag()
    }
}

impl<T, const R: usize> Deref for RwLockReadGuard<'_, T, R> {
    type Target = T;
    fn deref(&self) -> &T {
        #[allow(unsafe_code)]
        // SAFETY: a read share is held: no writer has the data.
        self.lock.data.with(|p| unsafe { &*p })
    }
}

impl<T, const R: usize> Deref for RwLockWriteGuard<'_, T, R> {
    type Target = T;
    fn deref(&self) -> &T {
        #[allow(unsafe_code)]
        // SAFETY: the write lock is held: nobody else has the data.
        self.lock.data.with(|p| unsafe { &*p })
    }
}

impl<T, const R: usize> DerefMut for RwLockWriteGuard<'_, T, R> {
    fn deref_mut(&mut self) -> &mut T {
        #[allow(unsafe_code)]
        // SAFETY: as in deref, and `&mut self` makes this the only access.
        self.lock.data.with_mut(|p| unsafe { &mut *p })
    }
}

impl<T, const R: usize> Drop for RwLockReadGuard<'_, T, R> {
    fn drop(&mut self) {
        // Withdraw the share we announced (never another incarnation's).
        withdraw(self.entry, self.inc);
        // SYNC: store-load pair with a writer's state CAS and entry loads: the
        // fence makes sure that either the writer sees our share gone or we see
        // the writer and wake it (loom's blocking futex model found the lost
        // wake-up without it).
        fence(Ordering::SeqCst);
        if !OwnerTag::from_word(self.lock.state.load(Ordering::SeqCst)).is_nobody() {
            self.lock.notify_drain(); // a writer may be waiting for us
        }
    }
}

impl<T, const R: usize> RwLockWriteGuard<'_, T, R> {
    /// Unlocks without declaring the data consistent, passing the repair on: the
    /// next writer gets [`LockError::OwnerDied`], readers see
    /// [`is_inconsistent`](RwLockReadGuard::is_inconsistent).
    ///
    /// # Examples
    ///
    /// ```
    /// use shmkit::sync::{LockError, RwLock};
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let l = seg.find_or_create::<RwLock<u8>>("l", ())?;
    /// l.raw().write(&seg).unwrap().abandon();
    /// assert!(matches!(l.raw().write(&seg), Err(LockError::OwnerDied(_))));
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn abandon(self) {
        let mut this = std::mem::ManuallyDrop::new(self);
        // SYNC: Release (within SeqCst), as in drop.
        this.lock.state.store(INCONSISTENT, Ordering::SeqCst);
        this.lock.notify();
        // Leave the lock record after the release (as a drop does).
        drop(std::mem::take(&mut this.held));
    }
}

impl<T, const R: usize> crate::sync::Abandon for RwLockWriteGuard<'_, T, R> {
    fn abandon(self) {
        RwLockWriteGuard::abandon(self);
    }
}

impl<T, const R: usize> crate::sync::Abandon for RwLockReadGuard<'_, T, R> {
    /// A reader changes nothing: the data stays marked for the next writer.
    fn abandon(self) {}
}

impl<T, const R: usize> Drop for RwLockWriteGuard<'_, T, R> {
    fn drop(&mut self) {
        let end = if std::thread::panicking() {
            INCONSISTENT // free but suspect: the next writer repairs
        } else if self.held.flag() {
            NOT_RECOVERABLE
        } else {
            0
        };
        // SYNC: Release (within SeqCst): our writes to the data happen before the
        // next reader's or writer's SeqCst load of `state`.
        self.lock.state.store(end, Ordering::SeqCst);
        self.lock.notify();
    }
}

impl<T, const R: usize> std::fmt::Debug for RwLock<T, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RwLock")
            .field(
                "state",
                &format_args!("{:#018x}", self.state.load(Ordering::Relaxed)),
            )
            .finish_non_exhaustive()
    }
}

impl<T, const R: usize> std::fmt::Debug for RwLockReadGuard<'_, T, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RwLockReadGuard")
            .field("inconsistent", &self.held.flag())
            .finish_non_exhaustive()
    }
}

impl<T, const R: usize> std::fmt::Debug for RwLockWriteGuard<'_, T, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RwLockWriteGuard")
            .field("inconsistent", &self.held.flag())
            .finish_non_exhaustive()
    }
}
