//! [`PushError`]: a push that did not happen, with the message back (every queue).

use std::fmt;

use crate::error::Error;

/// Why a push handed its message back (every queue's `try_push` and blocking
/// pushes that return the message): the value comes back in every case.
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
pub enum PushError<T> {
    /// The queue is full (or its next slot is busy with a live claimant).
    Full(T),
    /// A blocking push's time ran out.
    TimedOut(T),
    /// The push failed: [`Error::Corrupt`] (the queue's words in the segment are
    /// impossible: a peer overwrote them), [`Error::NotAttached`] (a handle
    /// inherited by a forked child, where it acts for nobody), ...
    Failed(T, Error),
}

impl<T> PushError<T> {
    /// The message that was not pushed.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(shmkit::queue::PushError::Full(3).into_inner(), 3);
    /// ```
    pub fn into_inner(self) -> T {
        match self {
            PushError::Full(v) | PushError::TimedOut(v) | PushError::Failed(v, _) => v,
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

impl<T: PartialEq> PartialEq for PushError<T> {
    /// Same kind and message (`Failed`: and the same error text).
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (PushError::Full(a), PushError::Full(b))
            | (PushError::TimedOut(a), PushError::TimedOut(b)) => a == b,
            (PushError::Failed(a, e), PushError::Failed(b, f)) => {
                a == b && e.to_string() == f.to_string()
            }
            _ => false,
        }
    }
}

impl<T> From<PushError<T>> for Error {
    /// `Full` is [`Error::WouldBlock`], `TimedOut` [`Error::TimedOut`], `Failed`
    /// its error (the message is dropped).
    fn from(e: PushError<T>) -> Self {
        match e {
            PushError::Full(_) => Error::WouldBlock,
            PushError::TimedOut(_) => Error::TimedOut,
            PushError::Failed(_, e) => e,
        }
    }
}

impl<T> fmt::Display for PushError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PushError::Full(_) => f.write_str("the queue is full"),
            PushError::TimedOut(_) => f.write_str("timed out waiting for room in the queue"),
            PushError::Failed(_, e) => write!(f, "push failed: {e}"),
        }
    }
}

impl<T: fmt::Debug> std::error::Error for PushError<T> {}
