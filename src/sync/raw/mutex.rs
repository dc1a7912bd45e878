//! `RawMutex`: the robust, process-shared mutual-exclusion lock word under
//! [`Mutex<T>`](crate::sync::Mutex).
//!
//! # Lock word (`word`, 64 bits)
//!
//! | bits   | meaning                                                        |
//! |--------|----------------------------------------------------------------|
//! | 0..46  | holder's incarnation bits ([`OwnerTag`]); 0 = names nobody      |
//! | 46..62 | holder's registry slot                                          |
//! | 62     | `WAITERS`: someone may be sleeping on `seq`                     |
//! | 63     | `INCONSISTENT`: the data may be half-updated (holder died)      |
//!
//! | word                          | state                                        |
//! |-------------------------------|----------------------------------------------|
//! | `0`                           | unlocked                                     |
//! | `tag [| WAITERS]`             | held by `tag`                                |
//! | `tag | INCONSISTENT [| W]`    | held by `tag`, which got `OwnerDied`         |
//! | `NOT_RECOVERABLE [| W]`       | a holder dropped an inconsistent guard       |
//! | `ABANDONED [| W]`             | a holder panicked: next locker gets `OwnerDied` |
//! | any other word naming nobody, or a dead holder | taken over by the next locker, who gets `OwnerDied` |
//! | the locker's own tag, none of its attachment's threads taking or holding it | forged: `LockError::Corrupt` |
//!
//! Uncontended `lock` is one compare-and-swap `0 → tag` and `unlock` one swap to
//! `0`: no syscall. Contended lockers spin briefly, then set `WAITERS` and sleep on
//! the 32-bit futex word `seq`, which every unlock that saw `WAITERS` bumps before
//! waking one sleeper. Sleeps are sliced (2 ms): between slices a waiter asks the
//! registry whether the holder is alive, so a holder killed with SIGKILL is noticed
//! within a few milliseconds, without any help from the dead.
//!
//! Every lock call enters the lock in its attachment's lock record first (a
//! [`HeldLocks`](crate::sync::HeldLocks)) and leaves it after the release, so that a word
//! naming the caller's own attachment can be told to be a hold by another of its
//! threads (wait) or a forgery (fail at once). The CASes that put a tag in the
//! word are therefore `AcqRel`: their release half publishes the entry.
//!
//! # A process dying inside each operation
//!
//! - in `lock` before its CAS, or while spinning or sleeping: nothing changed (a
//!   `WAITERS` bit it set only costs one extra wake);
//! - holding the lock (anywhere between its CAS and its unlock): the word names a
//!   dead holder; the next locker takes it over with `OwnerDied`;
//! - in `unlock` after its swap: the lock is free; a wake it did not make is made
//!   up for by the sleepers' slices.
//!
//! The algorithm is the classic futex mutex (Drepper, "Futexes Are Tricky", 2011),
//! with the holder's identity in the word as in the kernel's robust futexes, and
//! liveness from shmkit's registry instead of the kernel's robust list.
//!
//! # Safety
//!
//! `unlock`, `abandon` and `make_consistent` are `unsafe`: they act on the word as
//! its holder, so the caller must hold the lock through the `Acquired` it passes.
#![allow(unsafe_code)]

use std::time::{Duration, Instant};

use super::{Acquired, RawLockError};
use crate::layout::{ShmSafe, ShmShared};
use crate::loom::{AtomicU32, AtomicU64, Ordering, spin_loop};
use crate::segment::OwnerTag;
use crate::sync::futex;
use crate::sync::{Context, Held};

/// Someone may be sleeping on `seq`.
const WAITERS: u64 = 1 << 62;
/// The protected data may be inconsistent.
const INCONSISTENT: u64 = 1 << 63;
/// A holder dropped an inconsistent guard: nobody may lock again.
const NOT_RECOVERABLE: u64 = INCONSISTENT;
/// A holder panicked: the next locker takes over with `OwnerDied`.
const ABANDONED: u64 = INCONSISTENT | (0xffff << 46);
/// Spins before sleeping (few under loom, where each spin is a scheduling point).
const SPINS: u32 = if cfg!(shmkit_loom) { 2 } else { 64 };
/// Longest sleep between two liveness checks of the holder.
const LIVENESS_SLICE: Duration = Duration::from_millis(2);

/// The lock word of a robust, process-shared mutex (see the module docs for the
/// word's states): 16 bytes, placed in a segment and used by many processes.
///
/// Not reentrant. An acquisition whose [`Acquired::inconsistent`] is set took the
/// lock over from a holder that died (or panicked, or passed the repair on with
/// [`abandon`](Self::abandon)); unlocking it without
/// [`make_consistent`](Self::make_consistent) makes the lock
/// [`NotRecoverable`](RawLockError::NotRecoverable).
#[repr(C)]
pub struct RawMutex {
    word: AtomicU64,
    seq: AtomicU32,
    _reserved: AtomicU32,
}

// The segment layout: `word` at 0, `seq` at 8, 16 bytes in all (as `Mutex<T>`'s
// head before the split; a data wrapper's data follows at 16).
#[cfg(not(shmkit_loom))]
const _: () = {
    assert!(std::mem::size_of::<RawMutex>() == 16);
    assert!(std::mem::align_of::<RawMutex>() == 8);
    assert!(std::mem::offset_of!(RawMutex, seq) == 8);
};

// SAFETY: repr(C); two atomics and a reserved atomic; every bit pattern of the
// words is a state the algorithm handles (see the state table).
unsafe impl ShmSafe for RawMutex {}
// SAFETY: the words are atomics, shared by design.
unsafe impl ShmShared for RawMutex {}

impl RawMutex {
    /// A new, unlocked mutex word.
    #[cfg(not(shmkit_loom))]
    pub const fn new() -> Self {
        Self {
            word: AtomicU64::new(0),
            seq: AtomicU32::new(0),
            _reserved: AtomicU32::new(0),
        }
    }

    /// A new, unlocked mutex word.
    #[cfg(shmkit_loom)]
    pub fn new() -> Self {
        Self {
            word: AtomicU64::new(0),
            seq: AtomicU32::new(0),
            _reserved: AtomicU32::new(0),
        }
    }

    /// Builds an unlocked word in place.
    ///
    /// # Safety
    ///
    /// `p` is valid for writes of `size_of::<Self>()` bytes, aligned, and used by
    /// nobody else until this returns.
    pub(crate) unsafe fn init_in_place(p: *mut Self) {
        // SAFETY: the caller's contract: in bounds, aligned, exclusive. Each atomic
        // is written (never assumed from zero bytes: under loom an atomic is not
        // its bytes).
        unsafe {
            std::ptr::addr_of_mut!((*p).word).write(AtomicU64::new(0));
            std::ptr::addr_of_mut!((*p).seq).write(AtomicU32::new(0));
            std::ptr::addr_of_mut!((*p)._reserved).write(AtomicU32::new(0));
        }
    }

    /// Takes over a lock that a holder left not recoverable: an acquisition
    /// marked inconsistent, or `None` if the lock is not in that state (or `cx`
    /// names nobody). Always sound: a not-recoverable lock has no holder.
    pub fn reset<'a>(&'a self, cx: &'a impl Context) -> Option<Acquired<'a>> {
        let me = cx.me().bits();
        if OwnerTag::from_word(me).is_nobody() {
            return None;
        }
        let held = Held::enter(cx.held_locks(), self.addr());
        loop {
            let w = self.word.load(Ordering::Relaxed);
            if w & !WAITERS != NOT_RECOVERABLE {
                return None;
            }
            // SYNC: Acquire pairs with the Release swap of the holder that left it
            // not recoverable; Release publishes our lock-record entry (as every
            // CAS that puts our tag in the word: see `sync::held`).
            if self
                .word
                .compare_exchange(
                    w,
                    me | INCONSISTENT | (w & WAITERS),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
            {
                return Some(Acquired::new(held, true));
            }
        }
    }

    /// Locks, waiting until `deadline` (`None`: as long as it takes) for a live
    /// holder: the uncontended path (one CAS), then the slow path.
    ///
    /// # Errors
    ///
    /// [`RawLockError::TimedOut`] past `deadline`; [`RawLockError::NotRecoverable`];
    /// [`RawLockError::NotAttached`] for a context naming nobody;
    /// [`RawLockError::Corrupt`] if the word names the caller's own attachment while
    /// none of its threads holds or is taking this lock.
    #[inline]
    pub fn lock<'a>(
        &'a self,
        cx: &'a impl Context,
        deadline: Option<Instant>,
    ) -> Result<Acquired<'a>, RawLockError> {
        let me = cx.me().bits();
        let held = Held::enter(cx.held_locks(), self.addr());
        // SYNC: Acquire pairs with the Release swap in `release`: the previous
        // holder's writes to the data happen before ours. Release publishes our
        // lock-record entry to whoever later reads our tag here (`sync::held`). A
        // caller naming nobody goes to the slow path, which refuses it with
        // NotAttached.
        if !OwnerTag::from_word(me).is_nobody()
            && self
                .word
                .compare_exchange(0, me, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            return Ok(Acquired::new(held, false));
        }
        self.lock_slow(cx, deadline, false, held)
    }

    /// Locks if that needs no waiting: free, or held by a dead holder (then the
    /// acquisition is inconsistent).
    ///
    /// # Errors
    ///
    /// [`RawLockError::WouldBlock`] if a live holder has it; otherwise as
    /// [`lock`](Self::lock).
    pub fn try_lock<'a>(&'a self, cx: &'a impl Context) -> Result<Acquired<'a>, RawLockError> {
        let held = Held::enter(cx.held_locks(), self.addr());
        self.lock_slow(cx, None, true, held)
    }

    /// Declares the data repaired: the lock goes back to normal service. A no-op
    /// on a consistent acquisition.
    ///
    /// # Safety
    ///
    /// `acquired` is the caller's current hold of *this* lock.
    pub unsafe fn make_consistent(&self, acquired: &mut Acquired<'_>) {
        if acquired.inconsistent() {
            // The word is ours; only waiters may set WAITERS concurrently, hence
            // the RMW. Relaxed: nothing is published by clearing the flag (the
            // unlock's Release publishes the repaired data).
            self.word.fetch_and(!INCONSISTENT, Ordering::Relaxed);
            acquired.set_inconsistent(false);
        }
    }

    /// Unlocks: free again, or not recoverable if the acquisition is still
    /// inconsistent, or (called while panicking) abandoned, so that the next
    /// locker is told the data may be half-updated.
    ///
    /// # Safety
    ///
    /// `acquired` is the caller's current hold of *this* lock (it came from this
    /// lock's `lock`, `try_lock` or `reset`, and was not unlocked yet).
    #[inline]
    pub unsafe fn unlock(&self, acquired: Acquired<'_>) {
        let end = if std::thread::panicking() {
            ABANDONED
        } else if acquired.inconsistent() {
            NOT_RECOVERABLE
        } else {
            0
        };
        self.release(end);
        // Leave the lock record after the release.
        drop(acquired);
    }

    /// Unlocks without declaring the data consistent, passing the repair on: the
    /// next locker's acquisition is inconsistent, as if this holder had died.
    ///
    /// # Safety
    ///
    /// As [`unlock`](Self::unlock).
    pub unsafe fn abandon(&self, acquired: Acquired<'_>) {
        self.release(ABANDONED);
        // Leave the lock record after the release.
        drop(acquired);
    }

    /// Whether the lock is held right now (a snapshot, for diagnostics).
    pub fn is_locked(&self) -> bool {
        self.word.load(Ordering::Relaxed) & !WAITERS != 0
    }

    /// The lock word now (a snapshot, for diagnostics).
    pub(crate) fn word(&self) -> u64 {
        self.word.load(Ordering::Relaxed)
    }

    /// The lock's identity in a lock record.
    #[inline]
    fn addr(&self) -> usize {
        std::ptr::from_ref(self).addr()
    }

    /// Everything but the uncontended fast path: take over from a dead holder,
    /// spin, then sleep in liveness-checked slices.
    #[cold]
    fn lock_slow<'a>(
        &'a self,
        cx: &'a impl Context,
        deadline: Option<Instant>,
        try_only: bool,
        mut held: Held<'a>,
    ) -> Result<Acquired<'a>, RawLockError> {
        let me = cx.me().bits();
        if OwnerTag::from_word(me).is_nobody() {
            return Err(RawLockError::NotAttached);
        }
        let mut spins = 0;
        // After sleeping, keep WAITERS when acquiring: others may sleep too.
        let mut keep_waiters = 0;
        loop {
            let w = self.word.load(Ordering::Relaxed);
            if w == 0 {
                held.trying(self.addr());
                // SYNC: Acquire pairs with the Release swap in `release`; Release
                // publishes our lock-record entry (as in `lock`).
                match self.word.compare_exchange(
                    0,
                    me | keep_waiters,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => return Ok(Acquired::new(held, false)),
                    Err(_) => continue,
                }
            }
            if w & !WAITERS == NOT_RECOVERABLE {
                return Err(RawLockError::NotRecoverable);
            }
            let owner = OwnerTag::from_word(w);
            if owner.bits() == me {
                // Our own attachment's tag: another of its threads holds it (wait),
                // or nobody of ours does and a peer wrote it. Checked at first
                // sight and after every sleep, not while spinning.
                if (spins == 0 || spins >= SPINS) && held.forged(self.addr(), || self.names(me)) {
                    return Err(RawLockError::Corrupt { word: w });
                }
            } else if (spins >= SPINS || try_only || owner.is_nobody()) && !cx.is_alive_owner(owner)
            {
                // The holder is gone: take over, marking the data suspect. Exactly one
                // CAS from this word succeeds. SYNC: Acquire pairs with the dead
                // holder's last Release (whatever it published before dying);
                // Release publishes our lock-record entry (as in `lock`).
                let new = me | INCONSISTENT | (w & WAITERS);
                held.trying(self.addr());
                match self
                    .word
                    .compare_exchange(w, new, Ordering::AcqRel, Ordering::Relaxed)
                {
                    Ok(_) => return Ok(Acquired::new(held, true)),
                    Err(_) => continue,
                }
            }
            if try_only {
                return Err(RawLockError::WouldBlock);
            }
            // Neither holding nor about to CAS our tag in, until `trying` above.
            held.waiting(self.addr());
            if spins < SPINS {
                spins += 1;
                spin_loop();
                continue;
            }
            // SYNC: Acquire keeps the WAITERS CAS below after this load, so a bump
            // of `seq` by an unlock that saw WAITERS is either seen here or makes the
            // futex wait return at once.
            let s = self.seq.load(Ordering::Acquire);
            // Always validate `w` after reading `seq` (also when WAITERS is already
            // set): an unlock between our load of `w` and of `seq` must not leave us
            // asleep on a free lock.
            if self
                .word
                .compare_exchange(w, w | WAITERS, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            if !futex::wait(&self.seq, s, deadline, LIVENESS_SLICE) {
                return Err(RawLockError::TimedOut);
            }
            keep_waiters = WAITERS;
        }
    }

    /// Whether the word names `me` now. SYNC: Acquire pairs with the release CAS
    /// that put our tag there, if one of our threads did: its lock-record entry is
    /// then visible to the check that follows (`sync::held`).
    #[cold]
    fn names(&self, me: u64) -> bool {
        OwnerTag::from_word(self.word.load(Ordering::Acquire)).bits() == me
    }

    /// Releases the lock, leaving `end` in the word (0, `NOT_RECOVERABLE` or
    /// `ABANDONED`), and wakes sleepers.
    #[inline]
    fn release(&self, end: u64) {
        // SYNC: Release pairs with the Acquire CAS in lock / lock_slow: our writes to
        // the data happen before the next holder's.
        let prev = self.word.swap(end, Ordering::Release);
        if prev & WAITERS != 0 || end != 0 {
            self.wake(end != 0);
        }
    }

    #[cold]
    fn wake(&self, all: bool) {
        // SYNC: Release pairs with the Acquire load of `seq` in lock_slow.
        self.seq.fetch_add(1, Ordering::Release);
        if all {
            futex::wake_all(&self.seq);
        } else {
            futex::wake_one(&self.seq);
        }
    }
}

impl Default for RawMutex {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for RawMutex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawMutex")
            .field("word", &format_args!("{:#018x}", self.word()))
            .finish_non_exhaustive()
    }
}

/// Holds a [`RawMutex`] that protects no data of its own (or data the holder
/// reaches by other means); unlocks on drop, as a data guard does.
#[must_use = "the mutex unlocks as soon as the guard is dropped"]
#[derive(Debug)]
pub struct RawMutexGuard<'a> {
    raw: &'a RawMutex,
    acquired: Acquired<'a>,
}

impl<'a> RawMutexGuard<'a> {
    /// Locks `raw` (see [`RawMutex::lock`]) and wraps the acquisition.
    ///
    /// # Errors
    ///
    /// As [`RawMutex::lock`].
    #[inline]
    pub fn lock(
        raw: &'a RawMutex,
        cx: &'a impl Context,
        deadline: Option<Instant>,
    ) -> Result<Self, RawLockError> {
        let acquired = raw.lock(cx, deadline)?;
        Ok(Self { raw, acquired })
    }

    /// Whether the data is marked inconsistent (see [`Acquired::inconsistent`]).
    pub fn inconsistent(&self) -> bool {
        self.acquired.inconsistent()
    }

    /// Declares the data repaired (see [`RawMutex::make_consistent`]).
    pub fn make_consistent(&mut self) {
        // SAFETY: the guard holds `raw` through `acquired` (its constructors'
        // contract), until its drop.
        unsafe { self.raw.make_consistent(&mut self.acquired) }
    }
}

impl Drop for RawMutexGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        let acquired = std::mem::take(&mut self.acquired);
        // SAFETY: the guard holds `raw` through `acquired`, taken out once, here.
        unsafe { self.raw.unlock(acquired) }
    }
}
