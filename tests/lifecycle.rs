//! Lifecycle tests of issue 9.

mod common;

#[path = "lifecycle/sysv.rs"]
mod sysv;
