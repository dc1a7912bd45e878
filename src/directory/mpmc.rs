//! Handle forms of the [`MpmcQueue`] calls: no context argument, the capacity
//! taken from the handle's configuration (checked at `find`), not from the
//! queue's words.

use std::time::{Duration, Instant};

use zerocopy::{FromBytes, Immutable, IntoBytes};

use super::Shared;
use crate::Result;
use crate::layout::ShmSafe;
use crate::queue::{MpmcQueue, PushError};

impl<T: ShmSafe + Copy + FromBytes + IntoBytes + Immutable> Shared<MpmcQueue<T>> {
    /// Pushes `v` if there is room.
    ///
    /// # Errors
    ///
    /// `v` back: [`PushError::Full`] when the queue is full (or its next slot is
    /// busy with a live claimant that is preempted), [`PushError::Failed`] with
    /// [`Error::Corrupt`](crate::Error::Corrupt) for impossible words or
    /// [`Error::NotAttached`](crate::Error::NotAttached).
    ///
    /// # Examples
    ///
    /// ```
    /// use shmkit::queue::{MpmcQueue, PushError};
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let q = seg.find_or_create::<MpmcQueue<u32>>("q", 1)?;
    /// assert_eq!(q.try_push(1), Ok(()));
    /// assert_eq!(q.try_push(2), Err(PushError::Full(2)));
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    #[inline]
    pub fn try_push(&self, v: T) -> std::result::Result<(), PushError<T>> {
        self.raw().try_push_in(self.segment(), *self.config(), v)
    }

    /// Pops the oldest message, `None` if the queue is empty (or its next message
    /// is still being written by a live producer).
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`](crate::Error::Corrupt) for impossible words,
    /// [`Error::NotAttached`](crate::Error::NotAttached).
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let q = seg.find_or_create::<shmkit::queue::MpmcQueue<u32>>("q", 2)?;
    /// assert_eq!(q.pop()?, None);
    /// q.try_push(5).unwrap();
    /// assert_eq!(q.pop()?, Some(5));
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    #[inline]
    pub fn pop(&self) -> Result<Option<T>> {
        self.raw().pop_in(self.segment(), *self.config())
    }

    /// Pushes `v`, sleeping while the queue is full (on a futex, only after a
    /// waiter flag tells consumers to wake it).
    ///
    /// # Errors
    ///
    /// As [`try_push`](Self::try_push), never `Full`.
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let q = seg.find_or_create::<shmkit::queue::MpmcQueue<u32>>("q", 2)?;
    /// q.push_blocking(3).unwrap();
    /// assert_eq!(q.pop_blocking()?, 3);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn push_blocking(&self, v: T) -> std::result::Result<(), PushError<T>> {
        self.raw()
            .push_until_in(self.segment(), *self.config(), v, None)
    }

    /// Pushes `v`, sleeping at most `timeout` while the queue is full.
    ///
    /// # Errors
    ///
    /// [`PushError::TimedOut`]; as [`push_blocking`](Self::push_blocking).
    ///
    /// # Examples
    ///
    /// ```
    /// use shmkit::queue::{MpmcQueue, PushError};
    /// use std::time::Duration;
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let q = seg.find_or_create::<MpmcQueue<u32>>("q", 1)?;
    /// q.push_blocking_for(1, Duration::ZERO).unwrap();
    /// let late = q.push_blocking_for(2, Duration::from_millis(5));
    /// assert_eq!(late, Err(PushError::TimedOut(2)));
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn push_blocking_for(
        &self,
        v: T,
        timeout: Duration,
    ) -> std::result::Result<(), PushError<T>> {
        let deadline = MpmcQueue::<T>::deadline(timeout);
        self.raw()
            .push_until_in(self.segment(), *self.config(), v, deadline)
    }

    /// Pushes `v`, sleeping until `deadline` at the latest while the queue is full.
    ///
    /// # Errors
    ///
    /// As [`push_blocking_for`](Self::push_blocking_for).
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let q = seg.find_or_create::<shmkit::queue::MpmcQueue<u32>>("q", 1)?;
    /// let soon = std::time::Instant::now() + std::time::Duration::from_millis(5);
    /// assert!(q.push_blocking_until(1, soon).is_ok());
    /// assert!(q.push_blocking_until(2, soon).is_err());
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn push_blocking_until(
        &self,
        v: T,
        deadline: Instant,
    ) -> std::result::Result<(), PushError<T>> {
        self.raw()
            .push_until_in(self.segment(), *self.config(), v, Some(deadline))
    }

    /// Pops, sleeping while the queue is empty.
    ///
    /// # Errors
    ///
    /// As [`pop`](Self::pop).
    ///
    /// # Examples
    ///
    /// See [`push_blocking`](Self::push_blocking).
    pub fn pop_blocking(&self) -> Result<T> {
        self.raw()
            .pop_until_in(self.segment(), *self.config(), None)
    }

    /// Pops, sleeping at most `timeout` while the queue is empty.
    ///
    /// # Errors
    ///
    /// [`Error::TimedOut`](crate::Error::TimedOut); as [`pop`](Self::pop).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let q = seg.find_or_create::<shmkit::queue::MpmcQueue<u32>>("q", 4)?;
    /// let e = q.pop_blocking_for(Duration::from_millis(5)).unwrap_err();
    /// assert!(matches!(e, shmkit::Error::TimedOut));
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn pop_blocking_for(&self, timeout: Duration) -> Result<T> {
        let deadline = MpmcQueue::<T>::deadline(timeout);
        self.raw()
            .pop_until_in(self.segment(), *self.config(), deadline)
    }

    /// Pops, sleeping until `deadline` at the latest while the queue is empty.
    ///
    /// # Errors
    ///
    /// As [`pop_blocking_for`](Self::pop_blocking_for).
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let q = seg.find_or_create::<shmkit::queue::MpmcQueue<u32>>("q", 4)?;
    /// q.try_push(9).unwrap();
    /// let soon = std::time::Instant::now() + std::time::Duration::from_millis(5);
    /// assert_eq!(q.pop_blocking_until(soon)?, 9);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn pop_blocking_until(&self, deadline: Instant) -> Result<T> {
        self.raw()
            .pop_until_in(self.segment(), *self.config(), Some(deadline))
    }

    /// Messages in the queue (a snapshot), never more than the capacity.
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let q = seg.find_or_create::<shmkit::queue::MpmcQueue<u32>>("q", 4)?;
    /// q.try_push(1).unwrap();
    /// assert_eq!(q.len(), 1);
    /// assert!(!q.is_empty());
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn len(&self) -> u64 {
        self.raw().len_for(*self.config())
    }

    /// Whether [`len`](Self::len) is 0.
    ///
    /// # Examples
    ///
    /// See [`len`](Self::len).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The capacity (the handle's configuration).
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let q = seg.find_or_create::<shmkit::queue::MpmcQueue<u32>>("q", 16)?;
    /// assert_eq!(q.capacity(), 16);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn capacity(&self) -> u64 {
        *self.config()
    }

    /// Test support (`testkit`): starts this empty queue at position `start`.
    ///
    /// # Errors
    ///
    /// See `shmkit::queue::testkit::testkit_start_at`.
    #[cfg(feature = "testkit")]
    #[doc(hidden)]
    pub fn testkit_start_at(&self, start: u64) -> Result<()> {
        crate::queue::testkit::testkit_start_at(self.raw(), self.segment(), *self.config(), start)
    }
}
