//! Handle forms of the lock calls: no context argument, a recovery form that a
//! user cannot mishandle, and `reset`.

use std::time::{Duration, Instant};

use super::Shared;
use crate::layout::ShmSafe;
use crate::sync::{
    Condvar, Event, LockError, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard,
    Semaphore, SemaphoreError,
};
use crate::{Error, Result};

impl<T: ShmSafe + Send> Shared<Mutex<T>> {
    /// Locks, waiting as long as it takes for a live holder:
    /// [`Mutex::lock`] with this handle's segment, its error made `'static` for
    /// `?`.
    ///
    /// # Errors
    ///
    /// [`Error::OwnerDied`] if the previous holder died holding it: the lock is
    /// released again unrepaired *and still marked*, so the next locker is told
    /// too (nothing is lost or made unrecoverable). Where holders may die, lock
    /// with [`lock_or_recover`](Self::lock_or_recover), which repairs. Also
    /// [`Error::NotRecoverable`] (see [`reset`](Self::reset)).
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let m = seg.find_or_create::<shmkit::sync::Mutex<u64>>("m", ())?;
    /// *m.lock()? += 1;
    /// assert_eq!(*m.lock()?, 1);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    #[inline]
    pub fn lock(&self) -> Result<MutexGuard<'_, T>> {
        self.raw().lock(self.segment()).map_err(Error::from)
    }

    /// Locks if that needs no waiting: [`Mutex::try_lock`].
    ///
    /// # Errors
    ///
    /// [`Error::WouldBlock`]; as [`lock`](Self::lock).
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let m = seg.find_or_create::<shmkit::sync::Mutex<u64>>("m", ())?;
    /// assert!(m.try_lock().is_ok());
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn try_lock(&self) -> Result<MutexGuard<'_, T>> {
        self.raw().try_lock(self.segment()).map_err(Error::from)
    }

    /// Locks, waiting at most `timeout`: [`Mutex::lock_for`].
    ///
    /// # Errors
    ///
    /// [`Error::TimedOut`]; as [`lock`](Self::lock).
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let m = seg.find_or_create::<shmkit::sync::Mutex<u64>>("m", ())?;
    /// assert!(m.lock_for(std::time::Duration::from_millis(10)).is_ok());
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn lock_for(&self, timeout: Duration) -> Result<MutexGuard<'_, T>> {
        self.raw()
            .lock_for(self.segment(), timeout)
            .map_err(Error::from)
    }

    /// Locks, waiting until `deadline` at the latest: [`Mutex::lock_until`].
    ///
    /// # Errors
    ///
    /// As [`lock_for`](Self::lock_for).
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let m = seg.find_or_create::<shmkit::sync::Mutex<u64>>("m", ())?;
    /// let soon = std::time::Instant::now() + std::time::Duration::from_millis(10);
    /// assert!(m.lock_until(soon).is_ok());
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn lock_until(&self, deadline: Instant) -> Result<MutexGuard<'_, T>> {
        self.raw()
            .lock_until(self.segment(), deadline)
            .map_err(Error::from)
    }

    /// Locks; if the previous holder died holding the lock, runs `repair` on the
    /// data first and declares it consistent. The form to use wherever a holder
    /// may be killed: it cannot drop an `OwnerDied` guard by accident.
    ///
    /// # Errors
    ///
    /// [`Error::NotRecoverable`] (see [`reset`](Self::reset)),
    /// [`Error::NotAttached`].
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let m = seg.find_or_create::<shmkit::sync::Mutex<[u64; 2]>>("pair", ())?;
    /// let peer = seg.try_clone()?; // another process, as far as the lock can tell
    /// let mut g = m.raw().lock(&peer).unwrap();
    /// g[0] = 1; // ... and dies before writing g[1]
    /// std::mem::forget(g);
    /// // `peer`'s process is killed here (kill -9)
    /// # peer.simulate_crash(); // test support: the same as a SIGKILL
    /// let g = m.lock_or_recover(|p| p[1] = p[0])?;
    /// assert_eq!(*g, [1, 1]);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn lock_or_recover(&self, repair: impl FnOnce(&mut T)) -> Result<MutexGuard<'_, T>> {
        match self.raw().lock(self.segment()) {
            Ok(g) => Ok(g),
            Err(LockError::OwnerDied(mut g)) => {
                repair(&mut g);
                g.make_consistent();
                Ok(g)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Brings a [not recoverable](LockError::NotRecoverable) mutex back: takes it
    /// over, runs `rebuild` on the data and makes it consistent; returns the guard.
    /// `Ok(None)` if the mutex was not in that state (nothing done).
    ///
    /// Sound whenever it is called: a not-recoverable mutex has no holder. The
    /// data is whatever a holder that died left half-updated long ago, so
    /// `rebuild` must set *all* of it, not repair it.
    ///
    /// # Errors
    ///
    /// [`Error::NotAttached`].
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let m = seg.find_or_create::<shmkit::sync::Mutex<u64>>("m", ())?;
    /// let peer = seg.try_clone()?;
    /// std::mem::forget(m.raw().lock(&peer).unwrap());
    /// // `peer`'s process is killed here (kill -9)
    /// # peer.simulate_crash(); // test support: the same as a SIGKILL
    /// drop(m.raw().lock(&seg).unwrap_err().into_owner_died()); // dropped unrepaired
    /// assert!(matches!(m.lock(), Err(shmkit::Error::NotRecoverable)));
    /// m.reset(|n| *n = 0)?;
    /// assert_eq!(*m.lock()?, 0);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn reset(&self, rebuild: impl FnOnce(&mut T)) -> Result<Option<MutexGuard<'_, T>>> {
        if self.segment().owner_tag().is_nobody() {
            return Err(Error::NotAttached);
        }
        Ok(self.raw().reset(self.segment()).map(|mut g| {
            rebuild(&mut g);
            g.make_consistent();
            g
        }))
    }
}

impl<T: ShmSafe + Send + Sync, const R: usize> Shared<RwLock<T, R>> {
    /// A read lock: [`RwLock::read`] with this handle's segment.
    ///
    /// # Errors
    ///
    /// As [`RwLock::read`], as a `'static` [`Error`] (see
    /// [`Shared::<Mutex<T>>::lock`](Shared::lock) for what `OwnerDied` does).
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let l = seg.find_or_create::<shmkit::sync::RwLock<u64>>("l", ())?;
    /// assert_eq!(*l.read()?, 0);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn read(&self) -> Result<RwLockReadGuard<'_, T, R>> {
        self.raw().read(self.segment()).map_err(Error::from)
    }

    /// A read lock within `timeout`: [`RwLock::read_for`].
    ///
    /// # Errors
    ///
    /// As [`RwLock::read_for`].
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let l = seg.find_or_create::<shmkit::sync::RwLock<u64>>("l", ())?;
    /// assert!(l.read_for(std::time::Duration::from_millis(5)).is_ok());
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn read_for(&self, timeout: Duration) -> Result<RwLockReadGuard<'_, T, R>> {
        self.raw()
            .read_for(self.segment(), timeout)
            .map_err(Error::from)
    }

    /// The write lock: [`RwLock::write`] with this handle's segment.
    ///
    /// # Errors
    ///
    /// As [`RwLock::write`], as a `'static` [`Error`]; prefer [`write_or_recover`](Self::write_or_recover)
    /// where a writer may die.
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let l = seg.find_or_create::<shmkit::sync::RwLock<u64>>("l", ())?;
    /// *l.write()? = 5;
    /// assert_eq!(*l.read()?, 5);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn write(&self) -> Result<RwLockWriteGuard<'_, T, R>> {
        self.raw().write(self.segment()).map_err(Error::from)
    }

    /// The write lock within `timeout`: [`RwLock::write_for`].
    ///
    /// # Errors
    ///
    /// As [`RwLock::write_for`].
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let l = seg.find_or_create::<shmkit::sync::RwLock<u64>>("l", ())?;
    /// assert!(l.write_for(std::time::Duration::from_millis(5)).is_ok());
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn write_for(&self, timeout: Duration) -> Result<RwLockWriteGuard<'_, T, R>> {
        self.raw()
            .write_for(self.segment(), timeout)
            .map_err(Error::from)
    }

    /// The write lock; if a writer died holding it, runs `repair` first and makes
    /// the data consistent.
    ///
    /// # Errors
    ///
    /// [`Error::NotRecoverable`], [`Error::NotAttached`].
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let l = seg.find_or_create::<shmkit::sync::RwLock<u64>>("l", ())?;
    /// *l.write_or_recover(|v| *v = 0)? += 1;
    /// assert_eq!(*l.read()?, 1);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn write_or_recover(
        &self,
        repair: impl FnOnce(&mut T),
    ) -> Result<RwLockWriteGuard<'_, T, R>> {
        match self.raw().write(self.segment()) {
            Ok(g) => Ok(g),
            Err(LockError::OwnerDied(mut g)) => {
                repair(&mut g);
                g.make_consistent();
                Ok(g)
            }
            Err(e) => Err(e.into()),
        }
    }
}

impl<T: ShmSafe + Send + Sync, const R: usize> Shared<RwLock<T, R>> {
    /// Brings a not-recoverable lock back ([`RwLock::reset`]) and takes the write
    /// lock, running `rebuild` on the data (unless another writer got there first
    /// and repaired it); `Ok(None)` if the lock was not in that state.
    ///
    /// # Errors
    ///
    /// As [`write_or_recover`](Self::write_or_recover).
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let l = seg.find_or_create::<shmkit::sync::RwLock<u64>>("l", ())?;
    /// assert!(l.reset(|v| *v = 0)?.is_none()); // nothing to reset
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn reset(
        &self,
        rebuild: impl FnOnce(&mut T),
    ) -> Result<Option<RwLockWriteGuard<'_, T, R>>> {
        if !self.raw().reset() {
            return Ok(None);
        }
        self.write_or_recover(rebuild).map(Some)
    }
}

impl<const L: usize> Shared<Semaphore<L>> {
    /// Takes a permit, waiting as long as it takes: [`Semaphore::acquire`].
    ///
    /// # Errors
    ///
    /// As [`Semaphore::acquire`].
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let s = seg.find_or_create::<shmkit::sync::Semaphore>("s", 1)?;
    /// s.acquire()?;
    /// assert_eq!(s.available(), 0);
    /// s.release(1)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn acquire(&self) -> std::result::Result<(), SemaphoreError> {
        self.raw().acquire(self.segment())
    }

    /// Takes a permit if one is free: [`Semaphore::try_acquire`].
    ///
    /// # Errors
    ///
    /// As [`Semaphore::try_acquire`].
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let s = seg.find_or_create::<shmkit::sync::Semaphore>("s", 0)?;
    /// assert!(s.try_acquire().is_err());
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn try_acquire(&self) -> std::result::Result<(), SemaphoreError> {
        self.raw().try_acquire(self.segment())
    }

    /// Takes a permit within `timeout`: [`Semaphore::acquire_for`].
    ///
    /// # Errors
    ///
    /// As [`Semaphore::acquire_for`].
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let s = seg.find_or_create::<shmkit::sync::Semaphore>("s", 0)?;
    /// assert!(s.acquire_for(std::time::Duration::from_millis(5)).is_err());
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn acquire_for(&self, timeout: Duration) -> std::result::Result<(), SemaphoreError> {
        self.raw().acquire_for(self.segment(), timeout)
    }

    /// Gives `n` permits back: [`Semaphore::release`].
    ///
    /// # Errors
    ///
    /// As [`Semaphore::release`].
    ///
    /// # Examples
    ///
    /// See [`acquire`](Self::acquire).
    pub fn release(&self, n: u32) -> std::result::Result<(), SemaphoreError> {
        self.raw().release(self.segment(), n)
    }
}

impl Shared<Condvar> {
    /// Waits on the condition variable with a guard of `m`: [`Condvar::wait`].
    ///
    /// # Errors
    ///
    /// As [`Condvar::wait`].
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let m = seg.find_or_create::<shmkit::sync::Mutex<u32>>("m", ())?;
    /// let cv = seg.find_or_create::<shmkit::sync::Condvar>("cv", ())?;
    /// let g = m.lock()?;
    /// let (_g, r) = cv.wait_for(g, Duration::from_millis(5))?;
    /// assert!(r.timed_out());
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn wait<'a, T>(&'a self, guard: MutexGuard<'a, T>) -> Result<MutexGuard<'a, T>> {
        self.raw().wait(guard, self.segment()).map_err(Error::from)
    }

    /// As [`wait`](Self::wait), at most `timeout`: [`Condvar::wait_for`].
    ///
    /// # Errors
    ///
    /// As [`Condvar::wait_for`].
    ///
    /// # Examples
    ///
    /// See [`wait`](Self::wait).
    pub fn wait_for<'a, T>(
        &'a self,
        guard: MutexGuard<'a, T>,
        timeout: Duration,
    ) -> Result<(MutexGuard<'a, T>, crate::sync::WaitTimeoutResult)> {
        self.raw()
            .wait_for(guard, self.segment(), timeout)
            .map_err(Error::from)
    }
}

// `Event` needs no context: its calls are on `&Event` through `Deref`.
const _: fn(&Shared<Event>) = |e| e.set();
