//! The hostile-peer tests of issue 10: stray and hostile writes into a live
//! segment, each reproduction giving a typed error (or real backing) in bounded
//! time, never a rebuild, a false death, a self-deadlock or a replaced segment.
// Segment objects here are std atomics, as users write them (the loom shim is
// the crate's own business).
#![allow(clippy::disallowed_types)]

#[path = "common/mod.rs"]
mod common;

#[path = "hostile/backing.rs"]
mod backing;
#[path = "hostile/hammer.rs"]
mod hammer;
#[path = "hostile/liveness.rs"]
mod liveness;
#[path = "hostile/locks.rs"]
mod locks;
#[path = "hostile/region.rs"]
mod region;
