//! [`Producer`]: the producer role of an [`SpscQueue`].
//!
//! # Safety
//!
//! The slot accesses rest on the index protocol (see [`SpscQueue`]'s state
//! table): a slot is written only while it is the producer's, read only while it
//! is the consumer's.
#![allow(unsafe_code)]

use std::time::{Duration, Instant};

use super::error::PushError;
use super::spsc::{RawSpsc, Side, SpscQueue};
use crate::error::{Error, Result};
use crate::layout::ShmSafe;
use crate::loom::{Ordering, crash_point};
use crate::segment::OwnerTag;
use crate::sync::Context;

/// The producer role of an [`SpscQueue`], held by this attachment until the
/// handle is dropped. Process-local: it caches the consumer's index (and its own),
/// so a push in steady state reads no line the consumer writes.
///
/// # Examples
///
/// ```
/// use shmkit::queue::{PushError, SpscQueue};
/// let seg = shmkit::SegmentOptions::heap().create()?;
/// let q = seg.find_or_create::<SpscQueue<u32>>("q", 2)?;
/// let mut tx = q.producer()?;
/// assert_eq!(tx.push_slice(&[1, 2, 3])?, 2);
/// assert!(matches!(tx.try_push(4), Err(PushError::Full(4))));
/// # Ok::<(), shmkit::Error>(())
/// ```
pub struct Producer<T: ShmSafe + Copy + Send> {
    raw: RawSpsc<T>,
    /// Our index (we are its only writer).
    tail: u64,
    /// The consumer's index as last read.
    head: u64,
    me: OwnerTag,
    cx: Box<dyn Context + Send + Sync>,
    /// What keeps the block mapped and held (the directory handle).
    _keep: Box<dyn Send + Sync>,
    /// Dropped as a killed process's handle: the role is not given back.
    dead: bool,
    /// The fork generation at the claim: in a forked child that inherited the
    /// handle it differs, and the handle acts for nobody.
    fork_gen: u64,
}

// SAFETY: the handle owns its role; the raw pointer is into a block kept mapped by
// `_keep` (Send), and the values moved are T: Send.
unsafe impl<T: ShmSafe + Copy + Send> Send for Producer<T> {}

impl<T: ShmSafe + Copy + Send> Producer<T> {
    /// Claims the producer role of `raw` for `cx`.
    pub(crate) fn claim(
        raw: RawSpsc<T>,
        cx: Box<dyn Context + Send + Sync>,
        keep: Box<dyn Send + Sync>,
    ) -> Result<Self> {
        let me = raw.claim(Side::Producer, &*cx)?;
        // SYNC: Acquire pairs with the previous producer's Release store of tail
        // (ordered before our claim by the role word) and the consumer's Release
        // store of head.
        let tail = raw.tail().load(Ordering::Acquire);
        let head = raw.head().load(Ordering::Acquire);
        if let Err(e) = raw.distance(tail, head) {
            raw.release(Side::Producer, me);
            return Err(e);
        }
        Ok(Self {
            raw,
            tail,
            head,
            me,
            cx,
            _keep: keep,
            dead: false,
            fork_gen: crate::segment::fork_generation(),
        })
    }

    /// Slots in the ring.
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let q = seg.find_or_create::<shmkit::queue::SpscQueue<u8>>("q", 4)?;
    /// assert_eq!(q.producer()?.capacity(), 4);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn capacity(&self) -> usize {
        self.raw.capacity() as usize
    }

    /// Messages in the queue now (at most the capacity).
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let q = seg.find_or_create::<shmkit::queue::SpscQueue<u8>>("q", 4)?;
    /// let mut tx = q.producer()?;
    /// tx.try_push(1).unwrap();
    /// assert_eq!(tx.len(), 1);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn len(&self) -> usize {
        self.raw.len() as usize
    }

    /// Whether the queue is empty now.
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let q = seg.find_or_create::<shmkit::queue::SpscQueue<u8>>("q", 4)?;
    /// assert!(q.producer()?.is_empty());
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The index the next push takes: how many messages were ever pushed into
    /// this queue (wrapping at 2^64). A successor producer continues from the
    /// last published one.
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let q = seg.find_or_create::<shmkit::queue::SpscQueue<u8>>("q", 4)?;
    /// let mut tx = q.producer()?;
    /// tx.try_push(1).unwrap();
    /// assert_eq!(tx.position(), 1);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn position(&self) -> u64 {
        self.tail
    }

    /// Free slots, re-reading the consumer's index only when the cached one says
    /// fewer than `want`.
    #[inline]
    fn room(&mut self, want: u64) -> Result<u64> {
        if crate::segment::fork_generation() != self.fork_gen {
            return Err(Error::NotAttached); // an inherited handle in a forked child
        }
        let free = self.raw.capacity() - self.tail.wrapping_sub(self.head);
        if free >= want {
            return Ok(free);
        }
        self.refresh()
    }

    #[cold]
    fn refresh(&mut self) -> Result<u64> {
        // SYNC: Acquire pairs with the Release store of head in Consumer::release:
        // the consumer's reads of the slots below head are done.
        let head = self.raw.head().load(Ordering::Acquire);
        let used = self.raw.distance(self.tail, head)?;
        self.head = head;
        Ok(self.raw.capacity() - used)
    }

    /// Makes the slots below `tail` visible to the consumer and wakes it if it
    /// sleeps.
    #[inline]
    fn publish(&mut self, tail: u64) {
        if crash_point() {
            return; // died with the slots written, unpublished
        }
        self.tail = tail;
        // SYNC: Release pairs with the Acquire load of tail in Consumer::refresh
        // (and in the successor's claim): publishes the slots written before.
        self.raw.tail().store(tail, Ordering::Release);
        if crash_point() {
            return; // died published, before the wake
        }
        self.raw.wake_peer(Side::Producer);
    }

    /// Pushes `value` if there is room.
    ///
    /// # Errors
    ///
    /// [`PushError::Full`] with the value; [`PushError::Failed`] with the value
    /// and [`Error::NotAttached`] in a forked child that inherited the handle, or
    /// [`Error::Corrupt`] if the indices read from the segment are impossible.
    ///
    /// # Examples
    ///
    /// See [`Producer`].
    #[inline]
    pub fn try_push(&mut self, value: T) -> std::result::Result<(), PushError<T>> {
        match self.room(1) {
            Ok(0) => return Err(PushError::Full(value)),
            Ok(_) => {}
            Err(e) => return Err(PushError::Failed(value, e)),
        }
        let tail = self.tail;
        // SAFETY: the slot of `tail` is ours (tail - head < capacity: the
        // consumer is done with it, see refresh); T: Copy needs no drop.
        self.raw.slot(tail).with_mut(|p| unsafe { p.write(value) });
        self.publish(tail.wrapping_add(1));
        Ok(())
    }

    /// Pushes as many of `values` as fit, in order, with one publication;
    /// returns how many.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] if the indices read from the segment are impossible.
    ///
    /// # Examples
    ///
    /// See [`Producer`].
    pub fn push_slice(&mut self, values: &[T]) -> Result<usize> {
        let free = self.room(values.len() as u64)?;
        let n = (values.len() as u64).min(free);
        let tail = self.tail;
        for (i, v) in values.iter().take(n as usize).enumerate() {
            let at = tail.wrapping_add(i as u64);
            // SAFETY: as in try_push, for each of the `n <= free` slots.
            self.raw.slot(at).with_mut(|p| unsafe { p.write(*v) });
        }
        if n > 0 {
            self.publish(tail.wrapping_add(n));
        }
        Ok(n as usize)
    }

    /// Pushes `value`, waiting for room as long as it takes.
    ///
    /// # Errors
    ///
    /// [`Error::PeerDied`] if the consumer died while we waited (checked every
    /// 100 ms); [`Error::Corrupt`]. `T` is `Copy`: the caller still has the
    /// value.
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let q = seg.find_or_create::<shmkit::queue::SpscQueue<u8>>("q", 1)?;
    /// let mut tx = q.producer()?;
    /// tx.push_blocking(5)?;
    /// assert_eq!(q.consumer()?.pop()?, Some(5));
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn push_blocking(&mut self, value: T) -> Result<()> {
        self.push_deadline(value, None)
    }

    /// As [`push_blocking`](Self::push_blocking), waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`Error::TimedOut`]; as [`push_blocking`](Self::push_blocking).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let q = seg.find_or_create::<shmkit::queue::SpscQueue<u8>>("q", 1)?;
    /// let mut tx = q.producer()?;
    /// tx.push_blocking_for(1, Duration::from_millis(5))?;
    /// let full = tx.push_blocking_for(2, Duration::from_millis(5));
    /// assert!(matches!(full, Err(shmkit::Error::TimedOut)));
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn push_blocking_for(&mut self, value: T, timeout: Duration) -> Result<()> {
        self.push_deadline(value, Instant::now().checked_add(timeout))
    }

    /// As [`push_blocking`](Self::push_blocking), waiting until `deadline` at
    /// the latest.
    ///
    /// # Errors
    ///
    /// As [`push_blocking_for`](Self::push_blocking_for).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let q = seg.find_or_create::<shmkit::queue::SpscQueue<u8>>("q", 1)?;
    /// let mut tx = q.producer()?;
    /// tx.push_blocking_until(1, Instant::now() + Duration::from_millis(5))?;
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn push_blocking_until(&mut self, value: T, deadline: Instant) -> Result<()> {
        self.push_deadline(value, Some(deadline))
    }

    /// `deadline`: `None` waits forever (a timeout too long to represent too).
    fn push_deadline(&mut self, value: T, deadline: Option<Instant>) -> Result<()> {
        loop {
            match self.try_push(value) {
                Ok(()) => return Ok(()),
                Err(PushError::Failed(_, e)) => return Err(e),
                Err(PushError::Full(_) | PushError::TimedOut(_)) => {}
            }
            if !self.wait_room(deadline)? {
                return Err(Error::TimedOut);
            }
        }
    }

    #[cold]
    fn wait_room(&mut self, deadline: Option<Instant>) -> Result<bool> {
        let (raw, cx, tail) = (&self.raw, &*self.cx, self.tail);
        let mut head = self.head;
        let r = raw.sleep(Side::Producer, cx, deadline, || {
            // SYNC: Acquire pairs with the Release store of head in
            // Consumer::release, as in refresh.
            let h = raw.head().load(Ordering::Acquire);
            let used = raw.distance(tail, h)?;
            head = h; // cached only once checked
            Ok(used < raw.capacity())
        });
        self.head = head;
        r
    }
}

impl<T: ShmSafe + Copy + Send> Producer<T> {
    /// Test support: drops the handle as a killed process would, keeping the
    /// role recorded as this attachment's (its segment handles are dropped, so
    /// the attachment can then `simulate_crash`).
    #[cfg(feature = "testkit")]
    #[doc(hidden)]
    pub fn simulate_death(mut self) {
        self.dead = true;
    }
}

impl<T: ShmSafe + Copy + Send> Drop for Producer<T> {
    fn drop(&mut self) {
        #[cfg(shmkit_loom)]
        if crate::loom::crash::dead() {
            return; // a dead thread releases nothing
        }
        if self.dead || crate::segment::fork_generation() != self.fork_gen {
            return; // a killed or an inherited handle releases nothing
        }
        self.raw.release(Side::Producer, self.me);
    }
}

impl<T: ShmSafe + Copy + Send> std::fmt::Debug for Producer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("type", &std::any::type_name::<SpscQueue<T>>())
            .field("capacity", &self.raw.capacity())
            .field("position", &self.tail)
            .finish()
    }
}
