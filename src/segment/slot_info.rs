//! What a peer can learn about a registry slot.

/// The state of one registry slot, as seen by a peer.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SlotState {
    /// Nobody holds it.
    Free,
    /// A process is attaching (or died attaching and nobody reclaimed it yet).
    Claiming,
    /// Held by a live process.
    Alive,
    /// Held by a process that has died; [`Segment::reclaim_dead`](crate::Segment::reclaim_dead) frees it.
    Dead,
    /// The slot's words disagree with the kernel's evidence: its lock is held, but
    /// not by the incarnation its state word names, or its recorded identity is
    /// not the one its owner's identity witness vouches for. A peer overwrote
    /// them. Never taken for a death: nothing is reclaimed, and
    /// [`Segment::is_alive`](crate::Segment::is_alive) reports
    /// [`Error::Corrupt`](crate::Error::Corrupt).
    Corrupt,
}

/// What the registry says of one slot.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct SlotInfo {
    /// Slot index.
    pub index: u32,
    /// Verdict.
    pub state: SlotState,
    /// Owner's pid (in its pid namespace), 0 if free.
    pub pid: u32,
    /// Owner's random incarnation, 0 if free.
    pub incarnation: u64,
    /// When the owner attached, ns since the Unix epoch.
    pub attached_ns: u64,
    /// Whether it is this handle's own slot.
    pub own: bool,
}
