//! `Mutex<T>`: a robust, process-shared mutual-exclusion lock: a
//! [`RawMutex`] word (its lock-word table, protocol and "a process dying inside
//! each operation" are in `sync/raw/mutex.rs`) followed by the data.
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
use crate::loom::UnsafeCell;
use crate::sync::raw::{Acquired, RawLockError, RawMutex, to_lock_result};
use crate::sync::{Context, LockError, LockResult};

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
    raw: RawMutex,
    data: UnsafeCell<T>,
}

// The data follows the 16-byte word, as before the split.
#[cfg(not(shmkit_loom))]
const _: () = assert!(std::mem::offset_of!(Mutex<u64>, data) == 16);

// SAFETY: repr(C); the lock word (ShmSafe: every bit pattern of its words is a
// state the algorithm handles) and the data, which is ShmSafe; the shim's
// UnsafeCell is repr(transparent) over T. The layout is the one before the split:
// the raw word's 16 bytes (align 8, no tail padding), then the data.
unsafe impl<T: ShmSafe> ShmSafe for Mutex<T> {}
// SAFETY: the words are atomics (RawMutex is ShmShared); the data sits in an
// UnsafeCell reached only through a guard, that is while holding the lock.
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
    /// Our hold of `mutex.raw` (its entry in the attachment's lock record, left
    /// after the release, carries the "inconsistent" flag, so that the guard stays
    /// two words).
    acquired: Acquired<'a>,
    /// Makes the guard `Sync` only for `T: Sync` (as std's), `Send` for `T: Send`.
    _data: std::marker::PhantomData<&'a mut T>,
}

impl<T> Mutex<T> {
    /// A new, unlocked mutex (build it in place with
    /// [`Segment::place`](crate::Segment::place)).
    #[cfg(not(shmkit_loom))]
    pub const fn new(value: T) -> Self {
        Self {
            raw: RawMutex::new(),
            data: UnsafeCell::new(value),
        }
    }

    /// A new, unlocked mutex (build it in place with
    /// [`Segment::place`](crate::Segment::place)).
    #[cfg(shmkit_loom)]
    pub fn new(value: T) -> Self {
        Self {
            raw: RawMutex::new(),
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
        // SAFETY: the caller's contract: in bounds, aligned, exclusive; the raw
        // word's own contract is the same, for its part of the bytes. Under loom
        // the data is written too (an UnsafeCell is not its bytes there).
        unsafe {
            RawMutex::init_in_place(std::ptr::addr_of_mut!((*p).raw));
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
        self.raw.reset(cx).map(|a| self.guard(a))
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

    /// The raw word's lock (the uncontended path is one CAS) with `deadline`.
    #[inline]
    fn lock_fast<'a>(
        &'a self,
        cx: &'a impl Context,
        deadline: Option<Instant>,
    ) -> LockResult<MutexGuard<'a, T>> {
        self.wrap(self.raw.lock(cx, deadline))
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
        self.wrap(self.raw.try_lock(cx))
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
        self.raw.is_locked()
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

    /// A guard over the acquisition `acquired` of `self.raw`.
    #[inline]
    fn guard<'a>(&'a self, acquired: Acquired<'a>) -> MutexGuard<'a, T> {
        MutexGuard {
            mutex: self,
            acquired,
            _data: std::marker::PhantomData,
        }
    }

    /// A raw acquisition as this wrapper reports it (`OwnerDied` if inconsistent).
    #[inline]
    fn wrap<'a>(
        &'a self,
        r: Result<Acquired<'a>, RawLockError>,
    ) -> Result<MutexGuard<'a, T>, LockError<MutexGuard<'a, T>>> {
        to_lock_result(r, Acquired::inconsistent, |a| self.guard(a))
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
            .field("word", &format_args!("{:#018x}", self.raw.word()))
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
        // SAFETY: the guard holds `mutex.raw` through `acquired` until its drop.
        unsafe { self.mutex.raw.make_consistent(&mut self.acquired) }
    }

    /// The mutex this guard holds.
    pub(crate) fn mutex(&self) -> &'a Mutex<T> {
        self.mutex
    }

    /// Whether the data is still marked inconsistent (after `OwnerDied`, until
    /// [`make_consistent`](Self::make_consistent)).
    pub fn is_inconsistent(&self) -> bool {
        self.acquired.inconsistent()
    }
}

impl<T> std::fmt::Debug for MutexGuard<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MutexGuard")
            .field("inconsistent", &self.acquired.inconsistent())
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
        let acquired = std::mem::take(&mut this.acquired);
        // SAFETY: the guard held `mutex.raw` through `acquired`, taken out once
        // here (the guard is not dropped: ManuallyDrop).
        unsafe { this.mutex.raw.abandon(acquired) }
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
        let acquired = std::mem::take(&mut self.acquired);
        // SAFETY: the guard holds `mutex.raw` through `acquired`, taken out once,
        // here. Unlocking while panicking abandons (the next locker gets
        // `OwnerDied`); an inconsistent hold leaves the mutex not recoverable.
        unsafe { self.mutex.raw.unlock(acquired) }
    }
}
