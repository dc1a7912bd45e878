//! `Mutex<T>`: a robust, process-shared mutual-exclusion lock.
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
//! The data lives in an `UnsafeCell` and is reached only through a guard, which
//! exists only while its holder's tag is in the lock word; the marker-trait impls
//! below say why the type may sit in shared memory.
#![allow(unsafe_code)]

use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

use crate::layout::{ShmSafe, ShmShared};
use crate::loom::{AtomicU32, AtomicU64, Ordering, UnsafeCell, spin_loop};
use crate::segment::OwnerTag;
use crate::sync::futex;
use crate::sync::{Context, Held, LockError, LockResult};

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

/// A robust mutual-exclusion lock protecting a `T`, placed in a segment and used by
/// many processes.
///
/// If a holder dies (or panics) while holding it, exactly one later locker gets
/// [`LockError::OwnerDied`] carrying the guard; it repairs the data and calls
/// [`MutexGuard::make_consistent`]. Dropping that guard without it makes the mutex
/// [`LockError::NotRecoverable`] for everyone. Not reentrant: a process (a
/// [`Segment`](crate::Segment) handle) that locks twice without unlocking waits
/// for itself, until its timeout. A word that names the caller's attachment while
/// none of its threads holds or is taking the lock (a peer wrote it) is
/// [`LockError::Corrupt`] at once (see [`HeldLocks`](crate::sync::HeldLocks)).
///
/// # Examples
///
/// ```
/// use shmkit::{SegmentOptions, sync::Mutex};
///
/// let seg = SegmentOptions::heap().committed(64 << 10).create()?;
/// let h = seg.find_or_create::<Mutex<u64>>("m", ())?;
/// let m = h.raw(); // the low-level calls, which take the context
/// *m.lock(&seg).unwrap() += 1;
/// assert_eq!(*m.lock(&seg).unwrap(), 1);
/// # Ok::<(), shmkit::Error>(())
/// ```
#[repr(C)]
pub struct Mutex<T> {
    word: AtomicU64,
    seq: AtomicU32,
    _reserved: AtomicU32,
    data: UnsafeCell<T>,
}

// SAFETY: repr(C); two atomics, a reserved atomic and the data, which is ShmSafe;
// the shim's UnsafeCell is repr(transparent) over T; every bit pattern of the words
// is a state the algorithm handles (see the state table).
unsafe impl<T: ShmSafe> ShmSafe for Mutex<T> {}
// SAFETY: the words are atomics; the data sits in an UnsafeCell reached only
// through a guard, that is while holding the lock.
unsafe impl<T: ShmSafe + Send> ShmShared for Mutex<T> {}
// SAFETY: as std's Mutex: access to T is serialised by the lock.
unsafe impl<T: Send> Sync for Mutex<T> {}
// SAFETY: moving the mutex moves the T.
unsafe impl<T: Send> Send for Mutex<T> {}

/// Holds a [`Mutex`]; unlocks on drop.
///
/// Dropped while panicking, it leaves the mutex `ABANDONED`: the next locker gets
/// `OwnerDied`, as if this holder had died.
#[must_use = "the mutex unlocks as soon as the guard is dropped"]
pub struct MutexGuard<'a, T> {
    mutex: &'a Mutex<T>,
    /// Our entry in the attachment's lock record, left after the release; its
    /// owner bit says whether the data is marked inconsistent (so that the guard
    /// stays two words).
    held: Held<'a>,
    /// Makes the guard `Sync` only for `T: Sync` (as std's), `Send` for `T: Send`.
    _data: std::marker::PhantomData<&'a mut T>,
}

impl<T> Mutex<T> {
    /// A new, unlocked mutex (build it in place with
    /// [`Segment::place`](crate::Segment::place)).
    #[cfg(not(shmkit_loom))]
    pub const fn new(value: T) -> Self {
        Self {
            word: AtomicU64::new(0),
            seq: AtomicU32::new(0),
            _reserved: AtomicU32::new(0),
            data: UnsafeCell::new(value),
        }
    }

    /// A new, unlocked mutex (build it in place with
    /// [`Segment::place`](crate::Segment::place)).
    #[cfg(shmkit_loom)]
    pub fn new(value: T) -> Self {
        Self {
            word: AtomicU64::new(0),
            seq: AtomicU32::new(0),
            _reserved: AtomicU32::new(0),
            data: UnsafeCell::new(value),
        }
    }

    /// Builds an unlocked mutex in place over zeroed memory, leaving the data's
    /// zeroed bytes as its value (no copy of a large `T` through the stack).
    ///
    /// # Safety
    ///
    /// `at` is valid for writes of `size_of::<Self>()` bytes, aligned, zeroed, and
    /// used by nobody else until this returns; zeroed bytes are a valid `T`.
    pub(crate) unsafe fn init_in_place(at: std::ptr::NonNull<Self>) {
        let p = at.as_ptr();
        // SAFETY: the caller's contract: in bounds, aligned, exclusive. Each atomic
        // is written (never assumed from zero bytes: under loom an atomic is not
        // its bytes).
        unsafe {
            std::ptr::addr_of_mut!((*p).word).write(AtomicU64::new(0));
            std::ptr::addr_of_mut!((*p).seq).write(AtomicU32::new(0));
            std::ptr::addr_of_mut!((*p)._reserved).write(AtomicU32::new(0));
            #[cfg(shmkit_loom)]
            std::ptr::addr_of_mut!((*p).data).write(UnsafeCell::new(std::mem::zeroed()));
        }
    }

    /// Takes over a mutex that a holder left [`NotRecoverable`](LockError::NotRecoverable):
    /// returns a guard marked inconsistent (as for `OwnerDied`), or `None` if the
    /// mutex is not in that state. Rebuild the data *completely* (it was left
    /// half-updated by a holder that died, and nobody repaired it), then call
    /// [`MutexGuard::make_consistent`]; dropping the guard without it leaves the
    /// mutex not recoverable again.
    ///
    /// Always sound: a not-recoverable mutex has no holder, so the guard is the
    /// only one. What it cannot know is whether the data is usable: that is the
    /// caller's rebuild.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmkit::{SegmentOptions, sync::{LockError, Mutex}};
    /// let seg = SegmentOptions::heap().create()?;
    /// let m = seg.find_or_create::<Mutex<u64>>("m", ())?;
    /// let peer = seg.try_clone()?;
    /// std::mem::forget(m.raw().lock(&peer).unwrap());
    /// // `peer`'s process is killed here (kill -9)
    /// # peer.simulate_crash(); // test support: the same as a SIGKILL
    /// drop(m.raw().lock(&seg).unwrap_err().into_owner_died()); // unrepaired
    /// assert!(matches!(m.raw().lock(&seg), Err(LockError::NotRecoverable)));
    /// let mut g = m.raw().reset(&seg).expect("not recoverable");
    /// *g = 0;
    /// g.make_consistent();
    /// drop(g);
    /// assert_eq!(*m.lock().unwrap(), 0);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn reset<'a>(&'a self, cx: &'a impl Context) -> Option<MutexGuard<'a, T>> {
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
                return Some(self.guard(true, held));
            }
        }
    }

    /// Locks, waiting as long as it takes for a live holder.
    ///
    /// # Errors
    ///
    /// [`LockError::OwnerDied`] (holding the lock) if the previous holder died;
    /// [`LockError::NotRecoverable`]; [`LockError::Corrupt`] if the word names the
    /// caller's own attachment while none of its threads holds or is taking this
    /// lock (a forged or stray write; a lock held by another thread of the
    /// attachment, or by this one, is waited for).
    ///
    /// # Examples
    ///
    /// See [`Mutex`].
    #[inline]
    pub fn lock<'a>(&'a self, cx: &'a impl Context) -> LockResult<MutexGuard<'a, T>> {
        self.lock_fast(cx, None)
    }

    /// The uncontended path (one CAS), then the slow path with `deadline`.
    #[inline]
    fn lock_fast<'a>(
        &'a self,
        cx: &'a impl Context,
        deadline: Option<Instant>,
    ) -> LockResult<MutexGuard<'a, T>> {
        let me = cx.me().bits();
        let held = Held::enter(cx.held_locks(), self.addr());
        // SYNC: Acquire pairs with the Release swap in MutexGuard::drop: the previous
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
            return Ok(self.guard(false, held));
        }
        self.lock_slow(cx, deadline, false, held)
    }

    /// Locks if that needs no waiting: free, or held by a dead holder (then
    /// `OwnerDied`).
    ///
    /// # Errors
    ///
    /// [`LockError::WouldBlock`] if a live holder has it; otherwise as
    /// [`lock`](Self::lock).
    ///
    /// # Examples
    ///
    /// ```
    /// use shmkit::{SegmentOptions, sync::{LockError, Mutex}};
    /// let seg = SegmentOptions::heap().committed(64 << 10).create()?;
    /// let peer = seg.try_clone()?;
    /// let h = seg.find_or_create::<Mutex<u32>>("m", ())?;
    /// let m = h.raw(); // the low-level calls, which take the context
    /// let held = m.lock(&seg).unwrap();
    /// assert!(matches!(m.try_lock(&peer), Err(LockError::WouldBlock)));
    /// drop(held);
    /// assert!(m.try_lock(&peer).is_ok());
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn try_lock<'a>(&'a self, cx: &'a impl Context) -> LockResult<MutexGuard<'a, T>> {
        let held = Held::enter(cx.held_locks(), self.addr());
        self.lock_slow(cx, None, true, held)
    }

    /// Locks, waiting at most `timeout` for a live holder.
    ///
    /// # Errors
    ///
    /// [`LockError::TimedOut`]; otherwise as [`lock`](Self::lock).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use shmkit::{SegmentOptions, sync::{LockError, Mutex}};
    /// let seg = SegmentOptions::heap().committed(64 << 10).create()?;
    /// let peer = seg.try_clone()?;
    /// let h = seg.find_or_create::<Mutex<u32>>("m", ())?;
    /// let m = h.raw(); // the low-level calls, which take the context
    /// let _held = m.lock(&seg).unwrap();
    /// let r = m.lock_for(&peer, Duration::from_millis(10));
    /// assert!(matches!(r, Err(LockError::TimedOut)));
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn lock_for<'a>(
        &'a self,
        cx: &'a impl Context,
        timeout: Duration,
    ) -> LockResult<MutexGuard<'a, T>> {
        match Instant::now().checked_add(timeout) {
            Some(deadline) => self.lock_until(cx, deadline),
            None => self.lock(cx),
        }
    }

    /// Locks, waiting until `deadline` at the latest for a live holder.
    ///
    /// # Errors
    ///
    /// [`LockError::TimedOut`]; otherwise as [`lock`](Self::lock).
    ///
    /// # Examples
    ///
    /// See [`lock_for`](Self::lock_for).
    pub fn lock_until<'a>(
        &'a self,
        cx: &'a impl Context,
        deadline: Instant,
    ) -> LockResult<MutexGuard<'a, T>> {
        self.lock_fast(cx, Some(deadline))
    }

    /// Whether the mutex is held right now (a snapshot, for diagnostics).
    ///
    /// # Examples
    ///
    /// ```
    /// let m = shmkit::sync::Mutex::new(0u8);
    /// assert!(!m.is_locked());
    /// ```
    pub fn is_locked(&self) -> bool {
        self.word.load(Ordering::Relaxed) & !WAITERS != 0
    }

    /// Mutable access without locking, through exclusive ownership.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut m = shmkit::sync::Mutex::new(1u8);
    /// *m.get_mut() += 1;
    /// ```
    pub fn get_mut(&mut self) -> &mut T {
        // SAFETY: `&mut self` excludes every other access.
        self.data.with_mut(|p| unsafe { &mut *p })
    }

    #[inline]
    fn guard<'a>(&'a self, inconsistent: bool, mut held: Held<'a>) -> MutexGuard<'a, T> {
        held.set_flag(inconsistent);
        MutexGuard {
            mutex: self,
            held,
            _data: std::marker::PhantomData,
        }
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
    ) -> LockResult<MutexGuard<'a, T>> {
        let me = cx.me().bits();
        if OwnerTag::from_word(me).is_nobody() {
            return Err(LockError::NotAttached);
        }
        let mut spins = 0;
        // After sleeping, keep WAITERS when acquiring: others may sleep too.
        let mut keep_waiters = 0;
        loop {
            let w = self.word.load(Ordering::Relaxed);
            if w == 0 {
                held.trying(self.addr());
                // SYNC: Acquire pairs with the Release swap in MutexGuard::drop;
                // Release publishes our lock-record entry (as in lock_fast).
                match self.word.compare_exchange(
                    0,
                    me | keep_waiters,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => return Ok(self.guard(false, held)),
                    Err(_) => continue,
                }
            }
            if w & !WAITERS == NOT_RECOVERABLE {
                return Err(LockError::NotRecoverable);
            }
            let owner = OwnerTag::from_word(w);
            if owner.bits() == me {
                // Our own attachment's tag: another of its threads holds it (wait),
                // or nobody of ours does and a peer wrote it. Checked at first
                // sight and after every sleep, not while spinning.
                if (spins == 0 || spins >= SPINS) && held.forged(self.addr(), || self.names(me)) {
                    return Err(LockError::Corrupt { word: w });
                }
            } else if (spins >= SPINS || try_only || owner.is_nobody()) && !cx.is_alive_owner(owner)
            {
                // The holder is gone: take over, marking the data suspect. Exactly one
                // CAS from this word succeeds. SYNC: Acquire pairs with the dead
                // holder's last Release (whatever it published before dying);
                // Release publishes our lock-record entry (as in lock_fast).
                let new = me | INCONSISTENT | (w & WAITERS);
                held.trying(self.addr());
                match self
                    .word
                    .compare_exchange(w, new, Ordering::AcqRel, Ordering::Relaxed)
                {
                    Ok(_) => return Err(LockError::OwnerDied(self.guard(true, held))),
                    Err(_) => continue,
                }
            }
            if try_only {
                return Err(LockError::WouldBlock);
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
                return Err(LockError::TimedOut);
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

impl<T: Default> Default for Mutex<T> {
    fn default() -> Self {
        Self::new(T::default())
    }
}

impl<T> std::fmt::Debug for Mutex<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mutex")
            .field(
                "word",
                &format_args!("{:#018x}", self.word.load(Ordering::Relaxed)),
            )
            .finish_non_exhaustive()
    }
}

impl<'a, T> MutexGuard<'a, T> {
    /// Declares the data repaired after [`LockError::OwnerDied`]: the mutex goes back
    /// to normal service. A no-op on a consistent lock.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmkit::{SegmentOptions, sync::{LockError, Mutex}};
    /// let seg = SegmentOptions::heap().committed(64 << 10).create()?;
    /// let peer = seg.try_clone()?;
    /// let h = seg.find_or_create::<Mutex<u32>>("m", ())?;
    /// let m = h.raw(); // the low-level calls, which take the context
    /// std::mem::forget(m.lock(&peer).unwrap()); // the holder...
    /// // `peer`'s process is killed here (kill -9), holding it
    /// # peer.simulate_crash(); // test support: the same as a SIGKILL
    /// let mut g = m.lock(&seg).unwrap_err().into_owner_died().unwrap();
    /// *g = 0; // repair
    /// g.make_consistent();
    /// drop(g);
    /// assert!(m.lock(&seg).is_ok());
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn make_consistent(&mut self) {
        if self.held.flag() {
            // The word is ours; only waiters may set WAITERS concurrently, hence
            // the RMW. Relaxed: nothing is published by clearing the flag (the
            // unlock's Release publishes the repaired data).
            self.mutex.word.fetch_and(!INCONSISTENT, Ordering::Relaxed);
            self.held.set_flag(false);
        }
    }

    /// The mutex this guard holds.
    pub(crate) fn mutex(&self) -> &'a Mutex<T> {
        self.mutex
    }

    /// Whether the data is still marked inconsistent (after `OwnerDied`, until
    /// [`make_consistent`](Self::make_consistent)).
    pub fn is_inconsistent(&self) -> bool {
        self.held.flag()
    }
}

impl<T> std::fmt::Debug for MutexGuard<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MutexGuard")
            .field("inconsistent", &self.held.flag())
            .finish_non_exhaustive()
    }
}

impl<T> Deref for MutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard holds the lock: no other holder accesses the data.
        self.mutex.data.with(|p| unsafe { &*p })
    }
}

impl<T> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in deref, and `&mut self` makes this the only access.
        self.mutex.data.with_mut(|p| unsafe { &mut *p })
    }
}

impl<T> MutexGuard<'_, T> {
    /// Unlocks without declaring the data consistent, *passing the repair on*: the
    /// next locker gets [`LockError::OwnerDied`] as if this holder had died. For a
    /// holder that got `OwnerDied` and cannot repair now (dropping the guard
    /// instead makes the mutex not recoverable).
    ///
    /// # Examples
    ///
    /// ```
    /// use shmkit::sync::{LockError, Mutex};
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let m = seg.find_or_create::<Mutex<u8>>("m", ())?;
    /// m.raw().lock(&seg).unwrap().abandon();
    /// assert!(matches!(m.raw().lock(&seg), Err(LockError::OwnerDied(_))));
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn abandon(self) {
        let mut this = std::mem::ManuallyDrop::new(self);
        this.mutex.release(ABANDONED);
        // Leave the lock record after the release (as a drop does).
        drop(std::mem::take(&mut this.held));
    }
}

impl<T> crate::sync::Abandon for MutexGuard<'_, T> {
    fn abandon(self) {
        MutexGuard::abandon(self);
    }
}

impl<T> Drop for MutexGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        let end = if std::thread::panicking() {
            ABANDONED
        } else if self.held.flag() {
            NOT_RECOVERABLE
        } else {
            0
        };
        self.mutex.release(end);
    }
}
