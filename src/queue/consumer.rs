//! [`Consumer`]: the consumer role of an [`SpscQueue`].
//!
//! # Safety
//!
//! The slot accesses rest on the index protocol (see [`SpscQueue`]'s state
//! table): a slot is written only while it is the producer's, read only while it
//! is the consumer's.
#![allow(unsafe_code)]

use std::time::{Duration, Instant};

use super::spsc::{RawSpsc, Side, SpscQueue};
use crate::error::{Error, Result};
use crate::layout::ShmSafe;
use crate::loom::{Ordering, crash_point};
use crate::segment::OwnerTag;
use crate::sync::Context;

/// The consumer role of an [`SpscQueue`], held by this attachment until the
/// handle is dropped. Process-local: it caches the producer's index (and its own),
/// so a pop in steady state reads no line the producer writes.
///
/// A message is released (its slot given back, and never delivered again) when
/// the pop that returns it publishes the new index, before it returns: a consumer
/// killed inside `pop` leaves the message to its successor.
///
/// # Examples
///
/// ```
/// use shmkit::queue::SpscQueue;
/// let seg = shmkit::SegmentOptions::heap().create()?;
/// let q = seg.find_or_create::<SpscQueue<u32>>("q", 4)?;
/// q.producer()?.push_slice(&[1, 2, 3])?;
/// let mut rx = q.consumer()?;
/// let mut buf = [0; 8];
/// assert_eq!(rx.pop_into(&mut buf)?, 3);
/// assert_eq!(&buf[..3], &[1, 2, 3]);
/// assert_eq!(rx.pop()?, None);
/// # Ok::<(), shmkit::Error>(())
/// ```
pub struct Consumer<T: ShmSafe + Copy + Send> {
    raw: RawSpsc<T>,
    /// Our index (we are its only writer).
    head: u64,
    /// The producer's index as last read (checked against ours).
    tail: u64,
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

// SAFETY: as for Producer.
unsafe impl<T: ShmSafe + Copy + Send> Send for Consumer<T> {}

impl<T: ShmSafe + Copy + Send> Consumer<T> {
    /// Claims the consumer role of `raw` for `cx`.
    pub(crate) fn claim(
        raw: RawSpsc<T>,
        cx: Box<dyn Context + Send + Sync>,
        keep: Box<dyn Send + Sync>,
    ) -> Result<Self> {
        let me = raw.claim(Side::Consumer, &*cx)?;
        // SYNC: Acquire pairs with the previous consumer's Release store of head
        // (ordered before our claim by the role word) and the producer's Release
        // store of tail (publishes the slots).
        let head = raw.head().load(Ordering::Acquire);
        let tail = raw.tail().load(Ordering::Acquire);
        if let Err(e) = raw.distance(tail, head) {
            raw.release(Side::Consumer, me);
            return Err(e);
        }
        Ok(Self {
            raw,
            head,
            tail,
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
    /// assert_eq!(q.consumer()?.capacity(), 4);
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
    /// q.producer()?.try_push(1).unwrap();
    /// assert_eq!(q.consumer()?.len(), 1);
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
    /// assert!(q.consumer()?.is_empty());
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The index of the next message to pop: how many were ever released
    /// (wrapping at 2^64).
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let q = seg.find_or_create::<shmkit::queue::SpscQueue<u8>>("q", 4)?;
    /// q.producer()?.try_push(1).unwrap();
    /// let mut rx = q.consumer()?;
    /// rx.pop()?;
    /// assert_eq!(rx.position(), 1);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn position(&self) -> u64 {
        self.head
    }

    /// Messages ready, re-reading the producer's index only when the cached one
    /// says fewer than `want`.
    #[inline]
    fn ready(&mut self, want: u64) -> Result<u64> {
        if crate::segment::fork_generation() != self.fork_gen {
            return Err(Error::NotAttached); // an inherited handle in a forked child
        }
        let ready = self.tail.wrapping_sub(self.head);
        if ready >= want {
            return Ok(ready);
        }
        self.refresh()
    }

    #[cold]
    fn refresh(&mut self) -> Result<u64> {
        // SYNC: Acquire pairs with the Release store of tail in
        // Producer::publish: the slots below tail are written.
        let tail = self.raw.tail().load(Ordering::Acquire);
        let ready = self.raw.distance(tail, self.head)?;
        self.tail = tail;
        Ok(ready)
    }

    /// Gives the slots below `head` back to the producer and wakes it if it
    /// sleeps.
    #[inline]
    fn release(&mut self, head: u64) {
        if crash_point() {
            return; // died with the messages read, unreleased
        }
        self.head = head;
        // SYNC: Release pairs with the Acquire load of head in Producer::refresh
        // (and in the successor's claim): our reads of the slots are done.
        self.raw.head().store(head, Ordering::Release);
        if crash_point() {
            return; // died released, before the wake
        }
        self.raw.wake_peer(Side::Consumer);
    }

    /// Pops the oldest message, `None` if the queue is empty.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] if the indices read from the segment are impossible.
    ///
    /// # Examples
    ///
    /// See [`Consumer`].
    #[inline]
    pub fn pop(&mut self) -> Result<Option<T>> {
        if self.ready(1)? == 0 {
            return Ok(None);
        }
        let head = self.head;
        // SAFETY: the slot of `head` is published (head < tail, see refresh) and
        // ours until we release it; every bit pattern is a T (ShmSafe).
        let v = self.raw.slot(head).with(|p| unsafe { p.read() });
        self.release(head.wrapping_add(1));
        Ok(Some(v))
    }

    /// Pops up to `out.len()` messages into `out`, oldest first, with one
    /// release; returns how many.
    ///
    /// # Errors
    ///
    /// As [`pop`](Self::pop).
    ///
    /// # Examples
    ///
    /// See [`Consumer`].
    pub fn pop_into(&mut self, out: &mut [T]) -> Result<usize> {
        let n = self.ready(out.len() as u64)?.min(out.len() as u64);
        let head = self.head;
        for (i, o) in out.iter_mut().take(n as usize).enumerate() {
            let at = head.wrapping_add(i as u64);
            // SAFETY: as in pop, for each of the `n <= ready` slots.
            *o = self.raw.slot(at).with(|p| unsafe { p.read() });
        }
        if n > 0 {
            self.release(head.wrapping_add(n));
        }
        Ok(n as usize)
    }

    /// Pops the oldest message, waiting as long as it takes.
    ///
    /// # Errors
    ///
    /// [`Error::PeerDied`] if the producer died while we waited (checked every
    /// 100 ms; a free producer role is waited on, one may come);
    /// [`Error::Corrupt`].
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let q = seg.find_or_create::<shmkit::queue::SpscQueue<u8>>("q", 1)?;
    /// q.producer()?.try_push(5).unwrap();
    /// assert_eq!(q.consumer()?.pop_blocking()?, 5);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn pop_blocking(&mut self) -> Result<T> {
        self.pop_deadline(None)
    }

    /// As [`pop_blocking`](Self::pop_blocking), waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`Error::TimedOut`]; as [`pop_blocking`](Self::pop_blocking).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let q = seg.find_or_create::<shmkit::queue::SpscQueue<u8>>("q", 1)?;
    /// let r = q.consumer()?.pop_blocking_for(Duration::from_millis(5));
    /// assert!(matches!(r, Err(shmkit::Error::TimedOut)));
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn pop_blocking_for(&mut self, timeout: Duration) -> Result<T> {
        self.pop_deadline(Instant::now().checked_add(timeout))
    }

    /// As [`pop_blocking`](Self::pop_blocking), waiting until `deadline` at the
    /// latest.
    ///
    /// # Errors
    ///
    /// As [`pop_blocking_for`](Self::pop_blocking_for).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let q = seg.find_or_create::<shmkit::queue::SpscQueue<u8>>("q", 1)?;
    /// let soon = Instant::now() + Duration::from_millis(5);
    /// assert!(q.consumer()?.pop_blocking_until(soon).is_err());
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn pop_blocking_until(&mut self, deadline: Instant) -> Result<T> {
        self.pop_deadline(Some(deadline))
    }

    fn pop_deadline(&mut self, deadline: Option<Instant>) -> Result<T> {
        loop {
            if let Some(v) = self.pop()? {
                return Ok(v);
            }
            if !self.wait_ready(deadline)? {
                return Err(Error::TimedOut);
            }
        }
    }

    #[cold]
    fn wait_ready(&mut self, deadline: Option<Instant>) -> Result<bool> {
        let (raw, cx, head) = (&self.raw, &*self.cx, self.head);
        let mut tail = self.tail;
        let r = raw.sleep(Side::Consumer, cx, deadline, || {
            // SYNC: Acquire pairs with the Release store of tail in
            // Producer::publish, as in refresh.
            let t = raw.tail().load(Ordering::Acquire);
            let ready = raw.distance(t, head)?;
            tail = t; // cached only once checked
            Ok(ready > 0)
        });
        self.tail = tail;
        r
    }
}

impl<T: ShmSafe + Copy + Send> Consumer<T> {
    /// Test support: drops the handle as a killed process would, keeping the
    /// role recorded as this attachment's (its segment handles are dropped, so
    /// the attachment can then `simulate_crash`).
    #[cfg(feature = "testkit")]
    #[doc(hidden)]
    pub fn simulate_death(mut self) {
        self.dead = true;
    }
}

impl<T: ShmSafe + Copy + Send> Drop for Consumer<T> {
    fn drop(&mut self) {
        #[cfg(shmkit_loom)]
        if crate::loom::crash::dead() {
            return; // a dead thread releases nothing
        }
        if self.dead || crate::segment::fork_generation() != self.fork_gen {
            return; // a killed or an inherited handle releases nothing
        }
        self.raw.release(Side::Consumer, self.me);
    }
}

impl<T: ShmSafe + Copy + Send> std::fmt::Debug for Consumer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("type", &std::any::type_name::<SpscQueue<T>>())
            .field("capacity", &self.raw.capacity())
            .field("position", &self.head)
            .finish()
    }
}
