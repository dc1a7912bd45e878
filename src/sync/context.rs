//! Who is locking, and how to tell whether a holder is alive.

use crate::segment::{OwnerTag, Segment};

/// The caller's identity and a liveness oracle, as the locks need them.
///
/// A [`Segment`] is the context in real use: its registry slot is the caller's
/// identity and its registry answers liveness. Loom models implement it with
/// threads that "die".
///
/// # Examples
///
/// ```
/// use shmkit::sync::Context;
/// let seg = shmkit::SegmentOptions::heap().create()?;
/// assert!(seg.is_alive_owner(seg.me()));
/// # Ok::<(), shmkit::Error>(())
/// ```
pub trait Context {
    /// The caller's owner tag.
    fn me(&self) -> OwnerTag;
    /// Whether the holder `tag` names is alive (false for a tag naming nobody).
    fn is_alive_owner(&self, tag: OwnerTag) -> bool;
}

impl Context for Segment {
    #[inline]
    fn me(&self) -> OwnerTag {
        self.owner_tag()
    }

    fn is_alive_owner(&self, tag: OwnerTag) -> bool {
        self.is_owner_alive(tag)
    }
}
