//! Queues in a segment, created and found by name through the directory with
//! their capacity as their configuration, roles taken from the handle:
//!
//! - [`SpscQueue`]: one producer and one consumer in any processes, with roles
//!   that a dead holder's successor takes over;
//! - [`MpmcQueue`]: any number of producers and consumers in any processes
//!   (per-slot sequence stamps, a dead claimant's slot repaired);
//! - [`Broadcast`]: one writer fanning out to any number of readers in any
//!   processes, each told exactly what it lost if it fell behind.
//!
//! Messages are `T: ShmSafe + Copy` (derive zerocopy's traits: no `unsafe`).
//!
//! ```
//! use shmkit::queue::SpscQueue;
//! let seg = shmkit::SegmentOptions::heap().create()?;
//! let q = seg.find_or_create::<SpscQueue<[u64; 2]>>("orders", 1024)?;
//! let (mut tx, mut rx) = (q.producer()?, q.consumer()?);
//! tx.try_push([1, 2]).unwrap();
//! assert_eq!(rx.pop_blocking()?, [1, 2]);
//! # Ok::<(), shmkit::Error>(())
//! ```

mod broadcast;
mod broadcast_reader;
mod broadcast_writer;
mod consumer;
mod error;
#[cfg(feature = "testkit")]
mod local;
#[cfg(shmkit_loom)]
pub(crate) mod model;
mod mpmc;
mod mpmc_ring;
mod mpmc_testkit;
mod producer;
mod spsc;

#[cfg(not(any(shmkit_loom, feature = "testkit")))]
pub(crate) use broadcast::RawBroadcast;
pub use broadcast::{Broadcast, Geometry, MAX_BROADCAST_CAPACITY, Received};
#[cfg(any(shmkit_loom, feature = "testkit"))]
#[doc(hidden)]
pub use broadcast::{Header as BroadcastHeader, RawBroadcast};
pub use broadcast_reader::BroadcastReader;
pub use broadcast_writer::BroadcastWriter;
pub use consumer::Consumer;
pub use error::PushError;
#[cfg(feature = "testkit")]
#[doc(hidden)]
pub use local::LocalSpsc;
pub use mpmc::{MPMC_MAX_CAPACITY, MpmcQueue};
pub use producer::Producer;
pub(crate) use spsc::RawSpsc;
#[cfg(feature = "testkit")]
#[doc(hidden)]
pub use spsc::wake_count;
pub use spsc::{MAX_CAPACITY, SpscQueue};

/// Test support outside semver (`testkit` feature).
#[cfg(feature = "testkit")]
#[doc(hidden)]
pub mod testkit {
    pub use super::mpmc::{testkit_start_at, testkit_word_offsets};
    pub use super::mpmc_testkit::{Stop, arm_stop, disarm_stop};
}
