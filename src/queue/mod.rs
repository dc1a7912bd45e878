//! Queues in a segment: [`Broadcast`], one writer fanning out to any number of
//! readers in any processes, each told exactly what it lost if it fell behind.
//!
//! Messages are plain `Copy` types that derive zerocopy's traits (no `unsafe`).
//! Create and find a queue by name through the directory, its capacity as its
//! configuration, then take a role from the handle.

mod broadcast;
mod broadcast_reader;
mod broadcast_writer;

#[cfg(not(any(shmkit_loom, feature = "testkit")))]
pub(crate) use broadcast::RawBroadcast;
pub use broadcast::{Broadcast, Geometry, MAX_BROADCAST_CAPACITY, Received};
#[cfg(any(shmkit_loom, feature = "testkit"))]
#[doc(hidden)]
pub use broadcast::{Header as BroadcastHeader, RawBroadcast};
pub use broadcast_reader::BroadcastReader;
pub use broadcast_writer::BroadcastWriter;
