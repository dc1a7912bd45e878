//! Hostile-peer tests of issue 10.

mod common;

#[path = "hostile/backing.rs"]
mod backing;
