//! Handle forms of the queues: taking a role from a directory handle.
#![allow(unsafe_code)]

use super::Shared;
use crate::Result;
use crate::layout::ShmSafe;
use crate::queue::{Consumer, Producer, RawSpsc, SpscQueue};

impl<T: ShmSafe + Copy + Send> Shared<SpscQueue<T>> {
    fn raw_spsc(&self) -> RawSpsc<T> {
        // SAFETY: the directory checked the block (built by SpscQueue::init, its
        // size that of the configured capacity) when it made this handle; the
        // role handles keep a clone of it, so the block stays mapped and held.
        unsafe { RawSpsc::new(self.as_non_null(), *self.config()) }
    }

    /// Takes the producer role for this attachment, until the returned handle is
    /// dropped. The role of a holder that died is taken over: the new producer
    /// continues after the last message its predecessor published.
    ///
    /// # Errors
    ///
    /// [`Error::RoleTaken`](crate::Error::RoleTaken) naming the live holder
    /// (another producer handle of this attachment included);
    /// [`Error::NotAttached`](crate::Error::NotAttached);
    /// [`Error::Corrupt`](crate::Error::Corrupt) for impossible indices.
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let q = seg.find_or_create::<shmkit::queue::SpscQueue<u64>>("q", 4)?;
    /// let tx = q.producer()?;
    /// assert!(matches!(q.producer(), Err(shmkit::Error::RoleTaken { .. })));
    /// drop(tx);
    /// assert!(q.producer().is_ok());
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn producer(&self) -> Result<Producer<T>> {
        Producer::claim(
            self.raw_spsc(),
            Box::new(self.segment().clone()),
            Box::new(self.clone()),
        )
    }

    /// Takes the consumer role for this attachment, until the returned handle is
    /// dropped. The role of a holder that died is taken over: the new consumer
    /// starts at the first message its predecessor had not released.
    ///
    /// # Errors
    ///
    /// As [`producer`](Self::producer).
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let q = seg.find_or_create::<shmkit::queue::SpscQueue<u64>>("q", 4)?;
    /// let _rx = q.consumer()?;
    /// assert!(q.consumer().is_err());
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn consumer(&self) -> Result<Consumer<T>> {
        Consumer::claim(
            self.raw_spsc(),
            Box::new(self.segment().clone()),
            Box::new(self.clone()),
        )
    }

    /// Messages in the queue now (at most the capacity).
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let q = seg.find_or_create::<shmkit::queue::SpscQueue<u64>>("q", 4)?;
    /// q.producer()?.try_push(1).unwrap();
    /// assert_eq!(q.len(), 1);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn len(&self) -> usize {
        self.raw_spsc().len() as usize
    }

    /// Whether the queue is empty now.
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let q = seg.find_or_create::<shmkit::queue::SpscQueue<u64>>("q", 4)?;
    /// assert!(q.is_empty());
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Slots in the ring (the configured capacity).
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let q = seg.find_or_create::<shmkit::queue::SpscQueue<u64>>("q", 4)?;
    /// assert_eq!(q.capacity(), 4);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn capacity(&self) -> usize {
        *self.config() as usize
    }
}

/// Overwrites a queue's indices, as a peer could (test support: wrap-around
/// starts and corruption).
#[cfg(feature = "testkit")]
pub fn spsc_set_indices<T: ShmSafe + Copy + Send>(q: &Shared<SpscQueue<T>>, tail: u64, head: u64) {
    q.raw_spsc().set_indices(tail, head);
}

/// Overwrites a queue's role words, as a peer could (test support).
#[cfg(feature = "testkit")]
pub fn spsc_set_roles<T: ShmSafe + Copy + Send>(
    q: &Shared<SpscQueue<T>>,
    producer: u64,
    consumer: u64,
) {
    q.raw_spsc().set_roles(producer, consumer);
}

/// A queue's waiter flags, (producer's, consumer's): non-zero while that side
/// sleeps or is about to (test support).
#[cfg(feature = "testkit")]
pub fn spsc_waiters<T: ShmSafe + Copy + Send>(q: &Shared<SpscQueue<T>>) -> (u32, u32) {
    q.raw_spsc().waiters()
}
