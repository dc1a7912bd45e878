//! Segments: shared memory of every kind, one builder, one init protocol, one
//! process registry.

mod handle;
mod header;
#[doc(hidden)]
pub mod init;
mod liveness;
#[doc(hidden)]
pub mod locks;
mod mapping;
mod names;
mod open;
mod options;
mod os;
mod owner;
mod proc;
#[doc(hidden)]
pub mod registry;
mod slot_info;
mod store;

pub use handle::{Segment, recv_fd};
#[cfg(feature = "testkit")]
pub(crate) use header::repair_header;
pub use names::{MAX_NAME_LEN, unique_name};
pub use options::{
    DEFAULT_MAX_SIZE, DEFAULT_OPEN_TIMEOUT, DEFAULT_SLOTS, Opened, SegmentKind, SegmentOptions,
};
/// The process's fork generation (bumped in every forked child): process-local
/// handles record it to act for nobody in a child that inherited them.
pub(crate) use os::fork::current as fork_generation;
pub use owner::OwnerTag;
pub use slot_info::{SlotInfo, SlotState};

/// Process-local bookkeeping shared by the clones of one attachment, for the
/// directory (which records one hold per attachment in the segment).
#[derive(Debug, Default)]
pub(crate) struct Local {
    /// How many handles this attachment holds on each object, by the offset of
    /// its entry.
    pub holds: std::collections::HashMap<u64, u64>,
    /// Entries this attachment is building right now: a `Creating` entry of ours
    /// that is not here was left by a build that failed (it is reclaimable).
    pub building: std::collections::HashSet<u64>,
}
