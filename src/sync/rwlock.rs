//! `RwLock<T, R>`: many readers or one writer, robust for writers *and* readers:
//! a [`RawRwLock`] (its layout, protocol and "a process dying inside each
//! operation" are in `sync/raw/rwlock.rs`) followed by the data.
//!
//! # Safety
//!
//! The data lives in an `UnsafeCell` and is reached only through guards, which
//! exist only while their holder's share or tag is in the lock words.
#![allow(unsafe_code)]

use std::mem::ManuallyDrop;
use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

use crate::layout::{ShmSafe, ShmShared};
use crate::loom::UnsafeCell;
use crate::sync::raw::{Acquired, RawLockError, RawRwLock, ReadAcquired, to_lock_result};
use crate::sync::{Context, LockError, LockResult};

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
    raw: RawRwLock<READERS>,
    data: UnsafeCell<T>,
}

// The data follows the reader entries, as before the split.
#[cfg(not(shmkit_loom))]
const _: () = assert!(std::mem::offset_of!(RwLock<u64, 128>, data) == 24 + 8 * 128);

// SAFETY: repr(C): the lock words (ShmSafe: atomics, every bit pattern handled)
// and the ShmSafe data in a repr(transparent) UnsafeCell. The layout is the one
// before the split: the raw words' 24 + 8 * R bytes (align 8, no tail padding),
// then the data.
unsafe impl<T: ShmSafe, const R: usize> ShmSafe for RwLock<T, R> {}
// SAFETY: the words are atomics; the data is reached only through guards.
unsafe impl<T: ShmSafe + Send + Sync, const R: usize> ShmShared for RwLock<T, R> {}
// SAFETY: as std's RwLock: readers share &T, a writer has &mut T alone.
unsafe impl<T: Send + Sync, const R: usize> Sync for RwLock<T, R> {}

/// Shared access to an [`RwLock`]'s data; releases the read lock on drop.
#[must_use = "the read lock is released as soon as the guard is dropped"]
pub struct RwLockReadGuard<'a, T, const R: usize = 128> {
    lock: &'a RwLock<T, R>,
    /// Our share (reader entry, incarnation bits, and the lock-record entry whose
    /// owner bit says whether the data is marked inconsistent); taken out once,
    /// in drop.
    share: ManuallyDrop<ReadAcquired<'a>>,
}

/// Exclusive access to an [`RwLock`]'s data; releases the write lock on drop.
#[must_use = "the write lock is released as soon as the guard is dropped"]
pub struct RwLockWriteGuard<'a, T, const R: usize = 128> {
    lock: &'a RwLock<T, R>,
    /// Our write hold (its lock-record entry, left after the release, carries the
    /// "inconsistent" flag).
    acquired: Acquired<'a>,
}

impl<T, const READERS: usize> RwLock<T, READERS> {
    /// A new, unlocked lock (build it in place with
    /// [`Segment::place`](crate::Segment::place)).
    pub fn new(value: T) -> Self {
        Self {
            raw: RawRwLock::new(),
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
    pub(crate) unsafe fn init_in_place(at: std::ptr::NonNull<Self>) {
        let p = at.as_ptr();
        // SAFETY: the caller's contract: in bounds, aligned, exclusive; the raw
        // words' own contract is the same, for their part of the bytes. Under
        // loom the data is written too (an UnsafeCell is not its bytes there).
        unsafe {
            RawRwLock::init_in_place(std::ptr::addr_of_mut!((*p).raw));
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
        self.raw.reset()
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
        self.wrap_read(self.raw.read(cx, None))
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
        self.wrap_read(self.raw.try_read(cx))
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
        self.wrap_read(self.raw.read(cx, Instant::now().checked_add(timeout)))
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
        self.wrap_read(self.raw.read(cx, Some(deadline)))
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
        self.wrap_write(self.raw.write(cx, None))
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
        self.wrap_write(self.raw.try_write(cx))
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
        self.wrap_write(self.raw.write(cx, Instant::now().checked_add(timeout)))
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
        self.wrap_write(self.raw.write(cx, Some(deadline)))
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
        // SAFETY: `&mut self` excludes every other access.
        self.data.with_mut(|p| unsafe { &mut *p })
    }

    /// A raw read share as this wrapper reports it (`OwnerDied` if inconsistent).
    #[inline]
    fn wrap_read<'a>(
        &'a self,
        r: Result<ReadAcquired<'a>, RawLockError>,
    ) -> Result<RwLockReadGuard<'a, T, READERS>, LockError<RwLockReadGuard<'a, T, READERS>>> {
        to_lock_result(r, ReadAcquired::inconsistent, |share| RwLockReadGuard {
            lock: self,
            share: ManuallyDrop::new(share),
        })
    }

    /// A raw write hold as this wrapper reports it (`OwnerDied` if inconsistent).
    #[inline]
    fn wrap_write<'a>(
        &'a self,
        r: Result<Acquired<'a>, RawLockError>,
    ) -> LockResult<RwLockWriteGuard<'a, T, READERS>> {
        to_lock_result(r, Acquired::inconsistent, |acquired| RwLockWriteGuard {
            lock: self,
            acquired,
        })
    }
}

impl<T, const R: usize> RwLockReadGuard<'_, T, R> {
    /// Whether a writer died mid-update and the data has not been repaired.
    pub fn is_inconsistent(&self) -> bool {
        self.share.inconsistent()
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
        // SAFETY: the guard holds the write lock through `acquired` until its drop.
        unsafe { self.lock.raw.make_consistent(&mut self.acquired) }
    }

    /// Whether the data is still marked inconsistent.
    pub fn is_inconsistent(&self) -> bool {
        self.acquired.inconsistent()
    }
}

impl<T, const R: usize> Deref for RwLockReadGuard<'_, T, R> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: a read share is held: no writer has the data.
        self.lock.data.with(|p| unsafe { &*p })
    }
}

impl<T, const R: usize> Deref for RwLockWriteGuard<'_, T, R> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the write lock is held: nobody else has the data.
        self.lock.data.with(|p| unsafe { &*p })
    }
}

impl<T, const R: usize> DerefMut for RwLockWriteGuard<'_, T, R> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in deref, and `&mut self` makes this the only access.
        self.lock.data.with_mut(|p| unsafe { &mut *p })
    }
}

impl<T, const R: usize> Drop for RwLockReadGuard<'_, T, R> {
    fn drop(&mut self) {
        // SAFETY: taken out once, here; the field is not used afterwards.
        let share = unsafe { ManuallyDrop::take(&mut self.share) };
        // SAFETY: the guard holds `share` of `lock.raw`, released once, here.
        unsafe { self.lock.raw.unlock_read(share) }
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
        let mut this = ManuallyDrop::new(self);
        let acquired = std::mem::take(&mut this.acquired);
        // SAFETY: the guard held the write lock through `acquired`, taken out once
        // here (the guard is not dropped: ManuallyDrop).
        unsafe { this.lock.raw.abandon_write(acquired) }
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
        let acquired = std::mem::take(&mut self.acquired);
        // SAFETY: the guard holds the write lock through `acquired`, taken out
        // once, here. Released while panicking, the lock is left free but
        // suspect; an inconsistent hold leaves it not recoverable.
        unsafe { self.lock.raw.unlock_write(acquired) }
    }
}

impl<T, const R: usize> std::fmt::Debug for RwLock<T, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RwLock")
            .field("state", &format_args!("{:#018x}", self.raw.state()))
            .finish_non_exhaustive()
    }
}

impl<T, const R: usize> std::fmt::Debug for RwLockReadGuard<'_, T, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RwLockReadGuard")
            .field("inconsistent", &self.share.inconsistent())
            .finish_non_exhaustive()
    }
}

impl<T, const R: usize> std::fmt::Debug for RwLockWriteGuard<'_, T, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RwLockWriteGuard")
            .field("inconsistent", &self.acquired.inconsistent())
            .finish_non_exhaustive()
    }
}
