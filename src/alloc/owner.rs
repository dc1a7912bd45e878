//! The owner word of a block: who holds it, in one 64-bit word.
//!
//! | top bits | state     | low 62 bits  | meaning                                        |
//! |----------|-----------|--------------|------------------------------------------------|
//! | `00`     | Owned     | owner tag    | handed out, held privately by that process     |
//! | `01`     | Cached    | owner tag    | free, in that process's cache (not shared yet) |
//! | `10`     | Shared    | 0            | handed out and published: nobody reclaims it   |
//! | `11`     | Free      | 0            | free, on (or on its way to) a shared free list |
//!
//! Owned and Cached name a live process or are reclaimed by `reclaim_dead`; Free
//! and Shared never are. Every other bit pattern is corrupt.

use crate::OwnerTag;

const STATE_SHIFT: u32 = 62;
const OWNED: u64 = 0;
const CACHED: u64 = 1 << STATE_SHIFT;
const SHARED: u64 = 2 << STATE_SHIFT;
const FREE: u64 = 3 << STATE_SHIFT;

/// A decoded owner word.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum BlockState {
    /// Handed out, privately held by the owner.
    Owned(OwnerTag),
    /// Free in the owner's process-local cache.
    Cached(OwnerTag),
    /// Handed out and published to a shared structure.
    Shared,
    /// Free, on a shared free list.
    Free,
}

impl BlockState {
    /// The word for this state.
    #[inline]
    pub const fn to_word(self) -> u64 {
        match self {
            Self::Owned(t) => OWNED | t.bits(),
            Self::Cached(t) => CACHED | t.bits(),
            Self::Shared => SHARED,
            Self::Free => FREE,
        }
    }

    /// Decodes a word; `None` if it is no valid state (a corrupt word).
    #[inline]
    pub const fn from_word(w: u64) -> Option<Self> {
        let tag = OwnerTag::from_word(w);
        match w & (3 << STATE_SHIFT) {
            OWNED if !tag.is_nobody() => Some(Self::Owned(tag)),
            CACHED if !tag.is_nobody() => Some(Self::Cached(tag)),
            // Any stamp: the low bits of a published word name who published it
            // (see `shared_stamped`), which no reader of the state needs.
            SHARED => Some(Self::Shared),
            FREE if w == FREE => Some(Self::Free),
            _ => None,
        }
    }

    /// Whether the block is handed out (owned or shared).
    #[inline]
    pub const fn is_used(self) -> bool {
        matches!(self, Self::Owned(_) | Self::Shared)
    }

    /// The owner a dead process's reclaim would act on, if any.
    #[inline]
    pub const fn private_owner(self) -> Option<OwnerTag> {
        match self {
            Self::Owned(t) | Self::Cached(t) => Some(t),
            _ => None,
        }
    }
}

/// Bits of a publish stamp in a `Shared` owner word.
pub const STAMP_MASK: u64 = (1 << STATE_SHIFT) - 1;

/// The owner word of a block published with `stamp`: still `Shared` to everyone,
/// but a structure that journals the block can tell *its* publication from a later
/// one by whoever reuses the block after it was freed.
#[inline]
pub const fn shared_stamped(stamp: u64) -> u64 {
    SHARED | (stamp & STAMP_MASK)
}

/// Whether `w` is a `Shared` word with a stamp (never the plain `SHARED`).
#[inline]
pub const fn is_stamped(w: u64) -> bool {
    w & !STAMP_MASK == SHARED && w & STAMP_MASK != 0
}

/// The word of a free block on a shared list.
pub const FREE_WORD: u64 = FREE;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects() {
        let t = OwnerTag::new(3, 0xdead_beef_0000).unwrap();
        for s in [
            BlockState::Owned(t),
            BlockState::Cached(t),
            BlockState::Shared,
            BlockState::Free,
        ] {
            assert_eq!(BlockState::from_word(s.to_word()), Some(s));
        }
        assert_eq!(BlockState::from_word(0), None); // owned by nobody
        assert_eq!(BlockState::from_word(SHARED | 5), Some(BlockState::Shared));
        assert_eq!(BlockState::from_word(FREE | 1), None);
        assert_eq!(BlockState::from_word(CACHED), None);
    }
}
