//! Handle forms of [`Broadcast`]: taking the writer role, making readers.
#![allow(unsafe_code)]

use zerocopy::{FromBytes, IntoBytes};

use super::Shared;
use crate::Result;
use crate::layout::ShmSafe;
use crate::queue::{Broadcast, BroadcastReader, BroadcastWriter, Geometry, RawBroadcast};

impl<T: ShmSafe + FromBytes + IntoBytes + Copy + Send + Sync> Shared<Broadcast<T>> {
    fn geometry(&self) -> Result<Geometry> {
        Geometry::new(*self.config(), size_of::<T>())
    }

    /// Takes the writer role for this attachment, until the returned handle is
    /// dropped. The role of a holder that died is taken over: the new writer goes
    /// on after the last message its predecessor completed.
    ///
    /// # Errors
    ///
    /// [`Error::RoleTaken`](crate::Error::RoleTaken) naming the live holder
    /// (another writer handle of this attachment included);
    /// [`Error::NotAttached`](crate::Error::NotAttached);
    /// [`Error::Corrupt`](crate::Error::Corrupt) for an impossible head.
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let b = seg.find_or_create::<shmkit::queue::Broadcast<u64>>("b", 4)?;
    /// let w = b.writer()?;
    /// assert!(matches!(b.writer(), Err(shmkit::Error::RoleTaken { .. })));
    /// drop(w);
    /// assert!(b.writer().is_ok());
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn writer(&self) -> Result<BroadcastWriter<T>> {
        let g = self.geometry()?;
        // SAFETY: the directory checked the block (built by Broadcast::init, its
        // size that of the configured capacity) when it made this handle; the
        // writer keeps a clone of it, so the block stays mapped and held.
        unsafe {
            BroadcastWriter::claim(
                self.as_non_null(),
                g,
                self.segment(),
                Box::new(self.clone()),
            )
        }
    }

    /// A reader starting at the next message the writer sends (readers are
    /// process-local cursors: make as many as needed).
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`](crate::Error::Corrupt) for an impossible head.
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let b = seg.find_or_create::<shmkit::queue::Broadcast<u64>>("b", 4)?;
    /// let mut r = b.reader()?;
    /// b.writer()?.send(5)?;
    /// assert_eq!(r.try_recv()?, Some(shmkit::queue::Received::Message(5)));
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn reader(&self) -> Result<BroadcastReader<T>> {
        let g = self.geometry()?;
        // SAFETY: as in `writer`.
        unsafe {
            BroadcastReader::new(
                self.as_non_null(),
                g,
                Box::new(self.segment().clone()),
                Box::new(self.clone()),
            )
        }
    }

    /// Messages sent through the ring so far.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`](crate::Error::Corrupt) for an impossible head.
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let b = seg.find_or_create::<shmkit::queue::Broadcast<u64>>("b", 4)?;
    /// b.writer()?.send(1)?;
    /// assert_eq!(b.sent()?, 1);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn sent(&self) -> Result<u64> {
        self.raw_broadcast()?.head()
    }

    /// Slots in the ring (the configured capacity).
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let b = seg.find_or_create::<shmkit::queue::Broadcast<u64>>("b", 4)?;
    /// assert_eq!(b.capacity(), 4);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn capacity(&self) -> u64 {
        *self.config()
    }

    fn raw_broadcast(&self) -> Result<RawBroadcast<'_>> {
        let g = self.geometry()?;
        // SAFETY: as in `writer`; the view borrows self, which holds the block.
        Ok(unsafe { RawBroadcast::from_block(self.as_non_null(), g) })
    }

    /// The ring's words, to overwrite as a peer could (test support).
    #[cfg(feature = "testkit")]
    #[doc(hidden)]
    pub fn testkit_raw(&self) -> RawBroadcast<'_> {
        self.raw_broadcast().expect("a checked configuration")
    }
}
