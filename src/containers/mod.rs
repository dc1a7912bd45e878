//! Containers over the shared heap: a box, a growable vector and a string whose
//! contents live in heap blocks and travel between processes as typed offsets.
//!
//! Each is a process-local handle over its block(s). A handle owns its blocks
//! (`Owned` by its attachment, so a process that dies holding one leaks nothing:
//! `Heap::reclaim_dead` takes them back) until it is published with
//! `into_shared`, which marks the blocks `Shared` and returns the offset another
//! process passes to `from_shared` to take them over. What is stored must be
//! [`ShmSafe`](crate::ShmSafe): plain bytes with no pointers, so an offset is all
//! another process needs.
//!
//! The queues and the map, when they come, sit in this layer too (DESIGN §3:
//! segment → sync → alloc → containers/queue/map → directory).

mod boxed;
mod string;
mod vec;

pub use boxed::ShmBox;
pub use string::{ShmString, StringHeader, Utf8};
pub use vec::{ShmVec, VecHeader};
