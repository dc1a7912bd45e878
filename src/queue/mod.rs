//! Queues in shared memory (DESIGN §7): bounded rings of `Copy` messages, created
//! and found by name through the directory, that no dying process can wedge.
//!
//! - [`MpmcQueue`]: any number of producers and consumers in any processes
//!   (per-slot sequence stamps, a dead claimant's slot repaired).

#[cfg(shmkit_loom)]
pub(crate) mod model;
mod mpmc;
mod mpmc_ring;
mod mpmc_testkit;

pub use mpmc::{MPMC_MAX_CAPACITY, MpmcQueue, PushError};

/// Test support outside semver (`testkit` feature).
#[cfg(feature = "testkit")]
#[doc(hidden)]
pub mod testkit {
    pub use super::mpmc::{testkit_start_at, testkit_word_offsets};
    pub use super::mpmc_testkit::{Stop, arm_stop, disarm_stop};
}
