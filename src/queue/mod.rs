//! Queues in a segment: [`SpscQueue`], one producer and one consumer in any
//! processes, with roles that a dead holder's successor takes over.
//!
//! Messages are `T: ShmSafe + Copy` (derive zerocopy's traits: no `unsafe`).
//! Create and find a queue by name through the directory, its capacity as its
//! configuration, then take a role from the handle:
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

mod consumer;
mod error;
#[cfg(feature = "testkit")]
mod local;
mod producer;
mod spsc;

pub use consumer::Consumer;
pub use error::PushError;
#[cfg(feature = "testkit")]
#[doc(hidden)]
pub use local::LocalSpsc;
pub use producer::Producer;
pub(crate) use spsc::RawSpsc;
#[cfg(feature = "testkit")]
#[doc(hidden)]
pub use spsc::wake_count;
pub use spsc::{MAX_CAPACITY, SpscQueue};
