//! Owner tags: who holds something in a segment, packed so that one 64-bit word can
//! say it, and the question every robust structure asks: is that owner alive?

use crate::segment::handle::Segment;
use crate::segment::mapping::Mapping;
use crate::sync::HeldLocks;

/// Bits of an owner tag that carry the incarnation.
const INC_BITS: u32 = 46;
/// Mask of the incarnation part.
const INC_MASK: u64 = (1 << INC_BITS) - 1;
/// Mask of the slot part (16 bits above the incarnation).
const SLOT_MASK: u64 = 0xffff << INC_BITS;

/// A registry slot plus 46 bits of the holder's random incarnation, packed in the
/// low 62 bits of a word; the two top bits are free for the structure using it
/// (e.g. a lock's waiters and inconsistent flags).
///
/// A tag whose incarnation bits are zero names nobody (no real owner has them
/// zero); structures use such words for their special states.
///
/// # Examples
///
/// ```
/// let seg = shmkit::SegmentOptions::heap().create()?;
/// let me = seg.owner_tag();
/// assert_eq!(me.slot(), seg.slot());
/// assert!(seg.is_owner_alive(me));
/// # Ok::<(), shmkit::Error>(())
/// ```
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct OwnerTag(u64);

impl OwnerTag {
    /// The bits a tag may occupy in a word.
    pub const MASK: u64 = SLOT_MASK | INC_MASK;

    /// The tag of `(slot, incarnation)`; `None` if the slot does not fit in 16 bits.
    #[inline]
    pub fn new(slot: u32, incarnation: u64) -> Option<Self> {
        if slot > 0xffff {
            return None;
        }
        // Registry incarnations have their two low bits clear; drop them, keep 46
        // random bits, and never produce zero.
        let inc = ((incarnation >> 2) & INC_MASK).max(1);
        Some(Self((u64::from(slot) << INC_BITS) | inc))
    }

    /// Reads the tag part of `word` (the top two bits are ignored). May name nobody.
    #[inline]
    pub const fn from_word(word: u64) -> Self {
        Self(word & Self::MASK)
    }

    /// The tag as word bits.
    #[inline]
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// The registry slot.
    #[inline]
    pub const fn slot(self) -> u32 {
        ((self.0 & SLOT_MASK) >> INC_BITS) as u32
    }

    /// Whether this tag names nobody (zero incarnation bits).
    #[inline]
    pub const fn is_nobody(self) -> bool {
        self.0 & INC_MASK == 0
    }
}

impl Segment {
    /// This handle's owner tag; a tag naming nobody in a forked child that has not
    /// called [`after_fork`](Segment::after_fork) on this handle.
    ///
    /// # Examples
    ///
    /// See [`OwnerTag`].
    #[inline]
    pub fn owner_tag(&self) -> OwnerTag {
        if crate::segment::os::fork::current() != self.inner.fork_gen {
            // An inherited handle in a forked child: it acts for nobody until
            // `after_fork` (the locks refuse it with `NotAttached`).
            return OwnerTag(0);
        }
        OwnerTag::new(self.slot(), self.incarnation()).unwrap_or(OwnerTag(0))
    }

    /// The record of the robust locks this attachment's threads are taking or
    /// holding (see [`HeldLocks`]).
    #[inline]
    pub(crate) fn held_locks_record(&self) -> &HeldLocks {
        &self.inner.held
    }

    /// Whether the holder `tag` names is alive: the kernel still holds its tag
    /// witness (a lock on a byte whose offset is the tag, taken by the owner before
    /// its registry slot said so and released only after it detached), and `/proc`
    /// does not show its vouched-for pid gone. A tag naming nobody, a slot out of
    /// range, a detached owner and a dead process are all "not alive".
    ///
    /// No segment word decides "not alive": a registry slot word that a peer
    /// rewrote (another incarnation, free, claiming) changes nothing, and a
    /// rewritten pid or start time is caught by the identity witness (the verdict
    /// is then "alive"). When the question cannot be answered (a probe fails, an
    /// inherited handle in a forked child) the answer is "alive".
    ///
    /// Costs a compare for our own tag, one lock probe (a syscall) for a dead or
    /// detached owner, and a probe and a `/proc` read for a live one.
    ///
    /// # Examples
    ///
    /// See [`OwnerTag`].
    #[inline]
    pub fn is_owner_alive(&self, tag: OwnerTag) -> bool {
        if tag.is_nobody() {
            return false;
        }
        if tag == self.owner_tag() {
            return true;
        }
        self.foreign_owner_alive(tag)
    }
}

/// A fresh lock record for an attachment through `map` (its addresses name each
/// lock in the segment uniquely).
pub(super) fn held_record(map: &Mapping) -> HeldLocks {
    let base = map.ptr().as_ptr() as usize;
    HeldLocks::new(base..base.saturating_add(map.len()))
}
