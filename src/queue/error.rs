//! [`PushError`]: a push that did not happen, with the value back.

use std::fmt;

use crate::error::Error;

/// Why a [`try_push`](super::Producer::try_push) did not push: the value comes
/// back in every case.
///
/// # Examples
///
/// ```
/// use shmkit::queue::{PushError, SpscQueue};
/// let seg = shmkit::SegmentOptions::heap().create()?;
/// let q = seg.find_or_create::<SpscQueue<u8>>("q", 1)?;
/// let mut tx = q.producer()?;
/// tx.try_push(1).unwrap();
/// let e = tx.try_push(2).unwrap_err();
/// assert!(e.is_full());
/// assert_eq!(e.into_inner(), 2);
/// # Ok::<(), shmkit::Error>(())
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum PushError<T> {
    /// The queue is full.
    Full(T),
    /// The queue's indices in the segment are impossible (a peer overwrote them).
    Corrupt(T, Error),
    /// The handle was inherited by a forked child, where it acts for nobody
    /// (take the role anew after [`after_fork`](crate::Segment::after_fork)).
    NotAttached(T),
}

impl<T> PushError<T> {
    /// The value that was not pushed.
    ///
    /// # Examples
    ///
    /// See [`PushError`].
    pub fn into_inner(self) -> T {
        match self {
            PushError::Full(v) | PushError::Corrupt(v, _) | PushError::NotAttached(v) => v,
        }
    }

    /// Whether the queue was merely full.
    ///
    /// # Examples
    ///
    /// See [`PushError`].
    pub fn is_full(&self) -> bool {
        matches!(self, PushError::Full(_))
    }
}

impl<T> fmt::Display for PushError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PushError::Full(_) => f.write_str("the queue is full"),
            PushError::Corrupt(_, e) => write!(f, "{e}"),
            PushError::NotAttached(_) => write!(f, "{}", Error::NotAttached),
        }
    }
}

impl<T: fmt::Debug> std::error::Error for PushError<T> {}
