//! [`BroadcastReader`]: one reader of a [`Broadcast`], with its own cursor.
#![allow(unsafe_code)]

use std::ptr::NonNull;
use std::time::{Duration, Instant};

use zerocopy::{FromBytes, IntoBytes};

use super::broadcast::{Broadcast, Geometry, RawBroadcast, Received};
use crate::error::{Error, Result};
use crate::layout::ShmSafe;
use crate::loom::futex_wait;
use crate::sync::Context;

/// How long a sleeping reader waits before it checks that the writer lives.
const LIVENESS_SLICE: Duration = Duration::from_millis(100);

/// A reader of a [`Broadcast`]: a process-local cursor (readers write nothing to
/// the ring, so any number may come and go without the writer noticing). It
/// starts at the next message the writer sends.
///
/// # Examples
///
/// ```
/// use shmkit::queue::{Broadcast, Received};
/// use std::time::Duration;
/// let seg = shmkit::SegmentOptions::heap().create()?;
/// let b = seg.find_or_create::<Broadcast<u32>>("b", 16)?;
/// let mut w = b.writer()?;
/// let (mut r1, mut r2) = (b.reader()?, b.reader()?);
/// w.send(7)?;
/// assert_eq!(r1.try_recv()?, Some(Received::Message(7)));
/// assert_eq!(r2.recv_for(Duration::from_secs(1))?, Some(Received::Message(7)));
/// assert_eq!(r1.try_recv()?, None);
/// # Ok::<(), shmkit::Error>(())
/// ```
pub struct BroadcastReader<T> {
    block: NonNull<Broadcast<T>>,
    geometry: Geometry,
    /// The number of the next message to read.
    next: u64,
    cx: Box<dyn Context + Send + Sync>,
    /// What keeps the block mapped and held (the directory handle).
    _keep: Box<dyn Send + Sync>,
}

// SAFETY: the pointer is into a block kept mapped and held by `_keep` (Send); the
// values read are T: Send; the context is Send.
unsafe impl<T: Send> Send for BroadcastReader<T> {}

impl<T: ShmSafe + FromBytes + IntoBytes + Copy + Send + Sync> BroadcastReader<T> {
    /// A reader of the block at `block`, starting at the next message.
    ///
    /// # Safety
    ///
    /// `block` is a block built by [`Broadcast::init`] for `geometry`, kept mapped
    /// and allocated for as long as `keep` lives.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] for an impossible head.
    pub(crate) unsafe fn new(
        block: NonNull<Broadcast<T>>,
        geometry: Geometry,
        cx: Box<dyn Context + Send + Sync>,
        keep: Box<dyn Send + Sync>,
    ) -> Result<Self> {
        // SAFETY: the caller's contract.
        let next = unsafe { RawBroadcast::from_block(block, geometry) }.head()?;
        Ok(Self {
            block,
            geometry,
            next,
            cx,
            _keep: keep,
        })
    }

    #[inline]
    fn raw(&self) -> RawBroadcast<'_> {
        // SAFETY: `new`'s contract, for as long as `_keep` (as long as self).
        unsafe { RawBroadcast::from_block(self.block, self.geometry) }
    }

    /// The next message if it is there, or the number lost if the writer
    /// overwrote it; `None` if it is not written yet. Never waits.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] if the ring's words are impossible (a peer overwrote
    /// them).
    ///
    /// # Examples
    ///
    /// See [`BroadcastReader`].
    #[inline]
    pub fn try_recv(&mut self) -> Result<Option<Received<T>>> {
        let mut next = self.next;
        let r = self.raw().recv(&mut next);
        self.next = next;
        r
    }

    /// The next message (or lag), waiting as long as it takes. The wait sleeps on
    /// a futex, and checks every 100 ms that the writer lives.
    ///
    /// # Errors
    ///
    /// [`Error::PeerDied`] if the writer died and nothing more is there (until a
    /// new writer takes the role over, every wait returns that at once);
    /// [`Error::Corrupt`] as [`try_recv`](Self::try_recv).
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let b = seg.find_or_create::<shmkit::queue::Broadcast<u8>>("b", 2)?;
    /// let mut r = b.reader()?;
    /// std::thread::scope(|s| {
    ///     s.spawn(|| b.writer().unwrap().send(9).unwrap());
    ///     assert_eq!(r.recv_blocking().unwrap(), shmkit::queue::Received::Message(9));
    /// });
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn recv_blocking(&mut self) -> Result<Received<T>> {
        match self.recv_deadline(None)? {
            Some(r) => Ok(r),
            None => unreachable!("a wait without a deadline returns only with a message"),
        }
    }

    /// As [`recv_blocking`](Self::recv_blocking), waiting at most `timeout`;
    /// `None` if nothing came.
    ///
    /// # Errors
    ///
    /// As [`recv_blocking`](Self::recv_blocking).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let b = seg.find_or_create::<shmkit::queue::Broadcast<u8>>("b", 2)?;
    /// let mut r = b.reader()?;
    /// assert_eq!(r.recv_for(Duration::from_millis(10))?, None);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn recv_for(&mut self, timeout: Duration) -> Result<Option<Received<T>>> {
        // A timeout past what an Instant can hold waits for good.
        self.recv_deadline(Instant::now().checked_add(timeout))
    }

    /// As [`recv_for`](Self::recv_for), until `deadline`.
    ///
    /// # Errors
    ///
    /// As [`recv_blocking`](Self::recv_blocking).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let b = seg.find_or_create::<shmkit::queue::Broadcast<u8>>("b", 2)?;
    /// let mut r = b.reader()?;
    /// assert_eq!(r.recv_until(Instant::now() + Duration::from_millis(5))?, None);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn recv_until(&mut self, deadline: Instant) -> Result<Option<Received<T>>> {
        self.recv_deadline(Some(deadline))
    }

    fn recv_deadline(&mut self, deadline: Option<Instant>) -> Result<Option<Received<T>>> {
        match self.try_recv()? {
            Some(r) => Ok(Some(r)),
            None => self.sleep(deadline),
        }
    }

    /// The slow path: sleep on the bell until a message, the deadline, or the
    /// writer's death.
    #[cold]
    fn sleep(&mut self, deadline: Option<Instant>) -> Result<Option<Received<T>>> {
        loop {
            let slice = match deadline {
                None => LIVENESS_SLICE,
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => left.min(LIVENESS_SLICE),
                    _ => return Ok(None), // checked before the bell and the probe
                },
            };
            let expected = self.raw().prepare_sleep();
            if let Some(r) = self.try_recv()? {
                return Ok(Some(r));
            }
            if let Some(w) = self.raw().writer_holder()
                && !self.cx.is_alive_owner(w)
            {
                return Err(Error::PeerDied {
                    role: "broadcast writer",
                });
            }
            futex_wait(self.raw().bell(), expected, Some(slice));
            if let Some(r) = self.try_recv()? {
                return Ok(Some(r));
            }
        }
    }

    /// Messages published that this reader has not read (at most the capacity).
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let b = seg.find_or_create::<shmkit::queue::Broadcast<u8>>("b", 2)?;
    /// let mut r = b.reader()?;
    /// let mut w = b.writer()?;
    /// for i in 0..5 {
    ///     w.send(i)?;
    /// }
    /// assert_eq!(r.pending(), 2);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn pending(&self) -> u64 {
        self.raw().pending(self.next)
    }

    /// The number of the next message this reader will read.
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let b = seg.find_or_create::<shmkit::queue::Broadcast<u8>>("b", 2)?;
    /// assert_eq!(b.reader()?.position(), 0);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn position(&self) -> u64 {
        self.next
    }
}

impl<T> std::fmt::Debug for BroadcastReader<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BroadcastReader")
            .field("next", &self.next)
            .field("capacity", &self.geometry.capacity)
            .finish()
    }
}
